r"""Contractive autoencoder (CAE) on MNIST, in Keras 3 on TensorFlow, JAX or PyTorch.

A contractive autoencoder (Rifai et al., 2011) asks its code h(x) to be insensitive to the input:
moving x a little should barely move h, except along the directions that the reconstruction
needs, which are the directions in which digits vary. It adds to the reconstruction loss the
squared Frobenius norm of the Jacobian of the code with respect to the input:

    $$ \mathrm{BCE}(x, \hat{x}) + \lambda \|J_h(x)\|_F^2,
       \qquad J_h(x) = \frac{\partial h}{\partial x} $$

For sigmoid units the norm has a closed form, one matrix-vector product per batch instead of a
196 x 784 Jacobian per image. The lesson trains the same network with lambda and with lambda = 0,
from the same initial weights and batches, then measures on the test split the reconstruction
error, the Jacobian norm, and how far the codes move when the test images get a little Gaussian
noise.

    python ContractiveAutoEncoder.py                  # lambda 0.1, 196 sigmoid code units
    python ContractiveAutoEncoder.py --lambda 1       # a stronger contraction
    python ContractiveAutoEncoder.py --hidden 500 --epochs 50

It writes results/ContractiveAutoEncoder.json (its timings among them), models/contractive_*.keras
and figures/contractive_*.png; Ctrl-C, then the same command, resumes. The saved models load in a
fresh process after `import ContractiveAutoEncoder`, which registers its `ContractiveDense` layer.
"""

import common  # first: quiets TensorFlow's start-up logs, registers the suite's Keras objects
import keras
import matplotlib.pyplot as plt
import numpy as np
from keras import layers, ops

from common import cli, comparison, data, losses, metrics, outputs, plots, training
from common.layers import PenalizedModel

SCRIPT_NAME = "ContractiveAutoEncoder"
PIXELS = int(np.prod(data.IMAGE_SHAPE))
NOISE_LEVELS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)  # std of the Gaussian input noise
HEADLINE_NOISE = 0.1    # the noise level reported in the summary (`headline_noise`)
SHOWN_NOISE = 0.2       # the noise level of the noisy row in the reconstruction figure
MAX_HIDDEN = 2_000      # code units: the evaluation encodes the test split at every noise level,
                        # 8 codes per image (4 GB for MNIST's 10,000 test images at 2,000)


def parse_args(argv=None):
    parser = cli.base_parser(SCRIPT_NAME, epochs=30, batch_size=64, learning_rate=3e-3)
    lesson = parser.add_argument_group("this lesson")
    lesson.add_argument("--hidden", default=196,
                        type=cli.at_most(MAX_HIDDEN, "the evaluation holds 8 codes per test image"),
                        help=f"code units (sigmoid), at most {MAX_HIDDEN:,}")
    lesson.add_argument("--lambda", dest="contraction", type=cli.penalty_weight, default=0.1,
                        help="weight of ||J_h(x)||_F^2; the same network is also trained with 0")
    lesson.add_argument("--binarize", choices=data.BINARIZATIONS, default="none",
                        help="how grey pixels become targets; none keeps the grey levels")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    dataset = data.load_dataset(args.dataset, args.data, args.limit)  # checked before all else
    run = outputs.start(args, SCRIPT_NAME, dataset)  # output folders, devices, seeds
    # The same network with lambda and with lambda = 0, from the same start, side by side.
    trained = {contraction: train_and_evaluate(contraction, dataset, args, run)
               for contraction in comparison.settings(args.contraction, baseline=0.0)}
    results = {**run.header, **compare(trained, args)}
    draw_figures(trained, dataset, args, run.figures)
    run.finish(results, **comparison.saved_models("contractive", trained))
    print_summary(results)


# -- Data: grey levels in [0, 1], as inputs and as targets ----------------------------------------
# $$ x \in [0, 1]^{784} $$
# As in the sparse lesson: not a likelihood model, so by default it trains on the grey levels
# and the reconstruction loss is a cross-entropy.


# -- Encoder: sigmoid code units that add their Jacobian's norm to the loss -----------------------
# $$ h(x) = \sigma(W x + b), \qquad
#    \|J_h(x)\|_F^2 = \sum_j \big(h_j (1 - h_j)\big)^2 \sum_i W_{ji}^2 $$
# The closed form follows from the sigmoid's slope, h_j (1 - h_j), times the weights of unit j.
# `ContractiveDense` is a Dense layer of sigmoid units whose `call` also adds lambda times the
# norm, averaged over the batch, with `add_loss`; the `PenalizedModel` around it logs the
# unweighted norm as `jacobian_norm_sq`, also when lambda = 0, so the baseline's log shows its
# Jacobian growing. It and the logits compute in float32 even under --mixed-precision.

