"""Parse the quantities written in device files.

A quantity is either a plain number, taken to be in the field's base unit, or a
string ``"<number> <unit>"``. Each field has a *kind*, which fixes its base unit
and the units it accepts:

=================  ===========  ==========================================
kind               base unit    accepted units (examples)
=================  ===========  ==========================================
``bytes``          B  (int)     B, KB, MB, GB, TB (decimal: 1 KB = 1000 B),
                                KiB, MiB, GiB, TiB (binary: 1 KiB = 1024 B)
``energy``         pJ           fJ, pJ, nJ, uJ (or µJ), mJ, J
``energy_per_byte`` pJ/B        any energy unit per B (``1.25 pJ/B``) or per
                                bit (``0.2 pJ/bit``, times 8)
``rate``           1/s          ``/s``, ``k/s``, ``M/s``, ``G/s``, ``T/s``
                                (also ``op/s``, ``Gop/s``, ``Gops/s``)
``byte_rate``      B/s          any bytes unit per second (``12.8 GB/s``)
``power``          W            uW (or µW), mW, W, kW
=================  ===========  ==========================================

A string that does not parse, a unit of another dimension, a negative, NaN or
infinite number, and a byte count that is not a whole number are errors.
:func:`parse_quantity` reports them as a :class:`DeviceError` naming the file
and the field; the schema reuses :func:`convert` and lets the loader add the
location.
"""

from __future__ import annotations

import math
import re
from typing import Final, Literal, Union


Kind = Literal["bytes", "energy", "energy_per_byte", "rate", "byte_rate", "power"]
Number = Union[int, float]

KINDS: Final[tuple[str, ...]] = ("bytes", "energy", "energy_per_byte", "rate", "byte_rate", "power")

_BYTE_UNITS: Final[dict[str, int]] = {
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "TiB": 2**40,
}

# energy units, expressed in picojoules
_ENERGY_UNITS: Final[dict[str, float]] = {
    "fJ": 1e-3,
    "pJ": 1.0,
    "nJ": 1e3,
    "uJ": 1e6,
    "µJ": 1e6,
    "mJ": 1e9,
    "J": 1e12,
}

_RATE_PREFIX: Final[dict[str, float]] = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}

_POWER_UNITS: Final[dict[str, float]] = {"uW": 1e-6, "µW": 1e-6, "mW": 1e-3, "W": 1.0, "kW": 1e3}

_BASE_UNIT: Final[dict[str, str]] = {
    "bytes": "B",
    "energy": "pJ",
    "energy_per_byte": "pJ/B",
    "rate": "/s",
    "byte_rate": "B/s",
    "power": "W",
}

_EXAMPLES: Final[dict[str, str]] = {
    "bytes": "e.g. 32 KiB, 1 GiB, 4 GB, 512 MB",
    "energy": "e.g. 0.9 pJ, 1.3 nJ, 50 fJ",
    "energy_per_byte": "e.g. 1.25 pJ/B, 0.2 pJ/bit",
    "rate": "e.g. 1.4e9 /s, 5.6 G/s",
    "byte_rate": "e.g. 12.8 GB/s, 900 MiB/s",
    "power": "e.g. 1.9 W, 350 mW",
}

_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|[+-]?(?:nan|NaN|infinity|Infinity|inf|Inf)"
_QUANTITY_RE: Final = re.compile(rf"^\s*(?P<num>{_NUMBER})\s*(?P<unit>\S.*?)?\s*$")


class DeviceError(ValueError):
    """A device file or a device query is wrong. The message is one line.

    Errors about a file read ``"<file>: <field path>: <problem>"``; use
    :meth:`at` to build them, which also keeps the parts as attributes.
    """

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None,
                 problem: str | None = None) -> None:
        super().__init__(" ".join(message.split()) if "\n" in message else message)
        self.file = file
        self.field = field
        self.problem = problem if problem is not None else message

    @classmethod
    def at(cls, file: str, field: str, problem: str) -> "DeviceError":
        """An error located in ``file`` at ``field`` (a dotted path)."""
        problem = " ".join(str(problem).split())
        return cls(f"{file}: {field}: {problem}", file=file, field=field, problem=problem)


class QuantityError(ValueError):
    """A value that is not a valid quantity; the message is the problem alone."""


