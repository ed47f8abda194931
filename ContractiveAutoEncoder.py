r"""Contractive autoencoder (CAE) on MNIST, in Keras 3 on TensorFlow, JAX or PyTorch.

A contractive autoencoder (Rifai et al., 2011) asks its code h(x) to be insensitive to the input:
moving x a little should barely move h, except along the directions that the reconstruction
needs, which are the directions in which digits vary. It adds to the reconstruction loss the
squared Frobenius norm of the Jacobian of the code with respect to the input, which for sigmoid
units h = s(W x + b), with dh_j / dx_i = h_j (1 - h_j) W_ji, has a closed form:

    lambda * ||J_h(x)||_F^2 = lambda * sum_j (h_j (1 - h_j))^2 * sum_i W_ji^2
    $$ \lambda \|J_h(x)\|_F^2 = \lambda \sum_j \big(h_j (1 - h_j)\big)^2 \sum_i W_{ji}^2 $$

one matrix-vector product per batch instead of a 196 x 784 Jacobian per image. The lesson
trains the same network with lambda and with lambda = 0, from the same initial weights and
batches, then measures on the test split the reconstruction error, the Jacobian norm, and how
far the codes move when the test images get a little Gaussian noise.

    python ContractiveAutoEncoder.py                  # lambda 0.1, 196 sigmoid code units
    python ContractiveAutoEncoder.py --lambda 1       # a stronger contraction
    python ContractiveAutoEncoder.py --hidden 500 --epochs 50

It writes results/ContractiveAutoEncoder.json, models/contractive_*.keras and
figures/contractive_*.png; the defaults take about a minute on 2 CPU cores, and Ctrl-C
then the same command resumes. The saved models load in a fresh process after
`import ContractiveAutoEncoder`, run from this folder: importing the lesson registers its
`ContractiveDense` layer (and runs nothing).
"""

import pathlib
from typing import NamedTuple

import common  # first: quiets TensorFlow's start-up logs, registers the suite's Keras objects
import keras
import matplotlib.pyplot as plt
import numpy as np
from keras import layers, ops

from common import cli, data, losses, metrics, outputs, plots, runtime, training
from common.layers import PenalizedModel, add_penalty

SCRIPT_NAME = pathlib.Path(__file__).stem
PIXELS = int(np.prod(data.IMAGE_SHAPE))
NOISE_LEVELS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)  # std of the Gaussian input noise
HEADLINE_NOISE = 0.1    # the noise level reported in the summary (`headline_noise`)
SHOWN_NOISE = 0.2       # the noise level of the noisy row in the reconstruction figure
MAX_HIDDEN = 2_000      # code units: the evaluation encodes the test split at every noise level,
                        # 8 codes per image (4 GB for MNIST's 10,000 test images at 2,000)


def parse_args(argv=None):
    parser = cli.base_parser(__file__, __doc__.split("\n\n")[0], epochs=30, batch_size=64,
                             learning_rate=3e-3)
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
    out = outputs.prepare_outputs(args, SCRIPT_NAME, dataset)
    runtime.setup(args)

    # The network with lambda, then the same network with lambda = 0, compared side by side.
    contractions = [args.contraction] + ([0.0] if args.contraction > 0 else [])
    runs = {c: train_and_evaluate(c, dataset, args, out) for c in contractions}
    results = {**outputs.results_header(args, dataset), **compare(runs, args)}
    out.write_results(results)
    out.save_models(**saved_models(runs))
    draw_figures(runs, dataset, args, out.figures)
    out.finish()  # everything is written: the checkpoints can go
    print_summary(results)


# -- Data: grey levels in [0, 1], as inputs and as targets ----------------------------------------
# $$ x \in [0, 1]^{784} $$
# As in the sparse lesson: not a likelihood model, so by default it trains on the grey levels
# and the reconstruction loss is a cross-entropy.


# -- Encoder: h(x) = sigmoid(W x + b), adding lambda * ||J_h(x)||_F^2 to the loss -----------------
# $$ h(x) = \sigma(W x + b), \quad \text{adding } \lambda \|J_h(x)\|_F^2
#    \text{ to the loss} $$
# `ContractiveDense` is a Dense layer of sigmoid units whose `call` also adds the penalty, averaged
# over the batch, with `add_loss`; the `PenalizedModel` around it logs the unweighted ||J||_F^2
# as the metric `jacobian_norm_sq`, also when lambda = 0, so the baseline's log shows its
# Jacobian growing. It and the logits feed the loss, so they compute in float32 even under
# --mixed-precision.

def sigmoid_jacobian_norm_sq(codes, kernel):
    """||J_h(x)||_F^2 per example for h = sigmoid(x W + b), W of shape (inputs, units):
    sum_j (h_j (1 - h_j))^2 * sum_i W_ij^2."""
    slope_sq = ops.square(codes * (1.0 - codes))             # (batch, units)
    column_norms_sq = ops.sum(ops.square(kernel), axis=0)    # (units,)
    return ops.matmul(slope_sq, column_norms_sq)             # (batch,)


