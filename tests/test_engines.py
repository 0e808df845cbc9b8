"""Engines (METHOD 4.2): each mechanism changes the step by exactly the bytes it should; bad engines are refused."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from bnncost import cli
from bnncost.costmodel.engine import EngineError, engine_names, load_engine
from bnncost.costmodel.memory import memory_plan
from bnncost.costmodel.prediction import predict
from bnncost.costmodel.strategy import load_strategy, strategy_names
from bnncost.hardware_profiles import load_device
from bnncost.layers.graph import graph_of
from bnncost.layers.model import zoo_names

DATA = Path(__file__).parent / "data"
TINY = str(DATA / "tiny-mlp.yaml")  # dense 8->4, bn, sign, dense 4->2, bn, softmax_ce
EXAMPLE = str(DATA / "engine-example.yaml")
BASE = "retention: step\nworkspace: {budget: 0, source: in place}\n"
B = 5


def engine(tmp_path, text, name="e.yaml"):
    path = tmp_path / name
    path.write_text(BASE + text)
    return load_engine(str(path))


def plans(tmp_path, text, strategy="standard", model=TINY):
    """(plan without the rules, plan with them) of one model and strategy."""
    graph, strat = graph_of(model), load_strategy(strategy)
    eng = engine(tmp_path, text)
    return (memory_plan(graph, strat, retention=eng.retention, workspace_budget=0),
            memory_plan(graph, strat, retention=eng.retention, workspace_budget=0, engine=eng))


def delta(before, after, batch=B):
    return dict(zip(before.events, (after.live_bytes(batch) - before.live_bytes(batch))[:, 0].astype(int)))


def only(events: dict, plan, **at):
    """Expected live-byte change: `at` bytes at the named events (':' written as '__'), 0 elsewhere."""
    want = {e: 0 for e in plan.events}
    for k, v in at.items():
        want[k.replace("__", ":")] = v
    return want


def span(plan, first: str, last: str, nbytes: int) -> dict:
    i, j = plan.events.index(first), plan.events.index(last)
    return {e: (nbytes if i <= k <= j else 0) for k, e in enumerate(plan.events)}


def add(*ds):
    out = {}
    for d in ds:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


# ---------------------------------------------------------------- the shipped engines

@pytest.mark.parametrize("model", zoo_names())
def test_reference_engine_is_method_itself(model):
    """The reference engine changes nothing: every variable of every strategy, retention and budget is as METHOD's."""
    graph, ref = graph_of(model), load_engine("reference")
    assert ref.retention == "step" and ref.workspace.budget == 0
    for s in strategy_names():
        strat = load_strategy(s)
        for retention in ("step", "backward"):
            for budget in (0, 65536):
                a = memory_plan(graph, strat, retention=retention, workspace_budget=budget)
                b = memory_plan(graph, strat, retention=retention, workspace_budget=budget, engine=ref)
                assert a.variables == b.variables


def test_reference_is_the_default_and_trainer_engine_has_its_budget():
    assert {"reference", "bnncost-trainer"} <= set(engine_names())
    p = predict("mlp", "proposed", 16)
    assert p.engine == "reference" and p.workspace_budget == 0 and p.retention == "step"
    t = predict("mlp", "proposed", 16, engine="bnncost-trainer")
    assert t.engine == "bnncost-trainer" and t.workspace_budget == 65536
    assert t.memory.peak_bytes == predict("mlp", "proposed", 16, workspace_budget=65536).memory.peak_bytes
    assert predict("mlp", "proposed", 16, engine="bnncost-trainer", workspace_budget=0).memory == p.memory


# ---------------------------------------------------------------- each mechanism, bytes by hand

def test_variables_per_layer_with_saved_lifetime(tmp_path):
    rule = ("variables:\n  - {kinds: [dense, conv2d], when: {binary: true}, name: weight_sign, role: weight_sign_copy,"
            " shape: weight, format: float32, alloc: forward, free: saved, source: t}\n")
    a, b = plans(tmp_path, rule)  # retention step: saved until step_end
    # sign(W) float32: dense_1 8x4 -> 128 B, dense_2 4x2 -> 32 B
    assert delta(a, b) == add(span(a, "forward:dense_1", "step_end", 128), span(a, "forward:dense_2", "step_end", 32))
    a, b = plans(tmp_path, rule.replace("free: saved", "free: backward"))
    assert delta(a, b) == add(span(a, "forward:dense_1", "backward:dense_1", 128),
                              span(a, "forward:dense_2", "backward:dense_2", 32))
    v = {x.name: x for x in b.variables}["dense_2.weight_sign"]
    assert (v.role, v.format, v.shape, v.fixed) == ("weight_sign_copy", "float32", (4, 2), 32)


def test_variable_per_sample_and_strategy_format(tmp_path):
    a, b = plans(tmp_path, "variables:\n  - {kinds: softmax_ce, name: targets, role: targets, shape: sample,"
                           " format: int64, alloc: step_start, free: step_end, source: t}\n")
    assert delta(a, b) == span(a, "step_start", "step_end", 8 * B)
    assert b.peak(B)[3] == a.peak(B)[3] + 8  # 8 more bytes per sample
    # strategy:<role>: proposed's latent_weight is float16 -> dense_1's 32 weights are 64 B
    a, b = plans(tmp_path, "variables:\n  - {kinds: dense, when: {first: true}, name: w, role: copy, shape: weight,"
                           " format: 'strategy:latent_weight', alloc: update, free: update, source: t}\n", "proposed")
    assert delta(a, b) == span(a, "update", "update", 64)


def test_lowered_input_shape(tmp_path):
    a, b = plans(tmp_path, "temporaries:\n  - {kinds: conv2d, when: {first: true}, name: columns, shape: lowered_input,"
                           " format: float32, during: forward, source: t}\n", model="cnv")
    # cnv's first conv: 3x3x3 inputs per output at 30x30 positions, float32
    assert delta(a, b) == span(a, "forward:conv2d_1", "forward:conv2d_1", 30 * 30 * 27 * 4 * B)


def test_fixed_bytes_per_layer(tmp_path):
    """A variable or temporary of fixed bytes per layer (autograd's node objects), whatever the batch."""
    a, b = plans(tmp_path, "variables:\n  - {kinds: [dense], name: node, role: autograd_graph, bytes: 1 KB,"
                           " alloc: forward, free: step_end, source: t}\n"
                           "temporaries:\n  - {kinds: [sign], name: desc, bytes: 300, during: backward, source: t}\n")
    assert delta(a, b) == add(span(a, "forward:dense_1", "step_end", 1000), span(a, "forward:dense_2", "step_end", 1000),
                              span(a, "backward:sign_1", "backward:sign_1", 300))
    assert delta(a, b, batch=50) == delta(a, b)
    v = {x.name: x for x in b.variables}["dense_1.node"]
    assert (v.role, v.format, v.fixed, v.per_sample) == ("autograd_graph", "uint8", 1000, 0)


def test_temporaries_live_during_one_event(tmp_path):
    a, b = plans(tmp_path, "temporaries:\n  - {kinds: [dense], name: ste_mask, shape: weight, format: uint8,"
                           " during: backward, source: t}\n")
    assert delta(a, b) == add(span(a, "backward:dense_1", "backward:dense_1", 32),
                              span(a, "backward:dense_2", "backward:dense_2", 8))
    assert {v.role for v in b.variables if v.name.endswith("ste_mask")} == {"workspace"}


def test_optimizer_temporaries(tmp_path):
    rule = ("optimizer_temporaries:\n  - {name: tmp, shape: largest_parameter, count: 2,"
            " format: 'strategy:optimizer_state', optimizers: adam, source: t}\n")
    a, b = plans(tmp_path, rule)  # largest: dense_1's 32 weights, float32, twice
    assert delta(a, b) == span(a, "update", "update", 2 * 32 * 4)
    a, b = plans(tmp_path, rule.replace("largest_parameter, count: 2", "each_parameter"))
    # standard (l2): 32 + 8 weights, gamma and beta of 4 and of 2 channels = 52 values, float32
    assert delta(a, b) == span(a, "update", "update", 52 * 4)
    a, b = plans(tmp_path, rule.replace("largest_parameter, count: 2", "each_parameter"), "proposed")
    # proposed (l1: beta only): 32 + 8 + 4 + 2 = 46 values, float16
    assert delta(a, b) == span(a, "update", "update", 46 * 2)
    a, b = plans(tmp_path, rule.replace("optimizers: adam", "optimizers: sgd"))
    assert b.variables == a.variables  # an Adam strategy: nothing for SGD


