"""Operation counts by hand, energy and time on a toy device by hand, fit and max batch."""

import math
from pathlib import Path

import pytest

from bnncost.costmodel import load_strategy, predict
from bnncost.costmodel.energy import EnergyModel, MissingOpError
from bnncost.costmodel.ops import OpCount, Traffic, by_phase, count_ops, totals
from bnncost.hardware_profiles import list_devices, load_device
from bnncost.layers import build_graph, parse_model

TOY = load_device(str(Path(__file__).parent / "data" / "toy-device.yaml"))

DENSE = {"input": [16], "layers": [
    {"dense": {"units": 8}}, {"batchnorm": {}}, {"sign": {}},
    {"dense": {"units": 4}}, {"batchnorm": {}}, {"softmax_ce": {}},
]}
CONV = {"input": [6, 6, 2], "layers": [
    {"conv2d": {"filters": 4, "kernel": 3}}, {"batchnorm": {}}, {"sign": {}},
    {"conv2d": {"filters": 5, "kernel": 3}}, {"batchnorm": {}}, {"sign": {}},
    {"flatten": {}}, {"dense": {"units": 3}}, {"batchnorm": {}}, {"softmax_ce": {}},
]}


def ops_of(doc, strategy, batch):
    g = build_graph(parse_model(doc, "t"))
    ops = count_ops(g, load_strategy(strategy))
    per_layer = {}
    for o in ops:
        per_layer[(o.layer, o.phase, o.kind, o.format)] = o.at(batch)
    return totals(ops, batch), per_layer


def test_dense_standard_by_hand():
    total, layer = ops_of(DENSE, "standard", 2)
    # dense_1 is first: real x binary forward (adds), no dX, dW = X^T dY as MACs
    assert layer[("dense_1", "forward", "add", "float32")] == 2 * 8 * 16
    assert not any(k[0] == "dense_1" and k[1] == "backward_dx" for k in layer)
    assert layer[("dense_1", "backward_dw", "mac", "float32")] == 2 * 8 * 16
    # dense_2: XNOR-popcount forward, additions for dX and dW
    assert layer[("dense_2", "forward", "xnor_popcount", "bool")] == 2 * 4 * 1
    assert layer[("dense_2", "forward", "bit_mac", "bool")] == 2 * 4 * 8
    assert layer[("dense_2", "backward_dx", "add", "float32")] == 2 * 4 * 8
    assert layer[("dense_2", "backward_dw", "add", "float32")] == 2 * 4 * 8
    assert total["float32"] == {
        "add": 1422, "mac": 256, "mul": 1416, "sqrt": 196, "div": 204, "compare": 360, "abs": 16, "exp": 10,
    }
    assert total["bool"] == {"xnor_popcount": 8, "bit_mac": 64}


def test_dense_proposed_by_hand():
    total, layer = ops_of(DENSE, "proposed", 2)
    assert layer[("dense_1", "forward", "add", "float16")] == 256
    assert layer[("dense_1", "backward_dw", "mac", "float16")] == 256
    assert layer[("dense_1", "backward_dw", "compare", "float16")] == 128  # sign of dW
    # adam with a sign gradient: no square of the gradient, 3 mul per weight
    assert layer[("dense_1", "update", "mul", "float16")] == 3 * 128
    # l1 batchnorm: no square root
    assert ("batchnorm_1", "forward", "sqrt", "float16") not in layer
    assert layer[("batchnorm_1", "forward", "abs", "float16")] == 2 * 16
    assert "float32" not in total


def test_po2_gradients_turn_multiplications_into_shifts():
    _, layer = ops_of(DENSE, "proposed-po2", 2)
    assert layer[("dense_1", "backward_dw", "shift", "po2")] == 256
    assert layer[("dense_1", "backward_dw", "add", "float16")] == 256
    assert layer[("sign_1", "backward_dx", "shift", "po2")] == 16
    assert ("dense_1", "backward_dw", "mac", "float16") not in layer


def test_conv_by_hand():
    b = 3
    total, layer = ops_of(CONV, "standard", b)
    # conv2d_1: 6x6x2 -> 4x4x4 (valid 3x3), K = 18, first layer
    assert layer[("conv2d_1", "forward", "add", "float32")] == b * 16 * 4 * 18
    assert not any(k[0] == "conv2d_1" and k[1] == "backward_dx" for k in layer)
    assert layer[("conv2d_1", "backward_dw", "mac", "float32")] == b * 16 * 4 * 18
    # conv2d_2: 4x4x4 -> 2x2x5, K = 36: one 64-bit word per output
    assert layer[("conv2d_2", "forward", "xnor_popcount", "bool")] == b * 4 * 5 * 1
    assert layer[("conv2d_2", "forward", "bit_mac", "bool")] == b * 4 * 5 * 36
    # dX: M x K additions plus folding the column gradient back: R x K
    assert layer[("conv2d_2", "backward_dx", "add", "float32")] == b * 4 * 5 * 36 + b * 4 * 36
    assert layer[("conv2d_2", "backward_dw", "add", "float32")] == b * 4 * 5 * 36
    # dense_1 after flatten: K = 20
    assert layer[("dense_1", "forward", "xnor_popcount", "bool")] == b * 3
    assert total["bool"]["bit_mac"] == b * (4 * 5 * 36 + 3 * 20)


