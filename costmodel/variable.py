"""One variable of a training step: its format, bytes as a + b x B (or growing workspace), and lifetime."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from bnncost.costmodel.formats import batched_bytes, tensor_bytes


@dataclass(frozen=True)
class Variable:
    name: str
    layer: str
    role: str
    format: str
    shape: tuple  # per-sample dims after a leading "B" when batched
    fixed: int  # a: bytes that do not scale with the batch
    per_sample: int  # b: bytes per sample
    alloc: int  # event index, inclusive
    free: int  # event index, inclusive
    cap: float = math.inf  # workspace growing with the batch: bytes = min(cap, slope * B) ...
    slope: int = 0
    rows_per_sample: int = 0  # ... in rows of shape[1:], rows_per_sample x B of them in all
    # bytes that are neither a + b x B nor workspace: a step function of B (a BLAS library's cached
    # buffers, whose count and size follow the gemm shapes); added to fixed + per_sample x B
    by_batch: Callable[[int], int] | None = field(default=None, compare=False, repr=False)
    batch_below: int | None = None  # held only while the batch has fewer samples than this (else 0 bytes)
    min_batch: int | None = None  # held only from this batch size on (else 0 bytes)

    @property
    def conditional(self) -> bool:
        """Held at some batch sizes only."""
        return self.batch_below is not None or self.min_batch is not None

    def held_at(self, batch: int) -> bool:
        return (self.batch_below is None or batch < self.batch_below) and (self.min_batch is None
                                                                           or batch >= self.min_batch)

    def bytes_at(self, batch: int) -> int:
        if not self.held_at(batch):
            return 0
        ws = 0 if self.slope == 0 else int(min(self.cap, self.slope * batch))
        return self.fixed + self.per_sample * batch + ws + (self.by_batch(batch) if self.by_batch else 0)

    def shape_at(self, batch: int) -> list:
        """Concrete shape at a batch size (growing workspace: rows held x row)."""
        if self.slope:
            return [self.bytes_at(batch) // (self.slope // self.rows_per_sample), *self.shape[1:]]
        if self.by_batch:
            return [self.bytes_at(batch)]
        return [batch if d == "B" else d for d in self.shape]


def sized(name: str, layer: str, role: str, fmt: str, shape: tuple, batched: bool, alloc: int, free: int) -> Variable:
    """A variable of this format and shape (per sample, B in front, when batched), alive alloc..free."""
    if batched:
        return Variable(name, layer, role, fmt, ("B", *shape), 0, batched_bytes(fmt, shape), alloc, free)
    return Variable(name, layer, role, fmt, tuple(shape), tensor_bytes(fmt, shape), 0, alloc, free)
