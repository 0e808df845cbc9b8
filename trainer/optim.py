"""Optimizers: Adam, SGD with momentum, Bop (METHOD 3, layers.storage).

State lives in the `optimizer_state` format (Adam `adam_m`/`adam_v`, SGD and
Bop `momentum`), updated a chunk of rows at a time in float32.

- Adam (Kingma & Ba): bias correction folded into the step size. Latent
  weights of binary layers are clipped to [-1, 1] (and -0.0 becomes +0.0, so
  every sign the trainer takes of a weight agrees with its packed bit).
  eps is 1e-8 for float32 state, 1e-4 for narrower state (float16 cannot hold
  1e-8; 1e-4 is the usual mixed-precision choice).
- 1-bit dW (weight_grad: sign, METHOD 3.1 step 4): the gradient handed to the
  optimizer is sign(dW) / sqrt(n), n the number of weights of the layer. For
  Adam this is computed exactly but held scaled: m and v are stored multiplied
  by sqrt(n) and n (so float16 holds them without underflow: (1 - beta2) / n
  is below float16's smallest subnormal for a 256 x 256 layer), with eps
  scaled to match; the update is the same number.
- SGD: m = mu m + g, w -= lr m (mu = 0.9).
- Bop (Helwegen et al. 2019) for binary kernels held as bits: m = (1 - gamma)
  m + gamma g; a weight flips where |m| > threshold and sign(m) == sign(w).
  Batchnorm and full-precision parameters use Adam with the given lr.
Gradients other than float32 arrive multiplied by the loss scale S
(trainer.base.loss_scale); Adam's eps, SGD's lr and Bop's threshold absorb it
as scalar constants, so the update is that of the unscaled gradient.
Operation counts follow costmodel/ops.py ("optimizer").
"""

from __future__ import annotations

import math

import numpy as np

from bnncost.trainer import codec
from bnncost.trainer.base import ParamSpec, row_chunks, temp_rows
from bnncost.trainer.counters import OpCounter
from bnncost.trainer.ledger import Ledger

OPT_CHUNK_BYTES = 1 << 14  # bytes of each of the update's three float32 work buffers


