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

from bnncost.costmodel.prediction import predict

ROOT = Path(__file__).resolve().parent.parent
MEASUREMENTS = sorted((ROOT / "benchmarks" / "frameworks" / "measurements").glob("larq-*.json"))
TENSOR_TOLERANCE = 0.05
PROCESS_TOLERANCE = 0.10

# recording stem -> why the engine misses it (kept honest: strict xfail). The runtime (what is not a
# tensor) is per layer kind from small probes (costmodel/engines/larq.yaml); measured, it is mostly
# oneDNN's per-primitive state made inside the Mkl kernels (attribution in
# measurements/attribution/), which depends on the layers' shapes and, for convolutions, grows with
# the batch: the probes' tiny shapes overstate it for dense models and understate it for conv nets.
TENSOR_MISSES: dict[str, str] = {
    "larq-cnv-standard-b128": "tensor peak +11.3%; cause not isolated (which saved tensors coexist depends on the op order TensorFlow's executor picks)",
    "larq-digits-cnn-standard-b16": "tensor peak -10.4%; cause not isolated (which saved tensors coexist depends on the op order TensorFlow's executor picks)",
    "larq-digits-mlp-standard-b64": "tensor peak +6.0%; cause not isolated (which saved tensors coexist depends on the op order TensorFlow's executor picks)",
    "larq-larq-resnet-b-standard-b64": "tensor peak -5.4%; cause not isolated (which saved tensors coexist depends on the op order TensorFlow's executor picks)",
}
PROCESS_MISSES: dict[str, str] = {
    "larq-binarynet-standard-b32": "process peak -18.1%: runtime measured 154.7 MiB, predicted 54.6 MiB",
    "larq-binarynet-standard-b64": "process peak -17.2%: runtime measured 189.8 MiB, predicted 54.6 MiB",
    "larq-binarynet-standard-b8": "process peak -17.1%: runtime measured 139.8 MiB, predicted 54.6 MiB",
    "larq-bireal18-standard-b2": "process peak -13.0%: runtime measured 148.3 MiB, predicted 99.4 MiB",
    "larq-cnv-standard-b128": "process peak -17.9%: runtime measured 144.5 MiB, predicted 54.5 MiB",
    "larq-cnv-standard-b16": "process peak -21.9%: runtime measured 84.8 MiB, predicted 54.5 MiB",
    "larq-cnv-standard-b64": "process peak -23.0%: runtime measured 110.8 MiB, predicted 54.5 MiB",
    "larq-digits-cnn-standard-b16": "process peak +12.8%: runtime measured 28.7 MiB, predicted 32.6 MiB",
    "larq-digits-cnn-standard-b64": "process peak +10.8%: runtime measured 29.2 MiB, predicted 32.6 MiB",
    "larq-digits-mlp-standard-b16": "process peak +39.1%: runtime measured 21.6 MiB, predicted 30.8 MiB",
    "larq-digits-mlp-standard-b256": "process peak +37.4%: runtime measured 21.6 MiB, predicted 30.8 MiB",
    "larq-digits-mlp-standard-b64": "process peak +39.3%: runtime measured 21.6 MiB, predicted 30.8 MiB",
    "larq-larq-resnet-a-standard-b32": "process peak -10.2%: runtime measured 49.2 MiB, predicted 40.3 MiB",
    "larq-larq-resnet-a-standard-b64": "process peak -12.2%: runtime measured 54.2 MiB, predicted 40.3 MiB",
    "larq-larq-resnet-a-standard-b8": "process peak -23.4%: runtime measured 56.1 MiB, predicted 40.3 MiB",
    "larq-larq-resnet-b-standard-b64": "process peak -11.1%: runtime measured 53.2 MiB, predicted 45.4 MiB",
    "larq-larq-resnet-b-standard-b8": "process peak -26.0%: runtime measured 63.5 MiB, predicted 45.4 MiB",
    "larq-mlp-standard-b100": "process peak +18.2%: runtime measured 30.5 MiB, predicted 37.1 MiB",
    "larq-mlp-standard-b256": "process peak +17.4%: runtime measured 30.4 MiB, predicted 37.1 MiB",
    "larq-mlp-standard-b32": "process peak +17.8%: runtime measured 30.4 MiB, predicted 37.1 MiB",
}


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