def _scale_for(kind: str, unit: str) -> float | None:
    """The factor that turns one ``unit`` into the base unit of ``kind``, or None."""
    u = unit.replace(" ", "")
    if kind == "bytes":
        return _BYTE_UNITS.get(u)
    if kind == "energy":
        return _ENERGY_UNITS.get(u)
    if kind == "power":
        return _POWER_UNITS.get(u)
    if kind == "energy_per_byte":
        if "/" not in u:
            return None
        num, _, den = u.partition("/")
        energy = _ENERGY_UNITS.get(num)
        if energy is None:
            return None
        if den in ("B", "byte"):
            return energy
        if den == "bit":
            return energy * 8.0
        return None
    if kind == "rate":
        if not u.endswith("/s"):
            return None
        head = u[:-2]
        for suffix in ("ops", "op", ""):
            if suffix and head.endswith(suffix):
                prefix = head[: -len(suffix)]
            elif not suffix:
                prefix = head
            else:
                continue
            if prefix in _RATE_PREFIX:
                return _RATE_PREFIX[prefix]
        return None
    if kind == "byte_rate":
        if not u.endswith("/s"):
            return None
        scale = _BYTE_UNITS.get(u[:-2])
        return float(scale) if scale is not None else None
    raise ValueError(f"unknown quantity kind {kind!r}")


def _known_dimension(unit: str) -> str | None:
    """Name the dimension a unit belongs to, for a helpful wrong-unit message."""
    for kind in KINDS:
        if _scale_for(kind, unit) is not None:
            return kind.replace("_", " ")
    return None


def convert(value: object, kind: str) -> Number:
    """Turn ``value`` into a number in the base unit of ``kind``.

    Returns an ``int`` for ``bytes`` and a ``float`` otherwise. Raises
    :class:`QuantityError` (a ``ValueError``) whose message is the problem only.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown quantity kind {kind!r}")
    if isinstance(value, bool) or value is None:
        raise QuantityError(
            f"expected a number or a string with a unit ({_EXAMPLES[kind]}), got {value!r}"
        )
    if isinstance(value, (int, float)):
        number = float(value)
        scale: float = 1.0
        text = repr(value)
    elif isinstance(value, str):
        match = _QUANTITY_RE.match(value)
        if match is None:
            raise QuantityError(
                f"cannot read {value!r} as a quantity; write a number and a unit ({_EXAMPLES[kind]})"
            )
        number = float(match.group("num"))
        unit = match.group("unit")
        text = value.strip()
        if unit is None:
            scale = 1.0
        else:
            found = _scale_for(kind, unit)
            if found is None:
                other = _known_dimension(unit)
                wanted = kind.replace("_", " ")
                if other is not None:
                    raise QuantityError(
                        f"unit {unit!r} in {value!r} is a {other} unit, but this field is {wanted} "
                        f"({_EXAMPLES[kind]})"
                    )
                raise QuantityError(f"unknown unit {unit!r} in {value!r}; expected {wanted} ({_EXAMPLES[kind]})")
            scale = float(found)
    else:
        raise QuantityError(
            f"expected a number or a string with a unit ({_EXAMPLES[kind]}), got {type(value).__name__}"
        )
    if math.isnan(number):
        raise QuantityError(f"{text} is not a number (NaN)")
    if math.isinf(number):
        raise QuantityError(f"{text} is infinite")
    if number < 0:
        raise QuantityError(f"{text} is negative; quantities must be >= 0")
    result = number * scale
    if kind == "bytes":
        rounded = round(result)
        if abs(result - rounded) > 1e-6 * max(1.0, abs(result)):
            raise QuantityError(f"{text} is not a whole number of bytes ({result!r} B)")
        return int(rounded)
    return float(result)


def parse_quantity(value: object, kind: str, field: str = "value", file: str = "<input>") -> Number:
    """Parse one quantity; on failure raise :class:`DeviceError` naming ``file`` and ``field``.

    >>> parse_quantity("32 KiB", "bytes")
    32768
    >>> parse_quantity("1.3 nJ", "energy")
    1300.0
    """
    try:
        return convert(value, kind)
    except QuantityError as exc:
        raise DeviceError.at(file, field, str(exc)) from None


def base_unit(kind: str) -> str:
    """The base unit a plain number of this kind is read in."""
    return _BASE_UNIT[kind]
