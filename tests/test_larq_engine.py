"""The `larq` engine against Larq/TensorFlow's measured training steps (issue 9).

Each JSON in benchmarks/frameworks/measurements/larq-*.json is one point (model,
batch) measured with memray in several fresh processes (benchmarks/frameworks/
larq_measure.py, one process each; larq_repeat.py keeps every run in the
recording and makes its peaks the median of the runs': TensorFlow's executor
orders a step's ops per process, so one process is one draw). TensorFlow is not
needed here. For every point, the engine must predict the median tensor peak
within 5% and the median process peak (tensors + runtime) within 10%. The
points it does not meet yet are listed below with the measured error and the
spread, as strict expected failures: a fix that brings one within bounds makes
its test fail until it leaves the list.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from bnncost.costmodel.engine import load_engine
from bnncost.costmodel.memory import memory_plan
from bnncost.costmodel.prediction import predict
from bnncost.costmodel.strategy import load_strategy
from bnncost.layers.graph import graph_of

ROOT = Path(__file__).resolve().parent.parent
MEASUREMENTS = sorted((ROOT / "benchmarks" / "frameworks" / "measurements").glob("larq-*.json"))
TENSOR_TOLERANCE = 0.05
PROCESS_TOLERANCE = 0.10

# recording stem -> why the engine misses it (kept honest: strict xfail). The runtime (what is not a
# tensor) is per layer kind from small probes at B=16, the small-batch MatMul state below 16 rows, the
# graph constants by shape and oneDNN's primitives once per distinct layer configuration
# (costmodel/engines/larq.yaml): every process peak is within 10%.
# The tensor misses are points whose peak differs from process to process (TensorFlow's executor orders a
# step's ready ops as it runs, not the same way in every process), where the engine's one order gives a
# peak the median of the runs does not have. Each reason ends with the point's runs (from its recording).


def _runs(stem: str) -> str:
    record = json.loads((MEASUREMENTS[0].parent / f"{stem}.json").read_text(encoding="utf-8"))
    values = sorted(r["tensor_peak_bytes"] / 1e6 for r in record["runs"])
    return (f"tensor peaks of its {len(values)} fresh processes (MB): {', '.join(f'{v:.2f}' for v in values)}; "
            f"median {record['tensor_peak_bytes'] / 1e6:.2f}")


TENSOR_MISSES: dict[str, str] = {
    "larq-cnv-standard-b64": ("engine +6.0% of the median: the runs fall in three modes (about 120, 132-135 and "
                              "144 MB); the engine's order (every activation's STE mask abs(x) <= 1 made in its "
                              "backward, its float32 input kept until then) gives the high one, 5 of the 11 runs; "
                              "in the lower modes the executor made the first blocks' masks in the forward and "
                              "freed their inputs early (executor trace, larq_op_order.py, 8 processes: "
                              "batchnorm_1's and batchnorm_2's masks in the forward in the 4 runs of the lower "
                              "peaks, 113-121 MiB; in none of the 137-139 MiB ones). Where the executor's inline "
                              "chain stops in the forward, and so which masks it makes there, follows the "
                              "optimised graph's node order, which differs per process; "
                              + _runs("larq-cnv-standard-b64")),
    "larq-digits-cnn-standard-b16": ("engine +7.2% of the median: two modes, 1.08-1.11 MB (6 runs) and 1.20 MB (5); "
                                     "the engine's order (batchnorm_1's STE mask made in the backward, its float32 "
                                     "16x8x8x32 input kept until then) is the high one, 1.5% under it; the executor "
                                     "made that mask in the forward in the low mode's runs (larq_op_order.py, 8 "
                                     "processes at B=16: batchnorm_1's mask in the forward in the 4 runs at "
                                     "1.08-1.12 MiB, in the backward in the 4 at 1.19-1.21 MiB; at B=64 the same, "
                                     "3 and 3); "
                                     + _runs("larq-digits-cnn-standard-b16")),
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


def test_a_layer_backward_is_staged_in_the_executor_s_usual_order():
    """The engine stages a dense or conv layer's backward as dW's product (1), its update (2), dX's product (3): the
    order TensorFlow's executor ran in most layer backwards of the traced fresh processes
    (benchmarks/frameworks/larq_op_order.py, measurements/probes/larq-op-order/)."""
    records = sorted((ROOT / "benchmarks" / "frameworks" / "measurements" / "probes" / "larq-op-order").glob("*.json"))
    layers = [b for r in records for run in json.loads(r.read_text(encoding="utf-8"))["runs"] for b in run["backward"]]
    assert len(records) >= 5 and len(layers) >= 100
    assert sum(b["weight_grad_first"] for b in layers) >= 0.9 * len(layers)
    assert sum(b["update_before_input_grad"] for b in layers) >= 0.7 * len(layers)
    engine = load_engine("larq")
    staged = {(r.role, r.stage, r.free_stage) for r in engine.lifetimes if r.kinds == ("dense", "conv2d")
              and r.when.grouped is False}
    assert {("weight_grad", 1, 2), ("activation_grad", 3, None), ("binary_input", None, 1)} <= staged
    assert {r.name: r.stage for r in engine.temporaries}["adam_temp"] == (2, 2)
    assert sorted((g.makes_weight_grad, g.stage) for g in engine.gemms if g.during == "backward") == [
        (False, 3), (True, 1)]


def test_executor_state_is_what_the_executor_log_counts():
    """The engine's executor_state rules (per layer kind, from probes) against each model's count from TensorFlow's
    executor log: 48 B per data input and 4 B per node of the optimised graph (larq_executor_state.py); the
    probes to 8 B, the other models (recorded and check models, not used for the rules) within 1%."""
    records = sorted((ROOT / "benchmarks" / "frameworks" / "measurements" / "probes" / "larq-executor-state")
                     .glob("*.json"))
    engine, strategy = load_engine("larq"), load_strategy("standard")
    checked = 0
    for path in records:
        record = json.loads(path.read_text(encoding="utf-8"))
        assert record["bytes"] == 48 * record["data_inputs"] + 4 * record["nodes"]
        if "attributed_bytes" in record:  # memray's native stacks: plus the vector<bool> of active nodes (its 64-bit
            # words and the vector itself) that the executor keeps only while its log is on
            assert record["attributed_bytes"] - record["bytes"] == -(-record["nodes"] // 64) * 8 + 40
        ref = str(ROOT / record["model_file"]) if record["model_file"] else record["model"]
        plan = memory_plan(graph_of(ref), strategy, retention="backward", engine=engine)
        got = sum(v.bytes_at(record["batch"]) for v in plan.variables if v.role == "executor_state")
        if record["model"].startswith("probe-"):
            assert abs(got - record["bytes"]) <= 8, record["model"]
        else:
            assert got == pytest.approx(record["bytes"], rel=0.01), record["model"]
            checked += 1
    assert checked >= 9


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


def _spread(record: dict, key: str, predicted: int) -> str:
    """The runs behind a median, for a failure message: how many, min..max, and the engine against each end."""
    values = [r[key] for r in record["runs"] if key in r]
    lo, hi = min(values), max(values)
    return (f"median of {len(values)} fresh processes {record[key] / 1e6:.2f} MB, runs {lo / 1e6:.2f}..{hi / 1e6:.2f}; "
            f"engine {predicted / 1e6:.2f} MB ({predicted / hi - 1:+.1%} .. {predicted / lo - 1:+.1%} of the runs)")


def _predicted(record: dict):
    assert record["engine"] == "larq" and record["strategy"] == "standard"
    return predict(_model_ref(record), "standard", record["batch"], engine="larq").memory


def _assert_predicts_the_median(path: Path, key: str, tolerance: float) -> None:
    record = _record(path)
    predicted = getattr(_predicted(record), key)
    error = predicted / record[key] - 1
    assert abs(error) <= tolerance, f"{key} off by {error:+.1%}: {_spread(record, key, predicted)}"


@pytest.mark.parametrize("path", _cases(TENSOR_MISSES))
def test_larq_engine_predicts_the_median_tensor_peak(path: Path):
    _assert_predicts_the_median(path, "tensor_peak_bytes", TENSOR_TOLERANCE)


@pytest.mark.parametrize("path", _cases(PROCESS_MISSES))
def test_larq_engine_predicts_the_median_process_peak(path: Path):
    _assert_predicts_the_median(path, "process_peak_bytes", PROCESS_TOLERANCE)


# Points measured in fewer than 3 fresh processes (none: every point has 11 runs).
SINGLE_PROCESS: set[str] = set()


@pytest.mark.parametrize("path", MEASUREMENTS, ids=lambda p: p.stem)
def test_recording_is_the_median_of_its_runs(path: Path):
    """Every run is kept, made by the recording's harness and versions, and the recorded peaks are their median."""
    record = _record(path)
    runs = record["runs"]
    assert all(r["versions"] == record["versions"] for r in runs)
    assert all(r["environment"].items() >= record["environment"].items() for r in runs)
    for key in ("tensor_peak_bytes", "process_peak_bytes"):
        values = [r[key] for r in runs if key in r]
        assert record[key] == round(statistics.median(values))
        assert record["repeats"][key] == {"runs": len(values), "min": min(values), "median": record[key],
                                          "max": max(values)}
    assert record["repeats"]["runs"] == len(runs)
    if path.stem in SINGLE_PROCESS:
        assert len(runs) < 3, "repeated now: remove it from SINGLE_PROCESS"
    else:
        assert len(runs) >= 3 and sum("process_peak_bytes" in r for r in runs) >= 3


