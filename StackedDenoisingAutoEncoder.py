r"""Stacked denoising autoencoder on MNIST, in Keras 3 on TensorFlow, JAX or PyTorch.

An autoencoder trained to give back its input can learn the identity map and nothing else. A
denoising autoencoder (Vincent et al., 2008) is shown a corrupted image x~ ~ C(x~ | x) and asked
for the clean image x:

    $$ \min\ \mathbb{E}_x\, \mathbb{E}_{\tilde{x} \sim C(\tilde{x} \mid x)}
       \big[\mathrm{loss}\big(x, \mathrm{decoder}(\mathrm{encoder}(\tilde{x}))\big)\big] $$

Copying the input is now a bad answer, so the network must learn what digits look like to put
back what the noise took away. "Stacked" is the name Vincent et al. (2010) gave to a deep stack
of such layers; here three convolutions encode and their mirror image decodes, trained end to
end, with a fresh corruption of every training image in every epoch (Gaussian, masking or
salt-and-pepper noise). The lesson scores the test split by PSNR and SSIM against the clean
image, for the noisy input, a classical filter chosen on the training split, and the network,
and sweeps the noise level to see where the network breaks down.

    python StackedDenoisingAutoEncoder.py                       # Gaussian noise, factor 0.5
    python StackedDenoisingAutoEncoder.py --noise salt_and_pepper --noise-factor 0.3
    python StackedDenoisingAutoEncoder.py --noise masking --epochs 40

It writes results/StackedDenoisingAutoEncoder.json (its timings among them), models/dae.keras
and figures/dae_*.png; Ctrl-C, then the same command, resumes. The saved model loads in a fresh
process after `import keras` alone: it uses Keras's own layers and loss.
"""

import common  # first: quiets TensorFlow's start-up logs, registers the suite's Keras objects
import keras
import matplotlib.pyplot as plt
import numpy as np
from keras import layers, ops
from scipy import ndimage

from common import cli, data, noise, outputs, plots, training

SCRIPT_NAME = "StackedDenoisingAutoEncoder"
ENCODER_FILTERS = (16, 32, 32)  # three 3x3 convolutions...
ENCODER_STRIDES = (2, 2, 1)     # ...28 -> 14 -> 7 -> 7; the decoder mirrors them back to 28
# The noise levels of the sweep, in the units of --noise-factor (std or fraction of pixels).
SWEEP_FACTORS = {"gaussian": (0.1, 0.25, 0.5, 0.75, 1.0, 1.5),
                 "masking": (0.05, 0.1, 0.2, 0.3, 0.5, 0.7),
                 "salt_and_pepper": (0.05, 0.1, 0.2, 0.3, 0.5, 0.7)}
# The classical baselines tried on the training split: median filters of these widths and
# Gaussian filters of these standard deviations, in pixels.
MEDIAN_SIZES = (3, 5)
GAUSSIAN_SIGMAS = (0.5, 0.75, 1.0, 1.5, 2.0)
BASELINE_TUNING_IMAGES = 1000  # training images the baseline's filter is chosen on
PSNR_CAP_DB = 100.0  # an image the noise left unchanged has PSNR = inf; count it as 100 dB
SSIM_SIGMA, SSIM_RADIUS = 1.5, 5  # SSIM's window: a Gaussian of sigma 1.5 px, cut at 5 px: 11 x 11
SSIM_C1, SSIM_C2 = 0.01**2, 0.03**2  # (0.01 MAX)^2 and (0.03 MAX)^2, with MAX = 1


def parse_args(argv=None):
    parser = cli.base_parser(SCRIPT_NAME, epochs=20, batch_size=128, learning_rate=1e-3)
    lesson = parser.add_argument_group("this lesson")
    lesson.add_argument("--noise", choices=noise.NOISE_MODELS, default="gaussian",
                        help="how the inputs are corrupted")
    lesson.add_argument("--noise-factor", type=cli.positive_float, default=None,
                        help="the noise's strength: the standard deviation for gaussian (default "
                             f"{noise.DEFAULT_FACTORS['gaussian']}), the fraction of pixels for "
                             f"masking and salt_and_pepper (default "
                             f"{noise.DEFAULT_FACTORS['masking']})")
    args = parser.parse_args(argv)
    if args.noise_factor is None:
        args.noise_factor = noise.DEFAULT_FACTORS[args.noise]
    elif args.noise != "gaussian" and args.noise_factor > 1:
        parser.error(f"argument --noise-factor: must be a fraction in [0, 1] for --noise "
                     f"{args.noise}, got '{args.noise_factor:g}'")
    return args


