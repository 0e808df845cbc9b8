"""The proposed strategy (Wang et al. 2021) in PyTorch, written the way a PyTorch user writes it.

Storage follows the strategy (costmodel/strategies/proposed.yaml); each
mechanism is an autograd Function that saves only what its backward needs:

- the model is float16 (`model.half()`): latent weights, batchnorm parameters
  and buffers, activations, the data batch, and the gradients between layers;
- dense / conv2d (binary or not): `PackedLinear` / `PackedConv2d` save the
  input's sign bit-packed into uint8 (`pack_signs`: torch has no packbits, so
  eight bits are shifted into each byte) when the input is ±1 (a sign's
  output); a layer whose input is real (the data, a residual sum, a pooled
  feature) saves that float16 tensor itself. Binary layers multiply by
  sign(W), recomputed from the float16 latent W in backward (nothing of W is
  saved but the parameter). The weight gradient is computed, and only its sign
  is kept, packed, on the module (`grad_bits`) until the update: a 1-bit dW for
  every weighted layer, as the trainer does (`weight_grad: sign`);
- sign: `SignSTE` saves the straight-through mask abs(x) <= 1 packed (1 bit);
- batchnorm: `L1BatchNorm`, the l1 form (spread = mean abs deviation, beta
  only); it saves sign(n) packed, and per channel mean(abs(n)) and 1/spread
  in float16; its backward is the paper's, with n replaced by
  sign(n) x mean(abs(n));
- relu, max/avg pooling, flatten, residual sums: PyTorch's own modules on
  float16 tensors; the loss is cross-entropy of the logits cast to float32;
- `SignAdam`: Adam with float16 m and v, PyTorch's single-tensor update
  (torch.optim.adam, foreach off). A weight's gradient is its packed sign,
  unpacked one parameter at a time to ±1 (METHOD: sign(dW) / sqrt(n); Adam is
  invariant to the gradient's scale, so the 1/sqrt(n) is folded into eps, and
  float16 does not underflow on (1 - beta2) / n). Latent weights of binary
  layers are clipped to [-1, 1] (the weight's STE gate is then always open).

Arithmetic: this CPU (AVX-512 without FP16) runs float16 matmul and
convolution about 100x slower than float32 (torch 2.14: 512 x 8192 x 1024 mm
104 s against 0.33 s), so the matmuls and convolutions cast their float16
operands to float32, as a user who measured that would; elementwise ops and
reductions run on float16 storage (torch accumulates half reductions in
float32).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from torch_model import Layers

EPS = 1e-5  # the l1 spread's epsilon (trainer/batchnorm.py)
MOMENTUM = 0.1  # running statistics, PyTorch's convention (new = 0.9 old + 0.1 batch)
_SHIFTS = torch.arange(7, -1, -1, dtype=torch.uint8)  # bit 7 first, as numpy.packbits


def pack_signs(positive: torch.Tensor) -> torch.Tensor:
    """A bool tensor as bits, eight per uint8 (flattened, zero-padded to a multiple of 8)."""
    flat = positive.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = F.pad(flat, (0, pad))
    return (flat.view(-1, 8) << _SHIFTS).sum(dim=1, dtype=torch.uint8)


def unpack_signs(packed: torch.Tensor, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """±1 of `dtype` and `shape` from `pack_signs`' bits (1 -> +1, 0 -> -1)."""
    n = math.prod(shape)
    bits = (packed.unsqueeze(1) >> _SHIFTS).bitwise_and_(1).view(-1)[:n].view(shape)
    return bits.to(dtype).mul_(2).sub_(1)


def _sign(x: torch.Tensor) -> torch.Tensor:
    """+1 where x >= 0, else -1 (the packed bit's convention: sign(0) = +1)."""
    return torch.ones_like(x).masked_fill_(x < 0, -1)


class _Packed(torch.autograd.Function):
    """Shared by dense and conv: save the input (packed when ±1), keep sign(dW) packed on the module."""

    @staticmethod
    def save_input(ctx, x, module):
        ctx.module, ctx.shape = module, x.shape
        ctx.binary_input = module.binary_input
        saved = pack_signs(x >= 0) if module.binary_input else x
        return saved

    @staticmethod
    def input_of(ctx, saved):
        return unpack_signs(saved, ctx.shape, torch.float32) if ctx.binary_input else saved.float()

    @staticmethod
    def weight_of(module, w):
        return _sign(w).float() if module.binary else w.float()


