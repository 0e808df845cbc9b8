"""The bundled trainer's operators, timed on calibration networks, and their costs fitted.

nn-Meter's approach (MobiSys 2021): time kernels, not whole networks. Every
layer event of a few calibration networks (their shapes spread like real
BNNs': dense layers of 10 to 512 units over 96 to 2048 inputs, first layers
over 96, 256 and 1024, 3x3 convs of 8 to 256 filters on 4x4 to 28x28 maps,
stems of 3 channels and 8 to 32 filters, 1x1 shortcuts, every pooling, a
residual join), under each strategy, at a few batch sizes, is one sample:
its median time (trainer.timing, at the calibration's core speed) against the units of each mechanism
costmodel.timing counts for it. For each operator (kind, variant, event,
formats), the per-call cost and the per-unit costs are the non-negative
least-squares fit over its samples, each weighted by 1 / its time (relative
error). These networks are not the zoo's: the zoo is what the fit is checked on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bnncost.costmodel.strategy import as_strategy
from bnncost.costmodel.timing import OperatorWork, measured_seconds, operator_work
from bnncost.layers.graph import graph_of
from bnncost.layers.model import parse_model
from bnncost.trainer.base import DEFAULT_WORKSPACE
from bnncost.trainer.network import check_strategy
from bnncost.trainer.timing import StepTiming, time_steps
from bnncost.trainer.errors import TrainerError

_BN_SIGN = [{"batchnorm": {}}, {"sign": {}}]
NETWORKS = [
    {"name": "calibration-mlp", "input": [256], "layers": [
        {"dense": {"units": 200}}, *_BN_SIGN, {"dense": {"units": 512}}, *_BN_SIGN,
        {"dense": {"units": 128}}, *_BN_SIGN, {"dense": {"units": 10}}, {"batchnorm": {}}, {"softmax_ce": {}}]},
    {"name": "calibration-cnn", "input": [16, 16, 3], "layers": [
        {"conv2d": {"filters": 32, "kernel": 3, "padding": "same"}}, *_BN_SIGN,
        {"conv2d": {"filters": 64, "kernel": 3, "padding": "same"}}, {"maxpool": {"size": 2}}, *_BN_SIGN,
        {"conv2d": {"filters": 64, "kernel": 3}}, *_BN_SIGN, {"flatten": {}},
        {"dense": {"units": 64}}, *_BN_SIGN, {"dense": {"units": 10}}, {"batchnorm": {}}, {"softmax_ce": {}}]},
    {"name": "calibration-residual", "input": [16, 16, 8], "layers": [
        {"conv2d": {"filters": 16, "kernel": 3, "padding": "same", "binary": False}}, {"batchnorm": {}},
        {"relu": {}}, {"maxpool": {"size": 3, "stride": 2, "padding": "same"}},
        {"residual": {"body": [{"sign": {}}, {"conv2d": {"filters": 16, "kernel": 3, "padding": "same"}},
                               {"batchnorm": {}}]}},
        {"residual": {"body": [{"sign": {}}, {"conv2d": {"filters": 32, "kernel": 3, "stride": 2, "padding": "same"}},
                               {"batchnorm": {}}],
                      "shortcut": [{"avgpool": {"size": 2}}, {"conv2d": {"filters": 32, "kernel": 1, "binary": False}},
                                   {"batchnorm": {}}]}},
        {"relu": {}}, {"global_avgpool": {}}, {"dense": {"units": 10, "binary": False}}, {"softmax_ce": {}}]},
    {"name": "calibration-wide", "input": [8, 8, 32], "layers": [
        {"conv2d": {"filters": 128, "kernel": 3, "padding": "same"}}, *_BN_SIGN,
        {"conv2d": {"filters": 256, "kernel": 3, "padding": "same"}}, {"maxpool": {"size": 2}}, *_BN_SIGN,
        {"flatten": {}}, {"dense": {"units": 256}}, *_BN_SIGN, {"dense": {"units": 10}}, {"batchnorm": {}},
        {"softmax_ce": {}}]},
    {"name": "calibration-mlp-wide", "input": [96], "layers": [  # a second first-layer and binary dense shape:
        {"dense": {"units": 384}}, *_BN_SIGN, {"dense": {"units": 64}}, *_BN_SIGN,  # one shape alone cannot
        {"dense": {"units": 10}}, {"batchnorm": {}}, {"softmax_ce": {}}]},  # tell per-input from per-output costs
    {"name": "calibration-mlp-input", "input": [1024], "layers": [  # a first layer reading a wide raw input
        {"dense": {"units": 128}}, *_BN_SIGN, {"dense": {"units": 10}}, {"batchnorm": {}},  # (a flattened
        {"softmax_ce": {}}]},  # image: 784 to 3072 values), its dW operand cut into many row chunks
    {"name": "calibration-stem", "input": [28, 28, 3], "layers": [  # a stem on a larger map: many rows and
        {"conv2d": {"filters": 16, "kernel": 3}}, *_BN_SIGN, {"maxpool": {"size": 2}},  # patch indices per
        {"conv2d": {"filters": 32, "kernel": 3}}, *_BN_SIGN, {"flatten": {}},  # call, as a 32x32 image's stem
        {"dense": {"units": 10}}, {"batchnorm": {}}, {"softmax_ce": {}}]},
    {"name": "calibration-narrow", "input": [12, 12, 3], "layers": [  # few channels on many positions:
        {"conv2d": {"filters": 8, "kernel": 3, "padding": "same", "binary": False}}, {"batchnorm": {}},  # per-row
        {"relu": {}}, {"maxpool": {"size": 2}}, {"sign": {}},  # and per-index costs outweigh per-value ones
        {"conv2d": {"filters": 8, "kernel": 3, "padding": "same"}}, {"batchnorm": {}}, {"sign": {}},
        {"conv2d": {"filters": 16, "kernel": 3, "stride": 2, "padding": "same"}}, {"batchnorm": {}},
        {"relu": {}}, {"global_avgpool": {}}, {"dense": {"units": 10, "binary": False}}, {"softmax_ce": {}}]},
]
QUICK_STRATEGIES = ("standard", "proposed", "proposed-po2", "bop")
FULL_STRATEGIES = QUICK_STRATEGIES + ("ladder-1-binary-activations", "ladder-2-l1-batchnorm", "ladder-3-binary-dw")


@dataclass
class Plan:
    """What a calibration runs: strategies x networks x batches, `steps` timed steps after one warm-up."""

    strategies: tuple[str, ...]
    batches: tuple[int, ...]
    steps: int
    networks: list[dict] = field(default_factory=lambda: NETWORKS)

    def runs(self) -> list[tuple[str, dict, int]]:
        """Strategies innermost: a machine whose background load drifts during the calibration
        shifts every strategy's operators alike, not the ones that happened to run first."""
        return [(s, n, b) for b in self.batches for n in self.networks for s in self.strategies]


