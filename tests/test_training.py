"""The training callbacks every lesson passes to fit: resuming after a kill, damaged backups, nothing left to train, divergence.

Faults are made deterministically: a callback raises KeyboardInterrupt where a kill would land,
and the backups a short run left are truncated or overwritten, as a kill or a full disk would.
Every model here takes one full-batch SGD step per epoch, so each epoch's loss is a function of
the weights it starts from, and the test can tell which weights a run resumed from.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from common import outputs, training
from common.errors import Diverged
from common.training import Fitted
from common.training import ResumableBackup
from common.training import StopOnDivergence

X = np.linspace(-1, 1, 32, dtype="float32").reshape(8, 4)
Y = X.sum(axis=1, keepdims=True) * 0.5


class KillAfterEpoch(keras.callbacks.Callback):
    """A kill that lands after epoch `epoch` (1-based) was backed up."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            raise KeyboardInterrupt


class EpochCounter(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.trained = []

    def on_epoch_end(self, epoch, logs=None):
        self.trained.append(epoch + 1)


def tiny_model(learning_rate=0.05):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs), name="tiny")
    model.compile(optimizer=keras.optimizers.SGD(learning_rate), loss="mse")
    return model


def fit(model, x, *, y, epochs, backup_dir, callbacks=(), validation_data=None, **kwargs):
    """`model.fit` with the callbacks as every lesson passes them; the `Fitted` it leaves."""
    backup = ResumableBackup(backup_dir, x)
    stop = StopOnDivergence(model, validation_data or (x, y))
    model.fit(x, y, epochs=epochs, validation_data=validation_data,
              callbacks=[stop, backup, *callbacks], **kwargs)
    return backup.fitted()


def train(folder, epochs, callbacks=(), model=None, **kwargs):
    model = model or tiny_model()
    return model, fit(model, X, y=Y, epochs=epochs, batch_size=8, backup_dir=folder,
                      callbacks=callbacks, verbose=0, **kwargs)


def uninterrupted(epochs, tmp_path):
    return train(tmp_path / "reference", epochs)


def backups(folder):
    return sorted(p.name for p in folder.glob("epoch-*"))


