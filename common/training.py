"""Training plumbing shared by the lessons: one `compile`, one `fit`, one `predict`.

`compile` gives every model the same optimizer (Adam) and throughput settings. `predict` runs a
model over NumPy arrays, batch by batch. And `fit` resumes after a kill, stops at divergence,
times itself, and with --tensorboard logs for TensorBoard:

`fit(model, train, epochs=..., backup_dir=...)` is `model.fit` with two Keras callbacks:

- `ResumableBackup`, a `keras.callbacks.BackupAndRestore` whose backups survive a kill at any
  instant. After every epoch it writes the weights and optimizer state (`.weights.h5`) and the
  training state (epoch, history, seconds per epoch) into a new folder `epoch-NNNNN`, under a
  temporary name that is renamed when complete; the previous epoch's folder is kept until then.
  On a rerun it restores the newest folder that reads back whole; one that does not is reported
  in a line and kept aside (renamed `<folder>.unreadable-epoch-NNNNN`, never deleted). It keeps
  its backups when training ends: the lesson discards them once its results, models and figures
  are written, so no finished epoch is lost before that. `backup_dir` is a path, or a lesson's
  `outputs.Checkpoint`, whose folder is named for the run's settings, data and the model's
  architecture, so that a backup is only ever resumed by the run that made it.
- `StopOnDivergence`, a `keras.callbacks.TerminateOnNaN` that raises `Diverged` (naming the model
  and the epoch) at the first NaN or infinite loss, or a loss that rises to EXPLOSION times the
  loss of the model before its first step, before a bad state can be backed up.

So a rerun of the same command resumes each model from its last finished epoch; a model that had
finished is restored and not trained again; asking for fewer epochs than were finished evaluates
the model as it was restored, and says so.
"""

import json
import math
import pathlib
import sys
import tempfile
import time
import weakref
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from common import data
from common import outputs
from common import runtime
from common.errors import Diverged

WEIGHTS_FILE = "model.weights.h5"
STATE_FILE = "state.json"
KEPT_BACKUPS = 2  # the newest epoch, and the one before it in case the newest cannot be read
# Batches run per call of the compiled training step. Keras's default, 1, returns to Python after
# every batch; 32 saved 6% of the CPU time of the VAE lesson's epoch on 2 CPU cores (the book,
# Throughput by default), and should save more on a GPU, where each return also waits for the
# device. Numbers do not change: the same steps run in the same order. Callbacks see a batch
# every 32 steps. PyTorch's backend runs one step per call, as does a multi-worker run.
STEPS_PER_EXECUTION = 32
# A loss that rises to this many times the loss of the model before its first step has diverged,
# even while it is still finite (5e5 nats per image where the untrained network scores 543, say).
# The reference is measured before training, not read off the first logged batch: with 32 steps
# per execution that one is already the mean of 32 steps, exploded at a huge learning rate.
EXPLOSION = 100.0


class Fitted(NamedTuple):
    """What one model's training left: every epoch, including those of an interrupted run."""

    history: dict        # metric name -> one value per finished epoch
    epoch_seconds: list  # wall-clock seconds of each finished epoch, training and validation
                         # (the first includes tracing the training step)

    @property
    def epochs(self):
        return len(self.epoch_seconds)

    @property
    def seconds(self):
        return float(sum(self.epoch_seconds))

    @property
    def seconds_per_epoch(self):
        return float(np.median(self.epoch_seconds)) if self.epoch_seconds else 0.0

    def results(self):
        """The figures of training that every lesson reports."""
        return {"epochs_trained": self.epochs, "final_train_loss": self.history["loss"][-1],
                "train_seconds": self.seconds, "seconds_per_epoch": self.seconds_per_epoch,
                "epoch_seconds": self.epoch_seconds}


