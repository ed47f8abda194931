"""Run by tests/test_backends.py in a fresh process, on the backend KERAS_BACKEND names: several
lessons, one after the other in this one process (as the TensorFlow tests run them in theirs),
each as `cli.run` runs it from the command line, with its stdout and stderr kept apart.

    python tests/backend_runs.py [--without-tensorflow] PLAN.json

PLAN.json is a list of [lesson, [argv...], folder]: the lesson's printed output goes to
folder/stdout.txt and folder/stderr.txt, and its exit status to folder/status.txt. Starting
Keras and the backend once for every lesson, instead of once per lesson, saves most of a
tiny run's time. With --without-tensorflow, TensorFlow (and TensorBoard) cannot be imported in
this process, as on a machine where they are not installed, and the process fails if one of
them was imported all the same.
"""

import contextlib
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

NOT_INSTALLED = ("tensorflow", "tensorboard")  # with --without-tensorflow
if "--without-tensorflow" in sys.argv:
    for name in NOT_INSTALLED:
        # As where it is not installed: `import tensorflow` raises ModuleNotFoundError, which
        # Keras's optional imports of it expect, and importlib.util.find_spec("tensorflow"),
        # which PyTorch asks, is None.
        sys.modules[name] = None

import common  # noqa: E402,F401  (first: quiets TensorFlow's start-up logs)
from common import cli  # noqa: E402
from conftest import import_lesson  # noqa: E402


def main(plan_path, without_tensorflow=False):
    for name, argv, folder in json.loads(pathlib.Path(plan_path).read_text()):
        folder = pathlib.Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        lesson = import_lesson(name)
        with open(folder / "stdout.txt", "w") as out, open(folder / "stderr.txt", "w") as err:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    cli.run(lesson.main, argv)
                    status = 0
                except SystemExit as done:
                    status = done.code if isinstance(done.code, int) else 1
        (folder / "status.txt").write_text(str(status))
    if without_tensorflow:  # nothing of them was imported before they were hidden
        imported = sorted(m for m, module in sys.modules.items()
                          if m.split(".")[0] in NOT_INSTALLED and module is not None)
        assert not imported, f"imported, though not installed: {', '.join(imported)}"


if __name__ == "__main__":
    main(sys.argv[-1], without_tensorflow="--without-tensorflow" in sys.argv)
