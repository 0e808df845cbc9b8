"""Peak memory, energy and time over many batch sizes, from the affine forms.

A sweep builds each strategy's variables and op counts once and evaluates
every batch size in one numpy pass (MemoryPlan.peak_bytes, EnergyModel.evaluate);
nothing is rebuilt per batch.
"""

from __future__ import annotations

import re

import numpy as np
from pydantic import BaseModel

from bnncost.costmodel.energy import EnergyModel
from bnncost.costmodel.engine import Engine, as_engine
from bnncost.costmodel.memory import memory_plan
from bnncost.costmodel.prediction import MAX_BATCH
from bnncost.costmodel.ops import count_ops, count_traffic
from bnncost.costmodel.prediction import implementation_knobs
from bnncost.costmodel.results import Presentable
from bnncost.costmodel.strategy import Strategy, as_strategy, strategy_labels
from bnncost.costmodel.timing import operator_work
from bnncost.layers.graph import graph_of

SWEEP_SCHEMA = "bnncost.sweep/1"
MAX_POINTS = 1_000_000
EXACT_FLOAT = 2 ** 53  # below this a float64 holds a byte count exactly


class SweepLine(BaseModel):
    strategy: str
    peak_bytes: list[int]
    peak_event: list[str]
    fits: list[bool] | None = None
    max_batch: int | None = None
    joules_per_sample: list[float] | None = None
    seconds_per_sample: list[float] | None = None


class Sweep(Presentable, BaseModel):
    model: str
    batches: list[int]
    engine: str
    retention: str
    workspace_budget: int
    device: str | None = None
    usable_bytes: int | None = None
    lines: list[SweepLine]

    def to_json(self) -> dict:
        return {"schema": SWEEP_SCHEMA, **self.model_dump(exclude_none=True)}

    def title(self) -> str:
        where = f" on {self.device}" if self.device else ""
        return f"{self.model}{where}: peak memory of one training step against batch size"

    def records(self) -> list[dict]:
        """One row per batch size and strategy."""
        rows = []
        for line in self.lines:
            for i, b in enumerate(self.batches):
                row = {"batch": b, "strategy": line.strategy, "peak_bytes": line.peak_bytes[i],
                       "peak_event": line.peak_event[i]}
                if line.fits is not None:
                    row.update(fits=line.fits[i], joules_per_sample=line.joules_per_sample[i],
                               seconds_per_sample=line.seconds_per_sample[i])
                rows.append(row)
        return rows


def parse_batches(spec: str, log: bool = False) -> list[int]:
    """'a:b' (every batch, or powers of two with log), 'a:b:step', or a list '1,8,64'.

    The number of points is checked from the range's arithmetic before any list is built.
    """
    text = spec.strip()
    if re.fullmatch(r"\d+(\s*,\s*\d+)*", text):
        parts = text.split(",")
        if len(parts) > MAX_POINTS:
            raise ValueError(f"--batch: '{spec:.40}...' has {len(parts):,} points; at most {MAX_POINTS:,}")
        values = sorted({_batch_value(v, spec) for v in parts})
    else:
        m = re.fullmatch(r"(\d+):(\d+)(?::(\d+))?", text)
        if not m:
            raise ValueError(f"--batch: '{spec}' is not a range a:b, a:b:step or a list 1,8,64")
        a, b = _batch_value(m.group(1), spec), _batch_value(m.group(2), spec)
        step = m.group(3)
        if b < a:
            raise ValueError(f"--batch: '{spec}': the range ends before it starts")
        if step is not None:
            step = int(step)
            if step < 1:
                raise ValueError(f"--batch: '{spec}': the step must be at least 1")
            points = (b - a) // step + 1
        elif log:
            points = b.bit_length() - a.bit_length() + 2
        else:
            points = b - a + 1
        if points > MAX_POINTS:
            raise ValueError(f"--batch: '{spec}' has {points:,} points; at most {MAX_POINTS:,}")
        if step is not None:
            values = list(range(a, b + 1, step))
        elif log:
            values = sorted({a, b} | {1 << k for k in range(a.bit_length(), b.bit_length()) if a <= 1 << k <= b})
        else:
            values = list(range(a, b + 1))
    return values


def _batch_value(text: str, spec: str) -> int:
    if len(text.strip()) > 40:
        raise ValueError(f"--batch: '{spec:.60}': batch sizes are at most 10^30")
    value = int(text)
    if value < 1:
        raise ValueError(f"--batch: '{spec}': batch sizes start at 1")
    if value > MAX_BATCH:
        raise ValueError(f"--batch: '{spec:.60}': batch sizes are at most 10^30")
    return value


def sweep(model, strategies: list[str | Strategy], batches: list[int], *, engine: str | Engine | None = None,
          retention: str | None = None, workspace_budget: int | None = None, device=None) -> Sweep:
    """Peaks (process peaks: tensors + the engine's runtime bytes) of every strategy at every batch size."""
    graph = graph_of(model)
    eng = as_engine(engine)
    retention, workspace_budget = implementation_knobs(eng, retention, workspace_budget)
    bs = np.asarray(batches, dtype=np.float64)
    lines = []
    strats = [as_strategy(ref) for ref in strategies]
    for strat, label in zip(strats, strategy_labels(strats)):
        plan = memory_plan(graph, strat, retention=retention, workspace_budget=workspace_budget, engine=eng)
        live = plan.live_bytes(bs)
        peaks = live.max(axis=0)
        exact = [int(p) if p < EXACT_FLOAT else plan.peak(b)[0] for p, b in zip(peaks, batches)]
        line = SweepLine(
            strategy=label,
            peak_bytes=exact,
            peak_event=[plan.events[i] for i in live.argmax(axis=0)],
        )
        if device is not None:
            usable = device.memory.usable_bytes
            model = EnergyModel(count_ops(graph, strat), count_traffic(graph, strat, plan), device,
                                context=f"{label}: ",
                                work=(operator_work(graph, strat, retention, workspace_budget)
                                      if device.trainer is not None else None))
            et = model.evaluate(bs)
            line.fits = [p <= usable for p in exact]
            line.max_batch = plan.max_batch(usable)
            line.joules_per_sample = (et.joules / bs).tolist() if model.energy_known else None
            line.seconds_per_sample = (et.seconds / bs).tolist()
        lines.append(line)
    return Sweep(
        model=graph.model.name, batches=list(batches), engine=eng.name, retention=retention,
        workspace_budget=workspace_budget,
        device=device.name if device is not None else None,
        usable_bytes=device.memory.usable_bytes if device is not None else None, lines=lines,
    )
