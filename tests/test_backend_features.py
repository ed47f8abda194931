"""What each backend supports beyond a plain run, and what it refuses: mixed precision, JAX's
DataParallel over two host devices, the backend-neutral unit tests on JAX and on PyTorch, and the
distributions a backend cannot run, and a backend that is not installed, refused before anything
happens. (tests/test_backends.py runs every lesson on each backend; the two modules run side by side
under `pytest -n 2`.)
"""

import re
import sys

import pytest

from common.runtime import BACKEND_NAMES
from test_backends import OTHER_BACKENDS
from test_backends import VAE
from test_backends import backend_run  # noqa: F401,F811 - the fixture, shared
from test_backends import on_backend


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


def test_the_default_backend_without_tensorflow_is_refused_in_one_line(tmp_path):
    """TensorFlow, the default backend, where it is not installed (tests/backend_runs.py hides
    it, as for the JAX and PyTorch runs): one line and status 2, as `import common` starts."""
    done = on_backend("tensorflow", [sys.executable, "tests/backend_runs.py",
                                     "--without-tensorflow", str(tmp_path / "plan.json")],
                      timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "backend_runs.py: error: the tensorflow backend needs TensorFlow, which is not installed: "
        "pip install -r requirements.txt, or set KERAS_BACKEND=jax or torch (see the book, "
        "Backends)"]


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
import common, keras
import numpy as np
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