def test_an_interrupted_fit_resumes_from_its_last_finished_epoch(tmp_path, capsys):
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "ckpt", 5, [KillAfterEpoch(2)])
    assert backups(tmp_path / "ckpt") == ["epoch-00001", "epoch-00002"]

    counter = EpochCounter()
    model, fitted = train(tmp_path / "ckpt", 5, [counter])  # a new process: fresh weights
    assert "tiny resumes after epoch 2 of 5" in capsys.readouterr().err
    assert counter.trained == [3, 4, 5]
    # The history and the weights are those of a run that was never interrupted.
    reference_model, reference = uninterrupted(5, tmp_path)
    assert fitted.epochs == 5 and len(fitted.history["loss"]) == 5
    np.testing.assert_allclose(fitted.history["loss"], reference.history["loss"], rtol=1e-6)
    for a, b in zip(model.get_weights(), reference_model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    # The backups stay until the lesson has written its outputs; only the two newest are kept.
    assert backups(tmp_path / "ckpt") == ["epoch-00004", "epoch-00005"]


@pytest.mark.parametrize("damage", ["truncated weights", "garbage weights", "empty state",
                                    "broken state", "missing weights", "one array short"])
def test_a_damaged_newest_backup_is_reported_and_the_one_before_is_used(tmp_path, capsys,
                                                                        damage):
    folder = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        train(folder, 4, [KillAfterEpoch(3)])
    newest = folder / "epoch-00003"
    weights, state = newest / training.WEIGHTS_FILE, newest / "state.json"
    if damage == "truncated weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "garbage weights":
        weights.write_bytes(os.urandom(weights.stat().st_size))
    elif damage == "empty state":
        state.write_text("")
    elif damage == "one array short":  # readable, but not all of this model's variables
        with np.load(weights) as saved:
            arrays = [saved[f"arr_{i}"] for i in range(len(saved.files) - 1)]
        np.savez(weights, *arrays)
    elif damage == "broken state":
        state.write_text(json.dumps({"epoch": 3, "history": {"loss": [1.0]},
                                     "epoch_seconds": [0.1, 0.1, 0.1]}))
    else:
        weights.unlink()

    counter = EpochCounter()
    _, fitted = train(folder, 4, [counter])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2, err
    # Reported and kept aside, never deleted: the run whose backup it is may still want it.
    aside = tmp_path / "ckpt.unreadable-epoch-00003"
    assert err[0].startswith(f"checkpoint: {newest} cannot be read (")
    assert err[0].endswith(f"; kept as {aside}") and aside.is_dir()
    assert "tiny resumes after epoch 2 of 4" in err[1]
    assert counter.trained == [3, 4]
    _, reference = uninterrupted(4, tmp_path)
    np.testing.assert_allclose(fitted.history["loss"], reference.history["loss"], rtol=1e-6)


def test_when_no_backup_can_be_read_training_starts_fresh(tmp_path, capsys):
    folder = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        train(folder, 3, [KillAfterEpoch(2)])
    for backup in folder.glob("epoch-*"):
        weights = backup / training.WEIGHTS_FILE
        weights.write_bytes(weights.read_bytes()[:200])  # a readable header, then nothing

    counter = EpochCounter()
    _, fitted = train(folder, 3, [counter])
    err = capsys.readouterr().err
    assert err.count("cannot be read") == 2 and "resumes" not in err
    assert sorted(p.name for p in tmp_path.glob("ckpt.unreadable-*")) == [
        "ckpt.unreadable-epoch-00001", "ckpt.unreadable-epoch-00002"]
    assert counter.trained == [1, 2, 3]
    # A failed load leaves no half-loaded weights behind: the run is exactly a fresh one.
    _, reference = uninterrupted(3, tmp_path)
    np.testing.assert_allclose(fitted.history["loss"], reference.history["loss"], rtol=1e-6)


def test_a_backup_half_written_by_a_killed_run_is_ignored_and_cleaned_up(tmp_path, capsys):
    folder = tmp_path / "checkpoints" / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        train(folder, 3, [KillAfterEpoch(2)])
    # What a kill during the backup of epoch 3 leaves: a temporary folder of a dead process.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    partial = folder / f".epoch-00003.tmp-{dead}-abcd1234"
    partial.mkdir()
    (partial / training.WEIGHTS_FILE).write_bytes(b"PK\x03\x04")

    counter = EpochCounter()
    train(folder, 3, [counter])
    assert "resumes after epoch 2 of 3" in capsys.readouterr().err
    assert counter.trained == [3]
    outputs.remove_stale_temporaries(tmp_path / "checkpoints")
    assert not partial.exists()


def test_nothing_left_to_train_restores_the_finished_model(tmp_path, capsys):
    folder = tmp_path / "ckpt"
    first, done = train(folder, 3)
    counter = EpochCounter()
    second, again = train(folder, 3, [counter])
    assert "tiny finished its 3 epochs in an earlier run: restored, not retrained" in \
        capsys.readouterr().err
    assert counter.trained == []
    assert again.history == done.history and again.epochs == 3
    for a, b in zip(first.get_weights(), second.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_fewer_epochs_than_were_finished_evaluates_the_restored_model(tmp_path, capsys):
    folder = tmp_path / "ckpt"
    first, done = train(folder, 3)
    counter = EpochCounter()
    second, again = train(folder, 2, [counter])
    err = capsys.readouterr().err
    assert "tiny finished 3 epochs in an earlier run, more than the 2 asked for" in err
    assert counter.trained == [] and again.epochs == 3
    assert again.history == done.history
    for a, b in zip(first.get_weights(), second.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert backups(folder) == ["epoch-00002", "epoch-00003"]  # nothing was deleted


def test_more_epochs_continue_a_finished_run(tmp_path):
    _, done = train(tmp_path / "ckpt", 2)
    _, more = train(tmp_path / "ckpt", 4)
    _, reference = uninterrupted(4, tmp_path)
    assert more.epochs == 4
    np.testing.assert_allclose(more.history["loss"], reference.history["loss"], rtol=1e-6)


def test_a_nan_loss_stops_at_once_and_no_diverged_state_is_backed_up(tmp_path):
    folder = tmp_path / "ckpt"
    _, finished = train(folder, 2)
    assert backups(folder) == ["epoch-00001", "epoch-00002"]
    # Continue with a poisoned target from epoch 3 on: the first batch of epoch 3 is NaN.
    model = tiny_model()
    counter = EpochCounter()
    with pytest.raises(Diverged) as caught:
        fit(model, X, y=np.full_like(Y, np.nan), epochs=5, batch_size=8, backup_dir=folder,
            callbacks=[counter], verbose=0)
    assert caught.value.epoch == 3 and caught.value.model == "tiny"
    assert "loss became nan" in str(caught.value) and "--learning-rate" in str(caught.value)
    assert counter.trained == []
    assert backups(folder) == ["epoch-00001", "epoch-00002"]  # the last finite epoch is kept
    state = json.loads((folder / "epoch-00002" / "state.json").read_text())
    assert state["history"]["loss"] == finished.history["loss"]


def test_an_exploding_finite_loss_counts_as_divergence(tmp_path):
    # SGD with a step far too large: every step multiplies the error, but stays finite for a
    # while. Eight batches of one example per epoch.
    model = tiny_model(learning_rate=3.0)
    with pytest.raises(Diverged) as caught:
        fit(model, X, y=Y, epochs=3, batch_size=1, backup_dir=tmp_path / "ckpt", verbose=0)
    assert "rose to" in str(caught.value) and caught.value.epoch == 1
    assert backups(tmp_path / "ckpt") == []


def test_a_loss_already_exploded_when_first_logged_is_judged_against_the_untrained_model(
        tmp_path):
    # With several steps per execution the callbacks first see the loss after all of them: at a
    # huge learning rate it has exploded by then, so it cannot be the reference. The loss of the
    # model before its first step is.
    model = tiny_model(learning_rate=3.0)
    model.compile(optimizer=keras.optimizers.SGD(3.0), loss="mse", steps_per_execution=8)
    with pytest.raises(Diverged) as caught:
        fit(model, X, y=Y, epochs=3, batch_size=1, backup_dir=tmp_path / "ckpt", verbose=0)
    assert "times the" in str(caught.value) and "of the untrained model" in str(caught.value)
    assert caught.value.epoch == 1 and backups(tmp_path / "ckpt") == []


def test_a_non_finite_validation_loss_counts_as_divergence(tmp_path):
    with pytest.raises(Diverged, match="val_loss became nan"):
        train(tmp_path / "ckpt", 2, validation_data=(X, np.full_like(Y, np.nan)))
    assert backups(tmp_path / "ckpt") == []


def test_backups_are_ordered_by_epoch_number_past_five_digits(tmp_path):
    from common.training import ResumableBackup

    for name in ("epoch-99999", "epoch-100000", "epoch-00007", "epoch-notes"):
        (tmp_path / name).mkdir()
    assert [p.name for p in ResumableBackup(tmp_path, None)._backups()] == [
        "epoch-100000", "epoch-99999", "epoch-00007"]


def test_the_reported_final_loss_is_the_last_epochs():
    fitted = Fitted({"loss": [3.0, 2.0, 1.5]}, [1.0, 2.0, 4.0], resumed_after=1)
    results = fitted.results()
    assert results["final_train_loss"] == 1.5 and results["epochs_trained"] == 3
    assert results["train_seconds"] == 7.0 and results["seconds_per_epoch"] == 2.0
    assert results["resumed_after_epoch"] == 1
    assert Fitted({"loss": [1.0]}, [1.0]).results()["resumed_after_epoch"] is None


def test_a_short_run_of_several_models_is_not_warned_of_retracing():
    """Keras makes each model's train and test functions from one Python function, and
    TensorFlow counts their first traces together: a few short fits were warned of "retracing"
    that did not happen (common/runtime.py drops that warning, and only that one)."""
    import logging

    if keras.backend.backend() != "tensorflow":
        pytest.skip("TensorFlow's tf.function")
    import tensorflow as tf
    from tensorflow.python.eager.polymorphic_function import polymorphic_function as tracing

    # TensorFlow warns at most twice per Python function and process: start this count afresh,
    # so that the test sees the warning whatever ran before it in this process.
    tracing._frequent_tracing_detector_manager._detectors.clear()
    warned = []
    handler = logging.Handler()
    handler.emit = lambda record: warned.append(record.getMessage())
    tf.get_logger().addHandler(handler)
    try:
        images = np.zeros((8, 4), np.float32)
        for _ in range(4):
            model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4)])
            model.compile("sgd", "mse", steps_per_execution=32)
            model.fit(images, images, validation_data=(images, images), verbose=0)
        tf.get_logger().warning("3 out of the last 3 calls to <function other_function at 0x1> "
                                "triggered tf.function retracing.")
    finally:
        tf.get_logger().removeHandler(handler)
    assert [message for message in warned if "retracing" in message] == [
        "3 out of the last 3 calls to <function other_function at 0x1> triggered tf.function "
        "retracing."]


