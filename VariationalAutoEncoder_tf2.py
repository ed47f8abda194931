r"""Variational autoencoder (VAE) on MNIST, in Keras 3 on TensorFlow, JAX or PyTorch.

A VAE is a generative model p(x, z) = p(z) p(x | z): a code z ~ N(0, I) and a decoder that turns
it into an image. An encoder q(z | x) learns which codes explain an image, and both networks are
trained together by maximising the evidence lower bound (ELBO) on log p(x):

    $$ \log p(x) \ge \mathrm{ELBO}(x) = E_{q(z|x)}[\log p(x|z)] - \mathrm{KL}(q(z|x) \| p(z)) $$

The lesson builds both networks with the functional API, draws z with the reparameterisation
trick in its own `Sampling` layer, which also adds the KL term with `add_loss`, trains on
binarized digits, and scores the held-out test split in nats: the negative ELBO and the tighter
importance-weighted (IWAE) estimate of -log p(x). It then trains the same VAE with its losses
averaged instead of summed, to show what that does, and draws the latent space, a decoded grid
of it, and prior samples.

    python VariationalAutoEncoder_tf2.py                    # MLP, 2-D latent space
    python VariationalAutoEncoder_tf2.py --arch conv --latent-dim 16 --epochs 20
    KERAS_BACKEND=jax python VariationalAutoEncoder_tf2.py  # on JAX (or torch: the book, Backends)

It writes results/VariationalAutoEncoder_tf2.json (its timings among them), models/vae*.keras and
figures/vae_*.png; Ctrl-C, then the same command, resumes. The saved models load in a fresh
process after `import VariationalAutoEncoder_tf2`, which registers its `Sampling` layer and loss.
"""

import argparse
from typing import NamedTuple

import common  # first: quiets TensorFlow's start-up logs, registers the suite's Keras objects
import keras
import numpy as np
from keras import layers, ops

from common import cli, data, metrics, outputs, plots, training
from common.layers import PenalizedModel

SCRIPT_NAME = "VariationalAutoEncoder_tf2"
HIDDEN_UNITS = 512        # the MLP's hidden layer: 784-512-latent and back
CONV_FILTERS = (32, 64)   # the conv encoder's two stride-2 layers: 28 -> 14 -> 7
CONV_DENSE_UNITS = 128    # the conv encoder's dense layer before z_mean and z_log_var
TRAVERSED_DIMENSIONS = 8  # a latent space wider than 2 is drawn as traversals of its busiest 8
PIXELS = int(np.prod(data.IMAGE_SHAPE))  # 784 terms in the reconstruction, one per pixel


def parse_args(argv=None):
    parser = cli.base_parser(SCRIPT_NAME, epochs=50, batch_size=128, learning_rate=1e-3)
    lesson = parser.add_argument_group("this lesson")
    lesson.add_argument("--arch", choices=("mlp", "conv"), default="mlp",
                        help="dense (784-512-latent) or convolutional encoder and decoder")
    lesson.add_argument("--latent-dim", type=cli.latent_dim, default=2,
                        help=f"size of z, 1 to {cli.MAX_LATENT_DIM}; 2 gives a latent space you "
                             "can draw, 1 a strip")
    lesson.add_argument("--beta", type=cli.penalty_weight, default=1.0,
                        help="weight of the KL term; beta > 1 is the beta-VAE")
    lesson.add_argument("--binarize", choices=data.BINARIZATIONS, default="dynamic",
                        help="how grey pixels become Bernoulli targets")
    lesson.add_argument("--iwae-samples", type=cli.iwae_samples, default=100,
                        help=f"importance samples k for the test -log p(x) estimate, at most "
                             f"{cli.MAX_IWAE_SAMPLES:,}")
    lesson.add_argument("--mean-comparison", action=argparse.BooleanOptionalAction, default=True,
                        help="also train the VAE with its two loss terms averaged, not summed")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    dataset = data.load_dataset(args.dataset, args.data, args.limit)  # checked before all else
    run = outputs.start(args, SCRIPT_NAME, dataset)  # output folders, devices, seeds
    train_ds, test_ds, test_inputs = data.autoencoder_datasets(
        dataset, args.batch_size, args.binarize, args.seed)
    encoder, decoder, vae = build_vae(args.arch, args.latent_dim, args.beta, args.seed)
    compile_vae(vae, bernoulli_nll, args.learning_rate)
    fitted = train(vae, train_ds, test_ds, args, run)
    results = {**run.header, **evaluate(encoder, decoder, test_inputs, args), **fitted.results()}
    averaged = train_averaged(train_ds, test_ds, test_inputs, args, run)
    results["averaged_losses"] = averaged.scores
    draw_figures(encoder, decoder, averaged, dataset, test_inputs, args, run.figures)
    run.finish(results, vae=vae, vae_encoder=encoder, vae_decoder=decoder)
    print_summary(results)


