"""Where a lesson writes: DIR/figures, DIR/results/<Script>.json, DIR/models, DIR/checkpoints.

Nothing a lesson writes is ever half-written where a reader could find it:

- every file (and every checkpoint folder) is written under a hidden temporary name beside its
  final one, flushed to disk, then renamed, which is atomic: a kill or a power cut leaves either
  the old file or the new one;
- temporary names carry the writer's process id, `.<name>.tmp-<pid>-<random>`, so the next run
  removes those whose writer is gone and never touches a live run's;
- one run of a lesson at a time may write into DIR: a second one is refused (`UsageError`) while
  the first holds DIR/checkpoints/<Script>.lock. The operating system drops the lock when a
  process ends, however it ends, so a killed run never leaves a stale lock behind.

In a multi-worker run only the chief writes into DIR; the other workers write their copies of
the results, models, figures and logs into a temporary folder they delete at the end, and read
the chief's checkpoints (so DIR must be on a file system every worker sees) to resume with it.
"""

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import pathlib
import re
import shutil
import tempfile

from common import runtime
from common.errors import TrainingError
from common.errors import UsageError

_UMASK = os.umask(0)
os.umask(_UMASK)
_TEMPORARY = re.compile(r"^\..*\.tmp-(\d+)-[A-Za-z0-9_]+")
_held_lock = None  # the lock file of the run in this process, see `prepare_outputs`
_scratch = None    # a non-chief worker's temporary output folder, see `prepare_outputs`


@dataclasses.dataclass
class OutputPaths:
    """The output folders of one run, and the checkpoint folders its models train under."""

    root: pathlib.Path
    figures: pathlib.Path
    results: pathlib.Path
    models: pathlib.Path
    checkpoints: pathlib.Path
    script: str = "lesson"
    settings_digest: str = "default"
    tensorboard: bool = False
    chief: bool = True
    checkpoints_used: list = dataclasses.field(default_factory=list)

    def _made(self):
        for folder in (self.figures, self.results, self.models):
            folder.mkdir(parents=True, exist_ok=True)
        return self

    def checkpoint(self, model_name):
        """The folder where `model_name` keeps its training state in this run's settings.

        The name includes a hash of the settings (all flags but --epochs and --out), so a run
        with other settings starts fresh, while a rerun of the same command resumes.
        """
        folder = self.checkpoints / f"{self.script}-{model_name}-{self.settings_digest}"
        self.checkpoints_used.append(folder)
        return folder

    def logs(self, model_name):
        """DIR/logs/<Script>/<model>, where TensorBoard logs go with --tensorboard; else None."""
        return self.root / "logs" / self.script / model_name if self.tensorboard else None

    def write_results(self, results):
        """Write the results as DIR/results/<Script>.json (see `write_results`)."""
        write_results(self.results / f"{self.script}.json", results)

    def save_models(self, **models):
        """Save each model as DIR/models/<name>.keras."""
        for name, model in models.items():
            save_model(model, self.models / f"{name}.keras")

    def finish(self):
        """Discard this run's checkpoints, now that every result, model and figure is written,
        and let the next run of the lesson into DIR. (A worker other than the chief deletes its
        temporary folder instead.)"""
        if self.chief:
            for folder in self.checkpoints_used:
                remove_tree(folder)
        release()


def check_writable(text):
    """The --out folder, if it exists or could be created and written to; nothing is created."""
    path = pathlib.Path(text)
    if path.exists() and not path.is_dir():
        raise UsageError(f"output folder {path} cannot be written (it is a file)")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"output folder {path} cannot be written ({existing} is a file)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"output folder {path} cannot be written (permission denied)")
    return path


# Flags that do not change what is trained, so a rerun with another value resumes.
NOT_SETTINGS = ("epochs", "out", "distribute", "tensorboard")


def settings_digest(args):
    """A short hash of a run's settings (its flags but NOT_SETTINGS), naming its checkpoints."""
    settings = {k: str(v) for k, v in vars(args).items() if k not in NOT_SETTINGS}
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def prepare_outputs(args, script, dataset=None):
    """Create the folders under --out, take the lesson's lock on them, clear stale temporaries.

    Call it once the flags and the data are checked: bad input creates nothing.
    """
    global _scratch
    if not runtime.is_chief(args):  # another worker of a multi-worker run: write nothing to DIR
        root = _scratch = pathlib.Path(tempfile.mkdtemp(prefix=f"{script}-worker-"))
        return OutputPaths(root, root / "figures", root / "results", root / "models",
                           pathlib.Path(args.out) / "checkpoints", script, settings_digest(args),
                           getattr(args, "tensorboard", False), chief=False)._made()
    root = pathlib.Path(args.out)
    paths = OutputPaths(root, root / "figures", root / "results", root / "models",
                        root / "checkpoints", script, settings_digest(args),
                        getattr(args, "tensorboard", False))
    for folder in (paths.figures, paths.results, paths.models, paths.checkpoints):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as err:
            reason = err.strerror or type(err).__name__
            raise UsageError(f"output folder {folder} cannot be written ({reason})") from None
    take_lock(paths.checkpoints / f"{script}.lock", root)
    for folder in (paths.figures, paths.results, paths.models, paths.checkpoints):
        remove_stale_temporaries(folder)
    return paths


