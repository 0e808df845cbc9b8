"""The device tables: every shipped file loads, every number has a source,
quantities parse, and every kind of bad file fails with one clear line."""

from __future__ import annotations

import copy
import math
import re
from importlib import resources
from pathlib import Path

import pytest
import yaml

from bnncost.hardware_profiles import Device, DeviceError, list_devices, load_device, parse_quantity
from bnncost.hardware_profiles.schema import FORMATS, OP_KINDS

SHIPPED = [
    "cortex-a53-generic",
    "cortex-a72-generic",
    "jetson-nano",
    "jetson-orin-nano",
    "raspberry-pi-3b-plus",
    "raspberry-pi-4b",
    "raspberry-pi-5",
]

# what the cost model relies on every shipped table to list
REQUIRED_OPS = {
    "float32": {"mac", "add", "mul", "div", "sqrt", "abs", "compare", "exp"},
    "float16": {"mac", "add", "mul", "div", "sqrt", "abs", "compare", "exp"},
    "int32": {"add", "mul", "mac", "compare"},
    "int8": {"add", "mul", "mac"},
    "po2": {"shift"},
    "bool": {"xnor_popcount"},
}


def raw(name: str) -> dict:
    """A shipped device file as a plain dict, to mutate in error tests."""
    text = resources.files("bnncost.hardware_profiles").joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def write(tmp_path: Path, data: object, name: str = "mydevice.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def assert_one_line_error(excinfo: pytest.ExceptionInfo, file: str, *fragments: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    assert message.startswith(f"{file}: "), message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def refused(tmp_path, data: dict, *fragments: str) -> str:
    """Write a device document, load it, and check it is refused with one line naming the file."""
    path = write(tmp_path, data)
    with pytest.raises(DeviceError) as excinfo:
        load_device(path)
    return assert_one_line_error(excinfo, str(path), *fragments)


# ---------------------------------------------------------------- shipped files


def test_list_devices_is_exactly_the_shipped_set():
    assert list_devices() == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_device_loads_with_plain_numbers(name):
    device = load_device(name)
    assert isinstance(device, Device)
    assert device.name == name
    assert device.file.endswith(f"{name}.yaml")
    mem = device.memory
    assert isinstance(mem.ram_bytes, int) and mem.ram_bytes > 0
    assert isinstance(mem.usable_bytes, int) and 0 < mem.usable_bytes <= mem.ram_bytes
    assert mem.levels[-1].name == "dram"
    assert mem.levels[-1].capacity_bytes == mem.ram_bytes
    previous = 0
    for level in mem.levels:
        assert isinstance(level.capacity_bytes, int) and level.capacity_bytes > previous
        previous = level.capacity_bytes
        assert isinstance(level.energy_pj_per_byte, float) and level.energy_pj_per_byte > 0
        assert isinstance(level.bandwidth_bytes_per_s, float) and level.bandwidth_bytes_per_s > 0
    # DRAM costs more per byte than any cache, and is slower
    assert mem.dram.energy_pj_per_byte == max(lv.energy_pj_per_byte for lv in mem.levels)
    assert mem.dram.bandwidth_bytes_per_s == min(lv.bandwidth_bytes_per_s for lv in mem.levels)
    assert 0 < device.power.idle_w <= device.power.active_w
    for fmt, kinds in REQUIRED_OPS.items():
        for kind in kinds:
            op = device.op(fmt, kind)
            assert isinstance(op.pj, float) and op.pj > 0 and math.isfinite(op.pj)
            assert isinstance(op.per_s, float) and op.per_s > 0 and math.isfinite(op.per_s)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_number_in_a_shipped_file_has_a_source(name):
    device = load_device(name)
    pairs = device.source_paths()
    n_ops = sum(len(kinds) for kinds in device.ops.values())
    assert len(pairs) == 2 + len(device.memory.levels) + n_ops + 1
    for path, source in pairs:
        assert source.strip(), path
        if not re.search(r"\s", source):
            assert source in device.sources, path
    for key, citation in device.sources.items():
        assert citation.strip(), key


@pytest.mark.parametrize("name", SHIPPED)
def test_citation_keys_named_in_derivations_are_defined(name):
    """A derivation may cite a key in its text; that key must be in the file."""
    all_keys = {key for other in SHIPPED for key in load_device(other).sources}
    device = load_device(name)
    for path, source in device.source_paths():
        for key in all_keys:
            if re.search(rf"\b{re.escape(key)}\b", source):
                assert key in device.sources, f"{name}: {path} cites {key!r}, which is not in its sources"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_figures_are_in_plausible_ranges(name):
    device = load_device(name)
    # energy per op is the board's power above idle at full load over the op's whole-chip rate
    dynamic_w = device.power.active_w - device.power.idle_w
    for fmt, kinds in device.ops.items():
        for kind, op in kinds.items():
            assert op.pj == pytest.approx(dynamic_w / op.per_s * 1e12, rel=2e-3), (fmt, kind)
    assert 10 < device.op("float32", "add").pj < 1000
    assert device.op("int8", "add").pj < device.op("int32", "add").pj <= device.op("float32", "add").pj
    assert 50 < device.memory.dram.energy_pj_per_byte < 500
    assert 1e9 < device.memory.dram.bandwidth_bytes_per_s < 100e9
    assert 0.5 < device.power.idle_w < 20 and device.power.active_w < 30
    # one XNOR-popcount word does 64 bit-MACs: far cheaper per bit-MAC than a float MAC
    assert device.op("bool", "xnor_popcount").pj / 64 < device.op("float32", "mac").pj / 10


def test_op_accessor_reports_a_missing_operation():
    device = load_device("raspberry-pi-4b")
    with pytest.raises(DeviceError) as excinfo:
        device.op("int8", "exp")
    assert str(excinfo.value) == "device raspberry-pi-4b has no exp at int8"
    assert not device.has_op("int16", "exp")
    assert not device.has_op("uint8", "xnor_popcount")
    assert device.has_op("float32", "add")


@pytest.mark.parametrize("name", SHIPPED)
def test_formats_without_native_arithmetic_cost_their_computing_format(name):
    """None of these cores has BF16 arithmetic; A53/A57/A72 have no FP16 arithmetic either."""
    device = load_device(name)
    for kind in REQUIRED_OPS["float32"]:
        assert device.op("bfloat16", kind).pj == device.op("float32", kind).pj
        assert device.op("bfloat16", kind).per_s == device.op("float32", kind).per_s
    native_fp16 = name in ("raspberry-pi-5", "jetson-orin-nano")  # Cortex-A76 / A78AE
    fp16, fp32 = device.op("float16", "mac"), device.op("float32", "mac")
    assert (fp16.per_s == 2 * fp32.per_s) if native_fp16 else (fp16.per_s == fp32.per_s)
    assert (fp16.pj < fp32.pj) if native_fp16 else (fp16.pj == fp32.pj)
    assert device.op("uint8", "mac").pj == device.op("int8", "mac").pj


def test_vocabulary():
    assert set(FORMATS) == {"float32", "float16", "bfloat16", "int32", "int16", "int8", "uint8", "po2", "bool"}
    assert set(OP_KINDS) == {"mac", "add", "mul", "div", "sqrt", "abs", "compare", "exp", "shift", "xnor_popcount"}


def test_load_by_path_and_pathlike(tmp_path):
    path = write(tmp_path, raw("raspberry-pi-5"))
    by_str = load_device(str(path))
    by_path = load_device(path)
    assert by_str.name == by_path.name == "raspberry-pi-5"
    assert by_str.file == str(path)
    assert by_str.op("float16", "mac").pj == load_device("raspberry-pi-5").op("float16", "mac").pj


def test_a_yml_suffix_alone_means_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, raw("jetson-nano"), name="board.yml")
    assert load_device("board.yml").name == "jetson-nano"


