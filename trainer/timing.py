"""Wall time of real training steps, event by event (what `calibrate` fits and `verify --device` checks).

A step's events are those of `layers.timeline` (forward:<layer>, backward:<layer>,
update, ...). The timer reads its clock whenever the ledger enters an event, so every event's time is the wall time from its start to the next
event's start: nothing of the step is left out, and the events' times add up
to the step's. The optimizer's `update` is also split per trainable tensor
(the optimizer's rule called for one tensor), so an update's time can be
attributed to the layer that owns the tensor.

Two clocks: `wall` (time.perf_counter) and `cpu` (time.process_time, the CPU
time of this process). The trainer is one Python thread (with BLAS limited to
one thread, as calibrate records), so on an idle machine the two agree; on a
machine other processes share, wall time also counts their turns on the cores
and cpu time does not. The step's wall time is always reported beside.

Steps are run after `warmup` untimed steps; each figure is the median over the
timed steps (a shared machine's interruptions land in a few steps, not in the
median). Nothing here knows the cost model: the figures are plain data.

The speed of a shared core is not constant. On a cloud VM whose core's other
hardware thread belongs to another tenant, CPU time of the same Python and numpy
work doubles and halves again every second or so (measured on this project's
2-core KVM host: a fixed Python loop took 2.1 to 2.5 ms or 4.4 to 5.0 ms, the two
states alternating, whether or not our other core was busy). CPU time cannot see
it: the process runs the whole time, only slower. So with `reference=True` a
*reference step* (one training step of REFERENCE_MODEL, a fixed tiny network) is
timed between every two timed steps: its time is the core's speed right then.
Each figure is then also kept relative to the reference steps around its step
(`relative`), and `at_reference(seconds)` gives the figures the steps would have
taken had the core run at the speed at which the reference step takes `seconds`
(calibrate's: the median over its whole run). The raw medians stay as measured.
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np
from pydantic import BaseModel

from bnncost.costmodel.strategy import Strategy, as_strategy
from bnncost.layers.graph import Graph, graph_of
from bnncost.layers.model import Model, parse_model
from bnncost.trainer.base import DEFAULT_WORKSPACE
from bnncost.trainer.errors import TrainerError
from bnncost.trainer.network import Network
from bnncost.trainer.run import fixed_batch


REFERENCE_MODEL = {  # the reference step: Python dispatch, numpy elementwise work and small products, as a step
    "name": "reference-step", "input": [64],
    "layers": [{"dense": {"units": 64}}, {"batchnorm": {}}, {"sign": {}}, {"dense": {"units": 10}},
               {"batchnorm": {}}, {"softmax_ce": {}}]}
REFERENCE_STRATEGY, REFERENCE_BATCH = "standard", 8


class RelativeTiming(BaseModel):
    """The step's figures in reference steps: for each timed step, its figure over the mean of the reference
    steps timed just before and just after it; the median over the steps."""

    step: float
    events: dict[str, float]
    updates: dict[str, float]
    update_loop: float = 0.0


class StepTiming(BaseModel):
    """Median seconds of one training step, per event and per trainable tensor's update."""

    model: str
    strategy: str
    batch: int
    steps: int
    warmup: int
    clock: str  # "cpu" or "wall": what every figure but wall_step_s counts
    step_s: float
    wall_step_s: float
    events_s: dict[str, float]  # event name -> median seconds
    updates_s: dict[str, float]  # layer -> median over steps of its tensors' optimizer updates (kernel + bias)
    update_loop_s: float = 0.0  # median over steps of the update event less its tensors' updates (the loop)
    reference_s: float | None = None  # median time of the reference steps timed between the steps
    relative: RelativeTiming | None = None  # the figures in reference steps (with reference=True)

    def at_reference(self, reference_s: float) -> "StepTiming":
        """The figures at the core speed where the reference step takes `reference_s` (wall_step_s stays raw)."""
        if self.relative is None:
            raise TrainerError("these steps were timed without reference steps")
        r = self.relative
        return self.model_copy(update={
            "step_s": r.step * reference_s, "events_s": {k: v * reference_s for k, v in r.events.items()},
            "updates_s": {k: v * reference_s for k, v in r.updates.items()},
            "update_loop_s": r.update_loop * reference_s})


