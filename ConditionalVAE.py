r"""Conditional variational autoencoder (CVAE) on MNIST, in Keras 3 on TensorFlow, JAX or PyTorch.

A plain VAE draws random digits: you cannot ask it for a 7. A CVAE gives the one-hot label y to
both networks, the encoder q(z | x, y) and the decoder p(x | z, y), while the prior stays
p(z) = N(0, I). The label then says which digit to draw and z is left with the style (slant,
stroke width, loops). It is trained by maximising the conditional evidence lower bound:

    log p(x | y) >= E_q(z|x,y)[log p(x | z, y)] - KL(q(z | x, y) || p(z))
    $$ \log p(x \mid y) \ge \mathbb{E}_{q(z \mid x, y)}[\log p(x \mid z, y)]
       - \mathrm{KL}\big(q(z \mid x, y) \,\|\, p(z)\big) $$

To draw a digit d, decode z ~ N(0, I) with y = d. The lesson then checks that the label is
obeyed: an independent judge, a small CNN trained here on real digits, labels hundreds of
generated digits of every class, and the conditional accuracy is the fraction it labels as the
digit asked for (about 0.1 if the decoder ignored the label).

    python ConditionalVAE.py                         # MLP, 2-D latent space
    python ConditionalVAE.py --arch conv --latent-dim 8 --epochs 30
    python ConditionalVAE.py --samples-per-class 1000

It writes results/ConditionalVAE.json, models/cvae*.keras, models/digit_classifier.keras and
figures/cvae_*.png; the defaults take about a minute and a half on 2 CPU cores, and Ctrl-C then
the same command resumes. The saved models load in a fresh process after `import common`.
"""

import pathlib

import common  # first: quiets TensorFlow's start-up logs, registers the suite's Keras objects
import keras
import matplotlib.pyplot as plt
import numpy as np
import tensorflow as tf
from keras import layers, ops

from common import cli, data, losses, metrics, outputs, plots, runtime, training
from common.layers import PenalizedModel, Sampling

SCRIPT_NAME = pathlib.Path(__file__).stem
HIDDEN_UNITS = 512          # the MLP's hidden layer: (784 + 10)-512-latent and back
CONV_FILTERS = (32, 64)     # the conv encoder's two stride-2 layers: 28 -> 14 -> 7
CONV_DENSE_UNITS = 128      # the conv encoder's dense layer, where the label joins
JUDGE_LEARNING_RATE = 1e-3  # the judge's Adam step size (not --learning-rate, the CVAE's)
PREDICT_BATCH = 1000        # images per batch when generating and judging
STYLE_COLUMNS = 12          # columns (one z each) in figures/cvae_digits.png
MAX_SAMPLES_PER_CLASS = 10_000  # 100,000 generated digits: a standard error under 0.005


def parse_args(argv=None):
    parser = cli.base_parser(__file__, __doc__.split("\n\n")[0], epochs=40, batch_size=128,
                             learning_rate=1e-3)
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
    out = outputs.prepare_outputs(args, SCRIPT_NAME, dataset)
    runtime.setup(args)

    train_ds, test_ds, test_inputs = data.autoencoder_datasets(
        dataset, args.batch_size, args.binarize, args.seed, with_labels=True)
    encoder = build_encoder(args.arch, args.latent_dim)
    decoder = build_decoder(args.arch, args.latent_dim)
    encoder.summary()
    decoder.summary()
    cvae = build_cvae(encoder, decoder, args.beta, args.seed)
    compile_cvae(cvae, args.learning_rate)
    fitted = training.fit(cvae, train_ds, validation_data=test_ds, epochs=args.epochs,
                          backup_dir=out.checkpoint("cvae"), log_dir=out.logs("cvae"))

    z_mean, z_log_var = training.predict(encoder, (test_inputs, one_hot(dataset.y_test)))
    scores = evaluate_elbo(decoder, test_inputs, dataset.y_test, z_mean, z_log_var, args)
    judge, judge_fitted = train_judge(dataset, args, out)
    verdict = evaluate_conditional_accuracy(decoder, judge, dataset, args)
    results = {**outputs.results_header(args, dataset), **scores, **verdict, **fitted.results(),
               "classifier_train_seconds": judge_fitted.seconds}
    out.write_results(results)
    out.save_models(cvae=cvae, cvae_encoder=encoder, cvae_decoder=decoder,
                    digit_classifier=judge)
    draw_figures(decoder, dataset, z_mean, args, out.figures)
    out.finish()  # everything is written: the checkpoints can go
    print_summary(results)


# -- Data: binarized digits and their one-hot labels y --------------------------------------------
# The pipelines yield ((image, one-hot label), image): two inputs, and the image as the target,
# binarized as in the VAE lesson (a fresh draw every epoch; the test split once, with a seed).

def one_hot(labels):
    """Integer labels (N,) -> one-hot rows (N, 10), float32: the y both networks are given."""
    return np.eye(data.NUM_CLASSES, dtype=np.float32)[np.asarray(labels)]


# -- Encoder: q(z | x, y) = N(z_mean(x, y), diag(exp(z_log_var(x, y)))) -------------------------
# $$ q(z \mid x, y) = \mathcal{N}\big(\mu(x, y), \mathrm{diag}(e^{\log \sigma^2(x, y)})\big) $$
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


# -- Decoder: p(x | z, y) = prod_i Bernoulli(x_i; sigmoid(l_i(z, y))) ----------------------------
# $$ p(x \mid z, y) = \prod_i \mathrm{Bernoulli}\big(x_i; \sigma(l_i(z, y))\big) $$
# Two inputs, the style z and the one-hot label, concatenated. It returns logits; a sigmoid turns
# them into the grey images (Bernoulli means) that we draw and that the judge labels.

