"""Record the order in which TensorFlow's executor runs a Larq training step's ops, in one fresh process.

    python benchmarks/frameworks/larq_op_order.py MODEL --batch B [--runs N] [--out DIR]

Each run is one process of the recordings' harness (`larq_measure.py
--print --executor-log`: the same model, step, warm-up and memray tracking)
with TensorFlow's executor logging every op it runs (TF_CPP_VMODULE=
executor=1). From the last measured
step's ops, in the order they ran, the record keeps:
- per dense or conv layer with a dX, whether dW's product ran before dX's
  and whether the update of its kernel (the last assignment to the kernel's
  variable: Adam's, or the weight clip's) ran before dX's product: the order
  the `larq` engine stages a layer's backward in (dW's product, its update,
  dX's product);
- per STE mask of an activation (an `Abs` of a tensor that is not a
  variable), whether it ran in the forward (before the step's first backward
  product) or in the backward;
- the run's tensor peak, to see which order gives which peak.
Runs go one at a time, each in its own process, into
measurements/probes/larq-op-order/larq-op-order-MODEL-bB.json.

Why: the order is picked per process (the order in which the step's root
ops, the variable reads, run differs between processes; within one process
every step runs the same order), so one process is one draw: several show
how often each order comes.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from larq_measure import fresh_process

HERE = Path(__file__).resolve().parent
OUT = HERE / "measurements" / "probes" / "larq-op-order"
PROCESS = re.compile(r"Process node: (\d+) step (-?\d+) \{\{node ([^}]+)\}\} = (\w+)(?:\[.*?\])?\(([^)]*)\)")
ASSIGNS = ("AssignSubVariableOp", "AssignVariableOp")


def step_ops(log: str) -> list[tuple[int, str, str, list[str]]]:
    """(node id, name, op type, inputs) of the last training step in an executor log, in the order they ran."""
    steps: dict[str, list] = {}
    for line in log.splitlines():
        m = PROCESS.search(line)
        if m:
            inputs = [s.strip() for s in m.group(5).split(",") if s.strip()]
            steps.setdefault(m.group(2), []).append((int(m.group(1)), m.group(3), m.group(4), inputs))
    return max(steps.values(), key=len)  # the step function, not the small probe functions the harness traces


def _products(ops, model: str, layer: str) -> tuple[int | None, int | None]:
    """Positions of a layer's dW and dX products in the step (None where it has none)."""
    prefix = f"gradient_tape/{model}/{layer}/"
    dw = dx = None
    for k, (_, name, kind, _) in enumerate(ops):
        if not name.startswith(prefix):
            continue
        if kind.endswith("Conv2DBackpropFilter") or (kind.endswith("MatMul") and name.endswith("/MatMul_1")):
            dw = k
        elif kind.endswith("Conv2DBackpropInput") or (kind.endswith("MatMul") and name.endswith("/MatMul")):
            dx = k
    return dw, dx


def _kernel_update(ops, model: str, layer: str) -> int | None:
    """Position of the last assignment to the layer's kernel variable (a bias is another variable)."""
    resource = re.compile(rf"^{re.escape(model.replace('-', '_'))}_{re.escape(layer)}_(?!biasadd)\w*_resource$")
    done = [k for k, (_, _, kind, inputs) in enumerate(ops) if kind in ASSIGNS and resource.match(inputs[0])]
    return done[-1] if done else None


def order_of(ops, model: str, layers: list[str]) -> dict:
    """The layers' backward order and where each activation's STE mask ran."""
    backward = []
    for layer in layers:
        dw, dx = _products(ops, model, layer)
        if dw is None or dx is None:
            continue
        update = _kernel_update(ops, model, layer)
        backward.append({"layer": layer, "weight_grad_first": dw < dx,
                         "update_before_input_grad": update is not None and update < dx})
    first_backward = min(k for k, (_, name, kind, _) in enumerate(ops)
                         if name.startswith("gradient_tape/") and ("MatMul" in kind or "Backprop" in kind))
    masks = [{"of": inputs[0], "in_forward": k < first_backward}
             for k, (_, _, kind, inputs) in enumerate(ops)
             if kind == "Abs" and "readvariableop" not in inputs[0].lower()]
    return {"backward": backward, "activation_masks": masks}


def logged_measure(model: str, batch: int, attribute: str | None = None) -> tuple[dict, list]:
    """One process of the recordings' harness with the executor's log on: its record and its step's ops."""
    record, log = fresh_process(model, batch, "--executor-log", *(["--attribute", attribute] if attribute else []))
    return record, step_ops(log)


def one_run(model: str, batch: int) -> dict:
    """The order of one fresh process's step, and its tensor peak."""
    from bnncost.layers.graph import graph_of

    record, ops = logged_measure(model, batch)
    layers = [n.name for n in graph_of(model).nodes if n.kind in ("dense", "conv2d")]
    return {"tensor_peak_bytes": record["tensor_peak_bytes"], "cpu": record["cpu"], "versions": record["versions"],
            **order_of(ops, record["model"], layers)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    if args.batch < 1 or args.runs < 1:
        print("--batch and --runs must be positive integers", file=sys.stderr)
        return 2
    name = Path(args.model).stem if args.model.endswith((".yaml", ".yml")) else args.model
    path = args.out / f"larq-op-order-{name}-b{args.batch}.json"
    record = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {
        "schema": "bnncost.larq-op-order/1", "model": name, "batch": args.batch,
        "how": "python benchmarks/frameworks/larq_op_order.py (TF_CPP_VMODULE=executor=1, the recordings' harness)",
        "runs": []}
    for _ in range(args.runs):
        record["runs"].append(one_run(args.model, args.batch))
        args.out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
