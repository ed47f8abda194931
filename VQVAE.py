r"""Vector-quantised autoencoder (VQ-VAE) on MNIST, in Keras 3 on TensorFlow, JAX or PyTorch.

A VQ-VAE (van den Oord et al., 2017) describes an image by a small grid of discrete codes, here
7 x 7 indices into a learned codebook of K vectors: the image tokenizer under today's generative
models. The encoder maps x to a grid of vectors z_e(x), each is replaced by its nearest codebook
vector e_k, and the decoder turns that grid into Bernoulli pixel logits. The argmin has no
gradient: the straight-through estimator copies the decoder's gradient onto z_e, and two terms
teach the codebook and keep the encoder close to it (sg = stop the gradient):

    $$ L = -\log p(x|z_q) + \|\mathrm{sg}[z_e] - e\|^2 + \beta \|z_e - \mathrm{sg}[e]\|^2 $$
    $$ -\log p(x) \le -\log p(x|z_q(x)) - \log p(k(x)) $$

A new image needs a prior over code grids: a small PixelCNN (masked convolutions) learns p(k)
from the training split's codes and draws grids one code at a time. With a one-hot posterior the
KL term of the ELBO is -log p(k(x)), so the second line scores the test split in nats, with the
uniform prior (49 log K) and with the PixelCNN, beside the VAE lesson's negative ELBO on the same
binarized test images. It also compares the codebook trained by its loss with one set by moving
averages (EMA) and with dead codes re-seeded from encoder outputs: codes used, perplexity, nats.

    python VQVAE.py                                   # K = 32 codes of 16 numbers, all compared
    python VQVAE.py --ema --reseed-dead-codes --codebook-size 64 --no-comparison
    KERAS_BACKEND=jax python VQVAE.py --limit 512 --epochs 1    # on JAX (or torch)

It writes results/VQVAE.json (its timings among them), models/vqvae*.keras,
models/pixelcnn_prior.keras and figures/vqvae_*.png; Ctrl-C, then the same command, resumes. The
saved models load in a fresh process after `import VQVAE`, which registers its layers and losses.
"""

import argparse
import hashlib
import json
import math
import pathlib
from typing import NamedTuple

import common  # first: quiets TensorFlow's start-up logs, registers the suite's Keras objects
import keras
import matplotlib.pyplot as plt
import numpy as np
from keras import layers, ops

from common import cli, data, outputs, plots, training

SCRIPT_NAME = "VQVAE"
CONV_FILTERS = (16, 32)   # the encoder's two stride-2 layers: 28 -> 14 -> 7, and back
GRID = (7, 7)             # the code grid: 28 / 2 / 2 positions a side, 49 codes an image
EMA_DECAY = 0.99          # --ema: the moving averages forget 1% per step (van den Oord et al.)
EMA_EPSILON = 1e-5        # --ema: Laplace smoothing of the counts, so no code divides by zero
RESEED_IMAGES = 1000      # --reseed-dead-codes: training images encoded to find dead codes
PRIOR_FILTERS = 32        # the PixelCNN's channels
PRIOR_LAYERS = 3          # its masked 3 x 3 layers, after a masked 5 x 5 one
SAMPLES = 100             # digits drawn from each prior for the figures
IMAGES_PER_CALL = 250     # images quantized per call: 12,250 vectors against K codes
MAX_CODEBOOK_SIZE = 1024  # the prior's softmax has a logit per code at each of 49 positions
MAX_CODE_DIM = 256        # numbers per code vector
COMPARED = ("plain", "ema", "reseed")  # the codebooks --comparison trains
SETTING_TITLES = {"plain": "plain (codebook loss)", "ema": "EMA codebook",
                  "reseed": "dead codes re-seeded", "ema_reseed": "EMA, dead codes re-seeded"}


def codebook_size(text):
    size = cli.at_most(MAX_CODEBOOK_SIZE, "the prior has a logit per code at each position")(text)
    if size < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2 (one code says nothing), "
                                         f"got {text!r}")
    return size


