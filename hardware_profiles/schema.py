"""The device file, as pydantic v2 models.

A device file is YAML (see ``README.md`` beside this module)::

    name: raspberry-pi-3b-plus
    description: ...
    process_nm: 40                    # informational
    sources: {key: "full citation"}
    memory:
      ram_bytes:    {value: "1 GiB", source: key-or-derivation}
      usable_bytes: {value: "798 MiB", source: ...}
      levels:                         # smallest first, the last one is DRAM
        - {name: l1, capacity_bytes: "32 KiB", energy_pj_per_byte: "5.1 pJ/B",
           bandwidth_bytes_per_s: "44.8 GB/s", source: ...}
    ops:                              # format -> kind -> energy and throughput
      float32: {add: {pj: "1.85 pJ", per_s: "11.2 G/s", source: ...}, ...}
    power: {idle_w: "3.1 W", active_w: "5.6 W", source: ...}

Every model forbids unknown fields. Quantities may be plain numbers (in the
field's base unit) or strings with a unit (:mod:`hardware_profiles.units`);
after validation they are plain numbers, ``int`` for bytes.

Every group of numbers carries a ``source``: either a key of ``sources`` or a
free-text derivation. A source written as a single word (no whitespace) is
taken to be a key and must exist in ``sources``.

Validation errors carry the failing field's location; the loader turns them
into one-line :class:`~hardware_profiles.units.DeviceError` messages.
"""

from __future__ import annotations

import math

from typing import Annotated, Any, Final, Literal, Optional, get_args

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, model_validator
from pydantic_core import PydanticCustomError

from bnncost.hardware_profiles.units import DeviceError, convert

FormatName = Literal["float32", "float16", "bfloat16", "int32", "int16", "int8", "uint8", "po2", "bool"]
KindName = Literal["mac", "add", "mul", "div", "sqrt", "abs", "compare", "exp", "shift", "xnor_popcount"]

FORMATS: Final[tuple[str, ...]] = get_args(FormatName)
OP_KINDS: Final[tuple[str, ...]] = get_args(KindName)


def _quantity(kind: str):
    def parse(value: Any) -> Any:
        return convert(value, kind)

    return BeforeValidator(parse)


def _positive(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value!r}")
    if value <= 0:
        raise ValueError(f"must be greater than 0, got {value!r}")
    return value


