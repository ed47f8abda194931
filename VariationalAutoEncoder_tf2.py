r"""Variational autoencoder (VAE) on MNIST, in Keras 3 on TensorFlow, JAX or PyTorch.

A VAE is a generative model p(x, z) = p(z) p(x | z): a code z ~ N(0, I) and a decoder that turns
it into an image. An encoder q(z | x) learns which codes explain an image, and both networks are
trained together by maximising the evidence lower bound (ELBO) on log p(x):

    log p(x) >= ELBO(x) = E_q(z|x)[log p(x | z)] - KL(q(z | x) || p(z))
                          `---- reconstruction ---'   `---- regulariser ----'
    $$ \log p(x) \ge \mathrm{ELBO}(x) =
       \underbrace{\mathbb{E}_{q(z \mid x)}[\log p(x \mid z)]}_{\text{reconstruction}}
       - \underbrace{\mathrm{KL}\big(q(z \mid x) \,\|\, p(z)\big)}_{\text{regulariser}} $$

The lesson builds both networks with the functional API, draws z with the reparameterisation
trick in a `Sampling` layer that also adds the KL term, trains on binarized digits, and scores
the held-out test split in nats: the negative ELBO and the tighter importance-weighted (IWAE)
estimate of -log p(x). It draws the latent space, a decoded grid of it, and prior samples.

    python VariationalAutoEncoder_tf2.py                    # MLP, 2-D latent space
    python VariationalAutoEncoder_tf2.py --arch conv --latent-dim 16 --epochs 20
    python VariationalAutoEncoder_tf2.py --beta 4           # a beta-VAE
    KERAS_BACKEND=jax python VariationalAutoEncoder_tf2.py  # on JAX (or torch: the book, Backends)

It writes results/VariationalAutoEncoder_tf2.json, models/vae*.keras and figures/vae_*.png; the
defaults take about a minute on 2 CPU cores, and Ctrl-C then the same command
resumes. The saved models load in a fresh process after `import common` (which registers the
`Sampling` layer and the loss).
"""

import pathlib

import common  # first: quiets TensorFlow's start-up logs, registers the suite's Keras objects
import keras
import numpy as np
from keras import layers, ops

from common import cli, data, losses, metrics, outputs, plots, runtime, training
from common.layers import PenalizedModel, Sampling

SCRIPT_NAME = pathlib.Path(__file__).stem
HIDDEN_UNITS = 512        # the MLP's hidden layer: 784-512-latent and back
CONV_FILTERS = (32, 64)   # the conv encoder's two stride-2 layers: 28 -> 14 -> 7
CONV_DENSE_UNITS = 128    # the conv encoder's dense layer before z_mean and z_log_var
TRAVERSED_DIMENSIONS = 8  # a latent space wider than 2 is drawn as traversals of its busiest 8


def parse_args(argv=None):
    parser = cli.base_parser(__file__, __doc__.split("\n\n")[0], epochs=50, batch_size=128,
                             learning_rate=1e-3)
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
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    dataset = data.load_dataset(args.dataset, args.data, args.limit)  # checked before all else
    out = outputs.prepare_outputs(args, SCRIPT_NAME, dataset)
    runtime.setup(args)

    train_ds, test_ds, test_inputs = data.autoencoder_datasets(
        dataset, args.batch_size, args.binarize, args.seed)
    encoder = build_encoder(args.arch, args.latent_dim)
    decoder = build_decoder(args.arch, args.latent_dim)
    encoder.summary()
    decoder.summary()
    vae = build_vae(encoder, decoder, args.beta, args.seed)
    compile_vae(vae, args.learning_rate)
    fitted = training.fit(vae, train_ds, validation_data=test_ds, epochs=args.epochs,
                          backup_dir=out.checkpoint("vae"), log_dir=out.logs("vae"))

    z_mean, z_log_var = training.predict(encoder, test_inputs)
    scores = evaluate(decoder, test_inputs, z_mean, z_log_var, args)
    results = {**outputs.results_header(args, dataset), **scores, **fitted.results()}
    out.write_results(results)
    out.save_models(vae=vae, vae_encoder=encoder, vae_decoder=decoder)
    draw_figures(decoder, dataset, test_inputs, z_mean, args, out.figures)
    out.finish()  # everything is written: the checkpoints can go
    print_summary(results)


