"""Batch normalisation, l2 and l1 (METHOD 2.1, 3.1 step 2), per channel (the last axis).

l2: n = (x - mean) / sqrt(var + eps), y = gamma n + beta; saves n.
l1: n = (x - mean) / (s + eps) with s = mean |x - mean| (no square, no root),
    y = n + beta (no gamma); saves n, and `norm_scale` = mean |n| per channel.
    Backward (Wang et al. 2021) uses n_hat = sign(n) x norm_scale when n is
    saved as bits: dx = (dy - mean(dy) - mean(dy n_hat) sign(n)) / (s + eps),
    the derivative of the l1 normalisation with the small mean(sign(n)) term
    of d s / d x dropped, as the paper does.

`batch_stats` holds the batch mean and the reciprocal of the spread (what the
backward multiplies by); `running_stats` the running mean and spread (momentum
0.9) used at evaluation. Forward works in three passes over row chunks: sums,
then x - mean written into the output buffer (with the spread's sums), then
the normalisation in place; backward in two passes: the per-channel sums,
then dx. Arithmetic is float32 on chunks, stored in the strategy's formats.
"""

from __future__ import annotations

import numpy as np

from bnncost.trainer import codec
from bnncost.trainer.base import Op, ParamSpec, row_chunks, temp_rows
from bnncost.trainer.linear import fill_signs

EPS = 1e-5
MOMENTUM = 0.9


