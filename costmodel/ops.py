"""Arithmetic operations and bytes moved, per layer and phase (METHOD 5).

Every count is affine in the batch size: `const + per_sample x B`, so a
prediction at any batch, a sweep or a device fit reuses one listing.

THE COUNTING CONVENTION (the bundled trainer counts the same from the shapes
it processes; keep the two in step). Notation, per node: B batch; E = B x
elements of its input per sample; O = B x elements of its output; C channels
(last axis of the input); for dense/conv: K inputs per output (units in, or
kh*kw*Cin/G for a conv of G groups), N outputs per position, R = B x output
positions, M = R x N, W = K x N weights. A grouped conv's counts are its
groups' summed: each output still reads K inputs. Formats:
  fwd  = the `real_input` format: real forward arithmetic outside dense/conv;
  bn   = the `bn_param` format: batchnorm forward arithmetic;
  g    = the `activation_grad` format; acc = g, except po2 gradients are
         accumulated in float16 (acc = float16);
  opt  = the `optimizer_state` format: all update arithmetic;
  "gmul n" = n multiplications with a gradient operand: `mul` at acc, or, when
         g is po2, `shift` at po2 (a power-of-two code makes it a shift);
  "gmac n" = n multiply-accumulates with a gradient operand: `mac` at acc, or,
         when g is po2, n `shift` at po2 plus n `add` at acc.

dense / conv2d
  forward      binary, not first: xnor_popcount (bool) M x ceil(K/64) words,
               bit_mac (bool) M x K (informational, no energy)
               binary, first (real x binary): add at the `input` format M x K
               full precision: mac at its input's format (`input` if first,
               else `real_input`) M x K
  backward_dx  (only when its input needs a gradient) binary: add at acc M x K;
               full precision: gmac M x K; conv also folds its column gradient
               back onto the input: add at acc R x K x G
  backward_dw  binary, not first: add at acc M x K (sign(X) x dY);
               first or full precision: gmac M x K;
               weight_grad `sign`: compare at acc W (taking the sign)
  update       per weight n = W, at opt, see "optimizer"
  bias         (full precision, `bias: true`) forward add M at fwd (onto its
               output); backward_dw add M at acc (db = dY summed over R),
               weight_grad `sign`: compare at acc N; update per bias value n = N
               at opt, as a kernel's (no clipping)
batchnorm (E, C)
  forward      l2: add 4E+3C, mul 3E+6C, sqrt C, div C at bn
               l1: add 5E+3C, abs 2E, mul E+7C, div C at bn (no square, no root;
               includes norm_scale = mean abs of the normalised output)
  backward_dw  l2: add 2E, gmul E;  l1: add E
  backward_dx  (only when its input needs a gradient)
               l2: gmul E, add 4E at acc, mul 3E+2C at acc
               l1: add 4E at acc, mul E+4C at acc (sign(x_hat) only flips signs)
  update       per parameter n = 2C (l2) or C (l1), at opt, no clipping
sign           forward compare 2E, abs E at fwd (sign and the STE mask);
               backward_dx gmul E (the mask gates the gradient)
relu           forward compare E at fwd; backward_dx gmul E
prelu (E, C)   forward compare E, mul E at fwd (a x where x <= 0);
               backward_dw compare E at fwd (x > 0, on the saved x), gmul E
               (dy x), add E at acc (the per-channel sums of da);
               backward_dx (only when its input needs a gradient) gmul E
               (dy a where x <= 0, reusing the compare); update per slope n = C
               (1 when `shared`: the same E adds sum into one slope), at opt, no clipping
dropout        forward compare E (the uniform draw against the rate: the mask), mul E
               (x times 1/(1 - rate)) at fwd; backward_dx gmul 2E (dy gated by the
               mask, then times 1/(1 - rate)); drawing the random numbers is not counted
maxpool k, s   forward compare O x (k*k - 1) at fwd;
               backward_dx add O x k*k at acc (scatter), gmul E (mask)
avgpool k, s   forward add O x k*k, mul O at fwd; backward_dx gmul O, add O x k*k at acc
               (k*k is the window's size kh*kw; non-square windows and strides count alike)
global_avgpool forward add E, mul O at fwd; backward_dx gmul O
flatten        nothing
residual join  forward add O at fwd; backward_dx add O at acc (the two
               branches' gradients summed, wherever the sum is done)
softmax_ce     (Q classes, O = B x Q) forward at the `softmax_output` format:
               compare O, add 2O+B, exp O+B (the log of the loss counted as
               an exp), div O; backward_dx add O, mul O at acc
optimizer      per trainable value n, at opt:
               adam, full gradient: mul 6n, add 4n, sqrt n, div n
               adam, sign gradient (weight_grad `sign`, kernels and biases): mul 3n,
                 add 4n, sqrt n, div n
               sgd (momentum): mul 2n, add 2n
               bop (binary kernels): mul 2n (full) or n (sign), add n, abs n,
                 compare 2n; the flip itself is an XOR on bits, not counted
               latent weights of binary kernels (adam, sgd) are clipped to
               [-1, 1]: compare 2n
Not counted: encoding a gradient into po2 codes, packing bits, index
arithmetic, per-layer scalar constants.

BYTES MOVED per layer-phase, at stored formats (the input and output of a
layer at `fwd`, at `input` for the data batch, at `binary_input` for a tensor
that is +1/-1 by construction, such as a sign's output):
  forward      reads its input and its parameters (weights at latent_weight,
               batchnorm params at bn_param), writes its output and what it saves
  backward_dx  reads its output gradient, what it saved and its parameters,
               writes its input gradient
  backward_dw  reads its output gradient and what it saved, writes its
               parameter gradients
  update       reads parameters, gradients and optimizer state, writes
               parameters and optimizer state
"""

