"""Run-time set-up on every Keras backend: the standard streams, TensorFlow's start-up logs, the
devices and GPU memory, the distribution, the precision policy, seeds and determinism, and the
one `device:` line that says what runs. TensorFlow is imported only on its own backend: JAX and
PyTorch run without it installed. See the book, Backends and Scaling up.
"""

import contextlib
import functools
import json
import os
import sys
import warnings


def _open_standard_streams():
    """Give the process a stdin, stdout and stderr when it was started with one closed (`2>&-`):
    /dev/null takes a closed descriptor 0, 1 or 2, so that no file opened later (a model being
    saved) gets that number and receives what libraries print there."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            devnull = os.open(os.devnull, os.O_RDWR)
            if devnull != fd:
                os.dup2(devnull, fd)
                os.close(devnull)
    for name, mode in (("stdin", "r"), ("stdout", "w"), ("stderr", "w")):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, mode))


_open_standard_streams()

from common import errors  # noqa: E402
from common.errors import UsageError  # noqa: E402

# TensorFlow's C++ core prints start-up notes (and, without a GPU, alarming but harmless CUDA
# messages) straight to file descriptor 2. Keep warnings and errors, and mute what is printed
# while TensorFlow loads, unless TF_CPP_MIN_LOG_LEVEL=0 or 1 asks for it. This must run before
# TensorFlow is first imported, which is why `common` imports this module first.
_MUTE_STARTUP = os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2") not in ("0", "1")


@contextlib.contextmanager
def _native_stderr_muted(active):
    """Point file descriptor 2 at /dev/null for the block (C++ logs bypass sys.stderr)."""
    if not active:
        yield
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


BACKEND_NAMES = {"tensorflow": "TensorFlow", "jax": "JAX", "torch": "PyTorch"}


def _refuse(message):
    """Exit with status 2 and one line (in a notebook, raise `UsageError`), before Keras fails
    with a traceback."""
    if errors.ipython() is not None:
        raise errors.UsageError(message)
    print(f"{os.path.basename(sys.argv[0]) or 'python'}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _refuse_unsupported_backend(backend):
    """Refuse a backend the lessons do not run on (Keras also has numpy and openvino, for
    inference only)."""
    if backend not in BACKEND_NAMES:
        _refuse(f"KERAS_BACKEND={backend} is not supported; the lessons run on "
                f"{', '.join(BACKEND_NAMES)} (see the book, Backends)")


def _refuse_missing_backend(backend):
    """Refuse a backend whose package is not installed: TensorFlow, the default, where only
    JAX or PyTorch is."""
    requirements = "requirements.txt" if backend == "tensorflow" else "requirements-backends.txt"
    others = " or ".join(b for b in BACKEND_NAMES if b != backend)
    _refuse(f"the {backend} backend needs {BACKEND_NAMES[backend]}, which is not installed: "
            f"pip install -r {requirements}, or set KERAS_BACKEND={others} (see the book, "
            "Backends)")


if "KERAS_BACKEND" in os.environ:
    _refuse_unsupported_backend(os.environ["KERAS_BACKEND"])


DISTRIBUTIONS = ("none", "mirrored", "multi-worker")  # --distribute; what each backend runs: below

# The command line, read before Keras and its backend load (seconds): `--help` and a mistyped
# flag answer at once (see common/early.py). Whatever is left, the full parse checks again.
from common import early  # noqa: E402

early.read_command_line()

try:
    with _native_stderr_muted(_MUTE_STARTUP):
        import keras  # and the backend's own package: TensorFlow, JAX or PyTorch, no other

        BACKEND = keras.backend.backend()  # "tensorflow", "jax" or "torch"
        _refuse_unsupported_backend(BACKEND)  # one set in ~/.keras/keras.json
        if BACKEND == "tensorflow":
            import tensorflow as tf

            # Listing the GPUs starts CUDA, which prints "failed call to cuInit" on a machine
            # with CUDA's libraries and no GPU: here, while that is muted, and not later.
            tf.config.list_physical_devices("GPU")
except ModuleNotFoundError as missing:  # "tensorflow", or a module of it ("tensorflow.python")
    if (missing.name or "").split(".")[0] not in BACKEND_NAMES:
        raise
    _refuse_missing_backend(missing.name.split(".")[0])

if BACKEND == "tensorflow":
    # Keras makes every model's train, test and predict functions from one Python function,
    # `multi_step_on_iterator`, and TensorFlow counts the traces of all of them together: a short
    # run that traces a few models' functions once each is warned of "retracing" that did not
    # happen. That warning alone is dropped; any other function's still shows.
    tf.get_logger().addFilter(lambda record: not (
        "multi_step_on_iterator at" in record.getMessage()
        and "triggered tf.function retracing" in record.getMessage()))

if BACKEND != "tensorflow" and "tensorflow" not in sys.modules:
    # Keras imports TensorFlow wherever it is installed (2 seconds) to seed it and to ask whether
    # what it saves is one of TensorFlow's types; on JAX and PyTorch nothing is, so Keras is told
    # it is missing, as it is on a machine without it. (What needs it all the same, --tensorboard's
    # `tf.summary`, still imports it.)
    from keras.src.utils import module_utils

    module_utils.tensorflow._available = False

if BACKEND == "jax":
    # Deterministic GPU kernels; read when JAX first starts its devices, after this.
    os.environ["XLA_FLAGS"] = " ".join(
        [os.environ.get("XLA_FLAGS", ""), "--xla_gpu_deterministic_ops=true"]).strip()


# Keras's fit warns, on every call, that its `shuffle=True` default is ignored for a tf.data
# pipeline; the lessons' pipelines are shuffled with their seed.
warnings.filterwarnings("ignore", message=r"`shuffle=True` was passed, but will be ignored")

# Mirrored on JAX is keras.distribution.DataParallel; Keras on PyTorch has no distribution.
SUPPORTED_DISTRIBUTIONS = {"tensorflow": DISTRIBUTIONS, "jax": ("none", "mirrored"),
                           "torch": ("none",)}


def check_supported(distribute):
    """Refuse (`UsageError`) a --distribute that this backend cannot run."""
    if distribute not in SUPPORTED_DISTRIBUTIONS[BACKEND]:
        where = " or ".join(BACKEND_NAMES[b] for b, can in SUPPORTED_DISTRIBUTIONS.items()
                            if distribute in can)
        raise UsageError(f"--distribute {distribute} runs on {where}, not on the "
                         f"{BACKEND_NAMES[BACKEND]} backend (KERAS_BACKEND); see the book, "
                         "Backends")


def check_batches(args, dataset):
    """Refuse (`UsageError`) batches that --distribute mirrored on JAX cannot share evenly over
    its devices, the last batch of each split included."""
    if BACKEND != "jax" or getattr(args, "distribute", "none") != "mirrored":
        return
    devices = len(keras.distribution.list_devices())
    for split, size in (("training", len(dataset.x_train)), ("test", len(dataset.x_test))):
        sizes = {min(args.batch_size, size), size % args.batch_size} - {0}
        uneven = sorted(b for b in sizes if b % devices)
        if uneven:
            raise UsageError(f"--distribute mirrored on JAX splits every batch over its {devices} "
                             f"devices, and {size:,} {split} images in batches of "
                             f"{args.batch_size} leave a batch of {uneven[0]}: choose a "
                             f"--batch-size (or --limit) that {devices} devices can share")


def replicas():
    """How many devices share each batch of a JAX DataParallel run; 1 otherwise (TensorFlow's
    strategies split a batch of any size themselves)."""
    distribution = keras.distribution.distribution() if BACKEND == "jax" else None
    return distribution.device_mesh.devices.size if distribution is not None else 1


def setup(args):
    """Set up the devices, the distribution, the precision policy and the seeds from the flags,
    and print the `device:` line; return the device's description."""
    if BACKEND == "torch":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    if BACKEND == "tensorflow":
        for gpu in tf.config.list_physical_devices("GPU"):
            with contextlib.suppress(RuntimeError):  # already initialised (a second call)
                tf.config.experimental.set_memory_growth(gpu, True)
    # First: a multi-worker strategy must be made before TensorFlow runs any operation. It is
    # made the global default, so every model, optimizer and metric is created under it without
    # a `with strategy.scope():` in every lesson.
    strategy = make_strategy(args.distribute)
    if BACKEND == "jax":
        keras.distribution.set_distribution(strategy)
    elif BACKEND == "tensorflow":
        tf.distribute.experimental_set_strategy(strategy)
        # The first graph with an int64 transpose (Keras's `take_along_axis` makes one) logs
        # "oneDNN supports DT_INT64 only on platforms with AVX-512" as an error, once per
        # process, and on CPUs that have AVX-512 too: here, muted, and not in a lesson. (Not at
        # import: no operation may run before the devices and the strategy are set.)
        with _native_stderr_muted(_MUTE_STARTUP):
            tf.function(tf.transpose)(tf.zeros((2, 3), tf.int64))
    policy = precision_policy(args.mixed_precision)
    keras.mixed_precision.set_global_policy(policy)
    # Seeds Python's `random`, NumPy and the backend (and TensorFlow where it is loaded);
    # deterministic kernels make a rerun give the same numbers.
    keras.utils.set_random_seed(args.seed)
    if BACKEND == "tensorflow":
        tf.config.experimental.enable_op_determinism()
    if BACKEND == "torch":
        import torch

        torch.use_deterministic_algorithms(True)
    device = f"GPU ({', '.join(gpus())})" if gpus() else f"CPU ({os.cpu_count()} cores)"
    print(f"device: {device}, {BACKEND_NAMES[BACKEND]} backend{_describe(strategy)}, {policy}, "
          f"seed {args.seed}", file=sys.stderr)
    return device


