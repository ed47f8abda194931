"""The VAE lesson as a user runs it: flags, errors, a saved model, and a tiny end-to-end run."""

import json
import math
import subprocess
import sys

import common  # noqa: F401 - registers the custom objects for load_model
import keras
import numpy as np
import pytest

from common.cli import run
from common.data import autoencoder_datasets
from common.data import load_dataset
from common.metrics import evaluate_elbo
from conftest import ROOT
from conftest import assert_usage_error

SCRIPT = ROOT / "VariationalAutoEncoder_tf2.py"
RESULT_KEYS = ["dataset", "data_source", "train_examples", "test_examples", "epochs",
               "latent_dim", "beta", "binarize", "test_neg_elbo_nats",
               "test_reconstruction_nats", "test_kl_nats", "test_nll_iwae_nats", "iwae_samples",
               "active_units", "train_seconds", "seconds_per_epoch"]
FIGURES = ["vae_latent_scatter.png", "vae_manifold.png", "vae_reconstructions.png",
           "vae_samples.png"]
TINY = ["--epochs", "2", "--batch-size", "64", "--iwae-samples", "10"]


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "--epochs: must be a positive integer, got '0'"),
    (["--epochs", "-3"], "--epochs: must be a positive integer, got '-3'"),
    (["--latent-dim", "0"], "--latent-dim: must be a positive integer, got '0'"),
    (["--batch-size", "many"], "--batch-size: must be a positive integer, got 'many'"),
    (["--beta", "-1"], "--beta: must be a number >= 0, got '-1'"),
    (["--binarize", "sometimes"], "invalid choice: 'sometimes'"),
    (["--data", "no/such/mnist.npz"], "no such file: no/such/mnist.npz"),
    (["--out", None], "cannot be written"),
])
def test_bad_values_stop_with_one_line_and_status_2(vae_lesson, tmp_path, capsys, argv, message):
    assert_usage_error(vae_lesson.main, "VariationalAutoEncoder_tf2.py", argv, tmp_path, capsys,
                       message)


def test_corrupt_data_file_stops_before_training(vae_lesson, tmp_path, capsys):
    corrupt = tmp_path / "mnist.npz"
    corrupt.write_bytes(b"\x00" * 100)
    with pytest.raises(SystemExit) as stopped:
        run(vae_lesson.main, ["--data", str(corrupt), "--out", str(tmp_path / "out")])
    assert stopped.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert "error:" in lines[-1] and str(corrupt) in lines[-1]
    assert not any((tmp_path / "out").rglob("*.*"))  # no result, figure or model written


