"""The errors a lesson reports in one line instead of a traceback: `UsageError` (exit status 2)
for bad input, `TrainingError` (exit status 1) for a run that went wrong; in a notebook, the
same line under the cell. See the book, When something goes wrong.
"""

import sys


def ipython():
    """The running IPython shell (a notebook's kernel), or None in a script."""
    module = sys.modules.get("IPython")
    return module.get_ipython() if module is not None else None


class OneLine(Exception):
    """An error IPython shows as its message alone, with no traceback (its `_render_traceback_`
    protocol); a script's `cli.run` prints the same line and exits."""

    def _render_traceback_(self):
        return [f"error: {self}"]


class UsageError(OneLine):
    """A bad flag value, an unwritable output folder, or anything else the user can fix."""


class DataError(UsageError):
    """A data file that is missing, corrupt, of the wrong shape or with impossible values."""


class TrainingError(OneLine):
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
