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


class Flatten(Op):
    def forward(self, xs):
        x, xf = xs[0]
        return x.reshape(x.shape[0], *self.node.out_shape), xf


class Add(Op):
    def forward(self, xs):
        (a, af), (b, bf) = xs
        ctx = self.ctx
        y = ctx.output(self.node)
        B = y.shape[0]
        a2, b2, y2 = a.reshape(B, -1), b.reshape(B, -1), y.reshape(B, -1)
        for r0, r1 in row_chunks(B, temp_rows(y2.shape[1])):
            codec.encode_into(y2[r0:r1], codec.decode(a2[r0:r1], af) + codec.decode(b2[r0:r1], bf), ctx.fwd)
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
        z = codec.decode_copy(x, xf)
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
