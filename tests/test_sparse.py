"""The sparse-autoencoder lesson: the KL and L1 penalties, the sparsity measures, a tiny run."""

import argparse
import math

import common  # noqa: F401 - registers the custom objects for load_model
import keras
import numpy as np
import pytest

from conftest import assert_figures
from conftest import assert_usage_error
from conftest import jacobian

NAME = "SparseAutoEncoder"
METRIC_KEYS = ["test_bce_nats", "test_mse_per_pixel", "mean_activation",
               "active_units_per_image", "dead_unit_fraction", "always_on_unit_fraction",
               "hoyer_sparsity", "final_train_loss", "train_seconds", "seconds_per_epoch"]
FIGURES = ["sparse_features.png", "sparse_activations.png", "sparse_reconstructions.png"]


@pytest.fixture(scope="module")
def lesson(lessons):
    return lessons[NAME]


@pytest.fixture(scope="module")
def tiny(tiny_run):
    return tiny_run(NAME)


def bernoulli_kl(p, q):
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


@pytest.mark.every_backend
def test_kl_sparsity_matches_values_by_hand(lesson):
    # Two units over a batch of 4: unit 0 has mean 0.5, unit 1 has mean exactly rho = 0.05.
    codes = np.array([[0.9, 0.0], [0.1, 0.2], [0.5, 0.0], [0.5, 0.0]], np.float32)
    # KL(0.05 || 0.5) = 0.05 ln(0.1) + 0.95 ln(1.9) = 0.49463..., and KL(rho || rho) = 0.
    expected = 0.05 * math.log(0.1) + 0.95 * math.log(1.9)
    assert expected == pytest.approx(0.494631, abs=1e-6)
    value = float(keras.ops.convert_to_numpy(lesson.kl_sparsity(codes, 0.05)))
    assert value == pytest.approx(expected, rel=1e-5)
    assert float(keras.ops.convert_to_numpy(lesson.kl_sparsity(codes, 0.5))) == pytest.approx(
        bernoulli_kl(0.5, 0.05), rel=1e-5)


@pytest.mark.every_backend
def test_kl_layer_passes_codes_through_and_adds_beta_times_kl(lesson):
    rng = np.random.default_rng(1)
    codes = rng.uniform(0.01, 0.99, size=(16, 7)).astype(np.float32)
    layer = lesson.KLSparsity(rho=0.1, beta=2.5)
    out = keras.ops.convert_to_numpy(layer(codes))
    np.testing.assert_array_equal(out, codes)
    by_hand = sum(bernoulli_kl(0.1, q) for q in codes.mean(axis=0).astype(np.float64))
    assert float(keras.ops.convert_to_numpy(layer.losses[0])) == pytest.approx(2.5 * by_hand,
                                                                              rel=1e-5)
    # PenalizedModel logs the unweighted term the layer keeps
    assert float(keras.ops.convert_to_numpy(layer.last_penalty)) == pytest.approx(by_hand,
                                                                                 rel=1e-5)


@pytest.mark.every_backend
def test_kl_gradient_pushes_overactive_units_down_and_silent_units_up(lesson):
    codes = np.array([[0.6, 0.01], [0.4, 0.01]], np.float32)
    grad = jacobian(lambda c: lesson.kl_sparsity(c, 0.05), codes)
    assert np.all(grad[:, 0] > 0)  # descent lowers the unit active at 0.5 on average
    assert np.all(grad[:, 1] < 0)  # and raises the unit active at 0.01 towards 0.05


