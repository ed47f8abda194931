"""The denoising lesson: PSNR and SSIM by hand and against TensorFlow's, the baseline, flags, and
a tiny run."""

import math

import common  # noqa: F401 - registers the suite's custom objects for load_model
import keras
import numpy as np
import pytest

from common.noise import add_noise
from conftest import assert_figures
from conftest import assert_finite_numbers
from conftest import assert_usage_error

NAME = "StackedDenoisingAutoEncoder"
SCORE_KEYS = ["noisy_psnr_db", "noisy_ssim", "baseline_psnr_db", "baseline_ssim",
              "denoised_psnr_db", "denoised_ssim", "psnr_gain_over_baseline_db",
              "ssim_gain_over_baseline", "test_bce_per_pixel_nats", "final_train_loss",
              "train_seconds", "seconds_per_epoch"]
FIGURES = ["dae_noisy_inputs.png", "dae_denoised.png", "dae_psnr_vs_noise.png"]


@pytest.fixture(scope="module")
def dae_lesson(lessons):
    return lessons[NAME]


@pytest.fixture(scope="module")
def tiny(tiny_run):
    return tiny_run(NAME)


def test_psnr_of_a_tiny_image_by_hand(dae_lesson):
    clean = np.zeros((2, 4, 4, 1), np.float32)
    images = clean.copy()
    images[0, 0, 0] = 0.5   # MSE = 0.25 / 16 = 1/64: PSNR = 10 log10(64) = 18.06 dB
    images[1] = 0.1         # MSE = 0.01: PSNR = 10 log10(100) = 20 dB
    assert dae_lesson.mean_psnr(images, clean) == pytest.approx((10 * math.log10(64) + 20) / 2,
                                                                abs=1e-4)
    # An unchanged image has an infinite PSNR; the mean counts it at the cap.
    assert dae_lesson.mean_psnr(clean, clean) == dae_lesson.PSNR_CAP_DB


def test_ssim_of_constant_images_is_the_luminance_term(dae_lesson):
    # No variance anywhere, so SSIM = (2 a b + C1) / (a^2 + b^2 + C1), C1 = (0.01 * 1)^2.
    a = np.full((1, 16, 16, 1), 0.25, np.float32)
    b = np.full((1, 16, 16, 1), 0.75, np.float32)
    c1 = 0.01**2
    assert dae_lesson.mean_ssim(a, b) == pytest.approx((2 * 0.25 * 0.75 + c1)
                                                       / (0.25**2 + 0.75**2 + c1), abs=2e-4)
    assert dae_lesson.mean_ssim(a, a) == pytest.approx(1.0, abs=1e-5)


