"""Walking an ONNX graph into a network of bnncost operations (`ENode`s).

Constants are folded with numpy as they are read, so a weight is judged by its values,
whatever chain made them: `Sign(W)`, the straight-through `W + (Sign(W) - W)`, Larq's
`Sign(Sign(W) + 0.1)`, `Where(W >= 0, 1, -1)`, or a folded sign(W) x per-channel scale
all give a weight whose magnitudes are equal within each output channel: binary.

On activations the sign idioms are recognised by structure (see onnx_values): `Sign`,
`x + (Sign(x) - x)` in any arrangement of Add/Sub/Identity (also with a clipped x),
`Where(x >= 0, 1, -1)` and `Sign(Sign(x) + c)` all become one `sign` node. A Conv, Gemm or
MatMul is binary when its weight is binary and its data input is binarised (a sign, possibly
through max-pool or a reshape) or is the data batch (the first layer). Axis labels follow
every Transpose, so channels-last (Keras/Larq via tf2onnx) graphs read the same as NCHW ones.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from bnncost.layers.importers.onnx_file import OnnxGraph
from bnncost.layers.importers.onnx_values import BATCH, Act, Cmp, ENode, Lin, NegPart, family
from bnncost.layers.model import ModelError
from bnncost.layers.spec import LAYER_CLASSES, Conv2D, Dense

# The magnitudes of a binary weight's entries in one output channel agree to float32 rounding
# of w + (sign(w) - w); anything farther apart is a real-valued weight.
_BINARY_RTOL = 1e-5
# At most one entry, or this fraction of a binary weight's entries, may be 0 (the sign of an
# exact-zero latent weight); a ternary weight {-c, 0, c} has a third or more.
_SIGN_ZEROS = 1e-3


def supports(kind: str, field_name: str | None = None) -> bool:
    """Whether bnncost's layer descriptors have this kind (and field): the importer maps what they model."""
    cls = LAYER_CLASSES.get(kind)
    return cls is not None and (field_name is None or field_name in cls.model_fields)


def _accepts_pair(cls: type, field_name: str) -> bool:
    try:
        cls(**{**_MINIMAL[cls], field_name: [2, 3]})
        return True
    except Exception:  # noqa: BLE001 - pydantic says no: the field takes one number only
        return False


_MINIMAL: dict[type, dict] = {Conv2D: {"filters": 1, "kernel": 1}, Dense: {"units": 1}}


