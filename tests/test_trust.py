"""What a real user does to a run, and what the suite promises in each case (the book, "When
something goes wrong"): other data behind the same path, an edited lesson, a full disk, a
SIGTERM, a closed pipe or closed streams, the largest seed, names too long for the file system.

Every fault is made deterministically: a kill lands right after an epoch's backup (a patched
backup writer), a signal is sent by the process to itself at that same point, a small tmpfs is
filled (or, where none can be mounted, the writer fails as a full disk would).
"""

import errno
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from common import outputs
from common import training
from conftest import ROOT
from conftest import assert_usage_error
from conftest import run_main

NAME = "VariationalAutoEncoder_tf2"
FAST = ["--epochs", "2", "--limit", "128", "--iwae-samples", "2", "--batch-size", "64",
        "--no-mean-comparison"]
OUTPUT_KINDS = ("results", "models", "figures")


def vae_argv(data, out, *extra):
    return ["--data", data, "--out", out, *FAST, *extra]


@pytest.fixture
def killed_after_epoch(monkeypatch):
    """killed_after_epoch(n): the next run dies (KeyboardInterrupt) right after it has backed up
    epoch n, as a kill at that instant would leave it. Returns the monkeypatch, to undo it."""
    original = training.ResumableBackup._save_model

    def install(epoch=1):
        def save_then_die(backup):
            original(backup)
            if backup._current_epoch == epoch:
                raise KeyboardInterrupt

        monkeypatch.setattr(training.ResumableBackup, "_save_model", save_then_die)
        return monkeypatch

    return install


def checkpoint_folders(out):
    return sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir())


def snapshot(out):
    """The bytes of every result, model and figure under `out`."""
    return {p.relative_to(out): p.read_bytes() for kind in OUTPUT_KINDS
            for p in sorted((out / kind).glob("*")) if p.is_file()}


def resumed(err):
    return [line for line in err if "resumes after epoch" in line]


# -- A checkpoint belongs to one run ---------------------------------------------------------

def test_other_data_behind_the_same_path_starts_fresh_and_leaves_the_old_backup(
        lessons, small_mnist_npz, tmp_path, capsys, killed_after_epoch):
    lesson, out, data = lessons[NAME], tmp_path / "out", tmp_path / "digits.npz"
    with np.load(small_mnist_npz) as arrays:
        original = dict(arrays)
    np.savez(data, **original)
    patch = killed_after_epoch(1)
    assert run_main(lesson.main, vae_argv(data, out), capsys)[0] == 130
    patch.undo()
    first, = checkpoint_folders(out)

    # Other images in the same file: the old weights must not be resumed on them.
    other = dict(original, x_train=original["x_train"][::-1].copy())
    np.savez(data, **other)
    status, stdout, err = run_main(lesson.main, vae_argv(data, out), capsys)
    assert status == 0, err
    assert not resumed(err) and "Epoch 1/2" in stdout
    assert checkpoint_folders(out) == [first]  # the other run's backup is left alone

    # The original data again, now at another path: it is the same run, and it resumes.
    moved = tmp_path / "elsewhere.npz"
    np.savez(moved, **original)
    status, _, err = run_main(lesson.main, vae_argv(moved, out), capsys)
    assert status == 0 and len(resumed(err)) == 1 and "epoch 1 of 2" in resumed(err)[0], err
    assert checkpoint_folders(out) == []


