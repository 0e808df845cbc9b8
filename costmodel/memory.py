"""Every variable of a training step with its format, bytes and lifetime; the peak.

The bytes of a variable are a + b x B, or, for chunked workspace,
min(c, d x B): the scratch grows with the batch until it reaches its budget
(METHOD 4.1). An engine's runtime may add a step function of B (a BLAS
library's cached buffers, `Variable.by_batch`), or be held only below a batch
size (`Variable.batch_below`: a library that keeps more state for small
batches) or from one on (`Variable.min_batch`: an operator a framework runs
another way from that batch on), which splits the batch axis into segments
where the peak may drop or rise.
The live bytes at each event are therefore a sum of those, the peak is the
maximum over events, and the largest batch that fits a budget is solved on
these terms, segment by segment, without rebuilding any variable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bnncost.costmodel.engine import Engine
from bnncost.costmodel.engine_rules import RUNTIME_ROLE, apply_engine, event_span
from bnncost.costmodel.formats import tensor_bytes
from bnncost.costmodel.strategy import Strategy
from bnncost.costmodel.variable import Variable, sized
from bnncost.layers.graph import Graph
from bnncost.layers.scratch import rows_held, scratch_needs
from bnncost.layers.storage import stored_variables
from bnncost.layers.timeline import step_events


@dataclass
class MemoryPlan:
    """The variables of one step for one model, strategy and implementation; batch-free."""

    events: list[str]
    variables: list[Variable]

    def __post_init__(self) -> None:
        for part in ("fixed", "per_sample"):  # bounded layers and rules keep this far off; the sums below are int64
            total = sum(getattr(v, part) for v in self.variables)
            if total >= 2**62:
                big = max(self.variables, key=lambda v: getattr(v, part))
                raise ValueError(f"the step's variables hold {total:.3g} bytes{' per sample' * (part == 'per_sample')}"
                                 f" ({big.name}: {getattr(big, part):.3g}), beyond what bnncost counts (2^62)")
        n = len(self.events)
        a, b = np.zeros(n + 1, dtype=np.int64), np.zeros(n + 1, dtype=np.int64)
        ws_event, ws_cap, ws_slope = [], [], []
        self._conditional: list[Variable] = []  # held at some batch sizes only: added per batch
        for v in self.variables:
            if v.conditional:
                self._conditional.append(v)
                continue
            a[v.alloc] += v.fixed
            a[v.free + 1] -= v.fixed
            b[v.alloc] += v.per_sample
            b[v.free + 1] -= v.per_sample
            for e in range(v.alloc, v.free + 1) if v.slope else ():  # one event, or each stage of one
                ws_event.append(e)
                ws_cap.append(v.cap)
                ws_slope.append(v.slope)
        self._by_batch = [(v.alloc, v.free, v.by_batch) for v in self.variables if v.by_batch is not None]
        self.fixed_by_event = np.cumsum(a)[:n]
        self.per_sample_by_event = np.cumsum(b)[:n]
        self._ws_event = np.array(ws_event, dtype=np.int64)
        self._ws_cap = np.array(ws_cap, dtype=np.float64)
        self._ws_slope = np.array(ws_slope, dtype=np.float64)

    def runtime_bytes(self, batch: int) -> int:
        """Bytes of the engine that are not tensors at this batch size; the rest of the peak is tensors."""
        return sum(v.bytes_at(batch) for v in self.variables if v.role == RUNTIME_ROLE)

    def batch_thresholds(self) -> list[int]:
        """Batch sizes at which a variable stops or starts being held (the peak may drop or rise there), ascending."""
        return sorted({t for v in self._conditional for t in (v.batch_below, v.min_batch) if t is not None})

    def _stepped(self, batch: np.ndarray) -> np.ndarray:
        """Per event and batch: the bytes of variables that are step functions of B."""
        out = np.zeros((len(self.events), batch.size))
        for alloc, free, fn in self._by_batch:
            out[alloc:free + 1] += np.array([fn(int(b)) for b in batch], dtype=np.float64)[None, :]
        return out

    def _workspace(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per event and batch: workspace bytes, and the part of it still growing with B."""
        n = len(self.events)
        total = np.zeros((n, batch.size))
        growing = np.zeros((n, batch.size))
        if self._ws_event.size:
            grow = self._ws_slope[:, None] * batch[None, :]
            held = np.minimum(self._ws_cap[:, None], grow)
            np.add.at(total, self._ws_event, held)
            np.add.at(growing, self._ws_event, np.where(grow < self._ws_cap[:, None], self._ws_slope[:, None], 0.0))
        return total, growing

    def live_bytes(self, batch) -> np.ndarray:
        """Live bytes at every event (rows) for each batch size (columns)."""
        bs = np.atleast_1d(np.asarray(batch, dtype=np.float64))
        ws, _ = self._workspace(bs)
        stepped = self._stepped(bs) if self._by_batch else 0.0
        live = self.fixed_by_event[:, None] + self.per_sample_by_event[:, None] * bs[None, :] + ws + stepped
        for v in self._conditional:
            held = np.ones(bs.shape, dtype=bool)
            if v.batch_below is not None:
                held &= bs < v.batch_below
            if v.min_batch is not None:
                held &= bs >= v.min_batch
            live[v.alloc:v.free + 1] += np.where(held, v.fixed + v.per_sample * bs, 0.0)[None, :]
        return live

    def peak_bytes(self, batch) -> np.ndarray:
        return self.live_bytes(batch).max(axis=0)

    def peak(self, batch: int) -> tuple[int, int, int, int]:
        """(peak bytes, peak event index, fixed bytes, per-sample bytes) at this batch size.

        fixed + per_sample x B equals the peak, and holds for every batch size
        whose peak falls on the same event with its workspace in the same regime
        (and the engine's stepped runtime on the same step).
        Computed in Python integers, so no byte is lost at any batch size.
        """
        held = [0] * len(self.events)
        growing = [0] * len(self.events)
        for e, cap, slope in zip(self._ws_event.tolist(), self._ws_cap.tolist(), self._ws_slope.tolist()):
            grow = int(slope) * batch
            held[e] += grow if grow < cap else int(cap)
            growing[e] += int(slope) if grow < cap else 0
        for alloc, free, fn in self._by_batch:
            extra = fn(batch)
            for i in range(alloc, free + 1):
                held[i] += extra
        fixed_by_event, per_by_event = self.fixed_by_event.tolist(), self.per_sample_by_event.tolist()
        for v in self._conditional:
            if v.held_at(batch):
                for i in range(v.alloc, v.free + 1):
                    fixed_by_event[i] += v.fixed
                    per_by_event[i] += v.per_sample
        live = [f + p * batch + w for f, p, w in zip(fixed_by_event, per_by_event, held)]
        e = max(range(len(live)), key=live.__getitem__)  # the first event that holds the peak
        slope = per_by_event[e] + growing[e]
        return live[e], e, live[e] - slope * batch, slope

    def max_batch(self, budget_bytes: int, limit: int = 1 << 62) -> int:
        """Largest B whose peak fits the budget (0 if even B = 1 does not).

        The peak grows with B within each segment between batch thresholds,
        so the segments are searched from the largest batches down; each peak
        in Python integers (`peak`), so the answer is exact for any budget a
        device can have (a sample holds at least a byte: B never reaches the limit
        below 2^62 bytes).
        """
        starts = [1, *(t for t in self.batch_thresholds() if 1 < t <= limit)]
        ends = [s - 1 for s in starts[1:]] + [limit]
        for start, end in reversed(list(zip(starts, ends))):
            if self.peak(start)[0] <= budget_bytes:
                return self._largest_fitting(budget_bytes, start, end)
        return 0

    def _largest_fitting(self, budget_bytes: int, lo: int, limit: int) -> int:
        """Largest B in [lo, limit] whose peak fits, given that peak(lo) fits and the peak grows with B there."""
        step = 1
        hi = lo + step
        while hi < limit and self.peak(hi)[0] <= budget_bytes:
            lo, step = hi, step * 2
            hi = lo + step
        if hi >= limit:
            if self.peak(limit)[0] <= budget_bytes:
                return limit
            hi = limit
        while hi - lo > 1:  # peak(lo) fits, peak(hi) does not
            mid = (lo + hi) // 2
            if self.peak(mid)[0] <= budget_bytes:
                lo = mid
            else:
                hi = mid
        return lo