def parse_args(argv=None):
    parser = cli.base_parser(SCRIPT_NAME, epochs=15, batch_size=128, learning_rate=2e-3)
    lesson = parser.add_argument_group("this lesson")
    lesson.add_argument("--codebook-size", type=codebook_size, default=32,
                        help=f"K, the number of codes, 2 to {MAX_CODEBOOK_SIZE}")
    lesson.add_argument("--code-dim", default=16,
                        type=cli.at_most(MAX_CODE_DIM, "wider codes only cost memory"),
                        help=f"D, the numbers in each code vector, at most {MAX_CODE_DIM}")
    lesson.add_argument("--beta", type=cli.penalty_weight, default=0.25,
                        help="weight of the commitment term")
    lesson.add_argument("--ema", action=argparse.BooleanOptionalAction, default=False,
                        help="set the codebook by moving averages of the vectors each code "
                             "was nearest to, instead of by its loss")
    lesson.add_argument("--reseed-dead-codes", action=argparse.BooleanOptionalAction,
                        default=False, help="after each epoch, move every unused code onto "
                                            "the encoder output of a random training image")
    lesson.add_argument("--comparison", action=argparse.BooleanOptionalAction, default=True,
                        help="also train the plain, the EMA and the re-seeding VQ-VAE, each "
                             "scored the same way")
    lesson.add_argument("--binarize", choices=data.BINARIZATIONS, default="dynamic",
                        help="how grey pixels become Bernoulli targets")
    lesson.add_argument("--prior-epochs", type=cli.positive_int, default=20,
                        help="passes of the PixelCNN prior over the training codes")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    dataset = data.load_dataset(args.dataset, args.data, args.limit)  # checked before all else
    run = outputs.start(args, SCRIPT_NAME, dataset)  # output folders, devices, seeds
    test_inputs = data.test_inputs(dataset, args.binarize, args.seed)  # the VAE lesson's, too
    runs = {setting: train_and_evaluate(setting, dataset, test_inputs, args, run)
            for setting in compared_settings(args)}
    chosen = runs[chosen_setting(args)]
    prior = train_prior(chosen, dataset, args, run)
    likelihood = evaluate_likelihood(chosen, prior, args)
    results = {**run.header, **likelihood, **training_times(runs, chosen, prior),
               "vae_neg_elbo_nats": vae_neg_elbo(run.header, args.out), "compared": compare(runs)}
    draw_figures(chosen, runs, prior, dataset, test_inputs, args, run.figures)
    run.finish(results, vqvae=chosen.model, vqvae_encoder=chosen.encoder,
               vqvae_decoder=chosen.decoder, pixelcnn_prior=prior.model)
    print_summary(results)


# -- Data: binarized digits ---------------------------------------------------------------------
# $$ x_i \in \{0, 1\}, \quad P(x_i = 1) = \text{grey level of pixel } i $$
# As in the VAE lesson: the decoder is a Bernoulli distribution over pixels, so the targets are
# binary, every training image binarized afresh in every epoch and the test images once, with a
# seed. `test_inputs` are exactly the VAE lesson's binarized test images, and every number below
# is scored on them. Each VQ-VAE gets batches of its own (`data.autoencoder_datasets`),
# so that a resumed run draws what a fresh one does.

def training_images(dataset, args):
    """The training images as the encoder sees them, binarized once with the seed: what dead
    codes are looked for in, and what the prior's training codes are encoded from."""
    return dataset.x_train if args.binarize == "none" else data.binarize(dataset.x_train,
                                                                          args.seed)


# -- Encoder: a 7 x 7 grid of vectors -----------------------------------------------------------
# $$ z_e(x) \in \mathbb{R}^{7 \times 7 \times D} $$
# Two stride-2 convolutions halve the image twice, and a 1 x 1 convolution gives each of the 49
# positions a vector of D numbers, each describing a 4 x 4 patch and its surroundings. It is
# float32 even under --mixed-precision: the quantizer compares it with the codebook.

def build_encoder(code_dim):
    images = keras.Input(shape=data.IMAGE_SHAPE, name="image")
    x = images
    for i, filters in enumerate(CONV_FILTERS):
        x = layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu",
                          name=f"encoder_conv{i + 1}")(x)
    z_e = layers.Conv2D(code_dim, 1, name="z_e", dtype="float32")(x)
    return keras.Model(images, z_e, name="encoder")


# -- Vector quantizer: the nearest code, and the straight-through gradient ----------------------
# $$ k(x) = \arg\min_k \|z_e(x) - e_k\|^2, \quad z_q(x) = e_{k(x)}, \quad
#    \frac{\partial z_q}{\partial z_e} := I $$
# Each vector z_e is replaced by its nearest of the K codebook vectors e_k. The argmin has no
# gradient, so the decoder's gradient is copied onto z_e unchanged (straight through): the output
# is sg[e] + (z_e - sg[z_e]), exactly e going forward, the identity into z_e going back. Nothing
# so far moves the codebook or keeps z_e near it; two terms do, equal in value, different in
# where their gradients go: the codebook term ||sg[z_e] - e||^2 moves e towards z_e, the
# commitment term beta ||z_e - sg[e]||^2 moves z_e towards e. Each is summed over the 49
# positions and D numbers of an image, like the reconstruction over its pixels, and added with
# `add_loss`; the layer keeps both, which the model around it logs as `codebook_loss` and
# `commitment_loss`. With --ema the codebook is set by moving averages instead (next section),
# and only the commitment term is added.

def nearest_codes(z_e, codebook):
    """k(x) at every position: (..., D) vectors -> (...) indices of the nearest codebook rows."""
    flat = ops.reshape(z_e, (-1, ops.shape(codebook)[-1]))
    distances = (ops.sum(ops.square(flat), axis=1, keepdims=True)  # ||z||^2 - 2 z.e + ||e||^2
                 - 2 * ops.matmul(flat, ops.transpose(codebook)) + ops.sum(ops.square(codebook), 1))
    return ops.reshape(ops.argmin(distances, axis=1), ops.shape(z_e)[:-1])


def squared_distance(a, b):
    """||a - b||^2 summed over each image's positions and numbers, averaged over the batch."""
    squares = ops.square(a - b)
    return ops.mean(ops.sum(ops.reshape(squares, (ops.shape(squares)[0], -1)), axis=-1))


