"""The command line every lesson shares, and one-line errors instead of tracebacks: exit status 2
for bad input, 1 for a failed run, 130 for Ctrl-C, 143 for SIGTERM, 141 for a closed pipe. See the
book, The command line and When something goes wrong.
"""

import argparse
import ast
import contextlib
import importlib.util
import inspect
import math
import os
import pathlib
import signal
import sys
import threading

import numpy as np

from common import early
from common import outputs
from common import runtime
from common.data import DATASETS
from common import errors
from common.errors import TrainingError
from common.errors import UsageError

ROOT = pathlib.Path(__file__).resolve().parent.parent  # the lessons' folder


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage dump) and exit with status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def exit(self, status=0, message=None):
        if status and errors.ipython() is not None:  # a notebook: the line, no SystemExit
            raise UsageError(message.strip().split(": error: ", 1)[-1])
        super().exit(status, message)

    def parse_args(self, args=None, namespace=None):
        parsed = super().parse_args(args, namespace)
        # Read before Keras loads (common.early), the flags are checked again once it has:
        # the backend's own limits wait for that parse.
        distribute = None if early.ACTIVE else getattr(parsed, "distribute", None)
        try:
            if distribute is not None:
                runtime.check_supported(distribute)
            if distribute == "multi-worker":
                runtime.check_tf_config()
        except UsageError as err:
            self.exit(2, f"{self.prog}: error: {err}\n")
        if getattr(parsed, "tensorboard", False) and importlib.util.find_spec("tensorflow") is None:
            # Keras writes TensorBoard's logs with tf.summary, on every backend.
            self.error("--tensorboard needs TensorFlow (Keras writes the logs with tf.summary), "
                       "which is not installed: pip install -r requirements.txt")
        if getattr(parsed, "out", ROOT) is None:
            parsed.out = self.default_out(parsed)
        return parsed

    def default_out(self, parsed):
        """Where a run without --out writes: the repository (its committed figures/ and
        results/) with the lesson's default settings, as `make figures` runs it; with any other
        setting, runs/<Script>/, which git ignores, so that a trial never replaces them."""
        defaults = vars(super().parse_args([]))
        changed = [f"--{k.replace('_', '-')}" for k, v in vars(parsed).items()
                   if k not in ("out", "tensorboard", "export") and v != defaults.get(k)]
        if not changed:
            return ROOT
        folder = ROOT / "runs" / pathlib.Path(self.prog).stem
        outputs.default_out_note = (
            f"outputs: {folder} ({', '.join(changed)} differ from the lesson's defaults; only "
            "a default run writes the repository's figures/ and results/; --out DIR chooses)")
        return folder


def positive_int(text):
    return _number(text, int, lambda v: v >= 1, "a positive integer")


# NumPy's generators and `keras.utils.set_random_seed` take seeds in [0, 2**32 - 1].
MAX_SEED = 2**32 - 1


def seed(text):
    return _number(text, int, lambda v: 0 <= v <= MAX_SEED, f"an integer from 0 to {MAX_SEED}")


# The models compute in float32: a number above its largest one would be infinite there, and a
# non-zero one below its smallest normal one would vanish (a learning rate of 1e-40 is 0).
FLOAT32_MAX = float(np.finfo(np.float32).max)    # about 3.4e38
FLOAT32_TINY = float(np.finfo(np.float32).tiny)  # about 1.2e-38


def nonnegative_float(text):
    return _in_float32(_number(text, float, lambda v: v >= 0, "a number >= 0"), text)


def positive_float(text):
    return _in_float32(_number(text, float, lambda v: v > 0, "a positive number"), text)


# A larger weight on a penalty (--beta, --l1, --lambda) can overflow float32 in Adam, which
# squares each gradient: 1e30 diverges. Beyond 1e6 the penalty has long drowned the rest.
MAX_PENALTY_WEIGHT = 1e6


def at_most(limit, why, kind=positive_int):
    """An argparse type: a value of type `kind` no larger than `limit`; `why` says why."""
    shown = f"{limit:,}" if isinstance(limit, int) else f"{limit:g}"

    def checked(text):
        value = kind(text)
        if value > limit:
            raise argparse.ArgumentTypeError(f"must be at most {shown} ({why}), got {text!r}")
        return value

    checked.__name__ = kind.__name__
    return checked


penalty_weight = at_most(MAX_PENALTY_WEIGHT, "a larger weight overflows float32 gradients",
                         nonnegative_float)


def output_folder(text):
    """An argparse type: a folder that exists or can be created, and can be written to."""
    try:
        return outputs.check_writable(text)
    except UsageError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def export_format(text):
    """An argparse type: "onnx", if this backend can export to ONNX with what is installed."""
    try:
        if early.ACTIVE and text == "onnx":  # what the backend can export is checked later
            return text
        return outputs.check_export(text)
    except UsageError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def existing_file(text):
    path = pathlib.Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give the .npz file in it")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return path


# The VAE and the CVAE: no more latent dimensions than pixels (z is a code of the image), and
# at most twice the 5,000 importance samples of Burda et al. (2016) for the IWAE estimate.
MAX_LATENT_DIM = 784
MAX_IWAE_SAMPLES = 10_000
latent_dim = at_most(MAX_LATENT_DIM, "the pixels of an image")
iwae_samples = at_most(MAX_IWAE_SAMPLES, "twice the 5,000 of Burda et al.")


