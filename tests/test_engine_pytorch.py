"""The `pytorch` engine against every PyTorch recording in benchmarks/frameworks/measurements/.

The recordings are memray measurements of real PyTorch training steps
(benchmarks/frameworks/torch_measure.py); CI has no torch and only reads them.
Done when (issue 9): the step's tensor peak within 5%, the process peak within 10%.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from bnncost import predict
from bnncost.costmodel.memory import memory_plan
from bnncost.costmodel.engine import load_engine
from bnncost.costmodel.engine_rules import (
    conv_kernel_counts, conv_kernels, kept_buffers, onednn_min_batch, sgemm_code_bytes, step_gemms,
)
from bnncost.costmodel.strategy import as_strategy
from bnncost.layers.graph import graph_of

ROOT = Path(__file__).resolve().parents[1]
MEASUREMENTS = ROOT / "benchmarks" / "frameworks" / "measurements"


def _recordings() -> list[dict]:
    out = []
    for path in sorted(MEASUREMENTS.glob("*.json")):
        rec = json.loads(path.read_text())
        if rec.get("engine") == "pytorch":
            rec["file"] = path.name
            out.append(rec)
    return out


RECORDINGS = _recordings()

# Known gaps, kept visible (strict: a recording that starts passing fails the suite until it is removed).
# The step's tensors: every recording within 5% (SignSTE(W).backward has its own moment, after_backward).
TENSOR_GAPS: set[str] = set()
# The process: every recording within 10% (oneDNN's JIT kernels counted per direction and distinct reorder,
# MKL's packing buffers per gemm shape).
PROCESS_GAPS: set[str] = set()
# The proposed strategy (torch_proposed.py): every recording within 5% (its dense / conv Functions' forward and
# backward run as stages: dW's float32 operand is freed before dW's packing temporaries are made).
PROPOSED_TENSOR_GAPS: dict[str, str] = {}
PROPOSED_PROCESS_GAPS: dict[str, str] = {}


def _cases(gaps: set[str], reason: str, more: dict[str, str] | None = None) -> list:
    reasons = {**{g: reason for g in gaps}, **(more or {})}
    return [pytest.param(r, id=r["file"], marks=pytest.mark.xfail(strict=True, reason=reasons[r["file"]]))
            if r["file"] in reasons else pytest.param(r, id=r["file"]) for r in RECORDINGS]


def _model(rec: dict) -> str:
    ref = rec["model_ref"]
    return str(ROOT / ref) if ref.endswith((".yaml", ".yml")) else ref


def _memory(rec: dict):
    return predict(_model(rec), strategy=rec["strategy"], batch=rec["batch"], engine="pytorch").memory


def test_every_zoo_model_that_fits_and_two_of_our_own_are_recorded():
    recorded = {(r["model"], r["strategy"]) for r in RECORDINGS}
    batches = {}
    for r in RECORDINGS:
        batches.setdefault((r["model"], r["strategy"]), set()).add(r["batch"])
    for model in ("mlp", "cnv", "binarynet", "digits-mlp", "digits-cnn"):
        assert len(batches.get((model, "standard"), ())) >= 3, model
    own = [r for r in RECORDINGS if r["model_ref"].startswith("benchmarks/frameworks/models/")]
    assert len({r["model"] for r in own}) >= 2
    for r in own:
        kinds = {n.kind for n in graph_of(_model(r)).nodes}
        assert {"add", "avgpool"} <= kinds
        assert any(n.kind == "conv2d" and n.first and not n.binary for n in graph_of(_model(r)).nodes)
    assert recorded


def test_the_layer_kinds_real_bnns_add_are_recorded():
    """PReLU (Bi-Real, ReActNet), dropout and grouped / depthwise convs each appear in some recording."""
    nodes = [n for r in RECORDINGS for n in graph_of(_model(r)).nodes]
    assert {"prelu", "dropout"} <= {n.kind for n in nodes}
    assert any(n.kind == "conv2d" and n.groups == n.in_shape[-1] for n in nodes)  # depthwise
    assert any(n.kind == "conv2d" and 1 < n.groups < n.in_shape[-1] for n in nodes)  # grouped


@pytest.mark.parametrize("rec", _cases(TENSOR_GAPS, "see TENSOR_GAPS", PROPOSED_TENSOR_GAPS))
def test_tensor_peak_within_5_percent(rec):
    predicted = _memory(rec).tensor_peak_bytes
    measured = rec["tensor_peak_bytes"]
    assert abs(predicted - measured) <= 0.05 * measured, f"predicted {predicted:,} measured {measured:,}"


@pytest.mark.parametrize("rec", _cases(PROCESS_GAPS, "see PROCESS_GAPS", PROPOSED_PROCESS_GAPS))
def test_process_peak_within_10_percent(rec):
    predicted = _memory(rec).process_peak_bytes
    measured = rec["process_peak_bytes"]
    assert abs(predicted - measured) <= 0.10 * measured, f"predicted {predicted:,} measured {measured:,}"


def test_mechanisms_are_the_ones_autograd_shows():
    """The recorded saved-tensor lists show what the engine file says autograd keeps."""
    rec = next(r for r in RECORDINGS if r["model"] == "digits-cnn" and r["strategy"] == "standard")
    saved = rec["attribution"]["saved"]
    assert any(s["dtype"] == "int64" and s["layer"].startswith("maxpool") for s in saved)  # pool indices
    assert any(s["dtype"] == "int64" and s["layer"] == "loss" for s in saved)  # targets
    weight_copies = [s for s in saved if s["layer"].startswith("conv2d") and s["is"] == "new" and len(s["shape"]) == 4]
    assert [s["layer"] for s in weight_copies] == ["conv2d_1", "conv2d_2"]  # sign(W): conv saves it always
    engine = load_engine("pytorch")
    plan = memory_plan(graph_of("digits-cnn"), as_strategy("standard"), retention=engine.retention,
                       workspace_budget=engine.workspace.budget, engine=engine)
    names = {v.name for v in plan.variables}
    assert {"conv2d_2.weight_sign", "maxpool_1.indices", "softmax_ce_1.targets"} <= names
    assert {"conv2d_1.weight_sign"} <= names  # (mm, unlike convolution, keeps none in a first dense layer)


def test_mkl_buffers_are_the_ones_memray_saw():
    """The engine's MKL packing buffers, per gemm, are the sizes the probes and the recordings show."""
    pool = load_engine("pytorch").blas_buffers
    assert pool.buffer_bytes("TN", 256, 256, 256) == 4_762_144  # probe: mm(x[256, 256], W[256, 256].t())
    assert pool.buffer_bytes("TN", 256, 256, 784) == 5_040_672  # depth capped at 384
    assert pool.buffer_bytes("TN", 256, 256, 512) == 4_762_144  # k = 512 packs in two 256-deep halves
    assert pool.buffer_bytes("NN", 784, 256, 256) == 5_302_816  # m rounded up to 48-row panels (816)
    assert pool.buffer_bytes("TN", 256, 256, 16) == 4_364_832  # small depth
    assert pool.buffer_bytes("TN", 10, 256, 256) == 0  # the output layer's forward: no packing path
    assert pool.buffer_bytes("NN", 256, 128, 256) == 0  # dX at B < 192: none
    assert pool.buffer_bytes("TN", 64, 40, 64) == 4_274_720  # m < 192, n < m, k <= m
    engine = load_engine("pytorch")
    calls = step_gemms(graph_of("digits-mlp"), engine, as_strategy("standard"))
    # memray native stacks at the step's start, digits-mlp B=32: exactly these two buffers
    assert kept_buffers(pool, calls, 32) == [4_368_928, 4_532_768]
    assert len(kept_buffers(pool, step_gemms(graph_of("digits-cnn"), engine, as_strategy("standard")), 32)) == 0
    assert len(kept_buffers(pool, step_gemms(graph_of("mlp"), engine, as_strategy("standard")), 256)) == 2