def main(argv=None):
    args = parse_args(argv)
    dataset = data.load_dataset(args.dataset, args.data, args.limit)  # checked before all else
    run = outputs.start(args, SCRIPT_NAME, dataset)  # output folders, devices, seeds
    train_ds, test_ds, noisy_test, tuning = denoising_data(dataset, args)
    dae = build_dae()
    compile_dae(dae, args.learning_rate)
    fitted = train(dae, train_ds, test_ds, args, run)
    scores, shown = evaluate(dae, tuning, dataset.x_test, noisy_test, args)
    sweep = sweep_noise_levels(dae, tuning, dataset.x_test, args)
    results = {**run.header, **scores, "psnr_vs_noise": sweep,
               "test_bce_per_pixel_nats": fitted.history["val_loss"][-1], **fitted.results()}
    draw_figures(dataset, shown, results, args, run.figures)
    run.finish(results, dae=dae)
    print_summary(results)


# -- Data: (noisy, clean) pairs, a fresh corruption in every epoch --------------------------------
# `noise.denoising_datasets` draws a fresh corruption of every training image in every epoch,
# inside the batches `fit` reads, so the network never sees the same noisy image twice and cannot
# memorise the noise; the test images are corrupted once (seed + 1), the same in every epoch.
# The targets are the clean grey levels in [0, 1], not binarized: this lesson is about images.

def denoising_data(dataset, args):
    """The (noisy, clean) training and test pipelines, the noisy test images, and the training
    images the classical baseline is tuned on (never the test split)."""
    train_ds, test_ds, noisy_test = noise.denoising_datasets(
        dataset, args.batch_size, args.noise, args.noise_factor, args.seed)
    return train_ds, test_ds, noisy_test, dataset.x_train[:BASELINE_TUNING_IMAGES]


# -- Encoder: noisy image -> 7 x 7 feature map ----------------------------------------------------
# Three 3x3 convolutions with ReLU. The two stride-2 layers halve the resolution (28 -> 14 -> 7),
# so each unit of the 7 x 7 code sees a 15 x 15 patch of the input: enough context to tell a
# stroke from a speck of noise.

def build_encoder():
    noisy = keras.Input(shape=data.IMAGE_SHAPE, name="noisy_image")
    x = noisy
    for i, (filters, stride) in enumerate(zip(ENCODER_FILTERS, ENCODER_STRIDES)):
        x = layers.Conv2D(filters, 3, strides=stride, padding="same", activation="relu",
                          name=f"encoder_conv{i + 1}")(x)
    return keras.Model(noisy, x, name="encoder")


# -- Decoder: feature map -> pixel logits l, the denoised image sigmoid(l) ------------------------
# The mirror image: transposed convolutions undo the strides (7 -> 7 -> 14 -> 28), and a last
# 3x3 convolution gives one logit per pixel, in float32 even under --mixed-precision, since the
# loss is computed from it.

def build_decoder(code_shape):
    code = keras.Input(shape=code_shape, name="code")
    x = code
    mirrored = list(zip(ENCODER_FILTERS, ENCODER_STRIDES))[::-1]
    for i, (filters, stride) in enumerate(mirrored):
        x = layers.Conv2DTranspose(filters, 3, strides=stride, padding="same", activation="relu",
                                   name=f"decoder_deconv{i + 1}")(x)
    logits = layers.Conv2D(1, 3, padding="same", name="pixel_logits", dtype="float32")(x)
    return keras.Model(code, logits, name="decoder")


# -- The denoising autoencoder: noisy image, encoder, decoder, pixel logits ---------------------
# Two sub-models joined by the functional API; each prints its summary once.

