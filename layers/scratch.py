"""Scratch (workspace) each operator needs while it runs, in chunks (METHOD 4.1).

An operator that needs scratch processes its work in rows; the scratch holds
a whole number of rows. (An implementation may use the same bytes as rows of a
narrower block, e.g. the columns of one block of weight rows: the bytes held
are what the rule fixes.) With a budget, it holds the largest number of rows
that fits (at least one, never more than all of them); with budget 0 there is
no scratch at all (an in-place implementation). The sizing rule is in
`rows_held`; this module says which operators need what:

dense / conv2d, with K inputs per output, N outputs, P output positions:
- forward, binary input: `xnor`, one row per output position holding the
  XNOR of its packed input patch with every packed filter (N x K bits), plus
  `packed_weight`, the filters' signs packed (one chunk: N x K bits, small);
- forward, real input (the first layer, or a full-precision layer): a conv
  lowers its input, `lowered_input` (one row = K values in the input's
  format); a binary layer also expands its weights' signs to the input's
  format, `sign_weight`, one row per input (N values: K rows in all);
- backward, dW: `dw_operand`, the layer's saved input expanded to real values
  in the gradient format, one row per output position (K values); when dW is
  stored as its sign, the real dW is accumulated block by block of its rows in
  `dw_accum` (one row = N values, K rows in all) before its sign is taken;
- backward, dX (when the input needs a gradient): a binary layer expands its
  weights' signs to the gradient format, `weight_signs`, one row per input
  (N values, K rows in all); a conv computes the column gradient, `col_grad`
  (one row = K values), before folding it back onto the input;
- a grouped conv (G groups, K = kh*kw*Cin/G, N/G filters a group) runs the
  above once per group, reusing the same buffers: rows of K values, xnor rows
  of N/G filters, weight rows of N/G values (K of them); `packed_weight` packs
  all N filters (each over its group's K) once;
- batchnorm, sign, relu, maxpool, dropout backward (the last four only when
  their input needs a gradient), when what they saved is packed
  bits: `unpacked`, one row of the saved tensor (C values) in the gradient
  format.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bnncost.layers.graph import Graph, Node, Shape


@dataclass(frozen=True)
class Scratch:
    name: str
    layer: str
    event: str
    rows_per_sample: int  # rows = rows_per_sample x B + fixed_rows
    row_shape: Shape  # elements of one row
    operand_role: str | None  # its format is this role's format ...
    fixed_format: str | None = None  # ... or this one
    only_if_packed: str | None = None  # exists only when this role's format is bool
    fixed_rows: int = 0  # rows that do not scale with the batch (weight rows)


# Budget 0 models an in-place engine with no scratch; numpy still needs working rows, so the bundled trainer
# then holds each scratch buffer untracked at this small size.
UNTRACKED_WORKSPACE = 4096
TILE_BYTES = 1 << 16  # all float32 temporaries of one tiled product together (4 blocks of TILE_BYTES / 4)


def product_tiles(m: int, k: int, n: int) -> tuple[int, int, int]:
    """(rows, cols, inner) of the float32 tiles a product (m, k) x (k, n) is cut into (trainer.kernels.matmul).

    The four temporaries (a block of each operand, a result tile, the product added to it) hold at most
    TILE_BYTES together: result tiles as wide as possible, square-ish when both sides are long (few,
    large products, not thin slivers), the inner dimension cut into blocks summed in float32.
    """
    per = TILE_BYTES // 16  # floats per temporary
    side = max(1, math.isqrt(per))
    cols = min(n, side if m > side else per // max(1, m))
    rows = max(1, min(m, per // cols))
    inner = max(1, min(k, per // max(rows, cols)))
    return rows, cols, inner


def product_calls(m: int, k: int, n: int, direct: bool) -> int:
    """numpy products one (m, k) x (k, n) product takes: one when it runs whole (float32 operands and
    result, nothing to add to), else one per tile (product_tiles)."""
    if m <= 0 or n <= 0:
        return 0
    if direct:
        return 1
    rows, cols, inner = product_tiles(m, k, n)
    return -(-m // rows) * -(-n // cols) * -(-k // inner)


def rows_held(total_rows: int, row_bytes: int, budget: int) -> int:
    """Rows of scratch an operator holds under a budget: as many as fit, at least 1, at most all."""
    if budget <= 0 or total_rows <= 0:
        return 0
    return min(total_rows, max(1, budget // row_bytes)) if row_bytes > 0 else total_rows


def scratch_needs(graph: Graph) -> list[Scratch]:
    out: list[Scratch] = []
    for node in graph.nodes:
        out.extend(_node_scratch(graph, node))
    return out


def _node_scratch(graph: Graph, node: Node) -> list[Scratch]:
    fwd, bwd = f"forward:{node.name}", f"backward:{node.name}"
    n = node.name
    if node.kind in ("dense", "conv2d"):
        conv = node.kind == "conv2d"
        K, P = node.fan_in, node.positions
        N = node.group_units  # a grouped conv works group after group: rows of one group's filters
        patch = (node.weight_shape[0], node.weight_shape[1], node.group_channels) if conv else (K,)
        in_role = "input" if node.first else ("binary_input" if node.binary else "real_input")
        s: list[Scratch] = []
        if node.binary and not node.first:
            s.append(Scratch(f"{n}.xnor", n, fwd, P, (N, *patch), None, "bool"))
            s.append(Scratch(f"{n}.packed_weight", n, fwd, 0, (node.units, *patch), None, "bool", fixed_rows=1))
        else:
            if conv:
                s.append(Scratch(f"{n}.lowered_input", n, fwd, P, (K,), in_role))
            if node.binary:
                s.append(Scratch(f"{n}.sign_weight", n, fwd, 0, (N,), in_role, fixed_rows=K))
        s.append(Scratch(f"{n}.dw_operand", n, bwd, P, (K,), "activation_grad"))
        s.append(Scratch(f"{n}.dw_accum", n, bwd, 0, (N,), "activation_grad", fixed_rows=K,
                         only_if_packed="weight_grad"))
        if graph.tensors[node.inputs[0]].requires_grad:
            if node.binary:
                s.append(Scratch(f"{n}.weight_signs", n, bwd, 0, (N,), "activation_grad", fixed_rows=K))
            if conv:
                s.append(Scratch(f"{n}.col_grad", n, bwd, P, (K,), "activation_grad"))
        return s
    saved_role = {"batchnorm": "norm_output", "sign": "activation_mask", "relu": "activation_mask",
                  "maxpool": "pool_mask", "dropout": "dropout_mask"}.get(node.kind)
    if saved_role is None or (node.kind != "batchnorm" and not graph.tensors[node.inputs[0]].requires_grad):
        return []  # a gate or pool on the data batch has no backward (batchnorm still computes its dW)
    shape = node.in_shape
    rows = 1
    for d in shape[:-1]:
        rows *= d
    return [Scratch(f"{n}.unpacked", n, bwd, rows, (shape[-1],), "activation_grad", only_if_packed=saved_role)]
