"""The undercomplete and deep autoencoder lesson: PCA, clustering accuracy, flags and errors,
and a tiny run with a short sweep."""

import common  # noqa: F401 - registers the custom objects for load_model
import keras
import numpy as np
import pytest
from sklearn.decomposition import PCA

from common.cli import run
from common.data import load_dataset
from conftest import assert_figures
from conftest import assert_finite_numbers
from conftest import assert_usage_error

NAME = "AutoEncoder"
RESULT_KEYS = ["dataset", "data_source", "train_examples", "test_examples", "epochs",
               "code_dim", "binarize", "sweep", "models", "features",
               "linear_pca_subspace_angle_max_deg", "linear_pca_subspace_angle_mean_deg",
               "compression_curve"]
MODELS = ["pca", "linear", "shallow", "deep"]
REPRESENTATIONS = ["pixels", *MODELS]
FIGURES = ["ae_reconstructions.png", "ae_compression_curve.png"]


@pytest.fixture(scope="module")
def lesson(lessons):
    return lessons[NAME]


@pytest.fixture(scope="module")
def tiny(tiny_autoencoder_sweep):
    return tiny_autoencoder_sweep


@pytest.mark.parametrize("argv, message", [
    (["--code-dim", "0"], "--code-dim: must be a positive integer, got '0'"),
    (["--code-dim", "256"], "--code-dim: must be below 256"),
    (["--learning-rate", "0"], "--learning-rate: must be a positive number, got '0'"),
    (["--binarize", "sometimes"], "invalid choice: 'sometimes'"),
    (["--sweep", "yes"], "unrecognized arguments: yes"),
    (["--epochs", "-1"], "--epochs: must be a positive integer, got '-1'"),
    (["--out", None], "cannot be written"),
])
def test_bad_values_stop_with_one_line_and_status_2(lesson, tmp_path, capsys, argv, message):
    assert_usage_error(lesson.main, f"{NAME}.py", argv, tmp_path, capsys, message)


def test_more_code_units_than_images_stops_before_training(lesson, small_mnist_npz, tmp_path,
                                                           capsys):
    with pytest.raises(SystemExit) as stopped:
        run(lesson.main, ["--data", str(small_mnist_npz), "--limit", "20", "--code-dim", "32",
                          "--out", str(tmp_path)])
    assert stopped.value.code == 2
    assert "--code-dim 32 is larger than the number" in capsys.readouterr().err.splitlines()[-1]
    assert not any(tmp_path.iterdir())  # checked before any folder is created


def test_linear_autoencoder_finds_the_pca_subspace(lesson, small_mnist_npz):
    # A tiny problem: 600 real digits, a code of 3 numbers, 600 Adam steps.
    x = load_dataset("mnist", path=small_mnist_npz).x_train
    flat = x.reshape(len(x), -1)
    pca = PCA(n_components=3).fit(flat)
    pca_mse = np.mean((pca.inverse_transform(pca.transform(flat)) - flat) ** 2)

    keras.utils.set_random_seed(0)
    encoder, decoder, autoencoder = lesson.build_linear(code_dim=3)
    autoencoder.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    autoencoder.fit(x, x, batch_size=64, epochs=60, verbose=0)
    scores = lesson.reconstruction_scores(x, images=autoencoder.predict(x, verbose=0))
    # PCA is the best rank-3 linear map: the autoencoder gets within 1% of it, not below it.
    assert pca_mse * 0.999 <= scores["test_mse_per_pixel"] <= pca_mse * 1.01
    angles = lesson.pca_subspace_angles(decoder, pca)
    assert angles.shape == (3,) and angles.max() < 15.0 and angles.mean() < 6.0  # degrees
    # An untrained decoder spans an unrelated subspace: nearly orthogonal in 784 dimensions.
    _, fresh_decoder, _ = lesson.build_linear(code_dim=3)
    assert lesson.pca_subspace_angles(fresh_decoder, pca).min() > 60.0


