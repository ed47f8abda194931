"""Every lesson's saved models load in a fresh Python process, after the one import its
docstring and the book name: `import common`, or the lesson itself where it defines a layer."""

import json
import subprocess
import sys
import zipfile

import common  # noqa: F401 - registers the suite's Keras objects
import keras
import numpy as np
import pytest

from conftest import FIRST_IMPORT
from conftest import LESSONS
from conftest import ROOT


LOADER = """
import importlib, json, sys
import numpy as np
for module, paths in json.loads(sys.argv[1]):
    importlib.import_module(module)
    import keras
    for path in paths:
        model = keras.models.load_model(path)
        inputs = [np.zeros((2, *i.shape[1:]), "float32") for i in model.inputs]
        outputs = model.predict(inputs if len(inputs) > 1 else inputs[0], verbose=0)
        for output in (outputs if isinstance(outputs, list) else [outputs]):
            assert np.all(np.isfinite(output)), path
        print("loaded", path)
"""


def test_every_saved_model_loads_in_a_fresh_process(tiny_run):
    plan = []
    for name in LESSONS:
        models = sorted(str(p) for p in (tiny_run(name).out / "models").glob("*.keras"))
        assert models, name
        plan.append((FIRST_IMPORT[name], models))
    done = subprocess.run([sys.executable, "-c", LOADER, json.dumps(plan)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("loaded") == sum(len(models) for _, models in plan)


# A model saved by the suite before its penalty layers logged through `PenalizedModel` (Keras
# 3.15, TensorFlow): every penalty layer in one small functional model, kept as the text of its
# .keras file (its config, and every group, attribute and array of its weights file), with the
# inputs it was given and the outputs it gave then.
BEFORE = ROOT / "tests" / "fixtures" / "saved_before_penalized_model.json"


def rebuild_keras_file(fixture, path):
    """Write the .keras file (a zip of config.json, metadata.json and model.weights.h5) that
    `fixture` describes: the contents the earlier code saved, written again."""
    import h5py

    weights = path.with_suffix(".h5")
    with h5py.File(weights, "w") as h5:
        for group in fixture["weights.h5"]["groups"]:
            h5.require_group(group)
        for name, array in fixture["weights.h5"]["datasets"].items():
            h5.create_dataset(name, data=np.asarray(array["value"], array["dtype"]))
        for group, attributes in fixture["weights.h5"]["attrs"].items():
            h5[group].attrs.update(attributes)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", json.dumps(fixture["config.json"]))
        archive.writestr("metadata.json", json.dumps(fixture["metadata.json"]))
        archive.write(weights, "model.weights.h5")


@pytest.mark.every_backend
def test_a_model_saved_before_penalized_model_still_loads_and_trains(lessons, tmp_path):
    for name in ("VariationalAutoEncoder_tf2", "SparseAutoEncoder", "ContractiveAutoEncoder"):
        lessons[name]  # registers its layers: the VAE's Sampling, the penalties
    fixture = json.loads(BEFORE.read_text())
    rebuild_keras_file(fixture, tmp_path / "before.keras")
    model = keras.models.load_model(tmp_path / "before.keras")
    # The outputs that draw no noise: the sparsity layer's, the contractive layer's, z_mean.
    layers = ("kl_sparsity", "contractive", "z_mean")
    deterministic = keras.Model(model.input, [model.get_layer(name).output for name in layers])
    inputs = np.asarray(fixture["inputs"], "float32")
    for output, saved in zip(deterministic.predict(inputs, verbose=0), fixture["outputs"]):
        np.testing.assert_allclose(output, np.asarray(saved, "float32"), rtol=1e-5, atol=1e-6)
    x = np.random.default_rng(0).random((16, 6)).astype("float32")
    history = model.fit(x, x, epochs=1, verbose=0).history  # its own optimizer state, restored
    assert np.isfinite(history["loss"][0])
