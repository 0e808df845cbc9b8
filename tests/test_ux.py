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
    assert "at the peak" in out and "largest over the step" in out
