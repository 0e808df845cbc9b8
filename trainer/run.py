"""Training runs and measured steps: the trainer's library API (results are pydantic objects).

- `train(...)` trains a model with a strategy on a dataset and returns a
  TrainingResult: accuracies, losses, the ledger of the first full step
  (per-variable bytes, peak and its event), its operation counts, the
  process-level peak (tracemalloc) of that step and the time per step.
- `run_steps(...)` runs N steps on fixed batches and returns the same
  measurements without training for accuracy: what `verify` compares with the
  cost model.

The process peak is measured with tracemalloc around the first step, which
starts before the network allocates its persistent buffers, so the traced
memory at the peak holds the weights, the optimizer state and everything the
step allocates, plus numpy's temporaries and small Python objects (the
dataset, loaded before tracing, is not in it). Later steps run untraced (and
are the ones timed: `seconds_per_step` is their median wall time).
"""

from __future__ import annotations

import math
import time
import tracemalloc
from typing import Callable

import numpy as np
from pydantic import BaseModel

from bnncost.costmodel.strategy import Strategy, as_strategy
from bnncost.layers.graph import Graph, graph_of
from bnncost.layers.model import Model
from bnncost.trainer import codec
from bnncost.trainer.base import DEFAULT_WORKSPACE
from bnncost.trainer.checkpoint import (load_checkpoint, model_fingerprint,
                                        prepare_checkpoint_path, save_checkpoint, strategy_fingerprint)
from bnncost.trainer.datasets import Dataset, load_dataset
from bnncost.trainer.errors import TrainerError, TrainingDiverged
from bnncost.trainer.network import Network

TRAINING_SCHEMA = "bnncost.training/2"
DEFAULT_LR = 0.01


class LedgerEntry(BaseModel):
    name: str
    layer: str
    role: str
    format: str
    shape: list[int]
    bytes: int
    alloc_event: str
    free_event: str


class OpEntry(BaseModel):
    layer: str
    phase: str
    kind: str
    format: str
    count: int


class StepMeasurement(BaseModel):
    """What one measured training step held and did."""

    model: str
    strategy: str
    batch_size: int
    retention: str
    workspace_budget: int
    ledger_peak_bytes: int
    ledger_peak_event: str
    ledger: list[LedgerEntry]
    ops: list[OpEntry]
    process_peak_bytes: int
    seconds_per_step: float | None  # None: a single step, nothing timed after the measured one
    losses: list[float]

    def measurement(self) -> dict:
        """The fields of costmodel.verification.Measurement, as plain data (the trainer does not import it)."""
        return {
            "variables": [{"name": r.name, "layer": r.layer, "role": r.role, "format": r.format,
                           "bytes": r.bytes, "alloc_event": r.alloc_event, "free_event": r.free_event}
                          for r in self.ledger],
            "ledger_peak_bytes": self.ledger_peak_bytes, "ledger_peak_event": self.ledger_peak_event,
            "process_peak_bytes": self.process_peak_bytes,
            "ops": {(o.layer, o.phase, o.kind, o.format): o.count for o in self.ops},
        }


class EpochReport(BaseModel):
    epoch: int
    epochs: int
    train_loss: float
    train_accuracy: float
    test_accuracy: float | None  # None: the dataset has no test samples
    seconds: float
    samples_per_second: float


class TrainingResult(BaseModel):
    model: str
    strategy: str
    dataset: str
    epochs: int
    batch_size: int
    lr: float
    seed: int
    retention: str
    workspace_budget: int
    steps: int
    test_accuracy: float | None  # None: the dataset has no test samples
    train_loss: list[float]
    train_accuracy: list[float]
    test_accuracy_per_epoch: list[float | None]
    ledger_peak_bytes: int
    ledger_peak_event: str
    process_peak_bytes: int
    seconds_per_step: float | None  # None: a single step, nothing timed after the measured one
    ledger: list[LedgerEntry]
    ops: list[OpEntry]
    resumed_from_epoch: int | None = None

    def to_json(self) -> dict:
        """The JSON reference's shape: `batch`, and what the trainer measured under `measured`."""
        doc = self.model_dump(exclude={"batch_size", "ledger_peak_bytes", "ledger_peak_event",
                                       "process_peak_bytes", "ledger", "ops"})
        return {"schema": TRAINING_SCHEMA, "model": doc.pop("model"), "strategy": doc.pop("strategy"),
                "batch": self.batch_size, **doc,
                **({"test_accuracy_note": "the dataset has no test samples"} if self.test_accuracy is None else {}),
                "measured": {"peak_bytes": self.ledger_peak_bytes, "peak_event": self.ledger_peak_event,
                             "process_peak_bytes": self.process_peak_bytes,
                             "variables": [r.model_dump() for r in self.ledger],
                             "ops": [o.model_dump() for o in self.ops]}}