@pytest.mark.every_backend
def test_l1_layer_equals_keras_activity_regularization(lesson):
    """The L1 layer adds exactly what `activity_regularizer=L1(l1)` adds in Keras 3."""
    rng = np.random.default_rng(2)
    x = rng.random((8, 5)).astype(np.float32)
    dense = keras.layers.Dense(3, activation="sigmoid",
                               activity_regularizer=keras.regularizers.L1(1e-3))
    codes = dense(x)
    layer = lesson.L1Activity(l1=1e-3)
    layer(codes)
    keras_penalty = float(keras.ops.convert_to_numpy(dense.losses[0]))
    ours = float(keras.ops.convert_to_numpy(layer.losses[0]))
    by_hand = 1e-3 * np.abs(keras.ops.convert_to_numpy(codes)).sum(axis=1).mean()
    assert ours == pytest.approx(keras_penalty, rel=1e-6)
    assert ours == pytest.approx(by_hand, rel=1e-5)
    assert float(keras.ops.convert_to_numpy(layer.last_penalty)) == pytest.approx(by_hand / 1e-3,
                                                                                 rel=1e-5)


def test_code_statistics_by_hand(lesson):
    codes = np.full((2, 4), 0.02, np.float32)
    codes[0, :2] = [0.9, 0.95]              # image 0: two units on
    codes[1] = [0.5, 0.92, 0.5, 0.02]       # image 1: three units on
    stats = lesson.code_statistics(codes)
    assert stats["mean_activation"] == pytest.approx(codes.mean())
    assert stats["active_units_per_image"] == pytest.approx(2.5)   # (2 + 3) / 2
    assert stats["dead_unit_fraction"] == pytest.approx(0.25)      # unit 3 is never above 0.1
    assert stats["always_on_unit_fraction"] == pytest.approx(0.25)  # unit 1 never below 0.9
    # Hoyer: a one-hot code scores 1, a constant code 0.
    one_hot = lesson.code_statistics(np.eye(4, dtype=np.float32))["hoyer_sparsity"]
    constant = lesson.code_statistics(np.full((3, 4), 0.3, np.float32))["hoyer_sparsity"]
    assert one_hot == pytest.approx(1.0) and constant == pytest.approx(0.0, abs=1e-6)


def test_hoyer_sparsity_is_undefined_for_all_zero_codes_never_out_of_range(lesson):
    zeros = np.zeros((3, 16), np.float32)
    assert lesson.code_statistics(zeros)["hoyer_sparsity"] is None
    # Zero codes are left out of the mean; the one-hot image scores 1, the constant one 0.
    mixed = np.zeros((3, 16), np.float32)
    mixed[1, 4] = 0.7
    mixed[2] = 0.2
    assert lesson.code_statistics(mixed)["hoyer_sparsity"] == pytest.approx(0.5)


@pytest.mark.every_backend
@pytest.mark.parametrize("penalty", ["kl", "l1"])
def test_history_shows_the_penalty_and_the_model_round_trips(lesson, tmp_path, penalty):
    keras.utils.set_random_seed(0)
    encoder, decoder = lesson.build_encoder(12), lesson.build_decoder(12)
    settings = argparse.Namespace(rho=0.1, beta=2.0, l1=0.01)
    model = lesson.build_autoencoder(encoder, decoder, penalty, settings)
    lesson.compile_autoencoder(model, 1e-3)
    x = np.random.default_rng(0).random((64, 28, 28, 1)).astype("float32")
    history = model.fit(x, x, validation_data=(x, x), batch_size=64, epochs=1, verbose=0).history
    metric, weight = ("kl_sparsity", 2.0) if penalty == "kl" else ("l1_activity", 0.01)
    assert metric in history and f"val_{metric}" in history
    # One validation batch: loss = reconstruction + weight * penalty, exactly.
    assert history["val_loss"][0] == pytest.approx(
        history["val_reconstruction_loss"][0] + weight * history[f"val_{metric}"][0], rel=1e-5)

    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-6)
    config = loaded.get_layer("sparsity_penalty").get_config()
    assert (config["beta"], config["rho"]) == (2.0, 0.1) if penalty == "kl" else \
        config["l1"] == 0.01


