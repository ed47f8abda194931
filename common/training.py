"""Training helpers shared by the lessons: checkpoints that resume, and epoch timing."""

import hashlib
import json
import sys
import time

import keras


def resumable_checkpoint(checkpoint_root, script_name, config):
    """A `BackupAndRestore` callback: an interrupted `fit` resumes from its last finished epoch.

    Keras saves the weights, optimizer state and epoch number at the end of every epoch, restores
    them when the same command is run again, and deletes the backup once training completes.
    The folder name includes a hash of the settings, so a run with other settings starts fresh.
    """
    digest = hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]
    folder = checkpoint_root / f"{script_name}-{digest}"
    if folder.exists() and any(folder.iterdir()):
        print(f"checkpoint: resuming from {folder}", file=sys.stderr)
    return keras.callbacks.BackupAndRestore(backup_dir=str(folder))


class EpochTimer(keras.callbacks.Callback):
    """Record the wall-clock seconds of every epoch (training and validation)."""

    def on_train_begin(self, logs=None):
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)