from __future__ import annotations

from dataclasses import dataclass

from bnncost.costmodel.formats import batched_bytes
from bnncost.costmodel.memory import MemoryPlan
from bnncost.costmodel.strategy import Strategy
from bnncost.layers.graph import Graph, Node
from bnncost.layers.storage import activation_format_role

PHASES = ("forward", "backward_dx", "backward_dw", "update")
KINDS = ("mac", "add", "mul", "div", "sqrt", "abs", "compare", "exp", "shift", "xnor_popcount", "bit_mac")
INFORMATIONAL = ("bit_mac",)  # reported, not charged energy (the words are)


@dataclass(frozen=True)
class OpCount:
    layer: str
    phase: str
    kind: str
    format: str
    const: int  # operations independent of the batch
    per_sample: int  # operations per sample

    def at(self, batch: int) -> int:
        return self.const + self.per_sample * batch


@dataclass(frozen=True)
class Traffic:
    layer: str
    phase: str
    read_const: int
    read_per_sample: int
    write_const: int
    write_per_sample: int

    def bytes_at(self, batch: int) -> int:
        return self.read_const + self.write_const + (self.read_per_sample + self.write_per_sample) * batch


class _Counter:
    """Collects affine counts; `per` values are per sample, `const` values are fixed."""

    def __init__(self, strategy: Strategy):
        self.s = strategy
        g = strategy.format_of("activation_grad")
        self.g = g
        self.acc = "float16" if g == "po2" else g
        self.rows: dict[tuple, list[int]] = {}

    def add(self, layer, phase, kind, fmt, per=0, const=0):
        if per == 0 and const == 0:
            return
        key = (layer, phase, kind, fmt)
        cell = self.rows.setdefault(key, [0, 0])
        cell[0] += const
        cell[1] += per

    def gmul(self, layer, phase, per=0, const=0):
        if self.g == "po2":
            self.add(layer, phase, "shift", "po2", per, const)
        else:
            self.add(layer, phase, "mul", self.acc, per, const)

    def gmac(self, layer, phase, per=0, const=0):
        if self.g == "po2":
            self.add(layer, phase, "shift", "po2", per, const)
            self.add(layer, phase, "add", self.acc, per, const)
        else:
            self.add(layer, phase, "mac", self.acc, per, const)

    def optimizer(self, layer: str, n: int, *, sign_grad: bool, binary_kernel: bool) -> None:
        opt, f = self.s.optimizer, self.s.format_of("optimizer_state")
        if opt == "bop" and binary_kernel:
            self.add(layer, "update", "mul", f, const=(n if sign_grad else 2 * n))
            self.add(layer, "update", "add", f, const=n)
            self.add(layer, "update", "abs", f, const=n)
            self.add(layer, "update", "compare", f, const=2 * n)
            return
        if opt == "sgd":
            self.add(layer, "update", "mul", f, const=2 * n)
            self.add(layer, "update", "add", f, const=2 * n)
        else:  # adam, and bop's real-valued parameters
            self.add(layer, "update", "mul", f, const=(3 * n if sign_grad else 6 * n))
            self.add(layer, "update", "add", f, const=4 * n)
            self.add(layer, "update", "sqrt", f, const=n)
            self.add(layer, "update", "div", f, const=n)
        if binary_kernel:
            self.add(layer, "update", "compare", f, const=2 * n)


