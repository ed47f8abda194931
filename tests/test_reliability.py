"""Every lesson under faults: divergence, bad data, a busy folder, kills and damaged checkpoints.

The faults are made deterministically: a huge learning rate, data files with something wrong, a
lock held by "another run", and a kill simulated by a KeyboardInterrupt raised where the lesson
writes its results (after all training), after which the checkpoints it left are damaged on
purpose.
"""

import json

import numpy as np
import pytest

from conftest import LESSONS
from conftest import TINY_ARGS
from conftest import run_main
from conftest import written_outputs
from test_data import BAD_FILES
from test_data import good_arrays
from test_data import write_bad_npz

from common import training


def tiny(name, data, out, *extra):
    return ["--data", data, "--out", out, "--limit", "64", *TINY_ARGS[name], *extra]


@pytest.mark.parametrize("name", LESSONS)
def test_divergence_stops_with_one_line_status_1_and_writes_nothing(lessons, name,
                                                                     small_mnist_npz, tmp_path,
                                                                     capsys):
    # 64 steps an epoch, more than the 32 a compiled call runs: the first loss a callback sees
    # has already exploded, so only a comparison with the untrained model catches it.
    out = tmp_path / "out"
    argv = tiny(name, small_mnist_npz, out, "--learning-rate", "1e4", "--limit", "512",
                "--batch-size", "8")
    status, _, err = run_main(lessons[name].main, argv, capsys)
    assert status == 1
    assert err[-1].startswith(f"{name}.py: training diverged: model ") and "epoch 1:" in err[-1]
    assert "--learning-rate" in err[-1]
    assert not written_outputs(out)


@pytest.mark.parametrize("name", LESSONS)
def test_bad_data_is_refused_before_anything_happens(lessons, name, tmp_path, capsys):
    bad = tmp_path / "labels.npz"
    write_bad_npz(bad, "labels outside 0-9")
    out = tmp_path / "out"
    status, _, err = run_main(lessons[name].main, ["--data", bad, "--out", out], capsys)
    assert status == 2
    assert err == [f"{name}.py: error: {bad}: y_test: labels must be classes 0-9, found 10"]
    assert not out.exists()  # no folder created, no device line printed


@pytest.mark.parametrize("kind", BAD_FILES)
def test_every_kind_of_bad_file_gives_one_line_and_creates_nothing(lessons, kind, tmp_path,
                                                                   capsys):
    bad = tmp_path / "bad.npz"
    write_bad_npz(bad, kind)
    out = tmp_path / "out"
    status, _, err = run_main(lessons["VariationalAutoEncoder_tf2"].main,
                              ["--data", bad, "--out", out], capsys)
    assert status == 2 and len(err) == 1 and BAD_FILES[kind] in err[0], err
    assert not out.exists()


@pytest.mark.parametrize("name", ["ConditionalVAE", "AutoEncoder"])
def test_lessons_that_use_labels_refuse_a_single_class(lessons, name, tmp_path, capsys):
    arrays = good_arrays()
    arrays["y_train"] = np.full(20, 3)
    np.savez(tmp_path / "threes.npz", **arrays)
    status, _, err = run_main(lessons[name].main,
                              ["--data", tmp_path / "threes.npz", "--out", tmp_path / "out"],
                              capsys)
    assert status == 2 and len(err) == 1 and "needs at least 2" in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag, value", [("--learning-rate", "inf"), ("--learning-rate", "1e400"),
                                         ("--learning-rate", "nan"), ("--epochs", "1e3")])
def test_float_flags_must_be_finite(lessons, flag, value, tmp_path, capsys):
    for name in LESSONS:
        status, _, err = run_main(lessons[name].main, [flag, value, "--out", tmp_path], capsys)
        assert status == 2 and len(err) == 1 and f"argument {flag}: must be" in err[0], err
    assert not any(tmp_path.iterdir())


def test_a_second_run_into_a_busy_folder_is_refused(lessons, small_mnist_npz, tmp_path, capsys):
    import fcntl

    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    other = open(out / "checkpoints" / "SparseAutoEncoder.lock", "a+")  # held by "another run"
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        status, _, err = run_main(lessons["SparseAutoEncoder"].main,
                                  tiny("SparseAutoEncoder", small_mnist_npz, out), capsys)
    finally:
        other.close()
    assert status == 2
    assert err[-1].startswith("SparseAutoEncoder.py: error: another run of this lesson")
    assert not written_outputs(out)


# Two lessons that train several models stand for all of them (the restoring is common code).
@pytest.mark.parametrize("name, models", [("SparseAutoEncoder", 2), ("GreedyPretraining", 5)])
def test_a_kill_after_training_loses_no_model(lessons, name, models, small_mnist_npz, tmp_path,
                                              capsys, killed_while_writing):
    """Several models: each finished one is restored, not retrained, and scores the same."""
    lesson, out = lessons[name], tmp_path / "out"
    patch = killed_while_writing()
    status, _, err = run_main(lesson.main, tiny(name, small_mnist_npz, out), capsys)
    assert status == 130 and "run the same command again to resume" in err[-1]
    assert not written_outputs(out / "results")
    patch.undo()

    status, stdout, err = run_main(lesson.main, tiny(name, small_mnist_npz, out), capsys)
    assert status == 0, err
    restored = [line for line in err if "restored, not retrained" in line]
    assert len(restored) == models, err
    assert "Epoch 1/1" not in stdout
    assert [p.name for p in (out / "checkpoints").iterdir()] == [f"{name}.lock"]

    status, _, _ = run_main(lesson.main, tiny(name, small_mnist_npz, tmp_path / "fresh"), capsys)
    resumed, fresh = (json.loads((folder / "results" / f"{name}.json").read_text())
                      for folder in (out, tmp_path / "fresh"))
    assert _without_timings(resumed) == _without_timings(fresh)


def _without_timings(results):
    """The results without the clock and without whether the run was resumed."""
    if isinstance(results, dict):
        return {k: _without_timings(v) for k, v in results.items()
                if "seconds" not in k and not k.endswith("resumed_after_epoch")}
    if isinstance(results, list):  # a list of entries (the masked autoencoder's sweep)
        return [_without_timings(v) for v in results]
    return results


def test_a_damaged_checkpoint_then_fewer_epochs(lessons, small_mnist_npz, tmp_path, capsys,
                                                killed_while_writing):
    name = "VariationalAutoEncoder_tf2"
    lesson, out = lessons[name], tmp_path / "out"
    argv = tiny(name, small_mnist_npz, out, "--epochs", "3")
    patch = killed_while_writing()
    assert run_main(lesson.main, argv, capsys)[0] == 130
    patch.undo()
    folder, = (out / "checkpoints").glob(f"{name}-vae-*")
    assert sorted(p.name for p in folder.iterdir()) == ["epoch-00002", "epoch-00003"]
    weights = folder / "epoch-00003" / training.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:1000])  # what a kill mid-write used to leave

    # Asking for 1 epoch: the damaged epoch 3 is skipped, and epoch 2 is more than was asked.
    status, stdout, err = run_main(lesson.main, argv[:-2] + ["--epochs", "1"], capsys)
    assert status == 0, err
    assert any(line.startswith(f"checkpoint: {folder / 'epoch-00003'} cannot be read")
               for line in err), err
    assert any("vae finished 2 epochs in an earlier run, more than the 1 asked for" in line
               for line in err), err
    assert "Epoch" not in stdout
    results = json.loads((out / "results" / f"{name}.json").read_text())
    assert results["epochs"] == 1 and results["epochs_trained"] == 2
    assert not folder.exists()  # discarded once everything was written