class LinearFn(_Packed):
    @staticmethod
    def forward(ctx, x, w, module):
        ctx.save_for_backward(_Packed.save_input(ctx, x, module), w)
        return F.linear(x.float(), _Packed.weight_of(module, w)).half()

    @staticmethod
    def backward(ctx, grad):
        saved, w = ctx.saved_tensors
        g = grad.float()
        dx = (g @ _Packed.weight_of(ctx.module, w)).half() if ctx.needs_input_grad[0] else None
        dw = g.t() @ _Packed.input_of(ctx, saved)
        ctx.module.grad_bits = pack_signs(dw >= 0)
        return dx, None, None


class Conv2dFn(_Packed):
    @staticmethod
    def forward(ctx, x, w, module):
        ctx.save_for_backward(_Packed.save_input(ctx, x, module), w)
        return F.conv2d(x.float(), _Packed.weight_of(module, w), None, module.stride, module.padding,
                        groups=module.groups).half()

    @staticmethod
    def backward(ctx, grad):
        saved, w = ctx.saved_tensors
        m = ctx.module
        g = grad.float()
        dx = None
        if ctx.needs_input_grad[0]:
            dx = torch.nn.grad.conv2d_input(ctx.shape, _Packed.weight_of(m, w), g, m.stride, m.padding,
                                            groups=m.groups).half()
        dw = torch.nn.grad.conv2d_weight(_Packed.input_of(ctx, saved), w.shape, g, m.stride, m.padding,
                                         groups=m.groups)
        m.grad_bits = pack_signs(dw >= 0)
        return dx, None, None


class PackedLinear(nn.Linear):
    """nn.Linear (no bias) through LinearFn; `binary` multiplies by sign(W)."""

    def __init__(self, fan_in, units, binary, binary_input):
        super().__init__(fan_in, units, bias=False)
        self.binary, self.binary_input, self.grad_bits = binary, binary_input, None

    def forward(self, x):
        return LinearFn.apply(x, self.weight, self)


class PackedConv2d(nn.Conv2d):
    """nn.Conv2d (no bias) through Conv2dFn; `binary` convolves with sign(W); `groups` as nn.Conv2d's."""

    def __init__(self, cin, cout, k, s, pad, binary, binary_input, groups=1):
        super().__init__(cin, cout, k, s, pad, bias=False, groups=groups)
        self.binary, self.binary_input, self.grad_bits = binary, binary_input, None

    def forward(self, x):
        return Conv2dFn.apply(x, self.weight, self)


class SignSTEFn(torch.autograd.Function):
    """sign(x); the gradient passes where abs(x) <= 1, a mask saved as bits."""

    @staticmethod
    def forward(ctx, x):
        ctx.shape = x.shape
        ctx.save_for_backward(pack_signs(x.abs() <= 1))
        return _sign(x)

    @staticmethod
    def backward(ctx, grad):
        (bits,) = ctx.saved_tensors
        shape = ctx.shape
        n = math.prod(shape)
        mask = (bits.unsqueeze(1) >> _SHIFTS).bitwise_and_(1).view(-1)[:n].view(shape)
        return grad * mask


class PackedSign(nn.Module):
    def forward(self, x):
        return SignSTEFn.apply(x)


class L1BatchNormFn(torch.autograd.Function):
    """l1 batchnorm: n = (x - mean) / (mean abs(x - mean) + eps), y = n + beta; saves sign(n) as bits."""

    @staticmethod
    def forward(ctx, x, beta, module):
        dims = (0, 2, 3) if x.dim() == 4 else (0,)
        view = (1, -1, 1, 1) if x.dim() == 4 else (1, -1)
        mean = x.mean(dims, keepdim=True)
        n = x - mean
        spread = n.abs().mean(dims, keepdim=True).add_(EPS)
        n.div_(spread)
        ctx.dims, ctx.shape = dims, x.shape
        ctx.save_for_backward(pack_signs(n >= 0), n.abs().mean(dims, keepdim=True), spread.reciprocal())
        with torch.no_grad():
            module.running_mean.lerp_(mean.view(-1), MOMENTUM)
            module.running_spread.lerp_(spread.view(-1), MOMENTUM)
        return n.add_(beta.view(view))

    @staticmethod
    def backward(ctx, grad):
        bits, scale, inv = ctx.saved_tensors
        dims = ctx.dims
        sn = unpack_signs(bits, ctx.shape, grad.dtype)
        dbeta = grad.sum(dims)
        k = (grad * sn).mean(dims, keepdim=True).mul_(scale)
        dx = grad - grad.mean(dims, keepdim=True)
        dx.sub_(sn.mul_(k)).mul_(inv)
        return dx, dbeta, None