def test_ssim_of_one_11x11_window_by_hand(dae_lesson):
    # An 11 x 11 image is exactly one window: weights w_ij ~ exp(-(i^2 + j^2) / (2 * 1.5^2)),
    # weighted means, variances and covariance, then Wang et al.'s formula.
    rng = np.random.default_rng(0)
    x = rng.random((11, 11))
    y = np.clip(x + 0.2 * rng.standard_normal((11, 11)), 0, 1)
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    mx, my = np.sum(w * x), np.sum(w * y)
    vx, vy = np.sum(w * x * x) - mx**2, np.sum(w * y * y) - my**2
    cov = np.sum(w * x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    by_hand = (2 * mx * my + c1) * (2 * cov + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    as_images = [v.reshape(1, 11, 11, 1).astype(np.float32) for v in (x, y)]
    assert dae_lesson.mean_ssim(*as_images) == pytest.approx(by_hand, abs=1e-5)


def test_psnr_and_ssim_are_tensorflows_on_noisy_and_filtered_digits(dae_lesson, small_mnist_npz):
    """The lesson's NumPy PSNR and SSIM give, image by image, what tf.image.psnr and
    tf.image.ssim give (float32 round-off apart), on the TensorFlow backend of these tests."""
    tf = pytest.importorskip("tensorflow")
    clean = (np.load(small_mnist_npz)["x_test"][..., None] / 255.0).astype(np.float32)
    for name, factor in (("gaussian", 0.5), ("salt_and_pepper", 0.2), ("masking", 0.5)):
        noisy = add_noise(clean, name, factor, seed=1)
        for images in (noisy, dae_lesson.apply_filter(noisy, "median", 3),
                       dae_lesson.apply_filter(noisy, "gaussian", 1.0)):
            np.testing.assert_allclose(dae_lesson.ssim(images, clean),
                                       tf.image.ssim(images, clean, max_val=1.0).numpy(),
                                       rtol=0, atol=5e-5, err_msg=name)
            psnr = [dae_lesson.mean_psnr(images[i:i + 1], clean[i:i + 1])
                    for i in range(len(clean))]
            np.testing.assert_allclose(psnr, tf.image.psnr(images, clean, max_val=1.0).numpy(),
                                       rtol=0, atol=1e-4, err_msg=name)
            assert dae_lesson.mean_ssim(images, clean, chunk=64) == pytest.approx(
                float(np.mean(tf.image.ssim(images, clean, max_val=1.0))), abs=1e-6)


def test_baseline_filters_each_image_alone_and_is_chosen_by_psnr(dae_lesson):
    images = np.zeros((2, 28, 28, 1), np.float32)
    images[0, 10, 10] = 1.0                        # one bright speck in the first image only
    filtered = dae_lesson.apply_filter(images, "median", 3)
    assert filtered.max() == 0.0                   # a 3x3 median removes an isolated speck
    smoothed = dae_lesson.apply_filter(images, "gaussian", 1.0)
    assert smoothed[1].max() == 0.0                # nothing leaks into the other image
    assert smoothed[0].sum() == pytest.approx(1.0, abs=1e-3)  # a Gaussian blur keeps the mass
    # Salt-and-pepper noise on digits: the chosen filter is a median filter.
    digits = np.zeros((20, 28, 28, 1), np.float32)
    digits[:, 6:22, 12:16] = 1.0
    noisy = add_noise(digits, "salt_and_pepper", 0.2, seed=0)
    assert dae_lesson.choose_baseline(digits, noisy)[0] == "median"


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "--epochs: must be a positive integer, got '0'"),
    (["--batch-size", "many"], "--batch-size: must be a positive integer, got 'many'"),
    (["--noise", "speckle"], "invalid choice: 'speckle'"),
    (["--noise-factor", "0"], "--noise-factor: must be a positive number, got '0'"),
    (["--noise-factor", "-0.5"], "--noise-factor: must be a positive number, got '-0.5'"),
    (["--noise", "masking", "--noise-factor", "1.5"],
     "--noise-factor: must be a fraction in [0, 1] for --noise masking, got '1.5'"),
    (["--learning-rate", "0"], "--learning-rate: must be a positive number, got '0'"),
    (["--seed", "-1"], "--seed: must be an integer from 0 to 4294967295, got '-1'"),
    (["--data", "no/such/mnist.npz"], "no such file: no/such/mnist.npz"),
    (["--out", None], "cannot be written"),
])
def test_bad_values_stop_with_one_line_and_status_2(dae_lesson, tmp_path, capsys, argv, message):
    assert_usage_error(dae_lesson.main, f"{NAME}.py", argv, tmp_path, capsys, message)


def test_tiny_run_denoises_and_sweeps_the_noise(dae_lesson, tiny, small_mnist_npz):
    out, results = tiny.out, tiny.results
    assert "network minus baseline" in tiny.stdout
    assert_finite_numbers(results)
    for key in SCORE_KEYS:
        assert math.isfinite(results[key]), key
    assert results["train_examples"] == 600 and results["test_examples"] == 200
    assert results["noise"] == "gaussian" and results["noise_factor"] == 0.5
    assert results["baseline"]
    # Even two short epochs clean up: the output is closer to the clean digits than the input.
    assert results["denoised_psnr_db"] > results["noisy_psnr_db"]
    assert results["baseline_psnr_db"] > results["noisy_psnr_db"]
    # The sweep: every level once, the trained one included, noisier inputs scoring lower.
    sweep = results["psnr_vs_noise"]
    factors = [level["noise_factor"] for level in sweep]
    assert factors == sorted(factors) and 0.5 in factors and len(factors) >= 5
    for level in sweep:
        for key in ("noisy_psnr_db", "baseline_psnr_db", "denoised_psnr_db"):
            assert math.isfinite(level[key]), key
    noisy = [level["noisy_psnr_db"] for level in sweep]
    assert noisy == sorted(noisy, reverse=True)
    trained = sweep[factors.index(0.5)]
    assert trained["denoised_psnr_db"] == pytest.approx(results["denoised_psnr_db"], abs=1e-6)
    assert trained["noisy_psnr_db"] == pytest.approx(results["noisy_psnr_db"], abs=1e-6)
    assert_figures(out / "figures", FIGURES)

    # The saved model loads after `import common` and gives the reported PSNR.
    dae = keras.models.load_model(out / "models" / "dae.keras")
    data = np.load(small_mnist_npz)
    clean = (data["x_test"][..., None] / 255.0).astype(np.float32)
    noisy_test = add_noise(clean, "gaussian", 0.5, seed=results["seed"] + 1)
    denoised = keras.ops.convert_to_numpy(keras.ops.sigmoid(dae.predict(noisy_test, verbose=0)))
    assert dae_lesson.mean_psnr(denoised, clean) == pytest.approx(results["denoised_psnr_db"],
                                                                  abs=1e-3)
