"""Where a lesson writes: DIR/figures, DIR/results/<Script>.json, DIR/models, DIR/checkpoints.
With --export onnx, DIR/models also holds an ONNX copy of each model beside its .keras file.

A run's results, models and figures are staged in hidden folders and moved into place together,
through a list of moves (DIR/checkpoints/<Script>.commit.json) that the next run completes if a
kill cut it short. Every other file is written atomically, after a free-space check; one run of a
lesson at a time holds DIR; checkpoints are named by a hash of the run. What a user sees of this
is in the book, When something goes wrong (and Scaling up, for multi-worker runs).
"""

import contextlib
import dataclasses
import errno
import hashlib
import importlib.util
import json
import logging
import math
import os
import pathlib
import re
import shutil
import sys
import tempfile
import warnings

import numpy as np

from common import errors
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
_held_lock = None  # the lock file of the run in this process
_scratch = None    # a non-chief worker's temporary output folder
_staging = []      # this process's staging folders, removed by `release` unless committed
default_out_note = ""  # where a run without --out writes, and why: said when it starts writing


@dataclasses.dataclass
class Run:
    """One run of a lesson: where it writes. `figures`, `results` and `models` are staging
    folders until `finish`; `header` holds the first keys of its results."""

    root: pathlib.Path
    figures: pathlib.Path
    results: pathlib.Path
    models: pathlib.Path
    checkpoints: pathlib.Path
    script: str = "lesson"
    settings_digest: str = "default"
    header: dict = dataclasses.field(default_factory=dict)
    chief: bool = True
    checkpoints_used: list = dataclasses.field(default_factory=list)
    final: dict = dataclasses.field(default_factory=dict)  # "figures" -> DIR/figures, ...
    export: str | None = None  # "onnx": each model is also written as <name>.onnx (--export)

    def checkpoint(self, model_name, model):
        """DIR/checkpoints/<Script>-<model_name>-<identity>: the identity hashes the run's
        settings and data and the compiled model's architecture."""
        identity = hashlib.sha1(f"{self.settings_digest} "
                                f"{architecture_fingerprint(model)}".encode()).hexdigest()[:12]
        folder = self.checkpoints / f"{self.script}-{model_name}-{identity}"
        self.checkpoints_used.append(folder)
        return folder

    def logs(self, model_name):
        """DIR/logs/<Script>/<model_name>, for keras.callbacks.TensorBoard."""
        return str(self.root / "logs" / self.script / model_name)

    def write_results(self, results):
        write_results(self.results / f"{self.script}.json", results)

    def finish(self, results=None, **models):
        """Write the results and each model (<name>.keras, and <name>.onnx with --export onnx),
        move them and the figures into place together, discard the run's checkpoints and
        release DIR."""
        if results is not None:
            self.write_results(results)
        for name, model in models.items():
            save_model(model, self.models / f"{name}.keras")
            if self.export == "onnx":
                try:
                    export_onnx(model, self.models / f"{name}.onnx")
                except NotExportable as err:
                    print(f"note: {name}.keras has no ONNX copy: {err}", file=sys.stderr)
        if self.chief:
            for name in models:  # an earlier run's ONNX copy would not match the new model
                if not (self.models / f"{name}.onnx").exists():
                    with contextlib.suppress(FileNotFoundError):
                        (self.final["models"] / f"{name}.onnx").unlink()
            commit(self.checkpoints / f"{self.script}.commit.json",
                   [(getattr(self, kind), self.final[kind]) for kind in STAGED])
            for folder in self.checkpoints_used:
                remove_tree(folder)
        release()


# Compile settings that change how training runs, not what it computes: a multi-worker run
# takes one step per execution where a single process takes 32, and resumes the same backups.
HOW_NOT_WHAT = ("steps_per_execution", "jit_compile", "run_eagerly")


def architecture_fingerprint(model):
    """A hash of the model's `get_config` (every layer) and compile configuration, but
    HOW_NOT_WHAT. Layer names become their order of appearance, so the hash does not depend on
    how many models this process built before."""
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
    """`value` with the names replaced, without the keys HOW_NOT_WHAT, and without the Python
    module a class or function was defined in: a lesson's own layer is `__main__.Sampling` when
    the lesson runs as a script and `VariationalAutoEncoder_tf2.Sampling` when imported (a
    notebook, a test); its registered name is the same."""
    if isinstance(value, dict):
        return {k: _renamed(v, names) for k, v in value.items()
                if k not in HOW_NOT_WHAT and k != "module"}
    if isinstance(value, (list, tuple)):
        return [_renamed(v, names) for v in value]
    if isinstance(value, str):
        return names.get(value, value)
    return value


def check_writable(text, subfolders=SUBFOLDERS):
    """The --out folder, if it and its `subfolders` could be created and written, with names
    the file system allows; `UsageError` otherwise. Nothing is created."""
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
        reason = "read-only file system" if _read_only(existing) else "permission denied"
        refuse(f"{existing}: {reason}" if existing != out else reason)


