"""Where a lesson writes: DIR/figures, DIR/results/<Script>.json, DIR/models, DIR/checkpoints.

The outputs of one run are one unit, and no reader ever finds half of one:

- while the lesson runs, its results, models and figures are written into hidden staging folders
  (`DIR/figures/.<Script>.staging-<pid>-<random>`, and the same under results/ and models/). Only
  when every one of them is complete does `OutputPaths.finish` move them into place: it first
  writes the list of moves (`DIR/checkpoints/<Script>.commit.json`), then renames each file,
  then deletes the list. A run that fails or is killed before the list is written leaves the
  previous run's outputs exactly as they were; one killed during the renames is completed by the
  next run of the lesson, which replays the list before anything else;
- every other file (a checkpoint, the list of moves) is written under a hidden temporary name
  beside its final one, flushed to disk, then renamed, which is atomic;
- before a large file is written, the free space is checked: a full disk stops the run with one
  line naming the file and the room it needs (`OutOfSpace`), never a crash half-way;
- temporary names carry the writer's process id, so the next run removes those whose writer is
  gone. It removes only what this suite wrote: staging folders holding its marker file, and
  temporaries inside DIR/checkpoints, which is the suite's own;
- one run of a lesson at a time may write into DIR: a second one is refused (`UsageError`) while
  the first holds DIR/checkpoints/<Script>.lock. The operating system drops the lock when a
  process ends, however it ends, so a killed run never leaves a stale lock behind.

Each model trains under DIR/checkpoints/<Script>-<model>-<identity>: the identity is a hash of
everything that determines the trained model (the settings, the data's content and origin, and
the model's architecture and compile configuration), so a rerun resumes only the run it is.

In a multi-worker run only the chief writes into DIR; the other workers write their copies of
the results, models, figures and logs into a temporary folder they delete at the end, and read
the chief's checkpoints (so DIR must be on a file system every worker sees) to resume with it.
"""

import contextlib
import dataclasses
import errno
import hashlib
import json
import math
import os
import pathlib
import re
import shutil
import tempfile

import numpy as np

from common import runtime
from common.errors import OutOfSpace
from common.errors import TrainingError
from common.errors import UsageError

_UMASK = os.umask(0)
os.umask(_UMASK)
# Temporary names this suite gives: .<name>.tmp-<pid>-<8 hex digits>[extension]
_TEMPORARY = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]{8}(\.weights\.h5|\.[A-Za-z0-9]+)?$")
_STAGING = re.compile(r"^\.(.+)\.staging-(\d+)-[0-9a-f]{8}$")
STAGING_MARKER = ".autoencoders-staging"  # written first into every staging folder
SUBFOLDERS = ("figures", "results", "models", "checkpoints")
STAGED = ("figures", "results", "models")
_held_lock = None  # the lock file of the run in this process, see `prepare_outputs`
_scratch = None    # a non-chief worker's temporary output folder, see `prepare_outputs`
_staging = []      # this process's staging folders, removed by `release` unless committed


@dataclasses.dataclass
class OutputPaths:
    """The output folders of one run: `figures`, `results` and `models` are where the lesson
    writes (staging folders until `finish` moves their files into `final`), and `checkpoints`
    where its models train."""

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
    final: dict = dataclasses.field(default_factory=dict)  # "figures" -> DIR/figures, ...

    def checkpoint(self, model_name):
        """Where `model_name` keeps its training state in this run: a `Checkpoint`, which
        `training.fit` turns into a folder once it knows the model's architecture."""
        return Checkpoint(self, model_name)

    def logs(self, model_name):
        """DIR/logs/<Script>/<model>, where TensorBoard logs go with --tensorboard; else None."""
        return self.root / "logs" / self.script / model_name if self.tensorboard else None

    def write_results(self, results):
        """Write the results as <results>/<Script>.json (see `write_results`)."""
        write_results(self.results / f"{self.script}.json", results)

    def save_models(self, **models):
        """Save each model as <models>/<name>.keras."""
        for name, model in models.items():
            save_model(model, self.models / f"{name}.keras")

    def finish(self):
        """Move this run's results, models and figures into place together, discard its
        checkpoints, and let the next run of the lesson into DIR. (A worker other than the chief
        deletes its temporary folder instead.)"""
        if self.chief:
            commit(self.checkpoints / f"{self.script}.commit.json",
                   [(getattr(self, kind), self.final[kind]) for kind in STAGED])
            for folder in self.checkpoints_used:
                remove_tree(folder)
        release()