QUICK = Plan(QUICK_STRATEGIES, (8, 32), 2)
FULL = Plan(FULL_STRATEGIES, (8, 32, 96), 5)


@dataclass
class Sample:
    work: OperatorWork
    batch: int
    seconds: float


def measure(plan: Plan, progress=None) -> tuple[list[Sample], float]:
    """Time every operator of every run of the plan (skipping strategies the trainer cannot hold).

    Each run times a reference step between its steps (trainer.timing): a shared core's speed changes
    from one second to the next, so every operator's time is taken at one speed, the median reference
    step's over the whole calibration, which is returned beside the samples (device `reference_step_s`)."""
    runs: list[tuple[list[OperatorWork], int, StepTiming]] = []
    for strategy, net, batch in plan.runs():
        strat = as_strategy(strategy)
        graph = graph_of(parse_model(net, f"<{net['name']}>"))
        try:
            check_strategy(strat, graph)
        except TrainerError:
            if progress is not None:
                progress(f"{net['name']} {strategy}: not runnable, skipped")
            continue
        t = time_steps(graph, strat, batch=batch, steps=plan.steps, warmup=1, workspace_budget=DEFAULT_WORKSPACE,
                       reference=True)
        runs.append((operator_work(graph, strat, "step", DEFAULT_WORKSPACE), batch, t))
        if progress is not None:
            progress(f"{net['name']} {strategy} batch {batch}")
    reference_s = float(np.median([t.reference_s for _, _, t in runs])) if runs else float("nan")
    samples: list[Sample] = []
    for works, batch, timing in runs:
        t = timing.at_reference(reference_s)
        for w in works:
            sec = measured_seconds(w, t.events_s, t.updates_s, t.update_loop_s)
            if sec is not None and np.isfinite(sec) and sec > 0:
                samples.append(Sample(w, batch, sec))
    return samples, reference_s


@dataclass
class Fitted:
    operator: str
    formats: str
    fixed_s: float
    per_unit_s: dict[str, float]
    samples: int
    median_rel_error: float


def nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Least squares with x >= 0 (Lawson-Hanson active set; small problems)."""
    n = a.shape[1]
    free = list(range(n))
    x = np.zeros(n)
    for _ in range(4 * n + 4):
        if not free:
            break
        sol, *_ = np.linalg.lstsq(a[:, free], b, rcond=None)
        if (sol >= 0).all():
            x[:] = 0
            x[free] = sol
            return x
        free.pop(int(np.argmin(sol)))  # drop the most negative and solve again
    x[:] = 0
    if free:
        sol, *_ = np.linalg.lstsq(a[:, free], b, rcond=None)
        x[free] = np.maximum(sol, 0)
    return x


def fit(samples: list[Sample]) -> list[Fitted]:
    """Per operator (and formats): fixed and per-unit seconds, relative least squares, non-negative."""
    groups: dict[tuple[str, str], list[Sample]] = {}
    for s in samples:
        groups.setdefault((s.work.operator, s.work.formats), []).append(s)
    out = []
    for (operator, formats), group in sorted(groups.items()):
        # the mechanisms the operator performs in some sample (a dense layer computes no patch indices)
        mechs = sorted({m for s in group for m in s.work.mechanisms if s.work.at(m, s.batch) > 0})
        a = np.array([[1.0] + [s.work.at(m, s.batch) for m in mechs] for s in group])
        t = np.array([s.seconds for s in group])
        scale = np.maximum(a.max(axis=0), 1e-30)  # columns of comparable size
        w = 1.0 / np.maximum(t, 1e-7)
        x = nnls(a / scale * w[:, None], t * w) / scale
        pred = a @ x
        rel = float(np.median(np.abs(pred / t - 1))) if len(t) else 0.0
        out.append(Fitted(operator, formats, float(x[0]), {m: float(v) for m, v in zip(mechs, x[1:])},
                          len(group), rel))
    return out