@pytest.mark.parametrize("path", [p for p in MEASUREMENTS if len(_record(p)["runs"]) >= 3], ids=lambda p: p.stem)
def test_larq_engine_is_within_the_process_to_process_spread(path: Path):
    """The tensor prediction lies within what the fresh processes measured, widened by the tolerance."""
    record = _record(path)
    measured = [r["tensor_peak_bytes"] for r in record["runs"]]
    predicted = _predicted(record).tensor_peak_bytes
    assert min(measured) * (1 - TENSOR_TOLERANCE) <= predicted <= max(measured) * (1 + TENSOR_TOLERANCE), \
        f"{predicted} outside {min(measured)}..{max(measured)} +-{TENSOR_TOLERANCE:.0%}"


# oneDNN's JIT code by TensorFlow kernel (larq_jit_attribution.py) and the engine rules that count it
ONEDNN_JIT = {
    "conv2d": ({"MklConvOp", "MklConvCustomBackpropFilterOp", "MklConvCustomBackpropInputOp"},
               {"jit_conv2d", "jit_conv2d_wide_input", "jit_conv2d_pointwise_weight_grad", "jit_conv2d_input_grad",
                "jit_conv2d_input_grad_channels", "jit_conv2d_input_grad_unpadded", "jit_conv2d_input_grad_strided",
                "jit_conv2d_input_grad_pointwise", "jit_conv2d_input_grad_pointwise_channels"}),
    "batchnorm": ({"MklFusedBatchNormOp", "MklFusedBatchNormGradOp"}, {"jit_batchnorm", "jit_batchnorm_grad"}),
    "maxpool": ({"MklMaxPoolingOp", "MklMaxPoolingGradOp"}, {"jit_maxpool"}),
    "avgpool": ({"MklAvgPoolingOp", "MklAvgPoolingGradOp"}, {"jit_avgpool"}),
    "dense with a bias": ({"MklFusedMatMulOp"}, {"jit_dense_bias"}),
}
JIT_ATTRIBUTIONS = sorted(p.name.removeprefix("larq-").removesuffix("-standard-b16-jit.json") for p in
                          (ROOT / "benchmarks" / "frameworks" / "measurements" / "attribution").glob("larq-*-b16-jit.json"))
