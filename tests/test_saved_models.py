"""Every lesson's saved models load in a fresh Python process, after the one import its
docstring and the book name: `import common`, or the lesson itself where it defines a layer."""

import json
import subprocess
import sys

import common  # noqa: F401 - registers the suite's Keras objects
import keras
import numpy as np
import pytest

from conftest import LESSONS
from conftest import ROOT

# What a user imports before keras.models.load_model, lesson by lesson.
FIRST_IMPORT = {"SparseAutoEncoder": "SparseAutoEncoder",
                "ContractiveAutoEncoder": "ContractiveAutoEncoder"}

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
        plan.append((FIRST_IMPORT.get(name, "common"), models))
    done = subprocess.run([sys.executable, "-c", LOADER, json.dumps(plan)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("loaded") == sum(len(models) for _, models in plan)


# A model saved by the suite before its penalty layers logged through `PenalizedModel` (Keras
# 3.15, TensorFlow; 50 KB, optimizer state included): every penalty layer in one small functional
# model, and, as JSON, the inputs and outputs it gave then.
BEFORE = ROOT / "tests" / "fixtures" / "penalty_layers_keras315_tf"


@pytest.mark.every_backend
def test_a_model_saved_before_penalized_model_still_loads_and_trains(lessons):
    lessons["SparseAutoEncoder"], lessons["ContractiveAutoEncoder"]  # register their layers
    model = keras.models.load_model(BEFORE.with_suffix(".keras"))
    saved = {k: np.asarray(v, "float32")
             for k, v in json.loads(BEFORE.with_suffix(".json").read_text()).items()}
    # The outputs that draw no noise: the sparsity layer's, the contractive layer's, z_mean.
    layers = ("kl_sparsity", "contractive", "z_mean")
    deterministic = keras.Model(model.input, [model.get_layer(name).output for name in layers])
    for i, output in enumerate(deterministic.predict(saved["inputs"], verbose=0)):
        np.testing.assert_allclose(output, saved[f"out{i}"], rtol=1e-5, atol=1e-6)
    x = np.random.default_rng(0).random((16, 6)).astype("float32")
    history = model.fit(x, x, epochs=1, verbose=0).history  # its own optimizer state, restored
    assert np.isfinite(history["loss"][0])
