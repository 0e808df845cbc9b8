"""Numeric kernels shared by the operators: tiled float32 matmul and patch indexing.

numpy has no BLAS for float16 (a float16 matmul is ~100x slower than float32),
so every product whose operands are not both float32 is computed in float32
tiles of at most TILE_BYTES each and stored back in the destination's format.
Tiles bound numpy's temporaries, which is what keeps the process peak
(tracemalloc) close to the ledger's.
"""

from __future__ import annotations

import numpy as np

from bnncost.trainer import codec

TILE_BYTES = 1 << 19  # all float32 temporaries of one product together (4 blocks of TILE_BYTES / 4)


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
    per = TILE_BYTES // 16  # floats per temporary
    cols = min(n, per)
    rows = max(1, min(m, per // cols))
    kb = max(1, min(k, per // max(rows, cols)))
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
    """Where each kh x kw window of a conv or pool reads its input, for rows = (sample, output position).

    `src[p, q]` is the flat input position (h * W + w) of offset q = i * kw + j
    of output position p, `valid[p, q]` is False where the window hangs over
    the padding. Conv and pool both use it; padding values are the caller's.
    `window` and `stride` are (rows, cols) pairs (non-square ones allowed).
    """

    def __init__(self, in_shape: tuple[int, int, int], out_shape: tuple, window: tuple[int, int],
                 stride: tuple[int, int], padding: tuple[int, int, int, int]):
        h, w, _ = in_shape
        ho, wo = out_shape[0], out_shape[1]
        (kh, kw), (sh, sw) = window, stride
        top, _, left, _ = padding
        oh = np.arange(ho)[:, None] * sh - top  # (ho, 1)
        ow = np.arange(wo)[:, None] * sw - left
        rr = (oh + np.arange(kh)[None, :])  # (ho, kh) input row of offset i
        cc = (ow + np.arange(kw)[None, :])  # (wo, kw)
        r4 = np.broadcast_to(rr[:, None, :, None], (ho, wo, kh, kw))
        c4 = np.broadcast_to(cc[None, :, None, :], (ho, wo, kh, kw))
        valid = (r4 >= 0) & (r4 < h) & (c4 >= 0) & (c4 < w)
        src = np.where(valid, r4 * w + c4, 0)
        self.taps, self.hw, self.positions = kh * kw, h * w, ho * wo
        self.src = src.reshape(ho * wo, kh * kw).astype(np.int32)
        self.valid = valid.reshape(ho * wo, kh * kw)
        self.all_valid = bool(self.valid.all())

    def rows(self, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Flat (sample * H * W + position) input indices (r, kh*kw) of rows r0..r1, and the invalid mask."""
        r = np.arange(r0, r1, dtype=np.int32)
        b, p = np.divmod(r, np.int32(self.positions))
        idx = self.src[p]
        idx += (b * np.int32(self.hw))[:, None]
        return idx, (None if self.all_valid else ~self.valid[p])

    def blocks(self, r0: int, r1: int):
        """Sub-ranges of r0..r1 small enough that their index arrays stay a few kB."""
        step = max(1, (1 << 13) // self.taps)
        for a in range(r0, r1, step):
            yield a, min(r1, a + step)