def quantize(z_e, codebook):
    """(z_q with the straight-through gradient, the codes, the codebook and commitment terms)."""
    codes = nearest_codes(z_e, codebook)
    nearest = ops.take(codebook, codes, axis=0)                           # e_k(x), (..., D)
    codebook_term = squared_distance(ops.stop_gradient(z_e), nearest)     # moves e, not z_e
    commitment_term = squared_distance(z_e, ops.stop_gradient(nearest))   # moves z_e, not e
    quantized = ops.stop_gradient(nearest) + (z_e - ops.stop_gradient(z_e))  # e + 0, exactly
    return quantized, codes, codebook_term, commitment_term


@keras.saving.register_keras_serializable(package="autoencoders")
class VectorQuantizer(layers.Layer):
    """z_e -> z_q, the nearest of `codebook_size` vectors, straight through; adds the codebook
    term (unless `ema`) and beta times the commitment term to the model's loss."""

    def __init__(self, codebook_size, beta=0.25, ema=False, **kwargs):
        super().__init__(**kwargs)
        self.codebook_size, self.beta, self.ema = int(codebook_size), float(beta), bool(ema)

    def build(self, input_shape):
        size, dim = self.codebook_size, input_shape[-1]
        spread = keras.initializers.RandomUniform(-1 / size, 1 / size)  # near 0, as is common
        self.codebook = self.add_weight((size, dim), spread, trainable=not self.ema,
                                        name="codebook")
        if self.ema:  # moving averages of how many vectors chose each code, and of their sum
            self.code_counts = self.add_weight((size,), "ones", trainable=False,
                                               name="code_counts")
            self.code_sums = self.add_weight((size, dim), "zeros", trainable=False,
                                             name="code_sums")
            self.code_sums.assign(ops.copy(self.codebook))  # the first average: itself

    def call(self, z_e, training=False):
        quantized, codes, codebook_term, commitment_term = quantize(z_e, self.codebook)
        self.last_terms = (codebook_term, commitment_term)  # this pass's, for the log
        self.add_loss(self.beta * commitment_term if self.ema
                      else codebook_term + self.beta * commitment_term)
        if self.ema and training:
            counts, sums, codebook = ema_update(self.code_counts, self.code_sums, z_e, codes)
            self.code_counts.assign(counts)
            self.code_sums.assign(sums)
            self.codebook.assign(codebook)
        return quantized

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "codebook_size": self.codebook_size, "beta": self.beta,
                "ema": self.ema}


# -- The codebook by moving averages (--ema) ----------------------------------------------------
# $$ N_k \leftarrow \gamma N_k + (1 - \gamma) n_k, \quad
#    m_k \leftarrow \gamma m_k + (1 - \gamma) \sum_{i: k(i) = k} z_{e,i}, \quad e_k = m_k / N_k $$
# The codebook term asks each e_k to move towards the mean of the vectors that chose it; with
# --ema (van den Oord et al.'s appendix) the layer puts it there directly, in every training
# step: e_k is a moving average (decay gamma) of the vectors assigned to k, the sum m_k over the
# count N_k, smoothed so that an unused code never divides by zero. The codebook is then no
# trainable weight, and Adam never sees it.

def ema_update(counts, sums, z_e, codes, decay=EMA_DECAY):
    """One step of the moving averages: the new (counts N, sums m, codebook m / N)."""
    size = ops.shape(counts)[0]
    flat = ops.reshape(ops.stop_gradient(z_e), (-1, ops.shape(sums)[-1]))
    assigned = ops.one_hot(ops.reshape(codes, (-1,)), size, dtype=flat.dtype)  # (n, K)
    counts = decay * counts + (1 - decay) * ops.sum(assigned, axis=0)
    sums = decay * sums + (1 - decay) * ops.matmul(ops.transpose(assigned), flat)
    total = ops.sum(counts)
    smoothed = (counts + EMA_EPSILON) / (total + size * EMA_EPSILON) * total
    return counts, sums, sums / ops.expand_dims(smoothed, 1)


# -- Decoder: a Bernoulli distribution over the pixels ------------------------------------------
# $$ p(x|z_q) = \prod_i \mathrm{Bernoulli}(x_i; \mathrm{sigmoid}(l_i(z_q))) $$
# The encoder mirrored: two stride-2 transposed convolutions from the 7 x 7 grid of code vectors
# back to 28 x 28, and pixel logits l, as in the VAE lesson, so reconstructions are nats too.

def build_decoder(code_dim):
    z_q = keras.Input(shape=(*GRID, code_dim), name="z_q")
    x = z_q
    for i, filters in enumerate(reversed(CONV_FILTERS)):
        x = layers.Conv2DTranspose(filters, 3, strides=2, padding="same", activation="relu",
                                   name=f"decoder_deconv{i + 1}")(x)
    logits = layers.Conv2D(1, 3, padding="same", name="image_logits", dtype="float32")(x)
    return keras.Model(z_q, logits, name="decoder")


# -- The VQ-VAE: image, encoder, quantizer, decoder, logits -------------------------------------
# A functional keras.Model that logs its quantizer's two terms by name. They are updated in
# `compute_loss`, where every backend keeps metric state (a metric updated in a layer's `call`
# does not work on JAX), from the values of this very forward pass.