@pytest.mark.parametrize("grid, probes", [("torch-mkl-sgemm", 3468), ("torch-mkl-sgemm-shallow", 1734)])
def test_mkl_buffer_rule_reproduces_every_probe(grid, probes):
    """Every probed gemm (3 transposes x 289 shapes x depths 10, 64, 256, 1024, and x depths 1, 2 where a gemm of
    depth 1 packs nothing; torch_blas_probe.py): path and bytes exact."""
    doc = json.loads((MEASUREMENTS / "probes" / f"{grid}.json").read_text())
    pool = load_engine("pytorch").blas_buffers
    wrong = [(p["trans"], p["m"], p["n"], p["k"], p["buffers"]) for p in doc["probes"]
             if pool.buffer_bytes(p["trans"], p["m"], p["n"], p["k"]) != sum(p["buffers"])]
    assert len(doc["probes"]) == probes and not wrong, wrong[:5]


MKL_BOOKKEEPING = {256, 69_664}  # MKL's per-thread accounting (mm_account_ptr_by_tid), not a packing buffer


def test_amd_mkl_buffer_rule_reproduces_every_probe():
    """On an AMD CPU MKL runs its generic sgemm (mkl_blas_def_*), whose buffers the pytorch-amd engine gives:
    every probed gemm, path and bytes exact (3 transposes x 13 depths x 15 x 15 shapes, every allocation kept)."""
    doc = json.loads((MEASUREMENTS / "probes" / "torch-mkl-sgemm-amd.json").read_text())
    assert doc["machine"]["cpu"].startswith("AMD") and doc["mkl_routines"] == ["mkl_blas_def_sgemm_getbufs_bdz"]
    pool = load_engine("pytorch-amd").blas_buffers
    wrong = [(p["trans"], p["m"], p["n"], p["k"], p["buffers"]) for p in doc["probes"]
             if pool.buffer_bytes(p["trans"], p["m"], p["n"], p["k"])
             != sum(b for b in p["buffers"] if b not in MKL_BOOKKEEPING)]
    assert len(doc["probes"]) == 8775 and sum(1 for p in doc["probes"] if p["buffers"]) == 5148 and not wrong, wrong[:5]
    assert pool.buffer_bytes("TN", 256, 256, 64) == 17_056 + 4 * 128 * (256 + 2 * 256)
    assert pool.buffer_bytes("NN", 17, 4, 200) == 17_056 + 4 * 100 * (32 + 2 * 4)  # k / 2 rounded down, m to 16
    assert pool.buffer_bytes("NT", 11, 1024, 64) == pool.buffer_bytes("TN", 12, 3, 64) == 0  # no packing path
    intel = load_engine("pytorch").blas_buffers
    assert intel.buffer_bytes("TN", 256, 256, 64) > 4 * 2**20 > 10 * pool.buffer_bytes("TN", 256, 256, 64)


