"""Engines: how an implementation holds a training step, as data (METHOD 4.2).

METHOD 4 describes one implementation: per role exactly what a layer's
backward needs. A real engine (PyTorch's autograd, Keras on TensorFlow, the
bundled trainer) holds a step differently, mechanism by mechanism. An engine
file says so without code:

- `retention` and `workspace.budget`: the two knobs of METHOD 4.1;
- `variables`: what it keeps beyond METHOD's roles, per layer kind, with a
  shape relative to the layer, a format and a lifetime (new roles allowed);
- `temporaries`: buffers an operator makes while one event of a layer runs;
  `stage: N` orders those an op makes one after another (it frees one
  before it makes the next): the event splits into its stages, in order;
- `optimizer_temporaries`: buffers the optimizer makes during `update`, one
  parameter at a time (`largest_parameter`) or all at once (`each_parameter`);
- `drop`: METHOD variables it does not hold (an op that saves nothing);
- `shares`: a saved variable that is the layer's input or output tensor itself
  whenever their formats agree (held once, the tensor kept alive meanwhile);
- `lifetimes`: METHOD variables it holds from or until other events (from
  one stage of the layer's op: `stage`; until one: `free_stage`);
- `formats`: METHOD variables it holds in another storage format;
- `in_place_grads`: elementwise layers whose backward writes dX over dY;
- `runtime`: bytes that are not tensors (allocator caches, a traced graph),
  each with its source; `batch_below: N` holds them only while the batch has
  fewer than N samples (a library that keeps more state for small batches);
- `constants`: tensors the traced graph holds as constants (a `zeros_like`
  of a static shape folded by the graph optimiser), shaped like a layer's
  tensor; equal constants are held once, so one per distinct format and shape;
- `gemms` and `blas_buffers`: the BLAS calls each operator makes, in BLAS
  terms (transposes, m, n, k relative to the layer and the batch), and the
  packing buffers the BLAS library keeps after them: which calls take its
  packing path, the buffer size from its blocking parameters, and a pool that
  keeps every buffer it ever allocated (a step function of B, not a constant);
- `gemm_scratch`: the buffer a BLAS library allocates inside each of those
  gemm calls that takes its copy-based path and frees on return (oneDNN's
  sgemm): a temporary of the gemm's event, sized by the library's blocking.

Every rule carries `source`: the measurement or document behind it. `extends`
inherits another engine: scalars are overridden, named rules (variables,
temporaries, optimizer_temporaries, runtime) are replaced by name, the other
lists are appended. Shipped engines live in `costmodel/engines/`; a user
passes a path to their own. The rules are applied in `costmodel.engine_rules`.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PositiveInt, ValidationError, field_validator,
    model_validator,
)

from bnncost.costmodel.formats import STORAGE_BITS
from bnncost.costmodel.strategy import STRATEGY_CHOICES, Strategy
from bnncost.hardware_profiles.schema import CPU_ARCHES
from bnncost.hardware_profiles.units import QuantityError, convert
from bnncost.layers.model import looks_like_path
from bnncost.layers.relative import (
    END_EVENTS, EVENTS, LAYER_KINDS, SHAPES, SHAPES_OF_GROUPED, SHAPES_OF_WEIGHTED,
)
from bnncost.layers.roles import DERIVED_FORMAT, FORMATTED_ROLES, ROLES
from bnncost.layers.spec import WEIGHTED_KINDS
from bnncost.layers.yamlfile import parse_yaml, read_text

DEFAULT_ENGINE = "reference"
MAX_EXTENDS = 32  # a longer chain is a mistake, not a design
STRATEGY_FORMAT = "strategy:"  # format: strategy:<role> takes the strategy's format for that role
STRATEGY_ROLES = (*FORMATTED_ROLES, *DERIVED_FORMAT)
OPTIMIZERS = ("adam", "sgd", "bop")
PARAMETER_SHAPES = ("largest_parameter", "each_parameter")
NAMED_LISTS = ("variables", "temporaries", "optimizer_temporaries", "runtime", "constants")
APPENDED_LISTS = ("drop", "shares", "lifetimes", "in_place_grads", "gemms", "formats")
SINGLE_RULES = ("blas_buffers", "gemm_scratch", "jit_conv_kernels")  # at most one of each
FILE_KEYS = {"name", "description", "extends", "retention", "workspace", "measured_strategies", "runtime_measured_on",
             *SINGLE_RULES, *NAMED_LISTS, *APPENDED_LISTS}
GEMM_TRANSPOSES = ("NN", "NT", "TN", "TT")  # op(A), op(B) of column-major C(m x n) = op(A)(m x k) op(B)(k x n)
GEMM_DIMS = {
    "batch": "the batch size B",
    "inputs": "the layer's inputs per output (dense: units in; conv2d: kh x kw x Cin)",
    "outputs": "the layer's outputs per position (units or filters)",
    "positions": "the layer's output positions per sample (Ho x Wo; 1 for dense)",
}
GEMM_LAYER_DIMS = ("inputs", "outputs", "positions")


class EngineError(ValueError):
    """An engine file or name that cannot be used; the message is one line naming the file and field."""


MAX_RULE_BYTES = 2**50  # 1 PiB: more is no implementation's state; the cap keeps a step's sums exact in 64 bits


def _bytes(value: Any) -> int:
    try:
        n = int(convert(value, "bytes"))
    except QuantityError as exc:
        raise ValueError(str(exc)) from None
    if n > MAX_RULE_BYTES:
        raise ValueError(f"{n:.3g} bytes is more than any implementation holds (at most 2^50 = "
                         f"{MAX_RULE_BYTES:,} bytes)")
    return n


ByteCount = Annotated[int, BeforeValidator(_bytes)]
Identifier = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


def _one_or_many(v: Any) -> Any:
    return (v,) if isinstance(v, str) else v


def _known_kinds(v: tuple[str, ...]) -> tuple[str, ...]:
    for k in v:
        if k not in LAYER_KINDS:
            raise ValueError(f"unknown layer kind '{k}'; kinds: {', '.join(LAYER_KINDS)}")
    return v


Kinds = Annotated[tuple[str, ...], BeforeValidator(_one_or_many), Field(min_length=1), AfterValidator(_known_kinds)]


def _strategy_condition(v: dict[str, str]) -> dict[str, str]:
    for key, value in v.items():
        if key in STRATEGY_CHOICES:
            if value not in STRATEGY_CHOICES[key]:
                raise ValueError(f"{key}: '{value}' is not one of {', '.join(STRATEGY_CHOICES[key])}")
        elif key in FORMATTED_ROLES:
            if value not in STORAGE_BITS:
                raise ValueError(f"{key}: unknown format '{value}'; formats: {', '.join(STORAGE_BITS)}")
        else:
            raise ValueError(f"'{key}' is neither a strategy choice ({', '.join(STRATEGY_CHOICES)}) nor a role "
                             f"({', '.join(FORMATTED_ROLES)})")
    return v


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)
    source: Annotated[str, Field(min_length=1)]  # the measurement or document behind the rule
    # Only under strategies with these choices / role formats (unset: any): an implementation holds a
    # strategy the way its code for that strategy's choices does (e.g. a packed-bit autograd Function
    # where weight_grad is sign).
    strategy: Annotated[dict[str, str], AfterValidator(_strategy_condition)] = {}

    def applies_to(self, strategy: Strategy) -> bool:
        return all((getattr(strategy, k) if k in STRATEGY_CHOICES else strategy.formats.get(k)) == v
                   for k, v in self.strategy.items())

    @field_validator("source")
    @classmethod
    def _nonblank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must say where the rule comes from (a measurement or a document)")
        return v


class When(BaseModel):
    """Conditions on a layer (unset: any)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    binary: bool | None = None  # dense / conv2d with binary: true
    first: bool | None = None  # its input is the data batch
    needs_input_grad: bool | None = None  # its backward computes dX
    pointwise: bool | None = None  # conv2d with a 1x1 kernel, stride 1, one group
    spatial: bool | None = None  # its input is a feature map (height, width, channels), not a vector
    bias: bool | None = None  # a full-precision dense / conv2d with a learned bias
    min_in_channels: PositiveInt | None = None  # its input has at least this many channels
    max_in_channels: PositiveInt | None = None  # its input has at most this many channels
    same_channels: bool | None = None  # as many output channels as input channels
    padded: bool | None = None  # a window padded at the border ('same' padding of a window larger than 1)
    strided: bool | None = None  # a conv or pool with a stride above 1
    grouped: bool | None = None  # a conv2d with 1 < groups < input channels (grouped, not depthwise)
    one_group: bool | None = None  # a conv2d with one group (neither grouped nor depthwise)
    # its input is a residual fork whose gradient another reader's backward has already delivered: its dX is a
    # tensor of its own until it is added into that one (autograd's InputBuffer)
    joins_a_gradient: bool | None = None
    # a conv whose dW the engine's jit_conv_kernels computes by im2col + sgemm (input channels per group off
    # its gemm_weight_grad_channel_multiple): no JIT backward-weights kernel, no blocked copies for it
    gemm_weight_grad: bool | None = None
    # a conv that oneDNN runs (true), or that the framework runs another way (false): by the engine's
    # jit_conv_kernels, every conv but a 1x1 stride-1 one below its pointwise_min_batch samples and a small
    # one-group one at batch 1 (the batch bound is the variable's or gemm's: held from, or below, that batch)
    onednn: bool | None = None
    # its input is the output of a layer of this kind, read by it alone (two ops a graph optimiser fuses)
    follows: Literal[LAYER_KINDS] | None = None