def _import_copy(path):
    spec = importlib.util.spec_from_file_location(f"edited_{os.urandom(4).hex()}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_an_edited_lesson_starts_fresh_and_the_original_still_resumes(
        small_mnist_npz, tmp_path, capsys, killed_after_epoch):
    """A learner changes HIDDEN_UNITS, or an activation with the same sizes, in a copy."""
    copy = tmp_path / "copy" / f"{NAME}.py"
    copy.parent.mkdir()
    source = (ROOT / f"{NAME}.py").read_text()
    copy.write_text(source)
    out = tmp_path / "out"
    patch = killed_after_epoch(1)
    assert run_main(_import_copy(copy).main, vae_argv(small_mnist_npz, out), capsys)[0] == 130
    patch.undo()
    original, = checkpoint_folders(out)

    edits = [("HIDDEN_UNITS = 512", "HIDDEN_UNITS = 256"),
             ('activation="relu", name="encoder_hidden"',
              'activation="tanh", name="encoder_hidden"')]
    for old, new in edits:
        assert old in source
        copy.write_text(source.replace(old, new, 1))
        status, stdout, err = run_main(_import_copy(copy).main,
                                       vae_argv(small_mnist_npz, out), capsys)
        assert status == 0, err
        assert not resumed(err) and "Epoch 1/2" in stdout, (new, err)
        assert checkpoint_folders(out) == [original]  # kept, not deleted as unreadable

    copy.write_text(source)  # back to the original code: its progress is still there
    status, _, err = run_main(_import_copy(copy).main, vae_argv(small_mnist_npz, out), capsys)
    assert status == 0 and "vae resumes after epoch 1 of 2" in " ".join(err), err


# -- A full disk -------------------------------------------------------------------------------

