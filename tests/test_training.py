"""Checkpoints: an interrupted fit resumes from its last finished epoch."""

import keras
import numpy as np
import pytest

from common.training import EpochTimer
from common.training import resumable_checkpoint


class StopAfterEpoch(keras.callbacks.Callback):
    """Simulate Ctrl-C at the end of one epoch."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt


def tiny_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer="sgd", loss="mse")
    return model


def test_interrupted_training_resumes_from_the_last_finished_epoch(tmp_path, capsys):
    x, y = np.ones((8, 4), "float32"), np.zeros((8, 1), "float32")
    settings = {"lr": 0.1}
    first = tiny_model()
    with pytest.raises(KeyboardInterrupt):
        first.fit(x, y, epochs=5, verbose=0,
                  callbacks=[resumable_checkpoint(tmp_path, "Lesson", settings), StopAfterEpoch(1)])
    weights_at_interrupt = first.get_weights()

    second = tiny_model()  # a new process would start from fresh weights
    timer = EpochTimer()
    history = second.fit(x, y, epochs=5, verbose=0,
                         callbacks=[resumable_checkpoint(tmp_path, "Lesson", settings), timer])
    assert "resuming" in capsys.readouterr().err
    assert len(history.history["loss"]) == 3 and len(timer.seconds) == 3  # epochs 3, 4 and 5
    assert history.epoch == [2, 3, 4]
    # One batch per epoch, so epoch 3's loss is the loss at the weights it started from: the
    # weights saved when epoch 2 finished, not the fresh ones.
    restored = tiny_model()
    restored.set_weights(weights_at_interrupt)
    assert history.history["loss"][0] == pytest.approx(restored.evaluate(x, y, verbose=0))
    assert history.history["loss"][0] < tiny_model().evaluate(x, y, verbose=0) - 0.01
    assert not any(tmp_path.rglob("*.h5")) and not any(tmp_path.rglob("*.json"))  # cleaned up


def test_other_settings_start_fresh(tmp_path):
    a = resumable_checkpoint(tmp_path, "Lesson", {"beta": 1})
    b = resumable_checkpoint(tmp_path, "Lesson", {"beta": 4})
    assert a.backup_dir != b.backup_dir
