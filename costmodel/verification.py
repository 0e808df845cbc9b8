"""The model's prediction laid against the bundled trainer's measurement (`bnncost verify`).

The trainer's measurement arrives as plain data (`Measurement`); this module
never imports the trainer, and the trainer never imports the cost formulas, so
the two sides stay independent computations.

Tolerances:
- every variable's bytes and lifetime, the ledger's peak and its event, and
  every operation count (by layer, phase, kind and format) must agree exactly;
- the process-level peak (tracemalloc: every numpy buffer alive, the ledger's
  and numpy's own temporaries) may exceed the predicted peak by at most
  PROCESS_MARGIN_FRACTION of it plus PROCESS_MARGIN_BYTES, and may never be
  below it by more than 1%.
"""

from __future__ import annotations

import os

from pydantic import BaseModel

from bnncost.costmodel.memory import MemoryPlan
from bnncost.costmodel.ops import OpCount

VERIFICATION_SCHEMA = "bnncost.verification/2"
# What tracemalloc sees beyond the ledger: the network's Python objects (tens of kB)
# and numpy's transient temporaries, which the trainer keeps small rather than
# modelling them: elementwise work in float32 chunks of 16 KiB, products in
# float32 tiles of 64 KiB in all, the optimizer's three 16 KiB work rows, float16
# stores flushed in place (boolean masks of 16K values), po2 codes and float16
# values converted through bounded gathers, conv patch indices computed per block
# (no per-layer tables), pools and joins below one sample. Over the verify test
# matrix (fast zoo models, every shipped strategy, both retentions, budgets 0,
# 4 KiB and 64 KiB) that came to 0.1-0.28 MB: within 3% + 256 KiB (issue 9).
PROCESS_MARGIN_FRACTION = 0.03
PROCESS_MARGIN_BYTES = 256 << 10
PROCESS_BELOW_FRACTION = 0.01


class MeasuredVariable(BaseModel):
    name: str
    layer: str
    role: str
    format: str
    bytes: int
    alloc_event: str
    free_event: str


class Measurement(BaseModel):
    """What the trainer measured over one training step."""

    variables: list[MeasuredVariable]
    ledger_peak_bytes: int
    ledger_peak_event: str
    process_peak_bytes: int
    ops: dict[tuple[str, str, str, str], int]  # (layer, phase, kind, format) -> count


class VariableCheck(BaseModel):
    name: str
    role: str
    predicted_bytes: int | None
    measured_bytes: int | None
    predicted_life: str | None
    measured_life: str | None
    ok: bool


class OpCheck(BaseModel):
    phase: str
    kind: str
    format: str
    predicted: int
    measured: int
    ok: bool


class PeakCheck(BaseModel):
    predicted_bytes: int
    ledger_bytes: int
    process_bytes: int
    predicted_event: str
    ledger_event: str
    ledger_ok: bool
    process_ok: bool
    process_limit_bytes: int
    process_floor_bytes: int


# step time against a calibrated device (bnncost calibrate): the step's median must be within
# TIME_TOLERANCE of the prediction; each phase within TIME_TOLERANCE of its own measured time, or
# within TIME_PHASE_FLOOR of the whole step (a phase that small is mostly timer and scheduler noise)
TIME_TOLERANCE = 0.15
TIME_PHASE_FLOOR = 0.05


class PhaseTime(BaseModel):
    phase: str  # forward, backward, update, or step (the whole step)
    predicted_s: float
    measured_s: float
    error: float  # predicted / measured - 1
    ok: bool


class TimeCheck(BaseModel):
    device: str
    steps: int  # timed steps (after the warm-up), each figure is their median
    warmup: int
    clock: str  # "cpu" (the process's CPU time) or "wall"
    wall_step_s: float
    load_average: float  # 1-minute load average when the steps were timed
    raw_step_s: float | None = None  # the median step as timed, at the core's speed then
    reference_s: float | None = None  # the reference step's median time between the steps (trainer.timing)
    calibration_reference_s: float | None = None  # ... when the device was calibrated: phases are at this speed
    phases: list[PhaseTime]
    ok: bool


def check_time(device: str, predicted: dict[str, float], measured: dict[str, float], steps: int,
               warmup: int, clock: str = "cpu", wall_step_s: float = float("nan"), *,
               raw_step_s: float | None = None, reference_s: float | None = None,
               calibration_reference_s: float | None = None) -> TimeCheck:
    """Predicted seconds per phase (forward, backward, update) against measured medians; 'step' is the total.
    With reference figures, `measured` is at the calibration's core speed (trainer.timing)."""
    total_p, total_m = sum(predicted.values()), measured.get("step", sum(measured.values()))
    rows = []
    for phase in list(predicted) + ["step"]:
        p = total_p if phase == "step" else predicted[phase]
        m = total_m if phase == "step" else measured.get(phase, 0.0)
        err = p / m - 1 if m > 0 else float("inf")
        ok = abs(p - m) <= TIME_TOLERANCE * m or (phase != "step" and abs(p - m) <= TIME_PHASE_FLOOR * total_m)
        rows.append(PhaseTime(phase=phase, predicted_s=p, measured_s=m, error=err, ok=ok))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return TimeCheck(device=device, steps=steps, warmup=warmup, clock=clock, wall_step_s=wall_step_s,
                     load_average=load, raw_step_s=raw_step_s, reference_s=reference_s,
                     calibration_reference_s=calibration_reference_s, phases=rows, ok=all(r.ok for r in rows))


