"""Training data: the bundled 8x8 digits, MNIST (IDX files), CIFAR-10 (python batches), synthetic.

`--dataset` takes `digits` (default), `mnist:DIR`, `cifar10:DIR` or
`synthetic`. Pixels are scaled to [-1, 1] and centred on 0: digits by
x / 8 - 1 (counts 0-16; exact in float16), MNIST and CIFAR-10 by
x / 127.5 - 1. The samples are reshaped to the model's input when the number
of values agrees ([64] or [8, 8, 1] for digits, [784] or [28, 28, 1] for
MNIST, [3072] or [32, 32, 3] for CIFAR-10, whose channels are moved last).

- digits: 1797 samples shipped in `trainer/data/digits.npz` (UCI, CC BY 4.0,
  see its README); a fixed permutation (seed 20210601) gives 1437 training
  and 360 test samples, whatever the training seed.
- MNIST: `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
  `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte` in DIR, each plain or
  `.gz` (`train-images.idx3-ubyte` spellings are accepted too).
- CIFAR-10: `data_batch_1` .. `data_batch_5` and `test_batch` in DIR (or in
  DIR/cifar-10-batches-py). They are pickles: they are read with an unpickler
  that only accepts the numpy array types the batches contain, so a crafted
  file cannot run code.
- synthetic: seeded uniform inputs shaped for any model, labelled by a fixed
  random linear teacher (so it is learnable); 512 training, 128 test samples.
Every problem with the files is a TrainerError naming the file.
"""

from __future__ import annotations

import gzip
import io
import math
import pickle
import struct
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from bnncost.trainer.errors import TrainerError

DIGITS_SPLIT_SEED = 20210601
MAX_DATA_BYTES = 1 << 30  # one IDX file: MNIST's largest is 47 MB
MAX_BATCH_FILE_BYTES = 256 << 20  # one CIFAR-10 batch: 31 MB
DIGITS_TRAIN = 1437


@dataclass
class Dataset:
    name: str
    x_train: np.ndarray  # float32, (N, *model input)
    y_train: np.ndarray  # int64
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int


def load_dataset(spec: str, input_shape: tuple[int, ...], classes: int, seed: int = 0) -> Dataset:
    """The dataset `spec`, scaled and shaped for a model with this input and number of classes."""
    kind, _, arg = spec.partition(":")
    if kind == "digits" and not arg:
        xs, ys, xt, yt, native = _digits()
    elif kind == "synthetic" and not arg:
        return _synthetic(input_shape, classes, seed)
    elif kind == "mnist" and arg:
        xs, ys, xt, yt, native = _mnist(Path(arg).expanduser())
    elif kind == "cifar10" and arg:
        xs, ys, xt, yt, native = _cifar10(Path(arg).expanduser())
    else:
        raise TrainerError(f"unknown dataset '{spec}'; use digits, synthetic, mnist:DIR or cifar10:DIR")
    name = kind
    if math.prod(native) != math.prod(input_shape) or (len(input_shape) == 3 and tuple(input_shape) != native):
        raise TrainerError(
            f"dataset {name} has {'x'.join(map(str, native))} samples ({math.prod(native)} values) "
            f"but the model takes input {list(input_shape)}")
    n_cls = int(max(ys.max(initial=0), yt.max(initial=0))) + 1
    if n_cls > classes:
        raise TrainerError(f"dataset {name} has {n_cls} classes but the model's softmax_ce has {classes}")
    shape = tuple(input_shape)
    return Dataset(name, xs.reshape(len(xs), *shape), ys.astype(np.int64),
                   xt.reshape(len(xt), *shape), yt.astype(np.int64), n_cls)


# ---------------------------------------------------------------- digits

def _digits():
    with resources.files("bnncost.trainer.data").joinpath("digits.npz").open("rb") as f:
        z = np.load(f)
        images, labels = z["images"], z["labels"]
    perm = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(images))
    x = images.astype(np.float32) / 8.0 - 1.0
    tr, te = perm[:DIGITS_TRAIN], perm[DIGITS_TRAIN:]
    return x[tr], labels[tr], x[te], labels[te], (8, 8, 1)


# ---------------------------------------------------------------- synthetic

def _synthetic(input_shape, classes, seed, n_train=512, n_test=128) -> Dataset:
    rng = np.random.default_rng(seed + 7919)
    f = math.prod(input_shape)
    teacher = rng.standard_normal((f, classes)).astype(np.float32)
    x = rng.uniform(-1, 1, size=(n_train + n_test, f)).astype(np.float32)
    y = np.argmax(x @ teacher, axis=1)
    x = x.reshape(len(x), *input_shape)
    return Dataset("synthetic", x[:n_train], y[:n_train], x[n_train:], y[n_train:], classes)


# ---------------------------------------------------------------- MNIST (IDX)

