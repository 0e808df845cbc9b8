"""Measure one Larq point again in fresh processes, to show how much its peak varies from process to process.

    python benchmarks/frameworks/larq_repeat.py MODEL --batch B [--runs 3]

Each run is `larq_measure.py MODEL --batch B --print` in its own process (the
harness of the recordings, unchanged). Within one process the three measured
steps agree to a few KB, but TensorFlow's executor does not run a step's
ready ops in the same order in every process, so which saved tensors,
gradients and temporaries coexist at the peak, and the peak itself, can
differ between processes. The runs are added to
measurements/repeats/larq-repeats.json beside the point's recording; the
`larq` engine's tests read that file for the points whose single recording
the engine misses (tests/test_larq_engine.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "measurements" / "repeats" / "larq-repeats.json"


def one_run(model: str, batch: int) -> dict:
    done = subprocess.run([sys.executable, str(HERE / "larq_measure.py"), model, "--batch", str(batch), "--print"],
                          capture_output=True, text=True, check=True)
    rec = json.loads(done.stdout)
    return {"tensor_peak_bytes": rec["tensor_peak_bytes"], "process_peak_bytes": rec["process_peak_bytes"],
            "each_step_peak_above_baseline": rec["parts"]["each_step_peak_above_baseline"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args(argv)
    if args.batch < 1 or args.runs < 1:
        print("--batch and --runs must be positive integers", file=sys.stderr)
        return 2
    runs = [one_run(args.model, args.batch) for _ in range(args.runs)]
    doc = json.loads(OUT.read_text(encoding="utf-8")) if OUT.exists() else {
        "schema": "bnncost.framework-repeats/1",
        "what": "tensor and process peaks of larq_measure.py runs of one point, each in a fresh process",
        "points": []}
    name = Path(args.model).stem
    point = next((q for q in doc["points"] if q["model"] == name and q["batch"] == args.batch), None)
    if point is None:
        point = {"model": name, "batch": args.batch, "runs": []}
        doc["points"].append(point)
    point["runs"].extend(runs)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    for r in runs:
        print(name, args.batch, r["tensor_peak_bytes"], r["process_peak_bytes"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
