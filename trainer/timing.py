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
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np
from pydantic import BaseModel

from bnncost.costmodel.strategy import Strategy, as_strategy
from bnncost.layers.graph import Graph, graph_of
from bnncost.layers.model import Model
from bnncost.trainer.base import DEFAULT_WORKSPACE
from bnncost.trainer.errors import TrainerError
from bnncost.trainer.network import Network
from bnncost.trainer.run import fixed_batch


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
    updates_s: dict[str, float]  # layer -> median seconds of its tensor's optimizer update
    update_loop_s: float = 0.0  # median over steps of the update event less its tensors' updates (the loop)


def time_steps(model: str | Model | Graph, strategy: str | Strategy, *, batch: int = 32, steps: int = 5,
               warmup: int = 1, workspace_budget: int = DEFAULT_WORKSPACE, retention: str = "step",
               seed: int = 0, clock: str = "cpu") -> StepTiming:
    """Run `warmup` + `steps` training steps on synthetic data and time every event of the timed ones."""
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
    for i in range(warmup + steps):
        current["on"] = i >= warmup
        current["name"] = None
        rules["s"] = 0.0
        seen = len(events.get("update", ()))
        w0, t0 = time.perf_counter(), now()
        loss, _ = net.train_step(X, idx, y)
        t1, w1 = now(), time.perf_counter()
        if current["on"]:
            events[current["name"]].append(t1 - current["t"])
            totals.append(t1 - t0)
            walls.append(w1 - w0)
            if len(events.get("update", ())) > seen:
                loops.append(events["update"][-1] - rules["s"])
        if not np.isfinite(loss):
            break  # a diverged step skips its backward: its time would not be a step's
    med = {k: float(np.median(v)) for k, v in events.items()}
    return StepTiming(model=graph.model.name, strategy=strat.name, batch=batch, steps=len(totals), warmup=warmup,
                      clock=clock, step_s=float(np.median(totals)) if totals else float("nan"),
                      wall_step_s=float(np.median(walls)) if walls else float("nan"), events_s=med,
                      updates_s={k: float(np.median(v)) for k, v in updates.items()},
                      update_loop_s=float(np.median(loops)) if loops else 0.0)


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def _timed_rule(fn, updates: dict[str, list[float]], current: dict, now, rules: dict):
    def timed(p):
        t0 = now()
        fn(p)
        if current["on"]:
            dt = now() - t0
            updates[p.layer].append(dt)
            rules["s"] += dt

    return timed
