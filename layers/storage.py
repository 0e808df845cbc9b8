"""What every layer stores during a training step, in which role and shape, and when.

This is METHOD 4's list of variables without number formats (a strategy gives
those, in `costmodel`). Shapes are per sample when `batched` (the batch axis B
goes in front); otherwise they are whole. Lifetimes are event names of
`layers.timeline`; alloc and free are both inclusive.

Choices the docstrings of METHOD leave open, made here:
- binary layers have no bias (batchnorm follows them); a full-precision
  dense/conv2d with `bias: true` keeps its bias (N values) as a second
  parameter of the layer, in the roles of its kernel: `<layer>.bias`
  (latent_weight), `<layer>.bias_grad` (weight_grad: under weight_grad `sign`
  it is kept as its sign, like dW), `<layer>.bias_adam_m`/`bias_adam_v` or
  `bias_momentum` (optimizer_state); it saves nothing (db is the sum of dY);
- batchnorm keeps `params` (gamma and beta for l2, beta for l1) and
  `running_stats` (mean, spread) for good, `batch_stats` (mean, spread) and
  its saved output until its backward or the step's end, `param_grad` from its
  backward to the update; l1 also saves `norm_scale`, the per-channel mean of
  abs(normalised output) that its backward multiplies the saved sign by;
- prelu keeps its slopes (one per channel, or one if `shared`) as `params` in the `bn_param` role
  and their gradient `param_grad` likewise, with the optimizer state of a
  batchnorm's parameters: like beta they are per-channel real values with a
  full gradient (a 1-bit sign gradient is for kernels, METHOD 3.1 step 4). Its
  backward needs x itself (da = sum dy x over x <= 0; dx = dy where x > 0, else
  a dy), so it saves its input as a real value in the `real_input` format
  whatever arrives (float16 under proposed); a sign of x would not do;
- dropout saves its keep mask (`mask`, role `dropout_mask`, one per input
  element) from its forward, like the other masks: 1 bit when the strategy
  holds it as bool, since it is 0/1 by construction; the 1/(1 - rate) scale is
  a constant, not stored. On a tensor that needs no gradient (the data batch)
  no backward reads it: it lives during the dropout's forward only;
- Adam keeps m and v, SGD one momentum, Bop one momentum per binary weight
  (Bop trains binary weights with no latent copy, so a binary layer's weight is
  held as its sign, 1 bit; batchnorm and full-precision layers use Adam, as
  Helwegen et al. 2019 do);
- forward outputs: every layer's output (role `activation`) lives from its
  forward to the forward of its last consumer; a flatten's output is its
  input reshaped, and softmax_ce's output is the loss, so neither has one.
  An output is held in the `real_input` format, or, when its values are +1/-1
  by construction (a sign's, a max-pool's of such a tensor: graph
  `Tensor.binary`), in the `binary_input` format (METHOD 4.2);
- activation gradients: one buffer per tensor that needs a gradient, written
  by the backward of the layer that consumes the tensor and read by the
  backward of the layer that produced it. A flatten reuses its input's buffer;
  a residual join passes its gradient by reference to both branches and an
  identity shortcut accumulates into it in place, so a chain of identity blocks
  shares one residual-stream gradient buffer.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from bnncost.layers.graph import Graph, Node, Shape
from bnncost.layers.timeline import step_events


@dataclass(frozen=True)
class Stored:
    name: str
    layer: str
    role: str
    shape: Shape  # per sample if batched, else whole
    batched: bool
    alloc: str
    free: str
    fixed_format: str | None = None  # overrides the strategy's format for this role
    format_role: str | None = None  # held in this role's format (default: its own role's)

    def format_in(self, format_of) -> str:
        """Its format under a strategy's `format_of(role)`."""
        return self.fixed_format or format_of(self.format_role or self.role)


