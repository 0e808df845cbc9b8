"""One prediction: a model, a strategy, a batch size and an implementation, costed.

This is the result object every command prints (as a table or as JSON); the
formulas live in `memory`, `ops` and `energy`.
"""

from __future__ import annotations

from itertools import accumulate

from pydantic import BaseModel

from bnncost.costmodel.energy import EnergyModel, steps_per_epoch
from bnncost.costmodel.engine import Engine, as_engine
from bnncost.costmodel.memory import MemoryPlan, memory_plan
from bnncost.costmodel.ops import PHASES, OpCount, count_ops, count_traffic
from bnncost.costmodel.results import Presentable
from bnncost.costmodel.strategy import Strategy, as_strategy, strategy_labels
from bnncost.costmodel.timing import operator_work
from bnncost.layers.graph import Graph, graph_of
from bnncost.layers.model import Model

PREDICTION_SCHEMA = "bnncost.prediction/2"
COMPARISON_SCHEMA = "bnncost.comparison/2"


class VariableReport(BaseModel):
    name: str
    layer: str
    role: str
    format: str
    shape: list
    bytes: int
    alloc_event: str
    free_event: str
    alive_at_peak: bool


class MemoryReport(BaseModel):
    peak_bytes: int  # the process peak: what fit compares with a device's usable memory
    tensor_peak_bytes: int  # the engine's tensors at the peak event
    runtime_bytes: int  # the engine's bytes that are not tensors (at this batch)
    process_peak_bytes: int  # tensor peak + runtime bytes
    peak_event: str
    fixed_bytes: int
    per_sample_bytes: int
    by_role: dict[str, int]  # bytes of each role alive at the peak event (they sum to the peak)
    by_role_max: dict[str, int]  # each role's own largest live bytes at any event of the step
    by_layer: dict[str, int]  # bytes of each layer alive at the peak event
    variables: list[VariableReport]


class OpRecord(BaseModel):
    """One operation count; aggregates leave out `layer` (total: also `phase`)."""

    layer: str | None = None
    phase: str | None = None
    kind: str
    format: str
    count: int


class OpsReport(BaseModel):
    counts: list[OpRecord]  # every count by layer, phase, kind and format
    by_phase: list[OpRecord]  # summed over layers
    total: list[OpRecord]  # summed over layers and phases
    macs: dict[str, int]  # multiply-accumulates by format
    bit_macs: int  # binary x binary products (informational: the xnor_popcount words are what costs)

    def to_json(self) -> dict:
        doc = self.model_dump()
        for key in ("counts", "by_phase", "total"):
            doc[key] = [{k: v for k, v in r.items() if v is not None} for r in doc[key]]
        return doc


class EnergyReport(BaseModel):
    joules_per_step: float
    compute_j: float
    memory_j: float
    static_j: float
    dynamic_j: float  # compute + memory: what a measurement above idle sees
    joules_per_sample: float
    joules_per_epoch: float | None
    memory_bytes_by_level: dict[str, int]


class TimeReport(BaseModel):
    seconds_per_step: float
    compute_s: float
    memory_s: float
    seconds_per_sample: float
    seconds_per_epoch: float | None
    epoch_samples: int | None
    # what the time is: "peak-rate lower bound" (a shipped board's peak rates) or
    # "calibrated bundled trainer" (operator costs measured by bnncost calibrate: a prediction)
    basis: str = "peak-rate lower bound"
    seconds_by_event: dict[str, float] | None = None  # calibrated: forward, backward, update, overhead


ENERGY_UNAVAILABLE = "unavailable: the device file has no power figures (calibrate with --base DEVICE or --idle-w/--active-w)"


class FitReport(BaseModel):
    fits: bool
    usable_bytes: int
    max_batch: int
    headroom_bytes: int
    peak_bytes_at_max_batch: int | None  # None when not even one sample fits