def build_dae():
    encoder = build_encoder()
    decoder = build_decoder(encoder.output_shape[1:])
    encoder.summary()
    decoder.summary()
    noisy = keras.Input(shape=data.IMAGE_SHAPE, name="noisy_image")
    return keras.Model(noisy, decoder(encoder(noisy)), name="denoising_autoencoder")


# -- Loss: the binary cross-entropy from the logits, in nats per pixel -------------------------
# $$ -\big[x \log \sigma(l) + (1 - x) \log(1 - \sigma(l))\big] $$
# The binary cross-entropy between the clean grey level x and the prediction, computed from the
# logit l (softplus(l) - x * l, nothing clipped) and averaged over pixels and images. With grey
# targets it is a cross-entropy, not a log-likelihood: its minimum, at sigmoid(l) = x, is the
# entropy of x, not 0.

def compile_dae(dae, learning_rate):
    dae.compile(optimizer=keras.optimizers.Adam(learning_rate),
                loss=keras.losses.BinaryCrossentropy(from_logits=True))
    training.set_execution(dae)  # steps per call and jax.jit, for this backend


# -- Training: Keras's fit, validated on the noisy test split ------------------------------------
# val_loss is the same cross-entropy on held-out digits. Two callbacks of common/training.py: a
# backup after every epoch, so that Ctrl-C and the same command resume, and a stop at the first
# NaN or exploding loss; with --tensorboard, Keras's TensorBoard too.

def train(dae, train_ds, test_ds, args, run):
    backup = training.ResumableBackup(run.checkpoint("dae", dae), train_ds)
    callbacks = [training.StopOnDivergence(dae, test_ds), backup]
    if args.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(run.logs("dae")))
    dae.fit(train_ds, validation_data=test_ds, epochs=args.epochs, callbacks=callbacks,
            shuffle=False, verbose=2)  # the batches shuffle themselves, per epoch
    return backup.fitted()


# -- Image quality: PSNR and SSIM, each image against its clean original, averaged ----------------
# $$ \mathrm{PSNR} = 10 \log_{10} \frac{\mathrm{MAX}^2}{\mathrm{MSE}} \ \text{dB} $$
# $$ \mathrm{SSIM} = \frac{(2 \mu_x \mu_y + C_1)(2 \sigma_{xy} + C_2)}
#    {(\mu_x^2 + \mu_y^2 + C_1)(\sigma_x^2 + \sigma_y^2 + C_2)} $$
# with MAX = 1 for images in [0, 1]: +6 dB is half the RMS error. SSIM (Wang et al., 2004)
# compares two images x and y window by window: their means mu, variances sigma^2 and
# covariance sigma_xy, weighted by a Gaussian window of 11 x 11 pixels (sigma 1.5), with
# C1 = (0.01 MAX)^2 and C2 = (0.03 MAX)^2 (they keep dark or flat windows from dividing by 0),
# averaged over the windows inside the image (18 x 18 of them on a digit): 1 for identical
# images, lower for less alike ones. It tracks what the eye sees (blur, lost strokes) better
# than the MSE does. Both follow tf.image.psnr and tf.image.ssim, in NumPy and SciPy.

def mean_psnr(images, clean):
    mse = np.mean((images.astype(np.float64) - clean) ** 2, axis=(1, 2, 3))
    with np.errstate(divide="ignore"):  # an unchanged image: MSE 0, PSNR infinite
        psnr = 10 * np.log10(1.0 / mse)
    return float(np.mean(np.minimum(psnr, PSNR_CAP_DB)))


def ssim(images, clean):
    """The SSIM of each image of an (N, H, W, 1) batch against its clean original."""
    def local_mean(values):  # the Gaussian-weighted mean of each window inside the image
        blurred = ndimage.gaussian_filter(values, sigma=(0, SSIM_SIGMA, SSIM_SIGMA, 0),
                                          radius=SSIM_RADIUS)
        return blurred[:, SSIM_RADIUS:-SSIM_RADIUS, SSIM_RADIUS:-SSIM_RADIUS]

    x, y = images.astype(np.float64), clean.astype(np.float64)
    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x, var_y = local_mean(x * x) - mu_x**2, local_mean(y * y) - mu_y**2
    cov_xy = local_mean(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + SSIM_C1) * (2 * cov_xy + SSIM_C2)
                / ((mu_x**2 + mu_y**2 + SSIM_C1) * (var_x + var_y + SSIM_C2)))
    return ssim_map.mean(axis=(1, 2, 3))


