"""Where a lesson writes: DIR/figures, DIR/results/<Script>.json, DIR/models, DIR/checkpoints.

The folders are created and checked for writing before any training starts, and every file is
written to a temporary name first and then renamed, so an interrupted run never leaves a
half-written figure, result or model behind.
"""

import contextlib
import dataclasses
import json
import math
import os
import pathlib
import tempfile

from common.errors import UsageError


_UMASK = os.umask(0)
os.umask(_UMASK)


@dataclasses.dataclass
class OutputPaths:
    root: pathlib.Path
    figures: pathlib.Path
    results: pathlib.Path
    models: pathlib.Path
    checkpoints: pathlib.Path


def prepare_outputs(out_dir):
    """Create the output folders under `out_dir` and check that each one can be written to."""
    root = pathlib.Path(out_dir)
    paths = OutputPaths(root, root / "figures", root / "results", root / "models",
                        root / "checkpoints")
    for folder in (paths.figures, paths.results, paths.models, paths.checkpoints):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as err:
            reason = err.strerror or type(err).__name__
            raise UsageError(f"output folder {folder} cannot be written ({reason})") from None
    return paths


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it to `path` only if the block succeeds."""
    path = pathlib.Path(path)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=path.suffix)
    os.close(handle)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes private files; use the usual mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_results(path, results):
    """Write `results` as indented JSON; non-finite numbers are refused rather than written."""
    bad = [k for k, v in results.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise ValueError(f"non-finite results: {', '.join(bad)}")
    with atomic_path(path) as tmp:
        with open(tmp, "w") as handle:
            json.dump(results, handle, indent=2)
            handle.write("\n")


def save_model(model, path):
    """`model.save` in the native `.keras` format, atomically."""
    with atomic_path(path) as tmp:
        model.save(tmp)
