"""The `larq` engine against Larq/TensorFlow's measured training steps (issue 9).

Each JSON in benchmarks/frameworks/measurements/larq-*.json is one memray
measurement of a steady-state standard-strategy step (benchmarks/frameworks/
larq_measure.py records them; TensorFlow is not needed here). For every one,
the engine must predict the tensor peak within 5% and the process peak
(tensors + runtime) within 10%.
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


def _record(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _model_ref(record: dict) -> str:
    return str(ROOT / record["model_file"]) if record.get("model_file") else record["model"]


def test_the_recordings_cover_the_zoo_and_residual_models():
    records = [_record(p) for p in MEASUREMENTS]
    batches: dict[str, set[int]] = {}
    for r in records:
        batches.setdefault(r["model"], set()).add(r["batch"])
    for model in ("mlp", "cnv", "binarynet", "digits-mlp", "digits-cnn"):
        assert len(batches.get(model, ())) >= 3, f"{model}: fewer than 3 batch sizes recorded"
    residual = [m for m in batches if m.startswith("larq-resnet")]
    assert len(residual) >= 2


@pytest.mark.parametrize("path", MEASUREMENTS, ids=lambda p: p.stem)
def test_larq_engine_predicts_the_measured_peaks(path: Path):
    record = _record(path)
    assert record["engine"] == "larq" and record["strategy"] == "standard"
    memory = predict(_model_ref(record), "standard", record["batch"], engine="larq").memory
    tensor_error = memory.tensor_peak_bytes / record["tensor_peak_bytes"] - 1
    process_error = memory.process_peak_bytes / record["process_peak_bytes"] - 1
    assert abs(tensor_error) <= TENSOR_TOLERANCE, f"tensor peak off by {tensor_error:+.1%}"
    assert abs(process_error) <= PROCESS_TOLERANCE, f"process peak off by {process_error:+.1%}"
