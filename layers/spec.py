"""Layer descriptors: what a user writes in a model YAML, validated.

One pydantic class per layer kind of METHOD 2.1. A descriptor holds only the
hyper-parameters; shapes are inferred in `layers.graph`.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PositiveInt


# A window size or stride: one int for both axes, or [rows, cols] (e.g.
# `kernel: [10, 4]`, `stride: [2, 1]`); `layers.graph` turns it into a pair.
def _check_pair(value):
    ok_int = lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0  # noqa: E731
    if ok_int(value):
        return value
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(map(ok_int, value)):
        return tuple(value)
    raise ValueError(f"expected a positive integer or [rows, cols] of positive integers, got {value!r}")


Pair = Annotated[Union[PositiveInt, tuple[PositiveInt, PositiveInt]], BeforeValidator(_check_pair)]


def pair(value: "int | tuple[int, int]") -> tuple[int, int]:
    """A Pair as (rows, cols)."""
    return (value, value) if isinstance(value, int) else (value[0], value[1])


class _Layer(BaseModel):
    # strict: `units: "10"`, `filters: true` or `binary: "no"` is a mistake in the file, not 10, 1 or False
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    name: str | None = None


# A full-precision dense/conv2d may add a learned bias per output (`bias: true`); a binary one may
# not: batchnorm follows it (layers.graph refuses the pair)
StrictBool = Annotated[bool, Field(strict=True)]


class Dense(_Layer):
    kind: Literal["dense"] = "dense"
    units: PositiveInt
    binary: bool = True
    bias: StrictBool = False


class Conv2D(_Layer):
    kind: Literal["conv2d"] = "conv2d"
    filters: PositiveInt
    kernel: Pair
    stride: Pair = 1
    padding: Literal["same", "valid"] = "valid"
    binary: bool = True
    # grouped convolution: input channels and filters split into `groups` independent convs
    # (depthwise: groups = input channels); layers.graph checks that both divide
    groups: Annotated[int, Field(gt=0, strict=True)] = 1  # strict: `groups: true` is not 1 group
    bias: StrictBool = False


class BatchNorm(_Layer):
    kind: Literal["batchnorm"] = "batchnorm"


class Sign(_Layer):
    kind: Literal["sign"] = "sign"


class ReLU(_Layer):
    kind: Literal["relu"] = "relu"


class PReLU(_Layer):
    """y = x where x > 0, else a_c x: one learnable slope a_c per channel (Bi-Real Net, ReActNet)."""
    kind: Literal["prelu"] = "prelu"
    shared: bool = False  # one slope for every channel (torch.nn.PReLU()'s default, num_parameters=1)


def _check_rate(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"expected a number with 0 <= rate < 1 (the fraction of values dropped), got {value!r}")
    return float(value)


class Dropout(_Layer):
    """Training-time inverted dropout: zero each value with probability `rate`, scale the rest by 1/(1-rate)."""
    kind: Literal["dropout"] = "dropout"
    rate: Annotated[float, BeforeValidator(_check_rate)]


class _Pool(_Layer):
    size: Pair = 2
    stride: Pair | None = None  # defaults to size
    padding: Literal["same", "valid"] = "valid"


class MaxPool(_Pool):
    kind: Literal["maxpool"] = "maxpool"


class AvgPool(_Pool):
    kind: Literal["avgpool"] = "avgpool"


class GlobalAvgPool(_Layer):
    kind: Literal["global_avgpool"] = "global_avgpool"


class Flatten(_Layer):
    kind: Literal["flatten"] = "flatten"


class SoftmaxCE(_Layer):
    kind: Literal["softmax_ce"] = "softmax_ce"


class Residual(_Layer):
    kind: Literal["residual"] = "residual"
    body: list["LayerSpec"] = Field(min_length=1)
    shortcut: list["LayerSpec"] = Field(default_factory=list)  # empty: identity


LayerSpec = Union[
    Dense, Conv2D, BatchNorm, Sign, ReLU, PReLU, Dropout, MaxPool, AvgPool, GlobalAvgPool,
    Flatten, SoftmaxCE, Residual,
]

LAYER_CLASSES: dict[str, type[_Layer]] = {
    "dense": Dense,
    "conv2d": Conv2D,
    "batchnorm": BatchNorm,
    "sign": Sign,
    "relu": ReLU,
    "prelu": PReLU,
    "dropout": Dropout,
    "maxpool": MaxPool,
    "avgpool": AvgPool,
    "global_avgpool": GlobalAvgPool,
    "flatten": Flatten,
    "softmax_ce": SoftmaxCE,
    "residual": Residual,
}

WEIGHTED_KINDS = ("dense", "conv2d")

Residual.model_rebuild()
