"""Time of the bundled trainer's operators on a calibrated machine (METHOD 6.1), by mechanism.

A shipped board's time is a peak-rate lower bound (energy.py): counts over
peak rates. A machine measured by `bnncost calibrate` carries, besides its
sustained rates, a table of the bundled trainer's *operators*: for each
operator (a layer kind and variant, in one event of the step, under the
formats its roles are held in), the seconds it costs per call and per unit
of each mechanism it performs. An operator's time is

    fixed_s + sum over mechanisms of units x seconds per unit

and the step's time is the sum over its layers' events. The mechanisms are
the work the trainer's code does, counted from the layer's shapes:

- `gemm`: multiply-accumulates done as float32 matrix products (numpy has
  no BLAS for narrow formats, so every real x binary and real x real product
  is decoded to float32 tiles and multiplied there: METHOD 7);
- `xnor_words`: packed words XOR-ed, popcounted and summed. The trainer XORs
  a packed patch in the widest word (8, 4, 2 or 1 bytes) that divides the
  patch's bytes, so a patch of 98 bytes is 49 16-bit words, not 13 64-bit ones;
- `input_values`: values of a dense/conv input the operator converts or
  gathers (packing signs, lowering patches, expanding a saved input to a
  dW operand, folding a column gradient back onto the input);
- `output_values`: values of the output (or its gradient) converted and stored;
- `weights`: values of the kernel touched once per call (its signs expanded
  or packed, the sign of dW taken);
- `values`: elements an elementwise operator passes over (batchnorm, sign,
  relu, pooling, the residual join, the loss, an optimizer's update);
- `window_values`: pooling windows' elements (O x k x k);
- `channels`: per-channel work (batchnorm statistics);
- `rows`: rows numpy's inner loops run over: an elementwise operator that
  broadcasts per-channel vectors (batchnorm) walks (sample x position) rows of
  C values, a conv's lowered operand and output have a row per (sample,
  output position). Each row costs a loop iteration besides its values, so a
  layer of few channels on many positions costs more per value than a wide one;
- `patch_indices`: flat input indices a conv computes for its patches
  (rows x kh x kw, `trainer.kernels.Patches.rows`, once per pass that lowers
  the input or folds a column gradient back): int32 arithmetic and masks, then
  one gather or scatter per index of C values, so a stem of 3 channels pays
  them per 3 values, a 256-channel layer per 256.

Per-call costs and format conversions are in the coefficients: an operator
under float16 roles pays numpy's float16 <-> float32 conversions per value, so
its `values` cost differs from float32's, and calibrate measures both. No
coefficient is fitted to a whole step: each is fitted to the times of single
operators on calibration networks (nn-Meter's approach, MobiSys 2021).

Events: `forward` (forward:<layer>), `backward` (backward:<layer>: both
backward_dx and backward_dw) and `update` (the optimizer's rule for the
layer's trainable tensor).
"""

from __future__ import annotations

from dataclasses import dataclass

from bnncost.costmodel.strategy import Strategy
from bnncost.layers.graph import Graph, Node

EVENTS = ("forward", "backward", "update")
MECHANISMS = ("gemm", "xnor_words", "input_values", "output_values", "weights", "values", "window_values",
              "channels", "rows", "patch_indices")

