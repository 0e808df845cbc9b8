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

A max-pool of a binary tensor (a sign's output) is binary: its output is held
in the binary_input format, and when that is packed bits (and the pool has
no padding) the max of a window is the OR of its bits and the mask is found
on the bits, with no float values at all.

Work goes in tiles: a chunk of whole samples when one padded sample fits the
elementwise chunk (trainer.base.temp_rows), else one sample's band of output
rows (forward) or input rows (backward), so the float32 temporaries stay
under the chunk whatever the image size (a 112 x 112 x 64 ImageNet map is
3.2 MB a sample). Masks are expanded into the `unpacked` scratch a chunk of
rows at a time.
"""

from __future__ import annotations

import numpy as np

from bnncost.trainer import codec
from bnncost.trainer.base import Op, row_chunks, temp_rows


def _first_multiple(lo: int, offset: int, s: int) -> int:
    """The smallest o >= 0 with o * s + offset >= lo."""
    return max(0, -(-(lo - offset) // s))


class _Window(Op):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.kh, self.kw = node.window  # rows x cols; non-square windows and strides are allowed
        self.sh, self.sw = node.strides
        self.taps = self.kh * self.kw
        self.H, self.W, self.C = node.in_shape
        self.Ho, self.Wo = node.out_shape[0], node.out_shape[1]
        self.pt, self.pb, self.pl, self.pr = node.padding
        self.Wp = max(self.W + self.pl + self.pr, self.sw * (self.Wo - 1) + self.kw)
        self.padded = any(node.padding) or self.Wp != self.W

    # ---------------------------------------------------------------- tiles

    def _out_tiles(self, B: int):
        """(b0, b1, i0, i1): samples b0..b1, output rows i0..i1, each tile's padded input under a chunk."""
        row = self.Wp * self.C
        span = (self.Ho - 1) * self.sh + self.kh  # padded input rows of a whole sample
        if temp_rows(row) >= span:  # a whole padded sample fits a chunk
            for b0, b1 in row_chunks(B, temp_rows(span * row)):
                yield b0, b1, 0, self.Ho
            return
        band = max(1, (temp_rows(row) - self.kh) // self.sh + 1)
        for b in range(B):
            for i0, i1 in row_chunks(self.Ho, band):
                yield b, b + 1, i0, i1

    def _in_tiles(self, B: int):
        """(b0, b1, h0, h1): samples b0..b1, input rows h0..h1, each under a chunk."""
        row = self.W * self.C
        per = temp_rows(self.H * row)
        if temp_rows(row) >= self.H:
            for b0, b1 in row_chunks(B, per):
                yield b0, b1, 0, self.H
            return
        for b in range(B):
            for h0, h1 in row_chunks(self.H, temp_rows(row)):
                yield b, b + 1, h0, h1

    def _padded_tile(self, x, xf, b0, b1, i0, i1, fill) -> np.ndarray:
        """Float32 padded input rows of output rows i0..i1: (nb, (i1-i0-1)*sh + kh, Wp, C)."""
        p0 = i0 * self.sh
        rows = (i1 - i0 - 1) * self.sh + self.kh
        h0, h1 = max(0, p0 - self.pt), min(self.H, p0 + rows - self.pt)
        if not self.padded and h1 - h0 == rows:
            return codec.decode(x[b0:b1, h0:h1], xf, self.C).astype(np.float32, copy=False)
        xp = np.full((b1 - b0, rows, self.Wp, self.C), fill, dtype=np.float32)
        if h1 > h0:
            xp[:, h0 + self.pt - p0:h1 + self.pt - p0, self.pl:self.pl + self.W] = codec.decode(x[b0:b1, h0:h1], xf,
                                                                                                 self.C)
        return xp

    def _tile_slices(self, n_out_rows: int):
        sh, sw = self.sh, self.sw
        for i in range(self.kh):
            for j in range(self.kw):
                yield (slice(None), slice(i, i + sh * (n_out_rows - 1) + 1, sh), slice(j, j + sw * (self.Wo - 1) + 1, sw))

    def _unpadded(self, tile: np.ndarray, i0: int) -> tuple[np.ndarray, int, int]:
        """The part of a padded tile (of output rows from i0) that lies on the input: (view, h0, h1)."""
        p0 = i0 * self.sh
        h0, h1 = max(0, p0 - self.pt), min(self.H, p0 + tile.shape[1] - self.pt)
        return tile[:, h0 + self.pt - p0:h1 + self.pt - p0, self.pl:self.pl + self.W], h0, h1

    def _gather(self, dyt: np.ndarray, b0: int, b1: int, h0: int, h1: int) -> np.ndarray:
        """Input rows h0..h1 (float32) <- the sum of dy of every window covering each position.

        `dyt(o0, o1)` gives float32 dy of output rows o0..o1 of samples b0..b1.
        """
        s, t = self.sh, self.sw  # row and column strides
        acc = np.zeros((b1 - b0, h1 - h0, self.W, self.C), np.float32)
        o_lo = _first_multiple(h0 + self.pt, self.kh - 1, s)  # the first window reaching row h0
        o_hi = min(self.Ho, (h1 - 1 + self.pt) // s + 1)
        if o_hi <= o_lo:
            return acc
        dy = dyt(o_lo, o_hi)
        for i in range(self.kh):
            a = max(o_lo, _first_multiple(h0 + self.pt, i, s))
            b = min(o_hi, (h1 - 1 + self.pt - i) // s + 1)
            if b <= a:
                continue
            r0 = a * s + i - self.pt - h0
            for j in range(self.kw):
                c = _first_multiple(self.pl, j, t)
                d = min(self.Wo, (self.W - 1 + self.pl - j) // t + 1)
                if d <= c:
                    continue
                w0 = c * t + j - self.pl
                acc[:, r0:r0 + s * (b - a - 1) + 1:s, w0:w0 + t * (d - c - 1) + 1:t] += dy[:, a - o_lo:b - o_lo, c:d]
        return acc


class MaxPool(_Window):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        tail = self.C % 8
        self.tail_byte = np.uint8(0xFF if tail == 0 else (0xFF << (8 - tail)) & 0xFF)

    def forward(self, xs):
        x, xf = xs[0]
        ctx = self.ctx
        B = x.shape[0]
        y = ctx.output(self.node)
        of = ctx.out_fmt(self.node)
        mf = ctx.fmt("pool_mask")
        mask = None
        if ctx.training:
            mask = ctx.save(self.node, "mask", "pool_mask", (B, *self.node.in_shape))
            mask[...] = 0  # windows OR their first maximum into it
        bits = xf == "bool" and of == "bool" and not self.padded
        for b0, b1, i0, i1 in self._out_tiles(B):
            if bits:
                self._forward_bits(x, y, mask, mf, b0, b1, i0, i1)
                continue
            xp = self._padded_tile(x, xf, b0, b1, i0, i1, -np.inf)
            out = None
            for sl in self._tile_slices(i1 - i0):
                out = xp[sl].copy() if out is None else np.maximum(out, xp[sl], out=out)
            codec.encode_into(y[b0:b1, i0:i1], out, of)
            if mask is not None:
                mp = np.zeros(xp.shape, bool)
                found = np.zeros(out.shape, bool)
                for sl in self._tile_slices(i1 - i0):
                    hit = (xp[sl] == out) & ~found
                    mp[sl] |= hit
                    found |= hit
                keep, h0, h1 = self._unpadded(mp, i0)
                self._or_mask(mask[b0:b1, h0:h1], keep, mf)
        self.count("forward", "compare", ctx.fwd, B * self.Ho * self.Wo * self.C * (self.taps - 1))
        return y, of

    def _forward_bits(self, x, y, mask, mf, b0, b1, i0, i1):
        """A max-pool of packed +1/-1 bits: the max is the OR of a window's bits; no padding."""
        p0, rows = i0 * self.sh, (i1 - i0 - 1) * self.sh + self.kh
        xb = x[b0:b1, p0:p0 + rows]
        out = None
        for sl in self._tile_slices(i1 - i0):
            out = xb[sl].copy() if out is None else np.bitwise_or(out, xb[sl], out=out)
        y[b0:b1, i0:i1] = out
        if mask is None:
            return
        mp = np.zeros(xb.shape, np.uint8)
        found = np.zeros(out.shape, np.uint8)
        for sl in self._tile_slices(i1 - i0):
            hit = np.bitwise_xor(xb[sl], out)
            np.invert(hit, out=hit)  # 1 where the element equals its window's max
            hit &= ~found
            mp[sl] |= hit
            found |= hit
        mp[..., -1] &= self.tail_byte  # bits past the last channel stay 0
        if mf == "bool":
            mask[b0:b1, p0:p0 + rows] |= mp
        else:
            self._or_mask(mask[b0:b1, p0:p0 + rows], codec.unpack_bits(mp.reshape(-1, mp.shape[-1]), self.C)
                          .reshape(*mp.shape[:-1], self.C), mf)

    @staticmethod
    def _or_mask(dst: np.ndarray, keep: np.ndarray, mf: str) -> None:
        """dst (stored in mf) |= keep (booleans): overlapping windows add their first maxima."""
        if mf == "bool":
            dst |= np.packbits(keep, axis=-1)
        else:
            np.maximum(dst, codec.encode(keep.astype(np.float32), mf), out=dst)

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
        for b0, b1, h0, h1 in self._in_tiles(B):
            acc = self._gather(lambda o0, o1: codec.decode(dy[b0:b1, o0:o1], gf), b0, b1, h0, h1).reshape(-1, C)
            m2 = mask[b0:b1, h0:h1].reshape(acc.shape[0], -1)
            t2 = tgt[b0:b1, h0:h1].reshape(acc.shape[0], C)
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
        counts = np.zeros((self.Ho, self.Wo), np.float32)  # input positions (not padding) in each window
        for i in range(self.kh):
            rows = np.arange(self.Ho) * self.sh + i - self.pt
            for j in range(self.kw):
                cols = np.arange(self.Wo) * self.sw + j - self.pl
                counts += ((rows >= 0) & (rows < self.H))[:, None] & ((cols >= 0) & (cols < self.W))[None, :]
        self.inv_count = (1.0 / counts)[None, :, :, None].astype(np.float32)  # (1, Ho, Wo, 1)

    def forward(self, xs):
        x, xf = xs[0]
        ctx = self.ctx
        B = x.shape[0]
        y = ctx.output(self.node)
        for b0, b1, i0, i1 in self._out_tiles(B):
            xp = self._padded_tile(x, xf, b0, b1, i0, i1, 0.0)
            out = np.zeros((b1 - b0, i1 - i0, self.Wo, self.C), np.float32)
            for sl in self._tile_slices(i1 - i0):
                out += xp[sl]
            out *= self.inv_count[:, i0:i1]
            codec.encode_into(y[b0:b1, i0:i1], out, ctx.fwd)
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
        for b0, b1, h0, h1 in self._in_tiles(B):
            g = self._gather(lambda o0, o1: codec.decode(dy[b0:b1, o0:o1], gf) * self.inv_count[:, o0:o1],
                             b0, b1, h0, h1)
            codec.store(tgt[b0:b1, h0:h1], g, tf, accumulate)
        O = B * self.Ho * self.Wo * self.C
        ctx.counter.gmul(self.name, "backward_dx", O)
        self.count("backward_dx", "add", ctx.counter.acc, O * self.taps)


class GlobalAvgPool(Op):
    def _tiles(self, B: int):
        """(b0, b1, h0, h1): whole samples when one fits a chunk, else bands of one sample's rows."""
        H, W, C = self.node.in_shape
        if temp_rows(W * C) >= H:
            for b0, b1 in row_chunks(B, temp_rows(H * W * C)):
                yield b0, b1, 0, H
            return
        for b in range(B):
            for h0, h1 in row_chunks(H, temp_rows(W * C)):
                yield b, b + 1, h0, h1

    def forward(self, xs):
        x, xf = xs[0]
        ctx = self.ctx
        B = x.shape[0]
        H, W, C = self.node.in_shape
        y = ctx.output(self.node)
        total = np.zeros((B, C), np.float32)
        for b0, b1, h0, h1 in self._tiles(B):
            xc = codec.decode(x[b0:b1, h0:h1], xf, C).astype(np.float32, copy=False)
            total[b0:b1] += xc.sum(axis=(1, 2))
        total *= np.float32(1.0 / (H * W))
        codec.encode_into(y, total, ctx.fwd)
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
        for b0, b1, h0, h1 in self._tiles(B):
            g = codec.decode(dy[b0:b1], gf) * np.float32(1.0 / (H * W))
            full = np.broadcast_to(g[:, None, None, :], (b1 - b0, h1 - h0, W, C))
            codec.store(tgt[b0:b1, h0:h1], full, tf, accumulate)
        ctx.counter.gmul(self.name, "backward_dx", B * C)
