r"""Conditional variational autoencoder (CVAE) on MNIST, in Keras 3 on TensorFlow, JAX or PyTorch.

A plain VAE draws random digits: you cannot ask it for a 7. A CVAE gives the one-hot label y to
both networks, the encoder q(z | x, y) and the decoder p(x | z, y), while the prior stays
p(z) = N(0, I). The label then says which digit to draw and z is left with the style (slant,
stroke width, loops). It is trained by maximising the conditional evidence lower bound:

    $$ \log p(x|y) \ge E_{q(z|x,y)}[\log p(x|z,y)] - \mathrm{KL}(q(z|x,y) \| p(z)) $$

To draw a digit d, decode z ~ N(0, I) with y = d. The lesson scores the test split in nats (the
negative conditional ELBO and the IWAE estimate of -log p(x | y)), then checks that the label is
obeyed: an independent judge, a small CNN trained here on real digits, labels hundreds of
generated digits of every class, and the conditional accuracy is the fraction it labels as the
digit asked for (about 0.1 if the decoder ignored the label).

    python ConditionalVAE.py                         # MLP, 2-D latent space
    python ConditionalVAE.py --arch conv --latent-dim 8 --epochs 30
    python ConditionalVAE.py --samples-per-class 1000

It writes results/ConditionalVAE.json (its timings among them), models/cvae*.keras,
models/digit_classifier.keras and figures/cvae_*.png; Ctrl-C, then the same command, resumes.
The saved models load in a fresh process after `import ConditionalVAE`, which registers its
`Sampling` layer and loss.
"""

import common  # first: quiets TensorFlow's start-up logs, registers the suite's Keras objects
import keras
import matplotlib.pyplot as plt
import numpy as np
from keras import layers, ops

from common import cli, data, metrics, outputs, plots, training
from common.layers import PenalizedModel

SCRIPT_NAME = "ConditionalVAE"
HIDDEN_UNITS = 512          # the MLP's hidden layer: (784 + 10)-512-latent and back
CONV_FILTERS = (32, 64)     # the conv encoder's two stride-2 layers: 28 -> 14 -> 7
CONV_DENSE_UNITS = 128      # the conv encoder's dense layer, where the label joins
PIXELS = int(np.prod(data.IMAGE_SHAPE))  # 784 terms in the reconstruction, one per pixel
JUDGE_LEARNING_RATE = 1e-3  # the judge's Adam step size (not --learning-rate, the CVAE's)
PREDICT_BATCH = 1000        # images per batch when generating and judging
STYLE_COLUMNS = 12          # columns (one z each) in figures/cvae_digits.png
MAX_SAMPLES_PER_CLASS = 10_000  # 100,000 generated digits: a standard error under 0.005