# the roles whose formats change an operator's code path (and so its cost)
_ROLES = {
    ("linear", "forward"): ("input", "binary_input", "real_input", "latent_weight"),
    ("linear", "backward"): ("input", "binary_input", "real_input", "activation_grad", "weight_grad",
                             "latent_weight"),
    ("batchnorm", "forward"): ("real_input", "bn_param", "norm_output"),
    ("batchnorm", "backward"): ("real_input", "bn_param", "norm_output", "activation_grad"),
    ("gate", "forward"): ("real_input", "activation_mask"),
    ("gate", "backward"): ("activation_mask", "activation_grad"),
    ("prelu", "forward"): ("real_input", "bn_param"),
    ("prelu", "backward"): ("real_input", "bn_param", "activation_grad"),
    ("dropout", "forward"): ("real_input", "dropout_mask"),
    ("dropout", "backward"): ("dropout_mask", "activation_grad"),
    ("maxpool", "forward"): ("real_input", "pool_mask"),
    ("maxpool", "backward"): ("pool_mask", "activation_grad"),
    ("pool", "forward"): ("real_input",),
    ("pool", "backward"): ("activation_grad",),
    ("add", "forward"): ("real_input",),
    ("add", "backward"): ("activation_grad",),
    ("softmax_ce", "forward"): ("real_input", "softmax_output"),
    ("softmax_ce", "backward"): ("softmax_output", "activation_grad"),
}
_FAMILY = {"dense": "linear", "conv2d": "linear", "sign": "gate", "relu": "gate", "avgpool": "pool",
           "global_avgpool": "pool"}


@dataclass(frozen=True)
class OperatorWork:
    """One operator call of a step: which operator, and its mechanisms' units, affine in the batch."""

    layer: str
    event: str
    operator: str  # e.g. "conv2d.binary.backward.dx"
    formats: str  # e.g. "activation_grad=float16,binary_input=bool,..."
    units: dict[str, tuple[int, int]]  # mechanism -> (const, per_sample)

    @property
    def key(self) -> str:
        return f"{self.operator} [{self.formats}]"

    def at(self, mechanism: str, batch: float) -> float:
        const, per = self.units.get(mechanism, (0, 0))
        return const + per * batch


def _prod(shape) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