def mean_ssim(images, clean, chunk=1000):
    """The mean SSIM, computed `chunk` images at a time to bound the memory."""
    return float(np.mean(np.concatenate([ssim(images[i:i + chunk], clean[i:i + chunk])
                                         for i in range(0, len(images), chunk)])))


# -- The classical baseline: a median or Gaussian filter from scipy.ndimage -----------------------
# A median filter replaces each pixel by the median of its k x k neighbourhood (it removes
# isolated specks, so it suits salt-and-pepper noise); a Gaussian filter averages with weights
# exp(-d^2 / 2 sigma^2) (it suits additive noise, and blurs the strokes). Which one, and its size,
# is chosen by PSNR on noisy training images (seed + 2), never on the test split.

BASELINES = ([("median", size, f"median filter {size}x{size}") for size in MEDIAN_SIZES]
             + [("gaussian", sigma, f"Gaussian filter, sigma {sigma:g} px")
                for sigma in GAUSSIAN_SIGMAS])


def apply_filter(images, kind, size):
    """Filter every image of an (N, 28, 28, 1) batch at once, never across images or channels."""
    if kind == "median":
        return ndimage.median_filter(images, size=(1, size, size, 1), mode="constant")
    return ndimage.gaussian_filter(images, sigma=(0, size, size, 0), mode="constant")


def choose_baseline(clean, noisy):
    """The (kind, size, name) of BASELINES whose output has the best mean PSNR on these images."""
    scores = [mean_psnr(apply_filter(noisy, kind, size), clean) for kind, size, _ in BASELINES]
    return BASELINES[int(np.argmax(scores))]


# -- Evaluation on the test split -----------------------------------------------------------------

def denoise(dae, noisy):
    return ops.convert_to_numpy(ops.sigmoid(training.predict(dae, noisy)))  # grey levels


def evaluate(dae, tuning, clean_test, noisy_test, args):
    """PSNR and SSIM of the noisy input, the baseline and the network; and the images shown."""
    kind, size, baseline_name = choose_baseline(
        tuning, noise.add_noise(tuning, args.noise, args.noise_factor, args.seed + 2))
    shown = {"noisy": noisy_test, "baseline": apply_filter(noisy_test, kind, size),
             "denoised": denoise(dae, noisy_test), "clean": clean_test}
    scores = {"baseline": baseline_name}
    for label in ("noisy", "baseline", "denoised"):
        scores[f"{label}_psnr_db"] = mean_psnr(shown[label], clean_test)
        scores[f"{label}_ssim"] = mean_ssim(shown[label], clean_test)
    scores["psnr_gain_over_baseline_db"] = scores["denoised_psnr_db"] - scores["baseline_psnr_db"]
    scores["ssim_gain_over_baseline"] = scores["denoised_ssim"] - scores["baseline_ssim"]
    return scores, shown


def sweep_noise_levels(dae, tuning, clean_test, args):
    """The one trained network on other noise levels, against a baseline whose filter is chosen
    afresh for each level (on the training split), and the noisy input itself."""
    sweep = []
    for factor in sorted({*SWEEP_FACTORS[args.noise], args.noise_factor}):
        noisy = noise.add_noise(clean_test, args.noise, factor, args.seed + 1)
        kind, size, name = choose_baseline(
            tuning, noise.add_noise(tuning, args.noise, factor, args.seed + 2))
        sweep.append({"noise_factor": factor,
                      "noisy_psnr_db": mean_psnr(noisy, clean_test),
                      "baseline_psnr_db": mean_psnr(apply_filter(noisy, kind, size), clean_test),
                      "baseline": name,
                      "denoised_psnr_db": mean_psnr(denoise(dae, noisy), clean_test)})
    return sweep


# -- Figures, all from the test split -------------------------------------------------------------

