"""Numeric kernels shared by the operators: tiled float32 matmul and patch indexing.

numpy has no BLAS for float16 (a float16 matmul is ~100x slower than float32),
so every product whose operands are not both float32 is computed in float32
tiles of at most TILE_BYTES each and stored back in the destination's format.
Tiles bound numpy's temporaries, which is what keeps the process peak
(tracemalloc) close to the ledger's.
"""

from __future__ import annotations

import numpy as np

from bnncost.layers.scratch import TILE_BYTES, product_tiles
from bnncost.trainer import codec

__all__ = ["TILE_BYTES", "Patches", "matmul"]



def _f32(a: np.ndarray, fmt: str) -> np.ndarray:
    return a if a.dtype == np.float32 else codec.decode(a, fmt)


def matmul(a: np.ndarray, af: str, b: np.ndarray, bf: str, out: np.ndarray, of: str,
           accumulate: bool = False) -> None:
    """out (+)= a @ b, for 2-D a (m, k) and b (k, n) held in real formats, computed in float32.

    Tiled so that the float32 temporaries (a block of a, a block of b, a tile
    of the result and the product being added to it) hold at most TILE_BYTES
    together: result tiles as wide as possible, and the inner dimension cut
    into blocks accumulated in float32, so each operand is converted as few
    times as possible.
    """
    m, k = a.shape
    n = b.shape[1]
    if m == 0 or n == 0:
        return
    if af == bf == of == "float32" and not accumulate and out.flags.c_contiguous:
        np.matmul(a, b, out=out)
        return
    rows, cols, kb = product_tiles(m, k, n)  # layers.scratch: the cost model counts the same tiles
    for i in range(0, m, rows):
        for j in range(0, n, cols):
            r = None
            for q in range(0, k, kb):
                p = _f32(a[i:i + rows, q:q + kb], af) @ _f32(b[q:q + kb, j:j + cols], bf)
                if r is None:
                    r = p
                else:
                    r += p
            codec.store(out[i:i + rows, j:j + cols], r, of, accumulate)


class Patches:
    """Where each kh x kw window of a conv reads its input, for rows = (sample, output position).

    `rows(r0, r1)` gives the flat input positions (sample * H * W + h * W + w)
    of offsets q = i * kw + j of rows r0..r1 (window and stride are (rows, cols)), and where the window hangs over
    the padding. They are computed per block of rows (`blocks`, a few kB of
    index temporaries), not kept as a table: a table for a 112 x 112 ImageNet
    stem is 3 MB the model does not hold.
    """

    BLOCK = 2048  # index values per block

    def __init__(self, in_shape: tuple[int, int, int], out_shape: tuple, window: tuple[int, int],
                 stride: tuple[int, int], padding: tuple[int, int, int, int]):
        h, w, _ = in_shape
        self.h, self.w = h, w
        self.ho, self.wo = out_shape[0], out_shape[1]
        self.top, _, self.left, _ = padding
        (kh, kw), (sh, sw) = window, stride
        self.sh, self.sw, self.taps = sh, sw, kh * kw
        self.hw, self.positions = h * w, self.ho * self.wo
        self.ki = np.arange(kh, dtype=np.int32)
        self.kj = np.arange(kw, dtype=np.int32)
        self.all_valid = (self.top == 0 and self.left == 0 and (self.ho - 1) * sh + kh <= h
                          and (self.wo - 1) * sw + kw <= w)

    def rows(self, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Flat input indices (r, kh*kw) of rows r0..r1, and the mask of offsets over the padding (or None)."""
        r = np.arange(r0, r1, dtype=np.int32)
        b, p = np.divmod(r, np.int32(self.positions))
        oh, ow = np.divmod(p, np.int32(self.wo))
        hh = (oh * np.int32(self.sh) - np.int32(self.top))[:, None] + self.ki  # (r, kh) input row of offset i
        ww = (ow * np.int32(self.sw) - np.int32(self.left))[:, None] + self.kj  # (r, kw) input column of offset j
        idx = (hh * np.int32(self.w))[:, :, None] + ww[:, None, :]
        inv = None
        if not self.all_valid:
            inv = ((hh < 0) | (hh >= self.h))[:, :, None] | ((ww < 0) | (ww >= self.w))[:, None, :]
            idx[inv] = 0  # the sample's first position: the caller overwrites these with its padding value
        idx += (b * np.int32(self.hw))[:, None, None]
        return idx.reshape(r1 - r0, self.taps), (None if inv is None else inv.reshape(r1 - r0, self.taps))

    def blocks(self, r0: int, r1: int, width: int | None = None):
        """Sub-ranges of r0..r1 whose rows hold at most BLOCK values of `width` a row (default: the
        kh*kw indices of a patch), so index arrays and the caller's per-block temporaries stay a few kB."""
        step = max(1, self.BLOCK // max(self.taps, width or 0))
        for a in range(r0, r1, step):
            yield a, min(r1, a + step)
