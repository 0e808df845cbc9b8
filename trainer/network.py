"""A model executing one training step event by event (METHOD 4), from layers.graph nodes.

The network builds one operator per node, owns the ledger, the op counter and
the optimizer, and drives the events of `layers.timeline.step_events`:
step_start (the data batch is gathered into `data`, in the `input` format),
forward:<node> for each node, loss, backward:<node> in reverse, update,
step_end. At the end of every event it frees the buffers whose life ends there
(layers.storage gives the lifetimes; forward activations die after their last
consumer's forward; scratch after its operator).
"""

from __future__ import annotations

import numpy as np

from bnncost.costmodel.strategy import Strategy
from bnncost.layers.graph import Graph
from bnncost.layers.scratch import scratch_needs
from bnncost.layers.storage import gradient_buffer_names, gradient_buffers, stored_variables
from bnncost.layers.timeline import step_events
from bnncost.trainer import codec
from bnncost.trainer.activation import Dropout, PReLU, ReLU, Sign
from bnncost.trainer.base import DEFAULT_WORKSPACE, Context, Op, ParamSpec
from bnncost.trainer.batchnorm import BatchNorm
from bnncost.trainer.counters import OpCounter
from bnncost.trainer.errors import TrainerError
from bnncost.trainer.ledger import Ledger, NullLedger
from bnncost.trainer.linear import Linear
from bnncost.trainer.optim import Optimizer
from bnncost.trainer.pooling import AvgPool, GlobalAvgPool, MaxPool
from bnncost.trainer.structure import Add, Flatten, SoftmaxCE

OPS: dict[str, type[Op]] = {
    "dense": Linear, "conv2d": Linear, "batchnorm": BatchNorm, "sign": Sign, "relu": ReLU, "prelu": PReLU, "dropout": Dropout,
    "maxpool": MaxPool, "avgpool": AvgPool, "global_avgpool": GlobalAvgPool, "flatten": Flatten,
    "add": Add, "softmax_ce": SoftmaxCE,
}

# roles whose values are real numbers the trainer accumulates or computes with: never 1 bit
REAL_ROLES = ("real_input", "softmax_output", "optimizer_state", "bn_param", "activation_grad", "latent_weight")


def check_strategy(strategy: Strategy, graph: Graph) -> None:
    """Raise TrainerError for a strategy whose formats the trainer cannot hold."""
    for role, fmt in strategy.formats.items():
        codec.check_holdable(fmt, f"strategy {strategy.name}: role {role}")
    for role in REAL_ROLES:
        fmt = strategy.format_of(role)
        if fmt == "bool" and not (role == "latent_weight" and strategy.optimizer == "bop"
                                  and all(n.binary for n in graph.nodes if n.kind in ("dense", "conv2d"))):
            raise TrainerError(f"strategy {strategy.name}: role {role} is bool; the trainer needs real values there")
    if strategy.format_of("real_input") not in codec.FLOATS:
        raise TrainerError(f"strategy {strategy.name}: real_input is {strategy.format_of('real_input')}; "
                           "the trainer's forward activations are held in it and need float32 or float16")


