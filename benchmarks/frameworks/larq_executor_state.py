"""Record the size of TensorFlow's per-step executor state for Larq models, from the executor's log.

    python benchmarks/frameworks/larq_executor_state.py MODEL [MODEL ...] --batch B [--attribute] [--out DIR]

Each step of a graph function, TensorFlow's executor makes a
SimplePropagatorState (tensorflow/core/common_runtime/simple_propagator_state.cc):
one Entry per data input of every node of the optimised graph (the tensors
in flight between ops) and one atomic pending count per node, allocated when
the step starts and freed when it ends, so they sit under every step's peak.
Per model, one process of the recordings' harness (larq_measure.py) with the
executor's log on (TF_CPP_VMODULE=executor=1) gives the graph's nodes (its
node ids: the step runs every node) and their data inputs (a `^name` input
is a control edge, no Entry); with --attribute, memray's native stacks of
the same process give the bytes SimplePropagatorState allocated, live at the
step's peak, to check the sizes (an Entry is 48 bytes, a count 4). Records go
to measurements/probes/larq-executor-state/larq-executor-state-MODEL.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from larq_op_order import logged_measure

HERE = Path(__file__).resolve().parent
OUT = HERE / "measurements" / "probes" / "larq-executor-state"
ENTRY_BYTES = 48  # sizeof(tensorflow::Entry) in TensorFlow 2.15's x86-64 build (checked against memray below)
PENDING_BYTES = 4  # std::atomic<int32> per node


def executor_state(model: str, batch: int, attribute: bool) -> dict:
    """Nodes, data inputs and bytes of one model's per-step executor state."""
    record, ops = logged_measure(model, batch, "step" if attribute else None)
    nodes = 1 + max(node_id for node_id, _, _, _ in ops)
    inputs = sum(len([i for i in node_inputs if not i.startswith("^")]) for _, _, _, node_inputs in ops)
    out = {"model": record["model"], "model_file": record["model_file"], "batch": batch, "nodes": nodes,
           "data_inputs": inputs, "bytes": ENTRY_BYTES * inputs + PENDING_BYTES * nodes,
           "cpu": record["cpu"], "versions": record["versions"]}
    if attribute:
        out["attributed_bytes"] = sum(k["bytes"] for k in record["attribution"]["kernels"]
                                      if k["kernel"].startswith("tensorflow::SimplePropagatorState::"))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--attribute", action="store_true", help="check the bytes against memray's native stacks")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    if args.batch < 1:
        print(f"--batch must be a positive integer, got {args.batch}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for model in args.models:
        state = executor_state(model, args.batch, args.attribute)
        path = args.out / f"larq-executor-state-{state['model']}.json"
        path.write_text(json.dumps(state, indent=1) + "\n", encoding="utf-8")
        print(path, state["nodes"], state["data_inputs"], state["bytes"], state.get("attributed_bytes", ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