def time_steps(model: str | Model | Graph, strategy: str | Strategy, *, batch: int = 32, steps: int = 5,
               warmup: int = 1, workspace_budget: int = DEFAULT_WORKSPACE, retention: str = "step",
               seed: int = 0, clock: str = "cpu", reference: bool = False) -> StepTiming:
    """Run `warmup` + `steps` training steps on synthetic data and time every event of the timed ones
    (with `reference`, a reference step before the first timed step and after each one)."""
    if batch < 1 or steps < 1 or warmup < 0:
        raise TrainerError("batch and steps must be >= 1, warmup >= 0")
    if clock not in CLOCKS:
        raise TrainerError(f"clock must be one of {', '.join(CLOCKS)}, not {clock!r}")
    now = CLOCKS[clock]
    graph, strat = graph_of(model), as_strategy(strategy)
    X, y, idx = fixed_batch(graph, strat, batch, "synthetic", seed)
    net = Network(graph, strat, retention=retention, workspace_budget=workspace_budget, seed=seed)
    events: dict[str, list[float]] = defaultdict(list)
    updates: dict[str, list[float]] = defaultdict(list)
    totals: list[float] = []
    loops: list[float] = []  # per step: the update event less the time of its tensors' rules
    rules = {"s": 0.0}  # the rules' time in the current step
    walls: list[float] = []
    current = {"name": None, "t": 0.0, "on": False}
    ledger_event = net.ledger.event

    def enter(name: str) -> None:
        t = now()
        if current["on"] and current["name"] is not None:
            events[current["name"]].append(t - current["t"])
        current["name"], current["t"] = name, t
        ledger_event(name)

    net.ledger.event = enter  # the step's ledger calls it at every event
    opt = net.optimizer
    for p in net.params:  # wrap each rule once: time per trainable tensor
        rule = "_" + opt.rule(p)
        if rule not in vars(opt):
            setattr(opt, rule, _timed_rule(getattr(opt, rule), updates, current, now, rules))
    ref_step = _reference_step(seed) if reference else None
    refs: list[float] = []  # reference step times: one before the first timed step, one after each
    step_events: list[dict[str, float]] = []  # per timed step: event -> seconds
    step_updates: list[dict[str, float]] = []  # per timed step: layer -> seconds of its tensors' rules
    for i in range(warmup + steps):
        current["on"] = i >= warmup
        current["name"] = None
        rules["s"] = 0.0
        seen = len(events.get("update", ()))
        if ref_step is not None and i == warmup:
            refs.append(_timed(ref_step, now))
        marks = {k: len(v) for k, v in events.items()}, {k: len(v) for k, v in updates.items()}
        w0, t0 = time.perf_counter(), now()
        loss, _ = net.train_step(X, idx, y)
        t1, w1 = now(), time.perf_counter()
        if current["on"]:
            events[current["name"]].append(t1 - current["t"])
            totals.append(t1 - t0)
            walls.append(w1 - w0)
            if len(events.get("update", ())) > seen:
                loops.append(events["update"][-1] - rules["s"])
            step_events.append(_since(events, marks[0]))
            step_updates.append(_since(updates, marks[1]))
            if ref_step is not None:
                refs.append(_timed(ref_step, now))
        if not np.isfinite(loss):
            break  # a diverged step skips its backward: its time would not be a step's
    med = {k: float(np.median(v)) for k, v in events.items()}
    relative = None
    if refs and totals:
        around = [(a + b) / 2 for a, b in zip(refs, refs[1:])]  # the core's speed during each timed step
        relative = RelativeTiming(
            step=float(np.median([t / r for t, r in zip(totals, around)])),
            events=_relative_medians(step_events, around), updates=_relative_medians(step_updates, around),
            update_loop=float(np.median([t / r for t, r in zip(loops, around)])) if len(loops) == len(totals)
            else 0.0)
    return StepTiming(model=graph.model.name, strategy=strat.name, batch=batch, steps=len(totals), warmup=warmup,
                      clock=clock, step_s=float(np.median(totals)) if totals else float("nan"),
                      wall_step_s=float(np.median(walls)) if walls else float("nan"), events_s=med,
                      updates_s={k: float(np.median([d[k] for d in step_updates if k in d])) for k in updates},
                      update_loop_s=float(np.median(loops)) if loops else 0.0,
                      reference_s=float(np.median(refs)) if refs else None, relative=relative)


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def _reference_step(seed: int):
    """The reference step, built and run once (its first step allocates): a function timing nothing."""
    graph = graph_of(parse_model(REFERENCE_MODEL, "<reference step>"))
    strat = as_strategy(REFERENCE_STRATEGY)
    X, y, idx = fixed_batch(graph, strat, REFERENCE_BATCH, "synthetic", seed)
    net = Network(graph, strat, workspace_budget=DEFAULT_WORKSPACE, seed=seed)
    net.train_step(X, idx, y)
    return lambda: net.train_step(X, idx, y)


def _timed(fn, now) -> float:
    t0 = now()
    fn()
    return now() - t0


def _since(series: dict[str, list[float]], marks: dict[str, int]) -> dict[str, float]:
    """What one step added to each series (an event seen twice in a step: its times summed)."""
    return {k: float(sum(v[marks.get(k, 0):])) for k, v in series.items() if len(v) > marks.get(k, 0)}


def _relative_medians(per_step: list[dict[str, float]], around: list[float]) -> dict[str, float]:
    keys = {k for d in per_step for k in d}
    return {k: float(np.median([d[k] / r for d, r in zip(per_step, around) if k in d])) for k in keys}


def _timed_rule(fn, updates: dict[str, list[float]], current: dict, now, rules: dict):
    def timed(p):
        t0 = now()
        fn(p)
        if current["on"]:
            dt = now() - t0
            updates[p.layer].append(dt)
            rules["s"] += dt

    return timed
