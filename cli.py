"""bnncost's command line: the only module that prints.

Every computing command prints a rich table for people, or with --json one
JSON document and nothing else. Bad input is one line on stderr, exit code 2.
"""

from __future__ import annotations

import json
import math
import os
import sys
from contextlib import contextmanager
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.markup import escape as esc  # every user string that reaches rich goes through esc()
from rich.text import Text

from bnncost.costmodel.fitting import fit
from bnncost.costmodel.memory import memory_plan
from bnncost.costmodel.engine import (
    APPENDED_LISTS, DEFAULT_ENGINE, NAMED_LISTS, SINGLE_RULES, Engine, EngineError, as_engine, engine_names, load_engine,
)
from bnncost.costmodel.ops import INFORMATIONAL, count_ops
from bnncost.costmodel.plots import check_path, plot_comparison, plot_sweep
from bnncost.costmodel.prediction import (
    Comparison, Prediction, check_batch, compare, implementation_knobs, predict,
)
from bnncost.costmodel.strategy import StrategyError, load_strategy, strategy_names
from bnncost.costmodel.summary import summary
from bnncost.costmodel.sweep import Sweep, parse_batches, sweep
from bnncost.hardware_profiles import Device, DeviceError, list_devices, load_device
from bnncost.hardware_profiles.units import convert as convert_quantity
from bnncost.layers.graph import graph_of
from bnncost.layers.model import ModelError, zoo_names
from bnncost.layers.roles import FORMATTED_ROLES
from bnncost.tables import Wide, header_line, name_column

app = typer.Typer(
    name="bnncost",
    help="Predict the memory and energy of training binary neural networks on edge devices.",
    epilog="Exit codes: 0 ok; 1 not verified (verify) or training diverged (train); 2 bad input "
           "(one line on stderr naming the problem and where).",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: no markup or emoji read into it (a:b:step), flags without <bool>
)


def _print_version(value: bool) -> None:
    if value:
        from bnncost import __version__

        sys.stdout.write(f"bnncost {__version__}\n")
        raise typer.Exit(0)


@app.callback()
def _app(version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                      help="Print bnncost's version and exit.")) -> None:
    """Predict the memory, operations, energy and time of training binary neural networks on edge devices."""


MAX_VERIFY_STEPS = 10_000  # verify measures its first step; the others only run the trainer on
MIN_COLUMNS = 60  # the narrowest table layout that keeps every figure whole


class Printer:
    """Rich tables for a terminal, or the same tables as Markdown (--markdown) for a README or a paper."""

    def __init__(self) -> None:
        # A terminal gets its own width; a pipe or file gets room for side-by-side tables. Below MIN_COLUMNS
        # (COLUMNS=0, a split pane) the terminal wraps the lines rather than rich cropping the numbers.
        self.console = Console(highlight=False, width=None if sys.stdout.isatty() or os.environ.get("COLUMNS")
                                else 160)
        if self.console.width < MIN_COLUMNS:
            self.console.width = MIN_COLUMNS
        self.markdown = False

    def print(self, obj: object = "") -> None:
        if isinstance(obj, Table):
            for column in obj.columns:  # a cell too wide for the terminal folds; nothing ends in an ellipsis
                if column.overflow == "ellipsis":
                    column.overflow = "fold"
        if not self.markdown:
            self.console.print(obj)
        elif isinstance(obj, Table):
            sys.stdout.write(table_markdown(obj) + "\n\n")
        else:
            sys.stdout.write(Text.from_markup(str(obj)).plain + "\n\n")


def _plain(cell: object) -> str:
    """A cell as Markdown: pipes escaped, lines joined by <br>, leading spaces kept (indented sub-rows)."""
    text = cell.plain if isinstance(cell, Text) else Text.from_markup(str(cell)).plain
    lines = [line.replace("|", "\\|") for line in text.split("\n")]
    return "<br>".join("&nbsp;" * (len(line) - len(line.lstrip(" "))) + line.lstrip(" ") for line in lines)


def table_markdown(t: Table) -> str:
    cols = t.columns
    head = "| " + " | ".join(_plain(c.header) or " " for c in cols) + " |"
    rule = "|" + "|".join("---:" if c.justify == "right" else "---" for c in cols) + "|"
    rows = ["| " + " | ".join(_plain(cell) for cell in row) + " |" for row in zip(*(c.cells for c in cols))]
    title = f"**{_plain(t.title)}**\n\n" if t.title else ""
    return title + "\n".join([head, rule, *rows])


out = Printer()


def head(parts: list[str], style: str = "") -> None:
    """A command's header line: its settings joined by ' · ', wrapped only between settings."""
    text = " · ".join(parts) if out.markdown else header_line(parts, out.console.width)
    out.print(f"[{style}]{text}[/]" if style else text)

LADDER = ["standard", "ladder-1-binary-activations", "ladder-2-l1-batchnorm", "ladder-3-binary-dw", "proposed"]
USER_ERRORS = (ModelError, StrategyError, EngineError, DeviceError, ValueError, OSError)
TRAINER_ENGINE = "bnncost-trainer"  # what verify predicts by default: the trainer it runs  # PlotError is a ValueError

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
    """fixed + per-sample bytes; the batch is spelled out, so no `B` can be read as bytes."""
    return f"{human_bytes(fixed)} + {human_bytes(per_sample)} x batch"


def emit_json(doc: dict) -> None:
    """Strict JSON: a value that is not a finite number (undefined, not measured) is null, never NaN."""
    sys.stdout.write(json.dumps(_finite(doc), indent=2, allow_nan=False) + "\n")


