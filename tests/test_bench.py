"""The benchmark runs end to end: here on the small data file, one lesson, one round (`make
bench` itself runs on full-size data, and is not part of the tests)."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT


def test_bench_times_a_lesson_against_plain_keras(small_mnist_npz, tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--data",
                           str(small_mnist_npz), "--lessons", "sparse", "--rounds", "1",
                           "--epochs", "2", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results" / "bench.json").read_text())
    assert results["machine"]["cores"] >= 1 and results["machine"]["tensorflow"]
    row = results["lessons"]["sparse"]
    for kind in ("lesson", "plain_keras"):
        run, = row[kind]["runs"]
        assert run["models"] == 2  # the penalized network and the baseline
        assert [len(epochs) for epochs in run["epoch_seconds"]] == [1, 1]  # the first left out
        assert row[kind]["seconds_per_epoch"] == pytest.approx(sum(map(sum, run["epoch_seconds"])))
        assert 0.3 < row[kind]["peak_memory_gib"] < 8
        assert row[kind]["images_per_second"] == pytest.approx(
            600 * 2 / row[kind]["seconds_per_epoch"])
    assert row["ratio"] == pytest.approx(row["lesson"]["seconds_per_epoch"]
                                         / row["plain_keras"]["seconds_per_epoch"])
    assert "sparse" in done.stdout and "plain Keras" in done.stdout


def test_bench_refuses_too_few_epochs():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--epochs",
                           "1"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--epochs must be at least 2" in done.stderr