# -- Data: binarized digits, x_i in {0, 1} ------------------------------------------------------
# $$ x_i \in \{0, 1\} $$
# The decoder below is a Bernoulli distribution over pixels, so the targets must be binary: by
# default every training image is binarized afresh in every epoch (pixel i is 1 with probability
# equal to its grey level), and the test images once, with a seed. `data.autoencoder_datasets`
# builds the tf.data pipelines of (image, image) pairs; `test_inputs` are the binarized test
# images, and every number below is scored on them.


# -- Encoder: q(z | x) = N(z_mean(x), diag(exp(z_log_var(x)))) ---------------------------------
# $$ q(z \mid x) = \mathcal{N}\big(\mu(x), \mathrm{diag}(e^{\log \sigma^2(x)})\big) $$
# The encoder outputs the mean and the log-variance of a diagonal Gaussian over z. Predicting
# log sigma^2 rather than sigma keeps the variance positive without a constraint. The layers that
# feed the loss (z_mean, z_log_var, the sampling and the logits) compute in float32 even under
# --mixed-precision, so the nats stay exact.

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


# -- Sampling: z = mu + sigma * eps, eps ~ N(0, I), and the KL term -----------------------------
# $$ z = \mu + \sigma \odot \varepsilon, \quad \varepsilon \sim \mathcal{N}(0, I) $$
# The reparameterisation trick makes the randomness an input, so gradients flow to mu and
# log_var. The `Sampling` layer (common/layers.py, shared with the CVAE) also adds the KL term in
# closed form to the model's loss with `add_loss`:
#   beta * KL(q(z|x) || N(0, I)) = -beta/2 * sum_j (1 + log_var_j - mu_j^2 - exp(log_var_j))
# and the `PenalizedModel` around it logs the unweighted KL as `kl_loss`, on every backend.


# -- Decoder: p(x | z) = prod_i Bernoulli(x_i; sigmoid(l_i(z))) ----------------------------------
# $$ p(x \mid z) = \prod_i \mathrm{Bernoulli}\big(x_i; \sigma(l_i(z))\big) $$
# The decoder returns logits l, not probabilities: the loss is computed from them directly, and
# a sigmoid turns them into the grey images we draw.

def build_decoder(arch, latent_dim):
    z = keras.Input(shape=(latent_dim,), name="z")
    if arch == "mlp":
        x = layers.Dense(HIDDEN_UNITS, activation="relu", name="decoder_hidden")(z)
        x = layers.Dense(int(np.prod(data.IMAGE_SHAPE)), name="pixel_logits", dtype="float32")(x)
        logits = layers.Reshape(data.IMAGE_SHAPE, name="image_logits", dtype="float32")(x)
    else:
        x = layers.Dense(7 * 7 * CONV_FILTERS[-1], activation="relu", name="decoder_hidden")(z)
        x = layers.Reshape((7, 7, CONV_FILTERS[-1]), name="feature_map")(x)
        for i, filters in enumerate(reversed(CONV_FILTERS)):
            x = layers.Conv2DTranspose(filters, 3, strides=2, padding="same", activation="relu",
                                       name=f"decoder_deconv{i + 1}")(x)
        logits = layers.Conv2D(1, 3, padding="same", name="image_logits", dtype="float32")(x)
    return keras.Model(z, logits, name="decoder")


# -- The VAE: x -> encoder -> Sampling (adds beta * KL) -> decoder -> logits ---------------------

def build_vae(encoder, decoder, beta, seed):
    images = keras.Input(shape=data.IMAGE_SHAPE, name="image")
    z_mean, z_log_var = encoder(images)
    z = Sampling(beta=beta, seed=seed, name="sampling", dtype="float32")([z_mean, z_log_var])
    return PenalizedModel(images, decoder(z), name="vae")


