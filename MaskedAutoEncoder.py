r"""Masked autoencoder (MAE) on MNIST, in Keras 3 on TensorFlow, JAX or PyTorch.

A masked autoencoder (He et al., 2021) cuts each image into patches (49 of 4 x 4 pixels here),
hides most of them at random (75% by default), lets a small transformer encoder see only the
visible ones, and asks a lighter decoder, given the encoded patches and a learned mask token at
every hidden position, to paint the hidden patches back. With M the hidden patches of x, it
trains to minimise the squared error on those alone:

    $$ L(x) = \frac{1}{|M|} \sum_{i \in M} \frac{1}{16} \| \hat{p}_i - p_i \|^2 $$

It is the denoising autoencoder taken to its limit, and how vision transformers are pretrained.
The lesson measures what the encoder learned with a linear probe (a logistic regression on its
pooled features of whole test images, fitted on the training split) against raw pixels, the
same encoder untrained, and a plain undercomplete autoencoder of the same code size; it scores
the hidden patches it paints, and with --sweep draws both against the mask ratio.

    python MaskedAutoEncoder.py                     # hide 75% of each image
    python MaskedAutoEncoder.py --mask-ratio 0.5    # hide half
    python MaskedAutoEncoder.py --sweep             # also mask ratios 0.25, 0.5 and 0.9

It writes results/MaskedAutoEncoder.json (its timings among them), models/mae*.keras and
figures/mae_*.png; Ctrl-C, then the same command, resumes. The saved models load in a fresh
process after `import MaskedAutoEncoder`, which registers its layers; the feature extractor
takes whole images, every patch visible:

    import MaskedAutoEncoder  # registers the lesson's layers
    import keras
    extractor = keras.models.load_model("models/mae_feature_extractor.keras")
    features = extractor.predict(images)  # (N, 28, 28, 1) in [0, 1] -> (N, 64)
"""

import argparse
from typing import NamedTuple

import common  # first: quiets TensorFlow's start-up logs, registers the suite's Keras objects
import keras
import matplotlib.pyplot as plt
import numpy as np
from keras import layers, ops

from common import cli, data, metrics, outputs, plots, training

SCRIPT_NAME = "MaskedAutoEncoder"
IMAGE_SIDE = data.IMAGE_SHAPE[0]        # 28 pixels
PATCH_SIZE = 4                          # 4 x 4 pixels: 7 x 7 = 49 patches, 16 pixels each
PATCHES_PER_SIDE = IMAGE_SIDE // PATCH_SIZE
NUM_PATCHES = PATCHES_PER_SIDE**2
PATCH_PIXELS = PATCH_SIZE**2
ENCODER_DIM = 64        # the encoder's token width, so the size of its pooled features: the code
ENCODER_DEPTH = 2       # transformer blocks in the encoder
ENCODER_HEADS = 4       # attention heads of 16 dimensions each
DECODER_DIM = 32        # the decoder is lighter: half as wide (its blocks cost a quarter)
DECODER_DEPTH = 2       # a deeper decoder leaves the encoder's features more general (the paper)
DECODER_HEADS = 2
MLP_RATIO = 2           # each block's MLP: dim -> 2 dim -> dim
WEIGHT_DECAY = 0.05     # AdamW's, and its beta_2, as in the MAE paper
BETA_2 = 0.95
WARMUP = 0.1            # the learning rate rises over the first 10% of the steps, then decays
PLAIN_HIDDEN = 256      # the plain autoencoder: 784-256-64 and back
SWEEP_RATIOS = (0.25, 0.5, 0.75, 0.9)
HIDDEN_GREY = 0.5       # how a hidden patch is drawn: mid-grey, neither ink (1) nor paper (0)
PROBE_TITLES = {"mae": "MAE encoder", "plain_autoencoder": "plain autoencoder",
                "pixels": "raw pixels", "untrained_encoder": "MAE encoder, untrained"}


def parse_args(argv=None):
    parser = cli.base_parser(SCRIPT_NAME, epochs=30, batch_size=128, learning_rate=2e-3)
    lesson = parser.add_argument_group("this lesson")
    lesson.add_argument("--mask-ratio", type=mask_ratio, default=0.75,
                        help=f"fraction of the {NUM_PATCHES} patches hidden from the encoder "
                             f"(rounded to whole patches)")
    lesson.add_argument("--sweep", action="store_true",
                        help=f"also train at mask ratios {', '.join(map(str, SWEEP_RATIOS))} "
                             "for the probe-and-error curve")
    return parser.parse_args(argv)