# attributions whose conv kernels the rules do not all count (kept honest: strict xfail)
_EXTRA_FORWARD = ("18 more forward conv kernels than the rules count (787,680 B): oneDNN generates another set for "
                  "some output-channel counts and output sizes, 48 channels on 8 x 8 and 80 on 16 x 16, but not 48 on "
                  "16 x 16, 16 on 8 x 8 or 96 on 16 x 16 (larq-convjit probes); no rule yet")
JIT_GAPS = {
    "larq-resnet-b": "132 forward conv kernels where the rules count 96, 84 backward-data where they count 78: its "
                     "24 -> 48 stride-2 conv and its 48 -> 48 conv on 8 x 8 (its slices and larq-convjit-16-24-48-s2, "
                     "-8-48-48-s)",
    "larq-rb-slice-c": "90 forward conv kernels where the rules count 72: its 24 -> 48 stride-2 conv (48 channels on "
                       "8 x 8)",
    "larq-convjit-16-24-48-s2": _EXTRA_FORWARD,
    "larq-convjit-16-16-80-s": _EXTRA_FORWARD,
    "larq-convjit-8-48-48-s": _EXTRA_FORWARD + "; and 6 more backward-data kernels",
    "larq-conv2d-distinct": "its six convs of 16 to 56 output channels on 8 x 8 hold 19,954,700 B of JIT code where "
                            "the rules count 16,803,975 (72 kernels more; recorded for their primitives' state, "
                            "onednn_state_conv2d*: oneDNN's blocking for 24, 40 and 56 channels, as above)",
    "check-vgg-bnn": "96 backward-data conv kernels where the rules count 84: its 'valid' 32 -> 64 conv on 16 x 16 or "
                     "64 -> 64 on 14 x 14 (larq-convjit-8-64-64-v, 64 -> 64 'valid' on 8 x 8, holds the 30 the rules "
                     "count); 525,117 B of its runtime",
    "larq-conv2d-bn-distinct": "the same six convs (its batchnorms' JIT code is as counted: the whole model's "
                               "runtime is 58 KB from the engine's besides the convs' kernels)",
}


