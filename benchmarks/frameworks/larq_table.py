"""Predicted vs measured for every Larq recording, as a markdown table (for the README and issue notes).

    python benchmarks/frameworks/larq_table.py [--engine larq] [--recordings DIR]

Reads benchmarks/frameworks/measurements/larq-*.json, or DIR's (a probes
folder: holdouts, check models; no TensorFlow needed)
and predicts each point with the engine (and with `reference --retention
backward`, for comparison). Each measured peak is the median of the point's
fresh-process runs (larq_repeat.py), shown with the runs' range (min-max).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bnncost.costmodel.prediction import predict

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def rows(engine: str, folder: Path = HERE / "measurements") -> list[dict]:
    out = []
    for path in sorted(folder.glob("larq-*.json")):
        rec = json.loads(path.read_text(encoding="utf-8"))
        ref = str(ROOT / rec["model_file"]) if rec.get("model_file") else rec["model"]
        mem = predict(ref, "standard", rec["batch"], engine=engine).memory
        plain = predict(ref, "standard", rec["batch"], engine="reference", retention="backward").memory
        out.append({
            "model": rec["model"], "batch": rec["batch"],
            "runs": rec["repeats"]["runs"],
            "tensor_measured": rec["tensor_peak_bytes"], "tensor_predicted": mem.tensor_peak_bytes,
            "tensor_range": _range(rec["repeats"]["tensor_peak_bytes"]),
            "process_measured": rec["process_peak_bytes"], "process_predicted": mem.process_peak_bytes,
            "process_range": _range(rec["repeats"]["process_peak_bytes"]),
            "reference_backward": plain.peak_bytes,
        })
    return out


def _range(spread: dict) -> str:
    """The runs' min-max in MiB ('' for a point measured once)."""
    return f"{spread['min'] / 2**20:.2f}-{spread['max'] / 2**20:.2f}" if spread["runs"] > 1 else ""


def _mb(n: int) -> str:
    return f"{n / 2**20:.2f}"


def _pct(pred: int, meas: int) -> str:
    return f"{(pred / meas - 1) * 100:+.1f}%"


def markdown(table: list[dict], engine: str) -> str:
    lines = [
        f"| model | batch | runs | tensor peak measured, median (MiB) | runs' range | `{engine}` | error | "
        f"process peak measured, median (MiB) | runs' range | `{engine}` | error | `reference`, retention backward | "
        "error |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in table:
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['runs']} | {_mb(r['tensor_measured'])} | {r['tensor_range']} | "
            f"{_mb(r['tensor_predicted'])} | {_pct(r['tensor_predicted'], r['tensor_measured'])} | "
            f"{_mb(r['process_measured'])} | {r['process_range']} | "
            f"{_mb(r['process_predicted'])} | {_pct(r['process_predicted'], r['process_measured'])} | "
            f"{_mb(r['reference_backward'])} | {_pct(r['reference_backward'], r['tensor_measured'])} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine", default="larq")
    p.add_argument("--recordings", type=Path, default=HERE / "measurements", help="folder of larq-*.json")
    args = p.parse_args()
    print(markdown(rows(args.engine, args.recordings), args.engine))


if __name__ == "__main__":
    main()
