r"""Undercomplete and deep autoencoders on MNIST against PCA, in Keras 3 (TensorFlow, JAX, PyTorch).

An undercomplete autoencoder squeezes each image x through a code h = f(x) smaller than x and
learns to rebuild it, x_hat = g(h). Nothing else stops it from copying, so the narrow code is
the whole lesson: to rebuild 784 pixels from 32 numbers it must keep what varies across digits.

    $$ \min_{f, g}\ \mathbb{E}_x \|x - g(f(x))\|^2 \quad
       \text{(or the cross-entropy of } x \text{ under } \hat{x} = g(f(x))) $$

PCA is the reference: no rank-k linear map rebuilds the data with a smaller squared error. A
*linear* autoencoder can at best match it, and finds the same subspace (Baldi and Hornik, 1989);
a *shallow* one (784 -> code -> 784) is the classic "simplest autoencoder"; a *deep* one
(784-512-256-code and mirrored) bends the subspace into a manifold. The lesson scores all four
on the test split, uses their codes as features (k-means and a linear probe), and with --sweep
draws the test error against the code size. (How deep autoencoders were first trained, layer
by layer, is the lesson GreedyPretraining.py.)

    python AutoEncoder.py                                   # code size 32
    python AutoEncoder.py --sweep                           # also code sizes 2, 8, 16 and 64
    python AutoEncoder.py --code-dim 64 --binarize static   # the classic 64-unit setting

It writes results/AutoEncoder.json (its timings among them), models/ae_*.keras and
figures/ae_*.png; Ctrl-C, then the same command, resumes. The saved models load in a fresh
process after `import common`, which registers their loss.
"""

from typing import NamedTuple

import common  # first: quiets TensorFlow's start-up logs, registers the suite's Keras objects
import keras
import matplotlib.pyplot as plt
import numpy as np
from keras import layers, ops
from scipy.linalg import subspace_angles
from scipy.optimize import linear_sum_assignment
from sklearn import cluster, decomposition, linear_model, metrics as sk_metrics, pipeline
from sklearn import preprocessing

from common import cli, data, errors, losses, metrics, outputs, plots, training

SCRIPT_NAME = "AutoEncoder"
PIXELS = int(np.prod(data.IMAGE_SHAPE))
DEEP_UNITS = (512, 256)               # the deep encoder: 784-512-256-code, decoder mirrored
SWEEP_CODE_DIMS = (2, 8, 16, 32, 64)  # the compression curve
CLIP = 1e-3                           # PCA and linear outputs are clipped to [CLIP, 1 - CLIP]
                                      # to score a cross-entropy; they are not probabilities
TITLES = {"pixels": "raw pixels", "pca": "PCA", "linear": "linear AE", "shallow": "shallow AE",
          "deep": "deep AE"}


def parse_args(argv=None):
    parser = cli.base_parser(SCRIPT_NAME, epochs=30, batch_size=128, learning_rate=1e-3)
    lesson = parser.add_argument_group("this lesson")
    lesson.add_argument("--code-dim", type=cli.positive_int, default=32,
                        help=f"size of the code, below {DEEP_UNITS[-1]} (the deep model's "
                             "narrowest hidden layer)")
    lesson.add_argument("--binarize", choices=data.BINARIZATIONS, default="none",
                        help="train and score on grey levels (none) or on binary pixels")
    lesson.add_argument("--sweep", action="store_true",
                        help=f"also train the shallow and deep models at code sizes "
                             f"{', '.join(map(str, SWEEP_CODE_DIMS))} for the compression curve")
    args = parser.parse_args(argv)
    if args.code_dim >= DEEP_UNITS[-1]:
        parser.error(f"argument --code-dim: must be below {DEEP_UNITS[-1]} for an undercomplete "
                     f"deep model, got {args.code_dim}")
    return args


