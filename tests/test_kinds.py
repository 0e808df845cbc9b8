"""Layer kinds real BNNs need (issue 11 item 3): shapes, ops by hand, and `verify` to the byte and op."""

from pathlib import Path

import pytest

from bnncost import cli
from bnncost.costmodel import load_strategy
from bnncost.costmodel.strategy import Strategy
from bnncost.costmodel.ops import count_ops
from bnncost.layers import build_graph, parse_model
from bnncost.layers.model import ModelError

NONSQUARE = str(Path(__file__).parent / "data" / "small-nonsquare.yaml")


def graph(layers, input_shape):
    return build_graph(parse_model({"input": list(input_shape), "layers": layers}, "t"))


def ops_at(g, strategy, batch):
    return {(o.layer, o.phase, o.kind, o.format): o.at(batch) for o in count_ops(g, load_strategy(strategy))}


TAIL = [{"flatten": {}}, {"dense": {"units": 2}}, {"softmax_ce": {}}]


def test_non_square_conv_shapes_weights_and_padding():
    g = graph([{"conv2d": {"filters": 3, "kernel": [10, 4], "stride": [2, 1], "padding": "same"}}, *TAIL], (20, 7, 2))
    conv = g.nodes[0]
    # same: ceil(20/2) x ceil(7/1); pad rows (10-1)*2+10-20 = 8 -> 4/4, cols 4-1 = 3 -> 1/2
    assert conv.out_shape == (10, 7, 3)
    assert conv.weight_shape == (10, 4, 2, 3) and conv.fan_in == 80
    assert conv.padding == (4, 4, 1, 2)
    assert conv.window == (10, 4) and conv.strides == (2, 1)
    g = graph([{"conv2d": {"filters": 3, "kernel": [3, 1], "stride": [1, 2]}}, *TAIL], (5, 6, 1))
    assert g.nodes[0].out_shape == (3, 3, 3) and g.nodes[0].fan_in == 3


def test_non_square_pool_shapes_and_default_stride():
    g = graph([{"maxpool": {"size": [3, 1]}}, {"avgpool": {"size": [1, 2], "stride": [1, 1], "padding": "same"}},
               *TAIL], (9, 4, 2))
    assert g.nodes[0].out_shape == (3, 4, 2) and g.nodes[0].strides == (3, 1)  # stride defaults to size
    assert g.nodes[1].out_shape == (3, 4, 2) and g.nodes[1].padding == (0, 0, 0, 1)


@pytest.mark.parametrize("bad", [[3], [0, 2], [3, 2, 1], True, "3"])
def test_a_malformed_window_is_refused_by_name(bad):
    with pytest.raises(ModelError, match="kernel.*positive integer or \\[rows, cols\\]"):
        graph([{"conv2d": {"filters": 2, "kernel": bad}}, *TAIL], (8, 8, 1))


def test_a_window_larger_than_the_map_on_one_axis_is_refused():
    with pytest.raises(ModelError, match="9x1 valid pool on a 8x8 map"):
        graph([{"maxpool": {"size": [9, 1]}}, *TAIL], (8, 8, 1))


def test_non_square_ops_by_hand():
    b = 2
    g = graph([{"conv2d": {"filters": 4, "kernel": [3, 2], "stride": [1, 2], "binary": False}},
               {"batchnorm": {}}, {"sign": {}},
               {"conv2d": {"filters": 3, "kernel": [2, 1]}},
               {"maxpool": {"size": [2, 1]}}, {"avgpool": {"size": [1, 2]}}, *TAIL], (5, 6, 1))
    layer = ops_at(g, "standard", b)
    # conv2d_1: 5x6x1 -> 3x3x4, K = 3*2*1 = 6, first layer (no dX)
    assert layer[("conv2d_1", "forward", "mac", "float32")] == b * 9 * 4 * 6
    assert layer[("conv2d_1", "backward_dw", "mac", "float32")] == b * 9 * 4 * 6
    # conv2d_2: 3x3x4 -> 2x3x3, K = 2*1*4 = 8
    assert layer[("conv2d_2", "forward", "bit_mac", "bool")] == b * 6 * 3 * 8
    assert layer[("conv2d_2", "backward_dx", "add", "float32")] == b * 6 * 3 * 8 + b * 6 * 8  # M x K + R x K
    # maxpool 2x1: 2x3x3 -> 1x3x3, O = 9: compares O x (2*1 - 1), scatter adds O x 2
    assert layer[("maxpool_1", "forward", "compare", "float32")] == b * 9 * 1
    assert layer[("maxpool_1", "backward_dx", "add", "float32")] == b * 9 * 2
    # avgpool 1x2: 1x3x3 -> 1x1x3, O = 3: adds O x 2, one multiply per output
    assert layer[("avgpool_1", "forward", "add", "float32")] == b * 3 * 2
    assert layer[("avgpool_1", "forward", "mul", "float32")] == b * 3


