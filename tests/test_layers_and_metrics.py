"""The math: closed-form KL, the VAE lesson's Sampling layer, the Bernoulli loss, the ELBO and IWAE bounds, and
the penalties logged by PenalizedModel. Backend-neutral: tests/test_backends.py also runs these on
JAX and on PyTorch."""

import math

import common  # noqa: F401 - registers the custom objects
import keras
import numpy as np
import pytest

from common.layers import PenalizedModel
from common.losses import bernoulli_nll
from common.metrics import active_units
from common.metrics import evaluate_elbo

from conftest import import_lesson

pytestmark = pytest.mark.every_backend
Sampling = import_lesson("VariationalAutoEncoder_tf2").Sampling


def reconstruction_metric():
    return keras.metrics.MeanMetricWrapper(bernoulli_nll, name="reconstruction_loss")


def test_closed_form_kl_matches_monte_carlo():
    rng = np.random.default_rng(0)
    mu = rng.normal(size=(3, 4))
    log_var = rng.normal(scale=0.7, size=(3, 4))
    # KL(q || p) = E_q[log q(z) - log p(z)], estimated with 400,000 draws per example.
    eps = rng.standard_normal((400_000, 3, 4))
    z = mu + np.exp(0.5 * log_var) * eps
    log_q = -0.5 * (eps**2 + log_var + math.log(2 * math.pi))
    log_p = -0.5 * (z**2 + math.log(2 * math.pi))
    monte_carlo = (log_q - log_p).sum(axis=-1).mean(axis=0)
    closed_keras = kl(mu, log_var)
    np.testing.assert_allclose(closed_keras, monte_carlo, atol=0.02)


def kl(mu, log_var):
    """The Sampling layer's closed-form KL of each row, on tensors of the backend (float32)."""
    layer, rows = Sampling(seed=0), []
    for m, v in zip(np.asarray(mu, "float32"), np.asarray(log_var, "float32")):
        layer([m[None], v[None]])
        rows.append(float(keras.ops.convert_to_numpy(layer.last_penalty)))
    return np.array(rows)


def test_kl_is_zero_only_at_the_prior():
    assert kl(np.zeros((1, 3)), np.zeros((1, 3)))[0] == 0.0
    assert kl(np.full((1, 3), 0.1), np.zeros((1, 3)))[0] > 0.0


def test_sampling_draws_have_the_posterior_mean_and_variance():
    mu = np.array([1.5, -2.0, 0.0], np.float32)
    log_var = np.array([0.0, np.log(0.25), np.log(4.0)], np.float32)
    n = 50_000
    layer = Sampling(seed=1)
    z = keras.ops.convert_to_numpy(layer([np.tile(mu, (n, 1)), np.tile(log_var, (n, 1))]))
    standard_error = np.sqrt(np.exp(log_var) / n)
    assert np.all(np.abs(z.mean(axis=0) - mu) < 5 * standard_error)
    np.testing.assert_allclose(z.var(axis=0), np.exp(log_var), rtol=0.03)


def test_sampling_adds_beta_times_the_batch_mean_kl():
    mu = np.array([[0.5, -1.0], [0.0, 2.0]], np.float32)
    log_var = np.array([[0.0, -1.0], [1.0, 0.5]], np.float32)
    layer = Sampling(beta=4.0, seed=0)
    layer([mu, log_var])
    expected = 4.0 * kl(mu, log_var).mean()
    assert len(layer.losses) == 1
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.losses[0]), expected, rtol=1e-5)


def test_sampling_is_reproducible_with_a_seed():
    inputs = [np.zeros((5, 3), np.float32), np.zeros((5, 3), np.float32)]
    first = keras.ops.convert_to_numpy(Sampling(seed=7)(inputs))
    again = keras.ops.convert_to_numpy(Sampling(seed=7)(inputs))
    other = keras.ops.convert_to_numpy(Sampling(seed=8)(inputs))
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


def test_sampling_config_round_trip():
    layer = Sampling(beta=2.5, seed=3, name="sampling")
    clone = Sampling.from_config(layer.get_config())
    assert (clone.beta, clone.seed, clone.name) == (2.5, 3, "sampling")


def test_bernoulli_nll_is_summed_over_pixels_from_logits():
    x = np.array([[[1.0, 0.0], [1.0, 1.0]]], np.float32)[..., None]   # (1, 2, 2, 1)
    logits = np.array([[[2.0, -1.0], [0.0, 30.0]]], np.float32)[..., None]
    # -log Bernoulli(x; sigmoid(l)) = softplus(l) - x * l, per pixel
    by_hand = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0))
               + math.log(2.0) + math.log1p(math.exp(-30.0)))
    value = keras.ops.convert_to_numpy(bernoulli_nll(x, logits))
    assert value.shape == (1,)
    np.testing.assert_allclose(value[0], by_hand, rtol=1e-5)