def parse_args(argv=None):
    parser = cli.base_parser(SCRIPT_NAME, epochs=40, batch_size=128, learning_rate=1e-3)
    lesson = parser.add_argument_group("this lesson")
    lesson.add_argument("--arch", choices=("mlp", "conv"), default="mlp",
                        help="dense or convolutional encoder and decoder, both given the label")
    lesson.add_argument("--latent-dim", type=cli.latent_dim, default=2,
                        help=f"size of z, the style, 1 to {cli.MAX_LATENT_DIM}; 2 gives a latent "
                             "space you can draw, 1 a strip")
    lesson.add_argument("--beta", type=cli.penalty_weight, default=1.0,
                        help="weight of the KL term")
    lesson.add_argument("--binarize", choices=data.BINARIZATIONS, default="dynamic",
                        help="how grey pixels become Bernoulli targets")
    lesson.add_argument("--iwae-samples", type=cli.iwae_samples, default=100,
                        help=f"importance samples k for the test -log p(x | y) estimate, at most "
                             f"{cli.MAX_IWAE_SAMPLES:,}")
    judge = parser.add_argument_group("the judge: conditional accuracy")
    judge.add_argument("--samples-per-class", default=500,
                       type=cli.at_most(MAX_SAMPLES_PER_CLASS, "they are generated and judged "
                                                               "at once"),
                       help=f"digits generated per class (z ~ N(0, I)) for the judge to label, at "
                            f"most {MAX_SAMPLES_PER_CLASS:,}")
    judge.add_argument("--classifier-epochs", type=cli.positive_int, default=10,
                       help="training epochs of the judge")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    # Checked before all else; the judge needs at least two classes to learn.
    dataset = data.load_dataset(args.dataset, args.data, args.limit, min_classes=2)
    run = outputs.start(args, SCRIPT_NAME, dataset)  # output folders, devices, seeds
    train_ds, test_ds, test_inputs = data.autoencoder_datasets(
        dataset, args.batch_size, args.binarize, args.seed, with_labels=True)
    encoder, decoder, cvae = build_cvae(args.arch, args.latent_dim, args.beta, args.seed)
    compile_cvae(cvae, args.learning_rate)
    fitted = train(cvae, train_ds, test_ds, args.epochs, args, run)
    scores = evaluate_elbo(encoder, decoder, test_inputs, dataset.y_test, args)
    judge, judge_timing = train_judge(dataset, args, run)
    verdict = evaluate_conditional_accuracy(decoder, judge, dataset, args)
    results = {**run.header, **scores, **verdict, **fitted.results(), **judge_timing}
    draw_figures(encoder, decoder, dataset, test_inputs, args, run.figures)
    run.finish(results, cvae=cvae, cvae_encoder=encoder, cvae_decoder=decoder,
               digit_classifier=judge)
    print_summary(results)


# -- Data: binarized digits and their one-hot labels --------------------------------------------
# $$ y = (y_0, \dots, y_9), \quad y_c = 1 \text{ if the digit is } c, \text{ else } 0 $$
# The pipelines yield ((image, one-hot label), image): two inputs, and the image as the target,
# binarized as in the VAE lesson (a fresh draw every epoch; the test split once, with a seed).

def one_hot(labels):
    """Integer labels (N,) -> one-hot rows (N, 10), float32: the y both networks are given."""
    return np.eye(data.NUM_CLASSES, dtype=np.float32)[np.asarray(labels)]


# -- Encoder: a diagonal Gaussian over z, given the image and its label -------------------------
# $$ q(z|x,y) = N(\mu(x,y), \mathrm{diag}(\sigma^2(x,y))) $$
# Two inputs. The image's features are concatenated with the one-hot label before the last hidden
# layer, so the encoder knows which digit it is looking at and need not spend z on saying so.
# The layers that feed the loss stay float32 under --mixed-precision, as in the VAE lesson.

def build_encoder(arch, latent_dim):
    images = keras.Input(shape=data.IMAGE_SHAPE, name="image")
    labels = keras.Input(shape=(data.NUM_CLASSES,), name="label")
    if arch == "mlp":
        x = layers.Flatten(name="flatten")(images)
        x = layers.Concatenate(name="image_and_label")([x, labels])
        x = layers.Dense(HIDDEN_UNITS, activation="relu", name="encoder_hidden")(x)
    else:
        x = images
        for i, filters in enumerate(CONV_FILTERS):
            x = layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu",
                              name=f"encoder_conv{i + 1}")(x)
        x = layers.Flatten(name="flatten")(x)
        x = layers.Concatenate(name="features_and_label")([x, labels])
        x = layers.Dense(CONV_DENSE_UNITS, activation="relu", name="encoder_hidden")(x)
    z_mean = layers.Dense(latent_dim, name="z_mean", dtype="float32")(x)
    z_log_var = layers.Dense(latent_dim, name="z_log_var", dtype="float32")(x)
    return keras.Model([images, labels], [z_mean, z_log_var], name="encoder")