class Checkpoint:
    """The checkpoint folder of one model of one run, DIR/checkpoints/<Script>-<model>-<hash>:
    the hash covers the run's settings and data (`settings_digest`) and the model's architecture
    and compile configuration (`architecture_fingerprint`)."""

    def __init__(self, paths, model_name):
        self.paths, self.model_name = paths, model_name

    def folder(self, model):
        identity = hashlib.sha1(f"{self.paths.settings_digest} "
                                f"{architecture_fingerprint(model)}".encode()).hexdigest()[:12]
        folder = self.paths.checkpoints / f"{self.paths.script}-{self.model_name}-{identity}"
        self.paths.checkpoints_used.append(folder)
        return folder


def checkpoint_folder(backup_dir, model):
    """The folder `training.fit` backs up into: a `Checkpoint`'s for this model, or a path."""
    if isinstance(backup_dir, Checkpoint):
        return backup_dir.folder(model)
    return pathlib.Path(backup_dir)


# Compile settings that change how training runs, not what it computes: a multi-worker run
# takes one step per execution where a single process takes 32, and resumes the same backups.
HOW_NOT_WHAT = ("steps_per_execution", "jit_compile", "run_eagerly")


def architecture_fingerprint(model):
    """A hash of what `get_config` says of the model and every layer in it, and of its compile
    configuration (optimizer, loss, metrics; not HOW_NOT_WHAT). Layer names are replaced by
    their order of appearance, so the hash does not depend on how many models this process
    built before."""
    import keras

    config = {"model": keras.saving.serialize_keras_object(model)}
    if getattr(model, "compiled", False):
        config["compile"] = model.get_compile_config()
    names = {}
    _collect_names(config, names)
    text = json.dumps(_renamed(config, names), sort_keys=True, default=_by_name)
    return hashlib.sha1(text.encode()).hexdigest()


def _by_name(value):
    """What JSON cannot hold, by its name: never a repr that holds a memory address."""
    return getattr(value, "__qualname__", None) or type(value).__qualname__


def _collect_names(value, names):
    if isinstance(value, dict):
        inner = value.get("config")
        if "class_name" in value and isinstance(inner, dict) and isinstance(inner.get("name"), str):
            names.setdefault(inner["name"], f"layer{len(names)}")
        for item in value.values():
            _collect_names(item, names)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _collect_names(item, names)


def _renamed(value, names):
    """`value` with the names replaced, and without the keys HOW_NOT_WHAT."""
    if isinstance(value, dict):
        return {k: _renamed(v, names) for k, v in value.items() if k not in HOW_NOT_WHAT}
    if isinstance(value, (list, tuple)):
        return [_renamed(v, names) for v in value]
    if isinstance(value, str):
        return names.get(value, value)
    return value


def check_writable(text, subfolders=SUBFOLDERS):
    """The --out folder, if it and each of its `subfolders` exist or could be created and
    written to, and every name in it fits the file system; nothing is created."""
    path = pathlib.Path(text)
    for folder in (path, *(path / name for name in subfolders)):
        _check_folder(folder, path)
    return path