def _finite(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def percent(fraction: float | None) -> str:
    return "- (no test samples)" if fraction is None else f"{100 * fraction:.2f}%"


def role_formats(p: Prediction) -> dict[str, str]:
    fm: dict[str, set] = {}
    for v in p.memory.variables:
        fm.setdefault(v.role, set()).add(v.format)
    return {r: ", ".join(sorted(f)) for r, f in fm.items()}


def si(value: float, unit: str) -> str:
    """A number with an SI prefix: 3.2 mJ, 41.0 ms, 1.2 GJ."""
    if value == 0:
        return f"0 {unit}"
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k"), (1, ""), (1e-3, "m"), (1e-6, "u"), (1e-9, "n")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value / 1e-12:.3g} p{unit}"


def count(n: float) -> str:
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= factor:
            return f"{n / factor:.3g}{suffix}"
    return f"{n:.0f}"


def open_device(ref: str | None) -> Device | None:
    return None if ref is None else load_device(ref)


DEFAULT_STRATEGIES = "standard,proposed"


def model_argument():
    """MODEL: the same argument on every command."""
    return typer.Argument(..., metavar="MODEL", help="Zoo model name, or a path to a model YAML or an .onnx file.")


def strategy_option():
    """--strategy/-s: one strategy, the same option on every command that takes one."""
    return typer.Option("proposed", "--strategy", "-s", metavar="NAME|PATH", help="Strategy name or YAML path.")


def batch_option(default: int):
    """--batch/-b: samples per training step."""
    return typer.Option(default, "--batch", "-b", metavar="N", help="Batch size: samples per training step.")


def strategies_option():
    """--strategies/-S: the same option, with the same default, on every command that takes several."""
    return typer.Option(None, "--strategies", "-S", metavar="LIST", show_default=False,
                        help=f"Comma-separated strategy names or YAML paths; the first is the baseline "
                             f"(default: {DEFAULT_STRATEGIES}).")


def workspace_option(default: str | None):
    """--workspace: a byte count, plain or with a unit, read by the device files' parser (None: the engine's)."""
    return typer.Option(default, "--workspace", metavar="BYTES",
                        help="Workspace budget per operator: bytes, or with a unit (64KiB, 1MiB, 4MB); "
                             "0: in place, no scratch." + (" Default: the engine's." if default is None else ""))


def retention_option():
    """--retention, defaulting to the engine's."""
    return typer.Option(None, "--retention", metavar="step|backward",
                        help="step: saved tensors live to the step's end; backward: freed after use. "
                             "Default: the engine's.")


def engine_option(default: str | None):
    """--engine: how the implementation holds the step (costmodel.engine)."""
    return typer.Option(default, "--engine", metavar="NAME|PATH",
                        help="Engine name or YAML path: how the implementation holds the step "
                             f"(default {default or DEFAULT_ENGINE}; see 'bnncost engines').")


def split_list(text: str | None) -> list[str]:
    text = DEFAULT_STRATEGIES if text is None else text
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
        g = graph_of(name)
        rows.append({"name": name, "input": list(g.model.input), "layers": len(g.nodes),
                     "parameters_l2_batchnorm": g.parameter_count("l2"),
                     "parameters_l1_batchnorm": g.parameter_count("l1"), "classes": g.output_shape[0]})
    if as_json:
        emit_json({"schema": "bnncost.models/2", "models": rows})
        return
    t = Table(title="Zoo models (pass a name, or a path to your own YAML)")
    for col in ("model", "input", "nodes", "parameters (l2 BN)", "parameters (l1 BN)", "classes"):
        t.add_column(col, justify="left" if col == "model" else "right", no_wrap=col == "model")
    for r in rows:
        t.add_row(r["name"], "x".join(map(str, r["input"])), str(r["layers"]), f"{r['parameters_l2_batchnorm']:,}",
                  f"{r['parameters_l1_batchnorm']:,}", str(r["classes"]))
    out.print(t)
    out.print("l2 batchnorm (standard) trains gamma and beta per channel; l1 batchnorm (proposed) only beta.")


def shipped_in_ladder_order() -> list[str]:
    """The ladder from standard to proposed first, one change per step, then every other shipped strategy."""
    names = strategy_names()
    return [n for n in LADDER if n in names] + [n for n in names if n not in LADDER]


@app.command("strategies")
def strategies_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON."),
                   markdown: bool = typer.Option(False, "--markdown", help="Print the tables as Markdown.")) -> None:
    """The shipped training strategies: the format of every role, in the ladder's order."""
    output_mode(as_json, markdown)
    rows = [load_strategy(n) for n in shipped_in_ladder_order()]
    if as_json:
        emit_json({"schema": "bnncost.strategies/1", "strategies": [
            {"name": s.name, "description": s.description, "batchnorm": s.batchnorm,
             "weight_grad": s.weight_grad, "optimizer": s.optimizer, "formats": s.formats} for s in rows]})
        return
    t = Wide("Role -> format, strategy by strategy (pass a name, or a path to your own YAML)",
             [esc(s.name) for s in rows])
    t.row("batchnorm", [s.batchnorm for s in rows])
    t.row("weight_grad (form)", [s.weight_grad for s in rows])
    t.row("optimizer", [s.optimizer for s in rows])
    t.section()
    for role in FORMATTED_ROLES:
        formats = [s.formats[role] for s in rows]
        changed = [i > 0 and formats[i] != formats[i - 1] and rows[i - 1].name in LADDER for i in range(len(rows))]
        t.row(role, [f"[bold]{f}[/]" if c else f for f, c in zip(formats, changed)])
    for obj in t.render(None if out.markdown else out.console.width):
        out.print(obj)
    d = Table(title="What each strategy is")
    name_column(d, "strategy", [s.name for s in rows])
    d.add_column("description")
    for s in rows:
        d.add_row(esc(s.name), esc(s.description))
    out.print(d)


@app.command("engines")
def engines_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the shipped engines: how an implementation holds a training step."""
    rows = [load_engine(n) for n in engine_names()]
    if as_json:
        emit_json({"schema": "bnncost.engines/1", "default": DEFAULT_ENGINE, "engines": [
            {"name": e.name, "description": e.description, "retention": e.retention,
             "workspace_budget": e.workspace.budget, "rules": engine_rule_counts(e),
             "measured_strategies": list(e.measured_strategies) or None,
             "runtime_measured_on": e.runtime_measured_on.model_dump() if e.runtime_measured_on else None,
             "source": e.file}
            for e in rows]})
        return
    t = Table(title=f"Engines (pass a name, or a path to your own YAML; default {DEFAULT_ENGINE})")
    # on a narrow terminal the descriptions go below the table, one line each, rather than into a sliver of it
    inline = out.markdown or out.console.width >= 120
    for col in ("engine", "retention", "workspace", "rules", "measured", "runtime CPU",
                *(("description",) if inline else ())):
        t.add_column(col, justify="right" if col in ("workspace", "rules") else "left",
                     no_wrap=col in ("engine", "retention", "workspace", "rules"))
    for e in rows:
        on = e.runtime_measured_on
        cpu = f"{on.arch}, {on.vendor or 'any'}" if on else "-"
        t.add_row(esc(e.name), e.retention, human_bytes(e.workspace.budget),
                  str(sum(engine_rule_counts(e).values())), esc(", ".join(e.measured_strategies) or "every strategy"),
                  esc(cpu), *((esc(e.description),) if inline else ()))
    out.print(t)
    if not inline:
        for e in rows:
            out.print(f"[bold]{esc(e.name)}[/]: {esc(e.description)}")


def engine_rule_counts(e: Engine) -> dict[str, int]:
    """Rules per section of the engine file: each list's length, 1 for a single rule it sets."""
    lists = {k: len(getattr(e, k)) for k in (*NAMED_LISTS, *APPENDED_LISTS)}
    return {**lists, **{k: int(getattr(e, k) is not None) for k in SINGLE_RULES}}