def _ledger_entries(net: Network) -> list[LedgerEntry]:
    return [LedgerEntry(name=r.name, layer=r.layer, role=r.role, format=r.format, shape=list(r.shape),
                        bytes=r.bytes, alloc_event=r.alloc, free_event=r.free) for r in net.ledger.rows]


def _op_entries(net: Network) -> list[OpEntry]:
    return [OpEntry(**r) for r in net.counter.rows()]


class _Tracer:
    """tracemalloc around network creation and the first step (left running if it already was)."""

    def __init__(self):
        self.owner = not tracemalloc.is_tracing()
        if self.owner:
            tracemalloc.start()

    def peak_of(self, fn):
        tracemalloc.reset_peak()
        out = fn()
        return out, tracemalloc.get_traced_memory()[1]

    def stop(self):
        if self.owner and tracemalloc.is_tracing():
            tracemalloc.stop()
            self.owner = False


def fixed_batch(graph: Graph, strat: Strategy, batch: int, dataset: str = "synthetic",
                seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One batch of `batch` samples (the dataset repeated if it is smaller), held in the input format:
    (X, labels, indices) for Network.train_step, the same batch every step."""
    ds = load_dataset(dataset, graph.model.input, graph.output_shape[0], seed)
    fmt = strat.format_of("input")
    codec.check_holdable(fmt, f"strategy {strat.name}: role input")
    reps = -(-batch // len(ds.x_train))
    X = codec.encode(np.concatenate([ds.x_train] * reps)[: batch], fmt)
    y = np.concatenate([ds.y_train] * reps)[: batch]
    return X, y, np.arange(batch)


# A loss this many times that of guessing uniformly (ln of the number of classes) is not training: it has
# exploded, even while it is still a finite number.
EXPLODING = 100


def run_steps(model: str | Model | Graph, strategy: str | Strategy, *, batch: int = 32, steps: int = 2,
              retention: str = "step", workspace_budget: int = DEFAULT_WORKSPACE, dataset: str = "synthetic",
              seed: int = 0, lr: float = DEFAULT_LR,
              on_event: Callable[[int, int], None] | None = None) -> StepMeasurement:
    """Run `steps` training steps of `batch` samples and measure the first (ledger, ops, tracemalloc).

    `on_event(done, total)` is told each event of each step as the trainer reaches it (a progress bar)."""
    if batch < 1 or steps < 1:
        raise TrainerError("batch and steps must be >= 1")
    graph, strat = graph_of(model), as_strategy(strategy)
    X, y, idx = fixed_batch(graph, strat, batch, dataset, seed)
    tracer = _Tracer()
    try:
        net = Network(graph, strat, retention=retention, workspace_budget=workspace_budget, seed=seed, lr=lr)
        if on_event is not None:
            total, done = steps * len(net.ledger.events), [0]

            def tick(_event: str) -> None:
                done[0] = min(done[0] + 1, total)
                on_event(done[0], total)

            net.ledger.on_event = tick
        (loss, _), peak = tracer.peak_of(lambda: net.train_step(X, idx, y))
    finally:
        tracer.stop()
    ledger, ops = _ledger_entries(net), _op_entries(net)
    led_peak, led_event = net.ledger.peak()
    losses, times = [loss], []
    for _ in range(steps - 1):
        t0 = time.perf_counter()
        loss, _ = net.train_step(X, idx, y)
        times.append(time.perf_counter() - t0)
        losses.append(loss)
    return StepMeasurement(
        model=graph.model.name, strategy=strat.name, batch_size=batch, retention=retention,
        workspace_budget=workspace_budget, ledger_peak_bytes=led_peak, ledger_peak_event=led_event,
        ledger=ledger, ops=ops,
        process_peak_bytes=int(peak), seconds_per_step=float(np.median(times)) if times else None,
        losses=[float(v) for v in losses])


def train(model: str | Model | Graph, strategy: str | Strategy = "proposed", *, dataset: str = "digits",
          epochs: int = 20, batch: int = 64, lr: float | None = None, seed: int = 0, retention: str = "step",
          workspace_budget: int = DEFAULT_WORKSPACE, on_epoch: Callable[[EpochReport], None] | None = None,
          on_step: Callable[[int, int, float], None] | None = None, save: str | None = None,
          resume: str | None = None, bop_gamma: float = 1e-3, bop_threshold: float = 1e-6) -> TrainingResult:
    """Train `model` with `strategy` on `dataset`; see the module docstring for what is measured.

    `epochs` is the total: resuming from a checkpoint written after epoch k
    trains epochs k+1..epochs. `save` writes a checkpoint after every epoch.
    A NaN or infinite loss raises TrainingDiverged (the last checkpoint stays).
    `on_step(step_in_epoch, steps_in_epoch, loss)` and `on_epoch(report)` report progress.
    """
    if epochs < 1 or batch < 1:
        raise TrainerError("epochs and batch must be >= 1")
    lr = DEFAULT_LR if lr is None else float(lr)
    graph, strat = graph_of(model), as_strategy(strategy)
    ds: Dataset = load_dataset(dataset, graph.model.input, graph.output_shape[0], seed)
    fmt = strat.format_of("input")
    codec.check_holdable(fmt, f"strategy {strat.name}: role input")
    X, Xt = codec.encode(ds.x_train, fmt), codec.encode(ds.x_test, fmt)
    y, yt = ds.y_train, ds.y_test
    n = len(X)
    shuffle = np.random.default_rng(seed)
    history = {"train_loss": [], "train_accuracy": [], "test_accuracy": []}
    start_epoch = 0
    meta = None
    if save is not None:
        prepare_checkpoint_path(save)
    tracer = _Tracer()
    try:
        net = Network(graph, strat, retention=retention, workspace_budget=workspace_budget, seed=seed, lr=lr,
                      bop_gamma=bop_gamma, bop_threshold=bop_threshold)
        if resume is not None:
            meta, arrays = load_checkpoint(resume, net.state(), graph, strat)
            net.load_state(arrays)
            net.optimizer.t = int(meta["adam_t"])
            net.steps = int(meta["steps"])
            shuffle.bit_generator.state = meta["rng_state"]
            start_epoch = int(meta["epoch"])
            history = {k: list(meta["history"][k]) for k in history}
            del arrays
        if start_epoch >= epochs:
            raise TrainerError(f"{resume}: checkpoint has already done {start_epoch} epochs (asked for {epochs})")
        measured = None
        explodes = EXPLODING * math.log(graph.output_shape[0])
        times: list[float] = []
        last_good = resume  # the newest checkpoint known good: the one resumed from, then each one saved
        for epoch in range(start_epoch, epochs):
            perm = shuffle.permutation(n)
            t_epoch = time.perf_counter()
            losses, correct = [], 0
            n_steps = -(-n // batch)
            for s_i, b0 in enumerate(range(0, n, batch)):
                idx = perm[b0:b0 + batch]
                if measured is None:
                    (loss, c), peak = tracer.peak_of(lambda: net.train_step(X, idx, y[idx]))
                    tracer.stop()
                    measured = (peak, _ledger_entries(net), _op_entries(net), net.ledger.peak())
                else:
                    t0 = time.perf_counter()
                    loss, c = net.train_step(X, idx, y[idx])
                    times.append(time.perf_counter() - t0)
                if not math.isfinite(loss) or loss > explodes:
                    raise TrainingDiverged(net.steps + 1, epoch + 1, loss, str(last_good) if last_good else None,
                                           None if not math.isfinite(loss) else
                                           f"loss {loss:.4g} exceeds {EXPLODING:g} x that of guessing ({explodes:.4g})")
                losses.append(loss)
                correct += c
                if on_step is not None:
                    on_step(s_i + 1, n_steps, loss)
            seconds = time.perf_counter() - t_epoch
            bad = next((k for k, a in net.state().items() if a.dtype.kind == "f" and not np.isfinite(a).all()), None)
            if bad is not None:
                raise TrainingDiverged(net.steps, epoch + 1, losses[-1], str(last_good) if last_good else None,
                                       f"{bad} holds non-finite values")
            test_acc = float((net.predict(Xt) == yt).mean()) if len(Xt) else None
            history["train_loss"].append(float(np.mean(losses)))
            history["train_accuracy"].append(correct / n)
            history["test_accuracy"].append(test_acc)
            if save is not None:
                save_checkpoint(save, net.state(), {
                    "model": graph.model.name, "strategy": strat.name,
                    "model_fingerprint": model_fingerprint(graph), "strategy_fingerprint": strategy_fingerprint(strat),
                    "epoch": epoch + 1, "steps": net.steps, "adam_t": net.optimizer.t,
                    "rng_state": shuffle.bit_generator.state, "history": history,
                    "dataset": dataset, "batch": batch, "lr": lr, "seed": seed})
                last_good = save
            if on_epoch is not None:
                on_epoch(EpochReport(epoch=epoch + 1, epochs=epochs, train_loss=history["train_loss"][-1],
                                     train_accuracy=history["train_accuracy"][-1], test_accuracy=test_acc,
                                     seconds=seconds, samples_per_second=n / seconds if seconds > 0 else 0.0))
    finally:
        tracer.stop()
    peak, ledger, ops, (led_peak, led_event) = measured
    return TrainingResult(
        model=graph.model.name, strategy=strat.name, dataset=dataset, epochs=epochs, batch_size=batch, lr=lr,
        seed=seed, retention=retention, workspace_budget=workspace_budget, steps=net.steps,
        test_accuracy=history["test_accuracy"][-1], train_loss=history["train_loss"],
        train_accuracy=history["train_accuracy"], test_accuracy_per_epoch=history["test_accuracy"],
        ledger_peak_bytes=led_peak, ledger_peak_event=led_event, process_peak_bytes=int(peak),
        seconds_per_step=float(np.median(times)) if times else None,
        ledger=ledger, ops=ops, resumed_from_epoch=start_epoch if resume is not None else None)