AMD_RECORDINGS = sorted([*(MEASUREMENTS / "probes" / "torch-amd").glob("*.json"),
                         *(MEASUREMENTS / "probes" / "torch-check").glob("*.json"),
                         *(MEASUREMENTS / "probes" / "torch-holdout").glob("*.json"),
                         *(MEASUREMENTS / "probes" / "torch-holdout2").glob("*.json"),
                         *(MEASUREMENTS / "probes" / "torch-batch-edges").glob("*.json")])


@pytest.mark.parametrize("path", AMD_RECORDINGS, ids=lambda p: p.stem)
def test_pytorch_amd_meets_the_bars_on_every_amd_recording(path):
    """Every recorded point of the `pytorch` table again, the two check models, the holdout models and
    torch-resnet-a at B = 3, 15, 16, 17 (its 1x1 shortcut leaves slow_conv2d for oneDNN at 16), recorded on
    an AMD EPYC: the pytorch-amd engine predicts every tensor peak within 5% and every process peak within 10%
    (the `pytorch` engine, with Intel's MKL buffers, is -18% to +487% off these process peaks)."""
    rec = json.loads(path.read_text())
    assert rec["cpu"].startswith("AMD")
    ref = rec.get("model_ref") or rec["model"]
    mem = predict(str(ROOT / ref) if ref.endswith(".yaml") else ref, strategy=rec["strategy"], batch=rec["batch"],
                  engine="pytorch-amd").memory
    assert abs(mem.tensor_peak_bytes - rec["tensor_peak_bytes"]) <= 0.05 * rec["tensor_peak_bytes"]
    assert abs(mem.process_peak_bytes - rec["process_peak_bytes"]) <= 0.10 * rec["process_peak_bytes"]