@keras.saving.register_keras_serializable(package="autoencoders")
class VQVAEModel(keras.Model):
    """`VQVAEModel(inputs, outputs, name=...)`, with a VectorQuantizer named "quantizer"."""

    def __init__(self, inputs, outputs, name=None, **kwargs):
        super().__init__(inputs, outputs, name=name, **kwargs)
        self.term_trackers = [keras.metrics.Mean(name="codebook_loss"),
                              keras.metrics.Mean(name="commitment_loss")]

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = super().compute_loss(x, y, y_pred, sample_weight, training=training)
        for tracker, term in zip(self.term_trackers, self.get_layer("quantizer").last_terms):
            tracker.update_state(term)
        return loss


def build_vqvae(codebook_size, code_dim, beta, ema, name="vqvae", summary=True):
    encoder, decoder = build_encoder(code_dim), build_decoder(code_dim)
    if summary:
        encoder.summary()
        decoder.summary()
    images = keras.Input(shape=data.IMAGE_SHAPE, name="image")
    quantizer = VectorQuantizer(codebook_size, beta, ema, name="quantizer", dtype="float32")
    logits = decoder(quantizer(encoder(images)))
    return encoder, quantizer, decoder, VQVAEModel(images, logits, name=name)


# -- Loss: reconstruction, codebook and commitment, per image -----------------------------------
# $$ L = \sum_{i=1}^{784} (\mathrm{softplus}(l_i) - x_i l_i)
#    + \|\mathrm{sg}[z_e] - e\|^2 + \beta \|z_e - \mathrm{sg}[e]\|^2 $$
# The first term is -log p(x|z_q), the Bernoulli negative log-likelihood from the logits summed
# over the pixels, as in the VAE lesson; the quantizer adds the other two. Keras averages all of
# them over the batch, so the logged `loss` is `reconstruction_loss + codebook_loss + beta *
# commitment_loss` (without `codebook_loss` under --ema).

@keras.saving.register_keras_serializable(package="autoencoders")
def bernoulli_nll(images, logits):
    """-log p(x | z_q) per image: the binary cross-entropy from logits, summed over pixels."""
    per_pixel = ops.binary_crossentropy(images, logits, from_logits=True)
    return ops.sum(ops.reshape(per_pixel, (ops.shape(per_pixel)[0], -1)), axis=-1)


def compile_vqvae(vqvae, learning_rate):
    vqvae.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=bernoulli_nll,
                  metrics=[keras.metrics.MeanMetricWrapper(bernoulli_nll,
                                                           name="reconstruction_loss")])
    training.set_execution(vqvae)  # steps per call and jax.jit, for this backend


# -- Training -----------------------------------------------------------------------------------
# Keras's fit, for the VQ-VAEs here and for the prior below, with the test split as validation
# data and these callbacks: a backup after every epoch, so that Ctrl-C and the same command
# resume (`ResumableBackup`); a stop at the first NaN or exploding loss (`StopOnDivergence`);
# with --tensorboard, TensorBoard; and any of the lesson's own (re-seeding, below).

def train(model, train_data, validation_data, epochs, args, run, callbacks=(), name=None):
    backup = training.ResumableBackup(run.checkpoint(name or model.name, model), train_data)
    callbacks = [training.StopOnDivergence(model, validation_data), *callbacks, backup]
    if args.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(run.logs(model.name)))
    model.fit(train_data, validation_data=validation_data, epochs=epochs, callbacks=callbacks,
              shuffle=False, verbose=2)  # the batches shuffle themselves, per epoch
    return backup.fitted()


# -- Dead codes, and re-seeding them (--reseed-dead-codes) --------------------------------------
# $$ e_k \leftarrow z_e(x_j)_p \quad \text{for every } k \text{ with }
#    |\{(i, p): k(x_i)_p = k\}| = 0, \text{ at a random image } j \text{ and position } p $$
# A code that no vector chooses gets no gradient from the codebook term and no share of the
# moving averages: it is dead for good, and the codebook is smaller than K. After every epoch
# this callback encodes RESEED_IMAGES training images, finds the codes none of their vectors
# chose, and moves each onto one of those vectors, where it will be chosen. It runs before the
# backup, which keeps the moved codes, and its count shows in the log as `reseeded_codes`.

class ReseedDeadCodes(keras.callbacks.Callback):
    """Move every code unused by RESEED_IMAGES random `images` onto one of their vectors z_e."""

    def __init__(self, encoder, quantizer, images, seed):
        super().__init__()
        self.encoder, self.quantizer, self.images, self.seed = encoder, quantizer, images, seed

    def on_epoch_end(self, epoch, logs=None):
        rng = np.random.default_rng([self.seed, epoch])  # the same draws after a resume
        sample = self.images[rng.permutation(len(self.images))[:RESEED_IMAGES]]
        z_e, codes = encode(self.encoder, self.quantizer, sample)
        z_e = z_e.reshape(-1, z_e.shape[-1])
        dead = np.flatnonzero(np.bincount(codes.ravel(), minlength=self.quantizer.codebook_size)
                              == 0)
        chosen = z_e[rng.choice(len(z_e), len(dead), replace=len(dead) > len(z_e))]
        codebook = ops.convert_to_numpy(self.quantizer.codebook)
        codebook[dead] = chosen
        self.quantizer.codebook.assign(codebook)
        if self.quantizer.ema:  # the averages start again at the new vector, counted once
            counts = ops.convert_to_numpy(self.quantizer.code_counts)
            sums = ops.convert_to_numpy(self.quantizer.code_sums)
            counts[dead], sums[dead] = 1.0, chosen
            self.quantizer.code_counts.assign(counts)
            self.quantizer.code_sums.assign(sums)
        if logs is not None:  # the same dictionary the backup and the progress bar read next
            logs["reseeded_codes"] = len(dead)


