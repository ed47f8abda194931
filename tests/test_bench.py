"""The benchmark runs end to end: here on the small data file, one lesson, one round (`make
bench` itself runs on full-size data, and is not part of the tests): on one backend against plain
Keras, and the VAE on two backends with its plain PyTorch row and the speed targets. (JAX is left
out: its lesson runs are the slowest to start, and its path through the bench is TensorFlow's and
PyTorch's.)"""

import json
import subprocess
import sys

import pytest

from conftest import ROOT


def test_bench_times_a_lesson_against_plain_keras(small_mnist_npz, tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--data",
                           str(small_mnist_npz), "--lessons", "sparse", "--backends",
                           "tensorflow", "--rounds", "1", "--epochs", "2", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results" / "bench.json").read_text())
    assert results["machine"]["cores"] >= 1 and results["machine"]["tensorflow"]
    assert results["machine"]["jax"] and results["machine"]["torch"]
    assert list(results["lessons"]["sparse"]) == ["tensorflow"]
    assert results["targets"] == {}  # they are the VAE's
    row = results["lessons"]["sparse"]["tensorflow"]
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
    assert "sparse" in done.stdout and "TensorFlow" in done.stdout and "plain Keras" in done.stdout


def test_bench_times_the_vae_on_two_backends_against_plain_pytorch(small_mnist_npz, tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--data",
                           str(small_mnist_npz), "--lessons", "vae", "--backends", "tensorflow",
                           "torch", "--rounds", "1", "--epochs", "2", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]  # even with a target missed
    results = json.loads((tmp_path / "results" / "bench.json").read_text())
    assert results["backends"] == ["tensorflow", "torch"]
    assert len(results["load_average"]["start"]) == len(results["load_average"]["end"]) == 3
    rows = results["lessons"]["vae"]
    assert list(rows) == ["tensorflow", "torch", "plain_pytorch"]
    for backend in ("tensorflow", "torch"):
        row = rows[backend]
        for kind in ("lesson", "plain_keras"):
            run, = row[kind]["runs"]
            assert run["models"] == 1 and [len(e) for e in run["epoch_seconds"]] == [1]
        assert row["ratio"] == pytest.approx(row["lesson"]["seconds_per_epoch"]
                                             / row["plain_keras"]["seconds_per_epoch"])
    pytorch = rows["plain_pytorch"]
    run, = pytorch["runs"]
    assert run["models"] == 1 and [len(e) for e in run["epoch_seconds"]] == [1]  # 2 - 1 timed
    assert pytorch["seconds_per_epoch"] == pytest.approx(run["epoch_seconds"][0][0])
    assert pytorch["images_per_second"] == pytest.approx(600 / pytorch["seconds_per_epoch"])
    assert 0.1 < pytorch["peak_memory_gib"] < 8

    # The targets whose runs were made, and not JAX's.
    targets = results["targets"]
    assert set(targets) == {"vae_torch_vs_tensorflow", "vae_tensorflow_vs_plain_pytorch"}
    seconds = lambda row: row["seconds_per_epoch"]  # noqa: E731
    expected = {  # key -> (what is timed, against what, the target, its line's start)
        "vae_torch_vs_tensorflow": (seconds(rows["torch"]["lesson"]),
                                    seconds(rows["tensorflow"]["lesson"]), 2.5,
                                    "vae lesson on PyTorch"),
        "vae_tensorflow_vs_plain_pytorch": (seconds(rows["tensorflow"]["lesson"]),
                                            seconds(pytorch), 1.0, "vae lesson on TensorFlow")}
    lines = done.stdout.splitlines()
    assert any(line.startswith("vae") and "plain PyTorch" in line for line in lines)
    for key, (timed, against, at_most, start) in expected.items():
        target = targets[key]
        assert target["ratio"] == pytest.approx(timed / against)
        assert target["at_most"] == at_most and target["met"] == (target["ratio"] <= at_most)
        line, = [line for line in lines if line.strip().startswith(start)]
        assert f"{target['ratio']:5.2f}" in line
        assert line.endswith("  met" if target["met"] else "  missed"), line
    missed = [key for key, target in targets.items() if not target["met"]]
    assert ("speed targets missed" in done.stdout) == bool(missed)


def test_bench_refuses_too_few_epochs():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--epochs",
                           "1"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--epochs must be at least 2" in done.stderr
