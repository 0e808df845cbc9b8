"""What every executing operator shares: the step context and the operator base class.

The context hands operators their buffers, always through the ledger:
- `save`: what a layer keeps for its backward (names, roles and lifetimes of
  `layers.storage.stored_variables`), in the strategy's format;
- `output`: the forward activation handed to the next layer (`<layer>.output`,
  role `activation`, `real_input` format, or `binary_input` when its values
  are +1/-1 by construction: a sign's, a max-pool's of such a tensor), freed
  after the forward of its last consumer (layers.storage.forward_outputs);
- `scratch`: workspace of `layers.scratch`, holding `rows_held(total, row
  bytes, budget)` rows (METHOD 4.1; total = rows per sample x B + fixed
  rows, the weight rows of sign_weight, weight_signs and dw_accum, which an
  operator then works through block by block) and freed at the end of the
  operator's event. With budget 0 the model has no scratch at all; numpy
  still needs working memory, so the operator gets its chunks sized under
  UNTRACKED_WORKSPACE (4 KiB) as untracked temporaries (they show in
  tracemalloc, not in the ledger);
- `grad_in` / `grad_out`: activation-gradient buffers shared per
  `layers.storage.gradient_buffers` (a flatten reuses its input's buffer, a
  residual join passes its buffer by reference, an identity shortcut
  accumulates into it in place);
- `param_grad`: dW and batchnorm parameter gradients, alive until `update`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bnncost.costmodel.formats import tensor_bytes
from bnncost.costmodel.strategy import Strategy
from bnncost.layers.graph import Graph, Node
from bnncost.layers.scratch import UNTRACKED_WORKSPACE, Scratch, rows_held
from bnncost.layers.storage import Stored
from bnncost.trainer import codec
from bnncost.trainer.counters import OpCounter
from bnncost.trainer.ledger import Ledger

DEFAULT_WORKSPACE = 65536  # METHOD 4.1: the trainer's default budget, bytes per operator
# Budget 0: each scratch buffer held untracked at UNTRACKED_WORKSPACE (layers.scratch; it shows in
# tracemalloc only, well inside verify's stated process margin).
LOSS_SCALE = 1024.0


def loss_scale(grad_format: str) -> float:
    """Static loss scaling for narrow activation gradients (the usual mixed-precision practice).

    With a mean loss over the batch, activation gradients of a BNN are ~1e-4,
    float16's subnormal range (below 6.1e-5), where precision is lost and
    numpy's float32 -> float16 conversion is ~40x slower. Gradients other than
    float32 are therefore held multiplied by 1024: softmax_ce's backward uses
    1024 / B where it would use 1 / B (no extra operation), and the optimizers
    undo it with scalar constants (Adam's eps x 1024, which is exact since Adam
    is otherwise invariant to the gradient's scale; SGD's lr / 1024; Bop's
    threshold x 1024). sign(dW) is unaffected.
    """
    return 1.0 if grad_format == "float32" else LOSS_SCALE


@dataclass
class ParamSpec:
    """One trainable tensor, for the optimizer."""

    name: str  # persistent buffer, e.g. dense_1.weight or batchnorm_1.params
    grad: str  # its gradient buffer, e.g. dense_1.weight_grad
    layer: str
    fmt: str
    grad_fmt: str
    shape: tuple  # logical shape
    binary_kernel: bool = False  # a binary layer's kernel: clipped to [-1, 1] (adam, sgd), flipped (bop)
    bits: bool = False  # held as its sign, 1 bit (bop)
    sign_grad: bool = False  # its gradient is kept as its sign (weight_grad: sign)
    state_prefix: str = ""  # its optimizer state is <layer>.<prefix>adam_m ...: "bias_" for a layer's bias

    @property
    def size(self) -> int:
        return math.prod(self.shape)


class Context:
    """Services operators use during a step; owned by the network."""

    def __init__(self, graph: Graph, strategy: Strategy, ledger: Ledger, counter: OpCounter,
                 stored: dict[str, Stored], grad_names: dict[int, str], grad_stored: dict[str, Stored],
                 scratch: dict[str, Scratch], budget: int, fwd: str):
        self.graph, self.strategy = graph, strategy
        self.ledger, self.counter = ledger, counter
        self.stored, self.grad_names, self.grad_stored = stored, grad_names, grad_stored
        self.scratch_specs, self.budget = scratch, budget
        self.fwd = fwd
        self.training = True
        self.batch = 0
        self.written: set[str] = set()  # gradient buffers written this step
        self.rng: np.random.Generator | None = None  # the step's random draws (dropout), set by the network
        self.loss_scale = loss_scale(strategy.format_of("activation_grad"))

    def fmt(self, role: str) -> str:
        return self.strategy.format_of(role)

    @property
    def g(self) -> str:
        return self.strategy.format_of("activation_grad")

    # -------------------------------------------------------------- forward buffers

    def save(self, node: Node, suffix: str, role: str, shape: tuple) -> np.ndarray:
        name = f"{node.name}.{suffix}"
        s = self.stored[name]
        fmt = s.fixed_format or self.fmt(role)
        full = (self.batch, *s.shape) if s.batched else s.shape
        if tuple(shape) != tuple(full):  # the trainer's own shape must be the one layers.storage names
            raise RuntimeError(f"{name}: shape {shape} differs from layers.storage {full}")
        return self.ledger.alloc(name, node.name, role, fmt, full, free_at=s.free)

    def out_fmt(self, node: Node) -> str:
        """The format of this node's forward output: real_input, or binary_input for +1/-1 values."""
        return self.stored[f"{node.name}.output"].format_in(self.fmt)

    def output(self, node: Node) -> np.ndarray:
        """The forward activation this node hands on (layers.storage.forward_outputs), in `out_fmt`."""
        name = f"{node.name}.output"
        s = self.stored[name]
        return self.ledger.alloc(name, node.name, "activation", self.out_fmt(node), (self.batch, *s.shape),
                                 free_at=s.free)

    def scratch(self, node: Node, short: str, total_rows: int | None = None) -> tuple[np.ndarray, str] | None:
        """A workspace buffer of layers.scratch, or None if this strategy does not have it.

        It holds `rows_held(total rows, row bytes, budget)` rows of the spec's
        row shape, total rows = rows_per_sample x B + fixed_rows (weight rows
        do not scale with the batch). An operator that passes `total_rows`
        has them checked against layers.scratch.
        """
        name = f"{node.name}.{short}"
        w = self.scratch_specs.get(name)
        if w is None:
            return None
        if w.only_if_packed and self.fmt(w.only_if_packed) != "bool":
            return None
        fmt = w.fixed_format or self.fmt(w.operand_role)
        total = w.rows_per_sample * self.batch + w.fixed_rows
        if total_rows is not None and total_rows != total:
            raise RuntimeError(f"{name}: {total_rows} rows, layers.scratch says "
                               f"{w.rows_per_sample} x B + {w.fixed_rows} = {total}")
        budget = self.budget if self.budget > 0 else UNTRACKED_WORKSPACE
        shape = (rows_held(total, tensor_bytes(fmt, w.row_shape), budget), *w.row_shape)
        if self.budget > 0:
            return self.ledger.alloc(name, node.name, "workspace", fmt, shape), fmt
        return codec.empty(fmt, shape), fmt  # budget 0: untracked working memory (see module doc)

    def free(self, name: str) -> None:
        if name in self.ledger.live:
            self.ledger.free(name)

    # -------------------------------------------------------------- gradients

    def grad_in(self, tensor: int) -> tuple[np.ndarray, str]:
        """The gradient buffer of a tensor, viewed in that tensor's shape (B, ...)."""
        arr = self.ledger[self.grad_names[tensor]]
        return arr.reshape(self.batch, *self.graph.tensors[tensor].shape), self.g

    def grad_out(self, tensor: int, zero: bool = False) -> tuple[np.ndarray, str, bool]:
        """Where a backward writes the gradient of `tensor`: (view, format, accumulate?).

        The first writer of a buffer allocates it (zeroed if asked); later
        writers must add to what is there (a residual's two branches).
        """
        name = self.grad_names[tensor]
        accumulate = name in self.written
        if name not in self.ledger.live:
            s = self.grad_stored[name]
            node = s.layer
            self.ledger.alloc(name, node, "activation_grad", self.g, (self.batch, *s.shape),
                              free_at=s.free, zero=zero)
        self.written.add(name)
        arr = self.ledger[name]
        return arr.reshape(self.batch, *self.graph.tensors[tensor].shape), self.g, accumulate

    def param_grad(self, node: Node, suffix: str, role: str, shape: tuple, fmt: str | None = None) -> np.ndarray:
        name = f"{node.name}.{suffix}"
        s = self.stored[name]
        if tuple(shape) != tuple(s.shape):
            raise RuntimeError(f"{name}: shape {shape} differs from layers.storage {s.shape}")
        return self.ledger.alloc(name, node.name, role, fmt or s.fixed_format or self.fmt(role), s.shape,
                                 free_at=s.free)

    def needs_grad(self, tensor: int) -> bool:
        return self.graph.tensors[tensor].requires_grad