class Verification(BaseModel):
    model: str
    strategy: str
    batch_size: int
    engine: str
    retention: str
    workspace_budget: int
    ok: bool
    variables: list[VariableCheck]
    peak: PeakCheck
    ops: list[OpCheck]
    op_mismatches: list[dict]
    time: TimeCheck | None = None  # with a calibrated device (verify --device)

    def to_json(self) -> dict:
        """The JSON reference's shape: the prediction under `memory`, the trainer's measurement under
        `measured`, op counts as records."""
        p = self.peak
        return {
            "schema": VERIFICATION_SCHEMA,
            "model": self.model, "strategy": self.strategy, "batch": self.batch_size, "engine": self.engine,
            "retention": self.retention, "workspace_budget": self.workspace_budget, "ok": self.ok,
            "memory": {"peak_bytes": p.predicted_bytes, "peak_event": p.predicted_event},
            "measured": {"peak_bytes": p.ledger_bytes, "peak_event": p.ledger_event,
                         "process_peak_bytes": p.process_bytes},
            "peak": {"ledger_ok": p.ledger_ok, "process_ok": p.process_ok,
                     "process_floor_bytes": p.process_floor_bytes, "process_limit_bytes": p.process_limit_bytes},
            "variables": [v.model_dump() for v in self.variables],
            "ops": [o.model_dump() for o in self.ops],
            "op_mismatches": self.op_mismatches,
            "tolerance": {
                "variable_bytes": "exact", "ledger_peak": "exact", "op_counts": "exact",
                "process_peak_above_fraction": PROCESS_MARGIN_FRACTION,
                "process_peak_above_bytes": PROCESS_MARGIN_BYTES,
                "process_peak_below_fraction": PROCESS_BELOW_FRACTION,
                **({"step_time_fraction": TIME_TOLERANCE, "phase_time_fraction": TIME_TOLERANCE,
                    "phase_time_floor_of_step": TIME_PHASE_FLOOR} if self.time is not None else {}),
            },
            **({"time": self.time.model_dump()} if self.time is not None else {}),
        }


def verify_against(plan: MemoryPlan, ops: list[OpCount], batch: int, measured: Measurement, *,
                   model: str, strategy: str, engine: str, retention: str, workspace_budget: int) -> Verification:
    """Compare a memory plan and op listing at this batch with a measurement, item by item."""
    predicted = {v.name: v for v in plan.variables}
    got = {v.name: v for v in measured.variables}
    checks = []
    for name in list(predicted) + [n for n in got if n not in predicted]:
        p, m = predicted.get(name), got.get(name)
        p_bytes = p.bytes_at(batch) if p else None
        p_life = f"{plan.events[p.alloc]} -> {plan.events[p.free]}" if p else None
        m_life = f"{m.alloc_event} -> {m.free_event}" if m else None
        checks.append(VariableCheck(
            name=name, role=(p.role if p else m.role), predicted_bytes=p_bytes,
            measured_bytes=m.bytes if m else None, predicted_life=p_life, measured_life=m_life,
            ok=p is not None and m is not None and p_bytes == m.bytes and p_life == m_life,
        ))
    peak, e, _, _ = plan.peak(batch)
    limit = int(peak * (1 + PROCESS_MARGIN_FRACTION)) + PROCESS_MARGIN_BYTES
    floor = int(peak * (1 - PROCESS_BELOW_FRACTION))
    peak_check = PeakCheck(
        predicted_bytes=peak, ledger_bytes=measured.ledger_peak_bytes, process_bytes=measured.process_peak_bytes,
        predicted_event=plan.events[e], ledger_event=measured.ledger_peak_event,
        ledger_ok=peak == measured.ledger_peak_bytes and plan.events[e] == measured.ledger_peak_event,
        process_ok=floor <= measured.process_peak_bytes <= limit,
        process_limit_bytes=limit, process_floor_bytes=floor,
    )
    want: dict[tuple, int] = {}
    for o in ops:
        key = (o.layer, o.phase, o.kind, o.format)
        want[key] = want.get(key, 0) + o.at(batch)
    mismatches = [
        {"layer": k[0], "phase": k[1], "kind": k[2], "format": k[3],
         "predicted": want.get(k, 0), "measured": measured.ops.get(k, 0)}
        for k in sorted(set(want) | set(measured.ops))
        if want.get(k, 0) != measured.ops.get(k, 0)
    ]
    grouped: dict[tuple, list[int]] = {}
    for source, table in ((0, want), (1, measured.ops)):
        for (layer, phase, kind, fmt), n in table.items():
            grouped.setdefault((phase, kind, fmt), [0, 0])[source] += n
    op_checks = [OpCheck(phase=p, kind=k, format=f, predicted=a, measured=b, ok=a == b)
                 for (p, k, f), (a, b) in sorted(grouped.items())]
    ok = all(c.ok for c in checks) and peak_check.ledger_ok and peak_check.process_ok and not mismatches
    return Verification(
        model=model, strategy=strategy, batch_size=batch, engine=engine, retention=retention,
        workspace_budget=workspace_budget,
        ok=ok, variables=checks, peak=peak_check, ops=op_checks, op_mismatches=mismatches,
    )