def stored_variables(graph: Graph, *, batchnorm: str, optimizer: str, retention: str) -> list[Stored]:
    """Every variable of one training step except workspace (see layers.scratch)."""
    if retention not in ("step", "backward"):
        raise ValueError(f"retention must be 'step' or 'backward', not {retention!r}")
    out: list[Stored] = []

    def saved_free(node: Node) -> str:
        return "step_end" if retention == "step" else f"backward:{node.name}"

    def persistent(name, layer, role, shape, fixed=None):
        out.append(Stored(name, layer, role, tuple(shape), False, "step_start", "step_end", fixed))

    def saved(node, suffix, role, shape, batched=True):
        out.append(Stored(f"{node.name}.{suffix}", node.name, role, tuple(shape), batched,
                          f"forward:{node.name}", saved_free(node)))

    def grad(node, suffix, role, shape):
        out.append(Stored(f"{node.name}.{suffix}", node.name, role, tuple(shape), False,
                          f"backward:{node.name}", "update"))

    def optimizer_state(node, shape, binary, prefix=""):
        if optimizer == "sgd" or (optimizer == "bop" and binary):
            persistent(f"{node.name}.{prefix}momentum", node.name, "optimizer_state", shape)
        else:  # adam, and bop's real-valued parameters
            persistent(f"{node.name}.{prefix}adam_m", node.name, "optimizer_state", shape)
            persistent(f"{node.name}.{prefix}adam_v", node.name, "optimizer_state", shape)

    data_free = "step_end"
    first_users = [n for n in graph.nodes if n.first]
    if retention == "backward":
        if first_users:  # freed right after the last backward that reads it
            events = step_events(graph)
            data_free = max((f"backward:{n.name}" for n in first_users), key=events.index)
        else:  # nobody keeps the data for backward: gone after its first consumer
            consumer = next(n for n in graph.nodes if 0 in n.inputs)
            data_free = f"forward:{consumer.name}"
    data_layer = first_users[0].name if first_users else graph.nodes[0].name
    out.append(Stored("data", data_layer, "input", graph.model.input, True, "step_start", data_free))

    for node in graph.nodes:
        k = node.kind
        if k in ("dense", "conv2d"):
            bop_binary = optimizer == "bop" and node.binary
            persistent(f"{node.name}.weight", node.name, "latent_weight", node.weight_shape,
                       "bool" if bop_binary else None)
            optimizer_state(node, node.weight_shape, node.binary)
            if not node.first:
                saved(node, "input", "binary_input" if node.binary else "real_input", node.in_shape)
            grad(node, "weight_grad", "weight_grad", node.weight_shape)
            if node.bias:
                persistent(f"{node.name}.bias", node.name, "latent_weight", (node.units,))
                optimizer_state(node, (node.units,), False, "bias_")
                grad(node, "bias_grad", "weight_grad", (node.units,))
        elif k == "batchnorm":
            c = node.channels
            p = 2 if batchnorm == "l2" else 1
            persistent(f"{node.name}.params", node.name, "bn_param", (p, c))
            persistent(f"{node.name}.running_stats", node.name, "bn_param", (2, c))
            optimizer_state(node, (p, c), False)
            saved(node, "batch_stats", "bn_param", (2, c), batched=False)
            saved(node, "norm_output", "norm_output", node.in_shape)
            if batchnorm == "l1":
                saved(node, "norm_scale", "bn_param", (c,), batched=False)
            grad(node, "param_grad", "bn_param", (p, c))
        elif k == "prelu":
            c = node.parameters()  # one slope per channel, or one shared by all
            persistent(f"{node.name}.params", node.name, "bn_param", (c,))
            optimizer_state(node, (c,), False)
            saved(node, "input", "real_input", node.in_shape)
            grad(node, "param_grad", "bn_param", (c,))
        elif k in ("sign", "relu"):
            saved(node, "mask", "activation_mask", node.in_shape)
        elif k == "maxpool":
            saved(node, "mask", "pool_mask", node.in_shape)
        elif k == "dropout":
            saved(node, "mask", "dropout_mask", node.in_shape)
            if not graph.tensors[node.inputs[0]].requires_grad:  # no backward reads it: made and used
                out[-1] = replace(out[-1], free=f"forward:{node.name}")  # within the forward only
        elif k == "softmax_ce":
            saved(node, "probs", "softmax_output", node.out_shape)
    out.extend(forward_outputs(graph))
    out.extend(gradient_buffers(graph))
    return out


