"""Make a Larq recording the median of several fresh processes, every run kept in the recording.

    python benchmarks/frameworks/larq_repeat.py MODEL --batch B [--runs 2]
    python benchmarks/frameworks/larq_repeat.py --add RUN.json [RUN.json ...]
    python benchmarks/frameworks/larq_repeat.py PROBE.yaml --batch B --dir benchmarks/frameworks/measurements/probes/NAME

The first form runs `larq_measure.py MODEL --batch B --print` (the harness
of the recordings, unchanged) RUNS times, each in its own process, one after
the other; the second folds in runs already printed that way (one JSON per
file). Either way every run goes into the point's recording,
measurements/larq-MODEL-standard-bB.json, under `runs` (its peaks, parts,
loss, seconds, versions and environment); the recording's tensor_peak_bytes,
process_peak_bytes and runtime_bytes become the median of its runs', and
`repeats` gives the statistic and the spread (min, median, max). A recording
that is still one process becomes its own first run.

Why: within one process the three measured steps agree to a few KB, but
TensorFlow's executor does not run a step's ready ops in the same order in
every process (a fixed PYTHONHASHSEED does not fix it), so which saved
tensors, gradients and temporaries coexist at the peak, and the peak itself,
differ between processes (cnv B=128: 216.7 to 258.1 MB). One process is one
draw; the median of several is the measurement the `larq` engine is tested
against (tests/test_larq_engine.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from larq_measure import fresh_process

HERE = Path(__file__).resolve().parent
MEASUREMENTS = HERE / "measurements"

# What a run keeps: its own peaks and the parts they are made of, and what it ran on.
RUN_FIELDS = ("tensor_peak_bytes", "process_peak_bytes", "runtime_bytes", "baseline_bytes", "parts", "loss",
              "seconds", "versions", "environment", "cpu")
# What every run of one point must share with the recording (else it measures something else).
SAME = ("schema", "framework", "engine", "model", "model_file", "strategy", "batch", "allocator", "threads",
        "versions")
# Of those, what only a run has (the recording keeps its versions, environment and cpu, which runs share).
RUN_ONLY = ("baseline_bytes", "parts", "loss", "seconds")
PEAKS = ("tensor_peak_bytes", "process_peak_bytes", "runtime_bytes")
METHOD = ("median over fresh processes: each run is one `larq_measure.py --print` process (the same harness, "
          "versions and harness environment; a variable a run had besides is in its own environment), one "
          "process at a time, never two at once; TensorFlow's "
          "executor picks the order of a step's ready ops per process, so the peak is a draw and the median of "
          "the runs is the measurement (benchmarks/frameworks/larq_repeat.py)")


class RunMismatch(ValueError):
    """A run that does not measure the recording's point with its harness and versions."""


def one_run(model: str, batch: int) -> dict:
    """One `larq_measure.py --print` in a fresh process: its full record."""
    return fresh_process(model, batch)[0]


def as_run(record: dict, source: str) -> dict:
    """The fields of one process's record a recording keeps per run."""
    return {**{k: record[k] for k in RUN_FIELDS if k in record}, "source": source}


def _median(values: list[int]) -> int:
    return int(round(statistics.median(values)))


def summarised(recording: dict) -> dict:
    """The recording with its peaks set to the median of its runs and `repeats` giving the spread."""
    runs = recording["runs"]
    out = {k: v for k, v in recording.items() if k not in (*RUN_ONLY, "runs", "repeats")}
    out["repeats"] = {"method": METHOD, "runs": len(runs)}
    for key in PEAKS:  # over the runs that have it (a few early repeats kept the tensor peak only)
        values = [r[key] for r in runs if key in r]
        out[key] = _median(values)
        if key != "runtime_bytes":
            out["repeats"][key] = {"runs": len(values), "min": min(values), "median": out[key], "max": max(values)}
    out["runs"] = runs  # last, after the summary
    return out


def with_runs(recording: dict, records: list[dict], source: str) -> dict:
    """Add processes' records to a recording (the recording itself becomes run 1 if it has no runs yet)."""
    for rec in records:
        for key in SAME:
            if rec.get(key) != recording.get(key):
                raise RunMismatch(f"{key}: run has {rec.get(key)!r}, the recording {recording.get(key)!r}")
        # the harness's own variables must match; a run may have more (kept per run, e.g. PYTHONHASHSEED)
        if any(rec["environment"].get(k) != v for k, v in recording["environment"].items()):
            raise RunMismatch(f"environment: run has {rec['environment']}, the recording {recording['environment']}")
    runs = list(recording.get("runs") or [as_run(recording, "the point's first recording (2026-11-28)")])
    runs += [as_run(rec, source) for rec in records]
    return summarised({**recording, "runs": runs})


def recording_path(record: dict, directory: Path = MEASUREMENTS) -> Path:
    return directory / f"larq-{record['model']}-{record['strategy']}-b{record['batch']}.json"


def add(records: list[dict], source: str, directory: Path = MEASUREMENTS) -> list[Path]:
    """Fold records into their recordings (grouped by point), rewriting each recording once."""
    by_path: dict[Path, list[dict]] = {}
    for rec in records:
        by_path.setdefault(recording_path(rec, directory), []).append(rec)
    for path, recs in by_path.items():
        if not path.exists():
            recording = summarised({**recs[0], "runs": [as_run(recs[0], source)]})
            recs = recs[1:]
        else:
            recording = json.loads(path.read_text(encoding="utf-8"))
        path.write_text(json.dumps(with_runs(recording, recs, source), indent=1) + "\n", encoding="utf-8")
    return sorted(by_path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?")
    p.add_argument("--batch", type=int)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--add", nargs="+", type=Path, metavar="RUN.json",
                   help="records printed by `larq_measure.py --print`, to fold into their recordings")
    p.add_argument("--source", default="larq_repeat.py", help="where the added runs come from (kept per run)")
    p.add_argument("--dir", type=Path, default=MEASUREMENTS,
                   help="where the recordings are (default: measurements/; a probe's: measurements/probes/...)")
    args = p.parse_args(argv)
    if not args.dir.is_dir():  # before any run: a recording nowhere to go would lose the runs' minutes
        print(f"--dir {args.dir}: not a folder (give it from the current directory)", file=sys.stderr)
        return 2
    if args.add:
        try:
            records = [json.loads(f.read_text(encoding="utf-8")) for f in args.add]
        except (OSError, json.JSONDecodeError) as err:
            print(f"--add: {err}", file=sys.stderr)
            return 2
    elif args.model is None or args.batch is None or args.batch < 1 or args.runs < 1:
        print("give MODEL --batch B (positive) [--runs N], or --add RUN.json ...", file=sys.stderr)
        return 2
    else:
        records = [one_run(args.model, args.batch) for _ in range(args.runs)]
    try:
        paths = add(records, args.source, args.dir)
    except RunMismatch as err:
        print(f"a run does not match its recording: {err}", file=sys.stderr)
        return 2
    for path in paths:
        rep = json.loads(path.read_text(encoding="utf-8"))["repeats"]
        t = rep["tensor_peak_bytes"]
        print(f"{path.name}: {rep['runs']} runs, tensor peak {t['min'] / 1e6:.2f} / {t['median'] / 1e6:.2f} / "
              f"{t['max'] / 1e6:.2f} MB (min / median / max)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