def compile(model, loss, learning_rate, metrics=()):  # noqa: A001 - Keras's word for it
    """`model.compile` with Adam at `learning_rate`: one optimizer for every lesson.

    The configuration `compile` records, which a saved model keeps, is the portable one: one
    step per execution and no XLA, which every backend accepts (PyTorch refuses more steps, and
    would run XLA as torch.compile). How this backend runs the model is set on it afterwards:
    STEPS_PER_EXECUTION steps per call but on PyTorch and in a multi-worker run; the training
    step compiled with `jax.jit` on JAX, where nothing runs fast uncompiled. XLA stays off on
    TensorFlow, as Keras would leave it on a CPU (where it saved too little here to pay for its
    compilation) and on a GPU with deterministic ops (every lesson's); PyTorch runs eagerly.
    """
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss,
                  metrics=list(metrics), steps_per_execution=1, jit_compile=False)
    multi_worker = isinstance(tf.distribute.get_strategy(),
                              tf.distribute.MultiWorkerMirroredStrategy)
    if not (multi_worker or runtime.BACKEND == "torch"):
        model.steps_per_execution = STEPS_PER_EXECUTION
    model.jit_compile = runtime.BACKEND == "jax"


_inference_steps = weakref.WeakKeyDictionary()  # model -> its compiled inference step


def predict(model, inputs, batch_size=1024):
    """The model's outputs on NumPy inputs (an array, or a tuple of arrays for several inputs),
    computed batch by batch by one compiled step, as NumPy.

    On TensorFlow, unlike `model.predict`, it leaves the distribution strategy out: each process
    of a multi-worker run computes every output itself, with no collective to wait on. (Keras's
    NumPy input adapter is avoided too: with deterministic ops on, TensorFlow rewrites its
    parallel map and prints a spurious error line.) On JAX and PyTorch it is `model.predict`,
    which compiles its step with `jax.jit` on JAX.
    """
    inputs = tuple(inputs) if isinstance(inputs, list) else inputs
    if runtime.BACKEND != "tensorflow":
        return _predict_evenly(model, inputs, batch_size)
    if model not in _inference_steps:
        weak = weakref.ref(model)  # the cache must not keep the model alive
        _inference_steps[model] = tf.function(lambda x: weak()(x, training=False),
                                              reduce_retracing=True)
    step = _inference_steps[model]
    outputs = [step(batch) for batch in data.batches(inputs, batch_size)]
    if isinstance(outputs[0], (list, tuple)):
        return [np.concatenate([ops.convert_to_numpy(o[i]) for o in outputs])
                for i in range(len(outputs[0]))]
    return np.concatenate([ops.convert_to_numpy(o) for o in outputs])


def _predict_evenly(model, inputs, batch_size):
    """`model.predict` in batches that JAX's DataParallel can split over its devices: the batch
    size a multiple of their number, and the inputs padded with zero rows to a multiple of it,
    the outputs of the padding then dropped. (With one device, nothing changes.)"""
    devices = runtime.replicas()
    arrays = inputs if isinstance(inputs, tuple) else (inputs,)
    rows = len(arrays[0])
    padding = -rows % devices
    if padding:
        arrays = tuple(np.concatenate([a, np.zeros((padding, *a.shape[1:]), a.dtype)])
                       for a in arrays)
    batch_size = max(devices, batch_size - batch_size % devices)
    outputs = model.predict(arrays if len(arrays) > 1 else arrays[0], batch_size=batch_size,
                            verbose=0)
    if isinstance(outputs, list):
        return [o[:rows] for o in outputs]
    return outputs[:rows]


def fit(model, train, *, epochs, backup_dir, log_dir=None, validation_data=None, callbacks=(),
        verbose=2, **fit_kwargs):
    """`model.fit` that resumes from `backup_dir`, raises `Diverged` on a non-finite or exploding
    loss, logs for TensorBoard into `log_dir` (if given), and returns a `Fitted` with the
    history of every finished epoch."""
    backup = ResumableBackup(outputs.checkpoint_folder(backup_dir, model))
    if validation_data is not None:
        reference = untrained_loss(model, *_inputs_and_targets(validation_data))
    else:
        reference = untrained_loss(model, train, fit_kwargs.get("y"))
    callbacks = [StopOnDivergence(model.name, reference), backup, *callbacks]
    if log_dir is not None:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(log_dir)))
    # A tf.data pipeline shuffles itself; NumPy arrays are shuffled by Keras unless told not to.
    fit_kwargs.setdefault("shuffle", not isinstance(train, tf.data.Dataset))
    model.fit(_sharded_by_batch(train), validation_data=_sharded_by_batch(validation_data),
              epochs=epochs, verbose=verbose, callbacks=callbacks, **fit_kwargs)
    return backup.fitted()


