"""bnncost's performance figures, measured on this machine.

    python benchmarks/run.py [--json] [--quick]

- predict_ms: median in-process time of one prediction (memory, ops, energy,
  time and fit on a device) for every zoo model at batch 100, and of
  resnete18 at batch 4096; models and strategies are cached after their first
  load, as in any process that predicts more than once (the first, cold call is
  reported too);
- cli_ms: median wall time of `bnncost predict mlp --json`, a new process each;
- sweep_configs_per_s: configurations (model x strategy x batch) per second
  of `costmodel.sweep.sweep` with a device, every zoo model and both
  reference strategies over batches 1..4096;
- trainer: the bundled trainer on mlp at batch 100, standard vs proposed:
  median time per step, ledger peak and tracemalloc peak;
- measure_over_predict: one measured training step over one prediction, same
  model and batch: what a cost model buys.
Goals (issue 6): resnete18@4096 < 10 ms; CLI < 0.5 s; sweep >= 100,000
configurations/s; trainer proposed <= 2x standard's step time with >= 2.5x
less ledger peak.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import runpy
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


runpy.run_path(str(Path(__file__).resolve().parents[1] / "tests" / "conftest.py"))  # this checkout as `bnncost`

import numpy as np  # noqa: E402

from bnncost.costmodel import predict  # noqa: E402
from bnncost.costmodel.sweep import sweep  # noqa: E402
from bnncost.hardware_profiles import load_device  # noqa: E402
from bnncost.layers import zoo_names  # noqa: E402

DEVICE = "raspberry-pi-4b"


def median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, numpy {np.__version__}")


def bench_predict(dev, repeat: int) -> tuple[dict, float, float]:
    out = {}
    for name in zoo_names():
        predict(name, "proposed", 100, device=dev)  # warm the caches
        out[name] = 1e3 * median_time(lambda n=name: predict(n, "proposed", 100, device=dev), repeat)
    resnet = 1e3 * median_time(lambda: predict("resnete18", "proposed", 4096, device=dev), repeat)
    from bnncost.layers.model import _load_zoo_model  # the cold call: parse the YAML again
    _load_zoo_model.cache_clear()
    t = time.perf_counter()
    predict("resnete18", "proposed", 4096, device=dev)
    cold = 1e3 * (time.perf_counter() - t)
    return out, resnet, cold


def bench_cli(repeat: int) -> float:
    exe = shutil.which("bnncost")
    cmd = [exe] if exe else [sys.executable, "-m", "bnncost"]
    subprocess.run(cmd + ["predict", "mlp", "--json"], check=True, capture_output=True)
    return 1e3 * median_time(
        lambda: subprocess.run(cmd + ["predict", "mlp", "--json"], check=True, capture_output=True), repeat)


def bench_sweep(dev, repeat: int) -> tuple[float, int]:
    batches = list(range(1, 4097))
    models = zoo_names()

    def run():
        for m in models:
            sweep(m, ["standard", "proposed"], batches, device=dev)

    run()
    configs = len(models) * 2 * len(batches)
    return configs / median_time(run, repeat), configs


def bench_trainer(steps: int) -> dict:
    from bnncost.trainer.bench import measure_steps  # the trainer's own timing of real steps

    return {s: measure_steps("mlp", s, batch=100, steps=steps) for s in ("standard", "proposed")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = ap.parse_args()
    r = 5 if args.quick else 21
    dev = load_device(DEVICE)
    predict_ms, resnet_ms, resnet_cold_ms = bench_predict(dev, r)
    cli_ms = bench_cli(3 if args.quick else 7)
    sweep_rate, configs = bench_sweep(dev, 3 if args.quick else 5)
    trainer = bench_trainer(5 if args.quick else 11)
    one_prediction_s = predict_ms["mlp"] / 1e3
    doc = {
        "schema": "bnncost.benchmarks/1",
        "machine": machine(),
        "device": DEVICE,
        "predict_ms": predict_ms,
        "predict_resnete18_4096_ms": resnet_ms,
        "predict_resnete18_4096_cold_ms": resnet_cold_ms,
        "cli_ms": cli_ms,
        "sweep_configs_per_s": sweep_rate,
        "sweep_configs": configs,
        "trainer": trainer,
        "trainer_ratios": {
            "step_time_proposed_over_standard": trainer["proposed"]["step_s"] / trainer["standard"]["step_s"],
            "ledger_peak_standard_over_proposed":
                trainer["standard"]["ledger_peak_bytes"] / trainer["proposed"]["ledger_peak_bytes"],
            "process_peak_standard_over_proposed":
                trainer["standard"]["process_peak_bytes"] / trainer["proposed"]["process_peak_bytes"],
        },
        "measure_over_predict": trainer["proposed"]["step_s"] / one_prediction_s,
    }
    if args.json:
        print(json.dumps(doc, indent=2))
        return
    print(f"machine: {doc['machine']}")
    print(f"predict (proposed, batch 100, on {DEVICE}), median ms:")
    for name, ms in predict_ms.items():
        print(f"  {name:12s} {ms:7.2f}")
    print(f"predict resnete18 at batch 4096: {resnet_ms:.2f} ms (goal < 10; first call, parsing the YAML: "
          f"{resnet_cold_ms:.1f} ms)")
    print(f"CLI end to end (bnncost predict mlp --json): {cli_ms:.0f} ms (goal < 500)")
    print(f"sweep: {sweep_rate:,.0f} configurations/s over {configs:,} (goal >= 100,000)")
    for s, t in trainer.items():
        print(f"trainer mlp batch 100 {s:9s}: {1e3 * t['step_s']:7.1f} ms/step, ledger peak "
              f"{t['ledger_peak_bytes'] / 2**20:6.2f} MiB, tracemalloc peak {t['process_peak_bytes'] / 2**20:6.2f} MiB")
    ratios = doc["trainer_ratios"]
    print(f"  proposed / standard step time: {ratios['step_time_proposed_over_standard']:.2f}x (goal <= 2); "
          f"standard / proposed ledger peak: {ratios['ledger_peak_standard_over_proposed']:.2f}x (goal >= 2.5)")
    print(f"one measured step / one prediction: {doc['measure_over_predict']:,.0f}x")


if __name__ == "__main__":
    main()
