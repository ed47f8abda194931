"""Every flag at its edges: the smallest and largest values a lesson accepts run to the end, and
every value it cannot honour is refused before anything happens (exit status 2, one line, no
folder made, no `device:` line).

The runs are tiny (one epoch on a few hundred digits) and each groups several edge values."""

import math
import pathlib

import numpy as np
import pytest

from common import metrics
from common import plots
from common.cli import run
from conftest import assert_figure
from conftest import assert_figures
from conftest import assert_finite_numbers
from conftest import assert_usage_error

VAE, CVAE, AE, GREEDY = ("VariationalAutoEncoder_tf2", "ConditionalVAE", "AutoEncoder",
                         "GreedyPretraining")
DAE, SPARSE, CAE = "StackedDenoisingAutoEncoder", "SparseAutoEncoder", "ContractiveAutoEncoder"
VQVAE = "VQVAE"
VAE_FIGURES = ["vae_latent_scatter.png", "vae_manifold.png", "vae_reconstructions.png",
               "vae_samples.png"]
CVAE_FIGURES = ["cvae_digits.png", "cvae_style_transfer.png", "cvae_latent_scatter.png"]


# -- Refused up front ---------------------------------------------------------------------------

@pytest.mark.parametrize("name, argv, message", [
    # Shared flags: beyond what TensorFlow's sizes or float32 can hold.
    (VAE, ["--batch-size", "99999999999999999999"], "--batch-size: must be at most 2,147,483,647"),
    (VAE, ["--learning-rate", "1e-40"], "--learning-rate: must lie within float32's range"),
    (VAE, ["--learning-rate", "1e39"], "--learning-rate: must lie within float32's range"),
    (VAE, ["--latent-dim", "785"], "--latent-dim: must be at most 784"),
    (VAE, ["--iwae-samples", "10001"], "--iwae-samples: must be at most 10,000"),
    (VAE, ["--beta", "1e30"], "--beta: must be at most 1e+06"),
    (CVAE, ["--latent-dim", "785"], "--latent-dim: must be at most 784"),
    (CVAE, ["--samples-per-class", "10001"], "--samples-per-class: must be at most 10,000"),
    (CVAE, ["--iwae-samples", "10001"], "--iwae-samples: must be at most 10,000"),
    (CVAE, ["--beta", "1.5e6"], "--beta: must be at most 1e+06"),
    (AE, ["--code-dim", "256"], "--code-dim: must be below 256"),
    (GREEDY, ["--code-dim", "256"], "--code-dim: must be below 256"),
    (GREEDY, ["--pretrain-epochs", "0"], "--pretrain-epochs: must be a positive integer"),
    (DAE, ["--noise-factor", "1e39"], "--noise-factor: must lie within float32's range"),
    (DAE, ["--noise-factor", "1e-40"], "--noise-factor: must lie within float32's range"),
    (DAE, ["--noise", "masking", "--noise-factor", "1.01"], "must be a fraction in [0, 1]"),
    (DAE, ["--noise", "salt_and_pepper", "--noise-factor", "2"], "must be a fraction in [0, 1]"),
    (SPARSE, ["--rho", "0"], "--rho: must be a number between 0 and 1 (exclusive)"),
    (SPARSE, ["--rho", "1"], "--rho: must be a number between 0 and 1 (exclusive)"),
    (SPARSE, ["--rho", "nan"], "--rho: must be a number between 0 and 1 (exclusive)"),
    (SPARSE, ["--rho", "1e-40"], "--rho: must be at least 1.18e-38"),
    (SPARSE, ["--hidden", "10001"], "--hidden: must be at most 10,000"),
    (SPARSE, ["--beta", "1e30"], "--beta: must be at most 1e+06"),
    (SPARSE, ["--l1", "2e6"], "--l1: must be at most 1e+06"),
    (CAE, ["--hidden", "2001"], "--hidden: must be at most 2,000"),
    (CAE, ["--lambda", "1e30"], "--lambda: must be at most 1e+06"),
    (CAE, ["--lambda", "1e-40"], "--lambda: must lie within float32's range"),
    (VQVAE, ["--codebook-size", "1"], "--codebook-size: must be at least 2"),
    (VQVAE, ["--codebook-size", "1025"], "--codebook-size: must be at most 1,024"),
    (VQVAE, ["--code-dim", "257"], "--code-dim: must be at most 256"),
    (VQVAE, ["--beta", "1e30"], "--beta: must be at most 1e+06"),
    (VQVAE, ["--prior-epochs", "0"], "--prior-epochs: must be a positive integer"),
])
def test_values_beyond_what_a_lesson_can_honour_are_refused(lessons, tmp_path, capsys, name, argv,
                                                            message):
    assert_usage_error(lessons[name].main, f"{name}.py", argv, tmp_path, capsys, message)
    assert not (tmp_path / "out").exists()