def mask_ratio(text):
    """An argparse type: a fraction that hides at least one patch and leaves one visible."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0.0 < value < 1.0 or not 1 <= hidden_count(value) < NUM_PATCHES:
        raise argparse.ArgumentTypeError(
            f"must be a fraction between 0 and 1 that hides at least 1 and at most "
            f"{NUM_PATCHES - 1} of the {NUM_PATCHES} patches, got {text!r}")
    return value


def main(argv=None):
    args = parse_args(argv)
    dataset = data.load_dataset(args.dataset, args.data, args.limit, min_classes=2)  # checked first
    run = outputs.start(args, SCRIPT_NAME, dataset)  # output folders, devices, seeds
    train_ds, test_ds, test_inputs = data.autoencoder_datasets(
        dataset, args.batch_size, "none", args.seed)
    mae = build_mae(args.mask_ratio, args.seed)
    compile_mae(mae.model, args.learning_rate, steps=args.epochs * len(train_ds))
    fitted = train(mae.model, "mae", train_ds, test_ds, args, run)
    painted = evaluate_hidden_patches(mae.model, dataset, test_inputs)
    plain = train_plain_autoencoder(train_ds, test_ds, test_inputs, args, run)
    probes = linear_probes(mae, plain.encoder, dataset, args)
    sweep = mask_ratio_sweep(painted, probes, fitted, train_ds, test_ds, dataset, args, run)
    results = {**run.header, **gather_results(mae, fitted, painted, plain, probes, sweep, args)}
    draw_figures(painted, results, dataset, args, run.figures)
    run.finish(results, mae=mae.model, mae_feature_extractor=mae.feature_extractor,
               mae_plain_autoencoder=plain.autoencoder)
    print_summary(results)


# -- Data: grey levels in [0, 1], as inputs and as targets ----------------------------------------
# $$ x \in [0, 1]^{28 \times 28} $$
# The MAE regresses pixels, so it trains on the grey levels as they are, with no binarization.
# `data.autoencoder_datasets` makes the batches of (image, image) pairs `fit` reads, the training
# split shuffled with --seed; `test_inputs` are the test images every number below is scored on.


# -- Patches: 49 tokens of 16 pixels --------------------------------------------------------------
# $$ x \mapsto (p_1, \ldots, p_{49}), \quad p_{7r + c} = x[4r : 4r + 4,\ 4c : 4c + 4] $$
# A transformer reads a sequence of tokens, so the image becomes one: the 7 x 7 patches row by
# row, each patch's 16 pixels row by row, and each patch's number, its position, beside it.
# `unpatchify` puts the patches back in place, for the figures.

def patchify(images, size=PATCH_SIZE):
    """(B, 28, 28, 1) images -> (B, 49, 16) patches."""
    per_side = IMAGE_SIDE // size
    x = ops.reshape(images, (-1, per_side, size, per_side, size))  # (B, row, y, column, x)
    x = ops.transpose(x, (0, 1, 3, 2, 4))                          # (B, row, column, y, x)
    return ops.reshape(x, (-1, per_side * per_side, size * size))


def unpatchify(patches, size=PATCH_SIZE):
    """(B, 49, 16) patches -> (B, 28, 28, 1) images: patchify's inverse."""
    per_side = IMAGE_SIDE // size
    x = ops.reshape(patches, (-1, per_side, per_side, size, size))
    x = ops.transpose(x, (0, 1, 3, 2, 4))
    return ops.reshape(x, (-1, IMAGE_SIDE, IMAGE_SIDE, 1))