def test_drop(tmp_path):
    a, b = plans(tmp_path, "drop:\n  - {kinds: batchnorm, role: norm_output, source: t}\n")
    # float32 normalised outputs, 4 and 2 channels, saved until step_end
    assert delta(a, b) == add(span(a, "forward:batchnorm_1", "step_end", -16 * B),
                              span(a, "forward:batchnorm_2", "step_end", -8 * B))


def test_shares_fold_a_saved_tensor_into_the_activation_when_formats_agree(tmp_path):
    rule = "shares:\n  - {kinds: sign, role: activation_mask, tensor: input, source: t}\n"
    a, b = plans(tmp_path, rule)
    # standard: the sign's float32 mask (16 B/sample) is batchnorm_1's output, already alive at forward:sign_1
    assert delta(a, b) == span(a, "forward:sign_1", "forward:sign_1", -16 * B)
    out = {v.name: v for v in b.variables}
    assert "sign_1.mask" not in out and b.events[out["batchnorm_1.output"].free] == "step_end"
    a, b = plans(tmp_path, rule, "proposed")  # bool mask, float16 activation: two buffers
    assert b.variables == a.variables


def test_shares_of_different_sizes_are_refused(tmp_path):
    with pytest.raises(EngineError, match=r"shares\[0\]\.tensor: .*maxpool_1.mask"):
        plans(tmp_path, "shares:\n  - {kinds: maxpool, role: pool_mask, tensor: output, source: t}\n", model="cnv")


def test_rules_apply_only_to_the_strategies_they_name(tmp_path):
    rule = "drop:\n  - {strategy: {weight_grad: sign}, kinds: batchnorm, role: norm_output, source: t}\n"
    a, b = plans(tmp_path, rule)
    assert b.variables == a.variables  # standard: weight_grad full
    a, b = plans(tmp_path, rule, "proposed")  # 1 bit per element, 4 and 2 channels: 1 byte per sample each
    assert delta(a, b) == add(span(a, "forward:batchnorm_1", "step_end", -B),
                              span(a, "forward:batchnorm_2", "step_end", -B))
    a, b = plans(tmp_path, rule.replace("weight_grad: sign", "binary_input: bool"), "proposed")
    assert b.variables != a.variables  # a role's format is a condition too


def test_formats_change_what_a_role_is_held_in(tmp_path):
    a, b = plans(tmp_path, "formats:\n  - {kinds: sign, role: activation, format: float16, source: t}\n",
                 "proposed")
    # sign_1's output: 4 values per sample, 1 packed byte under proposed, float16 here: +7 B per sample
    out = {v.name: v for v in b.variables}
    assert out["sign_1.output"].format == "float16" and out["sign_1.output"].per_sample == 8
    assert delta(a, b) == span(a, "forward:sign_1", b.events[out["sign_1.output"].free], 7 * B)


def test_lifetimes(tmp_path):
    a, b = plans(tmp_path, "lifetimes:\n  - {kinds: dense, role: weight_grad, free: step_end, source: t}\n")
    assert delta(a, b) == span(a, "step_end", "step_end", 128 + 32)
    with pytest.raises(EngineError, match=r"lifetimes\[0\]\.free: .*before it is allocated"):
        plans(tmp_path, "lifetimes:\n  - {kinds: dense, role: weight_grad, free: forward, source: t}\n")


def test_lifetimes_do_not_change_what_a_phase_moves(tmp_path):
    """Energy and time price the bytes each phase reads and writes; how long a gradient lives does not change them."""
    eng = engine(tmp_path, "lifetimes:\n  - {kinds: [dense, batchnorm], role: weight_grad, free: step_end, source: t}\n"
                           "  - {kinds: batchnorm, role: bn_param, free: step_end, source: t}\n")
    dev = load_device("raspberry-pi-4b")
    a, b = predict("mlp", "standard", 32, device=dev), predict("mlp", "standard", 32, device=dev, engine=eng)
    assert b.memory.peak_bytes >= a.memory.peak_bytes
    assert (b.energy.memory_j, b.time.memory_s) == (a.energy.memory_j, a.time.memory_s)


def test_in_place_gradients(tmp_path):
    a, b = plans(tmp_path, "in_place_grads:\n  - {kinds: sign, source: t}\n")
    # sign_1's dX (4 float32 = 16 B/sample) is written over its dY: one buffer less while sign_1's backward runs
    assert delta(a, b) == span(a, "backward:sign_1", "backward:sign_1", -16 * B)
    names = {v.name: v for v in b.variables if v.role == "activation_grad"}
    assert "sign_1.output_grad" not in names
    g = names["batchnorm_1.output_grad"]
    assert (b.events[g.alloc], b.events[g.free]) == ("backward:dense_2", "backward:batchnorm_1")
    a, b = plans(tmp_path, "in_place_grads:\n  - {kinds: [batchnorm], source: t}\n")
    # batchnorm_2 (2 channels, 8 B/sample) and batchnorm_1 (4 channels, 16 B/sample), each at its own backward
    assert delta(a, b) == add(span(a, "backward:batchnorm_2", "backward:batchnorm_2", -8 * B),
                              span(a, "backward:batchnorm_1", "backward:batchnorm_1", -16 * B))


def test_runtime_bytes_once_and_per_layer(tmp_path):
    a, b = plans(tmp_path, "runtime:\n  - {name: cache, bytes: 1 MiB, source: t}\n"
                           "  - {name: kernels, kinds: dense, bytes: 3KiB, source: t}\n")
    extra = (1 << 20) + 2 * 3072
    assert delta(a, b) == span(a, "step_start", "step_end", extra)
    assert b.runtime_bytes(B) == extra and a.runtime_bytes(B) == 0
    usable = 5 << 20
    assert b.max_batch(usable) == a.max_batch(usable - extra)  # exact, affine


def test_runtime_bytes_below_a_batch_size(tmp_path):
    """`batch_below: N` holds the bytes only while B < N; the largest batch is searched segment by segment."""
    a, b = plans(tmp_path, "runtime:\n  - {name: small_batch_state, bytes: 1 MiB, batch_below: 16, source: t}\n")
    for batch, held in ((1, 1 << 20), (15, 1 << 20), (16, 0), (200, 0)):
        assert delta(a, b, batch) == span(a, "step_start", "step_end", held)
        assert b.runtime_bytes(batch) == held
        peak, _, fixed, per = b.peak(batch)
        assert fixed + per * batch == peak == a.peak(batch)[0] + held
    # a budget that B = 15 misses (its extra MiB) but B = 16 meets: the peak drops at the threshold
    usable = int(a.peak_bytes(16)[0])
    assert b.peak_bytes(15)[0] > usable and b.max_batch(usable) == 16
    for usable in (int(b.peak_bytes(1)[0]) - 1, int(b.peak_bytes(15)[0]), int(a.peak_bytes(300)[0]) + 7):
        best = b.max_batch(usable)
        ns = np.arange(1, 1 << 15)
        fits = ns[b.peak_bytes(ns) <= usable]
        assert best == (int(fits.max()) if fits.size else 0) < ns[-1]


def test_runtime_bytes_in_a_batch_band(tmp_path):
    """`min_batch: M` with `batch_below: N` holds the bytes only for M <= B < N (Larq's small-batch MatMul state:
    not at one sample); the largest batch that fits is still the brute-force one."""
    a, b = plans(tmp_path, "runtime:\n  - {name: band, bytes: 1 MiB, min_batch: 2, batch_below: 16, source: t}\n")
    for batch, held in ((1, 0), (2, 1 << 20), (15, 1 << 20), (16, 0), (200, 0)):
        assert b.runtime_bytes(batch) == held
        peak, _, fixed, per = b.peak(batch)
        assert fixed + per * batch == peak == a.peak(batch)[0] + held
    assert b.batch_thresholds() == [2, 16]
    ns = np.arange(1, 1 << 15)
    for usable in (int(b.peak_bytes(1)[0]), int(b.peak_bytes(2)[0]) - 1, int(b.peak_bytes(15)[0]),
                   int(a.peak_bytes(16)[0]), int(a.peak_bytes(300)[0]) + 7):
        fits = ns[b.peak_bytes(ns) <= usable]
        assert b.max_batch(usable) == (int(fits.max()) if fits.size else 0) < ns[-1]