# ---------------------------------------------------------------- units


@pytest.mark.parametrize(
    ("value", "kind", "expected"),
    [
        ("32 KiB", "bytes", 32 * 1024),
        ("1 GiB", "bytes", 2**30),
        ("4 GB", "bytes", 4 * 10**9),
        ("512 MB", "bytes", 512 * 10**6),
        ("1.5 KiB", "bytes", 1536),
        ("2048", "bytes", 2048),
        (1024, "bytes", 1024),
        (1e9, "bytes", 10**9),
        ("0.9 pJ", "energy", 0.9),
        ("1.3 nJ", "energy", 1300.0),
        ("50 fJ", "energy", 0.05),
        (2.5, "energy", 2.5),
        ("1.25 pJ/B", "energy_per_byte", 1.25),
        ("0.2 pJ/bit", "energy_per_byte", 1.6),
        ("1 nJ/B", "energy_per_byte", 1000.0),
        ("1.4e9 /s", "rate", 1.4e9),
        ("5.6 G/s", "rate", 5.6e9),
        ("2 Gops/s", "rate", 2e9),
        ("12.8 GB/s", "byte_rate", 12.8e9),
        ("1 GiB/s", "byte_rate", float(2**30)),
        ("1.9 W", "power", 1.9),
        ("350 mW", "power", 0.35),
        (0, "power", 0.0),
    ],
)
def test_parse_quantity_good(value, kind, expected):
    result = parse_quantity(value, kind)
    assert result == pytest.approx(expected)
    if kind == "bytes":
        assert isinstance(result, int)
    else:
        assert isinstance(result, float)