@keras.saving.register_keras_serializable(package="autoencoders")
class Patches(layers.Layer):
    """Images -> (patches, positions): the (B, 49, 16) patches and their numbers 0..48."""

    def __init__(self, patch_size=PATCH_SIZE, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = int(patch_size)

    def call(self, images):
        patches = patchify(images, self.patch_size)
        count = (IMAGE_SIDE // self.patch_size) ** 2
        positions = ops.broadcast_to(ops.arange(count, dtype="int32"),
                                     (ops.shape(patches)[0], count))
        return patches, positions

    def compute_output_shape(self, input_shape):
        count = (IMAGE_SIDE // self.patch_size) ** 2
        return (input_shape[0], count, self.patch_size**2), (input_shape[0], count)

    def get_config(self):
        return {**super().get_config(), "patch_size": self.patch_size}


# -- The mask: hide a random 75% of the patches of every image ------------------------------------
# $$ \pi \sim \mathrm{Uniform}(S_{49}), \quad M = \{\pi_1, \ldots, \pi_{h}\},
#    \quad h = \mathrm{round}(0.75 \cdot 49) = 37 $$
# A random permutation per image, drawn by sorting uniform noise: its first h patches are hidden,
# the rest visible. Exactly h in every image, a new mask at every step, all drawn from the layer's
# seeded SeedGenerator, so --seed fixes them and a resumed run draws what it would have drawn.
# Only the visible patches leave this layer; the hidden ones leave as positions alone.

def hidden_count(ratio, num_patches=NUM_PATCHES):
    return int(round(ratio * num_patches))


@keras.saving.register_keras_serializable(package="autoencoders")
class RandomPatchMask(layers.Layer):
    """Patches -> (visible patches, their positions, hidden positions), a new mask per image."""

    def __init__(self, mask_ratio=0.75, num_patches=NUM_PATCHES, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.mask_ratio, self.num_patches, self.seed = float(mask_ratio), num_patches, seed
        self.num_hidden = hidden_count(self.mask_ratio, num_patches)
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, patches):
        noise = keras.random.uniform((ops.shape(patches)[0], self.num_patches),
                                     seed=self.seed_generator)
        order = ops.cast(ops.argsort(noise, axis=-1), "int32")  # a random permutation per image
        hidden, visible = order[:, :self.num_hidden], order[:, self.num_hidden:]
        return ops.take_along_axis(patches, visible[..., None], axis=1), visible, hidden

    def compute_output_shape(self, input_shape):
        batch, visible = input_shape[0], self.num_patches - self.num_hidden
        return (batch, visible, input_shape[-1]), (batch, visible), (batch, self.num_hidden)

    def get_config(self):
        return {**super().get_config(), "mask_ratio": self.mask_ratio,
                "num_patches": self.num_patches, "seed": self.seed}


# -- Encoder: a transformer over the visible patches only -----------------------------------------
# $$ z_i = W p_i + E_{\mathrm{pos}}[i], \quad z \leftarrow z + \mathrm{MHA}(\mathrm{LN}(z)),
#    \quad z \leftarrow z + \mathrm{MLP}(\mathrm{LN}(z)) $$
# Each visible patch becomes a token (a linear map of its 16 pixels), plus a learned embedding of
# its position, since attention alone does not know where a token came from. Three pre-norm
# blocks of Keras's MultiHeadAttention and an MLP follow. The encoder takes any number of tokens:
# 12 visible ones in training, all 49 in the feature extractor.

@keras.saving.register_keras_serializable(package="autoencoders")
class PositionEmbedding(layers.Layer):
    """tokens + E[positions]: a learned vector per patch position, added to the token there;
    without positions, tokens in patch order (one per position)."""

    def __init__(self, num_patches=NUM_PATCHES, **kwargs):
        super().__init__(**kwargs)
        self.num_patches = num_patches

    def build(self, tokens_shape, positions_shape=None):
        self.table = self.add_weight(shape=(self.num_patches, tokens_shape[-1]), name="table",
                                     initializer=keras.initializers.RandomNormal(stddev=0.02))

    def call(self, tokens, positions=None):
        table = ops.cast(self.table, tokens.dtype)
        return tokens + (table if positions is None else ops.take(table, positions, axis=0))

    def compute_output_shape(self, tokens_shape, positions_shape=None):
        return tokens_shape

    def get_config(self):
        return {**super().get_config(), "num_patches": self.num_patches}


def transformer_block(x, dim, heads, name):
    """A pre-norm transformer block: attention then an MLP, each added to its input."""
    h = layers.LayerNormalization(epsilon=1e-6, name=f"{name}_norm1")(x)
    h = layers.MultiHeadAttention(heads, key_dim=dim // heads, name=f"{name}_attention")(h, h)
    x = layers.Add(name=f"{name}_residual1")([x, h])
    h = layers.LayerNormalization(epsilon=1e-6, name=f"{name}_norm2")(x)
    h = layers.Dense(MLP_RATIO * dim, activation="gelu", name=f"{name}_mlp1")(h)
    h = layers.Dense(dim, name=f"{name}_mlp2")(h)
    return layers.Add(name=f"{name}_residual2")([x, h])


def build_encoder():
    patches = keras.Input(shape=(None, PATCH_PIXELS), name="patches")
    positions = keras.Input(shape=(None,), dtype="int32", name="positions")
    x = layers.Dense(ENCODER_DIM, name="patch_embedding")(patches)
    x = PositionEmbedding(NUM_PATCHES, name="encoder_positions")(x, positions)
    for i in range(ENCODER_DEPTH):
        x = transformer_block(x, ENCODER_DIM, ENCODER_HEADS, f"encoder_block{i + 1}")
    tokens = layers.LayerNormalization(epsilon=1e-6, name="encoder_norm", dtype="float32")(x)
    return keras.Model([patches, positions], tokens, name="encoder")


# -- Decoder: the encoded patches, and a learned mask token at every hidden position -------------
# $$ u_i = \begin{cases} V z_i & i \text{ visible} \\ m & i \in M \end{cases}
#    + D_{\mathrm{pos}}[i], \quad \hat{p}_i = W_{\mathrm{out}}\, \mathrm{block}(u)_i $$
# The decoder sees all 49 positions: the encoded visible tokens, narrowed to its width, put back
# in place, and one learned vector m, the mask token, wherever a patch was hidden; its own
# position embedding tells one hidden patch from another. One block, then a linear map to 16
# pixels per patch. It is lighter than the encoder: it is thrown away after training.

@keras.saving.register_keras_serializable(package="autoencoders")
class MaskTokens(layers.Layer):
    """(visible tokens, visible positions, hidden positions) -> one token per patch position,
    in patch order: the visible token where there is one, the learned mask token elsewhere."""

    def build(self, input_shape):
        self.mask_token = self.add_weight(shape=(input_shape[0][-1],), name="mask_token",
                                          initializer=keras.initializers.RandomNormal(stddev=0.02))

    def call(self, inputs):
        tokens, visible, hidden = inputs
        masks = ops.broadcast_to(ops.cast(self.mask_token, tokens.dtype),
                                 (ops.shape(hidden)[0], ops.shape(hidden)[1], tokens.shape[-1]))
        shuffled = ops.concatenate([tokens, masks], axis=1)   # in the mask's order
        positions = ops.concatenate([visible, hidden], axis=1)
        in_order = ops.argsort(positions, axis=-1)             # where patch 0, 1, ... 48 sits
        return ops.take_along_axis(shuffled, in_order[..., None], axis=1)

    def compute_output_shape(self, input_shape):
        tokens, visible, hidden = input_shape
        count = None if None in (visible[1], hidden[1]) else visible[1] + hidden[1]
        return (tokens[0], count, tokens[-1])


def build_decoder():
    encoded = keras.Input(shape=(None, ENCODER_DIM), name="encoded")
    visible = keras.Input(shape=(None,), dtype="int32", name="visible_positions")
    hidden = keras.Input(shape=(None,), dtype="int32", name="hidden_positions")
    x = layers.Dense(DECODER_DIM, name="decoder_embedding")(encoded)
    x = MaskTokens(name="mask_tokens")([x, visible, hidden])
    x = PositionEmbedding(NUM_PATCHES, name="decoder_positions")(x)
    for i in range(DECODER_DEPTH):
        x = transformer_block(x, DECODER_DIM, DECODER_HEADS, f"decoder_block{i + 1}")
    x = layers.LayerNormalization(epsilon=1e-6, name="decoder_norm")(x)
    pixels = layers.Dense(PATCH_PIXELS, name="patch_pixels", dtype="float32")(x)
    return keras.Model([encoded, visible, hidden], pixels, name="decoder")


# -- Loss: the squared error on the hidden patches only -------------------------------------------
# $$ L = \frac{1}{B\,|M|\,16} \sum_{b=1}^{B} \sum_{i \in M_b} \| \hat{p}_{b,i} - p_{b,i} \|^2 $$
# The decoder paints all 49 patches, but copying a visible patch teaches nothing: only the hidden
# ones are gathered and scored, in squared error per pixel. The loss needs the mask, which the
# model draws itself, so the model returns it beside its patches and computes its own loss in
# `compute_loss`, where a loss works on every backend; the targets are the input's patches.

def hidden_patch_mse(patches, predicted, hidden):
    """Squared error per pixel, over the hidden patches of each image only."""
    target = ops.take_along_axis(patches, hidden[..., None], axis=1)
    guess = ops.take_along_axis(ops.cast(predicted, patches.dtype), hidden[..., None], axis=1)
    return ops.mean(ops.square(guess - target))


@keras.saving.register_keras_serializable(package="autoencoders")
class MaskedAutoencoder(keras.Model):
    """A functional model, image -> (predicted patches, hidden positions), trained on the
    hidden patches' squared error."""

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        predicted, hidden = y_pred
        return hidden_patch_mse(patchify(ops.convert_to_tensor(y, "float32")), predicted, hidden)


# -- The masked autoencoder, and the feature extractor it leaves ----------------------------------
# $$ \text{image} \to \text{patches} \to \text{mask} \to \text{encoder} \to \text{decoder}
#    \to (\hat{p}_1, \ldots, \hat{p}_{49}); \qquad
#    f(x) = \frac{1}{49} \sum_{i=1}^{49} \mathrm{encoder}(p_1, \ldots, p_{49})_i $$
# After training the decoder goes: the feature extractor is the encoder on every patch of a
# whole image, its 49 tokens averaged into 64 numbers, the code the probe below reads. Every MAE
# of one seed starts from the same weights, so the untrained encoder is this one, as it began.

class MAE(NamedTuple):
    model: keras.Model              # image -> (predicted patches, hidden positions)
    encoder: keras.Model            # (visible patches, positions) -> tokens
    decoder: keras.Model            # (tokens, visible positions, hidden positions) -> patches
    feature_extractor: keras.Model  # image -> the mean of its 49 encoded tokens


def build_mae(ratio, seed, summary=True):
    keras.utils.set_random_seed(seed)  # the same initial weights for every MAE of this seed
    encoder, decoder = build_encoder(), build_decoder()
    if summary:
        encoder.summary()
        decoder.summary()
    images = keras.Input(shape=data.IMAGE_SHAPE, name="image")
    patches, _ = Patches(PATCH_SIZE, name="patches")(images)
    visible_patches, visible, hidden = RandomPatchMask(ratio, seed=seed, name="random_mask")(
        patches)
    predicted = decoder([encoder([visible_patches, visible]), visible, hidden])
    model = MaskedAutoencoder(images, [predicted, hidden], name="mae")
    return MAE(model, encoder, decoder, build_feature_extractor(encoder))


def build_feature_extractor(encoder):
    images = keras.Input(shape=data.IMAGE_SHAPE, name="image")
    patches, positions = Patches(PATCH_SIZE, name="patches")(images)  # every patch visible
    features = layers.GlobalAveragePooling1D(name="mean_of_tokens", dtype="float32")(
        encoder([patches, positions]))
    return keras.Model(images, features, name="mae_feature_extractor")


# -- Training -------------------------------------------------------------------------------------
# $$ \eta_t = \eta \frac{t}{t_w} \ (t < t_w), \quad
#    \eta_t = \frac{\eta}{2} \Big(1 + \cos \frac{\pi (t - t_w)}{T - t_w}\Big) \ (t \ge t_w) $$
# AdamW (Adam with decoupled weight decay), its step size warmed up then decayed to 0 on a cosine,
# as the MAE paper trains: a transformer at a constant 2e-3 from its first step barely learns
# here. Keras's fit then runs with the test split as validation data (its masks drawn afresh
# too) and three callbacks: a backup after every epoch, so that Ctrl-C and the same command
# resume (`ResumableBackup`), a stop at the first NaN or exploding loss (`StopOnDivergence`),
# and, with --tensorboard, Keras's TensorBoard.

def compile_mae(model, learning_rate, steps):
    warmup = int(WARMUP * steps)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=max(1, steps - warmup), warmup_target=learning_rate,
        warmup_steps=warmup)
    model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=WEIGHT_DECAY,
                                                   beta_2=BETA_2))
    training.set_execution(model)  # steps per call and jax.jit, for this backend


def train(model, name, train_ds, test_ds, args, run):
    backup = training.ResumableBackup(run.checkpoint(name, model), train_ds)
    callbacks = [training.StopOnDivergence(model, test_ds), backup]
    if args.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(run.logs(name)))
    print(f"\n-- training {name} --")
    model.fit(train_ds, validation_data=test_ds, epochs=args.epochs, callbacks=callbacks,
              shuffle=False, verbose=2)  # the batches shuffle themselves, per epoch
    return backup.fitted()


