"""maxpool, avgpool and global_avgpool (METHOD 2.1), on (B, H, W, C) activations.

maxpool saves a mask over its input, 1 where an input element is the first
maximum (in window scan order) of a window; its backward scatters each
window's dy onto the window (dy summed over the windows that contain each
input) and multiplies by the mask. Windows and strides may be non-square
(kh x kw, sh x sw). For non-overlapping windows (stride >= size on each
axis, as in every zoo model but the ResNet stems) this is exactly the
max-pool gradient; for overlapping windows a 1-bit mask cannot say which of the windows
an element won, so an element that is the max of one window also receives the
dy of an overlapping window whose max it is not (documented approximation).
'same' padding pads with -inf (max) or is left out of the count (avg).
Work goes a chunk of samples at a time; masks are expanded into the
`unpacked` scratch a chunk of rows at a time.
"""

from __future__ import annotations

import numpy as np

from bnncost.trainer import codec
from bnncost.trainer.base import Op, row_chunks, temp_rows


class _Window(Op):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.kh, self.kw = node.window
        self.sh, self.sw = node.strides
        self.taps = self.kh * self.kw
        self.H, self.W, self.C = node.in_shape
        self.Ho, self.Wo = node.out_shape[0], node.out_shape[1]
        self.pt, self.pb, self.pl, self.pr = node.padding
        self.Hp = max(self.H + self.pt + self.pb, self.sh * (self.Ho - 1) + self.kh)
        self.Wp = max(self.W + self.pl + self.pr, self.sw * (self.Wo - 1) + self.kw)
        self.padded = (self.Hp, self.Wp) != (self.H, self.W) or self.pt or self.pl

    def _slices(self):
        sh, sw = self.sh, self.sw
        for i in range(self.kh):
            for j in range(self.kw):
                yield (slice(None), slice(i, i + sh * (self.Ho - 1) + 1, sh), slice(j, j + sw * (self.Wo - 1) + 1, sw))

    def _pad(self, xc: np.ndarray, fill: float) -> np.ndarray:
        if not self.padded:
            return xc
        xp = np.full((xc.shape[0], self.Hp, self.Wp, self.C), fill, dtype=np.float32)
        xp[:, self.pt:self.pt + self.H, self.pl:self.pl + self.W] = xc
        return xp

    def _unpad(self, xp: np.ndarray) -> np.ndarray:
        return xp[:, self.pt:self.pt + self.H, self.pl:self.pl + self.W] if self.padded else xp

    def _samples_per_chunk(self) -> int:
        return temp_rows(self.Hp * self.Wp * self.C)

    def _scatter(self, dyc: np.ndarray) -> np.ndarray:
        """Sum each window's dy onto the (padded) input positions it covers; unpadded result."""
        acc = np.zeros((dyc.shape[0], self.Hp, self.Wp, self.C), np.float32)
        for sl in self._slices():
            acc[sl] += dyc
        return self._unpad(acc)


class MaxPool(_Window):
    def forward(self, xs):
        x, xf = xs[0]
        ctx = self.ctx
        B = x.shape[0]
        y = ctx.output(self.node)
        mf = ctx.fmt("pool_mask")
        mask = ctx.save(self.node, "mask", "pool_mask", x.shape) if ctx.training else None
        for b0, b1 in row_chunks(B, self._samples_per_chunk()):
            xp = self._pad(codec.decode(x[b0:b1], xf).astype(np.float32, copy=False), -np.inf)
            out = None
            for sl in self._slices():
                out = xp[sl].copy() if out is None else np.maximum(out, xp[sl], out=out)
            codec.encode_into(y[b0:b1], out, ctx.fwd)
            if mask is not None:
                mp = np.zeros(xp.shape, bool)
                found = np.zeros(out.shape, bool)
                for sl in self._slices():
                    hit = (xp[sl] == out) & ~found
                    mp[sl] |= hit
                    found |= hit
                keep = self._unpad(mp)
                codec.store_mask(keep, mask[b0:b1], mf)
        self.count("forward", "compare", ctx.fwd, B * self.Ho * self.Wo * self.C * (self.taps - 1))
        return y, ctx.fwd

    def backward(self):
        ctx, node = self.ctx, self.node
        if not ctx.needs_grad(node.inputs[0]):
            return
        dy, gf = ctx.grad_in(node.output)
        B, C = dy.shape[0], self.C
        mf = ctx.fmt("pool_mask")
        mask = ctx.ledger[f"{self.name}.mask"]
        tgt, tf, accumulate = ctx.grad_out(node.inputs[0])
        hw = self.H * self.W
        un = ctx.scratch(node, "unpacked", B * hw) if mf == "bool" else None
        for b0, b1 in row_chunks(B, self._samples_per_chunk()):
            acc = self._scatter(codec.decode(dy[b0:b1], gf)).reshape(-1, C)
            m2 = mask[b0:b1].reshape(acc.shape[0], -1)
            t2 = tgt[b0:b1].reshape(acc.shape[0], C)
            step = un[0].shape[0] if un is not None else acc.shape[0]
            for r0, r1 in row_chunks(acc.shape[0], step):
                if un is not None:
                    buf, uf = un
                    codec.unpack_into(m2[r0:r1], C, buf[: r1 - r0], mode="mask")
                    if uf == "po2":
                        buf[: r1 - r0] *= 64
                    keep = codec.decode(buf[: r1 - r0], uf)
                else:
                    keep = codec.decode(m2[r0:r1], mf)
                g = acc[r0:r1] * keep
                codec.store(t2[r0:r1], g, tf, accumulate)
        O = B * self.Ho * self.Wo * C
        self.count("backward_dx", "add", ctx.counter.acc, O * self.taps)
        ctx.counter.gmul(self.name, "backward_dx", B * hw * C)