# -- One run of a lesson at a time in one folder ---------------------------------------------------

def take_lock(path, root):
    """Hold an exclusive lock on `path` until `release` or the end of the process."""
    global _held_lock
    release()
    handle = open(path, "a+")
    try:
        _lock_file(handle)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise UsageError(f"another run of this lesson (process {holder}) is writing into {root}; "
                         "wait for it to finish, or pass another --out") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    _held_lock = handle


def release():
    """Drop the lock on DIR, and delete a non-chief worker's temporary folder: the end of a run,
    however it ended."""
    global _held_lock, _scratch
    if _held_lock is not None:
        _held_lock.close()  # closing the file drops the lock
        _held_lock = None
    if _scratch is not None:
        shutil.rmtree(_scratch, ignore_errors=True)
        _scratch = None


def _lock_file(handle):
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            raise BlockingIOError from None
        return
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)


# -- Temporary names, atomic writes ----------------------------------------------------------------

def temporary_name(path):
    """A hidden name beside `path` that says which process is writing it."""
    path = pathlib.Path(path)
    # Keep the extension: Keras picks the format by it (".keras", ".weights.h5").
    suffix = re.search(r"(\.weights\.h5|\.[A-Za-z0-9]+)?$", path.name).group(0) or ""
    token = os.urandom(4).hex()
    return path.with_name(f".{path.name[:len(path.name) - len(suffix)]}.tmp-{os.getpid()}-"
                          f"{token}{suffix}")


def remove_stale_temporaries(folder):
    """Remove the temporary files and folders under `folder` whose writing process is gone."""
    for entry in pathlib.Path(folder).rglob(".*.tmp-*"):
        match = _TEMPORARY.match(entry.name)
        if match and not _process_alive(int(match.group(1))) and entry.exists():
            remove_tree(entry) if entry.is_dir() else entry.unlink(missing_ok=True)


def _process_alive(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but belongs to someone else
        return True
    return True


def sync(path):
    """Flush a file or folder to the disk, so a power cut cannot undo a finished write."""
    try:
        handle = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass  # some file systems cannot sync folders; the rename is still atomic
    finally:
        os.close(handle)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; move it to `path` only if the block succeeds."""
    path = pathlib.Path(path)
    tmp = temporary_name(path)
    try:
        yield str(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        sync(tmp)
        os.replace(tmp, path)
        sync(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def replace_folder(tmp, final):
    """Move the finished folder `tmp` to `final`, replacing any folder already there."""
    tmp, final = pathlib.Path(tmp), pathlib.Path(final)
    for item in tmp.iterdir():
        sync(item)
    sync(tmp)
    if final.exists():
        remove_tree(final)
    os.rename(tmp, final)
    sync(final.parent)


def remove_tree(folder):
    """Remove a folder: renamed aside first (atomic), so a kill never leaves half of it."""
    folder = pathlib.Path(folder)
    if not folder.exists():
        return
    aside = temporary_name(folder)
    os.rename(folder, aside)
    shutil.rmtree(aside, ignore_errors=True)


# -- What a lesson writes --------------------------------------------------------------------------

def results_header(args, dataset):
    """The first keys of every lesson's results: the data it saw, then every flag it ran with."""
    flags = {k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in vars(args).items()
             if k != "out"}
    return {"dataset": dataset.name, "data_source": dataset.source,
            "train_examples": len(dataset.x_train), "test_examples": len(dataset.x_test),
            **flags}


def write_results(path, results):
    """Write `results` as indented JSON. None stands for an undefined metric; a NaN or infinite
    number means the run went wrong, and is refused (`TrainingError`) rather than written."""
    bad = sorted(set(_non_finite(results)))
    if bad:
        raise TrainingError(f"the evaluation gave non-finite numbers ({', '.join(bad)}); "
                            "nothing was written. Try a smaller --learning-rate")
    with atomic_path(path) as tmp:
        with open(tmp, "w") as handle:
            json.dump(results, handle, indent=2)
            handle.write("\n")


def _non_finite(value, key="results"):
    if isinstance(value, float) and not math.isfinite(value):
        yield key
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _non_finite(v, str(k))
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _non_finite(v, key)


def save_model(model, path):
    """`model.save` in the native `.keras` format, atomically."""
    with atomic_path(path) as tmp:
        model.save(tmp)
