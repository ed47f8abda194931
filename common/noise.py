"""Noise models for denoising autoencoders (`gaussian`, `masking`, `salt_and_pepper`), on NumPy
arrays or tensors, seeded by an int or a seed pair through TensorFlow's stateless random ops; and
the batches of (noisy, clean) pairs that `fit` reads. See the book, Denoising autoencoder.
"""

import functools

import numpy as np
import tensorflow as tf

from common.data import Batches

NOISE_MODELS = ("gaussian", "masking", "salt_and_pepper")
# The usual strengths: a standard deviation for gaussian, a fraction of pixels for the others.
DEFAULT_FACTORS = {"gaussian": 0.5, "masking": 0.2, "salt_and_pepper": 0.2}


def _numpy_in_numpy_out(corrupt):
    """Let a noise function take NumPy arrays or tensors, and an int seed or a seed pair."""

    @functools.wraps(corrupt)
    def wrapper(images, factor, seed):
        result = corrupt(tf.convert_to_tensor(images, tf.float32), float(factor), _seed_pair(seed))
        return result.numpy() if isinstance(images, np.ndarray) else result

    return wrapper


@_numpy_in_numpy_out
def gaussian(images, factor, seed):
    """x + factor * eps, eps ~ N(0, 1) per pixel, clipped to [0, 1]."""
    if factor < 0:
        raise ValueError(f"the Gaussian noise factor must be >= 0, got {factor}")
    eps = tf.random.stateless_normal(tf.shape(images), seed=seed)
    return tf.clip_by_value(images + factor * eps, 0.0, 1.0)


@_numpy_in_numpy_out
def masking(images, factor, seed):
    """Each pixel independently set to 0 with probability `factor`."""
    _check_fraction(factor)
    u = tf.random.stateless_uniform(tf.shape(images), seed=seed)  # u ~ U[0, 1) per pixel
    return tf.where(u < factor, 0.0, images)


@_numpy_in_numpy_out
def salt_and_pepper(images, factor, seed):
    """Each pixel independently set to 0 (pepper) with probability factor / 2, to 1 (salt) with
    probability factor / 2, and kept otherwise: one uniform draw decides both."""
    _check_fraction(factor)
    u = tf.random.stateless_uniform(tf.shape(images), seed=seed)
    return tf.where(u < factor / 2, 0.0, tf.where(u < factor, 1.0, images))


CORRUPT = {"gaussian": gaussian, "masking": masking, "salt_and_pepper": salt_and_pepper}


def add_noise(images, noise, factor, seed):
    """Corrupt `images` with the noise model named `noise` (one of NOISE_MODELS)."""
    if noise not in CORRUPT:
        raise ValueError(f"noise must be one of {NOISE_MODELS}, got {noise!r}")
    return CORRUPT[noise](images, factor, seed)


def denoising_datasets(data, batch_size, noise, factor, seed):
    """(train, test, noisy_test): `Batches` of (noisy image, clean image) pairs, with a fresh
    corruption of every training image in every epoch (drawn from the seed, the epoch and the
    batch), and the test images corrupted once (seed + 1), so that every epoch and every run is
    scored on the same noisy images."""
    add_noise(data.x_test[:1], noise, factor, seed)  # a bad noise name or factor fails here
    noisy_test = add_noise(data.x_test, noise, factor, seed + 1)
    corrupt = CORRUPT[noise]

    def corrupted(batch, rng):
        (clean,) = batch
        return corrupt(clean, factor, rng.integers(2**31, size=2)), clean

    train = Batches(data.x_train, batch_size, seed, corrupted)
    test = Batches((noisy_test, data.x_test), batch_size)
    return train, test, noisy_test


def _check_fraction(factor):
    if not 0 <= factor <= 1:
        raise ValueError(f"the fraction of corrupted pixels must be in [0, 1], got {factor}")


def _seed_pair(seed):
    """An int seed becomes the pair (seed, 0); a pair (e.g. from Dataset.random) is kept."""
    if isinstance(seed, (int, np.integer)):
        return tf.constant([int(seed), 0], tf.int64)
    return tf.cast(seed, tf.int64)
