"""`bnncost verify`: the cost model against the bundled trainer, to the byte and to the operation."""

import json
from pathlib import Path

import pytest

from bnncost import cli
from bnncost.costmodel import load_strategy, memory_plan
from bnncost.costmodel.strategy import Strategy
from bnncost.layers import build_graph, load_model
from test_cli import run

RESIDUAL = str(Path(__file__).parent / "data" / "small-residual.yaml")
STRATEGIES = ["standard", "ladder-1-binary-activations", "ladder-2-l1-batchnorm", "ladder-3-binary-dw",
              "proposed", "proposed-po2", "bop"]
DATA = Path(__file__).parent / "data"
# odd-binary: sign outputs of 5 channels (not a multiple of 8) pooled with padding, added in a residual,
# flattened and fed to a full-precision layer; pooled-signs: signs averaged and relu'd (METHOD 4.2)
MODELS = [("mlp", 16), ("digits-mlp", 16), ("digits-cnn", 8), (RESIDUAL, 4), ("cnv", 2),
          (str(DATA / "odd-binary.yaml"), 4), (str(DATA / "pooled-signs.yaml"), 3)]


@pytest.mark.parametrize("retention", ["step", "backward"])
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("model, batch", MODELS, ids=[Path(m).stem for m, _ in MODELS])
def test_model_and_trainer_agree(model, batch, strategy, retention):
    v = cli.run_verification(model, strategy, batch, steps=1, retention=retention)
    wrong = [c.name for c in v.variables if not c.ok]
    assert not wrong, wrong
    assert v.peak.ledger_ok, (v.peak.predicted_bytes, v.peak.ledger_bytes, v.peak.predicted_event, v.peak.ledger_event)
    assert not v.op_mismatches, v.op_mismatches[:3]
    assert v.peak.process_ok, (v.peak.process_bytes, v.peak.predicted_bytes)
    assert v.ok


@pytest.mark.parametrize("budget", [0, 4096])
def test_agree_under_other_workspace_budgets(budget):
    for model, batch in MODELS[:3]:
        assert cli.run_verification(model, "proposed", batch, steps=1, workspace_budget=budget).ok


def test_a_broken_prediction_fails_and_names_the_variable():
    graph = build_graph(load_model("digits-mlp"))
    good = load_strategy("proposed")
    wrong = Strategy(**{**good.model_dump(), "formats": {**good.formats, "norm_output": "float16"}})

    def perturb(plan):
        return memory_plan(graph, wrong, retention="step", workspace_budget=65536)

    v = cli.run_verification("digits-mlp", "proposed", 16, steps=1, plan_hook=perturb)
    assert not v.ok
    bad = {c.name for c in v.variables if not c.ok}
    saved = {f"batchnorm_{i}.norm_output" for i in (1, 2, 3)}
    # a float16 norm_output needs no unpacking scratch either, so those go missing from the prediction too
    assert saved <= bad and bad - saved == {f"batchnorm_{i}.unpacked" for i in (1, 2, 3)}


def test_verify_cli_table_json_and_exit_codes(capsys):
    code, out, err = run(capsys, "verify", "digits-mlp", "--batch", "8", "--steps", "1")
    assert code == 0 and "verified" in out and "Peak of the step" in out and err == ""
    code, out, _ = run(capsys, "verify", "digits-cnn", "--batch", "4", "--steps", "1", "--json", "--by", "variable")
    doc = json.loads(out)
    assert doc["schema"] == "bnncost.verification/2" and doc["ok"] is True and doc["batch"] == 4
    assert set(doc["variables"][0]) >= {"name", "role", "predicted_bytes", "measured_bytes"}
    assert doc["memory"]["peak_bytes"] == doc["measured"]["peak_bytes"] > 0
    assert doc["memory"]["peak_event"] == doc["measured"]["peak_event"]
    assert doc["measured"]["process_peak_bytes"] > 0 and doc["peak"]["ledger_ok"] and doc["peak"]["process_ok"]
    assert set(doc["ops"][0]) == {"phase", "kind", "format", "predicted", "measured", "ok"}
    assert doc["op_mismatches"] == [] and "process_peak_above_fraction" in doc["tolerance"]


def test_verify_exit_1_when_something_disagrees(capsys, monkeypatch):
    real = cli.run_verification

    def broken(*args, **kw):
        v = real(*args, **kw)
        v.variables[0].ok = False
        v.ok = False
        return v

    monkeypatch.setattr(cli, "run_verification", broken)
    code, out, _ = run(capsys, "verify", "digits-mlp", "--batch", "4", "--steps", "1")
    assert code == 1 and "not verified" in out


@pytest.mark.parametrize("args, needle", [
    (["verify", "digits-mlp", "--batch", "0"], "batch size must be a positive integer"),
    (["verify", "digits-mlp", "--steps", "0"], "--steps"),
    (["verify", "digits-mlp", "--strategy", "nosuch"], "unknown strategy"),
    (["verify", "digits-mlp", "--dataset", "mnist:/no/such/dir"], "/no/such/dir"),
])
def test_verify_bad_input(capsys, args, needle):
    code, out, err = run(capsys, *args)
    assert code == 2 and out == "" and needle in err and err.count("\n") == 1


@pytest.mark.parametrize("strategy", ["standard", "proposed", "proposed-po2"])
def test_maps_larger_than_a_chunk_verify_at_batch_1(strategy):
    """Pools, the residual join and global pooling work below one sample (issue 12: ImageNet at batch 1)."""
    v = cli.run_verification(str(DATA / "big-map.yaml"), strategy, 1, steps=1)
    assert v.ok, (v.peak.process_bytes, v.peak.predicted_bytes, v.peak.process_limit_bytes)


def test_the_process_tolerance_is_stated_in_the_json():
    doc = cli.run_verification("digits-mlp", "proposed", 4, steps=1).to_json()
    tol = doc["tolerance"]
    assert (tol["process_peak_above_fraction"], tol["process_peak_above_bytes"],
            tol["process_peak_below_fraction"]) == (0.03, 256 * 1024, 0.01)
