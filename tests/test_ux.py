"""What a user sees (issue 12): strategy files kept as loaded, honest per-role savings, one vocabulary."""

import json

import pytest

from bnncost import cli


def run(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        cli.main(list(args))
    got = capsys.readouterr()
    return exc.value.code, got.out, got.err


@pytest.fixture
def same_name(tmp_path):
    """A user's strategy called `proposed` that keeps its Adam moments in float32: a larger peak."""
    f = tmp_path / "fat-adam.yaml"
    f.write_text("name: proposed\nextends: proposed\nformats:\n  optimizer_state: float32\n")
    return str(f)


# ---------------------------------------------------------------- wrong answers

def test_fit_accepts_a_strategy_file(capsys, tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("extends: proposed\nformats:\n  optimizer_state: float32\n")
    code, out, err = run(capsys, "fit", "mlp", "--device", "jetson-nano", "--strategies", str(mine), "--json")
    assert code == 0, err
    row = json.loads(out)["strategies"][0]
    code, out, _ = run(capsys, "predict", "mlp", "--strategy", str(mine), "--json")
    assert row["memory"]["peak_bytes"] == json.loads(out)["memory"]["peak_bytes"]


def test_fit_never_swaps_a_same_name_file_for_the_shipped_strategy(capsys, same_name):
    code, out, err = run(capsys, "fit", "mlp", "--device", "jetson-nano", "--strategies", f"proposed,{same_name}",
                         "--json")
    assert code == 0, err
    shipped, mine = json.loads(out)["strategies"]
    assert shipped["strategy"] != mine["strategy"] and "fat-adam" in mine["strategy"]
    assert mine["memory"]["peak_bytes"] > shipped["memory"]["peak_bytes"]
    assert mine["fit"]["max_batch"] < shipped["fit"]["max_batch"]
    assert mine["fit"]["peak_bytes_at_max_batch"] <= mine["fit"]["usable_bytes"]


def test_compare_keeps_two_strategies_with_one_name_apart(capsys, same_name):
    code, out, err = run(capsys, "compare", "mlp", "--strategies", f"proposed,{same_name}", "--json")
    assert code == 0, err
    doc = json.loads(out)
    labels = [p["strategy"] for p in doc["predictions"]]
    assert len(set(labels)) == 2 and doc["strategies"] == labels
    assert set(doc["savings"]) == set(labels)
    assert doc["savings"][labels[1]]["peak_bytes_ratio"] < 1  # float32 moments: more memory than proposed
    code, out, _ = run(capsys, "compare", "mlp", "--strategies", f"proposed,{same_name}")
    assert "fat-adam" in out


def test_sweep_labels_same_name_strategies_apart(capsys, same_name):
    code, out, _ = run(capsys, "sweep", "mlp", "--strategies", f"proposed,{same_name}", "--batch", "1,8", "--json")
    lines = json.loads(out)["lines"]
    assert lines[0]["strategy"] != lines[1]["strategy"]
    assert lines[1]["peak_bytes"][0] > lines[0]["peak_bytes"][0]


def test_compare_by_role_shows_the_peak_and_each_roles_own_largest(capsys):
    code, out, _ = run(capsys, "compare", "mlp", "--json")
    doc = json.loads(out)
    std, prop = (p["memory"] for p in doc["predictions"])
    # float32 -> 1 bit is 32x: the honest saving of weight_grad reads the role's own largest bytes
    assert std["by_role_max"]["weight_grad"] / prop["by_role_max"]["weight_grad"] == pytest.approx(32, rel=0.01)
    for m in (std, prop):
        assert sum(m["by_role"].values()) == m["peak_bytes"]
        assert all(m["by_role_max"][r] >= n for r, n in m["by_role"].items())
    code, out, _ = run(capsys, "compare", "mlp")
    assert "by role at the peak" in out and "largest in the step" in out and "saving of the largest" in out


# ---------------------------------------------------------------- one vocabulary

def test_version(capsys):
    from bnncost import __version__

    code, out, err = run(capsys, "--version")
    assert code == 0 and out.strip() == f"bnncost {__version__}" and __version__[0].isdigit()


@pytest.mark.parametrize("command", ["predict", "compare", "fit", "sweep"])
def test_byte_counts_take_units_everywhere(capsys, command):
    dev = ["--device", "jetson-nano"] if command == "fit" else []
    code, out, err = run(capsys, command, "cnv", "--workspace", "64KiB", "--json", *dev)
    assert code == 0, err
    assert json.loads(out)["workspace_budget"] == 65536
    code, out, err = run(capsys, command, "cnv", "--workspace", "64 parsecs", *dev)
    assert code == 2 and out == "" and "--workspace" in err and "unknown unit" in err


def test_strategies_has_one_short_flag_everywhere(capsys):
    for command in ("compare", "sweep", "fit"):
        extra = ["--device", "jetson-nano"] if command == "fit" else []
        code, out, err = run(capsys, command, "mlp", "-S", "standard,bop", "--json", *extra)
        assert code == 0, (command, err)
        assert "bop" in out


def test_ladder_with_strategies_is_an_error(capsys):
    code, out, err = run(capsys, "compare", "mlp", "--ladder", "--strategies", "standard,bop")
    assert code == 2 and out == "" and "--ladder" in err and "--strategies" in err


COMMANDS = ["models", "strategies", "predict", "compare", "fit", "devices", "sweep", "verify", "train"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_is_plain_text(capsys, command):
    code, out, _ = run(capsys, command, "--help")
    assert code == 0
    assert "<bool>" not in out and "<str>" not in out and "<int>" not in out
    assert out.isascii(), [c for c in out if not c.isascii()]  # no emoji read into a:b:step, no box drawing
    assert "[bold]" not in out and "[/" not in out


def test_help_says_which_dataset_each_command_uses(capsys):
    for command, says in (("verify", "synthetic (random inputs"), ("train", "digits (8x8 handwritten digits")):
        code, out, _ = run(capsys, command, "--help")
        assert says in " ".join(out.split())


def test_parameter_counts_say_which_batchnorm(capsys):
    code, out, _ = run(capsys, "models", "--json")
    doc = json.loads(out)
    assert doc["schema"] == "bnncost.models/2"
    mlp = next(m for m in doc["models"] if m["name"] == "mlp")
    assert mlp["parameters_l2_batchnorm"] - mlp["parameters_l1_batchnorm"] == 256 * 4 + 10  # one gamma per channel
    code, out, _ = run(capsys, "predict", "mlp", "--json")
    assert json.loads(out)["parameters"] == mlp["parameters_l1_batchnorm"]
    code, out, _ = run(capsys, "predict", "mlp")
    assert "parameters (l1 batchnorm" in out


# ---------------------------------------------------------------- tables and output

def test_markdown_writes_only_markdown_to_stdout(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    f = tmp_path / "ladder.svg"
    code, out, err = run(capsys, "compare", "cnv", "--ladder", "--device", "raspberry-pi-4b", "--plot", str(f),
                         "--markdown")
    assert code == 0 and f.read_text().lstrip().startswith("<?xml") and err == f"wrote {f}\n"
    assert "wrote" not in out and "\x1b" not in out
    assert "| &nbsp;&nbsp;+ per sample x batch |" in out and "| ├─ compute |" in out
    code, out, _ = run(capsys, "sweep", "mlp", "--batch", "1:100000", "--device", "raspberry-pi-3b-plus", "--markdown")
    assert "red" not in out and "x: does not fit" in out


@pytest.mark.parametrize("suffix, magic", [(".pdf", b"%PDF"), (".svg", b"<?xml"), (".png", b"\x89PNG")])
def test_plots_in_every_format(capsys, tmp_path, suffix, magic):
    pytest.importorskip("matplotlib")
    f = tmp_path / f"cnv{suffix}"
    code, _, err = run(capsys, "sweep", "cnv", "--batch", "1,8,64", "--plot", str(f))
    assert code == 0, err
    assert f.read_bytes().startswith(magic)


def test_each_role_has_one_colour_in_every_plot():
    plt = pytest.importorskip("matplotlib.pyplot")
    from bnncost.costmodel.plots import role_colour
    from bnncost.layers.roles import ROLES

    colours = [role_colour(plt, r) for r in ROLES]
    assert len(set(colours)) == len(colours)


def test_a_narrow_terminal_cuts_no_name(capsys, monkeypatch):
    monkeypatch.setattr(cli.out.console, "_width", 80)
    code, out, _ = run(capsys, "compare", "binarynet", "--ladder", "--device", "raspberry-pi-4b")
    assert code == 0 and "…" not in out and max(len(line) for line in out.splitlines()) <= 80
    assert all(name in out for name in ("ladder-1-binary-activations", "ladder-3-binary-dw", "optimizer_state"))
    for args in (["predict", "resnete18", "--by", "variable"], ["strategies"], ["fit", "mlp", "-d", "jetson-nano"],
                 ["predict", "cnv", "--device", "raspberry-pi-3b-plus"], ["models"], ["devices"]):
        code, out, _ = run(capsys, *args)
        assert code == 0 and "…" not in out, args
        assert max(len(line) for line in out.splitlines()) <= 80, args
    code, out, _ = run(capsys, "predict", "cnv")
    assert "x batch" in out and "x B" not in out
    formula_line = next(line for line in out.splitlines() if "x batch" in line)
    assert "MiB + " in formula_line  # the formula is on one line, not wrapped mid-term