@pytest.mark.parametrize("model", [pytest.param(m, marks=pytest.mark.xfail(strict=True, reason=JIT_GAPS[m]))
                                   if m in JIT_GAPS else m for m in JIT_ATTRIBUTIONS])
def test_onednn_jit_code_is_what_memray_saw(model):
    """oneDNN's JIT code per conv, batchnorm, max-pool and biased dense, once per distinct configuration (a conv's
    kernels by its input channels, channel change and padding; a batchnorm that only a relu reads apart, Grappler
    fuses the two): the engine's bytes equal the attribution's (native stacks), within 64 B per layer."""
    from bnncost.costmodel.memory import memory_plan
    from bnncost.costmodel.strategy import load_strategy
    from bnncost.layers.graph import graph_of

    doc = json.loads((ROOT / "benchmarks" / "frameworks" / "measurements" / "attribution"
                      / f"larq-{model}-standard-b16-jit.json").read_text())
    engine = load_engine("larq")
    graph = graph_of(str(ROOT / doc["model_file"]))
    plan = memory_plan(graph, load_strategy("standard"), retention=engine.retention, engine=engine)
    for kind, (ops, rules) in ONEDNN_JIT.items():
        measured = sum(k["bytes"] for k in doc["baseline_kernels"]
                       if k["kernel"].split(" | ")[0].removeprefix("tensorflow::") in ops and "jit_generator" in k["kernel"])
        modelled = sum(v.bytes_at(16) for v in plan.variables if v.name.removeprefix("runtime.") in rules)
        assert abs(modelled - measured) <= 64 * len(graph.nodes), (kind, modelled, measured)


