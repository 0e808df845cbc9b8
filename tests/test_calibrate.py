"""bnncost calibrate and the calibrated time model: the file's schema and the model's mechanisms.

No wall-clock figure is checked: the calibration's measurement is replaced by a small fake one
with round numbers, and every time below is computed by hand from those numbers.
"""

from __future__ import annotations

import dataclasses

import math
import os
import stat

import numpy as np
import pytest
import yaml

from bnncost.calibrate import device as cal
from bnncost.calibrate.machine import cache_levels
from bnncost.calibrate.operators import Sample, fit, nnls
from bnncost.cli import main
from bnncost.costmodel import predict
from bnncost.costmodel.strategy import as_strategy
from bnncost.costmodel.timing import operator_work, xnor_words_per_patch
from bnncost.costmodel.verification import check_time
from bnncost.hardware_profiles import load_device, parse_device
from bnncost.layers.graph import graph_of
from bnncost.layers.model import parse_model

STAMP = "measured by bnncost calibrate on 2026-01-01: Test CPU, 2 cores, numpy 2.0"
MLP = parse_model({"name": "t", "input": [784], "layers": [
    {"dense": {"units": 256}}, {"batchnorm": {}}, {"sign": {}},
    {"dense": {"units": 10}}, {"batchnorm": {}}, {"softmax_ce": {}}]})


def fake(levels=None, operators=None) -> cal.Measured:
    rates = {"float32": {k: (1e9, "fake") for k in ("mac", "add", "mul", "div", "sqrt", "abs", "compare", "exp")},
             "float16": {k: (5e8, "fake") for k in ("mac", "add", "mul", "div", "sqrt", "abs", "compare", "exp")},
             "po2": {"shift": (1e9, "fake")}, "bool": {"xnor_popcount": (1e9, "fake")}}
    if levels is None:
        levels = [{"name": "l1", "capacity_bytes": 32768, "bandwidth_bytes_per_s": 1e11, "how": "sysfs"},
                  {"name": "l2", "capacity_bytes": 1 << 20, "bandwidth_bytes_per_s": 5e10, "how": "sysfs"}]
    levels = levels + [{"name": "dram", "capacity_bytes": 8 << 30, "bandwidth_bytes_per_s": 1e10, "how": "copy"}]
    return cal.Measured(STAMP, "Test CPU", 2, 1, True, 5, 2, 8 << 30, 4 << 30, "/proc/meminfo", levels, rates,
                        operators or [], 0.003)


def test_document_is_a_device_with_sources_and_no_energy_without_power():
    doc = cal.document(fake(), name="host")
    dev = parse_device(doc, "<t>")
    assert dev.trainer is not None and dev.trainer.cores == 2
    assert all("measured by bnncost calibrate" in src for path, src in dev.source_paths()
               if not path.startswith("power"))
    assert not dev.power.known and not dev.energy_known
    assert dev.op("float32", "add").pj is None and dev.memory.dram.energy_pj_per_byte is None
    p = predict("mlp", "proposed", 8, device=dev)
    assert p.energy is None and "unavailable" in p.energy_unavailable and p.time.seconds_per_step > 0
    assert "energy" not in p.to_json() and "energy_unavailable" in p.to_json()


def test_the_document_names_this_machine_s_cpu():
    """calibrate writes the CPU's arch and vendor (engines measured on another CPU are noted in fit), right after
    the description; a machine of no known arch gets no cpu entry."""
    m = fake()
    doc = cal.document(dataclasses.replace(m, cpu_kind=("x86-64", "amd", "platform.machine() 'x86_64'")), name="h")
    assert list(doc)[:3] == ["name", "description", "cpu"] and doc["cpu"]["vendor"] == "amd"
    assert parse_device(doc, "<t>").cpu.arch == "x86-64" and "measured by bnncost calibrate" in doc["cpu"]["source"]
    assert "cpu" not in cal.document(m, name="h")
    arch, vendor, how = cal.machine.cpu_arch_and_vendor()
    assert arch in (None, "arm64", "armv7", "x86-64", "riscv64") and "platform.machine()" in how


