"""Memory model: hand-computed bytes for a tiny model, bool packing, peaks and their events."""

import pytest

from bnncost.costmodel import load_strategy, memory_plan, predict, tensor_bytes
from bnncost.layers import build_graph, load_model, parse_model

TINY = {
    "name": "tiny",
    "input": [10],
    "layers": [
        {"dense": {"units": 12}},
        {"batchnorm": {}},
        {"sign": {}},
        {"dense": {"units": 3}},
        {"batchnorm": {}},
        {"softmax_ce": {}},
    ],
}


def tiny():
    return build_graph(parse_model(TINY, "tiny"))


def variables(strategy, retention="step", batch=1):
    plan = memory_plan(tiny(), load_strategy(strategy), retention=retention)
    return {v.name: (v.role, v.format, v.bytes_at(batch), plan.events[v.alloc], plan.events[v.free])
            for v in plan.variables}


def test_bool_packing_rounds_up_along_the_last_axis():
    assert tensor_bytes("bool", (10, 12)) == 10 * 2
    assert tensor_bytes("bool", (12, 3)) == 12 * 1
    assert tensor_bytes("bool", (4, 4, 8)) == 16
    assert tensor_bytes("bool", (4, 4, 9)) == 32
    assert tensor_bytes("po2", (5, 3)) == 15
    assert tensor_bytes("float16", (5, 3)) == 30


def test_standard_bytes_of_every_role_by_hand():
    v = variables("standard", batch=1)
    expected = {
        "data": ("input", 40),
        "dense_1.weight": ("latent_weight", 480), "dense_1.adam_m": ("optimizer_state", 480),
        "dense_1.adam_v": ("optimizer_state", 480), "dense_1.weight_grad": ("weight_grad", 480),
        "batchnorm_1.params": ("bn_param", 96), "batchnorm_1.running_stats": ("bn_param", 96),
        "batchnorm_1.adam_m": ("optimizer_state", 96), "batchnorm_1.adam_v": ("optimizer_state", 96),
        "batchnorm_1.batch_stats": ("bn_param", 96), "batchnorm_1.norm_output": ("norm_output", 48),
        "batchnorm_1.param_grad": ("bn_param", 96),
        "sign_1.mask": ("activation_mask", 48),
        "dense_2.weight": ("latent_weight", 144), "dense_2.adam_m": ("optimizer_state", 144),
        "dense_2.adam_v": ("optimizer_state", 144), "dense_2.input": ("binary_input", 48),
        "dense_2.weight_grad": ("weight_grad", 144),
        "batchnorm_2.params": ("bn_param", 24), "batchnorm_2.running_stats": ("bn_param", 24),
        "batchnorm_2.adam_m": ("optimizer_state", 24), "batchnorm_2.adam_v": ("optimizer_state", 24),
        "batchnorm_2.batch_stats": ("bn_param", 24), "batchnorm_2.norm_output": ("norm_output", 12),
        "batchnorm_2.param_grad": ("bn_param", 24),
        "softmax_ce_1.probs": ("softmax_output", 12),
        "batchnorm_2.output_grad": ("activation_grad", 12), "dense_2.output_grad": ("activation_grad", 12),
        "sign_1.output_grad": ("activation_grad", 48), "batchnorm_1.output_grad": ("activation_grad", 48),
        "dense_1.output_grad": ("activation_grad", 48),
        # forward outputs, each alive until its consumer's forward
        "dense_1.output": ("activation", 48), "batchnorm_1.output": ("activation", 48),
        "sign_1.output": ("activation", 48), "dense_2.output": ("activation", 12),
        "batchnorm_2.output": ("activation", 12),
    }
    assert {k: (r, b) for k, (r, _, b, _, _) in v.items()} == expected
    assert all(f == "float32" for _, f, _, _, _ in v.values())