# -- Evaluation: the hidden patches of the test images --------------------------------------------
# $$ \mathrm{MSE}_M = \frac{1}{N\,|M|\,16} \sum_{n} \sum_{i \in M_n} \| \hat{p}_{n,i} - p_{n,i} \|^2
#    \quad \text{against} \quad \hat{p}_{n,i} = \bar{p}_i $$
# Every test image gets a mask of its own and the model paints its hidden patches. The number
# means something beside a guess that looks at nothing: the mean training image's patch there.

class Painted(NamedTuple):
    scores: dict           # the hidden patches' errors, the MAE's and the mean image's
    predicted: np.ndarray  # (N, 49, 16) the patches the decoder painted, for the figures
    hidden: np.ndarray     # (N, h) the hidden positions of each test image


def evaluate_hidden_patches(model, dataset, test_inputs):
    predicted, hidden = training.predict(model, test_inputs)
    patches = patchify(test_inputs)
    mean_image = np.broadcast_to(dataset.x_train.mean(axis=0), test_inputs.shape)
    scores = {"hidden_mse_per_pixel": float(hidden_patch_mse(patches, predicted, hidden)),
              "mean_image_hidden_mse_per_pixel": float(hidden_patch_mse(
                  patches, patchify(mean_image), hidden))}
    return Painted(scores, np.asarray(predicted), np.asarray(hidden))