# -- Evaluation: reconstruction in nats, and how much of the codebook is used -------------------
# $$ \text{perplexity} = \exp\Big(-\sum_k f_k \log f_k\Big), \quad
#    f_k = \text{share of the test split's vectors that chose code } k $$
# The reconstruction -log p(x|z_q(x)) is summed over pixels and averaged over the binarized test
# images, in nats, as the VAE lesson's. A codebook of K codes used evenly has perplexity K; a few
# busy codes and many dead ones make it small. Codes used counts those chosen at least once.

def encode(encoder, quantizer, images):
    """(z_e, codes) of `images`: the encoder's grids and their nearest codes, as NumPy."""
    z_e, codes = [], []
    for start in range(0, len(images), IMAGES_PER_CALL):
        grid = encoder(images[start:start + IMAGES_PER_CALL], training=False)
        z_e.append(ops.convert_to_numpy(grid))
        codes.append(ops.convert_to_numpy(nearest_codes(grid, quantizer.codebook)))
    return np.concatenate(z_e), np.concatenate(codes).astype("int32")


def decode(decoder, quantizer, codes):
    """Code grids -> pixel logits: each code's codebook vector, through the decoder."""
    return np.concatenate([ops.convert_to_numpy(decoder(
        ops.take(quantizer.codebook, codes[start:start + IMAGES_PER_CALL], axis=0),
        training=False)) for start in range(0, len(codes), IMAGES_PER_CALL)])


def evaluate_vqvae(decoder, quantizer, test_inputs, test_codes):
    """Test nats and codebook usage, and how many test vectors chose each code."""
    logits = decode(decoder, quantizer, test_codes)  # what the VQ-VAE outputs for test_inputs
    per_image = ops.convert_to_numpy(bernoulli_nll(test_inputs, logits)).astype(np.float64)
    usage = np.bincount(test_codes.ravel(), minlength=quantizer.codebook_size)
    shares = usage[usage > 0] / usage.sum()
    uniform = test_codes[0].size * math.log(quantizer.codebook_size)  # 49 log K nats
    scores = {"test_reconstruction_nats": float(np.mean(per_image)),
              "test_neg_elbo_uniform_nats": float(np.mean(per_image)) + uniform,
              "codes_used": int(np.count_nonzero(usage)),
              "code_perplexity": float(np.exp(-np.sum(shares * np.log(shares))))}
    return scores, usage


# -- Plain, EMA and re-seeded codebooks, compared -----------------------------------------------
# The codebook the flags ask for is the lesson's model: the prior learns its codes and the
# figures show it. With --comparison (the default) the plain VQ-VAE, the EMA one and the
# re-seeding one are trained too, from the same initial weights, and scored the same way.

class Trained(NamedTuple):
    """One VQ-VAE, trained, and what it did on the test split."""

    encoder: keras.Model
    quantizer: VectorQuantizer
    decoder: keras.Model
    model: keras.Model
    fitted: training.Fitted
    scores: dict             # test nats and codebook usage, for the results
    test_codes: np.ndarray   # (N, 7, 7): the code grid of each test image
    usage: np.ndarray        # (K,): how many test vectors chose each code


def chosen_setting(args):
    """The codebook the flags ask for: "plain", "ema", "reseed" or "ema_reseed"."""
    return "_".join([name for name, on in (("ema", args.ema),
                                           ("reseed", args.reseed_dead_codes)) if on]) or "plain"


def compared_settings(args):
    """The chosen codebook first, then (with --comparison) those of COMPARED it is not."""
    return list(dict.fromkeys([chosen_setting(args), *(COMPARED if args.comparison else ())]))


def train_and_evaluate(setting, dataset, test_inputs, args, run):
    keras.utils.set_random_seed(args.seed)  # every setting starts from the same weights
    train_ds, test_ds, _ = data.autoencoder_datasets(dataset, args.batch_size, args.binarize,
                                                     args.seed)
    encoder, quantizer, decoder, vqvae = build_vqvae(
        args.codebook_size, args.code_dim, args.beta, ema="ema" in setting,
        name=f"vqvae_{setting}", summary=setting == chosen_setting(args))
    compile_vqvae(vqvae, args.learning_rate)
    reseed = ([ReseedDeadCodes(encoder, quantizer, training_images(dataset, args), args.seed)]
              if "reseed" in setting else [])
    fitted = train(vqvae, train_ds, test_ds, args.epochs, args, run, reseed)
    test_codes = encode(encoder, quantizer, test_inputs)[1]
    scores, usage = evaluate_vqvae(decoder, quantizer, test_inputs, test_codes)
    return Trained(encoder, quantizer, decoder, vqvae, fitted, scores, test_codes, usage)


