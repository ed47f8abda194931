"""The conditional VAE lesson: labels in, labels obeyed, the judge, and a tiny run."""

import keras
import numpy as np
import pytest

from common.data import autoencoder_datasets
from common.data import load_dataset
from common.metrics import evaluate_elbo
from conftest import assert_figures
from conftest import assert_finite_numbers
from conftest import assert_usage_error

NAME = "ConditionalVAE"
RESULT_KEYS = ["dataset", "data_source", "train_examples", "test_examples", "arch", "epochs",
               "latent_dim", "beta", "binarize", "test_neg_elbo_nats",
               "test_reconstruction_nats", "test_kl_nats", "test_nll_iwae_nats", "iwae_samples",
               "active_units", "conditional_accuracy", "conditional_accuracy_per_class",
               "samples_per_class", "classifier_test_accuracy", "classifier_epochs",
               "train_seconds", "seconds_per_epoch", "classifier_train_seconds"]
FIGURES = ["cvae_digits.png", "cvae_style_transfer.png", "cvae_latent_scatter.png"]
MODELS = ["cvae.keras", "cvae_encoder.keras", "cvae_decoder.keras", "digit_classifier.keras"]


@pytest.fixture(scope="module")
def cvae_lesson(lessons):
    return lessons[NAME]


@pytest.fixture(scope="module")
def small_data(small_mnist_npz):
    return load_dataset("mnist", path=small_mnist_npz)


@pytest.fixture(scope="module")
def tiny(tiny_run):
    return tiny_run(NAME)


@pytest.mark.parametrize("argv, message", [
    (["--latent-dim", "0"], "--latent-dim: must be a positive integer, got '0'"),
    (["--beta", "-1"], "--beta: must be a number >= 0, got '-1'"),
    (["--binarize", "sometimes"], "invalid choice: 'sometimes'"),
    (["--arch", "rnn"], "invalid choice: 'rnn'"),
    (["--learning-rate", "0"], "--learning-rate: must be a positive number, got '0'"),
    (["--iwae-samples", "0"], "--iwae-samples: must be a positive integer, got '0'"),
    (["--samples-per-class", "0"], "--samples-per-class: must be a positive integer, got '0'"),
    (["--classifier-epochs", "two"], "--classifier-epochs: must be a positive integer, got 'two'"),
    (["--out", None], "cannot be written"),
])
def test_bad_values_stop_with_one_line_and_status_2(cvae_lesson, tmp_path, capsys, argv, message):
    assert_usage_error(cvae_lesson.main, "ConditionalVAE.py", argv, tmp_path, capsys, message)


def test_one_hot_labels_match_the_training_pipeline(cvae_lesson, small_data):
    np.testing.assert_array_equal(cvae_lesson.one_hot([3, 0, 9]),
                                  np.eye(10, dtype=np.float32)[[3, 0, 9]])
    assert cvae_lesson.one_hot(np.array([1, 2])).dtype == np.float32
    # What the model is trained on and what the script evaluates with are the same encoding.
    _, test_ds, _ = autoencoder_datasets(small_data, 50, "dynamic", 0, with_labels=True)
    (images, labels), targets = next(iter(test_ds))
    assert images.shape == (50, 28, 28, 1) and labels.shape == (50, 10)
    np.testing.assert_array_equal(labels, cvae_lesson.one_hot(small_data.y_test[:50]))
    np.testing.assert_array_equal(images, targets)


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_both_networks_take_the_label(cvae_lesson, arch):
    keras.utils.set_random_seed(0)
    encoder, decoder, cvae = cvae_lesson.build_cvae(arch, 3, beta=1.0, seed=0, summary=False)
    assert [tuple(t.shape) for t in encoder.inputs] == [(None, 28, 28, 1), (None, 10)]
    assert [tuple(t.shape) for t in encoder.outputs] == [(None, 3), (None, 3)]
    assert [tuple(t.shape) for t in decoder.inputs] == [(None, 3), (None, 10)]
    assert decoder.output_shape == (None, 28, 28, 1)
    assert cvae.output_shape == (None, 28, 28, 1) and len(cvae.inputs) == 2

    images = np.random.default_rng(0).random((2, 28, 28, 1)).astype("float32")
    as_4 = keras.ops.convert_to_numpy(encoder([images, cvae_lesson.one_hot([4, 4])])[0])
    as_7 = keras.ops.convert_to_numpy(encoder([images, cvae_lesson.one_hot([7, 7])])[0])
    assert not np.allclose(as_4, as_7)  # the same images, another label: another posterior
    z = np.zeros((2, 3), np.float32)
    decoded = keras.ops.convert_to_numpy(decoder([z, cvae_lesson.one_hot([4, 7])]))
    assert not np.allclose(decoded[0], decoded[1])  # the same z, two labels: two images