def _find(folder: Path, stem: str) -> Path:
    alts = [stem, stem.replace("-idx", ".idx")]  # train-images-idx3-ubyte or train-images.idx3-ubyte
    for name in alts:
        for cand in (folder / name, folder / f"{name}.gz"):
            if cand.is_file():
                return cand
    raise TrainerError(f"{folder}: missing MNIST file {stem} (plain or .gz)")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (unsigned bytes) as a numpy array; truncated, malformed or oversized files raise TrainerError.

    The header's dimensions are checked against MAX_DATA_BYTES before the data is read, and only the
    bytes the header declares are read (a gzip bomb behind a small header is not inflated in full).
    """
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0:
                raise TrainerError(f"{path}: not an IDX file (bad magic number)")
            if head[2] != 0x08:
                raise TrainerError(f"{path}: IDX data type {head[2]:#x} is not unsigned bytes")
            ndim = head[3]
            raw_dims = f.read(4 * ndim)
            if len(raw_dims) < 4 * ndim:
                raise TrainerError(f"{path}: truncated IDX header")
            dims = struct.unpack(f">{ndim}I", raw_dims)
            need = math.prod(dims)
            if need > MAX_DATA_BYTES:
                raise TrainerError(f"{path}: IDX header declares {need:,} bytes ({'x'.join(map(str, dims))}); "
                                   f"at most {MAX_DATA_BYTES:,} are read")
            data = f.read(need)
    except TrainerError:
        raise
    except (OSError, EOFError, zlib.error) as exc:
        raise TrainerError(f"{path}: cannot read IDX file ({exc})") from None
    if len(data) < need:
        raise TrainerError(f"{path}: truncated IDX file: {len(data)} of {need} data bytes")
    return np.frombuffer(data, np.uint8).reshape(dims)


def _mnist(folder: Path):
    if not folder.is_dir():
        raise TrainerError(f"{folder}: MNIST directory not found")
    parts = {}
    for key, stem in (("xs", "train-images-idx3-ubyte"), ("ys", "train-labels-idx1-ubyte"),
                      ("xt", "t10k-images-idx3-ubyte"), ("yt", "t10k-labels-idx1-ubyte")):
        parts[key] = read_idx(_find(folder, stem))
    for x, y, which in ((parts["xs"], parts["ys"], "train"), (parts["xt"], parts["yt"], "t10k")):
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise TrainerError(f"{folder}: MNIST {which} images {x.shape} and labels {y.shape} do not match")
    if len(parts["xs"]) == 0:
        raise TrainerError(f"{folder}: MNIST train-images-idx3-ubyte holds no images")
    native = (*parts["xs"].shape[1:], 1)
    scale = lambda a: a.astype(np.float32) / 127.5 - 1.0  # noqa: E731
    return scale(parts["xs"]), parts["ys"], scale(parts["xt"]), parts["yt"], native


# ---------------------------------------------------------------- CIFAR-10

class _BatchUnpickler(pickle.Unpickler):
    """Only the numpy types a CIFAR-10 batch contains may be loaded."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch, unpickled from at most MAX_BATCH_FILE_BYTES held in memory (so a field
    that declares more bytes than the file has fails as truncated), then checked: N x 3072 pixels of
    0..255 and N integer labels of 0..255."""
    if not path.is_file():
        raise TrainerError(f"{path}: missing CIFAR-10 batch")
    size = path.stat().st_size
    if size > MAX_BATCH_FILE_BYTES:
        raise TrainerError(f"{path}: {size:,} bytes is larger than a CIFAR-10 batch can be "
                           f"({MAX_BATCH_FILE_BYTES:,})")
    try:
        d = _BatchUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError,
            IndexError, KeyError, OSError, MemoryError, OverflowError, RecursionError) as exc:
        why = " ".join(str(exc).split())[:100] or type(exc).__name__
        raise TrainerError(f"{path}: truncated or not a CIFAR-10 python batch ({why})") from None
    if not isinstance(d, dict):
        raise TrainerError(f"{path}: not a CIFAR-10 python batch")
    data = d.get(b"data", d.get("data"))
    labels = d.get(b"labels", d.get("labels"))
    if not isinstance(data, np.ndarray) or labels is None:
        raise TrainerError(f"{path}: CIFAR-10 batch without data and labels")
    if not isinstance(labels, (list, tuple, np.ndarray)):
        raise TrainerError(f"{path}: CIFAR-10 labels must be a list of integers, not {type(labels).__name__}")
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu" or labels.ndim != 1:
        raise TrainerError(f"{path}: CIFAR-10 labels must be a list of integers (got {labels.dtype}, "
                           f"{labels.ndim}-d)")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise TrainerError(f"{path}: CIFAR-10 labels must be class numbers 0..255, "
                           f"found {labels.min()}..{labels.max()}")
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise TrainerError(f"{path}: CIFAR-10 batch has data {data.shape} and {len(labels)} labels; "
                           "expected N x 3072 and N")
    if data.dtype != np.uint8:
        if data.dtype.kind not in "iu" or (data.size and (data.min() < 0 or data.max() > 255)):
            raise TrainerError(f"{path}: CIFAR-10 pixels must be integers 0..255, not {data.dtype}"
                               + (" with NaN" if data.dtype.kind == "f" and np.isnan(data).any() else ""))
        data = data.astype(np.uint8)
    return data, labels.astype(np.int64)


def _cifar10(folder: Path):
    if (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"
    if not folder.is_dir():
        raise TrainerError(f"{folder}: CIFAR-10 directory not found")
    train = [_cifar_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    xt, yt = _cifar_batch(folder / "test_batch")
    xs = np.concatenate([t[0] for t in train])
    ys = np.concatenate([t[1] for t in train])
    hwc = lambda a: (a.reshape(len(a), 3, 32, 32).transpose(0, 2, 3, 1).astype(np.float32) / 127.5 - 1.0)  # noqa: E731
    return hwc(xs), ys, hwc(xt), yt, (32, 32, 3)