# -- Data: binarized digits ---------------------------------------------------------------------
# $$ x_i \in \{0, 1\}, \quad P(x_i = 1) = \text{grey level of pixel } i $$
# The decoder below is a Bernoulli distribution over pixels, so the targets must be binary: by
# default every training image is binarized afresh in every epoch, and the test images once,
# with a seed. `data.autoencoder_datasets` builds the batches of (image, image) pairs that `fit`
# reads; each epoch's shuffle and binarization are drawn from the seed and the epoch, so a run
# resumed after a kill draws what it would have drawn. `test_inputs` are the binarized test
# images, and every number below is scored on them.


# -- Encoder: a diagonal Gaussian over z --------------------------------------------------------
# $$ q(z|x) = N(\mu(x), \mathrm{diag}(\sigma^2(x))) $$
# The encoder outputs the mean and the log-variance of a diagonal Gaussian over z. Predicting
# log sigma^2 rather than sigma keeps the variance positive without a constraint. The layers that
# feed the loss compute in float32 even under --mixed-precision, so the nats stay exact.

def build_encoder(arch, latent_dim):
    images = keras.Input(shape=data.IMAGE_SHAPE, name="image")
    if arch == "mlp":
        x = layers.Flatten(name="flatten")(images)
        x = layers.Dense(HIDDEN_UNITS, activation="relu", name="encoder_hidden")(x)
    else:
        x = images
        for i, filters in enumerate(CONV_FILTERS):
            x = layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu",
                              name=f"encoder_conv{i + 1}")(x)
        x = layers.Flatten(name="flatten")(x)
        x = layers.Dense(CONV_DENSE_UNITS, activation="relu", name="encoder_hidden")(x)
    z_mean = layers.Dense(latent_dim, name="z_mean", dtype="float32")(x)
    z_log_var = layers.Dense(latent_dim, name="z_log_var", dtype="float32")(x)
    return keras.Model(images, [z_mean, z_log_var], name="encoder")


# -- Sampling: the reparameterisation trick, and the KL term ------------------------------------
# $$ z = \mu + \sigma \odot \epsilon, \quad \epsilon \sim N(0, I); \qquad
#    \mathrm{KL}(q(z|x) \| p(z)) = -\frac{1}{2} \sum_j (1 + \log \sigma_j^2 - \mu_j^2 - \sigma_j^2) $$
# Sampling z ~ q(z|x) directly has no gradient; sampling the noise eps and computing z does, so
# gradients flow into mu and log sigma^2. The KL between two Gaussians needs no sampling: the
# layer computes it in closed form, summed over the latent dimensions, and adds its batch mean,
# times beta, to the model's loss with `add_loss`. It keeps the unweighted KL too, which the
# `PenalizedModel` around it logs as `kl_loss` (a metric updated in `call` would not work on JAX).

@keras.saving.register_keras_serializable(package="autoencoders")
class Sampling(layers.Layer):
    """z = mu + sigma * eps, adding beta * KL(q(z|x) || N(0, I)) to the model's loss."""

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