def test_elbo_of_a_known_tiny_case():
    # One example, two pixels x = (1, 0); q(z|x) = N(0.5, 0.8); a decoder that ignores z and
    # always returns logits (ln 3, 0), i.e. p(x_1 = 1) = 3/4 and p(x_2 = 1) = 1/2.
    x = np.array([[1.0, 0.0]])
    z_mean = np.array([[0.5]])
    # (q's variance must exceed half the prior's, or the weights p(z)/q(z) have infinite variance
    # and the IWAE estimate below converges too slowly to test.)
    z_log_var = np.log(np.array([[0.8]]))
    logits = np.array([math.log(3.0), 0.0])

    def decode(z, rows):
        return np.tile(logits, (len(z), 1))

    scores = evaluate_elbo(x, z_mean, z_log_var, decode, samples=20_000, seed=0)
    reconstruction = -(math.log(3 / 4) + math.log(1 / 2))
    kl = -0.5 * (1 + math.log(0.8) - 0.5**2 - 0.8)
    assert scores["reconstruction"] == pytest.approx(reconstruction, rel=1e-6)  # float32
    assert scores["kl"] == pytest.approx(kl, rel=1e-9)
    assert scores["neg_elbo"] == pytest.approx(reconstruction + kl, rel=1e-6)
    # p(x|z) does not depend on z, so log p(x) = log p(x|z) exactly, and the IWAE bound
    # converges to it: the KL gap disappears as the number of samples grows.
    assert scores["nll_iwae"] == pytest.approx(reconstruction, abs=0.02)


def test_iwae_bound_is_tighter_than_the_elbo():
    rng = np.random.default_rng(1)
    x = (rng.random((20, 6)) < 0.5).astype(float)
    weights = rng.normal(size=(2, 6))
    z_mean, z_log_var = rng.normal(size=(20, 2)), rng.normal(scale=0.3, size=(20, 2))
    scores = evaluate_elbo(x, z_mean, z_log_var, lambda z, rows: z @ weights, samples=50)
    assert scores["nll_iwae"] < scores["neg_elbo"]


def test_active_units_counts_dimensions_whose_mean_varies():
    rng = np.random.default_rng(0)
    z_mean = np.stack([rng.normal(size=1000), 0.05 * rng.normal(size=1000),
                       np.full(1000, 3.0)], axis=1)   # variances 1, 0.0025, 0
    assert active_units(z_mean) == 1


def test_penalized_model_logs_the_unweighted_kl_beside_the_loss(tmp_path):
    """`kl_loss` and `val_kl_loss` come from the model's compute_loss on every backend, and the
    model saves and loads as the registered class."""
    keras.utils.set_random_seed(0)
    images = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="relu")(images)
    z_mean, z_log_var = keras.layers.Dense(2)(hidden), keras.layers.Dense(2)(hidden)
    z = Sampling(beta=3.0, seed=0, name="sampling")([z_mean, z_log_var])
    model = PenalizedModel(images, keras.layers.Dense(6)(z), name="vae")
    model.compile(optimizer="adam", loss=bernoulli_nll, metrics=[reconstruction_metric()])
    x = (np.random.default_rng(0).random((32, 6)) < 0.5).astype("float32")
    history = model.fit(x, x, validation_data=(x, x), batch_size=32, epochs=2, verbose=0).history
    assert len(history["kl_loss"]) == len(history["val_kl_loss"]) == 2
    assert history["kl_loss"][0] > 0 and history["kl_loss"][1] != history["kl_loss"][0]
    # One batch: loss = reconstruction + beta * KL, exactly.
    scores = model.evaluate(x, x, batch_size=32, verbose=0, return_dict=True)
    assert scores["loss"] == pytest.approx(
        scores["reconstruction_loss"] + 3.0 * scores["kl_loss"], rel=1e-5)

    model.save(tmp_path / "vae.keras")
    loaded = keras.models.load_model(tmp_path / "vae.keras")
    assert type(loaded) is PenalizedModel
    assert [t.name for t in loaded.penalty_trackers] == ["kl_loss"]


class Scaled(keras.layers.Layer):
    """A penalty layer: adds weight * mean(x^2) and logs mean(x^2) under its own name."""

    def __init__(self, penalty_name, weight, **kwargs):
        super().__init__(**kwargs)
        self.penalty_name, self.weight = penalty_name, weight

    def call(self, x):
        self.last_penalty = keras.ops.mean(keras.ops.square(x))
        self.add_loss(self.weight * self.last_penalty)
        return x


def test_penalized_model_logs_every_penalty_layer_nested_ones_included():
    inputs = keras.Input((3,))
    inner_in = keras.Input((3,))
    inner = keras.Model(inner_in, Scaled("second", 1.0)(keras.layers.Rescaling(2.0)(inner_in)),
                        name="inner")
    outputs = inner(Scaled("first", 1.0)(inputs))
    model = PenalizedModel(inputs, outputs, name="two")
    model.compile(optimizer="sgd", loss="mse")
    x = np.ones((4, 3), "float32")
    scores = model.evaluate(x, x, batch_size=4, verbose=0, return_dict=True)
    assert scores["first"] == pytest.approx(1.0) and scores["second"] == pytest.approx(4.0)


def test_steps_run_as_this_backend_runs_them_and_save_portably():
    """jax.jit on JAX only: XLA on TensorFlow would change its kernels, and on PyTorch it is
    slower (torch.compile), so both run without; several steps per call except on PyTorch."""
    from common import runtime, training

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    model.compile(optimizer="sgd", loss="mse", jit_compile="auto")
    training.set_execution(model)
    assert model.jit_compile is (runtime.BACKEND == "jax")
    expected = 1 if runtime.BACKEND == "torch" else training.STEPS_PER_EXECUTION
    assert model.steps_per_execution == expected
    saved = model.get_compile_config()
    assert saved["jit_compile"] is False and saved["steps_per_execution"] == 1
