r"""Sparse autoencoder on MNIST, in Keras 3 on TensorFlow, JAX or PyTorch.

An autoencoder need not squeeze its code through a narrow bottleneck to learn something useful:
it can have many code units (196 here, more than the 784 pixels with --hidden 1000) and be kept
from copying its input by a penalty that keeps the code sparse, most units near 0 on any one
image. Each unit then becomes a detector of a stroke or a part of a digit. The classic penalty
(Andrew Ng's sparse-autoencoder notes) asks every sigmoid unit j to be active a fraction rho of
the time, on average over a batch (its mean activation rho_hat_j); it trains to minimise

    $$ \mathrm{BCE}(x, \hat{x}) + \beta \sum_j \mathrm{KL}(\rho \,\|\, \hat\rho_j) $$

(`--penalty l1` penalises the activations' absolute values instead). The lesson trains the same
network with the penalty and without it, from the same initial weights and batches, and measures
on the test split what the penalty buys (sparser codes, local features) and costs
(reconstruction error).

    python SparseAutoEncoder.py                             # KL penalty, 196 units, and none
    python SparseAutoEncoder.py --penalty l1 --l1 0.08      # L1 activity regularization instead
    python SparseAutoEncoder.py --hidden 1000 --epochs 60   # an overcomplete code

It writes results/SparseAutoEncoder.json (its timings among them), models/sparse_*.keras and
figures/sparse_*.png; Ctrl-C, then the same command, resumes. The saved models load in a fresh
process after `import SparseAutoEncoder`, which registers its penalty layers.
"""

import argparse

import common  # first: quiets TensorFlow's start-up logs, registers the suite's Keras objects
import keras
import matplotlib.pyplot as plt
import numpy as np
from keras import layers, ops

from common import cli, comparison, data, losses, metrics, outputs, plots, training
from common.layers import PenalizedModel

SCRIPT_NAME = "SparseAutoEncoder"
PIXELS = int(np.prod(data.IMAGE_SHAPE))
ACTIVE_THRESHOLD = 0.1     # a unit is active on an image when h_j(x) > 0.1
ALWAYS_ON_THRESHOLD = 0.9  # a unit never below 0.9 on any test image is always on
SHOWN_UNITS = 64           # encoder features drawn per model, as an 8 x 8 grid
_EPSILON = 1e-7            # keeps log(rho_hat), log(1 - rho_hat) finite for a unit stuck at 0 or 1
MAX_HIDDEN = 10_000        # code units, 13 per pixel: 1.8 GB to train on the offline sample


def parse_args(argv=None):
    parser = cli.base_parser(SCRIPT_NAME, epochs=30, batch_size=64, learning_rate=3e-3)
    lesson = parser.add_argument_group("this lesson")
    lesson.add_argument("--hidden", default=196,
                        type=cli.at_most(MAX_HIDDEN, "the largest code this lesson trains"),
                        help=f"code units (sigmoid), at most {MAX_HIDDEN:,}; above 784 the code is "
                             "overcomplete")
    lesson.add_argument("--penalty", choices=("kl", "l1", "none"), default="kl",
                        help="the sparsity penalty; the same network is also trained with none")
    lesson.add_argument("--rho", type=probability, default=0.05,
                        help="KL penalty: target mean activation of every code unit")
    lesson.add_argument("--beta", type=cli.penalty_weight, default=3.0,
                        help="KL penalty: its weight")
    lesson.add_argument("--l1", type=cli.penalty_weight, default=1e-4,
                        help="L1 penalty: its weight")
    lesson.add_argument("--binarize", choices=data.BINARIZATIONS, default="none",
                        help="how grey pixels become targets; none keeps the grey levels")
    return parser.parse_args(argv)


