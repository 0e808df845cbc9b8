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
from bnncost.costmodel.ops import count_ops, count_traffic
from bnncost.costmodel.prediction import implementation_knobs
from bnncost.costmodel.strategy import Strategy, as_strategy, strategy_labels
from bnncost.layers.graph import graph_of

SWEEP_SCHEMA = "bnncost.sweep/1"
MAX_POINTS = 1_000_000


class SweepLine(BaseModel):
    strategy: str
    peak_bytes: list[int]
    peak_event: list[str]
    fits: list[bool] | None = None
    max_batch: int | None = None
    joules_per_sample: list[float] | None = None
    seconds_per_sample: list[float] | None = None


class Sweep(BaseModel):
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


def parse_batches(spec: str, log: bool = False) -> list[int]:
    """'a:b' (every batch, or powers of two with log), 'a:b:step', or a list '1,8,64'."""
    text = spec.strip()
    if re.fullmatch(r"\d+(\s*,\s*\d+)*", text):
        values = sorted({int(v) for v in text.split(",")})
    else:
        m = re.fullmatch(r"(\d+):(\d+)(?::(\d+))?", text)
        if not m:
            raise ValueError(f"--batch: '{spec}' is not a range a:b, a:b:step or a list 1,8,64")
        a, b, step = int(m.group(1)), int(m.group(2)), m.group(3)
        if a < 1:
            raise ValueError(f"--batch: '{spec}': batch sizes start at 1")
        if b < a:
            raise ValueError(f"--batch: '{spec}': the range ends before it starts")
        if step is not None:
            if int(step) < 1:
                raise ValueError(f"--batch: '{spec}': the step must be at least 1")
            values = list(range(a, b + 1, int(step)))
        elif log:
            values = sorted({a, b} | {1 << k for k in range(a.bit_length(), b.bit_length()) if a <= 1 << k <= b})
        else:
            values = list(range(a, b + 1))
    if not values or values[0] < 1:
        raise ValueError(f"--batch: '{spec}': batch sizes must be positive integers")
    if len(values) > MAX_POINTS:
        raise ValueError(f"--batch: '{spec}' has {len(values):,} points; at most {MAX_POINTS:,}")
    return values


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
        line = SweepLine(
            strategy=label,
            peak_bytes=[int(round(p)) for p in peaks],
            peak_event=[plan.events[i] for i in live.argmax(axis=0)],
        )
        if device is not None:
            usable = device.memory.usable_bytes
            et = EnergyModel(count_ops(graph, strat), count_traffic(graph, strat, plan), device,
                             context=f"{label}: ").evaluate(bs)
            line.fits = [bool(p <= usable) for p in peaks]
            line.max_batch = plan.max_batch(usable)
            line.joules_per_sample = (et.joules / bs).tolist()
            line.seconds_per_sample = (et.seconds / bs).tolist()
        lines.append(line)
    return Sweep(
        model=graph.model.name, batches=list(batches), engine=eng.name, retention=retention,
        workspace_budget=workspace_budget,
        device=device.name if device is not None else None,
        usable_bytes=device.memory.usable_bytes if device is not None else None, lines=lines,
    )