def main(argv=None):
    args = parse_args(argv)
    dataset = load_data(args)  # checked before all else
    run = outputs.start(args, SCRIPT_NAME, dataset)  # output folders, devices, seeds
    train_ds, test_ds, test_inputs = data.autoencoder_datasets(
        dataset, args.batch_size, args.binarize, args.seed)
    train_inputs = training_inputs(dataset, args)
    pca = fit_pca(train_inputs, args.code_dim, args.seed)
    models = build_models(args.code_dim)
    fitted = {name: train(name, model, train_ds, test_ds, args, run)
              for name, model in models.items()}
    scores, codes, rebuilt = evaluate(pca, models, fitted, train_inputs, test_inputs)
    angles = subspace_results(models["linear"].decoder, pca)
    features = code_features(codes, dataset, args.seed)
    curve = compression_curve(scores, train_inputs, test_inputs, train_ds, test_ds, args, run)
    results = {**run.header, "models": scores, "features": features, **angles,
               "compression_curve": curve}
    draw_figures(dataset, test_inputs, rebuilt, results, args, run.figures)
    run.finish(results, ae_linear=models["linear"].autoencoder,
               ae_shallow=models["shallow"].autoencoder, ae_deep=models["deep"].autoencoder)
    print_summary(results)


# -- Data: the digits as the models see them ------------------------------------------------------
# Grey levels by default; with --binarize static (and, for PCA and the probes, dynamic) the
# binarization drawn with --seed. PCA needs at least as many images as components, and k-means
# with 10 clusters at least 10 test images: checked here, before anything is written.

def load_data(args):
    dataset = data.load_dataset(args.dataset, args.data, args.limit, min_classes=2)
    if args.code_dim > min(len(dataset.x_train), len(dataset.x_test)):
        raise errors.UsageError(f"--code-dim {args.code_dim} is larger than the number of "
                                "training or test images; PCA needs at least as many images as "
                                "components")
    if len(dataset.x_test) < data.NUM_CLASSES:
        raise errors.UsageError(f"the test split holds {len(dataset.x_test)} images; k-means "
                                f"with {data.NUM_CLASSES} clusters needs at least "
                                f"{data.NUM_CLASSES}")
    return dataset


def training_inputs(dataset, args):
    return dataset.x_train if args.binarize == "none" else data.binarize(dataset.x_train,
                                                                         args.seed)


# -- Models: an encoder, a code, a decoder, and PCA to compare them with -------------------------
# $$ \hat{x}_{\mathrm{PCA}} = \bar{x} + V V^\top (x - \bar{x}) $$
# PCA, the reference, rebuilds x from its projection on V, the top k eigenvectors of the
# training covariance (scikit-learn fits it in closed form). Every autoencoder is an encoder and a decoder
# sub-model joined by the functional API, so the code of any image is `encoder(images)`. The
# decoders trained on cross-entropy return pixel logits; a sigmoid turns them into grey images.
# The codes and the outputs compute in float32 even under --mixed-precision: the scores are
# computed from them.

def fit_pca(train_inputs, code_dim, seed):
    return decomposition.PCA(n_components=code_dim, random_state=seed).fit(
        train_inputs.reshape(len(train_inputs), -1))


class Autoencoder(NamedTuple):
    encoder: keras.Model
    decoder: keras.Model
    autoencoder: keras.Model


def join(encoder, decoder, name):
    images = keras.Input(shape=data.IMAGE_SHAPE, name="image")
    return Autoencoder(encoder, decoder, keras.Model(images, decoder(encoder(images)), name=name))


def logits_as_images(pixel_logits):
    return layers.Reshape(data.IMAGE_SHAPE, name="image_logits", dtype="float32")(pixel_logits)