# -- A plain autoencoder of the same code size, the baseline --------------------------------------
# $$ h = W_2\, \mathrm{relu}(W_1 x), \quad \hat{x} = \sigma(W_4\, \mathrm{relu}(W_3 h)), \quad
#    \frac{1}{784} \| \hat{x} - x \|^2 $$
# An undercomplete autoencoder as in AutoEncoder.py, 784-256-64 and back, trained on the MAE's
# loss but on every pixel, nothing hidden: its 64-number code is the size of the MAE's features.

class PlainAutoencoder(NamedTuple):
    encoder: keras.Model
    autoencoder: keras.Model
    scores: dict


def build_plain_autoencoder(code_dim=ENCODER_DIM):
    images = keras.Input(shape=data.IMAGE_SHAPE, name="image")
    x = layers.Flatten(name="flatten")(images)
    x = layers.Dense(PLAIN_HIDDEN, activation="relu", name="encoder_hidden")(x)
    codes = layers.Dense(code_dim, name="code", dtype="float32")(x)
    encoder = keras.Model(images, codes, name="plain_encoder")
    x = layers.Dense(PLAIN_HIDDEN, activation="relu", name="decoder_hidden")(codes)
    x = layers.Dense(IMAGE_SIDE * IMAGE_SIDE, activation="sigmoid", name="pixels",
                     dtype="float32")(x)
    rebuilt = layers.Reshape(data.IMAGE_SHAPE, name="image_out", dtype="float32")(x)
    return encoder, keras.Model(images, rebuilt, name="plain_autoencoder")