@functools.cache
def gpus():
    """The names of the GPUs the backend computes on. On JAX the first call starts its devices,
    which must wait until XLA_FLAGS is set."""
    if BACKEND == "tensorflow":
        return [_gpu_name(gpu) for gpu in tf.config.list_physical_devices("GPU")]
    if BACKEND == "jax":
        import jax

        return [d.device_kind for d in jax.devices() if d.platform == "gpu"]
    import torch

    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def make_strategy(distribute):
    """The strategy for --distribute (on JAX, the keras.distribution), or None for one device.
    Mirrored on TensorFlow without a GPU runs over the CPU's logical devices."""
    if distribute == "mirrored" and BACKEND == "jax":
        return keras.distribution.DataParallel(devices=keras.distribution.list_devices())
    if distribute == "mirrored":
        devices = None if gpus() else [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if distribute == "multi-worker":
        return _MultiWorkerStrategy()
    return None


if BACKEND == "tensorflow":  # the strategies are TensorFlow's: defined on its backend alone
    class _MultiWorkerStrategy(tf.distribute.MultiWorkerMirroredStrategy):
        """MultiWorkerMirroredStrategy with a `reduce` that Keras 3's `fit` can use.

        Keras 3.15 calls `reduce` in two ways the collective strategy refuses
        (keras-team/keras#20585): on a nest of values (its first batch, to build the metrics),
        and with axis=0 on per-replica scalars (the step's loss and metrics). This one reduces
        each value of a nest on its own, and a scalar across the replicas alone.
        """

        def reduce(self, reduce_op, value, axis):
            def one(v):
                first = v.values[0] if isinstance(v, tf.distribute.DistributedValues) else v
                return super(_MultiWorkerStrategy, self).reduce(
                    reduce_op, v, None if first.shape.rank == 0 else axis)
            return tf.nest.map_structure(one, value)


def multi_worker():
    """Whether a multi-worker strategy runs this process (on TensorFlow alone)."""
    return BACKEND == "tensorflow" and isinstance(tf.distribute.get_strategy(),
                                                  tf.distribute.MultiWorkerMirroredStrategy)


def should_checkpoint():
    """Whether this process keeps the backups: every process but a multi-worker run's workers
    other than the chief (the rule of tf.distribute)."""
    return BACKEND != "tensorflow" or tf.distribute.get_strategy().extended.should_checkpoint


def precision_policy(mixed):
    """float32, or with --mixed-precision mixed_float16 on a GPU, mixed_bfloat16 on a CPU."""
    if not mixed:
        return "float32"
    return "mixed_float16" if gpus() else "mixed_bfloat16"


def is_chief(args):
    """Whether this process writes the outputs: always, but in a multi-worker run, where only
    the task "chief" does, or worker 0 if the cluster has no chief (the rule of tf.distribute)."""
    if getattr(args, "distribute", "none") != "multi-worker":
        return True
    config = json.loads(os.environ["TF_CONFIG"])
    task = config["task"]
    if "chief" in config["cluster"]:
        return task["type"] == "chief"
    return task["type"] == "worker" and int(task.get("index", 0)) == 0


def check_tf_config():
    """Refuse (`UsageError`) a multi-worker run without a TF_CONFIG whose task is one of its
    cluster's."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        raise UsageError("--distribute multi-worker needs the TF_CONFIG environment variable "
                         "(the cluster and this worker's task; see the book, Scaling up)")
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        addresses = cluster[task["type"]]
        index = int(task.get("index", 0))
        valid = isinstance(addresses, list) and 0 <= index < len(addresses)
    except (ValueError, KeyError, TypeError):
        valid = False
    if not valid:
        raise UsageError("TF_CONFIG must be JSON with a cluster and this process's task in it, "
                         'for example {"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                         '"task": {"type": "worker", "index": 0}}')


def _describe(strategy):
    if strategy is None:
        return ""
    if isinstance(strategy, keras.distribution.DataParallel):
        devices = strategy.device_mesh.devices.size
        return f", mirrored over {devices} devices (keras.distribution.DataParallel)"
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        resolver = strategy.cluster_resolver
        cluster = resolver.cluster_spec().as_dict()
        workers = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
        return (f", multi-worker: {resolver.task_type} {resolver.task_id} of {workers} "
                f"workers, {strategy.num_replicas_in_sync} replicas")
    return f", mirrored over {strategy.num_replicas_in_sync} replicas"


def _gpu_name(gpu):
    details = tf.config.experimental.get_device_details(gpu)
    return details.get("device_name", gpu.name)
