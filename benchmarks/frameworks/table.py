"""Predicted vs measured for every framework recording, as a markdown table.

    python benchmarks/frameworks/table.py [ENGINE] [--recordings DIR]

Prints one markdown row per recording in measurements/ made for that engine
(or, with --recordings, per PyTorch or Larq recording in DIR, whatever engine it
was made for: `table.py pytorch-amd --recordings measurements/probes/torch-amd`):
the engine's tensor and process peaks beside memray's, and the error.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def recordings(engine: str, folder: Path | None = None) -> list[dict]:
    out = []
    for path in sorted((folder or HERE / "measurements").glob("*.json")):
        rec = json.loads(path.read_text())
        if (rec.get("engine") == engine) if folder is None else rec.get("framework") in ("pytorch", "larq"):
            rec["file"] = path.name
            out.append(rec)
    return out


def model_ref(rec: dict) -> str:
    """A recording's model as bnncost loads it: a zoo name, or a YAML path relative to the repository."""
    ref = rec.get("model_ref") or rec.get("model_file") or rec["model"]
    return str(HERE.parent.parent / ref) if ref.endswith((".yaml", ".yml")) else ref


def main(argv: list[str] | None = None) -> int:
    from bnncost import predict

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("engine", nargs="?", default="pytorch")
    ap.add_argument("--recordings", type=Path, help="a folder of recordings (default: measurements/, by engine)")
    args = ap.parse_args(argv)
    print("| model | strategy | batch | tensor measured | tensor predicted | error | process measured | "
          "process predicted | error |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for rec in recordings(args.engine, args.recordings):
        p = predict(model_ref(rec), strategy=rec["strategy"], batch=rec["batch"], engine=args.engine).memory
        t, pr = rec["tensor_peak_bytes"], rec["process_peak_bytes"]
        print(f"| {rec['model']} | {rec['strategy']} | {rec['batch']} | {t:,} | {p.tensor_peak_bytes:,} | "
              f"{(p.tensor_peak_bytes - t) / t:+.1%} | {pr:,} | {p.process_peak_bytes:,} | "
              f"{(p.process_peak_bytes - pr) / pr:+.1%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