def _read_only(folder):
    """Whether `folder` lies on a file system mounted read-only."""
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        return False


# Flags that do not change what is trained, so a rerun with another value resumes. --data is
# the path of a file: its content (`Dataset.fingerprint`) is what counts, wherever it lies.
NOT_SETTINGS = ("epochs", "out", "distribute", "tensorboard", "data", "mean_comparison",
                "export")


def settings_digest(args, dataset=None):
    """A short hash of the flags (but NOT_SETTINGS), the backend and the data's content and
    origin: it names the run's checkpoints."""
    settings = {k: str(v) for k, v in vars(args).items() if k not in NOT_SETTINGS}
    settings["backend"] = runtime.BACKEND
    if dataset is not None:
        settings["data fingerprint"] = dataset.fingerprint
        settings["data origin"] = dataset.origin
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def start(args, script, dataset):
    """Begin a run, once the flags and data are checked (bad input creates nothing):
    `open_folders`, then `runtime.setup`, which prints the `device:` line."""
    runtime.check_batches(args, dataset)
    if getattr(args, "export", None) and getattr(args, "mixed_precision", False):
        raise UsageError("--export onnx needs float32 models, and --mixed-precision computes in "
                         "float16 or bfloat16: drop one of them")
    run = open_folders(args, script, settings_digest(args, dataset),
                       results_header(args, dataset))
    runtime.setup(args)
    return run


def open_folders(args, script, digest="default", header=None):
    """Check and create the output folders, take the lesson's lock on DIR, complete an
    interrupted commit, clear stale temporaries and make the staging folders. A non-chief
    worker writes into a temporary folder instead."""
    global _scratch
    header = header or {}
    if not runtime.is_chief(args):
        root = _scratch = pathlib.Path(tempfile.mkdtemp(prefix=f"{script}-worker-"))
        run = Run(root, root / "figures", root / "results", root / "models",
                  pathlib.Path(args.out) / "checkpoints", script, digest, header, chief=False,
                  export=getattr(args, "export", None))
        for kind in STAGED:
            getattr(run, kind).mkdir()
        return run
    root = pathlib.Path(args.out)
    check_writable(root, SUBFOLDERS + (("logs",) if getattr(args, "tensorboard", False) else ()))
    global default_out_note
    if default_out_note:
        print(default_out_note, file=sys.stderr)
        default_out_note = ""
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
    return Run(root, staging["figures"], staging["results"], staging["models"],
               root / "checkpoints", script, digest, header,
               final={kind: root / kind for kind in STAGED},
               export=getattr(args, "export", None))


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
        raise UsageError(f"another run of this lesson (process {holder}, in a terminal or a "
                         f"notebook's kernel) has not finished with {root}; wait for it to "
                         "finish, or pass another --out") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    _held_lock = handle
    shell = errors.ipython()
    if shell is not None and _release_after_a_failed_cell not in shell.events.callbacks[
            "post_run_cell"]:
        shell.events.register("post_run_cell", _release_after_a_failed_cell)


def _release_after_a_failed_cell(result):
    """In a notebook, a run ends when a cell fails (an error, an interrupt), as a script's
    would: the lock and the staging folders go; its backups stay, to resume from."""
    if not result.success:
        release()


def release():
    """The end of a run, however it ended: delete its staging folders (what was not moved into
    place) and a non-chief worker's temporary folder, and drop the lock on DIR."""
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
    """Remove what runs that are gone left in `folder`: staging folders holding the marker, and
    in DIR/checkpoints, temporaries at any depth. Nothing else is touched."""
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
    """Move every file of the staging folders into its final folder: the list of moves (paths
    relative to DIR) is written atomically to `journal` first, so that `replay_commit` can
    complete it after a kill. `staged`: (staging folder, final folder) pairs under DIR."""
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
             if k not in ("out", "dataset")}
    return {"backend": runtime.BACKEND, "dataset": dataset.name or dataset.title,
            "data_source": dataset.source,
            "train_examples": len(dataset.x_train), "test_examples": len(dataset.x_test),
            **flags}


def write_results(path, results):
    """Write `results` as indented JSON, atomically. None stands for an undefined metric; a NaN
    or infinite number is refused (`TrainingError`)."""
    bad = sorted(set(_non_finite(results)))
    if bad:
        raise TrainingError(f"the evaluation gave non-finite numbers ({', '.join(bad)}); "
                            "nothing was written. Try a smaller --learning-rate")
    text = json.dumps(results, indent=2) + "\n"
    with writing(path, len(text)):
        with atomic_path(path) as tmp:
            pathlib.Path(tmp).write_text(text)


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


# -- ONNX copies of the models (--export onnx) -----------------------------------------------------
# Keras's `model.export(path, format="onnx")` converts the model's forward pass: on TensorFlow
# with tf2onnx, on PyTorch with torch.onnx. On JAX it goes through jax2onnx, which brings Flax and
# its checkpointing libraries with it; a model saved on JAX loads on the other two, to export there.

