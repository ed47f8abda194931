"""The batches that `fit`, `evaluate` and `predict` read on every backend: a Keras `PyDataset` of
NumPy arrays whose shuffling and random draws are a function of (seed, epoch, batch), so that a
resumed run reads what the uninterrupted run read. `data.batches` and
`data.autoencoder_datasets` make them; it is a module of its own so that `common.data`, whose
names the command line reads before Keras loads, imports no Keras.
"""

import keras
import numpy as np
from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter


class Batches(keras.utils.PyDataset):
    """A Keras `PyDataset` of batches of NumPy arrays, for `fit`, `evaluate` and `predict` on
    every backend. With a `seed`, epoch e's order and its random draws (the `transform`'s `rng`:
    binarization, noise) are a function of (seed, e, batch) alone: a run resumed after epoch k
    draws what the uninterrupted run drew in epoch k + 1 (`training.ResumableBackup` sets
    `epoch`), and a second model trained on the same `Batches` sees the same epochs. `fit` must
    not reorder the batches (`shuffle=False`): the order is this dataset's own."""

    def __init__(self, arrays, batch_size, seed=None, transform=None):
        super().__init__()
        self.arrays = arrays if isinstance(arrays, tuple) else (arrays,)
        self.batch_size, self.seed, self.transform = int(batch_size), seed, transform
        self.rows, self.epoch = len(self.arrays[0]), 0
        self._order = (None, None)  # (epoch, its permutation of the rows)

    def __len__(self):
        return -(-self.rows // self.batch_size)

    def order(self):
        """This epoch's order of the rows: a permutation drawn from (seed, epoch)."""
        if self.seed is None:
            return np.arange(self.rows)
        if self._order[0] != self.epoch:
            self._order = (self.epoch, np.random.default_rng(
                (self.seed, self.epoch)).permutation(self.rows))
        return self._order[1]

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of {len(self)}")
        rows = self.order()[index * self.batch_size:(index + 1) * self.batch_size]
        batch = tuple(array[rows] for array in self.arrays)
        if self.transform is not None:
            rng = (None if self.seed is None
                   else np.random.default_rng((self.seed, self.epoch, index, 1)))
            return self.transform(batch, rng)
        return batch if len(batch) > 1 else batch[0]

    def on_epoch_end(self):
        self.epoch += 1


if keras.backend.backend() == "tensorflow":
    import ctypes
    import sys

    import tensorflow as tf

    # The batches are made in one of tf.data's threads, and each one allocates and frees about a
    # megabyte of NumPy arrays. glibc gives that thread's freed memory back to the system at
    # once, and the next batch faults it in again: 150,000 page faults per epoch of 60,000
    # images, about a tenth of the epoch on a 2-core Intel Xeon. Keeping 64 MiB at the top of
    # each heap (glibc's M_TOP_PAD) removes them. Where the C library has no mallopt (macOS,
    # musl), nothing is set.
    M_TOP_PAD, TOP_PAD_BYTES = -2, 64 << 20
    _libc = ctypes.CDLL(None) if sys.platform == "linux" else None
    if hasattr(_libc, "mallopt"):
        _libc.mallopt(M_TOP_PAD, TOP_PAD_BYTES)

    _keras_tf_dataset = PyDatasetAdapter.get_tf_dataset

    def _tf_dataset(adapter):
        """What `fit` reads of a `Batches` on TensorFlow: Keras's generator dataset without its
        `prefetch(AUTOTUNE)`. tf.data's autotuning thread made most epochs wait for it, 1 to 2
        seconds (up to a third of an epoch of 60,000 images), as the last epoch's iterator was
        freed; and a prefetch started when Keras makes the next epoch's iterator, at the end of
        an epoch, could read batches before `epoch` says which epoch they belong to. Batches are
        made when the training step asks for them: prefetching them gained nothing on 2 CPU
        cores, where the step keeps both busy."""
        dataset = _keras_tf_dataset(adapter)
        if not isinstance(adapter.py_dataset, Batches) or adapter.enqueuer is not None:
            return dataset
        options = tf.data.Options()
        options.autotune.enabled = False
        return tf.data.Dataset.from_generator(
            adapter._get_iterator, output_signature=dataset.element_spec).with_options(options)

    PyDatasetAdapter.get_tf_dataset = _tf_dataset
