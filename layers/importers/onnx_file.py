"""Reading an .onnx file into a checked, topologically ordered graph, or one line saying why not.

Everything that can be wrong with the file itself is refused here, before any layer is
recognised: not ONNX or truncated, external data that is missing, more than one graph
output, more than one data input, a cycle, a spatial dimension that is not a number.
The batch dimension may be symbolic: it is bnncost's B.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnncost.layers.model import ModelError

INSTALL_HINT = "pip install 'bnncost[onnx]'"


def onnx_module() -> Any:
    """The onnx package, or a one-line ModelError saying which extra to install."""
    try:
        import onnx
        from onnx import numpy_helper  # noqa: F401  (submodule used by the interpreter)
    except ImportError:
        raise ModelError(f"reading ONNX models needs the onnx package: {INSTALL_HINT}") from None
    return onnx


def node_label(node: Any, index: int) -> str:
    """How an error names a node: its name, or its position and first output when it has none."""
    name = node.name or f"#{index} -> {node.output[0] if node.output else '?'}"
    return f"node '{name}' ({node.op_type})"


@dataclass
class OnnxGraph:
    """The parts of an ONNX model the importer reads, checked."""
    source: str
    nodes: list[Any]  # NodeProto in topological order
    labels: dict[int, str]  # id(node) -> "node 'x' (Op)"
    initializers: dict[str, Any]  # name -> TensorProto
    input_name: str
    input_dims: list[int | str]  # first dim is the batch (int or symbol)
    output_name: str
    producer: str
    opset: int
    consumers: dict[str, list[Any]] = field(default_factory=dict)

    def error(self, node: Any, problem: str) -> ModelError:
        return ModelError(f"{self.source}: {self.labels[id(node)]}: {problem}")


def read_onnx(path: str) -> OnnxGraph:
    """Parse and check an .onnx file; every refusal is a ModelError of one line."""
    onnx = onnx_module()
    from google.protobuf.message import DecodeError

    file = Path(path)
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read: {exc.strerror or exc}") from None
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError):
        raise ModelError(f"{path}: not an ONNX model, or the file is truncated (it does not parse)") from None
    if not data or model.ir_version < 1 or not model.HasField("graph") or not model.graph.node \
            or not model.opset_import:
        raise ModelError(f"{path}: not an ONNX model, or the file is truncated (no graph, IR version or opset)")
    g = model.graph
    nodes = list(g.node)
    labels = {id(n): node_label(n, i) for i, n in enumerate(nodes)}
    initializers = {t.name: t for t in g.initializer}
    _load_external_data(onnx, model, file, nodes, labels, path)
    initializers = {t.name: t for t in g.initializer}

    data_inputs = [i for i in g.input if i.name not in initializers]
    if len(data_inputs) != 1:
        names = ", ".join(f"'{i.name}'" for i in data_inputs) or "none"
        raise ModelError(f"{path}: the graph must have exactly one data input, it has {names}")
    if len(g.output) != 1:
        producers = {o: n for n in nodes for o in n.output}
        parts = [f"'{o.name}' from {labels[id(producers[o.name])]}" if o.name in producers else f"'{o.name}'"
                 for o in g.output]
        raise ModelError(f"{path}: the graph has {len(g.output)} outputs ({', '.join(parts)}); "
                         "bnncost models one network ending at one loss")
    ordered = _topological(nodes, labels, {data_inputs[0].name, *initializers}, path)
    consumers: dict[str, list[Any]] = {}
    for n in ordered:
        for name in n.input:
            if name:
                consumers.setdefault(name, []).append(n)
    inp = data_inputs[0]
    dims = _input_dims(inp, consumers, labels, path)
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return OnnxGraph(path, ordered, labels, initializers, inp.name, dims, g.output[0].name,
                     f"{model.producer_name} {model.producer_version}".strip(), opset, consumers)


def _load_external_data(onnx: Any, model: Any, file: Path, nodes: list, labels: dict, path: str) -> None:
    external = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if not external:
        return
    users = {name: n for n in nodes for name in n.input}
    for t in external:
        info = {e.key: e.value for e in t.external_data}
        where = f"initializer '{t.name}'" + (f" of {labels[id(users[t.name])]}" if t.name in users else "")
        location = info.get("location", "")
        target = (file.parent / location)
        if location and not target.resolve().is_relative_to(file.parent.resolve()):
            raise ModelError(f"{path}: {where}: external data file '{location}' is outside the model's folder "
                             "(ONNX reads external data beside the model only)")
        if not location or not target.is_file():
            raise ModelError(f"{path}: {where}: external data file '{location}' is missing")
        need = int(info.get("offset", 0)) + int(info.get("length", 0))
        if target.stat().st_size < need:
            raise ModelError(f"{path}: {where}: external data file '{location}' is shorter than the tensor "
                             f"({target.stat().st_size} < {need} bytes)")
    from onnx.external_data_helper import load_external_data_for_model
    try:
        load_external_data_for_model(model, str(file.parent))
    except Exception as exc:  # onnx's checker raises its own ValidationError (not a ValueError)
        raise ModelError(f"{path}: external data cannot be read: {str(exc).splitlines()[0] if str(exc) else exc}") \
            from None


def _topological(nodes: list, labels: dict, available: set[str], path: str) -> list:
    """Nodes in an order where each comes after its inputs' producers; a cycle or an undefined input is refused."""
    producer = {}
    for n in nodes:
        for o in n.output:
            if o:
                producer[o] = n
    for n in nodes:
        for name in n.input:
            if name and name not in available and name not in producer:
                raise ModelError(f"{path}: {labels[id(n)]}: input '{name}' is defined nowhere in the graph "
                                 "(a truncated or hand-edited file?)")
    waiting = {id(n): sum(1 for i in n.input if i and i not in available) for n in nodes}
    index = {id(n): i for i, n in enumerate(nodes)}
    ready = [i for i, n in enumerate(nodes) if waiting[id(n)] == 0]  # a heap: file order when it is valid
    users: dict[str, list] = {}
    for n in nodes:
        for i in n.input:
            if i and i not in available:
                users.setdefault(i, []).append(n)
    ordered = []
    while ready:
        n = nodes[heapq.heappop(ready)]
        ordered.append(n)
        for o in n.output:
            for u in users.get(o, []):
                waiting[id(u)] -= 1
                if waiting[id(u)] == 0:
                    heapq.heappush(ready, index[id(u)])
    if len(ordered) != len(nodes):
        stuck = next(n for n in nodes if waiting[id(n)] > 0)
        raise ModelError(f"{path}: {labels[id(stuck)]}: the graph has a cycle through this node")
    return ordered


def _input_dims(inp: Any, consumers: dict, labels: dict, path: str) -> list[int | str]:
    tt = inp.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
    first = consumers.get(inp.name, [None])[0]
    user = f" (read by {labels[id(first)]})" if first is not None else ""
    if len(dims) not in (2, 4):
        raise ModelError(f"{path}: input '{inp.name}'{user} has shape {dims}; bnncost reads [batch, features] "
                         "or [batch, channels, height, width] (or channels-last)")
    for axis, d in enumerate(dims[1:], start=1):
        if not isinstance(d, int) or d <= 0:
            raise ModelError(f"{path}: input '{inp.name}'{user} has a dynamic dimension '{d}' at axis {axis}; "
                             "only the batch axis may be symbolic (export with a fixed input size)")
    return dims
