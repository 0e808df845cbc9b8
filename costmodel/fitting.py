"""The largest batch that fits a device's usable memory, per strategy (`bnncost fit`, `bnncost.fit`).

A thin view of a comparison on a device: each strategy's peak at the asked batch, its formula, and the
fit report (largest batch, the peak there); the strategies stay as loaded, labelled apart.
"""

from __future__ import annotations

from pydantic import BaseModel

from bnncost.costmodel.prediction import FitReport, compare
from bnncost.costmodel.results import Presentable

FIT_SCHEMA = "bnncost.fit/2"
MEMORY_KEYS = ("peak_bytes", "peak_event", "fixed_bytes", "per_sample_bytes", "tensor_peak_bytes",
               "runtime_bytes", "process_peak_bytes")


class FitRow(BaseModel):
    strategy: str
    strategy_source: str
    memory: dict[str, int | str]  # MEMORY_KEYS of the prediction at the asked batch
    fit: FitReport


class FitTable(Presentable, BaseModel):
    model: str
    batch: int
    device: str
    usable_bytes: int
    ram_bytes: int
    engine: str
    retention: str
    workspace_budget: int
    strategies: list[FitRow]

    def to_json(self) -> dict:
        doc = self.model_dump(exclude={"usable_bytes", "ram_bytes"})
        return {"schema": FIT_SCHEMA, **doc}

    def title(self) -> str:
        return f"{self.model} on {self.device}: the largest batch that fits {self.usable_bytes:,} usable bytes"

    def records(self) -> list[dict]:
        return [{"strategy": r.strategy, "max_batch": r.fit.max_batch,
                 "peak_bytes_at_max_batch": r.fit.peak_bytes_at_max_batch,
                 f"peak_bytes_at_batch_{self.batch}": r.memory["peak_bytes"], "fits": r.fit.fits,
                 "fixed_bytes": r.memory["fixed_bytes"], "per_sample_bytes": r.memory["per_sample_bytes"]}
                for r in self.strategies]


def fit(model, strategies: list, device, batch: int = 100, **knobs) -> FitTable:
    """`device` is a loaded Device; `knobs` are predict's (engine, retention, workspace_budget)."""
    c = compare(model, strategies, batch, device=device, **knobs)
    p0 = c.predictions[0]
    return FitTable(
        model=c.model, batch=batch, device=device.name, usable_bytes=device.memory.usable_bytes,
        ram_bytes=device.memory.ram_bytes, engine=p0.engine, retention=p0.retention,
        workspace_budget=p0.workspace_budget,
        strategies=[FitRow(strategy=p.strategy, strategy_source=p.strategy_source,
                           memory={k: getattr(p.memory, k) for k in MEMORY_KEYS}, fit=p.fit)
                    for p in c.predictions])