@pytest.mark.parametrize("retention", ["step", "backward"])
@pytest.mark.parametrize("strategy", ["standard", "proposed"])
def test_non_square_model_verifies_to_the_byte_and_op(strategy, retention):
    v = cli.run_verification(NONSQUARE, strategy, 4, steps=1, retention=retention)
    assert not [c.name for c in v.variables if not c.ok]
    assert v.peak.ledger_ok and not v.op_mismatches
    assert v.ok


# ---------------------------------------------------------------- grouped and depthwise conv2d

GROUPED = str(Path(__file__).parent / "data" / "small-grouped.yaml")


def test_grouped_conv_shapes_weights_and_parameters():
    g = graph([{"conv2d": {"filters": 12, "kernel": 3, "groups": 3, "padding": "same"}},
               {"conv2d": {"filters": 12, "kernel": [3, 1], "groups": 12, "binary": False}}, *TAIL], (5, 5, 6))
    grouped, depthwise = g.nodes[0], g.nodes[1]
    # 3 groups of 2 input channels and 4 filters: each output reads 3*3*2 inputs
    assert grouped.weight_shape == (3, 3, 2, 12) and grouped.fan_in == 18 and grouped.groups == 3
    assert grouped.group_channels == 2 and grouped.group_units == 4 and grouped.out_shape == (5, 5, 12)
    # depthwise: one channel a group
    assert depthwise.weight_shape == (3, 1, 1, 12) and depthwise.fan_in == 3 and depthwise.out_shape == (3, 5, 12)
    # kernels 3*3*2*12 + 3*1*1*12, plus the dense 3*5*12 -> 2
    assert g.parameter_count() == 216 + 36 + 180 * 2
    ungrouped = graph([{"conv2d": {"filters": 12, "kernel": 3, "padding": "same"}}, *TAIL], (5, 5, 6))
    assert ungrouped.nodes[0].weight_shape == (3, 3, 6, 12) and ungrouped.nodes[0].groups == 1


@pytest.mark.parametrize("fields, problem", [
    ({"filters": 8, "groups": 4}, "groups: 4 does not divide the 6 input channels"),
    ({"filters": 9, "groups": 2}, "groups: 2 does not divide the 9 filters"),
    ({"filters": 6, "groups": 0}, "groups: input should be greater than 0"),
    ({"filters": 6, "groups": "2"}, "groups: input should be a valid integer"),
    ({"filters": 6, "groups": True}, "groups: input should be a valid integer"),
    ({"filters": 6, "groups": 1.5}, "groups: input should be a valid integer"),
])
def test_groups_that_do_not_divide_are_refused_naming_the_layer_and_field(fields, problem):
    with pytest.raises(ModelError) as err:
        graph([{"conv2d": {"kernel": 3, **fields}}, *TAIL], (5, 5, 6))
    msg = str(err.value)
    assert msg.startswith("t: layer 0 (conv2d_1): ") and problem in msg and "\n" not in msg


def test_groups_is_a_field_of_conv2d_only():
    with pytest.raises(ModelError, match="groups: unknown field"):
        graph([{"flatten": {}}, {"dense": {"units": 4, "groups": 2}}, {"softmax_ce": {}}], (8,))


