"""flatten, the residual join, and softmax_ce (METHOD 2.1, 2.3).

flatten is a reshape: its output is a view of its input (no buffer in either
pass). The residual join adds its two branches; backward it passes its
gradient buffer by reference to both (layers.storage), and the branch that
writes second adds into it: those adds are counted at the join, as
costmodel/ops.py says ("wherever the sum is done"). softmax_ce computes the
probabilities (saved in `softmax_output`) and the mean cross-entropy of the
batch; its backward writes (p - onehot) x S / B, S the loss scale (trainer.base).
"""

from __future__ import annotations

import numpy as np

from bnncost.trainer import codec
from bnncost.trainer.base import Op, row_chunks, temp_rows
from bnncost.trainer.errors import TrainerError


class Flatten(Op):
    """A reshape. Packed bits whose last axis is not a multiple of 8 are repacked in place.

    (B, H, W, C) bits take H x W x ceil(C/8) bytes a sample, the flat (B, HWC)
    ceil(HWC/8): the flat rows are written sample by sample over the start of
    the same buffer (each sample's flat bytes end before the next sample's
    packed bytes begin), so no buffer is added, as layers.storage says.
    """

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.C = node.in_shape[-1]
        self.regroup = len(node.in_shape) > 1 and self.C % 8 != 0
        if self.regroup:
            t = node.inputs[0]
            readers = [n.name for n in ctx.graph.nodes if t in n.inputs]
            if readers != [node.name]:
                raise TrainerError(f"{node.name}: flattening packed bits of {self.C} channels (not a multiple of 8) "
                                   f"that {', '.join(r for r in readers if r != node.name)} also reads")

    def forward(self, xs):
        x, xf = xs[0]
        B = x.shape[0]
        if xf != "bool" or not self.regroup:
            return x.reshape(B, *codec.stored_shape(xf, self.node.out_shape)), xf
        K = self.node.out_shape[0]
        flat_bytes = -(-K // 8)
        src = x.reshape(B, -1)
        dst = x.reshape(-1)[: B * flat_bytes].reshape(B, flat_bytes)
        for b in range(B):  # in order: sample b's flat bytes end before sample b + 1's packed bytes begin
            dst[b] = np.packbits(codec.unpack_bits(src[b:b + 1], K, self.C), axis=-1)[0]
        return dst, xf


class Add(Op):
    def forward(self, xs):
        (a, af), (b, bf) = xs
        ctx = self.ctx
        y = ctx.output(self.node)
        C = self.node.out_shape[-1]
        a2, b2, y2 = codec.rows(a, af, C), codec.rows(b, bf, C), y.reshape(-1, C)
        for r0, r1 in row_chunks(y2.shape[0], temp_rows(C)):  # rows of C: chunks below one sample
            codec.encode_into(y2[r0:r1], codec.decode(a2[r0:r1], af, C) + codec.decode(b2[r0:r1], bf, C),
                              ctx.fwd)
        self.count("forward", "add", ctx.fwd, y.size)
        return y, ctx.fwd

    def backward(self):
        ctx = self.ctx
        if ctx.needs_grad(self.node.output):
            self.count("backward_dx", "add", ctx.counter.acc, ctx.batch * int(np.prod(self.node.out_shape)))


class SoftmaxCE(Op):
    def forward(self, xs):
        x, xf = xs[0]
        ctx = self.ctx
        z = codec.decode_copy(x, xf, self.node.in_shape[-1])
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        s = e.sum(axis=1, keepdims=True)
        ctx.predictions = np.argmax(z, axis=1)
        if not ctx.training:
            return None
        B, Q = z.shape
        probs = ctx.save(self.node, "probs", "softmax_output", (B, Q))
        codec.encode_into(probs, e / s, ctx.fmt("softmax_output"))
        labels = ctx.labels
        ctx.loss = float(np.mean(np.log(s[:, 0]) - z[np.arange(B), labels]))
        f = ctx.fmt("softmax_output")
        O = B * Q
        self.count("forward", "compare", f, O)
        self.count("forward", "add", f, 2 * O + B)
        self.count("forward", "exp", f, O + B)
        self.count("forward", "div", f, O)
        return None

    def backward(self):
        ctx, node = self.ctx, self.node
        if not ctx.needs_grad(node.inputs[0]):
            return
        g = codec.decode_copy(ctx.ledger[f"{self.name}.probs"], ctx.fmt("softmax_output"))
        B, Q = g.shape
        g[np.arange(B), ctx.labels] -= 1.0
        g *= np.float32(ctx.loss_scale / B)  # loss scaling: see trainer.base.loss_scale
        tgt, tf, accumulate = ctx.grad_out(node.inputs[0])
        codec.store(tgt, g, tf, accumulate)
        self.count("backward_dx", "add", ctx.counter.acc, B * Q)
        self.count("backward_dx", "mul", ctx.counter.acc, B * Q)