class Prediction(Presentable, BaseModel):
    schema_: str = PREDICTION_SCHEMA
    model: str
    strategy: str  # the label: the strategy's name, made distinct within one comparison
    strategy_source: str  # where it was loaded from: strategy:NAME for a shipped one, else the file
    batch: int
    engine: str
    retention: str
    workspace_budget: int
    memory: MemoryReport
    batchnorm: str  # the strategy's batchnorm kind: l1 trains no gamma, so it has fewer parameters
    parameters: int  # trainable parameters under that batchnorm
    ops: OpsReport
    device: str | None = None
    energy: EnergyReport | None = None
    energy_unavailable: str | None = None  # why `energy` is absent on a device (never reported as zero)
    time: TimeReport | None = None
    fit: FitReport | None = None

    @property
    def batch_size(self) -> int:
        """The batch size under its former name."""
        return self.batch

    def to_json(self) -> dict:
        doc = self.model_dump(exclude_none=True)
        doc["ops"] = self.ops.to_json()
        return {"schema": doc.pop("schema_"), **doc}

    def title(self) -> str:
        where = f" on {self.device}" if self.device else ""
        return (f"{self.model} · {self.strategy} · batch {self.batch}{where}: peak {self.memory.peak_bytes:,} bytes "
                f"at {self.memory.peak_event} = {self.memory.fixed_bytes:,} + {self.memory.per_sample_bytes:,} x batch")

    def records(self) -> list[dict]:
        """One row per role: its formats, its bytes at the peak event and its largest over the step."""
        formats: dict[str, set] = {}
        for v in self.memory.variables:
            formats.setdefault(v.role, set()).add(v.format)
        return [{"role": role, "format": ", ".join(sorted(formats[role])),
                 "bytes_at_peak": self.memory.by_role.get(role, 0), "largest_bytes": largest}
                for role, largest in self.memory.by_role_max.items()]


class Comparison(Presentable, BaseModel):
    baseline: str
    predictions: list[Prediction]
    savings: dict[str, dict[str, float]]  # label -> {peak_bytes_ratio, ...}: baseline's figure / this one's

    @property
    def model(self) -> str:
        return self.predictions[0].model

    @property
    def batch(self) -> int:
        return self.predictions[0].batch

    @property
    def device(self) -> str | None:
        return self.predictions[0].device

    @property
    def strategies(self) -> list[str]:
        return [p.strategy for p in self.predictions]

    def title(self) -> str:
        where = f" on {self.device}" if self.device else ""
        return f"{self.model} · batch {self.batch}{where}: savings against {self.baseline}"

    def records(self) -> list[dict]:
        """One row per strategy: its peak, formula and saving (and energy, time and fit on a device)."""
        rows = []
        for p in self.predictions:
            row = {"strategy": p.strategy, "peak_bytes": p.memory.peak_bytes, "peak_event": p.memory.peak_event,
                   "fixed_bytes": p.memory.fixed_bytes, "per_sample_bytes": p.memory.per_sample_bytes,
                   **self.savings[p.strategy]}
            if p.energy is not None:
                row.update(joules_per_step=p.energy.joules_per_step, seconds_per_step=p.time.seconds_per_step,
                           fits=p.fit.fits, max_batch=p.fit.max_batch)
            rows.append(row)
        return rows

    def to_json(self) -> dict:
        p0 = self.predictions[0]
        doc = {"schema": COMPARISON_SCHEMA, "model": p0.model, "batch": p0.batch}
        if p0.device is not None:
            doc["device"] = p0.device
        return {
            **doc, "engine": p0.engine, "retention": p0.retention, "workspace_budget": p0.workspace_budget,
            "baseline": self.baseline, "strategies": self.strategies,
            "predictions": [p.to_json() for p in self.predictions],
            "savings": self.savings,
        }


MAX_BATCH = 10 ** 30  # bytes stay exact integers up to here; energy and time stay finite floats


def check_batch(batch: int) -> None:
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch size must be a positive integer, not {batch!r:.40}")
    if batch > MAX_BATCH:
        raise ValueError(f"batch size {str(batch)[:12]}... ({len(str(batch))} digits) is larger than "
                         f"the 10^30 bnncost computes with")


def implementation_knobs(engine: Engine, retention: str | None, workspace_budget: int | None) -> tuple[str, int]:
    """Retention and workspace budget: the caller's where given, else the engine's."""
    return (engine.retention if retention is None else retention,
            engine.workspace.budget if workspace_budget is None else workspace_budget)