def build_linear(code_dim):
    """h = W1 x + b1, x_hat = W2 h + b2: no activation anywhere, so it can do no better than PCA."""
    images = keras.Input(shape=data.IMAGE_SHAPE, name="image")
    x = layers.Flatten(name="flatten")(images)
    codes = layers.Dense(code_dim, name="code", dtype="float32")(x)
    encoder = keras.Model(images, codes, name="linear_encoder")
    code = keras.Input(shape=(code_dim,), name="code")
    x = layers.Dense(PIXELS, name="pixels", dtype="float32")(code)
    decoder = keras.Model(code, layers.Reshape(data.IMAGE_SHAPE, name="image", dtype="float32")(x),
                          name="linear_decoder")
    return join(encoder, decoder, "linear_autoencoder")


def build_shallow(code_dim):
    """h = relu(W1 x + b1), x_hat = sigmoid(W2 h + b2): one hidden layer, the code."""
    images = keras.Input(shape=data.IMAGE_SHAPE, name="image")
    x = layers.Flatten(name="flatten")(images)
    code = layers.Dense(code_dim, activation="relu", name="code", dtype="float32")(x)
    encoder = keras.Model(images, code, name="shallow_encoder")
    code = keras.Input(shape=(code_dim,), name="code")
    x = layers.Dense(PIXELS, name="pixel_logits", dtype="float32")(code)
    decoder = keras.Model(code, logits_as_images(x), name="shallow_decoder")
    return join(encoder, decoder, "shallow_autoencoder")


def build_deep(code_dim):
    """784-512-256-code with ReLU hidden layers and a linear code, mirrored to pixel logits.

    Both stacks are listed from the pixels inwards, so the decoder is applied in reverse.
    """
    encoder_layers = [*(layers.Dense(units, activation="relu", name=f"encoder_{i + 1}")
                        for i, units in enumerate(DEEP_UNITS)),
                      layers.Dense(code_dim, name="code", dtype="float32")]
    decoder_layers = [layers.Dense(PIXELS, name="pixel_logits", dtype="float32"),
                      *(layers.Dense(units, activation="relu", name=f"decoder_{i + 2}")
                        for i, units in enumerate(DEEP_UNITS))]
    images = keras.Input(shape=data.IMAGE_SHAPE, name="image")
    x = layers.Flatten(name="flatten")(images)
    for layer in encoder_layers:
        x = layer(x)
    encoder = keras.Model(images, x, name="deep_encoder")
    code = x = keras.Input(shape=(code_dim,), name="code")
    for layer in reversed(decoder_layers):
        x = layer(x)
    decoder = keras.Model(code, logits_as_images(x), name="deep_decoder")
    return join(encoder, decoder, "deep_autoencoder")


def build_models(code_dim):
    """The three autoencoders, in this order (which fixes the initial weights each one draws)."""
    models = {"linear": build_linear(code_dim), "shallow": build_shallow(code_dim),
              "deep": build_deep(code_dim)}
    for model in models.values():
        model.encoder.summary()
        model.decoder.summary()
    return models


# -- Loss: squared error for the linear model, cross-entropy for the others ----------------------
# $$ \tfrac{1}{784} \|x - \hat{x}\|^2 \ \text{(linear)}, \quad
#    -\sum_i \big[x_i \log \hat{x}_i + (1 - x_i) \log(1 - \hat{x}_i)\big] \ \text{(others)} $$
# The linear model trains on the squared error per pixel, the loss under which it matches PCA.
# The shallow and deep ones train on the binary cross-entropy from the decoder's logits, summed
# over the 784 pixels: nats per image (a Bernoulli log-likelihood with binary pixels, a
# cross-entropy with grey levels). Every model trains with Adam at --learning-rate.

def compile_autoencoder(name, autoencoder, learning_rate):
    loss = keras.losses.MeanSquaredError() if name == "linear" else losses.bernoulli_nll
    autoencoder.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss)
    training.set_execution(autoencoder)  # steps per call and jax.jit, for this backend


# -- Training: each model in turn, the test split as validation data -----------------------------
# Keras's fit with two callbacks of common/training.py: a backup after every epoch, so that
# Ctrl-C and the same command resume, and a stop at the first NaN or exploding loss; with
# --tensorboard, Keras's TensorBoard too. Backups are named for the model and its code size.

