"""Laws of the memory model, over random valid models and batch sizes (hypothesis)."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bnncost.costmodel import load_strategy, memory_plan
from bnncost.layers import build_graph, parse_model

STANDARD, PROPOSED = load_strategy("standard"), load_strategy("proposed")


@st.composite
def models(draw):
    layers = []
    if draw(st.booleans()):  # convolutional front
        hw = draw(st.integers(4, 12))
        shape = [hw, hw, draw(st.integers(1, 4))]
        for i in range(draw(st.integers(1, 3))):
            k = draw(st.sampled_from([1, 3]))
            layers.append({"conv2d": {"filters": draw(st.integers(1, 20)), "kernel": k, "padding": "same",
                                      "binary": i > 0 or draw(st.booleans())}})
            layers += [{"batchnorm": {}}, {draw(st.sampled_from(["sign", "relu"])): {}}]
            if draw(st.booleans()):
                f = draw(st.integers(1, 20))
                layers.append({"residual": {
                    "body": [{"sign": {}}, {"conv2d": {"filters": f, "kernel": 3, "padding": "same"}},
                             {"batchnorm": {}}],
                    "shortcut": [{"conv2d": {"filters": f, "kernel": 1, "binary": False}}, {"batchnorm": {}}],
                }})
            if hw >= 4 and draw(st.booleans()):
                layers.append({draw(st.sampled_from(["maxpool", "avgpool"])): {"size": 2}})
                hw //= 2
        layers.append({"flatten": {}} if draw(st.booleans()) else {"global_avgpool": {}})
    else:
        shape = [draw(st.integers(1, 40))]
    for _ in range(draw(st.integers(0, 3))):
        layers += [{"dense": {"units": draw(st.integers(1, 70))}}, {"batchnorm": {}}, {"sign": {}}]
    layers += [{"dense": {"units": draw(st.integers(2, 12))}}, {"batchnorm": {}}, {"softmax_ce": {}}]
    return build_graph(parse_model({"input": shape, "layers": layers}, "random"))


def direct_peak(plan, batch):
    """Peak by summing every live variable at every event: no coefficients, no cumulative sums."""
    best = (-1, -1)
    for e in range(len(plan.events)):
        live = sum(v.bytes_at(batch) for v in plan.variables if v.alloc <= e <= v.free)
        if live > best[0]:
            best = (live, e)
    return best


KNOBS = st.fixed_dictionaries({
    "retention": st.sampled_from(["step", "backward"]),
    "workspace_budget": st.sampled_from([0, 1, 512, 65536]),
})
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(models(), st.integers(1, 300), KNOBS)
def test_affine_form_equals_direct_evaluation(graph, batch, knobs):
    for strategy in (STANDARD, PROPOSED):
        plan = memory_plan(graph, strategy, **knobs)
        peak, event, fixed, per = plan.peak(batch)
        assert (peak, event) == direct_peak(plan, batch)
        assert fixed + per * batch == peak
        # the same formula holds at any other batch whose peak is on the same event and regime
        for other in (batch + 1, batch * 2):
            p2, e2, f2, s2 = plan.peak(other)
            if e2 == event and (f2, s2) == (fixed, per):
                assert fixed + per * other == p2 == direct_peak(plan, other)[0]


@SETTINGS
@given(models(), st.integers(1, 200), st.integers(1, 200), KNOBS)
def test_peak_never_decreases_with_batch(graph, b1, b2, knobs):
    lo, hi = sorted((b1, b2))
    for strategy in (STANDARD, PROPOSED):
        plan = memory_plan(graph, strategy, **knobs)
        assert plan.peak(lo)[0] <= plan.peak(hi)[0]


@SETTINGS
@given(models(), st.integers(1, 300), KNOBS)
def test_proposed_never_above_standard(graph, batch, knobs):
    assert memory_plan(graph, PROPOSED, **knobs).peak(batch)[0] <= memory_plan(graph, STANDARD, **knobs).peak(batch)[0]


@SETTINGS
@given(models(), st.integers(1, 300), st.sampled_from([0, 4096]))
def test_backward_retention_never_above_step(graph, batch, budget):
    for strategy in (STANDARD, PROPOSED):
        step = memory_plan(graph, strategy, retention="step", workspace_budget=budget).peak(batch)[0]
        back = memory_plan(graph, strategy, retention="backward", workspace_budget=budget).peak(batch)[0]
        assert back <= step


@SETTINGS
@given(models(), st.integers(10_000, 50_000_000), KNOBS)
def test_max_batch_is_the_largest_batch_that_fits(graph, budget, knobs):
    plan = memory_plan(graph, PROPOSED, **knobs)
    b = plan.max_batch(budget)
    if b == 0:
        assert direct_peak(plan, 1)[0] > budget
    else:
        assert direct_peak(plan, b)[0] <= budget < direct_peak(plan, b + 1)[0]