def untrained_loss(model, inputs, targets=None, rows=256):
    """The model's loss on a first batch of data, as the model is before training starts: the
    reference against which `StopOnDivergence` judges an explosion. `inputs` is a tf.data
    pipeline of (inputs, targets) batches, or arrays with their `targets`. (`fit` prefers the
    validation data: reading a batch of a shuffled training pipeline would move its shuffling
    on by an epoch.)"""
    # Evaluating draws from the layers' seed generators (the VAE samples z); put their states
    # back, so that training draws exactly what it would have drawn without this look.
    states = [(v, np.array(v)) for v in model.non_trainable_variables]
    if isinstance(inputs, tf.data.Dataset):
        scores = model.evaluate(_sharded_by_batch(inputs.take(1)), verbose=0, return_dict=True)
    else:
        first = slice(0, rows)
        inputs = tuple(x[first] for x in inputs) if isinstance(inputs, tuple) else inputs[first]
        targets = None if targets is None else targets[first]
        scores = model.evaluate(inputs, targets, verbose=0, return_dict=True)
    for variable, value in states:
        variable.assign(value)
    return float(scores["loss"])


def _inputs_and_targets(validation_data):
    if isinstance(validation_data, tf.data.Dataset):
        return validation_data, None
    return validation_data[0], validation_data[1]


def _sharded_by_batch(dataset):
    """In a multi-worker run, each worker takes its share of every batch (DATA sharding): our
    pipelines are built from arrays in memory, not files, so sharding by file cannot apply."""
    if not isinstance(dataset, tf.data.Dataset):
        return dataset
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


class StopOnDivergence(keras.callbacks.TerminateOnNaN):
    """Raise `Diverged` at the first NaN or infinite loss or metric, or an exploding loss.

    Keras's `TerminateOnNaN` stops training quietly; this one raises, so the lesson writes no
    results, and it raises before the epoch ends, so a diverged state is never backed up.
    """

    def __init__(self, model_name, reference_loss):
        super().__init__(raise_error=True)
        self.model_name, self.reference = model_name, reference_loss
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None:
            self._check({"loss": loss})

    def on_epoch_end(self, epoch, logs=None):
        self._check(logs or {})

    def _check(self, logs):
        for name, value in logs.items():
            value = float(value)
            if not math.isfinite(value):
                raise Diverged(self.model_name, self.epoch + 1, f"{name} became {value}")
            exploding = (name in ("loss", "val_loss") and math.isfinite(self.reference)
                         and self.reference > 0 and value > EXPLOSION * self.reference)
            if exploding:
                raise Diverged(self.model_name, self.epoch + 1,
                               f"{name} rose to {value:.4g}, over {EXPLOSION:g} times the "
                               f"{self.reference:.4g} of the untrained model")