def test_a_small_conv_at_batch_one_is_not_onednn():
    """PyTorch's ConvParams::use_mkldnn (one thread) at batch 1 takes oneDNN only for groups > 1, a kernel above
    3 x 3 in both dimensions or an input of more than 20,480 elements; a 1x1 stride-1 conv only from 16 samples."""
    from bnncost.layers.graph import build_graph
    from bnncost.layers.model import parse_model

    def conv(input_shape, **conv):
        graph = build_graph(parse_model({"name": "c", "input": input_shape, "layers": [
            {"conv2d": conv}, {"global_avgpool": {}}, {"dense": {"units": 2, "binary": False}}, {"softmax_ce": {}}]},
            "<test>"))
        return onednn_min_batch(graph.nodes[0], load_engine("pytorch").jit_conv_kernels)

    assert conv([32, 32, 20], filters=8, kernel=3) == 2  # 20,480 elements: slow_conv2d at B=1
    assert conv([32, 32, 21], filters=8, kernel=3) is None  # 21,504: oneDNN
    assert conv([8, 8, 16], filters=16, kernel=3, groups=2) is None and conv([8, 8, 16], filters=8, kernel=5) is None
    assert conv([8, 8, 16], filters=8, kernel=1) == 16 and conv([64, 64, 16], filters=8, kernel=1) == 16
    assert conv([8, 8, 16], filters=8, kernel=1, stride=2) == 2  # strided 1x1: the batch-1 rule only


def _owners(name: str) -> dict:
    return json.loads((MEASUREMENTS / "probes" / "torch-runtime" / f"owners-{name}.json").read_text())["owners"]


@pytest.mark.parametrize("name, model, batch", [
    ("check-mobile-bnn-b1-amd", "check-mobile-bnn", 1), ("check-mobile-bnn-b8-amd", "check-mobile-bnn", 8),
    ("check-vgg-bnn-b8-amd", "check-vgg-bnn", 8), ("torch-grouped-g2-b64-amd", "torch-grouped-g2", 64),
    ("torch-grouped-g2s2-b64-amd", "torch-grouped-g2s2", 64), ("torch-grouped-dw-b64-amd", "torch-grouped-dw", 64),
    ("torch-k5-small-b1-amd", "torch-k5-small", 1), ("holdout-odd-b12-amd", "holdout-odd", 12),
    pytest.param("holdout-stem-b8-amd", "holdout-stem", 8, marks=pytest.mark.xfail(strict=True, reason=(
        "18 reorders counted, 17 held: its two strided convs (3x3 and 1x1, one input and output shape) share one "
        "direct-copy reorder, which the rule keys by conv configuration; keyed by shape, holdout-odd (where a "
        "4-per-group conv seems to hold one too) would be one short"))),
    ("torch-brgemm-k1-48-b32-amd", "torch-brgemm-k1-48", 32),
    ("torch-brgemm-k1-40-b32-amd", "torch-brgemm-k1-40", 32),
    ("torch-brgemm-k1-32-60-b32-amd", "torch-brgemm-k1-32-60", 32),
    *(pytest.param(f"torch-brgemm-{n}-b32-amd", f"torch-brgemm-{n}", 32, marks=pytest.mark.xfail(strict=True, reason=(
        "a 3x3 stride-2 conv of as many output as input channels: its brgemm backward-data holds 12 kernels, the "
        "rule counts 6 (the recorded 3x3 stride-2 convs, all with more outputs than inputs, hold 6)")))
      for n in ("k3-40", "k3-48"))])
def test_onednn_kernels_per_owner_are_what_memray_saw(name, model, batch):
    """Conv and reorder kernels, counted by owner: a depthwise conv's strided backward-data is one kernel and its
    forward and backward-data weight reorder one primitive; a grouped conv of 8 channels per group reorders to
    its own block (the stem's 16-channel tensors reorder twice); at batch 1 a 3x3 conv of a 3,072-element input
    runs without oneDNN (check-mobile-bnn's stem: no kernel at B=1, two at B=8), a 5x5 one on oneDNN (torch-k5-small);
    a strided 1x1 conv's backward-weights is oneDNN's 1x1 implementation, 2 kernels (holdout-odd, holdout-stem), its
    backward-data 3 brgemm kernels, 6 with input channels no multiple of 16 (torch-brgemm-k1-*);
    the MKL buffers are the pytorch-amd engine's, to the byte."""
    owners = _owners(name)
    convs = sum(v["jit_kernels"] for k, v in owners.items() if "convolution" in k or k.startswith("jit_brgemm"))
    reorders = sum(v["jit_kernels"] for k, v in owners.items() if "reorder" in k)
    graph = graph_of(str(ROOT / "benchmarks" / "frameworks" / "probes" / f"{model}.yaml"))
    assert conv_kernel_counts(graph, load_engine("pytorch").jit_conv_kernels, batch) == (convs, reorders)
    engine = load_engine("pytorch-amd")
    mkl = owners.get("mkl_serv_allocate", {}).get("bytes", 0)
    assert sum(kept_buffers(engine.blas_buffers, step_gemms(graph, engine, as_strategy("standard")), batch)) == mkl