# -- Sampling: the reparameterisation trick, and the KL term ------------------------------------
# $$ z = \mu + \sigma \odot \epsilon, \quad \epsilon \sim N(0, I); \qquad
#    \mathrm{KL}(q(z|x,y) \| p(z))
#    = -\frac{1}{2} \sum_j (1 + \log \sigma_j^2 - \mu_j^2 - \sigma_j^2) $$
# As in the VAE lesson: drawing eps rather than z lets gradients flow into mu and log sigma^2, and
# the KL between two Gaussians needs no sampling. The layer adds its batch mean, times beta, to
# the loss with `add_loss`, and keeps the unweighted KL, which the `PenalizedModel` around it logs
# as `kl_loss`. The label does not reach it: the prior p(z) = N(0, I) is the same for every digit.

@keras.saving.register_keras_serializable(package="autoencoders")
class Sampling(layers.Layer):
    """z = mu + sigma * eps, adding beta * KL(q(z|x,y) || N(0, I)) to the model's loss."""

    penalty_name = "kl_loss"  # the name PenalizedModel logs the unweighted KL under

    def __init__(self, beta=1.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.beta, self.seed = float(beta), seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs):
        z_mean, z_log_var = inputs
        kl = -0.5 * ops.sum(1 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var), axis=-1)
        self.last_penalty = ops.mean(kl)  # nats per image, averaged over the batch
        self.add_loss(self.beta * self.last_penalty)
        epsilon = keras.random.normal(ops.shape(z_mean), seed=self.seed_generator)
        return z_mean + ops.exp(0.5 * z_log_var) * epsilon

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "beta": self.beta, "seed": self.seed}


# -- Decoder: a Bernoulli distribution over the pixels, given z and the label -------------------
# $$ p(x|z,y) = \prod_i \mathrm{Bernoulli}(x_i; \mathrm{sigmoid}(l_i(z,y))) $$
# Two inputs, the style z and the one-hot label, concatenated. It returns logits; a sigmoid turns
# them into the grey images (Bernoulli means) that we draw and that the judge labels.

def build_decoder(arch, latent_dim):
    z = keras.Input(shape=(latent_dim,), name="z")
    labels = keras.Input(shape=(data.NUM_CLASSES,), name="label")
    x = layers.Concatenate(name="z_and_label")([z, labels])
    if arch == "mlp":
        x = layers.Dense(HIDDEN_UNITS, activation="relu", name="decoder_hidden")(x)
        x = layers.Dense(PIXELS, name="pixel_logits", dtype="float32")(x)
        logits = layers.Reshape(data.IMAGE_SHAPE, name="image_logits", dtype="float32")(x)
    else:
        x = layers.Dense(7 * 7 * CONV_FILTERS[-1], activation="relu", name="decoder_hidden")(x)
        x = layers.Reshape((7, 7, CONV_FILTERS[-1]), name="feature_map")(x)
        for i, filters in enumerate(reversed(CONV_FILTERS)):
            x = layers.Conv2DTranspose(filters, 3, strides=2, padding="same", activation="relu",
                                       name=f"decoder_deconv{i + 1}")(x)
        logits = layers.Conv2D(1, 3, padding="same", name="image_logits", dtype="float32")(x)
    return keras.Model([z, labels], logits, name="decoder")


# -- The CVAE: image and label, encoder, Sampling, decoder, logits ------------------------------
# The same label goes to both networks. `PenalizedModel` is a functional `keras.Model` that logs
# the KL its Sampling layer keeps.

def build_cvae(arch, latent_dim, beta, seed, summary=True):
    encoder, decoder = build_encoder(arch, latent_dim), build_decoder(arch, latent_dim)
    if summary:
        encoder.summary()
        decoder.summary()
    images = keras.Input(shape=data.IMAGE_SHAPE, name="image")
    labels = keras.Input(shape=(data.NUM_CLASSES,), name="label")
    z_mean, z_log_var = encoder([images, labels])
    z = Sampling(beta=beta, seed=seed, name="sampling", dtype="float32")([z_mean, z_log_var])
    return encoder, decoder, PenalizedModel([images, labels], decoder([z, labels]), name="cvae")