def test_temporaries_from_or_below_a_batch_size(tmp_path):
    """A temporary with `min_batch` is held only from that batch on, one with `batch_below` only below it (an
    operator the framework runs two ways); the largest batch that fits is searched across the thresholds."""
    a, b = plans(tmp_path, "temporaries:\n"
                           "  - {kinds: [dense], name: fast, shape: input, format: float32, during: forward,"
                           " min_batch: 16, source: t}\n"
                           "  - {kinds: [dense], name: slow, shape: input_of_one_sample, format: float32,"
                           " during: forward, batch_below: 16, source: t}\n")
    for batch in (1, 15, 16, 40):  # dense_1 takes 8 inputs, dense_2 4
        fast, slow = (4 * batch, 0) if batch >= 16 else (0, 4)
        assert delta(a, b, batch) == add(span(a, "forward:dense_1", "forward:dense_1", 8 * (fast + slow)),
                                         span(a, "forward:dense_2", "forward:dense_2", 4 * (fast + slow)))
        peak, _, fixed, per = b.peak(batch)
        assert fixed + per * batch == peak == int(b.peak_bytes(batch)[0])
    for usable in (int(b.peak_bytes(15)[0]), int(b.peak_bytes(16)[0]) - 1, int(b.peak_bytes(90)[0])):
        ns = np.arange(1, 1 << 12)
        fits = ns[b.peak_bytes(ns) <= usable]
        assert b.max_batch(usable) == int(fits.max())


def test_runtime_bytes_once_per_distinct_layer(tmp_path):
    """`distinct: true` counts equal layers (same kind, shapes, window, strides) once: a cache keyed by shape."""
    model = tmp_path / "m.yaml"
    model.write_text("name: m\ninput: [8]\nlayers:\n  - dense: {units: 8, binary: false}\n  - batchnorm: {}\n"
                     "  - dense: {units: 8}\n  - batchnorm: {}\n  - dense: {units: 4}\n  - softmax_ce: {}\n")
    a, b = plans(tmp_path, "runtime:\n  - {name: primitives, kinds: dense, bytes: 1000, distinct: true, source: t}\n",
                 model=str(model))
    # dense 8->8 twice (binary or not: one float op) and 8->4 once: two configurations
    assert b.runtime_bytes(B) == 2000 and delta(a, b) == span(a, "step_start", "step_end", 2000)


def test_distinct_layers_fused_with_their_reader(tmp_path):
    """`fused_with`: a layer whose output only a layer of those kinds reads is a configuration of its own (Grappler
    fuses batchnorm + relu into one op with its own primitive); equal layers otherwise share one."""
    model = tmp_path / "m.yaml"
    model.write_text("name: m\ninput: [8]\nlayers:\n  - dense: {units: 8, binary: false}\n  - batchnorm: {}\n"
                     "  - relu: {}\n  - dense: {units: 8}\n  - batchnorm: {}\n  - dense: {units: 4}\n"
                     "  - softmax_ce: {}\n")
    rule = "runtime:\n  - {name: primitives, kinds: batchnorm, bytes: 1000, distinct: true, source: t}\n"
    _, b = plans(tmp_path, rule, model=str(model))
    assert b.runtime_bytes(B) == 1000  # both batchnorms are 8 values: one configuration
    _, b = plans(tmp_path, rule.replace("distinct: true", "distinct: true, fused_with: [relu]"), model=str(model))
    assert b.runtime_bytes(B) == 2000  # the first is read by a relu alone: fused, a primitive of its own


def test_grouped_convs_runtime_once_and_buffers_per_group(tmp_path):
    """`when: {grouped: true}` picks the convs with 1 < groups < input channels (not depthwise, not ungrouped);
    `once` holds a runtime's bytes once if any picked layer is in the step (code generated on first use);
    `output_of_one_group` / `input_of_one_group` are a conv's output / input with channels / groups."""
    model = tmp_path / "m.yaml"
    model.write_text("name: m\ninput: [4, 4, 8]\nlayers:\n  - conv2d: {filters: 8, kernel: 3, padding: same,"
                     " groups: 2}\n  - conv2d: {filters: 16, kernel: 1, groups: 4}\n"
                     "  - conv2d: {filters: 16, kernel: 3, padding: same, groups: 16}\n"
                     "  - conv2d: {filters: 8, kernel: 1}\n  - flatten: {}\n  - dense: {units: 4}\n"
                     "  - softmax_ce: {}\n")
    a, b = plans(tmp_path, "runtime:\n  - {name: xla, kinds: conv2d, when: {grouped: true}, bytes: 1000, once: true,"
                           " source: t}\n"
                           "temporaries:\n  - {kinds: conv2d, when: {grouped: true}, name: g, shape: output_of_one_group,"
                           " format: float32, during: forward, source: t}\n", model=str(model))
    assert b.runtime_bytes(B) == 1000  # two grouped convs, once
    # a once_group holds its bytes once among its rules: code a dense layer's MatMul and a grouped conv share
    group = ("runtime:\n  - {name: mm, kinds: dense, bytes: 700, once: true, once_group: sgemm, source: t}\n"
             "  - {name: xla, kinds: conv2d, when: {grouped: true}, bytes: 700, once: true, once_group: sgemm,"
             " source: t}\n  - {name: other, kinds: conv2d, bytes: 5, once: true, source: t}\n")
    assert plans(tmp_path, group, model=str(model))[1].runtime_bytes(B) == 705
    assert plans(tmp_path, group)[1].runtime_bytes(B) == 700  # TINY: dense layers only
    # conv2d_1: 4x4x8 out in 2 groups; conv2d_2: 4x4x16 in 4 groups; the depthwise and the plain conv: none
    assert delta(a, b) == add(span(a, "step_start", "step_end", 1000),
                              span(a, "forward:conv2d_1", "forward:conv2d_1", 4 * 4 * 4 * 4 * B),
                              span(a, "forward:conv2d_2", "forward:conv2d_2", 4 * 4 * 4 * 4 * B))


def test_blocked_temporaries_pad_channels_and_forks_join_gradients(tmp_path):
    """`channel_block: 16` rounds a temporary's channels (a kernel's input and output channels) up to 16;
    `joins_a_gradient` picks the reader of a residual fork whose backward runs after another reader's."""
    from bnncost.layers.graph import graph_of
    from bnncost.layers.relative import joins_forked_gradient

    model = tmp_path / "m.yaml"
    model.write_text("name: m\ninput: [4, 4, 3]\nlayers:\n  - conv2d: {filters: 8, kernel: 3, padding: same,"
                     " binary: false}\n  - residual:\n      body:\n        - sign: {}\n"
                     "        - conv2d: {filters: 8, kernel: 3, padding: same}\n"
                     "  - residual:\n      body:\n        - sign: {}\n"
                     "        - conv2d: {filters: 16, kernel: 3, stride: 2, padding: same}\n"
                     "      shortcut:\n        - avgpool: {size: 2}\n        - conv2d: {filters: 16, kernel: 1}\n"
                     "  - flatten: {}\n  - dense: {units: 4}\n  - softmax_ce: {}\n")
    graph = graph_of(str(model))
    # identity block: the add delivers first, the body's sign joins; downsampling block: the shortcut runs first
    assert [n.name for n in graph.nodes if joins_forked_gradient(graph, n)] == ["sign_1", "sign_2"]
    a, b = plans(tmp_path, "temporaries:\n  - {kinds: conv2d, name: blocked, shape: weight, format: uint8,"
                           " channel_block: 16, during: forward, source: t}\n", model=str(model))
    from bnncost.costmodel.engine_rules import channel_padded

    # a depthwise kernel keeps its one input channel a group (Goihw16g): only its output channels are padded
    assert channel_padded((3, 3, 1, 24), "weight", 16, groups=24) == (3, 3, 1, 32)
    assert channel_padded((4, 4, 8), "output", 16, groups=8) == (4, 4, 16)
    # conv2d_1 3x3x3x8 -> 3x3x16x16, conv2d_2 3x3x8x8 -> 3x3x16x16, conv2d_3 3x3x8x16 -> 3x3x16x16, conv2d_4 1x1x8x16
    assert delta(a, b) == add(*(span(a, f"forward:conv2d_{k}", f"forward:conv2d_{k}", n)
                                for k, n in ((1, 2304), (2, 2304), (3, 2304), (4, 256))))


def test_constants_once_per_distinct_shape(tmp_path):
    """A graph constant shaped like a layer's tensor is held once per distinct format and shape."""
    model = tmp_path / "m.yaml"
    model.write_text("name: m\ninput: [8]\nlayers:\n  - dense: {units: 8, binary: false}\n  - batchnorm: {}\n"
                     "  - sign: {}\n  - dense: {units: 8}\n  - batchnorm: {}\n  - sign: {}\n"
                     "  - dense: {units: 4}\n  - softmax_ce: {}\n")
    a, b = plans(tmp_path, "constants:\n  - {name: zeros, kinds: sign, shape: input, format: float32, source: t}\n"
                           "  - {name: kzeros, kinds: dense, when: {binary: true}, shape: weight, format: float32,"
                           " source: t}\n", model=str(model))
    # two signs read [B, 8]: one constant; binary kernels [8, 8] and [8, 4]: two
    extra = 8 * 4 * B + (64 + 32) * 4
    assert delta(a, b) == span(a, "step_start", "step_end", extra) and b.runtime_bytes(B) == extra
    assert sorted(v.name for v in b.variables if v.role == "runtime") == [
        "runtime.kzeros.dense_2", "runtime.kzeros.dense_3", "runtime.zeros.sign_1"]