def test_base_gives_power_and_level_energies_with_their_sources():
    base = load_device("raspberry-pi-4b")
    dev = parse_device(cal.document(fake(), name="host", base=base), "<t>")
    assert (dev.power.idle_w, dev.power.active_w) == (base.power.idle_w, base.power.active_w)
    assert base.power.source in dev.power.source
    assert dev.memory.dram.energy_pj_per_byte == base.memory.dram.energy_pj_per_byte
    # energy per op: one core's dynamic power over the measured rate, (5 - 1.6) / 2 W / 1e9 /s = 1700 pJ
    assert dev.op("float32", "add").pj == pytest.approx((base.power.active_w - base.power.idle_w) / 2 / 1e9 * 1e12)
    assert predict("mlp", "proposed", 8, device=dev).energy.joules_per_step > 0


def test_command_line_power_and_an_odd_vm():
    doc = cal.document(fake(levels=[]), name="vm", idle_w=10.0, active_w=30.0)
    dev = parse_device(doc, "<t>")
    assert [lv.name for lv in dev.memory.levels] == ["dram"]
    assert "ASSUMED" in dev.memory.dram.source or "assumed" in dev.memory.dram.source.lower()
    assert "--idle-w 10.0" in dev.power.source


def test_yaml_round_trip_and_atomic_write(tmp_path):
    out = tmp_path / "host.yaml"
    cal.write_device(cal.document(fake(), name="host"), str(out))
    assert load_device(str(out)).name == "host"
    assert [p.name for p in tmp_path.iterdir()] == ["host.yaml"]
    with pytest.raises(yaml.representer.RepresenterError):
        cal.write_device({"name": object()}, str(tmp_path / "bad.yaml"))
    assert [p.name for p in tmp_path.iterdir()] == ["host.yaml"]  # no temporary and no half-written file left


def test_sysfs_cache_levels(tmp_path):
    for i, (level, kind, size) in enumerate([(1, "Data", "32K"), (1, "Instruction", "32K"), (2, "Unified", "1024K"),
                                             (3, "Unified", "36608K")]):
        d = tmp_path / f"index{i}"
        d.mkdir()
        (d / "level").write_text(f"{level}\n")
        (d / "type").write_text(f"{kind}\n")
        (d / "size").write_text(f"{size}\n")
    assert [(lv.name, lv.capacity_bytes) for lv in cache_levels(tmp_path)] == [
        ("l1", 32768), ("l2", 1 << 20), ("l3", 36608 * 1024)]
    assert cache_levels(tmp_path / "missing") == []


# ---------------------------------------------------------------- mechanisms, by hand

def test_operator_units_of_a_dense_model():
    g, s = graph_of(MLP), as_strategy("proposed")
    work = {(w.layer, w.event): w for w in operator_work(g, s)}
    first = work[("dense_1", "forward")]
    assert first.operator == "dense.first.forward"
    assert first.units["gemm"] == (0, 784 * 256)  # real x sign(W): a float32 product per sample
    assert first.units["weights"] == (784 * 256, 0)
    second = work[("dense_2", "forward")]
    # packed input of 256 bits = 32 bytes: four 64-bit words per (sample, filter)
    assert second.units["xnor_words"] == (0, 10 * 4)
    back = work[("dense_2", "backward")]
    assert back.operator == "dense.binary.backward.dx" and back.units["gemm"] == (0, 2 * 256 * 10)
    assert work[("dense_2", "update")].units == {"values": (2560, 0)}
    assert work[("batchnorm_1", "update")].units == {"values": (256, 0)}  # l1: beta only
    assert "activation_grad=float16" in back.formats and "binary_input=bool" in back.formats
    assert ("dense_1", "backward") in work and work[("dense_1", "backward")].operator == "dense.first.backward"


