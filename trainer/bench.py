"""Timing real training steps, for benchmarks/run.py (the trainer's own measurement of itself)."""

from __future__ import annotations

from bnncost.trainer.base import DEFAULT_WORKSPACE
from bnncost.trainer.run import run_steps


def measure_steps(model: str, strategy: str, *, batch: int = 100, steps: int = 11,
                  workspace_budget: int = DEFAULT_WORKSPACE, retention: str = "step") -> dict:
    """Median seconds per step over `steps` timed steps (after one traced, untimed step), and the peaks.

    Returns {"step_s", "ledger_peak_bytes", "ledger_peak_event", "process_peak_bytes", "steps", "batch"}.
    """
    m = run_steps(model, strategy, batch=batch, steps=steps + 1, workspace_budget=workspace_budget,
                  retention=retention)
    return {"step_s": m.seconds_per_step, "ledger_peak_bytes": m.ledger_peak_bytes,
            "ledger_peak_event": m.ledger_peak_event, "process_peak_bytes": m.process_peak_bytes,
            "steps": steps, "batch": batch}