# larq_probes.py's per-layer bytes (from the probe recordings) and the rule each one is
PROBE_RULES = {"sign": "graph_sign", "batchnorm (after a conv2d, fused)": "graph_batchnorm",
               "batchnorm (after a dense)": "graph_batchnorm_of_vectors", "relu": "graph_relu", "prelu": "graph_prelu",
               "dropout": "graph_dropout", "maxpool": "graph_maxpool", "avgpool": "graph_avgpool",
               "conv2d (full precision)": "graph_conv2d", "conv2d (binary)": "graph_binary_conv2d",
               "conv2d (full precision, 2 groups: XLA)": "graph_conv2d_grouped",
               "conv2d (binary, 2 groups: XLA)": "graph_binary_conv2d_grouped",
               "dense (full precision)": "graph_dense", "dense (binary)": "graph_binary_dense", "add": "graph_add",
               "bias of a dense (beyond the dense)": "graph_dense_bias"}


def test_graph_bytes_per_layer_are_the_probes():
    """Each layer kind's graph runtime is what larq_probes.py reads off the probe recordings, to the byte, the
    fixed bytes are the dense base probe's, a global average pool's the conv base probe's beyond them and a
    flatten's the same less what the conv base with a flatten instead holds less; a kind's
    graph on vectors is within 2% of it on feature maps."""
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks" / "frameworks"))
    import larq_probes

    runtime = {r.name: r.bytes for r in load_engine("larq").runtime}
    layer = larq_probes.per_layer(larq_probes.runtimes())
    assert {rule: runtime[rule] for rule in PROBE_RULES.values()} == {r: layer[k] for k, r in PROBE_RULES.items()}
    fixed = larq_probes.fixed(larq_probes.runtimes(), layer)
    assert runtime["framework"] == fixed["dense base probe"]  # its dense layers' sgemm code is onednn_sgemm_code
    # the conv base probe is the dense one's layers in 4-D with a global average pool before its dense
    heads = larq_probes.pooling_heads(larq_probes.runtimes(), fixed)
    assert (runtime["graph_global_avgpool"], runtime["graph_flatten"]) == (heads["global_avgpool"], heads["flatten"])
    for kind in ("prelu", "dropout"):
        assert abs(layer[f"{kind} (of vectors, check)"] / layer[kind] - 1) < 0.02


AMD = sorted((ROOT / "benchmarks" / "frameworks" / "measurements" / "probes" / "larq-amd").glob("larq-*.json"))


@pytest.mark.parametrize("path", AMD, ids=lambda p: p.stem)
def test_larq_runtime_does_not_depend_on_the_x86_cpu(path):
    """Five points recorded again on an AMD EPYC (5 fresh processes each; the recordings are the Xeon's): TensorFlow
    and its oneDNN hold the same runtime bytes on both CPUs, to within 1 KB (TensorFlow links no MKL; oneDNN picks
    its code by ISA, AVX-512 on both), and the larq engine meets its bars there too."""
    rec = json.loads(path.read_text())
    xeon = json.loads((path.parents[2] / path.name).read_text())
    assert rec["cpu"].startswith("AMD") and not xeon["cpu"].startswith("AMD")
    assert abs(rec["runtime_bytes"] - xeon["runtime_bytes"]) <= 1024
    ref = str(ROOT / rec["model_file"]) if rec.get("model_file") else rec["model"]
    mem = predict(ref, "standard", rec["batch"], engine="larq").memory
    assert abs(mem.tensor_peak_bytes - rec["tensor_peak_bytes"]) <= TENSOR_TOLERANCE * rec["tensor_peak_bytes"]
    assert abs(mem.process_peak_bytes - rec["process_peak_bytes"]) <= PROCESS_TOLERANCE * rec["process_peak_bytes"]