def test_xnor_words_take_the_widest_word_dividing_the_patch():
    g = graph_of(parse_model({"name": "x", "input": [8, 8, 3], "layers": [
        {"conv2d": {"filters": 8, "kernel": 3, "padding": "same"}}, {"sign": {}},
        {"conv2d": {"filters": 8, "kernel": 3, "padding": "same"}}, {"flatten": {}},
        {"dense": {"units": 784}}, {"sign": {}}, {"dense": {"units": 10}}, {"softmax_ce": {}}]}))
    by = {n.name: n for n in g.nodes}
    assert xnor_words_per_patch(by["conv2d_2"]) == 9  # 3x3 patch of 1 byte each: 9 bytes, 9 one-byte words
    assert xnor_words_per_patch(by["dense_1"]) == 8  # 8x8x8 = 512 inputs = 64 bytes: 8 words of 8 bytes
    assert xnor_words_per_patch(by["dense_2"]) == 49  # 784 bits = 98 bytes: 49 two-byte words, not 13 of 8


def _device_with(operators, call_s=1e-3):
    doc = cal.document(fake(), name="host")
    doc["trainer"]["operators"] = operators
    doc["trainer"]["call_s"] = call_s
    return parse_device(doc, "<t>")


def test_step_time_is_the_sum_of_operator_costs():
    g, s = graph_of(MLP), as_strategy("standard")
    ops = []
    for w in operator_work(g, s):
        ops.append({"operator": w.operator, "formats": w.formats, "fixed_s": 1e-4,
                    "per_unit_s": {m: 1e-9 for m in w.units}, "samples": 3, "source": "hand-made for a test"})
    dev = _device_with(ops)
    for batch in (1, 8, 100):
        want = sum(1e-4 + sum(1e-9 * w.at(m, batch) for m in w.units) for w in operator_work(g, s))
        got = predict(MLP, "standard", batch, device=dev)
        assert got.time.seconds_per_step == pytest.approx(want)
        assert sum(got.time.seconds_by_event.values()) == pytest.approx(want)
        assert got.time.basis == "calibrated bundled trainer"


def test_an_unlisted_operator_costs_the_call_and_its_work_at_the_ops_rates():
    g, s = graph_of(MLP), as_strategy("standard")
    dev = _device_with([], call_s=2e-3)
    p = predict(MLP, "standard", 4, device=dev)
    counted = sum(r.count / dev.op(r.format, r.kind).per_s for r in p.ops.total if r.kind != "bit_mac")
    assert p.time.seconds_per_step == pytest.approx(len(operator_work(g, s)) * 2e-3 + counted)


def test_shipped_boards_stay_peak_rate_lower_bounds():
    p = predict("mlp", "proposed", 100, device=load_device("raspberry-pi-4b"))
    assert p.time.basis == "peak-rate lower bound" and p.time.seconds_by_event is None
    assert p.energy is not None and p.energy_unavailable is None


def test_calibrated_energy_follows_the_predicted_time():
    base = load_device("raspberry-pi-4b")
    doc = cal.document(fake(), name="host", base=base)
    doc["trainer"]["call_s"] = 1e-3
    dev = parse_device(doc, "<t>")
    p = predict(MLP, "standard", 4, device=dev)
    t = p.time.seconds_per_step
    core_w = (base.power.active_w - base.power.idle_w) / 2
    assert p.energy.compute_j == pytest.approx(core_w * t)
    assert p.energy.static_j == pytest.approx(base.power.idle_w * t)


# ---------------------------------------------------------------- fitting

def test_nnls_recovers_nonnegative_coefficients():
    rng = np.random.default_rng(0)
    a = rng.random((20, 3))
    x = np.array([2.0, 0.0, 0.5])
    assert nnls(a, a @ x) == pytest.approx(x, abs=1e-9)
    got = nnls(a, a @ np.array([1.0, -1.0, 1.0]))
    assert (got >= 0).all()