def train(name, model, train_ds, test_ds, args, run):
    autoencoder, code_dim = model.autoencoder, model.encoder.output_shape[-1]
    compile_autoencoder(name, autoencoder, args.learning_rate)
    print(f"\n-- training {autoencoder.name}, code size {code_dim} --")
    backup = training.ResumableBackup(run.checkpoint(f"{name}_{code_dim}", autoencoder),
                                      train_ds)
    callbacks = [training.StopOnDivergence(autoencoder, test_ds), backup]
    if args.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(run.logs(f"{name}_{code_dim}")))
    autoencoder.fit(train_ds, validation_data=test_ds, epochs=args.epochs, callbacks=callbacks,
                    shuffle=False, verbose=2)  # the batches shuffle themselves, per epoch
    return backup.fitted()


# -- Evaluation on the test split: reconstruction, and the subspace of the linear model -----------
# The models are called directly on all the images at once (a few thousand fit in one batch).

def reconstruction_scores(targets, logits=None, images=None):
    """Squared error per pixel and cross-entropy per image (nats, summed over pixels) on `targets`.

    Models with a sigmoid output hand over logits. PCA and the linear model hand over x_hat
    itself, which can leave [0, 1]: for the cross-entropy only, it is clipped to
    [CLIP, 1 - CLIP] and turned into the logits log(x_hat / (1 - x_hat)).
    """
    if logits is None:
        clipped = np.clip(images, CLIP, 1 - CLIP)
        logits = np.log(clipped) - np.log1p(-clipped)
    scores = metrics.reconstruction_errors(targets, logits)
    if images is not None:  # the squared error of x_hat as it is, not of the clipped one
        scores["test_mse_per_pixel"] = float(np.mean((images - targets) ** 2))
    return scores


def evaluate(pca, models, fitted, train_inputs, test_inputs):
    """Test scores of PCA and every model; codes of the training and test images (the raw pixels
    too); and the test reconstructions."""
    flatten = {split: x.reshape(len(x), -1) for split, x in (("train", train_inputs),
                                                               ("test", test_inputs))}
    codes = {"pixels": (flatten["train"], flatten["test"]),
             "pca": (pca.transform(flatten["train"]), pca.transform(flatten["test"]))}
    rebuilt = {"pca": pca.inverse_transform(codes["pca"][1]).reshape(test_inputs.shape)}
    scores = {"pca": {**reconstruction_scores(test_inputs, images=rebuilt["pca"]),
                      "parameters": int(pca.components_.size + pca.mean_.size)}}
    for name, model in models.items():
        codes[name] = tuple(ops.convert_to_numpy(model.encoder(x, training=False))
                            for x in (train_inputs, test_inputs))
        output = ops.convert_to_numpy(model.decoder(codes[name][1], training=False))
        linear = name == "linear"  # its decoder gives grey levels, not logits
        rebuilt[name] = output if linear else ops.convert_to_numpy(ops.sigmoid(output))
        scores[name] = {**(reconstruction_scores(test_inputs, images=output) if linear
                           else reconstruction_scores(test_inputs, logits=output)),
                        "parameters": int(model.autoencoder.count_params()),
                        "train_seconds": fitted[name].results()["train_seconds"],
                        "epoch_seconds": fitted[name].epoch_seconds}
    return scores, codes, rebuilt


def pca_subspace_angles(linear_decoder, pca):
    """Did the linear autoencoder find PCA's subspace? The principal angles, in degrees, between
    the span of its decoder's k basis vectors (the rows of W2 in x_hat = W2 h + b2) and the top-k
    principal directions: 0 where the subspaces coincide, 90 for a direction orthogonal to
    PCA's. Only the subspace can match: any invertible mix of the k directions rebuilds as well."""
    w2 = ops.convert_to_numpy(linear_decoder.get_layer("pixels").kernel)  # (k, 784)
    return np.degrees(subspace_angles(w2.T, pca.components_.T))


