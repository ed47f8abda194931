"""The command line is read before Keras loads (common/early.py): `--help` and a bad flag answer
without Keras, TensorFlow, JAX or PyTorch imported, with what the full parse says, and good flags
go on to the full start. Each lesson runs in a process where importing any of those fails: the
early answer is the only one it can give."""

import contextlib
import io
import os
import subprocess
import sys

import pytest

from conftest import ROOT

LESSONS = sorted(path.stem for path in ROOT.glob("*.py"))
# Importing any of these fails in the lesson's process: what answers there never loaded them.
BLOCKER = ("import sys\n"
           "for name in ('keras', 'tensorflow', 'jax', 'torch', 'tensorboard'):\n"
           "    sys.modules[name] = None\n")


@pytest.fixture(scope="module")
def without_keras(tmp_path_factory):
    folder = tmp_path_factory.mktemp("blocked")
    (folder / "sitecustomize.py").write_text(BLOCKER)
    return {**os.environ, "PYTHONPATH": str(folder), "COLUMNS": "100",
            "AUTOENCODERS_OFFLINE": "1"}


def run(lesson, env, *flags):
    return subprocess.run([sys.executable, f"{lesson}.py", *flags], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def full_help(module, monkeypatch):
    """The help text of the lesson's parser, imported with Keras as a run would import it. The
    module is the session's (`lessons`): a second import of a lesson would register its layers
    again, and `load_model` in a later test would make the second copy's classes."""
    monkeypatch.setenv("COLUMNS", "100")
    text = io.StringIO()
    with contextlib.redirect_stdout(text), pytest.raises(SystemExit) as done:
        module.parse_args(["--help"])
    assert done.value.code == 0
    return text.getvalue()


def test_every_lesson_is_found():
    assert len(LESSONS) == 9 and "VariationalAutoEncoder_tf2" in LESSONS


@pytest.mark.parametrize("lesson", LESSONS)
def test_help_answers_before_keras_loads_with_the_full_text(lesson, lessons, without_keras,
                                                            monkeypatch):
    done = run(lesson, without_keras, "--help")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr == ""
    assert done.stdout == full_help(lessons[lesson], monkeypatch)


@pytest.mark.parametrize("lesson", ["VariationalAutoEncoder_tf2", "SparseAutoEncoder",
                                    "MaskedAutoEncoder", "VQVAE"])
def test_a_bad_flag_answers_before_keras_loads(lesson, without_keras, tmp_path):
    done = run(lesson, without_keras, "--epochs", "0", "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert done.stderr == (f"{lesson}.py: error: argument --epochs: must be a positive integer, "
                           "got '0' (see --help)\n")
    assert not (tmp_path / "out").exists()
    done = run(lesson, without_keras, "--no-such-flag")
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "unrecognized arguments: --no-such-flag" in done.stderr


def test_good_flags_go_on_to_the_full_start(without_keras, tmp_path):
    """Nothing ends the run early when its flags are good: here the start then fails, since
    Keras cannot be imported in this process, which shows that it was reached."""
    done = run("VariationalAutoEncoder_tf2", without_keras, "--epochs", "1", "--out",
               str(tmp_path / "out"))
    assert done.returncode != 0 and "keras" in done.stderr


def test_an_import_of_a_lesson_reads_no_command_line(monkeypatch):
    """Only `python <Lesson>.py` reads its arguments early: an import (a test, a notebook) does
    not, whatever sys.argv holds."""
    from common import early

    monkeypatch.setattr(sys, "argv", ["pytest", "--help"])
    assert early._running_lesson() is None


def test_tensorboard_without_tensorflow_is_refused_in_one_line(tmp_path):
    """On JAX with TensorFlow not installed, --tensorboard (whose logs Keras writes with
    tf.summary) is refused by the full parse in one line, before anything is created."""
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\nsys.modules['tensorflow'] = sys.modules['tensorboard'] = None\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "KERAS_BACKEND": "jax",
           "AUTOENCODERS_OFFLINE": "1"}
    done = run("VariationalAutoEncoder_tf2", env, "--tensorboard", "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert done.stderr == ("VariationalAutoEncoder_tf2.py: error: --tensorboard needs TensorFlow "
                           "(Keras writes the logs with tf.summary), which is not installed: pip "
                           "install -r requirements.txt (see --help)\n")
    assert not (tmp_path / "out").exists()
