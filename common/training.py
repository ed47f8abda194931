"""The training plumbing Keras lacks: `ResumableBackup` (a `BackupAndRestore` whose backups
survive a kill and keep the history), `StopOnDivergence` (a `TerminateOnNaN` that raises), the
backend's execution settings and `predict`. See the book, When something goes wrong, and
Backends.
"""

import json
import math
import pathlib
import sys
import time
import types
import weakref
from typing import NamedTuple

import keras
import numpy as np
from keras import ops

from common import data
from common.batches import Batches
from common import outputs
from common import runtime
from common.errors import Diverged

if runtime.BACKEND == "tensorflow":  # for `predict` and Adam; JAX and PyTorch run without it
    import tensorflow as tf

    FUSED_ADAM_DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)

# A backup's weights: the model's variables, then its optimizer's, in their order, as NumPy arrays
# (arr_0, arr_1, ...). `np.savez` writes the VAE's 10 MB, fsync included, in about half the time
# `save_weights` takes to walk the model and write HDF5 (18 ms against 28 to 38): a backup follows
# each of the default run's 0.3-second epochs.
WEIGHTS_FILE = "weights.npz"
STATE_FILE = "state.json"
KEPT_BACKUPS = 2  # the newest epoch, and the one before it in case the newest cannot be read
# Batches run per call of the compiled training step. Keras's default, 1, returns to Python after
# every batch; 32 saved 6% of the CPU time of the VAE lesson's epoch on 2 CPU cores, and should
# save more on a GPU. Numbers do not change: the same steps run in the same order.
STEPS_PER_EXECUTION = 32
# A loss that rises to this many times the untrained model's loss has diverged, even while still
# finite (5e5 nats per image where the untrained network scores 543, say).
EXPLOSION = 100.0


def set_execution(model):
    """After `model.compile(...)`, set how this backend runs the steps: STEPS_PER_EXECUTION but
    on PyTorch (which refuses more) and in a multi-worker run; `jax.jit` on JAX; XLA off on
    TensorFlow, PyTorch eager. What a saved model keeps is the portable configuration every
    backend accepts, one step per execution and no XLA (`compile` records "auto" as it resolves
    on this backend: XLA on TensorFlow and JAX). On TensorFlow, an Adam's update runs as one
    fused kernel (`fuse_adam`)."""
    model._compile_config.config.update(steps_per_execution=1, jit_compile=False)
    if not (runtime.multi_worker() or runtime.BACKEND == "torch"):
        model.steps_per_execution = STEPS_PER_EXECUTION
    model.jit_compile = runtime.BACKEND == "jax"
    if runtime.BACKEND == "tensorflow":
        fuse_adam(model.optimizer)


def fuse_adam(optimizer):
    """On TensorFlow, update each weight of an `Adam` (or `AdamW`) with TensorFlow's fused kernel,
    `ResourceApplyAdam`: the same formula as Keras's `Adam.update_step` in one pass over the
    weight, where Keras's runs it as eleven operations, each a pass of its own over weight-sized
    arrays. On the VAE lesson's two weights of 400,000 that was about a fifteenth of its epoch on
    a 2-core Intel Xeon (a tenth of an epoch on data already in memory). The weights differ from
    Keras's update by float32 round-off; AMSGrad, sparse gradients and other optimizers keep
    Keras's update. Nothing is saved of it: the saved optimizer is Keras's `Adam`, on every
    backend."""
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # under mixed precision
    if isinstance(optimizer, keras.optimizers.Adam) and not optimizer.amsgrad:
        optimizer.update_step = types.MethodType(_fused_adam_step, optimizer)


def _fused_adam_step(optimizer, gradient, variable, learning_rate):
    """`Adam.update_step` as one `ResourceApplyAdam`: m += (g - m)(1 - beta_1),
    v += (g^2 - v)(1 - beta_2), w -= lr sqrt(1 - beta_2^t) / (1 - beta_1^t) m / (sqrt(v) + eps)."""
    if isinstance(gradient, tf.IndexedSlices) or variable.dtype not in FUSED_ADAM_DTYPES:
        return keras.optimizers.Adam.update_step(optimizer, gradient, variable, learning_rate)
    index = optimizer._get_variable_index(variable)
    dtype = variable.dtype
    step = ops.cast(optimizer.iterations + 1, dtype)
    beta_1, beta_2 = ops.cast(optimizer.beta_1, dtype), ops.cast(optimizer.beta_2, dtype)
    tf.raw_ops.ResourceApplyAdam(
        var=variable.handle, m=optimizer._momentums[index].value.handle,
        v=optimizer._velocities[index].value.handle,
        beta1_power=ops.power(beta_1, step), beta2_power=ops.power(beta_2, step),
        lr=ops.cast(learning_rate, dtype), beta1=beta_1, beta2=beta_2,
        epsilon=ops.cast(optimizer.epsilon, dtype), grad=ops.cast(gradient, dtype))