class Interpreter:
    """Reads the nodes the output depends on, in order, and returns the output activation."""

    def __init__(self, g: OnnxGraph):
        self.g = g
        self.env: dict[str, Any] = {}
        self.node: Any = None
        from onnx import helper, numpy_helper
        self._attr_value = helper.get_attribute_value
        self._to_array = numpy_helper.to_array

    # ------------------------------------------------------------ plumbing

    def error(self, problem: str) -> ModelError:
        return self.g.error(self.node, problem)

    def unsupported(self) -> ModelError:
        if self.node.op_type in ("PartitionedCall", "StatefulPartitionedCall"):
            return self.error("a TensorFlow function call tf2onnx could not convert (Keras runs a grouped "
                              "Conv2D as an XLA function on CPU), not an ONNX op; export it with groups=1 or "
                              "as DepthwiseConv2D")
        domain = f" (domain {self.node.domain})" if self.node.domain not in ("", "ai.onnx") else ""
        return self.error(f"unsupported op{domain} on activations; bnncost models Conv, Gemm, MatMul, "
                          "BatchNormalization, the sign idioms, Relu, PRelu, pooling, Flatten/Reshape, Add joins and Softmax")

    @property
    def where(self) -> str:
        return self.g.labels[id(self.node)]

    @staticmethod
    def input_shape(g: OnnxGraph) -> list[int]:
        """bnncost's input: [features], or [H, W, C] whichever layout the ONNX input has."""
        dims = g.input_dims
        if len(dims) == 2:
            return [dims[1]]
        return [dims[1], dims[2], dims[3]] if _channels_last(g) else [dims[2], dims[3], dims[1]]

    def run(self) -> Act:
        needed = self._needed()
        dims = self.g.input_dims
        if len(dims) == 2:
            labels, sizes = ("N", "C"), {"C": dims[1]}
        elif _channels_last(self.g):
            labels, sizes = ("N", "H", "W", "C"), {"H": dims[1], "W": dims[2], "C": dims[3]}
        else:
            labels, sizes = ("N", "C", "H", "W"), {"C": dims[1], "H": dims[2], "W": dims[3]}
        source = ENode("input", (), f"input '{self.g.input_name}'")
        self.env[self.g.input_name] = Act(source, labels, sizes, flat=len(dims) == 2, data=True)
        for node in self.g.nodes:
            if id(node) not in needed:
                continue
            self.node = node
            handler: Callable | None = getattr(self, f"op_{node.op_type}", None)
            if node.domain not in ("", "ai.onnx") or (handler is None and node.op_type not in _CONST_OPS
                                                      and node.op_type != "Constant"):
                raise self.unsupported()
            attrs = {a.name: self._attr(a) for a in node.attribute}
            ins = [self.value(name) for name in node.input]
            folded = self._fold(node.op_type, ins, attrs)
            if folded is None and handler is None:
                raise self.unsupported()
            result = folded if folded is not None else handler(ins, attrs)
            results = result if isinstance(result, tuple) else (result,)
            for name, value in zip(node.output, results):
                if name and value is not None:
                    self.env[name] = value
        self.node = None
        out = self.env.get(self.g.output_name)
        if isinstance(out, np.ndarray) or out is None:
            raise ModelError(f"{self.g.source}: the graph output '{self.g.output_name}' does not depend on the input")
        return self.materialise(out)

    def _needed(self) -> set[int]:
        producer = {o: n for n in self.g.nodes for o in n.output if o}
        needed: set[int] = set()
        stack = [self.g.output_name]
        while stack:
            n = producer.get(stack.pop())
            if n is None or id(n) in needed:
                continue
            needed.add(id(n))
            stack.extend(i for i in n.input if i)
        return needed

    def _attr(self, a: Any) -> Any:
        v = self._attr_value(a)
        if isinstance(v, bytes):
            return v.decode()
        if hasattr(v, "dims") and hasattr(v, "data_type"):
            return self._to_array(v)
        return v

    def value(self, name: str) -> Any:
        if not name:
            return None
        if name in self.env:
            return self.env[name]
        if name in self.g.initializers:
            arr = self._to_array(self.g.initializers[name])
            if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
                raise self.error(f"initializer '{name}' holds non-finite values (NaN or inf): the weights are "
                                 "corrupted or were never trained")
            self.env[name] = arr
            return arr
        raise self.error(f"reads '{name}', an output bnncost does not model (a batchnorm's running "
                         "statistics, a pool's indices or a dropout mask)")

    def materialise(self, v: Any) -> Act:
        """The activation an op reads: pending sign idioms must have resolved to one tensor by now."""
        if isinstance(v, Act):
            return v
        if isinstance(v, Lin):
            single = v.single()
            if single is not None:
                return single
            raise ModelError(f"{self.g.source}: {v.where}: arithmetic on activations that is neither a sign "
                             "idiom (x + (Sign(x) - x)) nor a residual join (Add of two branches)")
        if isinstance(v, Cmp):
            raise ModelError(f"{self.g.source}: {v.where}: a comparison that is not part of Where(x >= 0, 1, -1)")
        if isinstance(v, NegPart):
            raise ModelError(f"{self.g.source}: {v.where}: relu(-x) that is not the negative half of a PReLU "
                             "(relu(x) - a * relu(-x))")
        raise self.error("expects an activation here, got a constant")

    def act(self, v: Any) -> Act:
        return self.materialise(v)

    def const(self, v: Any, what: str) -> np.ndarray:
        if not isinstance(v, np.ndarray):
            raise self.error(f"{what} must be a constant (an initializer or folded from one)")
        return v

    # ------------------------------------------------------------ constant folding

    def _fold(self, op: str, ins: list, attrs: dict) -> Any:
        present = [v for v in ins if v is not None]
        if op == "Constant":
            return self._constant(attrs)
        if op == "Shape" and present and isinstance(present[0], Act):
            a = present[0]
            shape = np.array([BATCH, *a.dims], dtype=object)
            return shape[attrs.get("start", 0): attrs.get("end", None)]
        if not present or not all(isinstance(v, np.ndarray) for v in present):
            return None
        fold = _CONST_OPS.get(op)
        if fold is None:
            raise self.error("unsupported op on constants")
        try:
            with np.errstate(all="ignore"):  # a corrupted weight overflows here: refused below, not warned
                out = fold(ins, attrs)
            out = out if isinstance(out, np.ndarray) else np.asarray(out)
        except (TypeError, ValueError, IndexError) as exc:
            raise self.error(f"cannot fold its constant inputs ({exc})") from None
        if out.dtype.kind in "fc" and not np.isfinite(out).all():
            raise self.error("folding its constant inputs gives non-finite values (NaN or inf): the weights are "
                             "corrupted or were never trained")
        return out

    def _constant(self, attrs: dict) -> np.ndarray:
        for key, dtype in (("value", None), ("value_float", np.float32), ("value_floats", np.float32),
                           ("value_int", np.int64), ("value_ints", np.int64)):
            if key in attrs:
                return np.asarray(attrs[key], dtype=dtype)
        raise self.error("a Constant without a numeric value")

    # ------------------------------------------------------------ layout and pass-through

    def op_Identity(self, ins, attrs):
        return ins[0]

    def op_Cast(self, ins, attrs):
        return self._pointwise([ins[0]]) if isinstance(ins[0], Cmp) else ins[0]

    op_CastLike = op_Cast

    def op_Dropout(self, ins, attrs):
        x = self.act(ins[0])
        if not supports("dropout"):
            raise self.error("dropout is not a bnncost layer yet")
        ratio = np.float32(attrs.get("ratio", 0.5))  # a float attribute is float32 in ONNX
        if len(ins) > 1 and ins[1] is not None:
            ratio = self.const(ins[1], "the dropout ratio").reshape(-1)[0]
        # the rate as written before export (0.2, not float32's 0.20000000298)
        ratio = float(ratio) if ratio.dtype == np.float64 else float(str(np.float32(ratio)))
        if not 0 <= ratio < 1:
            raise self.error(f"a dropout ratio of {ratio}; bnncost's dropout takes 0 <= rate < 1")
        node = ENode("dropout", (x.node,), self.where, {"rate": float(ratio)})
        return x.view(node, binarised=x.binarised)

    def op_Transpose(self, ins, attrs):
        x = self.act(ins[0])
        perm = list(attrs.get("perm", range(len(x.labels) - 1, -1, -1)))
        if perm[0] != 0:
            raise self.error(f"transposes the batch axis (perm {perm})")
        labels = tuple(x.labels[p] for p in perm)
        return Act(x.node, labels, dict(x.sizes), x.flat, x.binarised, x.data)

    def op_Flatten(self, ins, attrs):
        x = self.act(ins[0])
        if attrs.get("axis", 1) != 1:
            raise self.error(f"flattens from axis {attrs.get('axis')}; bnncost flattens everything but the batch")
        return self._flatten(x)

    def _flatten(self, x: Act) -> Act:
        total = math.prod(x.dims)
        if x.flat:
            return Act(x.node, ("N", "C"), {"C": total}, True, x.binarised, x.data)
        node = ENode("flatten", (x.node,), self.where)
        return Act(node, ("N", "C"), {"C": total}, True, x.binarised, x.data)

    def op_Reshape(self, ins, attrs):
        x = self.act(ins[0])
        target = list(self.const(ins[1], "the target shape").reshape(-1))
        dims = x.dims
        total = math.prod(dims)
        zero_copies = not attrs.get("allowzero", 0)
        out = [([BATCH, *dims][i] if zero_copies and isinstance(d, (int, np.integer)) and d == 0 else d)
               for i, d in enumerate(target)]
        batch = self.g.input_dims[0]
        head, rest = out[0], out[1:]
        if head is BATCH or (isinstance(batch, int) and head == batch):
            pass
        elif head == -1 and all(isinstance(d, (int, np.integer)) and d > 0 for d in rest) \
                and math.prod(rest) == total:
            pass
        else:
            raise self.error(f"reshape to {self._show(target)} does not keep the batch axis")
        if any(d is BATCH for d in rest):
            raise self.error(f"reshape to {self._show(target)} moves the batch axis")
        rest = [int(d) for d in rest]
        if rest.count(-1) == 1:
            known = math.prod(d for d in rest if d != -1)
            rest[rest.index(-1)] = total // known if known else 0
        if rest == [total]:
            return self._flatten(x)
        if rest == dims:
            return x
        if [d for d in rest if d != 1] == [d for d in dims if d != 1]:  # a transpose of size-1 axes (tf2onnx)
            return self._relabel(x, rest)
        raise self.error(f"reshape of {dims} to {rest} (per sample) is not a flatten; bnncost reshapes only "
                         "to [batch, features]")

    @staticmethod
    def _relabel(x: Act, rest: list[int]) -> Act:
        """The same tensor with its size-1 axes moved: the other axes keep their order and labels."""
        big = iter(a for a in x.labels[1:] if x.sizes[a] != 1)
        ones = iter(a for a in x.labels[1:] if x.sizes[a] == 1)
        labels = ("N", *(next(ones) if d == 1 else next(big) for d in rest))
        return Act(x.node, labels, dict(x.sizes), x.flat, x.binarised, x.data)

    @staticmethod
    def _show(target: list) -> str:
        return "[" + ", ".join(str(d) for d in target) + "]"

    def _axes_of(self, ins: list, attrs: dict) -> list[int] | None:
        """Reduce/Squeeze axes: an attribute before opset 13/18, an input after."""
        if len(ins) > 1 and ins[1] is not None:
            return self.const(ins[1], "the axes").reshape(-1).tolist()
        return attrs.get("axes")

    def op_Squeeze(self, ins, attrs):
        x = self.act(ins[0])
        axes = self._axes_of(ins, attrs)
        rank = len(x.labels)
        axes = sorted(a % rank for a in axes) if axes is not None else \
            [i for i, a in enumerate(x.labels) if i and x.sizes[a] == 1]
        labels = {x.labels[a] for a in axes}
        if x.flat and labels <= {"H", "W"}:
            return Act(x.node, ("N", "C"), {"C": x.sizes["C"]}, True, x.binarised, x.data)
        raise self.error(f"squeezes axes {axes} of a {x.dims} tensor; only the 1x1 axes after a global pool")

    # ------------------------------------------------------------ signs and arithmetic

    def op_Sign(self, ins, attrs):
        v = ins[0]
        if isinstance(v, Lin):
            signs = [n for n in v.terms if n.kind == "sign"]
            if len(signs) == 1 and len(v.terms) == 1 and abs(v.offset) < v.terms[signs[0]]:
                return v.views[signs[0]]  # Larq: sign(sign(x) + 0.1)
        return self._sign(self.act(v))

    def _sign(self, x: Act) -> Act:
        if x.node.kind == "sign":
            return x
        return x.view(ENode("sign", (x.node,), self.where), binarised=True)

    def op_Neg(self, ins, attrs):
        return self._combine(Lin.of(0.0, self.where), ins[0], -1.0)

    def op_Add(self, ins, attrs):
        return self._combine(ins[0], ins[1], 1.0)

    def op_Sub(self, ins, attrs):
        return self._combine(ins[0], ins[1], -1.0)

    def _combine(self, a: Any, b: Any, scale: float):
        """a + scale * b where at least one side is an activation."""
        if isinstance(a, NegPart) or isinstance(b, NegPart):
            return self._prelu_halves(a, b, scale)
        for act_side, const_side in ((a, b), (b, a)):
            if isinstance(const_side, np.ndarray) and const_side.size > 1 and isinstance(act_side, (Act, Lin)):
                if act_side is b and scale < 0:
                    raise self.error("subtracts an activation from a constant")
                x = self.act(act_side)
                self._per_channel(x, const_side, "the added constant")
                return x.view(ENode("shift", (x.node,), self.where))
        a, b = (self._pointwise([v]) if isinstance(v, Cmp) else v for v in (a, b))
        la, lb = (v if isinstance(v, Lin) else Lin.of(self._scalar_or_act(v), self.where) for v in (a, b))
        joined = la.plus(lb, scale, self.where)
        if len(joined.families()) <= 1:
            return joined.single() or joined
        if scale > 0 and isinstance(a, (Act, Lin)) and isinstance(b, (Act, Lin)):
            return self._join(self.act(a), self.act(b))
        raise self.error("arithmetic on activations that is neither a sign idiom nor a residual join")

    def _scalar_or_act(self, v: Any) -> Any:
        return float(v.reshape(-1)[0]) if isinstance(v, np.ndarray) else v

    def _pointwise(self, operands: list) -> Act:
        """A pointwise function of one activation x (x * x, a comparison as 0/1, c * x): it may only
        cancel inside a straight-through estimator; materialised, the layer builder refuses it."""
        views = []
        for v in operands:
            if isinstance(v, Act):
                views.append(v)
            elif isinstance(v, Lin):
                views.extend(v.views.values())
            elif isinstance(v, Cmp):
                views.append(v.act)
        families = {id(family(v.node)): v for v in views}
        if len(families) != 1:
            raise self.error("elementwise arithmetic that mixes activations (neither a sign idiom nor a residual join)")
        x = next(iter(families.values()))
        return x.view(ENode("pointwise", (family(x.node),), self.where))

    def _join(self, a: Act, b: Act) -> Act:
        if a.shape != b.shape:
            raise self.error(f"adds two branches of different shapes {list(a.shape)} and {list(b.shape)}")
        return a.view(ENode("add", (a.node, b.node), self.where))

    def op_Mul(self, ins, attrs):
        a, b = ins
        if isinstance(a, np.ndarray):
            a, b = b, a
        if isinstance(a, NegPart) and isinstance(b, np.ndarray) and self.node.op_type == "Mul":
            self._per_channel(a.act, b, "the factor")
            return NegPart(a.act, a.factor * b, self.where)
        if not isinstance(b, np.ndarray) or b.size == 1 or not isinstance(a, Act):
            return self._pointwise([a, b])  # x * x, c * x, mask * x: only inside a sign idiom
        self._per_channel(a, b, "the factor")
        return a.view(ENode("scale", (a.node,), self.where))

    op_Div = op_Mul

    def op_Abs(self, ins, attrs):
        return self._pointwise(ins)

    op_Pow = op_Abs

    def _per_channel(self, x: Act, c: np.ndarray, what: str) -> None:
        if c.size == 1:
            return
        rank = len(x.labels)
        if c.ndim > rank:
            raise self.error(f"{what} has more axes than the activation")
        padded = (1,) * (rank - c.ndim) + tuple(c.shape)
        axes = [i for i, s in enumerate(padded) if s != 1]
        if len(axes) == 1 and x.labels[axes[0]] == "C" and padded[axes[0]] == x.sizes["C"]:
            return
        raise self.error(f"{what} of shape {list(c.shape)} is not one number per channel of a {x.dims} tensor")

    def _compare(self, ins, op: str, flipped: str):
        a, b = ins
        if isinstance(a, np.ndarray) and not isinstance(b, np.ndarray):
            a, b, op = b, a, flipped
        if not isinstance(b, np.ndarray) or b.size != 1:
            raise self.error("a comparison of an activation with something other than a number")
        return Cmp(self.act(a), op, self.where, float(b.reshape(-1)[0]))

    def op_GreaterOrEqual(self, ins, attrs):
        return self._compare(ins, "ge", "le")

    def op_Greater(self, ins, attrs):
        return self._compare(ins, "gt", "lt")

    def op_LessOrEqual(self, ins, attrs):
        return self._compare(ins, "le", "ge")

    def op_Less(self, ins, attrs):
        return self._compare(ins, "lt", "gt")

    def op_Where(self, ins, attrs):
        cond, hi, lo = ins
        uniform = [isinstance(v, np.ndarray) and v.size > 0 and (v == v.reshape(-1)[0]).all() for v in (hi, lo)]
        if isinstance(cond, Cmp) and all(uniform) and cond.threshold == 0.0:
            hi, lo = float(hi.reshape(-1)[0]), float(lo.reshape(-1)[0])
            if cond.op in ("le", "lt"):
                hi, lo = lo, hi
            if hi > 0 > lo:
                return self._sign(cond.act)
        if isinstance(cond, Cmp):
            return self._pointwise([cond, hi, lo])  # a piecewise function of x (Bi-Real's approximation)
        raise self.error("a Where that is not the sign idiom Where(x >= 0, 1, -1)")

    def op_Clip(self, ins, attrs):
        x = self.act(ins[0])
        return x.view(ENode("clip", (x.node,), self.where))

    # ------------------------------------------------------------ layers

    def op_Pad(self, ins, attrs):
        """Explicit padding (Larq's pad_values=1, Keras ZeroPadding2D): folded into the conv or pool after it."""
        x = self.act(ins[0])
        if attrs.get("mode", "constant") != "constant":
            raise self.error(f"{attrs['mode']} padding is not modelled")
        pads = attrs.get("pads")
        if len(ins) > 1 and ins[1] is not None:
            pads = self.const(ins[1], "the pads").reshape(-1).tolist()
        rank = len(x.labels)
        if len(ins) > 3 and ins[3] is not None:  # opset 18: pads for these axes only
            axes = [a % rank for a in self.const(ins[3], "the axes").reshape(-1).tolist()]
            full = [0] * (2 * rank)
            for i, a in enumerate(axes):
                full[a], full[rank + a] = pads[i], pads[len(axes) + i]
            pads = full
        per = {x.labels[a]: (int(pads[a]), int(pads[rank + a])) for a in range(rank)}
        if x.flat or any(per.get(a, (0, 0)) != (0, 0) for a in ("N", "C")) or min(pads) < 0:
            raise self.error(f"pads {pads} pad more than height and width")
        h, w = per.get("H", (0, 0)), per.get("W", (0, 0))
        sizes = {"C": x.sizes["C"], "H": x.sizes["H"] + sum(h), "W": x.sizes["W"] + sum(w)}
        node = ENode("pad", (x.node,), self.where, {"pads": (h[0], w[0], h[1], w[1])})
        return x.view(node, sizes=sizes, binarised=x.binarised, data=x.data)

    def _unpad(self, x: Act) -> tuple[Act, tuple[int, int, int, int]]:
        """The tensor before an explicit Pad, and its pads (top, left, bottom, right); or x and zeros."""
        if x.node.kind != "pad":
            return x, (0, 0, 0, 0)
        t, l, b, r = x.node.fields["pads"]
        sizes = {"C": x.sizes["C"], "H": x.sizes["H"] - t - b, "W": x.sizes["W"] - l - r}
        return Act(x.node.inputs[0], x.labels, sizes, x.flat, x.binarised, x.data), (t, l, b, r)

    def op_Relu(self, ins, attrs):
        v = ins[0]
        if isinstance(v, Lin) and len(v.terms) == 1 and v.offset == 0.0 and -1.0 in v.terms.values():
            return NegPart(next(iter(v.views.values())), 1.0, self.where)  # relu(-x): half of a written-out PReLU
        x = self.act(v)
        return x.view(ENode("relu", (x.node,), self.where))

    def _prelu_halves(self, a: Any, b: Any, scale: float) -> Act:
        """relu(x) + scale * f * relu(-x) (Keras' PReLU through tf2onnx) is PReLU(x) with slope -scale * f."""
        relu, neg = (a, b) if isinstance(b, NegPart) else (b, a)
        if scale < 0 and neg is a:
            raise self.error("subtracts relu(x) from a multiple of relu(-x)")
        if not (isinstance(relu, Act) and isinstance(neg, NegPart) and relu.node.kind == "relu"
                and relu.node.inputs[0] is neg.act.node):
            raise self.error("adds relu(-x) to something other than relu(x): not a PReLU")
        return self._prelu(neg.act, -scale * np.asarray(neg.factor, dtype=np.float64))

    def op_PRelu(self, ins, attrs):
        return self._prelu(self.act(ins[0]), self.const(ins[1], "the PReLU slope"))

    def _prelu(self, x: Act, slope: np.ndarray) -> Act:
        if not supports("prelu"):
            raise self.error("PReLU is not a bnncost layer yet")
        self._per_channel(x, slope, "the PReLU slope")
        shared = slope.size == 1 and x.sizes["C"] > 1  # torch.nn.PReLU()'s default: one slope in all
        return x.view(ENode("prelu", (x.node,), self.where, {"shared": True} if shared else {}))

    def op_Softmax(self, ins, attrs):
        x = self.act(ins[0])
        if not x.flat:
            raise self.error(f"softmax over a {x.dims} tensor; bnncost's loss reads class scores [batch, classes]")
        return x.view(ENode("softmax", (x.node,), self.where))

    op_LogSoftmax = op_Softmax

    def op_BatchNormalization(self, ins, attrs):
        x = self.act(ins[0])
        if len(x.labels) < 2 or x.labels[1] != "C":
            raise self.error("normalises an axis that is not the channels")
        scale = self.const(ins[1], "the batchnorm scale")
        if scale.size != x.sizes["C"]:
            raise self.error(f"has {scale.size} scales for {x.sizes['C']} channels")
        return x.view(ENode("batchnorm", (x.node,), self.where))

    def _weight_binary(self, w: np.ndarray, out_axis: int) -> bool:
        """Every output channel's weights are +-c (one magnitude per channel). A rare zero is
        sign(0) of a latent weight that is exactly zero (one in 2^24 of torch's uniform_ init:
        about one in a 512x512x3x3 kernel)."""
        rows = np.moveaxis(np.asarray(w, dtype=np.float64), out_axis, 0).reshape(w.shape[out_axis], -1)
        if rows.shape[1] < 2:
            return False  # one weight per channel says nothing
        mag = np.abs(rows)
        top = mag.max(axis=1, keepdims=True)
        zero = mag == 0
        if not (top > 0).all() or zero.sum() > max(1.0, _SIGN_ZEROS * mag.size):
            return False
        return bool((zero | (np.abs(mag - top) <= _BINARY_RTOL * top)).all())

    def _bias(self, bias: Any) -> np.ndarray | None:
        """A layer's bias, or None when it has none or it is all zeros (dynamo writes zeros for bias=False)."""
        if bias is None:
            return None
        bias = self.const(bias, "the bias")
        return None if not bias.any() else bias

    def _dense(self, x: Act, w: np.ndarray, bias: Any) -> Act:
        """x [batch, K] times w [K, N]."""
        if not x.flat:
            raise self.error(f"a matrix product on a {x.dims} tensor; flatten it first")
        if w.ndim != 2 or w.shape[0] != x.sizes["C"]:
            raise self.error(f"weight {list(w.shape)} does not fit an input of {x.sizes['C']} features")
        bias = self._bias(bias)
        binary = self._weight_binary(w, 1) and (x.binarised or x.data)
        fields = {"units": int(w.shape[1])} | ({} if binary else {"binary": False})
        node = ENode("dense", (x.node,), self.where, fields, bias=bias is not None)
        return Act(node, ("N", "C"), {"C": int(w.shape[1])}, True)

    def op_Gemm(self, ins, attrs):
        x = self.act(ins[0])
        if attrs.get("transA", 0):
            raise self.error("transposes its data input (transA=1)")
        w = self.const(ins[1], "the weight")
        if w.ndim == 2 and attrs.get("transB", 0):
            w = w.T
        return self._dense(x, w, ins[2] if len(ins) > 2 else None)

    def op_MatMul(self, ins, attrs):
        if not isinstance(ins[1], np.ndarray):
            raise self.error("multiplies two activations, or a constant by an activation")
        return self._dense(self.act(ins[0]), ins[1], None)

    def op_Conv(self, ins, attrs):
        x, extra = self._unpad(self.act(ins[0]))
        w = self.const(ins[1], "the weight")
        bias = self._bias(ins[2] if len(ins) > 2 else None)
        if w.ndim != 4:
            raise self.error(f"a {w.ndim - 2}-D convolution; bnncost models 2-D ones")
        if x.labels != ("N", "C", "H", "W"):
            raise self.error(f"convolves a tensor laid out {''.join(x.labels)}, not NCHW")
        groups = int(attrs.get("group", 1))
        if w.shape[1] * groups != x.sizes["C"]:
            raise self.error(f"weight {list(w.shape)} with group={groups} does not fit {x.sizes['C']} channels")
        if x.flat and w.shape[2:] == (1, 1) and groups == 1:  # a 1x1 conv on a pooled vector is a dense
            return self._dense(x, w.reshape(w.shape[0], -1).T, bias)
        if any(d != 1 for d in attrs.get("dilations", [1, 1])):
            raise self.error(f"dilated convolution (dilations {list(attrs['dilations'])}) is not modelled")
        kernel = tuple(int(k) for k in w.shape[2:])
        strides = self._strides(attrs)
        padding, ho, wo = self._window(x, kernel, strides, attrs, extra=extra)
        fields: dict = {"filters": int(w.shape[0]), "kernel": self._pair(kernel, Conv2D, "kernel", "kernel")}
        if strides != (1, 1):
            fields["stride"] = self._pair(strides, Conv2D, "stride", "stride")
        if padding == "same":
            fields["padding"] = "same"
        if groups != 1:
            if not supports("conv2d", "groups"):
                raise self.error(f"grouped convolution (group={groups}) is not a bnncost layer yet")
            fields["groups"] = groups
        binary = self._weight_binary(w, 0) and (x.binarised or x.data)
        if not binary:
            fields["binary"] = False
        node = ENode("conv2d", (x.node,), self.where, fields, bias=bias is not None)
        return Act(node, ("N", "C", "H", "W"), {"C": int(w.shape[0]), "H": ho, "W": wo}, False)

    def _pair(self, pair: tuple[int, int], cls: type, field_name: str, what: str) -> Any:
        if pair[0] == pair[1]:
            return pair[0]
        if not _accepts_pair(cls, field_name):
            raise self.error(f"non-square {what} {list(pair)} is not a bnncost layer yet")
        return list(pair)

    def _strides(self, attrs: dict) -> tuple[int, ...]:
        strides = tuple(int(s) for s in attrs.get("strides", [1, 1]))
        if any(s < 1 for s in strides):
            raise self.error(f"strides {list(strides)}: a stride must be a positive integer")
        return strides

    def _window(self, x: Act, kernel: tuple, strides: tuple, attrs: dict, ceil: bool = False,
                extra: tuple = (0, 0, 0, 0)):
        """('same' | 'valid', Ho, Wo) of a conv or pool window (with any explicit Pad before it in
        `extra`); other paddings are refused."""
        h, w = x.sizes["H"], x.sizes["W"]
        auto = attrs.get("auto_pad", "NOTSET")
        same = (-(-h // strides[0]), -(-w // strides[1]))
        if auto in ("SAME_UPPER", "SAME_LOWER") and not any(extra):
            return "same", *same
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            raise self.error("SAME auto-padding after an explicit Pad is not modelled")
        pads = [0, 0, 0, 0] if auto == "VALID" else list(attrs.get("pads", [0, 0, 0, 0]))
        pads = [p + e for p, e in zip(pads, extra)]
        top, left, bottom, right = pads
        rounding = math.ceil if ceil else math.floor
        out = (rounding((h + top + bottom - kernel[0]) / strides[0]) + 1,
               rounding((w + left + right - kernel[1]) / strides[1]) + 1)
        valid = ((h - kernel[0]) // strides[0] + 1, (w - kernel[1]) // strides[1] + 1)
        if not any(pads) and out == valid and min(valid) > 0:
            return "valid", *out
        if any(pads) and out == same:
            return "same", *out
        raise self.error(f"padding {pads} (output {list(out)}) is neither 'same' nor 'valid' for a "
                         f"{list(kernel)} window with stride {list(strides)} on {h}x{w}")

    def _pool(self, ins, attrs, kind: str) -> Act:
        x, extra = self._unpad(self.act(ins[0]))
        if x.labels != ("N", "C", "H", "W") or x.flat:
            raise self.error(f"pools a tensor laid out {''.join(x.labels)}, not NCHW")
        kernel = tuple(int(k) for k in attrs["kernel_shape"])
        strides = self._strides(attrs)
        if any(d != 1 for d in attrs.get("dilations", [1, 1])):
            raise self.error("dilated pooling is not modelled")
        if kernel[0] != kernel[1] or strides[0] != strides[1]:
            raise self.error(f"non-square pooling (kernel {list(kernel)}, stride {list(strides)}) is not modelled")
        padding, ho, wo = self._window(x, kernel, strides, attrs, ceil=bool(attrs.get("ceil_mode", 0)), extra=extra)
        fields: dict = {"size": kernel[0]}
        if strides[0] != kernel[0]:
            fields["stride"] = strides[0]
        if padding == "same":
            fields["padding"] = "same"
        node = ENode(kind, (x.node,), self.where, fields)
        binarised = x.binarised and kind == "maxpool"  # the max of +-1 values is +-1
        return x.view(node, sizes={"C": x.sizes["C"], "H": ho, "W": wo}, binarised=binarised)

    def op_MaxPool(self, ins, attrs):
        if len(self.node.output) > 1 and self.node.output[1] in self.g.consumers:
            raise self.error("its indices output is used; bnncost's max-pool keeps only a mask")
        return self._pool(ins, attrs, "maxpool")

    def op_AveragePool(self, ins, attrs):
        return self._pool(ins, attrs, "avgpool")

    def _global_pool(self, x: Act, keep: bool) -> Act:
        node = ENode("global_avgpool", (x.node,), self.where)
        if keep:
            return x.view(node, sizes={"C": x.sizes["C"], "H": 1, "W": 1}, flat=True)
        return Act(node, ("N", "C"), {"C": x.sizes["C"]}, True)

    def op_GlobalAveragePool(self, ins, attrs):
        x = self.act(ins[0])
        if x.labels != ("N", "C", "H", "W") or x.flat:
            raise self.error(f"pools a tensor laid out {''.join(x.labels)}, not NCHW")
        return self._global_pool(x, keep=True)

    def op_ReduceMean(self, ins, attrs):
        x = self.act(ins[0])
        axes = self._axes_of(ins, attrs)
        rank = len(x.labels)
        reduced = {x.labels[a % rank] for a in axes} if axes else set(x.labels)
        if x.flat or reduced != {"H", "W"}:
            raise self.error(f"a mean over axes {sorted(reduced)}; bnncost pools over height and width only")
        if attrs.get("keepdims", 1):
            return self._global_pool(x, keep=True) if x.labels == ("N", "C", "H", "W") else \
                Act(ENode("global_avgpool", (x.node,), self.where), x.labels,
                    {"C": x.sizes["C"], "H": 1, "W": 1}, True)
        return self._global_pool(x, keep=False)


def _reshape(ins: list, attrs: dict) -> np.ndarray:
    data, shape = ins[0], [int(d) for d in ins[1].reshape(-1)]
    if not attrs.get("allowzero", 0):
        shape = [data.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return data.reshape(shape)


def _slice(ins: list, attrs: dict) -> np.ndarray:
    data = ins[0]
    if len(ins) > 1:
        starts, ends = ins[1].reshape(-1).tolist(), ins[2].reshape(-1).tolist()
        axes = ins[3].reshape(-1).tolist() if len(ins) > 3 and ins[3] is not None else list(range(len(starts)))
        steps = ins[4].reshape(-1).tolist() if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
    else:
        starts, ends = attrs["starts"], attrs["ends"]
        axes = attrs.get("axes", list(range(len(starts))))
        steps = [1] * len(starts)
    index = [slice(None)] * data.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        index[a] = slice(s, e, st)
    return data[tuple(index)]


def _axes(ins: list, attrs: dict) -> list[int] | None:
    if len(ins) > 1 and ins[1] is not None:
        return [int(a) for a in ins[1].reshape(-1)]
    return attrs.get("axes")


def _unsqueeze(ins: list, attrs: dict) -> np.ndarray:
    out = ins[0]
    for a in sorted(a % (out.ndim + len(_axes(ins, attrs))) for a in _axes(ins, attrs)):
        out = np.expand_dims(out, a)
    return out


def _squeeze(ins: list, attrs: dict) -> np.ndarray:
    axes = _axes(ins, attrs)
    return np.squeeze(ins[0], axis=None if axes is None else tuple(axes))


def _batch_as_one(shape: np.ndarray) -> list[int]:
    return [1 if d is BATCH else int(d) for d in shape.reshape(-1)]


def _binary(fn: Callable) -> Callable:
    return lambda ins, attrs: fn(ins[0], ins[1])


_CONST_OPS: dict[str, Callable[[list, dict], np.ndarray]] = {
    "Identity": lambda ins, a: ins[0],
    "Cast": lambda ins, a: ins[0],
    "CastLike": lambda ins, a: ins[0].astype(ins[1].dtype) if ins[0].dtype != object else ins[0],
    "Sign": lambda ins, a: np.sign(ins[0]),
    "Neg": lambda ins, a: -ins[0],
    "Abs": lambda ins, a: np.abs(ins[0]),
    "Sqrt": lambda ins, a: np.sqrt(ins[0]),
    "Reciprocal": lambda ins, a: 1.0 / ins[0],
    "Add": _binary(np.add),
    "Sub": _binary(np.subtract),
    "Mul": _binary(np.multiply),
    "Div": _binary(lambda x, y: x // y if x.dtype.kind in "iu" and y.dtype.kind in "iu" else x / y),
    "Pow": _binary(np.power),
    "Greater": _binary(np.greater),
    "GreaterOrEqual": _binary(np.greater_equal),
    "Less": _binary(np.less),
    "LessOrEqual": _binary(np.less_equal),
    "Equal": _binary(np.equal),
    "Where": lambda ins, a: np.where(ins[0], ins[1], ins[2]),
    "Clip": lambda ins, a: np.clip(ins[0], ins[1] if len(ins) > 1 and ins[1] is not None else a.get("min"),
                                   ins[2] if len(ins) > 2 and ins[2] is not None else a.get("max")),
    "Transpose": lambda ins, a: np.transpose(ins[0], a.get("perm")),
    "Reshape": _reshape,
    "Flatten": lambda ins, a: ins[0].reshape(int(np.prod(ins[0].shape[: a.get("axis", 1)])), -1),
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Concat": lambda ins, a: np.concatenate([np.atleast_1d(v) for v in ins], axis=a.get("axis", 0)),
    "Gather": lambda ins, a: np.take(ins[0], ins[1], axis=a.get("axis", 0)),
    "Slice": _slice,
    "Shape": lambda ins, a: np.array(ins[0].shape, dtype=np.int64)[a.get("start", 0): a.get("end", None)],
    # A constant the size of an activation (ones_like(x)) keeps a batch axis of 1: its values are
    # uniform, so broadcasting over the batch is the same thing.
    "ConstantOfShape": lambda ins, a: np.full(_batch_as_one(ins[0]),
                                              a["value"].reshape(-1)[0] if "value" in a else 0.0),
    "Expand": lambda ins, a: ins[0] * np.ones(_batch_as_one(ins[1]), dtype=ins[0].dtype),
    "Size": lambda ins, a: np.array(ins[0].size, dtype=np.int64),
}


def _channels_last(g: OnnxGraph) -> bool:
    """A 4-D input is channels-last when it is first transposed by perm [0, 3, 1, 2] (tf2onnx)."""
    name = g.input_name
    for _ in range(8):
        users = g.consumers.get(name, [])
        if len(users) != 1:
            return False
        user = users[0]
        if user.op_type in ("Identity", "Cast"):
            name = user.output[0]
            continue
        if user.op_type == "Transpose":
            perm = [list(a.ints) for a in user.attribute if a.name == "perm"]
            return bool(perm) and perm[0] == [0, 3, 1, 2]
        if user.op_type == "Reshape" and len(user.input) > 1 and user.input[1] in g.initializers:
            from onnx import numpy_helper  # a one-channel NHWC input is made NCHW by a Reshape
            target = numpy_helper.to_array(g.initializers[user.input[1]]).reshape(-1).tolist()
            d = g.input_dims
            return d[3] == 1 and d[1] != 1 and target[1:] == [1, d[1], d[2]]
        return False
    return False