def sigmoid_jacobian_norm_sq(codes, kernel):
    """The squared Frobenius norm of the code's Jacobian, per example, in closed form from the
    sigmoid codes and the kernel W, of shape (inputs, units)."""
    slope_sq = ops.square(codes * (1.0 - codes))             # (batch, units)
    column_norms_sq = ops.sum(ops.square(kernel), axis=0)    # (units,)
    return ops.matmul(slope_sq, column_norms_sq)             # (batch,)


@keras.saving.register_keras_serializable(package="autoencoders")
class ContractiveDense(layers.Dense):
    """A Dense layer of sigmoid units that adds `contraction` times the squared Frobenius norm
    of its Jacobian, averaged over the batch, to the loss."""

    penalty_name = "jacobian_norm_sq"  # the name PenalizedModel logs the unweighted norm under

    def __init__(self, units, contraction=0.1, **kwargs):
        activation = kwargs.pop("activation", "sigmoid")
        if activation not in ("sigmoid", keras.activations.sigmoid):
            raise ValueError("the closed-form Jacobian holds for sigmoid units only, "
                             f"got activation={activation!r}")
        super().__init__(units, activation="sigmoid", **kwargs)
        self.contraction = float(contraction)

    def call(self, inputs, training=None):
        codes = super().call(inputs, training=training)
        self.last_penalty = ops.mean(sigmoid_jacobian_norm_sq(codes, self.kernel))
        self.add_loss(self.contraction * self.last_penalty)
        return codes

    def get_config(self):
        return {**super().get_config(), "contraction": self.contraction}


def build_encoder(hidden, contraction):
    images = keras.Input(shape=data.IMAGE_SHAPE, name="image")
    x = layers.Flatten(name="flatten")(images)
    codes = ContractiveDense(hidden, contraction=contraction, name="code", dtype="float32")(x)
    return keras.Model(images, codes, name="encoder")


# -- Decoder: one Bernoulli probability per pixel, from its logit ---------------------------------
# $$ l = W' h + b', \quad \hat{x}_i = \sigma(l_i) $$

def build_decoder(hidden):
    codes = keras.Input(shape=(hidden,), name="code")
    x = layers.Dense(PIXELS, name="pixel_logits", dtype="float32")(codes)
    logits = layers.Reshape(data.IMAGE_SHAPE, name="image_logits", dtype="float32")(x)
    return keras.Model(codes, logits, name="decoder")


# -- The autoencoder: image, encoder (with its penalty), decoder, logits --------------------------
# `PenalizedModel` is a functional `keras.Model` that logs the penalty its encoder's layer keeps.

def build_autoencoder(encoder, decoder):
    images = keras.Input(shape=data.IMAGE_SHAPE, name="image")
    return PenalizedModel(images, decoder(encoder(images)), name="contractive_autoencoder")


# -- Loss: the cross-entropy from the logits, plus the contraction --------------------------------
# $$ \mathrm{BCE}(x, \hat{x})
#    = -\sum_i \big[x_i \log \hat{x}_i + (1 - x_i) \log(1 - \hat{x}_i)\big] $$
# Computed from the logits (nothing clipped) and summed over the 784 pixels, in nats per image;
# Keras adds the encoder's penalty, so loss = reconstruction_loss + lambda * jacobian_norm_sq.

def compile_autoencoder(autoencoder, learning_rate):
    autoencoder.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=losses.bernoulli_nll,
                        metrics=[keras.metrics.MeanMetricWrapper(losses.bernoulli_nll,
                                                                 name="reconstruction_loss")])
    training.set_execution(autoencoder)  # steps per call and jax.jit, for this backend


# -- Training -------------------------------------------------------------------------------------
# Keras's fit, with the test split as validation data and three callbacks: a backup after every
# epoch, so that Ctrl-C and the same command resume (`ResumableBackup`), a stop at the first NaN
# or exploding loss (`StopOnDivergence`), and, with --tensorboard, Keras's TensorBoard.