def test_grouped_ops_by_hand():
    b = 3
    g = graph([{"conv2d": {"filters": 4, "kernel": 3, "binary": False}}, {"sign": {}},
               {"conv2d": {"filters": 8, "kernel": 3, "groups": 2, "padding": "same"}},  # 2 groups of 2 channels
               {"sign": {}},
               {"conv2d": {"filters": 8, "kernel": [2, 1], "groups": 8, "binary": False}},  # depthwise
               *TAIL], (6, 6, 1))
    ops = ops_at(g, "standard", b)
    # conv2d_2: 4x4x4 -> 4x4x8, K = 3*3*4/2 = 18 inputs per output: one 64-bit word a patch
    assert ops[("conv2d_2", "forward", "bit_mac", "bool")] == b * 16 * 8 * 18
    assert ops[("conv2d_2", "forward", "xnor_popcount", "bool")] == b * 16 * 8 * 1
    # dX: M x K adds, and the fold of every group's column gradient: R x K x groups = R x 3*3*4
    assert ops[("conv2d_2", "backward_dx", "add", "float32")] == b * 16 * 8 * 18 + b * 16 * 36
    assert ops[("conv2d_2", "backward_dw", "add", "float32")] == b * 16 * 8 * 18
    assert ops[("conv2d_2", "update", "sqrt", "float32")] == 3 * 3 * 2 * 8  # one per weight
    # conv2d_3, depthwise 2x1 on 4x4x8 -> 3x4x8: K = 2, multiply-accumulates R x N x 2
    assert ops[("conv2d_3", "forward", "mac", "float32")] == b * 12 * 8 * 2
    assert ops[("conv2d_3", "backward_dx", "mac", "float32")] == b * 12 * 8 * 2
    assert ops[("conv2d_3", "backward_dx", "add", "float32")] == b * 12 * 2 * 8
    assert ops[("conv2d_3", "update", "sqrt", "float32")] == 2 * 8


def test_grouped_scratch_is_one_group_and_packed_weight_every_filter():
    from bnncost.layers.scratch import scratch_needs

    g = graph([{"conv2d": {"filters": 4, "kernel": 3, "binary": False}}, {"sign": {}},
               {"conv2d": {"filters": 8, "kernel": 3, "groups": 2, "padding": "same"}}, *TAIL], (6, 6, 1))
    need = {w.name.split(".")[1]: w for w in scratch_needs(g) if w.layer == "conv2d_2"}
    assert need["xnor"].row_shape == (4, 3, 3, 2) and need["xnor"].rows_per_sample == 16
    assert need["packed_weight"].row_shape == (8, 3, 3, 2)
    assert need["dw_operand"].row_shape == (18,) and need["col_grad"].row_shape == (18,)
    assert need["weight_signs"].row_shape == (4,) and need["weight_signs"].fixed_rows == 18


@pytest.mark.parametrize("retention", ["step", "backward"])
@pytest.mark.parametrize("strategy", ["standard", "proposed", "proposed-po2", "bop", "ladder-1-binary-activations",
                                      "ladder-2-l1-batchnorm", "ladder-3-binary-dw"])
def test_grouped_model_verifies_to_the_byte_and_op(strategy, retention):
    v = cli.run_verification(GROUPED, strategy, 4, steps=1, retention=retention)
    assert not [c.name for c in v.variables if not c.ok]
    assert v.peak.ledger_ok and not v.op_mismatches
    assert v.ok


# ---------------------------------------------------------------- prelu

PRELU = str(Path(__file__).parent / "data" / "small-prelu.yaml")
SHIPPED = ["standard", "proposed", "proposed-po2", "bop", "ladder-1-binary-activations", "ladder-2-l1-batchnorm",
           "ladder-3-binary-dw"]


def stored(g, strategy="proposed", retention="step"):
    from bnncost.layers.storage import stored_variables
    s = load_strategy(strategy)
    return {v.name: v for v in stored_variables(g, batchnorm=s.batchnorm, optimizer=s.optimizer, retention=retention)}


