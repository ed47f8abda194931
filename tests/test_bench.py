"""The benchmark runs end to end: here on the small data file, one lesson, one round (`make
bench` itself runs on full-size data, and is not part of the tests): on one backend against plain
Keras, and the VAE on two backends with its plain PyTorch row and the speed targets. (JAX is left
out: its lesson runs are the slowest to start, and its path through the bench is TensorFlow's and
PyTorch's.)"""

import json
import re
import subprocess
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import bench  # noqa: E402


def test_bench_times_a_lesson_against_plain_keras(small_mnist_npz, tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--data",
                           str(small_mnist_npz), "--lessons", "sparse", "--backends",
                           "tensorflow", "--rounds", "1", "--epochs", "2", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    results = _this_machine(tmp_path)
    assert results["machine"]["cores"] >= 1 and results["machine"]["tensorflow"]
    # The commit measured, "+" for uncommitted changes; None only outside a git checkout.
    if (ROOT / ".git").exists():
        assert re.fullmatch(r"[0-9a-f]{7,}\+?", results["code"]), results["code"]
    else:
        assert results["code"] is None
    assert results["machine"]["jax"] and results["machine"]["torch"]
    assert list(results["lessons"]["sparse"]) == ["tensorflow"]
    assert set(results["targets"]) == {"help_tensorflow"}  # the speed targets are the VAE's
    row = results["lessons"]["sparse"]["tensorflow"]
    assert results["targets"]["help_tensorflow"]["value"] == row["help_seconds"] > 0
    lesson = row["lesson"]
    assert 0 < lesson["seconds_to_first_epoch"] < lesson["wall_seconds"]
    assert lesson["seconds_to_first_epoch"] + sum(map(sum, lesson["runs"][0]["epoch_seconds"])) \
        < lesson["wall_seconds"]
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
                           "torch", "--rounds", "1", "--epochs", "2", "--out", str(tmp_path),
                           # the default run's timing, on a tiny run rather than the 50 epochs
                           "--default-run-flags=--limit 300 --epochs 2 --iwae-samples 1 "
                           "--no-mean-comparison"],
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]  # even with a target missed
    results = _this_machine(tmp_path)
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

    # The default run: its wall time against its training (two epochs here), on TensorFlow (and
    # JAX), not on PyTorch.
    assert "default_run" not in rows["torch"]
    for backend in ("tensorflow",):
        default = rows[backend]["default_run"]
        run, = default["runs"]
        assert 0 < run["training_seconds"] < run["seconds_to_first_epoch"] + \
            run["training_seconds"] < run["wall_seconds"]
        assert default["ratio"] == pytest.approx(run["wall_seconds"] / run["training_seconds"])

    # The targets whose runs were made, and not JAX's; a default run's only on TensorFlow (and
    # JAX), one round has no spread.
    targets = results["targets"]
    assert set(targets) == {"vae_torch_vs_tensorflow", "vae_tensorflow_vs_plain_pytorch",
                            "vae_default_run_tensorflow", "help_tensorflow", "help_torch"}
    assert targets["vae_default_run_tensorflow"]["value"] == \
        rows["tensorflow"]["default_run"]["ratio"]
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
    assert ("targets missed" in done.stdout) == bool(missed)


def _this_machine(out):
    """This machine's entry of OUT/results/bench.json, the only one there."""
    machines = json.loads((out / "results" / "bench.json").read_text())["machines"]
    (key, results), = machines.items()
    assert key == bench.kind_key(results["machine"]) and results["machine"]["kind"]
    return results


def test_bench_keeps_one_entry_per_kind_of_machine(tmp_path):
    path = tmp_path / "results" / "bench.json"
    amd = {"machine": {"kind": "AMD EPYC, AVX-512"}, "lessons": {"vae": 1}}
    intel = {"machine": {"kind": "Intel Xeon Platinum 8375C, AVX-512"}, "lessons": {"vae": 2}}
    bench.write(path, amd)
    bench.write(path, intel)
    bench.write(path, {**amd, "lessons": {"vae": 3}})  # a rerun replaces its own kind's entry
    machines = json.loads(path.read_text())["machines"]
    assert machines == {"amd_epyc_avx_512": {**amd, "lessons": {"vae": 3}},
                        "intel_xeon_platinum_8375c_avx_512": intel}


def test_bench_names_the_kind_of_machine():
    info = bench.machine()
    assert info["kind"].startswith(info["cpu"].split()[0].replace("(R)", ""))
    assert info["kind"].endswith(("AVX-512", "AVX2", "AVX", "no AVX"))
    assert ("AVX-512" in info["vector_extensions"]) == info["kind"].endswith("AVX-512")


def test_bench_refuses_too_few_epochs():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--epochs",
                           "1"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--epochs must be at least 2" in done.stderr


def test_the_default_run_counts_the_training_of_every_model():
    """The VAE's default run trains two models; its training is both models' seconds."""
    results = {"train_seconds": 2.0, "epoch_seconds": [1.0, 1.0], "test_kl_nats": 5.0,
               "averaged_losses": {"train_seconds": 3.0, "active_units": 0}}
    assert sum(bench.train_seconds(results)) == 5.0