def train(autoencoder, name, train_ds, test_ds, args, run):
    backup = training.ResumableBackup(run.checkpoint(name, autoencoder), train_ds)
    callbacks = [training.StopOnDivergence(autoencoder, test_ds), backup]
    if args.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(run.logs(name)))
    autoencoder.fit(train_ds, validation_data=test_ds, epochs=args.epochs, callbacks=callbacks,
                    shuffle=False, verbose=2)  # the batches shuffle themselves, per epoch
    return backup.fitted()


# -- Evaluation on the test split: reconstruction, Jacobian norm, code sensitivity ----------------
# $$ \frac{\|h(x + e) - h(x)\|}{\|e\|} \approx \frac{\|J_h(x)\|_F}{\sqrt{784}},
#    \qquad e \sim N(0, \sigma^2 I) $$
# How far the code moves under Gaussian input noise, per unit of noise. For small sigma the
# change is J e, of size about sigma ||J||_F, while ||e|| is about 28 sigma: the ratio then
# checks the closed form.

def code_sensitivity(encode, x, noise_levels, seed):
    """How far the code moves per unit of noise, how far it moves, and how large the noise is,
    each a mean over images, at each sigma of `noise_levels`. One direction eps ~ N(0, I) per
    image is drawn (seeded) and scaled by every sigma, so both models and all noise levels see
    the same noise; the noisy images are not clipped to [0, 1] (this probes the function h).
    One call encodes them all."""
    flat = x.reshape(len(x), -1)
    eps = np.random.default_rng(seed).standard_normal(flat.shape).astype(np.float32)
    noisy = np.concatenate([flat + sigma * eps for sigma in noise_levels])
    codes = encode(np.concatenate([flat, noisy]).reshape(-1, *data.IMAGE_SHAPE))
    clean, moved = codes[:len(x)], codes[len(x):].reshape(len(noise_levels), len(x), -1)
    change = np.linalg.norm(moved - clean, axis=-1)                          # (levels, N)
    size = np.asarray(noise_levels)[:, None] * np.linalg.norm(eps, axis=-1)  # ||e||, (levels, N)
    return np.mean(change / size, axis=1), np.mean(change, axis=1), np.mean(size, axis=1)


def evaluate(encoder, decoder, test_inputs, seed):
    """The scores on the test split, and the arrays the figures draw."""
    def encode(images):
        return training.predict(encoder, images)

    codes = encode(test_inputs)
    logits = training.predict(decoder, codes)
    jacobian_norms = np.sqrt(ops.convert_to_numpy(
        sigmoid_jacobian_norm_sq(codes, encoder.get_layer("code").kernel)))
    ratio, change, noise_size = code_sensitivity(encode, test_inputs, NOISE_LEVELS, seed)
    noisy = test_inputs + SHOWN_NOISE * np.random.default_rng(seed + 1).standard_normal(
        test_inputs.shape).astype(np.float32)
    noisy_logits = training.predict(decoder, encode(noisy))
    scores = {**metrics.reconstruction_errors(test_inputs, logits),
              "mean_jacobian_frobenius": float(np.mean(jacobian_norms)),
              "mean_jacobian_frobenius_sq": float(np.mean(jacobian_norms**2)),
              "code_change_per_noise": float(ratio[NOISE_LEVELS.index(HEADLINE_NOISE)]),
              "code_change_per_noise_by_level": [float(r) for r in ratio],
              "code_change_by_level": [float(c) for c in change]}
    return scores, {"noise_size": noise_size,  # mean ||e|| at each noise level
                    "reconstructions": ops.convert_to_numpy(ops.sigmoid(logits)),
                    "noisy_inputs": noisy,  # the test images + noise of std SHOWN_NOISE
                    "noisy_reconstructions": ops.convert_to_numpy(ops.sigmoid(noisy_logits))}


# -- Lambda against 0: the same network twice, from the same start --------------------------------
# Each setting resets every seed first, so both networks start from the same weights and see the
# same batches: the differences below are the contraction's doing.

def train_and_evaluate(contraction, dataset, args, run):
    keras.utils.set_random_seed(args.seed)  # the same initial weights and batches for each one
    train_ds, test_ds, test_inputs = data.autoencoder_datasets(
        dataset, args.batch_size, args.binarize, args.seed)
    encoder, decoder = build_encoder(args.hidden, contraction), build_decoder(args.hidden)
    if contraction == args.contraction:
        encoder.summary()
        decoder.summary()
    autoencoder = build_autoencoder(encoder, decoder)
    compile_autoencoder(autoencoder, args.learning_rate)
    print(f"\ntraining with lambda = {contraction:g}")
    fitted = train(autoencoder, f"lambda_{contraction:g}", train_ds, test_ds, args, run)
    scores, arrays = evaluate(encoder, decoder, test_inputs, args.seed)
    return comparison.Trained(encoder, decoder, autoencoder, fitted, scores, arrays)