def probability(text):
    """An argparse type: a number strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a number between 0 and 1 (exclusive), "
                                         f"got {text!r}")
    if value < cli.FLOAT32_TINY:  # float32 would make it 0, and the KL penalty 0 * log 0
        raise argparse.ArgumentTypeError(f"must be at least {cli.FLOAT32_TINY:.3g} (float32's "
                                         f"smallest normal number), got {text!r}")
    return value


def main(argv=None):
    args = parse_args(argv)
    dataset = data.load_dataset(args.dataset, args.data, args.limit)  # checked before all else
    run = outputs.start(args, SCRIPT_NAME, dataset)  # output folders, devices, seeds
    # The same network with the penalty and with none, from the same start, side by side.
    trained = {penalty: train_and_evaluate(penalty, dataset, args, run)
               for penalty in comparison.settings(args.penalty, baseline="none")}
    results = {**run.header, **compare(trained, args)}
    draw_figures(trained, dataset, args, run.figures)
    run.finish(results, **comparison.saved_models("sparse", trained))
    print_summary(results, args)


# -- Data: grey levels in [0, 1], as inputs and as targets ----------------------------------------
# $$ x \in [0, 1]^{784} $$
# This is not a likelihood model, so by default it trains on the grey levels (--binarize none):
# the reconstruction loss is then a cross-entropy, not a log-likelihood.


# -- Encoder: one layer of sigmoid code units -----------------------------------------------------
# $$ h(x) = \sigma(W x + b) $$
# Sigmoid units live in (0, 1), so "active" (near 1) and "silent" (near 0) mean something, and a
# unit's mean activation is a firing rate the KL penalty can compare with rho. The code, the
# penalty and the logits feed the loss, so they compute in float32 even under --mixed-precision.

def build_encoder(hidden):
    images = keras.Input(shape=data.IMAGE_SHAPE, name="image")
    x = layers.Flatten(name="flatten")(images)
    codes = layers.Dense(hidden, activation="sigmoid", name="code", dtype="float32")(x)
    return keras.Model(images, codes, name="encoder")


# -- The sparsity penalties: a target firing rate for every unit, or L1 ---------------------------
# $$ \mathrm{KL}(\rho \,\|\, \hat\rho_j) = \rho \log \frac{\rho}{\hat\rho_j}
#    + (1 - \rho) \log \frac{1 - \rho}{1 - \hat\rho_j} \quad \text{or} \quad \ell_1 \sum_j |h_j| $$
# Each is a layer that passes the code through unchanged, adds its weighted term to the model's
# loss with `add_loss`, and keeps the unweighted term, which the `PenalizedModel` around it logs
# as `kl_sparsity` (or `l1_activity`) beside reconstruction_loss. Both are batch means, so their
# balance does not change with --batch-size; but rho_hat is measured on one batch, so small
# batches make the KL noisy (and, as it is convex, larger).

def kl_sparsity(codes, rho):
    """The KL penalty in nats, summed over the units, each unit's rate being its mean activation
    over the batch: 0 when every rate is rho, growing steeply as a rate nears 1."""
    rho_hat = ops.clip(ops.mean(codes, axis=0), _EPSILON, 1.0 - _EPSILON)
    return ops.sum(rho * ops.log(rho / rho_hat)
                   + (1.0 - rho) * ops.log((1.0 - rho) / (1.0 - rho_hat)))


@keras.saving.register_keras_serializable(package="autoencoders")
class KLSparsity(layers.Layer):
    """Pass sigmoid codes through; add beta times their KL penalty to the loss."""

    penalty_name = "kl_sparsity"  # the name PenalizedModel logs the unweighted KL under

    def __init__(self, rho=0.05, beta=3.0, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 < rho < 1.0:
            raise ValueError(f"rho must be strictly between 0 and 1, got {rho}")
        self.rho, self.beta = float(rho), float(beta)

    def call(self, codes):
        self.last_penalty = kl_sparsity(codes, self.rho)
        self.add_loss(self.beta * self.last_penalty)
        return codes

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rho": self.rho, "beta": self.beta}


@keras.saving.register_keras_serializable(package="autoencoders")
class L1Activity(layers.Layer):
    """Pass codes through; add l1 times the L1 penalty, averaged over the batch: what Keras adds
    for `activity_regularizer=keras.regularizers.L1(l1)`, which sums over the whole batch and
    then divides an activity penalty by the batch size."""

    penalty_name = "l1_activity"

    def __init__(self, l1=1e-4, **kwargs):
        super().__init__(**kwargs)
        self.l1 = float(l1)

    def call(self, codes):
        batch_size = ops.cast(ops.shape(codes)[0], codes.dtype)
        self.last_penalty = ops.sum(ops.abs(codes)) / batch_size
        self.add_loss(self.l1 * self.last_penalty)
        return codes

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "l1": self.l1}


# -- Decoder: one Bernoulli probability per pixel, from its logit ---------------------------------
# $$ l = W' h + b', \quad \hat{x}_i = \sigma(l_i) $$

def build_decoder(hidden):
    codes = keras.Input(shape=(hidden,), name="code")
    x = layers.Dense(PIXELS, name="pixel_logits", dtype="float32")(codes)
    logits = layers.Reshape(data.IMAGE_SHAPE, name="image_logits", dtype="float32")(x)
    return keras.Model(codes, logits, name="decoder")


# -- The autoencoder: image, encoder, the penalty, decoder, logits --------------------------------
# `PenalizedModel` is a functional `keras.Model` that logs the penalty its layer keeps.

def build_autoencoder(encoder, decoder, penalty, args):
    images = keras.Input(shape=data.IMAGE_SHAPE, name="image")
    codes = encoder(images)
    if penalty == "kl":
        codes = KLSparsity(rho=args.rho, beta=args.beta, name="sparsity_penalty",
                           dtype="float32")(codes)
    elif penalty == "l1":
        codes = L1Activity(l1=args.l1, name="sparsity_penalty", dtype="float32")(codes)
    return PenalizedModel(images, decoder(codes), name=f"sparse_autoencoder_{penalty}")


# -- Loss: the cross-entropy from the logits, plus the penalty ------------------------------------
# $$ \mathrm{BCE}(x, \hat{x})
#    = -\sum_i \big[x_i \log \hat{x}_i + (1 - x_i) \log(1 - \hat{x}_i)\big] $$
# Computed from the logits (nothing clipped) and summed over the 784 pixels, in nats per image;
# Keras adds the penalty layer's term, so loss = reconstruction_loss + beta * kl_sparsity (or
# l1 * l1_activity).

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


# -- Evaluation on the test split: how sparse is the code? ----------------------------------------
# $$ \mathrm{Hoyer}(h) = \frac{\sqrt{n} - \|h\|_1 / \|h\|_2}{\sqrt{n} - 1} $$
# Hoyer's sparsity of a code of n units is 1 when a single unit is non-zero, 0 when all are equal.
# A unit is dead if it is never active on a test image and always on if it never falls below
# ALWAYS_ON_THRESHOLD: either way it barely tells one image from another.

def code_statistics(codes):
    """Mean activation, active units per image, dead and always-on units, Hoyer sparsity.

    The Hoyer sparsity is undefined (0 / 0) for an all-zero code and for a code of one unit:
    such images are left out of its mean, and with none left it is None ("undefined").
    """
    n = codes.shape[1]
    l1 = np.sum(np.abs(codes), axis=1, dtype=np.float64)
    l2 = np.sqrt(np.sum(np.square(codes, dtype=np.float64), axis=1))
    defined = l2 > 0
    hoyer = None
    if n > 1 and defined.any():
        hoyer = float(np.mean((np.sqrt(n) - l1[defined] / l2[defined]) / (np.sqrt(n) - 1)))
    return {
        "mean_activation": float(np.mean(codes)),
        "active_units_per_image": float(np.mean(np.sum(codes > ACTIVE_THRESHOLD, axis=1))),
        "dead_unit_fraction": float(np.mean(np.max(codes, axis=0) <= ACTIVE_THRESHOLD)),
        "always_on_unit_fraction": float(np.mean(np.min(codes, axis=0) >= ALWAYS_ON_THRESHOLD)),
        "hoyer_sparsity": hoyer,
    }


def evaluate(encoder, decoder, test_inputs):
    """The scores on the test split, and the codes and reconstructions the figures draw."""
    codes = training.predict(encoder, test_inputs)
    logits = training.predict(decoder, codes)
    scores = {**metrics.reconstruction_errors(test_inputs, logits), **code_statistics(codes)}
    reconstructions = ops.convert_to_numpy(ops.sigmoid(logits))  # Bernoulli means
    return scores, {"codes": codes, "reconstructions": reconstructions}


# -- Penalty against none: the same network twice, from the same start ----------------------------
# Each setting resets every seed first, so both networks start from the same weights and see the
# same batches: the differences below are the penalty's doing.

def penalty_title(penalty, args):
    return {"kl": f"KL, rho {args.rho:g}, beta {args.beta:g}", "l1": f"L1, {args.l1:g}",
            "none": "no penalty"}[penalty]


def train_and_evaluate(penalty, dataset, args, run):
    keras.utils.set_random_seed(args.seed)  # the same initial weights and batches for each one
    train_ds, test_ds, test_inputs = data.autoencoder_datasets(
        dataset, args.batch_size, args.binarize, args.seed)
    encoder, decoder = build_encoder(args.hidden), build_decoder(args.hidden)
    if penalty == args.penalty:
        encoder.summary()
        decoder.summary()
    autoencoder = build_autoencoder(encoder, decoder, penalty, args)
    compile_autoencoder(autoencoder, args.learning_rate)
    print(f"\ntraining with {penalty_title(penalty, args)}")
    fitted = train(autoencoder, f"penalty_{penalty}", train_ds, test_ds, args, run)
    scores, arrays = evaluate(encoder, decoder, test_inputs)
    return comparison.Trained(encoder, decoder, autoencoder, fitted, scores, arrays)


# -- Results: penalized_... and baseline_..., side by side ----------------------------------------

def compare(trained, args):
    return {"active_threshold": ACTIVE_THRESHOLD, "always_on_threshold": ALWAYS_ON_THRESHOLD,
            **comparison.side_by_side(trained, args.penalty, baseline="none")}


# -- Figures, all from the test split -------------------------------------------------------------
# The encoder's features (each unit's weights as an image), the histograms of the activations,
# and test images with their reconstructions, for each setting.

def draw_figures(trained, dataset, args, folder):
    names = {penalty: penalty_title(penalty, args) for penalty in trained}
    title = f"{dataset.title} sparse autoencoder, {args.hidden} sigmoid code units"
    plot_features({names[p]: ops.convert_to_numpy(t.encoder.get_layer("code").kernel)
                   for p, t in trained.items()}, folder / "sparse_features.png",
                  f"{title}\nencoder weights of {min(SHOWN_UNITS, args.hidden)} units "
                  "(grey 0, white positive, black negative)")
    plot_activations({names[p]: t.arrays["codes"] for p, t in trained.items()},
                     args.rho if args.penalty == "kl" else None, folder / "sparse_activations.png",
                     f"{title}\ncode activations on {len(dataset.x_test):,} test images")
    picked = data.examples_per_class(dataset.y_test, 2)
    rows = [data.test_inputs(dataset, args.binarize, args.seed)[picked],
            *(t.arrays["reconstructions"][picked] for t in trained.values())]
    plots.plot_image_rows(rows, ["test image", *names.values()],
                          folder / "sparse_reconstructions.png",
                          f"{title}\ntest images and their reconstructions")


def plot_features(kernels, path, title):
    """Each unit's encoder weights W[:, j] as a 28 x 28 image, one panel per model.

    Every image is scaled by its own largest |weight|, so 0 is mid-grey in all of them.
    """
    with plt.style.context(plots.STYLE):
        fig, axes = plt.subplots(1, len(kernels), figsize=(4.6 * len(kernels), 5.2),
                                 squeeze=False, layout="constrained")
        for ax, (name, kernel) in zip(axes[0], kernels.items()):
            shown = np.linspace(0, kernel.shape[1] - 1, min(SHOWN_UNITS, kernel.shape[1]))
            weights = kernel[:, shown.astype(int)].T                      # (units, 784)
            weights = weights / np.max(np.abs(weights), axis=1, keepdims=True)
            images = (0.5 + 0.5 * weights).reshape(-1, *data.IMAGE_SHAPE[:2])
            side = int(np.ceil(np.sqrt(len(images))))
            padded = np.ones((side * side, *data.IMAGE_SHAPE[:2]), np.float32)
            padded[:len(images)] = images
            ax.imshow(plots.tile(padded, side, side), vmin=0, vmax=1)
            ax.set_axis_off()
            ax.set_title(name)
        fig.suptitle(title, fontweight="bold")
        plots.save_figure(fig, path)


def plot_activations(codes, rho, path, title):
    """Histograms of every code activation, and of each unit's mean activation, per model."""
    bins = np.linspace(0, 1, 51)
    with plt.style.context(plots.STYLE):
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
        for name, h in codes.items():
            left.hist(h.ravel(), bins=bins, histtype="step", linewidth=1.6, label=name)
            right.hist(h.mean(axis=0), bins=bins, histtype="step", linewidth=1.6, label=name)
        left.axvline(ACTIVE_THRESHOLD, color="grey", linestyle="--", linewidth=1,
                     label=f"active threshold {ACTIVE_THRESHOLD:g}")
        left.set(yscale="log", xlabel="activation h_j(x)", ylabel="count (log scale)",
                 title="every unit on every image")
        if rho is not None:
            right.axvline(rho, color="grey", linestyle="--", linewidth=1, label=f"rho = {rho:g}")
        right.set(xlabel="mean activation of a unit over the test images", ylabel="units",
                  title="mean activation per unit")
        for ax in (left, right):
            ax.grid(alpha=0.3)
            ax.legend()
        fig.suptitle(title, fontweight="bold")
        plots.save_figure(fig, path)


# -- Summary --------------------------------------------------------------------------------------

def print_summary(results, args):
    comparison.print_table(
        f"\n{SCRIPT_NAME} on {results['test_examples']:,} held-out test images "
        f"({results['binarize']} binarization; none = grey levels as targets):",
        {"penalized": penalty_title(args.penalty, args), "baseline": penalty_title("none", args)},
        [("reconstruction, BCE nats/image", "test_bce_nats", ".2f"),
         ("reconstruction, MSE per pixel", "test_mse_per_pixel", ".5f"),
         ("mean activation", "mean_activation", ".4f"),
         (f"units above {ACTIVE_THRESHOLD:g} per image", "active_units_per_image", ".1f"),
         (f"dead units (never above {ACTIVE_THRESHOLD:g})", "dead_unit_fraction", ".1%"),
         (f"always-on units (never below {ALWAYS_ON_THRESHOLD:g})", "always_on_unit_fraction",
          ".1%"),
         ("Hoyer sparsity (0 dense, 1 one-hot)", "hoyer_sparsity", ".3f"),
         ("training seconds", "train_seconds", ".1f")], results)


if __name__ == "__main__":
    cli.run(main)