def test_sampling_and_loss_are_the_lessons_own_under_their_saved_names(cvae_lesson):
    # Models saved before the lesson had its own Sampling and loss name these: they still load.
    assert keras.saving.get_registered_name(cvae_lesson.Sampling) == "autoencoders>Sampling"
    assert keras.saving.get_registered_name(cvae_lesson.bernoulli_nll) == (
        "autoencoders>bernoulli_nll")
    clone = cvae_lesson.Sampling.from_config(
        cvae_lesson.Sampling(beta=2.5, seed=3, name="sampling").get_config())
    assert (clone.beta, clone.seed, clone.penalty_name) == (2.5, 3, "kl_loss")
    # It adds beta times the closed-form KL, and keeps the unweighted KL for the log.
    z_mean = np.array([[0.5, -1.0], [0.0, 2.0]], "float32")
    z_log_var = np.array([[0.0, np.log(4.0)], [np.log(0.25), 0.0]], "float32")
    layer = cvae_lesson.Sampling(beta=2.0, seed=1)
    layer([z_mean, z_log_var])
    var = np.exp(z_log_var.astype(np.float64))
    kl = 0.5 * np.sum(var + z_mean**2 - 1 - np.log(var), axis=1)
    assert float(layer.last_penalty) == pytest.approx(kl.mean(), rel=1e-5)
    assert float(layer.losses[0]) == pytest.approx(2.0 * kl.mean(), rel=1e-5)


def test_history_shows_loss_reconstruction_and_kl(cvae_lesson):
    _, _, cvae = cvae_lesson.build_cvae("mlp", 2, beta=3.0, seed=0, summary=False)
    cvae_lesson.compile_cvae(cvae, 1e-3)
    x = (np.random.default_rng(0).random((64, 28, 28, 1)) < 0.2).astype("float32")
    y = cvae_lesson.one_hot(np.arange(64) % 10)
    history = cvae.fit([x, y], x, validation_data=([x, y], x), batch_size=32, epochs=1,
                       verbose=0).history
    for prefix in ("", "val_"):
        for name in ("loss", "reconstruction_loss", "kl_loss"):
            assert f"{prefix}{name}" in history
        # The logged loss is reconstruction + beta * KL (batches of equal size).
        assert history[f"{prefix}loss"][0] == pytest.approx(
            history[f"{prefix}reconstruction_loss"][0] + 3.0 * history[f"{prefix}kl_loss"][0],
            rel=1e-4)


def nearest_mean_classifier(means):
    """Class scores = minus the squared distance to each class-mean image."""
    flat = means.reshape(len(means), -1)

    def classify(images):
        x = images.reshape(len(images), -1)
        return -((x[:, None, :] - flat[None]) ** 2).sum(-1)

    return classify


def test_conditional_accuracy_counts_per_asked_class(cvae_lesson, small_data):
    means = np.stack([small_data.x_train[small_data.y_train == c].mean(0) for c in range(10)])
    classify = nearest_mean_classifier(means)
    seen = {}

    def obeys_even_labels_only(z, labels):
        seen["z"], seen["labels"] = z, labels
        drawn = np.where(labels % 2 == 0, labels, (labels + 1) % 10)
        return means[drawn]

    accuracy, per_class = cvae_lesson.conditional_accuracy(obeys_even_labels_only, classify,
                                                           latent_dim=4, per_class=30, seed=1)
    assert accuracy == 0.5
    np.testing.assert_array_equal(per_class, [1, 0] * 5)
    np.testing.assert_array_equal(seen["labels"], np.repeat(np.arange(10), 30))
    assert seen["z"].shape == (300, 4) and seen["z"].dtype == np.float32
    assert abs(seen["z"].mean()) < 0.2 and abs(seen["z"].std() - 1) < 0.1  # z ~ N(0, I)
    again, _ = cvae_lesson.conditional_accuracy(lambda z, labels: means[(labels + 1) % 10],
                                                classify, latent_dim=4, per_class=30, seed=1)
    assert again == 0.0