@pytest.mark.parametrize("batch", [1, 2])
def test_pointwise_convs_below_16_samples_are_mkl_gemms(batch):
    """bireal18's 1x1 shortcut convs run as per-sample MKL gemms below 16 samples: the MKL buffers memray saw after
    warm-up are, to the byte, those of their gemms and the dense layer's (whose dW of depth B = 1 packs nothing)."""
    engine = load_engine("pytorch")
    calls = step_gemms(graph_of("bireal18"), engine, as_strategy("standard"))
    measured = _owners(f"bireal18-b{batch}")["mkl_serv_allocate"]["bytes"]
    assert sum(kept_buffers(engine.blas_buffers, calls, batch)) == measured


@pytest.mark.parametrize("batch", [1, 2])
def test_equal_convs_share_their_kernels(batch):
    """oneDNN's primitive cache: bireal18's repeated 3x3 convs hold one kernel per direction per configuration."""
    owners = _owners(f"bireal18-b{batch}")
    directions = sum(v["jit_kernels"] for k, v in owners.items() if "convolution" in k or k.startswith("jit_brgemm"))
    counted, _ = conv_kernel_counts(graph_of("bireal18"), load_engine("pytorch").jit_conv_kernels, batch)
    assert counted == directions == 38


@pytest.mark.parametrize("name, model, distinct", [
    ("bireal18-b1", "bireal18", 3), ("bireal18-b2", "bireal18", 3), ("torch-resnet-b-b16", "torch-resnet-b", 1),
    ("torch-resnet-a-b8-amd", "torch-resnet-a", 1), ("bireal-block-b16-amd", "bireal-block", 1),
    ("torch-grouped-g2s2-b64-amd", "torch-grouped-g2s2", 0), ("check-mobile-bnn-b8-amd", "check-mobile-bnn", 0)])
def test_a_strided_conv_s_backward_data_copies_with_a_reorder_of_its_own(name, model, distinct):
    """One jit_uni_reorder_direct_copy_t kernel per distinct one-group strided conv that computes dX (oneDNN's
    brgemm strided backward-data), on both CPUs; none for a grouped or depthwise strided conv."""
    owners = _owners(name)
    assert owners.get("jit_uni_reorder_direct_copy_t", {}).get("jit_kernels", 0) == distinct
    rule = load_engine("pytorch").jit_conv_kernels
    refs = {"torch-resnet-a": "models/torch-resnet-a.yaml", "torch-resnet-b": "models/torch-resnet-b.yaml",
            "bireal-block": "export-models/bireal-block.yaml", "torch-grouped-g2s2": "probes/torch-grouped-g2s2.yaml",
            "check-mobile-bnn": "probes/check-mobile-bnn.yaml"}
    graph = graph_of(str(ROOT / "benchmarks" / "frameworks" / refs[model]) if model in refs else model)
    batch = int(name.split("-b")[-1].split("-")[0])
    with_copies = conv_kernel_counts(graph, rule, batch)[1]
    without = conv_kernel_counts(graph, rule.model_copy(update={"strided_input_grad_reorders": 0}), batch)[1]
    assert with_copies - without == distinct


def test_the_proposed_strategy_is_recorded_beside_the_standard_one():
    standard = {(r["model"], r["batch"]) for r in RECORDINGS if r["strategy"] == "standard"}
    proposed = {(r["model"], r["batch"]) for r in RECORDINGS if r["strategy"] == "proposed"}
    assert proposed <= standard  # same models and batches as the standard recordings
    for model in ("digits-mlp", "mlp", "digits-cnn"):
        assert len({b for m, b in proposed if m == model}) >= 3, model