def assert_refused_after_loading(main, script, argv, tmp_path, capsys, message):
    """Refused once the data is loaded: exit 2, the `data:` line then one error line, no
    `device:` line, and no output folder."""
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stopped:
        run(main, [*map(str, argv), "--out", str(out)])
    assert stopped.value.code == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines()
           if not line.startswith("data: ")]
    assert len(err) == 1 and err[0].startswith(f"{script}: error:") and message in err[0], err
    assert not out.exists()


@pytest.fixture(scope="module")
def five_test_images(small_mnist_npz, tmp_path_factory):
    """The small data file with its test split cut to 5 images."""
    with np.load(small_mnist_npz) as archive:
        arrays = dict(archive)
    path = tmp_path_factory.mktemp("data") / "five_test_images.npz"
    np.savez(path, **{**arrays, "x_test": arrays["x_test"][:5], "y_test": arrays["y_test"][:5]})
    return path


@pytest.mark.parametrize("name, argv, message", [
    (AE, ["--limit", "256", "--code-dim", "201"], "--code-dim 201 is larger than the number"),
    (AE, ["--limit", "1"], "needs at least 2 (raise --limit)"),
    (CVAE, ["--limit", "1"], "needs at least 2 (raise --limit)"),
])
def test_values_the_data_cannot_honour_are_refused_before_any_folder(lessons, small_mnist_npz,
                                                                      tmp_path, capsys, name,
                                                                      argv, message):
    assert_refused_after_loading(lessons[name].main, f"{name}.py",
                                 ["--data", small_mnist_npz, *argv], tmp_path, capsys, message)


def test_kmeans_needs_ten_test_images(lessons, five_test_images, tmp_path, capsys):
    assert_refused_after_loading(lessons[AE].main, f"{AE}.py",
                                 ["--data", five_test_images, "--code-dim", "2"],
                                 tmp_path, capsys, "k-means with 10 clusters needs at least 10")


# -- Run to the end -----------------------------------------------------------------------------

def test_vae_draws_a_one_dimensional_latent_space(tiny_run):
    # Also: a batch larger than the training set (one step an epoch).
    done = tiny_run(VAE, "--latent-dim", "1", "--limit", "256", "--batch-size", "1000")
    assert_finite_numbers(done.results)
    assert done.results["latent_dim"] == 1 and done.results["active_units"] <= 1
    assert done.results["epochs_trained"] == 1
    folder = done.out / "figures"
    assert_figures(folder, VAE_FIGURES)
    manifold = assert_figure(folder / "vae_manifold.png", min_width=600, min_height=120)
    assert manifold.shape[1] > 4 * manifold.shape[0]  # one row of decoded codes, not a grid


def test_vae_conv_at_the_smallest_values(tiny_run):
    # One training image in batches of one, no KL weight, one importance sample, grey targets.
    done = tiny_run(VAE, "--latent-dim", "1", "--arch", "conv", "--limit", "1", "--batch-size",
                    "1", "--beta", "0", "--iwae-samples", "1", "--binarize", "none")
    assert_finite_numbers(done.results)
    assert done.results["train_examples"] == 1
    assert done.results["test_nll_iwae_nats"] == pytest.approx(done.results["test_neg_elbo_nats"],
                                                               rel=0.05)
    assert_figures(done.out / "figures", VAE_FIGURES)


def test_cvae_one_dimensional_style_and_one_sample_per_class(tiny_run):
    done = tiny_run(CVAE, "--latent-dim", "1", "--samples-per-class", "1", "--iwae-samples", "1",
                    "--limit", "2", "--batch-size", "1", "--epochs", "1", "--classifier-epochs",
                    "1", "--beta", "0")
    assert_finite_numbers(done.results)
    assert done.results["train_examples"] == 2 and done.results["latent_dim"] == 1
    # One digit per class: each class scores 0 or 1, the whole a multiple of 1/10.
    assert set(done.results["conditional_accuracy_per_class"].values()) <= {0.0, 1.0}
    assert round(done.results["conditional_accuracy"] * 10, 6).is_integer()
    assert_figures(done.out / "figures", CVAE_FIGURES)