class Network:
    """Executable model + strategy: persistent state, one training step, evaluation."""

    def __init__(self, graph: Graph, strategy: Strategy, *, retention: str = "step",
                 workspace_budget: int = DEFAULT_WORKSPACE, seed: int = 0, lr: float = 0.01,
                 bop_gamma: float = 1e-3, bop_threshold: float = 1e-6):
        if retention not in ("step", "backward"):
            raise TrainerError(f"retention must be step or backward, not {retention!r}")
        if workspace_budget < 0:
            raise TrainerError("workspace budget must be >= 0 bytes")
        check_strategy(strategy, graph)
        self.graph, self.strategy = graph, strategy
        self.seed = seed
        self.retention, self.budget = retention, workspace_budget
        self.events = step_events(graph)
        self.ledger = Ledger(self.events)
        self.counter = OpCounter(strategy.format_of("activation_grad"))
        stored = {s.name: s for s in stored_variables(graph, batchnorm=strategy.batchnorm,
                                                      optimizer=strategy.optimizer, retention=retention)}
        grad_stored = {s.name: s for s in gradient_buffers(graph)}
        # tensors nobody writes a gradient for (the loss's output) have no buffer in layers.storage
        self.grad_names = {t: n for t, n in gradient_buffer_names(graph).items() if n in grad_stored}
        self.ctx = Context(graph, strategy, self.ledger, self.counter, stored, self.grad_names, grad_stored,
                           {w.name: w for w in scratch_needs(graph)}, workspace_budget,
                           strategy.format_of("real_input"))
        self.ops = [OPS[n.kind](n, self.ctx) for n in graph.nodes]
        self.data_stored = stored["data"]
        rng = np.random.default_rng(seed)
        for op in self.ops:
            op.init_params(rng)
        self.params: list[ParamSpec] = [p for op in self.ops for p in op.params()]
        self.optimizer = Optimizer(strategy.optimizer, strategy.format_of("optimizer_state"), self.ledger,
                                   self.counter, lr=lr, bop_gamma=bop_gamma, bop_threshold=bop_threshold,
                                   grad_scale=self.ctx.loss_scale)
        self.optimizer.init_state(self.params)
        self.steps = 0

    @property
    def input_format(self) -> str:
        return self.strategy.format_of("input")

    # -------------------------------------------------------------- one step

    def train_step(self, X: np.ndarray, idx: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
        """One training step on samples X[idx] (X already in the input format). Returns (loss, correct).

        Overflow in a narrow format is not an error here: a diverging run shows
        as a NaN or infinite loss, which the caller checks (numpy's warnings are
        silenced so that it is reported once, clearly).
        """
        with np.errstate(all="ignore"):
            return self._train_step(X, idx, labels)

    def _train_step(self, X: np.ndarray, idx: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
        L, ctx = self.ledger, self.ctx
        B = len(idx)
        ctx.training, ctx.batch, ctx.labels = True, B, labels
        ctx.rng = np.random.default_rng((self.seed, self.steps))  # dropout's draws: one stream per step
        ctx.written = set()
        ctx.ledger, ctx.counter = L, self.counter
        self.counter.reset()
        L.begin_step()
        L.event("step_start")
        s = self.data_stored
        data = L.alloc("data", s.layer, "input", self.input_format, (B, *s.shape), free_at=s.free)
        np.take(X, idx, axis=0, out=data)
        L.end_event()
        acts = self._forward(data)
        L.event("loss")
        loss = ctx.loss
        L.end_event()
        del acts
        if not np.isfinite(loss):
            L.end_step()
            return loss, 0
        for op in reversed(self.ops):
            L.event(f"backward:{op.name}")
            if op.node.kind == "softmax_ce" or self.graph.tensors[op.node.output].requires_grad:
                op.backward()
            L.end_event()
        L.event("update")
        self.optimizer.step(self.params)
        L.end_event()
        L.event("step_end")
        L.end_step()
        self.steps += 1
        correct = int((ctx.predictions == labels).sum())
        return loss, correct

    def _forward(self, data: np.ndarray) -> dict:
        L = self.ctx.ledger  # the step's ledger, or a NullLedger when evaluating
        acts: dict[int, tuple[np.ndarray, str]] = {0: (data, self.input_format)}
        last_reader = {i: k for k, op in enumerate(self.ops) for i in op.node.inputs}
        for k, op in enumerate(self.ops):
            L.event(f"forward:{op.name}")
            node = op.node
            out = op.forward([acts[i] for i in node.inputs])
            if out is not None:
                acts[node.output] = out
            out = None
            L.end_event()
            for i in node.inputs:  # drop references no later op reads whose buffers the ledger has freed
                if last_reader[i] == k and i in acts and not _alive(L, acts[i][0]):
                    del acts[i]
        return acts

    # -------------------------------------------------------------- evaluation

    def predict(self, X: np.ndarray, batch: int = 256) -> np.ndarray:
        """Class predictions for X (in the input format), batchnorm on running statistics.

        Evaluation allocates through a NullLedger and counts nothing: it is not
        part of a training step.
        """
        ctx = self.ctx
        saved = ctx.ledger, ctx.counter, ctx.training
        ctx.ledger, ctx.counter, ctx.training = NullLedger(self.ledger.persistent), OpCounter(enabled=False), False
        try:
            preds = []
            with np.errstate(all="ignore"):
                for b0 in range(0, len(X), batch):
                    xb = X[b0:b0 + batch]
                    ctx.batch = len(xb)
                    self._forward(xb)
                    preds.append(ctx.predictions)
            return np.concatenate(preds) if preds else np.zeros(0, np.int64)
        finally:
            ctx.ledger, ctx.counter, ctx.training = saved

    # -------------------------------------------------------------- state

    def state(self) -> dict[str, np.ndarray]:
        return {name: e.array for name, e in self.ledger.persistent.items()}

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        for name in self.ledger.persistent:
            if name not in arrays:
                raise TrainerError(f"checkpoint has no {name}")
            self.ledger.replace_persistent(name, np.array(arrays[name]))


def _alive(L: Ledger, arr: np.ndarray) -> bool:
    base = arr if arr.base is None else arr.base
    for e in L.live.values():
        if e.array is base or e.array is arr:
            return True
    return False