def test_prelu_slopes_are_per_channel_parameters_and_its_input_is_saved_real():
    g = graph([{"conv2d": {"filters": 5, "kernel": 3}}, {"prelu": {}}, *TAIL], (6, 6, 2))
    node = g.nodes[1]
    assert node.out_shape == (4, 4, 5) and node.parameters() == 5
    assert g.parameter_count("l1") == 3 * 3 * 2 * 5 + 5 + 16 * 5 * 2
    v = stored(g, retention="backward")
    assert (v["prelu_1.params"].role, v["prelu_1.params"].shape) == ("bn_param", (5,))
    assert (v["prelu_1.param_grad"].role, v["prelu_1.param_grad"].alloc, v["prelu_1.param_grad"].free) == \
        ("bn_param", "backward:prelu_1", "update")
    assert {"prelu_1.adam_m", "prelu_1.adam_v"} <= set(v)
    saved = v["prelu_1.input"]
    assert (saved.role, saved.shape, saved.batched) == ("real_input", (4, 4, 5), True)
    assert (saved.alloc, saved.free) == ("forward:prelu_1", "backward:prelu_1")
    # after a sign its input is +1/-1, but the slope's gradient needs x: still saved as a real value
    g = graph([{"sign": {}}, {"prelu": {}}, *TAIL], (3, 3, 2))
    assert stored(g)["prelu_1.input"].format_in(load_strategy("proposed").format_of) == "float16"
    # Bop trains binary kernels only; a slope keeps Adam
    assert {"prelu_1.adam_m", "prelu_1.adam_v"} <= set(stored(g, "bop"))


def test_prelu_ops_by_hand():
    b = 3
    g = graph([{"dense": {"units": 6, "binary": False}}, {"prelu": {}}, {"dense": {"units": 2}}, {"softmax_ce": {}}],
              (4,))
    e = b * 6
    for strategy, acc in (("standard", "float32"), ("proposed", "float16")):
        layer = ops_at(g, strategy, b)
        mine = {k[1:]: v for k, v in layer.items() if k[0] == "prelu_1"}
        opt = load_strategy(strategy).format_of("optimizer_state")
        assert mine == {
            ("forward", "compare", acc): e, ("forward", "mul", acc): e,  # a x where x <= 0
            ("backward_dw", "compare", acc): e, ("backward_dw", "mul", acc): e, ("backward_dw", "add", acc): e,
            ("backward_dx", "mul", acc): e,
            ("update", "mul", opt): 6 * 6, ("update", "add", opt): 4 * 6,  # Adam on the 6 slopes
            ("update", "sqrt", opt): 6, ("update", "div", opt): 6,
        }, strategy
    # po2 gradients: the products with dy are shifts; no dX on the data batch
    g = graph([{"prelu": {}}, {"dense": {"units": 2, "binary": False}}, {"softmax_ce": {}}], (4,))
    layer = ops_at(g, "proposed-po2", b)
    assert layer[("prelu_1", "backward_dw", "shift", "po2")] == b * 4
    assert not [k for k in layer if k[0] == "prelu_1" and k[1] == "backward_dx"]


def test_prelu_on_the_data_batch_verifies():
    model = parse_model({"name": "prelu-first", "input": [5, 5, 2],
                         "layers": [{"prelu": {}}, {"conv2d": {"filters": 3, "kernel": 3}}, {"batchnorm": {}},
                                    *TAIL]}, "t")
    for strategy in ("standard", "proposed"):
        v = cli.run_verification(model, strategy, 3, steps=1, retention="backward")
        assert v.ok, strategy


def test_prelu_takes_only_shared():
    with pytest.raises(ModelError, match=r"layer 0 \(prelu_1\): slope: unknown field \(fields of prelu: shared\)"):
        graph([{"prelu": {"slope": 0.1}}, *TAIL], (4, 4, 1))


def test_a_shared_prelu_has_one_slope_for_every_channel():
    g = graph([{"conv2d": {"filters": 5, "kernel": 3}}, {"prelu": {"shared": True}}, *TAIL], (6, 6, 2))
    assert g.nodes[1].parameters() == 1
    v = stored(g)
    assert v["prelu_1.params"].shape == v["prelu_1.param_grad"].shape == v["prelu_1.adam_m"].shape == (1,)
    upd = {k[2]: n for k, n in ops_at(g, "standard", 3).items() if k[:2] == ("prelu_1", "update")}
    assert upd == {"mul": 6, "add": 4, "sqrt": 1, "div": 1}  # Adam on one value
    assert ops_at(g, "standard", 3)[("prelu_1", "backward_dw", "add", "float32")] == 3 * 4 * 4 * 5
    model = parse_model({"name": "shared", "input": [6, 6, 2], "layers": [
        {"conv2d": {"filters": 5, "kernel": 3, "binary": False}}, {"prelu": {"shared": True}},
        {"sign": {}}, {"conv2d": {"filters": 3, "kernel": 3}}, {"batchnorm": {}}, {"prelu": {"shared": True}},
        *TAIL]}, "t")
    for strategy in ("standard", "proposed"):
        assert cli.run_verification(model, strategy, 3, steps=1, retention="step").ok, strategy


