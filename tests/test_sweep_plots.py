"""Sweeps over batch sizes, Markdown tables and plots."""

import json
import struct

import pytest

from bnncost.costmodel import predict
from bnncost.costmodel.sweep import parse_batches, sweep
from bnncost.hardware_profiles import load_device
from test_cli import run


def test_batch_specs():
    assert parse_batches("1:5") == [1, 2, 3, 4, 5]
    assert parse_batches("1:4096", log=True) == [2 ** k for k in range(13)]
    assert parse_batches("3:100", log=True) == [3, 4, 8, 16, 32, 64, 100]
    assert parse_batches("10:50:20") == [10, 30, 50]
    assert parse_batches("64, 8,1,8") == [1, 8, 64]


@pytest.mark.parametrize("spec", ["4096:1", "0:10", "a:b", "1:10:0", "", "1:2:3:4", "-1:5"])
def test_bad_batch_specs(spec):
    with pytest.raises(ValueError, match="--batch"):
        parse_batches(spec)


def test_sweep_equals_single_predictions():
    dev = load_device("raspberry-pi-3b-plus")
    batches = [1, 7, 64, 500, 50_000]
    s = sweep("cnv", ["standard", "proposed"], batches, device=dev)
    for line in s.lines:
        for i, b in enumerate(batches):
            p = predict("cnv", line.strategy, b, device=dev)
            assert line.peak_bytes[i] == p.memory.peak_bytes
            assert line.peak_event[i] == p.memory.peak_event
            assert line.fits[i] == p.fit.fits
            assert line.joules_per_sample[i] == pytest.approx(p.energy.joules_per_sample)
            assert line.seconds_per_sample[i] == pytest.approx(p.time.seconds_per_sample)
        assert line.max_batch == p.fit.max_batch


def test_sweep_cli_marks_where_a_strategy_stops_fitting(capsys):
    code, out, _ = run(capsys, "sweep", "binarynet", "--device", "raspberry-pi-3b-plus", "--batch", "1:2048")
    assert code == 0 and "standard stops fitting (largest batch 112)" in out
    code, out, _ = run(capsys, "sweep", "mlp", "--batch", "1,10,100", "--json")
    doc = json.loads(out)
    assert doc["schema"] == "bnncost.sweep/1" and doc["batches"] == [1, 10, 100]
    assert [ln["strategy"] for ln in doc["lines"]] == ["standard", "proposed"]


@pytest.mark.parametrize("args", [
    ["predict", "mlp", "--markdown"],
    ["compare", "mlp", "--markdown", "--device", "raspberry-pi-4b"],
    ["fit", "mlp", "--device", "raspberry-pi-4b", "--markdown"],
    ["sweep", "mlp", "--batch", "1:64", "--markdown"],
])
def test_markdown_tables(capsys, args):
    code, out, _ = run(capsys, *args)
    assert code == 0
    assert "|---" in out and "┃" not in out and "[bold]" not in out
    header = next(line for line in out.splitlines() if line.startswith("| "))
    rule = out.splitlines()[out.splitlines().index(header) + 1]
    assert header.count("|") == rule.count("|")


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_plots_are_written(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    f = tmp_path / "sweep.png"
    code, out, err = run(capsys, "sweep", "mlp", "--device", "raspberry-pi-3b-plus", "--batch", "1:100000",
                         "--plot", str(f), "--json")
    assert code == 0 and json.loads(out)["schema"] == "bnncost.sweep/1" and f"wrote {f}" in err
    w, h = png_size(f)
    assert w >= 800 and h >= 500
    g = tmp_path / "compare.png"
    code, out, _ = run(capsys, "compare", "cnv", "--ladder", "--device", "raspberry-pi-5", "--plot", str(g))
    assert code == 0 and g.exists() and png_size(g)[0] >= 1200


@pytest.mark.parametrize("args, needle", [
    (["sweep", "mlp", "--batch", "4096:1"], "ends before it starts"),
    (["sweep", "mlp", "--batch", "0:10"], "start at 1"),
    (["sweep", "mlp", "--batch", "a:b"], "is not a range"),
    (["sweep", "mlp", "--plot", "no/such/folder/x.png"], "does not exist"),
    (["compare", "mlp", "--plot", "/tmp/x.jpg"], "must end in .png"),
    (["sweep", "mlp", "--device", "pi-zero"], "unknown device"),
    (["predict", "mlp", "--json", "--markdown"], "exclude each other"),
])
def test_bad_sweep_input(capsys, args, needle):
    code, out, err = run(capsys, *args)
    assert code == 2 and out == "" and needle in err and err.count("\n") == 1


def test_plot_without_matplotlib_says_how_to_get_it(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    code, out, err = run(capsys, "sweep", "mlp", "--plot", str(tmp_path / "x.png"))
    assert code == 2 and out == "" and "pip install 'bnncost[plot]'" in err
    assert not (tmp_path / "x.png").exists()