class _LayerRule(_Rule):
    kinds: Kinds  # layer kinds this rule applies to (a residual's join is `add`)
    when: When = When()


def _check_format(fmt: str | None) -> str | None:
    if fmt is None:
        return None
    if fmt.startswith(STRATEGY_FORMAT):
        role = fmt[len(STRATEGY_FORMAT):]
        if role not in STRATEGY_ROLES:
            raise ValueError(f"'{fmt}': a strategy has no format for role '{role}'; roles: {', '.join(STRATEGY_ROLES)}")
        return fmt
    if fmt not in STORAGE_BITS:
        raise ValueError(f"unknown format '{fmt}'; formats: {', '.join(STORAGE_BITS)}, or strategy:<role>")
    return fmt


class _Buffer(BaseModel):
    """Name, role, count and format of a buffer an engine adds."""

    name: Identifier
    role: Identifier = "workspace"
    count: Annotated[PositiveInt, Field(le=1024)] = 1  # how many such buffers
    format: str | None = None  # a storage format, or strategy:<role>; default: strategy:<role> of a strategy role

    @field_validator("format")
    @classmethod
    def _format(cls, v: str | None) -> str | None:
        return _check_format(v)

    def resolved_format(self) -> str:
        return self.format or f"{STRATEGY_FORMAT}{self.role}"


class _LayerSized(_Buffer):
    """The size of a buffer kept per layer: a `shape` relative to the layer (in a format), or a fixed
    `bytes` per layer whatever the batch (the objects a framework makes per op beside its tensors:
    autograd's nodes, tensor headers, a library's descriptors), held like a tensor."""

    shape: Literal[tuple(SHAPES)] | None = None
    bytes: ByteCount | None = None

    @model_validator(mode="after")
    def _one_size(self) -> "_LayerSized":
        if (self.shape is None) == (self.bytes is None):
            raise ValueError("give its size as shape (a tensor of the layer) or bytes (fixed per layer), one of them")
        if self.bytes is not None and self.format not in (None, "uint8"):
            raise ValueError(f"format: {self.format} sizes a shape; a buffer of fixed bytes takes none")
        return self

    def resolved_format(self) -> str:
        return "uint8" if self.bytes is not None else super().resolved_format()