def _nonblank(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def _source(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError("every number needs a source: a key of 'sources' or a derivation text")
    return value


def _within(low: float, high: float, what: str):
    """A physically possible range: a value outside it is a typo or an attack, and would make a step's energy or
    time overflow to inf (1e308 pJ per op, 1e-300 B/s)."""
    def check(value: float) -> float:
        if not low <= value <= high:
            raise ValueError(f"{value:g} is outside what any device has ({what})")
        return value

    return AfterValidator(check)


Bytes = Annotated[int, _quantity("bytes"), _within(0, 2**60, "at most 2^60 B = 1 EiB")]
PositiveBytes = Annotated[int, _quantity("bytes"), AfterValidator(_positive), _within(0, 2**60, "at most 1 EiB")]
Energy = Annotated[float, _quantity("energy"), _within(0, 1e6, "at most 1 uJ per operation")]
EnergyPerByte = Annotated[float, _quantity("energy_per_byte"), _within(0, 1e6, "at most 1 uJ per byte")]
PositiveRate = Annotated[float, _quantity("rate"), AfterValidator(_positive), _within(1e-3, 1e18, "1e-3 to 1e18 /s")]
PositiveByteRate = Annotated[float, _quantity("byte_rate"), AfterValidator(_positive),
                             _within(1.0, 1e16, "1 B/s to 10 PB/s")]
Power = Annotated[float, _quantity("power"), _within(0, 1e6, "at most 1 MW")]
Source = Annotated[str, AfterValidator(_source)]
Text = Annotated[str, AfterValidator(_nonblank)]


def _located(path: str, problem: str) -> PydanticCustomError:
    """A validation error inside a model, at ``path`` relative to that model."""
    return PydanticCustomError("device", "{problem}", {"problem": problem, "path": path})


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourcedBytes(_Model):
    """A byte count with its source."""

    value: Bytes
    source: Source


class MemoryLevel(_Model):
    """One level of the memory hierarchy.

    ``capacity_bytes`` is what one core can use of it (a private cache's size, a
    shared level's full size, the DRAM size). ``energy_pj_per_byte`` is the
    energy to read or write one byte there; ``bandwidth_bytes_per_s`` the
    sustained bytes moved (read plus written) per second, whole chip.
    """

    name: Text
    capacity_bytes: PositiveBytes
    energy_pj_per_byte: Optional[EnergyPerByte]  # null: unknown (a calibrated machine without --base)
    bandwidth_bytes_per_s: PositiveByteRate
    source: Source


class Memory(_Model):
    """RAM, what one training process may use of it, and the hierarchy."""

    ram: SourcedBytes = Field(alias="ram_bytes")
    usable: SourcedBytes = Field(alias="usable_bytes")
    levels: list[MemoryLevel] = Field(min_length=1)

    @property
    def ram_bytes(self) -> int:
        """Installed RAM in bytes."""
        return self.ram.value

    @property
    def usable_bytes(self) -> int:
        """Bytes one training process can use (RAM minus OS, desktop, carve-outs)."""
        return self.usable.value

    @property
    def dram(self) -> MemoryLevel:
        """The last level (main memory)."""
        return self.levels[-1]

    @model_validator(mode="after")
    def _consistent(self) -> "Memory":
        if self.usable.value > self.ram.value:
            raise _located(
                "usable_bytes.value",
                f"usable bytes ({self.usable.value}) exceed RAM ({self.ram.value})",
            )
        seen: set[str] = set()
        for i, level in enumerate(self.levels):
            if level.name in seen:
                raise _located(f"levels[{i}].name", f"level name {level.name!r} is used twice")
            seen.add(level.name)
            if i and level.capacity_bytes <= self.levels[i - 1].capacity_bytes:
                raise _located(
                    f"levels[{i}].capacity_bytes",
                    "levels must be listed smallest first: "
                    f"{level.capacity_bytes} B is not larger than {self.levels[i - 1].name}'s "
                    f"{self.levels[i - 1].capacity_bytes} B",
                )
        return self


class Op(_Model):
    """One operation kind at one format: energy per operation and throughput.

    ``pj`` may be written ``null`` (it must still be written): the energy is
    unknown, as on a machine calibrated without power figures; then every
    energy the device would give is reported as unavailable, never as zero.
    """

    pj: Optional[Energy]
    per_s: PositiveRate
    source: Source


class PowerSpec(_Model):
    """Board power: idle, and with every core busy; both ``null`` when unknown (the source says why)."""

    idle_w: Optional[Power]
    active_w: Optional[Power]
    source: Source

    @property
    def known(self) -> bool:
        return self.idle_w is not None and self.active_w is not None

    @model_validator(mode="after")
    def _ordered(self) -> "PowerSpec":
        if (self.idle_w is None) != (self.active_w is None):
            raise _located("idle_w" if self.idle_w is None else "active_w",
                           "idle_w and active_w are both given or both null (unknown)")
        if self.known and self.active_w < self.idle_w:
            raise _located("active_w", f"active power {self.active_w} W is below idle power {self.idle_w} W")
        return self


Mechanism = Literal["gemm", "xnor_words", "input_values", "output_values", "weights", "values", "window_values",
                    "channels", "rows", "patch_indices", "tensors", "products", "blocks"]

# The version of the time model's mechanisms (costmodel.timing) a calibrated file was fitted for. A file
# fitted for another version has operators or units this version counts differently: it must be
# calibrated again. 1: layer operators only; 2: the step's own work (batch gather, ledger, optimizer loop);
# 3: the linear operators' loops (numpy products per tile, K-block and row-chunk iterations).
TIME_MODEL_VERSION: Final[int] = 4


def _nonnegative(value: float) -> float:
    if not value >= 0:
        raise ValueError(f"must be 0 or more, got {value!r}")
    return value


Seconds = Annotated[float, AfterValidator(_nonnegative)]


class OperatorCost(_Model):
    """What one operator of the bundled trainer costs here: per call, and per unit of each mechanism.

    ``operator`` and ``formats`` name it as ``costmodel.timing`` does (e.g.
    ``conv2d.binary.backward.dx`` under ``activation_grad=float16,...``).
    """

    operator: Text
    formats: str
    fixed_s: Seconds
    per_unit_s: dict[Mechanism, Seconds]
    samples: Annotated[int, AfterValidator(_positive)]
    source: Source


class TrainerTiming(_Model):
    """Sustained costs of the bundled numpy trainer on this machine, written by ``bnncost calibrate``.

    With this section the device's step time is a prediction of the trainer's
    measured step (``costmodel.timing``), not a peak-rate lower bound.
    ``call_s`` is the fixed cost of an operator the table does not list (its
    work is then priced at the ``ops`` rates). ``reference_step_s`` is the time
    of the trainer's reference step (trainer.timing) at the core speed the
    operators were timed at: a shared core's speed changes, and ``verify``
    compares a step measured at another speed at this one.
    """

    time_model: int = 1  # TIME_MODEL_VERSION of the mechanisms the operators were fitted for
    implementation: Text
    workspace_bytes: Bytes
    blas_threads: Optional[int] = None
    cores: Annotated[int, AfterValidator(_positive)]
    call_s: Seconds
    reference_step_s: Optional[Annotated[float, AfterValidator(_positive)]] = None
    operators: list[OperatorCost] = Field(default_factory=list)
    source: Source

    @model_validator(mode="after")
    def _current(self) -> "TrainerTiming":
        if self.time_model != TIME_MODEL_VERSION:
            raise _located("time_model", f"fitted for time model {self.time_model}, this bnncost has time model "
                                         f"{TIME_MODEL_VERSION}: run `bnncost calibrate` again to rewrite the file")
        return self

    def lookup(self) -> dict[tuple[str, str], OperatorCost]:
        return {(o.operator, o.formats): o for o in self.operators}


CPU_ARCHES = ("arm64", "armv7", "x86-64", "riscv64")


class CpuSpec(_Model):
    """The CPU's instruction set and maker: whose libraries (BLAS, JIT code) a framework runs there.

    An engine's runtime bytes (its BLAS buffers, JIT kernels) were measured on
    one CPU; fit and predict say so when the device's is another."""

    arch: Literal[CPU_ARCHES]
    vendor: Optional[Annotated[str, AfterValidator(_nonblank)]] = None  # lower case: arm, intel, amd, ...
    source: Source


class Device(_Model):
    """A device table. Quantities are plain numbers once loaded."""

    name: Text
    description: Text
    process_nm: Optional[Annotated[float, AfterValidator(_positive)]] = None
    cpu: Optional[CpuSpec] = None
    sources: dict[str, Text] = Field(default_factory=dict)
    memory: Memory
    ops: dict[FormatName, dict[KindName, Op]]
    power: PowerSpec
    trainer: Optional[TrainerTiming] = None

    _file: str = PrivateAttr(default="<memory>")

    @property
    def energy_known(self) -> bool:
        """Whether every energy figure is known (power, every op's pJ, every level's pJ/B)."""
        return (self.power.known and all(op.pj is not None for kinds in self.ops.values() for op in kinds.values())
                and all(lv.energy_pj_per_byte is not None for lv in self.memory.levels))

    @property
    def file(self) -> str:
        """Where the device was read from."""
        return self._file

    def op(self, format: str, kind: str) -> Op:
        """Energy (``.pj``) and throughput (``.per_s``) of ``kind`` at ``format``."""
        try:
            return self.ops[format][kind]  # type: ignore[index]
        except KeyError:
            raise DeviceError(f"device {self.name} has no {kind} at {format}") from None

    def has_op(self, format: str, kind: str) -> bool:
        """Whether the table lists ``kind`` at ``format``."""
        return kind in self.ops.get(format, {})  # type: ignore[call-overload]

    def source_paths(self) -> list[tuple[str, str]]:
        """Every (field path, source) pair in the table."""
        pairs = [
            ("memory.ram_bytes.source", self.memory.ram.source),
            ("memory.usable_bytes.source", self.memory.usable.source),
        ]
        pairs += [(f"memory.levels[{i}].source", lv.source) for i, lv in enumerate(self.memory.levels)]
        for fmt, kinds in self.ops.items():
            pairs += [(f"ops.{fmt}.{kind}.source", op.source) for kind, op in kinds.items()]
        pairs.append(("power.source", self.power.source))
        if self.trainer is not None:
            pairs.append(("trainer.source", self.trainer.source))
            pairs += [(f"trainer.operators[{i}].source", o.source) for i, o in enumerate(self.trainer.operators)]
        return pairs

    @model_validator(mode="after")
    def _checked(self) -> "Device":
        for key in self.sources:
            if not key or any(ch.isspace() for ch in key):
                raise _located(f"sources.{key}", "a citation key must be one word without spaces")
        for fmt, kinds in self.ops.items():
            if not kinds:
                raise _located(f"ops.{fmt}", "lists no operation kinds; remove the format or add kinds")
        for path, source in self.source_paths():
            if not any(ch.isspace() for ch in source) and source not in self.sources:
                known = ", ".join(sorted(self.sources)) or "none"
                raise _located(
                    path,
                    f"source {source!r} looks like a citation key but is not in 'sources' (keys: {known}); "
                    "write a key of 'sources' or a derivation with words",
                )
        return self