def test_fit_finds_per_call_and_per_unit_costs():
    g, s = graph_of(MLP), as_strategy("standard")
    layers = [w for w in operator_work(g, s) if w.operator == "batchnorm.forward"]  # 256 and 10 channels
    samples = [Sample(w, b, 1e-4 + 2e-9 * w.at("values", b) + 1e-7 * w.at("channels", b))
               for w in layers for b in (1, 4, 16, 64)]
    f = fit(samples)[0]
    assert f.fixed_s == pytest.approx(1e-4, rel=1e-6) and f.per_unit_s["values"] == pytest.approx(2e-9, rel=1e-6)
    assert f.per_unit_s["channels"] == pytest.approx(1e-7, rel=1e-6)
    assert f.samples == 8 and f.median_rel_error < 1e-9


# ---------------------------------------------------------------- verify's time check

def test_time_check_tolerance():
    ok = check_time("host", {"forward": 1.0, "backward": 2.0, "update": 0.2},
                    {"forward": 1.1, "backward": 2.1, "update": 0.3, "step": 3.4}, 5, 1)
    by = {r.phase: r for r in ok.phases}
    assert by["step"].error == pytest.approx(3.2 / 3.4 - 1) and by["step"].ok and ok.ok
    assert by["update"].error < -0.15 and by["update"].ok  # 33% off, but 0.1 s is within 5% of the 3.4 s step
    bad = check_time("host", {"forward": 1.0, "backward": 1.0, "update": 0.0},
                     {"forward": 1.0, "backward": 2.0, "update": 0.0, "step": 3.0}, 5, 1)
    assert not bad.ok and not {r.phase: r for r in bad.phases}["backward"].ok


def test_trainer_timing_covers_every_event():
    from bnncost.trainer.timing import time_steps

    t = time_steps(MLP, "proposed", batch=4, steps=1, warmup=1)
    g = graph_of(MLP)
    for node in g.nodes:
        assert f"forward:{node.name}" in t.events_s and f"backward:{node.name}" in t.events_s
    assert set(t.updates_s) == {"dense_1", "batchnorm_1", "dense_2", "batchnorm_2"}
    assert t.clock == "cpu" and t.steps == 1
    # the update's loop, per step: the update event less its tensors' updates
    assert t.update_loop_s == pytest.approx(t.events_s["update"] - sum(t.updates_s.values()))


def test_reference_steps_put_every_figure_at_one_core_speed(monkeypatch):
    """A core that runs 3x slower for the first steps: the raw median says so, the figures relative to
    the reference steps timed between the steps do not (a fake clock: every read is one tick of the
    core's current speed, and the reference step sets that speed)."""
    from bnncost.trainer import timing

    speeds = iter([3.0, 3.0, 3.0, 1.0, 1.0, 1.0])
    clock = {"t": 0.0, "speed": 1.0}

    def now():
        clock["t"] += clock["speed"]
        return clock["t"]

    def reference_step(seed):
        def run():
            clock["speed"] = next(speeds)
        return run

    monkeypatch.setitem(timing.CLOCKS, "cpu", now)
    monkeypatch.setattr(timing, "_reference_step", reference_step)
    monkeypatch.setattr(timing, "REFERENCE_INTERVAL_S", 1e9)  # short steps: references between steps only
    t = timing.time_steps(MLP, "standard", batch=2, steps=5, warmup=1, reference=True)
    at1 = t.at_reference(1.0)
    assert t.reference_s == 2.0  # median of 3, 3, 3, 1, 1, 1
    assert t.step_s == pytest.approx(3 * at1.step_s)  # 3 of 5 steps ran at 3x; at speed 1 the step is its ticks
    for k, v in at1.events_s.items():  # every event: its ticks at speed 1, 3x that as timed
        assert v == pytest.approx(round(v)) and t.events_s[k] == pytest.approx(3 * v), k
    assert at1.wall_step_s == t.wall_step_s  # the wall time stays as measured
    assert t.at_reference(2.0).step_s == pytest.approx(2 * at1.step_s)
    with pytest.raises(Exception, match="without reference steps"):
        timing.time_steps(MLP, "standard", batch=2, steps=1, warmup=0).at_reference(1.0)


