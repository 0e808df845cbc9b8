"""Predicted against measured step time of the bundled trainer on this machine, after one calibration.

    python benchmarks/calibrated_time.py [--device FILE] [--quick-calibration] [--steps N] [--json]

Without --device it first runs `bnncost calibrate` in this process (the full run; --quick-calibration
for the quick one). Then for every point of the matrix it predicts the step time with that device
file and times the trainer (median of --steps steps (7) after one warm-up step, trainer.timing, in the
process's CPU time, as calibrate measures: on a machine other processes share, wall time also counts
their turns on the cores; the wall time is reported beside), and
reports the error distribution, the measured step taken at the calibration's core speed (reference
steps timed between the steps, trainer.timing: a shared cloud core's speed changes by up to 2x from
second to second) and as timed: the fraction of points within +-15% and the median absolute error
(goal: >= 90% and < 10%). For comparison it also prices every point with the shipped boards'
formula (counts over rates, memory over bandwidth: a peak-rate lower bound) fed with this machine's
measured sustained rates, i.e. the same file without its `trainer` section.

Matrix: models mlp, digits-mlp, digits-cnn, cnv, binarynet and a residual model
(tests/data/small-residual.yaml); strategies standard, proposed, proposed-po2, bop; batches 8, 32,
64, 128, 256 for the small models, 8 and 32 for cnv, 8 for binarynet (a binarynet step at batch 256
takes many minutes in numpy).

BLAS runs one thread here (set before numpy is imported; calibrate it the same way): the trainer's
products are small tiles, and a second BLAS thread on a machine other processes share makes every
product's time depend on them.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import runpy  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
runpy.run_path(str(ROOT / "tests" / "conftest.py"))  # this checkout as `bnncost`

from bnncost.calibrate import calibrate, write_device  # noqa: E402
from bnncost.costmodel import predict  # noqa: E402
from bnncost.hardware_profiles import load_device, parse_device  # noqa: E402
from bnncost.trainer.timing import time_steps  # noqa: E402

RESIDUAL = str(ROOT / "tests" / "data" / "small-residual.yaml")
STRATEGIES = ("standard", "proposed", "proposed-po2", "bop")
SMALL = (8, 32, 64, 128, 256)
MATRIX = [("mlp", SMALL), ("digits-mlp", SMALL), ("digits-cnn", SMALL), (RESIDUAL, SMALL), ("cnv", (8, 32)),
          ("binarynet", (8,))]
TOLERANCE = 0.15


def summary(errors: list[float]) -> dict:
    within = sum(abs(e) <= TOLERANCE for e in errors)
    return {"points": len(errors), "within_15_percent": within / len(errors) if errors else float("nan"),
            "median_abs_error": statistics.median(abs(e) for e in errors) if errors else float("nan"),
            "worst_error": max(errors, key=abs) if errors else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", help="a device file written by bnncost calibrate on this machine")
    ap.add_argument("--quick-calibration", action="store_true", help="calibrate with --quick first")
    # 7: on a machine other agents share, the median of 3 steps moved by up to 1.7x between runs of a point
    ap.add_argument("--steps", type=int, default=7, help="timed steps per point, after one warm-up")
    ap.add_argument("--models", help="comma-separated subset of the matrix's models")
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    args = ap.parse_args()
    load_start = os.getloadavg()
    t0 = time.time()
    if args.device:
        device = load_device(args.device)
    else:
        doc = calibrate(name="benchmark-host", quick=args.quick_calibration)
        device = parse_device(doc, "<benchmark calibration>")
        write_device(doc, "calibrated-benchmark.yaml")
    calibrate_s = time.time() - t0
    if device.trainer is None or device.trainer.reference_step_s is None:
        sys.exit(f"{device.file}: not written by this bnncost's calibrate (no trainer.reference_step_s)")
    reference_s = device.trainer.reference_step_s
    bound = device.model_copy(update={"trainer": None})  # the same rates, priced as a peak-rate bound
    wanted = set(args.models.split(",")) if args.models else None
    rows = []
    for model, batches in MATRIX:
        label = Path(model).stem if model.endswith(".yaml") else model
        if wanted and label not in wanted:
            continue
        for strategy in STRATEGIES:
            for batch in batches:
                pred = predict(model, strategy, batch, device=device, workspace_budget=65536)
                lower = predict(model, strategy, batch, device=bound, workspace_budget=65536)
                raw = time_steps(model, strategy, batch=batch, steps=args.steps, warmup=1, reference=True)
                meas = raw.at_reference(reference_s)
                row = {"model": label, "strategy": strategy, "batch": batch,
                       "predicted_s": pred.time.seconds_per_step, "measured_s": meas.step_s,
                       "measured_raw_s": raw.step_s, "reference_s": raw.reference_s,
                       "measured_wall_s": meas.wall_step_s,
                       "error": pred.time.seconds_per_step / meas.step_s - 1,
                       "raw_error": pred.time.seconds_per_step / raw.step_s - 1,
                       "rate_bound_s": lower.time.seconds_per_step,
                       "rate_bound_error": lower.time.seconds_per_step / meas.step_s - 1,
                       "load": os.getloadavg()[0]}
                rows.append(row)
                if not args.json:
                    print(f"{label:14s} {strategy:13s} {batch:4d}  predicted {1e3 * row['predicted_s']:9.1f} ms  "
                          f"measured {1e3 * row['measured_s']:9.1f} ms  error {100 * row['error']:+6.1f}%  "
                          f"(as timed {1e3 * row['measured_raw_s']:9.1f} ms: {100 * row['raw_error']:+6.1f}%)  "
                          f"(rate bound {100 * row['rate_bound_error']:+6.1f}%, load {row['load']:.1f})", flush=True)
    doc = {"schema": "bnncost.calibrated-time/2", "device": device.name, "device_file": device.file,
           "calibrate_s": calibrate_s, "steps": args.steps, "load_start": load_start[0],
           "load_end": os.getloadavg()[0], "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
           "reference_step_s": reference_s,
           "calibrated": summary([r["error"] for r in rows]),
           "calibrated_as_timed": summary([r["raw_error"] for r in rows]),
           "rate_bound": summary([r["rate_bound_error"] for r in rows]), "points": rows}
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        print()
        return
    c, b = doc["calibrated"], doc["rate_bound"]
    print(f"\n{c['points']} points on {device.name}; load average {doc['load_start']:.1f} at the start, "
          f"{doc['load_end']:.1f} at the end; BLAS threads {doc['blas_threads']}")
    print(f"calibrated model : {100 * c['within_15_percent']:.0f}% within +-15% (goal >= 90%), median |error| "
          f"{100 * c['median_abs_error']:.1f}% (goal < 10%), worst {100 * c['worst_error']:+.0f}%")
    a = doc["calibrated_as_timed"]
    print(f"  (as timed, at the core's speed then: {100 * a['within_15_percent']:.0f}% within +-15%, median |error| "
          f"{100 * a['median_abs_error']:.1f}%, worst {100 * a['worst_error']:+.0f}%)")
    print(f"rate lower bound : {100 * b['within_15_percent']:.0f}% within +-15%, median |error| "
          f"{100 * b['median_abs_error']:.1f}%, worst {100 * b['worst_error']:+.0f}%")


if __name__ == "__main__":
    main()