def subspace_results(linear_decoder, pca):
    angles = pca_subspace_angles(linear_decoder, pca)
    return {"linear_pca_subspace_angle_max_deg": float(angles.max()),
            "linear_pca_subspace_angle_mean_deg": float(angles.mean())}


# -- Evaluation: the codes as features, without the labels and with them --------------------------
# $$ \mathrm{NMI} = \frac{I(y; k)}{\tfrac{1}{2}\big(H(y) + H(k)\big)} $$
# k-means with 10 clusters on the test codes, scored by the accuracy of the best one-to-one map
# from clusters to labels (the Hungarian algorithm) and by the normalised mutual information of
# labels y and clusters k; and a linear probe, a logistic regression on the standardised
# training codes, scored by its test accuracy. The raw pixels are the floor.

def clustering_accuracy(labels, clusters):
    """contingency[c, k] counts examples of class c in cluster k; linear_sum_assignment picks the
    one-to-one pairing of clusters and classes with the most examples on the diagonal."""
    contingency = sk_metrics.cluster.contingency_matrix(labels, clusters)
    rows, cols = linear_sum_assignment(contingency, maximize=True)
    return float(contingency[rows, cols].sum() / len(labels))


def feature_scores(train_codes, test_codes, dataset, seed):
    clusters = cluster.KMeans(data.NUM_CLASSES, n_init=10,
                              random_state=seed).fit_predict(test_codes)
    probe = pipeline.make_pipeline(preprocessing.StandardScaler(),
                                   linear_model.LogisticRegression(max_iter=500))
    probe.fit(train_codes, dataset.y_train)
    return {"dim": int(test_codes.shape[1]),
            "kmeans_accuracy": clustering_accuracy(dataset.y_test, clusters),
            "kmeans_nmi": float(sk_metrics.normalized_mutual_info_score(dataset.y_test, clusters)),
            "probe_accuracy": float(probe.score(test_codes, dataset.y_test))}


def code_features(codes, dataset, seed):
    """feature_scores of every representation: {name: (training codes, test codes)}."""
    return {name: feature_scores(*pair, dataset, seed) for name, pair in codes.items()}


# -- Evaluation: the compression curve, test squared error against the code size ------------------
# PCA costs one fit per size, so it is drawn at every size; the autoencoders at --code-dim, and
# with --sweep the shallow and deep ones are trained at every size of the sweep too.

def compression_curve(scores, train_inputs, test_inputs, train_ds, test_ds, args, run):
    flat_train, flat_test = (x.reshape(len(x), -1) for x in (train_inputs, test_inputs))
    sizes = [d for d in sorted({*SWEEP_CODE_DIMS, args.code_dim}) if d <= min(len(flat_train),
                                                                            len(flat_test))]
    curve = {"pca": {}, **{name: {args.code_dim: scores[name]["test_mse_per_pixel"]}
                           for name in ("shallow", "deep")}}
    for code_dim in sizes:
        fitted = decomposition.PCA(n_components=code_dim, random_state=args.seed).fit(flat_train)
        rebuilt = fitted.inverse_transform(fitted.transform(flat_test))
        curve["pca"][code_dim] = float(np.mean((rebuilt - flat_test) ** 2))
    for code_dim in (sizes if args.sweep else []):
        for name, build in (("shallow", build_shallow), ("deep", build_deep)):
            if code_dim != args.code_dim:  # that one is trained already
                model = build(code_dim)
                train(name, model, train_ds, test_ds, args, run)
                logits = ops.convert_to_numpy(model.autoencoder(test_inputs, training=False))
                curve[name][code_dim] = reconstruction_scores(
                    test_inputs, logits=logits)["test_mse_per_pixel"]
    return {name: {str(d): v for d, v in sorted(points.items())} for name, points in curve.items()}


# -- Figures, all from the test split -------------------------------------------------------------

