"""Noise models for denoising autoencoders (`gaussian`, `masking`, `salt_and_pepper`) on NumPy
arrays, drawn with NumPy on every backend from a seed (an int, or a `numpy.random.Generator`);
and the batches of (noisy, clean) pairs that `fit` reads. See the book, Denoising autoencoder.
"""

import numpy as np


NOISE_MODELS = ("gaussian", "masking", "salt_and_pepper")
# The usual strengths: a standard deviation for gaussian, a fraction of pixels for the others.
DEFAULT_FACTORS = {"gaussian": 0.5, "masking": 0.2, "salt_and_pepper": 0.2}


def gaussian(images, factor, seed):
    """x + factor * eps, eps ~ N(0, 1) per pixel, clipped to [0, 1]."""
    if factor < 0:
        raise ValueError(f"the Gaussian noise factor must be >= 0, got {factor}")
    images = np.asarray(images, np.float32)
    eps = np.random.default_rng(seed).standard_normal(images.shape, dtype=np.float32)
    return np.clip(images + factor * eps, 0.0, 1.0)


def masking(images, factor, seed):
    """Each pixel independently set to 0 with probability `factor`."""
    _check_fraction(factor)
    images = np.asarray(images, np.float32)
    u = np.random.default_rng(seed).random(images.shape, dtype=np.float32)  # U[0, 1) per pixel
    return np.where(u < factor, 0.0, images)


def salt_and_pepper(images, factor, seed):
    """Each pixel independently set to 0 (pepper) with probability factor / 2, to 1 (salt) with
    probability factor / 2, and kept otherwise: one uniform draw decides both."""
    _check_fraction(factor)
    images = np.asarray(images, np.float32)
    u = np.random.default_rng(seed).random(images.shape, dtype=np.float32)
    return np.where(u < factor / 2, 0.0, np.where(u < factor, 1.0, images))


CORRUPT = {"gaussian": gaussian, "masking": masking, "salt_and_pepper": salt_and_pepper}


def add_noise(images, noise, factor, seed):
    """Corrupt `images` with the noise model named `noise` (one of NOISE_MODELS), drawing from
    `seed`: an int, or a `numpy.random.Generator` (drawn from, so its next draws move on)."""
    if noise not in CORRUPT:
        raise ValueError(f"noise must be one of {NOISE_MODELS}, got {noise!r}")
    return CORRUPT[noise](images, factor, seed)


def denoising_datasets(data, batch_size, noise, factor, seed):
    """(train, test, noisy_test): `Batches` of (noisy image, clean image) pairs, with a fresh
    corruption of every training image in every epoch (drawn from the generator that `Batches`
    derives from the seed, the epoch and the batch), and the test images corrupted once
    (seed + 1), so that every epoch and every run is scored on the same noisy images."""
    add_noise(data.x_test[:1], noise, factor, seed)  # a bad noise name or factor fails here
    noisy_test = add_noise(data.x_test, noise, factor, seed + 1)
    corrupt = CORRUPT[noise]

    def corrupted(batch, rng):
        (clean,) = batch
        return corrupt(clean, factor, rng), clean

    from common.batches import Batches  # here, not above: reading the noise names needs no Keras

    train = Batches(data.x_train, batch_size, seed, corrupted)
    test = Batches((noisy_test, data.x_test), batch_size)
    return train, test, noisy_test


def _check_fraction(factor):
    if not 0 <= factor <= 1:
        raise ValueError(f"the fraction of corrupted pixels must be in [0, 1], got {factor}")
