"""Training strategies: a number format per role plus a few choices (METHOD 3).

A strategy is a YAML table; `extends:` inherits another strategy's rows and
overrides some. Shipped strategies live in `costmodel/strategies/`; a user
passes a path to their own.

A file that gives no `dropout_mask` format (written before dropout was a
layer kind) holds dropout's mask like the STE and relu masks: in its
`activation_mask` format.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from bnncost.costmodel.formats import FORMAT_BITS, REAL_FORMATS
from bnncost.layers.model import looks_like_path
from bnncost.layers.roles import DERIVED_FORMAT, FORMATTED_ROLES
from bnncost.layers.yamlfile import parse_yaml, read_text


class StrategyError(ValueError):
    """A strategy file or name that cannot be used; the message is one line."""


class Strategy(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str
    description: str = ""
    batchnorm: Literal["l1", "l2"]
    weight_grad: Literal["sign", "full"]
    optimizer: Literal["adam", "sgd", "bop"]
    formats: dict[str, str]
    source: str = "<memory>"

    def format_of(self, role: str) -> str:
        """The role's format; a forward activation takes the real_input format."""
        return self.formats[DERIVED_FORMAT.get(role, role)]


STRATEGY_CHOICES = {"batchnorm": ("l1", "l2"), "weight_grad": ("sign", "full"), "optimizer": ("adam", "sgd", "bop")}
_CHOICES = STRATEGY_CHOICES
_KEYS = {"name", "description", "extends", "formats", *_CHOICES}
MAX_EXTENDS = 32  # a longer chain is a mistake, not a design


def strategy_names() -> list[str]:
    folder = resources.files("bnncost.costmodel.strategies")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_strategy(ref: str) -> Strategy:
    """Load a shipped strategy by name or a user's strategy from a YAML path."""
    if looks_like_path(ref):  # a user's file may change between calls: read it every time
        return _finish(_load_rows(ref, ()))
    return _load_shipped(ref)


def as_strategy(strategy: "str | Strategy") -> Strategy:
    """A Strategy as is, or one loaded by name or path."""
    return strategy if isinstance(strategy, Strategy) else load_strategy(strategy)


def strategy_labels(strategies: "list[Strategy]") -> list[str]:
    """One distinct label per strategy of a command: its name, or, when two share a name, the name with
    the stem of the file it came from (`proposed (fat-adam)`); what is still repeated is numbered (#2)."""
    names = [s.name for s in strategies]
    first = []
    for s in strategies:
        stem = Path(s.source).stem if looks_like_path(s.source) else s.name
        first.append(s.name if names.count(s.name) == 1 or stem == s.name else f"{s.name} ({stem})")
    return [label if first[:i].count(label) == 0 else f"{label} #{first[:i].count(label) + 1}"
            for i, label in enumerate(first)]


@lru_cache(maxsize=None)
def _load_shipped(ref: str) -> Strategy:
    return _finish(_load_rows(ref, ()))


def _read(ref: str, base: Path | None) -> tuple[Any, str]:
    if looks_like_path(ref):
        path = Path(ref) if base is None or Path(ref).is_absolute() else base / ref
        text, source = read_text(path, StrategyError, "strategy file"), str(path)
    else:
        if ref not in strategy_names():
            raise StrategyError(
                f"unknown strategy '{ref}'; shipped: {', '.join(strategy_names())} (or pass a YAML path)"
            )
        text = resources.files("bnncost.costmodel.strategies").joinpath(f"{ref}.yaml").read_text(encoding="utf-8")
        source = f"strategy:{ref}"
    return parse_yaml(text, source, StrategyError), source


def _load_rows(ref: str, chain: tuple[str, ...], base: Path | None = None) -> dict:
    doc, source = _read(ref, base)
    identity = str(Path(source).resolve()) if looks_like_path(source) else source
    if identity in chain:
        raise StrategyError(f"{source}: 'extends' forms a cycle back to {Path(source).name}")
    if len(chain) >= MAX_EXTENDS:
        raise StrategyError(f"{source}: 'extends' chains more than {MAX_EXTENDS} files")
    if not isinstance(doc, dict):
        raise StrategyError(f"{source}: a strategy file must be a mapping")
    unknown = set(map(str, doc)) - _KEYS
    if unknown:
        raise StrategyError(f"{source}: unknown field(s): {', '.join(sorted(unknown))}")
    for key in ("name", "description", "extends"):
        if key in doc and not isinstance(doc[key], str):
            raise StrategyError(f"{source}: {key}: must be a string, not {type(doc[key]).__name__}")
    formats = doc.get("formats") or {}
    if not isinstance(formats, dict):
        raise StrategyError(f"{source}: formats must be a mapping of role: format")
    for role, fmt in formats.items():
        if role == "workspace":
            raise StrategyError(f"{source}: formats.workspace: workspace takes its operands' format, do not set it")
        if role in DERIVED_FORMAT:
            raise StrategyError(f"{source}: formats.{role}: {role} takes the {DERIVED_FORMAT[role]} format, do not set it")
        if role not in FORMATTED_ROLES:
            raise StrategyError(f"{source}: formats: unknown role '{role}'; roles: {', '.join(FORMATTED_ROLES)}")
        if not isinstance(fmt, str) or fmt not in FORMAT_BITS:
            raise StrategyError(f"{source}: formats.{role}: unknown format '{fmt}'; formats: {', '.join(FORMAT_BITS)}")
    for key, allowed in _CHOICES.items():
        if key in doc and (not isinstance(doc[key], str) or doc[key] not in allowed):
            raise StrategyError(f"{source}: {key}: '{doc[key]}' is not one of {', '.join(allowed)}")
    rows: dict = {}
    if doc.get("extends"):
        parent_base = Path(source).parent if looks_like_path(source) else None
        rows = _load_rows(doc["extends"], chain + (identity,), parent_base)
    rows = {**rows, **{k: v for k, v in doc.items() if k not in ("formats", "extends")}}
    rows["formats"] = {**rows.get("formats", {}), **formats}
    rows["source"] = source
    if "name" not in doc:
        rows["name"] = Path(source).stem if looks_like_path(source) else ref
    return rows


def _finish(rows: dict) -> Strategy:
    source = rows["source"]
    if "dropout_mask" not in rows["formats"] and "activation_mask" in rows["formats"]:
        rows["formats"]["dropout_mask"] = rows["formats"]["activation_mask"]  # both are 0/1 gradient gates
    missing = [r for r in FORMATTED_ROLES if r not in rows["formats"]]
    if missing:
        raise StrategyError(f"{source}: formats: no format for role(s) {', '.join(missing)}")
    for key in _CHOICES:
        if key not in rows:
            raise StrategyError(f"{source}: missing '{key}' ({' | '.join(_CHOICES[key])})")
    if rows["weight_grad"] == "full" and rows["formats"]["weight_grad"] not in REAL_FORMATS:
        raise StrategyError(
            f"{source}: weight_grad: full needs a real format for the weight_grad role, "
            f"not {rows['formats']['weight_grad']}"
        )
    if rows["formats"]["latent_weight"] in ("bool", "po2") and rows["optimizer"] != "bop":
        raise StrategyError(f"{source}: formats.latent_weight: {rows['optimizer']} needs real latent weights")
    formats = {r: rows["formats"][r] for r in FORMATTED_ROLES}
    return Strategy(
        name=str(rows["name"]), description=str(rows.get("description", "")),
        batchnorm=rows["batchnorm"], weight_grad=rows["weight_grad"],
        optimizer=rows["optimizer"], formats=formats, source=source,
    )