class AvgPool(_Window):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        ones = self._pad(np.ones((1, self.H, self.W, 1), np.float32), 0.0)
        count = sum(ones[sl] for sl in self._slices())
        self.inv_count = (1.0 / count).astype(np.float32)  # (1, Ho, Wo, 1): padding left out

    def _samples_per_chunk(self) -> int:
        return temp_rows(self.Hp * self.Wp * self.C)

    def forward(self, xs):
        x, xf = xs[0]
        ctx = self.ctx
        B = x.shape[0]
        y = ctx.output(self.node)
        for b0, b1 in row_chunks(B, self._samples_per_chunk()):
            xp = self._pad(codec.decode(x[b0:b1], xf).astype(np.float32, copy=False), 0.0)
            out = np.zeros((b1 - b0, self.Ho, self.Wo, self.C), np.float32)
            for sl in self._slices():
                out += xp[sl]
            out *= self.inv_count
            codec.encode_into(y[b0:b1], out, ctx.fwd)
        O = B * self.Ho * self.Wo * self.C
        self.count("forward", "add", ctx.fwd, O * self.taps)
        self.count("forward", "mul", ctx.fwd, O)
        return y, ctx.fwd

    def backward(self):
        ctx, node = self.ctx, self.node
        if not ctx.needs_grad(node.inputs[0]):
            return
        dy, gf = ctx.grad_in(node.output)
        B = dy.shape[0]
        tgt, tf, accumulate = ctx.grad_out(node.inputs[0])
        for b0, b1 in row_chunks(B, self._samples_per_chunk()):
            g = self._scatter(codec.decode(dy[b0:b1], gf) * self.inv_count)
            codec.store(tgt[b0:b1], g, tf, accumulate)
        O = B * self.Ho * self.Wo * self.C
        ctx.counter.gmul(self.name, "backward_dx", O)
        self.count("backward_dx", "add", ctx.counter.acc, O * self.taps)


class GlobalAvgPool(Op):
    def forward(self, xs):
        x, xf = xs[0]
        ctx = self.ctx
        B = x.shape[0]
        H, W, C = self.node.in_shape
        y = ctx.output(self.node)
        for b0, b1 in row_chunks(B, temp_rows(H * W * C)):
            xc = codec.decode(x[b0:b1], xf).astype(np.float32, copy=False)
            codec.encode_into(y[b0:b1], xc.sum(axis=(1, 2)) * np.float32(1.0 / (H * W)), ctx.fwd)
        self.count("forward", "add", ctx.fwd, B * H * W * C)
        self.count("forward", "mul", ctx.fwd, B * C)
        return y, ctx.fwd

    def backward(self):
        ctx, node = self.ctx, self.node
        if not ctx.needs_grad(node.inputs[0]):
            return
        dy, gf = ctx.grad_in(node.output)
        B = dy.shape[0]
        H, W, C = node.in_shape
        tgt, tf, accumulate = ctx.grad_out(node.inputs[0])
        for b0, b1 in row_chunks(B, temp_rows(H * W * C)):
            g = codec.decode(dy[b0:b1], gf) * np.float32(1.0 / (H * W))
            full = np.broadcast_to(g[:, None, None, :], (b1 - b0, H, W, C))
            codec.store(tgt[b0:b1], full, tf, accumulate)
        ctx.counter.gmul(self.name, "backward_dx", B * C)
