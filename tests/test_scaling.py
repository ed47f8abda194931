"""Beyond one device, tested on the CPU: two mirrored replicas give the single-device loss (on
TensorFlow, and on JAX through keras.distribution), a two-process multi-worker run on 127.0.0.1
resumes and writes once (TensorFlow only, by nature: tf.distribute's MultiWorkerMirroredStrategy
is what multi-worker means here), and mixed precision and TensorBoard work through the lessons'
own command line (on the other backends: tests/test_backends.py)."""

import json
import os
import socket
import subprocess
import sys

import keras
import pytest

from common import outputs
from conftest import ROOT
from conftest import run_main
from conftest import written_outputs

VAE = "VariationalAutoEncoder_tf2"


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_two_mirrored_replicas_give_the_single_device_loss_and_step(backend):
    """On TensorFlow, a MirroredStrategy over two logical CPUs; on JAX, keras.distribution's
    DataParallel over two XLA host devices."""
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "replicas_check.py")],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "KERAS_BACKEND": backend})
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for model in ("vae", "plain"):
        one, two = results[model]
        assert (one["replicas"], two["replicas"]) == (1, 2)
        # The loss on the batch (for the VAE: reconstruction + KL, the KL added with add_loss),
        # then after one SGD step on it: the gradients were scaled, not doubled or halved.
        for when in ("before", "after"):
            for name, value in one[when].items():
                assert two[when][name] == pytest.approx(value, rel=1e-5), (model, when, name)
        assert one["after"]["loss"] < one["before"]["loss"] - 0.5  # the step did something
        assert two["weights"] == pytest.approx(one["weights"], rel=1e-5)
    assert results["vae"][0]["before"]["kl_loss"] > 20  # the KL is a large part of the loss


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_a_multi_worker_run_resumes_and_only_the_chief_writes(lessons, small_mnist_npz,
                                                              tmp_path, capsys,
                                                              killed_while_writing):
    out = tmp_path / "out"
    argv = ["--data", small_mnist_npz, "--out", out, "--limit", "128", "--iwae-samples", "2",
            "--no-mean-comparison"]
    # A single-process run of the same settings, killed once its first epoch was backed up.
    patch = killed_while_writing()
    assert run_main(lessons[VAE].main, [*argv, "--epochs", "1"], capsys)[0] == 130
    patch.undo()

    ports = free_ports(2)
    scratch = tmp_path / "scratch"  # where the non-chief worker keeps its copies
    scratch.mkdir()
    workers = []
    for index in range(2):
        config = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                  "task": {"type": "worker", "index": index}}
        env = {**os.environ, "TF_CONFIG": json.dumps(config), "TMPDIR": str(scratch)}
        workers.append(subprocess.Popen(
            [sys.executable, str(ROOT / f"{VAE}.py"), "--distribute", "multi-worker",
              "--epochs", "2", *map(str, argv)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    done = [worker.communicate(timeout=300) for worker in workers]
    for worker, (stdout, stderr) in zip(workers, done):
        assert worker.returncode == 0, stderr[-3000:]
        assert "vae resumes after epoch 1 of 2" in stderr  # both restored the chief's backup
        assert "Epoch 2/2" in stdout and "negative ELBO" in stdout
    assert "worker 0 of 2 workers, 2 replicas" in done[0][1]
    assert "worker 1 of 2 workers, 2 replicas" in done[1][1]
    results = json.loads((out / "results" / f"{VAE}.json").read_text())
    assert results["epochs_trained"] == 2 and results["distribute"] == "multi-worker"
    assert len(written_outputs(out)) == 8  # 1 result, 3 models, 4 figures, written once
    assert [p.name for p in (out / "checkpoints").iterdir()] == [f"{VAE}.lock"]
    assert not any(scratch.iterdir())  # the other worker's copies are gone


def test_multi_worker_needs_a_valid_tf_config(lessons, tmp_path, capsys, monkeypatch):
    for value, message in ((None, "needs the TF_CONFIG environment variable"),
                           ("{not json", "TF_CONFIG must be JSON"),
                           ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", '
                            '"index": 3}}', "TF_CONFIG must be JSON")):
        if value is None:
            monkeypatch.delenv("TF_CONFIG", raising=False)
        else:
            monkeypatch.setenv("TF_CONFIG", value)
        status, _, err = run_main(lessons[VAE].main, ["--distribute", "multi-worker", "--out",
                                                      tmp_path / "out"], capsys)
        assert status == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_mixed_precision_gives_finite_nats_close_to_float32(tiny_run):
    full = tiny_run(VAE)
    mixed = tiny_run(VAE, "--mixed-precision", "--tensorboard", "--distribute", "mirrored")
    assert any("mirrored over 1 replicas, mixed_bfloat16" in line for line in mixed.stderr)
    # bfloat16 keeps 8 bits of mantissa in the hidden layers: close to float32's nats, not equal.
    for key in ("test_neg_elbo_nats", "test_nll_iwae_nats"):
        assert mixed.results[key] == pytest.approx(full.results[key], rel=0.02), key
    assert mixed.results["test_kl_nats"] == pytest.approx(full.results["test_kl_nats"], abs=1.0)
    assert mixed.results["test_neg_elbo_nats"] != full.results["test_neg_elbo_nats"]
    # The layers that feed the loss stayed float32; the hidden ones computed in bfloat16.
    encoder = keras.models.load_model(mixed.out / "models" / "vae_encoder.keras")
    assert encoder.get_layer("z_mean").dtype_policy.name == "float32"
    assert encoder.get_layer("encoder_hidden").dtype_policy.name == "mixed_bfloat16"
    # TensorBoard logs for both the training and the validation curves.
    logs = mixed.out / "logs" / VAE / "vae"
    assert any((logs / "train").glob("events.out.tfevents.*"))
    assert any((logs / "validation").glob("events.out.tfevents.*"))
    assert not (full.out / "logs").exists()


def test_the_settings_that_do_not_change_training_share_a_checkpoint(tmp_path):
    import argparse

    base = {"out": tmp_path, "epochs": 3, "seed": 0, "mixed_precision": False}
    digest = outputs.settings_digest
    plain = digest(argparse.Namespace(**base, distribute="none", tensorboard=False))
    assert digest(argparse.Namespace(**base, distribute="multi-worker", tensorboard=True)) == plain
    assert digest(argparse.Namespace(**{**base, "mixed_precision": True}, distribute="none",
                                     tensorboard=False)) != plain