def test_proposed_mechanisms_are_the_ones_autograd_shows():
    """What torch_proposed.py's Functions save: packed uint8 signs, float16 tensors, no float32 weight copy."""
    rec = next(r for r in RECORDINGS if r["model"] == "digits-cnn" and r["strategy"] == "proposed")
    saved = rec["attribution"]["saved"]
    assert not any(s["dtype"] == "float32" and s["layer"] != "loss" for s in saved)
    packed = {s["layer"] for s in saved if s["dtype"] == "uint8"}
    assert {"conv2d_2", "batchnorm_1", "sign_1"} <= packed and "conv2d_1" not in packed  # conv2d_1: the data
    assert any(s["dtype"] == "int64" and s["layer"].startswith("maxpool") for s in saved)  # nn.MaxPool2d kept
    engine = load_engine("pytorch")
    plan = memory_plan(graph_of("digits-cnn"), as_strategy("proposed"), retention=engine.retention,
                       workspace_budget=engine.workspace.budget, engine=engine)
    names = {v.name: v for v in plan.variables}
    assert "conv2d_2.weight_sign" not in names and "maxpool_1.indices" in names
    assert names["conv2d_2.input"].format == "bool" and names["sign_1.output"].format == "float16"


def test_proposed_dense_backward_packs_dw_after_freeing_its_operand():
    """The stage the engine puts the peak at is the one memray caught: dW's float32 operand, or dW's packing."""
    engine = load_engine("pytorch")
    operand = ("input_of", "unpack_signs")  # harness lines that make dW's float32 operand
    packing = "torch_proposed.py:56 pack_signs"  # the uint8 copy of dw >= 0, alive only while dW is packed
    for model, batch, event in (("mlp", 256, "backward:dense_1#5"), ("mlp", 100, "backward:dense_1#6"),
                                ("digits-mlp", 128, "backward:dense_2#6")):
        rec = next(r for r in RECORDINGS if (r["model"], r["batch"], r["strategy"]) == (model, batch, "proposed"))
        lines = [a["where"] for a in rec["attribution"]["at_peak"]]
        plan = memory_plan(graph_of(model), as_strategy("proposed"), retention=engine.retention,
                           workspace_budget=engine.workspace.budget, engine=engine)
        live = plan.live_bytes(batch)[:, 0]
        at = int(live.argmax())
        assert plan.events[at] == event, (model, batch)
        layer = event.split(":")[1].split("#")[0]
        alive = {v.name.removeprefix(f"{layer}.") for v in plan.variables if v.alloc <= at <= v.free}
        if event.endswith("#5"):  # the dW product: its float32 operand, no packing yet
            assert {"input_float32_backward", "weight_grad_float32"} <= alive and "grad_pack_bytes" not in alive
            assert any(w.endswith(operand) for w in lines) and packing not in lines
        else:  # the packing, the operand freed
            assert {"weight_grad_float32", "grad_pack_bytes"} <= alive and "input_float32_backward" not in alive
            assert packing in lines and not any(w.endswith(operand) for w in lines)


@pytest.mark.parametrize("rec", [pytest.param(r, id=r["file"]) for r in RECORDINGS])
def test_forward_peak_within_10_percent(rec):
    """The forward's own peak (process bytes, memray's phase_peaks): staged Functions, oneDNN's blocked weights,
    the proposed batchnorm's float32 copies."""
    engine = load_engine("pytorch")
    plan = memory_plan(graph_of(_model(rec)), as_strategy(rec["strategy"]), retention=engine.retention,
                       workspace_budget=engine.workspace.budget, engine=engine)
    live = plan.live_bytes(rec["batch"])[:, 0]
    predicted = max(b for e, b in zip(plan.events, live) if e.startswith("forward:"))
    measured = rec["steps"][0]["phase_peaks"]["forward"]
    assert abs(predicted - measured) <= 0.10 * measured, f"predicted {predicted:,.0f} measured {measured:,}"


def test_onednn_kernels_are_the_ones_memray_saw():
    """JIT kernels per model, counted by owner in memray's native stacks at a step's start (262,144 B each)."""
    rule = load_engine("pytorch").jit_conv_kernels
    assert conv_kernels(graph_of("digits-cnn"), rule, 32) == 16  # 5 conv + 11 reorders
    assert conv_kernels(graph_of("cnv"), rule, 16) == 50  # 17 + 33
    assert conv_kernels(graph_of("binarynet"), rule, 8) == 44  # 17 + 27: "same" convs share reorders
    resnet_a = str(ROOT / "benchmarks/frameworks/models/torch-resnet-a.yaml")
    # the 1x1 shortcut runs without oneDNN below B = 16: fwd, 2 weight-grad, dX, and its reorders go
    assert conv_kernels(graph_of(resnet_a), rule, 8) < conv_kernels(graph_of(resnet_a), rule, 16)