# -- Loss: the negative conditional ELBO, in nats per image -------------------------------------
# $$ -\mathrm{ELBO}(x, y)
#    = \sum_{i=1}^{784} (\mathrm{softplus}(l_i) - x_i l_i) + \beta\,\mathrm{KL} $$
# The first term is -log p(x|z,y), the Bernoulli negative log-likelihood from the logits (the
# binary cross-entropy with from_logits=True, nothing clipped), summed over the 784 pixels; the
# second is added by the Sampling layer. The log shows `loss`, `reconstruction_loss` and
# `kl_loss`, and val_... of each.

@keras.saving.register_keras_serializable(package="autoencoders")
def bernoulli_nll(images, logits):
    """-log p(x | z, y) per image: the binary cross-entropy from logits, summed over pixels."""
    per_pixel = ops.binary_crossentropy(images, logits, from_logits=True)
    return ops.sum(ops.reshape(per_pixel, (ops.shape(per_pixel)[0], -1)), axis=-1)


def compile_cvae(cvae, learning_rate):
    cvae.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=bernoulli_nll,
                 metrics=[keras.metrics.MeanMetricWrapper(bernoulli_nll,
                                                          name="reconstruction_loss")])
    training.set_execution(cvae)  # steps per call and jax.jit, for this backend


# -- Training -----------------------------------------------------------------------------------
# Keras's fit, for the CVAE here and for the judge below, with three callbacks: a backup after
# every epoch, so that Ctrl-C and the same command resume (`ResumableBackup`); a stop at the first
# NaN or exploding loss (`StopOnDivergence`, against the untrained loss on a first batch of the
# validation data, or of the training data without any); and, with --tensorboard, TensorBoard.

def train(model, train_data, validation_data, epochs, args, run):
    backup = training.ResumableBackup(run.checkpoint(model.name, model), train_data)
    reference = train_data if validation_data is None else validation_data
    callbacks = [training.StopOnDivergence(model, reference), backup]
    if args.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(run.logs(model.name)))
    model.fit(train_data, validation_data=validation_data, epochs=epochs, callbacks=callbacks,
              shuffle=False, verbose=2)  # the batches shuffle themselves, per epoch
    return backup.fitted()


# -- Evaluation: the conditional ELBO on the test split -----------------------------------------
# $$ \log p(x|y) \ge \log \frac{1}{k} \sum_{i=1}^k \frac{p(x|z_i,y)\, p(z_i)}{q(z_i|x,y)},
#    \quad z_i \sim q(z|x,y) $$
# Each test image is encoded and decoded with its own label, so the negative ELBO and this
# importance-weighted (IWAE) estimate bound -log p(x | y): the cost of the image once its digit
# is known. A latent unit is active when its posterior mean varies over the data.

def evaluate_elbo(encoder, decoder, test_inputs, test_labels, args):
    labels = one_hot(test_labels)
    z_mean, z_log_var = training.predict(encoder, (test_inputs, labels))

    def decode_logits(z, rows):  # rows[i] is the test image behind z[i]: decode with its label
        return decoder([z, labels[rows]], training=False)

    scores = metrics.evaluate_elbo(test_inputs, z_mean, z_log_var, decode_logits,
                                   samples=args.iwae_samples, seed=args.seed)
    return {"test_neg_elbo_nats": scores["neg_elbo"],
            "test_reconstruction_nats": scores["reconstruction"],
            "test_kl_nats": scores["kl"],
            "test_nll_iwae_nats": scores["nll_iwae"],
            "active_units": metrics.active_units(z_mean)}


# -- The judge: an independent digit classifier -------------------------------------------------
# $$ p(y|x) = \mathrm{softmax}(f(x))_y, \quad \text{trained to minimise } -\log p(y|x) $$
# A small CNN trained on the real, grey training digits. It never sees a generated digit while it
# trains, so its verdict on them is an outside opinion; its accuracy on the real test digits is
# the ceiling the conditional accuracy can reach.