class BatchNorm(Op):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.l1 = ctx.strategy.batchnorm == "l1"
        self.C = node.channels
        self.p = 1 if self.l1 else 2
        self.bn = ctx.fmt("bn_param")
        self.needs_dx = ctx.needs_grad(node.inputs[0])

    def init_params(self, rng):
        C, led = self.C, self.ctx.ledger
        params = np.zeros((self.p, C), np.float32)
        if not self.l1:
            params[0] = 1.0  # gamma
        led.persist(f"{self.name}.params", self.name, "bn_param", self.bn, (self.p, C), codec.encode(params, self.bn))
        stats = np.stack([np.zeros(C, np.float32), np.ones(C, np.float32)])
        led.persist(f"{self.name}.running_stats", self.name, "bn_param", self.bn, (2, C), codec.encode(stats, self.bn))

    def params(self):
        return [ParamSpec(f"{self.name}.params", f"{self.name}.param_grad", self.name, self.bn, self.bn, (self.p, self.C))]

    def _gamma_beta(self):
        pr = codec.decode(self.ctx.ledger[f"{self.name}.params"], self.bn)
        return (None, pr[0]) if self.l1 else (pr[0], pr[1])

    # -------------------------------------------------------------- forward

    def forward(self, xs):
        x, xf = xs[0]
        ctx = self.ctx
        C = self.C
        x2 = codec.rows(x, xf, C)  # a sign's output may arrive as packed bits
        m = x2.shape[0]
        y = ctx.output(self.node)
        y2 = y.reshape(m, C)
        fwd = ctx.fwd
        step = temp_rows(C)
        gamma, beta = self._gamma_beta()
        if not ctx.training:
            rs = codec.decode(ctx.ledger[f"{self.name}.running_stats"], self.bn)
            scale = 1.0 / rs[1] if gamma is None else gamma / rs[1]
            for r0, r1 in row_chunks(m, step):
                codec.encode_into(y2[r0:r1], (codec.decode(x2[r0:r1], xf, C) - rs[0]) * scale + beta, fwd)
            return y, fwd
        bn, E = self.bn, m * C
        single = m <= step  # one chunk: keep the float32 values between passes
        # pass 1: mean
        total = np.zeros(C, np.float64)
        x32 = None
        for r0, r1 in row_chunks(m, step):
            xc = (codec.decode_copy if single else codec.decode)(x2[r0:r1], xf, C)
            total += xc.sum(axis=0)
            x32 = xc if single else None
        mean = (total * (1.0 / m)).astype(np.float32)
        # pass 2: d = x - mean (into y when there are several chunks), and the spread's sum
        acc = np.zeros(C, np.float64)
        for r0, r1 in row_chunks(m, step):
            d = x32 if single else codec.decode_copy(x2[r0:r1], xf, C)
            d -= mean
            acc += np.einsum("ij,ij->j", d, d) if not self.l1 else np.abs(d).sum(axis=0)
            if not single:
                codec.encode_into(y2[r0:r1], d, fwd)
        if self.l1:
            spread = (acc * (1.0 / m) + EPS).astype(np.float32)
        else:
            spread = np.sqrt(acc * (1.0 / m) + EPS).astype(np.float32)
        inv = (1.0 / spread).astype(np.float32)
        stats = ctx.save(self.node, "batch_stats", "bn_param", (2, C))
        codec.encode_into(stats, np.stack([mean, inv]), bn)
        # pass 3: n = d * inv, saved; y = gamma n + beta
        nout = ctx.save(self.node, "norm_output", "norm_output", (x.shape[0], *self.node.in_shape))
        nf = ctx.fmt("norm_output")
        n2 = nout.reshape(m, -1)
        absn = np.zeros(C, np.float64)
        for r0, r1 in row_chunks(m, step):
            n = x32 if single else codec.decode_copy(y2[r0:r1], fwd)
            n *= inv
            codec.encode_into(n2[r0:r1], n, nf)
            if self.l1:
                absn += np.abs(n).sum(axis=0)
                n += beta
            else:
                n *= gamma
                n += beta
            codec.encode_into(y2[r0:r1], n, fwd)
        if self.l1:
            scale = ctx.save(self.node, "norm_scale", "bn_param", (C,))
            codec.encode_into(scale, (absn * (1.0 / m)).astype(np.float32), bn)
        run = ctx.ledger[f"{self.name}.running_stats"]
        rs = codec.decode(run, bn)
        codec.encode_into(run, MOMENTUM * rs + (1 - MOMENTUM) * np.stack([mean, spread]), bn)
        # counts (costmodel/ops.py convention)
        if self.l1:
            self.count("forward", "add", bn, 5 * E + 3 * C)
            self.count("forward", "abs", bn, 2 * E)
            self.count("forward", "mul", bn, E + 7 * C)
        else:
            self.count("forward", "add", bn, 4 * E + 3 * C)
            self.count("forward", "mul", bn, 3 * E + 6 * C)
            self.count("forward", "sqrt", bn, C)
        self.count("forward", "div", bn, C)
        return y, fwd

    # -------------------------------------------------------------- backward

    def backward(self):
        ctx, node = self.ctx, self.node
        C = self.C
        dy, gf = ctx.grad_in(node.output)
        dy2 = dy.reshape(-1, C)
        m = dy2.shape[0]
        E = m * C
        nf = ctx.fmt("norm_output")
        n2 = ctx.ledger[f"{self.name}.norm_output"].reshape(m, -1)
        stats = codec.decode(ctx.ledger[f"{self.name}.batch_stats"], self.bn)
        inv = stats[1]
        gamma, _ = self._gamma_beta()
        packed = nf == "bool"
        scale = None
        if packed and self.l1:
            scale = codec.decode(ctx.ledger[f"{self.name}.norm_scale"], self.bn)
        un = ctx.scratch(node, "unpacked", m) if packed else None
        if packed and un is None:  # cannot happen: unpacked exists whenever norm_output is bool
            raise RuntimeError(f"{self.name}: no unpacked scratch")
        step = min(un[0].shape[0], temp_rows(C)) if un is not None else temp_rows(C)

        def n_hat(r0, r1):
            """n (real saved) or sign(n) (bits, expanded in the `unpacked` scratch)."""
            if not packed:
                return codec.decode_copy(n2[r0:r1], nf)  # a copy: the backward scales it in place
            buf, uf = un
            fill_signs(buf[: r1 - r0], n2[r0:r1], C, uf)
            return codec.decode(buf[: r1 - r0], uf)  # float32 scratch may be scaled in place: it is scratch

        single = m <= step
        cache = None
        sdy = np.zeros(C, np.float64)
        sdyn = np.zeros(C, np.float64)
        for r0, r1 in row_chunks(m, step):
            g = (codec.decode_copy if single else codec.decode)(dy2[r0:r1], gf)
            nh = n_hat(r0, r1)
            sdy += g.sum(axis=0)
            sdyn += np.einsum("ij,ij->j", g, nh)
            cache = (g, nh) if single else None
        if packed and not self.l1:
            pass  # l2 with 1-bit n: n_hat = sign(n) (no norm_scale is saved for l2)
        if scale is not None:
            sdyn *= scale  # sum(dy * sign(n) * scale)
        pg = ctx.param_grad(node, "param_grad", "bn_param", (self.p, C))
        grads = np.stack([sdy]) if self.l1 else np.stack([sdyn, sdy])
        codec.encode_into(pg, grads.astype(np.float32), self.bn)
        acc = ctx.counter.acc
        if self.l1:
            self.count("backward_dw", "add", acc, E)
        else:
            self.count("backward_dw", "add", acc, 2 * E)
            ctx.counter.gmul(self.name, "backward_dw", E)
        if self.needs_dx:
            tgt, tf, accumulate = ctx.grad_out(node.inputs[0])
            t2 = tgt.reshape(m, C)
            mdy = (sdy / m).astype(np.float32)
            k = (sdyn / m).astype(np.float32)
            mult = inv if self.l1 else inv * gamma
            for r0, r1 in row_chunks(m, step):
                if cache is not None:
                    g, nh = cache
                else:
                    g, nh = codec.decode_copy(dy2[r0:r1], gf), n_hat(r0, r1)
                g -= mdy
                if self.l1 and not packed:
                    nh = np.where(nh >= 0, np.float32(1), np.float32(-1))  # sign(n); bits already are
                nh *= k  # nh is this chunk's own float32 copy
                g -= nh
                g *= mult
                codec.store(t2[r0:r1], g, tf, accumulate)
            if self.l1:
                self.count("backward_dx", "add", acc, 4 * E)
                self.count("backward_dx", "mul", acc, E + 4 * C)
            else:
                ctx.counter.gmul(self.name, "backward_dx", E)
                self.count("backward_dx", "add", acc, 4 * E)
                self.count("backward_dx", "mul", acc, 3 * E + 2 * C)
