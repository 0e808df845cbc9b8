"""From the recognised network (ENodes) to bnncost's layer list, residual blocks included.

A tensor read by two branches that meet again in an `add` is a residual block: the branch
holding a sign or a binary layer is the body, the other the shortcut (empty: identity).
Then, within each straight run of layers:
- a per-channel Mul followed by a per-channel Add is a batchnorm (tf2onnx, Keras scale=False);
- a per-channel Add right after a dense/conv is that layer's bias (MatMul + Add);
- a bias followed by a batchnorm is absorbed by it (the batchnorm subtracts the mean);
- any other bias is a batchnorm fused into the layer by the exporter: a binary layer never has
  a bias, and a full-precision one in a BNN is followed by a batchnorm by convention. It is
  restored as a batchnorm unless `keep_bias` asks for a plain bias on full-precision layers.
- a sign right after a flatten (Larq's QuantDense input quantizer, a PyTorch BinaryLinear that
  binarises its input after x.view(B, -1)) is written before it, the order bnncost's models use:
  elementwise, they commute, and every prediction is the same.
- a final Softmax/LogSoftmax is dropped and softmax_ce, the loss, is appended.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bnncost.layers.importers.onnx_interpret import supports
from bnncost.layers.importers.onnx_values import Act, ENode
from bnncost.layers.model import ModelError

WEIGHTED = ("dense", "conv2d")
_PLAIN = {"batchnorm", "sign", "relu", "prelu", "maxpool", "avgpool", "global_avgpool", "flatten", "dropout"}


@dataclass
class Layers:
    """The layer list of a model document, and what the importer did that a user should know."""
    items: list[dict]
    notes: list[str] = field(default_factory=list)


class _Linearise:
    def __init__(self, source: str, keep_bias: bool):
        self.source = source
        self.keep_bias = keep_bias
        self.notes: list[tuple[int, str]] = []  # (graph order, note)
        self.forks: dict[int, ENode] = {}

    def error(self, node: ENode, problem: str) -> ModelError:
        return ModelError(f"{self.source}: {node.where}: {problem}")

    def run(self, out: Act) -> Layers:
        node = out.node
        self._check_fanout(node)
        final_softmax = node.kind == "softmax"
        if final_softmax:
            self.notes.append((node.seq, f"dropped the final {node.where}: softmax_ce computes it with the loss"))
            node = node.inputs[0]
        items = self.chain(node, None)
        if not out.flat or out.sizes["C"] < 2:
            raise ModelError(f"{self.source}: the graph ends in a {out.dims} tensor, not class scores "
                             "[batch, classes]; bnncost appends softmax_ce, the loss, to the logits")
        items.append({"softmax_ce": {}})
        notes = [text for _, text in sorted(self.notes, key=lambda n: n[0])]
        notes.append(f"appended softmax_ce (the training loss) to the {out.sizes['C']} logits the graph ends in")
        return Layers(items, notes)

    def _check_fanout(self, out: ENode) -> None:
        """Every tensor feeds one layer, except a residual block's input, which feeds its two branches."""
        readers: dict[int, list[ENode]] = {}
        seen: set[int] = set()
        stack = [out]
        nodes = []
        while stack:
            n = stack.pop()
            if id(n) in seen:
                continue
            seen.add(id(n))
            nodes.append(n)
            for i in n.inputs:
                readers.setdefault(id(i), []).append(n)
                stack.append(i)
        for n in nodes:
            if n.kind == "softmax" and n is not out:
                raise self.error(n, "a softmax inside the network; bnncost's only softmax is the loss")
            if len(readers.get(id(n), [])) > 2:
                users = ", ".join(u.where for u in readers[id(n)])
                raise self.error(n, f"its output feeds {len(readers[id(n)])} operations ({users}); bnncost "
                                    "models chains and two-branch residual blocks")

    # ---------------------------------------------------------------- residual structure

    def parent(self, node: ENode) -> ENode | None:
        if node.kind == "input":
            return None
        if node.kind == "add":
            return self.fork(node)
        return node.inputs[0]

    def fork(self, add: ENode) -> ENode:
        if id(add) not in self.forks:
            spine_a = self.spine(add.inputs[0])
            on_a = {id(n) for n in spine_a}
            meet = next((n for n in self.spine(add.inputs[1]) if id(n) in on_a), None)
            if meet is None:  # pragma: no cover - both spines end at the input
                raise self.error(add, "adds two branches that never meet")
            self.forks[id(add)] = meet
        return self.forks[id(add)]

    def spine(self, node: ENode | None) -> list[ENode]:
        out = []
        while node is not None:
            out.append(node)
            node = self.parent(node)
        return out

    def chain(self, node: ENode, stop: ENode | None) -> list[dict]:
        """The layers from `stop` (exclusive; None: the input) to `node` (inclusive)."""
        run: list[ENode | dict] = []
        while node is not stop:
            if node.kind == "input":
                if stop is None:
                    break
                raise self.error(node, "a branch does not meet its residual join")  # pragma: no cover
            if node.kind == "add":
                fork = self.fork(node)
                run.append(self.residual(node, fork))
                node = fork
            else:
                run.append(node)
                node = node.inputs[0]
        run.reverse()
        return self.layers(run)

    def residual(self, add: ENode, fork: ENode) -> dict:
        a = self.chain(add.inputs[0], fork)
        b = self.chain(add.inputs[1], fork)
        body, shortcut = (a, b) if self._body_score(a) >= self._body_score(b) else (b, a)
        if not body:
            raise self.error(add, "adds a tensor to itself")
        block: dict = {"body": body}
        if shortcut:
            block["shortcut"] = shortcut
        return {"residual": block}

    @staticmethod
    def _body_score(items: list[dict]) -> tuple[int, int]:
        """The body is the branch that binarises (a sign or a binary layer); else the longer one."""
        def binarises(item: dict) -> bool:
            (kind, fields), = item.items()
            if kind == "residual":
                return any(binarises(i) for i in fields["body"] + fields.get("shortcut", []))
            return kind == "sign" or (kind in WEIGHTED and fields.get("binary", True))
        return (int(any(binarises(i) for i in items)), len(items))

    # ---------------------------------------------------------------- one straight run

    def layers(self, run: list) -> list[dict]:
        merged = self._merge(run)
        out: list[dict] = []
        for i, (node, item) in enumerate(merged):
            out.append(item)
            if node is None or node.kind not in WEIGHTED or not node.bias:
                continue
            (kind, fields), = item.items()
            nxt = merged[i + 1][1] if i + 1 < len(merged) else None
            if nxt is not None and "batchnorm" in nxt:
                self.notes.append((node.seq, f"{node.where}: its bias is absorbed by the batchnorm after it"))
            elif fields.get("binary", True) or not self.keep_bias:
                out.append({"batchnorm": {}})
                what = "binary" if fields.get("binary", True) else "full-precision"
                self.notes.append((node.seq, f"{node.where}: restored the batchnorm fused into this {what} layer "
                                  "(its bias)" + ("" if what == "binary" else "; --keep-bias keeps a plain bias")))
            elif supports(kind, "bias"):
                fields["bias"] = True
            else:
                raise self.error(node, "a bias on a full-precision layer is not a bnncost layer field yet "
                                       "(import without --keep-bias to restore it as a batchnorm)")
        return out

    def _merge(self, run: list) -> list[tuple[ENode | None, dict]]:
        """Pair per-channel Mul + Add into a batchnorm and an Add after a layer into its bias."""
        merged: list[tuple[ENode | None, dict]] = []
        i = 0
        while i < len(run):
            node = run[i]
            i += 1
            if isinstance(node, dict):
                merged.append((None, node))
                continue
            if node.kind == "scale":
                if i < len(run) and isinstance(run[i], ENode) and run[i].kind == "shift":
                    merged.append((run[i], {"batchnorm": {}}))
                    i += 1
                    continue
                merged.append((node, {"batchnorm": {}}))
                self.notes.append((node.seq, f"{node.where}: a per-channel scale with no shift after it, read as "
                                             "a batchnorm whose shift folded away (zero mean and beta)"))
                continue
            if node.kind == "shift":
                prev = merged[-1][0] if merged else None
                if prev is not None and prev.kind in WEIGHTED and not prev.bias:
                    prev.bias = True
                    continue
                merged.append((node, {"batchnorm": {}}))
                self.notes.append((node.seq, f"{node.where}: a per-channel shift that is not a layer's bias, read "
                                             "as a batchnorm whose scale folded away (unit scale)"))
                continue
            if node.kind == "clip":
                raise self.error(node, "a clip (hardtanh) on the data path is not a bnncost layer")
            if node.kind == "pad":
                raise self.error(node, "explicit padding that no convolution or pooling reads is not modelled")
            if node.kind == "pointwise":
                raise self.error(node, "elementwise arithmetic on activations that is not part of a sign idiom "
                                       "is not a bnncost layer")
            if node.kind == "sign" and merged and merged[-1][0] is not None and merged[-1][0].kind == "flatten":
                merged.insert(len(merged) - 1, (node, {"sign": {}}))  # see the module docstring
                continue
            if node.kind in WEIGHTED:
                merged.append((node, {node.kind: dict(node.fields)}))
            elif node.kind in _PLAIN:
                merged.append((node, {node.kind: dict(node.fields)}))
            else:  # pragma: no cover - the interpreter makes no other kinds
                raise self.error(node, f"internal: unexpected {node.kind}")
        return merged


def layer_list(out: Act, source: str, keep_bias: bool = False) -> Layers:
    """The model document's `layers` for the network ending in `out`."""
    return _Linearise(source, keep_bias).run(out)