# -- Decoder: a Bernoulli distribution over the pixels ------------------------------------------
# $$ p(x|z) = \prod_i \mathrm{Bernoulli}(x_i; \mathrm{sigmoid}(l_i(z))) $$
# The decoder returns logits l, not probabilities: the loss is computed from them directly, and
# a sigmoid turns them into the grey images we draw.

def build_decoder(arch, latent_dim):
    z = keras.Input(shape=(latent_dim,), name="z")
    if arch == "mlp":
        x = layers.Dense(HIDDEN_UNITS, activation="relu", name="decoder_hidden")(z)
        x = layers.Dense(PIXELS, name="pixel_logits", dtype="float32")(x)
        logits = layers.Reshape(data.IMAGE_SHAPE, name="image_logits", dtype="float32")(x)
    else:
        x = layers.Dense(7 * 7 * CONV_FILTERS[-1], activation="relu", name="decoder_hidden")(z)
        x = layers.Reshape((7, 7, CONV_FILTERS[-1]), name="feature_map")(x)
        for i, filters in enumerate(reversed(CONV_FILTERS)):
            x = layers.Conv2DTranspose(filters, 3, strides=2, padding="same", activation="relu",
                                       name=f"decoder_deconv{i + 1}")(x)
        logits = layers.Conv2D(1, 3, padding="same", name="image_logits", dtype="float32")(x)
    return keras.Model(z, logits, name="decoder")


# -- The VAE: image, encoder, Sampling, decoder, logits -----------------------------------------
# `PenalizedModel` is a functional `keras.Model` that logs the KL its Sampling layer keeps.

def build_vae(arch, latent_dim, beta, seed, name="vae", summary=True):
    encoder, decoder = build_encoder(arch, latent_dim), build_decoder(arch, latent_dim)
    if summary:
        encoder.summary()
        decoder.summary()
    images = keras.Input(shape=data.IMAGE_SHAPE, name="image")
    z_mean, z_log_var = encoder(images)
    z = Sampling(beta=beta, seed=seed, name="sampling", dtype="float32")([z_mean, z_log_var])
    return encoder, decoder, PenalizedModel(images, decoder(z), name=name)


# -- Loss: the negative ELBO, in nats per image -------------------------------------------------
# $$ -\mathrm{ELBO}(x) = \sum_{i=1}^{784} (\mathrm{softplus}(l_i) - x_i l_i) + \beta\,\mathrm{KL} $$
# The first term is -log p(x|z), the Bernoulli negative log-likelihood from the logits (the
# binary cross-entropy with from_logits=True, nothing clipped), summed over the 784 pixels; the
# second is added by the Sampling layer. Keras averages both over the batch, so the logged
# `loss` is `reconstruction_loss + beta * kl_loss` (up to the last, smaller batch of an epoch,
# which the loss weighs by its size and `kl_loss` as one batch).

@keras.saving.register_keras_serializable(package="autoencoders")
def bernoulli_nll(images, logits):
    """-log p(x | z) per image: the binary cross-entropy from logits, summed over pixels."""
    per_pixel = ops.binary_crossentropy(images, logits, from_logits=True)
    return ops.sum(ops.reshape(per_pixel, (ops.shape(per_pixel)[0], -1)), axis=-1)


def compile_vae(vae, loss, learning_rate):
    vae.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss,
                metrics=[keras.metrics.MeanMetricWrapper(bernoulli_nll,
                                                         name="reconstruction_loss")])
    training.set_execution(vae)  # steps per call and jax.jit, for this backend


# -- Training -----------------------------------------------------------------------------------
# Keras's fit, with the test split as validation data and three callbacks: a backup after every
# epoch, so that Ctrl-C and the same command resume (`ResumableBackup`, a BackupAndRestore whose
# backups survive a kill and keep the history), a stop at the first NaN or exploding loss
# (`StopOnDivergence`, a TerminateOnNaN that says which model and epoch), and, with
# --tensorboard, Keras's TensorBoard.