def test_command_line_error_from_a_real_process_is_one_line():
    done = subprocess.run([sys.executable, str(SCRIPT), "--epochs", "0"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "VariationalAutoEncoder_tf2.py: error: argument --epochs: must be a positive integer, "
        "got '0' (see --help)"]


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_keras_round_trip_gives_identical_outputs(vae_lesson, tmp_path, arch):
    encoder = vae_lesson.build_encoder(arch, latent_dim=3)
    decoder = vae_lesson.build_decoder(arch, latent_dim=3)
    vae = vae_lesson.build_vae(encoder, decoder, beta=2.0, seed=5)
    vae.compile(optimizer="adam", loss=common.losses.bernoulli_nll)
    vae.optimizer.build(vae.trainable_variables)  # save optimizer slots as after training
    vae.save(tmp_path / "vae.keras")
    loaded = keras.models.load_model(tmp_path / "vae.keras")
    images = np.random.default_rng(0).random((4, 28, 28, 1)).astype("float32")
    for before, after in zip(encoder.predict(images, verbose=0),
                             loaded.get_layer("encoder").predict(images, verbose=0)):
        np.testing.assert_array_equal(before, after)
    assert loaded.get_layer("sampling").beta == 2.0
    assert decoder.output_shape == (None, 28, 28, 1)


def test_history_shows_loss_reconstruction_and_kl(vae_lesson):
    encoder = vae_lesson.build_encoder("mlp", 2)
    decoder = vae_lesson.build_decoder("mlp", 2)
    vae = vae_lesson.build_vae(encoder, decoder, beta=1.0, seed=0)
    vae.compile(optimizer="adam", loss=common.losses.bernoulli_nll,
                metrics=[keras.metrics.MeanMetricWrapper(common.losses.bernoulli_nll,
                                                         name="reconstruction_loss")])
    x = (np.random.default_rng(0).random((64, 28, 28, 1)) < 0.2).astype("float32")
    history = vae.fit(x, x, validation_data=(x, x), batch_size=32, epochs=1, verbose=0).history
    for name in ("loss", "reconstruction_loss", "kl_loss"):
        assert name in history and f"val_{name}" in history
    # With beta = 1 the loss is exactly reconstruction + KL (evaluated on the same batches).
    assert history["val_loss"][0] == pytest.approx(
        history["val_reconstruction_loss"][0] + history["val_kl_loss"][0], rel=1e-4)


def test_end_to_end_tiny_run(vae_lesson, small_mnist_npz, tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(SCRIPT), "--data", str(small_mnist_npz),
                           "--out", str(out), *TINY],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "negative ELBO" in done.stdout

    results = json.loads((out / "results" / "VariationalAutoEncoder_tf2.json").read_text())
    for key in RESULT_KEYS:
        assert key in results, key
        if isinstance(results[key], (int, float)):
            assert math.isfinite(results[key]), key
    assert results["train_examples"] == 600 and results["test_examples"] == 200
    assert results["test_nll_iwae_nats"] <= results["test_neg_elbo_nats"]
    for name in FIGURES:
        assert (out / "figures" / name).stat().st_size > 10_000, name

    # The saved encoder loads after `import common` and gives z for the test images.
    data = load_dataset("mnist", path=small_mnist_npz)
    _, _, x_test = autoencoder_datasets(data, 64, results["binarize"], results["seed"])
    encoder = keras.models.load_model(out / "models" / "vae_encoder.keras")
    decoder = keras.models.load_model(out / "models" / "vae_decoder.keras")
    keras.models.load_model(out / "models" / "vae.keras")
    z_mean, z_log_var = encoder.predict(x_test, verbose=0)
    trained = evaluate_elbo(x_test, z_mean, z_log_var,
                            lambda z, rows: decoder.predict(z, verbose=0), samples=10)
    assert trained["neg_elbo"] == pytest.approx(results["test_neg_elbo_nats"], rel=0.02)

    # Training helped: the same architecture, untrained, scores a much worse negative ELBO.
    keras.utils.set_random_seed(results["seed"])
    fresh_encoder = vae_lesson.build_encoder(results["arch"], results["latent_dim"])
    fresh_decoder = vae_lesson.build_decoder(results["arch"], results["latent_dim"])
    z_mean, z_log_var = fresh_encoder.predict(x_test, verbose=0)
    untrained = evaluate_elbo(x_test, z_mean, z_log_var,
                              lambda z, rows: fresh_decoder.predict(z, verbose=0), samples=10)
    assert results["test_neg_elbo_nats"] < untrained["neg_elbo"] - 100


def test_same_seed_same_numbers(vae_lesson, small_mnist_npz, tmp_path):
    def tiny_run(out, seed):
        run(vae_lesson.main, ["--data", str(small_mnist_npz), "--out", str(out), "--seed", seed,
                              "--epochs", "1", "--limit", "256", "--iwae-samples", "5"])
        results = json.loads((out / "results" / "VariationalAutoEncoder_tf2.json").read_text())
        return {k: v for k, v in results.items() if "seconds" not in k}

    first = tiny_run(tmp_path / "a", "3")
    assert tiny_run(tmp_path / "b", "3") == first
    assert tiny_run(tmp_path / "c", "4")["test_neg_elbo_nats"] != first["test_neg_elbo_nats"]
