"""What an ONNX tensor stands for while the importer walks the graph.

A tensor is either a constant (a numpy array, folded as the graph is read; shape arithmetic
holds the symbolic batch as BATCH), an activation (`Act`: a view of one expression node with
its axis labels), or one of three pending forms that only the idiom recognisers consume:
`Lin`, a linear combination of activations of one family (x, sign(x), clip(x)) that the
straight-through trick `x + (sign(x) - x)` builds up and cancels; and `Cmp`, a comparison
of an activation with zero that `Where(x >= 0, 1, -1)` turns into a sign; and `NegPart`,
f * relu(-x), which Keras' PReLU adds to relu(x) (tf2onnx writes it out: relu(x) - a * relu(-x)).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field


class _Batch:
    """The symbolic batch size inside folded shape arithmetic."""

    def __repr__(self) -> str:
        return "batch"


BATCH = _Batch()


@dataclass(eq=False)
class ENode:
    """One operation of the recognised network: a bnncost layer kind, or an intermediate the
    layer builder resolves (`shift`/`scale`: per-channel Add/Mul; `clip`; `softmax`; `add`: a join)."""
    kind: str
    inputs: tuple["ENode", ...]
    where: str  # "node 'x' (Op)" of the ONNX node it came from
    fields: dict = field(default_factory=dict)
    bias: bool = False  # dense/conv2d: the ONNX node carries a bias
    seq: int = field(default_factory=itertools.count().__next__)  # creation order = graph order


@dataclass(eq=False)
class Act:
    """An activation tensor: which node computes it, and what its ONNX axes hold.

    labels name the ONNX axes ('N' batch, 'C' channels or features, 'H', 'W'); `flat` says
    bnncost sees it as [C] even when ONNX keeps 1x1 spatial axes (after a global pool)."""
    node: ENode
    labels: tuple[str, ...]
    sizes: dict[str, int]
    flat: bool
    binarised: bool = False  # values are +-1: a sign, possibly through max-pool or a reshape
    data: bool = False  # the data batch, or a layout change of it

    @property
    def shape(self) -> tuple[int, ...]:
        """bnncost's per-sample shape: [H, W, C] or [C]."""
        s = self.sizes
        return (s["C"],) if self.flat else (s["H"], s["W"], s["C"])

    @property
    def dims(self) -> list[int]:
        """The ONNX per-sample dimensions, in ONNX axis order."""
        return [self.sizes[a] for a in self.labels[1:]]

    def view(self, node: ENode, **changes) -> "Act":
        kw = dict(labels=self.labels, sizes=dict(self.sizes), flat=self.flat, binarised=False, data=False)
        kw.update(changes)
        return Act(node, **kw)


def family(node: ENode) -> ENode:
    """sign(x), clip(x) and other pointwise functions of x belong to x's family: a straight-through
    estimator (x + (sign(x) - x), or Bi-Real's polynomial: sign(x) - p(x) + p(x)) mixes only these."""
    return node.inputs[0] if node.kind in ("sign", "clip", "pointwise") else node


@dataclass(eq=False)
class Lin:
    """sum of coeff x activation + offset, all terms of one family; `where` names the node that made it."""
    terms: dict[ENode, float]
    views: dict[ENode, Act]
    offset: float
    where: str

    @staticmethod
    def of(value: "Act | float", where: str) -> "Lin":
        if isinstance(value, Act):
            return Lin({value.node: 1.0}, {value.node: value}, 0.0, where)
        return Lin({}, {}, float(value), where)

    def plus(self, other: "Lin", scale: float, where: str) -> "Lin":
        terms = dict(self.terms)
        for node, coeff in other.terms.items():
            terms[node] = terms.get(node, 0.0) + scale * coeff
        terms = {n: c for n, c in terms.items() if c != 0.0}
        views = {**self.views, **other.views}
        return Lin(terms, {n: views[n] for n in terms}, self.offset + scale * other.offset, where)

    def families(self) -> set[ENode]:
        return {family(n) for n in self.terms}

    def single(self) -> Act | None:
        """The activation this is exactly (one term, coefficient 1, no offset), or None."""
        if len(self.terms) == 1 and self.offset == 0.0:
            (node, coeff), = self.terms.items()
            if coeff == 1.0:
                return self.views[node]
        return None


@dataclass(eq=False)
class Cmp:
    """x compared with a threshold: 'ge' / 'gt' (x >= t, x > t) or 'le' / 'lt'."""
    act: Act
    op: str
    where: str
    threshold: float = 0.0


@dataclass(eq=False)
class NegPart:
    """factor * relu(-x): the negative half of a PReLU written out (factor is -slope)."""
    act: Act
    factor: "object"  # a number or a per-channel numpy array
    where: str
