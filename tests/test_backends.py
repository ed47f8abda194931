"""Every lesson on JAX and on PyTorch, in a process where TensorFlow cannot be imported (as on a
machine without it): finite results that name the backend, the penalties in the log, the same
numbers twice from the same seed (once among the other lessons in one process, once as
`KERAS_BACKEND=jax python <lesson>.py` runs it, with TensorFlow installed), and models that load on
the other backends and compute the same outputs. tests/test_backend_features.py has the rest (mixed
precision, JAX's DataParallel, the backend-neutral unit tests, what a backend refuses); the rest of
the suite runs on TensorFlow, the default.

Keras fixes its backend when it is first imported, so each backend runs in processes of its own.
"""

import json
import math
import os
import pathlib
import subprocess
import sys
import zipfile
from typing import NamedTuple

import numpy as np
import pytest

from common.runtime import BACKEND_NAMES
from conftest import FIRST_IMPORT
from conftest import LESSONS
from conftest import ROOT
from conftest import TINY_ARGS

OTHER_BACKENDS = ["jax", "torch"]
VAE = "VariationalAutoEncoder_tf2"
# The unweighted penalty each lesson logs beside its loss (through PenalizedModel).
PENALTY = {VAE: "kl_loss", "ConditionalVAE": "kl_loss", "SparseAutoEncoder": "kl_sparsity",
           "ContractiveAutoEncoder": "jacobian_norm_sq", "VQVAE": "commitment_loss"}
TIMING = ("seconds", "epoch_seconds")  # keys that measure the machine, not the model
# The backend that saves each lesson's models for the others to load, in turn: each backend
# saves some lessons' models. On TensorFlow (whose runs the rest of the suite tests) only these
# lessons run here.
SAVED_ON = {name: list(BACKEND_NAMES)[i % len(BACKEND_NAMES)] for i, name in enumerate(LESSONS)}


def on_backend(backend, command, timeout=600, **env):
    """Run `command` as a user would, with KERAS_BACKEND=`backend`. (Importing TensorFlow here
    set TF_CPP_MIN_LOG_LEVEL=1 in this process, which would ask the child for TensorFlow's
    start-up notes; a user's shell has no such setting.)"""
    inherited = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**inherited, "KERAS_BACKEND": backend, **env})


class Run:
    """One run of a lesson in a process of its own: its folder, exit status, results, and what
    it printed (the training log on stdout, the `device:` line on stderr)."""

    def __init__(self, backend, name, out, data, *flags, **env):
        argv = [sys.executable, f"{name}.py", "--data", str(data), "--out", str(out),
                *TINY_ARGS[name], *flags]
        done = on_backend(backend, argv, **env)
        self.out, self.returncode = out, done.returncode
        self.stdout, self.stderr = done.stdout, done.stderr
        path = out / "results" / f"{name}.json"
        self.results = json.loads(path.read_text()) if path.exists() else None


@pytest.fixture(scope="module")
def backend_run(small_mnist_npz, tmp_path_factory):
    """backend_run(backend, name, *flags): one run of a lesson on the small data file with its
    TINY_ARGS, cached for the module."""
    cache = {}

    def run(backend, name, *flags, **env):
        key = (backend, name, flags, tuple(env.items()))
        if key not in cache:
            out = tmp_path_factory.mktemp(f"{backend}-{name}")
            cache[key] = Run(backend, name, out, small_mnist_npz, *flags, **env)
        return cache[key]

    return run


class InProcess(NamedTuple):
    """One lesson's run among those `tests/backend_runs.py` ran in one process."""

    out: pathlib.Path
    returncode: int
    stdout: str
    stderr: str
    results: dict


def lessons_wanted(request):
    """The lessons the selected tests of this module need (`make test-fast` selects one)."""
    wanted = set()
    for item in request.session.items:
        if item.module is request.module:
            if item.originalname == "test_models_move_between_backends_with_the_same_outputs":
                wanted.update(LESSONS)
            params = getattr(item, "callspec", None)
            wanted.add(params.params.get("name", VAE) if params else VAE)
    return [name for name in LESSONS if name in wanted]