def forward_outputs(graph: Graph) -> list[Stored]:
    """The activation each layer hands on, alive until the forward of its last consumer."""
    base = {t.id: (t.alias_of if t.alias_of is not None else t.id) for t in graph.tensors}
    last: dict[int, str] = {}
    for node in graph.nodes:
        for i in node.inputs:
            last[base[i]] = f"forward:{node.name}"
    return [
        Stored(f"{node.name}.output", node.name, "activation", node.out_shape, True, f"forward:{node.name}",
               last.get(node.output, f"forward:{node.name}"),
               format_role=activation_format_role(graph, node.output))
        for node in graph.nodes
        if node.kind not in ("flatten", "softmax_ce")
    ]


def activation_format_role(graph: Graph, tensor: int) -> str:
    """The role whose format holds a forward tensor: the data's, a binary tensor's, or a real one's."""
    t = graph.tensors[tensor]
    if t.is_data:
        return "input"
    return "binary_input" if t.binary else "real_input"


def gradient_buffer_names(graph: Graph, in_place: frozenset[str] = frozenset()) -> dict[int, str]:
    """Tensor id -> the name of the gradient buffer it shares, for every tensor that needs a gradient.

    Tensors share a buffer when a flatten aliases one to the other or a
    residual join passes its gradient on by reference, and, for the layers
    named in `in_place` (an engine's choice; elementwise layers only), when a
    layer writes its input's gradient over its output's. The buffer is named
    after the earliest-produced member, `<layer>.output_grad`.
    """
    parent = list(range(len(graph.tensors)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(a: int, b: int) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    for t in graph.tensors:
        if t.alias_of is not None:
            union(t.id, t.alias_of)
    for node in graph.nodes:
        if node.kind == "add":
            for i in node.inputs:
                union(node.output, i)
        elif node.name in in_place:
            if tuple(node.in_shape) != tuple(node.out_shape):
                raise ValueError(f"{node.name} ({node.kind}) changes the shape: its gradient cannot be in place")
            union(node.output, node.inputs[0])
    first_member: dict[int, int] = {}  # class root -> lowest tensor id with a producer
    for t in graph.tensors:
        if t.producer is not None:
            first_member.setdefault(find(t.id), t.id)
    return {
        t.id: f"{graph.tensors[first_member[find(t.id)]].producer}.output_grad"
        for t in graph.tensors
        if t.requires_grad and find(t.id) in first_member
    }


def gradient_buffers(graph: Graph, in_place: frozenset[str] = frozenset()) -> list[Stored]:
    """Activation-gradient buffers: written by a consumer's backward, read by the producer's."""
    events = step_events(graph)
    buffer_of = gradient_buffer_names(graph, in_place)
    writers: dict[str, list[int]] = {}
    readers: dict[str, list[int]] = {}
    for node in graph.nodes:
        if node.kind in ("add", "flatten"):
            continue  # pass gradients by reference
        at = events.index(f"backward:{node.name}")
        for i in node.inputs:
            if i in buffer_of:
                writers.setdefault(buffer_of[i], []).append(at)
        if node.kind != "softmax_ce" and node.output in buffer_of:
            readers.setdefault(buffer_of[node.output], []).append(at)
    out = []
    for name, wrote in writers.items():
        layer = name.rsplit(".", 1)[0]
        producer = graph.by_name[layer]
        out.append(Stored(name, layer, "activation_grad", tuple(producer.out_shape), True,
                          events[min(wrote)], events[max(readers.get(name, wrote))]))
    return out
