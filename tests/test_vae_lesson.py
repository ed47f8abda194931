"""The VAE lesson: its flags, its model, and a tiny run scored, saved and reloaded."""

import argparse
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from common import data
from common import metrics
from common.cli import run
from conftest import ROOT
from conftest import assert_figures
from conftest import assert_finite_numbers
from conftest import assert_usage_error

NAME = "VariationalAutoEncoder_tf2"
FIGURES = ["vae_latent_scatter.png", "vae_manifold.png", "vae_reconstructions.png",
           "vae_samples.png", "vae_sum_or_mean.png"]
SCORES = ["test_neg_elbo_nats", "test_reconstruction_nats", "test_kl_nats",
          "test_nll_iwae_nats", "active_units", "epochs_trained", "train_seconds",
          "seconds_per_epoch"]


@pytest.fixture(scope="module")
def lesson(lessons):
    return lessons[NAME]


@pytest.fixture(scope="module")
def tiny(tiny_run):
    return tiny_run(NAME, "--mean-comparison")


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "--epochs: must be a positive integer, got '0'"),
    (["--epochs", "-3"], "--epochs: must be a positive integer, got '-3'"),
    (["--latent-dim", "0"], "--latent-dim: must be a positive integer, got '0'"),
    (["--batch-size", "many"], "--batch-size: must be a positive integer, got 'many'"),
    (["--beta", "-1"], "--beta: must be a number >= 0, got '-1'"),
    (["--beta", "inf"], "--beta: must be a number >= 0, got 'inf'"),
    (["--binarize", "sometimes"], "invalid choice: 'sometimes'"),
    (["--data", "no/such/mnist.npz"], "no such file: no/such/mnist.npz"),
    (["--data", "tests"], "tests is a folder; give the .npz file in it"),
    (["--out", None], "cannot be written"),
])
def test_bad_values_stop_with_one_line_and_status_2(lesson, tmp_path, capsys, argv, message):
    assert_usage_error(lesson.main, f"{NAME}.py", argv, tmp_path, capsys, message)


def test_command_line_error_from_a_real_process_is_one_line():
    # As a user's shell would start it: without the TF_CPP_MIN_LOG_LEVEL that importing
    # TensorFlow sets in this test process (whichever test imported it first).
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, str(ROOT / f"{NAME}.py"), "--epochs", "0"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"{NAME}.py: error: argument --epochs: must be a positive integer, got '0' (see --help)"]


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_keras_round_trip_gives_identical_outputs(lesson, tmp_path, arch):
    encoder, decoder, vae = lesson.build_vae(arch, 3, beta=2.0, seed=5, summary=False)
    lesson.compile_vae(vae, lesson.bernoulli_nll, 1e-3)
    vae.optimizer.build(vae.trainable_variables)  # save optimizer slots as after training
    vae.save(tmp_path / "vae.keras")
    loaded = keras.models.load_model(tmp_path / "vae.keras")
    images = np.random.default_rng(0).random((4, 28, 28, 1)).astype("float32")
    for before, after in zip(encoder.predict(images, verbose=0),
                             loaded.get_layer("encoder").predict(images, verbose=0)):
        np.testing.assert_array_equal(before, after)
    assert loaded.get_layer("sampling").beta == 2.0
    assert decoder.output_shape == (None, 28, 28, 1)


def test_history_shows_loss_reconstruction_and_kl(lesson):
    _, _, vae = lesson.build_vae("mlp", 2, beta=3.0, seed=0, summary=False)
    lesson.compile_vae(vae, lesson.bernoulli_nll, 1e-3)
    x = (np.random.default_rng(0).random((64, 28, 28, 1)) < 0.2).astype("float32")
    history = vae.fit(x, x, validation_data=(x, x), batch_size=32, epochs=2, verbose=0).history
    for name in ("loss", "reconstruction_loss", "kl_loss"):
        assert name in history and f"val_{name}" in history
    # The logged loss is reconstruction + beta * KL, in training and in validation (batches of
    # equal size, so the loss and the KL's per-batch mean weigh them alike).
    for prefix in ("", "val_"):
        for epoch in range(2):
            assert history[f"{prefix}loss"][epoch] == pytest.approx(
                history[f"{prefix}reconstruction_loss"][epoch]
                + 3.0 * history[f"{prefix}kl_loss"][epoch], rel=1e-4)


