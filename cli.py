"""bnncost's command line: the only module that prints.

Every computing command prints a rich table for people, or with --json one
JSON document and nothing else. Bad input is one line on stderr, exit code 2.
"""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from costmodel.prediction import Comparison, Prediction, compare, predict
from costmodel.strategy import StrategyError, load_strategy, strategy_names
from layers.graph import build_graph
from layers.model import ModelError, load_model, zoo_names

app = typer.Typer(
    name="bnncost",
    help="Predict the memory and energy of training binary neural networks on edge devices.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
# A terminal gets its own width; a pipe or file gets room for side-by-side tables.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)

LADDER = ["standard", "ladder-1-binary-activations", "ladder-2-l1-batchnorm", "ladder-3-binary-dw", "proposed"]
USER_ERRORS = (ModelError, StrategyError, ValueError, OSError)

# Typer may bundle its own copy of click; take its exception classes from Typer itself.
_CLICK_EXC = sys.modules[typer.BadParameter.__module__]
UsageError = _CLICK_EXC.UsageError
NoArgsIsHelp = getattr(_CLICK_EXC, "NoArgsIsHelpError", None)


class BadInput(Exception):
    """Raised inside a command for input the user must fix; printed as one line, exit 2."""


# ---------------------------------------------------------------- formatting

def human_bytes(n: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:,.2f} {unit}"
    return f"{n:,.0f} B"


def formula(fixed: float, per_sample: float) -> str:
    return f"{human_bytes(fixed)} + {human_bytes(per_sample)} x B"


def emit_json(doc: dict) -> None:
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")


def role_formats(p: Prediction) -> dict[str, str]:
    fm: dict[str, set] = {}
    for v in p.memory.variables:
        fm.setdefault(v.role, set()).add(v.format)
    return {r: ", ".join(sorted(f)) for r, f in fm.items()}


def split_list(text: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise BadInput("--strategies needs at least one strategy name or path")
    return items


# ---------------------------------------------------------------- commands

@app.command("models")
def models_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the zoo models."""
    rows = []
    for name in zoo_names():
        g = build_graph(load_model(name))
        rows.append({"name": name, "input": list(g.model.input), "layers": len(g.nodes),
                     "parameters": g.parameter_count(), "classes": g.output_shape[0]})
    if as_json:
        emit_json({"schema": "bnncost.models/1", "models": rows})
        return
    t = Table(title="Zoo models (pass a name, or a path to your own YAML)")
    for col in ("model", "input", "nodes", "parameters", "classes"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        t.add_row(r["name"], "x".join(map(str, r["input"])), str(r["layers"]), f"{r['parameters']:,}", str(r["classes"]))
    out.print(t)


@app.command("strategies")
def strategies_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the shipped training strategies."""
    rows = [load_strategy(n) for n in strategy_names()]
    if as_json:
        emit_json({"schema": "bnncost.strategies/1", "strategies": [
            {"name": s.name, "description": s.description, "batchnorm": s.batchnorm,
             "weight_grad": s.weight_grad, "optimizer": s.optimizer, "formats": s.formats} for s in rows]})
        return
    t = Table(title="Training strategies (pass a name, or a path to your own YAML)")
    for col in ("strategy", "bn", "dW", "optimizer", "description"):
        t.add_column(col)
    for s in rows:
        t.add_row(s.name, s.batchnorm, s.weight_grad, s.optimizer, s.description)
    out.print(t)


@app.command("predict")
def predict_cmd(
    model: str = typer.Argument(..., help="Zoo model name or path to a model YAML."),
    strategy: str = typer.Option("proposed", "--strategy", "-s", help="Strategy name or YAML path."),
    batch: int = typer.Option(100, "--batch", "-b", help="Batch size B."),
    retention: str = typer.Option("step", "--retention", help="step: saved tensors live to the step's end; backward: freed after use."),
    workspace: int = typer.Option(0, "--workspace", help="Workspace budget in bytes per operator (0: in place, no scratch)."),
    by: str = typer.Option("role", "--by", help="Breakdown: role, layer or variable."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
) -> None:
    """Predict the peak memory of one training step, and where the bytes go."""
    if by not in ("role", "layer", "variable"):
        raise BadInput(f"--by must be role, layer or variable, not '{by}'")
    p = predict(model, strategy, batch, **knobs(retention, workspace))
    if as_json:
        emit_json(p.to_json())
        return
    m = p.memory
    out.print(f"[bold]{p.model}[/] · strategy [bold]{p.strategy}[/] · batch {p.batch_size} · "
              f"retention {p.retention} · workspace {human_bytes(p.workspace_budget)} · {p.parameters:,} parameters")
    out.print(f"Peak [bold]{human_bytes(m.peak_bytes)}[/] ({m.peak_bytes:,} B) at {m.peak_event}"
              f"  =  {formula(m.fixed_bytes, m.per_sample_bytes)}")
    if by == "role":
        fmts = role_formats(p)
        t = Table(title="Bytes at the peak, by role")
        for col, j in (("role", "left"), ("format", "left"), ("bytes", "right"), ("share", "right")):
            t.add_column(col, justify=j)
        for role, n in m.by_role.items():
            t.add_row(role, fmts[role], human_bytes(n), f"{100 * n / m.peak_bytes:.1f}%")
    elif by == "layer":
        t = Table(title="Bytes at the peak, by layer")
        for col, j in (("layer", "left"), ("bytes", "right"), ("share", "right")):
            t.add_column(col, justify=j)
        for layer, n in m.by_layer.items():
            t.add_row(layer, human_bytes(n), f"{100 * n / m.peak_bytes:.1f}%")
    else:
        t = Table(title="Every variable (* = alive at the peak)")
        for col in ("", "variable", "role", "format", "shape", "bytes", "alive"):
            t.add_column(col, justify="right" if col == "bytes" else "left")
        for v in m.variables:
            t.add_row("*" if v.alive_at_peak else "", v.name, v.role, v.format,
                      "x".join(map(str, v.shape)), human_bytes(v.bytes), f"{v.alloc_event} -> {v.free_event}")
    out.print(t)


@app.command("compare")
def compare_cmd(
    model: str = typer.Argument(..., help="Zoo model name or path to a model YAML."),
    strategies: str = typer.Option("standard,proposed", "--strategies", help="Comma-separated strategies; the first is the baseline."),
    ladder: bool = typer.Option(False, "--ladder", help="Compare the ablation ladder from standard to proposed, one change per step."),
    batch: int = typer.Option(100, "--batch", "-b", help="Batch size B."),
    retention: str = typer.Option("step", "--retention", help="step or backward."),
    workspace: int = typer.Option(0, "--workspace", help="Workspace budget in bytes per operator."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
) -> None:
    """Compare strategies side by side: peak memory, its formula, where it goes, and the saving."""
    names = LADDER if ladder else split_list(strategies)
    c = compare(model, names, batch, **knobs(retention, workspace))
    if as_json:
        emit_json(c.to_json())
        return
    print_comparison(c, stepwise=ladder)


def print_comparison(c: Comparison, stepwise: bool) -> None:
    preds = c.predictions
    p0 = preds[0]
    out.print(f"[bold]{p0.model}[/] · batch {p0.batch_size} · retention {p0.retention} · "
              f"workspace {human_bytes(p0.workspace_budget)} · savings against [bold]{c.baseline}[/]")
    t = Table(title="Peak memory of one training step")
    t.add_column("")
    for p in preds:
        t.add_column(p.strategy, justify="right")
    t.add_row("[bold]peak[/]", *[f"[bold]{human_bytes(p.memory.peak_bytes)}[/]" for p in preds])
    t.add_row(f"saving vs {c.baseline}", *[f"{c.savings[p.strategy]['peak_bytes']:.2f}x" for p in preds])
    if stepwise:
        steps = ["-"] + [f"{a.memory.peak_bytes / b.memory.peak_bytes:.2f}x" for a, b in zip(preds, preds[1:])]
        t.add_row("saving of this step", *steps)
    t.add_row("fixed + per sample", *[formula(p.memory.fixed_bytes, p.memory.per_sample_bytes) for p in preds])
    t.add_row("peak event", *[p.memory.peak_event for p in preds])
    t.add_section()
    roles = list(dict.fromkeys(r for p in preds for r in p.memory.by_role))
    fmts = [role_formats(p) for p in preds]
    for role in roles:
        t.add_row(role, *[
            f"{human_bytes(p.memory.by_role[role])} [dim]{f[role]}[/]" if role in p.memory.by_role else "-"
            for p, f in zip(preds, fmts)
        ])
    out.print(t)


def knobs(retention: str, workspace: int) -> dict:
    if retention not in ("step", "backward"):
        raise BadInput(f"--retention must be step or backward, not '{retention}'")
    if workspace < 0:
        raise BadInput(f"--workspace must be >= 0 bytes, not {workspace}")
    return {"retention": retention, "workspace_budget": workspace}


# ---------------------------------------------------------------- entry point

def fail(message: str) -> int:
    sys.stderr.write(f"bnncost: error: {message}\n")
    return 2


def main(argv: Optional[list[str]] = None) -> int:
    """Run the CLI; bad input becomes one line on stderr and exit code 2."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="bnncost", standalone_mode=False)
    except UsageError as exc:
        if NoArgsIsHelp is not None and isinstance(exc, NoArgsIsHelp):
            return _exit(0)  # Typer has printed the help already
        code = fail(exc.format_message().replace("\n", " "))
    except typer.Abort:
        code = fail("aborted")
    except (BadInput, *USER_ERRORS) as exc:
        code = fail(str(exc).replace("\n", " "))
    return _exit(code if isinstance(code, int) else 0)


def _exit(code: int) -> int:
    sys.stdout.flush()
    sys.exit(code)


if __name__ == "__main__":
    main()
