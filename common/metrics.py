"""Held-out metrics for latent-variable models, in nats per example: the negative ELBO (its KL in
closed form), the IWAE estimate of -log p(x) (Burda et al.), reconstruction errors, active units
and a linear probe. See the book, the VAE lesson's Evaluation.
"""

import math

import keras
import numpy as np
from keras import ops

from common.losses import bernoulli_nll

LOG_2PI = math.log(2.0 * math.pi)
POINTS_PER_CALL = 10_000  # latent points decoded at once: (10,000, 784) logits, 31 MB

# log p(x | z) of 10,000 points is 8 million Bernoulli terms: on JAX one compiled call (run
# eagerly, its operations made the VAE's evaluation of its two models take 4.2 s instead of 2.3, in
# a profile); as it is on the other backends.
_bernoulli_nll = bernoulli_nll
if keras.backend.backend() == "jax":
    import jax

    _bernoulli_nll = jax.jit(bernoulli_nll)


def evaluate_elbo(x, z_mean, z_log_var, decode_logits, samples=100, seed=0, chunk=None):
    """Negative ELBO, its two terms and the k-sample IWAE estimate of -log p(x), in nats.

    x: (N, ...) targets in [0, 1]; z_mean, z_log_var: (N, d). decode_logits(z, rows) maps latent
    points z (M, d), drawn for the examples x[rows], to pixel logits (M, ...). `chunk` examples
    are decoded per call: by default 100, fewer for k > 100 so that a call decodes at most
    POINTS_PER_CALL points (the numbers do not depend on the chunk).
    """
    chunk = chunk or min(100, max(1, POINTS_PER_CALL // samples))
    rng = np.random.default_rng(seed)
    n, d = z_mean.shape
    x = x.reshape(n, -1).astype(np.float32)
    reconstruction = np.empty(n)
    log_marginal = np.empty(n)
    for start in range(0, n, chunk):
        rows = np.arange(start, min(start + chunk, n))
        mu = z_mean[rows, None, :].astype(np.float64)       # (c, 1, d)
        log_var = z_log_var[rows, None, :].astype(np.float64)
        eps = rng.standard_normal((len(rows), samples, d))  # (c, k, d)
        z = mu + np.exp(0.5 * log_var) * eps
        repeated = np.repeat(rows, samples)                 # the example behind each z
        logits = decode_logits(z.reshape(-1, d).astype(np.float32), repeated)
        # log p(x | z), summed over pixels from the logits (the training loss, negated)
        logits = ops.cast(ops.reshape(logits, (len(repeated), -1)), "float32")
        nll = _bernoulli_nll(ops.convert_to_tensor(x[repeated]), logits)
        log_px_z = -ops.convert_to_numpy(nll).astype(np.float64).reshape(len(rows), samples)
        log_pz = -0.5 * np.sum(z**2 + LOG_2PI, axis=-1)
        log_qz_x = -0.5 * np.sum(eps**2 + log_var + LOG_2PI, axis=-1)
        log_w = log_px_z + log_pz - log_qz_x
        reconstruction[rows] = -log_px_z.mean(axis=1)
        log_marginal[rows] = _log_mean_exp(log_w, axis=1)
    # The closed form of `kl_divergence`, in NumPy's float64 (on every backend: JAX computes no
    # float64 unless told to)
    mu, log_var = z_mean.astype(np.float64), z_log_var.astype(np.float64)
    kl = -0.5 * np.sum(1.0 + log_var - mu**2 - np.exp(log_var), axis=-1)
    return {
        "neg_elbo": float(np.mean(reconstruction + kl)),
        "reconstruction": float(np.mean(reconstruction)),
        "kl": float(np.mean(kl)),
        "nll_iwae": float(-np.mean(log_marginal)),
    }


def reconstruction_errors(targets, logits):
    """Reconstruction errors of pixel logits, averaged over the images: `test_bce_nats`, the
    binary cross-entropy summed over the pixels, and `test_mse_per_pixel`, of sigmoid(logits)."""
    targets = np.asarray(targets, np.float32)
    bce = ops.convert_to_numpy(bernoulli_nll(targets, ops.convert_to_tensor(logits, "float32")))
    images = ops.convert_to_numpy(ops.sigmoid(ops.convert_to_tensor(logits, "float32")))
    return {"test_bce_nats": float(np.mean(bce)),
            "test_mse_per_pixel": float(np.mean((images - targets) ** 2))}


def active_units(z_mean, threshold=0.01):
    """Latent dimensions whose posterior mean varies over the data, Var_x(E_q[z_u | x]) > 0.01
    (Burda et al., 2016); the others have collapsed to the prior."""
    return int(np.sum(np.var(z_mean, axis=0) > threshold))


def linear_probe_accuracy(train_features, train_labels, test_features, test_labels,
                          max_iter=500):
    """A linear probe: a logistic regression on standardised features, fitted on the training
    features and scored by its accuracy on the test features, which it never saw.

    Its BLAS runs on one thread: beside the backend's threads, the small products of each of its
    iterations ran 7 to 60 times slower on two threads than on one (2 loaded CPU cores)."""
    from sklearn import linear_model, pipeline, preprocessing
    from threadpoolctl import threadpool_limits

    probe = pipeline.make_pipeline(preprocessing.StandardScaler(),
                                   linear_model.LogisticRegression(max_iter=max_iter))
    with threadpool_limits(1):
        probe.fit(np.asarray(train_features, np.float64), train_labels)
        return float(probe.score(np.asarray(test_features, np.float64), test_labels))


def _log_mean_exp(values, axis):
    """log(mean(exp(values))) along `axis`, shifted by the maximum so nothing overflows."""
    top = np.max(values, axis=axis, keepdims=True)
    return np.squeeze(top, axis) + np.log(np.mean(np.exp(values - top), axis=axis))