def test_a_long_step_reads_the_core_speed_between_its_events(monkeypatch):
    """A step longer than REFERENCE_INTERVAL_S runs reference steps between its events too: a core that
    turns 3x faster in the middle of a step still gives every event at one speed (a fake clock: every read
    is one tick of the core's speed, 3 until the clock reaches `switch`, then 1)."""
    from bnncost.trainer import timing

    clock = {"t": 0.0, "refs": 0}

    def now():
        clock["t"] += 3.0 if clock["t"] < clock["switch"] else 1.0
        return clock["t"]

    def reference_step(seed):
        def run():
            clock["refs"] += 1
        return run

    monkeypatch.setitem(timing.CLOCKS, "cpu", now)
    monkeypatch.setattr(timing, "_reference_step", reference_step)
    monkeypatch.setattr(timing, "REFERENCE_INTERVAL_S", 2.0)  # a reference step between every two events
    clock["switch"] = float("inf")
    ticks = timing.time_steps(MLP, "standard", batch=2, steps=1, warmup=0).step_s  # a step's ticks at 3
    clock.update(t=0.0, refs=0, switch=1.5 * ticks)  # in the middle of the first timed step
    t = timing.time_steps(MLP, "standard", batch=2, steps=2, warmup=1, reference=True)
    assert clock["refs"] > 2 + 1  # more than one between every two steps
    at1 = t.at_reference(1.0)
    assert any(raw != pytest.approx(at1.events_s[k]) for k, raw in t.events_s.items())  # some ran at 3x
    # at speed 1 every event is its ticks, whole, but those between the two reference steps around the
    # switch (a segment of two speeds: its events, in one of the two steps, are off by its mixed speed)
    off = {k: v for k, v in at1.events_s.items() if v != pytest.approx(round(v))}
    assert len(off) <= 3 and len(off) < len(at1.events_s) // 4, off


def test_verify_compares_time_at_the_calibrations_core_speed(capsys, tmp_path, monkeypatch):
    """verify times the trainer with reference steps between its steps and puts the step at the calibration's
    core speed. A fake clock (one tick a read, at a steady speed; the reference step does nothing) makes the
    figures exact: a real core's speed changes between the steps and the reference steps around them."""
    from bnncost.trainer import timing

    clock = {"t": 0.0}

    def now():
        clock["t"] += 1e-5
        return clock["t"]

    monkeypatch.setitem(timing.CLOCKS, "cpu", now)
    monkeypatch.setattr(timing, "_reference_step", lambda seed: (lambda: None))
    doc = cal.document(fake(), name="host")
    assert doc["trainer"]["reference_step_s"] == 0.003 and "reference step" in doc["trainer"]["source"]
    f = tmp_path / "host.yaml"
    cal.write_device(doc, str(f))
    with pytest.raises(SystemExit):
        main(["verify", "digits-mlp", "-b", "8", "--device", str(f), "--time-steps", "2", "--json"])
    tc = __import__("json").loads(capsys.readouterr().out)["time"]
    assert tc["calibration_reference_s"] == 0.003 and tc["reference_s"] > 0 and tc["raw_step_s"] > 0
    step = {r["phase"]: r for r in tc["phases"]}["step"]
    # the measured step at the calibration's speed: as timed, scaled by the reference steps' speed then
    assert step["measured_s"] == pytest.approx(tc["raw_step_s"] * 0.003 / tc["reference_s"], rel=1e-9)
    with pytest.raises(SystemExit):
        main(["verify", "digits-mlp", "-b", "8", "--device", str(f), "--time-steps", "2"])
    assert "measured at the calibration's core speed" in " ".join(capsys.readouterr().out.split())


# ---------------------------------------------------------------- bad input: one line, exit 2, nothing written

def _refused(capsys, argv, needle):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and needle in err and err.count("\n") == 1, err