# -- The prior: a PixelCNN over the code grid ---------------------------------------------------
# $$ p(k) = \prod_{p=1}^{49} p(k_p \mid k_1, \dots, k_{p-1}) $$
# The VQ-VAE has no prior of its own: during training its codes were free. A PixelCNN (van den
# Oord et al., 2016) learns one, reading the grid in raster order: each output position sees only
# the codes before it, because every convolution's kernel is masked. The first layer's mask ("A")
# hides the centre too, so position p never sees its own code; the later ones ("B") may see the
# centre, which by then holds only what came before. (Stacked masks leave a blind spot up and to
# the right of each position, which a 7 x 7 grid barely feels.) Its output: K logits per position.

@keras.saving.register_keras_serializable(package="autoencoders")
class MaskedConv2D(layers.Conv2D):
    """A "same" Conv2D whose kernel sees only the rows above its centre and the columns left of
    it (mask "A"), or those and the centre itself (mask "B")."""

    def __init__(self, filters, kernel_size, mask_type="B", **kwargs):
        super().__init__(filters, kernel_size, **{**kwargs, "padding": "same"})
        self.mask_type = mask_type

    def build(self, input_shape):
        super().build(input_shape)
        rows, cols = self.kernel_size
        self.mask = np.zeros((rows, cols, 1, 1), "float32")
        self.mask[:rows // 2] = 1.0                                        # the rows above
        self.mask[rows // 2, :cols // 2 + (self.mask_type == "B")] = 1.0   # left (and centre)

    def convolution_op(self, inputs, kernel):
        return super().convolution_op(inputs, kernel * ops.convert_to_tensor(self.mask,
                                                                             kernel.dtype))

    def get_config(self):
        return {**super().get_config(), "mask_type": self.mask_type}


def build_prior(codebook_size, summary=True):
    codes = keras.Input(shape=GRID, dtype="int32", name="codes")
    x = layers.Embedding(codebook_size, PRIOR_FILTERS, name="code_embedding")(codes)
    x = MaskedConv2D(PRIOR_FILTERS, 5, mask_type="A", activation="relu", name="masked_a")(x)
    for i in range(PRIOR_LAYERS):
        x = MaskedConv2D(PRIOR_FILTERS, 3, mask_type="B", activation="relu",
                         name=f"masked_b{i + 1}")(x)
    x = layers.Conv2D(PRIOR_FILTERS, 1, activation="relu", name="per_position")(x)
    logits = layers.Conv2D(codebook_size, 1, name="code_logits", dtype="float32")(x)
    prior = keras.Model(codes, logits, name="pixelcnn_prior")
    if summary:
        prior.summary()
    return prior


# -- The prior's loss: the codes' negative log-likelihood ---------------------------------------
# $$ -\log p(k) = -\sum_{p=1}^{49} \log \mathrm{softmax}(l_p(k_{<p}))_{k_p} $$
# The categorical cross-entropy of each code given those before it, summed over the grid: nats
# per image, like every other number here. Its accuracy is how often the most likely next code
# is the right one.

@keras.saving.register_keras_serializable(package="autoencoders")
def code_nll(codes, logits):
    """-log p(k) per image: the cross-entropy of each code given the earlier ones, summed."""
    per_position = ops.sparse_categorical_crossentropy(codes, logits, from_logits=True)
    return ops.sum(ops.reshape(per_position, (ops.shape(per_position)[0], -1)), axis=-1)


def compile_prior(prior, learning_rate):
    prior.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=code_nll,
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="next_code_accuracy")])
    training.set_execution(prior)


# -- Training the prior on the training split's codes -------------------------------------------
# The chosen VQ-VAE encodes the training images, and the PixelCNN learns to predict each code
# from those before it (the input and the target are the same grid: the masks do the shifting),
# validated on the test images' codes. Its backups are named by those codes, so a prior never
# resumes on the codes of another VQ-VAE.

class Prior(NamedTuple):
    model: keras.Model
    fitted: training.Fitted


def train_prior(chosen, dataset, args, run):
    train_codes = encode(chosen.encoder, chosen.quantizer, training_images(dataset, args))[1]
    keras.utils.set_random_seed(args.seed)  # the same weights, whichever models came before
    prior = build_prior(args.codebook_size)
    compile_prior(prior, args.learning_rate)
    train_data = data.batches((train_codes, train_codes), args.batch_size, args.seed)
    test_data = data.batches((chosen.test_codes, chosen.test_codes), args.batch_size)
    codes_digest = hashlib.sha1(train_codes.tobytes()).hexdigest()[:8]
    fitted = train(prior, train_data, test_data, args.prior_epochs, args, run,
                   name=f"{prior.name}-{codes_digest}")
    return Prior(prior, fitted)


# -- The likelihood: the negative ELBO in nats, with either prior -------------------------------
# $$ -\mathrm{ELBO}(x) = -\log p(x|z_q(x)) + \mathrm{KL}(q(k|x) \| p(k))
#    = -\log p(x|z_q(x)) - \log p(k(x)) $$
# The encoder's posterior q(k|x) puts all its mass on one grid k(x), so its entropy is 0 and the
# KL is the prior's -log p(k(x)): the negative ELBO, a bound on -log p(x), is the reconstruction
# plus the prior's nats on the test codes. A uniform prior pays 49 log K for every image; the
# PixelCNN pays less the better it predicts the codes. Both are in the VAE lesson's units, on
# its test images.

