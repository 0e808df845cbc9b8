"""The per-layer view users know from Larq's `summary()` and torchinfo (`bnncost summary`).

One row per layer (a residual's join is a row of kind `add`): its output shape, whether it is binary,
its parameters split into 1-bit (binary kernels) and real (full-precision kernels, batchnorm), the
bytes those parameters take at the strategy's formats while training, its forward bit-MACs (binary x
binary) or MACs (a real operand: a full-precision layer, or the first layer's real x binary products,
which ops.py counts as additions),
the bytes it keeps for its backward pass, its operation count per phase, and with a device its energy
and time per step. Totals at the end.

Parameter bytes are what training holds (latent weights, batchnorm parameters and prelu slopes in their formats;
under `bop` a binary kernel is held as bits), not an inference model's size.
"""

from __future__ import annotations

from pydantic import BaseModel

from bnncost.costmodel.energy import EnergyModel
from bnncost.costmodel.engine import as_engine
from bnncost.costmodel.memory import memory_plan
from bnncost.costmodel.ops import INFORMATIONAL, PHASES, count_ops, count_traffic
from bnncost.costmodel.prediction import check_batch, implementation_knobs
from bnncost.costmodel.results import Presentable
from bnncost.costmodel.strategy import as_strategy
from bnncost.layers.graph import graph_of

SUMMARY_SCHEMA = "bnncost.summary/1"
# what a layer keeps from its forward pass for its backward pass (METHOD 3.2)
SAVED_ROLES = ("input", "binary_input", "real_input", "norm_output", "activation_mask", "pool_mask",
               "softmax_output")


class LayerRow(BaseModel):
    layer: str
    kind: str
    output_shape: list[int]  # per sample
    precision: str  # binary, full (a full-precision dense/conv) or "" (no kernel)
    params_1bit: int
    params_real: int
    param_bytes: int  # latent weights, batchnorm parameters, prelu slopes at the strategy's formats
    forward_bit_macs: int
    forward_macs: int
    saved_bytes: int  # kept from the forward pass for the backward pass, at this batch
    ops: dict[str, int]  # phase -> operations that cost time (bit_mac, informational, left out)
    joules_per_step: float | None = None
    seconds_per_step: float | None = None


class Summary(Presentable, BaseModel):
    model: str
    strategy: str
    batch: int
    engine: str
    retention: str
    workspace_budget: int
    device: str | None = None
    layers: list[LayerRow]
    total: LayerRow

    def to_json(self) -> dict:
        return {"schema": SUMMARY_SCHEMA, **self.model_dump(exclude_none=True)}

    def title(self) -> str:
        where = f" on {self.device}" if self.device else ""
        return f"{self.model} · {self.strategy} · batch {self.batch}{where}: layer by layer"

    def records(self) -> list[dict]:
        rows = []
        for r in [*self.layers, self.total]:
            d = r.model_dump(exclude={"ops"}, exclude_none=True)
            d.update({f"ops_{phase}": r.ops.get(phase, 0) for phase in PHASES})
            rows.append(d)
        return rows


def summary(model, strategy="proposed", batch: int = 100, *, engine=None, retention: str | None = None,
            workspace_budget: int | None = None, device=None) -> Summary:
    """Per-layer figures of one training step. `device` is a loaded Device or None."""
    check_batch(batch)
    graph, strat, eng = graph_of(model), as_strategy(strategy), as_engine(engine)
    retention, workspace_budget = implementation_knobs(eng, retention, workspace_budget)
    plan = memory_plan(graph, strat, retention=retention, workspace_budget=workspace_budget, engine=eng)
    ops = count_ops(graph, strat)
    per_phase = None
    if device is not None:
        per_phase = EnergyModel(ops, count_traffic(graph, strat, plan), device,
                                context=f"{strat.name}: ").by_layer_phase(batch)
    rows = []
    variables_of: dict[str, list] = {}
    ops_of: dict[str, list] = {}
    for v in plan.variables:
        variables_of.setdefault(v.layer, []).append(v)
    for o in ops:
        ops_of.setdefault(o.layer, []).append(o)
    for node in graph.nodes:
        kernel = node.kind in ("dense", "conv2d")
        channel_params = node.parameters(strat.batchnorm) if node.kind in ("batchnorm", "prelu") else 0
        mine = variables_of.get(node.name, [])
        layer_ops = ops_of.get(node.name, [])
        products = batch * node.positions * node.units * node.fan_in
        row = LayerRow(
            layer=node.name, kind=node.kind, output_shape=list(node.out_shape),
            precision=("binary" if node.binary else "full") if kernel else "",
            params_1bit=node.weights if kernel and node.binary else 0,
            params_real=(node.parameters() if kernel and not node.binary else 0) + channel_params,  # bias too
            param_bytes=sum(v.bytes_at(batch) for v in mine
                            if v.role == "latent_weight" or v.name == f"{node.name}.params"),
            forward_bit_macs=products if kernel and node.binary and not node.first else 0,
            forward_macs=products if kernel and not (node.binary and not node.first) else 0,
            saved_bytes=sum(v.bytes_at(batch) for v in mine if v.role in SAVED_ROLES),
            ops={phase: n for phase in PHASES
                 if (n := sum(o.at(batch) for o in layer_ops if o.phase == phase and o.kind not in INFORMATIONAL))},
        )
        if per_phase is not None:
            row.joules_per_step = sum(j for (layer, _), (j, _) in per_phase.items() if layer == node.name)
            row.seconds_per_step = sum(s for (layer, _), (_, s) in per_phase.items() if layer == node.name)
        rows.append(row)
    total = LayerRow(
        layer="total", kind="", output_shape=[], precision="",
        **{k: sum(getattr(r, k) for r in rows) for k in ("params_1bit", "params_real", "param_bytes",
                                                         "forward_bit_macs", "forward_macs", "saved_bytes")},
        ops={phase: n for phase in PHASES if (n := sum(r.ops.get(phase, 0) for r in rows))},
    )
    if per_phase is not None:  # every layer-phase, the update of parameters included
        total.joules_per_step = sum(j for j, _ in per_phase.values())
        total.seconds_per_step = sum(s for _, s in per_phase.values())
    return Summary(model=graph.model.name, strategy=strat.name, batch=batch, engine=eng.name, retention=retention,
                   workspace_budget=workspace_budget, device=device.name if device is not None else None,
                   layers=rows, total=total)