def test_sampling_adds_the_closed_form_kl_and_reparameterises(lesson):
    z_mean = np.array([[0.5, -1.0], [0.0, 2.0]], "float32")
    z_log_var = np.array([[0.0, np.log(4.0)], [np.log(0.25), 0.0]], "float32")
    layer = lesson.Sampling(beta=2.0, seed=1)
    z = keras.ops.convert_to_numpy(layer([z_mean, z_log_var]))
    # KL(N(mu, s^2) || N(0, 1)) = (s^2 + mu^2 - 1 - log s^2) / 2 per dimension, summed
    var = np.exp(z_log_var.astype(np.float64))
    kl = 0.5 * np.sum(var + z_mean**2 - 1 - np.log(var), axis=1)
    assert float(layer.last_penalty) == pytest.approx(kl.mean(), rel=1e-5)
    assert float(layer.losses[0]) == pytest.approx(2.0 * kl.mean(), rel=1e-5)
    # z is mu + sigma * eps: the noise it used is a standard draw, the same for the same seed
    eps = (z - z_mean) / np.sqrt(var)
    again = keras.ops.convert_to_numpy(lesson.Sampling(seed=1)([z_mean, z_log_var]))
    np.testing.assert_allclose((again - z_mean) / np.sqrt(var), eps, rtol=1e-5)
    assert not np.allclose(z, z_mean)


def test_averaged_losses_are_a_beta_vae_scored_in_the_same_nats(tiny):
    averaged = tiny.results["averaged_losses"]
    assert averaged["effective_beta"] == pytest.approx(784 / 2)
    assert averaged["test_neg_elbo_nats"] == pytest.approx(
        averaged["test_reconstruction_nats"] + averaged["test_kl_nats"])
    # beta = 392 squeezes the KL far below the summed VAE's, and costs reconstruction
    assert averaged["test_kl_nats"] < tiny.results["test_kl_nats"]
    assert averaged["test_reconstruction_nats"] > tiny.results["test_reconstruction_nats"]
    assert "losses averaged instead" in tiny.stdout


def test_tiny_run_scores_the_binarized_test_split(tiny):
    results = tiny.results
    assert_finite_numbers(results)
    for key in SCORES:
        assert key in results, key
    assert results["train_examples"] == 600 and results["test_examples"] == 200
    assert results["binarize"] == "dynamic" and results["epochs_trained"] == 1
    assert results["dataset"] == "small_mnist.npz"  # --data without --dataset: the file's name
    assert results["test_nll_iwae_nats"] <= results["test_neg_elbo_nats"]
    assert results["test_neg_elbo_nats"] == pytest.approx(
        results["test_reconstruction_nats"] + results["test_kl_nats"])
    assert "negative ELBO" in tiny.stdout
    assert not any("NodeDef" in line for line in tiny.stderr)  # no alarming TensorFlow line
    assert_figures(tiny.out / "figures", FIGURES)


def test_saved_models_reproduce_the_reported_numbers(lesson, tiny, small_mnist_npz):
    dataset = data.load_dataset("mnist", path=small_mnist_npz)
    _, _, test_inputs = data.autoencoder_datasets(dataset, 64, "dynamic", seed=0)
    encoder = keras.models.load_model(tiny.out / "models" / "vae_encoder.keras")
    decoder = keras.models.load_model(tiny.out / "models" / "vae_decoder.keras")
    vae = keras.models.load_model(tiny.out / "models" / "vae.keras")
    assert vae.get_layer("sampling").beta == 1.0
    z_mean, z_log_var = encoder.predict(test_inputs, verbose=0)
    scores = metrics.evaluate_elbo(test_inputs, z_mean, z_log_var,
                                   lambda z, rows: decoder(z), samples=2, seed=0)
    assert scores["neg_elbo"] == pytest.approx(tiny.results["test_neg_elbo_nats"], rel=1e-5)

    # Training helped: the same architecture, untrained, scores a much worse negative ELBO.
    keras.utils.set_random_seed(0)
    fresh_encoder, fresh_decoder, _ = lesson.build_vae("mlp", 2, 1.0, 0, summary=False)
    z_mean, z_log_var = fresh_encoder.predict(test_inputs, verbose=0)
    untrained = metrics.evaluate_elbo(test_inputs, z_mean, z_log_var,
                                      lambda z, rows: fresh_decoder(z), samples=2)
    assert tiny.results["test_neg_elbo_nats"] < untrained["neg_elbo"] - 20