# TensorFlow's sizes overflow beyond 64 bits; this is far beyond any training set.
MAX_BATCH_SIZE = 2**31 - 1


def base_parser(script, epochs, batch_size, learning_rate):
    """The flags every lesson shares, with its defaults; a lesson adds its own. `script` is the
    lesson's name ("VariationalAutoEncoder_tf2"): the first line of its docstring describes it."""
    path = ROOT / f"{script}.py"
    description = ast.get_docstring(ast.parse(path.read_text())).split("\n\n")[0]
    parser = Parser(prog=path.name, description=description,
                    formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    shared = parser.add_argument_group("shared by every lesson")
    shared.add_argument("--epochs", type=positive_int, default=epochs,
                        help="passes over the training set")
    shared.add_argument("--batch-size", default=batch_size,
                        type=at_most(MAX_BATCH_SIZE, "a batch above the training set's size is "
                                                     "the whole set"),
                        help="examples per gradient step")
    shared.add_argument("--learning-rate", type=positive_float, default=learning_rate,
                        help="Adam's step size")
    shared.add_argument("--seed", type=seed, default=0,
                        help="seed for weights, shuffling, binarization and sampling")
    shared.add_argument("--dataset", choices=DATASETS, default=None,
                        help="which dataset to train on (default: mnist); with --data, what "
                             "the file holds (without it, the file's own name and numbered "
                             "classes are used)")
    shared.add_argument("--data", type=existing_file, metavar="PATH",
                        help="a local Keras-format .npz (x_train, y_train, x_test, y_test) "
                             "instead of the cache, download or offline sample")
    shared.add_argument("--limit", type=positive_int, metavar="N",
                        help="train on the first N training examples only")
    shared.add_argument("--out", type=output_folder, default=None, metavar="DIR",
                        help="write DIR/figures, DIR/results and DIR/models (default: the "
                             "repository with the lesson's default settings, runs/<lesson>/ "
                             "with any other)")
    shared.add_argument("--export", type=export_format, metavar="onnx",
                        help="also write each model as DIR/models/<name>.onnx (on TensorFlow or "
                             "PyTorch; pip install -r requirements-export.txt)")
    scaling = parser.add_argument_group("scaling up (see the book, Scaling up)")
    scaling.add_argument("--distribute", choices=runtime.DISTRIBUTIONS, default="none",
                         help="train on one device, mirrored over this machine's GPUs, or on "
                              "several machines (TF_CONFIG); --batch-size is the global batch")
    scaling.add_argument("--mixed-precision", action="store_true",
                         help="compute in float16 on a GPU (bfloat16 on a CPU); the layers that "
                              "feed losses and metrics stay float32")
    scaling.add_argument("--tensorboard", action="store_true",
                         help="write TensorBoard logs under DIR/logs/<lesson>/")
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (a job scheduler, `docker stop`, `timeout`), handled as Ctrl-C is."""


def run(main, argv=None):
    """Run `main(argv)`, reporting what goes wrong in one line with the exit statuses above."""
    prog = pathlib.Path(inspect.getfile(main)).name
    resume = "run the same command again to resume from the last finished epoch"
    previous = _on_sigterm()
    try:
        main(argv)
    except UsageError as err:
        _say(f"{prog}: error: {err}")
        sys.exit(2)
    except TrainingError as err:
        _say(f"{prog}: {err}")
        sys.exit(1)
    except Terminated:
        _say(f"{prog}: terminated (SIGTERM); {resume}")
        sys.exit(143)
    except KeyboardInterrupt:
        _say(f"{prog}: interrupted; {resume}")
        sys.exit(130)
    except (BrokenPipeError, SystemExit) as err:
        # rich, which prints Keras's model summaries, meets a closed pipe with SystemExit(1);
        # the lessons themselves leave only through the exceptions above (and argparse, 0 or 2).
        if isinstance(err, SystemExit) and err.code != 1:
            raise
        _silence_stdout()
        _say(f"{prog}: output closed (broken pipe); {resume}")
        sys.exit(141)
    except OSError as err:
        if not outputs.is_out_of_space(err):
            raise
        where = f" writing {err.filename}" if getattr(err, "filename", None) else ""
        _say(f"{prog}: no room left on the file system{where}; the previous outputs were left "
             f"as they were: free some space and {resume}")
        sys.exit(1)
    finally:
        outputs.release()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _on_sigterm():
    """Make SIGTERM raise `Terminated` in the main thread; return the handler it replaces."""
    def terminate(signum, frame):
        raise Terminated

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, terminate)


def _say(line):
    """Print one line on stderr, if stderr is still there to print on."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        print(line, file=sys.stderr, flush=True)


def _silence_stdout():
    """Point stdout at /dev/null: the interpreter's last flush of a closed pipe prints no error."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _in_float32(value, text):
    if value > FLOAT32_MAX or 0 < value < FLOAT32_TINY:
        raise argparse.ArgumentTypeError(f"must lie within float32's range ({FLOAT32_TINY:.3g} "
                                         f"to {FLOAT32_MAX:.3g}), got {text!r}")
    return value


def _number(text, kind, valid, what):
    try:
        value = kind(text)
    except (ValueError, OverflowError):
        value = None
    if value is None or not math.isfinite(value) or not valid(value):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value