def test_reconstruction_scores_by_hand(lesson):
    targets = np.array([[1.0, 0.0], [0.0, 1.0]], "float32")
    logits = np.array([[0.0, 0.0], [np.log(3.0), 0.0]], "float32")  # sigmoid: 0.5 and 0.75
    scores = lesson.reconstruction_scores(targets, logits=logits)
    assert scores["test_mse_per_pixel"] == pytest.approx((0.25 * 3 + 0.75**2) / 4)
    # per image: -log 0.5 - log 0.5 and -log(1 - 0.75) - log 0.5; averaged over the two images
    assert scores["test_bce_nats"] == pytest.approx(
        (2 * np.log(2) + np.log(4) + np.log(2)) / 2, rel=1e-5)
    # x_hat outside [0, 1] is clipped to [CLIP, 1 - CLIP] for the cross-entropy only.
    images = np.array([[1.2, -0.1]], "float32")
    scores = lesson.reconstruction_scores(np.array([[1.0, 0.0]], "float32"), images=images)
    assert scores["test_mse_per_pixel"] == pytest.approx((0.04 + 0.01) / 2)
    assert scores["test_bce_nats"] == pytest.approx(-2 * np.log(1 - lesson.CLIP),
                                                              rel=1e-3)


def test_clustering_accuracy_uses_the_best_one_to_one_matching(lesson):
    labels = np.array([0, 0, 1, 1, 2, 2, 2])
    assert lesson.clustering_accuracy(labels, np.array([5, 5, 3, 3, 9, 9, 9])) == 1.0
    # Cluster 1 holds two 0s and a 1, cluster 0 the other 1 and three 2s. The best map is
    # 1 -> 0, 0 -> 2: 5 of 7 right. A cluster is matched to one label only.
    assert lesson.clustering_accuracy(labels, np.array([1, 1, 1, 0, 0, 0, 0])) == \
        pytest.approx(5 / 7)
    assert lesson.clustering_accuracy(labels, np.zeros(7, int)) == pytest.approx(3 / 7)


def test_tiny_run_scores_every_model_and_its_codes(lesson, tiny, small_mnist_npz):
    out, results = tiny.out, tiny.results
    assert "linear AE vs PCA subspace" in tiny.stdout
    assert_finite_numbers(results)
    for key in RESULT_KEYS:
        assert key in results, key
    assert results["train_examples"] == 600 and results["test_examples"] == 200
    assert sorted(results["models"]) == sorted(MODELS)
    for name in MODELS:
        assert {"test_mse_per_pixel", "test_bce_nats"} <= set(results["models"][name])
    assert sorted(results["features"]) == sorted(REPRESENTATIONS)
    for name in REPRESENTATIONS:
        scores = results["features"][name]
        assert 0 <= scores["kmeans_nmi"] <= 1 and scores["kmeans_accuracy"] >= 0.1
        assert scores["probe_accuracy"] > 0.25  # well above chance (0.1), even after 2 epochs
    assert results["features"]["pixels"]["dim"] == 784 and results["features"]["deep"]["dim"] == 4
    # PCA at the sizes of the (patched) sweep and --code-dim; the autoencoders at both.
    assert list(results["compression_curve"]["pca"]) == ["2", "4"]
    assert list(results["compression_curve"]["deep"]) == ["2", "4"]
    pca = results["compression_curve"]["pca"]
    assert pca["2"] > pca["4"] == pytest.approx(results["models"]["pca"]["test_mse_per_pixel"])
    assert_figures(out / "figures", FIGURES)

    # The saved models load after `import common` and reproduce the reported test error.
    dataset = load_dataset("mnist", path=small_mnist_npz)
    for name in ("linear", "shallow", "deep"):
        model = keras.models.load_model(out / "models" / f"ae_{name}.keras")
        output = model.predict(dataset.x_test, verbose=0)
        scores = (lesson.reconstruction_scores(dataset.x_test, images=output) if name == "linear"
                  else lesson.reconstruction_scores(dataset.x_test, logits=output))
        assert scores["test_mse_per_pixel"] == pytest.approx(
            results["models"][name]["test_mse_per_pixel"], rel=1e-4), name
        assert model.get_layer(f"{name}_encoder").output_shape == (None, 4)
