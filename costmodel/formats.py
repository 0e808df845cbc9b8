"""Number formats and the bytes a tensor takes in each (METHOD 3.2).

bool tensors are packed along their last axis: bytes = (elements / last
dimension) x ceil(last dimension / 8). Every other format is elements x bits / 8.
po2 is a power-of-two code (sign plus exponent) stored in 8 bits.
"""

from __future__ import annotations

import math

FORMAT_BITS: dict[str, int] = {
    "float32": 32,
    "float16": 16,
    "bfloat16": 16,
    "int32": 32,
    "int16": 16,
    "int8": 8,
    "uint8": 8,
    "po2": 8,
    "bool": 1,
}

REAL_FORMATS = ("float32", "float16", "bfloat16")

# Formats a tensor may be held in but a strategy never computes in: an engine's
# own bookkeeping (PyTorch's max-pool indices and class labels are int64).
STORAGE_BITS: dict[str, int] = {**FORMAT_BITS, "int64": 64}


def tensor_bytes(fmt: str, shape: tuple[int, ...]) -> int:
    """Bytes of a tensor of this shape stored in this format (bool packed along the last axis)."""
    if fmt == "bool":
        if not shape:
            return 1
        return math.prod(shape[:-1]) * -(-shape[-1] // 8)
    return math.prod(shape) * STORAGE_BITS[fmt] // 8


def batched_bytes(fmt: str, shape: tuple[int, ...]) -> int:
    """Bytes per sample of a tensor whose batch axis B stands in front of `shape`.

    The batch axis is never the last one, so bool packing happens within a
    sample and the total is exactly B times this.
    """
    return tensor_bytes(fmt, shape) if shape else STORAGE_BITS[fmt] // 8
