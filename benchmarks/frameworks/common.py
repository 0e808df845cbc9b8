"""What every framework measurement shares: the machine, the markers in memray's stream, the replay, the record.

A measured run puts one memray tracker around everything after the
framework's import (the model, the optimizer, the data, the warm-up steps,
the measured steps). Between phases of a measured step the driver makes one
malloc of an odd, recognisable size (`mark`); `replay` walks every allocation
and free memray recorded, in order, and returns for each measured step the
heap at its start (the baseline) and the peak heap of each phase. Replaying
the whole run (not a tracker started at the step) subtracts buffers that were
allocated before the step and freed inside it.
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from bnncost.calibrate.machine import cpu_model

HERE = Path(__file__).resolve().parent
MEASUREMENTS = HERE / "measurements"
SCHEMA = "bnncost.framework-measurement/1"

# Odd malloc sizes no framework buffer has: they mark the phases of a measured step.
MARKS = {3_141_593: "step_start", 2_718_283: "forward_end", 1_414_213: "backward_end", 1_732_051: "step_end"}
MARK_OF = {v: k for k, v in MARKS.items()}
_FREES = {"FREE", "MUNMAP", "PYMALLOC_FREE"}  # memray.AllocatorType names that release memory


def mark(event: str) -> None:
    """One malloc and free of the event's marker size through numpy (whose malloc memray intercepts)."""
    import numpy as np

    marker = np.empty(MARK_OF[event], dtype=np.uint8)
    del marker


def machine() -> dict:
    return {"python": sys.version.split()[0], "cpu": cpu_model(), "platform": platform.platform()}


@contextmanager
def traced(run, *, prefix: str):
    """Run `run()` under one memray tracker and yield its capture file, removed when the block ends."""
    import memray

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        path = Path(tmp) / "run.bin"
        with memray.Tracker(path):
            run()
        yield path


def heap_events(path: Path):
    """Every allocation and free memray recorded, in order, with the bytes live after it: (record, size,
    freed, live). A free of memory allocated before the tracker started is skipped (its size is unknown)."""
    import memray

    frees = {int(getattr(memray.AllocatorType, n)) for n in _FREES}
    live: dict[int, int] = {}
    now = 0
    for rec in memray.FileReader(path).get_allocation_records():
        if int(rec.allocator) in frees:
            size = live.pop(rec.address, None)
            if size is not None:
                now -= size
                yield rec, size, True, now
        else:
            live[rec.address] = rec.size
            now += rec.size
            yield rec, rec.size, False, now


def replay(path: Path, *, keep_at_peak: bool = False, keep_at: str | None = None) -> dict:
    """Per measured step: `baseline` (heap at step_start), `peak` and the peak of each phase.

    With keep_at_peak, also the memray records of the allocations made inside
    the first measured step that are still live at its peak (for attribution);
    with keep_at (a marker: forward_end, backward_end), those live at that
    marker of the first measured step, as `at_<marker>`, and the heap there in
    the step's `<marker>` field.
    """
    import memray

    frees = {int(getattr(memray.AllocatorType, n)) for n in _FREES}
    live: dict[int, int] = {}
    born: dict[int, object] = {}
    heap = 0
    steps: list[dict] = []
    phase = None
    at_peak: list = []
    kept_at: list = []
    for rec in memray.FileReader(path).get_allocation_records():
        if int(rec.allocator) in frees:
            gone = live.pop(rec.address, None)
            if gone is not None:
                heap -= gone
                born.pop(rec.address, None)
            continue
        event = MARKS.get(rec.size)
        if event is not None and event == keep_at and phase is not None:
            steps[-1][event] = heap
            if len(steps) == 1:
                kept_at = list(born.values())
        if event is not None:
            if event == "step_start":
                steps.append({"baseline": heap, "peak": heap, "phases": {}})
                born, phase = {}, "forward"
            elif event == "forward_end":
                phase = "backward"
            elif event == "backward_end":
                phase = "update"
            else:
                steps[-1]["end"] = heap
                phase = None
            continue
        live[rec.address] = rec.size
        heap += rec.size
        if phase is not None:
            step = steps[-1]
            born[rec.address] = rec
            step["phases"][phase] = max(step["phases"].get(phase, 0), heap)
            if heap > step["peak"]:
                step["peak"] = heap
                step["peak_phase"] = phase
                if keep_at_peak and len(steps) == 1:
                    at_peak = list(born.values())
    if not steps or "end" not in steps[-1]:
        raise RuntimeError(f"{path}: the step markers are missing from memray's records")
    out: dict = {"steps": steps}
    if keep_at_peak:
        out["at_peak"] = at_peak
    if keep_at is not None:
        out[f"at_{keep_at}"] = kept_at
    return out


def write_record(record: dict, name: str) -> Path:
    MEASUREMENTS.mkdir(parents=True, exist_ok=True)
    path = MEASUREMENTS / f"{name}.json"
    path.write_text(json.dumps(record, indent=1, sort_keys=False) + "\n")
    return path