SGEMM_OWNERS = {"gemm_driver", "jit_avx2_kernel_sgemm_kern_t", "sgemm_smalln_tn", "avx512_core_gemm_smalln_tn_f32",
                "avx512_common_gemm_f32"}


@pytest.mark.parametrize("probe", ["base", "dw", "g2", "g2s2", "g4", "g4k3"])
def test_grouped_convs_sgemm_code_is_what_memray_saw(probe):
    """A grouped conv with 4 input channels per group computes dW with oneDNN's sgemm, whose JIT code (small-n
    kernels for n = 4, general ones for n = 16) the engine counts to the byte; 8 per group and depthwise do not."""
    owners = json.loads((MEASUREMENTS / "probes" / "torch-grouped" / f"owners-{probe}-b64.json").read_text())["owners"]
    measured = sum(v["bytes"] for k, v in owners.items() if k in SGEMM_OWNERS)
    graph = graph_of(str(ROOT / "benchmarks" / "frameworks" / "probes" / f"torch-grouped-{probe}.yaml"))
    assert sgemm_code_bytes(graph, load_engine("pytorch").jit_conv_kernels) == measured


@pytest.mark.parametrize("strategy", ["standard", "proposed"])
@pytest.mark.parametrize("probe", sorted({p.name.rsplit("-", 1)[0]
                                          for p in (MEASUREMENTS / "probes" / "torch-graph").glob("*.json")}))
def test_autograd_objects_are_what_memray_saw(probe, strategy):
    """Autograd's graph objects per layer kind (nodes, tensor headers, AccumulateGrad; not tensor storage): for every
    probe, the engine's autograd_graph variables add up to the objects memray saw live at the forward's end."""
    rec = json.loads((MEASUREMENTS / "probes" / "torch-graph" / f"{probe}-{strategy}.json").read_text())
    engine = load_engine("pytorch")
    graph = graph_of(str(ROOT / "benchmarks" / "frameworks" / "probes" / f"{probe}.yaml"))
    plan = memory_plan(graph, as_strategy(strategy), retention=engine.retention,
                       workspace_budget=engine.workspace.budget, engine=engine)
    modelled = sum(v.bytes_at(rec["batch"]) for v in plan.variables if v.name.endswith(".autograd_objects"))
    assert abs(modelled - rec["forward_end_objects_bytes"]) <= 4 * len(graph.nodes), (modelled, rec)


@pytest.mark.parametrize("path", sorted((MEASUREMENTS / "probes" / "torch-pointwise").glob("*.json")), ids=lambda p: p.stem)
def test_pointwise_convs_hold_no_blocked_copies_below_16_samples(path):
    """A 1x1 stride-1 conv is slow_conv2d below 16 samples (no oneDNN blocked copies; one sample's columns, and in
    the proposed strategy's conv2d_input a contiguous copy of the input placeholder), oneDNN from 16 on."""
    rec = json.loads(path.read_text())
    predicted = predict(str(ROOT / "benchmarks" / "frameworks" / "probes" / "torch-pointwise.yaml"),
                        strategy=rec["strategy"], batch=rec["batch"], engine="pytorch").memory
    assert abs(predicted.tensor_peak_bytes - rec["tensor_peak_bytes"]) <= 0.02 * rec["tensor_peak_bytes"]
    assert abs(predicted.process_peak_bytes - rec["process_peak_bytes"]) <= 0.02 * rec["process_peak_bytes"]


# The op each onednn_op_objects_* temporary stands for (torch_op_objects.py's ops), by its name and strategy rule.
OP_OBJECTS = {("full", "onednn_op_objects_forward", None): "forward",
              ("full", "onednn_op_objects_input_grad", True): "input_grad",
              ("full", "onednn_op_objects_weight_grad", None): "weight_grad",
              ("sign", "onednn_op_objects_forward", None): "forward",
              ("sign", "onednn_op_objects_input_grad", True): "input_grad",
              ("sign", "onednn_op_objects_weight_grad", None): "weight_grad"}


