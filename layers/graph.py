"""Shape inference: a model flattened into nodes joined by tensors.

Every layer becomes one node in forward order; a residual contributes its body
nodes, then its shortcut nodes, then one `add` node bearing the residual's
name. Shapes here are per sample (the batch axis is implicit). Flatten is a
reshape: its output tensor aliases its input (no new buffer in either pass).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from bnncost.layers.model import MAX_TENSOR_ELEMENTS, Model, ModelError, load_model
from bnncost.layers.spec import (
    AvgPool, BatchNorm, Conv2D, Dense, Dropout, Flatten, GlobalAvgPool, MaxPool, PReLU, ReLU,
    Residual, Sign, SoftmaxCE, pair,
)

Shape = tuple[int, ...]


@dataclass
class Tensor:
    id: int
    shape: Shape
    producer: str | None  # node name; None for the data batch
    is_data: bool = False  # the data batch or a reshape of it
    requires_grad: bool = False  # some parameter lies upstream
    alias_of: int | None = None  # flatten output: same buffer as this tensor
    binary: bool = False  # every value is +1 or -1 by construction (METHOD 4.2): a sign's output, or a
    # max-pool or flatten of such a tensor; held in the strategy's binary_input format


@dataclass
class Node:
    name: str
    kind: str  # layer kind, or "add" for a residual's join
    spec: object
    path: str  # "3" or "5.body.1": where the layer stands in the file
    inputs: tuple[int, ...]
    output: int
    in_shape: Shape
    out_shape: Shape
    # dense / conv2d only
    binary: bool = False
    fan_in: int = 0  # K: inputs per output (units in, or kh*kw*Cin/groups)
    units: int = 0  # N: outputs per position (units or filters)
    groups: int = 1  # conv2d: channel groups; each output sees the Cin/groups channels of its group
    bias: bool = False  # full-precision dense / conv2d: one learned bias per output channel (N values)
    positions: int = 1  # output positions per sample (Ho*Wo; 1 for dense)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, bottom, left, right
    first: bool = False  # its input is the data batch: it saves the data, computes no dX
    weight_shape: Shape = ()
    # conv2d / maxpool / avgpool only: window (rows, cols) and stride (rows, cols)
    window: tuple[int, int] = (1, 1)
    strides: tuple[int, int] = (1, 1)
    residual: str | None = None  # name of the enclosing residual block, if any

    @property
    def weights(self) -> int:
        return math.prod(self.weight_shape) if self.weight_shape else 0

    @property
    def channels(self) -> int:
        return self.in_shape[-1]

    def parameters(self, batchnorm: str = "l2") -> int:
        """Its trainable values: a kernel (and its bias); gamma and beta (l2) or beta (l1) per channel; a prelu's
        slopes (one per channel, or one shared)."""
        if self.kind in ("dense", "conv2d"):
            return self.weights + (self.units if self.bias else 0)
        if self.kind == "batchnorm":
            return (2 if batchnorm == "l2" else 1) * self.channels
        if self.kind == "prelu":
            return 1 if self.spec.shared else self.channels
        return 0

    @property
    def group_channels(self) -> int:
        """Input channels one output reads: Cin / groups (all of them for an ungrouped conv)."""
        return self.in_shape[-1] // self.groups

    @property
    def group_units(self) -> int:
        """Outputs per position of one group: N / groups."""
        return self.units // self.groups

    @property
    def has_params(self) -> bool:
        return self.kind in ("dense", "conv2d", "batchnorm", "prelu")


@dataclass
class Graph:
    model: Model
    nodes: list[Node]
    tensors: list[Tensor]
    by_name: dict[str, Node] = field(default_factory=dict)

    @property
    def output_shape(self) -> Shape:
        return self.nodes[-1].out_shape

    def parameter_count(self, batchnorm: str = "l2") -> int:
        """Trainable parameters: kernels, gamma and beta (l2) or beta (l1) per BN channel, a prelu's slopes."""
        return sum(n.parameters(batchnorm) for n in self.nodes)


MAX_WINDOW = 2**16  # a conv kernel or pool window; real ones are under 100