# -- Results: penalized_... and baseline_..., side by side ----------------------------------------

def compare(trained, args):
    return {"noise_levels": list(NOISE_LEVELS), "headline_noise": HEADLINE_NOISE,
            **comparison.side_by_side(trained, args.contraction, baseline=0.0)}


# -- Figures, all from the test split -------------------------------------------------------------
# How far the code moves against the size of the noise, and test images, clean and noisy, with
# their reconstructions, for each lambda.

def draw_figures(trained, dataset, args, folder):
    title = (f"{dataset.title} contractive autoencoder, "
             f"{args.hidden} sigmoid code units")
    plot_sensitivity(trained, folder / "contractive_sensitivity.png",
                     f"{title}\nhow far the code moves under Gaussian input noise "
                     f"({len(dataset.x_test):,} test images)")
    picked = data.examples_per_class(dataset.y_test, 2)
    test_inputs = data.test_inputs(dataset, args.binarize, args.seed)
    arrays = [t.arrays for t in trained.values()]
    noisy = arrays[0]["noisy_inputs"][picked]  # the same noise for every lambda
    rows = ([test_inputs[picked]] + [a["reconstructions"][picked] for a in arrays]
            + [np.clip(noisy, 0, 1)] + [a["noisy_reconstructions"][picked] for a in arrays])
    labels = (["test image"] + [f"lambda {c:g}" for c in trained]
              + [f"+ noise, std {SHOWN_NOISE:g}"] + [f"lambda {c:g}, from noisy" for c in trained])
    plots.plot_image_rows(rows, labels, folder / "contractive_reconstructions.png",
                          f"{title}\ntest images and their reconstructions")


def plot_sensitivity(trained, path, title):
    """Left: the mean code change against the mean noise size. Right: their ratio against sigma,
    with the first-order prediction, mean ||J_h(x)||_F / sqrt(784), as a dashed line."""
    with plt.style.context(plots.STYLE):
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4), layout="constrained")
        for i, (contraction, result) in enumerate(trained.items()):
            scores, colour, label = result.scores, f"C{i}", f"lambda {contraction:g}"
            left.loglog(result.arrays["noise_size"], scores["code_change_by_level"], "o-",
                        color=colour, label=label)
            right.semilogx(NOISE_LEVELS, scores["code_change_per_noise_by_level"], "o-",
                           color=colour, label=label)
            right.axhline(scores["mean_jacobian_frobenius"] / np.sqrt(PIXELS), color=colour,
                          linestyle="--", linewidth=1,
                          label=f"lambda {contraction:g}: mean ||J||_F / sqrt(784)")
        left.set(xlabel="noise size ||e||", ylabel="code change ||h(x + e) - h(x)||",
                 title="code change against noise size")
        right.set(xlabel="noise std sigma (per pixel)",
                  ylabel="||h(x + e) - h(x)|| / ||e||", title="code change per unit of noise")
        right.set_ylim(bottom=0)
        for ax in (left, right):
            ax.grid(alpha=0.3, which="both")
            ax.legend()
        fig.suptitle(title, fontweight="bold")
        plots.save_figure(fig, path)


# -- Summary --------------------------------------------------------------------------------------

def print_summary(results):
    comparison.print_table(
        f"\n{SCRIPT_NAME} on {results['test_examples']:,} held-out test images "
        f"({results['binarize']} binarization; none = grey levels as targets):",
        {"penalized": f"lambda {results['contraction']:g}", "baseline": "lambda 0"},
        [("reconstruction, BCE nats/image", "test_bce_nats", ".2f"),
         ("reconstruction, MSE per pixel", "test_mse_per_pixel", ".5f"),
         ("mean ||J_h(x)||_F", "mean_jacobian_frobenius", ".3f"),
         (f"||h(x+e) - h(x)|| / ||e||, std {results['headline_noise']:g}",
          "code_change_per_noise", ".4f"),
         ("training seconds", "train_seconds", ".1f")], results)


if __name__ == "__main__":
    cli.run(main)
