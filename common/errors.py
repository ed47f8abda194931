"""The errors a lesson reports in one line instead of a traceback.

- `UsageError` (exit status 2): bad input the user can fix, found before anything happens: a bad
  flag, a missing or corrupt data file, an output folder that cannot be written or is in use.
- `TrainingError` (exit status 1): the run itself went wrong: the loss diverged, the
  evaluation gave numbers that are not finite, or the disk is full (`OutOfSpace`). The previous
  run's outputs are left as they were, and the checkpoints of every finished epoch are kept.
"""


class UsageError(Exception):
    """A bad flag value, an unwritable output folder, or anything else the user can fix."""


class DataError(UsageError):
    """A data file that is missing, corrupt, of the wrong shape or with impossible values."""


class TrainingError(Exception):
    """A run that cannot produce honest results; reported in one line with exit status 1."""


class Diverged(TrainingError):
    """A loss became NaN, infinite or explosively large while a model trained."""

    def __init__(self, model, epoch, what):
        self.model, self.epoch = model, epoch
        super().__init__(f"training diverged: model {model}, epoch {epoch}: {what}; "
                         "nothing was written. Try a smaller --learning-rate")


class OutOfSpace(TrainingError):
    """The file system holding a file the run must write has no room for it."""

    def __init__(self, path, need, free):
        self.path, self.need, self.free = path, need, free
        super().__init__(f"no room to write {path}: it needs about {_size(need)} and the file "
                         f"system has {_size(free)} free. Nothing else was changed; free some "
                         "space and run the same command again to finish the run")


def _size(count):
    if count >= 2**30:
        return f"{count / 2**30:.1f} GB"
    if count >= 2**20:
        return f"{count / 2**20:.1f} MB"
    return f"{max(count, 0) / 2**10:.0f} kB"