def test_proposed_bytes_of_every_role_by_hand():
    v = variables("proposed", batch=1)
    expected = {
        "data": 20, "dense_1.weight": 240, "dense_1.adam_m": 240, "dense_1.adam_v": 240,
        "dense_1.weight_grad": 10 * 2,  # 10 x 12 bits, packed along 12 -> 2 bytes a row
        "batchnorm_1.params": 24, "batchnorm_1.running_stats": 48, "batchnorm_1.adam_m": 24,
        "batchnorm_1.adam_v": 24, "batchnorm_1.batch_stats": 48, "batchnorm_1.norm_output": 2,
        "batchnorm_1.norm_scale": 24, "batchnorm_1.param_grad": 24, "sign_1.mask": 2,
        "dense_2.weight": 72, "dense_2.adam_m": 72, "dense_2.adam_v": 72, "dense_2.input": 2,
        "dense_2.weight_grad": 12,
        "batchnorm_2.params": 6, "batchnorm_2.running_stats": 12, "batchnorm_2.adam_m": 6,
        "batchnorm_2.adam_v": 6, "batchnorm_2.batch_stats": 12, "batchnorm_2.norm_output": 1,
        "batchnorm_2.norm_scale": 6, "batchnorm_2.param_grad": 6, "softmax_ce_1.probs": 6,
        "batchnorm_2.output_grad": 6, "dense_2.output_grad": 6, "sign_1.output_grad": 24,
        "batchnorm_1.output_grad": 24, "dense_1.output_grad": 24,
        "dense_1.output": 24, "batchnorm_1.output": 24, "dense_2.output": 6, "batchnorm_2.output": 6,
        "sign_1.output": 2,  # +1/-1: held in binary_input, 12 bits packed -> 2 bytes (METHOD 4.2)
    }
    assert {k: b for k, (_, _, b, _, _) in v.items()} == expected


def test_lifetimes_follow_the_retention():
    step = variables("standard", "step")
    back = variables("standard", "backward")
    assert step["sign_1.mask"][3:] == ("forward:sign_1", "step_end")
    assert back["sign_1.mask"][3:] == ("forward:sign_1", "backward:sign_1")
    assert back["data"][3:] == ("step_start", "backward:dense_1")
    assert step["dense_1.weight_grad"][3:] == ("backward:dense_1", "update")
    assert step["dense_1.weight"][3:] == ("step_start", "step_end")
    # the gradient a layer reads is written by the backward of the layer after it
    assert step["sign_1.output_grad"][3:] == ("backward:dense_2", "backward:sign_1")
    assert step["sign_1.output"][3:] == ("forward:sign_1", "forward:dense_2")


@pytest.mark.parametrize(
    "strategy, retention, peak, event",
    [
        # persistent 2352 + saved 120 + 208 B; at backward:batchnorm_1 the dW of bn1, dense_2, bn2
        # (264) and two 48 B gradients are alive: 2736 + 304 x 100
        ("standard", "step", 2736 + 304 * 100, "backward:batchnorm_1"),
        # backward retention: at backward:dense_2 the saved tensors of the layers after it are gone
        ("standard", "backward", 2616 + 244 * 100, "backward:dense_2"),
        # persistent 1086 + saved 90 + 33 B, dW 42, gradients 48 B
        ("proposed", "step", 1218 + 81 * 100, "backward:batchnorm_1"),
    ],
)
def test_peak_by_hand(strategy, retention, peak, event):
    p = predict(tiny(), strategy, 100, retention=retention)
    assert p.memory.peak_bytes == peak
    assert p.memory.peak_event == event
    assert p.memory.fixed_bytes + p.memory.per_sample_bytes * 100 == peak


def test_peak_event_moves_with_the_batch():
    # at B = 1 the 744 B of weight gradients at backward:dense_1 dominate: 3216 + 256 B
    p = predict(tiny(), "standard", 1)
    assert (p.memory.peak_bytes, p.memory.peak_event) == (3216 + 256, "backward:dense_1")
    assert (p.memory.fixed_bytes, p.memory.per_sample_bytes) == (3216, 256)