class Fitted(NamedTuple):
    """What one model's training left: every epoch, including those of an interrupted run."""

    history: dict        # metric name -> one value per finished epoch
    epoch_seconds: list  # wall-clock seconds of each finished epoch (the first includes tracing)
    resumed_after: int = 0  # the epoch this run resumed after (0: it started fresh)

    @property
    def epochs(self):
        return len(self.epoch_seconds)

    @property
    def seconds(self):
        return float(sum(self.epoch_seconds))

    def results(self):
        """The figures of training that every lesson reports."""
        median = float(np.median(self.epoch_seconds)) if self.epoch_seconds else 0.0
        return {"epochs_trained": self.epochs, "final_train_loss": self.history["loss"][-1],
                "train_seconds": self.seconds, "seconds_per_epoch": median,
                "epoch_seconds": self.epoch_seconds,
                "resumed_after_epoch": self.resumed_after or None}


_inference_steps = weakref.WeakKeyDictionary()  # model -> its compiled inference step


def predict(model, inputs, batch_size=1024):
    """The model's outputs on NumPy inputs (an array, or a tuple of arrays), as NumPy: on
    TensorFlow a `tf.function` over batches, outside the distribution strategy (each process of
    a multi-worker run computes every output, with no collective to wait on); `model.predict`
    on JAX and PyTorch, the last batch padded to a multiple of JAX's DataParallel devices."""
    inputs = tuple(inputs) if isinstance(inputs, list) else inputs
    if runtime.BACKEND == "tensorflow":
        if model not in _inference_steps:
            weak = weakref.ref(model)  # the cache must not keep the model alive
            _inference_steps[model] = tf.function(lambda x: weak()(x, training=False),
                                                  reduce_retracing=True)
        arrays = inputs if isinstance(inputs, tuple) else (inputs,)
        outputs = [_inference_steps[model](batch if isinstance(inputs, tuple) else batch[0])
                   for batch in zip(*(np.array_split(a, range(batch_size, len(a), batch_size))
                                      for a in arrays))]
        if isinstance(outputs[0], (list, tuple)):
            return [np.concatenate([ops.convert_to_numpy(o[i]) for o in outputs])
                    for i in range(len(outputs[0]))]
        return np.concatenate([ops.convert_to_numpy(o) for o in outputs])
    devices = runtime.replicas()
    arrays = inputs if isinstance(inputs, tuple) else (inputs,)
    rows, padding = len(arrays[0]), -len(arrays[0]) % devices
    arrays = tuple(np.concatenate([a, np.zeros((padding, *a.shape[1:]), a.dtype)]) for a in arrays)
    result = model.predict(arrays if len(arrays) > 1 else arrays[0], verbose=0,
                           batch_size=max(devices, batch_size - batch_size % devices))
    return [o[:rows] for o in result] if isinstance(result, list) else result[:rows]


class StopOnDivergence(keras.callbacks.TerminateOnNaN):
    """Raise `Diverged` at the first NaN or infinite loss or metric, or a loss above EXPLOSION
    times that of the untrained model on a batch of `data` (`batches.Batches` of (inputs,
    targets), or such a tuple of arrays), before a diverged state can be backed up."""

    def __init__(self, model, data, rows=256):
        super().__init__(raise_error=True)
        self.model_name, self.epoch = model.name, 0
        # Evaluating draws from the layers' seed generators (the VAE samples z): put their states
        # back, so that training draws exactly what it would have drawn without this look.
        states = [(v, np.array(v)) for v in model.non_trainable_variables]
        if isinstance(data, keras.utils.PyDataset):
            inputs, targets = data[0]
            scores = model.evaluate(inputs, targets, verbose=0, return_dict=True)
        else:
            inputs, targets = data
            first = (tuple(x[:rows] for x in inputs) if isinstance(inputs, tuple)
                     else inputs[:rows])
            scores = model.evaluate(first, targets[:rows], verbose=0, return_dict=True)
        for variable, value in states:
            variable.assign(value)
        self.reference = float(scores["loss"])

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (logs or {}).get("loss") is not None:
            self._check({"loss": logs["loss"]})

    def on_epoch_end(self, epoch, logs=None):
        self._check(logs or {})

    def _check(self, logs):
        for name, value in logs.items():
            value = float(value)
            if not math.isfinite(value):
                raise Diverged(self.model_name, self.epoch + 1, f"{name} became {value}")
            if (name in ("loss", "val_loss") and math.isfinite(self.reference)
                    and self.reference > 0 and value > EXPLOSION * self.reference):
                raise Diverged(self.model_name, self.epoch + 1,
                               f"{name} rose to {value:.4g}, over {EXPLOSION:g} times the "
                               f"{self.reference:.4g} of the untrained model")