class L1BatchNorm(nn.Module):
    """l1 batchnorm with beta only (Wang et al. 2021); evaluation uses the running mean and spread."""

    def __init__(self, channels):
        super().__init__()
        self.beta = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_spread", torch.ones(channels))

    def forward(self, x):
        if self.training:
            return L1BatchNormFn.apply(x, self.beta, self)
        view = (1, -1, 1, 1) if x.dim() == 4 else (1, -1)
        return (x - self.running_mean.view(view)) / self.running_spread.view(view) + self.beta.view(view)


class ProposedLayers(Layers):
    """The proposed strategy's modules."""

    # A binary layer's input is saved as its sign (METHOD 3.1: dW is computed from sign(X)), except the
    # first layer's (the data); a full-precision layer saves its real input.
    def dense(self, fan_in, units, binary, first=False):
        return PackedLinear(fan_in, units, binary, binary and not first)

    def conv(self, cin, cout, k, s, pad, binary, first=False):
        return PackedConv2d(cin, cout, k, s, pad, binary, binary and not first)

    def grouped_conv(self, cin, cout, k, s, pad, binary, groups):
        """A grouped / depthwise conv through the same Function (its input saved packed when binary)."""
        return PackedConv2d(cin, cout, k, s, pad, binary, binary, groups)

    def batchnorm(self, c, spatial):
        return L1BatchNorm(c)

    def sign(self):
        return PackedSign()


def packed_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (PackedLinear, PackedConv2d))]


class SignAdam(torch.optim.Optimizer):
    """Adam (float16 m, v) whose weighted layers' gradient is their packed sign, unpacked one at a time.

    The update of each tensor is torch.optim.adam._single_tensor_adam's:
    m.lerp_(g, 1 - b1); v.mul_(b2).addcmul_(g, g, 1 - b2);
    p.addcdiv_(m, (v.sqrt() / sqrt(c2)).add_(eps), -lr / c1).
    """

    def __init__(self, model: nn.Module, lr=1e-3, betas=(0.9, 0.999), eps=1e-4):
        self.packed = {id(m.weight): m for m in packed_layers(model)}
        super().__init__(model.parameters(), dict(lr=lr, betas=betas, eps=eps))

    def zero_grad(self, set_to_none: bool = True):
        super().zero_grad(set_to_none)
        for m in self.packed.values():
            m.grad_bits = None

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, (b1, b2), eps = group["lr"], group["betas"], group["eps"]
            for p in group["params"]:
                owner = self.packed.get(id(p))
                if owner is not None:
                    if owner.grad_bits is None:
                        continue
                    g = unpack_signs(owner.grad_bits, p.shape, p.dtype)  # sign(dW), scaled by sqrt(n)
                    eps_p = eps * math.sqrt(p.numel())  # ... so eps is too: the update of sign(dW)/sqrt(n)
                elif p.grad is not None:
                    g, eps_p = p.grad, eps
                else:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = (v.sqrt() / math.sqrt(1 - b2 ** t)).add_(eps_p)
                p.addcdiv_(m, denom, value=-lr / (1 - b1 ** t))
                del g, denom


class ProposedTrainer:
    """One proposed-strategy step: forward, loss, backward, SignAdam, clip binary layers' latent weights."""

    data_dtype = torch.float16

    def __init__(self, model: nn.Module):
        self.model = model.half()
        self.opt = SignAdam(model)
        self.latent = [m.weight for m in packed_layers(model) if m.binary]

    def zero_grad(self):
        self.opt.zero_grad(set_to_none=True)

    def step(self, x, y, marks=lambda event: None):
        loss = F.cross_entropy(self.model(x).float(), y)
        marks("forward_end")
        loss.backward()
        marks("backward_end")
        self.opt.step()
        with torch.no_grad():
            for w in self.latent:
                w.clamp_(-1, 1)
        return loss.detach()

    def persistent_bytes(self) -> int:
        """Parameters, batchnorm buffers and Adam's tensors, from their shapes."""
        state = [t for s in self.opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
        return sum(t.numel() * t.element_size() for t in
                   [*self.model.parameters(), *self.model.buffers(), *state])
