"""Run by tests/test_scaling.py (TensorFlow) and tests/test_backends.py (JAX) in a fresh process:
the loss of a fixed batch, and one SGD step on it, on one device and mirrored over two devices.
Prints the results as JSON.

On TensorFlow the two devices are logical CPU devices and the mirroring a MirroredStrategy; on
JAX they are XLA host devices (--xla_force_host_platform_device_count=2) and the mirroring a
keras.distribution.DataParallel. Either must be configured before the backend starts, hence a
process of its own. The VAE's z_log_var is pinned to -30 (sigma = 3e-7), so the sampling noise,
which the two replicas draw differently, moves nothing beyond float32 rounding, and the KL term
is large.
"""

import importlib.util
import json
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
if os.environ.get("KERAS_BACKEND") == "jax":  # read when JAX starts its devices
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import common  # noqa: E402  (first: quiets TensorFlow's start-up logs)
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from common import losses  # noqa: E402

if keras.backend.backend() == "tensorflow":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)


def lesson(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def vae():
    vae_lesson = lesson("VariationalAutoEncoder_tf2")
    encoder, _, model = vae_lesson.build_vae("mlp", 2, beta=1.0, seed=0, summary=False)
    log_var = encoder.get_layer("z_log_var")
    log_var.kernel.assign(np.zeros(log_var.kernel.shape, "float32"))
    log_var.bias.assign(np.full(log_var.bias.shape, -30.0, "float32"))
    return model, [keras.metrics.MeanMetricWrapper(losses.bernoulli_nll,
                                                   name="reconstruction_loss")]


def plain_autoencoder():
    model = lesson("AutoEncoder").build_deep(code_dim=8).autoencoder
    return model, []


def measure(build, strategy):
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model, metrics = build()
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss=losses.bernoulli_nll,
                      metrics=metrics)
    images = (np.random.default_rng(0).random((64, 28, 28, 1)) < 0.3).astype("float32")
    batch = tf.data.Dataset.from_tensors((images, images))
    before = model.evaluate(batch, verbose=0, return_dict=True)
    model.fit(batch, epochs=1, verbose=0)
    after = model.evaluate(batch, verbose=0, return_dict=True)
    replicas = (strategy.device_mesh.devices.size if keras.backend.backend() == "jax"
                else strategy.num_replicas_in_sync)
    return {"replicas": replicas, "before": before, "after": after,
            "weights": float(sum(np.abs(w).sum() for w in model.get_weights()))}


if keras.backend.backend() == "jax":
    devices = keras.distribution.list_devices()
    one = keras.distribution.DataParallel(devices=devices[:1])
    two = keras.distribution.DataParallel(devices=devices)
else:
    one = tf.distribute.get_strategy()
    two = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
print(json.dumps({name: [measure(build, one), measure(build, two)]
                  for name, build in (("vae", vae), ("plain", plain_autoencoder))}))
