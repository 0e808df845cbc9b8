"""A layer's own terms: shapes and events named relative to a layer, for rules written once per layer kind.

An engine (costmodel.engine) says things like "every binary conv2d keeps a
weight-shaped copy from its forward until its backward". This module turns
such words into a concrete shape and event for one node of a graph, without
knowing any number format (formats are the cost model's business).

Shapes (`SHAPES`): `input` and `output` are the layer's per-sample tensors
(batched: B in front); `weight` is its kernel and `lowered_input` its
input as im2col columns, positions x (kh*kw*Cin) (dense and conv2d only; a
grouped conv's K inputs per output times its groups);
`channels` is one value per input channel, `out_channels` one per output
channel; `sample` is one value per sample (e.g. a label).

Events (`EVENTS`): `forward` and `backward` are the layer's own; `step_start`,
`loss`, `update` and `step_end` are the step's; `saved` (as an end only) is
when the layer's saved tensors are freed under the retention (its own
backward under `backward`, the step's end under `step`).
"""

from __future__ import annotations

from bnncost.layers.graph import Graph, Node, Shape
from bnncost.layers.spec import LAYER_CLASSES, WEIGHTED_KINDS

# A residual contributes its inner layers and one `add` node (its join).
LAYER_KINDS: tuple[str, ...] = tuple(k for k in LAYER_CLASSES if k != "residual") + ("add",)
SHAPES: dict[str, str] = {
    "input": "the layer's input, per sample",
    "input_of_one_sample": "the layer's input for one sample, whatever the batch (a buffer reused sample by sample)",
    "output": "the layer's output, per sample",
    "input_of_one_group": "one channel group of the layer's input (its channels / groups), per sample (conv2d)",
    "output_of_one_group": "one channel group of the layer's output (its channels / groups), per sample (conv2d)",
    "weight": "the layer's kernel (dense and conv2d only)",
    "lowered_input": "the layer's input lowered to columns, per sample: output positions x inputs per output "
                     "x groups (im2col; dense and conv2d only)",
    "lowered_input_of_one_sample": "the lowered input of one sample, whatever the batch (columns a library "
                                   "reuses sample by sample; dense and conv2d only)",
    "channels": "one value per input channel",
    "out_channels": "one value per output channel",
    "sample": "one value per sample",
}
SHAPES_OF_WEIGHTED = ("weight", "lowered_input", "lowered_input_of_one_sample")
SHAPES_OF_GROUPED = ("input_of_one_group", "output_of_one_group")  # conv2d only
STEP_EVENTS = ("step_start", "loss", "update", "step_end")
EVENTS = ("forward", "backward", *STEP_EVENTS)
END_EVENTS = (*EVENTS, "saved")