def test_onednn_op_objects_are_the_median_memray_saw():
    """Each conv op's oneDNN objects (primitive descriptor, descriptor clone, ideep wrappers, execution context): the
    engine's fixed bytes per op are the median of torch_op_objects.py's recorded configurations, and the
    configurations show the objects do not follow the tensors (one 3x3 conv at three sizes, the same bytes)."""
    recs = {p.stem: json.loads(p.read_text()) for p in (MEASUREMENTS / "probes" / "torch-op-objects").glob("*.json")}
    assert len(recs) >= 9
    sizes = [recs[n]["ops"] for n in ("conv-3x3-64", "conv-3x3-128x256", "conv-3x3-128-b128")]
    assert len({tuple(s[op]["objects_bytes"] for op in s) for s in sizes}) == 1
    assert len({s["forward"]["tensor_storage_bytes"] for s in sizes}) == 3
    rules = [t for t in load_engine("pytorch").temporaries if t.name.startswith("onednn_op_objects")]
    assert len(rules) == len(OP_OBJECTS)
    for t in rules:
        op = OP_OBJECTS[(t.strategy["weight_grad"], t.name, t.when.needs_input_grad)]
        median = statistics.median(r["ops"][op]["objects_bytes"] for r in recs.values())
        assert t.bytes == round(median), (t.name, op, t.bytes, median)
        assert t.when.onednn is True  # THNN's slow_conv2d builds no oneDNN descriptors


def test_autograd_graph_task_is_what_memray_saw():
    """Autograd's graph task (the GraphTask, its thread-local state and future, made by Engine::execute) is alive
    through every backward event of every layer, the same bytes in every probe whose peak is in the backward;
    its per-node tables are recorded apart and not modelled."""
    from bnncost.costmodel.engine import LAYER_KINDS

    recs = [json.loads(p.read_text()) for p in (MEASUREMENTS / "probes" / "torch-graph").glob("*.json")]
    fixed = {r["peak_graph_task_bytes"] - r["peak_graph_task_node_tables_bytes"] for r in recs
             if r["peak_phase"] == "backward"}
    assert len(recs) >= 20 and len(fixed) == 1
    rules = [t for t in load_engine("pytorch").temporaries if t.name.startswith("autograd_graph_task")]
    during = {t.during for t in rules}
    assert during == {"backward", "after_backward"} and {t.bytes for t in rules} == fixed
    assert set(next(t for t in rules if t.during == "backward").kinds) == set(LAYER_KINDS)


SMALL_GAPS: dict[str, str] = {}


def _epyc_cases() -> list:
    return [pytest.param(p, id=p.stem, marks=pytest.mark.xfail(strict=True, reason=SMALL_GAPS[p.stem]))
            if p.stem in SMALL_GAPS else pytest.param(p, id=p.stem)
            for d in ("torch-small", "torch-check") for p in sorted((MEASUREMENTS / "probes" / d).glob("*.json"))]


@pytest.mark.parametrize("path", _epyc_cases())
def test_epyc_records_tensor_peak_within_5_percent_or_4_kib(path):
    """The probes at B=16 (steps of 18 KB to 0.8 MB: 4- and 8-channel convs, whose oneDNN blocked copies are padded
    to 16 channels, per-op objects, a residual fork's second gradient) and two check models (a MobileNet-style BNN
    with depthwise convs, a VGG-style one with valid convs and dropout) at B = 8, 32, 128: the tensor peak within
    5%, or 4 KiB on the dense probes' 18-90 KB steps (autograd's per-node tables, 1-4 KB, are not modelled).
    Recorded on an AMD EPYC, not the recordings' Xeon, so their process peaks (JIT code and MKL buffers per CPU)
    are not compared."""
    rec = json.loads(path.read_text())
    predicted = predict(str(ROOT / rec["model_ref"]), strategy=rec["strategy"], batch=rec["batch"],
                        engine="pytorch").memory.tensor_peak_bytes
    bound = max(0.05 * rec["tensor_peak_bytes"], 4096)
    assert abs(predicted - rec["tensor_peak_bytes"]) <= bound, (predicted, rec["tensor_peak_bytes"])
