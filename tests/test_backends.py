"""Every lesson on JAX and on PyTorch, as `KERAS_BACKEND=jax python <lesson>.py` runs it: finite
results that name the backend, the penalties in the log, the same numbers twice from the same
seed, models that load on the other backends and compute the same outputs, mixed precision,
JAX's DataParallel, and what a backend cannot do refused before anything happens. The
backend-neutral unit tests (marked `every_backend`) run here on JAX and PyTorch too; the rest of
the suite runs on TensorFlow, the default, and tf.distribute's tests are TensorFlow's by nature.

Keras fixes its backend when it is first imported, so each run is a process of its own.
"""

import json
import math
import os
import re
import subprocess
import sys
import zipfile

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
           "ContractiveAutoEncoder": "jacobian_norm_sq"}
TIMING = ("seconds", "epoch_seconds")  # keys that measure the machine, not the model


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

    def run(backend, name, *flags, again=False, **env):
        key = (backend, name, flags, again, tuple(env.items()))
        if key not in cache:
            out = tmp_path_factory.mktemp(f"{backend}-{name}")
            cache[key] = Run(backend, name, out, small_mnist_npz, *flags, **env)
        return cache[key]

    return run


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
def test_every_lesson_runs_on_the_backend_and_names_it(backend_run, backend, name):
    run = backend_run(backend, name)
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
def test_the_same_seed_gives_the_same_numbers_twice(backend_run, backend):
    first, again = backend_run(backend, VAE), backend_run(backend, VAE, again=True)
    assert first.returncode == again.returncode == 0, again.stderr[-3000:]
    assert dict(numbers(again.results)) == dict(numbers(first.results))


def test_models_move_between_backends_with_the_same_outputs(backend_run, tiny_run, tmp_path):
    """Every lesson's models, saved on one of the three backends in turn (so each backend saves
    some lessons' models, and each lesson is saved by one), load on all three and compute the
    same outputs on the same inputs (to float32 round-off). Every model saved on any backend
    keeps the portable compile configuration."""
    plan = []
    for i, name in enumerate(LESSONS):
        runs = {"tensorflow": tiny_run(name).out,
                **{b: backend_run(b, name).out for b in OTHER_BACKENDS}}
        for out in runs.values():  # saved with the compile configuration every backend accepts
            for path in (out / "models").glob("*.keras"):
                compiled = json.loads(zipfile.ZipFile(path).read("config.json")).get(
                    "compile_config")
                if compiled:
                    assert (compiled["steps_per_execution"], compiled["jit_compile"]) == (1, False)
        saved_on = list(runs)[i % len(runs)]
        paths = [str(p) for p in sorted((runs[saved_on] / "models").glob("*.keras"))]
        assert paths, (name, saved_on)
        plan.append((FIRST_IMPORT[name], paths))
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    computed = {}
    for backend in BACKEND_NAMES:
        out = tmp_path / f"{backend}.npz"
        done = on_backend(backend, [sys.executable, str(ROOT / "tests" / "backend_check.py"),
                                    str(tmp_path / "plan.json"), str(out)])
        assert done.returncode == 0, done.stderr[-3000:]
        computed[backend] = dict(np.load(out))
        assert str(computed[backend].pop("backend")) == backend
    keys = computed["tensorflow"].keys()
    assert len(keys) >= len(LESSONS) and all(computed[b].keys() == keys for b in OTHER_BACKENDS)
    for key in keys:  # a model saved on one backend, computed by all three
        for backend in OTHER_BACKENDS:
            np.testing.assert_allclose(computed[backend][key], computed["tensorflow"][key],
                                       rtol=2e-5, atol=2e-5, err_msg=f"{key} on {backend}")


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_mixed_precision_runs_on_the_backend(backend_run, backend):
    run = backend_run(backend, VAE, "--mixed-precision")
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"{BACKEND_NAMES[backend]} backend, mixed_bfloat16" in run.stderr
    assert run.results["mixed_precision"] is True
    assert 0 < run.results["test_neg_elbo_nats"] < 1000


def test_mirrored_on_jax_is_data_parallel_over_two_host_devices(backend_run):
    run = backend_run("jax", VAE, "--distribute", "mirrored",
                      XLA_FLAGS="--xla_force_host_platform_device_count=2")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "mirrored over 2 devices (keras.distribution.DataParallel)" in run.stderr
    assert 0 < run.results["test_neg_elbo_nats"] < 1000


@pytest.mark.parametrize("backend, distribute", [("torch", "mirrored"),
                                                 ("torch", "multi-worker"),
                                                 ("jax", "multi-worker")])
def test_what_a_backend_cannot_do_is_refused_before_anything_happens(backend, distribute,
                                                                     tmp_path):
    out = tmp_path / "out"
    done = on_backend(backend, [sys.executable, f"{VAE}.py", "--distribute", distribute,
                                "--out", str(out)], timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"{VAE}.py: error: --distribute {distribute} runs on "
        f"{'TensorFlow or JAX' if distribute == 'mirrored' else 'TensorFlow'}, not on the "
        f"{BACKEND_NAMES[backend]} backend (KERAS_BACKEND); see the book, Backends"]
    assert not out.exists()


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_the_backend_neutral_unit_tests_pass_on_the_backend(backend):
    done = on_backend(backend, [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                "-m", "every_backend", "tests"])
    assert done.returncode == 0, done.stdout[-3000:]
    passed = re.search(r"(\d+) passed", done.stdout)
    assert passed and int(passed.group(1)) >= 20 and "failed" not in done.stdout


def test_mirrored_on_jax_refuses_a_batch_its_devices_cannot_share(small_mnist_npz, tmp_path):
    out = tmp_path / "out"
    done = on_backend("jax", [sys.executable, f"{VAE}.py", "--data", str(small_mnist_npz),
                              "--limit", "101", "--batch-size", "64", "--distribute", "mirrored",
                              "--out", str(out)],
                      timeout=120, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"{VAE}.py: error: --distribute mirrored on JAX splits every batch over its 2 devices, "
        "and 101 training images in batches of 64 leave a batch of 37: choose a --batch-size "
        "(or --limit) that 2 devices can share")
    assert not out.exists()


PREDICT_ON_TWO_DEVICES = """
import numpy as np
import common, keras
from common import training
model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])
x = np.random.default_rng(0).random((7, 3)).astype("float32")
alone = training.predict(model, x, batch_size=4)
keras.distribution.set_distribution(keras.distribution.DataParallel())
shared = training.predict(model, x, batch_size=5)  # 7 rows and batches of 5: neither even
assert alone.shape == shared.shape == (7, 4), (alone.shape, shared.shape)
np.testing.assert_allclose(shared, alone, rtol=1e-6)
print("devices", keras.distribution.distribution().device_mesh.devices.size)
"""


def test_predict_on_jax_pads_what_two_devices_cannot_share():
    done = on_backend("jax", [sys.executable, "-c", PREDICT_ON_TWO_DEVICES], timeout=120,
                      XLA_FLAGS="--xla_force_host_platform_device_count=2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-2:] == ["devices", "2"]
