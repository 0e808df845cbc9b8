"""Energy and time of one training step on a device (METHOD 6).

energy = sum over (kind, format) of count x energy per op
       + sum over layer-phases of bytes moved x energy per byte of the level
         that holds that layer-phase's working set
       + idle (static) power x time.
A layer-phase's working set is the bytes it reads and writes; its traffic is
charged to the smallest memory level whose capacity holds that set. Its time
is the larger of its compute time (counts / sustained throughput, summed over
kinds) and its memory time (bytes / the level's bandwidth); the step's time is
the sum over layer-phases. Everything is evaluated for many batch sizes at
once, so a sweep costs one numpy pass.

A machine measured by `bnncost calibrate` (a device with a `trainer`
section) is timed by mechanism instead (costmodel.timing): the sum of the
bundled trainer's operator costs measured there. Its dynamic energy then
follows the predicted time: one core's share of the board's dynamic power
(active - idle over the cores; the trainer runs on one core) times the time,
plus the traffic's energy per byte; static energy is idle power times the
predicted time. A device whose power or energy figures are unknown (null)
gives NaN energies and `energy_known` False: the callers report energy as
unavailable, never as zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bnncost.costmodel.ops import INFORMATIONAL, OpCount, Traffic
from bnncost.costmodel.timing import OperatorWork

_EVENT_PHASES = {"forward": ("forward",), "backward": ("backward_dx", "backward_dw"), "update": ("update",),
                 "overhead": ()}  # the step's own work (costmodel.timing.step_operators): no layer-phase


class MissingOpError(ValueError):
    """The model needs an operation the device table does not list."""


@dataclass
class EnergyTime:
    """Per-step figures, one entry per batch size asked for."""

    batch: np.ndarray
    compute_j: np.ndarray
    memory_j: np.ndarray
    static_j: np.ndarray
    seconds: np.ndarray
    compute_s: np.ndarray  # sum of compute times (what the step would take were memory free)
    memory_s: np.ndarray
    bytes_by_level: dict[str, np.ndarray]
    seconds_by_event: dict[str, np.ndarray] | None = None  # calibrated machines: timing.EVENTS

    @property
    def dynamic_j(self) -> np.ndarray:
        return self.compute_j + self.memory_j

    @property
    def joules(self) -> np.ndarray:
        return self.compute_j + self.memory_j + self.static_j


class EnergyModel:
    """Op counts and traffic of one model and strategy, priced on one device; batch-free."""

    def __init__(self, ops: list[OpCount], traffic: list[Traffic], device, context: str = "",
                 work: list[OperatorWork] | None = None):
        self.device = device
        self.energy_known = device.energy_known
        phases = sorted({(o.layer, o.phase) for o in ops} | {(t.layer, t.phase) for t in traffic})
        self.layer_phases = phases
        index = {lp: i for i, lp in enumerate(phases)}
        n = len(phases)
        # per layer-phase, affine in B: compute energy (pJ), compute time (s)
        self.e_const, self.e_per = np.zeros(n), np.zeros(n)
        self.t_const, self.t_per = np.zeros(n), np.zeros(n)
        for o in ops:
            if o.kind in INFORMATIONAL:
                continue
            try:
                spec = device.op(o.format, o.kind)
            except ValueError as exc:
                where = f" (needed by {context}{o.layer} {o.phase})"
                raise MissingOpError(f"{exc}{where}") from None
            i = index[(o.layer, o.phase)]
            pj = spec.pj if spec.pj is not None else np.nan
            self.e_const[i] += o.const * pj
            self.e_per[i] += o.per_sample * pj
            self.t_const[i] += o.const / spec.per_s
            self.t_per[i] += o.per_sample / spec.per_s
        self.b_const, self.b_per = np.zeros(n), np.zeros(n)
        for t in traffic:
            i = index[(t.layer, t.phase)]
            self.b_const[i] += t.read_const + t.write_const
            self.b_per[i] += t.read_per_sample + t.write_per_sample
        levels = device.memory.levels
        self.level_names = [lv.name for lv in levels]
        self.capacity = np.array([lv.capacity_bytes for lv in levels], dtype=np.float64)
        self.pj_per_byte = np.array([np.nan if lv.energy_pj_per_byte is None else lv.energy_pj_per_byte
                                     for lv in levels])
        self.bandwidth = np.array([lv.bandwidth_bytes_per_s for lv in levels])
        self.idle_w = np.nan if device.power.idle_w is None else device.power.idle_w
        self.trainer = device.trainer
        if self.trainer is not None:
            self._operator_times(work or [], phases, index)

    def _operator_times(self, work: list[OperatorWork], phases, index) -> None:
        """Per event, affine in B: the trainer's operator costs measured here (costmodel.timing).

        An operator the table does not list costs the table's per-call cost
        plus its layer-phases' compute time at the `ops` rates.
        """
        table = self.trainer.lookup()
        self.ev_const = {e: 0.0 for e in _EVENT_PHASES}
        self.ev_per = {e: 0.0 for e in _EVENT_PHASES}
        self.unlisted: list[str] = []
        self.looped: list[tuple[str, dict[str, float], OperatorWork]] = []  # counted per batch (timing.linear_loops)
        for w in work:
            cost = table.get((w.operator, w.formats))
            if cost is not None:
                c = cost.fixed_s + sum(cost.per_unit_s.get(m, 0.0) * u[0] for m, u in w.units.items())
                p = sum(cost.per_unit_s.get(m, 0.0) * u[1] for m, u in w.units.items())
                if w.loops is not None:
                    self.looped.append((w.event, cost.per_unit_s, w))
            else:
                self.unlisted.append(w.key)
                c, p = self.trainer.call_s, 0.0
                for ph in _EVENT_PHASES[w.event]:
                    i = index.get((w.layer, ph))
                    if i is not None:
                        c += self.t_const[i]
                        p += self.t_per[i]
            self.ev_const[w.event] += c
            self.ev_per[w.event] += p

    def by_layer_phase(self, batch: int) -> dict[tuple[str, str], tuple[float, float]]:
        """(layer, phase) -> (joules, seconds) at one batch size: the terms `evaluate` sums, static energy
        (idle power x that layer-phase's time) included, so they add up to the step's figures."""
        bs = np.array([float(batch)])
        t_ops = self.t_const + self.t_per * bs[0]
        moved = self.b_const + self.b_per * bs[0]
        level = np.minimum(np.searchsorted(self.capacity, moved, side="left"), len(self.capacity) - 1)
        seconds = np.maximum(t_ops, moved / self.bandwidth[level])
        joules = (self.e_const + self.e_per * bs[0] + moved * self.pj_per_byte[level]) * 1e-12 + self.idle_w * seconds
        return {lp: (float(joules[i]), float(seconds[i])) for i, lp in enumerate(self.layer_phases)}

    def evaluate(self, batch) -> EnergyTime:
        bs = np.atleast_1d(np.asarray(batch, dtype=np.float64))
        e_ops = self.e_const[:, None] + self.e_per[:, None] * bs  # pJ, [phase, batch]
        t_ops = self.t_const[:, None] + self.t_per[:, None] * bs
        moved = self.b_const[:, None] + self.b_per[:, None] * bs
        # smallest level whose capacity holds the working set; DRAM (the last) otherwise
        level = np.minimum(np.searchsorted(self.capacity, moved, side="left"), len(self.capacity) - 1)
        e_mem = moved * self.pj_per_byte[level]
        t_mem = moved / self.bandwidth[level]
        by_level = {name: np.where(level == i, moved, 0.0).sum(axis=0) for i, name in enumerate(self.level_names)}
        compute_j = e_ops.sum(axis=0) * 1e-12
        by_event = None
        if self.trainer is None:
            seconds = np.maximum(t_ops, t_mem).sum(axis=0)
        else:
            by_event = {e: self.ev_const[e] + self.ev_per[e] * bs for e in _EVENT_PHASES}
            for event, per_unit, w in self.looped:
                by_event[event] = by_event[event] + np.array(
                    [sum(per_unit.get(m, 0.0) * n for m, n in w.loops(int(b)).items()) for b in bs])
            seconds = sum(by_event.values())
            power = self.device.power
            core_w = (power.active_w - power.idle_w) / self.trainer.cores if power.known else np.nan
            compute_j = core_w * seconds
        if not self.energy_known:
            compute_j = compute_j * np.nan
        return EnergyTime(
            batch=bs,
            compute_j=compute_j,
            memory_j=e_mem.sum(axis=0) * 1e-12,
            static_j=self.idle_w * seconds,
            seconds=seconds,
            compute_s=t_ops.sum(axis=0),
            memory_s=t_mem.sum(axis=0),
            bytes_by_level=by_level,
            seconds_by_event=by_event,
        )


def steps_per_epoch(samples: int, batch: int) -> tuple[int, int]:
    """(full steps, samples in the last partial step) for one pass over the data."""
    return samples // batch, samples % batch