def memory_report(plan: MemoryPlan, batch: int) -> MemoryReport:
    peak, e, fixed, per = plan.peak(batch)
    by_role: dict[str, int] = {}
    by_layer: dict[str, int] = {}
    change_by_role: dict[str, list[int]] = {}  # role -> change of its live bytes at each event (summed below)
    rows = []
    for v in plan.variables:
        nbytes = v.bytes_at(batch)
        if v.alloc <= e <= v.free:
            by_role[v.role] = by_role.get(v.role, 0) + nbytes
            by_layer[v.layer] = by_layer.get(v.layer, 0) + nbytes
        change = change_by_role.setdefault(v.role, [0] * (len(plan.events) + 1))
        change[v.alloc] += nbytes
        change[v.free + 1] -= nbytes
        rows.append(VariableReport(
            name=v.name, layer=v.layer, role=v.role, format=v.format, shape=v.shape_at(batch),
            bytes=nbytes, alloc_event=plan.events[v.alloc], free_event=plan.events[v.free],
            alive_at_peak=v.alloc <= e <= v.free,
        ))
    runtime = plan.runtime_bytes(batch)
    return MemoryReport(
        peak_bytes=peak, tensor_peak_bytes=peak - runtime, runtime_bytes=runtime, process_peak_bytes=peak,
        peak_event=plan.events[e], fixed_bytes=fixed, per_sample_bytes=per,
        by_role=dict(sorted(by_role.items(), key=lambda kv: -kv[1])),
        by_role_max=dict(sorted(((r, max(accumulate(change[:-1]))) for r, change in change_by_role.items()),
                                key=lambda kv: -kv[1])),
        by_layer=by_layer, variables=rows,
    )


def ops_report(ops: list[OpCount], batch: int) -> OpsReport:
    counts = [OpRecord(layer=o.layer, phase=o.phase, kind=o.kind, format=o.format, count=o.at(batch)) for o in ops]
    phase_sums: dict[tuple, int] = {}
    total_sums: dict[tuple, int] = {}
    for r in counts:
        phase_sums[(r.phase, r.kind, r.format)] = phase_sums.get((r.phase, r.kind, r.format), 0) + r.count
        total_sums[(r.kind, r.format)] = total_sums.get((r.kind, r.format), 0) + r.count
    phase_order = {p: i for i, p in enumerate(PHASES)}
    return OpsReport(
        counts=counts,
        by_phase=[OpRecord(phase=p, kind=k, format=f, count=n)
                  for (p, k, f), n in sorted(phase_sums.items(), key=lambda kv: (phase_order[kv[0][0]], -kv[1]))],
        total=[OpRecord(kind=k, format=f, count=n) for (k, f), n in sorted(total_sums.items(), key=lambda kv: -kv[1])],
        macs={f: n for (k, f), n in total_sums.items() if k == "mac"},
        bit_macs=total_sums.get(("bit_mac", "bool"), 0),
    )


def device_reports(energy: EnergyModel, plan: MemoryPlan, batch: int, epoch_samples: int | None):
    """Energy, time and fit of one step at this batch on the energy model's device."""
    et = energy.evaluate(batch)
    joules, seconds = float(et.joules[0]), float(et.seconds[0])
    per_epoch_j = per_epoch_s = None
    if epoch_samples:
        full, rest = steps_per_epoch(epoch_samples, batch)
        per_epoch_j, per_epoch_s = full * joules, full * seconds
        if rest:
            last = energy.evaluate(rest)
            per_epoch_j += float(last.joules[0])
            per_epoch_s += float(last.seconds[0])
    usable = energy.device.memory.usable_bytes
    peak = int(plan.peak_bytes(batch)[0])
    max_batch = plan.max_batch(usable)
    by_event = None if et.seconds_by_event is None else {k: float(v[0]) for k, v in et.seconds_by_event.items()}
    return (
        None if not energy.energy_known else EnergyReport(
            joules_per_step=joules, compute_j=float(et.compute_j[0]), memory_j=float(et.memory_j[0]),
            static_j=float(et.static_j[0]), dynamic_j=float(et.dynamic_j[0]),
            joules_per_sample=joules / batch, joules_per_epoch=per_epoch_j,
            memory_bytes_by_level={k: int(v[0]) for k, v in et.bytes_by_level.items()},
        ),
        TimeReport(
            seconds_per_step=seconds, compute_s=float(et.compute_s[0]), memory_s=float(et.memory_s[0]),
            seconds_per_sample=seconds / batch, seconds_per_epoch=per_epoch_s, epoch_samples=epoch_samples,
            basis="peak-rate lower bound" if by_event is None else "calibrated bundled trainer",
            seconds_by_event=by_event,
        ),
        FitReport(fits=peak <= usable, usable_bytes=usable, max_batch=max_batch, headroom_bytes=usable - peak,
                  peak_bytes_at_max_batch=int(plan.peak_bytes(max_batch)[0]) if max_batch else None),
    )


