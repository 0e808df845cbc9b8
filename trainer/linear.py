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

Weights are (K, N) for dense and (kh, kw, Cin, N) for conv (K = kh*kw*Cin, patch
order (i, j, c)); bool (Bop) kernels are packed along N.

Bias (full precision, `bias: true`): `<layer>.bias` (N values, latent_weight
format, zeros at first as Keras does) is added to the output rows in float32
and stored once; db is dY summed over the output rows (R x N adds), kept in
`<layer>.bias_grad` in the weight_grad format (its sign under weight_grad
`sign`, as dW), updated by the layer's optimizer like its kernel.

Grouped conv (G groups; depthwise when G = Cin): the kernel is (kh, kw, Cin/G,
N), a (K, N) matrix with K = kh*kw*Cin/G whose columns g*N/G..(g+1)*N/G are
group g's filters, reading input channels g*Cin/G..(g+1)*Cin/G. Every phase
runs the ungrouped algorithm once per group on those column and channel
slices (numpy views), reusing the same scratch buffers (layers.scratch sizes
them for one group); the group's channels of a packed tensor are cut out of
its bits when they do not start and end on a byte.

Weight rows in blocks. The scratch of weight size, `sign_weight` (forward of
the first layer), `weight_signs` (dX) and `dw_accum` (dW kept as its sign),
holds as many of the K weight rows (N values each) as the workspace budget
allows (layers.scratch), and the operator works through K block by block:
Y = sum over blocks of X[:, block] . sign(W[block]) (added in float32);
dX[:, block] = dY . sign(W[block])^T, a conv folding each block of its column
gradient back onto the input; dW[block] summed over every chunk of the batch,
its sign packed straight into weight_grad. When K fits in one block the signs
are expanded once. A chunk buffer of K-value rows (`dw_operand`, `col_grad`)
that serves a block of k columns holds as many rows of those k columns as its
bytes allow (`_as_rows`): the same buffer and bytes, fewer, longer passes.
"""

from __future__ import annotations

import numpy as np

from bnncost.trainer import codec
from bnncost.trainer.base import Op, ParamSpec, row_chunks, temp_rows
from bnncost.trainer.kernels import TILE_BYTES, Patches, matmul


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
        self.G, self.Ng, self.Cg = node.groups, node.group_units, node.group_channels
        self.binary, self.first = node.binary, node.first
        self.bits = s.optimizer == "bop" and node.binary
        self.w_name = f"{node.name}.weight"
        self.w_fmt = ctx.stored[self.w_name].fixed_format or s.format_of("latent_weight")
        self.in_role = "input" if node.first else ("binary_input" if node.binary else "real_input")
        self.needs_dx = ctx.needs_grad(node.inputs[0]) and not node.first
        self.patches = None
        if self.conv:
            self.window = node.window
            self.patches = Patches(node.in_shape, node.out_shape, node.window, node.strides, node.padding)
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
        if self.node.bias:
            self.ctx.ledger.persist(f"{self.name}.bias", self.name, "latent_weight", self.w_fmt, (self.N,),
                                    codec.empty(self.w_fmt, (self.N,), zero=True))

    def params(self):
        s = self.ctx.strategy
        out = [ParamSpec(self.w_name, f"{self.name}.weight_grad", self.name, self.w_fmt,
                         s.format_of("weight_grad"), self.node.weight_shape, binary_kernel=self.binary,
                         bits=self.bits, sign_grad=s.weight_grad == "sign")]
        if self.node.bias:
            out.append(ParamSpec(f"{self.name}.bias", f"{self.name}.bias_grad", self.name, self.w_fmt,
                                 s.format_of("weight_grad"), (self.N,), sign_grad=s.weight_grad == "sign",
                                 state_prefix="bias_"))
        return out

    def _w2(self) -> np.ndarray:
        """The kernel as a (K, N) matrix (bits: (K, ceil(N/8)))."""
        w = self.ctx.ledger[self.w_name]
        return w.reshape(self.K, -1)

    def _cols(self, g: int) -> slice:
        """Group g's filters: its columns of the (K, N) kernel, of the output and of dY."""
        return slice(g * self.Ng, (g + 1) * self.Ng)

    def _channels(self, g: int) -> slice:
        """Group g's input channels."""
        return slice(g * self.Cg, (g + 1) * self.Cg)

    def _signs_into(self, dst: np.ndarray, fmt: str, k0: int = 0, k1: int | None = None, g: int = 0) -> None:
        """dst (k1 - k0, N/G) in `fmt` <- sign(W) of the weight rows k0..k1 of group g as +1/-1 (sign(0) = +1)."""
        k1 = self.K if k1 is None else k1
        w = self._w2()
        rows = temp_rows(self.N)
        cols = self._cols(g)
        for a, b in row_chunks(k1 - k0, rows):
            src, out = w[k0 + a:k0 + b], dst[a:b]
            if self.bits and self.G == 1:
                fill_signs(out, src, self.N, fmt)
                continue
            if self.bits:  # the group's columns of the rows' bits
                full = codec.empty(fmt, (b - a, self.N))
                fill_signs(full, src, self.N, fmt)
                out[...] = full[:, cols]
                continue
            if self.G > 1:
                src = src[:, cols]
            if codec.copysign_one(src, out):
                pass
            else:
                codec.store_signs(codec.nonnegative(src), out, fmt)

    def _weight_rows(self, short: str) -> tuple[np.ndarray, str, list[tuple[int, int]]]:
        """A weight-row scratch (sign_weight, weight_signs, dw_accum) and the blocks of K rows it takes.

        It holds rows_held(K, row bytes, budget) rows of N values (layers.scratch);
        the operator works through the K weight rows block by block.
        """
        got = self.ctx.scratch(self.node, short)
        if got is None:
            raise RuntimeError(f"{self.name}.{short}: layers.scratch does not have this buffer")
        buf, fmt = got
        return buf, fmt, list(row_chunks(self.K, buf.shape[0]))

    def _group_weights(self, g: int, held: tuple | None):
        """(matrix, format, blocks, filled) group g multiplies by: its kernel columns (full precision), or
        sign(W) held in a weight-row scratch `held` = (buf, fmt, blocks) block by block of its K rows.

        When the whole of K fits in one block the signs are filled here, once
        per group; otherwise the caller fills each block where it uses it
        (`_signs_into(buf, fmt, k0, k1, g)`).
        """
        if held is None:
            w = self._w2()
            return (w[:, self._cols(g)] if self.G > 1 else w), self.w_fmt, [(0, self.K)], True
        buf, fmt, blocks = held
        if len(blocks) == 1:
            self._signs_into(buf, fmt, g=g)
        return buf, fmt, blocks, len(blocks) == 1

    def _pack_filters(self, pw: np.ndarray) -> None:
        """pw (N, *patch) bits <- sign(W) per filter, packed along the patch's last axis."""
        w = self._w2()
        N, K = self.N, self.K
        c_in = self.Cg if self.conv else K
        lead = (*self.window, c_in) if self.conv else (K,)
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
        if node.bias:
            self._add_bias(y2, R)
        return y, ctx.fwd

    def _add_bias(self, y2, R):
        """y2 (R, N) in the forward format += the bias, a chunk of rows at a time in float32."""
        fwd = self.ctx.fwd
        b = codec.decode_copy(self.ctx.ledger[f"{self.name}.bias"], self.w_fmt)
        for r0, r1 in row_chunks(R, temp_rows(self.N)):
            rows = codec.decode_copy(y2[r0:r1], fwd)
            rows += b
            codec.encode_into(y2[r0:r1], rows, fwd)
        self.count("forward", "add", fwd, R * self.N)

    def _save_binary_input(self, x: np.ndarray, xf: str) -> np.ndarray | None:
        """sign(X) saved in the binary_input format (a copy when X already is +1/-1 in that format)."""
        if not self.ctx.training:
            return None
        ctx = self.ctx
        C = self.node.in_shape[-1]
        saved = ctx.save(self.node, "input", "binary_input", (x.shape[0], *self.node.in_shape))
        fmt = ctx.fmt("binary_input")
        if xf == fmt and ctx.graph.tensors[self.node.inputs[0]].binary:
            np.copyto(saved, x.reshape(saved.shape))
            return saved
        x2, s2 = codec.rows(x, xf, C), codec.rows(saved, fmt, C)
        for r0, r1 in row_chunks(x2.shape[0], temp_rows(C)):
            xc = x2[r0:r1]
            codec.store_signs(codec.unpack_bits(xc, C) if xf == "bool" else codec.nonnegative(xc), s2[r0:r1], fmt)
        return saved

    def _packed_rows(self, x, xf, saved, r0, r1, g: int = 0) -> np.ndarray:
        """Packed sign bits of group g's input patches of rows r0..r1, as (r, bytes per patch)."""
        packed = saved if (saved is not None and self.ctx.fmt("binary_input") == "bool") else None
        if packed is None and xf == "bool":
            packed = x  # a sign's output, already bits
        if not self.conv:
            if packed is not None:
                return packed.reshape(packed.shape[0], -1)[r0:r1]
            return np.packbits(codec.nonnegative(x[r0:r1]), axis=-1)
        B = x.shape[0]
        kk = self.patches.taps
        Cg = self.Cg
        cb = -(-Cg // 8)
        pat = np.empty((r1 - r0, kk, cb), np.uint8)
        src = (packed if packed is not None else x).reshape(B * self.patches.hw, -1)
        bit_cut = packed is not None and self.G > 1 and Cg % 8 != 0  # the group's bits do not fill whole bytes
        if packed is not None and self.G > 1:  # the bytes holding the group's bits
            src = src[:, g * Cg // 8:-(-(g + 1) * Cg // 8)]
        elif packed is None and self.G > 1:
            src = src[:, self._channels(g)]
        for a, b in self.patches.blocks(r0, r1):
            idx, inv = self.patches.rows(a, b)
            dst = pat[a - r0:b - r0]
            if bit_cut:
                first = g * Cg - 8 * (g * Cg // 8)  # the group's first bit in its first byte
                bits = np.unpackbits(np.take(src, idx, axis=0), axis=-1)[..., first:first + Cg]
                if inv is not None:
                    bits[inv] = 0  # bit 0 = -1: binary padding
                dst[...] = np.packbits(bits, axis=-1)
            elif packed is not None:
                np.take(src, idx, axis=0, out=dst)
                if inv is not None:
                    dst[inv] = 0  # bit 0 = -1: binary padding
            else:
                bits = codec.nonnegative(np.take(src, idx, axis=0))
                if inv is not None:
                    bits[inv] = False
                dst[...] = np.packbits(bits, axis=-1)
        return pat.reshape(r1 - r0, -1)

    def _forward_xnor(self, x, xf, y2, R):
        ctx, node = self.ctx, self.node
        saved = self._save_binary_input(x, xf)
        held, _ = ctx.scratch(node, "packed_weight")  # one chunk: a single row of N packed filters
        pw = held[0]
        self._pack_filters(pw)
        xn, _ = ctx.scratch(node, "xnor", R)
        per_filter = int(np.prod(pw.shape[1:]))
        word = _word_dtype(per_filter)
        pwv = pw.reshape(self.N, per_filter).view(word)
        words64 = -(-self.K // 64)
        Ng = self.Ng
        for g in range(self.G):
            cols = self._cols(g)
            for r0, r1 in row_chunks(R, xn.shape[0]):
                r = r1 - r0
                pat = np.ascontiguousarray(self._packed_rows(x, xf, saved, r0, r1, g)).view(word)
                dst = xn[:r].reshape(r, Ng, per_filter).view(word)
                np.bitwise_xor(pat[:, None, :], pwv[None, cols, :], out=dst)
                codec.popcount_inplace(dst)
                d = dst.sum(axis=-1, dtype=np.int32)
                d *= -2
                d += self.K
                codec.encode_into(y2[r0:r1, cols], d, ctx.fwd)
                self.count("forward", "xnor_popcount", "bool", r * Ng * words64)
                self.count("forward", "bit_mac", "bool", r * Ng * self.K)

    def _forward_real(self, x, xf, y2, R):
        ctx, node = self.ctx, self.node
        in_fmt = ctx.fmt(self.in_role)
        C = node.in_shape[-1]
        if self.first or (not ctx.training and xf != "bool"):
            src, sf = x, xf
        elif not ctx.training:  # evaluating on a sign's packed output: its values, untracked
            vals = codec.decode(codec.rows(x, xf, C), xf, C).reshape(x.shape[0], *node.in_shape)
            src, sf = codec.encode(vals, in_fmt), in_fmt
        else:
            src = ctx.save(node, "input", "real_input", (x.shape[0], *node.in_shape))
            sf = in_fmt
            x2, s2 = codec.rows(x, xf, C), src.reshape(-1, C)
            for r0, r1 in row_chunks(x2.shape[0], temp_rows(C)):
                codec.encode_into(s2[r0:r1], codec.decode(x2[r0:r1], xf, C), sf)
        held = self._weight_rows("sign_weight") if self.binary else None
        if not self.conv:
            wm, wf, blocks, filled = self._group_weights(0, held)
            self._times_signs(src.reshape(R, self.K), sf, wm, wf, blocks, filled, y2, ctx.fwd)
        else:
            low, lf = ctx.scratch(node, "lowered_input", R)
            for g in range(self.G):
                wm, wf, blocks, filled = self._group_weights(g, held)
                cols = self._cols(g)
                for r0, r1 in row_chunks(R, low.shape[0]):
                    self._lower(src, sf, low[: r1 - r0], lf, r0, r1, self.pad, g)
                    self._times_signs(low[: r1 - r0], lf, wm, wf, blocks, filled, y2[r0:r1, cols], ctx.fwd, g)
        kind = "add" if self.binary else "mac"
        self.count("forward", kind, ctx.fmt("input" if self.first else "real_input"), R * self.N * self.K)

    def _times_signs(self, a, af, wm, wf, blocks, filled, out, of, g: int = 0):
        """out (r, N/G) <- a (r, K) @ sign(W) of group g, held in wm block by block of its K rows.

        One block (the whole K, filled once): one product. Several: each block is
        filled from W and its product added, in float32 (in `out` itself when it
        is float32, else in a float32 tile of rows stored once), so the sum is
        the one product's.
        """
        if filled:
            matmul(a, af, wm[: self.K], wf, out, of)
            return
        if of == "float32":
            for k0, k1 in blocks:
                self._signs_into(wm, wf, k0, k1, g)
                matmul(a[:, k0:k1], af, wm[: k1 - k0], wf, out, of, accumulate=k0 > 0)
            return
        rows = max(1, TILE_BYTES // (4 * self.Ng))
        for i0, i1 in row_chunks(a.shape[0], rows):
            tile = np.zeros((i1 - i0, self.Ng), np.float32)
            for k0, k1 in blocks:
                self._signs_into(wm, wf, k0, k1, g)
                matmul(a[i0:i1, k0:k1], af, wm[: k1 - k0], wf, tile, "float32", accumulate=True)
            codec.encode_into(out[i0:i1], tile, of)

    def _lower(self, src, sf, dst, df, r0, r1, pad, g: int = 0):
        """dst (r, K) in df <- group g's input patches of rows r0..r1 (real values; padding = pad)."""
        B = src.shape[0]
        flat = src.reshape(B * self.patches.hw, -1)
        if self.G > 1:
            flat = flat[:, self._channels(g)]
        d3 = dst.reshape(r1 - r0, self.patches.taps, -1)
        for a, b in self.patches.blocks(r0, r1, self.K if (flat.dtype != dst.dtype or sf != df) else None):
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
        if node.bias:
            self._backward_db(dy2, gf, R)
        if self.needs_dx:
            self._backward_dx(dy2, gf, R)

    def _operand_rows(self, dst, df, r0, r1, cols: tuple[int, int] | None = None, g: int = 0):
        """dst (r, k1 - k0) in df <- the saved input of rows r0..r1 as real values (lowered for a conv:
        group g's patches).

        All K columns by default; `cols` = (k0, k1) asks for those columns only
        (for a conv, column k is channel k % Cg of patch offset k // Cg, of group g's Cg channels).
        """
        ctx = self.ctx
        if self.first:
            saved, sf = ctx.ledger["data"], ctx.fmt("input")
        else:
            saved, sf = ctx.ledger[f"{self.name}.input"], ctx.fmt(self.in_role)
        B = saved.shape[0]
        k0, k1 = cols or (0, self.K)
        if not self.conv:
            s2 = saved.reshape(B, -1)
            if sf == "bool":
                _bit_columns(dst, s2[r0:r1], k0, k1, self.K, df)
            elif sf == df:
                dst[...] = s2[r0:r1, k0:k1]
            else:
                codec.encode_into(dst, codec.decode(s2[r0:r1, k0:k1], sf), df)
            return
        flat = saved.reshape(B * self.patches.hw, -1)
        C, Cg = self.node.channels, self.Cg
        first_channel = g * Cg  # of the group, in the saved input
        if (k0, k1) == (0, self.K):
            if sf == "bool":
                d3 = dst.reshape(r1 - r0, self.patches.taps, -1)
                for a, b in self.patches.blocks(r0, r1):
                    idx, inv = self.patches.rows(a, b)
                    pat = np.take(flat, idx, axis=0)
                    if inv is not None:
                        pat[inv] = 0
                    if self.G == 1:
                        fill_signs(d3[a - r0:b - r0], pat, C, df)
                    else:
                        _bit_columns(d3[a - r0:b - r0].reshape(-1, Cg), pat.reshape(-1, pat.shape[-1]),
                                     first_channel, first_channel + Cg, C, df)
            else:
                self._lower(saved, sf, dst, df, r0, r1, self.pad, g)
            return
        pad = self.pad if df in codec.FLOATS else codec.encode(np.array([self.pad], np.float32), df)[0]
        for a, b in self.patches.blocks(r0, r1, Cg):
            idx, inv = self.patches.rows(a, b)
            d = dst[a - r0:b - r0]
            for q, c0, c1, j in _offsets(k0, k1, Cg):
                dq = d[:, j:j + c1 - c0]
                if sf == "bool":
                    pat = np.take(flat, idx[:, q], axis=0)
                    if inv is not None:
                        pat[inv[:, q]] = 0  # bit 0 = -1: binary padding
                    _bit_columns(dq, pat, first_channel + c0, first_channel + c1, C, df)
                    continue
                vals = flat[idx[:, q], first_channel + c0:first_channel + c1]
                if sf == df:
                    dq[...] = vals
                else:
                    codec.encode_into(dq, codec.decode(vals, sf), df)
                if inv is not None:
                    dq[inv[:, q]] = pad

    def _backward_dw(self, dy2, gf, R):
        ctx, node = self.ctx, self.node
        s = ctx.strategy
        wg_fmt = s.format_of("weight_grad")
        wg = ctx.param_grad(node, "weight_grad", "weight_grad", node.weight_shape)
        sign = s.weight_grad == "sign"
        acc_fmt = ctx.counter.acc
        op, of = ctx.scratch(node, "dw_operand", R)
        held = op.shape[0]
        if held < R and gf != "float32" and R * self.N * 4 <= TILE_BYTES // 4:  # dY once in float32, not per block
            dy2, gf = codec.decode(dy2, gf), "float32"
        w2 = wg.reshape(self.K, -1)
        # the real dW block by block of its rows in dw_accum, each block's sign straight into the packed rows
        accum = self._weight_rows("dw_accum") if wg_fmt == "bool" else None
        for g in range(self.G):
            cols = self._cols(g)
            dyg = dy2[:, cols] if self.G > 1 else dy2
            if held >= R:  # the whole batch in one chunk: the operand is expanded once (per group)
                self._operand_rows(op[:R], of, 0, R, g=g)
            if accum is not None:
                acc, af, blocks = accum
                for k0, k1 in blocks:
                    a = acc[: k1 - k0]
                    self._dw_rows(a, af, k0, k1, op, of, dyg, gf, R, g)
                    for r0, r1 in row_chunks(k1 - k0, temp_rows(self.N)):
                        bits = (codec.nonnegative(a[r0:r1]) if af in codec.FLOATS
                                else codec.decode(a[r0:r1], af) >= 0)
                        _pack_columns(w2[k0 + r0:k0 + r1], bits, g * self.Ng, self.N)
            else:
                self._dw_rows(wg.reshape(self.K, self.N)[:, cols], wg_fmt, 0, self.K, op, of, dyg, gf, R, g)
        if accum is None:
            acc = wg.reshape(self.K, self.N)
            if sign:  # keep dW as its sign, in place
                for r0, r1 in row_chunks(self.K, temp_rows(self.N)):
                    vals = codec.decode(acc[r0:r1], wg_fmt)
                    codec.encode_into(w2[r0:r1], np.where(vals >= 0, 1.0, -1.0).astype(np.float32), wg_fmt)
        m = R * self.N * self.K
        if self.binary and not self.first:
            self.count("backward_dw", "add", acc_fmt, m)
        else:
            ctx.counter.gmac(self.name, "backward_dw", m)
        if sign:
            self.count("backward_dw", "compare", acc_fmt, self.K * self.N)

    def _backward_db(self, dy2, gf, R):
        """bias_grad <- dY summed over the R output rows (its sign under weight_grad `sign`)."""
        ctx, s = self.ctx, self.ctx.strategy
        db = np.zeros(self.N, np.float32)
        for r0, r1 in row_chunks(R, temp_rows(self.N)):
            db += codec.decode(dy2[r0:r1], gf).sum(axis=0, dtype=np.float32)
        acc = ctx.counter.acc
        self.count("backward_dw", "add", acc, R * self.N)
        fmt = s.format_of("weight_grad")
        out = ctx.param_grad(self.node, "bias_grad", "weight_grad", (self.N,))
        if s.weight_grad == "sign":
            db = np.where(db >= 0, np.float32(1), np.float32(-1))
            self.count("backward_dw", "compare", acc, self.N)
        codec.encode_into(out, db, fmt)

    def _dw_rows(self, acc, af, k0, k1, op, of, dy2, gf, R, g: int = 0):
        """acc (k1 - k0, N/G) in af <- the rows k0..k1 of group g's dW (dy2: its dY columns), summed over
        every chunk of the batch.

        The operand chunk `op` (dw_operand) holds rows of the saved input; when
        it holds the whole batch the caller expanded it once. Otherwise it is
        filled chunk after chunk with only the columns k0..k1 this block of dW
        needs, as many rows of them as its bytes hold (`_as_rows`).
        """
        held = op.shape[0]
        if held >= R:
            matmul(op[:R, k0:k1].T, of, dy2, gf, acc, af)
            return

        def chunks(c0, c1):
            rows = _as_rows(op, c1 - c0)
            for r0, r1 in row_chunks(R, rows.shape[0]):
                dst = rows[: r1 - r0]
                self._operand_rows(dst, of, r0, r1, (c0, c1), g)
                yield r0, r1, dst

        if af == "float32":  # accumulate in place, chunk after chunk
            for r0, r1, o in chunks(k0, k1):
                matmul(o.T, of, dy2[r0:r1], gf, acc, af, accumulate=r0 > 0)
            return
        # a narrow format: each block of rows summed over every chunk in a float32 tile and
        # stored once (the operand is refilled per block: expanding it is cheap,
        # accumulating a narrow format again and again is not)
        kb = max(1, TILE_BYTES // (4 * self.Ng))
        for t0, t1 in row_chunks(k1 - k0, kb):
            tile = np.zeros((t1 - t0, self.Ng), np.float32)
            for r0, r1, o in chunks(k0 + t0, k0 + t1):
                matmul(o.T, of, dy2[r0:r1], gf, tile, "float32", accumulate=True)
            codec.encode_into(acc[t0:t1], tile, af)

    def _backward_dx(self, dy2, gf, R):
        ctx, node = self.ctx, self.node
        tgt, tf, accumulate = ctx.grad_out(node.inputs[0], zero=self.conv)
        held = self._weight_rows("weight_signs") if self.binary else None
        B = tgt.shape[0]
        m = R * self.N * self.K
        if not self.conv:
            ws, wf, blocks, filled = self._group_weights(0, held)
            t2 = tgt.reshape(B, self.K)
            for k0, k1 in blocks:  # dX[:, block] = dY . sign(W[block])^T
                if not filled:
                    self._signs_into(ws, wf, k0, k1)
                matmul(dy2, gf, ws[: k1 - k0].T, wf, t2[:, k0:k1], tf, accumulate=accumulate)
        else:
            col, cf = ctx.scratch(node, "col_grad", R)
            flat = tgt.reshape(B * self.patches.hw, -1)
            for g in range(self.G):  # each group's column gradient onto its own channels
                ws, wf, blocks, filled = self._group_weights(g, held)
                dyg = dy2[:, self._cols(g)] if self.G > 1 else dy2
                flat_g = flat[:, self._channels(g)] if self.G > 1 else flat
                for k0, k1 in blocks:  # the column gradient block by block of K, folded back onto the input
                    if not filled:
                        self._signs_into(ws, wf, k0, k1, g)
                    cb = _as_rows(col, k1 - k0)
                    for r0, r1 in row_chunks(R, cb.shape[0]):
                        r = r1 - r0
                        matmul(dyg[r0:r1], gf, ws[: k1 - k0].T, wf, cb[:r], cf)
                        self._fold(flat_g, tf, cb[:r], cf, r0, r1, k0, k1)
                self.count("backward_dx", "add", ctx.counter.acc, R * self.K)
        if self.binary:
            self.count("backward_dx", "add", ctx.counter.acc, m)
        else:
            ctx.counter.gmac(self.name, "backward_dx", m)

    def _fold(self, flat, tf, cols, cf, r0, r1, k0, k1):
        """flat (B*H*W, Cg) in tf += the column gradient `cols` (r, k1 - k0) of rows r0..r1, columns k0..k1
        (flat: one group's channels of dX, a view, for a grouped conv)."""
        C = self.Cg
        for a, b in self.patches.blocks(r0, r1, C):
            idx, inv = self.patches.rows(a, b)
            part = cols[a - r0:b - r0]
            for q, c0, c1, j in _offsets(k0, k1, C):
                sel = slice(None) if inv is None else ~inv[:, q]
                ids = idx[sel, q]
                vals = part[sel, j:j + c1 - c0]
                whole = c1 - c0 == C
                if tf == cf == "float32":
                    if whole:
                        flat[ids] += vals
                    else:
                        flat[ids, c0:c1] += vals
                else:
                    cur = flat[ids] if whole else flat[ids, c0:c1]
                    new = codec.encode(codec.decode(cur, tf) + codec.decode(vals, cf), tf)
                    if whole:
                        flat[ids] = new
                    else:
                        flat[ids, c0:c1] = new


def _offsets(k0: int, k1: int, C: int):
    """For the columns k0..k1 of a lowered patch (column k = channel k % C of offset k // C):
    (offset q, channels c0..c1, first column j within k0..k1) per patch offset they touch."""
    for q in range(k0 // C, (k1 - 1) // C + 1):
        c0, c1 = max(k0 - q * C, 0), min(k1 - q * C, C)
        yield q, c0, c1, q * C + c0 - k0


def _as_rows(buf: np.ndarray, width: int) -> np.ndarray:
    """A chunk buffer of rows (held, K) seen as rows of `width` values, as many as its bytes hold.

    When an operator works on a block of K columns at a time, the chunk holds
    that many more rows of the block (the same bytes, the same buffer).
    """
    if buf.shape[-1] == width:
        return buf
    n = buf.size // width
    return buf.reshape(-1)[: n * width].reshape(n, width)


def _pack_columns(dst: np.ndarray, bits: np.ndarray, c0: int, n: int) -> None:
    """Packed rows dst (r, ceil(n / 8)): their bits c0..c0 + w <- bits (r, w), the other bits kept."""
    c1 = c0 + bits.shape[1]
    if c0 % 8 == 0 and (c1 % 8 == 0 or c1 == n):
        dst[:, c0 // 8:-(-c1 // 8)] = np.packbits(bits, axis=-1)
        return
    full = np.unpackbits(dst, axis=-1, count=n).view(bool)
    full[:, c0:c1] = bits
    dst[...] = np.packbits(full, axis=-1)


def _bit_columns(dst: np.ndarray, packed: np.ndarray, c0: int, c1: int, n: int, fmt: str) -> None:
    """dst (r, c1 - c0) in fmt <- +1/-1 of the bits c0..c1 of packed rows (r, ceil(n / 8))."""
    b0, b1 = c0 // 8, -(-c1 // 8)  # whole bytes around the columns
    if c0 % 8 == 0 and (c1 % 8 == 0 or c1 == n):
        fill_signs(dst, packed[:, b0:b1], c1 - c0, fmt)
    else:  # unpack only those bytes, as bits (1 byte each), not as values of fmt
        bits = np.unpackbits(packed[:, b0:b1], axis=-1)[:, c0 - 8 * b0:c1 - 8 * b0]
        codec.store_signs(bits.view(bool), dst, fmt)