def draw_figures(dataset, test_inputs, rebuilt, results, args, folder):
    title = f"{dataset.title} autoencoders, code size {args.code_dim}"
    picked = data.examples_per_class(dataset.y_test, 2)
    rows, labels = [dataset.x_test[picked]], ["original"]
    if args.binarize != "none":
        rows, labels = rows + [test_inputs[picked]], labels + ["binarized input"]
    rows += [np.clip(images[picked], 0, 1) for images in rebuilt.values()]
    labels += [TITLES[name] for name in rebuilt]
    plots.plot_image_rows(rows, labels, folder / "ae_reconstructions.png",
                          f"{title}\ntest digits and their reconstructions")
    swept = ("" if args.sweep else
             f"\n(autoencoders at code size {args.code_dim} only; --sweep for all sizes)")
    images = min(len(dataset.x_train), len(dataset.x_test))
    if max(SWEEP_CODE_DIMS) > images:  # PCA cannot have more components than images
        swept += f"\n(no code sizes above {images}, the number of training or test images)"
    plot_compression_curve(results, folder / "ae_compression_curve.png",
                           f"{dataset.title}: test reconstruction error against code "
                           f"size{swept}")


def plot_compression_curve(results, path, title):
    """Test MSE per pixel against code size: PCA at every size, the autoencoders where trained;
    the linear autoencoder at --code-dim only."""
    styles = {"pca": ("black", "o", "-"), "shallow": ("tab:blue", "s", "-"),
              "deep": ("tab:red", "^", "-")}
    curve = {name: {int(d): v for d, v in points.items()}
             for name, points in results["compression_curve"].items()}
    with plt.style.context(plots.STYLE):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, points in curve.items():
            color, marker, line = styles[name]
            ax.plot(list(points), list(points.values()), color=color, marker=marker,
                    linestyle=line, label=TITLES[name])
        ax.plot([results["code_dim"]], [results["models"]["linear"]["test_mse_per_pixel"]],
                color="tab:gray", marker="x", linestyle="none", markersize=8,
                label=TITLES["linear"])
        sizes = sorted({d for points in curve.values() for d in points})
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(d) for d in sizes])
        ax.minorticks_off()
        ax.set_ylim(bottom=0)
        ax.set(title=title, xlabel="code size (numbers per image)",
               ylabel="test mean squared error per pixel")
        ax.grid(alpha=0.3)
        ax.legend()
        plots.save_figure(fig, path)


# -- Summary -------------------------------------------------------------------------------------

def print_summary(results):
    print(f"\n{SCRIPT_NAME} on {results['test_examples']:,} held-out test images "
          f"({results['binarize']} binarization), code size {results['code_dim']}:")
    print(f"  {'':18s} {'MSE/pixel':>10s} {'BCE nats':>9s} {'k-means acc':>12s} {'NMI':>6s} "
          f"{'probe acc':>10s}")
    for name, title in TITLES.items():
        model, feature = results["models"].get(name), results["features"][name]
        mse = f"{model['test_mse_per_pixel']:10.5f}" if model else f"{'':10s}"
        bce = f"{model['test_bce_nats']:9.2f}" if model else f"{'':9s}"
        print(f"  {title:18s} {mse} {bce} {feature['kmeans_accuracy']:12.3f} "
              f"{feature['kmeans_nmi']:6.3f} {feature['probe_accuracy']:10.3f}")
    print(f"  linear AE vs PCA subspace: largest principal angle "
          f"{results['linear_pca_subspace_angle_max_deg']:.1f} deg, "
          f"mean {results['linear_pca_subspace_angle_mean_deg']:.1f} deg")
    print("  compression curve (test MSE per pixel): "
          + "; ".join(f"{TITLES[n]} " + ", ".join(f"{d}: {v:.4f}" for d, v in pts.items())
                      for n, pts in results["compression_curve"].items()))


if __name__ == "__main__":
    cli.run(main)