def draw_figures(dataset, shown, results, args, folder):
    title = (f"{dataset.title} denoising autoencoder "
             f"({args.noise.replace('_', '-')} noise, {args.noise_factor:g})")
    picked = data.examples_per_class(dataset.y_test, 2)
    clean = dataset.x_test[picked]
    rows, labels = [clean], ["clean"]
    for i, model in enumerate(noise.NOISE_MODELS):
        factor = args.noise_factor if model == args.noise else noise.DEFAULT_FACTORS[model]
        rows.append(noise.add_noise(clean, model, factor, args.seed + 1 + i))
        labels.append(f"{model.replace('_', '-')} {factor:g}{' *' if model == args.noise else ''}")
    plots.plot_image_rows(rows, labels, folder / "dae_noisy_inputs.png",
                          f"{dataset.title} test digits and the three noise models\n"
                          f"(* the one this model was trained on)")
    rows = [shown[key][picked] for key in ("noisy", "baseline", "denoised", "clean")]
    labels = [f"noisy\n{results['noisy_psnr_db']:.1f} dB",
              f"{results['baseline']}\n{results['baseline_psnr_db']:.1f} dB",
              f"network\n{results['denoised_psnr_db']:.1f} dB", "clean"]
    plots.plot_image_rows(rows, labels, folder / "dae_denoised.png",
                          f"{title}\ntest digits; mean PSNR over the test split")
    plot_psnr_vs_noise(results["psnr_vs_noise"], args.noise, args.noise_factor,
                       folder / "dae_psnr_vs_noise.png",
                       f"{title}\nPSNR on the test split against the noise level")


def plot_psnr_vs_noise(sweep, noise_model, trained_factor, path, title):
    """Mean test PSNR of the noisy input, the baseline and the network at each noise level."""
    factors = [level["noise_factor"] for level in sweep]
    with plt.style.context(plots.STYLE):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for key, label, style in (("denoised_psnr_db", "network", "o-"),
                                  ("baseline_psnr_db", "baseline (filter tuned per level)", "s--"),
                                  ("noisy_psnr_db", "noisy input", "^:")):
            ax.plot(factors, [level[key] for level in sweep], style, label=label)
        if max(factors) / min(factors) > 50:  # a --noise-factor far outside the sweep's levels
            ax.set_xscale("log")
        ax.axvline(trained_factor, color="grey", linewidth=1, alpha=0.6)
        ax.annotate("trained here", (trained_factor, 0.02), xycoords=("data", "axes fraction"),
                    xytext=(4, 0), textcoords="offset points", color="grey")
        unit = "standard deviation" if noise_model == "gaussian" else "fraction of pixels corrupted"
        ax.set(title=title, xlabel=f"noise factor ({unit})", ylabel="mean PSNR (dB)")
        ax.grid(alpha=0.3)
        ax.legend()
        plots.save_figure(fig, path)


# -- Summary -------------------------------------------------------------------------------------

def print_summary(results):
    print(f"\n{SCRIPT_NAME} on {results['test_examples']:,} held-out test images, "
          f"{results['noise']} noise {results['noise_factor']:g}; mean against the clean image:")
    print(f"  {'':34s} {'PSNR (dB)':>9s} {'SSIM':>6s}")
    for key, label in (("noisy", "noisy input"), ("baseline", results["baseline"]),
                       ("denoised", "network")):
        print(f"  {label:34s} {results[f'{key}_psnr_db']:9.2f} {results[f'{key}_ssim']:6.3f}")
    print(f"  network minus baseline             {results['psnr_gain_over_baseline_db']:+9.2f}"
          f" {results['ssim_gain_over_baseline']:+6.3f}")
    print(f"  test cross-entropy {results['test_bce_per_pixel_nats']:.4f} nats per pixel")
    print("  PSNR (dB) against the noise level: factor, noisy, baseline, network")
    for level in results["psnr_vs_noise"]:
        print(f"    {level['noise_factor']:5.2f} {level['noisy_psnr_db']:8.2f} "
              f"{level['baseline_psnr_db']:8.2f} {level['denoised_psnr_db']:8.2f}")
    print(f"  training {results['train_seconds']:.1f} s ({results['seconds_per_epoch']:.2f} s "
          f"per epoch, {data.counted(results['train_examples'], 'image')})")


if __name__ == "__main__":
    cli.run(main)