# -- Loss: -ELBO(x) = -log p(x | z) + beta * KL, in nats per image -------------------------------
# $$ -\mathrm{ELBO}(x) = -\log p(x \mid z) + \beta\, \mathrm{KL}(q(z \mid x) \,\|\, p(z)) $$
# The first term is the Bernoulli negative log-likelihood from the logits, summed over the 784
# pixels (`losses.bernoulli_nll`: softplus(l) - x * l, nothing clipped); the second is added by
# the Sampling layer. Keras averages both over the batch, and prints each beside the loss.

def compile_vae(vae, learning_rate):
    training.compile(vae, loss=losses.bernoulli_nll, learning_rate=learning_rate,
                     metrics=[losses.reconstruction_metric()])


# -- Training ------------------------------------------------------------------------------------
# `training.fit` is Keras's fit with the test split as validation data, so the log shows loss =
# reconstruction + beta * KL, reconstruction_loss and kl_loss, each also as val_...; it backs up
# every epoch (a rerun resumes) and stops at the first NaN loss.


# -- Evaluation on the test split, in nats per image ---------------------------------------------
# The negative ELBO: the reconstruction term averaged over k samples z_i ~ q(z | x), plus the KL
# in closed form. The importance-weighted bound (Burda et al., 2016) is tighter as k grows:
#   log p(x) >= log (1/k) sum_i p(x | z_i) p(z_i) / q(z_i | x),
# and is the usual estimate of the test -log p(x). A latent unit is active when its posterior
# mean varies over the data, Var_x E_q[z_u | x] > 0.01; the others collapsed to the prior.

def evaluate(decoder, test_inputs, z_mean, z_log_var, args):
    scores = metrics.evaluate_elbo(test_inputs, z_mean, z_log_var,
                                   lambda z, rows: decoder(z), samples=args.iwae_samples,
                                   seed=args.seed)
    return {"test_neg_elbo_nats": scores["neg_elbo"],
            "test_reconstruction_nats": scores["reconstruction"],
            "test_kl_nats": scores["kl"],
            "test_nll_iwae_nats": scores["nll_iwae"],
            "active_units": metrics.active_units(z_mean)}


# -- Figures, all from the test split or the prior -----------------------------------------------

def draw_figures(decoder, dataset, test_inputs, z_mean, args, folder):
    def decode_images(z):  # one call for a whole batch of codes; Bernoulli means in [0, 1]
        return ops.convert_to_numpy(ops.sigmoid(decoder(z)))

    title = (f"{data.TITLES[args.dataset]} VAE "
             f"({args.arch}, latent {args.latent_dim}, beta {args.beta:g})")
    plots.plot_latent_scatter(z_mean, dataset.y_test, folder / "vae_latent_scatter.png", title,
                              dataset.class_names, seed=args.seed)
    # The manifold: a row over a 1-D latent space, a grid over a 2-D one, or traversals of the
    # busiest dimensions of a wider one.
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
    # Two test images per class and their reconstructions (the decoded posterior mean).
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


# -- Summary -------------------------------------------------------------------------------------

def print_summary(results):
    print(f"\n{SCRIPT_NAME} on {results['test_examples']:,} held-out test images "
          f"({results['binarize']} binarization), in nats per image:")
    print(f"  negative ELBO           {results['test_neg_elbo_nats']:8.2f}"
          f"  = reconstruction {results['test_reconstruction_nats']:.2f}"
          f" + KL {results['test_kl_nats']:.2f}")
    print(f"  -log p(x), IWAE k={results['iwae_samples']:<4d} {results['test_nll_iwae_nats']:8.2f}")
    print(f"  active units            {results['active_units']:5d} of {results['latent_dim']}")
    print(f"  training                {results['train_seconds']:8.1f} s "
          f"({results['seconds_per_epoch']:.2f} s per epoch, {results['train_examples']:,} images)")


if __name__ == "__main__":
    cli.run(main)