def test_ops_are_affine_in_batch():
    g = build_graph(parse_model(CONV, "t"))
    ops = count_ops(g, load_strategy("proposed"))
    t1, t2, t3 = (totals(ops, b) for b in (1, 2, 3))
    for fmt in t1:
        for kind in t1[fmt]:
            assert t3[fmt][kind] - t2[fmt][kind] == t2[fmt][kind] - t1[fmt][kind]
    assert set(by_phase(ops, 2)) == {"forward", "backward_dx", "backward_dw", "update"}


def test_energy_of_a_toy_device_by_hand():
    ops = [OpCount("a", "forward", "add", "float32", 1000, 0),
           OpCount("b", "forward", "mac", "float32", 0, 10),
           OpCount("b", "forward", "bit_mac", "bool", 0, 640)]  # informational: no energy
    traffic = [Traffic("a", "forward", 1000, 0, 1000, 0),  # 2000 B: fits l1 (4 KiB)
               Traffic("b", "forward", 0, 125_000, 0, 125_000)]  # 1 MB at B = 4: dram
    et = EnergyModel(ops, traffic, TOY).evaluate(4)
    # compute: 1000 adds x 1 pJ + 40 MACs x 4 pJ
    assert math.isclose(et.compute_j[0], 1160e-12)
    # memory: 2000 B x 1 pJ/B (l1) + 1e6 B x 100 pJ/B (dram)
    assert math.isclose(et.memory_j[0], 2000e-12 + 1e8 * 1e-12)
    # time: a = max(1000 / 1e9, 2000 / 1e10) = 1 us; b = max(40 / 1e8, 1e6 / 1e9) = 1 ms
    assert math.isclose(et.seconds[0], 1e-6 + 1e-3)
    assert math.isclose(et.static_j[0], 2 * (1e-6 + 1e-3))
    assert math.isclose(et.joules[0], 1160e-12 + 2000e-12 + 1e-4 + 2 * 1.001e-3)
    assert et.bytes_by_level["l1"][0] == 2000 and et.bytes_by_level["dram"][0] == 1e6


def test_missing_op_names_kind_format_and_layer():
    # the toy device lists no int8 at all
    with pytest.raises(MissingOpError, match=r"device toy has no exp at int8 \(needed by b forward\)"):
        EnergyModel([OpCount("b", "forward", "exp", "int8", 1, 0)], [], TOY)


def test_prediction_on_a_device_reports_energy_time_and_fit():
    p = predict(build_graph(parse_model(DENSE, "t")), "standard", 4, device=TOY, epoch_samples=10)
    e, t, f = p.energy, p.time, p.fit
    assert math.isclose(e.joules_per_step, e.compute_j + e.memory_j + e.static_j)
    assert math.isclose(e.dynamic_j, e.compute_j + e.memory_j)
    assert math.isclose(e.joules_per_sample * 4, e.joules_per_step)
    assert math.isclose(t.seconds_per_sample * 4, t.seconds_per_step) and t.seconds_per_step > 0
    assert math.isclose(e.static_j, TOY.power.idle_w * t.seconds_per_step)
    # 10 samples at B = 4: two full steps and one step of 2
    last = predict(build_graph(parse_model(DENSE, "t")), "standard", 2, device=TOY)
    assert math.isclose(e.joules_per_epoch, 2 * e.joules_per_step + last.energy.joules_per_step)
    assert f.usable_bytes == 64 * 1024 and f.fits
    at_max = predict(build_graph(parse_model(DENSE, "t")), "standard", f.max_batch).memory.peak_bytes
    above = predict(build_graph(parse_model(DENSE, "t")), "standard", f.max_batch + 1).memory.peak_bytes
    assert at_max <= f.usable_bytes < above


@pytest.mark.parametrize("device", list_devices())
def test_every_shipped_device_prices_every_strategy(device):
    dev = load_device(device)
    for strategy in ("standard", "proposed", "proposed-po2", "bop"):
        p = predict("mlp", strategy, 100, device=dev)
        assert p.energy.joules_per_step > 0 and p.time.seconds_per_step > 0
        assert p.fit.max_batch > 100


def test_proposed_saves_energy_on_every_device():
    for device in list_devices():
        dev = load_device(device)
        std = predict("cnv", "standard", 100, device=dev).energy
        prop = predict("cnv", "proposed", 100, device=dev).energy
        assert prop.dynamic_j < std.dynamic_j and prop.joules_per_step <= std.joules_per_step