def memory_plan(graph: Graph, strategy: Strategy, *, retention: str = "step", workspace_budget: int = 0,
                engine: Engine | None = None) -> MemoryPlan:
    """Give every stored variable and scratch of the step its format, bytes and lifetime.

    `engine` changes METHOD's variables the way an implementation holds them
    (costmodel.engine_rules); None is the reference engine, METHOD itself.
    Retention and budget are passed resolved (an engine's, or the caller's).
    """
    if workspace_budget < 0:
        raise ValueError("workspace budget must be >= 0 bytes")
    events = step_events(graph)
    index = {e: i for i, e in enumerate(events)}
    variables: list[Variable] = []
    for s in stored_variables(graph, batchnorm=strategy.batchnorm, optimizer=strategy.optimizer, retention=retention):
        variables.append(sized(s.name, s.layer, s.role, s.format_in(strategy.format_of), s.shape,
                               s.batched, index[s.alloc], index[s.free]))
    if engine is not None:
        variables, events = apply_engine(graph, strategy, engine, variables, events, retention)
    if workspace_budget > 0:
        for w in scratch_needs(graph):
            if w.only_if_packed and strategy.format_of(w.only_if_packed) != "bool":
                continue
            fmt = w.fixed_format or strategy.format_of(w.operand_role)
            row_bytes = tensor_bytes(fmt, w.row_shape)
            at, last = event_span(events, w.event)  # an engine may split the event into stages: all of them
            if w.rows_per_sample == 0:  # weight rows: as many as fit, whatever the batch
                held = rows_held(w.fixed_rows, row_bytes, workspace_budget)
                variables.append(Variable(w.name, w.layer, "workspace", fmt, (held, *w.row_shape), held * row_bytes,
                                          0, at, last))
            else:
                cap = max(1, workspace_budget // row_bytes) * row_bytes
                variables.append(Variable(w.name, w.layer, "workspace", fmt, ("rows", *w.row_shape), 0, 0, at, last,
                                          cap=cap, slope=w.rows_per_sample * row_bytes,
                                          rows_per_sample=w.rows_per_sample))
    return MemoryPlan(events, variables)