def test_calibrate_refuses_bad_input(capsys, tmp_path):
    _refused(capsys, ["calibrate", "--out", str(tmp_path / "nope" / "x.yaml")], "does not exist")
    _refused(capsys, ["calibrate", "--out", str(tmp_path)], "is a directory")
    _refused(capsys, ["calibrate", "--out", str(tmp_path / "x.yaml"), "--base", "no-such-board"], "unknown device")
    _refused(capsys, ["calibrate", "--out", str(tmp_path / "x.yaml"), "--idle-w", "-1", "--active-w", "3"],
             "--idle-w must be")
    _refused(capsys, ["calibrate", "--out", str(tmp_path / "x.yaml"), "--idle-w", "5"], "go together")
    _refused(capsys, ["calibrate", "--out", str(tmp_path / "x.yaml"), "--idle-w", "5", "--active-w", "3"], "below")
    if os.geteuid() != 0:  # root may write anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
        _refused(capsys, ["calibrate", "--out", str(ro / "x.yaml")], "cannot write")
    if os.path.isdir("/proc/self"):  # permission bits say writable to root, yet nothing can be created there
        _refused(capsys, ["calibrate", "--out", "/proc/x.yaml"], "cannot write in /proc")
    assert not any(p.suffix == ".yaml" for p in tmp_path.rglob("*"))


def test_verify_device_needs_a_calibrated_file(capsys):
    _refused(capsys, ["verify", "digits-mlp", "--device", "raspberry-pi-4b"], "peak-rate lower bounds")


def test_energy_unavailable_is_shown_not_zero(capsys, tmp_path):
    out = tmp_path / "host.yaml"
    cal.write_device(cal.document(fake(), name="host"), str(out))
    with pytest.raises(SystemExit) as exc:
        main(["predict", "mlp", "--device", str(out)])
    text = capsys.readouterr().out
    assert exc.value.code == 0 and "unavailable" in text and "0 J" not in text
    assert not math.isnan(predict("mlp", device=load_device(str(out))).time.seconds_per_step)


def test_conv_rows_and_patch_indices_are_counted_per_pass():
    g = graph_of(parse_model({"name": "x", "input": [8, 8, 3], "layers": [
        {"conv2d": {"filters": 8, "kernel": 3, "padding": "same", "binary": False}}, {"batchnorm": {}},
        {"sign": {}}, {"conv2d": {"filters": 16, "kernel": 3, "stride": 2, "padding": "same"}},
        {"flatten": {}}, {"dense": {"units": 10}}, {"softmax_ce": {}}]}))
    work = {(w.layer, w.event): w for w in operator_work(g, as_strategy("standard"))}
    stem_f, stem_b = work[("conv2d_1", "forward")], work[("conv2d_1", "backward")]
    assert stem_f.units["rows"] == (0, 64) and stem_f.units["patch_indices"] == (0, 64 * 9)
    assert stem_b.units["patch_indices"] == (0, 64 * 9)  # the first layer: the dW operand only, no dX fold
    second = work[("conv2d_2", "backward")]
    assert second.operator == "conv2d.binary.backward.dx"
    assert second.units["rows"] == (0, 2 * 16) and second.units["patch_indices"] == (0, 2 * 16 * 9)
    assert "rows" not in work[("dense_1", "forward")].units  # a dense row is a sample: in its values
    assert "patch_indices" not in work[("dense_1", "backward")].units
    assert work[("batchnorm_1", "forward")].units["rows"] == (0, 64)  # 8x8 positions of 8 channels


def test_calibration_networks_span_narrow_and_wide_layers():
    from bnncost.calibrate.operators import NETWORKS
    channels = set()
    for net in NETWORKS:
        g = graph_of(parse_model(net, net["name"]))
        channels |= {n.channels for n in g.nodes if n.kind == "conv2d"}
    assert min(channels) <= 3 and max(channels) >= 128  # per-index costs separable from per-value ones