# ---------------------------------------------------------------- a bias on full-precision layers

BIASED = str(Path(__file__).parent / "data" / "small-bias.yaml")


def test_bias_is_a_parameter_in_the_roles_of_the_kernel():
    g = graph([{"conv2d": {"filters": 4, "kernel": 3, "binary": False, "bias": True}}, {"relu": {}},
               {"flatten": {}}, {"dense": {"units": 3, "binary": False, "bias": True}}, {"softmax_ce": {}}],
              (5, 5, 2))
    assert [n.bias for n in g.nodes if n.kind in ("conv2d", "dense")] == [True, True]
    assert g.parameter_count() == (3 * 3 * 2 * 4 + 4) + (3 * 3 * 4 * 3 + 3)
    for strategy, states in (("proposed", ("bias_adam_m", "bias_adam_v")), ("bop", ("bias_adam_m", "bias_adam_v"))):
        v = stored(g, strategy, retention="backward")
        for layer, n in (("conv2d_1", 4), ("dense_1", 3)):
            assert (v[f"{layer}.bias"].role, v[f"{layer}.bias"].shape, v[f"{layer}.bias"].batched) == \
                ("latent_weight", (n,), False)
            grad = v[f"{layer}.bias_grad"]
            assert (grad.role, grad.shape, grad.alloc, grad.free) == ("weight_grad", (n,), f"backward:{layer}", "update")
            for state in states:
                assert v[f"{layer}.{state}"].role == "optimizer_state" and v[f"{layer}.{state}"].shape == (n,)
            assert not [name for name in v if name.startswith(f"{layer}.bias") and v[name].alloc.startswith("forward")]
    sgd = Strategy(**{**load_strategy("standard").model_dump(), "optimizer": "sgd"})
    from bnncost.layers.storage import stored_variables
    names = {s.name for s in stored_variables(g, batchnorm="l2", optimizer=sgd.optimizer, retention="step")}
    assert {"conv2d_1.bias_momentum", "dense_1.bias_momentum"} <= names
    from bnncost.layers.relative import parameter_tensors
    assert ("dense_1", "bias", (3,), "adam") in parameter_tensors(g, "l1", "bop")


def test_a_bias_on_a_binary_layer_is_refused_in_one_line():
    for layer in ({"dense": {"units": 3, "bias": True}}, {"conv2d": {"filters": 3, "kernel": 1, "bias": True}}):
        with pytest.raises(ModelError) as err:
            graph([layer, {"flatten": {}}, {"dense": {"units": 2, "binary": False}}, {"softmax_ce": {}}],
                  (4, 4, 2) if "conv2d" in layer else (8,))
        msg = str(err.value)
        assert msg.startswith("t: layer 0 (") and "bias: a binary layer has no bias; batchnorm follows it" in msg
        assert "\n" not in msg
    with pytest.raises(ModelError, match=r"layer 0 \(dense_1\): bias: input should be a valid boolean"):
        graph([{"dense": {"units": 3, "binary": False, "bias": "yes"}}, {"softmax_ce": {}}], (8,))
    # bias: false on a binary layer is what it has anyway
    assert not graph([{"dense": {"units": 3, "bias": False}}, {"softmax_ce": {}}], (8,)).nodes[0].bias


