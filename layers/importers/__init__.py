"""Importers: other model formats turned into the same `layers.Model` a YAML gives.

ONNX (`import_onnx`) needs the optional `onnx` package (`pip install 'bnncost[onnx]'`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bnncost.layers.model import Model, parse_model


@dataclass
class Imported:
    """An imported model, its model document (what `bnncost import` writes) and the importer's notes."""
    model: Model
    document: dict
    notes: list[str]


def default_name(path: str) -> str:
    """`resnet.torchscript-opset17.onnx` -> `resnet`: the file name up to its first dot."""
    return Path(path).name.split(".")[0] or Path(path).stem


def import_onnx(path: str, *, name: str | None = None, keep_bias: bool = False) -> Imported:
    """Read an .onnx file into a bnncost model; every refusal is a one-line ModelError."""
    from bnncost.layers.importers.onnx_file import read_onnx
    from bnncost.layers.importers.onnx_interpret import Interpreter
    from bnncost.layers.importers.onnx_layers import layer_list

    graph = read_onnx(path)
    out = Interpreter(graph).run()
    layers = layer_list(out, path, keep_bias=keep_bias)
    first = Interpreter.input_shape(graph)
    doc = {
        "name": name or default_name(path),
        "description": f"imported from {Path(path).name} ({graph.producer or 'unknown exporter'}, "
                       f"opset {graph.opset})",
        "input": first,
        "layers": layers.items,
    }
    return Imported(parse_model(doc, path), doc, layers.notes)
