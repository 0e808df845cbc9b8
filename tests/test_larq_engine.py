"""The `larq` engine against Larq/TensorFlow's measured training steps (issue 9).

Each JSON in benchmarks/frameworks/measurements/larq-*.json is one memray
measurement of a steady-state standard-strategy step (benchmarks/frameworks/
larq_measure.py records them; TensorFlow is not needed here). For every one,
the engine must predict the tensor peak within 5% and the process peak
(tensors + runtime) within 10%. The points it does not meet yet are listed
below with the measured error, as strict expected failures: a fix that brings
one within bounds makes its test fail until it leaves the list.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bnncost.costmodel.engine import load_engine
from bnncost.costmodel.prediction import predict

ROOT = Path(__file__).resolve().parent.parent
MEASUREMENTS = sorted((ROOT / "benchmarks" / "frameworks" / "measurements").glob("larq-*.json"))
TENSOR_TOLERANCE = 0.05
PROCESS_TOLERANCE = 0.10

# recording stem -> why the engine misses it (kept honest: strict xfail). The runtime (what is not a
# tensor) is per layer kind from small probes at B=16, the small-batch MatMul state below 16 rows, the
# graph constants by shape and oneDNN's primitives once per distinct layer configuration
# (costmodel/engines/larq.yaml): every process peak is within 10%.
# The tensor misses are points whose peak differs from process to process: TensorFlow's executor does not
# run a step's ready ops in one order, so which saved tensors, gradients and temporaries meet at the peak
# varies. Each was measured again in 3 fresh processes with the recordings' harness
# (benchmarks/frameworks/larq_repeat.py -> measurements/repeats/larq-repeats.json); the engine is checked
# against that spread below (test_larq_engine_is_within_the_process_to_process_spread).
_SPREAD = "the peak varies from process to process (TensorFlow's executor order)"
TENSOR_MISSES: dict[str, str] = {
    "larq-cnv-standard-b128": (f"tensor peak +12.2%; {_SPREAD}: 3 fresh runs 216.7, 258.1, 258.1 MB against this "
                               "recording's 231.0 (engine +0.4% on two); in one attributed run sign_1's STE mask "
                               "abs(x) <= 1 was computed in the forward (a 7.4 MB bool) and its 29.5 MB float32 "
                               "input freed, sign_2's not"),
    "larq-digits-mlp-standard-b64": (f"tensor peak +6.0%; {_SPREAD}: 8 fresh runs 2.063 to 2.521 MB (engine -10.9% "
                                     "to +8.9%), also with a fixed PYTHONHASHSEED (so the order is set as the step "
                                     "runs, not when it is traced); of two attributed runs, one peaked in dense_2's dX product (its 377 KB sgemm "
                                     "scratch beside dW, whose product had run first), the other later, in the "
                                     "kernel STE's select"),
    "larq-larq-resnet-b-standard-b32": (f"tensor peak +7.4%; {_SPREAD}: 3 fresh runs 18.51 to 18.58 MB, all 6.4% "
                                        "above this recording's 17.40 (engine +0.6% to +0.9%)"),
    "larq-resnete18-standard-b2": (f"tensor peak +5.4%; {_SPREAD}: 3 fresh runs 256.7, 263.3, 287.1 MB against this "
                                   "recording's 258.5 (engine -5.1% to +6.1%); bireal18, the same network, "
                                   "recorded 276.3 at B=2"),
}
PROCESS_MISSES: dict[str, str] = {}


def test_gemm_scratch_matches_the_onednn_probe_to_the_byte():
    """The engine's oneDNN sgemm scratch (path choice and blocking) against a probe of dense-layer products
    at shapes no recording has (benchmarks/frameworks/larq_gemm_probe.py)."""
    probe = json.loads((ROOT / "benchmarks" / "frameworks" / "measurements" / "probes" / "larq-onednn-sgemm.json")
                       .read_text(encoding="utf-8"))
    scratch = load_engine("larq").gemm_scratch
    products = {"forward": lambda b, i, o: ("NN", o, b, i), "input_grad": lambda b, i, o: ("TN", i, b, o),
                "weight_grad": lambda b, i, o: ("NT", o, i, b)}
    got = [scratch.scratch_bytes(*products[c["product"]](c["batch"], c["inputs"], c["outputs"]))
           for c in probe["cases"]]
    assert got == [c["scratch_bytes"] for c in probe["cases"]]
    assert len({g for g in got if g}) >= 10 and 0 in got  # copy-based sizes, the nocopy one, and none


def _cases(misses: dict[str, str]) -> list:
    return [pytest.param(p, id=p.stem, marks=pytest.mark.xfail(strict=True, reason=misses[p.stem]))
            if p.stem in misses else pytest.param(p, id=p.stem) for p in MEASUREMENTS]


def _record(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _model_ref(record: dict) -> str:
    return str(ROOT / record["model_file"]) if record.get("model_file") else record["model"]


def test_misses_name_recordings_that_exist():
    stems = {p.stem for p in MEASUREMENTS}
    assert set(TENSOR_MISSES) <= stems and set(PROCESS_MISSES) <= stems


def test_every_recorded_model_has_three_batch_sizes():
    batches: dict[str, set[int]] = {}
    for p in MEASUREMENTS:
        r = _record(p)
        batches.setdefault(r["model"], set()).add(r["batch"])
    assert len(batches) >= 3
    for model, sizes in batches.items():
        if model not in ("resnete18", "bireal18"):  # ImageNet models: small batches only, as they fit
            assert len(sizes) >= 3, f"{model}: {sorted(sizes)}"


def _errors(path: Path) -> tuple[float, float]:
    record = _record(path)
    assert record["engine"] == "larq" and record["strategy"] == "standard"
    memory = predict(_model_ref(record), "standard", record["batch"], engine="larq").memory
    return (memory.tensor_peak_bytes / record["tensor_peak_bytes"] - 1,
            memory.process_peak_bytes / record["process_peak_bytes"] - 1)


@pytest.mark.parametrize("path", _cases(TENSOR_MISSES))
def test_larq_engine_predicts_the_measured_tensor_peak(path: Path):
    tensor_error, _ = _errors(path)
    assert abs(tensor_error) <= TENSOR_TOLERANCE, f"tensor peak off by {tensor_error:+.1%}"


@pytest.mark.parametrize("path", _cases(PROCESS_MISSES))
def test_larq_engine_predicts_the_measured_process_peak(path: Path):
    _, process_error = _errors(path)
    assert abs(process_error) <= PROCESS_TOLERANCE, f"process peak off by {process_error:+.1%}"


REPEATS = ROOT / "benchmarks" / "frameworks" / "measurements" / "repeats" / "larq-repeats.json"


def _repeated_points() -> list:
    doc = json.loads(REPEATS.read_text(encoding="utf-8"))
    return [pytest.param(p, id=f"{p['model']}-b{p['batch']}") for p in doc["points"]]


def test_every_tensor_miss_was_measured_again():
    doc = json.loads(REPEATS.read_text(encoding="utf-8"))
    repeated = {f"larq-{p['model']}-standard-b{p['batch']}" for p in doc["points"] if len(p["runs"]) >= 3}
    assert set(TENSOR_MISSES) <= repeated


@pytest.mark.parametrize("point", _repeated_points())
def test_larq_engine_is_within_the_process_to_process_spread(point: dict):
    """Where one point's peak varies between processes, the prediction lies within what was measured
    (the recording and the fresh runs), widened by the tolerance."""
    path = ROOT / "benchmarks" / "frameworks" / "measurements" / f"larq-{point['model']}-standard-b{point['batch']}.json"
    record = _record(path)
    measured = [record["tensor_peak_bytes"], *(r["tensor_peak_bytes"] for r in point["runs"])]
    predicted = predict(_model_ref(record), "standard", record["batch"], engine="larq").memory.tensor_peak_bytes
    assert min(measured) * (1 - TENSOR_TOLERANCE) <= predicted <= max(measured) * (1 + TENSOR_TOLERANCE), \
        f"{predicted} outside {min(measured)}..{max(measured)} +-{TENSOR_TOLERANCE:.0%}"
