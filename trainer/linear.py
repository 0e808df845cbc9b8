"""dense and conv2d, binary and full precision (METHOD 2.1), executed on stored formats.

Binary layer, not the first: Y = sign(X) . sign(W) computed as K - 2 x
popcount(XOR) on packed bits, in chunks of rows held in the `xnor` scratch,
against the filters' signs packed in `packed_weight`. The saved input is
sign(X) in the `binary_input` format; dX passes straight through the sign the
layer takes of its input (identity STE: the gate |x| <= 1 belongs to the
`sign` layer before it). First layer (input = the data): real X times sign(W),
no dX. Full-precision layer: ordinary real product; its saved input is X in
`real_input`, and it computes its forward from that saved copy, so forward
and backward see the same numbers.

Padding. A binary conv pads its (binary) input with -1, i.e. bit 0, so the
XNOR-popcount is exact at the borders and every padded position is a real -1
input counted in K; its dW operand pads with -1 too. A conv on real input (the
first layer, or full precision) pads with 0. Every strategy computes the same:
the forward of a binary layer always goes through packed bits, whatever format
its input is saved in.

Weights are (K, N) for dense and (k, k, Cin, N) for conv (K = k*k*Cin, patch
order (i, j, c)); bool (Bop) kernels are packed along N.
"""

from __future__ import annotations

import numpy as np

from trainer import codec
from trainer.base import Op, ParamSpec, row_chunks, temp_rows
from trainer.kernels import TILE_BYTES, Patches, matmul


def _word_dtype(nbytes: int):
    for size, dt in ((8, np.uint64), (4, np.uint32), (2, np.uint16)):
        if nbytes % size == 0:
            return dt
    return np.uint8


def fill_signs(dst: np.ndarray, packed: np.ndarray, n: int, fmt: str) -> None:
    """dst (..., n) in `fmt` <- +1/-1 of packed bits (..., ceil(n/8))."""
    if fmt == "po2":
        codec.unpack_into(packed, n, dst)
        dst *= 64  # the po2 code of +-1 is +-64
    else:
        codec.unpack_into(packed, n, dst)


