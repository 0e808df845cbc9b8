"""sign (with the straight-through estimator), relu, dropout and prelu (METHOD 2.1).

sign: y = +1 where x >= 0, else -1 (sign(0) = +1, the same convention as the
bits of a packed tensor); it saves the STE mask |x| <= 1 and its backward
passes dy where the mask holds. relu: y = max(0, x), saves x > 0. Masks are
held in the `activation_mask` format (1 bit each when bool) and expanded a
chunk of rows at a time into the `unpacked` scratch for the backward.
dropout (training): keeps each value where a uniform draw in [0, 1) is >= rate
and scales it by 1/(1 - rate), saves the keep mask in the `dropout_mask`
format; its backward gates dy by the mask and scales it alike. The draws come
from a generator seeded with (network seed, step number), so a run, and a run
resumed from a checkpoint, repeat the same masks. At evaluation it passes x on.
prelu: y = x where x > 0, else a_c x, with one slope a_c per channel (the
last axis; one for all channels when `shared`) held in the `bn_param` format and initialised to 0.25 (PyTorch's
nn.PReLU); it saves x in the `real_input` format (layers.storage) and its
backward computes da_c = sum of dy x over x <= 0 and dx = dy (x > 0) or a_c dy.
"""

from __future__ import annotations

import numpy as np

from bnncost.trainer import codec
from bnncost.trainer.base import Op, ParamSpec, row_chunks, temp_rows

PRELU_INIT = 0.25  # torch.nn.PReLU's default slope (Bi-Real Net and ReActNet train from it)


class _Gate(Op):
    """An elementwise layer whose backward multiplies dy by a saved 0/1 mask (and a constant factor)."""

    mask_role = "activation_mask"
    grad_factor: float | None = None  # dropout's 1/(1 - rate): dx = dy x mask x factor

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
        mf = ctx.fmt(self.mask_role)
        if ctx.training:
            mask = ctx.save(self.node, "mask", self.mask_role, (x.shape[0], *self.node.in_shape))
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
        mf = ctx.fmt(self.mask_role)
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
            factor = self.grad_factor
            if factor is None and not accumulate and codec.gate(dy2[r0:r1], keep_s, t2[r0:r1]):
                continue
            g = codec.decode(dy2[r0:r1], gf) * codec.decode(keep_s, kf)
            if factor is not None:
                g *= np.float32(factor)
            codec.store(t2[r0:r1], g, tf, accumulate)
        ctx.counter.gmul(self.name, "backward_dx", m * C * (1 if self.grad_factor is None else 2))


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


class Dropout(_Gate):
    """Inverted dropout: its saved mask is the keep mask, in the `dropout_mask` format."""

    mask_role = "dropout_mask"

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.rate = node.spec.rate
        self.grad_factor = 1.0 / (1.0 - self.rate)

    def _fwd_chunk(self, x, y, of):
        v = x.astype(np.float32, copy=False)
        if not self.ctx.training:
            codec.encode_into(y, v, of)
            return None
        keep = self.ctx.rng.random(v.shape, dtype=np.float32) >= np.float32(self.rate)
        codec.encode_into(y, np.where(keep, v * np.float32(self.grad_factor), np.float32(0)), of)
        return keep

    def _count_forward(self, E):
        self.count("forward", "compare", self.ctx.fwd, E)
        self.count("forward", "mul", self.ctx.fwd, E)


class PReLU(Op):
    """A per-channel leaky slope learned like batchnorm's beta (Adam on the full gradient)."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.C = node.channels
        self.n = node.parameters()  # C slopes, or 1 shared (broadcast over the channels)
        self.bn = ctx.fmt("bn_param")

    def init_params(self, rng):
        slopes = np.full(self.n, PRELU_INIT, np.float32)
        self.ctx.ledger.persist(f"{self.name}.params", self.name, "bn_param", self.bn, (self.n,),
                                codec.encode(slopes, self.bn))

    def params(self):
        return [ParamSpec(f"{self.name}.params", f"{self.name}.param_grad", self.name, self.bn, self.bn, (self.n,))]

    def _slopes(self) -> np.ndarray:
        return codec.decode_copy(self.ctx.ledger[f"{self.name}.params"], self.bn)

    def forward(self, xs):
        x, xf = xs[0]
        ctx, C = self.ctx, self.C
        x2 = codec.rows(x, xf, C)
        m = x2.shape[0]
        y = ctx.output(self.node)
        of = ctx.out_fmt(self.node)
        y2 = y.reshape(m, C)
        a = self._slopes()
        saved2, rf = None, ctx.fmt("real_input")
        if ctx.training:
            saved2 = ctx.save(self.node, "input", "real_input", (x.shape[0], *self.node.in_shape)).reshape(m, C)
        for r0, r1 in row_chunks(m, temp_rows(C)):
            xc = codec.decode(x2[r0:r1], xf, C)
            if saved2 is not None:
                codec.encode_into(saved2[r0:r1], xc, rf)
            codec.encode_into(y2[r0:r1], np.where(xc > 0, xc, xc * a), of)
        self.count("forward", "compare", ctx.fwd, m * C)
        self.count("forward", "mul", ctx.fwd, m * C)
        return y, of

    def backward(self):
        ctx, node, C = self.ctx, self.node, self.C
        dy, gf = ctx.grad_in(node.output)
        dy2 = dy.reshape(-1, C)
        m = dy2.shape[0]
        rf = ctx.fmt("real_input")
        x2 = ctx.ledger[f"{self.name}.input"].reshape(m, C)
        a = self._slopes()
        needs_dx = ctx.needs_grad(node.inputs[0])
        if needs_dx:
            tgt, tf, accumulate = ctx.grad_out(node.inputs[0])
            t2 = tgt.reshape(m, C)
        da = np.zeros(C, np.float64)
        for r0, r1 in row_chunks(m, temp_rows(C)):
            g = codec.decode(dy2[r0:r1], gf)
            xc = codec.decode(x2[r0:r1], rf)
            pos = xc > 0
            da += np.where(pos, np.float32(0), g * xc).sum(axis=0)
            if needs_dx:
                codec.store(t2[r0:r1], np.where(pos, g, g * a), tf, accumulate)
        if self.n == 1:
            da = da.sum(keepdims=True)
        pg = ctx.param_grad(node, "param_grad", "bn_param", (self.n,))
        codec.encode_into(pg, da.astype(np.float32), self.bn)
        E, acc = m * C, ctx.counter.acc
        self.count("backward_dw", "compare", ctx.fwd, E)
        ctx.counter.gmul(self.name, "backward_dw", E)
        self.count("backward_dw", "add", acc, E)
        if needs_dx:
            ctx.counter.gmul(self.name, "backward_dx", E)