@pytest.mark.parametrize(
    ("value", "kind", "fragment"),
    [
        ("32 KiB", "energy", "bytes unit"),
        ("0.9 pJ", "bytes", "energy unit"),
        ("5 W", "rate", "power unit"),
        ("12.8 GB/s", "rate", "byte rate unit"),
        ("abc", "energy", "cannot read"),
        ("3 furlongs", "bytes", "unknown unit"),
        ("-1 pJ", "energy", "negative"),
        (-3, "bytes", "negative"),
        ("nan pJ", "energy", "NaN"),
        (float("nan"), "power", "NaN"),
        (float("inf"), "rate", "infinite"),
        ("1.5 B", "bytes", "whole number"),
        (True, "bytes", "expected a number"),
        (None, "energy", "expected a number"),
        ([1, 2], "energy", "expected a number"),
    ],
)
def test_parse_quantity_bad(value, kind, fragment):
    with pytest.raises(DeviceError) as excinfo:
        parse_quantity(value, kind, field="memory.levels[0].capacity_bytes", file="board.yaml")
    message = assert_one_line_error(excinfo, "board.yaml", "memory.levels[0].capacity_bytes", fragment)
    assert isinstance(excinfo.value, ValueError)
    assert excinfo.value.file == "board.yaml"
    assert excinfo.value.field == "memory.levels[0].capacity_bytes"
    assert message.count(": ") >= 2


# ---------------------------------------------------------------- error files


def test_missing_number(tmp_path):
    data = raw("raspberry-pi-4b")
    del data["ops"]["float32"]["add"]["pj"]
    refused(tmp_path, data, "ops.float32.add.pj", "missing")


def test_missing_group(tmp_path):
    data = raw("raspberry-pi-4b")
    del data["power"]
    refused(tmp_path, data, "power", "missing")


def test_negative_number(tmp_path):
    data = raw("raspberry-pi-3b-plus")
    data["memory"]["levels"][1]["energy_pj_per_byte"] = "-3 pJ/B"
    refused(tmp_path, data, "memory.levels[1].energy_pj_per_byte", "negative")


def test_negative_plain_number(tmp_path):
    data = raw("raspberry-pi-3b-plus")
    data["power"]["idle_w"] = -1.0
    refused(tmp_path, data, "power.idle_w", "negative")


def test_bad_unit(tmp_path):
    data = raw("jetson-nano")
    data["memory"]["ram_bytes"]["value"] = "4 pJ"
    refused(tmp_path, data, "memory.ram_bytes.value", "energy unit", "bytes")


def test_unparseable_quantity(tmp_path):
    data = raw("jetson-nano")
    data["ops"]["int8"]["mac"]["per_s"] = "fast"
    refused(tmp_path, data, "ops.int8.mac.per_s", "cannot read")


def test_zero_throughput_is_rejected(tmp_path):
    data = raw("jetson-nano")
    data["ops"]["int8"]["mac"]["per_s"] = 0
    refused(tmp_path, data, "ops.int8.mac.per_s", "greater than 0")