@keras.saving.register_keras_serializable(package="autoencoders")
class ContractiveDense(layers.Dense):
    """A Dense layer of sigmoid units, h = s(x W + b), that adds lambda * ||J_h(x)||_F^2."""

    penalty_name = "jacobian_norm_sq"

    def __init__(self, units, contraction=0.1, **kwargs):
        activation = kwargs.pop("activation", "sigmoid")
        if activation not in ("sigmoid", keras.activations.sigmoid):
            raise ValueError("the closed-form Jacobian holds for sigmoid units only, "
                             f"got activation={activation!r}")
        super().__init__(units, activation="sigmoid", **kwargs)
        self.contraction = float(contraction)

    def call(self, inputs, training=None):
        codes = super().call(inputs, training=training)
        norm_sq = ops.mean(sigmoid_jacobian_norm_sq(codes, self.kernel))
        add_penalty(self, norm_sq, self.contraction)
        return codes

    def get_config(self):
        return {**super().get_config(), "contraction": self.contraction}


def build_encoder(hidden, contraction):
    images = keras.Input(shape=data.IMAGE_SHAPE, name="image")
    x = layers.Flatten(name="flatten")(images)
    codes = ContractiveDense(hidden, contraction=contraction, name="code", dtype="float32")(x)
    return keras.Model(images, codes, name="encoder")


# -- Decoder: pixel logits l = W' h + b', one Bernoulli probability sigmoid(l) per pixel ---------
# $$ l = W' h + b', \quad \hat{x}_i = \sigma(l_i) $$

def build_decoder(hidden):
    codes = keras.Input(shape=(hidden,), name="code")
    x = layers.Dense(PIXELS, name="pixel_logits", dtype="float32")(codes)
    logits = layers.Reshape(data.IMAGE_SHAPE, name="image_logits", dtype="float32")(x)
    return keras.Model(codes, logits, name="decoder")


def build_autoencoder(encoder, decoder):
    images = keras.Input(shape=data.IMAGE_SHAPE, name="image")
    return PenalizedModel(images, decoder(encoder(images)), name="contractive_autoencoder")


# -- Loss: -sum_i [x_i log x_hat_i + (1 - x_i) log(1 - x_hat_i)] + lambda * ||J_h(x)||_F^2 ------
# $$ -\sum_i \big[x_i \log \hat{x}_i + (1 - x_i) \log(1 - \hat{x}_i)\big]
#    + \lambda \|J_h(x)\|_F^2 $$
# The binary cross-entropy from the logits, summed over the 784 pixels, in nats per image; Keras
# adds the encoder's penalty: loss = reconstruction_loss + lambda * jacobian_norm_sq.

def compile_autoencoder(autoencoder, learning_rate):
    training.compile(autoencoder, loss=losses.bernoulli_nll, learning_rate=learning_rate,
                     metrics=[losses.reconstruction_metric()])


# -- Training: the same network with each lambda, from the same start -----------------------------

class Run(NamedTuple):
    """One trained network and what it did on the test split."""

    encoder: keras.Model
    decoder: keras.Model
    autoencoder: keras.Model
    fitted: training.Fitted
    scores: dict
    noise_size: np.ndarray       # mean ||e|| at each noise level
    reconstructions: np.ndarray
    noisy_inputs: np.ndarray     # the test images + Gaussian noise of std SHOWN_NOISE
    noisy_reconstructions: np.ndarray


def train_and_evaluate(contraction, dataset, args, out):
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
    fitted = training.fit(autoencoder, train_ds, validation_data=test_ds, epochs=args.epochs,
                          backup_dir=out.checkpoint(f"lambda_{contraction:g}"),
                          log_dir=out.logs(f"lambda_{contraction:g}"))
    return evaluate(encoder, decoder, autoencoder, fitted, test_inputs, args.seed)


# -- Evaluation on the test split: reconstruction, Jacobian norm, code sensitivity ----------------
# How far the code moves under Gaussian input noise e ~ N(0, sigma^2 I): mean ||h(x + e) - h(x)||
# / ||e||. For small sigma, h(x + e) - h(x) ~ J e, and with 784 pixels ||J e|| ~ sigma ||J||_F
# while ||e|| ~ 28 sigma, so the ratio tends to ||J_h(x)||_F / 28: a check of the closed form.

