"""The noise models of common/noise.py, and the (noisy, clean) batches: NumPy draws, the same on
every backend."""

import numpy as np
import pytest

from common import noise
from common.data import Dataset

pytestmark = pytest.mark.every_backend

GREY = np.full((64, 28, 28, 1), 0.5, np.float32)  # every pixel 0.5, so any change shows


def test_gaussian_adds_scaled_normal_noise_and_clips_to_the_unit_interval():
    noisy = noise.gaussian(GREY, 0.5, seed=1)
    assert isinstance(noisy, np.ndarray) and noisy.shape == GREY.shape
    assert noisy.dtype == np.float32 and np.all(GREY == 0.5)  # a new array; GREY is untouched
    assert noisy.min() == 0.0 and noisy.max() == 1.0  # 0.5 +- 0.5 * N(0, 1) hits both ends
    # Clipping moves exactly the pixels with |eps| > 1: P(|N(0, 1)| > 1) = 0.3173.
    assert np.mean((noisy == 0) | (noisy == 1)) == pytest.approx(0.3173, abs=0.01)
    inside = noisy[(noisy > 0) & (noisy < 1)]
    # Inside, noisy = 0.5 + 0.5 * eps with eps ~ N(0, 1) truncated to [-1, 1], variance 0.2911.
    assert np.std(inside) == pytest.approx(0.5 * np.sqrt(0.2911), rel=0.02)
    assert np.mean(inside) == pytest.approx(0.5, abs=0.005)


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.5])
def test_masking_zeroes_the_given_fraction_of_pixels(fraction):
    noisy = noise.masking(GREY, fraction, seed=2)
    changed = noisy != GREY
    n = GREY.size
    # Binomial(n, fraction): allow four standard errors.
    assert changed.mean() == pytest.approx(fraction, abs=4 * np.sqrt(fraction * (1 - fraction) / n))
    assert np.all(noisy[changed] == 0.0)


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.5])
def test_salt_and_pepper_sets_the_given_fraction_to_0_or_1_half_each(fraction):
    noisy = noise.salt_and_pepper(GREY, fraction, seed=3)
    n = GREY.size
    for value, share in ((None, fraction), (0.0, fraction / 2), (1.0, fraction / 2)):
        hit = (noisy != GREY) if value is None else (noisy == value)
        assert hit.mean() == pytest.approx(share, abs=4 * np.sqrt(share * (1 - share) / n))
    assert set(np.unique(noisy)) == {0.0, 0.5, 1.0}


@pytest.mark.parametrize("name", noise.NOISE_MODELS)
def test_a_seed_fixes_the_draw_and_another_seed_changes_it(name):
    images = np.random.default_rng(0).random((8, 28, 28, 1)).astype(np.float32)
    first = noise.add_noise(images, name, 0.3, seed=7)
    np.testing.assert_array_equal(first, noise.add_noise(images, name, 0.3, seed=7))
    assert not np.array_equal(first, noise.add_noise(images, name, 0.3, seed=8))
    assert first.dtype == np.float32 and first.min() >= 0.0 and first.max() <= 1.0
    # A generator in place of the seed: default_rng(7) draws what seed 7 draws, and a second
    # corruption from the same generator is a new draw.
    rng = np.random.default_rng(7)
    np.testing.assert_array_equal(noise.add_noise(images, name, 0.3, rng), first)
    assert not np.array_equal(noise.add_noise(images, name, 0.3, rng), first)


def test_bad_names_and_factors_are_refused():
    with pytest.raises(ValueError, match="noise must be one of"):
        noise.add_noise(GREY, "speckle", 0.1, seed=0)
    with pytest.raises(ValueError, match=r"fraction .* must be in \[0, 1\]"):
        noise.masking(GREY, 1.5, seed=0)
    with pytest.raises(ValueError, match=r"fraction .* must be in \[0, 1\]"):
        noise.salt_and_pepper(GREY, -0.1, seed=0)
    with pytest.raises(ValueError, match="must be >= 0"):
        noise.gaussian(GREY, -1.0, seed=0)


def one_epoch(dataset, epoch=0):
    """Epoch `epoch` of a `Batches`, as `fit` reads it (ResumableBackup sets `epoch`)."""
    dataset.epoch = epoch
    noisy, clean = zip(*dataset)
    return np.concatenate(noisy), np.concatenate(clean)


@pytest.mark.parametrize("name", noise.NOISE_MODELS)
def test_pipeline_draws_fresh_noise_every_epoch_and_keeps_the_test_split_fixed(name):
    # Identical training images, so the shuffle cannot hide or fake a change in the noise.
    data = Dataset("mnist", "test", GREY, np.zeros(64, int), GREY[:10], np.zeros(10, int))
    train, test, noisy_test = noise.denoising_datasets(data, batch_size=16, noise=name,
                                                       factor=0.3, seed=5)
    first_noisy, first_clean = one_epoch(train)
    second_noisy, _ = one_epoch(train, 1)
    np.testing.assert_array_equal(first_clean, GREY)      # the targets are the clean images
    assert not np.array_equal(first_noisy, GREY)           # the inputs are corrupted...
    assert not np.array_equal(first_noisy, second_noisy)   # ...afresh in every epoch
    # Within an epoch every batch gets its own draw, not a copy of the first one.
    assert not np.array_equal(first_noisy[:16], first_noisy[16:32])
    # A new pipeline with the same seed repeats the same sequence of draws; one resumed at the
    # second epoch (ResumableBackup sets its epoch) draws what the first pipeline drew there,
    # and each batch is its own draw, whichever batches were read before it.
    rerun = noise.denoising_datasets(data, 16, name, 0.3, seed=5)[0]
    np.testing.assert_array_equal(one_epoch(rerun)[0], first_noisy)
    resumed = noise.denoising_datasets(data, 16, name, 0.3, seed=5)[0]
    np.testing.assert_array_equal(one_epoch(resumed, 1)[0], second_noisy)
    resumed.epoch = 0
    np.testing.assert_array_equal(resumed[3][0], first_noisy[48:64])
    # Another seed, other draws.
    other = noise.denoising_datasets(data, 16, name, 0.3, seed=6)[0]
    assert not np.array_equal(one_epoch(other)[0], first_noisy)
    # The test split: corrupted once with seed + 1, the same in every pass.
    np.testing.assert_array_equal(noisy_test, noise.add_noise(GREY[:10], name, 0.3, seed=6))
    for epoch in range(2):
        test_noisy, test_clean = one_epoch(test, epoch)
        np.testing.assert_array_equal(test_noisy, noisy_test)
        np.testing.assert_array_equal(test_clean, GREY[:10])