@pytest.fixture
def small_filesystem(tmp_path):
    """A tmpfs of 2 MB mounted under tmp_path, and a function to resize it; skipped where no
    file system can be mounted (not root, or in a container that forbids it)."""
    folder = tmp_path / "small"
    folder.mkdir()
    mount = shutil.which("mount")
    if mount is None or os.geteuid() != 0 or subprocess.run(
            [mount, "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)],
            capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here; test_a_full_disk_while_saving_a_model... "
                    "injects the fault instead")

    def resize(size):
        subprocess.run([mount, "-o", f"remount,size={size}", str(folder)], check=True)

    yield folder, resize
    subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_file_system_stops_in_one_line_and_the_same_command_finishes_later(
        lessons, small_mnist_npz, small_filesystem, capsys):
    folder, resize = small_filesystem
    out = folder / "out"
    argv = vae_argv(small_mnist_npz, out)
    status, _, err = run_main(lessons[NAME].main, argv, capsys)
    assert status == 1, err
    assert err[-1].startswith(f"{NAME}.py: no room to write {out / 'checkpoints'}")
    assert "MB free" in err[-1] and "run the same command again" in err[-1]
    assert not any("Traceback" in line for line in err)
    assert not snapshot(out)

    resize("64m")  # room again: the same command runs to the end
    status, _, err = run_main(lessons[NAME].main, argv, capsys)
    assert status == 0, err
    assert (out / "results" / f"{NAME}.json").exists()


def test_too_little_room_for_a_backup_is_refused_before_writing(lessons, small_mnist_npz,
                                                                 tmp_path, capsys, monkeypatch):
    """The space is checked before h5py writes (h5py can crash on a full disk)."""
    monkeypatch.setattr(outputs, "free_bytes", lambda folder: 500_000)
    out = tmp_path / "out"
    status, _, err = run_main(lessons[NAME].main, vae_argv(small_mnist_npz, out), capsys)
    assert status == 1 and "no room to write" in err[-1] and "488 kB free" in err[-1], err
    assert not list((out / "checkpoints").rglob("*.h5"))


def test_a_full_disk_while_saving_a_model_leaves_the_previous_run_whole(
        lessons, small_mnist_npz, tmp_path, capsys, monkeypatch):
    """A --seed 1 run into a folder holding a good --seed 0 run, failing at its second model."""
    lesson, out = lessons[NAME], tmp_path / "out"
    assert run_main(lesson.main, vae_argv(small_mnist_npz, out), capsys)[0] == 0
    before = snapshot(out)
    real_save, saved = keras.Model.save, []

    def disk_full_at_the_second_model(model, path, *args, **kwargs):
        if saved:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        saved.append(path)
        real_save(model, path, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save", disk_full_at_the_second_model)
    argv = vae_argv(small_mnist_npz, out, "--seed", "1")
    status, _, err = run_main(lesson.main, argv, capsys)
    assert status == 1 and len(err[-1].splitlines()) == 1 and "no room to write" in err[-1], err
    assert snapshot(out) == before  # results, models and figures: all still seed 0's
    assert checkpoint_folders(out)  # and seed 1's training is kept

    monkeypatch.undo()  # room again
    status, _, err = run_main(lesson.main, argv, capsys)
    assert status == 0 and any("restored, not retrained" in line for line in err), err
    results = json.loads((out / "results" / f"{NAME}.json").read_text())
    after = snapshot(out)
    assert results["seed"] == 1
    assert all(after[path] != before[path] for path in before if path.suffix == ".keras")


# -- Signals and streams -----------------------------------------------------------------------

def _environment():
    """A user's environment: without the TF_CPP_MIN_LOG_LEVEL that importing TensorFlow set in
    this process, which asks a child for TensorFlow's start-up notes."""
    inherited = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return dict(inherited, AUTOENCODERS_OFFLINE="1", PYTHONUNBUFFERED="1")


def test_sigterm_at_an_epoch_boundary_is_ctrl_c_with_status_143_and_resumes(
        lessons, small_mnist_npz, tmp_path, capsys):
    wrapper = tmp_path / "terminate_after_epoch_1.py"
    wrapper.write_text(textwrap.dedent(f"""\
        import os, runpy, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        from common import training
        original = training.ResumableBackup._save_model
        def save_then_terminate(backup):
            original(backup)
            if backup._current_epoch == 1:
                os.kill(os.getpid(), signal.SIGTERM)
        training.ResumableBackup._save_model = save_then_terminate
        sys.argv = sys.argv[1:]
        runpy.run_path(sys.argv[0], run_name="__main__")
        """))
    out = tmp_path / "out"
    argv = vae_argv(small_mnist_npz, out)
    done = subprocess.run([sys.executable, str(wrapper), str(ROOT / f"{NAME}.py"),
                           *map(str, argv)], capture_output=True, text=True, cwd=ROOT,
                          env=_environment(), timeout=300)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr[-2000:]
    # No TensorFlow log line (TensorFlow looks for a GPU in every run: on a machine with CUDA's
    # libraries and none, that prints "failed call to cuInit" unless it is muted).
    assert not [line for line in done.stderr.splitlines() if re.match(r"[IWEF]\d{4} ", line)]
    assert done.stderr.strip().splitlines()[-1] == (
        f"{NAME}.py: terminated (SIGTERM); run the same command again to resume from the last "
        "finished epoch")
    assert not snapshot(out) and checkpoint_folders(out)
    status, _, err = run_main(lessons[NAME].main, argv, capsys)
    assert status == 0 and "vae resumes after epoch 1 of 2" in " ".join(err), err


def test_a_closed_pipe_ends_the_run_quietly_and_the_same_command_finishes(
        lessons, small_mnist_npz, tmp_path, capsys):
    out = tmp_path / "out"
    argv = vae_argv(small_mnist_npz, out)
    process = subprocess.Popen([sys.executable, f"{NAME}.py", *map(str, argv)], cwd=ROOT,
                               env=_environment(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    process.stdout.readline()  # `| head -1`
    process.stdout.close()
    stderr = process.stderr.read()
    assert process.wait(timeout=300) == 128 + signal.SIGPIPE
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == (
        f"{NAME}.py: output closed (broken pipe); run the same command again to resume from "
        "the last finished epoch")
    assert not snapshot(out)
    status, _, err = run_main(lessons[NAME].main, argv, capsys)
    assert status == 0, err


@pytest.mark.parametrize("closed", ["2>&-", ">&- 2>&-"])
def test_a_lesson_runs_and_a_model_loads_with_standard_streams_closed(small_mnist_npz, tmp_path,
                                                                     closed):
    out = tmp_path / "out"
    command = " ".join([f"exec {sys.executable} {NAME}.py",
                        *map(str, vae_argv(small_mnist_npz, out, "--epochs", "1")), closed])
    done = subprocess.run(["bash", "-c", command], cwd=ROOT, env=_environment(), timeout=300,
                          capture_output=True, text=True)
    assert done.returncode == 0 and not done.stderr
    assert (out / "results" / f"{NAME}.json").exists()
    load = (f"exec {sys.executable} -c 'import {NAME}, keras; "
            f"keras.models.load_model(\"{out / 'models' / 'vae.keras'}\")' {closed}")
    assert subprocess.run(["bash", "-c", load], cwd=ROOT, env=_environment(),
                          timeout=120).returncode == 0


# -- Flags at their limits -----------------------------------------------------------------

def test_the_largest_seed_runs_to_the_end_and_one_more_is_refused(lessons, small_mnist_npz,
                                                                  tmp_path, capsys):
    lesson = lessons[NAME]
    assert_usage_error(lesson.main, f"{NAME}.py", ["--seed", "4294967296"], tmp_path, capsys,
                       "--seed: must be an integer from 0 to 4294967295")
    argv = vae_argv(small_mnist_npz, tmp_path / "out", "--seed", "4294967295", "--epochs", "1")
    status, _, err = run_main(lesson.main, argv, capsys)
    assert status == 0, err


def test_an_out_name_too_long_for_the_file_system_is_refused(lessons, tmp_path, capsys):
    too_long = tmp_path / ("x" * 300)
    assert_usage_error(lessons[NAME].main, f"{NAME}.py", ["--out", str(too_long / "run")],
                       tmp_path, capsys, "is 300 bytes long; this file system allows 255")
    assert list(tmp_path.iterdir()) == []


def test_an_out_whose_models_folder_cannot_be_written_creates_nothing(lessons, tmp_path,
                                                                      capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "models").write_text("a file where the models folder should be")
    assert_usage_error(lessons[NAME].main, f"{NAME}.py", ["--out", str(out)], tmp_path, capsys,
                       f"output folder {out} cannot be written ({out / 'models'} is a file)")
    assert [p.name for p in out.iterdir()] == ["models"]  # no figures/ or results/ made


# -- A resumed run is the uninterrupted run ------------------------------------------------------

def comparable(results):
    """The results without what differs between two runs of the same command: the clock, and
    whether it was resumed."""
    if isinstance(results, dict):
        return {k: comparable(v) for k, v in results.items()
                if "seconds" not in k and not k.endswith("resumed_after_epoch")}
    return results


def model_arrays(out):
    """Every saved model's weights, by model file."""
    return {path.name: [np.asarray(w) for w in keras.models.load_model(path).weights]
            for path in sorted((out / "models").glob("*.keras"))}


@pytest.mark.every_backend
def test_a_killed_run_resumes_to_the_uninterrupted_run_bit_for_bit(
        lessons, small_mnist_npz, tmp_path, capsys, killed_after_epoch):
    """The VAE draws from everything a run can draw from: the shuffle, each epoch's binarization
    and its layer's seed generator (z)."""
    epoch = 1
    argv = lambda out: vae_argv(small_mnist_npz, out)  # noqa: E731
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    assert run_main(lessons[NAME].main, argv(straight), capsys)[0] == 0
    undo = killed_after_epoch(epoch)
    assert run_main(lessons[NAME].main, argv(interrupted), capsys)[0] == 130
    undo.undo()
    status, _, err = run_main(lessons[NAME].main, argv(interrupted), capsys)
    assert status == 0 and resumed(err), err
    results = [json.loads((out / "results" / f"{NAME}.json").read_text())
               for out in (straight, interrupted)]
    assert results[0]["resumed_after_epoch"] is None
    assert results[1]["resumed_after_epoch"] == epoch
    assert comparable(results[1]) == comparable(results[0])
    for (name, a), (_, b) in zip(*(model_arrays(out).items() for out in (straight,
                                                                          interrupted))):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y, err_msg=name)
    figures = [{path: data for path, data in snapshot(out).items() if path.parts[0] == "figures"}
               for out in (straight, interrupted)]
    assert figures[0] and figures[1] == figures[0]