class Op:
    """An executing layer: forward, backward, and its trainable tensors."""

    def __init__(self, node: Node, ctx: Context):
        self.node, self.ctx = node, ctx
        self.name = node.name

    def init_params(self, rng: np.random.Generator) -> None:
        """Create persistent buffers (weights, batchnorm parameters and statistics)."""

    def params(self) -> list[ParamSpec]:
        return []

    def forward(self, xs: list[tuple[np.ndarray, str]]) -> tuple[np.ndarray, str] | None:
        raise NotImplementedError

    def backward(self) -> None:
        """Read the output's gradient and what forward saved; write dX and parameter gradients."""

    # helpers
    def count(self, phase: str, kind: str, fmt: str, n: int) -> None:
        self.ctx.counter.add(self.name, phase, kind, fmt, n)


def row_chunks(total: int, rows: int):
    """(r0, r1) pairs covering range(total) in steps of `rows`."""
    rows = max(1, rows)
    for r0 in range(0, total, rows):
        yield r0, min(total, r0 + rows)


CHUNK_BYTES = 1 << 14  # float32 temporaries of elementwise work, per chunk of rows (half the default budget)


def temp_rows(row_elems: int, itemsize: int = 4, budget: int | None = None) -> int:
    """Rows of a float32 temporary of `row_elems` per row that fit a chunk (CHUNK_BYTES unless told).

    Elementwise operators and the optimizer work a chunk of rows at a time so
    numpy's temporaries stay a few CHUNK_BYTES: what keeps the process peak
    (tracemalloc) close to the ledger's.
    """
    return max(1, (budget or CHUNK_BYTES) // max(1, row_elems * itemsize))