HOLDOUTS = sorted((ROOT / "benchmarks" / "frameworks" / "measurements" / "probes" / "larq-holdout").glob("larq-*.json"))
HOLDOUTS_2 = sorted((ROOT / "benchmarks" / "frameworks" / "measurements" / "probes" / "larq-holdout2").glob("larq-*.json"))
HOLDOUT_MISSES = {
    "larq-holdout-kws-standard-b8": (
        "engine +9.1% of the median, 1.6% over the highest run: dense_1 (a 1200 x 96 binary kernel, 8 samples) "
        "holds its float32 sign(W) (460,800 B) until its dX product, which the engine runs after dW's product and "
        "the update; the executor's order differs per process (larq_op_order.py, 6 processes, "
        "measurements/probes/larq-op-order/larq-op-order-holdout-kws-b8.json): dW and the update first in the "
        "runs at 5.81 and 6.14 MB, dX first, freeing sign(W) before the update, in those at 5.39-5.72 MB"),
}


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem, marks=pytest.mark.xfail(strict=True,
                                                                                     reason=HOLDOUT_MISSES[p.stem]))
                                  if p.stem in HOLDOUT_MISSES else pytest.param(p, id=p.stem)
                                  for p in HOLDOUTS + HOLDOUTS_2])
def test_larq_engine_meets_its_bars_on_the_holdout_models(path):
    """Six models (probes/holdout-*.yaml: 5x5 convs and average pools, grouped convs with a projection shortcut,
    a 7x7 strided stem with depthwise-separable blocks, a dense net of odd widths, a deep narrow CNN, wide
    residual blocks), median of 3 fresh processes on an AMD EPYC at B = 8 and 32. holdout-wide B=8 (-6.5%)
    exposed the filter gradient's blocked dW (blocked_weight_grad); no other rule was read from them.
    Six more (larq-holdout2/: a keyword-spotting net with rectangular maps and kernels, nested residual blocks,
    a wide dense net on vectors, a pooling-heavy CNN, a MobileNet-style net, an ImageNet-style stem), median of
    11, predicted before they were measured; holdout-nest (+6.6%, +7.1%) exposed TensorFlow's in-place
    element-wise gradients (the engine's in_place_grads), read from its memory log (larq_tensor_log.py); the
    other four were predicted with that rule and recorded after it."""
    rec = json.loads(path.read_text())
    mem = predict(str(ROOT / rec["model_file"]), "standard", rec["batch"], engine="larq").memory
    assert abs(mem.tensor_peak_bytes - rec["tensor_peak_bytes"]) <= TENSOR_TOLERANCE * rec["tensor_peak_bytes"]
    assert abs(mem.process_peak_bytes - rec["process_peak_bytes"]) <= PROCESS_TOLERANCE * rec["process_peak_bytes"]


EDGES = sorted((ROOT / "benchmarks" / "frameworks" / "measurements" / "probes" / "larq-batch-edges").glob("larq-*.json"))


@pytest.mark.parametrize("path", EDGES, ids=lambda p: p.stem)
def test_larq_small_batch_matmul_state_switches_at_16(path):
    """digits-mlp at B = 15 and 16 (3 fresh processes each, AMD EPYC): oneDNN's MatMul keeps 12 MB more state
    below 16 rows, and the process peaks, 11.3 MiB apart, are met within 10%; the tensor peak is within the runs'
    range widened by 5% (at B=15 two of three runs made an early STE mask, the engine's order is the third's)."""
    rec = json.loads(path.read_text())
    mem = predict(rec["model"], "standard", rec["batch"], engine="larq").memory
    assert abs(mem.process_peak_bytes - rec["process_peak_bytes"]) <= PROCESS_TOLERANCE * rec["process_peak_bytes"]
    spread = rec["repeats"]["tensor_peak_bytes"]
    assert (1 - TENSOR_TOLERANCE) * spread["min"] <= mem.tensor_peak_bytes <= (1 + TENSOR_TOLERANCE) * spread["max"]