class ResumableBackup(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` with atomic backups that keep the history; see the module docstring."""

    def __init__(self, backup_dir):
        super().__init__(str(backup_dir), save_freq="epoch", delete_checkpoint=False)
        self.folder = pathlib.Path(backup_dir)
        self.history, self.epoch_seconds = {}, []

    # -- Restore ---------------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        self.history, self.epoch_seconds = {}, []
        self.model._initial_epoch = 0
        for backup in self._backups():
            try:
                self._restore(backup)
            except Exception as err:  # noqa: BLE001 - any unreadable backup is set aside
                self._set_aside(backup, err)
                continue
            self._report(backup)
            return

    def _backups(self):
        """The epoch folders, newest first (by number: epoch-100000 comes after epoch-99999)."""
        found = [p for p in self.folder.glob("epoch-*") if p.name[6:].isdigit()]
        return sorted(found, key=lambda p: int(p.name[6:]), reverse=True)

    def _set_aside(self, backup, err):
        """Report an unreadable backup in one line and rename it out of the way, never delete
        it: DIR/checkpoints/<folder>.unreadable-epoch-NNNNN (in a multi-worker run, the chief's
        to do)."""
        aside = self.folder.with_name(f"{self.folder.name}.unreadable-{backup.name}")
        for n in range(2, 1000):
            if not aside.exists():
                break
            aside = aside.with_name(f"{self.folder.name}.unreadable-{backup.name}-{n}")
        moved = ""
        if tf.distribute.get_strategy().extended.should_checkpoint:
            backup.rename(aside)
            moved = f"; kept as {aside}"
        print(f"checkpoint: {backup} cannot be read ({_one_line(err)}){moved}",
              file=sys.stderr)

    def _restore(self, backup):
        """Load one backup into the model, or leave the model exactly as it was and raise."""
        with open(backup / STATE_FILE) as handle:
            state = json.load(handle)
        epoch, history, seconds = state["epoch"], state["history"], state["epoch_seconds"]
        if not (isinstance(epoch, int) and epoch >= 1 and len(seconds) == epoch
                and all(len(values) == epoch for values in history.values())):
            raise ValueError(f"inconsistent training state in {STATE_FILE}")
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)  # slots to load into
        variables = list(self.model.variables)
        if self.model.optimizer is not None:
            variables += list(self.model.optimizer.variables)
        before = [np.array(v) for v in variables]
        try:
            self.model.load_weights(backup / WEIGHTS_FILE)
        except BaseException:
            for variable, value in zip(variables, before):  # undo a half-finished load
                variable.assign(value)
            raise
        self.model._initial_epoch = epoch
        self.history, self.epoch_seconds = history, seconds

    def _report(self, backup):
        done, asked, name = len(self.epoch_seconds), self.params.get("epochs"), self.model.name
        if asked is None or done < asked:
            text = f"{name} resumes after epoch {done} of {asked}"
        elif done == asked:
            text = f"{name} finished its {done} epochs in an earlier run: restored, not retrained"
        else:
            text = (f"{name} finished {done} epochs in an earlier run, more than the {asked} "
                    f"asked for: evaluating it as it is after {done} epochs")
        print(f"checkpoint: {text} ({backup})", file=sys.stderr)

    # -- Back up ---------------------------------------------------------------------------

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_seconds.append(time.perf_counter() - self._epoch_start)
        for name, value in (logs or {}).items():
            self.history.setdefault(name, []).append(float(value))
        super().on_epoch_end(epoch, logs)  # -> _save_model

    def _save_model(self):
        if not tf.distribute.get_strategy().extended.should_checkpoint:
            # A multi-worker run's other workers: saving reads some variables collectively, so
            # every worker saves, but only the chief's backup is kept.
            with tempfile.TemporaryDirectory() as scratch:
                self.model.save_weights(pathlib.Path(scratch) / WEIGHTS_FILE)
            return
        epoch = self._current_epoch
        final = self.folder / f"epoch-{epoch:05d}"
        state = {"epoch": epoch, "history": self.history, "epoch_seconds": self.epoch_seconds}
        text = json.dumps(state)
        tmp = outputs.temporary_name(final)
        # Checked for room first: h5py can crash on a full disk rather than raise.
        with outputs.writing(final, outputs.weights_bytes(self.model) + len(text)):
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()
            try:
                self.model.save_weights(tmp / WEIGHTS_FILE)
                (tmp / STATE_FILE).write_text(text)
                outputs.replace_folder(tmp, final)
            finally:
                if tmp.exists():
                    outputs.remove_tree(tmp)
        for old in self._backups()[KEPT_BACKUPS:]:
            outputs.remove_tree(old)

    def on_train_end(self, logs=None):
        pass  # backups are kept until the lesson has written its outputs (`OutputPaths.finish`)

    # -- Result ----------------------------------------------------------------------------

    def fitted(self):
        return Fitted(history={k: list(v) for k, v in self.history.items()},
                      epoch_seconds=[float(s) for s in self.epoch_seconds])


def _one_line(err):
    return " ".join(str(err).split())[:200] or type(err).__name__
