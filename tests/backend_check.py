"""Run by tests/test_backends.py in a fresh process, on the backend KERAS_BACKEND names: load
saved models and write their outputs on fixed inputs, so that the test can compare what each
backend computes from the same file.

    python tests/backend_check.py PLAN.json OUT.npz

PLAN.json is a list of [module, [model paths]]: the module is imported first (`common`, or the
lesson that defines the model's layers, as the lessons' docstrings say). OUT.npz receives, for
each path, its outputs on inputs drawn with a fixed seed from each input's shape, under the key
"<path>|<output number>"; and the backend's name under "backend". A model with a `Sampling`
layer or a `RandomPatchMask` (the masked autoencoder's) draws new noise on each backend, so only
its outputs' finiteness is checked here.
"""

import importlib
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import common  # noqa: E402,F401  (first: quiets TensorFlow's start-up logs)
import keras  # noqa: E402
import numpy as np  # noqa: E402


def fixed_inputs(model):
    rng = np.random.default_rng(0)
    return [rng.random((3, *tensor.shape[1:])).astype("float32") for tensor in model.inputs]


def draws_noise(model):
    return any(type(layer).__name__ in ("Sampling", "RandomPatchMask")  # the lessons' own
               or (isinstance(layer, keras.Model) and draws_noise(layer))
               for layer in model.layers)


def main(plan_path, out_path):
    found = {"backend": np.array(keras.backend.backend())}
    for module, paths in json.loads(pathlib.Path(plan_path).read_text()):
        importlib.import_module(module)
        for path in paths:
            model = keras.models.load_model(path)
            inputs = fixed_inputs(model)
            outputs = model.predict(inputs if len(inputs) > 1 else inputs[0], verbose=0)
            outputs = outputs if isinstance(outputs, list) else [outputs]
            for i, output in enumerate(outputs):
                assert np.all(np.isfinite(output)), path
                if not draws_noise(model):
                    found[f"{path}|{i}"] = np.asarray(output)
    np.savez(out_path, **found)


if __name__ == "__main__":
    main(*sys.argv[1:])
