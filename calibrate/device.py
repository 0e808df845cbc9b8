"""Assemble the device document of this machine from its measurements, and write it atomically.

Power cannot be measured from inside a process, so it comes from a shipped board (`base`: its
idle and active power and its memory levels' energy per byte, with their sources kept) or from
figures given by the user; without either, every energy figure is written `null` and the cost
model reports energy as unavailable. Energy per operation, when power is known, follows the
shipped boards' method (hardware_profiles/README.md): the dynamic power of the core that runs
the operation ((active - idle) / cores) divided by its measured rate.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import time
from dataclasses import dataclass

import numpy as np
import yaml

from bnncost.calibrate import machine, operators, rates
from bnncost.hardware_profiles import Device, DeviceError, load_device, parse_device
from bnncost.hardware_profiles.schema import TIME_MODEL_VERSION
from bnncost.layers.outfile import OutputPathError, atomic_output, check_output
from bnncost.trainer.base import DEFAULT_WORKSPACE
from bnncost.trainer.timing import REFERENCE_BATCH, REFERENCE_STRATEGY


class CalibrationError(ValueError):
    """Input calibrate cannot work with (an unwritable --out, an unknown --base, bad power figures)."""


def check_inputs(out: str, base: str | None, idle_w: float | None, active_w: float | None) -> Device | None:
    """Refuse bad input before anything is measured; returns the base device, if any."""
    try:
        check_output(out, "--out")
    except OutputPathError as exc:
        raise CalibrationError(str(exc)) from None
    if (idle_w is None) != (active_w is None):
        raise CalibrationError("--idle-w and --active-w go together: give both, or neither")
    if idle_w is not None:
        for flag, v in (("--idle-w", idle_w), ("--active-w", active_w)):
            if not (v >= 0 and np.isfinite(v)):
                raise CalibrationError(f"{flag} must be a power of 0 W or more, not {v}")
        if active_w < idle_w:
            raise CalibrationError(f"--active-w {active_w} W is below --idle-w {idle_w} W")
        if base is not None:
            raise CalibrationError("--base and --idle-w/--active-w both give power: choose one")
    if base is None:
        return None
    try:
        return load_device(base)
    except DeviceError as exc:
        raise CalibrationError(f"--base: {exc}") from None


def _g(x: float) -> float:
    return float(f"{x:.4g}")


@dataclass
class Measured:
    """Everything calibrate measured, before it is written down."""

    stamp: str  # "measured by bnncost calibrate on DATE: CPU, ..."
    cpu: str
    cores: int
    blas_threads: int | None
    quick: bool
    repeats: int
    steps: int  # timed steps per calibration run
    ram_total: int
    ram_available: int
    ram_how: str
    levels: list[dict]  # {name, capacity_bytes, bandwidth_bytes_per_s, how}, smallest first, DRAM last
    rates: dict[str, dict[str, tuple[float, str]]]  # format -> kind -> (per second, how)
    operators: list[operators.Fitted]
    reference_step_s: float  # median reference step over the operators' runs: the speed they are priced at
    # (arch, vendor, where they were read) as device tables name them; arch None where the machine is not one of
    # CPU_ARCHES (the table then says nothing of its CPU)
    cpu_kind: tuple[str | None, str | None, str] = (None, None, "")


def measure(*, quick: bool = False, progress=None, total=None) -> Measured:
    """Measure this machine: memory levels, sustained rates, the trainer's operators."""
    plan = operators.QUICK if quick else operators.FULL
    repeats = 5 if quick else 11
    levels = machine.cache_levels()
    if total is not None:
        total(len(levels) + 1 + rates.rate_steps() + len(plan.runs()) + 1)
    step = progress or (lambda what: None)
    cpu = machine.cpu_model()
    cores = os.cpu_count() or 1
    threads = machine.blas_threads()
    clock = time.get_clock_info("process_time")
    stamp = (f"measured by bnncost calibrate on {_dt.date.today().isoformat()}: {cpu}, {cores} cores, "
             f"{platform.system()} {platform.release()}, Python {platform.python_version()}, numpy {np.__version__}, "
             f"BLAS threads {threads if threads is not None else 'library default'}, "
             f"clock: CPU time of the process (process_time, {clock.resolution:.0e} s)")
    ram_total, ram_avail, ram_how = machine.ram()
    level_docs = []
    for lv in levels:
        probe = lv.capacity_bytes // 4
        bw = machine.copy_bandwidth(probe, repeats)
        level_docs.append({"name": lv.name, "capacity_bytes": lv.capacity_bytes, "bandwidth_bytes_per_s": _g(bw),
                           "how": f"capacity: {lv.how}; bandwidth: numpy copy of {probe // 1024} KiB on one core "
                                  f"(read + write), median of {repeats}"})
        step(f"bandwidth {lv.name}")
    probe = machine.dram_probe_bytes(levels)
    bw = machine.copy_bandwidth(probe, max(3, repeats // 2))
    level_docs.append({"name": "dram", "capacity_bytes": ram_total, "bandwidth_bytes_per_s": _g(bw),
                       "how": f"capacity: {ram_how}; bandwidth: numpy copy of {probe >> 20} MiB on one core "
                              f"(read + write), median of {max(3, repeats // 2)}"})
    step("bandwidth dram")
    measured_rates = rates.sustained_rates(repeats, step)
    samples, reference_s = operators.measure(plan, step)
    fitted = operators.fit(samples)
    step("fit")
    return Measured(stamp, cpu, cores, threads, quick, repeats, plan.steps, ram_total, ram_avail, ram_how,
                    level_docs, measured_rates, fitted, reference_s, machine.cpu_arch_and_vendor())


def document(m: Measured, *, name: str, base: Device | None = None, idle_w: float | None = None,
             active_w: float | None = None) -> dict:
    """The device document (a dict ready for YAML) of a measurement, validated by the device schema."""
    stamp, cores = m.stamp, m.cores
    if base is not None:
        power = {"idle_w": base.power.idle_w, "active_w": base.power.active_w,
                 "source": f"from --base {base.name} (not measured here): {base.power.source}"}
    elif idle_w is not None:
        power = {"idle_w": idle_w, "active_w": active_w,
                 "source": f"given on the command line (--idle-w {idle_w} --active-w {active_w}), not measured"}
    else:
        power = {"idle_w": None, "active_w": None,
                 "source": "unknown: a process cannot measure power; run calibrate with --base DEVICE or "
                           "--idle-w/--active-w to have energy (every energy figure is unavailable until then)"}
    core_w = (power["active_w"] - power["idle_w"]) / cores if power["idle_w"] is not None else None
    ops_doc: dict = {}
    for fmt, kinds in m.rates.items():
        for kind, (per_s, how) in kinds.items():
            pj = None if core_w is None else _g(core_w / per_s * 1e12)
            energy = ("energy unknown (no power figures)" if pj is None else
                      f"energy = one core's dynamic power (active - idle) / {cores} cores = {core_w:.4g} W over this rate")
            ops_doc.setdefault(fmt, {})[kind] = {
                "pj": pj, "per_s": _g(per_s),
                "source": f"{stamp}; rate: {how}, one core, median of {m.repeats}; {energy}"}
    fixed = [f.fixed_s for f in m.operators if f.fixed_s > 0]
    call_s = float(np.median(fixed)) if fixed else 0.0
    op_docs = [{
        "operator": f.operator, "formats": f.formats, "fixed_s": _g(f.fixed_s),
        "per_unit_s": {k: _g(v) for k, v in f.per_unit_s.items()}, "samples": f.samples,
        "source": (f"{stamp}; non-negative least squares (relative) over {f.samples} timed calls on the "
                   f"calibration networks, median of {m.steps} steps each at the reference speed; median fit error "
                   f"{100 * f.median_rel_error:.1f}%")} for f in m.operators]
    levels_out = []
    for i, lv in enumerate(m.levels):
        pj, src = None, "energy per byte unknown (no --base)"
        if base is not None:
            blv = _base_level(base, lv["name"], last=i == len(m.levels) - 1)
            pj = blv.energy_pj_per_byte
            src = f"energy per byte from --base {base.name} level {blv.name}: {blv.source}"
        if len(m.levels) == 1:
            src += ("; ASSUMED: no cache level was visible (sysfs " + str(machine.SYSFS_CACHE) +
                    "), so one level, DRAM, takes all traffic")
        levels_out.append({"name": lv["name"], "capacity_bytes": lv["capacity_bytes"], "energy_pj_per_byte": pj,
                           "bandwidth_bytes_per_s": lv["bandwidth_bytes_per_s"],
                           "source": f"{stamp}; {lv['how']}; {src}"})
    doc = {
        "name": name,
        "description": f"{m.cpu}, {cores} cores, {m.ram_total / 2**30:.1f} GiB RAM: this machine as the bundled "
                       f"numpy trainer sees it ({'quick' if m.quick else 'full'} calibration)",
        "sources": dict(base.sources) if base is not None else {},
        "memory": {
            "ram_bytes": {"value": m.ram_total, "source": f"{stamp}; {m.ram_how}"},
            "usable_bytes": {"value": min(m.ram_available, m.ram_total),
                             "source": f"{stamp}; MemAvailable at calibration time (what a new process may use)"},
            "levels": levels_out,
        },
        "ops": ops_doc,
        "power": power,
        "trainer": {
            "time_model": TIME_MODEL_VERSION,
            "implementation": f"bnncost's bundled numpy trainer, workspace {DEFAULT_WORKSPACE} B per operator",
            "workspace_bytes": DEFAULT_WORKSPACE, "blas_threads": m.blas_threads, "cores": cores,
            "call_s": _g(call_s), "reference_step_s": _g(m.reference_step_s), "operators": op_docs,
            "source": f"{stamp}; call_s is the median fixed cost of the fitted operators (for one not listed); "
                      f"reference_step_s is the median time of the reference step (trainer.timing.REFERENCE_MODEL, "
                      f"{REFERENCE_STRATEGY}, batch {REFERENCE_BATCH}) timed between the calibration's steps: "
                      f"the core speed every operator's time is priced at",
        },
    }
    arch, vendor, how = m.cpu_kind
    if arch is not None:  # after the description, as the shipped tables have it
        cpu = {"arch": arch, **({"vendor": vendor} if vendor else {}), "source": f"{stamp}; {how}"}
        doc = {"name": doc["name"], "description": doc["description"], "cpu": cpu,
               **{k: v for k, v in doc.items() if k not in ("name", "description")}}
    parse_device(doc, f"<calibration of {name}>")  # what is written must load
    return doc


def calibrate(*, name: str, quick: bool = False, base: Device | None = None, idle_w: float | None = None,
              active_w: float | None = None, progress=None, total=None) -> dict:
    """Measure this machine; return the device document (a dict ready for YAML), validated."""
    m = measure(quick=quick, progress=progress, total=total)
    return document(m, name=name, base=base, idle_w=idle_w, active_w=active_w)


def _base_level(base: Device, name: str, last: bool):
    levels = base.memory.levels
    if last:
        return levels[-1]
    for lv in levels[:-1]:
        if lv.name == name:
            return lv
    caches = levels[:-1]
    return caches[-1] if caches else levels[-1]


def write_device(doc: dict, out: str) -> None:
    """Write the YAML atomically: a temporary file beside `out`, then a rename (Ctrl-C leaves nothing)."""
    text = ("# Written by `bnncost calibrate`: pass it with --device. Every figure says how it was measured.\n"
            + yaml.safe_dump(doc, sort_keys=False, width=120, allow_unicode=True))
    with atomic_output(out, "--out") as fh:
        fh.write(text)