def xnor_words_per_patch(node: Node) -> int:
    """Words the trainer XORs per (output position, filter): the widest word dividing the packed patch."""
    if node.kind == "conv2d":
        k = node.weight_shape[0] * node.weight_shape[1]
        nbytes = k * -(-node.group_channels // 8)
    else:
        nbytes = -(-node.fan_in // 8)
    for size in (8, 4, 2):
        if nbytes % size == 0:
            return nbytes // size
    return nbytes


def _formats(strategy: Strategy, family: str, event: str, binary: bool = False) -> str:
    roles = _ROLES.get((family, event), ())
    parts = [f"{r}={strategy.format_of(r)}" for r in roles]
    if family == "batchnorm":
        parts.append(f"batchnorm={strategy.batchnorm}")
    if family == "linear" and event == "backward":
        parts.append(f"weight_grad_mode={strategy.weight_grad}")
    if family == "linear" and binary and strategy.optimizer == "bop":
        parts.append("kernel=bits")  # Bop holds a binary layer's kernel as its sign bits (layers.storage)
    return ",".join(sorted(parts))


def operator_work(graph: Graph, strategy: Strategy) -> list[OperatorWork]:
    """Every operator call of one training step, with its mechanisms' units."""
    out: list[OperatorWork] = []
    for node in graph.nodes:
        out.extend(_node_work(graph, node, strategy))
    return out


def _node_work(graph: Graph, node: Node, s: Strategy) -> list[OperatorWork]:
    kind, name = node.kind, node.name
    if kind == "flatten":
        return []  # a reshape: no code runs
    family = _FAMILY.get(kind, kind)
    needs_dx = graph.tensors[node.inputs[0]].requires_grad
    e, o = _prod(node.in_shape), _prod(node.out_shape)
    works: list[OperatorWork] = []

    def add(event: str, variant: str, units: dict[str, tuple[int, int]], suffix: str = "") -> None:
        works.append(OperatorWork(name, event, f"{variant}.{event}{suffix}", _formats(s, family, event, node.binary),
                                  {k: v for k, v in units.items() if v != (0, 0)}))

    if family == "linear":
        K, N, P = node.fan_in, node.units, node.positions
        W = K * N
        conv = kind == "conv2d"
        variant = f"{kind}.{'first' if node.first else 'binary' if node.binary else 'real'}"
        # a grouped conv lowers, indexes and multiplies group after group: its rows, patch indices and
        # lowered values are each group's, G times
        G = node.groups
        taps = node.window[0] * node.window[1] * G if conv else 0
        rows = P * G if conv else 0  # a dense layer's row is a sample: its per-sample cost is in its values
        if node.binary and not node.first:
            add("forward", variant, {"xnor_words": (0, P * N * xnor_words_per_patch(node)),
                                     "input_values": (0, P * K * G), "output_values": (0, P * N), "weights": (W, 0),
                                     "rows": (0, rows), "patch_indices": (0, P * taps)})
        else:
            add("forward", variant, {"gemm": (0, P * N * K), "input_values": (0, P * K * G if conv else 0),
                                     "output_values": (0, P * N), "weights": (W if node.binary else 0, 0),
                                     "rows": (0, rows), "patch_indices": (0, P * taps)})
        dx = needs_dx and not node.first
        passes = 2 if dx and conv else 1  # the dW operand lowered again; dX's column gradient folded back
        add("backward", variant, {"gemm": (0, P * N * K * (2 if dx else 1)),
                               "input_values": (0, P * K * G * passes),
                               "output_values": (0, P * N), "weights": (W * (2 if dx and node.binary else 1), 0),
                               "rows": (0, rows * passes), "patch_indices": (0, P * taps * passes)},
            ".dx" if dx else "")
        opt = s.optimizer if (s.optimizer != "bop" or node.binary) else "adam"
        upd = f"update.{opt}.{'binary' if node.binary else 'real'}"
        works.append(OperatorWork(name, "update", upd,
                                  _update_formats(s, "latent_weight", s.weight_grad),
                                  {"values": (W + (N if node.bias else 0), 0)}))  # a bias: N more values
        return works
    if kind == "batchnorm":
        C = node.channels
        rows = e // C  # (sample x position) rows of C values each
        add("forward", "batchnorm", {"values": (0, e), "channels": (C, 0), "rows": (0, rows)})
        add("backward", "batchnorm", {"values": (0, e), "channels": (C, 0), "rows": (0, rows)},
            ".dx" if needs_dx else "")
        n = C if s.batchnorm == "l1" else 2 * C
        opt = "adam" if s.optimizer == "bop" else s.optimizer
        works.append(OperatorWork(name, "update", f"update.{opt}.batchnorm", _update_formats(s, "bn_param", "full"),
                                  {"values": (n, 0)}))
        return works
    if kind == "prelu":  # batchnorm's shape of work: rows of C values, a per-channel vector broadcast
        C = node.channels
        add("forward", "prelu", {"values": (0, e), "rows": (0, e // C)})
        add("backward", "prelu", {"values": (0, e), "channels": (C, 0), "rows": (0, e // C)},
            ".dx" if needs_dx else "")
        opt = "adam" if s.optimizer == "bop" else s.optimizer
        works.append(OperatorWork(name, "update", f"update.{opt}.prelu", _update_formats(s, "bn_param", "full"),
                                  {"values": (C, 0)}))
        return works
    if kind in ("maxpool", "avgpool"):
        kk = node.window[0] * node.window[1]
        add("forward", kind, {"values": (0, e), "window_values": (0, o * kk)})
        if needs_dx:
            add("backward", kind, {"values": (0, e), "window_values": (0, o * kk)})
        return works
    units = {"values": (0, e if kind != "add" else o)}
    if kind == "global_avgpool":
        units["output_values"] = (0, o)
    add("forward", kind, units)
    if kind == "softmax_ce" or (needs_dx if kind != "add" else graph.tensors[node.output].requires_grad):
        add("backward", kind, units)
    return works


def _update_formats(s: Strategy, param_role: str, grad_mode: str) -> str:
    grad = s.format_of("weight_grad") if param_role == "latent_weight" else s.format_of("bn_param")
    return ",".join([f"grad={grad}", f"grad_mode={grad_mode}", f"optimizer_state={s.format_of('optimizer_state')}",
                     f"param={s.format_of(param_role)}"])