def test_prediction_reports_tensor_and_process_peaks(tmp_path):
    eng = engine(tmp_path, "runtime:\n  - {name: cache, bytes: 1000, source: t}\n")
    p, q = predict(TINY, "standard", B), predict(TINY, "standard", B, engine=eng)
    m = q.memory
    assert m.tensor_peak_bytes == p.memory.peak_bytes and m.runtime_bytes == 1000
    assert m.process_peak_bytes == m.peak_bytes == p.memory.peak_bytes + 1000
    assert m.fixed_bytes + m.per_sample_bytes * B == m.peak_bytes and m.by_role["runtime"] == 1000


def test_example_engine_every_mechanism_at_once():
    """The documented example loads and applies every mechanism together."""
    eng = load_engine(EXAMPLE)
    p = predict("cnv", "standard", 32, engine=eng)
    assert p.retention == "backward" and p.memory.runtime_bytes == (2 << 20) + 9 * 1024
    roles = {v.role for v in p.memory.variables}
    assert {"weight_sign_copy", "pool_indices", "targets", "runtime"} <= roles
    idx = {v.name: v for v in p.memory.variables}["maxpool_1.indices"]
    assert idx.format == "int64" and idx.bytes == 32 * 14 * 14 * 64 * 8


# ---------------------------------------------------------------- extends

def test_extends_overrides_by_name_and_appends(tmp_path):
    (tmp_path / "child.yaml").write_text(
        f"extends: {EXAMPLE}\nretention: step\nworkspace: {{budget: 64KiB, source: t}}\n"
        "runtime:\n  - {name: allocator, bytes: 1 MiB, source: child}\n"
        "drop:\n  - {kinds: avgpool, role: pool_indices, source: t}\n")
    e = load_engine(str(tmp_path / "child.yaml"))
    assert e.name == "child" and e.retention == "step" and e.workspace.budget == 65536
    assert [(r.name, r.bytes) for r in e.runtime] == [("kernels", 1024), ("allocator", 1 << 20)]
    assert len(e.shares) == 6 and len(e.drop) == 1 and len(e.variables) == 3
    # a relative extends is read beside the file that names it
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "grandchild.yaml").write_text("extends: ../child.yaml\nname: gc\n")
    assert load_engine(str(tmp_path / "sub" / "grandchild.yaml")).workspace.budget == 65536


# ---------------------------------------------------------------- bad input: one line naming file and field, exit 2

