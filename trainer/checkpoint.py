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

import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from bnncost.costmodel.strategy import Strategy
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


def save_checkpoint(path: str | os.PathLike, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write atomically: temporary file in the target's folder, fsync, os.replace."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise TrainerError(f"{path}: folder {folder} does not exist")
    header = np.frombuffer(json.dumps({"schema": SCHEMA, **meta}).encode(), dtype=np.uint8)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, __header__=header, **{f"p:{k}": v for k, v in arrays.items()})
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    """(header, arrays) of a checkpoint; TrainerError if it is missing, truncated or foreign."""
    path = Path(path)
    if not path.is_file():
        raise TrainerError(f"{path}: checkpoint not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "__header__" not in z.files:
                raise TrainerError(f"{path}: not a bnncost checkpoint (no header)")
            meta = json.loads(bytes(z["__header__"]).decode())
            arrays = {k[2:]: z[k] for k in z.files if k.startswith("p:")}
    except TrainerError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise TrainerError(f"{path}: truncated or not a bnncost checkpoint ({type(exc).__name__})") from None
    if not isinstance(meta, dict) or meta.get("schema") != SCHEMA:
        raise TrainerError(f"{path}: not a bnncost checkpoint (schema {meta.get('schema') if isinstance(meta, dict) else None!r})")
    return meta, arrays


def check_compatible(path, meta: dict, graph: Graph, strategy: Strategy) -> None:
    if meta.get("model_fingerprint") != model_fingerprint(graph):
        raise TrainerError(f"{path}: checkpoint was written for model '{meta.get('model')}', "
                           f"not this {graph.model.name}")
    if meta.get("strategy_fingerprint") != strategy_fingerprint(strategy):
        raise TrainerError(f"{path}: checkpoint was written for strategy '{meta.get('strategy')}', "
                           f"not this {strategy.name}")