def code_sensitivity(encode, x, noise_levels, seed):
    """Mean over images of ||h(x + e) - h(x)|| / ||e||, of ||h(x + e) - h(x)|| and of ||e||, at
    each sigma of `noise_levels`. One direction eps ~ N(0, I) per image is drawn (seeded) and
    scaled by every sigma, so both models and all noise levels see the same noise; the noisy
    images are not clipped to [0, 1] (this probes the function h). One call encodes them all."""
    flat = x.reshape(len(x), -1)
    eps = np.random.default_rng(seed).standard_normal(flat.shape).astype(np.float32)
    noisy = np.concatenate([flat + sigma * eps for sigma in noise_levels])
    codes = encode(np.concatenate([flat, noisy]).reshape(-1, *data.IMAGE_SHAPE))
    clean, moved = codes[:len(x)], codes[len(x):].reshape(len(noise_levels), len(x), -1)
    change = np.linalg.norm(moved - clean, axis=-1)                          # (levels, N)
    size = np.asarray(noise_levels)[:, None] * np.linalg.norm(eps, axis=-1)  # ||e||, (levels, N)
    return np.mean(change / size, axis=1), np.mean(change, axis=1), np.mean(size, axis=1)


def evaluate(encoder, decoder, autoencoder, fitted, test_inputs, seed):
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
    return Run(encoder, decoder, autoencoder, fitted, scores, noise_size,
               ops.convert_to_numpy(ops.sigmoid(logits)), noisy,
               ops.convert_to_numpy(ops.sigmoid(noisy_logits)))


# -- Results: penalized_... and baseline_..., side by side ----------------------------------------

def compare(runs, args):
    results = {"noise_levels": list(NOISE_LEVELS), "headline_noise": HEADLINE_NOISE}
    for label, contraction in (("penalized", args.contraction), ("baseline", 0.0)):
        if contraction in runs and not (label == "penalized" and contraction == 0):
            run = runs[contraction]
            results.update({f"{label}_{k}": v
                            for k, v in {**run.scores, **run.fitted.results()}.items()})
    return results


def saved_models(runs):
    return {f"contractive_{contraction:g}{part}": model for contraction, run in runs.items()
            for part, model in (("", run.autoencoder), ("_encoder", run.encoder),
                                ("_decoder", run.decoder))}


# -- Figures, all from the test split -------------------------------------------------------------

def draw_figures(runs, dataset, args, folder):
    title = (f"{data.TITLES[args.dataset]} contractive autoencoder, "
             f"{args.hidden} sigmoid code units")
    plot_sensitivity(runs, folder / "contractive_sensitivity.png",
                     f"{title}\nhow far the code moves under Gaussian input noise "
                     f"({len(dataset.x_test):,} test images)")
    picked = data.examples_per_class(dataset.y_test, 2)
    test_inputs = data.test_inputs(dataset, args.binarize, args.seed)
    noisy = next(iter(runs.values())).noisy_inputs[picked]  # the same noise for every run
    rows = ([test_inputs[picked]] + [run.reconstructions[picked] for run in runs.values()]
            + [np.clip(noisy, 0, 1)] + [run.noisy_reconstructions[picked] for run in runs.values()])
    labels = (["test image"] + [f"lambda {c:g}" for c in runs] + [f"+ noise, std {SHOWN_NOISE:g}"]
              + [f"lambda {c:g}, from noisy" for c in runs])
    plots.plot_image_rows(rows, labels, folder / "contractive_reconstructions.png",
                          f"{title}\ntest images and their reconstructions")


def plot_sensitivity(runs, path, title):
    """Left: mean ||h(x + e) - h(x)|| against mean ||e||. Right: their ratio against sigma,
    with the first-order prediction mean ||J_h(x)||_F / sqrt(784) as a dashed line."""
    with plt.style.context(plots.STYLE):
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4), layout="constrained")
        for i, (contraction, run) in enumerate(runs.items()):
            scores, colour, label = run.scores, f"C{i}", f"lambda {contraction:g}"
            left.loglog(run.noise_size, scores["code_change_by_level"], "o-", color=colour,
                        label=label)
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


# -- Summary -------------------------------------------------------------------------------------

def print_summary(results):
    labels = [label for label in ("penalized", "baseline") if f"{label}_test_bce_nats" in results]
    lambdas = {"penalized": results["contraction"], "baseline": 0.0}
    print(f"\n{SCRIPT_NAME} on {results['test_examples']:,} held-out test images "
          f"({results['binarize']} binarization; none = grey levels as targets):")
    print(f"  {'':40s}" + "".join(f"{'lambda ' + format(lambdas[label], 'g'):>14s}"
                                  for label in labels))
    rows = [
        ("reconstruction, BCE nats/image", "test_bce_nats", "{:14.2f}"),
        ("reconstruction, MSE per pixel", "test_mse_per_pixel", "{:14.5f}"),
        ("mean ||J_h(x)||_F", "mean_jacobian_frobenius", "{:14.3f}"),
        (f"||h(x+e) - h(x)|| / ||e||, std {results['headline_noise']:g}", "code_change_per_noise",
         "{:14.4f}"),
        ("training seconds", "train_seconds", "{:14.1f}"),
    ]
    for text, key, fmt in rows:
        print(f"  {text:40s}" + "".join(fmt.format(results[f"{label}_{key}"])
                                        for label in labels))


if __name__ == "__main__":
    cli.run(main)