@pytest.mark.parametrize("make_optimizer", [
    lambda: keras.optimizers.Adam(0.01),
    lambda: keras.optimizers.AdamW(0.01, weight_decay=0.1),
    lambda: keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(0.01)),
    lambda: keras.optimizers.Adam(0.01, amsgrad=True)],
    ids=["adam", "adamw", "loss-scaled adam", "amsgrad"])
def test_on_tensorflow_adam_runs_fused_and_trains_as_keras_adam_does(make_optimizer, monkeypatch):
    """`set_execution` has an Adam's update run as TensorFlow's fused `ResourceApplyAdam`, one
    kernel per weight instead of Keras's eleven operations, also inside the loss scaling of
    mixed precision; the weights after 20 epochs are Keras's to float32 round-off. AMSGrad,
    which the kernel does not compute, keeps Keras's."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("TensorFlow's fused kernel")
    import tensorflow as tf

    fused_calls = []
    kernel = tf.raw_ops.ResourceApplyAdam

    def counted(**kwargs):
        fused_calls.append(kwargs["var"])
        return kernel(**kwargs)

    monkeypatch.setattr(tf.raw_ops, "ResourceApplyAdam", counted)
    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")

    def trained(set_execution):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, activation="relu"),
                                  keras.layers.Dense(4)])
        model.compile(optimizer=make_optimizer(), loss="mse")
        if set_execution:
            training.set_execution(model)
        initial = np.concatenate([w.ravel() for w in model.get_weights()])
        model.fit(x, x[:, ::-1], batch_size=8, epochs=20, shuffle=False, verbose=0)
        return initial, np.concatenate([w.ravel() for w in model.get_weights()])

    initial, keras_weights = trained(set_execution=False)
    assert fused_calls == []
    _, weights = trained(set_execution=True)
    optimizer = make_optimizer()
    if getattr(optimizer, "inner_optimizer", optimizer).amsgrad:
        assert fused_calls == []
    else:  # once per weight in each trace of the training step
        assert len(fused_calls) >= 4 and len(fused_calls) % 4 == 0
    assert np.abs(keras_weights - initial).max() > 0.1  # the weights moved
    np.testing.assert_allclose(weights, keras_weights, rtol=0, atol=1e-5)