def test_unknown_device_name_lists_known_names():
    with pytest.raises(DeviceError) as excinfo:
        load_device("raspberry-pi-9")
    message = str(excinfo.value)
    assert "\n" not in message
    assert message.startswith("raspberry-pi-9: unknown device")
    for name in SHIPPED:
        assert name in message


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere" / "board.yaml"
    with pytest.raises(DeviceError) as excinfo:
        load_device(path)
    assert_one_line_error(excinfo, str(path), "not found")


def test_malformed_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: broken\nmemory: {ram_bytes: [1, 2\npower: {}\n", encoding="utf-8")
    with pytest.raises(DeviceError) as excinfo:
        load_device(path)
    assert_one_line_error(excinfo, str(path), "line ", "malformed YAML")


def test_yaml_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n", encoding="utf-8")
    with pytest.raises(DeviceError) as excinfo:
        load_device(path)
    assert_one_line_error(excinfo, str(path), "expected a mapping")


def test_duplicate_key(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("name: a\nname: b\n", encoding="utf-8")
    with pytest.raises(DeviceError) as excinfo:
        load_device(path)
    assert_one_line_error(excinfo, str(path), "duplicate key 'name'")


def test_unknown_field(tmp_path):
    data = raw("raspberry-pi-5")
    data["memory"]["levels"][0]["latency_ns"] = 1
    refused(tmp_path, data, "memory.levels[0].latency_ns", "unknown field")


def test_unknown_top_level_field(tmp_path):
    data = raw("raspberry-pi-5")
    data["gpu"] = {"cores": 128}
    refused(tmp_path, data, "gpu", "unknown field")


def test_unknown_format_and_kind(tmp_path):
    data = raw("raspberry-pi-5")
    data["ops"]["float64"] = copy.deepcopy(data["ops"]["float32"])
    refused(tmp_path, data, "ops", "unknown format 'float64'", "float32")

    data = raw("raspberry-pi-5")
    data["ops"]["float32"]["fma"] = copy.deepcopy(data["ops"]["float32"]["mac"])
    refused(tmp_path, data, "ops.float32", "unknown kind 'fma'")


def test_source_key_must_exist(tmp_path):
    data = raw("raspberry-pi-4b")
    data["ops"]["int32"]["add"]["source"] = "nosuchpaper2020"
    refused(tmp_path, data, "ops.int32.add.source", "'nosuchpaper2020'", "not in 'sources'")


def test_a_source_key_that_exists_is_accepted(tmp_path):
    data = raw("raspberry-pi-4b")
    data["ops"]["int32"]["add"]["source"] = "horowitz2014"
    assert load_device(write(tmp_path, data)).op("int32", "add").source == "horowitz2014"


def test_empty_and_missing_source(tmp_path):
    data = raw("raspberry-pi-4b")
    data["power"]["source"] = "   "
    refused(tmp_path, data, "power.source", "needs a source")

    data = raw("raspberry-pi-4b")
    del data["memory"]["levels"][2]["source"]
    refused(tmp_path, data, "memory.levels[2].source", "missing")


def test_levels_must_grow_and_usable_fit_in_ram(tmp_path):
    data = raw("raspberry-pi-5")
    data["memory"]["levels"][1]["capacity_bytes"] = "16 KiB"
    refused(tmp_path, data, "memory.levels[1].capacity_bytes", "smallest first")

    data = raw("raspberry-pi-5")
    data["memory"]["usable_bytes"]["value"] = "9 GiB"
    refused(tmp_path, data, "memory.usable_bytes.value", "exceed RAM")


def test_active_power_below_idle(tmp_path):
    data = raw("cortex-a72-generic")
    data["power"]["active_w"] = "1 W"
    refused(tmp_path, data, "power.active_w", "below idle")


def test_no_pydantic_or_yaml_exception_escapes(tmp_path):
    """Whatever is in the file, the caller sees a DeviceError."""
    from pydantic import ValidationError

    bad_documents = ["", "null", "42", "name: [", "memory: 3", "ops: {float32: 1}", "\t- x: :"]
    for i, text in enumerate(bad_documents):
        path = tmp_path / f"bad{i}.yaml"
        path.write_text(text, encoding="utf-8")
        with pytest.raises(DeviceError) as excinfo:
            load_device(path)
        assert not isinstance(excinfo.value, (ValidationError, yaml.YAMLError))
        assert_one_line_error(excinfo, str(path))