@pytest.fixture(scope="module")
def every_lesson_on(request, small_mnist_npz, tmp_path_factory):
    """every_lesson_on(backend)[name]: every lesson's tiny run on `backend`, all of them in one
    process (Keras and the backend start once), the three backends' processes side by side, JAX
    and PyTorch without TensorFlow (the process fails if it was imported); on TensorFlow only
    the lessons whose models it saves for the others (SAVED_ON); cached for the module."""
    cache, wanted = {}, lessons_wanted(request)

    def lessons_on(backend):
        return [name for name in wanted
                if backend in OTHER_BACKENDS or SAVED_ON[name] == backend]

    def start(backend):
        folder = tmp_path_factory.mktemp(f"{backend}-lessons")
        plan = [[name, ["--data", str(small_mnist_npz), "--out", str(folder / name),
                        *TINY_ARGS[name]], str(folder / name)] for name in lessons_on(backend)]
        (folder / "plan.json").write_text(json.dumps(plan))
        inherited = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
        without = ["--without-tensorflow"] if backend in OTHER_BACKENDS else []
        child = subprocess.Popen([sys.executable, str(ROOT / "tests" / "backend_runs.py"),
                                  *without, str(folder / "plan.json")], cwd=ROOT, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 env={**inherited, "KERAS_BACKEND": backend})
        return folder, child

    def finish(backend, folder, child):
        _, stderr = child.communicate(timeout=1800)
        assert child.returncode == 0, stderr[-3000:]
        runs = {}
        for name in lessons_on(backend):
            out = folder / name
            path = out / "results" / f"{name}.json"
            runs[name] = InProcess(out, int((out / "status.txt").read_text()),
                                   (out / "stdout.txt").read_text(),
                                   (out / "stderr.txt").read_text(),
                                   json.loads(path.read_text()) if path.exists() else None)
        return runs

    def runs(backend):
        if not cache:
            started = {b: start(b) for b in BACKEND_NAMES}
            cache.update({b: finish(b, *started[b]) for b in BACKEND_NAMES})
        return cache[backend]

    return runs


def numbers(results, key="results"):
    """Every number in the results, by its path, leaving out the machine's timings."""
    if isinstance(results, dict):
        for k, v in results.items():
            if not any(word in k for word in TIMING):
                yield from numbers(v, f"{key}.{k}")
    elif isinstance(results, list):
        for i, v in enumerate(results):
            yield from numbers(v, f"{key}[{i}]")
    elif isinstance(results, (int, float)) and not isinstance(results, bool):
        yield key, results


@pytest.mark.parametrize("name", LESSONS)
@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_every_lesson_runs_on_the_backend_and_names_it(every_lesson_on, backend, name):
    run = every_lesson_on(backend)[name]
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.results["backend"] == backend
    device = [line for line in run.stderr.splitlines() if line.startswith("device:")]
    assert len(device) == 1 and f"{BACKEND_NAMES[backend]} backend" in device[0], device
    values = dict(numbers(run.results))
    assert values and all(math.isfinite(v) for v in values.values())
    if name in PENALTY:  # the layer's penalty, logged by the model on every backend
        assert f" - {PENALTY[name]}: " in run.stdout and f" - val_{PENALTY[name]}: " in run.stdout
    assert (run.out / "models").is_dir() and (run.out / "figures").is_dir()
    assert not list((run.out / "checkpoints").glob("*-*"))  # discarded once all was written


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_the_same_seed_gives_the_same_numbers_twice(every_lesson_on, backend_run, backend):
    """Once among the other lessons in one process, and once from the command line alone."""
    first, again = every_lesson_on(backend)[VAE], backend_run(backend, VAE)
    assert first.returncode == again.returncode == 0, again.stderr[-3000:]
    assert dict(numbers(again.results)) == dict(numbers(first.results))


def test_models_move_between_backends_with_the_same_outputs(every_lesson_on, tmp_path):
    """Every lesson's models, saved on one of the three backends in turn (so each backend saves
    some lessons' models, and each lesson is saved by one), load on all three and compute the
    same outputs on the same inputs (to float32 round-off). Every model saved on any backend
    keeps the portable compile configuration."""
    plan = []
    for name in LESSONS:
        runs = {b: every_lesson_on(b)[name].out for b in BACKEND_NAMES
                if name in every_lesson_on(b)}
        for out in runs.values():  # saved with the compile configuration every backend accepts
            for path in (out / "models").glob("*.keras"):
                compiled = json.loads(zipfile.ZipFile(path).read("config.json")).get(
                    "compile_config")
                if compiled:
                    assert (compiled["steps_per_execution"], compiled["jit_compile"]) == (1, False)
        paths = [str(p) for p in sorted((runs[SAVED_ON[name]] / "models").glob("*.keras"))]
        assert paths, (name, SAVED_ON[name])
        plan.append((FIRST_IMPORT[name], paths))
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    inherited = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    checks = {backend: subprocess.Popen(  # the three backends side by side
        [sys.executable, str(ROOT / "tests" / "backend_check.py"), str(tmp_path / "plan.json"),
         str(tmp_path / f"{backend}.npz")], cwd=ROOT, text=True, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env={**inherited, "KERAS_BACKEND": backend})
        for backend in BACKEND_NAMES}
    computed = {}
    for backend, check in checks.items():
        _, stderr = check.communicate(timeout=900)
        assert check.returncode == 0, stderr[-3000:]
        computed[backend] = dict(np.load(tmp_path / f"{backend}.npz"))
        assert str(computed[backend].pop("backend")) == backend
    keys = computed["tensorflow"].keys()
    assert len(keys) >= len(LESSONS) and all(computed[b].keys() == keys for b in OTHER_BACKENDS)
    for key in keys:  # a model saved on one backend, computed by all three
        for backend in OTHER_BACKENDS:
            np.testing.assert_allclose(computed[backend][key], computed["tensorflow"][key],
                                       rtol=2e-5, atol=2e-5, err_msg=f"{key} on {backend}")