def test_conditional_accuracy_of_fake_generators_with_a_trained_classifier(cvae_lesson,
                                                                           small_data):
    keras.utils.set_random_seed(0)
    classifier = cvae_lesson.build_judge(seed=0)
    classifier.compile(optimizer="adam",
                       loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    classifier.fit(small_data.x_train, small_data.y_train, batch_size=32, epochs=8, verbose=0)

    def classify(images):
        return classifier.predict(images, batch_size=500, verbose=0)

    means = np.stack([small_data.x_train[small_data.y_train == c].mean(0) for c in range(10)])
    obedient, _ = cvae_lesson.conditional_accuracy(lambda z, labels: means[labels], classify,
                                                   latent_dim=2, per_class=100)
    assert obedient >= 0.9

    def ignores_the_label(z, labels):  # real test digits, chosen by z alone
        return small_data.x_test[(np.abs(z[:, 0]) * 1e6).astype(int) % len(small_data.x_test)]

    deaf, per_class = cvae_lesson.conditional_accuracy(ignores_the_label, classify,
                                                       latent_dim=2, per_class=100)
    assert abs(deaf - 0.1) < 0.04
    assert per_class.shape == (10,) and np.all(per_class < 0.3)


def test_tiny_run_scores_labels_and_likelihoods(cvae_lesson, tiny, small_data):
    out, results = tiny.out, tiny.results
    assert "conditional accuracy" in tiny.stdout and "classifier test accuracy" in tiny.stdout
    assert_finite_numbers(results)
    for key in RESULT_KEYS:
        assert key in results, key
    assert results["train_examples"] == 600 and results["test_examples"] == 200
    assert list(results["conditional_accuracy_per_class"]) == [str(d) for d in range(10)]
    assert results["conditional_accuracy"] == pytest.approx(
        np.mean(list(results["conditional_accuracy_per_class"].values())))
    assert results["test_nll_iwae_nats"] <= results["test_neg_elbo_nats"]
    assert_figures(out / "figures", FIGURES)

    models = {name: keras.models.load_model(out / "models" / name) for name in MODELS}
    encoder, decoder = models["cvae_encoder.keras"], models["cvae_decoder.keras"]
    classifier = models["digit_classifier.keras"]

    # The saved models give back the reported numbers: the conditional ELBO (each test image
    # with its own label) ...
    _, _, x_test = autoencoder_datasets(small_data, 64, results["binarize"], results["seed"])
    y_test = cvae_lesson.one_hot(small_data.y_test)
    z_mean, z_log_var = encoder.predict([x_test, y_test], verbose=0)
    scores = evaluate_elbo(x_test, z_mean, z_log_var,
                           lambda z, rows: decoder.predict([z, y_test[rows]], verbose=0),
                           samples=results["iwae_samples"], seed=results["seed"])
    assert scores["neg_elbo"] == pytest.approx(results["test_neg_elbo_nats"], rel=1e-3)

    # ... the judge's accuracy on the real test digits, and the conditional accuracy.
    def classify(images):
        return classifier.predict(images, verbose=0)

    def generate(z, labels):
        logits = decoder.predict([z, cvae_lesson.one_hot(labels)], verbose=0)
        return keras.ops.convert_to_numpy(keras.ops.sigmoid(logits))

    judged = np.argmax(classify(small_data.x_test), -1)
    assert np.mean(judged == small_data.y_test) == pytest.approx(
        results["classifier_test_accuracy"])
    accuracy, _ = cvae_lesson.conditional_accuracy(generate, classify, results["latent_dim"],
                                                   results["samples_per_class"],
                                                   seed=results["seed"])
    assert accuracy == pytest.approx(results["conditional_accuracy"])

    # The trained decoder draws a different image for each label from the same z.
    z = np.zeros((10, results["latent_dim"]), np.float32)
    digits = generate(z, np.arange(10)).reshape(10, -1)
    distances = np.abs(digits[:, None] - digits[None]).mean(-1)
    assert np.all(distances[~np.eye(10, dtype=bool)] > 0.01)