def _pool_out(h: int, size: int, stride: int, padding: str) -> int:
    return -(-h // stride) if padding == "same" else (h - size) // stride + 1


def _same_pad(h: int, size: int, stride: int) -> tuple[int, int]:
    out = -(-h // stride)
    total = max((out - 1) * stride + size - h, 0)
    return total // 2, total - total // 2


class _Builder:
    def __init__(self, model: Model):
        self.model = model
        self.nodes: list[Node] = []
        self.tensors: list[Tensor] = []

    def error(self, path: str, name: str, problem: str) -> ModelError:
        return ModelError(f"{self.model.source}: layer {path} ({name}): {problem}")

    def check_window(self, path: str, name: str, extent: tuple[int, int], window: tuple[int, int],
                     strides: tuple[int, int]) -> None:
        """A stride beyond the map it slides over, or a window far beyond any layer's, is a mistake in the file
        (and would overflow the trainer's 32-bit index arithmetic)."""
        for axis, n, k, st in zip(("rows", "columns"), extent, window, strides):
            if st > n:
                raise self.error(path, name, f"stride {st} is larger than the map's {n} {axis}")
            if k > MAX_WINDOW:
                raise self.error(path, name, f"a window of {k} {axis} is beyond any layer's (at most {MAX_WINDOW:,})")

    def new_tensor(self, shape: Shape, producer: str | None, **kw) -> int:
        self.tensors.append(Tensor(len(self.tensors), tuple(shape), producer, **kw))
        return len(self.tensors) - 1

    def run(self) -> Graph:
        x = self.new_tensor(self.model.input, None, is_data=True)
        x = self.chain(self.model.layers, x, "", None)
        last = self.nodes[-1]
        if last.kind != "softmax_ce":
            raise self.error(last.path, last.name, "the last layer must be softmax_ce (the loss)")
        for n in self.nodes[:-1]:
            if n.kind == "softmax_ce":
                raise self.error(n.path, n.name, "softmax_ce must be the last layer")
        graph = Graph(self.model, self.nodes, self.tensors)
        graph.by_name = {n.name: n for n in self.nodes}
        return graph

    def chain(self, layers, x: int, prefix: str, residual: str | None) -> int:
        for i, spec in enumerate(layers):
            x = self.layer(spec, x, f"{prefix}{i}", residual)
        return x

    def layer(self, spec, x: int, path: str, residual: str | None) -> int:
        t = self.tensors[x]
        shape, name = t.shape, spec.name
        if isinstance(spec, Residual):
            body = self.chain(spec.body, x, f"{path}.body.", spec.name)
            short = self.chain(spec.shortcut, x, f"{path}.shortcut.", spec.name) if spec.shortcut else x
            bs, ss = self.tensors[body].shape, self.tensors[short].shape
            if bs != ss:
                raise self.error(path, name, f"body output {list(bs)} differs from shortcut output {list(ss)}")
            return self.add_node(Node(name, "add", spec, path, (body, short), -1, bs, bs, residual=residual))
        node = Node(name, spec.kind, spec, path, (x,), -1, shape, shape, residual=residual)
        if isinstance(spec, (Dense, Conv2D)) and spec.bias:
            if spec.binary:
                raise self.error(path, name, "bias: a binary layer has no bias; batchnorm follows it "
                                             "(binary: false for a full-precision layer with a bias)")
            node.bias = True
        if isinstance(spec, Dense):
            if len(shape) != 1:
                raise self.error(path, name, f"dense needs a flat input, got {list(shape)} (add a flatten)")
            node.out_shape = (spec.units,)
            node.binary, node.fan_in, node.units = spec.binary, shape[0], spec.units
            node.weight_shape = (shape[0], spec.units)
        elif isinstance(spec, Conv2D):
            if len(shape) != 3:
                raise self.error(path, name, f"conv2d needs an [H, W, C] input, got {list(shape)}")
            h, w, c = shape
            (kh, kw), (sh, sw) = pair(spec.kernel), pair(spec.stride)
            g = spec.groups
            if c % g:
                raise self.error(path, name, f"groups: {g} does not divide the {c} input channels")
            if spec.filters % g:
                raise self.error(path, name, f"groups: {g} does not divide the {spec.filters} filters "
                                             "(filters must be a multiple of groups)")
            if spec.padding == "valid" and (h < kh or w < kw):
                raise self.error(path, name, f"{kh}x{kw} valid conv on a {h}x{w} map")
            self.check_window(path, name, (h, w), (kh, kw), (sh, sw))
            ho, wo = _pool_out(h, kh, sh, spec.padding), _pool_out(w, kw, sw, spec.padding)
            if spec.padding == "same":
                node.padding = (*_same_pad(h, kh, sh), *_same_pad(w, kw, sw))
            node.out_shape = (ho, wo, spec.filters)
            node.binary, node.fan_in, node.units, node.groups = spec.binary, kh * kw * (c // g), spec.filters, g
            node.positions = ho * wo
            node.weight_shape = (kh, kw, c // g, spec.filters)  # Keras' grouped layout: (kh, kw, Cin/groups, N)
            node.window, node.strides = (kh, kw), (sh, sw)
        elif isinstance(spec, (MaxPool, AvgPool)):
            if len(shape) != 3:
                raise self.error(path, name, f"{spec.kind} needs an [H, W, C] input, got {list(shape)}")
            h, w, c = shape
            (kh, kw), (sh, sw) = pair(spec.size), pair(spec.stride or spec.size)
            if spec.padding == "valid" and (h < kh or w < kw):
                raise self.error(path, name, f"{kh}x{kw} valid pool on a {h}x{w} map")
            self.check_window(path, name, (h, w), (kh, kw), (sh, sw))
            if spec.padding == "same":
                node.padding = (*_same_pad(h, kh, sh), *_same_pad(w, kw, sw))
            node.out_shape = (_pool_out(h, kh, sh, spec.padding), _pool_out(w, kw, sw, spec.padding), c)
            node.window, node.strides = (kh, kw), (sh, sw)
        elif isinstance(spec, GlobalAvgPool):
            if len(shape) != 3:
                raise self.error(path, name, f"global_avgpool needs an [H, W, C] input, got {list(shape)}")
            node.out_shape = (shape[2],)
        elif isinstance(spec, Flatten):
            node.out_shape = (math.prod(shape),)
            node.output = self.new_tensor(node.out_shape, name, is_data=t.is_data,
                                          requires_grad=t.requires_grad, alias_of=x, binary=t.binary)
            self.nodes.append(node)
            return node.output
        elif isinstance(spec, SoftmaxCE):
            if len(shape) != 1:
                raise self.error(path, name, f"softmax_ce needs a flat input of class scores, got {list(shape)}")
            if shape[0] < 2:
                raise self.error(path, name, "softmax_ce needs at least 2 classes")
        elif not isinstance(spec, (BatchNorm, Sign, ReLU, PReLU, Dropout)):  # pragma: no cover - exhaustive
            raise self.error(path, name, f"unsupported layer kind {spec.kind}")
        node.first = t.is_data and node.kind in ("dense", "conv2d")
        return self.add_node(node)

    def add_node(self, node: Node) -> int:
        for what, shape in (("output", node.out_shape), ("weight", node.weight_shape)):
            if math.prod(shape) > MAX_TENSOR_ELEMENTS:
                raise self.error(node.path, node.name, f"its {what} would hold {math.prod(shape):,} elements"
                                 f"{' per sample' if what == 'output' else ''}; bnncost counts tensors of up to "
                                 f"2^40 ({MAX_TENSOR_ELEMENTS:,}) elements, beyond any device")
        ins = [self.tensors[i] for i in node.inputs]
        requires = node.has_params or any(t.requires_grad for t in ins)
        binary = node.kind == "sign" or (node.kind == "maxpool" and ins[0].binary)
        node.output = self.new_tensor(node.out_shape, node.name, requires_grad=requires, binary=binary)
        self.nodes.append(node)
        return node.output


def build_graph(model: Model) -> Graph:
    """Infer every shape; raise ModelError naming the layer where one does not fit."""
    return _Builder(model).run()


def graph_of(model: "str | Model | Graph") -> Graph:
    """A zoo name, a YAML path, a Model or a Graph, as a Graph."""
    if isinstance(model, Graph):
        return model
    return build_graph(model if isinstance(model, Model) else load_model(model))