def test_bias_ops_by_hand():
    b = 5
    g = graph([{"conv2d": {"filters": 4, "kernel": 3, "binary": False, "bias": True}}, {"relu": {}},
               {"flatten": {}}, {"dense": {"units": 3, "binary": False, "bias": True}}, {"softmax_ce": {}}],
              (5, 5, 2))
    for strategy, fwd, acc, opt, sign in (("standard", "float32", "float32", "float32", False),
                                          ("proposed", "float16", "float16", "float16", True)):
        ops = ops_at(g, strategy, b)
        plain = ops_at(graph([{"conv2d": {"filters": 4, "kernel": 3, "binary": False}}, {"relu": {}},
                              {"flatten": {}}, {"dense": {"units": 3, "binary": False}}, {"softmax_ce": {}}],
                             (5, 5, 2)), strategy, b)
        extra = {k: v - plain.get(k, 0) for k, v in ops.items() if v != plain.get(k, 0)}
        # conv2d_1: 3x3x4 outputs, R = 9 b rows; dense_1: 3 outputs
        want = {
            ("conv2d_1", "forward", "add", fwd): b * 9 * 4,  # the bias onto every output
            ("conv2d_1", "backward_dw", "add", acc): b * 9 * 4,  # db = dY summed over the rows
            ("dense_1", "forward", "add", fwd): b * 3,
            ("dense_1", "backward_dw", "add", acc): b * 3,
            ("conv2d_1", "update", "add", opt): 4 * 4,  # Adam: per bias value as per weight
            ("conv2d_1", "update", "sqrt", opt): 4,
            ("conv2d_1", "update", "div", opt): 4,
            ("conv2d_1", "update", "mul", opt): (3 if sign else 6) * 4,
            ("dense_1", "update", "add", opt): 4 * 3,
            ("dense_1", "update", "sqrt", opt): 3,
            ("dense_1", "update", "div", opt): 3,
            ("dense_1", "update", "mul", opt): (3 if sign else 6) * 3,
        }
        if sign:  # the bias gradient kept as its sign, as dW
            want[("conv2d_1", "backward_dw", "compare", acc)] = 4
            want[("dense_1", "backward_dw", "compare", acc)] = 3
        assert extra == want, strategy


@pytest.mark.parametrize("retention", ["step", "backward"])
@pytest.mark.parametrize("strategy", SHIPPED)
def test_biased_model_verifies_to_the_byte_and_op(strategy, retention):
    v = cli.run_verification(BIASED, strategy, 4, steps=1, retention=retention)
    assert not [c.name for c in v.variables if not c.ok]
    assert {c.name for c in v.variables} >= {"conv2d_1.bias", "conv2d_2.bias_grad", "dense_2.bias"}
    assert v.peak.ledger_ok and not v.op_mismatches
    assert v.ok


def test_time_units_count_the_bias_pass_and_update():
    from bnncost.costmodel.timing import operator_work

    def units(bias):
        g = graph([{"flatten": {}}, {"dense": {"units": 3, "binary": False, "bias": bias}}, {"softmax_ce": {}}], (8,))
        return {(w.event, w.layer): w.units for w in operator_work(g, load_strategy("standard"))}

    plain, biased = units(False), units(True)
    for event in ("forward", "backward"):  # y += b; db = dY summed: one more pass over the 3 outputs
        assert biased[(event, "dense_1")]["output_values"] == (0, 2 * plain[(event, "dense_1")]["output_values"][1])
    assert biased[("update", "dense_1")]["values"] == (8 * 3 + 3, 0)


# ---------------------------------------------------------------- dropout

DROPOUT = str(Path(__file__).parent / "data" / "small-dropout.yaml")


def test_dropout_saves_its_mask_in_its_own_role_from_forward_to_backward():
    g = graph([{"conv2d": {"filters": 4, "kernel": 3}}, {"dropout": {"rate": 0.25}}, *TAIL], (5, 5, 2))
    node = g.nodes[1]
    assert node.out_shape == node.in_shape == (3, 3, 4) and node.parameters() == 0
    assert not g.tensors[node.output].binary
    for retention, free in (("step", "step_end"), ("backward", "backward:dropout_1")):
        mask = stored(g, retention=retention)["dropout_1.mask"]
        assert (mask.role, mask.shape, mask.batched, mask.alloc, mask.free) == \
            ("dropout_mask", (3, 3, 4), True, "forward:dropout_1", free)
    fmt = {s: load_strategy(s).format_of("dropout_mask") for s in SHIPPED}
    assert fmt == {"standard": "float32", "bop": "float32", "proposed": "bool", "proposed-po2": "bool",
                   "ladder-1-binary-activations": "bool", "ladder-2-l1-batchnorm": "bool",
                   "ladder-3-binary-dw": "bool"}
    # on the data batch no backward reads the mask: it lives in the dropout's forward only
    g = graph([{"dropout": {"rate": 0.2}}, {"conv2d": {"filters": 4, "kernel": 3}}, *TAIL], (5, 5, 2))
    assert stored(g)["dropout_1.mask"].free == "forward:dropout_1"