def test_by_role_sums_to_the_peak():
    p = predict("cnv", "proposed", 32)
    assert sum(p.memory.by_role.values()) == p.memory.peak_bytes
    assert sum(p.memory.by_layer.values()) == p.memory.peak_bytes


def test_workspace_budget_chunks_rows():
    g = tiny()
    budget = 100
    plan = memory_plan(g, load_strategy("proposed"), workspace_budget=budget)
    ws = {v.name: v for v in plan.variables if v.role == "workspace"}
    # dense_2 forward XNOR block: one row = 3 filters x 12 bits = 3 x 2 bytes = 6 B; 16 rows fit 100 B
    xnor = ws["dense_2.xnor"]
    assert xnor.bytes_at(1) == 6 and xnor.bytes_at(10) == 60 and xnor.bytes_at(100) == 96
    # a row larger than the budget still holds one row
    big = memory_plan(g, load_strategy("proposed"), workspace_budget=1)
    assert {v.name: v for v in big.variables}["dense_2.xnor"].bytes_at(50) == 6
    # budget 0: no scratch at all
    assert not [v for v in memory_plan(g, load_strategy("proposed")).variables if v.role == "workspace"]


def test_residual_identity_chain_shares_one_gradient_buffer():
    doc = {
        "input": [4, 4, 8],
        "layers": [
            {"conv2d": {"filters": 8, "kernel": 3, "padding": "same", "binary": False}},
            {"batchnorm": {}},
            {"residual": {"body": [{"sign": {}}, {"conv2d": {"filters": 8, "kernel": 3, "padding": "same"}},
                                   {"batchnorm": {}}]}},
            {"residual": {"body": [{"sign": {}}, {"conv2d": {"filters": 8, "kernel": 3, "padding": "same"}},
                                   {"batchnorm": {}}]}},
            {"global_avgpool": {}},
            {"dense": {"units": 2, "binary": False}},
            {"softmax_ce": {}},
        ],
    }
    g = build_graph(parse_model(doc, "res"))
    plan = memory_plan(g, load_strategy("standard"))
    names = [v.name for v in plan.variables if v.role == "activation_grad"]
    # one stream buffer from the stem's batchnorm output through both identity blocks
    assert "batchnorm_1.output_grad" in names
    assert "residual_1.output_grad" not in names and "residual_2.output_grad" not in names
    stream = next(v for v in plan.variables if v.name == "batchnorm_1.output_grad")
    assert plan.events[stream.alloc] == "backward:global_avgpool_1"
    assert plan.events[stream.free] == "backward:batchnorm_1"


def test_binary_outputs_are_held_in_the_binary_input_format():
    """A sign's output, and a max-pool's of it, are +1/-1: binary_input (bits under proposed), METHOD 4.2."""
    cnv = build_graph(load_model("cnv"))
    for strategy, binary, real in (("proposed", "bool", "float16"), ("standard", "float32", "float32")):
        v = {x.name: x for x in memory_plan(cnv, load_strategy(strategy)).variables}
        assert v["sign_1.output"].format == binary and v["maxpool_1.output"].format == binary
        assert v["batchnorm_1.output"].format == real and v["conv2d_1.output"].format == real
    v = {x.name: x for x in memory_plan(cnv, load_strategy("proposed")).variables}
    assert v["sign_1.output"].bytes_at(2) == 2 * 30 * 30 * 64 // 8
    assert v["maxpool_1.output"].bytes_at(2) == 2 * 14 * 14 * 64 // 8


def test_proposed_po2_does_not_peak_at_a_sign_output():
    """With float16 sign outputs, proposed-po2 peaked in forward:sign_1 (cnv); a bit each, it no longer does."""
    cnv = build_graph(load_model("cnv"))
    for batch in (32, 256):
        plan = memory_plan(cnv, load_strategy("proposed-po2"))
        _, e, _, _ = plan.peak(batch)
        assert not plan.events[e].startswith("forward:sign"), plan.events[e]