class Optimizer:
    def __init__(self, kind: str, state_fmt: str, ledger: Ledger, counter: OpCounter, *, lr: float,
                 beta1: float = 0.9, beta2: float = 0.999, momentum: float = 0.9,
                 bop_gamma: float = 1e-3, bop_threshold: float = 1e-6, grad_scale: float = 1.0):
        self.kind, self.fmt = kind, state_fmt
        self.ledger, self.counter = ledger, counter
        self.lr, self.beta1, self.beta2, self.mu = lr, beta1, beta2, momentum
        self.gamma, self.threshold = bop_gamma, bop_threshold
        self.eps = 1e-8 if state_fmt == "float32" else 1e-4
        self.t = 0  # Adam's step count
        self.S = grad_scale  # gradients arrive multiplied by the loss scale (trainer.base.loss_scale)

    def rule(self, p: ParamSpec) -> str:
        if self.kind == "bop":
            return "bop" if p.bits else "adam"
        return self.kind

    def state_names(self, p: ParamSpec) -> list[str]:
        at = f"{p.layer}.{p.state_prefix}"
        if self.rule(p) in ("sgd", "bop"):
            return [f"{at}momentum"]
        return [f"{at}adam_m", f"{at}adam_v"]

    def init_state(self, params: list[ParamSpec]) -> None:
        for p in params:
            for name in self.state_names(p):
                self.ledger.persist(name, p.layer, "optimizer_state", self.fmt, p.shape,
                                    codec.empty(self.fmt, p.shape, zero=True))

    # -------------------------------------------------------------- one update

    def step(self, params: list[ParamSpec]) -> None:
        self.t += 1
        for p in params:
            getattr(self, "_" + self.rule(p))(p)

    def _views(self, p: ParamSpec):
        """(weight, grad, states) as 2-D arrays whose rows line up."""
        last = p.shape[-1]
        rows = p.size // last
        w = self.ledger[p.name].reshape(rows, -1)
        g = self.ledger[p.grad].reshape(rows, -1)
        states = [self.ledger[s].reshape(rows, -1) for s in self.state_names(p)]
        return w, g, states, rows, last

    def _grad(self, g: np.ndarray, p: ParamSpec, last: int) -> np.ndarray:
        """A chunk of the gradient as float32; a sign gradient as +1/-1."""
        if p.grad_fmt == "bool":
            return codec.decode(g, "bool", last)
        gr = codec.decode_copy(g, p.grad_fmt)
        if p.sign_grad:
            np.copysign(np.float32(1), gr, out=gr)
            gr[gr == 0] = 1
        return gr

    def _adam(self, p: ParamSpec) -> None:
        w, g, (m, v), rows, last = self._views(p)
        b1, b2, f = self.beta1, self.beta2, self.fmt
        scale = math.sqrt(p.size) if p.sign_grad else 1.0  # sign(dW)/sqrt(n), held scaled by sqrt(n)
        c1, c2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        lr_t = np.float32(self.lr * math.sqrt(c2) / c1)
        eps_t = np.float32(self.eps * (scale if p.sign_grad else self.S) * math.sqrt(c2))
        step = temp_rows(last, budget=OPT_CHUNK_BYTES)
        work = np.empty((3, min(rows, step), last), np.float32)  # three float32 buffers, reused per chunk
        for r0, r1 in row_chunks(rows, step):
            gr, mm, vv = work[:, : r1 - r0]
            self._grad_into(g[r0:r1], p, gr)
            codec.decode_into(m[r0:r1], f, mm)
            mm *= b1
            codec.decode_into(v[r0:r1], f, vv)
            vv *= b2
            if p.sign_grad:  # g = +-1: (1 - b2) g^2 is a constant
                vv += np.float32(1 - b2)
                gr *= np.float32(1 - b1)
                mm += gr
            else:
                mm += gr * np.float32(1 - b1)
                gr *= gr
                gr *= np.float32(1 - b2)
                vv += gr
            codec.encode_into(m[r0:r1], mm, f, ftz=False)  # optimizer state and weights are rarely subnormal
            codec.encode_into(v[r0:r1], vv, f, ftz=False)
            np.sqrt(vv, out=vv)
            vv += eps_t
            np.divide(mm, vv, out=mm)
            mm *= lr_t
            ww = codec.decode_into(w[r0:r1], p.fmt, vv)
            ww -= mm
            if p.binary_kernel:
                np.clip(ww, -1.0, 1.0, out=ww)
            ww += np.float32(0.0)  # no -0.0 (and float16 flushes tiny values to +0.0)
            codec.encode_into(w[r0:r1], ww, p.fmt)
        n = p.size
        c = self.counter
        c.add(p.layer, "update", "mul", f, (3 if p.sign_grad else 6) * n)
        c.add(p.layer, "update", "add", f, 4 * n)
        c.add(p.layer, "update", "sqrt", f, n)
        c.add(p.layer, "update", "div", f, n)
        if p.binary_kernel:
            c.add(p.layer, "update", "compare", f, 2 * n)

    def _grad_into(self, g: np.ndarray, p: ParamSpec, out: np.ndarray) -> np.ndarray:
        """A chunk of the gradient as float32 into `out`; a sign gradient as +1/-1."""
        codec.decode_into(g, p.grad_fmt, out, out.shape[-1])
        if p.sign_grad and p.grad_fmt != "bool":
            out[out == 0] = 1
            np.copysign(np.float32(1), out, out=out)
        return out

    def _sgd(self, p: ParamSpec) -> None:
        w, g, (m,), rows, last = self._views(p)
        f = self.fmt
        for r0, r1 in row_chunks(rows, temp_rows(last, budget=OPT_CHUNK_BYTES)):
            gr = self._grad(g[r0:r1], p, last)
            if p.sign_grad:
                gr /= np.float32(math.sqrt(p.size))
            mm = codec.decode(m[r0:r1], f) * self.mu + gr
            codec.encode_into(m[r0:r1], mm, f)
            ww = codec.decode_copy(w[r0:r1], p.fmt)
            lr = self.lr if p.sign_grad else self.lr / self.S
            ww -= lr * codec.decode(m[r0:r1], f)
            if p.binary_kernel:
                np.clip(ww, -1.0, 1.0, out=ww)
            ww += 0.0
            codec.encode_into(w[r0:r1], ww, p.fmt)
        n = p.size
        self.counter.add(p.layer, "update", "mul", f, 2 * n)
        self.counter.add(p.layer, "update", "add", f, 2 * n)
        if p.binary_kernel:
            self.counter.add(p.layer, "update", "compare", f, 2 * n)

    def _bop(self, p: ParamSpec) -> None:
        w, g, (m,), rows, last = self._views(p)  # w: bits (rows, ceil(last/8))
        f = self.fmt
        for r0, r1 in row_chunks(rows, temp_rows(last, budget=OPT_CHUNK_BYTES)):
            gr = self._grad(g[r0:r1], p, last)
            if p.sign_grad:
                gr /= np.float32(math.sqrt(p.size))
            mm = codec.decode(m[r0:r1], f) * (1 - self.gamma) + self.gamma * gr
            codec.encode_into(m[r0:r1], mm, f)
            mm = codec.decode(m[r0:r1], f)
            wpos = codec.decode(w[r0:r1], "bool", last, mode="mask") > 0
            tau = self.threshold if p.sign_grad else self.threshold * self.S
            flip = (np.abs(mm) > tau) & ((mm > 0) == wpos)
            w[r0:r1] ^= np.packbits(flip, axis=-1)
        n = p.size
        c = self.counter
        c.add(p.layer, "update", "mul", f, (n if p.sign_grad else 2 * n))
        c.add(p.layer, "update", "add", f, n)
        c.add(p.layer, "update", "abs", f, n)
        c.add(p.layer, "update", "compare", f, 2 * n)
