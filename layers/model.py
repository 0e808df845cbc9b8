"""A model: its input shape and its layers, loaded from a zoo name or a YAML path.

Loading validates every layer and gives each an explicit name (`dense_1`,
`batchnorm_3`, ...), numbered per kind in forward order, nested layers
included, so that every later error and every variable can name its layer.
"""

from __future__ import annotations

import math

from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from bnncost.layers.spec import LAYER_CLASSES, LayerSpec, Residual
from bnncost.layers.yamlfile import parse_yaml, read_text, read_yaml


MAX_LAYERS = 20_000  # ResNet-152 has about 500; more is a mistake or an attack, not a model
# A tensor of more elements (4 TiB of float32 per sample) is beyond any device; the cap keeps every byte count of a
# step (up to MAX_LAYERS layers of such tensors) exact in 64-bit sums
MAX_TENSOR_ELEMENTS = 2**40


class ModelError(ValueError):
    """A model file or zoo name that cannot be used; the message is one line."""


class Model(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str
    input: tuple[int, ...]
    layers: tuple[LayerSpec, ...]
    train_samples: int | None = None  # samples in one epoch of the model's usual data set
    source: str = "<memory>"  # file the model came from, for error messages


def zoo_names() -> list[str]:
    folder = resources.files("bnncost.layers.zoo")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def looks_like_path(ref: str) -> bool:
    return "/" in ref or "\\" in ref or ref.endswith((".yaml", ".yml", ".onnx"))


def load_model(ref: str) -> Model:
    """Load a zoo model by name, or a user's model from a YAML or ONNX path (cached while the file is unchanged)."""
    if looks_like_path(ref):
        path = Path(ref)
        if not path.is_file():
            read_text(path, ModelError, "model file")  # says what is wrong with it
        stat = path.stat()
        if path.suffix.lower() == ".onnx":
            return _load_onnx_file(str(path), stat.st_mtime_ns, stat.st_size)
        return _load_model_file(str(path), stat.st_mtime_ns, stat.st_size)
    return _load_zoo_model(ref)


@lru_cache(maxsize=16)
def _load_onnx_file(path: str, mtime_ns: int, size: int) -> Model:
    from bnncost.layers.importers import import_onnx  # the importer builds on this module

    return import_onnx(path).model


@lru_cache(maxsize=64)
def _load_model_file(path: str, mtime_ns: int, size: int) -> Model:
    return parse_model(read_yaml(path, ModelError, "model file"), path)


@lru_cache(maxsize=None)
def _load_zoo_model(ref: str) -> Model:
    if ref not in zoo_names():
        raise ModelError(f"unknown model '{ref}'; zoo models: {', '.join(zoo_names())} (or pass a YAML path)")
    text = resources.files("bnncost.layers.zoo").joinpath(f"{ref}.yaml").read_text(encoding="utf-8")
    return parse_model(parse_yaml(text, f"zoo:{ref}", ModelError), f"zoo:{ref}")


def parse_model(doc: Any, source: str = "<memory>") -> Model:
    """Validate a model document (the parsed YAML) and name its layers."""
    if not isinstance(doc, dict):
        raise ModelError(f"{source}: a model file must be a mapping with name, input and layers")
    unknown = set(map(str, doc)) - {"name", "input", "layers", "description", "train_samples"}
    if unknown:
        raise ModelError(f"{source}: unknown top-level field(s): {', '.join(sorted(unknown))}")
    for key in ("input", "layers"):
        if key not in doc:
            raise ModelError(f"{source}: missing '{key}'")
    shape = doc["input"]
    if (
        not isinstance(shape, list)
        or len(shape) not in (1, 3)
        or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
    ):
        raise ModelError(f"{source}: input must be [features] or [height, width, channels] of positive integers")
    if math.prod(shape) > MAX_TENSOR_ELEMENTS:
        raise ModelError(f"{source}: input: {math.prod(shape):,} elements per sample; bnncost counts tensors of up to "
                         f"2^40 ({MAX_TENSOR_ELEMENTS:,}) elements, beyond any device")
    if not isinstance(doc["layers"], list) or not doc["layers"]:
        raise ModelError(f"{source}: layers must be a non-empty list")
    counters: dict[str, int] = {}
    seen: set[str] = set()
    layers = tuple(_parse_layers(doc["layers"], source, "", counters, seen))
    samples = doc.get("train_samples")
    if samples is not None and (not isinstance(samples, int) or isinstance(samples, bool) or samples < 1):
        raise ModelError(f"{source}: train_samples must be a positive integer")
    name = doc.get("name") or Path(source).stem
    for key in ("name", "description"):
        if doc.get(key) is not None and not isinstance(doc[key], str):
            raise ModelError(f"{source}: {key}: must be a string, not {type(doc[key]).__name__}")
    if not name.isprintable():  # a terminal would obey escape codes in it
        raise ModelError(f"{source}: name: must be printable text, without control characters or line breaks")
    return Model(name=str(name), input=tuple(shape), layers=layers, train_samples=samples, source=source)


def _parse_layers(items: list, source: str, prefix: str, counters: dict, seen: set) -> list:
    out = []
    for i, item in enumerate(items):
        where = f"{source}: layer {prefix}{i}"
        if not isinstance(item, dict) or len(item) != 1:
            raise ModelError(f"{where}: each layer is a one-key mapping such as '- dense: {{units: 256}}'")
        (kind, fields), = item.items()
        if not isinstance(kind, str) or kind not in LAYER_CLASSES:
            raise ModelError(f"{where}: unknown layer kind '{kind}'; known: {', '.join(LAYER_CLASSES)}")
        if fields is not None and not isinstance(fields, dict):
            raise ModelError(f"{where} ({kind}): its fields must be a mapping such as "
                             f"'- {kind}: {{...}}', not {type(fields).__name__} {fields!r:.40}")
        fields = dict(fields or {})
        if len(seen) >= MAX_LAYERS:
            raise ModelError(f"{where}: more than {MAX_LAYERS:,} layers")
        counters[kind] = counters.get(kind, 0) + 1
        name = fields.pop("name", None) or f"{kind}_{counters[kind]}"
        if not isinstance(name, str):
            raise ModelError(f"{where} ({kind}): name: must be a string, not {type(name).__name__}")
        if not name.isprintable():
            raise ModelError(f"{where} ({kind}): name: must be printable text, without control characters")
        where = f"{source}: layer {prefix}{i} ({name})"
        if name in seen:
            raise ModelError(f"{where}: duplicate layer name '{name}'")
        seen.add(name)
        if kind == "residual":
            for part in ("body", "shortcut"):
                if part in fields and not isinstance(fields[part], list):
                    raise ModelError(f"{where}: '{part}' must be a list of layers")
            unknown = set(fields) - {"body", "shortcut"}
            if unknown:
                raise ModelError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
            if not fields.get("body"):
                raise ModelError(f"{where}: a residual needs a non-empty body")
            body = _parse_layers(fields["body"], source, f"{prefix}{i}.body.", counters, seen)
            short = _parse_layers(fields.get("shortcut") or [], source, f"{prefix}{i}.shortcut.", counters, seen)
            out.append(Residual(name=name, body=body, shortcut=short))
            continue
        cls = LAYER_CLASSES[kind]
        unknown = sorted(set(fields) - set(cls.model_fields) | ({"kind"} & set(fields)))
        if unknown:
            known = ", ".join(f for f in cls.model_fields if f not in ("kind", "name")) or "none"
            raise ModelError(f"{where}: {unknown[0]}: unknown field (fields of {kind}: {known})")
        try:
            out.append(cls(name=name, **fields))
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or kind
            msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"].lower()
            raise ModelError(f"{where}: {field}: {msg}") from None
        except TypeError as exc:
            raise ModelError(f"{where}: {exc}") from None
    return out