def predict(
    model: str | Model | Graph,
    strategy: str | Strategy = "proposed",
    batch: int = 100,
    *,
    engine: str | Engine | None = None,
    retention: str | None = None,
    workspace_budget: int | None = None,
    device=None,
    epoch_samples: int | None = None,
    label: str | None = None,
) -> Prediction:
    """Cost one training step. `device` is a loaded Device (hardware_profiles) or None; `label` names the
    strategy in the result (default: its name).

    `engine` (a name, a path or an Engine; default reference) says how the
    implementation holds the step; `retention` and `workspace_budget`, when
    given, override the engine's.
    """
    check_batch(batch)
    graph = graph_of(model)
    strat = as_strategy(strategy)
    eng = as_engine(engine)
    retention, workspace_budget = implementation_knobs(eng, retention, workspace_budget)
    plan = memory_plan(graph, strat, retention=retention, workspace_budget=workspace_budget, engine=eng)
    ops = count_ops(graph, strat)
    pred = Prediction(
        model=graph.model.name, strategy=label or strat.name, strategy_source=strat.source, batch=batch,
        engine=eng.name, retention=retention, workspace_budget=workspace_budget, memory=memory_report(plan, batch),
        batchnorm=strat.batchnorm, parameters=graph.parameter_count(strat.batchnorm), ops=ops_report(ops, batch),
    )
    if device is not None:
        energy = EnergyModel(ops, count_traffic(graph, strat, plan), device, context=f"{pred.strategy}: ",
                             work=(operator_work(graph, strat, retention, workspace_budget)
                                   if device.trainer is not None else None))
        pred.device = device.name
        pred.energy, pred.time, pred.fit = device_reports(
            energy, plan, batch, epoch_samples or graph.model.train_samples)
        if pred.energy is None:
            pred.energy_unavailable = ENERGY_UNAVAILABLE
    return pred


def compare(
    model: str | Model | Graph,
    strategies: list[str | Strategy],
    batch: int = 100,
    **knobs,
) -> Comparison:
    """Predict every strategy; savings are ratios, the first strategy's figure over each one's.

    Each strategy is loaded once and kept: two with one name (a user's `name: proposed` file beside the
    shipped one) stay two, with distinct labels (strategy_labels)."""
    graph = graph_of(model)
    knobs["engine"] = as_engine(knobs.get("engine"))  # read a user's file once
    strats = [as_strategy(s) for s in strategies]
    preds = [predict(graph, s, batch, label=label, **knobs) for s, label in zip(strats, strategy_labels(strats))]
    base = preds[0]
    savings = {}
    for p in preds:
        savings[p.strategy] = {"peak_bytes_ratio": base.memory.peak_bytes / p.memory.peak_bytes}
        if p.energy is not None and base.energy is not None:
            savings[p.strategy]["joules_per_step_ratio"] = base.energy.joules_per_step / p.energy.joules_per_step
        if p.time is not None:
            savings[p.strategy]["seconds_per_step_ratio"] = base.time.seconds_per_step / p.time.seconds_per_step
    return Comparison(baseline=base.strategy, predictions=preds, savings=savings)
