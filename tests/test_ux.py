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


@pytest.mark.parametrize("command", ["predict", "compare", "fit", "sweep", "summary"])
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


COMMANDS = ["models", "strategies", "predict", "compare", "fit", "devices", "sweep", "verify", "train", "summary"]


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
                 ["predict", "cnv", "--device", "raspberry-pi-3b-plus"], ["models"], ["devices"],
                 ["sweep", "cnv", "--batch", "1:100000", "--linear", "--device", "raspberry-pi-3b-plus"],
                 ["summary", "resnete18", "--device", "raspberry-pi-4b"],
                 ["verify", "digits-mlp", "--by", "variable"], ["verify", "digits-mlp"]):
        code, out, _ = run(capsys, *args)
        assert code == 0 and "…" not in out, args
        assert max(len(line) for line in out.splitlines()) <= 80, args
        if args[0] == "verify":  # role names are words a user types: never split across lines
            assert all(role in out for role in ("latent_weight", "optimizer_state", "activation_mask")), args
    code, out, _ = run(capsys, "predict", "cnv")
    assert "x batch" in out and "x B" not in out
    formula_line = next(line for line in out.splitlines() if "x batch" in line)
    assert "MiB + " in formula_line  # the formula is on one line, not wrapped mid-term
    code, out, _ = run(capsys, "compare", "mlp")
    assert any(line.startswith("savings against standard") for line in out.splitlines())  # a header breaks at ' · '


def test_header_lines_break_only_between_settings():
    from bnncost.tables import header_line
    parts = ["[bold]cnv[/]", "strategy [bold]proposed[/]", "batch 100", "workspace 0 B (in place)"]
    assert header_line(parts, 200) == " · ".join(parts)
    lines = header_line(parts, 30).split("\n")
    assert lines == ["[bold]cnv[/] · strategy [bold]proposed[/]", "batch 100", "workspace 0 B (in place)"]


# ---------------------------------------------------------------- summary