def test_the_steps_own_work_is_three_operators_timed_from_its_events():
    from bnncost.costmodel.timing import event_of, measured_seconds, step_operators

    g, s = graph_of(MLP), as_strategy("standard")
    step = {w.operator: w for w in step_operators(g, s)}
    assert step["step.start"].units == {"input_values": (0, 784)} and step["step.start"].event == "overhead"
    # at step_end the ledger writes a row for the data, each weight and its Adam m and v, each batchnorm's
    # params, running and batch statistics, m and v, each saved input and output, the softmax output
    assert step["step.end"].units["tensors"][0] > 4 * 3
    assert step["update.loop"].units == {"tensors": (4, 0)} and step["update.loop"].event == "update"
    biased = graph_of(parse_model({"name": "b", "input": [8], "layers": [
        {"dense": {"units": 4, "binary": False, "bias": True}}, {"relu": {}}, {"dense": {"units": 2}},
        {"batchnorm": {}}, {"softmax_ce": {}}]}))
    assert {w.operator: w for w in step_operators(biased, s)}["update.loop"].units == {"tensors": (4, 0)}
    events = {"step_start": 1.0, "loss": 0.5, "step_end": 2.0, "update": 10.0, "forward:dense_1": 3.0}
    updates = {"dense_1": 4.0, "batchnorm_1": 3.0}
    assert measured_seconds(step["step.start"], events, updates) == 1.0
    assert measured_seconds(step["step.end"], events, updates) == 2.5
    assert measured_seconds(step["update.loop"], events, updates, 3.0) == 3.0  # per step: update less its rules
    work = {(w.layer, w.event): w for w in operator_work(g, s)}
    assert measured_seconds(work[("dense_1", "update")], events, updates) == 4.0
    assert measured_seconds(work[("dense_1", "forward")], events, updates) == 3.0
    assert [event_of(e) for e in ("step_start", "loss", "forward:dense_1", "update", "step_end")] == [
        "overhead", "overhead", "forward", "update", "overhead"]
    ops = [{"operator": w.operator, "formats": w.formats, "fixed_s": 1e-4, "per_unit_s": {"tensors": 1e-6},
            "samples": 3, "source": "hand-made for a test"} for w in step.values()]
    p = predict(MLP, "standard", 8, device=_device_with(ops, call_s=0.0))
    assert p.time.seconds_by_event["overhead"] == pytest.approx(2e-4 + step["step.end"].units["tensors"][0] * 1e-6)


def test_a_file_fitted_for_another_time_model_is_refused_in_one_line(capsys, tmp_path):
    doc = cal.document(fake(), name="host")
    doc["trainer"].pop("time_model")
    out = tmp_path / "old.yaml"
    out.write_text(yaml.safe_dump(doc))
    _refused(capsys, ["predict", "mlp", "--device", str(out)], "run `bnncost calibrate` again")