class ResumableBackup(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` with atomic backups (`epoch-NNNNN` folders) that keep the history and
    epoch times; an unreadable backup is set aside and the one before it restored.

    A resumed run ends exactly where the uninterrupted one would: a backup keeps every variable,
    the layers' seed generators among them (the VAE's draws of z, dropout), and each epoch tells
    the training `batches.Batches` which epoch it is, so that its shuffling and draws
    (binarization, noise) are those of that epoch, resumed or not."""

    def __init__(self, backup_dir, train_data):
        # The backups are kept when training ends, until `Run.finish` has written the outputs.
        super().__init__(str(backup_dir), save_freq="epoch", delete_checkpoint=False)
        self.folder, self.train_data = pathlib.Path(backup_dir), train_data
        self.history, self.epoch_seconds, self.resumed_after = {}, [], 0

    def fitted(self):
        """The history and epoch times of every finished epoch, resumed ones included."""
        return Fitted({k: list(v) for k, v in self.history.items()},
                      [float(s) for s in self.epoch_seconds], self.resumed_after)

    def on_train_begin(self, logs=None):
        self.history, self.epoch_seconds, self.resumed_after = {}, [], 0
        self.model._initial_epoch = 0  # where fit starts; Keras's own BackupAndRestore sets it
        for backup in self._backups():
            try:
                self._restore(backup)
            except Exception as err:  # noqa: BLE001 - any unreadable backup is set aside
                self._set_aside(backup, err)
                continue
            self._report(backup)
            self.resumed_after = len(self.epoch_seconds)
            return

    def _backups(self):
        """The epoch folders, newest first (by number: epoch-100000 comes after epoch-99999)."""
        found = [p for p in self.folder.glob("epoch-*") if p.name[6:].isdigit()]
        return sorted(found, key=lambda p: int(p.name[6:]), reverse=True)

    def _set_aside(self, backup, err):
        """Report an unreadable backup in one line and rename it out of the way (in a
        multi-worker run, the chief's to do); never delete it."""
        aside = self.folder.with_name(f"{self.folder.name}.unreadable-{backup.name}")
        for n in range(2, 1000):
            if not aside.exists():
                break
            aside = aside.with_name(f"{self.folder.name}.unreadable-{backup.name}-{n}")
        moved = ""
        if runtime.should_checkpoint():
            backup.rename(aside)
            moved = f"; kept as {aside}"
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        print(f"checkpoint: {backup} cannot be read ({reason}){moved}", file=sys.stderr)

    def _restore(self, backup):
        """Load one backup into the model, or leave the model exactly as it was and raise."""
        state = json.loads((backup / STATE_FILE).read_text())
        epoch, history, seconds = state["epoch"], state["history"], state["epoch_seconds"]
        if not (isinstance(epoch, int) and epoch >= 1 and len(seconds) == epoch
                and all(len(values) == epoch for values in history.values())):
            raise ValueError(f"inconsistent training state in {STATE_FILE}")
        variables = self._state_variables()
        with np.load(backup / WEIGHTS_FILE) as saved:
            arrays = [saved[f"arr_{i}"] for i in range(len(saved.files))]
        if len(arrays) != len(variables) or any(
                a.shape != tuple(v.shape) for a, v in zip(arrays, variables)):
            raise ValueError(f"{WEIGHTS_FILE} does not hold this model's {len(variables)} "
                             "variables and optimizer state")
        before = [np.array(v) for v in variables]
        try:
            for variable, value in zip(variables, arrays):
                variable.assign(value)
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

    def on_epoch_begin(self, epoch, logs=None):
        if isinstance(self.train_data, Batches):
            self.train_data.epoch = epoch  # its shuffling and draws are those of this epoch
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_seconds.append(time.perf_counter() - self._epoch_start)
        for name, value in (logs or {}).items():
            self.history.setdefault(name, []).append(float(value))
        super().on_epoch_end(epoch, logs)  # -> _save_model

    def _state_variables(self):
        """What a backup holds of the model: its variables, then its optimizer's (built first,
        so that a restore has slots to load into)."""
        variables = list(self.model.variables)
        if self.model.optimizer is not None:
            if not self.model.optimizer.built:
                self.model.optimizer.build(self.model.trainable_variables)
            variables += list(self.model.optimizer.variables)
        return variables

    def _save_model(self):
        # Read on every worker of a multi-worker run (a variable may be read collectively), but
        # only the chief's backup is kept.
        arrays = [np.array(v) for v in self._state_variables()]
        if not runtime.should_checkpoint():
            return
        final = self.folder / f"epoch-{self._current_epoch:05d}"
        text = json.dumps({"epoch": self._current_epoch, "history": self.history,
                           "epoch_seconds": self.epoch_seconds})
        tmp = outputs.temporary_name(final)
        # Checked for room first: one line before anything is written.
        with outputs.writing(final, sum(a.nbytes for a in arrays) + len(text)):
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()
            try:
                np.savez(tmp / WEIGHTS_FILE, *arrays)
                (tmp / STATE_FILE).write_text(text)
                outputs.replace_folder(tmp, final)
            finally:
                if tmp.exists():
                    outputs.remove_tree(tmp)
        for old in self._backups()[KEPT_BACKUPS:]:
            outputs.remove_tree(old)