def run(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        cli.main(list(args))
    got = capsys.readouterr()
    return exc.value.code, got.out, got.err


GEMM = "gemms:\n  - {kinds: dense, during: forward, trans: TN, m: outputs, n: batch, k: inputs, source: t}\n"
POOL = ("blas_buffers: {name: pool, base: 100, element_bytes: 4, row_block: 2, col_block: 2, col_cap: 2, "
        "depth_min: 1, depth_block: 8, small_depth: 0, small_depth_col_cap: 1, source: t,\n"
        "  paths: [{trans: TN, min_n: 4}]}\n")


def test_blas_buffers_are_a_step_function_of_the_batch(tmp_path):
    """A gemm on the packing path adds one kept buffer to the whole step; below the path's bound, none."""
    a, b = plans(tmp_path, GEMM + POOL)
    # TINY: dense_1 8 -> 4 (m 4, k 8), dense_2 4 -> 2 (m 2, k 4); n = B. Buffer: 100 + 4 x depth x (rows + cols)
    first = 100 + 4 * 8 * (4 + 2)  # dense_1: depth 8, 4 rows, n rounded to 2 and capped at 2 columns
    assert delta(a, b, 3) == span(a, "step_start", "step_end", 0)  # n = 3 < min_n: no packing path
    assert delta(a, b, 5) == span(a, "step_start", "step_end", first)  # dense_2's smaller buffer reuses it
    assert b.runtime_bytes(5) == first and b.runtime_bytes(3) == 0
    usable = int(b.peak_bytes(5)[0])
    assert b.peak_bytes(b.max_batch(usable))[0] <= usable < b.peak_bytes(b.max_batch(usable) + 1)[0]


def test_follows_picks_a_layer_that_alone_reads_a_layer_of_that_kind(tmp_path):
    """follows: batchnorm matches a relu whose input is a batchnorm's output read by nothing else (fusable);
    not one after a conv, nor one whose batchnorm output another layer reads too."""
    model = tmp_path / "m.yaml"
    model.write_text("name: m\ninput: [4, 4, 2]\nlayers:\n  - conv2d: {filters: 2, kernel: 3, padding: same, "
                     "binary: false}\n  - batchnorm: {}\n  - relu: {}\n  - conv2d: {filters: 2, kernel: 3, "
                     "padding: same, binary: false}\n  - relu: {}\n  - batchnorm: {}\n  - residual:\n      body:\n"
                     "        - relu: {}\n  - flatten: {}\n  - dense: {units: 2}\n  - softmax_ce: {}\n")
    rule = ("variables:\n  - {kinds: relu, when: {follows: batchnorm}, name: ws, role: relu_workspace, "
            "format: uint8, shape: input, alloc: forward, free: saved, source: t}\n")
    _, b = plans(tmp_path, rule, model=str(model))
    assert [v.layer for v in b.variables if v.role == "relu_workspace"] == ["relu_1"]


def test_runtime_from_a_batch_size_on_and_pointwise_convs(tmp_path):
    """min_batch: the bytes count only from that batch on; pointwise picks 1x1 stride-1 convs."""
    model = tmp_path / "m.yaml"
    model.write_text("name: m\ninput: [4, 4, 2]\nlayers:\n  - conv2d: {filters: 3, kernel: 1}\n"
                     "  - conv2d: {filters: 3, kernel: 3, padding: same}\n  - flatten: {}\n"
                     "  - dense: {units: 2}\n  - softmax_ce: {}\n")
    a, b = plans(tmp_path, "runtime:\n  - {name: p, kinds: conv2d, when: {pointwise: true}, min_batch: 16, bytes: 7,"
                           " source: t}\n  - {name: q, kinds: conv2d, when: {pointwise: false}, bytes: 5, source: t}\n",
                 model=str(model))
    assert b.runtime_bytes(15) == 5 and b.runtime_bytes(16) == 5 + 7
    assert delta(a, b, 16) == span(a, "step_start", "step_end", 12)


def test_after_backward_is_a_moment_after_the_layer_frees_its_saved_tensors(tmp_path):
    """A temporary during after_backward lives at its own event, where the layer's saved tensors are gone."""
    path = tmp_path / "ab.yaml"
    path.write_text("retention: backward\nworkspace: {budget: 0, source: t}\ntemporaries:\n  - {kinds: dense, "
                    "when: {first: false}, name: t, shape: weight, format: uint8, during: after_backward, source: t}\n")
    eng, graph, strat = load_engine(str(path)), graph_of(TINY), load_strategy("standard")
    a = memory_plan(graph, strat, retention="backward")
    b = memory_plan(graph, strat, retention="backward", engine=eng)
    assert b.events.index("after_backward:dense_2") == b.events.index("backward:dense_2") + 1
    at = b.events.index("after_backward:dense_2")
    alive = {v.name for v in b.variables if v.alloc <= at <= v.free}
    assert "dense_2.t" in alive and "dense_2.weight_grad" in alive  # dW outlives the layer's backward
    assert not any(v.layer == "dense_2" and v.role == "binary_input" for v in b.variables if v.name in alive)
    before = {v.name: (a.events[v.alloc], a.events[v.free]) for v in a.variables}
    assert {v.name: (b.events[v.alloc], b.events[v.free]) for v in b.variables if v.name in before} == before


SCRATCH = ("gemm_scratch: {name: s, path: onednn_avx512_one_thread, element_bytes: 4, unroll_m: 48, unroll_n: 8,"
           " block_m: 9984, block_n: 384, block_k: 384, whole_depth: 384, min_depth: 128, small_depth: 48,"
           " small_depth_block_n: 24, page_bytes: 4096, nocopy_unroll_m: 48, nocopy_block_k: 384,"
           " nocopy_heap: false, source: t}\n")
DX = ("gemms:\n  - {kinds: dense, when: {needs_input_grad: true}, during: backward, trans: TN, m: inputs, n: batch,"
      " k: outputs, source: t}\n")


def test_gemm_scratch_lives_while_its_product_runs_and_not_beside_other_ops(tmp_path):
    """A copy-based gemm's buffer exists at its event only, sized by the blocking; the event's other
    temporaries (other ops, run one at a time) are not added to it: the event holds the larger."""
    model = tmp_path / "m.yaml"
    model.write_text("name: m\ninput: [200]\nlayers:\n  - dense: {units: 150}\n  - batchnorm: {}\n  - sign: {}\n"
                     "  - dense: {units: 120}\n  - softmax_ce: {}\n")
    # dense_2's dX: TN, m = 150 inputs, n = B, k = 120 outputs: the copy-based path (one thread, TN, m > 100,
    # 16 <= n < 200, k < 1200); rows 150 -> 192, depth 120 -> 128, columns 20 -> 24
    scratch = 4 * (192 * 128 + 128 * 24 + 48 + 24) + 4 * 4096
    a, b = plans(tmp_path, DX + SCRATCH, model=str(model))
    assert delta(a, b, 20) == only(delta(a, b), a, backward__dense_2=scratch)  # dense_1 computes no dX
    assert delta(a, b, 15) == only(delta(a, b), a)  # n < 16: oneDNN's small-n TN kernel, no buffer
    temp = "temporaries:\n  - {kinds: dense, name: t, shape: weight, format: uint8, during: backward, source: t}\n"
    c, d = plans(tmp_path, temp, model=str(model))
    _, e = plans(tmp_path, temp + DX + SCRATCH, model=str(model))
    assert delta(d, e, 20) == only(delta(d, e), d, backward__dense_2=scratch - 150 * 120)
    big = temp.replace("format: uint8", "format: float32, count: 2")  # 144,000 B: larger than the scratch
    _, f = plans(tmp_path, big, model=str(model))
    _, g = plans(tmp_path, big + DX + SCRATCH, model=str(model))
    assert delta(f, g, 20) == only(delta(f, g), f)


STAGED = ("temporaries:\n"
          "  - {kinds: dense, when: {first: false}, name: operand, shape: input, format: float32, during: backward,"
          " stage: [1, 2], source: t}\n"
          "  - {kinds: dense, when: {first: false}, name: product, shape: weight, format: float32, during: backward,"
          " stage: [2, 3], source: t}\n"
          "  - {kinds: dense, when: {first: false}, name: packing, shape: weight, format: uint8, count: 3,"
          " during: backward, stage: 3, source: t}\n"
          "  - {kinds: dense, when: {first: false}, name: whole, shape: output, format: float32, during: backward,"
          " source: t}\n")


def test_staged_temporaries_are_alive_one_stage_after_another(tmp_path):
    """An op that frees dW's operand before it packs dW: its stages follow the event, each holding only its own."""
    a, b = plans(tmp_path, STAGED)
    at = b.events.index("backward:dense_2")
    assert b.events[at:at + 4] == ["backward:dense_2", "backward:dense_2#1", "backward:dense_2#2",
                                   "backward:dense_2#3"]
    live = dict(zip(b.events, b.live_bytes(B)[:, 0].astype(int)))
    base = dict(zip(a.events, a.live_bytes(B)[:, 0].astype(int)))["backward:dense_2"]
    operand, product, packing, whole = 4 * 4 * B, 4 * 4 * 2, 3 * 4 * 2, 4 * 2 * B
    # every variable alive at the op (its saved input, dY, the dX and dW it hands back) is alive at each stage
    assert live["backward:dense_2"] == base + whole
    assert live["backward:dense_2#1"] == base + whole + operand
    assert live["backward:dense_2#2"] == base + whole + operand + product
    assert live["backward:dense_2#3"] == base + whole + product + packing  # the operand is gone
    assert b.peak(B)[0] == a.peak(B)[0] + max(0, base + whole + max(operand, packing) + product - a.peak(B)[0])
    # the other events keep their bytes, and every METHOD variable its lifetime (one freed at the op: its last stage)
    assert {e: v for e, v in live.items() if e != "backward:dense_2" and "#" not in e} == {
        e: v for e, v in dict(zip(a.events, a.live_bytes(B)[:, 0].astype(int))).items() if e != "backward:dense_2"}
    before = {v.name: (a.events[v.alloc], a.events[v.free]) for v in a.variables}
    moved = {v.name: (b.events[v.alloc], b.events[v.free]) for v in b.variables if v.name in before}
    for name, (alloc, free) in before.items():
        assert moved[name][0] == alloc
        assert moved[name][1] == (free + "#3" if free == "backward:dense_2" else free)


def test_a_lifetime_stage_makes_an_output_at_the_end_of_its_op(tmp_path):
    """lifetimes.stage: an op's output exists only from its last stage (made after its operands are freed)."""
    text = ("temporaries:\n"
            "  - {kinds: dense, name: operand, shape: input, format: float32, during: forward, stage: 1, source: t}\n"
            "lifetimes:\n  - {kinds: dense, role: activation, alloc: forward, stage: 2, source: t}\n")
    _, b = plans(tmp_path, text)
    out = next(v for v in b.variables if v.name == "dense_1.output")
    assert b.events[out.alloc] == "forward:dense_1#2"
    alive = {v.name for v in b.variables if v.alloc <= b.events.index("forward:dense_1#1") <= v.free}
    assert "dense_1.operand" in alive and "dense_1.output" not in alive
    # with a stage, what the op makes moves, whichever layer it is named after: dense_2's dX is sign_1's
    text = ("temporaries:\n  - {kinds: dense, name: operand, shape: weight, format: float32, during: backward,"
            " stage: 1, source: t}\nlifetimes:\n  - {kinds: dense, when: {first: false}, role: activation_grad,"
            " alloc: backward, stage: 2, source: t}\n")
    a, b = plans(tmp_path, text)
    grads = {v.name: (b.events[v.alloc], b.events[v.free].split("#")[0]) for v in b.variables
             if v.role == "activation_grad"}  # (one freed at a split op: at its last stage)
    assert grads["sign_1.output_grad"] == ("backward:dense_2#2", "backward:sign_1")
    assert {k: v for k, v in grads.items() if k != "sign_1.output_grad"} == {
        v.name: (a.events[v.alloc], a.events[v.free]) for v in a.variables
        if v.role == "activation_grad" and v.name != "sign_1.output_grad"}


def test_a_graph_executor_backward_frees_each_tensor_after_its_last_op(tmp_path):
    """free_stage and a gemm's stage: a backward run as separate graph ops (dW's product, its update, dX's product,
    TensorFlow's order) frees dW after its update and the input after dW's product, and makes dX last; each
    product's scratch is alive at its own stage, beside what that stage holds, not beside the other product."""
    model = tmp_path / "m.yaml"
    model.write_text("name: m\ninput: [200]\nlayers:\n  - dense: {units: 150}\n  - batchnorm: {}\n  - sign: {}\n"
                     "  - dense: {units: 120}\n  - softmax_ce: {}\n")
    rules = ("retention: backward\nlifetimes:\n"
             "  - {kinds: dense, role: weight_grad, alloc: backward, stage: 1, free: backward, free_stage: 2, source: t}\n"
             "  - {kinds: dense, role: activation_grad, alloc: backward, stage: 3, source: t}\n"
             "  - {kinds: dense, role: binary_input, free: backward, free_stage: 1, source: t}\n"
             "temporaries:\n  - {kinds: dense, name: update, shape: weight, format: float32, during: backward,"
             " stage: 2, source: t}\n"
             "gemms:\n  - {kinds: dense, when: {needs_input_grad: true}, during: backward, stage: 3, trans: TN,"
             " m: inputs, n: batch, k: outputs, source: t}\n"
             "  - {kinds: dense, during: backward, stage: 1, trans: NT, m: outputs, n: inputs, k: batch, source: t}\n"
             + SCRATCH)
    path = tmp_path / "g.yaml"
    path.write_text(rules.replace("retention: backward", "retention: backward\nworkspace: {budget: 0, source: t}"))
    graph, strat = graph_of(str(model)), load_strategy("standard")
    plan = memory_plan(graph, strat, retention="backward", engine=load_engine(str(path)))
    batch = 20
    span = {v.name: (plan.events[v.alloc], plan.events[v.free]) for v in plan.variables}
    assert span["dense_2.weight_grad"] == ("backward:dense_2#1", "backward:dense_2#2")
    assert span["sign_1.output_grad"][0] == "backward:dense_2#3"  # dense_2's dX
    assert span["dense_2.input"] == ("forward:dense_2", "backward:dense_2#1")  # read last by dW's product
    # dX (TN 150 x 20 x 120, copy-based: rows 192, depth 128, columns 24) at stage 3 only; dW (NT 120 x 150 x 20:
    # rows 144, depth k = 20 -> 128, columns 150 -> 152) at stage 1 only
    dx = 4 * (192 * 128 + 128 * 24 + 48 + 24) + 4 * 4096
    scratch = {v.name: (plan.events[v.alloc], plan.events[v.free], v.bytes_at(batch)) for v in plan.variables
               if v.name.startswith("dense_2.s.")}
    assert scratch["dense_2.s.backward#3"] == ("backward:dense_2#3", "backward:dense_2#3", dx)
    assert set(scratch) == {"dense_2.s.backward#1", "dense_2.s.backward#3"}
    assert scratch["dense_2.s.backward#1"][:2] == ("backward:dense_2#1", "backward:dense_2#1")
    w = 4 * 150 * 120
    live = dict(zip(plan.events, plan.live_bytes(batch)[:, 0].astype(int)))
    at = {e: {v.name for v in plan.variables if v.alloc <= plan.events.index(e) <= v.free}
          for e in ("backward:dense_2#1", "backward:dense_2#2", "backward:dense_2#3")}
    assert "dense_2.weight_grad" not in at["backward:dense_2#3"] and "dense_2.input" not in at["backward:dense_2#2"]
    assert live["backward:dense_2#2"] - live["backward:dense_2#3"] == (
        2 * w - 4 * 150 * batch - dx)  # dW and the update's buffer, against dX and its scratch
    assert live["backward:dense_2#1"] - live["backward:dense_2#2"] == (
        4 * 150 * batch + scratch["dense_2.s.backward#1"][2] - w)  # the input and dW's scratch, against the update


def test_staged_events_hold_the_scratch_of_their_op(tmp_path):
    """A workspace budget's scratch at an op that an engine splits into stages is alive at each of them."""
    graph, strat = graph_of(TINY), load_strategy("standard")
    a = memory_plan(graph, strat, retention="step", workspace_budget=1024, engine=engine(tmp_path, "", "plain.yaml"))
    b = memory_plan(graph, strat, retention="step", workspace_budget=1024, engine=engine(tmp_path, STAGED))
    scratch = {v.name for v in a.variables if v.role == "workspace" and a.events[v.alloc] == "backward:dense_2"}
    assert scratch == {"dense_2.dw_operand", "dense_2.weight_signs"}  # growing rows, and fixed ones
    for v in (v for v in b.variables if v.name in scratch):
        assert (b.events[v.alloc], b.events[v.free]) == ("backward:dense_2", "backward:dense_2#3")
    held = {e: int(x) for e, x in zip(a.events, a.live_bytes(B)[:, 0])}["backward:dense_2"]
    held_b = {e: int(x) for e, x in zip(b.events, b.live_bytes(B)[:, 0])}
    whole = 4 * 2 * B
    assert held_b["backward:dense_2"] == held + whole  # the scratch counted once per event, at every stage
    assert held_b["backward:dense_2#1"] == held + whole + 4 * 4 * B
    assert b.peak(B)[0] == max(int(x) for x in b.live_bytes(B)[:, 0])


BAD = {
    "malformed": ("retention: [step\n", "malformed YAML"),
    "not-a-mapping": ("- 1\n", "must be a mapping"),
    "unknown-field": (BASE + "colour: red\n", "colour: unknown field"),
    "missing-source": (BASE + "runtime:\n  - {name: x, bytes: 1}\n", "runtime[0].source: missing"),
    "blank-source": (BASE + "runtime:\n  - {name: x, bytes: 1, source: ' '}\n", "runtime[0].source"),
    "unknown-kind": (BASE + "drop:\n  - {kinds: [dense, lstm], role: weight_grad, source: t}\n",
                     "drop[0].kinds: unknown layer kind 'lstm'"),
    "unknown-role": (BASE + "drop:\n  - {kinds: dense, role: weight_gradient, source: t}\n",
                     "drop[0].role: unknown role 'weight_gradient'"),
    "unknown-strategy-role": (BASE + "temporaries:\n  - {kinds: dense, name: t, shape: weight, during: backward,"
                              " format: 'strategy:nope', source: t}\n", "temporaries[0].format"),
    "new-role-without-format": (BASE + "variables:\n  - {kinds: dense, name: c, role: copy, shape: weight,"
                                " alloc: forward, free: saved, source: t}\n", "variables[0].format: role 'copy'"),
    "unknown-format": (BASE + "temporaries:\n  - {kinds: dense, name: t, shape: weight, during: backward,"
                       " format: float64, source: t}\n", "unknown format 'float64'"),
    "weight-of-a-sign": (BASE + "temporaries:\n  - {kinds: sign, name: t, shape: weight, during: backward,"
                         " format: uint8, source: t}\n", "temporaries[0].shape: weight needs kinds"),
    "bad-event": (BASE + "lifetimes:\n  - {kinds: dense, role: weight_grad, free: later, source: t}\n",
                  "lifetimes[0].free"),
    "shape-and-bytes": (BASE + "variables:\n  - {kinds: dense, name: n, role: r, shape: weight, bytes: 8,"
                        " alloc: forward, free: step_end, source: t}\n", "variables[0]: give its size as shape"),
    "neither-shape-nor-bytes": (BASE + "temporaries:\n  - {kinds: dense, name: t, during: backward, format: uint8,"
                                " source: t}\n", "temporaries[0]: give its size as shape"),
    "bytes-with-a-format": (BASE + "variables:\n  - {kinds: dense, name: n, role: r, bytes: 8, format: float32,"
                            " alloc: forward, free: step_end, source: t}\n",
                            "variables[0]: format: float32 sizes a shape"),
    "negative-layer-bytes": (BASE + "variables:\n  - {kinds: dense, name: n, role: r, bytes: -8,"
                             " alloc: forward, free: step_end, source: t}\n", "variables[0].bytes: -8 is negative"),
    "min-batch-and-batch-below": (BASE + "temporaries:\n  - {kinds: dense, name: t, shape: input, format: uint8,"
                                  " during: forward, min_batch: 4, batch_below: 8, source: t}\n",
                                  "temporaries[0]: give min_batch or batch_below, not both"),
    "fused-without-distinct": (BASE + "runtime:\n  - {name: x, kinds: batchnorm, bytes: 1, fused_with: relu,"
                               " source: t}\n", "runtime[0]: fused_with tells distinct configurations apart"),
    "onednn-and-a-batch-bound": (BASE + "temporaries:\n  - {kinds: conv2d, when: {onednn: true}, name: t,"
                                 " shape: input, format: uint8, during: forward, min_batch: 4, source: t}\n",
                                 "temporaries[0]: when.onednn sets the batch bound itself"),
    "negative-bytes": (BASE + "runtime:\n  - {name: x, bytes: -4, source: t}\n", "runtime[0].bytes: -4 is negative"),
    "stage-after-backward": (BASE + "temporaries:\n  - {kinds: dense, name: t, shape: weight, format: uint8,"
                             " during: after_backward, stage: 2, source: t}\n",
                             "temporaries[0]: stage: after_backward is a moment of its own"),
    "stage-backwards": (BASE + "temporaries:\n  - {kinds: dense, name: t, shape: weight, format: uint8,"
                        " during: backward, stage: [4, 2], source: t}\n",
                        "temporaries[0].stage: [4, 2]: the first stage comes after the last"),
    "lifetime-stage-without-op": (BASE + "lifetimes:\n  - {kinds: dense, role: weight_grad, free: step_end,"
                                  " stage: 2, source: t}\n", "lifetimes[0]: stage: a stage of the layer's"),
    "measured-strategies-not-a-list": (BASE + "measured_strategies: 3\n", "measured_strategies"),
    "free-stage-without-op": (BASE + "lifetimes:\n  - {kinds: dense, role: weight_grad, free: step_end,"
                              " free_stage: 2, source: t}\n", "lifetimes[0]: free_stage: a stage of the layer's"),
    "fractional-bytes": (BASE + "runtime:\n  - {name: x, bytes: 1.5, source: t}\n",
                         "runtime[0].bytes: 1.5 is not a whole number"),
    "bad-unit": ("retention: step\nworkspace: {budget: 64 KJ, source: t}\n", "workspace.budget"),
    "bad-retention": ("retention: forever\nworkspace: {budget: 0, source: t}\n", "retention: 'forever' is not"),
    "no-retention": ("workspace: {budget: 0, source: t}\n", "retention: missing"),
    "in-place-maxpool": (BASE + "in_place_grads:\n  - {kinds: maxpool, source: t}\n",
                         "in_place_grads[0].kinds: 'maxpool'"),
    "negative-batch-below": (BASE + "runtime:\n  - {name: x, bytes: 1, batch_below: -16, source: t}\n",
                             "runtime[0].batch_below"),
    "empty-batch-band": (BASE + "runtime:\n  - {name: x, bytes: 1, min_batch: 16, batch_below: 4, source: t}\n",
                         "runtime[0]: min_batch 16 and batch_below 4 leave no batch size"),
    "distinct-without-kinds": (BASE + "runtime:\n  - {name: x, bytes: 1, distinct: true, source: t}\n",
                               "runtime[0]: distinct counts layers of some kinds"),
    "channel-block-of-bytes": (BASE + "temporaries:\n  - {kinds: conv2d, name: t, bytes: 64, during: forward,"
                               " channel_block: 16, source: t}\n",
                               "temporaries[0]: channel_block pads a shape's channels"),
    "once-without-kinds": (BASE + "runtime:\n  - {name: x, bytes: 1, once: true, source: t}\n",
                           "runtime[0]: once holds the bytes if a layer of some kinds"),
    "once-and-distinct": (BASE + "runtime:\n  - {name: x, kinds: conv2d, bytes: 1, once: true, distinct: true,"
                          " source: t}\n", "runtime[0]: once or distinct, not both"),
    "group-without-once": (BASE + "runtime:\n  - {name: x, kinds: dense, bytes: 1, once_group: g, source: t}\n",
                           "runtime[0]: once_group holds the bytes once among rules that are each once"),
    "group-of-a-dense": (BASE + "temporaries:\n  - {kinds: [dense, conv2d], name: t, shape: output_of_one_group,"
                         " format: float32, during: forward, source: t}\n",
                         "temporaries[0].shape: output_of_one_group needs kinds: [conv2d]"),
    "batch-above": (BASE + "runtime:\n  - {name: x, bytes: 1, batch_above: 16, source: t}\n",
                    "runtime[0].batch_above: unknown field"),
    "constant-strategy-format": (BASE + "constants:\n  - {name: z, kinds: sign, shape: input,"
                                 " format: 'strategy:activation', source: t}\n", "constants[0].format"),
    "constant-weight-of-a-sign": (BASE + "constants:\n  - {name: z, kinds: sign, shape: weight, format: float32,"
                                  " source: t}\n", "constants[0].shape: weight needs kinds"),
    "blas-unknown-field": (BASE + POOL.replace("col_cap: 2", "col_cap: 2, colour: red"),
                           "blas_buffers.colour: unknown field"),
    "blas-negative-base": (BASE + POOL.replace("base: 100", "base: -100"), "blas_buffers.base: -100 is negative"),
    "blas-fractional-base": (BASE + POOL.replace("base: 100", "base: 100.5"),
                             "blas_buffers.base: 100.5 is not a whole number"),
    "blas-negative-bound": (BASE + POOL.replace("min_n: 4", "min_n: -4"), "blas_buffers.paths[0].min_n"),
    "follows-unknown-kind": (BASE + "drop:\n  - {kinds: relu, when: {follows: lstm}, role: activation_mask,"
                             " source: t}\n", "drop[0].when.follows: 'lstm' is not"),
    "gemm-scratch-unknown-path": (BASE + SCRATCH.replace("onednn_avx512_one_thread", "openblas"),
                                  "gemm_scratch.path: 'openblas' is not"),
    "gemm-bad-trans": (BASE + GEMM.replace("trans: TN", "trans: XN"), "gemms[0].trans: 'XN' is not"),
    "gemm-dim-of-a-sign": (BASE + GEMM.replace("kinds: dense", "kinds: sign"), "gemms[0].m: outputs needs kinds"),
    "strategy-unknown-key": (BASE + "drop:\n  - {strategy: {retention: step}, kinds: dense, role: weight_grad,"
                             " source: t}\n", "drop[0].strategy: 'retention' is neither"),
    "strategy-bad-choice": (BASE + "drop:\n  - {strategy: {weight_grad: half}, kinds: dense, role: weight_grad,"
                            " source: t}\n", "drop[0].strategy: weight_grad: 'half' is not one of sign, full"),
    "strategy-bad-format": (BASE + "drop:\n  - {strategy: {binary_input: bit}, kinds: dense, role: weight_grad,"
                            " source: t}\n", "drop[0].strategy: binary_input: unknown format 'bit'"),
    "formats-strategy-format": (BASE + "formats:\n  - {kinds: sign, role: activation, format: 'strategy:input',"
                                " source: t}\n", "formats[0].format: a storage format"),
    "formats-unknown-role": (BASE + "formats:\n  - {kinds: sign, role: outputs, format: uint8, source: t}\n",
                             "formats[0].role: unknown role 'outputs'"),
    "zero-min-batch": (BASE + "runtime:\n  - {name: x, bytes: 1, min_batch: 0, source: t}\n", "runtime[0].min_batch"),
    "jit-unknown-field": (BASE + "jit_conv_kernels: {name: j, kernel_bytes: 1, state_bytes: 0, "
                          "plain_input_below_channels: 16, strided_input_grad_kernels: 1, pointwise_weight_grad_kernels: 1,"
                          " pointwise_min_batch: 1, source: t, colour: red}\n", "jit_conv_kernels.colour: unknown field"),
    "jit-negative-bytes": (BASE + "jit_conv_kernels: {name: j, kernel_bytes: -1, state_bytes: 0, "
                           "plain_input_below_channels: 16, strided_input_grad_kernels: 1, pointwise_weight_grad_kernels: 1,"
                           " pointwise_min_batch: 1, source: t}\n", "jit_conv_kernels.kernel_bytes: -1 is negative"),
    "zero-count": (BASE + "temporaries:\n  - {kinds: dense, name: t, shape: weight, during: backward,"
                   " format: uint8, count: 0, source: t}\n", "temporaries[0].count"),
    "depth-halving-round": ("extends: pytorch-amd\nblas_buffers: {name: x, base: 1, element_bytes: 4, row_block: 16,"
                            " col_block: 1, col_cap: 384, depth_min: 128, depth_block: 192, depth_halving: round,"
                            " small_depth: 0, small_depth_col_cap: 1, paths: [{trans: TN}], source: t}\n",
                            "blas_buffers.depth_halving: 'round' is not one of"),
    "zero-col-depth-factor": ("extends: pytorch-amd\nblas_buffers: {name: x, base: 1, element_bytes: 4,"
                              " row_block: 16, col_block: 1, col_cap: 384, col_depth_factor: 0, depth_min: 128,"
                              " depth_block: 192, small_depth: 0, small_depth_col_cap: 1, paths: [{trans: TN}],"
                              " source: t}\n", "blas_buffers.col_depth_factor"),
    "gemm-of-a-onednn-conv": (BASE + "gemms:\n  - {kinds: conv2d, when: {onednn: true}, during: forward, trans: NN,"
                              " m: positions, n: outputs, k: inputs, source: t}\n",
                              "gemms[0]: when.onednn: true: a conv oneDNN runs makes no BLAS gemm"),
    "gemm-two-batch-bounds": (BASE + "gemms:\n  - {kinds: conv2d, when: {onednn: false}, batch_below: 4,"
                              " during: forward, trans: NN, m: positions, n: outputs, k: inputs, source: t}\n",
                              "gemms[0]: when.onednn sets the batch bound itself"),
    "columns-of-a-batchnorm": (BASE + "temporaries:\n  - {kinds: batchnorm, name: t,"
                               " shape: lowered_input_of_one_sample, format: float32, during: forward, source: t}\n",
                               "temporaries[0].shape: lowered_input_of_one_sample needs kinds among dense, conv2d"),
    "negative-single-sample-input": ("extends: pytorch\njit_conv_kernels: {name: j, kernel_bytes: 1, state_bytes: 1,"
                                     " plain_input_below_channels: 16, strided_input_grad_kernels: 6,"
                                     " pointwise_weight_grad_kernels: 2, pointwise_min_batch: 16,"
                                     " single_sample_max_input: -5, source: t}\n",
                                     "jit_conv_kernels.single_sample_max_input"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_engine_file_is_one_line_naming_file_and_field(capsys, tmp_path, case):
    text, needle = BAD[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    code, out, err = run(capsys, "predict", "mlp", "--engine", str(path))
    assert code == 2 and out == "", err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{case}.yaml" in err and needle in err, err


def test_unknown_engine_and_missing_file(capsys, tmp_path):
    code, _, err = run(capsys, "predict", "mlp", "--engine", "tensorrt")
    assert code == 2 and "unknown engine 'tensorrt'" in err and "reference" in err
    code, _, err = run(capsys, "predict", "mlp", "--engine", str(tmp_path / "none.yaml"))
    assert code == 2 and "none.yaml" in err and "not found" in err


def test_extends_cycle_is_refused(capsys, tmp_path):
    (tmp_path / "a.yaml").write_text(BASE + "extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text(BASE + "extends: ./a.yaml\n")
    code, _, err = run(capsys, "predict", "mlp", "--engine", str(tmp_path / "a.yaml"))
    assert code == 2 and "extends: forms a cycle" in err and "a.yaml" in err and err.count("\n") == 1
    (tmp_path / "self.yaml").write_text(BASE + "extends: self.yaml\n")
    with pytest.raises(EngineError, match="cycle"):
        load_engine(str(tmp_path / "self.yaml"))


# ---------------------------------------------------------------- the command line

def test_engine_flag_on_every_command(capsys):
    for args in (["predict", "mlp"], ["compare", "mlp"], ["fit", "mlp", "-d", "raspberry-pi-4b"],
                 ["sweep", "mlp", "-b", "1,8"]):
        code, out, err = run(capsys, *args, "--engine", EXAMPLE, "--json")
        assert code == 0, err
        doc = json.loads(out)
        assert doc["engine"] == "example" and doc["retention"] == "backward", args
        code, out, _ = run(capsys, *args, "--engine", EXAMPLE)
        assert code == 0 and "engine example" in out, args
    code, out, _ = run(capsys, "predict", "mlp", "--engine", EXAMPLE, "--json")
    m = json.loads(out)["memory"]
    assert m["process_peak_bytes"] == m["tensor_peak_bytes"] + m["runtime_bytes"] == m["peak_bytes"]
    # explicit knobs override the engine's
    code, out, _ = run(capsys, "predict", "mlp", "--engine", EXAMPLE, "--retention", "step", "--workspace", "1KiB",
                       "--json")
    doc = json.loads(out)
    assert doc["retention"] == "step" and doc["workspace_budget"] == 1024


def test_fit_compares_the_process_peak(capsys):
    code, out, _ = run(capsys, "fit", "mlp", "-d", "raspberry-pi-4b", "-S", "standard", "--engine", EXAMPLE, "--json")
    s = json.loads(out)["strategies"][0]
    assert s["memory"]["runtime_bytes"] > 0
    f = s["fit"]
    assert f["headroom_bytes"] == f["usable_bytes"] - s["memory"]["process_peak_bytes"]
    assert f["peak_bytes_at_max_batch"] <= f["usable_bytes"]


def test_engines_listing(capsys):
    code, out, _ = run(capsys, "engines", "--json")
    doc = json.loads(out)
    assert doc["default"] == "reference"
    assert {e["name"] for e in doc["engines"]} >= {"reference", "bnncost-trainer"}
    rules = {e["name"]: e["rules"] for e in doc["engines"]}
    assert sum(rules["reference"].values()) == 0
    pytorch = load_engine("pytorch")  # every section counts: lists by length, single rules once
    assert rules["pytorch"]["gemms"] == len(pytorch.gemms) > 0 and rules["pytorch"]["jit_conv_kernels"] == 1
    assert rules["pytorch"]["formats"] == len(pytorch.formats) and rules["larq"]["constants"] == len(
        load_engine("larq").constants) > 0
    code, out, _ = run(capsys, "engines")
    assert code == 0 and "bnncost-trainer" in out and "64.00 KiB" in out


def test_a_strategy_the_engine_was_not_measured_on_gets_a_note(capsys, tmp_path):
    """measured_strategies: predicting another strategy says so in one line on stderr (stdout, the JSON, unchanged);
    a measured strategy, or an engine of every strategy, says nothing; `engines` lists them; `extends` inherits."""
    code, out, err = run(capsys, "predict", "mlp", "--engine", "larq", "--json")
    assert code == 0 and json.loads(out)["engine"] == "larq"
    assert err == ("bnncost: note: the larq engine was measured on the standard strategy only: its proposed figures "
                   "are its rules in that strategy's formats, not checked by a measurement\n")
    for args in (("--engine", "larq", "--strategy", "standard"), ("--engine", "pytorch"), ()):
        code, _, err = run(capsys, "predict", "mlp", *args)
        assert code == 0 and "note" not in err, args
    code, _, err = run(capsys, "compare", "mlp", "--engine", "pytorch", "--ladder")
    assert code == 0 and err.count("bnncost: note:") == 1 and "ladder-1-binary-activations, ladder-2" in err
    code, out, _ = run(capsys, "engines", "--json")
    measured = {e["name"]: e["measured_strategies"] for e in json.loads(out)["engines"]}
    assert measured["larq"] == ["standard"] and measured["pytorch"] == ["standard", "proposed"]
    assert measured["reference"] is None and measured["bnncost-trainer"] is None
    child = tmp_path / "child.yaml"
    child.write_text("extends: larq\nname: child\n")
    assert load_engine(str(child)).measured_strategies == ("standard",)


def test_verify_uses_the_trainer_engine(capsys):
    code, out, err = run(capsys, "verify", "digits-mlp", "-b", "8", "--steps", "1", "--json")
    doc = json.loads(out)
    assert doc["engine"] == "bnncost-trainer" and doc["workspace_budget"] == 65536 and code == 0, err


@pytest.mark.parametrize("name", ["pytorch", EXAMPLE])
def test_largest_batch_is_exact_with_runtime_bytes(name):
    """Runtime bytes are a constant: the largest batch still solves peak(b) <= usable < peak(b + 1)."""
    eng = load_engine(name)
    plan = memory_plan(graph_of("cnv"), load_strategy("standard"), retention=eng.retention,
                       workspace_budget=eng.workspace.budget, engine=eng)
    assert plan.runtime_bytes(1) > 0
    for usable in (plan.peak_bytes(1)[0] - 1, 50 << 20, 300 << 20, 4 << 30):
        b = plan.max_batch(int(usable))
        if b:
            assert plan.peak_bytes(b)[0] <= usable
        assert plan.peak_bytes(b + 1)[0] > usable


def test_runtime_measured_on_another_cpu_gets_a_note(capsys, tmp_path):
    """runtime_measured_on: fit, predict, compare, sweep and summary with a device whose CPU is another arch (or,
    where the engine's runtime depends on it, another vendor) say in one line that the runtime bytes are the
    measured ones; the same CPU, an engine measured on none, or a device of unknown CPU say nothing."""
    code, out, err = run(capsys, "fit", "mlp", "--engine", "pytorch", "--device", "raspberry-pi-4b", "--json")
    assert code == 0 and json.loads(out)["engine"] == "pytorch" and err.count("\n") == 1
    assert err.startswith("bnncost: note: the pytorch engine's runtime bytes") and "raspberry-pi-4b's CPU is arm64" in err
    for cmd in (("predict", "mlp", "-d", "jetson-nano"), ("compare", "mlp", "-d", "jetson-nano"),
                ("sweep", "mlp", "-b", "8,16", "-d", "jetson-nano"), ("summary", "mlp", "-d", "jetson-nano")):
        code, _, err = run(capsys, *cmd, "--engine", "larq", "--strategies" if cmd[0] in ("compare", "sweep")
                           else "--strategy", "standard")
        assert code == 0 and err.count("runtime bytes") == 1 and "jetson-nano's CPU is arm64 (arm)" in err, cmd
    rpi = (Path(__file__).resolve().parents[1] / "hardware_profiles" / "raspberry-pi-4b.yaml").read_text()
    for vendor, noted in (("intel", {"pytorch-amd"}), ("amd", {"pytorch"}), (None, set())):
        box = tmp_path / f"box-{vendor}.yaml"
        line = "cpu: {arch: x86-64, " + (f"vendor: {vendor}, " if vendor else "") + 'source: "t"}'
        box.write_text(re.sub(r"^cpu: .*$", line, rpi, count=1, flags=re.M))
        assert load_device(str(box)).cpu.arch == "x86-64"
        for engine in ("pytorch", "pytorch-amd", "larq", "reference"):
            code, _, err = run(capsys, "fit", "mlp", "--engine", engine, "--device", str(box), "--strategies", "standard")
            assert code == 0 and ("runtime bytes" in err) == (engine in noted), (vendor, engine, err)
            if engine in noted:  # the other PyTorch engine was measured on this box's CPU: the note names it
                other = "pytorch" if engine == "pytorch-amd" else "pytorch-amd"
                assert f"--engine {other} was measured on such a CPU" in err, err
    code, _, err = run(capsys, "fit", "mlp", "--device", "raspberry-pi-4b")
    assert code == 0 and err == ""  # the reference engine keeps no runtime bytes
    child = tmp_path / "child.yaml"
    child.write_text("extends: pytorch\nname: child\n")
    assert load_engine(str(child)).runtime_measured_on.vendor == "intel"


def test_a_bad_runtime_cpu_is_one_line(capsys, tmp_path):
    bad = tmp_path / "bad-cpu.yaml"
    bad.write_text("extends: pytorch\nruntime_measured_on: {arch: mips, cpu: a router}\n")
    code, out, err = run(capsys, "predict", "mlp", "--engine", str(bad))
    assert code == 2 and out == "" and err.count("\n") == 1 and "bad-cpu.yaml" in err
    assert "runtime_measured_on.arch" in err and "Traceback" not in err