def build_judge(seed):
    images = keras.Input(shape=data.IMAGE_SHAPE, name="image")
    x = layers.Conv2D(32, 3, activation="relu", name="classifier_conv1")(images)
    x = layers.MaxPooling2D(name="classifier_pool1")(x)
    x = layers.Conv2D(64, 3, activation="relu", name="classifier_conv2")(x)
    x = layers.MaxPooling2D(name="classifier_pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dropout(0.5, seed=seed, name="dropout")(x)
    logits = layers.Dense(data.NUM_CLASSES, name="class_logits", dtype="float32")(x)
    return keras.Model(images, logits, name="digit_classifier")


def train_judge(dataset, args, run):
    """The trained judge, and its training time for the results."""
    judge = build_judge(args.seed)
    judge.summary()
    judge.compile(optimizer=keras.optimizers.Adam(JUDGE_LEARNING_RATE),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    training.set_execution(judge)
    real_digits = data.batches((dataset.x_train, dataset.y_train), args.batch_size, args.seed)
    fitted = train(judge, real_digits, None, args.classifier_epochs, args, run)
    return judge, {"classifier_train_seconds": fitted.seconds}


# -- Evaluation: does the decoder draw the digit it is asked for? -------------------------------
# $$ \mathrm{accuracy} = \frac{1}{10 n} \sum_{c=0}^{9} \sum_{i=1}^{n}
#    \mathbf{1}[\arg\max_k p(k | \mathrm{decoder}(z_i, c)) = c], \quad z_i \sim N(0, I) $$
# For each class c, n = --samples-per-class codes z are decoded with y = c and the judge labels
# the images: the conditional accuracy is the fraction labelled c, overall and per class.

def conditional_accuracy(generate, classify, latent_dim, per_class, seed=0,
                         num_classes=data.NUM_CLASSES):
    """How often `classify` (images -> class scores) labels `generate(z, labels)` as asked.

    Returns the overall fraction and the fraction per asked class (an array of num_classes).
    A generator that ignores the label scores about 1 / num_classes; one that obeys it, the
    classifier's own accuracy.
    """
    rng = np.random.default_rng(seed)
    asked = np.repeat(np.arange(num_classes), per_class)
    z = rng.standard_normal((len(asked), latent_dim)).astype(np.float32)
    predicted = np.argmax(np.asarray(classify(generate(z, asked))), axis=-1)
    hits = predicted == asked
    return float(hits.mean()), hits.reshape(num_classes, per_class).mean(axis=1)


def generate(decoder, z, labels):
    """Decode codes z with the asked integer labels: Bernoulli means, i.e. grey images."""
    logits = training.predict(decoder, (z, one_hot(labels)), batch_size=PREDICT_BATCH)
    return ops.convert_to_numpy(ops.sigmoid(logits))


def evaluate_conditional_accuracy(decoder, judge, dataset, args):
    def classify(images):
        return training.predict(judge, images, batch_size=PREDICT_BATCH)  # class logits

    judge_accuracy = float(np.mean(np.argmax(classify(dataset.x_test), -1) == dataset.y_test))
    accuracy, per_class = conditional_accuracy(
        lambda z, labels: generate(decoder, z, labels), classify, args.latent_dim,
        args.samples_per_class, seed=args.seed)
    return {"conditional_accuracy": accuracy,
            "conditional_accuracy_per_class": dict(zip(dataset.class_names,
                                                       map(float, per_class))),
            "classifier_test_accuracy": judge_accuracy}


# -- Figures, from the test split or the prior --------------------------------------------------
# A grid of every label drawn in a dozen styles z from the prior; style transfer, the z of a test
# digit (encoded with its own label) decoded as every label; and the latent space of the test set.

def draw_figures(encoder, decoder, dataset, test_inputs, args, folder):
    z_mean = training.predict(encoder, (test_inputs, one_hot(dataset.y_test)))[0]
    title = (f"{dataset.title} conditional VAE "
             f"({args.arch}, latent {args.latent_dim}, beta {args.beta:g})")
    digits = np.arange(data.NUM_CLASSES)
    # One z per column, every label per row: the column keeps the style, the row picks the digit.
    z = ops.convert_to_numpy(keras.random.normal((STYLE_COLUMNS, args.latent_dim),
                                                 seed=args.seed))
    grid = generate(decoder, np.tile(z, (data.NUM_CLASSES, 1)), np.repeat(digits, STYLE_COLUMNS))
    plots.plot_image_rows(list(grid.reshape(data.NUM_CLASSES, STYLE_COLUMNS, *data.IMAGE_SHAPE)),
                          [f"y = {name}" for name in dataset.class_names],
                          folder / "cvae_digits.png",
                          f"{title}\neach column one z ~ N(0, I), each row one label y")
    # Style transfer: a real test digit's z_mean (encoded with its own label) decoded as each label.
    picked = data.examples_per_class(dataset.y_test, 1)
    transfers = generate(decoder, np.repeat(z_mean[picked], data.NUM_CLASSES, axis=0),
                         np.tile(digits, len(picked)))
    plot_style_transfer(dataset.x_test[picked],
                        transfers.reshape(len(picked), data.NUM_CLASSES, *data.IMAGE_SHAPE),
                        dataset.class_names, folder / "cvae_style_transfer.png",
                        f"{title}\nstyle transfer: z_mean of a test digit decoded as each label")
    plots.plot_latent_scatter(z_mean, dataset.y_test, folder / "cvae_latent_scatter.png", title,
                              dataset.class_names, note=", label given", seed=args.seed)


def plot_style_transfer(originals, transfers, class_names, path, title):
    """Each row: a real digit, then its z decoded as every label; a red line parts the two."""
    rows, cols = transfers.shape[:2]
    images = np.concatenate([originals[:, None], transfers], axis=1)
    step = data.IMAGE_SHAPE[0] + 1  # one image and the one-pixel gap that `plots.tile` leaves
    with plt.style.context(plots.STYLE):
        fig, ax = plt.subplots(figsize=((cols + 1) * 0.6, rows * 0.6 + 1.0))
        ax.imshow(plots.tile(images.reshape(-1, *data.IMAGE_SHAPE), rows, cols + 1),
                  vmin=0, vmax=1)
        ax.axvline(step - 1, color="tab:red", linewidth=2)  # on the gap after the first column
        ax.set_xticks(np.arange(cols + 1) * step + step / 2 - 1, ["test", *class_names])
        ax.set_yticks([])
        ax.set(title=title, xlabel="decoded as label y")
        plots.save_figure(fig, path)


# -- Summary ------------------------------------------------------------------------------------

def print_summary(results):
    print(f"\n{SCRIPT_NAME} on {results['test_examples']:,} held-out test images "
          f"({results['binarize']} binarization), in nats per image:")
    print(f"  negative ELBO              {results['test_neg_elbo_nats']:8.2f}"
          f"  = reconstruction {results['test_reconstruction_nats']:.2f}"
          f" + KL {results['test_kl_nats']:.2f}")
    print(f"  -log p(x | y), IWAE k={results['iwae_samples']:<4d} "
          f"{results['test_nll_iwae_nats']:8.2f}")
    print(f"  active units               {results['active_units']:5d} of {results['latent_dim']}")
    print(f"  classifier test accuracy   {results['classifier_test_accuracy']:8.3f}"
          f"  (the judge, on real test digits)")
    print(f"  conditional accuracy       {results['conditional_accuracy']:8.3f}"
          f"  ({results['samples_per_class']} digits per class drawn with z ~ N(0, I))")
    print("  per class                  " + "  ".join(
        f"{name}: {a:.2f}" for name, a in results["conditional_accuracy_per_class"].items()))
    print(f"  training                   {results['train_seconds']:8.1f} s "
          f"({results['seconds_per_epoch']:.2f} s per epoch, "
          f"{data.counted(results['train_examples'], 'image')})"
          f"; classifier {results['classifier_train_seconds']:.1f} s")


if __name__ == "__main__":
    cli.run(main)
