"""The `larq` engine on grouped convs (XLA clusters on CPU, not oneDNN primitives) and on two check models.

The probes (benchmarks/frameworks/probes/larq-grouped-*.yaml) are recorded in
measurements/probes/larq-grouped/ (larq_repeat.py --dir: eleven fresh
processes each, the median; recorded again on 2026-11-29, see test_the_tensor_peak_is_the_upper_mode),
with their ungrouped twin; the runtime rules' figures are
the attribution records of larq_jit_attribution.py (measurements/attribution/).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bnncost.costmodel.engine import load_engine
from bnncost.costmodel.memory import memory_plan
from bnncost.costmodel.prediction import predict
from bnncost.costmodel.strategy import load_strategy
from bnncost.layers.graph import graph_of

FRAMEWORKS = Path(__file__).resolve().parent.parent / "benchmarks" / "frameworks"
RECORDS = sorted((FRAMEWORKS / "measurements" / "probes" / "larq-grouped").glob("*.json"))
ATTRIBUTION = FRAMEWORKS / "measurements" / "attribution"


def _attribution(probe: str) -> list[dict]:
    return json.loads((ATTRIBUTION / f"larq-{probe}-standard-b64-jit.json").read_text())["baseline_kernels"]


def _bytes_under(rows: list[dict], kernel: str) -> int:
    return sum(r["bytes"] for r in rows if r["kernel"].split(" | ")[0].endswith(kernel))


# probe -> why its tensor peak misses (strict xfail): TensorFlow's executor order, as in test_larq_engine.py
ORDER_MISSES = {
    "larq-larq-grouped-g2-standard-b64": (
        "engine +8.6% of the median, 0.2% under the upper mode: 7 of 11 processes (8.93 MB) made sign_1's STE mask "
        "in the forward and freed batchnorm_1's 1 MiB float32 output for a 256 KiB bool, 4 (9.72 MB) in the "
        "backward, as the engine does (larq_tensor_log.py, one process of each)"),
    "larq-larq-ungrouped-twin-g2-g4-standard-b64": (
        "engine +5.02% of the median, 0.2% under the upper mode: 9 of 11 processes at 15.29-15.30 MB, 2 at 16.08-16.09 "
        "(the engine's order), one at 13.73"),
}


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem, marks=pytest.mark.xfail(strict=True,
                                                                                     reason=ORDER_MISSES[p.stem]))
                                  if p.stem in ORDER_MISSES else pytest.param(p, id=p.stem) for p in RECORDS])
def test_grouped_probes_within_the_bars(path):
    """Tensor peak within 5% of the median of eleven processes, process peak within 10%: the XLA clusters' buffers
    (copies of the forward's inputs, the transposed dY, one group's output at a time) and runtime."""
    rec = json.loads(path.read_text())
    assert rec["repeats"]["runs"] == 11
    memory = predict(str(FRAMEWORKS.parent.parent / rec["model_file"]), strategy="standard", batch=rec["batch"],
                     engine="larq").memory
    assert abs(memory.tensor_peak_bytes - rec["tensor_peak_bytes"]) <= 0.05 * rec["tensor_peak_bytes"]
    assert abs(memory.process_peak_bytes - rec["process_peak_bytes"]) <= 0.10 * rec["process_peak_bytes"]


@pytest.mark.parametrize("path", RECORDS, ids=lambda p: p.stem)
def test_the_tensor_peak_is_the_upper_mode(path):
    """Every probe's tensor peak within 1% of its runs' highest: the engine's one order is the upper mode. The
    probes were recorded again: their first runs (git 12d6da2) held 3.85 MB more runtime than any process now
    does, at all three points alike (the check models' first runs did too, stop 23), and every one of them at the
    upper mode."""
    rec = json.loads(path.read_text())
    memory = predict(str(FRAMEWORKS.parent.parent / rec["model_file"]), strategy="standard", batch=rec["batch"],
                     engine="larq").memory
    assert abs(memory.tensor_peak_bytes / rec["repeats"]["tensor_peak_bytes"]["max"] - 1) <= 0.01


def test_xla_runtime_rules_are_the_attribution():
    """Eigen's sgemm code once per process (the same with one grouped conv or two), XLA's executables once per
    configuration plus the compiler's own once: the rules' bytes are the attribution's."""
    rules = {r.name: r.bytes for r in load_engine("larq").runtime if r.name.startswith("xla_")}
    one, two = _attribution("larq-grouped-g2"), _attribution("larq-grouped-g2-g4")
    sgemm = [sum(r["bytes"] for r in rows if r["kernel"].startswith("void tensorflow::xla::EigenConv2DImpl"))
             for rows in (one, two)]
    assert sgemm[0] == sgemm[1] == rules["xla_sgemm_code"]
    launch = [_bytes_under(rows, "XlaLocalLaunchBase::ComputeAsync") for rows in (one, two)]
    assert launch[0] == rules["xla_compiler"] + rules["xla_executables"]
    assert launch[1] == rules["xla_compiler"] + 2 * rules["xla_executables"]


def test_grouped_convs_make_no_onednn_conv_primitive():
    """The oneDNN conv JIT code of a model with a grouped conv is its ungrouped stem's alone: the engine counts
    none for the grouped conv (within 64 B a layer, as for the other attributions)."""
    rows = _attribution("larq-grouped-g2")
    measured = sum(r["bytes"] for r in rows if "jit_generator" in r["kernel"]
                   and r["kernel"].split(" | ")[0].removeprefix("tensorflow::").startswith("MklConv"))
    engine = load_engine("larq")
    graph = graph_of(str(FRAMEWORKS / "probes" / "larq-grouped-g2.yaml"))
    plan = memory_plan(graph, load_strategy("standard"), retention=engine.retention, engine=engine)
    modelled = sum(v.bytes_at(64) for v in plan.variables if v.name.startswith("runtime.jit_conv2d"))
    assert abs(modelled - measured) <= 64 * len(graph.nodes), (modelled, measured)


@pytest.mark.parametrize("path", sorted((FRAMEWORKS / "measurements" / "probes" / "larq-check").glob("*.json")),
                         ids=lambda p: p.stem)
def test_check_models_within_the_bars(path):
    """Two check models the rules were not built from (a MobileNet-style BNN with depthwise convs, a VGG-style one
    with valid convs, max-pools and dropout; the median of eleven processes, on an AMD EPYC): tensor peak within
    5%, process peak within 10%."""
    rec = json.loads(path.read_text())
    assert rec["repeats"]["runs"] == 11
    memory = predict(str(FRAMEWORKS.parent.parent / rec["model_file"]), strategy="standard", batch=rec["batch"],
                     engine="larq").memory
    assert abs(memory.tensor_peak_bytes - rec["tensor_peak_bytes"]) <= 0.05 * rec["tensor_peak_bytes"]
    assert abs(memory.process_peak_bytes - rec["process_peak_bytes"]) <= 0.10 * rec["process_peak_bytes"]


def test_xla_sgemm_workspace_is_the_gemm_scratch_nocopy_workspace():
    """The workspace oneDNN's sgemm mallocs under Eigen's contractions is gemm_scratch's nocopy workspace."""
    engine = load_engine("larq")
    rules = [t for t in engine.temporaries if t.name.startswith("xla_sgemm_workspace")]
    assert {t.during for t in rules} == {"forward", "backward"}
    assert {t.bytes for t in rules} == {engine.gemm_scratch.nocopy_workspace_bytes} == {74176}
