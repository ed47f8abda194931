"""The contractive-autoencoder lesson: the closed-form Jacobian norm, the layer, a tiny run."""

import math

import common  # noqa: F401 - registers the custom objects for load_model
import keras
import numpy as np
import pytest

from conftest import assert_figures
from conftest import assert_usage_error
from conftest import jacobian

NAME = "ContractiveAutoEncoder"
METRIC_KEYS = ["test_bce_nats", "test_mse_per_pixel", "mean_jacobian_frobenius",
               "mean_jacobian_frobenius_sq", "code_change_per_noise", "final_train_loss",
               "train_seconds", "seconds_per_epoch"]
FIGURES = ["contractive_sensitivity.png", "contractive_reconstructions.png"]


@pytest.fixture(scope="module")
def lesson(lessons):
    return lessons[NAME]


@pytest.fixture(scope="module")
def tiny(tiny_run):
    return tiny_run(NAME)


@pytest.mark.every_backend
def test_closed_form_jacobian_norm_matches_autodiff(lesson):
    rng = np.random.default_rng(0)
    layer = lesson.ContractiveDense(7, contraction=0.3)
    x = rng.random((5, 11)).astype(np.float32)
    layer.build(x.shape)
    layer.kernel.assign(rng.normal(scale=0.8, size=(11, 7)).astype(np.float32))
    layer.bias.assign(rng.normal(size=7).astype(np.float32))
    full = jacobian(layer, x)                                    # (5, 7, 5, 11)
    per_example = full[np.arange(5), :, np.arange(5), :]         # (5, 7, 11): dh_j / dx_i
    by_autodiff = np.sum(per_example**2, axis=(1, 2))
    codes = layer(x)
    closed_form = keras.ops.convert_to_numpy(lesson.sigmoid_jacobian_norm_sq(codes, layer.kernel))
    np.testing.assert_allclose(closed_form, by_autodiff, rtol=1e-5)
    assert by_autodiff.min() > 1e-3                             # not a trivially zero case
    # The layer adds lambda times the batch mean, and returns sigmoid(x W + b).
    assert float(keras.ops.convert_to_numpy(layer.losses[0])) == pytest.approx(
        0.3 * by_autodiff.mean(), rel=1e-5)
    assert float(keras.ops.convert_to_numpy(layer.last_penalty)) == pytest.approx(  # logged
        by_autodiff.mean(), rel=1e-5)
    kernel, bias = (keras.ops.convert_to_numpy(v) for v in (layer.kernel, layer.bias))
    expected_codes = 1 / (1 + np.exp(-(x @ kernel + bias)))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(codes), expected_codes, rtol=1e-5)


@pytest.mark.every_backend
def test_only_sigmoid_units_are_accepted(lesson):
    with pytest.raises(ValueError, match="sigmoid units only"):
        lesson.ContractiveDense(4, activation="relu")


@pytest.mark.every_backend
def test_history_shows_the_jacobian_norm_and_the_model_round_trips(lesson, tmp_path):
    keras.utils.set_random_seed(0)
    model = lesson.build_autoencoder(lesson.build_encoder(12, 0.5), lesson.build_decoder(12))
    lesson.compile_autoencoder(model, 1e-3)
    x = np.random.default_rng(0).random((64, 28, 28, 1)).astype("float32")
    history = model.fit(x, x, validation_data=(x, x), batch_size=64, epochs=1, verbose=0).history
    assert "jacobian_norm_sq" in history and "val_jacobian_norm_sq" in history
    assert history["val_loss"][0] == pytest.approx(
        history["val_reconstruction_loss"][0] + 0.5 * history["val_jacobian_norm_sq"][0],
        rel=1e-5)

    model.save(tmp_path / "cae.keras")
    loaded = keras.models.load_model(tmp_path / "cae.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-6)
    code = loaded.get_layer("encoder").get_layer("code")
    assert isinstance(code, lesson.ContractiveDense) and code.contraction == 0.5


@pytest.mark.every_backend
def test_small_noise_moves_the_code_by_the_jacobian(lesson):
    """For small noise, ||h(x + e) - h(x)|| / ||e|| ~ ||J_h(x)||_F / sqrt(784), per image."""
    keras.utils.set_random_seed(3)
    encoder = lesson.build_encoder(20, 0.1)
    x = np.random.default_rng(1).random((50, 28, 28, 1)).astype("float32")
    ratio, change, size = lesson.code_sensitivity(
        lambda images: encoder.predict(images, verbose=0), x, (1e-3, 0.5), seed=0)
    codes = encoder.predict(x, verbose=0)
    norms = np.sqrt(keras.ops.convert_to_numpy(
        lesson.sigmoid_jacobian_norm_sq(codes, encoder.get_layer("code").kernel)))
    assert ratio[0] == pytest.approx(norms.mean() / math.sqrt(784), rel=0.05)
    assert size[1] == pytest.approx(0.5 * math.sqrt(784), rel=0.05)  # ||e|| ~ sigma * 28
    assert change[1] > change[0]


@pytest.mark.parametrize("argv, message", [
    (["--lambda", "-0.1"], "--lambda: must be a number >= 0, got '-0.1'"),
    (["--lambda", "lots"], "--lambda: must be a number >= 0, got 'lots'"),
    (["--hidden", "-5"], "--hidden: must be a positive integer, got '-5'"),
    (["--binarize", "maybe"], "invalid choice: 'maybe'"),
    (["--learning-rate", "-1"], "--learning-rate: must be a positive number, got '-1'"),
])
def test_bad_values_stop_with_one_line_and_status_2(lesson, tmp_path, capsys, argv, message):
    assert_usage_error(lesson.main, f"{NAME}.py", argv, tmp_path, capsys, message)


def test_tiny_run_contracts_the_code(lesson, tiny, small_mnist_npz):
    out, results = tiny.out, tiny.results
    assert "||J_h(x)||_F" in tiny.stdout
    assert results["train_examples"] == 600 and results["test_examples"] == 200
    assert results["contraction"] == 1.0 and results["binarize"] == "none"
    for label in ("penalized", "baseline"):
        for key in METRIC_KEYS:
            value = results[f"{label}_{key}"]
            assert isinstance(value, float) and math.isfinite(value), (label, key)
        by_level = results[f"{label}_code_change_per_noise_by_level"]
        assert len(by_level) == len(results["noise_levels"])
        assert all(math.isfinite(v) and v > 0 for v in by_level)
    # The penalty shrinks the Jacobian, and so how far the code moves under noise (in this tiny
    # run by about a fifth; the default run shrinks it 2.5-fold).
    assert (results["penalized_mean_jacobian_frobenius"]
            < 0.9 * results["baseline_mean_jacobian_frobenius"])
    assert results["penalized_code_change_per_noise"] < results["baseline_code_change_per_noise"]
    assert_figures(out / "figures", FIGURES)

    # The saved encoders load (the lesson is imported, so its layer is registered) and give the
    # reported Jacobian norms.
    from common.data import load_dataset

    x_test = load_dataset("mnist", path=small_mnist_npz).x_test
    for label, name in (("penalized", "contractive_1"), ("baseline", "contractive_0")):
        keras.models.load_model(out / "models" / f"{name}.keras")
        encoder = keras.models.load_model(out / "models" / f"{name}_encoder.keras")
        codes = encoder.predict(x_test, verbose=0)
        norms = np.sqrt(keras.ops.convert_to_numpy(
            lesson.sigmoid_jacobian_norm_sq(codes, encoder.get_layer("code").kernel)))
        assert float(norms.mean()) == pytest.approx(
            results[f"{label}_mean_jacobian_frobenius"], rel=1e-4)
