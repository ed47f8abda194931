"""The data of the book's latent explorers, in the VAE and CVAE chapters: each lesson's trained
decoder as ONNX, which ONNX Runtime Web runs in the reader's browser, and the codes of the test
digits, which the page draws as the plane to move on.

    python scripts/build_explorer.py [--models DIR [DIR ...]] [--out DIR]

For each of the two lessons it loads <vae|cvae>_encoder.keras and _decoder.keras from the first
models folder DIR that has them (after importing the lesson, which registers its layers),
encodes the test split as the run that trained them saw it (the dataset, binarization and seed
in DIR/../results/<Script>.json, which the lesson writes with its models), and writes
OUT/<vae|cvae>/:

- decoder.onnx, the decoder (z, and for the CVAE the one-hot label -> pixel logits), written
  and checked against Keras by `outputs.export_onnx`, as `--export onnx` does;
- explorer.json: the two busiest latent dimensions (the largest variance of the codes' means)
  as the plane, the next ones as sliders, every dimension's range and average, and up to 2,000
  test digits' codes on the plane with their labels, class names and colours.

A lesson whose models no folder has is skipped, with a line saying how to get them: its chapter
then says so in place of the explorer. `make site` runs this before building the book, from
models/ (which `make vae` and `make cvae` write) or else build/lessons/models/ (where `make site`
trains the lessons on a fresh clone), into build/explorer/, which the book's extension
_ext/explorer.py copies into the site.
"""

import argparse
import importlib
import json
import pathlib
import shutil
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Each explorer: its lesson's script, and the prefix of the models the lesson saves.
EXPLORERS = {"vae": "VariationalAutoEncoder_tf2", "cvae": "ConditionalVAE"}
SHOWN_DIMENSIONS = 8  # the plane's two and six sliders, as the VAE's traversals show its 8
MAX_POINTS = 2000     # test digits drawn on the plane
MARGIN = 0.05         # of each dimension's range, left around the codes
DEFAULT_MODELS = [ROOT / "models", ROOT / "build" / "lessons" / "models"]
DEFAULT_OUT = ROOT / "build" / "explorer"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, type=pathlib.Path,
                        metavar="DIR", help="models folders, the first that has a lesson's "
                                            "models first (default: models build/lessons/models)")
    parser.add_argument("--out", default=DEFAULT_OUT, type=pathlib.Path,
                        help="where to write <lesson>/decoder.onnx and explorer.json "
                             "(default: build/explorer)")
    args = parser.parse_args(argv)
    found = {}
    for name, script in EXPLORERS.items():
        shutil.rmtree(args.out / name, ignore_errors=True)  # never an earlier model's explorer
        for folder in args.models:
            models = [folder / f"{name}_{part}.keras" for part in ("encoder", "decoder")]
            if all(path.is_file() for path in models):
                found[name] = (script, *models)
                break
        else:
            print(f"explorer: no {name} explorer: no {name}_encoder.keras and "
                  f"{name}_decoder.keras in {' or '.join(map(str, args.models))} (make {name} "
                  "trains the lesson and saves them)", file=sys.stderr)
    if not found:
        return
    import common  # noqa: F401  (first: quiets TensorFlow's start-up logs)
    from common import outputs
    from common.errors import UsageError

    try:
        outputs.check_export("onnx")
    except UsageError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    for name, (script, encoder_path, decoder_path) in found.items():
        results = encoder_path.parent.parent / "results" / f"{script}.json"
        if not results.is_file():
            parser.exit(1, f"{parser.prog}: error: {results} is missing: the explorer encodes "
                           "the test split as the run that trained the models saw it\n")
        try:
            build(name, script, encoder_path, decoder_path, results, args.out / name)
        except outputs.NotExportable as err:
            parser.exit(1, f"{parser.prog}: error: {decoder_path}: {err}\n")


def build(name, script, encoder_path, decoder_path, results, folder):
    """Write `folder`/decoder.onnx and `folder`/explorer.json for the lesson `script`, whose
    run's `results` say what data it saw."""
    import keras

    from common import data
    from common import outputs

    lesson = importlib.import_module(script)  # registers the lesson's layers and loss
    encoder = keras.models.load_model(encoder_path, compile=False)
    decoder = keras.models.load_model(decoder_path, compile=False)
    conditional = len(decoder.inputs) == 2  # the CVAE's decoder is also given the label
    latent_dim = decoder.inputs[0].shape[-1]
    if latent_dim < 2:
        print(f"explorer: no {name} explorer: its latent space has 1 dimension, and the "
              "explorer's plane needs 2", file=sys.stderr)
        return

    # The test split as the run saw it: its dataset, and its binarization of the test images.
    settings = json.loads(results.read_text())
    dataset = data.load_dataset(settings["dataset"] if settings["dataset"] in data.DATASETS
                                else None, settings.get("data"))
    images = data.test_inputs(dataset, settings["binarize"], settings["seed"])
    labels = dataset.y_test
    inputs = [images, lesson.one_hot(labels)] if conditional else images
    z_mean = np.asarray(encoder.predict(inputs, batch_size=500, verbose=0)[0], dtype=np.float64)

    # The busiest dimensions first: the two largest variances span the plane, in their order
    # in z (z_0 across, z_1 up, for a 2-D space), the next ones get sliders.
    busiest = [int(d) for d in np.argsort(-np.var(z_mean, axis=0), kind="stable")]
    plane, sliders = sorted(busiest[:2]), busiest[2:SHOWN_DIMENSIONS]
    low, high = z_mean.min(axis=0), z_mean.max(axis=0)
    margin = MARGIN * np.maximum(high - low, 1e-3)
    picked = np.sort(np.random.default_rng(0).permutation(len(labels))[:MAX_POINTS])

    folder.mkdir(parents=True, exist_ok=True)
    outputs.export_onnx(decoder, folder / "decoder.onnx")
    colours = [_hex(colour) for colour in _tab10()]
    explorer = {
        "lesson": script,
        "latent_dim": int(latent_dim),
        "conditional": conditional,
        "decoder": "decoder.onnx",
        "inputs": [spec.name for spec in decoder.inputs],  # z, then the label for the CVAE
        "image_shape": list(data.IMAGE_SHAPE[:2]),
        "plane": plane,
        "sliders": sliders,
        "low": _rounded(low - margin),
        "high": _rounded(high + margin),
        "mean": _rounded(z_mean.mean(axis=0)),
        "variance": _rounded(np.var(z_mean, axis=0)),
        "class_names": list(dataset.class_names),
        "colours": colours,
        "points": _rounded(z_mean[picked][:, plane]),
        "labels": [int(label) for label in labels[picked]],
    }
    (folder / "explorer.json").write_text(json.dumps(explorer, separators=(",", ":")) + "\n")
    print(f"explorer: {folder}/ from {decoder_path.parent} ({latent_dim}-D latent space, "
          f"{len(picked):,} test digits)", file=sys.stderr)


def _rounded(array, decimals=4):
    return np.round(np.asarray(array, dtype=np.float64), decimals).tolist()


def _tab10():
    """The colours of the lessons' latent scatters (matplotlib's tab10), one per class."""
    import matplotlib

    return matplotlib.colormaps["tab10"].colors


def _hex(rgb):
    return "#" + "".join(f"{round(channel * 255):02x}" for channel in rgb[:3])


if __name__ == "__main__":
    main()