def build_decoder(arch, latent_dim):
    z = keras.Input(shape=(latent_dim,), name="z")
    labels = keras.Input(shape=(data.NUM_CLASSES,), name="label")
    x = layers.Concatenate(name="z_and_label")([z, labels])
    if arch == "mlp":
        x = layers.Dense(HIDDEN_UNITS, activation="relu", name="decoder_hidden")(x)
        x = layers.Dense(int(np.prod(data.IMAGE_SHAPE)), name="pixel_logits", dtype="float32")(x)
        logits = layers.Reshape(data.IMAGE_SHAPE, name="image_logits", dtype="float32")(x)
    else:
        x = layers.Dense(7 * 7 * CONV_FILTERS[-1], activation="relu", name="decoder_hidden")(x)
        x = layers.Reshape((7, 7, CONV_FILTERS[-1]), name="feature_map")(x)
        for i, filters in enumerate(reversed(CONV_FILTERS)):
            x = layers.Conv2DTranspose(filters, 3, strides=2, padding="same", activation="relu",
                                       name=f"decoder_deconv{i + 1}")(x)
        logits = layers.Conv2D(1, 3, padding="same", name="image_logits", dtype="float32")(x)
    return keras.Model([z, labels], logits, name="decoder")


# -- The CVAE: (x, y) -> encoder -> Sampling (adds beta * KL) -> decoder(z, y) -------------------
# The `Sampling` layer of the VAE lesson (common/layers.py) draws z = mu + sigma * eps and adds
#   beta * KL(q(z|x,y) || N(0, I)) = -beta/2 * sum_j (1 + log_var_j - mu_j^2 - exp(log_var_j)),
# which the `PenalizedModel` around it logs as `kl_loss`. The same label goes to both networks.

def build_cvae(encoder, decoder, beta, seed):
    images = keras.Input(shape=data.IMAGE_SHAPE, name="image")
    labels = keras.Input(shape=(data.NUM_CLASSES,), name="label")
    z_mean, z_log_var = encoder([images, labels])
    z = Sampling(beta=beta, seed=seed, name="sampling", dtype="float32")([z_mean, z_log_var])
    return PenalizedModel([images, labels], decoder([z, labels]), name="cvae")


# -- Loss: -log p(x | z, y) + beta * KL, in nats per image ----------------------------------------
# $$ -\log p(x \mid z, y) + \beta\, \mathrm{KL}\big(q(z \mid x, y) \,\|\, p(z)\big) $$
# The Bernoulli negative log-likelihood from logits, summed over the 784 pixels, plus the KL that
# the Sampling layer adds: the negative conditional ELBO, printed beside its two parts.

def compile_cvae(cvae, learning_rate):
    training.compile(cvae, loss=losses.bernoulli_nll, learning_rate=learning_rate,
                     metrics=[losses.reconstruction_metric()])


# -- Training ------------------------------------------------------------------------------------
# `training.fit`, with the test split as validation data: loss, reconstruction_loss and kl_loss,
# and val_... of each; a backup every epoch, and a stop at the first NaN loss.


# -- Evaluation: the conditional ELBO on the test split -------------------------------------------
# Each test image is encoded and decoded with its own label, so the negative ELBO and the IWAE
# estimate bound -log p(x | y): the cost of the image once its digit is known.

def evaluate_elbo(decoder, test_inputs, test_labels, z_mean, z_log_var, args):
    labels = one_hot(test_labels)

    def decode_logits(z, rows):  # rows[i] is the test image behind z[i]: decode with its label
        return decoder([z, labels[rows]], training=False)

    scores = metrics.evaluate_elbo(test_inputs, z_mean, z_log_var, decode_logits,
                                   samples=args.iwae_samples, seed=args.seed)
    return {"test_neg_elbo_nats": scores["neg_elbo"],
            "test_reconstruction_nats": scores["reconstruction"],
            "test_kl_nats": scores["kl"],
            "test_nll_iwae_nats": scores["nll_iwae"],
            "active_units": metrics.active_units(z_mean)}


# -- The judge: p(y | x), an independent digit classifier -----------------------------------------
# $$ p(y \mid x) $$
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


def train_judge(dataset, args, out):
    judge = build_judge(args.seed)
    judge.summary()
    training.compile(judge, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                     learning_rate=JUDGE_LEARNING_RATE, metrics=["accuracy"])
    real_digits = data.batches((dataset.x_train, dataset.y_train), args.batch_size,
                               args.seed).prefetch(tf.data.AUTOTUNE)
    fitted = training.fit(judge, real_digits, epochs=args.classifier_epochs,
                          backup_dir=out.checkpoint("digit_classifier"),
                          log_dir=out.logs("digit_classifier"))
    return judge, fitted


# -- Evaluation: does the decoder draw the digit it is asked for? ---------------------------------
# For each class c, `per_class` codes z ~ N(0, I) are decoded with y = c and the judge labels the
# images: the conditional accuracy is the fraction labelled c, overall and per class.

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


# -- Figures, from the test split or the prior ----------------------------------------------------

def draw_figures(decoder, dataset, z_mean, args, folder):
    title = (f"{data.TITLES[args.dataset]} conditional VAE "
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


# -- Summary -------------------------------------------------------------------------------------

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
          f"({results['seconds_per_epoch']:.2f} s per epoch, {results['train_examples']:,} images)"
          f"; classifier {results['classifier_train_seconds']:.1f} s")


if __name__ == "__main__":
    cli.run(main)