def evaluate_likelihood(chosen, prior, args):
    logits = training.predict(prior.model, chosen.test_codes)
    prior_nats = ops.convert_to_numpy(code_nll(chosen.test_codes, logits)).astype(np.float64)
    reconstruction = chosen.scores["test_reconstruction_nats"]
    return {**chosen.scores,
            "test_uniform_prior_nats": chosen.test_codes[0].size * math.log(args.codebook_size),
            "test_prior_nats": float(np.mean(prior_nats)),
            "test_neg_elbo_nats": reconstruction + float(np.mean(prior_nats)),
            "prior_next_code_accuracy": float(np.mean(np.argmax(logits, -1) == chosen.test_codes))}


# -- Sampling: one code at a time, then the decoder ---------------------------------------------
# $$ k_p \sim \mathrm{Categorical}(\mathrm{softmax}(l_p(k_{<p}))), \quad p = 1, \dots, 49;
#    \quad x \sim p(x \mid e_k) $$
# A new digit is a new grid: the PixelCNN gives the first code's distribution, a code is drawn
# with `keras.random.categorical`, written in, and the next position is read off the grown grid,
# 49 times. The decoder turns the grid's codebook vectors into an image (Bernoulli means). A
# uniform prior draws every code independently, for contrast.

def sample_codes(prior, count, seed):
    """`count` code grids drawn from the PixelCNN, one position at a time."""
    generator = keras.random.SeedGenerator(seed)
    codes = np.zeros((count, *GRID), "int32")
    for row in range(GRID[0]):
        for col in range(GRID[1]):
            logits = prior(codes, training=False)[:, row, col]  # (count, K), given k_<p
            codes[:, row, col] = ops.convert_to_numpy(
                keras.random.categorical(logits, 1, seed=generator))[:, 0]
    return codes


def decode_images(decoder, quantizer, codes):
    """Code grids -> images: Bernoulli means, sigmoid(logits)."""
    return ops.convert_to_numpy(ops.sigmoid(decode(decoder, quantizer, codes)))


# -- Results ------------------------------------------------------------------------------------
# Every number is scored on the test split. The VAE lesson's negative ELBO is read from its
# results file beside this one, when it was scored on the same binarized test images (same data,
# binarization and seed); otherwise it is null.

SAME_TEST_IMAGES = ("dataset", "data_source", "test_examples", "binarize", "seed")


def vae_neg_elbo(header, out):
    path = pathlib.Path(out) / "results" / "VariationalAutoEncoder_tf2.json"
    try:
        vae = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    same = all(vae.get(key) == header[key] for key in SAME_TEST_IMAGES)
    return vae.get("test_neg_elbo_nats") if same else None


def training_times(runs, chosen, prior):
    prior_times = {f"prior_{key}": value for key, value in prior.fitted.results().items()}
    every_model = sum(trained.fitted.seconds for trained in runs.values()) + prior.fitted.seconds
    return {**chosen.fitted.results(), **prior_times, "all_models_train_seconds": every_model}


def compare(runs):
    """Each setting's scores, re-seeded codes (over all epochs) and training time."""
    return {setting: {**trained.scores,
                      "reseeded_codes": int(sum(trained.fitted.history.get("reseeded_codes", []))),
                      "train_seconds": trained.fitted.seconds}
            for setting, trained in runs.items()}


# -- Figures, from the test split and the priors ------------------------------------------------
# Test digits and their reconstructions by every codebook; the code grids of a few test digits;
# how often each code is used (dead codes marked); and digits drawn from the PixelCNN prior and
# from a uniform prior.

def draw_figures(chosen, runs, prior, dataset, test_inputs, args, folder):
    title = (f"{dataset.title} VQ-VAE (K = {args.codebook_size}, "
             f"D = {args.code_dim}, {SETTING_TITLES[chosen_setting(args)]})")
    picked = data.examples_per_class(dataset.y_test, 2)
    rows, labels = [dataset.x_test[picked]], ["original"]
    if args.binarize != "none":
        rows, labels = rows + [test_inputs[picked]], labels + ["binarized input"]
    for setting, trained in runs.items():
        rows.append(decode_images(trained.decoder, trained.quantizer, trained.test_codes[picked]))
        labels.append(f"{setting}: recon.")
    plots.plot_image_rows(rows, labels, folder / "vqvae_reconstructions.png",
                          f"{title}\ntest images and their reconstructions, decoded from codes")
    shown = data.examples_per_class(dataset.y_test, 1)[:8]
    plot_code_grids(test_inputs[shown], chosen.test_codes[shown], folder / "vqvae_code_grids.png",
                    f"{title}\ntest images and their 7 x 7 grids of codes k(x)")
    plot_code_usage(runs, folder / "vqvae_codebook_usage.png",
                    f"{title}\nhow often each code is chosen on the test split")
    samples = sample_codes(prior.model, SAMPLES, args.seed)
    plots.plot_image_grid(decode_images(chosen.decoder, chosen.quantizer, samples),
                          folder / "vqvae_prior_samples.png",
                          f"{title}\nsamples: codes drawn from the PixelCNN prior, decoded")
    uniform = np.random.default_rng(args.seed).integers(args.codebook_size, size=samples.shape)
    plots.plot_image_grid(decode_images(chosen.decoder, chosen.quantizer, uniform.astype("int32")),
                          folder / "vqvae_uniform_samples.png",
                          f"{title}\nsamples: codes drawn from a uniform prior, decoded")