def train_plain_autoencoder(train_ds, test_ds, test_inputs, args, run):
    keras.utils.set_random_seed(args.seed)
    encoder, autoencoder = build_plain_autoencoder()
    autoencoder.compile(optimizer=keras.optimizers.Adam(args.learning_rate),
                        loss=keras.losses.MeanSquaredError())
    training.set_execution(autoencoder)
    fitted = train(autoencoder, "plain_autoencoder", train_ds, test_ds, args, run)
    rebuilt = training.predict(autoencoder, test_inputs)
    scores = {"test_mse_per_pixel": float(np.mean((rebuilt - test_inputs) ** 2)),
              "parameters": int(autoencoder.count_params()), **fitted.results()}
    return PlainAutoencoder(encoder, autoencoder, scores)


# -- Evaluation: what the encoder learned, read by a linear probe ---------------------------------
# $$ \hat{y} = \arg\max_k\, (A f(x) + c)_k $$
# A logistic regression on the standardised features of the training images, scored by its
# accuracy on the test images, which it never saw: how much of the label a linear map can read
# off the features. The MAE's features (every patch visible) against the raw pixels (784
# numbers), the same encoder before training, and the plain autoencoder's 64-number code.

def features_of(model, images, batch_size=1000):
    """The features of `images` that `model` gives, a batch at a time; raw pixels for None."""
    if model is None:
        return images.reshape(len(images), -1)
    return np.concatenate([ops.convert_to_numpy(model(images[start:start + batch_size],
                                                      training=False))
                           for start in range(0, len(images), batch_size)])


