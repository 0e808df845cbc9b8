"""sign (with the straight-through estimator) and relu (METHOD 2.1).

sign: y = +1 where x >= 0, else -1 (sign(0) = +1, the same convention as the
bits of a packed tensor); it saves the STE mask |x| <= 1 and its backward
passes dy where the mask holds. relu: y = max(0, x), saves x > 0. Masks are
held in the `activation_mask` format (1 bit each when bool) and expanded a
chunk of rows at a time into the `unpacked` scratch for the backward.
"""

from __future__ import annotations

import numpy as np

from bnncost.trainer import codec
from bnncost.trainer.base import Op, row_chunks, temp_rows


class _Gate(Op):
    """An elementwise layer whose backward multiplies dy by a saved 0/1 mask."""

    def _fwd_chunk(self, x: np.ndarray, y: np.ndarray, of: str) -> np.ndarray:
        """Write this chunk's output into y (held in `of`); return the mask to save (booleans)."""
        raise NotImplementedError

    def forward(self, xs):
        x, xf = xs[0]
        ctx = self.ctx
        C = self.node.channels
        x2 = codec.rows(x, xf, C)
        m = x2.shape[0]
        y = ctx.output(self.node)
        of = ctx.out_fmt(self.node)
        y2 = codec.rows(y, of, C)
        mask2 = None
        mf = ctx.fmt("activation_mask")
        if ctx.training:
            mask = ctx.save(self.node, "mask", "activation_mask", (x.shape[0], *self.node.in_shape))
            mask2 = mask.reshape(m, -1)
        for r0, r1 in row_chunks(m, temp_rows(C)):
            xc = x2[r0:r1] if xf in codec.FLOATS else codec.decode(x2[r0:r1], xf, C)
            keep = self._fwd_chunk(xc, y2[r0:r1], of)
            if mask2 is not None:
                codec.store_mask(keep, mask2[r0:r1], mf)
        self._count_forward(m * C)
        return y, of

    def backward(self):
        ctx, node = self.ctx, self.node
        if not ctx.needs_grad(node.inputs[0]):
            return
        dy, gf = ctx.grad_in(node.output)
        C = dy.shape[-1]
        dy2 = dy.reshape(-1, C)
        m = dy2.shape[0]
        mf = ctx.fmt("activation_mask")
        mask2 = ctx.ledger[f"{self.name}.mask"].reshape(m, -1)
        tgt, tf, accumulate = ctx.grad_out(node.inputs[0])
        t2 = tgt.reshape(m, C)
        un = ctx.scratch(node, "unpacked", m) if mf == "bool" else None
        step = min(un[0].shape[0], temp_rows(C)) if un is not None else temp_rows(C)
        for r0, r1 in row_chunks(m, step):
            if un is not None:
                buf, uf = un
                keep_s, kf = buf[: r1 - r0], uf
                codec.unpack_into(mask2[r0:r1], C, keep_s, mode="mask")
                if uf == "po2":
                    keep_s *= 64  # the po2 code of 1 is 64
            else:
                keep_s, kf = mask2[r0:r1], mf
            if not accumulate and codec.gate(dy2[r0:r1], keep_s, t2[r0:r1]):
                continue
            g = codec.decode(dy2[r0:r1], gf) * codec.decode(keep_s, kf)
            codec.store(t2[r0:r1], g, tf, accumulate)
        ctx.counter.gmul(self.name, "backward_dx", m * C)


class Sign(_Gate):
    """Its output is +1/-1: held in the binary_input format (1 bit each when bool; METHOD 4.2)."""

    def _fwd_chunk(self, x, y, of):
        codec.store_signs(codec.nonnegative(x), y, of)
        return codec.abs_at_most_one(x)

    def _count_forward(self, E):
        f = self.ctx.fwd
        self.count("forward", "compare", f, 2 * E)
        self.count("forward", "abs", f, E)


class ReLU(_Gate):
    def _fwd_chunk(self, x, y, of):
        v = x.astype(np.float32, copy=False)
        keep = v > 0
        codec.encode_into(y, np.where(keep, v, np.float32(0)), of)
        return keep

    def _count_forward(self, E):
        self.count("forward", "compare", self.ctx.fwd, E)