def plot_code_grids(images, codes, path, title):
    """Each image above its grid of codes, every cell numbered (and coloured by code mod 20)."""
    with plt.style.context(plots.STYLE):
        fig, axes = plt.subplots(2, len(images), figsize=(len(images) * 1.3, 3.4), squeeze=False)
        for i, (image, grid) in enumerate(zip(images, codes)):
            axes[0, i].imshow(image[..., 0], vmin=0, vmax=1)
            axes[1, i].imshow(grid % 20, cmap="tab20", vmin=-0.5, vmax=19.5)
            for (row, col), code in np.ndenumerate(grid):
                axes[1, i].text(col, row, str(code), ha="center", va="center", fontsize=6)
            for ax in axes[:, i]:
                ax.set_xticks([])
                ax.set_yticks([])
        axes[0, 0].set_ylabel("test image")
        axes[1, 0].set_ylabel("codes k(x)")
        fig.suptitle(title, fontsize=11, fontweight="bold")
        plots.save_figure(fig, path)


def plot_code_usage(runs, path, title):
    """One bar chart per codebook: the share of test vectors that chose each code; a red cross
    marks each dead code."""
    with plt.style.context(plots.STYLE):
        fig, axes = plt.subplots(len(runs), 1, figsize=(8, 1.8 * len(runs) + 0.9), sharex=True,
                                 squeeze=False, layout="constrained")
        for ax, (setting, trained) in zip(axes[:, 0], runs.items()):
            dead = np.flatnonzero(trained.usage == 0)
            ax.bar(np.arange(len(trained.usage)), trained.usage / trained.usage.sum(), width=0.8)
            ax.scatter(dead, np.zeros(len(dead)), marker="x", color="tab:red", zorder=3,
                       label=f"dead code ({len(dead)})")
            ax.set(ylabel="share", title=f"{SETTING_TITLES[setting]}: "
                   f"{trained.scores['codes_used']} of {len(trained.usage)} codes used, "
                   f"perplexity {trained.scores['code_perplexity']:.1f}")
            ax.title.set(fontsize=9, fontweight="normal")
            ax.legend(loc="upper right", fontsize=8)
            ax.grid(axis="y", alpha=0.3)
        axes[-1, 0].set_xlabel("code k")
        fig.suptitle(title, fontsize=11, fontweight="bold")
        plots.save_figure(fig, path)


# -- Summary ------------------------------------------------------------------------------------

def print_summary(results):
    print(f"\n{SCRIPT_NAME} on {results['test_examples']:,} held-out test images "
          f"({results['binarize']} binarization), in nats per image:")
    reconstruction = results["test_reconstruction_nats"]
    print(f"  reconstruction -log p(x|z_q)  {reconstruction:8.2f}")
    print(f"  negative ELBO, PixelCNN prior {results['test_neg_elbo_nats']:8.2f}"
          f"  = reconstruction + prior {results['test_prior_nats']:.2f}")
    print(f"  negative ELBO, uniform prior  {results['test_neg_elbo_uniform_nats']:8.2f}"
          f"  = reconstruction + 49 log {results['codebook_size']}"
          f" = {results['test_uniform_prior_nats']:.2f}")
    vae = results["vae_neg_elbo_nats"]
    print("  the VAE lesson's neg. ELBO    " + (
        "    none on these test images (make vae)" if vae is None else
        f"{vae:8.2f}  (results/VariationalAutoEncoder_tf2.json)"))
    print(f"  codes used                    {results['codes_used']:5d} of "
          f"{results['codebook_size']}, perplexity {results['code_perplexity']:.1f}")
    print(f"  prior next-code accuracy      {results['prior_next_code_accuracy']:8.3f}")
    print(f"\n  {'codebook':28s} {'reconstruction':>14s} {'neg. ELBO (uniform)':>20s} "
          f"{'codes used':>10s} {'perplexity':>10s} {'re-seeded':>9s}")
    for setting, scores in results["compared"].items():
        print(f"  {SETTING_TITLES[setting]:28s} {scores['test_reconstruction_nats']:14.2f} "
              f"{scores['test_neg_elbo_uniform_nats']:20.2f} {scores['codes_used']:10d} "
              f"{scores['code_perplexity']:10.1f} {scores['reseeded_codes']:9d}")
    images = data.counted(results["train_examples"], "image")
    print(f"\n  training: VQ-VAE {results['train_seconds']:.1f} s "
          f"({results['seconds_per_epoch']:.2f} s per epoch, {images}), prior "
          f"{results['prior_train_seconds']:.1f} s; every model "
          f"{results['all_models_train_seconds']:.1f} s")


if __name__ == "__main__":
    cli.run(main)
