"""Checkpoints: every persistent buffer plus what is needed to continue exactly where training stopped.

A checkpoint is an .npz (numpy's zip, no pickles) holding the persistent
arrays as stored (weights, optimizer state, batchnorm parameters and running
statistics, in their formats) and a JSON header: schema, fingerprints of the
model and strategy, epochs done, steps done, Adam's step count, the shuffling
RNG state and the history so far. It is written to a temporary file in the
same folder, flushed, and renamed over the target (os.replace), so a crash
never leaves a half-written checkpoint under the real name. Loading refuses
with a one-line TrainerError a file that is truncated, not a checkpoint, or
written for another model or strategy.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import zipfile
from pathlib import Path

import numpy as np

from bnncost.costmodel.strategy import Strategy
from bnncost.layers.outfile import OutputPathError, atomic_output, check_output
from bnncost.layers.graph import Graph
from bnncost.trainer.errors import TrainerError

SCHEMA = "bnncost.checkpoint/1"


def model_fingerprint(graph: Graph) -> str:
    desc = [(n.name, n.kind, list(n.in_shape), list(n.out_shape), list(n.weight_shape), n.binary)
            for n in graph.nodes]
    return hashlib.sha256(json.dumps(desc).encode()).hexdigest()[:16]


def strategy_fingerprint(strategy: Strategy) -> str:
    desc = [strategy.batchnorm, strategy.weight_grad, strategy.optimizer, sorted(strategy.formats.items())]
    return hashlib.sha256(json.dumps(desc).encode()).hexdigest()[:16]


def prepare_checkpoint_path(path: str | os.PathLike) -> Path:
    """Check, before any training, that a checkpoint can be written at `path`, and clear the temporary
    files that a killed earlier run left beside it (`.NAME.*.tmp`, only for this checkpoint's name)."""
    try:
        path = check_output(path, "--save")
    except OutputPathError as exc:
        raise TrainerError(str(exc)) from None
    folder = path.parent
    for stale in folder.glob(f".{glob.escape(path.name)}.*.tmp"):
        try:
            stale.unlink()
        except OSError:
            pass
    return path


def save_checkpoint(path: str | os.PathLike, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write atomically: temporary file in the target's folder, fsync, os.replace, fsync of the folder
    (so that the rename itself survives a power loss). Non-finite values are never written."""
    for name, arr in arrays.items():
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise TrainerError(f"{path}: not written: {name} holds non-finite values")
    header = np.frombuffer(json.dumps({"schema": SCHEMA, **meta}, allow_nan=False).encode(), dtype=np.uint8)
    try:
        with atomic_output(path, "--save", binary=True, durable=True) as f:
            np.savez(f, __header__=header, **{f"p:{k}": v for k, v in arrays.items()})
    except OutputPathError as exc:
        raise TrainerError(str(exc)) from None


MAX_HEADER_BYTES = 1 << 20
# What the header of a resumable checkpoint holds, and the type of each field.
HEADER_FIELDS = {"epoch": int, "steps": int, "adam_t": int, "rng_state": dict, "history": dict,
                 "model_fingerprint": str, "strategy_fingerprint": str}
HISTORY_KEYS = ("train_loss", "train_accuracy", "test_accuracy")


def load_checkpoint(path: str | os.PathLike, expected: dict[str, np.ndarray], graph: Graph | None = None,
                    strategy: Strategy | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """(header, arrays) of a checkpoint written for a network whose persistent arrays are `expected`
    (and, when given, for this model and strategy).

    Everything is validated before any array is read: the header's fields and types, the member list
    (no unknown, no missing member), and each member's .npy header (dtype and shape as expected), so a
    crafted file cannot make the loader allocate more than the model itself holds. TrainerError, one
    line, for a file that is missing, truncated, foreign or tampered with.
    """
    path = Path(path)
    if not path.is_file():
        raise TrainerError(f"{path}: checkpoint not found")
    try:
        with zipfile.ZipFile(path) as z:
            members = {info.filename: info for info in z.infolist()}
            head = members.get("__header__.npy")
            if head is None:
                raise TrainerError(f"{path}: not a bnncost checkpoint (no header)")
            if head.file_size > MAX_HEADER_BYTES:
                raise TrainerError(f"{path}: checkpoint header of {head.file_size:,} bytes is too large")
            meta = json.loads(bytes(_read_member(z, head, path, None, np.dtype(np.uint8))).decode())
            _check_header(path, meta)
            if graph is not None and strategy is not None:
                check_compatible(path, meta, graph, strategy)
            names = {n[2:-4] for n in members if n.startswith("p:") and n.endswith(".npy")}
            unknown = sorted(set(members) - {"__header__.npy"} - {f"p:{k}.npy" for k in expected})
            if unknown:
                raise TrainerError(f"{path}: unknown member {unknown[0]!r} (not part of this model's state)")
            missing = sorted(set(expected) - names)
            if missing:
                raise TrainerError(f"{path}: member {missing[0]!r} is missing")
            arrays = {k: _read_member(z, members[f"p:{k}.npy"], path, v.shape, v.dtype) for k, v in expected.items()}
    except TrainerError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, UnicodeDecodeError, RecursionError) as exc:
        raise TrainerError(f"{path}: truncated or not a bnncost checkpoint ({type(exc).__name__})") from None
    for name, arr in arrays.items():
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise TrainerError(f"{path}: {name} holds non-finite values")
    return meta, arrays


def _read_member(z: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, shape, dtype: np.dtype) -> np.ndarray:
    """One .npy member, after checking its header: the dtype, and the shape (or for the header, its size)."""
    with z.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise TrainerError(f"{path}: {info.filename}: unknown .npy version {version}")
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        got_shape, fortran, got_dtype = read_header(f, max_header_size=10000)
        name = info.filename[:-4]
        if got_dtype != dtype or got_dtype.hasobject:
            raise TrainerError(f"{path}: {name}: dtype {got_dtype}, expected {dtype}")
        if shape is not None and tuple(got_shape) != tuple(shape):
            raise TrainerError(f"{path}: {name}: shape {tuple(got_shape)}, expected {tuple(shape)}")
        if shape is None and (len(got_shape) != 1 or got_shape[0] > MAX_HEADER_BYTES):
            raise TrainerError(f"{path}: {name}: shape {tuple(got_shape)} is not a header")
        count = int(np.prod(got_shape, dtype=object))
        data = f.read(count * dtype.itemsize + 1)
        if len(data) != count * dtype.itemsize:
            raise TrainerError(f"{path}: {name}: truncated ({len(data):,} of {count * dtype.itemsize:,} bytes)")
        arr = np.frombuffer(data, dtype=dtype).reshape(got_shape, order="F" if fortran else "C")
        return arr.copy()


def _check_header(path: Path, meta) -> None:
    if not isinstance(meta, dict) or meta.get("schema") != SCHEMA:
        schema = meta.get("schema") if isinstance(meta, dict) else None
        raise TrainerError(f"{path}: not a bnncost checkpoint (schema {schema!r:.40})")
    for key, kind in HEADER_FIELDS.items():
        value = meta.get(key)
        if value is None:
            raise TrainerError(f"{path}: header: {key} is missing")
        if not isinstance(value, kind) or isinstance(value, bool):
            raise TrainerError(f"{path}: header: {key} must be {kind.__name__}, not {type(value).__name__}")
        if kind is int and value < 0:
            raise TrainerError(f"{path}: header: {key} must be >= 0, not {value}")
    history = meta["history"]
    epochs = meta["epoch"]
    for key in HISTORY_KEYS:
        values = history.get(key)
        if not isinstance(values, list) or len(values) != epochs or not all(
                v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values):
            raise TrainerError(f"{path}: header: history.{key} must be a list of {epochs} numbers")
    try:
        np.random.default_rng().bit_generator.state = meta["rng_state"]
    except (TypeError, ValueError, KeyError) as exc:
        raise TrainerError(f"{path}: header: rng_state is not a generator state ({type(exc).__name__})") from None


def check_compatible(path, meta: dict, graph: Graph, strategy: Strategy) -> None:
    if meta.get("model_fingerprint") != model_fingerprint(graph):
        raise TrainerError(f"{path}: checkpoint was written for model '{meta.get('model')}', "
                           f"not this {graph.model.name}")
    if meta.get("strategy_fingerprint") != strategy_fingerprint(strategy):
        raise TrainerError(f"{path}: checkpoint was written for strategy '{meta.get('strategy')}', "
                           f"not this {strategy.name}")