def relative_shape(node: Node, word: str) -> tuple[Shape, bool]:
    """(shape, batched) of a shape word for this node; batched shapes are per sample."""
    if word == "input":
        return tuple(node.in_shape), True
    if word == "input_of_one_sample":
        return tuple(node.in_shape), False
    if word == "output":
        return tuple(node.out_shape), True
    if word in ("input_of_one_group", "output_of_one_group"):
        if node.kind != "conv2d":
            raise ValueError(f"{node.name} ({node.kind}) has no channel groups")
        shape = node.in_shape if word == "input_of_one_group" else node.out_shape
        return (*shape[:-1], shape[-1] // node.groups), True
    if word == "weight":
        if node.kind not in WEIGHTED_KINDS:
            raise ValueError(f"{node.name} ({node.kind}) has no weight")
        return tuple(node.weight_shape), False
    if word in ("lowered_input", "lowered_input_of_one_sample"):
        if node.kind not in WEIGHTED_KINDS:
            raise ValueError(f"{node.name} ({node.kind}) lowers no input")
        # every group's patch: kh*kw*Cin a position
        return (node.positions, node.fan_in * node.groups), word == "lowered_input"
    if word == "channels":
        return (node.in_shape[-1],), False
    if word == "out_channels":
        return (node.out_shape[-1],), False
    if word == "sample":
        return (1,), True
    raise ValueError(f"unknown shape word {word!r}; shapes: {', '.join(SHAPES)}")


def relative_event(node: Node, word: str, retention: str) -> str:
    """The step event a word names for this node."""
    if word in ("forward", "backward"):
        return f"{word}:{node.name}"
    if word == "saved":
        return "step_end" if retention == "step" else f"backward:{node.name}"
    if word in STEP_EVENTS:
        return word
    raise ValueError(f"unknown event word {word!r}; events: {', '.join(END_EVENTS)}")


def is_pointwise(node: Node) -> bool:
    """A conv2d with a 1x1 kernel, stride 1 and one group: a plain matrix product per position."""
    return node.kind == "conv2d" and node.window == (1, 1) and node.strides == (1, 1) and node.groups == 1


def is_depthwise(node: Node) -> bool:
    """A conv2d with one group per input channel."""
    return node.kind == "conv2d" and node.groups > 1 and node.groups == node.in_shape[-1]


def is_grouped(node: Node) -> bool:
    """A conv2d with more than one group but fewer groups than input channels (grouped, not depthwise)."""
    return node.kind == "conv2d" and 1 < node.groups < node.in_shape[-1]


def readers_of(graph: Graph, tensor: int) -> list[Node]:
    """The layers that read a tensor, in forward order."""
    return [n for n in graph.nodes if tensor in n.inputs]


def joins_forked_gradient(graph: Graph, node: Node) -> bool:
    """Its input is read by other layers too (a residual fork), and its backward runs after another reader's has
    delivered that input's gradient: its dX is a tensor of its own, added into the one already there. Backward
    runs in reverse forward order, so the reader that comes last in the forward delivers first."""
    readers = readers_of(graph, node.inputs[0])
    return len(readers) > 1 and readers[-1] is not node


def sole_reader(graph: Graph, node: Node) -> Node | None:
    """The layer that alone reads this layer's output (None if none or several do)."""
    readers = readers_of(graph, node.output)
    return readers[0] if len(readers) == 1 else None


def matching_nodes(graph: Graph, kinds: tuple[str, ...], binary: bool | None = None, first: bool | None = None,
                   needs_input_grad: bool | None = None, pointwise: bool | None = None,
                   spatial: bool | None = None, follows: str | None = None,
                   bias: bool | None = None, min_in_channels: int | None = None, max_in_channels: int | None = None,
                   same_channels: bool | None = None, padded: bool | None = None, strided: bool | None = None,
                   grouped: bool | None = None, one_group: bool | None = None,
                   joins_a_gradient: bool | None = None) -> list[Node]:
    """The nodes of these kinds that pass the optional conditions, in forward order.

    `spatial`: the layer's input is a feature map (height, width, channels),
    not a vector. `follows`: the layer's input is the output of a layer of that
    kind and no other layer reads it (two ops a graph optimiser can fuse).
    `min_in_channels` / `max_in_channels`: bounds on its input's channels; `same_channels`:
    as many output channels as input channels; `padded`: a conv or pool whose
    window is padded at the border ('same' padding of a window larger than 1); `strided`: a conv or pool
    with a stride above 1; `grouped`: a conv with
    more than one group and fewer groups than input channels (not depthwise); `one_group`: a conv with one
    group (neither grouped nor depthwise); `joins_a_gradient`: see
    joins_forked_gradient().
    """
    by_name = {n.name: n for n in graph.nodes}
    out = []
    for node in graph.nodes:
        if follows is not None:
            producer = by_name.get(graph.tensors[node.inputs[0]].producer)
            if (len(node.inputs) != 1 or producer is None or producer.kind != follows
                    or sole_reader(graph, producer) is not node):
                continue
        if node.kind not in kinds:
            continue
        if binary is not None and node.binary != binary:
            continue
        if first is not None and node.first != first:
            continue
        if needs_input_grad is not None and graph.tensors[node.inputs[0]].requires_grad != needs_input_grad:
            continue
        if pointwise is not None and is_pointwise(node) != pointwise:
            continue
        if spatial is not None and (len(node.in_shape) == 3) != spatial:
            continue
        if bias is not None and node.bias != bias:
            continue
        if min_in_channels is not None and node.in_shape[-1] < min_in_channels:
            continue
        if max_in_channels is not None and node.in_shape[-1] > max_in_channels:
            continue
        if same_channels is not None and (node.in_shape[-1] == node.out_shape[-1]) != same_channels:
            continue
        if padded is not None and any(node.padding) != padded:
            continue
        if strided is not None and (node.strides != (1, 1)) != strided:
            continue
        if grouped is not None and is_grouped(node) != grouped:
            continue
        if one_group is not None and (node.kind == "conv2d" and node.groups == 1) != one_group:
            continue
        if joins_a_gradient is not None and joins_forked_gradient(graph, node) != joins_a_gradient:
            continue
        out.append(node)
    return out


def parameter_tensors(graph: Graph, batchnorm: str, optimizer: str) -> list[tuple[str, str, Shape, str]]:
    """(layer, name, shape, optimizer) of every trainable tensor, one tensor each, with what updates it.

    A kernel is one tensor, and a full-precision layer's bias another; batchnorm's parameters are one tensor per kind of
    parameter (gamma and beta for l2, beta alone for l1), one value per channel;
    a prelu's slopes are one tensor, one value per channel (or one in all).
    Bop updates binary kernels only; the other tensors of a Bop strategy use
    Adam (as layers.storage keeps their state).
    """
    out = []
    for node in graph.nodes:
        if node.kind in WEIGHTED_KINDS:
            by = "adam" if optimizer == "bop" and not node.binary else optimizer
            out.append((node.name, "weight", tuple(node.weight_shape), by))
            if node.bias:
                out.append((node.name, "bias", (node.units,), by))
        elif node.kind == "batchnorm":
            by = "adam" if optimizer == "bop" else optimizer
            names = ("gamma", "beta") if batchnorm == "l2" else ("beta",)
            out.extend((node.name, p, (node.channels,), by) for p in names)
        elif node.kind == "prelu":
            out.append((node.name, "slope", (node.parameters(),), "adam" if optimizer == "bop" else optimizer))
    return out