def probe_accuracy(model, dataset):
    """The linear probe's test accuracy on `model`'s features (raw pixels for None)."""
    return metrics.linear_probe_accuracy(features_of(model, dataset.x_train), dataset.y_train,
                                         features_of(model, dataset.x_test), dataset.y_test)


def linear_probes(mae, plain_encoder, dataset, args):
    untrained = build_mae(args.mask_ratio, args.seed, summary=False).feature_extractor
    features = {"pixels": None, "untrained_encoder": untrained,
                "plain_autoencoder": plain_encoder, "mae": mae.feature_extractor}
    return {name: probe_accuracy(model, dataset) for name, model in features.items()}


# -- The mask ratio: how much to hide? -----------------------------------------------------------
# $$ r \in \{0.25, 0.5, 0.75, 0.9\} $$
# Hide little and the task is easy, a patch guessed from its neighbours; hide most and the
# encoder must know what digits look like. With --sweep the same MAE, from the same weights,
# trains at every ratio, and each is probed and scored as above: the MAE paper's figure.

def mask_ratio_sweep(painted, probes, fitted, train_ds, test_ds, dataset, args, run):
    points = {args.mask_ratio: {**painted.scores, "probe_accuracy": probes["mae"],
                                "train_seconds": fitted.seconds}}
    for ratio in SWEEP_RATIOS if args.sweep else ():
        if ratio in points:
            continue
        mae = build_mae(ratio, args.seed, summary=False)
        compile_mae(mae.model, args.learning_rate, steps=args.epochs * len(train_ds))
        seconds = train(mae.model, f"mae_{ratio:g}", train_ds, test_ds, args, run).seconds
        scores = evaluate_hidden_patches(mae.model, dataset, dataset.x_test).scores
        points[ratio] = {**scores, "probe_accuracy": probe_accuracy(mae.feature_extractor,
                                                                    dataset),
                         "train_seconds": seconds}
    return [{"mask_ratio": ratio, "hidden_patches": hidden_count(ratio), **points[ratio]}
            for ratio in sorted(points)]


# -- Results --------------------------------------------------------------------------------------

def gather_results(mae, fitted, painted, plain, probes, sweep, args):
    hidden = hidden_count(args.mask_ratio)
    return {"patch_size": PATCH_SIZE, "num_patches": NUM_PATCHES, "hidden_patches": hidden,
            "hidden_fraction": hidden / NUM_PATCHES, "code_dim": ENCODER_DIM,
            "mae": {**painted.scores, "parameters": int(mae.model.count_params()),
                    "encoder_parameters": int(mae.encoder.count_params()), **fitted.results()},
            "plain_autoencoder": plain.scores, "probe_accuracy": probes,
            "mask_ratio_sweep": sweep}


# -- Figures, all from the test split -------------------------------------------------------------
# Test images as the encoder saw them (hidden patches grey), the decoder's painting of the hidden
# patches beside the visible ones, and the originals; and the probe and the error against the
# mask ratio.