def test_with_no_penalty_asked_only_the_baseline_is_trained_and_reported(capsys):
    from common import comparison
    from common import training

    assert comparison.settings("kl", "none") == ["kl", "none"]
    assert comparison.settings("none", "none") == ["none"]
    fitted = training.Fitted({"loss": [3.0, 2.0]}, [0.5, 0.25])
    trained = {"none": comparison.Trained("enc", "dec", "ae", fitted,
                                          {"hoyer_sparsity": None}, {})}
    results = comparison.side_by_side(trained, "none", "none")
    assert results == {"baseline_hoyer_sparsity": None, "baseline_epochs_trained": 2,
                       "baseline_final_train_loss": 2.0, "baseline_train_seconds": 0.75,
                       "baseline_seconds_per_epoch": 0.375, "baseline_epoch_seconds": [0.5, 0.25],
                       "baseline_resumed_after_epoch": None}
    assert comparison.saved_models("sparse", trained) == {
        "sparse_none": "ae", "sparse_none_encoder": "enc", "sparse_none_decoder": "dec"}
    comparison.print_table("heading", {"penalized": "KL", "baseline": "no penalty"},
                           [("Hoyer sparsity", "hoyer_sparsity", ".3f")], results)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "heading" and "KL" not in lines[1] and "no penalty" in lines[1]
    assert lines[2].split() == ["Hoyer", "sparsity", "undefined"]


@pytest.mark.parametrize("argv, message", [
    (["--hidden", "0"], "--hidden: must be a positive integer, got '0'"),
    (["--penalty", "l2"], "invalid choice: 'l2'"),
    (["--rho", "1"], "--rho: must be a number between 0 and 1 (exclusive), got '1'"),
    (["--rho", "zero"], "--rho: must be a number between 0 and 1 (exclusive), got 'zero'"),
    (["--beta", "-3"], "--beta: must be a number >= 0, got '-3'"),
    (["--l1", "-0.5"], "--l1: must be a number >= 0, got '-0.5'"),
    (["--binarize", "sometimes"], "invalid choice: 'sometimes'"),
    (["--learning-rate", "0"], "--learning-rate: must be a positive number, got '0'"),
])
def test_bad_values_stop_with_one_line_and_status_2(lesson, tmp_path, capsys, argv, message):
    assert_usage_error(lesson.main, "SparseAutoEncoder.py", argv, tmp_path, capsys, message)


def test_tiny_run_makes_the_code_sparser_than_the_baseline(lesson, tiny, small_mnist_npz):
    out, results = tiny.out, tiny.results
    assert "Hoyer sparsity" in tiny.stdout
    assert results["train_examples"] == 600 and results["test_examples"] == 200
    assert (results["penalty"], results["binarize"]) == ("kl", "none")
    assert (results["active_threshold"], results["always_on_threshold"]) == (0.1, 0.9)
    for label in ("penalized", "baseline"):
        for key in METRIC_KEYS:
            value = results[f"{label}_{key}"]
            assert isinstance(value, float) and math.isfinite(value), (label, key)
    # Even two epochs of the KL penalty make the code sparser than the same network without it.
    assert results["penalized_mean_activation"] < 0.7 * results["baseline_mean_activation"]
    assert results["penalized_hoyer_sparsity"] > results["baseline_hoyer_sparsity"]
    assert (results["penalized_active_units_per_image"]
            < results["baseline_active_units_per_image"])
    assert_figures(out / "figures", FIGURES)

    # The saved models load (the lesson is imported, so its layers are registered) and
    # reproduce the reported numbers.
    from common.data import load_dataset

    x_test = load_dataset("mnist", path=small_mnist_npz).x_test
    for label, penalty in (("penalized", "kl"), ("baseline", "none")):
        encoder = keras.models.load_model(out / "models" / f"sparse_{penalty}_encoder.keras")
        keras.models.load_model(out / "models" / f"sparse_{penalty}.keras")
        codes = encoder.predict(x_test, verbose=0)
        assert codes.shape == (200, 64)
        assert float(codes.mean()) == pytest.approx(results[f"{label}_mean_activation"],
                                                    rel=1e-4)