class LayerVariable(_LayerRule, _LayerSized):
    """A variable an engine keeps per layer of some kinds, from `alloc` to `free` (both included)."""

    role: Identifier
    alloc: Literal[EVENTS]
    free: Literal[END_EVENTS]


def _stage_range(v: Any) -> Any:
    """A stage N as the range (N, N); [first, last] as a range, first <= last."""
    if isinstance(v, int) and not isinstance(v, bool):
        return (v, v)
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, int) for x in v) and v[0] > v[1]:
        raise ValueError(f"[{v[0]}, {v[1]}]: the first stage comes after the last")
    return v


class LayerTemporary(_LayerRule, _LayerSized):
    """A buffer an operator makes while one event of a layer runs.

    `after_backward` is a moment of its own, right after the layer's backward
    op has freed its saved tensors and dY (an engine whose backward runs as
    several ops: autograd's STE of the weight's sign runs after the product's
    backward); it exists in the step only where a rule names it.
    """

    during: Literal["forward", "backward", "after_backward"]
    # Only from min_batch on, or only below batch_below (an operator the framework runs another way on the
    # other side: PyTorch's 1x1 conv is per-sample gemms below 16 samples, oneDNN with its reorders from 16 on).
    min_batch: PositiveInt | None = None
    batch_below: PositiveInt | None = None
    # Where the layer's op makes its temporaries one after another (an autograd Function whose backward
    # builds dW's operand, frees it, then packs dW): the event splits into one sub-event per stage named
    # for that layer, in ascending order (events `<event>#<stage>`, after the event itself). Every variable
    # alive at the event is alive at each of its stages (saved tensors are freed, dX and dW handed back,
    # only when the op returns; unless a lifetime's free_stage frees one earlier, for an event that is
    # several graph ops), and so is a temporary without a stage; a staged one only at its stage,
    # or from its first to its last stage (`stage: [3, 4]`: made in stage 3, freed after stage 4).
    stage: Annotated[tuple[PositiveInt, PositiveInt] | None, BeforeValidator(_stage_range)] = None
    # A buffer in a blocked layout that pads its channels to a multiple of this (oneDNN's nChw16c and
    # OIhw16i16o on AVX-512): a tensor's channels (its last dimension), a kernel's input and output channels.
    channel_block: PositiveInt | None = None

    @model_validator(mode="after")
    def _stage_of_an_op(self) -> "LayerTemporary":
        if self.min_batch is not None and self.batch_below is not None:
            raise ValueError("give min_batch or batch_below, not both (write two rules)")
        if self.when.onednn is not None and (self.min_batch is not None or self.batch_below is not None):
            raise ValueError("when.onednn sets the batch bound itself; give it or min_batch / batch_below")
        if self.channel_block is not None and self.shape is None:
            raise ValueError("channel_block pads a shape's channels; a buffer of fixed bytes has none")
        if self.stage is not None and self.during == "after_backward":
            raise ValueError("stage: after_backward is a moment of its own, not an op with stages; "
                             "stage a forward or backward temporary")
        return self


class OptimizerTemporary(_Rule, _Buffer):
    """A buffer the optimizer makes during `update`, per parameter tensor it updates."""

    # only for parameters these optimizers update
    optimizers: Annotated[tuple[Literal[OPTIMIZERS], ...], BeforeValidator(_one_or_many)] = OPTIMIZERS
    shape: Literal[PARAMETER_SHAPES]


class Drop(_LayerRule):
    """METHOD variables of this role that the engine does not hold at all."""

    role: Identifier


class Share(_LayerRule):
    """A saved variable of this role is the layer's input or output tensor, when their formats agree."""

    role: Identifier
    tensor: Literal["input", "output"]


class Reformat(_LayerRule):
    """METHOD variables of this role that the engine holds in another format (e.g. a ±1 tensor as float16)."""

    role: Identifier
    format: str

    @field_validator("format")
    @classmethod
    def _format(cls, v: str) -> str:
        if v.startswith(STRATEGY_FORMAT):
            raise ValueError("a storage format, not strategy:<role> (the strategy's own format needs no rule)")
        return _check_format(v)


class Lifetime(_LayerRule):
    """METHOD variables of this role live from `alloc` and/or until `free` instead."""

    role: Identifier
    alloc: Literal[EVENTS] | None = None
    free: Literal[END_EVENTS] | None = None
    # made at this stage of the alloc event (a layer's forward or backward split into stages by its
    # temporaries): an op's output that exists only once a later step of the op makes it. A rule with a
    # stage moves the variables of its role that the layer's op makes (allocated at that event: its output,
    # the dX of its input, its dW), whichever layer they are named after
    stage: PositiveInt | None = None
    # freed after this stage of the free event: a graph executor runs a layer's backward as several ops
    # (TensorFlow: dW's product, the optimizer's update of dW, dX's product) and frees a tensor after its
    # last reader among them, not when the layer's backward is over
    free_stage: PositiveInt | None = None

    @model_validator(mode="after")
    def _stage_of_the_alloc(self) -> "Lifetime":
        if self.stage is not None and self.alloc not in ("forward", "backward"):
            raise ValueError("stage: a stage of the layer's forward or backward op; give alloc: forward or backward")
        if self.free_stage is not None and self.free not in ("forward", "backward"):
            raise ValueError("free_stage: a stage of the layer's forward or backward op; give free: forward or "
                             "backward")
        return self


ELEMENTWISE_KINDS = ("batchnorm", "sign", "relu", "dropout")