def count_ops(graph: Graph, strategy: Strategy) -> list[OpCount]:
    """Every operation of one training step, by layer, phase, kind and format."""
    c = _Counter(strategy)
    fwd = strategy.format_of("real_input")
    for node in graph.nodes:
        _count_node(c, graph, node, fwd)
    return [OpCount(l, p, k, f, a, b) for (l, p, k, f), (a, b) in c.rows.items()]


def _count_node(c: _Counter, graph: Graph, node: Node, fwd: str) -> None:
    n, s, acc = node.name, c.s, c.acc
    e = _prod(node.in_shape)  # per sample
    o = _prod(node.out_shape)
    needs_dx = graph.tensors[node.inputs[0]].requires_grad
    if node.kind in ("dense", "conv2d"):
        K, N, P = node.fan_in, node.units, node.positions
        m = P * N * K  # multiply-accumulates per sample
        if node.binary and not node.first:
            c.add(n, "forward", "xnor_popcount", "bool", per=P * N * -(-K // 64))
            c.add(n, "forward", "bit_mac", "bool", per=m)
        elif node.binary:
            c.add(n, "forward", "add", s.format_of("input"), per=m)
        else:
            c.add(n, "forward", "mac", s.format_of("input" if node.first else "real_input"), per=m)
        if needs_dx:
            if node.binary:
                c.add(n, "backward_dx", "add", acc, per=m)
            else:
                c.gmac(n, "backward_dx", per=m)
            if node.kind == "conv2d":
                c.add(n, "backward_dx", "add", acc, per=P * K * node.groups)
        if node.binary and not node.first:
            c.add(n, "backward_dw", "add", acc, per=m)
        else:
            c.gmac(n, "backward_dw", per=m)
        sign_grad = s.weight_grad == "sign"
        if sign_grad:
            c.add(n, "backward_dw", "compare", acc, const=node.weights)
        c.optimizer(n, node.weights, sign_grad=sign_grad, binary_kernel=node.binary)
        if node.bias:
            c.add(n, "forward", "add", fwd, per=P * N)
            c.add(n, "backward_dw", "add", acc, per=P * N)
            if sign_grad:
                c.add(n, "backward_dw", "compare", acc, const=N)
            c.optimizer(n, N, sign_grad=sign_grad, binary_kernel=False)
    elif node.kind == "batchnorm":
        C, bn = node.channels, s.format_of("bn_param")
        if s.batchnorm == "l2":
            c.add(n, "forward", "add", bn, per=4 * e, const=3 * C)
            c.add(n, "forward", "mul", bn, per=3 * e, const=6 * C)
            c.add(n, "forward", "sqrt", bn, const=C)
            c.add(n, "forward", "div", bn, const=C)
            c.add(n, "backward_dw", "add", acc, per=2 * e)
            c.gmul(n, "backward_dw", per=e)
            if needs_dx:
                c.gmul(n, "backward_dx", per=e)
                c.add(n, "backward_dx", "add", acc, per=4 * e)
                c.add(n, "backward_dx", "mul", acc, per=3 * e, const=2 * C)
            params = 2 * C
        else:
            c.add(n, "forward", "add", bn, per=5 * e, const=3 * C)
            c.add(n, "forward", "abs", bn, per=2 * e)
            c.add(n, "forward", "mul", bn, per=e, const=7 * C)
            c.add(n, "forward", "div", bn, const=C)
            c.add(n, "backward_dw", "add", acc, per=e)
            if needs_dx:
                c.add(n, "backward_dx", "add", acc, per=4 * e)
                c.add(n, "backward_dx", "mul", acc, per=e, const=4 * C)
            params = C
        c.optimizer(n, params, sign_grad=False, binary_kernel=False)
    elif node.kind == "sign":
        c.add(n, "forward", "compare", fwd, per=2 * e)
        c.add(n, "forward", "abs", fwd, per=e)
        if needs_dx:
            c.gmul(n, "backward_dx", per=e)
    elif node.kind == "relu":
        c.add(n, "forward", "compare", fwd, per=e)
        if needs_dx:
            c.gmul(n, "backward_dx", per=e)
    elif node.kind == "prelu":
        c.add(n, "forward", "compare", fwd, per=e)
        c.add(n, "forward", "mul", fwd, per=e)
        c.add(n, "backward_dw", "compare", fwd, per=e)
        c.gmul(n, "backward_dw", per=e)
        c.add(n, "backward_dw", "add", acc, per=e)
        if needs_dx:
            c.gmul(n, "backward_dx", per=e)
        c.optimizer(n, node.parameters(), sign_grad=False, binary_kernel=False)
    elif node.kind == "dropout":
        c.add(n, "forward", "compare", fwd, per=e)
        c.add(n, "forward", "mul", fwd, per=e)
        if needs_dx:
            c.gmul(n, "backward_dx", per=2 * e)
    elif node.kind in ("maxpool", "avgpool"):
        kk = node.window[0] * node.window[1]
        if node.kind == "maxpool":
            c.add(n, "forward", "compare", fwd, per=o * (kk - 1))
            if needs_dx:
                c.add(n, "backward_dx", "add", acc, per=o * kk)
                c.gmul(n, "backward_dx", per=e)
        else:
            c.add(n, "forward", "add", fwd, per=o * kk)
            c.add(n, "forward", "mul", fwd, per=o)
            if needs_dx:
                c.gmul(n, "backward_dx", per=o)
                c.add(n, "backward_dx", "add", acc, per=o * kk)
    elif node.kind == "global_avgpool":
        c.add(n, "forward", "add", fwd, per=e)
        c.add(n, "forward", "mul", fwd, per=o)
        if needs_dx:
            c.gmul(n, "backward_dx", per=o)
    elif node.kind == "add":
        c.add(n, "forward", "add", fwd, per=o)
        if graph.tensors[node.output].requires_grad:
            c.add(n, "backward_dx", "add", acc, per=o)
    elif node.kind == "softmax_ce":
        f = s.format_of("softmax_output")
        c.add(n, "forward", "compare", f, per=o)
        c.add(n, "forward", "add", f, per=2 * o + 1)
        c.add(n, "forward", "exp", f, per=o + 1)
        c.add(n, "forward", "div", f, per=o)
        c.add(n, "backward_dx", "add", acc, per=o)
        c.add(n, "backward_dx", "mul", acc, per=o)


def _prod(shape) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


def count_traffic(graph: Graph, strategy: Strategy, plan: MemoryPlan) -> list[Traffic]:
    """Bytes each layer-phase reads and writes, at the formats they are stored in.

    The sizes come from the memory plan's variables (its retention does not
    change what a phase touches, only how long it is kept).
    """
    s = strategy
    g = s.format_of("activation_grad")
    saved: dict[str, list[int]] = {}  # layer -> [const, per]
    params: dict[str, int] = {}
    grads: dict[str, int] = {}
    state: dict[str, int] = {}
    for v in plan.variables:
        if v.role in ("activation", "workspace"):
            continue  # the forward output is counted below as what the forward writes; scratch stays on chip
        alloc = plan.events[v.alloc]
        if alloc.startswith("forward:"):
            cell = saved.setdefault(v.layer, [0, 0])
            cell[0] += v.fixed
            cell[1] += v.per_sample
        elif v.role == "latent_weight" or v.name.endswith(".params"):
            params[v.layer] = params.get(v.layer, 0) + v.fixed
        elif v.role == "optimizer_state":
            state[v.layer] = state.get(v.layer, 0) + v.fixed
        elif v.role == "weight_grad" or v.name.endswith(".param_grad"):  # whatever an engine's lifetime
            grads[v.layer] = grads.get(v.layer, 0) + v.fixed
    out = []
    for node in graph.nodes:
        n = node.name
        x = sum(batched_bytes(s.format_of(activation_format_role(graph, i)), graph.tensors[i].shape)
                for i in node.inputs)
        y = batched_bytes(s.format_of(activation_format_role(graph, node.output)), node.out_shape)
        dy = batched_bytes(g, node.out_shape) if node.kind != "softmax_ce" else 0
        dx = sum(batched_bytes(g, graph.tensors[i].shape) for i in node.inputs if graph.tensors[i].requires_grad)
        sv_c, kept = saved.get(n, [0, 0])  # written by its forward
        sv_p = kept  # read by its backward: what it saved, and the data batch for the first layer
        if n == _data_owner(graph):
            sv_p += batched_bytes(s.format_of("input"), graph.model.input)
        p, gr, st = params.get(n, 0), grads.get(n, 0), state.get(n, 0)
        out.append(Traffic(n, "forward", p, x, sv_c, y + kept))
        if node.kind == "flatten":
            continue
        if any(graph.tensors[i].requires_grad for i in node.inputs):
            if node.kind in ("dense", "conv2d"):  # dX needs dY and the weights only
                out.append(Traffic(n, "backward_dx", p, dy, 0, dx))
            else:
                out.append(Traffic(n, "backward_dx", p + sv_c, dy + sv_p, 0, dx))
        if gr:
            out.append(Traffic(n, "backward_dw", sv_c, dy + sv_p, gr, 0))
            out.append(Traffic(n, "update", p + gr + st, 0, p + st, 0))
    return out


def _data_owner(graph: Graph) -> str | None:
    return next((n.name for n in graph.nodes if n.first), None)


def totals(ops: list[OpCount], batch: int) -> dict[str, dict[str, int]]:
    """{format: {kind: count}} over the whole step."""
    out: dict[str, dict[str, int]] = {}
    for op in ops:
        d = out.setdefault(op.format, {})
        d[op.kind] = d.get(op.kind, 0) + op.at(batch)
    return out


def by_phase(ops: list[OpCount], batch: int) -> dict[str, dict[str, dict[str, int]]]:
    """{phase: {format: {kind: count}}}."""
    out: dict[str, dict[str, dict[str, int]]] = {p: {} for p in PHASES}
    for op in ops:
        d = out[op.phase].setdefault(op.format, {})
        d[op.kind] = d.get(op.kind, 0) + op.at(batch)
    return {p: v for p, v in out.items() if v}