def test_same_seed_same_numbers(lesson, small_mnist_npz, tmp_path):
    def seeded_run(out, seed):
        import json

        run(lesson.main, ["--data", str(small_mnist_npz), "--out", str(out), "--seed", seed,
                          "--epochs", "1", "--limit", "256", "--iwae-samples", "5",
                          "--no-mean-comparison"])
        results = json.loads((out / "results" / f"{NAME}.json").read_text())
        return {k: v for k, v in results.items() if "seconds" not in k and k != "seed"}

    first = seeded_run(tmp_path / "a", "3")
    assert seeded_run(tmp_path / "b", "3") == first
    assert seeded_run(tmp_path / "c", "4")["test_neg_elbo_nats"] != first["test_neg_elbo_nats"]


def test_the_reconstruction_loss_is_the_bernoulli_nll_summed_over_pixels(lesson):
    x = np.array([[1.0, 0.0]], "float32")
    logits = np.array([[0.0, np.log(3.0)]], "float32")
    # -log sigmoid(0) - log(1 - sigmoid(log 3)) = log 2 + log 4
    nll = keras.ops.convert_to_numpy(lesson.bernoulli_nll(x, logits))
    np.testing.assert_allclose(nll, [np.log(2.0) + np.log(4.0)], rtol=1e-6)


def test_only_the_default_settings_write_the_committed_outputs(lesson, tmp_path, capsys):
    """A run without --out writes the repository's figures/ and results/ with the lesson's
    defaults (what `make figures` runs), and runs/<lesson>/ with anything else, saying so."""
    from common import outputs

    assert lesson.parse_args([]).out == ROOT
    assert lesson.parse_args(["--tensorboard"]).out == ROOT  # logs: not a setting
    assert not outputs.default_out_note
    trial = lesson.parse_args(["--limit", "256", "--epochs", "1"])
    assert trial.out == ROOT / "runs" / NAME
    assert outputs.default_out_note.startswith(
        f"outputs: {ROOT / 'runs' / NAME} (--epochs, --limit differ from the lesson's defaults")
    outputs.default_out_note = ""
    assert lesson.parse_args(["--limit", "256", "--out", str(tmp_path)]).out == tmp_path
    assert "runs/" in (ROOT / ".gitignore").read_text().split()


def test_the_reported_nats_are_those_of_the_test_images_binarized_with_seed_plus_1(
        lesson, tiny, small_mnist_npz):
    """Scored again from the saved models, on the test split binarized here (one Bernoulli draw
    per pixel, NumPy's generator seeded with --seed + 1): the same numbers; on the grey images,
    or on another draw, not."""
    args = argparse.Namespace(**tiny.results)
    small_data = data.load_dataset("mnist", path=small_mnist_npz)
    encoder, decoder = (keras.models.load_model(tiny.out / "models" / f"vae_{part}.keras")
                        for part in ("encoder", "decoder"))

    def drawn(seed):
        rng = np.random.default_rng(seed)
        uniform = rng.random(small_data.x_test.shape, dtype=np.float32)
        return (uniform < small_data.x_test).astype(np.float32)

    scores = lesson.evaluate(encoder, decoder, drawn(args.seed + 1), args)
    for key, value in scores.items():
        assert tiny.results[key] == pytest.approx(value, rel=1e-5), key
    for other in (small_data.x_test, drawn(args.seed)):
        elsewhere = lesson.evaluate(encoder, decoder, other, args)["test_neg_elbo_nats"]
        assert elsewhere != pytest.approx(tiny.results["test_neg_elbo_nats"], rel=1e-5)
