"""Pictures a user can paste: memory against batch size, and where the bytes go.

matplotlib is an optional extra (`pip install 'bnncost[plot]'`); it is
imported only when a plot is asked for.
"""

from __future__ import annotations

import zlib
from pathlib import Path

from bnncost.costmodel.engine_rules import RUNTIME_ROLE
from bnncost.costmodel.prediction import Comparison
from bnncost.costmodel.sweep import Sweep
from bnncost.layers.outfile import OutputPathError, atomic_output, check_output
from bnncost.layers.roles import ROLES


PLOT_SUFFIXES = (".png", ".svg", ".pdf")  # matplotlib picks the format from the suffix


def role_colour(plt, role: str):
    """One colour per role, the same in every plot: the role's place in layers.roles.ROLES on tab20;
    an engine's own roles (costmodel.engine) by a stable hash of their name on tab20b; its runtime bytes grey."""
    if role == RUNTIME_ROLE:
        return "#7f7f7f"
    order = list(ROLES)
    if role in order:
        return plt.get_cmap("tab20")(order.index(role) % 20)
    return plt.get_cmap("tab20b")(zlib.crc32(role.encode()) % 20)


class PlotError(ValueError):
    """A plot cannot be drawn (matplotlib missing, or an unusable path)."""


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise PlotError("plotting needs matplotlib: pip install 'bnncost[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def check_path(path: str) -> Path:
    """Refuse a plot before any work is done: wrong suffix, missing folder, or no matplotlib."""
    if Path(path).suffix.lower() not in PLOT_SUFFIXES:
        raise PlotError(f"--plot: '{path}' must end in {', '.join(PLOT_SUFFIXES)}")
    try:
        p = check_output(path, "--plot")
    except OutputPathError as exc:
        raise PlotError(str(exc)) from None
    _pyplot()
    return p


def _save(fig, p: Path) -> None:
    """Write the figure whole or not at all, in the format its suffix names."""
    try:
        with atomic_output(p, "--plot", binary=True) as fh:
            fig.savefig(fh, format=p.suffix.lower().lstrip("."))
    except OutputPathError as exc:
        raise PlotError(str(exc)) from None


def _unit(max_bytes: float) -> tuple[float, str]:
    return (1 << 30, "GiB") if max_bytes >= 1 << 30 else (1 << 20, "MiB")


def plot_sweep(s: Sweep, path: str) -> Path:
    """Peak memory against batch size, one line per strategy, the device's usable memory as a line."""
    p = check_path(path)
    plt = _pyplot()
    top = max(max(line.peak_bytes) for line in s.lines)
    if s.usable_bytes:
        top = max(top, s.usable_bytes)
    scale, unit = _unit(top)
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for line in s.lines:
        ax.plot(s.batches, [b / scale for b in line.peak_bytes], marker="o" if len(s.batches) <= 40 else None,
                markersize=3, label=line.strategy)
        if line.max_batch and s.batches[0] <= line.max_batch <= s.batches[-1]:
            ax.axvline(line.max_batch, color=ax.lines[-1].get_color(), linestyle=":", linewidth=1)
    if s.usable_bytes:
        ax.axhline(s.usable_bytes / scale, color="black", linestyle="--", linewidth=1,
                   label=f"{s.device} usable ({s.usable_bytes / scale:.2f} {unit})")
    if s.batches[-1] / max(s.batches[0], 1) >= 32:
        ax.set_xscale("log", base=2)
    low = min(min(line.peak_bytes) for line in s.lines)
    if top / max(low, 1) >= 50:  # a wide range: equal ratios look equal, small strategies stay visible
        ax.set_yscale("log")
    ax.set_xlabel("batch size B (samples)")
    ax.set_ylabel(f"peak memory of one training step ({unit})")
    where = f" on {s.device}" if s.device else ""
    ax.set_title(f"{s.model}: training memory against batch size{where}\n"
                 f"(engine {s.engine}, retention {s.retention}; dotted: largest batch that fits)" if s.device else
                 f"{s.model}: training memory against batch size (engine {s.engine}, retention {s.retention})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", fontsize=9)
    fig.tight_layout()
    _save(fig, p)
    plt.close(fig)
    return p


def plot_comparison(c: Comparison, path: str) -> Path:
    """Stacked bars of bytes by role at the peak, per strategy; energy split beside them with a device."""
    p = check_path(path)
    plt = _pyplot()
    preds = c.predictions
    roles = sorted({r for pr in preds for r in pr.memory.by_role},
                   key=lambda r: -max(pr.memory.by_role.get(r, 0) for pr in preds))
    scale, unit = _unit(max(pr.memory.peak_bytes for pr in preds))
    with_energy = preds[0].energy is not None
    fig, axes = plt.subplots(1, 2 if with_energy else 1, figsize=(12 if with_energy else 8, 5.5), dpi=120,
                             squeeze=False)
    ax = axes[0][0]
    names = [pr.strategy for pr in preds]
    x = range(len(preds))
    bottom = [0.0] * len(preds)
    for role in roles:
        vals = [pr.memory.by_role.get(role, 0) / scale for pr in preds]
        ax.bar(x, vals, bottom=bottom, color=role_colour(plt, role), label=role, width=0.6)
        bottom = [b + v for b, v in zip(bottom, vals)]
    for i, pr in enumerate(preds):
        ax.text(i, bottom[i], f"{pr.memory.peak_bytes / scale:.1f} {unit}\n{c.savings[pr.strategy]['peak_bytes_ratio']:.2f}x",
                ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, max(bottom) * 1.18)
    ax.set_xticks(list(x), names, rotation=20 if len(preds) > 2 else 0, ha="right" if len(preds) > 2 else "center",
                  fontsize=8)
    ax.set_ylabel(f"bytes alive at the peak ({unit})")
    ax.set_title(f"{preds[0].model}, batch {preds[0].batch}, engine {preds[0].engine}: where the peak memory goes")
    ax.legend(fontsize=7, loc="upper right", ncol=2)
    if with_energy:
        ax2 = axes[0][1]
        parts = [("compute", "compute_j"), ("memory traffic", "memory_j"), ("static (idle x time)", "static_j")]
        bottom = [0.0] * len(preds)
        peak_j = max(pr.energy.joules_per_step for pr in preds)
        escale, eunit = (1.0, "J") if peak_j >= 1 else (1e-3, "mJ")
        for i, (label, key) in enumerate(parts):
            vals = [getattr(pr.energy, key) / escale for pr in preds]
            ax2.bar(x, vals, bottom=bottom, label=label, width=0.6, color=["#4c72b0", "#dd8452", "#999999"][i])
            bottom = [b + v for b, v in zip(bottom, vals)]
        for i, pr in enumerate(preds):
            ax2.text(i, bottom[i], f"{pr.energy.joules_per_step / escale:.3g} {eunit}", ha="center", va="bottom",
                     fontsize=8)
        ax2.set_ylim(0, max(bottom) * 1.15)
        ax2.set_xticks(list(x), names, rotation=20 if len(preds) > 2 else 0,
                       ha="right" if len(preds) > 2 else "center", fontsize=8)
        ax2.set_ylabel(f"energy per training step ({eunit})")
        ax2.set_title(f"energy per step on {preds[0].device}")
        ax2.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, p)
    plt.close(fig)
    return p