@app.command("predict")
def predict_cmd(
    model: str = model_argument(),
    strategy: str = strategy_option(),
    batch: int = batch_option(100),
    engine: Optional[str] = engine_option(None),
    retention: Optional[str] = retention_option(),
    workspace: Optional[str] = workspace_option(None),
    by: str = typer.Option("role", "--by", metavar="role|layer|variable", help="Breakdown: role, layer or variable."),
    device: Optional[str] = typer.Option(None, "--device", "-d", help="Device name or YAML path: adds energy, time and fit."),
    epoch_samples: Optional[int] = typer.Option(None, "--epoch-samples", help="Samples per epoch (default: the model's train_samples)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
    markdown: bool = typer.Option(False, "--markdown", help="Print the tables as Markdown."),
) -> None:
    """Predict the peak memory, operations, energy and time of one training step."""
    output_mode(as_json, markdown)
    if by not in ("role", "layer", "variable"):
        raise BadInput(f"--by must be role, layer or variable, not '{by}'")
    impl = implementation(engine, retention, workspace)
    dev = open_device(device)
    p = predict(model, strategy, batch, device=dev, epoch_samples=check_samples(epoch_samples, device), **impl)
    note_engine(impl["engine"], [p.strategy], dev)
    if as_json:
        emit_json(p.to_json())
        return
    m = p.memory
    head([f"[bold]{esc(p.model)}[/]", f"strategy [bold]{esc(p.strategy)}[/]", f"engine [bold]{esc(p.engine)}[/]",
          f"batch {p.batch}", f"retention {p.retention}",
          f"workspace {human_bytes(p.workspace_budget)}{' (in place)' if p.workspace_budget == 0 else ''}",
          f"{p.parameters:,} parameters ({p.batchnorm} batchnorm{': no gamma' if p.batchnorm == 'l1' else ''})"])
    out.print(f"Peak [bold]{human_bytes(m.peak_bytes)}[/] ({m.peak_bytes:,} bytes) at {esc(m.peak_event)}")
    out.print(f"  = {formula(m.fixed_bytes, m.per_sample_bytes)} (fixed + per sample x batch)")
    if m.runtime_bytes:
        out.print(f"  = tensors {human_bytes(m.tensor_peak_bytes)} + the engine's runtime "
                  f"{human_bytes(m.runtime_bytes)}")
    if by == "role":
        fmts = role_formats(p)
        t = Table(title="Bytes at the peak, by role")
        name_column(t, "role", list(m.by_role))
        for col, j in (("format", "left"), ("bytes", "right"), ("share", "right")):
            t.add_column(col, justify=j)
        for role, n in m.by_role.items():
            t.add_row(role, fmts[role], human_bytes(n), f"{100 * n / m.peak_bytes:.1f}%")
    elif by == "layer":
        t = Table(title="Bytes at the peak, by layer")
        name_column(t, "layer", list(m.by_layer))
        for col, j in (("bytes", "right"), ("share", "right")):
            t.add_column(col, justify=j)
        for layer, n in m.by_layer.items():
            t.add_row(esc(layer), human_bytes(n), f"{100 * n / m.peak_bytes:.1f}%")
    else:
        t = Table(title="Every variable (* = alive at the peak)")
        name_column(t, "variable\n  role format", [f"* {v.name}" for v in m.variables])
        t.add_column("shape\nbytes", justify="right")
        t.add_column("alive from\nto")
        for v in m.variables:
            t.add_row(f"{'*' if v.alive_at_peak else ' '} {esc(v.name)}\n  [dim]{v.role} {v.format}[/]",
                      f"{'x'.join(map(str, v.shape))}\n{human_bytes(v.bytes)}",
                      f"{esc(v.alloc_event)}\n{esc(v.free_event)}")
    out.print(t)
    print_ops(p)
    if p.time is not None:
        print_device(p)


def print_ops(p: Prediction) -> None:
    """Operations of the step: every kind and format, per phase and in total (bit_mac marked informational)."""
    o = p.ops
    phases = [ph for ph in ("forward", "backward_dx", "backward_dw", "update") if any(r.phase == ph for r in o.by_phase)]
    t = Wide("Operations per step, by phase", [*phases, "total"], abbreviate=False, label_header="kind format")
    cells: dict[tuple, dict[str, int]] = {}
    for r in o.by_phase:
        cells.setdefault((r.kind, r.format), {})[r.phase] = r.count
    for r in o.total:  # largest first; informational bit products last
        if r.kind in INFORMATIONAL:
            continue
        row = cells[(r.kind, r.format)]
        t.row(f"{r.kind} {r.format}", [count(row[ph]) if ph in row else "" for ph in phases] + [f"[bold]{count(r.count)}[/]"])
    for r in o.total:
        if r.kind in INFORMATIONAL:
            row = cells[(r.kind, r.format)]
            t.row(f"[dim]{r.kind} {r.format} (info)[/]",
                  [f"[dim]{count(row[ph])}[/]" if ph in row else "" for ph in phases] + [f"[dim]{count(r.count)}[/]"])
    for obj in t.render(None if out.markdown else out.console.width):
        out.print(obj)
    if o.bit_macs:
        out.print("[dim](info): bit_mac counts the bit products inside the xnor_popcount words; "
                  "it is not charged time or energy.[/]")


def print_device(p: Prediction) -> None:
    e, tm, f = p.energy, p.time, p.fit
    t = Table(title=f"On {esc(p.device)}")
    t.add_column("")
    t.add_column("per step", justify="right")
    t.add_column("per sample", justify="right")
    t.add_column(f"per epoch ({tm.epoch_samples:,} samples)" if tm.epoch_samples else "per epoch", justify="right")
    if e is None:
        t.add_row("[bold]energy[/]", "unavailable", "unavailable", "unavailable")
    else:
        t.add_row("[bold]energy[/]", f"[bold]{si(e.joules_per_step, 'J')}[/]", si(e.joules_per_sample, "J"),
                  si(e.joules_per_epoch, "J") if e.joules_per_epoch is not None else "-")
        t.add_row("├─ compute", si(e.compute_j, "J"), "", "")
        t.add_row("├─ memory traffic", si(e.memory_j, "J"), "", "")
        t.add_row("└─ static (idle x time)", si(e.static_j, "J"), "", "")
        t.add_row("dynamic (compute+memory)", si(e.dynamic_j, "J"), "", "")
    t.add_row("[bold]time[/]", f"[bold]{si(tm.seconds_per_step, 's')}[/]", si(tm.seconds_per_sample, "s"),
              si(tm.seconds_per_epoch, "s") if tm.seconds_per_epoch is not None else "-")
    for event, sec in (tm.seconds_by_event or {}).items():
        t.add_row(f"  {event}", si(sec, "s"), "", "")
    out.print(t)
    out.print(f"Time: {tm.basis}" + (" (the trainer's operator costs measured on this machine)"
                                     if tm.seconds_by_event else " (counts over peak rates: real code is slower)"))
    if p.energy_unavailable:
        out.print(f"Energy: {p.energy_unavailable}")
    verdict = "[green]fits[/]" if f.fits else "[red]does not fit[/]"
    out.print(f"Memory: peak {human_bytes(p.memory.peak_bytes)} {verdict} in {human_bytes(f.usable_bytes)} usable; "
              f"largest batch that fits: [bold]{f.max_batch:,}[/]")


@app.command("summary")
def summary_cmd(
    model: str = model_argument(),
    strategy: str = strategy_option(),
    batch: int = batch_option(100),
    engine: Optional[str] = engine_option(None),
    retention: Optional[str] = retention_option(),
    workspace: Optional[str] = workspace_option(None),
    device: Optional[str] = typer.Option(None, "--device", "-d", help="Device name or YAML path: adds energy and time per layer."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
    markdown: bool = typer.Option(False, "--markdown", help="Print the tables as Markdown."),
) -> None:
    """Layer by layer, as Larq's summary: output shape, 1-bit and real parameters, forward MACs, bytes kept
    for backward, operations per phase (and energy and time with --device), with totals."""
    output_mode(as_json, markdown)
    impl = implementation(engine, retention, workspace)
    dev = open_device(device)
    sm = summary(model, strategy, batch, device=dev, **impl)
    note_engine(impl["engine"], [sm.strategy], dev)
    if as_json:
        emit_json(sm.to_json())
        return
    head([f"[bold]{esc(sm.model)}[/]", f"strategy [bold]{esc(sm.strategy)}[/]", f"engine [bold]{esc(sm.engine)}[/]",
          f"batch {sm.batch}", f"retention {sm.retention}", f"workspace {human_bytes(sm.workspace_budget)}"]
         + ([f"on [bold]{esc(sm.device)}[/]"] if sm.device else []))
    headers = ["kind", "output", "1-bit params", "real params", "param bytes", "fwd bit-MACs", "fwd MACs",
               "kept for bwd", "ops forward", "ops dX", "ops dW", "ops update"]
    if sm.device:
        headers += ["energy", "time"]
    t = Wide("Layer by layer (one training step)", headers, abbreviate=False, label_header="layer")

    def cells(r) -> list[str]:
        row = [r.kind + (f" {r.precision}" if r.precision else ""), "x".join(map(str, r.output_shape)),
               count(r.params_1bit) if r.params_1bit else "", count(r.params_real) if r.params_real else "",
               human_bytes(r.param_bytes) if r.param_bytes else "",
               count(r.forward_bit_macs) if r.forward_bit_macs else "",
               count(r.forward_macs) if r.forward_macs else "",
               human_bytes(r.saved_bytes) if r.saved_bytes else "",
               *[count(r.ops[ph]) if r.ops.get(ph) else "" for ph in ("forward", "backward_dx", "backward_dw", "update")]]
        if sm.device:
            row += [si(r.joules_per_step, "J"), si(r.seconds_per_step, "s")]
        return row

    for r in sm.layers:
        t.row(esc(r.layer), cells(r))
    t.section()
    t.row("[bold]total[/]", [f"[bold]{c}[/]" if c else "" for c in cells(sm.total)])
    for obj in t.render(None if out.markdown else out.console.width):
        out.print(obj)
    out.print(f"Parameters: {sm.total.params_1bit:,} 1-bit (binary kernels) + {sm.total.params_real:,} real "
              f"= {sm.total.params_1bit + sm.total.params_real:,}; param bytes are what training holds "
              f"(latent weights, batchnorm parameters, prelu slopes) at the strategy's formats.")


@app.command("compare")
def compare_cmd(
    model: str = model_argument(),
    strategies: Optional[str] = strategies_option(),
    ladder: bool = typer.Option(False, "--ladder", help="Compare the ablation ladder from standard to proposed, one change per step."),
    batch: int = batch_option(100),
    engine: Optional[str] = engine_option(None),
    retention: Optional[str] = retention_option(),
    workspace: Optional[str] = workspace_option(None),
    device: Optional[str] = typer.Option(None, "--device", "-d", help="Device name or YAML path: adds energy, time and fit."),
    epoch_samples: Optional[int] = typer.Option(None, "--epoch-samples", help="Samples per epoch (default: the model's train_samples)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
    markdown: bool = typer.Option(False, "--markdown", help="Print the tables as Markdown."),
    plot: Optional[str] = typer.Option(None, "--plot", metavar="FILE", help="Also draw bytes by role (and energy) per strategy to FILE (.png, .svg or .pdf)."),
) -> None:
    """Compare strategies side by side: peak memory, where it goes, energy and time, and the savings."""
    output_mode(as_json, markdown)
    if plot is not None:
        check_path(plot)
    if ladder and strategies is not None:
        raise BadInput("--ladder compares the shipped ladder; leave out --strategies, or drop --ladder")
    names = LADDER if ladder else split_list(strategies)
    impl = implementation(engine, retention, workspace)
    dev = open_device(device)
    c = compare(model, names, batch, device=dev, epoch_samples=check_samples(epoch_samples, device), **impl)
    note_engine(impl["engine"], c.strategies, dev)
    if as_json:
        emit_json(c.to_json())
    else:
        print_comparison(c, stepwise=ladder)
    if plot is not None:
        wrote(plot_comparison(c, plot), as_json)


def print_comparison(c: Comparison, stepwise: bool) -> None:
    preds = c.predictions
    p0 = preds[0]
    head([f"[bold]{esc(p0.model)}[/]", f"engine [bold]{esc(p0.engine)}[/]", f"batch {p0.batch}",
          f"retention {p0.retention}", f"workspace {human_bytes(p0.workspace_budget)}",
          f"savings against [bold]{esc(c.baseline)}[/]"] + ([f"on [bold]{esc(p0.device)}[/]"] if p0.device else []))
    t = Wide("One training step, strategy by strategy", [esc(p.strategy) for p in preds])
    t.row("[bold]peak[/]", [f"[bold]{human_bytes(p.memory.peak_bytes)}[/]" for p in preds])
    t.row(f"saving vs {esc(c.baseline)}", [f"{c.savings[p.strategy]['peak_bytes_ratio']:.2f}x" for p in preds])
    if stepwise:
        t.row("saving of this step", ["-"] + [f"{a.memory.peak_bytes / b.memory.peak_bytes:.2f}x"
                                              for a, b in zip(preds, preds[1:])])
    t.row("peak = fixed", [human_bytes(p.memory.fixed_bytes) for p in preds])
    t.row("  + per sample x batch", [human_bytes(p.memory.per_sample_bytes) for p in preds])
    t.row("peak event", [esc(p.memory.peak_event).replace(":", ":\n", 1) for p in preds])
    if p0.time is not None:
        t.section()
        if p0.energy is None:
            t.row("[bold]energy per step[/]", ["unavailable" for _ in preds])
        else:
            t.row("[bold]energy per step[/]", [f"[bold]{si(p.energy.joules_per_step, 'J')}[/]" for p in preds])
            t.row("├─ compute", [si(p.energy.compute_j, "J") for p in preds])
            t.row("├─ memory traffic", [si(p.energy.memory_j, "J") for p in preds])
            t.row("└─ static (idle x time)", [si(p.energy.static_j, "J") for p in preds])
            t.row("energy saving", [f"{c.savings[p.strategy]['joules_per_step_ratio']:.2f}x" for p in preds])
        t.row("[bold]time per step[/]", [f"[bold]{si(p.time.seconds_per_step, 's')}[/]" for p in preds])
        t.row("time saving", [f"{c.savings[p.strategy]['seconds_per_step_ratio']:.2f}x" for p in preds])
        t.row(f"fits in {human_bytes(p0.fit.usable_bytes)}", ["[green]yes[/]" if p.fit.fits else "[red]no[/]"
                                                             for p in preds])
        t.row("largest batch that fits", [f"{p.fit.max_batch:,}" for p in preds])
    t.section()
    t.row("[bold]operations per step[/]", ["" for _ in preds])
    totals = [{(r.kind, r.format): r.count for r in p.ops.total} for p in preds]
    for kind, fmt in dict.fromkeys(k for tot in totals for k in tot):
        note = " (info)" if kind in INFORMATIONAL else ""
        t.row(f"  {kind} {fmt}{note}", [count(tot[(kind, fmt)]) if (kind, fmt) in tot else "" for tot in totals])
    roles = list(dict.fromkeys(r for p in preds for r in p.memory.by_role_max))
    fmts = [role_formats(p) for p in preds]
    t.section()
    t.row("[bold]format by role[/]", ["" for _ in preds])
    for role in roles:
        t.row(f"  {role}", [f.get(role, "") for f in fmts])
    t.section()
    t.row("[bold]by role at the peak[/]", ["" for _ in preds])
    for role in roles:
        t.row(f"  {role}", [human_bytes(p.memory.by_role[role]) if role in p.memory.by_role else
                            "[dim]not live[/]" if role in p.memory.by_role_max else "" for p in preds])
    t.section()
    t.row("[bold]largest in the step[/]", ["" for _ in preds])
    for role in roles:
        t.row(f"  {role}", [human_bytes(p.memory.by_role_max[role]) if role in p.memory.by_role_max else ""
                            for p in preds])
    t.section()
    t.row("[bold]saving of the largest[/]", ["" for _ in preds])
    base = p0.memory.by_role_max
    for role in roles:
        t.row(f"  {role}", [f"{base[role] / p.memory.by_role_max[role]:.3g}x"
                            if base.get(role) and p.memory.by_role_max.get(role) else "" for p in preds])
    for obj in t.render(None if out.markdown else out.console.width):
        out.print(obj)
    if any(kind in INFORMATIONAL for tot in totals for kind, _ in tot):
        out.print("[dim](info): bit_mac counts the bit products inside the xnor_popcount words; "
                  "it is not charged time or energy.[/]")


@app.command("fit")
def fit_cmd(
    model: str = model_argument(),
    device: str = typer.Option(..., "--device", "-d", help="Device name or YAML path."),
    strategies: Optional[str] = strategies_option(),
    batch: int = typer.Option(100, "--batch", "-b", help="Batch size whose fit is also checked."),
    engine: Optional[str] = engine_option(None),
    retention: Optional[str] = retention_option(),
    workspace: Optional[str] = workspace_option(None),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
    markdown: bool = typer.Option(False, "--markdown", help="Print the tables as Markdown."),
) -> None:
    """The largest batch that fits the device's usable memory, per strategy."""
    output_mode(as_json, markdown)
    impl = implementation(engine, retention, workspace)
    dev = load_device(device)
    f = fit(model, split_list(strategies), dev, batch, **impl)
    note_engine(impl["engine"], [row.strategy for row in f.strategies], dev)
    if as_json:
        emit_json(f.to_json())
        return
    head([f"[bold]{esc(f.model)}[/] on [bold]{esc(f.device)}[/]",
          f"{human_bytes(f.usable_bytes)} usable of {human_bytes(f.ram_bytes)} RAM", f"engine [bold]{esc(f.engine)}[/]",
          f"retention {f.retention}", f"workspace {human_bytes(f.workspace_budget)}"])
    rows = f.strategies
    t = Wide("Largest batch that fits", [esc(r.strategy) for r in rows])
    t.row("[bold]largest batch[/]", [f"[bold]{r.fit.max_batch:,}[/]" for r in rows])
    t.row("peak there", [human_bytes(r.fit.peak_bytes_at_max_batch) if r.fit.max_batch else "-" for r in rows])
    t.row(f"peak at batch {batch}", [human_bytes(r.memory["peak_bytes"]) for r in rows])
    t.row(f"fits at batch {batch}", ["[green]yes[/]" if r.fit.fits else "[red]no[/]" for r in rows])
    t.row("peak = fixed", [human_bytes(r.memory["fixed_bytes"]) for r in rows])
    t.row("  + per sample x batch", [human_bytes(r.memory["per_sample_bytes"]) for r in rows])
    for obj in t.render(None if out.markdown else out.console.width):
        out.print(obj)


@app.command("devices")
def devices_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the shipped device tables."""
    devs = [load_device(n) for n in list_devices()]
    if as_json:
        emit_json({"schema": "bnncost.devices/1", "devices": [
            {"name": d.name, "description": d.description, "ram_bytes": d.memory.ram_bytes,
             "usable_bytes": d.memory.usable_bytes, "idle_w": d.power.idle_w, "active_w": d.power.active_w,
             "levels": [lv.name for lv in d.memory.levels]} for d in devs]})
        return
    t = Table(title="Devices (pass a name, or a path to your own YAML)")
    name_column(t, "device", [d.name for d in devs])
    for col in ("RAM", "usable", "idle", "active", "description"):
        t.add_column(col, justify="right" if col in ("RAM", "usable", "idle", "active") else "left")
    for d in devs:
        t.add_row(d.name, human_bytes(d.memory.ram_bytes), human_bytes(d.memory.usable_bytes),
                  f"{d.power.idle_w:.2g} W", f"{d.power.active_w:.2g} W", d.description)
    out.print(t)


@app.command("sweep")
def sweep_cmd(
    model: str = model_argument(),
    strategies: Optional[str] = strategies_option(),
    batch: str = typer.Option("1:4096", "--batch", "-b", help="Batch sizes: a:b, a:b:step, or a list 1,8,64."),
    log: bool = typer.Option(True, "--log/--linear", help="For a:b without a step: powers of two (default) or every batch."),
    device: Optional[str] = typer.Option(None, "--device", "-d", help="Device name or YAML path: adds fit, energy and time per sample."),
    engine: Optional[str] = engine_option(None),
    retention: Optional[str] = retention_option(),
    workspace: Optional[str] = workspace_option(None),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
    markdown: bool = typer.Option(False, "--markdown", help="Print the tables as Markdown."),
    plot: Optional[str] = typer.Option(None, "--plot", metavar="FILE", help="Also draw memory against batch size to FILE (.png, .svg or .pdf)."),
) -> None:
    """Peak memory (and energy and time per sample on a device) over a range of batch sizes."""
    output_mode(as_json, markdown)
    if plot is not None:
        check_path(plot)
    batches = parse_batches(batch, log)
    impl = implementation(engine, retention, workspace)
    dev = open_device(device)
    s = sweep(model, split_list(strategies), batches, device=dev, **impl)
    note_engine(impl["engine"], [line.strategy for line in s.lines], dev)
    if as_json:
        emit_json(s.to_json())
    else:
        print_sweep(s)
    if plot is not None:
        wrote(plot_sweep(s, plot), as_json)


def print_sweep(s: Sweep) -> None:
    where = f" on {esc(s.device)} ({human_bytes(s.usable_bytes)} usable)" if s.device else ""
    head([f"[bold]{esc(s.model)}[/]{where}", f"engine [bold]{esc(s.engine)}[/]", f"retention {s.retention}",
          f"workspace {human_bytes(s.workspace_budget)}"])
    shown = table_rows(s)
    if len(shown) < len(s.batches):
        out.print(f"showing {len(shown)} of {len(s.batches):,} batch sizes (every row where a strategy stops "
                  f"fitting included); --json or --plot give them all")
    title = "Peak memory of one training step against batch size" + (" (x: does not fit)" if s.device else "")

    def table(lines, with_notes: bool) -> Wide:
        headers = []
        for line in lines:
            headers += [esc(line.strategy)] + (["J / sample", "s / sample"] if s.device else [])
        noted = bool(s.device) and with_notes
        t = Wide(title, headers + (["note"] if noted else []), abbreviate=False, label_header="batch")
        for i in shown:
            cells, notes = [], []
            for line in lines:
                peak = human_bytes(line.peak_bytes[i])
                if not s.device:
                    cells.append(peak)
                    continue
                fits = line.fits[i]
                joules = "unavailable" if line.joules_per_sample is None else si(line.joules_per_sample[i], "J")
                cells += [peak if fits else f"[red]{peak} x[/]", joules,
                          si(line.seconds_per_sample[i], "s")]
                if not fits and (i == 0 or line.fits[i - 1]):  # the first batch that does not fit
                    notes.append(f"{esc(line.strategy)} stops fitting (largest batch {line.max_batch:,})")
            t.row(f"{s.batches[i]:,}", cells + (["; ".join(notes)] if noted else []))
        return t

    width = None if out.markdown else out.console.width
    together = table(s.lines, True)
    if width is None or together.fits(width) or len(s.lines) == 1:
        for obj in together.render(width):
            out.print(obj)
    else:  # too wide for the terminal: one table per strategy ("x" marks where it stops fitting)
        for line in s.lines:
            for obj in table([line], False).render(width):
                out.print(obj)
    if s.device:
        out.print("Largest batch that fits: " + ", ".join(f"{esc(ln.strategy)} {ln.max_batch:,}" for ln in s.lines))


@app.command("verify")
def verify_cmd(
    model: str = model_argument(),
    strategy: str = strategy_option(),
    batch: int = batch_option(32),
    steps: int = typer.Option(2, "--steps", help="Training steps to run (the first is measured)."),
    engine: str = engine_option(TRAINER_ENGINE),
    retention: Optional[str] = retention_option(),
    workspace: Optional[str] = workspace_option(None),
    dataset: str = typer.Option("synthetic", "--dataset", help="Data of the measured steps: synthetic (random inputs of the model's shape: memory and op counts do not depend on the values; the default), digits, mnist:DIR or cifar10:DIR."),
    by: str = typer.Option("role", "--by", metavar="role|variable", help="Variables grouped by role, or every variable."),
    device: Optional[str] = typer.Option(None, "--device", "-d", help="A device file written by bnncost calibrate on this machine: also time the trainer's steps against the predicted step time."),
    time_steps: int = typer.Option(5, "--time-steps", help="With --device: steps timed after one warm-up step (the median is compared)."),
    clock: str = typer.Option("cpu", "--clock", help="With --device: cpu (the process's CPU time: other processes' turns on a shared machine not counted; what calibrate measures) or wall."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document (whatever the verdict)."),
    markdown: bool = typer.Option(False, "--markdown", help="Print the tables as Markdown."),
) -> None:
    """Run the bundled trainer and lay its measurement beside the prediction, variable by variable.

    Exit code 0 when everything agrees within the stated tolerance, 1 when anything does not.
    """
    output_mode(as_json, markdown)
    if by not in ("role", "variable"):
        raise BadInput(f"--by must be role or variable, not '{by}'")
    dev = open_device(device)
    if dev is not None and dev.trainer is None:
        raise BadInput(f"--device {device}: has no measured trainer costs (a shipped board's times are peak-rate "
                       "lower bounds); run bnncost calibrate on this machine and pass its file")
    if time_steps < 1:
        raise BadInput(f"--time-steps must be a positive integer, not {time_steps}")
    if clock not in ("cpu", "wall"):
        raise BadInput(f"--clock must be cpu or wall, not '{clock}'")
    impl = implementation(engine, retention, workspace)
    with trainer_progress(f"verify {model}: {steps} step(s) of batch {batch}") as on_event:
        v = run_verification(model, strategy, batch, steps=steps, dataset=dataset, on_event=on_event, **impl)
    note_engine(impl["engine"], [v.strategy])
    if dev is not None:
        with trainer_progress(f"timing {time_steps} step(s) of {model} on this machine"):
            v = with_time_check(v, model, strategy, dev, time_steps, clock)
    if as_json:
        emit_json(v.to_json())
    else:
        print_verification(v, by)
    if not v.ok:
        raise typer.Exit(1)


@contextmanager
def trainer_progress(what: str):
    """A progress bar on stderr over the events of the trainer's steps (stdout stays the document; a caller
    that cannot count them gets a pulsing bar and the elapsed time); it disappears when done, and a
    terminal-less stderr shows nothing."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    if not console.is_terminal:
        yield None
        return
    with Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TextColumn("events"), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("", total=None)
        yield lambda done, total: progress.update(task, completed=done, total=total)


def run_verification(model: str, strategy: str, batch: int, *, steps: int = 2, dataset: str = "synthetic",
                     engine: "str | Engine" = TRAINER_ENGINE, retention: str | None = None,
                     workspace_budget: int | None = None, plan_hook=None, on_event=None):
    """Predict, run the trainer for `steps` steps, and compare (the trainer is imported only here).

    The trainer runs with the retention and budget of `engine` (the bundled
    trainer's by default) unless they are given. `plan_hook(plan)` may alter
    the prediction before the comparison (the tests break it on purpose).
    """
    from bnncost.costmodel.verification import Measurement, verify_against
    from bnncost.trainer.run import run_steps

    if not 1 <= steps <= MAX_VERIFY_STEPS:
        raise BadInput(f"--steps must be an integer from 1 to {MAX_VERIFY_STEPS:,} (the first step is the one "
                       f"measured), not {steps}")
    check_batch(batch)
    graph = graph_of(model)
    strat = load_strategy(strategy)
    eng = as_engine(engine)
    retention, workspace_budget = implementation_knobs(eng, retention, workspace_budget)
    plan = memory_plan(graph, strat, retention=retention, workspace_budget=workspace_budget, engine=eng)
    refuse_beyond_this_machine(graph, plan, batch, dataset)
    if plan_hook is not None:
        plan = plan_hook(plan)
    measured = run_steps(graph, strat, batch=batch, steps=steps, dataset=dataset, retention=retention,
                         workspace_budget=workspace_budget, on_event=on_event)
    return verify_against(plan, count_ops(graph, strat), batch, Measurement(**measured.measurement()),
                          model=graph.model.name, strategy=strat.name, engine=eng.name, retention=retention,
                          workspace_budget=workspace_budget)


def with_time_check(v, model: str, strategy: str, device: Device, steps: int, clock: str = "cpu"):
    """The verification with the trainer's median step time (and per phase) against the prediction.

    A calibrated device knows its reference step's time (trainer.timing): the steps are timed with
    reference steps between them, and compared at the core speed the device was calibrated at."""
    from bnncost.costmodel.timing import EVENTS as TIME_EVENTS, event_of
    from bnncost.costmodel.verification import check_time
    from bnncost.trainer.timing import time_steps as time_trainer

    p = predict(model, strategy, v.batch_size, device=device, retention=v.retention,
                workspace_budget=v.workspace_budget)
    reference = device.trainer.reference_step_s if device.trainer is not None else None
    raw = time_trainer(model, strategy, batch=v.batch_size, steps=steps, warmup=1,
                       workspace_budget=v.workspace_budget or 65536, retention=v.retention, clock=clock,
                       reference=reference is not None and clock == "cpu")
    t = raw.at_reference(reference) if raw.relative is not None else raw
    measured = {e: 0.0 for e in TIME_EVENTS}
    for event, sec in t.events_s.items():
        phase = event_of(event)
        if phase is not None:
            measured[phase] += sec
    measured["step"] = t.step_s
    tc = check_time(device.name, p.time.seconds_by_event, measured, t.steps, t.warmup, clock, t.wall_step_s,
                    raw_step_s=raw.step_s, reference_s=raw.reference_s if raw.relative is not None else None,
                    calibration_reference_s=reference if raw.relative is not None else None)
    return v.model_copy(update={"time": tc, "ok": v.ok and tc.ok})


def available_memory_bytes() -> int | None:
    """What this machine can still give a process (Linux MemAvailable, else free physical pages)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def refuse_beyond_this_machine(graph, plan, batch: int, dataset: str) -> None:
    """Before the trainer allocates anything: refuse a step (and its data) that cannot fit in this machine."""
    step = plan.peak(batch)[0]
    samples = math.prod(graph.model.input)
    data = 0
    if dataset.partition(":")[0] == "synthetic":  # 640 float32 samples and a float64 teacher, made in memory
        data = 640 * samples * 4 + samples * graph.output_shape[0] * 8
    need = step + data
    have = available_memory_bytes()
    if have is not None and need > have:
        raise BadInput(f"{graph.model.name}: training needs about {human_bytes(need)} of memory (predicted step peak "
                       f"{human_bytes(step)} at batch {batch:,}{f' + data {human_bytes(data)}' if data else ''}) "
                       f"but this machine has {human_bytes(have)} available")


def _diff(a: int | None, b: int | None) -> str:
    if a is None or b is None:
        return "missing"
    return "0" if a == b else f"{b - a:+,}"


def print_verification(v, by: str) -> None:
    ok = "[green]ok[/]"
    bad = "[red]MISMATCH[/]"
    head([f"[bold]{esc(v.model)}[/]", f"strategy [bold]{esc(v.strategy)}[/]", f"engine [bold]{esc(v.engine)}[/]",
          f"batch {v.batch_size}", f"retention {v.retention}", f"workspace {human_bytes(v.workspace_budget)}",
          "the cost model against the bundled trainer"])
    t = Table(title="Bytes of every variable (must agree exactly)" if by == "variable" else
              "Bytes by role (every variable must agree exactly)")
    if by == "variable":  # the role under the name, as predict --by variable: fits 80 columns, nothing cut
        name_column(t, "variable\n  role", [c.name for c in v.variables] + [f"  {c.role}" for c in v.variables])
        cols = []
    else:
        name_column(t, "role", list(dict.fromkeys(c.role for c in v.variables)))
        cols = ["variables"]
    for col in cols + ["predicted", "measured", "diff", ""]:
        t.add_column(col, justify="right" if col in ("predicted", "measured", "diff", "variables") else "left",
                     no_wrap=col != "")
    if by == "variable":
        for c in v.variables:
            t.add_row(f"{esc(c.name)}\n  [dim]{c.role}[/]",
                      human_bytes(c.predicted_bytes) if c.predicted_bytes is not None else "-",
                      human_bytes(c.measured_bytes) if c.measured_bytes is not None else "-",
                      _diff(c.predicted_bytes, c.measured_bytes),
                      ok if c.ok else f"{bad} {esc(c.predicted_life or '-')} / {esc(c.measured_life or '-')}")
    else:
        groups: dict[str, list] = {}
        for c in v.variables:
            groups.setdefault(c.role, []).append(c)
        for role, cs in groups.items():
            pb = sum(c.predicted_bytes or 0 for c in cs)
            mb = sum(c.measured_bytes or 0 for c in cs)
            wrong = [c.name for c in cs if not c.ok]
            t.add_row(role, str(len(cs)), human_bytes(pb), human_bytes(mb), _diff(pb, mb),
                      ok if not wrong else f"{bad}: {esc(', '.join(wrong[:4]))}{' ...' if len(wrong) > 4 else ''}")
    out.print(t)
    from bnncost.costmodel.verification import PROCESS_BELOW_FRACTION, PROCESS_MARGIN_BYTES, PROCESS_MARGIN_FRACTION

    p = v.peak
    t = Table(title="Peak of the step")
    t.add_column("", no_wrap=True)
    t.add_column("bytes", justify="right", no_wrap=True)
    t.add_column("event\ntolerance", no_wrap=True)
    t.add_column("", no_wrap=True)
    t.add_row("predicted (cost model)", f"{p.predicted_bytes:,}", esc(p.predicted_event), "")
    t.add_row("ledger (trainer)", f"{p.ledger_bytes:,}", f"{esc(p.ledger_event)}\nexact, same event",
              ok if p.ledger_ok else bad)
    t.add_row("process (tracemalloc)", f"{p.process_bytes:,}\n({100 * (p.process_bytes / p.predicted_bytes - 1):+.1f}%)",
              f"-{PROCESS_BELOW_FRACTION:.0%} .. +{PROCESS_MARGIN_FRACTION:.0%} + {human_bytes(PROCESS_MARGIN_BYTES)}:\n"
              f"{p.process_floor_bytes:,} .. {p.process_limit_bytes:,}", ok if p.process_ok else bad)
    out.print(t)
    t = Wide("Operations by phase, kind and format (must agree exactly)", ["predicted", "measured", "difference"],
             abbreviate=False, label_header="phase kind format")
    for o in v.ops:
        t.row(f"{esc(o.phase)} {o.kind} {o.format}", [f"{o.predicted:,}", f"{o.measured:,}",
                                                     f"{_diff(o.predicted, o.measured)} {ok if o.ok else bad}"])
    for obj in t.render(None if out.markdown else out.console.width):
        out.print(obj)
    if v.time is not None:
        from bnncost.costmodel.verification import TIME_PHASE_FLOOR, TIME_TOLERANCE

        tc = v.time
        speed = ", at the calibration's core speed" if tc.reference_s is not None else ""
        t = Table(title=f"Time per step on {tc.device} ({tc.clock} time{speed}, median of {tc.steps} steps after "
                        f"{tc.warmup} warm-up; "
                        f"tolerance: step ±{100 * TIME_TOLERANCE:.0f}%, each phase ±{100 * TIME_TOLERANCE:.0f}% "
                        f"or ±{100 * TIME_PHASE_FLOOR:.0f}% of the step)")
        for col in ("phase", "predicted", "measured", "error", ""):
            t.add_column(col, justify="left" if col in ("phase", "") else "right")
        for r in tc.phases:
            t.add_row(r.phase, si(r.predicted_s, "s"), si(r.measured_s, "s"), f"{100 * r.error:+.1f}%",
                      ok if r.ok else bad)
        out.print(t)
        notes = []
        if tc.reference_s is not None:
            notes.append(["measured at the calibration's core speed",
                          f"reference step {si(tc.reference_s, 's')} now, {si(tc.calibration_reference_s, 's')} "
                          f"when calibrated", f"the core ran {tc.calibration_reference_s / tc.reference_s:.2f}x "
                          f"as fast", f"as timed, the step took {si(tc.raw_step_s, 's')}"])
        if tc.clock == "cpu":
            notes.append([f"wall time of the step {si(tc.wall_step_s, 's')}", f"load average {tc.load_average:.1f}",
                          "other processes' turns on the cores count there, not in CPU time"])
        for parts in notes:
            head(parts, "dim")
    if v.ok:
        out.print("[green bold]verified[/]: every variable, the peak and every operation count agree within tolerance"
                  + (", and so does the step time" if v.time is not None else ""))
    else:
        n = sum(not c.ok for c in v.variables)
        out.print(f"[red bold]not verified[/]: {n} variable(s), "
                  f"{'the ledger peak, ' if not p.ledger_ok else ''}{'the process peak, ' if not p.process_ok else ''}"
                  f"{len(v.op_mismatches)} op count(s) disagree"
                  + ("" if v.time is None or v.time.ok else "; the step time is outside its tolerance"))


SWEEP_TABLE_ROWS = 64


def table_rows(s: Sweep) -> list[int]:
    """Indices of the batch sizes a table shows: all of a short sweep; else evenly spread ones
    plus, for each strategy, the last batch that fits and the first that does not."""
    n = len(s.batches)
    if n <= SWEEP_TABLE_ROWS:
        return list(range(n))
    keep = {round(k * (n - 1) / (SWEEP_TABLE_ROWS - 1)) for k in range(SWEEP_TABLE_ROWS)}
    for line in s.lines:
        if line.fits:
            keep |= {i for i in range(1, n) if line.fits[i] != line.fits[i - 1]}
            keep |= {i - 1 for i in range(1, n) if line.fits[i] != line.fits[i - 1]}
    return sorted(keep)


def output_mode(as_json: bool, markdown: bool) -> None:
    if as_json and markdown:
        raise BadInput("--json and --markdown exclude each other")
    out.markdown = markdown


def wrote(path, as_json: bool) -> None:
    """Say where a plot went: on stderr when stdout carries a document (JSON or Markdown)."""
    if as_json or out.markdown:
        sys.stderr.write(f"wrote {path}\n")
    else:
        out.print(f"wrote {path}")


def check_samples(n: int | None, device: str | None) -> int | None:
    if n is not None and n < 1:
        raise BadInput(f"--epoch-samples must be a positive integer, not {n}")
    if n is not None and device is None:
        raise BadInput("--epoch-samples prices an epoch on a device: add --device")
    return n


def byte_count(option: str, value: str | int) -> int:
    """A byte count from the command line, plain or with a unit, by the parser the device files use."""
    try:
        return convert_quantity(value, "bytes")
    except ValueError as exc:
        raise BadInput(f"{option}: {exc}") from None


def knobs(retention: str | None, workspace: str | int | None) -> dict:
    """--retention and --workspace checked; None stays None (the engine's then)."""
    if retention is not None and retention not in ("step", "backward"):
        raise BadInput(f"--retention must be step or backward, not '{retention}'")
    return {"retention": retention,
            "workspace_budget": None if workspace is None else byte_count("--workspace", workspace)}


def implementation(engine: str | None, retention: str | None, workspace: "str | int | None") -> dict:
    """The engine (loaded, so a bad one is refused before any work) and the knobs that override it."""
    return {"engine": load_engine(DEFAULT_ENGINE if engine is None else engine), **knobs(retention, workspace)}


def note_engine(engine: Engine, strategies: list[str], device: Device | None = None) -> None:
    """A note on stderr where the engine was not measured with a strategy it was asked for, and one where its
    runtime bytes were measured on another CPU than the device's."""
    others = tuple(e for e in map(load_engine, engine_names()) if engine.kin_of(e)) \
        if device is not None and device.cpu is not None else ()
    for note in (engine.unmeasured_note(strategies), engine.runtime_cpu_note(device, others)):
        if note:
            sys.stderr.write(f"bnncost: note: {note}\n")


# ---------------------------------------------------------------- calibrate (this machine)

@app.command("calibrate")
def calibrate_cmd(
    out_file: str = typer.Option("calibrated.yaml", "--out", "-o", help="Device YAML to write (atomically)."),
    name: Optional[str] = typer.Option(None, "--name", help="Device name in the file (default: calibrated-HOSTNAME)."),
    quick: bool = typer.Option(False, "--quick", help="Fewer strategies, batches and repeats: under a minute on a quiet machine."),
    base: Optional[str] = typer.Option(None, "--base", help="A shipped board (or device YAML) whose power and energy per byte to take, sources kept."),
    idle_w: Optional[float] = typer.Option(None, "--idle-w", help="This machine's idle power in W (with --active-w)."),
    active_w: Optional[float] = typer.Option(None, "--active-w", help="This machine's power with every core busy, in W."),
) -> None:
    """Measure this machine running the bundled trainer and write a device YAML of what it sustains.

    Pass the file with --device: predict/compare/sweep then predict the trainer's real step time here
    (and verify --device checks it). Without --base or --idle-w/--active-w, energy is unavailable.
    """
    import platform

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from bnncost.calibrate import CalibrationError, calibrate, write_device
    from bnncost.calibrate.device import check_inputs

    try:
        base_device = check_inputs(out_file, base, idle_w, active_w)
    except CalibrationError as exc:
        raise BadInput(str(exc)) from None
    device_name = name or f"calibrated-{platform.node() or 'host'}"
    progress = Progress(TextColumn("calibrating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("{task.fields[what]}"), console=Console(stderr=True), transient=True)
    with progress:
        task = progress.add_task("", total=None, what="")
        doc = calibrate(name=device_name, quick=quick, base=base_device, idle_w=idle_w, active_w=active_w,
                        total=lambda n: progress.update(task, total=n),
                        progress=lambda what: progress.update(task, advance=1, what=what))
    write_device(doc, out_file)
    levels = ", ".join(f"{lv['name']} {human_bytes(lv['capacity_bytes'])} {lv['bandwidth_bytes_per_s'] / 1e9:.3g} GB/s"
                       for lv in doc["memory"]["levels"])
    out.print(f"wrote [bold]{out_file}[/] ({doc['name']}): {len(doc['trainer']['operators'])} trainer operators, "
              f"memory {levels}; energy "
              + ("unavailable (no --base or --idle-w/--active-w)" if doc["power"]["idle_w"] is None else "from "
                 + (f"--base {base_device.name}" if base_device is not None else "--idle-w/--active-w")))
    out.print(f"use it: bnncost predict MODEL --device {out_file}    check it: bnncost verify MODEL --device {out_file}")


# ---------------------------------------------------------------- train (the bundled trainer)

@app.command("train")
def train_cmd(
    model: str = model_argument(),
    strategy: str = strategy_option(),
    dataset: str = typer.Option("digits", "--dataset", help="Data to train on: digits (8x8 handwritten digits shipped with the package, for the digits-* models; the default), synthetic, mnist:DIR or cifar10:DIR."),
    epochs: int = typer.Option(20, "--epochs", help="Epochs in total (a resumed run continues up to this)."),
    batch: int = batch_option(64),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate (default 0.01)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the weights and of the shuffling."),
    retention: str = typer.Option("step", "--retention", help="step: saved tensors live to the step's end; backward: freed after use."),
    workspace: str = workspace_option("64KiB"),
    save: Optional[str] = typer.Option(None, "--save", help="Write a checkpoint here after every epoch (atomically)."),
    resume: Optional[str] = typer.Option(None, "--resume", help="Continue from this checkpoint."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document and nothing else."),
) -> None:
    """Train a model with a strategy in the bundled numpy trainer, and measure its memory for real."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from bnncost.trainer import TrainingDiverged, train

    if epochs < 1 or batch < 1:
        raise BadInput("--epochs and --batch must be positive integers")
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise BadInput(f"--lr must be a positive finite number, not {lr}")
    if seed < 0:
        raise BadInput(f"--seed must be a non-negative integer, not {seed}")
    if resume is not None and not resume.strip():
        raise BadInput("--resume: empty; give the checkpoint file to resume from")
    opts = knobs(retention, workspace)
    check_batch(batch)
    graph, strat = graph_of(model), load_strategy(strategy)
    refuse_beyond_this_machine(graph, memory_plan(graph, strat, **opts), batch, dataset)
    progress = None if as_json else Progress(
        TextColumn("epoch {task.fields[epoch]}"), BarColumn(bar_width=16), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}"), TextColumn("{task.fields[note]}"),
        console=out.console, transient=False)
    task = {"id": None, "epoch": 0}

    def on_step(i: int, n: int, loss: float) -> None:
        if not progress.live.is_started:  # started at the first step: bad input prints nothing but its error
            progress.start()
        if task["id"] is None:
            task["epoch"] += 1
            task["id"] = progress.add_task("", total=n, epoch=f"{task['epoch']}/{epochs}", loss=loss, note="")
        progress.update(task["id"], completed=i, loss=loss)

    def on_epoch(r) -> None:
        if task["id"] is None:
            return
        progress.update(task["id"], epoch=f"{r.epoch}/{r.epochs}", loss=r.train_loss,
                        note=f"acc {100 * r.train_accuracy:.1f}% test {percent(r.test_accuracy)} "
                             f"{r.samples_per_second:,.0f} samples/s")  # the epoch's line fits 80 columns
        task["id"] = None
        task["epoch"] = r.epoch

    try:
        if progress is None:
            result = train(graph, strat, dataset=dataset, epochs=epochs, batch=batch, lr=lr, seed=seed,
                           save=save, resume=resume, **opts)
        else:
            try:
                result = train(graph, strat, dataset=dataset, epochs=epochs, batch=batch, lr=lr, seed=seed,
                               save=save, resume=resume, on_step=on_step, on_epoch=on_epoch, **opts)
            finally:
                if progress.live.is_started:
                    progress.stop()
    except TrainingDiverged as exc:
        sys.stderr.write(f"bnncost: error: {str(exc).replace(chr(10), ' ')}\n")
        raise typer.Exit(1)
    if as_json:
        emit_json(result.to_json())
        return
    t = Table(title=f"{esc(result.model)} · {esc(result.strategy)} · {esc(result.dataset)} · batch {result.batch_size} · "
                    f"{result.epochs} epochs · retention {result.retention} · workspace {human_bytes(result.workspace_budget)}")
    t.add_column("")
    t.add_column("value", justify="right")
    t.add_row("[bold]test accuracy[/]", f"[bold]{percent(result.test_accuracy)}[/]")
    t.add_row("final train loss", f"{result.train_loss[-1]:.4f}")
    t.add_row("ledger peak", f"{human_bytes(result.ledger_peak_bytes)} ({result.ledger_peak_bytes:,} B) at {esc(result.ledger_peak_event)}")
    t.add_row("tracemalloc peak (first step)", f"{human_bytes(result.process_peak_bytes)} ({result.process_peak_bytes:,} B)")
    t.add_row("time per step", f"{1000 * result.seconds_per_step:.2f} ms" if result.seconds_per_step else "-")
    t.add_row("steps", f"{result.steps:,}")
    out.print(t)


@app.command("import")
def import_cmd(
    model: str = typer.Argument(..., help="An .onnx file (exported from PyTorch, Keras/Larq via tf2onnx, ...)."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Write the model YAML to this file "
                                         "(default: print it)."),
    name: Optional[str] = typer.Option(None, "--name", help="Model name (default: the file name up to its first dot)."),
    keep_bias: bool = typer.Option(False, "--keep-bias", help="Keep a full-precision layer's bias as a plain bias "
                                   "instead of restoring the batchnorm an exporter fused into it."),
) -> None:
    """Turn an ONNX model into the equivalent bnncost model YAML; what was restored or added goes to stderr."""
    from bnncost.layers.importers import import_onnx
    from bnncost.layers.importers.writer import model_yaml, write_atomically
    from bnncost.layers.outfile import check_output

    if not model.lower().endswith(".onnx"):
        raise BadInput(f"{model}: import reads .onnx files (a model YAML is used as it is)")
    if output is not None:
        target = check_output(output, "--output")  # before the import's work
        if target.exists() and os.path.exists(model) and os.path.samefile(target, model):
            raise BadInput(f"--output {output}: is the ONNX file being imported; give another file name")
    result = import_onnx(model, name=name, keep_bias=keep_bias)
    graph = graph_of(result.model)  # every shape checked before anything is written
    header = [f"Imported by bnncost from {model}: {result.document['description'].split('(', 1)[-1].rstrip(')')}.",
              f"{graph.parameter_count('l2'):,} parameters with l2 batchnorm, {graph.parameter_count('l1'):,} "
              "with l1 (kernels + batchnorm gamma/beta).", *result.notes]
    text = model_yaml(result.document, header)
    if output is not None:
        write_atomically(output, text)
    else:
        sys.stdout.write(text)
    for note in result.notes:
        sys.stderr.write(f"bnncost: note: {note}\n")
    if output is not None:
        sys.stderr.write(f"wrote {output}\n")


# ---------------------------------------------------------------- entry point

def fail(message: str) -> int:
    sys.stderr.write(f"bnncost: error: {message}\n")
    return 2


def plain_metavars(command) -> None:
    """Name every option's value in --help by what it holds (BATCH, DEVICE), not by its Python type (<str>)."""
    for sub in getattr(command, "commands", {}).values():
        plain_metavars(sub)
    for param in command.params:
        if param.metavar is None and not getattr(param, "is_flag", False):
            param.metavar = param.name.upper()
        if param.param_type_name == "argument":
            param.display_type_rich = lambda ctx: None  # "MODEL  Zoo model name ...", not "MODEL <str>"


def main(argv: Optional[list[str]] = None) -> int:
    """Run the CLI; bad input becomes one line on stderr and exit code 2."""
    command = typer.main.get_command(app)
    plain_metavars(command)
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
