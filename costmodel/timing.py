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

- `products`: numpy float32 products the trainer's matmul runs (trainer.kernels:
  one when a product runs whole, float32 operands and result and nothing to
  add to; else one per tile of layers.scratch.product_tiles). Each pays a
  call, slicing, and the decoding of its operand tiles, so a product cut into
  small tiles costs more per multiply-accumulate than one BLAS call;
- `blocks`: iterations of a linear operator's loops over blocks of its K
  weight rows and chunks of its rows (the workspace budget, layers.scratch,
  sets how many): a block of sign(W) filled, a chunk of the input lowered, of
  the dW operand expanded, of the column gradient folded back. A block of
  columns of a conv's dW operand or column gradient recomputes its patch
  indices, so `patch_indices` counts them once per block.

`products`, `blocks` and the extra patch indices are counted by replaying the
operator's loops at the batch (`linear_loops`): they are not affine in B (a
chunk is whole or not).

Per-call costs and format conversions are in the coefficients: an operator
under float16 roles pays numpy's float16 <-> float32 conversions per value, so
its `values` cost differs from float32's, and calibrate measures both. No
coefficient is fitted to a whole step: each is fitted to the times of single
operators on calibration networks (nn-Meter's approach, MobiSys 2021).

The step's own work, outside every layer (`step_operators`), is three more
operators, each timed from the trainer's events:

- `step.start` (event step_start): the batch gathered from the data set into
  the `data` buffer (np.take), per `input_values` (the sample's values, per
  sample) and per call;
- `step.end` (events loss and step_end): the ledger's bookkeeping at the end
  of the step, a row written for every buffer still alive and every persistent
  one, per `tensors` (that count) and per call;
- `update.loop` (the update event less its tensors' rules): the optimizer's
  loop over the trainable tensors (dispatch to the rule, the ledger look-ups
  of weight, gradient and state), per `tensors` (trainable tensors).

Events: `forward` (forward:<layer>), `backward` (backward:<layer>: both
backward_dx and backward_dw), `update` (the optimizer's rule for the
layer's trainable tensor, and its loop) and `overhead` (step.start, step.end).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from bnncost.costmodel.formats import tensor_bytes
from bnncost.costmodel.strategy import Strategy
from bnncost.layers.graph import Graph, Node
from bnncost.layers.scratch import TILE_BYTES, UNTRACKED_WORKSPACE, product_calls, rows_held
from bnncost.layers.storage import stored_variables

EVENTS = ("forward", "backward", "update", "overhead")
MECHANISMS = ("gemm", "xnor_words", "input_values", "output_values", "weights", "values", "window_values",
              "channels", "rows", "patch_indices", "tensors", "products", "blocks")
LOOP_MECHANISMS = ("products", "blocks", "patch_indices")  # what linear_loops counts at a batch
DEFAULT_BUDGET = 65536  # the bundled trainer's workspace budget, bytes per operator (METHOD 4.1)
# the trainer's step events (trainer.timing) each step operator is timed by; `update.loop` is the update
# event less the time of its tensors' rules
STEP_EVENTS = {"step.start": ("step_start",), "step.end": ("loss", "step_end")}

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
    loops: Callable[[int], dict[str, int]] | None = field(default=None, compare=False)  # batch -> LOOP_MECHANISMS

    @property
    def key(self) -> str:
        return f"{self.operator} [{self.formats}]"

    @property
    def mechanisms(self) -> set[str]:
        return set(self.units) | (set(LOOP_MECHANISMS) if self.loops is not None else set())

    def at(self, mechanism: str, batch: float) -> float:
        """Units of a mechanism in one call at a batch: the affine part, plus the loops' counts."""
        const, per = self.units.get(mechanism, (0, 0))
        looped = self.loops(int(batch)).get(mechanism, 0) if self.loops is not None else 0
        return const + per * batch + looped


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


def operator_work(graph: Graph, strategy: Strategy, retention: str = "step",
                  workspace_budget: int = DEFAULT_BUDGET) -> list[OperatorWork]:
    """Every operator call of one training step, with its mechanisms' units (loops at this budget)."""
    out: list[OperatorWork] = []
    for node in graph.nodes:
        out.extend(_node_work(graph, node, strategy, workspace_budget))
    return out + step_operators(graph, strategy, retention)


def step_operators(graph: Graph, s: Strategy, retention: str = "step") -> list[OperatorWork]:
    """The step's own work outside the layers: the batch gather, the ledger's end of step, the optimizer loop."""
    at_end = sum(v.free == "step_end" for v in stored_variables(graph, batchnorm=s.batchnorm,
                                                                  optimizer=s.optimizer, retention=retention))
    tensors = sum(n.has_params + n.bias for n in graph.nodes)  # a bias is a tensor of its own
    return [OperatorWork("", "overhead", "step.start", f"input={s.format_of('input')}",
                         {"input_values": (0, _prod(graph.model.input))}),
            OperatorWork("", "overhead", "step.end", "", {"tensors": (at_end, 0)}),
            OperatorWork("", "update", "update.loop", f"optimizer={s.optimizer}", {"tensors": (tensors, 0)})]


def measured_seconds(work: OperatorWork, events_s: dict[str, float], updates_s: dict[str, float],
                     update_loop_s: float | None = None) -> float | None:
    """The time the trainer's timer (trainer.timing: median seconds per event, per tensor's update, and of
    the update's loop: per step, the update event less its tensors' updates) gives one operator of
    `operator_work`; None when the step did not run it."""
    if work.operator == "update.loop":
        return update_loop_s if "update" in events_s else None
    if work.operator in STEP_EVENTS:
        parts = [events_s.get(e) for e in STEP_EVENTS[work.operator]]
        return None if None in parts else sum(parts)
    if work.event == "update":
        return updates_s.get(work.layer)
    return events_s.get(f"{work.event}:{work.layer}")


def event_of(trainer_event: str) -> str | None:
    """The time model's event (EVENTS) a trainer event's time belongs to (update.loop's share is in update)."""
    head = trainer_event.split(":", 1)[0]
    if head in ("forward", "backward", "update"):
        return head
    return "overhead" if any(trainer_event in evs for evs in STEP_EVENTS.values()) else None


def _node_work(graph: Graph, node: Node, s: Strategy, budget: int = DEFAULT_BUDGET) -> list[OperatorWork]:
    kind, name = node.kind, node.name
    if kind == "flatten":
        return []  # a reshape: no code runs
    family = _FAMILY.get(kind, kind)
    needs_dx = graph.tensors[node.inputs[0]].requires_grad
    e, o = _prod(node.in_shape), _prod(node.out_shape)
    works: list[OperatorWork] = []

    def add(event: str, variant: str, units: dict[str, tuple[int, int]], suffix: str = "", loops=None) -> None:
        works.append(OperatorWork(name, event, f"{variant}.{event}{suffix}", _formats(s, family, event, node.binary),
                                  {k: v for k, v in units.items() if v != (0, 0)}, loops))

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
        outs = P * N * (2 if node.bias else 1)  # a bias: one more pass over the outputs (y += b; db = sum dY)
        dx = needs_dx and not node.first
        fwd_loops, bwd_loops = _loop_counters(node, s, dx, budget)
        if node.binary and not node.first:
            add("forward", variant, {"xnor_words": (0, P * N * xnor_words_per_patch(node)),
                                     "input_values": (0, P * K * G), "output_values": (0, P * N), "weights": (W, 0),
                                     "rows": (0, rows), "patch_indices": (0, P * taps)}, loops=fwd_loops)
        else:
            add("forward", variant, {"gemm": (0, P * N * K), "input_values": (0, P * K * G if conv else 0),
                                     "output_values": (0, outs), "weights": (W if node.binary else 0, 0),
                                     "rows": (0, rows), "patch_indices": (0, P * taps)}, loops=fwd_loops)
        passes = 2 if dx and conv else 1  # the dW operand lowered again; dX's column gradient folded back
        add("backward", variant, {"gemm": (0, P * N * K * (2 if dx else 1)),
                               "input_values": (0, P * K * G * passes),
                               "output_values": (0, outs), "weights": (W * (2 if dx and node.binary else 1), 0),
                               "rows": (0, rows * passes), "patch_indices": (0, P * taps * passes)},
            ".dx" if dx else "", loops=bwd_loops)
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
                                  {"values": (node.parameters(), 0)}))
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


# ------------------------------------------------------------------ the linear operators' loops


def _loop_counters(node: Node, s: Strategy, dx: bool, budget: int):
    """(forward, backward) functions batch -> loop counts of a dense/conv layer (cached per batch)."""
    cache: dict[int, tuple[dict, dict]] = {}

    def both(batch: int) -> tuple[dict, dict]:
        if batch not in cache:
            cache[batch] = linear_loops(node, s, dx, budget, batch)
        return cache[batch]

    return (lambda b: both(b)[0]), (lambda b: both(b)[1])


def linear_loops(node: Node, s: Strategy, dx: bool, budget: int, batch: int) -> tuple[dict, dict]:
    """Loop counts of a dense/conv layer's forward and backward at a batch: `products`, `blocks`, and the
    `patch_indices` recomputed beyond one pass per lowering or fold (affine units already count those).

    A replay of trainer.linear's loops without the numbers: the scratch buffers hold rows_held rows
    under the budget (layers.scratch), the weight-row buffers (sign_weight, weight_signs, dw_accum) cut
    K into blocks, the row buffers (lowered_input, dw_operand, col_grad) cut the R = B x P rows into
    chunks, and a buffer of K-value rows serving a block of k columns holds K / k times more rows.
    """
    budget = budget if budget > 0 else UNTRACKED_WORKSPACE
    K, P, G = node.fan_in, node.positions, node.groups
    N = node.group_units  # a grouped conv runs every loop once per group, on its N / G filters
    R = batch * P
    conv = node.kind == "conv2d"
    whole = G == 1  # a group's output and dW columns are a strided view: no product on them runs whole
    taps = node.window[0] * node.window[1] if conv else 0
    f32 = "float32"
    fwd = {m: 0 for m in LOOP_MECHANISMS}
    bwd = {m: 0 for m in LOOP_MECHANISMS}

    def held(total: int, fmt: str, width: int) -> int:
        return rows_held(total, tensor_bytes(fmt, (width,)), budget)

    def blocks_of(total: int, step: int) -> list[int]:
        return [min(step, total - a) for a in range(0, total, step)]

    def times_signs(m: int, af: str, wf: str, of: str, kbs: list[int], filled: bool) -> None:
        """trainer.linear.Linear._times_signs: out (m, N) <- a (m, K) @ sign(W), W in blocks of rows."""
        if filled:
            fwd["products"] += product_calls(m, K, N, whole and af == wf == of == f32)
        elif of == f32:
            for i, kb in enumerate(kbs):
                fwd["blocks"] += 1
                fwd["products"] += product_calls(m, kb, N, whole and i == 0 and af == wf == f32)
        else:
            for t in blocks_of(m, max(1, TILE_BYTES // (4 * N))):
                for kb in kbs:
                    fwd["blocks"] += 1
                    fwd["products"] += product_calls(t, kb, N, False)

    g = s.format_of("activation_grad")
    # forward
    if node.binary and not node.first:  # XNOR-popcount in chunks of the xnor scratch
        patch = (*node.window, node.group_channels) if conv else (K,)
        fwd["blocks"] += len(blocks_of(R, rows_held(R, tensor_bytes("bool", (N, *patch)), budget)))
    else:
        in_fmt = s.format_of("input" if node.first else "real_input")
        of = s.format_of("real_input")
        if node.binary:
            wf = in_fmt  # sign_weight holds sign(W) in the input's format
            kbs = blocks_of(K, held(K, wf, N))
        else:
            wf, kbs = s.format_of("latent_weight"), [K]
        filled = len(kbs) == 1
        fwd["blocks"] += int(filled and node.binary)
        if not conv:
            times_signs(R, in_fmt, wf, of, kbs, filled)
        else:
            for r in blocks_of(R, held(R, in_fmt, K)):
                fwd["blocks"] += 1  # a chunk lowered
                times_signs(r, in_fmt, wf, of, kbs, filled)
    # backward: dW
    op_fmt = g  # dw_operand holds the saved input in the gradient's format
    op_rows = held(R, op_fmt, K)
    if s.format_of("weight_grad") == "bool":  # the real dW block by block in dw_accum, its sign packed
        af = g
        kbs = blocks_of(K, held(K, af, N))
    else:
        af, kbs = s.format_of("weight_grad"), [K]
    gf = g
    acc_whole = whole or s.format_of("weight_grad") == "bool"  # dw_accum holds the group's rows whole
    if op_rows >= R:  # the operand expanded once, one product per block of dW
        bwd["blocks"] += 1
        for kb in kbs:
            bwd["products"] += product_calls(kb, R, N, acc_whole and op_fmt == gf == af == f32)
    else:
        if gf != f32 and R * node.units * 4 <= TILE_BYTES // 4:
            gf = f32  # dY decoded once
        passes = 0
        for kb in kbs:
            widths = [kb] if af == f32 else blocks_of(kb, max(1, TILE_BYTES // (4 * N)))
            for w in widths:
                passes += 1
                for i, r in enumerate(blocks_of(R, op_rows * K // w)):
                    bwd["blocks"] += 1
                    direct = acc_whole and af == f32 and i == 0 and op_fmt == gf == f32
                    bwd["products"] += product_calls(w, r, N, direct)
        bwd["patch_indices"] += (passes - 1) * R * taps  # every column block recomputes its patches
    # backward: dX
    if dx:
        if node.binary:
            wf = g  # weight_signs holds sign(W) in the gradient's format
            kbs = blocks_of(K, held(K, wf, N))
        else:
            wf, kbs = s.format_of("latent_weight"), [K]
        bwd["blocks"] += len(kbs) if node.binary else 0  # sign(W) filled once or per block
        if not conv:
            for kb in kbs:
                bwd["products"] += product_calls(R, N, kb, g == wf == f32 and kb == K)
        else:
            col_rows = held(R, g, K)
            for kb in kbs:
                for r in blocks_of(R, col_rows * K // kb):
                    bwd["blocks"] += 1  # a chunk of the column gradient computed and folded back
                    bwd["products"] += product_calls(r, N, kb, g == wf == f32)
            bwd["patch_indices"] += (len(kbs) - 1) * R * taps
    return {m: G * n for m, n in fwd.items()}, {m: G * n for m, n in bwd.items()}
