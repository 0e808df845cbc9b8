"""Operation counters: what every operator performs, by layer, phase, kind and format (METHOD 5).

Operators count from the shapes they actually process (chunk by chunk), under
the convention documented in `costmodel/ops.py` (read as a specification; this
module does not import it, so `verify` compares two independent counts).
Phases: forward, backward_dx, backward_dw, update. Kinds: mac, add, mul, div,
sqrt, abs, compare, exp, shift, xnor_popcount (64-bit words), bit_mac
(informational).
"""

from __future__ import annotations

from collections import defaultdict

PHASES = ("forward", "backward_dx", "backward_dw", "update")
KINDS = ("mac", "add", "mul", "div", "sqrt", "abs", "compare", "exp", "shift", "xnor_popcount", "bit_mac")


class OpCounter:
    """Counts of one step, keyed by (layer, phase, kind, format)."""

    def __init__(self, grad_format: str = "float32", enabled: bool = True):
        self.counts: dict[tuple[str, str, str, str], int] = defaultdict(int)
        self.enabled = enabled
        self.g = grad_format
        self.acc = "float16" if grad_format == "po2" else grad_format

    def reset(self) -> None:
        self.counts = defaultdict(int)

    def add(self, layer: str, phase: str, kind: str, fmt: str, n: int) -> None:
        if self.enabled and n:
            self.counts[(layer, phase, kind, fmt)] += int(n)

    def gmul(self, layer: str, phase: str, n: int) -> None:
        """n multiplications with a gradient operand: shifts when gradients are po2 codes."""
        if self.g == "po2":
            self.add(layer, phase, "shift", "po2", n)
        else:
            self.add(layer, phase, "mul", self.acc, n)

    def gmac(self, layer: str, phase: str, n: int) -> None:
        """n multiply-accumulates with a gradient operand (po2: a shift and an add each)."""
        if self.g == "po2":
            self.add(layer, phase, "shift", "po2", n)
            self.add(layer, phase, "add", self.acc, n)
        else:
            self.add(layer, phase, "mac", self.acc, n)

    def rows(self) -> list[dict]:
        return [{"layer": l, "phase": p, "kind": k, "format": f, "count": c}
                for (l, p, k, f), c in sorted(self.counts.items())]

    def totals(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for (_, _, k, f), c in self.counts.items():
            d = out.setdefault(f, {})
            d[k] = d.get(k, 0) + c
        return out