class InPlaceGrad(_LayerRule):
    """Layers whose backward writes dX over dY: one gradient buffer where METHOD has two."""

    @field_validator("kinds")
    @classmethod
    def _elementwise(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for k in v:
            if k not in ELEMENTWISE_KINDS:
                raise ValueError(f"'{k}' changes the shape or passes gradients on already; "
                                 f"in place only for {', '.join(ELEMENTWISE_KINDS)}")
        return v


class RuntimeBytes(_Rule):
    """Bytes that are not tensors (framework state, allocator caches), whatever the batch size.

    Without `kinds`, `bytes` once; with `kinds`, `bytes` for each layer of those
    kinds that passes `when` (a traced graph grows with the ops it holds). With
    `min_batch`, only at batch sizes from it on (a library that takes another
    code path for smaller batches): the runtime is then a step function of B.
    With `batch_below`, only at batch sizes below it (a library that keeps more
    state for small batches): the peak may then drop where B reaches it. With
    both, only in the band min_batch <= B < batch_below (state a library keeps
    for small batches but not for one sample, which takes another path). With
    `distinct`, once per distinct layer configuration among those layers (state
    a library caches by shape, shared by equal layers). With `once`, once if any
    layer of those kinds passes `when` (code a library generates the first time
    a kind of op runs, whatever its shape); with `once_group` too, once among
    all the rules of that group (code several kinds of op share).
    """

    name: Identifier
    bytes: ByteCount
    kinds: Kinds | None = None
    when: When = When()
    min_batch: PositiveInt | None = None
    batch_below: PositiveInt | None = None  # held only while the batch has fewer samples than this
    # with kinds: once per distinct layer configuration (kind, shapes, window, strides, padding) rather than
    # per layer: state a library caches by shape and shares between equal layers (oneDNN's primitives)
    distinct: bool = False
    # with distinct: a layer whose output only a layer of these kinds reads is a configuration of its own (a
    # graph optimiser fuses the two into one op, which makes its own primitive: Grappler's batchnorm + relu)
    fused_with: Kinds | None = None
    once: bool = False  # with kinds: once if any such layer is in the step, not per layer
    # with once: rules of one group hold their bytes once between them (code a library generates the first time
    # any of several kinds of op calls it: oneDNN's sgemm kernels, for a MatMul or for XLA's convolution)
    once_group: Identifier | None = None

    @model_validator(mode="after")
    def _one_bound(self) -> "RuntimeBytes":
        if self.min_batch is not None and self.batch_below is not None and self.min_batch >= self.batch_below:
            raise ValueError(f"min_batch {self.min_batch} and batch_below {self.batch_below} leave no batch size "
                             "(a band is min_batch <= B < batch_below)")
        if self.distinct and self.kinds is None:
            raise ValueError("distinct counts layers of some kinds: give kinds")
        if self.once and self.kinds is None:
            raise ValueError("once holds the bytes if a layer of some kinds is in the step: give kinds")
        if self.once and self.distinct:
            raise ValueError("once or distinct, not both")
        if self.once_group is not None and not self.once:
            raise ValueError("once_group holds the bytes once among rules that are each once: give once: true")
        if self.fused_with is not None and not self.distinct:
            raise ValueError("fused_with tells distinct configurations apart: give distinct: true")
        return self


class GraphConstant(_LayerRule):
    """A tensor the traced graph holds as a constant, shaped like one of a layer's tensors (runtime bytes).

    Every layer of `kinds` that passes `when` gets one, but a graph optimiser
    that merges equal constants keeps one per distinct (format, shape): the
    engine holds each distinct one once, across all `constants` rules.
    """

    name: Identifier
    shape: Literal[tuple(SHAPES)]
    format: str

    @field_validator("format")
    @classmethod
    def _format(cls, v: str) -> str:
        if v.startswith(STRATEGY_FORMAT):
            raise ValueError(f"'{v}': a constant of the traced graph has a format of its own, give one "
                             f"({', '.join(STORAGE_BITS)})")
        return _check_format(v)


class Gemm(_LayerRule):
    """One BLAS gemm a layer's operator makes during its forward or backward, in column-major BLAS terms.

    With `batch_below: N`, only at batch sizes below N (a framework that runs
    the operator another way from N on); `when: {onednn: false}` takes the
    bound from the engine's jit_conv_kernels, per conv (PyTorch's 1x1 conv is
    per-sample gemms below 16 samples, oneDNN from 16 on).
    """

    during: Literal["forward", "backward"]
    trans: Literal[GEMM_TRANSPOSES]
    m: Literal[tuple(GEMM_DIMS)]
    n: Literal[tuple(GEMM_DIMS)]
    k: Literal[tuple(GEMM_DIMS)]
    batch_below: PositiveInt | None = None
    # the stage of the layer's event the call runs in (a backward of several ops, staged by the engine's
    # lifetimes and temporaries): its buffer is then alive with what that stage holds
    stage: PositiveInt | None = None

    @model_validator(mode="after")
    def _one_batch_bound(self) -> "Gemm":
        if self.when.onednn:
            raise ValueError("when.onednn: true: a conv oneDNN runs makes no BLAS gemm; onednn: false picks "
                             "the convs the framework runs as gemms")
        if self.when.onednn is not None and self.batch_below is not None:
            raise ValueError("when.onednn sets the batch bound itself; give it or batch_below")
        return self

    def runs_at(self, batch: int) -> bool:
        return self.batch_below is None or batch < self.batch_below

    @property
    def makes_weight_grad(self) -> bool:
        """Its output C (m x n) is the weight's shape: the backward's dW product."""
        return self.during == "backward" and {self.m, self.n} == {"inputs", "outputs"}


NonNegative = Annotated[int, Field(ge=0, strict=True)]


class PackingPath(BaseModel):
    """Gemms of these transposes whose shape takes the library's packing path (each bound unset: none)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    trans: Annotated[tuple[Literal[GEMM_TRANSPOSES], ...], BeforeValidator(_one_or_many), Field(min_length=1)]
    min_m: NonNegative = 0
    max_m: NonNegative | None = None
    min_n: NonNegative = 0
    min_k: NonNegative = 0
    max_k: NonNegative | None = None
    n_below_m: bool = False  # n < m
    k_at_most_m: bool = False  # k <= m

    def takes(self, trans: str, m: int, n: int, k: int) -> bool:
        return (trans in self.trans and m >= self.min_m and (self.max_m is None or m <= self.max_m)
                and n >= self.min_n and k >= self.min_k and (self.max_k is None or k <= self.max_k)
                and (not self.n_below_m or n < m) and (not self.k_at_most_m or k <= m))


class BlasBuffers(_Rule):
    """The packing buffers a BLAS library allocates for gemms on its packing path, and keeps.

    One buffer holds `base` bytes plus op(A) packed as ceil(m / row_block)
    blocks of row_block rows, `depth` deep, and op(B) as min(n rounded up to
    col_block, col_cap) columns, col_depth_factor x `depth` deep, element_bytes
    each. The depth is k, at least depth_min, up to depth_block; half of k
    (rounded as depth_halving says) when k is up to twice depth_block, and
    depth_block beyond; for k <= small_depth the depth is depth_min and op(B)
    takes at most small_depth_col_cap columns. The library keeps a freed buffer
    and gives it to any later gemm it is large enough for, so the buffers held
    are those of the gemms that needed more than every buffer before them.
    """

    name: Identifier
    base: ByteCount
    element_bytes: PositiveInt
    row_block: PositiveInt
    col_block: PositiveInt
    col_cap: PositiveInt
    depth_min: PositiveInt
    depth_block: PositiveInt
    small_depth: NonNegative
    small_depth_col_cap: PositiveInt
    col_depth_factor: PositiveInt = 1
    depth_halving: Literal["ceil", "floor"] = "ceil"
    paths: Annotated[tuple[PackingPath, ...], Field(min_length=1)]

    def buffer_bytes(self, trans: str, m: int, n: int, k: int) -> int:
        """Bytes of the buffer one gemm allocates (0 when it takes no packing path)."""
        if not any(p.takes(trans, m, n, k) for p in self.paths):
            return 0
        cols = min(-(-n // self.col_block) * self.col_block, self.col_cap)
        if k <= self.small_depth:
            depth, cols = self.depth_min, min(cols, self.small_depth_col_cap)
        elif k <= self.depth_block:
            depth = max(k, self.depth_min)
        elif k <= 2 * self.depth_block:
            depth = -(-k // 2) if self.depth_halving == "ceil" else k // 2
        else:
            depth = self.depth_block
        rows = -(-m // self.row_block) * self.row_block
        return self.base + self.element_bytes * depth * (rows + self.col_depth_factor * cols)


def onednn_smalln_tn(trans: str, n: int) -> bool:
    """Whether oneDNN's f32 gemm (gemm_driver.cpp, AVX-512) jumps to its small-n TN kernel: TN with 1 < n < 16."""
    return trans == "TN" and 1 < n < 16


def _copy_path_onednn_avx512_one_thread(trans: str, m: int, n: int, k: int) -> bool | None:
    """Whether oneDNN's f32 gemm takes its copy-based path (True), its nocopy one (False) or neither (None).

    oneDNN's gemm_driver (src/cpu/x64/gemm/gemm_driver.cpp, gemm_threading_driver)
    on AVX-512 with one thread: TN with 1 < n < 16 goes to the small-n kernel and
    m or n = 1 to gemv, neither of which allocates; else nocopy_checker_avx512
    (nthr = 1) picks the nocopy kernel or the copy-based one. The operands are
    contiguous, so the leading dimensions follow from the transposes: lda = m (N)
    or k (T), ldb = k (N) or n (T), ldc = m.
    """
    if onednn_smalln_tn(trans, n):
        return None  # jump_to_gemm_smalln_tn
    if m == 1 or n == 1:
        return None  # jump_to_gemv
    lda = m if trans[0] == "N" else k
    ldb = k if trans[1] == "N" else n
    ldc = m
    bad = [ld % 256 == 0 for ld in (lda, ldb, ldc)]  # BAD_LD_MULT
    lda_very_bad = lda % 1024 == 0  # VERYBAD_LD_MULT
    if trans == "TN" and m > 100 and ((m < 1200 and n < 200 and k < 1200) or (bad[0] and bad[1])):
        return True  # "copy-based performs better for TN case with small N in sequential case"
    if trans == "NN" and lda_very_bad and k > 500 and n > 100:
        return True
    if 1.0 / m + 1.0 / n >= 0.00196 and not (lda_very_bad and trans == "NT"):
        return False  # FORCE_NOCOPY_THRESH
    if any(bad) and m >= 32 and (n > 16 or (n == 16 and (k >= 6400 or trans[0] == "T" or m == 4096))):
        return True
    if m <= 378 and n <= 378 and k >= 378:
        return True
    if m >= 378 and k >= 378:
        return True
    if trans[1] == "N":
        return not (m <= 28 or n <= 28 or k <= 1)  # MN_NOTRANSB_PER_THR, K_NOTRANSB_PER_THR
    return not ((m <= 28 and m >= n) or n <= 28 or k <= 1)  # M_/N_/K_TRANSB_PER_THR


GEMM_PATH_CHOICES = {"onednn_avx512_one_thread": _copy_path_onednn_avx512_one_thread}


class GemmScratch(_Rule):
    """The buffer a BLAS library mallocs inside each gemm call that takes its copy-based path, freed on return.

    oneDNN's gemm_kernel_driver packs op(A) in blocks of m_padd rows and op(B)
    in blocks of n_padd columns, both k_padd deep, into one malloc'd buffer,
    plus a column- and a row-offset workspace (unroll_m and n_padd elements)
    and a page of alignment for each of the four parts:
    element_bytes x (m_padd k_padd + k_padd n_padd + unroll_m + n_padd) + 4 pages.
    k_padd is the whole depth for k <= whole_depth (at least min_depth), half
    of it (rounded up) below 2 x block_k, else block_k; m_padd is m rounded up
    to unroll_m, at most block_m; n_padd is n rounded up to unroll_n, at most
    block_n (small_depth_block_n where k < small_depth). `path` names the
    library's choice between that path and those that allocate nothing.
    The nocopy path's kernel takes nocopy_block_k x nocopy_unroll_m + 64 +
    nocopy_unroll_m elements of workspace, on the heap when `nocopy_heap`
    (jit_avx512_common_gemm_f32.cpp sgemm_nocopy_driver, where the block depth
    exceeds the kernel's stack capacity). Either buffer lives only while the
    call runs: a temporary of the gemm's event.
    """

    name: Identifier
    path: Literal[tuple(GEMM_PATH_CHOICES)]
    element_bytes: PositiveInt
    unroll_m: PositiveInt
    unroll_n: PositiveInt
    block_m: PositiveInt
    block_n: PositiveInt
    block_k: PositiveInt
    whole_depth: PositiveInt
    min_depth: PositiveInt
    small_depth: NonNegative
    small_depth_block_n: PositiveInt
    page_bytes: PositiveInt
    nocopy_unroll_m: PositiveInt
    nocopy_block_k: PositiveInt
    nocopy_heap: bool

    @property
    def nocopy_workspace_bytes(self) -> int:
        """The nocopy kernel's workspace, malloc'd per call where `nocopy_heap` (else on the stack: 0)."""
        return (self.element_bytes * (self.nocopy_block_k * self.nocopy_unroll_m + 64 + self.nocopy_unroll_m)
                if self.nocopy_heap else 0)

    def scratch_bytes(self, trans: str, m: int, n: int, k: int) -> int:
        """Bytes of the buffer one gemm allocates while it runs (0 on a path that allocates none)."""
        copies = GEMM_PATH_CHOICES[self.path](trans, m, n, k)
        if copies is None:
            return 0
        if not copies:
            return self.nocopy_workspace_bytes

        def up(x: int, unit: int) -> int:
            return -(-x // unit) * unit

        if k <= self.whole_depth:
            depth = max(k, self.min_depth)
        elif k < 2 * self.block_k:
            depth = (k + 1) // 2
        else:
            depth = self.block_k
        rows = up(min(max(m, self.unroll_m), self.block_m), self.unroll_m)
        cols_cap = self.small_depth_block_n if k < self.small_depth else self.block_n
        cols = up(min(max(n, self.unroll_n), cols_cap), self.unroll_n)
        return self.element_bytes * (rows * depth + depth * cols + self.unroll_m + cols) + 4 * self.page_bytes


class JitConvKernels(_Rule):
    """oneDNN's JIT-compiled code for convolutions, cached for the process (its primitive cache).

    Each distinct conv configuration oneDNN runs makes one kernel per direction
    (forward, backward-weights, and backward-data where it computes dX; equal
    convs share the cached primitive), plus one reorder
    kernel per distinct (tensor shape, layout change) between PyTorch's plain
    layout and oneDNN's blocked one: the input and dY to blocked (the input
    stays plain where Cin < plain_input_below_channels), the output and dX
    back, the weight to blocked for forward and for backward-data, dW back.
    Reorders of the same shape and direction are one cached primitive, shared
    between layers. A strided conv's backward-data takes strided_input_grad_kernels
    kernels and strided_input_grad_reorders reorders of its own, a 1x1 stride-1
    conv's backward-weights pointwise_weight_grad_kernels.
    Each kernel holds kernel_bytes of code and state_bytes of primitive state.
    1x1 stride-1 convs run on oneDNN only from pointwise_min_batch on; at
    batch 1, a one-group conv whose input has at most single_sample_max_input
    elements and whose kernel is at most single_sample_max_kernel in a
    dimension does not run on oneDNN either (0: every such conv does).

    A grouped conv whose input channels per group are not a multiple of
    gemm_weight_grad_channel_multiple (0: never) computes dW by im2col and the
    library's own sgemm instead of a JIT conv kernel; the first such product
    JIT-compiles that sgemm's kernels once per process: sgemm_code_bytes, plus
    sgemm_smalln_code_bytes when a product's n (output channels per group) is
    between 2 and 15 (its small-n TN kernels), sgemm_general_code_bytes when one's
    is not.
    """

    name: Identifier
    kernel_bytes: ByteCount
    state_bytes: ByteCount
    plain_input_below_channels: NonNegative
    strided_input_grad_kernels: PositiveInt
    # a strided 1x1 conv's (brgemm) backward-data: this many kernels, twice as many when its input channels are
    # no multiple of 16 (a tail block); 0: strided_input_grad_kernels, as any strided conv
    strided_1x1_input_grad_kernels: NonNegative = 0
    strided_input_grad_reorders: NonNegative = 0
    pointwise_weight_grad_kernels: PositiveInt
    pointwise_min_batch: PositiveInt
    single_sample_max_input: NonNegative = 0
    single_sample_max_kernel: NonNegative = 0
    gemm_weight_grad_channel_multiple: NonNegative = 0
    sgemm_code_bytes: ByteCount = 0
    sgemm_smalln_code_bytes: ByteCount = 0
    sgemm_general_code_bytes: ByteCount = 0


class Workspace(_Rule):
    """Scratch per operator (METHOD 4.1): 0 computes in place; else chunks that fit the budget."""

    budget: ByteCount


class RuntimeCpu(BaseModel):
    """The CPU an engine's runtime bytes were measured on (its BLAS and JIT libraries pick their code by it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    arch: Literal[CPU_ARCHES]
    vendor: Identifier | None = None  # None: measured on one, and the same on every vendor's CPU of this arch
    cpu: Annotated[str, Field(min_length=1)]  # the CPU of the recordings, for the note

    def differs_from(self, device_cpu) -> bool:
        """Whether a device's CPU is another arch, or another vendor where the vendor matters."""
        if device_cpu.arch != self.arch:
            return True
        return self.vendor is not None and device_cpu.vendor is not None and device_cpu.vendor.lower() != self.vendor


class Engine(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str
    description: str = ""
    retention: Literal["step", "backward"]
    workspace: Workspace
    variables: tuple[LayerVariable, ...] = ()
    temporaries: tuple[LayerTemporary, ...] = ()
    optimizer_temporaries: tuple[OptimizerTemporary, ...] = ()
    drop: tuple[Drop, ...] = ()
    shares: tuple[Share, ...] = ()
    lifetimes: tuple[Lifetime, ...] = ()
    in_place_grads: tuple[InPlaceGrad, ...] = ()
    formats: tuple[Reformat, ...] = ()
    runtime: tuple[RuntimeBytes, ...] = ()
    constants: tuple[GraphConstant, ...] = ()
    gemms: tuple[Gemm, ...] = ()
    blas_buffers: BlasBuffers | None = None
    gemm_scratch: GemmScratch | None = None
    jit_conv_kernels: JitConvKernels | None = None
    # the strategies whose steps were measured in this implementation (empty: every strategy, the engine being
    # METHOD itself or an implementation of every strategy); another strategy applies its formats to the
    # engine's rules, which nothing measured
    measured_strategies: tuple[str, ...] = ()
    # where its runtime bytes were measured (None: none measured, or none depending on the CPU)
    runtime_measured_on: RuntimeCpu | None = None
    file: str = "<memory>"  # where it was loaded from, for error messages
    lineage: tuple[str, ...] = ()  # the engines it extends, nearest first (pytorch-amd: pytorch, reference)

    def kin_of(self, other: "Engine") -> bool:
        """Whether one of the two extends the other (pytorch-amd extends pytorch: one implementation measured on
        two CPUs)."""
        return other.name != self.name and (other.name in self.lineage or self.name in other.lineage)

    def unmeasured_note(self, strategies: list[str]) -> str | None:
        """One line for a user who predicts strategies this engine was not measured with; None if it was."""
        missing = [s for s in dict.fromkeys(strategies) if s not in self.measured_strategies]
        if not self.measured_strategies or not missing:
            return None
        measured = "strategies" if len(self.measured_strategies) > 1 else "strategy"
        whose = "those strategies'" if len(missing) > 1 else "that strategy's"
        return (f"the {self.name} engine was measured on the {' and '.join(self.measured_strategies)} {measured} "
                f"only: its {', '.join(missing)} figures are its rules in {whose} formats, not checked by a "
                "measurement")

    def runtime_cpu_note(self, device, others: tuple["Engine", ...] = ()) -> str | None:
        """One line for a user who puts this engine's runtime bytes on a device with another CPU, naming any of
        `others` (engines of the same framework) measured on the device's; None if its CPU is unknown or the same."""
        on = self.runtime_measured_on
        if on is None or device is None or device.cpu is None or not on.differs_from(device.cpu):
            return None
        theirs = device.cpu.arch + (f" ({device.cpu.vendor})" if device.cpu.vendor else "")
        fits = [e.name for e in others if e.runtime_measured_on and not e.runtime_measured_on.differs_from(device.cpu)]
        instead = (f"; --engine {' or '.join(fits)} was measured on such a CPU" if fits else
                   " (`bnncost engines` lists each engine's CPU)")
        return (f"the {self.name} engine's runtime bytes (BLAS buffers, JIT code, framework objects) were measured "
                f"on {on.cpu}, and {device.name}'s CPU is {theirs}: there the libraries hold their own; the process "
                f"peak counts the measured ones{instead}")


class _EngineFile(BaseModel):
    """One file as written: every field optional, so that `extends` can supply the rest."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = None
    description: str | None = None
    extends: str | None = None
    retention: Literal["step", "backward"] | None = None
    workspace: Workspace | None = None
    variables: list[LayerVariable] = []
    temporaries: list[LayerTemporary] = []
    optimizer_temporaries: list[OptimizerTemporary] = []
    drop: list[Drop] = []
    shares: list[Share] = []
    lifetimes: list[Lifetime] = []
    in_place_grads: list[InPlaceGrad] = []
    formats: list[Reformat] = []
    runtime: list[RuntimeBytes] = []
    constants: list[GraphConstant] = []
    gemms: list[Gemm] = []
    blas_buffers: BlasBuffers | None = None
    gemm_scratch: GemmScratch | None = None
    jit_conv_kernels: JitConvKernels | None = None
    measured_strategies: list[str] | None = None
    runtime_measured_on: RuntimeCpu | None = None


# ---------------------------------------------------------------- loading

def engine_names() -> list[str]:
    folder = resources.files("bnncost.costmodel.engines")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_engine(ref: str) -> Engine:
    """Load a shipped engine by name or a user's engine from a YAML path."""
    if looks_like_path(ref):  # a user's file may change between calls: read it every time
        return _resolve(ref, (), None)
    return _load_shipped(ref)


def as_engine(engine: "str | Engine | None") -> Engine:
    """An Engine as is, one loaded by name or path, or the default (reference) for None."""
    if isinstance(engine, Engine):
        return engine
    return load_engine(DEFAULT_ENGINE if engine is None else engine)


@lru_cache(maxsize=None)
def _load_shipped(ref: str) -> Engine:
    return _resolve(ref, (), None)


def _read(ref: str, base: Path | None) -> tuple[Any, str]:
    if looks_like_path(ref):
        path = Path(ref).expanduser()
        if base is not None and not path.is_absolute():
            path = base / path
        text = read_text(path, EngineError, "engine file")
        source = str(path.resolve())
    else:
        if ref not in engine_names():
            raise EngineError(f"unknown engine '{ref}'; shipped: {', '.join(engine_names())} (or pass a YAML path)")
        text = resources.files("bnncost.costmodel.engines").joinpath(f"{ref}.yaml").read_text(encoding="utf-8")
        source = f"engine:{ref}"
    return parse_yaml(text, source, EngineError), source


def _where(loc: tuple) -> str:
    path = ""
    for item in loc:
        path += f"[{item}]" if isinstance(item, int) else ("." if path else "") + str(item)
    return path


def _validation_problem(exc: ValidationError) -> str:
    """'field.path: problem' of the first validation error, on one line."""
    err = exc.errors(include_url=False)[0]
    loc = tuple(p for p in err.get("loc", ()) if not str(p).startswith(("function-", "literal[")))
    msg = str(err.get("msg", "invalid value"))
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    kind = err.get("type")
    if kind == "missing":
        msg = "missing (this field is required)"
    elif kind == "extra_forbidden":
        msg = "unknown field"
    elif kind == "literal_error":
        msg = f"{err.get('input')!r} is not one of {msg.removeprefix('Input should be ')}"
    return f"{_where(loc) or '<root>'}: {' '.join(msg.split())}"


def _parse_file(doc: Any, source: str) -> _EngineFile:
    if not isinstance(doc, dict):
        raise EngineError(f"{source}: an engine file must be a mapping of fields (name, retention, workspace, ...)")
    unknown = sorted(set(map(str, doc)) - FILE_KEYS)
    if unknown:
        raise EngineError(f"{source}: {unknown[0]}: unknown field; fields: {', '.join(sorted(FILE_KEYS))}")
    for key in (*NAMED_LISTS, *APPENDED_LISTS):
        if doc.get(key) is None:
            doc.pop(key, None)
    try:
        return _EngineFile.model_validate(doc)
    except ValidationError as exc:
        raise EngineError(f"{source}: {_validation_problem(exc)}") from None


def _check_rules(f: _EngineFile, source: str, inherited_roles: set[str]) -> set[str]:
    """Checks that need more than one field; returns the roles known after this file."""
    roles = set(inherited_roles) | {v.role for v in f.variables} | {t.role for t in f.temporaries} \
        | {t.role for t in f.optimizer_temporaries}
    for key in ("variables", "temporaries", "constants"):
        for i, rule in enumerate(getattr(f, key)):
            if rule.shape in SHAPES_OF_WEIGHTED and set(rule.kinds) - set(WEIGHTED_KINDS):
                raise EngineError(f"{source}: {key}[{i}].shape: {rule.shape} needs kinds among "
                                  f"{', '.join(WEIGHTED_KINDS)}, "
                                  f"not {', '.join(k for k in rule.kinds if k not in WEIGHTED_KINDS)}")
            if rule.shape in SHAPES_OF_GROUPED and set(rule.kinds) != {"conv2d"}:
                raise EngineError(f"{source}: {key}[{i}].shape: {rule.shape} needs kinds: [conv2d], not "
                                  f"{', '.join(rule.kinds)}")
    for key in ("variables", "temporaries", "optimizer_temporaries"):
        for i, rule in enumerate(getattr(f, key)):
            if rule.resolved_format() == f"{STRATEGY_FORMAT}{rule.role}" and rule.role not in STRATEGY_ROLES:
                raise EngineError(f"{source}: {key}[{i}].format: role '{rule.role}' has no strategy format; "
                                  f"give one ({', '.join(STORAGE_BITS)}, or strategy:<role>)")
    for key in ("drop", "shares", "lifetimes", "formats"):
        for i, rule in enumerate(getattr(f, key)):
            if rule.role not in roles:
                raise EngineError(f"{source}: {key}[{i}].role: unknown role '{rule.role}'; roles: "
                                  f"{', '.join(sorted(roles))}")
    for i, rule in enumerate(f.lifetimes):
        if rule.alloc is None and rule.free is None:
            raise EngineError(f"{source}: lifetimes[{i}]: give alloc, free or both")
    for i, rule in enumerate(f.gemms):
        for dim in ("m", "n", "k"):
            if getattr(rule, dim) in GEMM_LAYER_DIMS and set(rule.kinds) - set(WEIGHTED_KINDS):
                raise EngineError(f"{source}: gemms[{i}].{dim}: {getattr(rule, dim)} needs kinds among "
                                  f"{', '.join(WEIGHTED_KINDS)}")
    return roles


def _merge(parent: dict, child: _EngineFile) -> dict:
    merged = dict(parent)
    for key in ("name", "description", "retention", "workspace", "measured_strategies", "runtime_measured_on",
                *SINGLE_RULES):
        value = getattr(child, key)
        if value is not None:
            merged[key] = value
    for key in NAMED_LISTS:
        mine = getattr(child, key)
        names = {r.name for r in mine}
        merged[key] = [r for r in merged.get(key, []) if r.name not in names] + list(mine)
    for key in APPENDED_LISTS:
        merged[key] = list(merged.get(key, [])) + list(getattr(child, key))
    return merged


def _chain(ref: str, chain: tuple[str, ...], base: Path | None,
           referrer: str | None = None) -> tuple[dict, str, set[str]]:
    try:
        doc, source = _read(ref, base)
    except EngineError as exc:  # a parent that cannot be read: say which file's `extends` names it
        if referrer is None:
            raise
        raise EngineError(f"{referrer}: extends: {exc}") from None
    if source in chain:
        raise EngineError(f"{source}: extends: forms a cycle: {' -> '.join(chain + (source,))}")
    if len(chain) >= MAX_EXTENDS:
        raise EngineError(f"{source}: extends: chains more than {MAX_EXTENDS} files")
    f = _parse_file(doc, source)
    parent: dict = {}
    roles = set(ROLES)
    if f.extends:
        parent_base = Path(source).parent if looks_like_path(source) else None
        parent, _, roles = _chain(f.extends, chain + (source,), parent_base, source)
    roles = _check_rules(f, source, roles)
    merged = _merge(parent, f)
    if f.name is None:
        merged["name"] = Path(source).stem if looks_like_path(source) else ref
    merged["lineage"] = (parent["name"], *parent.get("lineage", ())) if f.extends else ()
    return merged, source, roles


def _resolve(ref: str, chain: tuple[str, ...], base: Path | None) -> Engine:
    rows, source, _ = _chain(ref, chain, base)
    for key in ("retention", "workspace"):
        if key not in rows:
            raise EngineError(f"{source}: {key}: missing (this field is required, here or in the engine it extends)")
    return Engine(file=source, **{k: (tuple(v) if isinstance(v, list) else v) for k, v in rows.items()})