def test_a_strategy_without_a_dropout_mask_format_holds_it_like_the_other_masks(tmp_path):
    std = load_strategy("standard")
    rows = {k: v for k, v in std.formats.items() if k != "dropout_mask"}
    rows["activation_mask"] = "uint8"
    path = tmp_path / "old.yaml"
    path.write_text("name: old\nbatchnorm: l2\nweight_grad: full\noptimizer: adam\nformats:\n"
                    + "".join(f"  {k}: {v}\n" for k, v in rows.items()))
    assert load_strategy(str(path)).format_of("dropout_mask") == "uint8"


def test_dropout_ops_by_hand():
    b = 5
    g = graph([{"dense": {"units": 6, "binary": False}}, {"dropout": {"rate": 0.5}}, {"dense": {"units": 2}},
               {"softmax_ce": {}}], (4,))
    e = b * 6
    for strategy, acc in (("standard", "float32"), ("proposed", "float16")):
        mine = {k[1:]: v for k, v in ops_at(g, strategy, b).items() if k[0] == "dropout_1"}
        # forward: the draw compared with the rate, the kept value scaled; backward: gate and scale
        assert mine == {("forward", "compare", acc): e, ("forward", "mul", acc): e,
                        ("backward_dx", "mul", acc): 2 * e}, strategy
    mine = {k[1:]: v for k, v in ops_at(g, "proposed-po2", b).items() if k[0] == "dropout_1"}
    assert mine[("backward_dx", "shift", "po2")] == 2 * e
    g = graph([{"dropout": {"rate": 0.5}}, {"dense": {"units": 2}}, {"softmax_ce": {}}], (4,))
    assert not [k for k in ops_at(g, "standard", b) if k[0] == "dropout_1" and k[1] == "backward_dx"]


@pytest.mark.parametrize("bad, says", [
    (1, "0 <= rate < 1"), (1.5, "0 <= rate < 1"), (-0.1, "0 <= rate < 1"), ("0.2", "got '0.2'"),
    (True, "got true"), (float("nan"), "0 <= rate < 1"), (None, "0 <= rate < 1")])
def test_a_bad_dropout_rate_is_refused_by_file_layer_and_field(bad, says):
    with pytest.raises(ModelError) as exc:
        graph([{"dense": {"units": 3}}, {"dropout": {"rate": bad}}, *TAIL[1:]], (4,))
    msg = str(exc.value)
    assert msg.startswith("t: layer 1 (dropout_1): rate: ") and says in msg and "\n" not in msg


def test_a_dropout_without_a_rate_is_refused():
    with pytest.raises(ModelError, match=r"t: layer 0 \(dropout_1\): rate: field required"):
        graph([{"dropout": {}}, *TAIL[1:]], (4,))


def test_bad_dropout_rate_on_the_command_line_is_one_line_exit_2(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("input: [4]\nlayers:\n  - dense: {units: 3}\n  - dropout: {rate: 1.0}\n"
                    "  - dense: {units: 2}\n  - softmax_ce: {}\n")
    with pytest.raises(SystemExit) as exc:
        cli.main(["predict", str(path)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"{path}: layer 1 (dropout_1): rate: " in err


@pytest.mark.parametrize("retention", ["step", "backward"])
@pytest.mark.parametrize("strategy", SHIPPED)
@pytest.mark.parametrize("model, steps", [(PRELU, 1), (DROPOUT, 2)], ids=["prelu", "dropout"])
def test_prelu_and_dropout_models_verify_to_the_byte_and_op(model, steps, strategy, retention):
    v = cli.run_verification(model, strategy, 4, steps=steps, retention=retention)  # dropout: two steps' masks
    assert not [c.name for c in v.variables if not c.ok]
    assert v.peak.ledger_ok and not v.op_mismatches
    assert v.ok
