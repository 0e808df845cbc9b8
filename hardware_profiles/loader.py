"""Find, read and validate device files.

``load_device(name_or_path)`` accepts either the name of a device shipped with
the package (``raspberry-pi-4b``; see :func:`list_devices`) or the path to a
user's own YAML file. Anything that contains a path separator, ends in
``.yaml``/``.yml`` or is a ``pathlib.Path`` is a path; everything else is a
name, looked up through ``importlib.resources``.

Every failure (missing file, malformed YAML, unknown name, schema violation)
raises :class:`~hardware_profiles.units.DeviceError` with one line of text:
``"<file>: <field path>: <problem>"``. No pydantic or YAML exception escapes.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any, Union

import yaml
from pydantic import ValidationError

from bnncost.hardware_profiles.schema import Device
from bnncost.hardware_profiles.units import DeviceError
from bnncost.layers.yamlfile import load_yaml, read_text, yaml_problem

PACKAGE = "bnncost.hardware_profiles"
_SUFFIXES = (".yaml", ".yml")


def _shipped() -> dict[str, Any]:
    """Shipped device names -> their resource files."""
    root = resources.files(PACKAGE)
    found: dict[str, Any] = {}
    for entry in root.iterdir():
        name = entry.name
        if entry.is_file() and name.endswith(_SUFFIXES):
            found[name.rsplit(".", 1)[0]] = entry
    return found


def list_devices() -> list[str]:
    """Names of the devices shipped with the package, sorted."""
    return sorted(_shipped())


def _is_path(name_or_path: Union[str, os.PathLike]) -> bool:
    if isinstance(name_or_path, os.PathLike):
        return True
    text = str(name_or_path)
    return os.sep in text or "/" in text or (os.altsep is not None and os.altsep in text) or text.lower().endswith(_SUFFIXES)


def _format_loc(loc: tuple[Any, ...]) -> str:
    path = ""
    for item in loc:
        if isinstance(item, int):
            path += f"[{item}]"
        else:
            path += ("." if path else "") + str(item)
    return path or "<root>"


def _validation_problem(exc: ValidationError) -> tuple[str, str]:
    """(field path, problem) of the first validation error."""
    err = exc.errors(include_url=False)[0]
    loc = tuple(err.get("loc", ()))
    ctx = err.get("ctx") or {}
    msg = str(err.get("msg", "invalid value"))
    if err.get("type") == "device" and "path" in ctx:
        prefix = _format_loc(loc)
        sub = str(ctx["path"])
        path = sub if prefix == "<root>" else f"{prefix}.{sub}" if not sub.startswith("[") else prefix + sub
        return path, str(ctx.get("problem", msg))
    if loc and loc[-1] == "[key]":
        expected = ctx.get("expected")
        what = "format" if len(loc) == 3 and loc[0] == "ops" else "kind" if loc and loc[0] == "ops" else "name"
        problem = f"unknown {what} {err.get('input')!r}"
        if expected:
            problem += f"; expected one of {expected}"
        return _format_loc(loc[:-1]), problem
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    if err.get("type") == "missing":
        msg = "missing (this field is required)"
    elif err.get("type") == "extra_forbidden":
        msg = "unknown field (not part of the device schema)"
    return _format_loc(loc), msg


def parse_device(data: Any, file: str = "<memory>") -> Device:
    """Validate an already-parsed YAML document; errors name ``file``."""
    if not isinstance(data, dict):
        kind = "an empty document" if data is None else type(data).__name__
        raise DeviceError.at(file, "<root>", f"expected a mapping of device fields, got {kind}")
    try:
        device = Device.model_validate(data)
    except ValidationError as exc:
        path, problem = _validation_problem(exc)
        raise DeviceError.at(file, path, problem) from None
    device._file = file
    return device


def parse_device_text(text: str, file: str = "<string>") -> Device:
    """Read a device from YAML text; errors name ``file``."""
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        line, problem = yaml_problem(exc)
        raise DeviceError.at(file, f"line {line}" if line else "<document>", f"malformed YAML: {problem}") from None
    except RecursionError:
        raise DeviceError.at(file, "<document>", "malformed YAML: nested too deeply") from None
    return parse_device(data, file)


def load_device(name_or_path: Union[str, os.PathLike]) -> Device:
    """Load a shipped device by name, or a user's device file by path."""
    if _is_path(name_or_path):
        file = str(name_or_path)
        return parse_device_text(read_text(file, DeviceError, "device file"), file)

    name = str(name_or_path).strip()
    shipped = _shipped()
    entry = shipped.get(name)
    if entry is None:
        known = ", ".join(sorted(shipped)) or "none"
        raise DeviceError(
            f"{name or '<empty>'}: unknown device; known devices: {known} (or pass the path to a YAML file)",
            file=None,
            field=None,
            problem=f"unknown device; known devices: {known}",
        )
    file = f"{PACKAGE}/{entry.name}"
    return parse_device_text(entry.read_text(encoding="utf-8"), file)