class Linear(Op):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        s = ctx.strategy
        self.conv = node.kind == "conv2d"
        self.K, self.N, self.P = node.fan_in, node.units, node.positions
        self.binary, self.first = node.binary, node.first
        self.bits = s.optimizer == "bop" and node.binary
        self.w_name = f"{node.name}.weight"
        self.w_fmt = ctx.stored[self.w_name].fixed_format or s.format_of("latent_weight")
        self.in_role = "input" if node.first else ("binary_input" if node.binary else "real_input")
        self.needs_dx = ctx.needs_grad(node.inputs[0]) and not node.first
        self.patches = None
        if self.conv:
            k = node.spec.kernel
            self.k = k
            self.patches = Patches(node.in_shape, node.out_shape, k, node.spec.stride, node.padding)
        self.pad = -1.0 if (node.binary and not node.first) else 0.0

    # -------------------------------------------------------------- parameters

    def init_params(self, rng):
        shape = self.node.weight_shape
        if self.bits:
            w = rng.random(shape) < 0.5
            arr = codec.encode(w, "bool")
        else:
            limit = np.sqrt(6.0 / (self.K + self.N))
            arr = codec.encode(rng.uniform(-limit, limit, size=shape).astype(np.float32) + np.float32(0.0),
                               self.w_fmt)
        self.ctx.ledger.persist(self.w_name, self.name, "latent_weight", self.w_fmt, shape, arr)

    def params(self):
        s = self.ctx.strategy
        return [ParamSpec(self.w_name, f"{self.name}.weight_grad", self.name, self.w_fmt,
                          s.format_of("weight_grad"), self.node.weight_shape, binary_kernel=self.binary,
                          bits=self.bits, sign_grad=s.weight_grad == "sign")]

    def _w2(self) -> np.ndarray:
        """The kernel as a (K, N) matrix (bits: (K, ceil(N/8)))."""
        w = self.ctx.ledger[self.w_name]
        return w.reshape(self.K, -1)

    def _signs_into(self, dst: np.ndarray, fmt: str) -> None:
        """dst (K, N) in `fmt` <- sign(W) as +1/-1 (sign(0) = +1)."""
        w = self._w2()
        rows = temp_rows(self.N)
        for r0, r1 in row_chunks(self.K, rows):
            if self.bits:
                fill_signs(dst[r0:r1], w[r0:r1], self.N, fmt)
            elif codec.copysign_one(w[r0:r1], dst[r0:r1]):
                pass
            else:
                codec.encode_into(dst[r0:r1], np.where(w[r0:r1] >= 0, 1.0, -1.0).astype(np.float32), fmt)

    def _pack_filters(self, pw: np.ndarray) -> None:
        """pw (N, *patch) bits <- sign(W) per filter, packed along the patch's last axis."""
        w = self._w2()
        N, K = self.N, self.K
        c_in = self.node.channels if self.conv else K
        lead = (self.k, self.k, c_in) if self.conv else (K,)
        step = 8 * max(1, (1 << 16) // (8 * K))
        for j0, j1 in row_chunks(N, step):
            if self.bits:
                cols = np.unpackbits(w[:, j0 // 8:-(-j1 // 8)], axis=1)[:, : j1 - j0].astype(bool)
            else:
                cols = codec.nonnegative(w[:, j0:j1])
            pw[j0:j1] = np.packbits(np.ascontiguousarray(cols.T).reshape(j1 - j0, *lead), axis=-1)

    # -------------------------------------------------------------- forward

    def forward(self, xs):
        x, xf = xs[0]
        ctx, node = self.ctx, self.node
        B = x.shape[0]
        R = B * self.P
        y = ctx.output(node)
        y2 = y.reshape(R, self.N)
        if self.binary and not self.first:
            self._forward_xnor(x, xf, y2, R)
        else:
            self._forward_real(x, xf, y2, R)
        return y, ctx.fwd

    def _save_binary_input(self, x: np.ndarray) -> np.ndarray | None:
        if not self.ctx.training:
            return None
        ctx = self.ctx
        saved = ctx.save(self.node, "input", "binary_input", x.shape)
        fmt = ctx.fmt("binary_input")
        x2 = x.reshape(-1, x.shape[-1])
        s2 = saved.reshape(x2.shape[0], -1)
        for r0, r1 in row_chunks(x2.shape[0], temp_rows(x2.shape[1])):
            if fmt == "bool":
                codec.pack_into(codec.nonnegative(x2[r0:r1]), s2[r0:r1])
            else:
                codec.encode_into(s2[r0:r1], np.where(codec.nonnegative(x2[r0:r1]), 1.0, -1.0).astype(np.float32), fmt)
        return saved

    def _packed_rows(self, x, saved, r0, r1) -> np.ndarray:
        """Packed sign bits of the input patches of rows r0..r1, as (r, bytes per patch)."""
        packed_saved = saved is not None and saved.dtype == np.uint8 and self.ctx.fmt("binary_input") == "bool"
        if not self.conv:
            if packed_saved:
                return saved[r0:r1]
            return np.packbits(codec.nonnegative(x[r0:r1]), axis=-1)
        B = x.shape[0]
        kk = self.k * self.k
        cb = -(-self.node.channels // 8)
        pat = np.empty((r1 - r0, kk, cb), np.uint8)
        for a, b in self.patches.blocks(r0, r1):
            idx, inv = self.patches.rows(a, b)
            dst = pat[a - r0:b - r0]
            if packed_saved:
                np.take(saved.reshape(B * self.patches.hw, -1), idx, axis=0, out=dst)
                if inv is not None:
                    dst[inv] = 0  # bit 0 = -1: binary padding
            else:
                bits = codec.nonnegative(np.take(x.reshape(B * self.patches.hw, -1), idx, axis=0))
                if inv is not None:
                    bits[inv] = False
                dst[...] = np.packbits(bits, axis=-1)
        return pat.reshape(r1 - r0, -1)

    def _forward_xnor(self, x, xf, y2, R):
        ctx, node = self.ctx, self.node
        saved = self._save_binary_input(x)
        pw, _ = ctx.scratch(node, "packed_weight")
        self._pack_filters(pw)
        xn, _ = ctx.scratch(node, "xnor", R)
        per_filter = int(np.prod(pw.shape[1:]))
        word = _word_dtype(per_filter)
        pwv = pw.reshape(self.N, per_filter).view(word)
        words64 = -(-self.K // 64)
        for r0, r1 in row_chunks(R, xn.shape[0]):
            r = r1 - r0
            pat = np.ascontiguousarray(self._packed_rows(x, saved, r0, r1)).view(word)
            dst = xn[:r].reshape(r, self.N, per_filter).view(word)
            np.bitwise_xor(pat[:, None, :], pwv[None, :, :], out=dst)
            codec.popcount_inplace(dst)
            d = dst.sum(axis=-1, dtype=np.int32)
            d *= -2
            d += self.K
            codec.encode_into(y2[r0:r1], d, ctx.fwd)
            self.count("forward", "xnor_popcount", "bool", r * self.N * words64)
            self.count("forward", "bit_mac", "bool", r * self.N * self.K)

    def _forward_real(self, x, xf, y2, R):
        ctx, node = self.ctx, self.node
        in_fmt = ctx.fmt(self.in_role)
        if self.first or not ctx.training:
            src, sf = x, xf
        else:
            src = ctx.save(node, "input", "real_input", x.shape)
            sf = in_fmt
            x2, s2 = x.reshape(-1, x.shape[-1]), src.reshape(-1, x.shape[-1])
            for r0, r1 in row_chunks(x2.shape[0], temp_rows(x2.shape[1])):
                codec.encode_into(s2[r0:r1], codec.decode(x2[r0:r1], xf), sf)
        if self.binary:
            wm, wf = ctx.scratch(node, "sign_weight") or (codec.empty(in_fmt, (self.K, self.N)), in_fmt)
            self._signs_into(wm, wf)
        else:
            wm, wf = self._w2(), self.w_fmt
        if not self.conv:
            matmul(src.reshape(R, self.K), sf, wm, wf, y2, ctx.fwd)
        else:
            low, lf = ctx.scratch(node, "lowered_input", R)
            for r0, r1 in row_chunks(R, low.shape[0]):
                self._lower(src, sf, low[: r1 - r0], lf, r0, r1, self.pad)
                matmul(low[: r1 - r0], lf, wm, wf, y2[r0:r1], ctx.fwd)
        kind = "add" if self.binary else "mac"
        self.count("forward", kind, ctx.fmt("input" if self.first else "real_input"), R * self.N * self.K)

    def _lower(self, src, sf, dst, df, r0, r1, pad):
        """dst (r, K) in df <- the input patches of rows r0..r1 (real values; padding = pad)."""
        B = src.shape[0]
        flat = src.reshape(B * self.patches.hw, -1)
        d3 = dst.reshape(r1 - r0, self.k * self.k, -1)
        for a, b in self.patches.blocks(r0, r1):
            idx, inv = self.patches.rows(a, b)
            d = d3[a - r0:b - r0]
            if flat.dtype == dst.dtype and sf == df:
                np.take(flat, idx, axis=0, out=d)
            else:
                codec.encode_into(d, codec.decode(np.take(flat, idx, axis=0), sf), df)
            if inv is not None:
                d[inv] = pad if df in codec.FLOATS else codec.encode(np.array([pad], np.float32), df)[0]

    # -------------------------------------------------------------- backward

    def backward(self):
        ctx, node = self.ctx, self.node
        dy, gf = ctx.grad_in(node.output)
        B = dy.shape[0]
        R = B * self.P
        dy2 = dy.reshape(R, self.N)
        self._backward_dw(dy2, gf, R)
        if self.needs_dx:
            self._backward_dx(dy2, gf, R)

    def _operand_rows(self, dst, df, r0, r1, cols: tuple[int, int] | None = None):
        """dst (r, K) in df <- the saved input of rows r0..r1 as real values (lowered for a conv).

        A dense layer may ask for the columns k0..k1 only (dst is then (r, k1 - k0)).
        """
        ctx = self.ctx
        if self.first:
            saved, sf = ctx.ledger["data"], ctx.fmt("input")
        else:
            saved, sf = ctx.ledger[f"{self.name}.input"], ctx.fmt(self.in_role)
        B = saved.shape[0]
        if not self.conv:
            s2 = saved.reshape(B, -1)
            k0, k1 = cols or (0, self.K)
            if sf == "bool":
                b0, b1 = k0 // 8, -(-k1 // 8)  # whole bytes around the columns
                if k0 % 8 == 0 and (k1 % 8 == 0 or k1 == self.K):
                    fill_signs(dst, s2[r0:r1, b0:b1], k1 - k0, df)
                else:
                    full = codec.empty(df, (r1 - r0, (b1 - b0) * 8))
                    fill_signs(full, s2[r0:r1, b0:b1], (b1 - b0) * 8, df)
                    dst[...] = full[:, k0 - 8 * b0:k1 - 8 * b0]
            elif sf == df:
                dst[...] = s2[r0:r1, k0:k1]
            else:
                codec.encode_into(dst, codec.decode(s2[r0:r1, k0:k1], sf), df)
            return
        if sf == "bool":
            d3 = dst.reshape(r1 - r0, self.k * self.k, -1)
            for a, b in self.patches.blocks(r0, r1):
                idx, inv = self.patches.rows(a, b)
                pat = np.take(saved.reshape(B * self.patches.hw, -1), idx, axis=0)
                if inv is not None:
                    pat[inv] = 0
                fill_signs(d3[a - r0:b - r0], pat, self.node.channels, df)
        else:
            self._lower(saved, sf, dst, df, r0, r1, self.pad)

    def _backward_dw(self, dy2, gf, R):
        ctx, node = self.ctx, self.node
        s = ctx.strategy
        wg_fmt = s.format_of("weight_grad")
        wg = ctx.param_grad(node, "weight_grad", "weight_grad", node.weight_shape)
        sign = s.weight_grad == "sign"
        acc_fmt = ctx.counter.acc
        if wg_fmt == "bool":
            got = ctx.scratch(node, "dw_accum")
            acc, af = got if got is not None else (codec.empty(ctx.g, (self.K, self.N)), ctx.g)
        else:
            acc, af = wg.reshape(self.K, self.N), wg_fmt
        op, of = ctx.scratch(node, "dw_operand", R)
        held = op.shape[0]
        if af == "float32":  # accumulate in place, chunk after chunk
            for r0, r1 in row_chunks(R, held):
                r = r1 - r0
                self._operand_rows(op[:r], of, r0, r1)
                matmul(op[:r].T, of, dy2[r0:r1], gf, acc, af, accumulate=r0 > 0)
        elif held >= R:  # the whole batch in one chunk
            self._operand_rows(op[:R], of, 0, R)
            matmul(op[:R].T, of, dy2, gf, acc, af)
        else:
            # dW block by block of its rows, each summed over every chunk of the batch in a float32
            # tile and stored once (the operand chunk is refilled per block: expanding it is cheap,
            # accumulating a narrow format again and again is not)
            kb = max(1, min(self.K, TILE_BYTES // (16 * self.N)))
            if gf != "float32" and R * self.N * 4 <= TILE_BYTES // 4:  # dY once in float32, not once per block
                dy2, gf = codec.decode(dy2, gf), "float32"
            for k0 in range(0, self.K, kb):
                k1 = min(self.K, k0 + kb)
                tile = np.zeros((k1 - k0, self.N), np.float32)
                for r0, r1 in row_chunks(R, held):
                    r = r1 - r0
                    if self.conv:
                        self._operand_rows(op[:r], of, r0, r1)
                    else:  # a dense operand row is the saved row itself: expand only these columns
                        self._operand_rows(op[:r, k0:k1], of, r0, r1, (k0, k1))
                    matmul(op[:r, k0:k1].T, of, dy2[r0:r1], gf, tile, "float32", accumulate=True)
                codec.encode_into(acc[k0:k1], tile, af)
        m = R * self.N * self.K
        if self.binary and not self.first:
            self.count("backward_dw", "add", acc_fmt, m)
        else:
            ctx.counter.gmac(self.name, "backward_dw", m)
        if sign:  # keep dW as its sign
            w2 = wg.reshape(self.K, -1)
            for r0, r1 in row_chunks(self.K, temp_rows(self.N)):
                vals = codec.decode(acc[r0:r1], af)
                if wg_fmt == "bool":
                    codec.pack_into(vals >= 0, w2[r0:r1])
                else:
                    codec.encode_into(w2[r0:r1], np.where(vals >= 0, 1.0, -1.0).astype(np.float32), wg_fmt)
            self.count("backward_dw", "compare", acc_fmt, self.K * self.N)

    def _backward_dx(self, dy2, gf, R):
        ctx, node = self.ctx, self.node
        tgt, tf, accumulate = ctx.grad_out(node.inputs[0], zero=self.conv)
        if self.binary:
            got = ctx.scratch(node, "weight_signs")
            ws, wf = got if got is not None else (codec.empty(ctx.g, (self.K, self.N)), ctx.g)
            self._signs_into(ws, wf)
        else:
            ws, wf = self._w2(), self.w_fmt
        B = tgt.shape[0]
        m = R * self.N * self.K
        if not self.conv:
            matmul(dy2, gf, ws.T, wf, tgt.reshape(B, self.K), tf, accumulate=accumulate)
        else:
            col, cf = ctx.scratch(node, "col_grad", R)
            flat = tgt.reshape(B * self.patches.hw, -1)
            kk = self.k * self.k
            for r0, r1 in row_chunks(R, col.shape[0]):
                r = r1 - r0
                matmul(dy2[r0:r1], gf, ws.T, wf, col[:r], cf)
                c3 = col[:r].reshape(r, kk, -1)
                for a, b in self.patches.blocks(r0, r1):
                    idx, inv = self.patches.rows(a, b)
                    for q in range(kk):
                        sel = slice(None) if inv is None else ~inv[:, q]
                        ids = idx[sel, q]
                        vals = c3[a - r0:b - r0][sel, q]
                        if tf == cf == "float32":
                            flat[ids] += vals
                        else:
                            flat[ids] = codec.encode(codec.decode(flat[ids], tf) + codec.decode(vals, cf), tf)
            self.count("backward_dx", "add", ctx.counter.acc, R * self.K)
        if self.binary:
            self.count("backward_dx", "add", ctx.counter.acc, m)
        else:
            ctx.counter.gmac(self.name, "backward_dx", m)