def test_summary_rows_add_up_to_predict(capsys):
    code, out, err = run(capsys, "summary", "cnv", "--device", "raspberry-pi-4b", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["schema"] == "bnncost.summary/1" and doc["batch"] == 100
    code, out, _ = run(capsys, "predict", "cnv", "--device", "raspberry-pi-4b", "--json")
    p = json.loads(out)
    rows, total = doc["layers"], doc["total"]
    assert [r["layer"] for r in rows][:3] == ["conv2d_1", "batchnorm_1", "sign_1"]
    assert total["params_1bit"] + total["params_real"] == p["parameters"]
    assert total["joules_per_step"] == pytest.approx(p["energy"]["joules_per_step"], rel=1e-9)
    assert total["seconds_per_step"] == pytest.approx(p["time"]["seconds_per_step"], rel=1e-9)
    costed = sum(r["count"] for r in p["ops"]["total"] if r["kind"] != "bit_mac")
    assert sum(total["ops"].values()) == costed
    assert total["forward_bit_macs"] == p["ops"]["bit_macs"]
    conv2 = next(r for r in rows if r["layer"] == "conv2d_2")
    assert conv2["precision"] == "binary" and conv2["params_1bit"] == 3 * 3 * 64 * 64 and conv2["params_real"] == 0
    assert conv2["param_bytes"] == 3 * 3 * 64 * 64 * 2  # float16 latent weights under proposed
    assert conv2["saved_bytes"] == 100 * 30 * 30 * 64 // 8  # its input, kept as bits
    bn1 = next(r for r in rows if r["layer"] == "batchnorm_1")
    assert bn1["params_real"] == 64  # l1 batchnorm: beta only
    # per-layer op counts are in predict's JSON too
    assert sum(r["count"] for r in p["ops"]["counts"] if r["layer"] == "conv2d_2" and r["kind"] != "bit_mac") \
        == sum(conv2["ops"].values())


def test_summary_table_ends_with_totals(capsys):
    code, out, _ = run(capsys, "summary", "mlp", "--strategy", "standard")
    assert code == 0 and "dense_1" in out and "total" in out and "1-bit params" in out and "kept for bwd" in out
    code, out, _ = run(capsys, "summary", "mlp", "--markdown")
    assert out.count("| total |") >= 1


# ---------------------------------------------------------------- the Python API

def test_python_api_takes_names_and_paths(same_name):
    import bnncost

    p = bnncost.predict("cnv", strategy="proposed", batch=100, device="raspberry-pi-4b")
    assert p.memory.peak_bytes > 0 and p.device == "raspberry-pi-4b" and p.energy.joules_per_step > 0
    assert p.to_dict()["schema"] == "bnncost.prediction/2"
    assert {r["role"] for r in p.records()} >= {"latent_weight", "binary_input"}
    assert "<table>" in p._repr_html_() and "raspberry-pi-4b" in p._repr_html_()
    assert bnncost.predict("cnv", workspace="64KiB").workspace_budget == 65536
    c = bnncost.compare("mlp", ["standard", same_name], device="jetson-nano")
    assert [r["strategy"] for r in c.records()] == c.strategies and c.records()[1]["peak_bytes_ratio"] > 1
    f = bnncost.fit("mlp", "jetson-nano", "standard,proposed")
    assert f.records()[1]["max_batch"] > f.records()[0]["max_batch"] and "<td>" in f._repr_html_()
    s = bnncost.sweep("mlp", batches="1:64", device="jetson-nano")
    assert len(s.records()) == 2 * 7 and s.to_dict()["batches"] == [1, 2, 4, 8, 16, 32, 64]
    sm = bnncost.summary("mlp", batch=32)
    assert sm.records()[-1]["layer"] == "total" and sm.to_dict()["schema"] == "bnncost.summary/1"


def test_html_escapes_user_names(tmp_path):
    import bnncost

    f = tmp_path / "m.yaml"
    f.write_text("name: <b>mine</b>\ninput: [4]\nlayers:\n  - dense: {units: 2}\n  - batchnorm: {}\n"
                 "  - softmax_ce: {}\n")
    assert "<b>mine" not in bnncost.predict(str(f))._repr_html_()


def test_readme_python_example_runs():
    """The README's Python block, executed as written."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks, "the README shows the Python API"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


def test_docs_are_linked_and_every_link_resolves():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    assert "docs/README.md" in readme and "docs/json.md" in readme
    for page in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
    spec = (root / "docs" / "README.md").read_text()
    from bnncost.layers.roles import ROLES

    assert all(f"`{role}`" in spec for role in ROLES)  # every role is specified


def test_the_trainer_reports_progress_event_by_event():
    from bnncost.trainer.run import run_steps

    seen = []
    run_steps("digits-mlp", "proposed", batch=4, steps=2, on_event=lambda done, total: seen.append((done, total)))
    total = seen[0][1]
    assert [d for d, _ in seen] == list(range(1, total + 1)) and all(t == total for _, t in seen)


def test_verify_draws_its_progress_on_a_terminal_stderr(capsys, monkeypatch):
    from rich.console import Console

    monkeypatch.setattr(Console, "is_terminal", property(lambda self: True))
    with cli.trainer_progress("verify digits-mlp") as on_event:
        assert on_event is not None
        on_event(3, 10)
    monkeypatch.setattr(Console, "is_terminal", property(lambda self: False))
    with cli.trainer_progress("verify digits-mlp") as on_event:
        assert on_event is None
    assert capsys.readouterr().out == ""


def test_stacked_tables_share_the_columns_evenly():
    """Seven strategies at 80 columns: two tables of 4 and 3 columns, not 5 and a narrow 2 whose title wraps."""
    from bnncost.tables import Wide

    w = Wide("Role -> format", [f"strategy-{i}" for i in range(7)])
    for r in range(3):
        w.row(f"role_{r}", ["float32"] * 7)
    parts = [p for p in w.render(62) if not isinstance(p, str)]
    assert [len(p.columns) - 1 for p in parts] == [4, 3]