def _trainer_loops(model, strategy, batch, budget=65536):
    """Run one training step and count, per (layer, event), the numpy products the trainer's matmul runs
    (layers.scratch.product_calls of each call), its loops' iterations (the outermost calls of the
    operator's block and chunk routines) and the patch indices it computes."""
    from bnncost.layers.scratch import product_calls
    from bnncost.trainer import kernels, linear
    from bnncost.trainer.timing import time_steps

    counts: dict[tuple[str, str], dict[str, int]] = {}
    where = {"at": None, "depth": 0}
    real_matmul = linear.matmul

    def counting_matmul(a, af, b, bf, out, of, accumulate=False):
        direct = af == bf == of == "float32" and not accumulate and out.flags.c_contiguous
        c = counts.setdefault(where["at"], {"products": 0, "blocks": 0})
        c["products"] += product_calls(a.shape[0], a.shape[1], b.shape[1], direct)
        return real_matmul(a, af, b, bf, out, of, accumulate)

    def in_event(fn, event):
        def run(self, *args):
            where["at"] = (self.name, event)
            return fn(self, *args)
        return run

    def block(fn):
        def run(self, *args, **kw):
            if where["depth"] == 0:
                counts.setdefault(where["at"], {"products": 0, "blocks": 0})["blocks"] += 1
            where["depth"] += 1
            try:
                return fn(self, *args, **kw)
            finally:
                where["depth"] -= 1
        return run

    patches = {"forward": in_event(linear.Linear.forward, "forward"),
               "backward": in_event(linear.Linear.backward, "backward")}
    for name in ("_signs_into", "_lower", "_operand_rows", "_fold", "_packed_rows"):
        patches[name] = block(getattr(linear.Linear, name))
    saved = {k: getattr(linear.Linear, k) for k in patches}
    real_rows = kernels.Patches.rows

    def counting_rows(self, r0, r1):
        c = counts.setdefault(where["at"], {"products": 0, "blocks": 0})
        c["patch_indices"] = c.get("patch_indices", 0) + (r1 - r0) * self.taps
        return real_rows(self, r0, r1)

    try:
        linear.matmul = counting_matmul
        kernels.Patches.rows = counting_rows
        for k, v in patches.items():
            setattr(linear.Linear, k, v)
        time_steps(model, strategy, batch=batch, steps=1, warmup=0, workspace_budget=budget)
    finally:
        linear.matmul = real_matmul
        kernels.Patches.rows = real_rows
        for k, v in saved.items():
            setattr(linear.Linear, k, v)
    return counts


@pytest.mark.parametrize("strategy", ["standard", "proposed", "proposed-po2", "bop", "ladder-3-binary-dw"])
def test_the_linear_loops_are_the_trainers(strategy):
    """The cost model's replay of a linear operator's loops counts the products and block iterations the
    trainer runs: K cut into blocks of weight rows, rows into chunks, products into tiles."""
    model = parse_model({"name": "loops", "input": [10, 10, 3], "layers": [
        {"conv2d": {"filters": 64, "kernel": 3, "padding": "same"}}, {"batchnorm": {}}, {"sign": {}},
        {"conv2d": {"filters": 32, "kernel": 3, "padding": "same"}}, {"batchnorm": {}}, {"sign": {}},
        {"conv2d": {"filters": 32, "kernel": 3, "padding": "same", "groups": 4}}, {"batchnorm": {}}, {"sign": {}},
        {"conv2d": {"filters": 24, "kernel": 3, "binary": False, "groups": 2}}, {"batchnorm": {}}, {"relu": {}},
        {"flatten": {}}, {"dense": {"units": 300}}, {"batchnorm": {}}, {"sign": {}},
        {"dense": {"units": 10}}, {"batchnorm": {}}, {"softmax_ce": {}}]})
    g, s = graph_of(model), as_strategy(strategy)
    for batch in (3, 40):
        measured = _trainer_loops(model, strategy, batch)
        for w in operator_work(g, s):
            if w.loops is None:
                continue
            got = {m: w.at(m, batch) for m in ("products", "blocks", "patch_indices")}
            want = measured[(w.layer, w.event)]
            assert got == {"patch_indices": 0, **want}, (w.key, batch)
    # the 32-filter conv on 64 channels (K = 576): its dW operand, in chunks, is expanded block by block of
    # its K columns, and each block computes the patch indices again
    back = next(w for w in operator_work(g, s) if (w.layer, w.event) == ("conv2d_2", "backward"))
    assert back.loops(40)["patch_indices"] > 0


def test_fit_leaves_out_mechanisms_an_operator_never_performs():
    g, s = graph_of(MLP), as_strategy("standard")
    first = [w for w in operator_work(g, s) if w.operator == "dense.first.forward"][0]  # a dense layer: no patches
    samples = [Sample(first, b, 1e-4 + 1e-5 * first.at("products", b) + 1e-9 * first.at("weights", b))
               for b in (1, 4, 16, 64, 128)]
    f = fit(samples)[0]
    assert "patch_indices" not in f.per_unit_s and "products" in f.per_unit_s
    assert all(v < 1e-3 for v in f.per_unit_s.values())
