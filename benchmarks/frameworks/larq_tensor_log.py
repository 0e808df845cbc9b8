"""Which tensors, by graph node, a Larq training step holds at its peak: TensorFlow's own memory log, replayed.

    python benchmarks/frameworks/larq_tensor_log.py MODEL --batch B [--runs N] [--top K]

Each run is one process of the recordings' harness (`larq_measure.py
--print --memory-log`, the same model, step, warm-up and memray tracking)
with TensorFlow's memory log on (TF_CPP_VMODULE=log_memory=3: every tensor
allocation with the node that made it, its shape, dtype and bytes, and every
deallocation). The log of the last training step is replayed: the peak of
the tensors the step allocated, and the tensors live there, by node name
(gradient_tape/... are the backward's, Adam/... the update's), largest
first. memray's tensor peak of the same process is printed beside it.

Why: memray sees allocations by native stack, so it tells which kernel made
a buffer but not which layer's op; this log names the node, so a predicted
peak can be compared tensor by tensor with what TensorFlow holds. Tensors
TensorFlow does not allocate through its allocators (oneDNN scratchpads,
kernel caches) are not in this log: they are memray's alone.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import NamedTuple

from larq_measure import fresh_process

ALLOC = re.compile(r"MemoryLogTensorAllocation \{ step_id: (-?\d+) kernel_name: \"([^\"]*)\" tensor \{ dtype: (\w+)"
                   r"(?: shape \{(.*?)\})? allocation_description \{ requested_bytes: (\d+) .*?allocation_id: (\d+)")
FREE = re.compile(r"MemoryLogTensorDeallocation \{ allocation_id: (\d+)")
OUTPUT = re.compile(r"MemoryLogTensorOutput \{ step_id: (-?\d+) kernel_name: \"([^\"]*)\".*?allocation_id: (\d+)")
DIM = re.compile(r"size: (\d+)")


class Alloc(NamedTuple):
    step: str
    node: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    id: int


class Output(NamedTuple):  # an op's output: a buffer it allocated, or one it took over from an input
    step: str
    node: str
    id: int


class Free(NamedTuple):
    id: int


def events_of(log: str) -> list:
    """The memory log's allocations, outputs and frees, in order."""
    events: list = []
    for line in log.splitlines():
        if "__LOG_MEMORY__" not in line:
            continue
        if m := ALLOC.search(line):
            shape = tuple(int(d) for d in DIM.findall(m.group(4) or ""))
            events.append(Alloc(m.group(1), m.group(2), m.group(3), shape, int(m.group(5)), int(m.group(6))))
        elif m := FREE.search(line):
            events.append(Free(int(m.group(1))))
        elif m := OUTPUT.search(line):
            events.append(Output(m.group(1), m.group(2), int(m.group(3))))
    return events


def last_step(events: list) -> str:
    """The id of the last training step: a function call's random id (small ones mark constants, -6), among the
    calls that allocate at least half as many tensors as the largest (not the small functions the harness traces)."""
    counts: dict[str, int] = {}
    for e in events:
        if isinstance(e, Alloc) and abs(int(e.step)) > 1000:
            counts[e.step] = counts.get(e.step, 0) + 1
    big = max(counts.values())
    return [s for s in counts if counts[s] > big // 2][-1]


def replay(log: str) -> dict:
    """The last step's peak of step-allocated tensor bytes and the tensors live at it."""
    events = events_of(log)
    step = last_step(events)
    first = next(k for k, e in enumerate(events) if isinstance(e, Alloc) and e.step == step)
    live: dict[int, Alloc] = {}
    outputs: dict[int, list[str]] = {}  # allocation -> the nodes that output it
    heap = peak = 0
    at_peak: list[tuple[Alloc, list[str]]] = []
    for e in events[first:]:
        if isinstance(e, Alloc) and e.step == step:
            live[e.id], outputs[e.id] = e, []
            heap += e.nbytes
            if heap > peak:
                peak, at_peak = heap, [(t, list(outputs[t.id])) for t in live.values()]
        elif isinstance(e, Output) and e.step == step and e.id in live:
            outputs[e.id].append(e.node)
        elif isinstance(e, Free) and e.id in live:
            heap -= live.pop(e.id).nbytes
    tensors = sorted(({"node": t.node, "dtype": t.dtype, "shape": list(t.shape), "bytes": t.nbytes,
                       "also_output_of": [n for n in outs if n != t.node]} for t, outs in at_peak),
                     key=lambda t: -t["bytes"])
    return {"step_peak_bytes": peak, "tensors": tensors}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--top", type=int, default=40, help="tensors listed per run (largest first)")
    args = p.parse_args(argv)
    for k in range(args.runs):
        record, log = fresh_process(args.model, args.batch, "--memory-log")
        r = replay(log)
        print(f"run {k + 1}: memray tensor peak {record['tensor_peak_bytes']:,} B; the log's step tensors at their "
              f"peak {r['step_peak_bytes']:,} B in {len(r['tensors'])} tensors")
        for t in r["tensors"][:args.top]:
            also = f"  (then output of {', '.join(t['also_output_of'])})" if t["also_output_of"] else ""
            print(f"  {t['bytes']:>12,}  {t['dtype']:<9} {'x'.join(map(str, t['shape'])) or '-':<16} {t['node']}{also}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
