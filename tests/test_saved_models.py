"""Every lesson's saved models load in a fresh Python process, after the one import its
docstring and the book name: `import common`, or the lesson itself where it defines a layer."""

import json
import subprocess
import sys

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