def draw_figures(painted, results, dataset, args, folder):
    title = (f"{dataset.title} masked autoencoder, {results['hidden_patches']} of "
             f"{NUM_PATCHES} patches hidden")
    picked = data.examples_per_class(dataset.y_test, 2)
    patches = ops.convert_to_numpy(patchify(dataset.x_test[picked]))
    hidden = np.zeros(patches.shape[:2], bool)
    np.put_along_axis(hidden, painted.hidden[picked], True, axis=1)
    seen = np.where(hidden[..., None], HIDDEN_GREY, patches)
    filled = np.where(hidden[..., None], np.clip(painted.predicted[picked], 0, 1), patches)
    rows = [ops.convert_to_numpy(unpatchify(p)) for p in (seen, filled)]
    plots.plot_image_rows(rows + [dataset.x_test[picked]],
                          ["seen by the encoder", "visible + painted", "original"],
                          folder / "mae_reconstructions.png",
                          f"{title}\ntest images: hidden patches grey, then painted by the decoder")
    plot_sweep(results, folder / "mae_mask_ratio_sweep.png",
               f"{dataset.title} masked autoencoder: what the mask ratio changes"
               + ("" if args.sweep else "\n(one ratio only; --sweep for the curve)"))


def plot_sweep(results, path, title):
    """Probe accuracy (with the baselines as lines) and hidden-patch error against the ratio."""
    sweep, probes = results["mask_ratio_sweep"], results["probe_accuracy"]
    ratios = [point["mask_ratio"] for point in sweep]
    with plt.style.context(plots.STYLE):
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
        left.plot(ratios, [p["probe_accuracy"] for p in sweep], "o-", color="tab:red",
                  label="MAE encoder")
        for name, color in (("plain_autoencoder", "tab:blue"), ("pixels", "black"),
                            ("untrained_encoder", "tab:gray")):
            left.axhline(probes[name], color=color, linestyle="--", linewidth=1.2,
                         label=PROBE_TITLES[name])
        left.set(xlabel="mask ratio (fraction of patches hidden)",
                 ylabel="linear probe test accuracy", title="what the encoder learned")
        right.plot(ratios, [p["hidden_mse_per_pixel"] for p in sweep], "o-", color="tab:red",
                   label="MAE decoder")
        right.plot(ratios, [p["mean_image_hidden_mse_per_pixel"] for p in sweep], "s--",
                   color="black", label="mean training image")
        right.set(xlabel="mask ratio (fraction of patches hidden)", ylim=(0, None),
                  ylabel="test MSE per pixel, hidden patches", title="how well it paints")
        for ax in (left, right):
            ax.set_xlim(0, 1)
            ax.grid(alpha=0.3)
            ax.legend()
        fig.suptitle(title, fontweight="bold")
        plots.save_figure(fig, path)


# -- Summary --------------------------------------------------------------------------------------

def print_summary(results):
    mae, probes = results["mae"], results["probe_accuracy"]
    print(f"\n{SCRIPT_NAME} on {data.counted(results['test_examples'], 'held-out test image')},"
          f" {results['hidden_patches']} of {results['num_patches']} patches hidden:")
    print(f"  hidden patches, MSE per pixel   {mae['hidden_mse_per_pixel']:.4f}  (mean training "
          f"image: {mae['mean_image_hidden_mse_per_pixel']:.4f})")
    print(f"  linear probe, test accuracy     MAE {probes['mae']:.3f}, plain autoencoder "
          f"{probes['plain_autoencoder']:.3f}, raw pixels {probes['pixels']:.3f}, untrained "
          f"encoder {probes['untrained_encoder']:.3f}")
    for point in results["mask_ratio_sweep"] if len(results["mask_ratio_sweep"]) > 1 else ():
        print(f"  mask ratio {point['mask_ratio']:<5g} ({point['hidden_patches']:2d} hidden)  "
              f"probe {point['probe_accuracy']:.3f}, "
              f"hidden MSE {point['hidden_mse_per_pixel']:.4f}")
    print(f"  training                        MAE {mae['train_seconds']:.1f} s "
          f"({mae['seconds_per_epoch']:.2f} s per epoch), plain autoencoder "
          f"{results['plain_autoencoder']['train_seconds']:.1f} s, "
          f"{data.counted(results['train_examples'], 'image')}")


if __name__ == "__main__":
    cli.run(main)