def train(vae, train_ds, test_ds, args, run):
    backup = training.ResumableBackup(run.checkpoint(vae.name, vae), train_ds)
    callbacks = [training.StopOnDivergence(vae, test_ds), backup]
    if args.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(run.logs(vae.name)))
    vae.fit(train_ds, validation_data=test_ds, epochs=args.epochs, callbacks=callbacks,
            shuffle=False, verbose=2)  # the batches shuffle themselves, per epoch
    return backup.fitted()


# -- Evaluation on the test split, in nats per image --------------------------------------------
# $$ \log p(x) \ge \log \frac{1}{k} \sum_{i=1}^k \frac{p(x|z_i)\, p(z_i)}{q(z_i|x)},
#    \quad z_i \sim q(z|x) $$
# The negative ELBO averages the reconstruction term over k samples of z and adds the KL in
# closed form. The importance-weighted bound (Burda et al., 2016) above is tighter as k grows,
# and is the usual estimate of the test -log p(x). A latent unit is active when its posterior
# mean varies over the data (variance above 0.01); the others collapsed to the prior.

def evaluate(encoder, decoder, test_inputs, args):
    z_mean, z_log_var = training.predict(encoder, test_inputs)
    scores = metrics.evaluate_elbo(test_inputs, z_mean, z_log_var,
                                   lambda z, rows: decoder(z), samples=args.iwae_samples,
                                   seed=args.seed)
    return {"test_neg_elbo_nats": scores["neg_elbo"],
            "test_reconstruction_nats": scores["reconstruction"],
            "test_kl_nats": scores["kl"],
            "test_nll_iwae_nats": scores["nll_iwae"],
            "active_units": metrics.active_units(z_mean)}


# -- Sum or mean? The same VAE with its losses averaged -----------------------------------------
# $$ \frac{1}{784} \sum_i \mathrm{BCE}_i + \frac{\beta}{d} \sum_j \mathrm{KL}_j
#    = \frac{1}{784} \Big( \sum_i \mathrm{BCE}_i + \frac{784}{d} \beta \sum_j \mathrm{KL}_j \Big) $$
# Many VAEs average the reconstruction over pixels (Keras's BinaryCrossentropy does) and the KL
# over latent dimensions. The ELBO is a sum: log p(x|z) has one term per pixel and the KL one per
# dimension, since both distributions factorise. Averaging scales the loss by 1/784, which Adam
# hardly notices, and weighs the KL by 784/d: a beta-VAE with beta = 392 for d = 2. Here that VAE
# trains on the same data, and is scored in the same nats.

class Averaged(NamedTuple):
    scores: dict        # its test nats, active units and effective beta
    decoder: object     # its decoder, and the codes of the test images, for the figures
    z_mean: np.ndarray


def train_averaged(train_ds, test_ds, test_inputs, args, run):
    if not args.mean_comparison:
        return Averaged(None, None, None)
    encoder, decoder, vae = build_vae(args.arch, args.latent_dim, args.beta / args.latent_dim,
                                      args.seed, name="vae_averaged", summary=False)
    compile_vae(vae, keras.losses.BinaryCrossentropy(from_logits=True), args.learning_rate)
    fitted = train(vae, train_ds, test_ds, args, run)
    scores = {**evaluate(encoder, decoder, test_inputs, args),
              "effective_beta": args.beta * PIXELS / args.latent_dim,
              "train_seconds": fitted.results()["train_seconds"]}
    return Averaged(scores, decoder, training.predict(encoder, test_inputs)[0])


# -- Figures, all from the test split or the prior ----------------------------------------------
# The latent space of the test images, coloured by class; the manifold (a row over a 1-D latent
# space, a grid over a 2-D one, traversals of the busiest dimensions of a wider one);
# reconstructions; samples from the prior; and the averaged VAE beside the summed one.

