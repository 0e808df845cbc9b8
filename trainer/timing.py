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
timed between every two timed steps, and between the events of a step longer
than REFERENCE_INTERVAL_S: its time is the core's speed right then. Each figure
is then also kept relative to the reference steps around it (`relative`), and
`at_reference(seconds)` gives the figures the steps would have taken had the
core run at the speed at which the reference step takes `seconds` (calibrate's:
the median over its whole run). The raw medians stay as measured.
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
REFERENCE_INTERVAL_S = 0.05  # a step longer than this reads the core's speed again between its events


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
    (with `reference`, a reference step before the first timed step, after each one, and between the events
    of a step once REFERENCE_INTERVAL_S has passed since the last one)."""
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
    current = {"name": None, "t": 0.0, "on": False, "step": -1}
    ledger_event = net.ledger.event
    ref = _Reference(_reference_step(seed), now) if reference else None

    def enter(name: str) -> None:
        t = now()
        if current["on"] and current["name"] is None and ref is not None:
            ref.add(current["step"], "before", "", t - current["t"])  # the step's call before its first event
        if current["on"] and current["name"] is not None:
            events[current["name"]].append(t - current["t"])
            if ref is not None:
                ref.add(current["step"], "events", current["name"], t - current["t"])
                if ref.due():  # a long step: the core's speed is read again between two of its events
                    ref.run()
                    t = now()
        current["name"], current["t"] = name, t
        ledger_event(name)

    def rule_done(layer: str, dt: float) -> None:
        updates[layer].append(dt)
        rules["s"] += dt
        if ref is not None:
            ref.add(current["step"], "updates", layer, dt)

    net.ledger.event = enter  # the step's ledger calls it at every event
    opt = net.optimizer
    for p in net.params:  # wrap each rule once: time per trainable tensor
        rule = "_" + opt.rule(p)
        if rule not in vars(opt):
            setattr(opt, rule, _timed_rule(getattr(opt, rule), current, now, rule_done))
    step_updates: list[dict[str, float]] = []  # per timed step: layer -> seconds of its tensors' rules
    for i in range(warmup + steps):
        current["on"] = i >= warmup
        current["name"] = None
        current["step"] = i - warmup
        rules["s"] = 0.0
        seen = len(events.get("update", ()))
        if ref is not None and i == warmup:
            ref.run()
        if ref is not None:
            ref.in_step = [0.0, 0.0]
        marks = {k: len(v) for k, v in updates.items()}
        w0, t0 = time.perf_counter(), now()
        current["t"] = t0
        loss, _ = net.train_step(X, idx, y)
        t1, w1 = now(), time.perf_counter()
        if current["on"]:
            last = t1 - current["t"]
            events[current["name"]].append(last)
            inside = ref.in_step if ref is not None else [0.0, 0.0]  # reference steps run inside this step
            totals.append(t1 - t0 - inside[0])
            walls.append(w1 - w0 - inside[1])
            step_updates.append(_since(updates, marks))
            if ref is not None:
                ref.add(current["step"], "events", current["name"], last)
            if len(events.get("update", ())) > seen:
                loops.append(events["update"][-1] - rules["s"])
                if ref is not None:
                    ref.add(current["step"], "loop", "", loops[-1])
            if ref is not None:
                ref.run()
        if not np.isfinite(loss):
            break  # a diverged step skips its backward: its time would not be a step's
    med = {k: float(np.median(v)) for k, v in events.items()}
    return StepTiming(model=graph.model.name, strategy=strat.name, batch=batch, steps=len(totals), warmup=warmup,
                      clock=clock, step_s=float(np.median(totals)) if totals else float("nan"),
                      wall_step_s=float(np.median(walls)) if walls else float("nan"), events_s=med,
                      updates_s={k: float(np.median([d[k] for d in step_updates if k in d])) for k in updates},
                      update_loop_s=float(np.median(loops)) if loops else 0.0,
                      reference_s=float(np.median(ref.times)) if ref is not None and ref.times else None,
                      relative=ref.relative(len(totals), len(loops) == len(totals)) if ref is not None and totals
                      else None)


class _Reference:
    """Reference steps between the timed steps (and between the events of a step longer than
    REFERENCE_INTERVAL_S): every figure timed between two reference steps is kept over their mean."""

    def __init__(self, step, now):
        self.step, self.now = step, now
        self.times: list[float] = []
        self.last = 0.0  # clock reading when the last reference step ended
        self.pending: list[tuple[int, str, str, float]] = []  # (timed step, series, key, seconds) since then
        self.per_step: dict[int, dict[str, dict[str, float]]] = defaultdict(
            lambda: {series: defaultdict(float) for series in ("events", "updates", "loop", "before")})
        self.in_step = [0.0, 0.0]  # CPU (of the clock) and wall seconds of reference steps inside the step

    def due(self) -> bool:
        return self.now() - self.last >= REFERENCE_INTERVAL_S

    def add(self, step: int, series: str, key: str, seconds: float) -> None:
        self.pending.append((step, series, key, seconds))

    def run(self) -> None:
        w0, t0 = time.perf_counter(), self.now()
        self.step()
        t1 = self.now()
        self.in_step[0] += t1 - t0
        self.in_step[1] += time.perf_counter() - w0
        if self.times:
            around = (self.times[-1] + t1 - t0) / 2  # the core's speed between the two reference steps
            for step, series, key, sec in self.pending:
                self.per_step[step][series][key] += sec / around
        self.pending = []
        self.times.append(t1 - t0)
        self.last = t1

    def relative(self, steps: int, with_loop: bool) -> RelativeTiming:
        per = [self.per_step[i] for i in range(steps)]

        def medians(series: str) -> dict[str, float]:
            keys = {k for d in per for k in d[series]}
            return {k: float(np.median([d[series][k] for d in per if k in d[series]])) for k in keys}

        return RelativeTiming(step=float(np.median([sum(d["events"].values()) + d["before"][""] for d in per])),
                              events=medians("events"), updates=medians("updates"),
                              update_loop=medians("loop").get("", 0.0) if with_loop else 0.0)


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def _reference_step(seed: int):
    """The reference step, built and run once (its first step allocates): a function timing nothing."""
    graph = graph_of(parse_model(REFERENCE_MODEL, "<reference step>"))
    strat = as_strategy(REFERENCE_STRATEGY)
    X, y, idx = fixed_batch(graph, strat, REFERENCE_BATCH, "synthetic", seed)
    net = Network(graph, strat, workspace_budget=DEFAULT_WORKSPACE, seed=seed)
    net.train_step(X, idx, y)
    return lambda: net.train_step(X, idx, y)


def _since(series: dict[str, list[float]], marks: dict[str, int]) -> dict[str, float]:
    """What one step added to each series (an event seen twice in a step: its times summed)."""
    return {k: float(sum(v[marks.get(k, 0):])) for k, v in series.items() if len(v) > marks.get(k, 0)}


def _timed_rule(fn, current: dict, now, done):
    def timed(p):
        t0 = now()
        fn(p)
        if current["on"]:
            done(p.layer, now() - t0)

    return timed
