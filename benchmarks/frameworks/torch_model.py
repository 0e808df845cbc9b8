"""Any bnncost model as a PyTorch module, trained the way a PyTorch user writes BNN training.

`build_torch_model(graph, strategy)` walks the model's layers (zoo or user
YAML, residual blocks included) and makes one nn.Module per layer:

standard (Courbariaux & Bengio 2016, as PyTorch users write BinaryNet):
- binary dense / conv2d: nn.Linear / nn.Conv2d without bias whose forward
  multiplies by `SignSTE.apply(self.weight)` (a float32 sign(W) tensor);
  full-precision ones are plain nn.Linear / nn.Conv2d (no bias);
- sign: `SignSTE`, an autograd Function that saves its input x and passes
  the gradient where abs(x) <= 1 (`grad * (x.abs() <= 1)`);
- conv2d with `groups`: nn.Conv2d(groups=...); prelu: nn.PReLU(channels);
  dropout: nn.Dropout(rate); `bias: true` (full precision): the layer's bias;
- batchnorm: nn.BatchNorm1d / nn.BatchNorm2d; relu: nn.ReLU; maxpool /
  avgpool: nn.MaxPool2d / nn.AvgPool2d; global_avgpool: nn.AdaptiveAvgPool2d(1)
  then flatten (torchvision's ResNet); flatten: torch.flatten; residual:
  body(x) + shortcut(x); softmax_ce: F.cross_entropy on int64 targets;
- torch.optim.Adam (its CPU default, the single-tensor loop), then the latent
  weights of binary layers clamped to [-1, 1] in place.

proposed (Wang et al. 2021): torch_proposed.py, the same builder with
`ProposedLayers` (packed-bit autograd Functions, l1 batchnorm, float16
storage, 1-bit dW) and `ProposedTrainer` (SignAdam).

"same" padding: PyTorch users write symmetric padding k // 2 (torchvision);
where that gives the output shape bnncost infers, it is used, otherwise the
input is padded explicitly (F.pad) as TensorFlow's asymmetric "same" does.
Layout is NCHW; the element counts, and so the bytes, are bnncost's HWC ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bnncost.layers.graph import Graph
from bnncost.layers.spec import (
    AvgPool, BatchNorm, Conv2D, Dense, Dropout, Flatten, GlobalAvgPool, MaxPool, PReLU, ReLU, Residual, Sign, SoftmaxCE,
)


class SignSTE(torch.autograd.Function):
    """sign(x) forward; straight-through gradient where abs(x) <= 1 (BinaryNet's hardtanh STE)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sign(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1)


class BinaryLinear(nn.Linear):
    def forward(self, x):
        return F.linear(x, SignSTE.apply(self.weight))


class BinaryConv2d(nn.Conv2d):
    def forward(self, x):
        return self._conv_forward(x, SignSTE.apply(self.weight), None)


class SignLayer(nn.Module):
    def forward(self, x):
        return SignSTE.apply(x)


class Flat(nn.Module):
    def forward(self, x):
        return torch.flatten(x, 1)


class Pad(nn.Module):
    """Explicit (left, right, top, bottom) zero padding, for an asymmetric "same"."""

    def __init__(self, pad: tuple[int, int, int, int]):
        super().__init__()
        self.pad = pad

    def forward(self, x):
        return F.pad(x, self.pad)


class ResidualBlock(nn.Module):
    def __init__(self, body: nn.Sequential, shortcut: nn.Sequential | None):
        super().__init__()
        self.body, self.shortcut = body, shortcut

    def forward(self, x):
        return self.body(x) + (self.shortcut(x) if self.shortcut is not None else x)


class Loss(nn.Module):
    """softmax_ce: the logits' cross-entropy with int64 class targets (log_softmax + nll_loss)."""

    def forward(self, x, target):
        return F.cross_entropy(x, target)


def _padding(node):
    """(symmetric padding for the conv/pool, or an explicit Pad module) giving bnncost's output shape."""
    if node.spec.padding == "valid":
        return 0, None
    h, w = node.in_shape[0], node.in_shape[1]
    ho, wo = node.out_shape[0], node.out_shape[1]
    (kh, kw), (sh, sw) = node.window, node.strides
    p = (kh // 2, kw // 2)
    if (h + 2 * p[0] - kh) // sh + 1 == ho and (w + 2 * p[1] - kw) // sw + 1 == wo:
        return p, None
    top, bottom, left, right = node.padding
    return 0, Pad((left, right, top, bottom))


class _Builder:
    def __init__(self, graph: Graph, layers: "Layers"):
        self.graph, self.L = graph, layers

    def seq(self, specs) -> nn.Sequential:
        mods: list[nn.Module] = []
        for spec in specs:
            made = self.one(spec)
            for m in made:
                m.bnncost_layer = spec.name  # which bnncost layer this module is (for attribution)
            mods.extend(made)
        return nn.Sequential(*mods)

    def one(self, spec) -> list[nn.Module]:
        made = self._one(spec)
        if getattr(spec, "bias", False):  # a full-precision layer's own bias (nn.Linear / nn.Conv2d use it)
            layer = next(m for m in made if isinstance(m, (nn.Linear, nn.Conv2d)))
            fan_in = layer.weight[0].numel()  # PyTorch's default init: uniform in +-1/sqrt(fan_in)
            layer.bias = nn.Parameter(torch.empty(layer.weight.shape[0]).uniform_(-fan_in ** -0.5, fan_in ** -0.5))
        return made

    def _one(self, spec) -> list[nn.Module]:
        L = self.L
        if isinstance(spec, Residual):
            short = self.seq(spec.shortcut) if spec.shortcut else None
            return [ResidualBlock(self.seq(spec.body), short)]
        node = self.graph.by_name[spec.name]
        if isinstance(spec, Conv2D) and spec.groups != 1:
            pad, pre = _padding(node)
            conv = L.grouped_conv(node.in_shape[-1], spec.filters, node.window, node.strides, pad, spec.binary,
                                  spec.groups)
            return [pre, conv] if pre is not None else [conv]
        if isinstance(spec, PReLU):
            return [L.prelu(node.channels)]
        if isinstance(spec, Dropout):
            return [nn.Dropout(spec.rate)]
        if isinstance(spec, Dense):
            return [L.dense(node.fan_in, spec.units, spec.binary, first=node.first)]
        if isinstance(spec, Conv2D):
            pad, pre = _padding(node)
            conv = L.conv(node.in_shape[-1], spec.filters, node.window, node.strides, pad, spec.binary,
                          first=node.first)
            return [pre, conv] if pre is not None else [conv]
        if isinstance(spec, BatchNorm):
            return [L.batchnorm(node.channels, len(node.in_shape) == 3)]
        if isinstance(spec, Sign):
            return [L.sign()]
        if isinstance(spec, ReLU):
            return [nn.ReLU()]
        if isinstance(spec, (MaxPool, AvgPool)):
            pad, pre = _padding(node)
            pool = (nn.MaxPool2d if isinstance(spec, MaxPool) else nn.AvgPool2d)(node.window, node.strides, pad)
            return [pre, pool] if pre is not None else [pool]
        if isinstance(spec, GlobalAvgPool):
            return [nn.AdaptiveAvgPool2d(1), Flat()]
        if isinstance(spec, Flatten):
            return [Flat()]
        if isinstance(spec, SoftmaxCE):
            return []
        raise ValueError(f"no PyTorch layer for {spec.kind}")  # pragma: no cover


class Layers:
    """The standard strategy's modules."""

    def dense(self, fan_in, units, binary, first=False):
        return (BinaryLinear if binary else nn.Linear)(fan_in, units, bias=False)

    def conv(self, cin, cout, k, s, pad, binary, first=False):
        return (BinaryConv2d if binary else nn.Conv2d)(cin, cout, k, s, pad, bias=False)

    def grouped_conv(self, cin, cout, k, s, pad, binary, groups):
        """Grouped / depthwise conv (ReActNet, MobileNet-style BNNs): nn.Conv2d(groups=...)."""
        return (BinaryConv2d if binary else nn.Conv2d)(cin, cout, k, s, pad, bias=False, groups=groups)

    def prelu(self, c):
        """One slope per channel, as Bi-Real Net / ReActNet write it (nn.PReLU(num_parameters=C))."""
        return nn.PReLU(c)

    def batchnorm(self, c, spatial):
        return (nn.BatchNorm2d if spatial else nn.BatchNorm1d)(c)

    def sign(self):
        return SignLayer()


def build_torch_model(graph: Graph, layers: Layers | None = None) -> nn.Sequential:
    """The model's layers in order, without the loss (softmax_ce is `Loss`)."""
    return _Builder(graph, layers or Layers()).seq(graph.model.layers)


def input_shape(graph: Graph) -> tuple[int, ...]:
    """Per-sample input in PyTorch's layout: (C, H, W) for an image, (n,) for a vector."""
    shape = graph.model.input
    return (shape[2], shape[0], shape[1]) if len(shape) == 3 else tuple(shape)


def classes(graph: Graph) -> int:
    return graph.nodes[-1].in_shape[0]


def binary_weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, (BinaryLinear, BinaryConv2d))]


class StandardTrainer:
    """One BinaryNet training step: forward, loss, backward, Adam, clip latent weights (zero_grad before)."""

    data_dtype = torch.float32

    def __init__(self, model: nn.Module):
        self.model = model
        self.loss = Loss()
        self.opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        self.latent = binary_weights(model)

    def zero_grad(self):
        self.opt.zero_grad(set_to_none=True)

    def step(self, x, y, marks=lambda event: None):
        loss = self.loss(self.model(x), y)
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


def check_shapes(graph: Graph, model: nn.Module) -> None:
    """The module's output has the class count bnncost infers (catches a padding mismatch early)."""
    x = torch.zeros((1, *input_shape(graph)))
    model.eval()
    with torch.no_grad():
        out = model(x)
    model.train()
    if tuple(out.shape) != (1, classes(graph)):
        raise RuntimeError(f"PyTorch model output {tuple(out.shape)} != bnncost's {(1, classes(graph))}")