def _check_folder(folder, out):
    def refuse(reason):
        raise UsageError(f"output folder {out} cannot be written ({reason})")

    existing = folder
    while not os.path.lexists(existing):  # (False, not an error, for a name too long)
        existing = existing.parent
    if existing.is_symlink() and not existing.exists():
        refuse(f"{existing} is a broken link")
    if not existing.is_dir():
        refuse(f"{existing} is a file")
    try:
        longest_name = os.pathconf(existing, "PC_NAME_MAX")
        longest_path = os.pathconf(existing, "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):
        longest_name, longest_path = 255, 4096
    for part in folder.absolute().parts:
        if len(os.fsencode(part)) > longest_name:
            refuse(f"the name {part[:20]}... is {len(os.fsencode(part))} bytes long; this file "
                   f"system allows {longest_name}")
    if len(os.fsencode(str(folder.absolute()))) + 200 > longest_path:  # room for the files
        refuse(f"the path is too long for this file system ({longest_path} bytes at most, "
               "with the files the lesson writes in it)")
    if not os.access(existing, os.W_OK | os.X_OK):
        refuse(f"{existing}: permission denied" if existing != out else "permission denied")


# Flags that do not change what is trained, so a rerun with another value resumes. --data is
# the path of a file: its content (`Dataset.fingerprint`) is what counts, wherever it lies.
NOT_SETTINGS = ("epochs", "out", "distribute", "tensorboard", "data")


def settings_digest(args, dataset=None):
    """A short hash of a run's settings (its flags but NOT_SETTINGS) and of its data: the images
    themselves and where they came from. It names the run's checkpoints."""
    settings = {k: str(v) for k, v in vars(args).items() if k not in NOT_SETTINGS}
    settings["backend"] = runtime.BACKEND  # each draws its own numbers: never resume another's
    if dataset is not None:
        settings["data fingerprint"] = dataset.fingerprint
        settings["data origin"] = dataset.origin
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def prepare_outputs(args, script, dataset=None):
    """Check every output folder, then create them, take the lesson's lock on DIR, complete a
    move of outputs a killed run left half-done, clear stale temporaries, and make this run's
    staging folders.

    Call it once the flags and the data are checked: bad input creates nothing.
    """
    global _scratch
    if dataset is not None:
        runtime.check_batches(args, dataset)
    digest = settings_digest(args, dataset)
    tensorboard = getattr(args, "tensorboard", False)
    if not runtime.is_chief(args):  # another worker of a multi-worker run: write nothing to DIR
        root = _scratch = pathlib.Path(tempfile.mkdtemp(prefix=f"{script}-worker-"))
        paths = OutputPaths(root, root / "figures", root / "results", root / "models",
                            pathlib.Path(args.out) / "checkpoints", script, digest, tensorboard,
                            chief=False)
        for kind in STAGED:
            getattr(paths, kind).mkdir()
        return paths
    root = pathlib.Path(args.out)
    check_writable(root, SUBFOLDERS + (("logs",) if tensorboard else ()))
    for name in SUBFOLDERS:
        folder = root / name
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as err:
            reason = err.strerror or type(err).__name__
            raise UsageError(f"output folder {folder} cannot be written ({reason})") from None
    take_lock(root / "checkpoints" / f"{script}.lock", root)
    replay_commit(root / "checkpoints" / f"{script}.commit.json")
    for name in SUBFOLDERS:
        remove_stale_temporaries(root / name)
    staging = {kind: make_staging_folder(root / kind, script) for kind in STAGED}
    return OutputPaths(root, staging["figures"], staging["results"], staging["models"],
                       root / "checkpoints", script, digest, tensorboard,
                       final={kind: root / kind for kind in STAGED})


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
    """Drop the lock on DIR, delete this run's staging folders (what it had not moved into
    place), and a non-chief worker's temporary folder: the end of a run, however it ended."""
    global _held_lock, _scratch
    while _staging:
        shutil.rmtree(_staging.pop(), ignore_errors=True)
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


# -- Temporary names, staging folders, atomic writes -----------------------------------------------

def temporary_name(path):
    """A hidden name beside `path` that says which process is writing it."""
    path = pathlib.Path(path)
    # Keep the extension: Keras picks the format by it (".keras", ".weights.h5").
    suffix = re.search(r"(\.weights\.h5|\.[A-Za-z0-9]+)?$", path.name).group(0) or ""
    token = os.urandom(4).hex()
    return path.with_name(f".{path.name[:len(path.name) - len(suffix)]}.tmp-{os.getpid()}-"
                          f"{token}{suffix}")


def make_staging_folder(folder, script):
    """A new hidden folder in `folder` where this run writes what it will move into `folder`."""
    staging = pathlib.Path(folder) / f".{script}.staging-{os.getpid()}-{os.urandom(4).hex()}"
    staging.mkdir()
    _staging.append(staging)
    (staging / STAGING_MARKER).write_text("written by a lesson of this suite; removed when the "
                                          "lesson's run ends\n")
    return staging


def remove_stale_temporaries(folder):
    """Remove what runs that are gone left half-done in `folder`: the staging folders (each
    with its marker file) at its top, and, in the checkpoints folder, which is the suite's own,
    temporary files and folders at any depth. Nothing else is touched."""
    folder = pathlib.Path(folder)
    for entry in folder.glob(".*.staging-*"):
        match = _STAGING.match(entry.name)
        if (match and entry.is_dir() and (entry / STAGING_MARKER).is_file()
                and not _process_alive(int(match.group(2)))):
            shutil.rmtree(entry, ignore_errors=True)
    if folder.name != "checkpoints":
        return
    for entry in sorted(folder.rglob(".*.tmp-*"), reverse=True):
        match = _TEMPORARY.match(entry.name)
        if match and not _process_alive(int(match.group(1))) and entry.exists():
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink()


def commit(journal, staged):
    """Move every file of the staging folders into its final folder, all or none visibly: the
    list of moves is written (atomically) first, so a kill during the renames is completed by
    `replay_commit` at the next run. `staged` is a list of (staging folder, final folder) under
    DIR, and `journal` lies in DIR/checkpoints; the list holds paths relative to DIR."""
    root = pathlib.Path(journal).parent.parent
    moves = [[os.path.relpath(item, root), os.path.relpath(final / item.name, root)]
             for staging, final in staged
             for item in sorted(pathlib.Path(staging).iterdir()) if item.name != STAGING_MARKER]
    for source, _ in moves:
        sync(root / source)
    text = json.dumps({"moves": moves})
    with writing(journal, len(text)):
        with atomic_path(journal) as tmp:
            pathlib.Path(tmp).write_text(text)
    replay_commit(journal)


def replay_commit(journal):
    """Carry out the moves listed in `journal` that are not done yet, then delete it."""
    journal = pathlib.Path(journal)
    if not journal.exists():
        return
    root = journal.parent.parent
    try:
        moves = json.loads(journal.read_text())["moves"]
    except (OSError, ValueError, KeyError, TypeError):
        moves = []  # only a whole list is ever renamed into place; this one is no list of ours
    for source, target in moves:
        if os.path.lexists(root / source):
            os.replace(root / source, root / target)
    for folder in {(root / target).parent for _, target in moves}:
        sync(folder)
    journal.unlink()
    sync(journal.parent)


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
    return {"backend": runtime.BACKEND, "dataset": dataset.name, "data_source": dataset.source,
            "train_examples": len(dataset.x_train), "test_examples": len(dataset.x_test),
            **flags}


def write_results(path, results):
    """Write `results` as indented JSON. None stands for an undefined metric; a NaN or infinite
    number means the run went wrong, and is refused (`TrainingError`) rather than written."""
    bad = sorted(set(_non_finite(results)))
    if bad:
        raise TrainingError(f"the evaluation gave non-finite numbers ({', '.join(bad)}); "
                            "nothing was written. Try a smaller --learning-rate")
    text = json.dumps(results, indent=2) + "\n"
    with writing(path, len(text)):
        with atomic_path(path) as tmp:
            with open(tmp, "w") as handle:
                handle.write(text)


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
    """`model.save` in the native `.keras` format, atomically, once there is room for it."""
    with writing(path, weights_bytes(model) + 2**20):
        with atomic_path(path) as tmp:
            model.save(tmp)


def weights_bytes(model):
    """The bytes the model's weights and its optimizer's state take (both are saved)."""
    variables = list(model.weights)
    if getattr(model, "optimizer", None) is not None:
        variables += list(model.optimizer.variables)
    return sum(math.prod(v.shape) * np.dtype(v.dtype).itemsize for v in variables)


# -- A full disk: one line naming the file, never a crash -----------------------------------------

@contextlib.contextmanager
def writing(path, size):
    """Write `path` (about `size` bytes) in the block: refused up front with `OutOfSpace` if the
    file system has not that much room and some to spare (libraries such as h5py can crash on a
    full disk instead of raising), and an error for lack of space on the way becomes one too."""
    folder = pathlib.Path(path).parent
    need = int(size * 1.1) + 2**16
    free = free_bytes(folder)
    if free < need:
        raise OutOfSpace(path, need, free)
    try:
        yield
    except OSError as err:
        if not is_out_of_space(err):
            raise
        raise OutOfSpace(path, need, free_bytes(folder)) from None


def free_bytes(folder):
    """The bytes a process may still write on the file system holding `folder` (or, for a
    folder not made yet, holding the nearest one above it that exists)."""
    folder = pathlib.Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return math.inf


def is_out_of_space(err):
    """Whether an error says the disk (or the quota) is full, as errno or as h5py's text."""
    if getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err)
    return "No space left" in text or "errno = 28" in text or "Disk quota" in text