def test_autoencoder_code_size_one_on_twelve_images_with_the_sweep(tiny_run):
    # PCA can have at most 12 components: the sweep keeps the code sizes up to 12.
    done = tiny_run(AE, "--code-dim", "1", "--limit", "12", "--sweep", "--binarize", "static",
                    "--batch-size", "1000", "--epochs", "1")
    assert_finite_numbers(done.results)
    curve = done.results["compression_curve"]
    assert list(curve["pca"]) == ["1", "2", "8"]
    assert list(curve["deep"]) == list(curve["shallow"]) == ["1", "2", "8"]
    assert_figures(done.out / "figures", ["ae_reconstructions.png", "ae_compression_curve.png"])


def test_greedy_pretraining_widest_code_on_one_image_in_mixed_precision(tiny_run):
    done = tiny_run(GREEDY, "--code-dim", "255", "--limit", "1", "--batch-size", "1",
                    "--epochs", "1", "--binarize", "dynamic", "--mixed-precision")
    assert_finite_numbers(done.results)
    assert len(done.results["stage_losses"]) == 3
    assert_figures(done.out / "figures", ["pretraining_curves.png",
                                          "pretraining_reconstructions.png"])


@pytest.mark.parametrize("flags", [
    ("--noise", "masking", "--noise-factor", "1", "--limit", "1", "--batch-size", "1"),
    ("--noise", "salt_and_pepper", "--noise-factor", "1e-9", "--limit", "256",
     "--batch-size", "5000"),
])
def test_denoising_at_the_ends_of_the_noise_factor(tiny_run, flags):
    done = tiny_run(DAE, *flags, "--epochs", "1")
    assert_finite_numbers(done.results)
    assert done.results["noise_factor"] == float(flags[3])
    assert_figures(done.out / "figures", ["dae_noisy_inputs.png", "dae_denoised.png",
                                          "dae_psnr_vs_noise.png"])


@pytest.mark.parametrize("flags", [
    # The smallest codebook and code, one grey image in batches of one, no commitment term, and
    # both remedies for dead codes at once.
    ("--codebook-size", "2", "--code-dim", "1", "--limit", "1", "--batch-size", "1",
     "--beta", "0", "--binarize", "none", "--ema", "--reseed-dead-codes"),
    # The largest codebook and code: more codes than the 32 images have vectors to choose them.
    ("--codebook-size", "1024", "--code-dim", "256", "--limit", "32"),
])
def test_vqvae_at_the_ends_of_its_codebook(tiny_run, flags):
    done = tiny_run(VQVAE, *flags, "--epochs", "1", "--prior-epochs", "1")
    assert_finite_numbers(done.results)
    size = int(flags[1])
    assert done.results["test_uniform_prior_nats"] == pytest.approx(49 * math.log(size))
    assert 1 <= done.results["codes_used"] <= size
    assert_figures(done.out / "figures", ["vqvae_reconstructions.png", "vqvae_code_grids.png",
                                          "vqvae_codebook_usage.png", "vqvae_prior_samples.png",
                                          "vqvae_uniform_samples.png"])


@pytest.mark.parametrize("flags", [
    ("--hidden", "1", "--rho", "1.2e-38", "--beta", "1e6", "--limit", "2", "--batch-size", "1"),
    ("--hidden", "2", "--penalty", "none", "--binarize", "dynamic", "--limit", "256"),
])
def test_sparse_at_its_edges(tiny_run, flags):
    done = tiny_run(SPARSE, *flags, "--epochs", "1")
    assert_finite_numbers(done.results)
    hoyer = done.results.get("penalized_hoyer_sparsity", done.results["baseline_hoyer_sparsity"])
    assert (hoyer is None) == (flags[1] == "1")  # undefined for a code of one unit
    assert_figures(done.out / "figures", ["sparse_features.png", "sparse_activations.png",
                                          "sparse_reconstructions.png"])


def test_contractive_one_unit_on_one_image_at_the_largest_lambda(tiny_run):
    done = tiny_run(CAE, "--hidden", "1", "--lambda", "1e6", "--limit", "1", "--batch-size", "1",
                    "--binarize", "dynamic", "--epochs", "1")
    assert_finite_numbers(done.results)
    assert done.results["penalized_mean_jacobian_frobenius"] <= \
        done.results["baseline_mean_jacobian_frobenius"]
    assert_figures(done.out / "figures", ["contractive_sensitivity.png",
                                          "contractive_reconstructions.png"])


# -- The figures and metrics behind those edges -------------------------------------------------