ONNX_EXPORTERS = {"tensorflow": ("onnx", "tf2onnx"), "torch": ("onnx",)}  # modules each needs
ONNX_CONVERTERS = {"tensorflow": "tf2onnx", "torch": "torch.onnx"}
ONNX_TOLERANCE = 1e-4  # ONNX Runtime against Keras, relative and absolute: float32 round-off


class NotExportable(Exception):
    """A model that ONNX cannot express here, or whose ONNX copy computes something else."""


def check_export(text):
    """The value of --export, if this backend can export to it and the packages of
    requirements-export.txt are installed; `UsageError` otherwise."""
    if text != "onnx":
        raise UsageError(f"the one format is onnx, got {text!r}")
    if runtime.BACKEND not in ONNX_EXPORTERS:
        raise UsageError(f"KERAS_BACKEND={runtime.BACKEND} cannot export to ONNX here (Keras "
                         "does it through jax2onnx, which needs Flax); train with tensorflow or "
                         "torch, or load the saved .keras model on one of them and export there")
    needed = (*ONNX_EXPORTERS[runtime.BACKEND], "onnxruntime")  # onnxruntime checks each copy
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(f"ONNX export needs {', '.join(missing)}, not installed: "
                         "pip install -r requirements-export.txt")
    return text


def export_onnx(model, path):
    """Write `model` as ONNX at `path`, atomically, once ONNX Runtime has loaded the copy and
    given Keras's outputs on a few inputs; `NotExportable` (and no file) otherwise: a model that
    draws random numbers (the VAE's Sampling layer) or uses an operation the converter lacks."""
    with writing(path, weights_bytes(model) + 2**20):
        with atomic_path(path) as tmp:
            _export_and_check(model, tmp)


def _export_and_check(model, path):
    import keras
    import onnx
    import onnxruntime

    rng = np.random.default_rng(0)
    inputs = [(rng.random((2, *spec.shape[1:])) if "float" in str(spec.dtype)
               else np.zeros((2, *spec.shape[1:]))).astype(spec.dtype) for spec in model.inputs]
    expected = model(inputs if len(inputs) > 1 else inputs[0], training=False)
    expected = [keras.ops.convert_to_numpy(x) for x in keras.tree.flatten(expected)]
    converter = ONNX_CONVERTERS[runtime.BACKEND]
    with _failing_as(f"{converter} could not convert it"):
        with _quiet():
            model.export(path, format="onnx", verbose=False)
    unknown = sorted({node.op_type for node in onnx.load(path).graph.node
                      if node.domain in ("", "ai.onnx") and not onnx.defs.has(node.op_type)})
    if unknown:
        raise NotExportable(f"{converter} left operations ONNX does not have "
                            f"({', '.join(unknown)})")
    with _failing_as(f"ONNX Runtime cannot run what {converter} wrote"):
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        outputs = session.run(None, {spec.name: x for spec, x in zip(session.get_inputs(), inputs)})
    if len(outputs) != len(expected) or not all(
            np.allclose(got, want, rtol=ONNX_TOLERANCE, atol=ONNX_TOLERANCE)
            for got, want in zip(outputs, expected)):
        raise NotExportable("ONNX Runtime's outputs differ from Keras's (a random draw inside "
                            "the model?)")


@contextlib.contextmanager
def _failing_as(what):
    """`NotExportable(what (the error))` for whatever the block raises: the converters and ONNX
    Runtime fail in many ways. A full disk is not one of them: `writing` reports it."""
    try:
        yield
    except Exception as err:
        if isinstance(err, OSError) and is_out_of_space(err):
            raise
        text = str(err).strip().split(" failed:", 1)[-1]  # ONNX Runtime's "Load model from PATH"
        reason = re.split(r"\. |\n| \[", text.strip())[0][:120]
        raise NotExportable(f"{what} ({type(err).__name__}: {reason})") from None


@contextlib.contextmanager
def _quiet():
    """Without what the converters say about their own internals: tf2onnx logs the operations
    it cannot convert, and PyTorch's exporter prints its whole graph when it fails (from C++,
    straight to file descriptor 1). The check after the export says what matters, in one line."""
    logging.disable(logging.CRITICAL)
    saved = {}
    try:
        with open(os.devnull, "w") as devnull, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(OSError, ValueError, AttributeError):
                    stream.flush()
            for fd in (1, 2):
                with contextlib.suppress(OSError):
                    saved[fd] = os.dup(fd)
                    os.dup2(devnull.fileno(), fd)
            yield
    finally:
        for fd, original in saved.items():
            os.dup2(original, fd)
            os.close(original)
        logging.disable(logging.NOTSET)


# -- A full disk: one line naming the file, never a crash -----------------------------------------

@contextlib.contextmanager
def writing(path, size):
    """Write `path` (about `size` bytes) in the block: `OutOfSpace` up front if the file system
    has not that room and some to spare (h5py can crash on a full disk instead of raising), and
    for an out-of-space error on the way."""
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
    """The bytes a process may still write on the file system holding `folder`, or the nearest
    folder above it that exists."""
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