def draw_figures(encoder, decoder, averaged, dataset, test_inputs, args, folder):
    def decode_images(z, decoder=decoder):  # one call per batch of codes; Bernoulli means
        return ops.convert_to_numpy(ops.sigmoid(decoder(z)))

    z_mean = training.predict(encoder, test_inputs)[0]
    title = (f"{dataset.title} VAE "
             f"({args.arch}, latent {args.latent_dim}, beta {args.beta:g})")
    plots.plot_latent_scatter(z_mean, dataset.y_test, folder / "vae_latent_scatter.png", title,
                              dataset.class_names, seed=args.seed)
    if args.latent_dim <= 2:
        shape = "row" if args.latent_dim == 1 else "grid"
        plots.plot_manifold(decode_images, folder / "vae_manifold.png",
                            f"{title}\ndecoded {shape} of z at Gaussian quantiles",
                            latent_dim=args.latent_dim)
    else:
        busiest = np.argsort(np.var(z_mean, axis=0))[::-1][:TRAVERSED_DIMENSIONS]
        plots.plot_latent_traversals(decode_images, busiest, args.latent_dim,
                                     folder / "vae_manifold.png",
                                     f"{title}\ntraversals of the most active latent dimensions")
    picked = data.examples_per_class(dataset.y_test, 2)
    rows, labels = [dataset.x_test[picked]], ["original"]
    if args.binarize != "none":
        rows, labels = rows + [test_inputs[picked]], labels + ["binarized input"]
    plots.plot_image_rows(rows + [decode_images(z_mean[picked])], labels + ["reconstruction"],
                          folder / "vae_reconstructions.png",
                          f"{title}\ntest images and their reconstructions (decoded z_mean)")
    prior = ops.convert_to_numpy(keras.random.normal((100, args.latent_dim), seed=args.seed))
    plots.plot_image_grid(decode_images(prior), folder / "vae_samples.png",
                          f"{title}\nsamples: z ~ N(0, I), Bernoulli means")
    if averaged.decoder is not None:
        plots.plot_image_rows(
            [rows[-1], decode_images(z_mean[picked]),
             decode_images(averaged.z_mean[picked], averaged.decoder),
             decode_images(prior[:len(picked)]), decode_images(prior[:len(picked)],
                                                              averaged.decoder)],
            ["input", "summed: recon.", "averaged: recon.", "summed: sample", "averaged: sample"],
            folder / "vae_sum_or_mean.png",
            f"{title}\nlosses summed (the ELBO) or averaged (beta x {PIXELS / args.latent_dim:g})")


# -- Summary ------------------------------------------------------------------------------------

def print_summary(results):
    print(f"\n{SCRIPT_NAME} on {results['test_examples']:,} held-out test images "
          f"({results['binarize']} binarization), in nats per image:")
    print(f"  negative ELBO           {results['test_neg_elbo_nats']:8.2f}"
          f"  = reconstruction {results['test_reconstruction_nats']:.2f}"
          f" + KL {results['test_kl_nats']:.2f}")
    print(f"  -log p(x), IWAE k={results['iwae_samples']:<4d} {results['test_nll_iwae_nats']:8.2f}")
    print(f"  active units            {results['active_units']:5d} of {results['latent_dim']}")
    averaged = results["averaged_losses"]
    if averaged is not None:
        print(f"  losses averaged instead {averaged['test_neg_elbo_nats']:8.2f}"
              f"  = reconstruction {averaged['test_reconstruction_nats']:.2f}"
              f" + KL {averaged['test_kl_nats']:.2f} "
              f"(beta x {PIXELS / results['latent_dim']:g}, "
              f"{averaged['active_units']} active units)")
    print(f"  training                {results['train_seconds']:8.1f} s "
          f"({results['seconds_per_epoch']:.2f} s per epoch, "
          f"{data.counted(results['train_examples'], 'image')})")


if __name__ == "__main__":
    cli.run(main)