CLASS_NAMES = [str(d) for d in range(10)]


def test_latent_scatter_of_one_code_one_class_or_one_image(tmp_path):
    rng = np.random.default_rng(0)
    codes, labels = rng.standard_normal((300, 1)).astype(np.float32), rng.integers(0, 10, 300)
    plots.plot_latent_scatter(codes, labels, tmp_path / "strip.png", "1-D", CLASS_NAMES)
    plots.plot_latent_scatter(np.zeros((30, 1), np.float32), np.full(30, 3),
                              tmp_path / "one_class.png", "1-D, one class, one value",
                              CLASS_NAMES)
    plots.plot_latent_scatter(np.ones((1, 5), np.float32), np.array([3]),
                              tmp_path / "one_image.png", "one test image", CLASS_NAMES)
    for name in ("strip.png", "one_class.png", "one_image.png"):
        assert_figure(tmp_path / name)


def test_one_dimensional_manifold_decodes_gaussian_quantiles_in_one_batch(tmp_path):
    calls = []

    def decode(z):
        calls.append(z.copy())
        return np.broadcast_to(((z + 2) / 4).clip(0, 1)[:, None, None, :], (len(z), 28, 28, 1))

    plots.plot_manifold(decode, tmp_path / "row.png", "a 1-D latent space", n=20, latent_dim=1)
    assert len(calls) == 1 and calls[0].shape == (20, 1)
    np.testing.assert_allclose(calls[0][:, 0], plots.gaussian_quantiles(20))
    image = assert_figure(tmp_path / "row.png", min_width=600, min_height=120)
    assert image.shape[1] > 4 * image.shape[0]


@pytest.fixture
def captured_figures(monkeypatch):
    """Figures handed to plots.save_figure, kept open for inspection instead of saved."""
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig))
    yield figures
    import matplotlib.pyplot as plt

    for fig in figures:
        plt.close(fig)


@pytest.mark.parametrize("curve", [[543.5, 540.6], [543.48, 543.48], [543.5, 200.0, 90.0]])
def test_pretraining_curves_have_labelled_ticks_inside_any_range(lessons, captured_figures,
                                                                 curve):
    from types import SimpleNamespace

    results = {"random_init_val_loss_by_epoch": curve,
               "greedy_val_loss_by_epoch": [v * 0.99 for v in curve]}
    lessons[GREEDY].plot_curves(results, 3, SimpleNamespace(pretrain_epochs=1, epochs=1),
                                pathlib.Path("unused.png"), "curves")
    ax = captured_figures[0].axes[0]
    bottom, top = ax.get_ylim()
    ticks = [t for t in ax.get_yticks() if bottom <= t <= top]
    assert len(ticks) >= 2, ticks
    assert bottom >= min(min(c) for c in results.values()) / 1.2  # not stretched to a far tick


@pytest.mark.parametrize("trained, scale", [(0.5, "linear"), (50.0, "log"), (1e-9, "log")])
def test_psnr_against_noise_level_goes_logarithmic_far_outside_the_sweep(lessons,
                                                                         captured_figures,
                                                                         trained, scale):
    factors = sorted({*lessons[DAE].SWEEP_FACTORS["gaussian"], trained})
    sweep = [{"noise_factor": f, "denoised_psnr_db": 20.0, "baseline_psnr_db": 15.0,
              "noisy_psnr_db": 10.0 - f} for f in factors]
    lessons[DAE].plot_psnr_vs_noise(sweep, "gaussian", trained, pathlib.Path("unused.png"), "t")
    assert captured_figures[0].axes[0].get_xscale() == scale


def test_many_importance_samples_are_decoded_in_smaller_chunks_with_the_same_numbers():
    rng = np.random.default_rng(1)
    x = (rng.random((150, 784)) < 0.3).astype(np.float32)
    z_mean = rng.standard_normal((150, 3)).astype(np.float32)
    z_log_var = 0.1 * rng.standard_normal((150, 3)).astype(np.float32)
    weights = rng.standard_normal((3, 784)).astype(np.float32)
    calls = []

    def decode(z, rows):
        calls.append(len(z))
        return z @ weights

    default = metrics.evaluate_elbo(x, z_mean, z_log_var, decode, samples=300)
    assert max(calls) <= metrics.POINTS_PER_CALL
    whole = metrics.evaluate_elbo(x, z_mean, z_log_var, decode, samples=300, chunk=150)
    for key, value in default.items():
        assert math.isclose(value, whole[key], rel_tol=1e-6), key
