"""The command line as a user meets it: tables, JSON, and one-line errors with exit code 2."""

import json

import pytest

from bnncost import cli


def run(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        cli.main(list(args))
    got = capsys.readouterr()
    return exc.value.code, got.out, got.err


def test_compare_table(capsys):
    code, out, err = run(capsys, "compare", "mlp")
    assert code == 0 and err == ""
    assert "standard" in out and "proposed" in out and "saving vs standard" in out
    assert "MiB" in out and "per sample x batch" in out and "optimizer_state" in out


def test_compare_ladder_shows_each_step(capsys):
    code, out, _ = run(capsys, "compare", "cnv", "--ladder")
    assert code == 0
    assert "saving of this step" in out and "ladder-2-l1-batchnorm" in out


def test_predict_json_is_one_document(capsys):
    code, out, err = run(capsys, "predict", "mlp", "--batch", "100", "--json")
    assert code == 0 and err == ""
    doc = json.loads(out)
    assert doc["schema"] == "bnncost.prediction/2"
    assert doc["model"] == "mlp" and doc["strategy"] == "proposed" and doc["batch"] == 100
    assert doc["retention"] == "step" and doc["workspace_budget"] == 0
    m = doc["memory"]
    assert isinstance(m["peak_bytes"], int) and m["peak_event"].startswith("backward:")
    assert m["fixed_bytes"] + m["per_sample_bytes"] * 100 == m["peak_bytes"]
    assert sum(m["by_role"].values()) == m["peak_bytes"]
    v = m["variables"][0]
    assert set(v) >= {"name", "layer", "role", "format", "shape", "bytes", "alloc_event", "free_event"}
    assert isinstance(doc["parameters"], int)
    assert "ops" in doc and doc["ops"]["bit_macs"] > 0


def test_compare_json(capsys):
    code, out, _ = run(capsys, "compare", "mlp", "--strategies", "standard,proposed,bop", "--json")
    doc = json.loads(out)
    assert doc["schema"] == "bnncost.comparison/2" and doc["baseline"] == "standard"
    assert doc["model"] == "mlp" and doc["batch"] == 100 and "device" not in doc
    assert [p["strategy"] for p in doc["predictions"]] == ["standard", "proposed", "bop"]
    assert doc["savings"]["standard"]["peak_bytes_ratio"] == 1.0
    assert doc["savings"]["proposed"]["peak_bytes_ratio"] > 2


@pytest.mark.parametrize("by, needle", [("role", "by role"), ("layer", "dense_1"), ("variable", "dense_1.adam_m")])
def test_predict_breakdowns(capsys, by, needle):
    code, out, _ = run(capsys, "predict", "mlp", "--by", by)
    assert code == 0 and needle in out


def test_predict_backward_retention_and_workspace(capsys):
    code, out, _ = run(capsys, "predict", "cnv", "--retention", "backward", "--workspace", "65536", "--json")
    doc = json.loads(out)
    assert doc["retention"] == "backward" and doc["workspace_budget"] == 65536
    assert "workspace" in {v["role"] for v in doc["memory"]["variables"]}


def test_listings(capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0 and "resnete18" in out
    code, out, _ = run(capsys, "strategies", "--json")
    names = [s["name"] for s in json.loads(out)["strategies"]]
    assert {"standard", "proposed", "proposed-po2", "bop", "ladder-3-binary-dw"} <= set(names)


@pytest.mark.parametrize("args, needle", [
    (["predict", "nosuch"], "unknown model 'nosuch'"),
    (["predict", "mlp", "--batch", "-3"], "batch size must be a positive integer"),
    (["predict", "mlp", "--batch", "0"], "batch size must be a positive integer"),
    (["predict", "mlp", "--batch", "x"], "--batch"),
    (["predict", "mlp", "--strategy", "fast"], "unknown strategy 'fast'"),
    (["predict", "mlp", "--retention", "never"], "--retention"),
    (["predict", "mlp", "--workspace", "-1"], "--workspace"),
    (["predict", "mlp", "--by", "colour"], "--by"),
    (["predict", "missing/model.yaml"], "model file not found"),
    (["compare", "mlp", "--strategies", ","], "--strategies"),
    (["predict", "mlp", "--epoch-samples", "1000"], "add --device"),
    (["predict", "mlp", "--epoch-samples", "0", "--device", "jetson-nano"], "--epoch-samples"),
])
def test_bad_input_is_one_line_exit_2(capsys, args, needle):
    code, out, err = run(capsys, *args)
    assert code == 2 and out == ""
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_bad_model_file_names_file_and_layer(capsys, tmp_path):
    f = tmp_path / "m.yaml"
    f.write_text("input: [2, 2, 1]\nlayers:\n  - conv2d: {filters: 4, kernel: 3}\n  - softmax_ce: {}\n")
    code, out, err = run(capsys, "predict", str(f))
    assert code == 2 and str(f) in err and "conv2d_1" in err and "3x3 valid conv on a 2x2 map" in err


TOY = "tests/data/toy-device.yaml"


def test_compare_on_a_device_shows_energy_time_and_savings(capsys):
    code, out, err = run(capsys, "compare", "binarynet", "--device", "raspberry-pi-3b-plus")
    assert code == 0 and err == ""
    assert "energy per step" in out and "energy saving" in out and "time per step" in out
    assert "largest batch that fits" in out


def test_compare_json_gains_energy_savings(capsys):
    code, out, _ = run(capsys, "compare", "mlp", "--device", "jetson-nano", "--json")
    doc = json.loads(out)
    assert doc["savings"]["proposed"]["joules_per_step_ratio"] > 1 and doc["device"] == "jetson-nano"
    p = doc["predictions"][1]
    assert p["device"] == "jetson-nano"
    assert set(p["energy"]) >= {"joules_per_step", "compute_j", "memory_j", "static_j"}
    assert p["time"]["seconds_per_step"] > 0
    assert set(p["fit"]) >= {"fits", "usable_bytes", "max_batch"}
    assert set(p["ops"]) >= {"by_phase", "total"}


def test_predict_on_a_device_table(capsys):
    code, out, _ = run(capsys, "predict", "mlp", "--batch", "200", "--device", "raspberry-pi-3b-plus")
    assert code == 0 and "On raspberry-pi-3b-plus" in out and "per epoch (60,000 samples)" in out
    assert "xnor_popcount" in out and "add float16" in out


def test_fit_and_devices(capsys):
    code, out, _ = run(capsys, "fit", "mlp", "--device", "jetson-nano")
    assert code == 0 and "Largest batch that fits" in out
    code, out, _ = run(capsys, "fit", "mlp", "--device", "raspberry-pi-3b-plus", "--json")
    doc = json.loads(out)
    assert doc["schema"] == "bnncost.fit/2"
    assert doc["strategies"][1]["fit"]["max_batch"] > doc["strategies"][0]["fit"]["max_batch"]
    code, out, _ = run(capsys, "devices", "--json")
    assert "raspberry-pi-3b-plus" in [d["name"] for d in json.loads(out)["devices"]]


@pytest.mark.parametrize("args, needle", [
    (["predict", "mlp", "--device", "pi-zero"], "raspberry-pi-3b-plus"),
    (["predict", "mlp", "--device", "nowhere/dev.yaml"], "nowhere/dev.yaml"),
    (["fit", "mlp"], "--device"),
])
def test_bad_device_input_is_one_line_exit_2(capsys, args, needle):
    code, out, err = run(capsys, *args)
    assert code == 2 and out == "" and needle in err and err.count("\n") == 1


def test_device_lacking_an_op_the_model_needs(capsys, tmp_path):
    f = tmp_path / "nopo2.yaml"
    f.write_text("\n".join(line for line in open(TOY).read().splitlines() if "shift" not in line and "po2" not in line))
    code, out, err = run(capsys, "predict", "mlp", "--strategy", "proposed-po2", "--device", str(f))
    assert code == 2 and out == "" and "no shift at po2" in err and "proposed-po2" in err


def test_fit_when_nothing_fits(capsys):
    code, out, _ = run(capsys, "fit", "mlp", "--device", TOY, "--json")
    doc = json.loads(out)
    assert [s["fit"]["max_batch"] for s in doc["strategies"]] == [0, 0]
    code, out, _ = run(capsys, "fit", "mlp", "--device", TOY)
    assert code == 0 and "no" in out


def test_sweep_table_of_a_long_sweep_is_sampled(capsys):
    code, out, _ = run(capsys, "sweep", "mlp", "--batch", "1:100000", "--linear", "--device", "raspberry-pi-3b-plus")
    assert code == 0 and "showing" in out and "of 100,000 batch sizes" in out
    assert "standard stops fitting (largest batch 47,351)" in out
