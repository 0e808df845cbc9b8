"""One prediction: a model, a strategy, a batch size and an implementation, costed.

This is the result object every command prints (as a table or as JSON); the
formulas live in `memory`, `ops` and `energy`.
"""

from __future__ import annotations

from pydantic import BaseModel

from costmodel.memory import MemoryPlan, memory_plan
from costmodel.strategy import Strategy, load_strategy
from layers.graph import Graph, build_graph
from layers.model import Model, load_model

PREDICTION_SCHEMA = "bnncost.prediction/1"
COMPARISON_SCHEMA = "bnncost.comparison/1"


class VariableReport(BaseModel):
    name: str
    layer: str
    role: str
    format: str
    shape: list
    bytes: int
    alloc_event: str
    free_event: str
    alive_at_peak: bool


class MemoryReport(BaseModel):
    peak_bytes: int
    peak_event: str
    fixed_bytes: int
    per_sample_bytes: float
    by_role: dict[str, int]
    by_layer: dict[str, int]
    variables: list[VariableReport]


class Prediction(BaseModel):
    schema_: str = PREDICTION_SCHEMA
    model: str
    strategy: str
    batch_size: int
    retention: str
    workspace_budget: int
    memory: MemoryReport
    parameters: int

    def to_json(self) -> dict:
        doc = self.model_dump(exclude_none=True)
        return {"schema": doc.pop("schema_"), **doc}


class Comparison(BaseModel):
    baseline: str
    predictions: list[Prediction]
    savings: dict[str, dict[str, float]]

    def to_json(self) -> dict:
        return {
            "schema": COMPARISON_SCHEMA,
            "baseline": self.baseline,
            "predictions": [p.to_json() for p in self.predictions],
            "savings": self.savings,
        }


def resolve(model: str | Model | Graph) -> Graph:
    if isinstance(model, Graph):
        return model
    return build_graph(model if isinstance(model, Model) else load_model(model))


def check_batch(batch: int) -> None:
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch size must be a positive integer, not {batch!r}")


def memory_report(plan: MemoryPlan, batch: int) -> MemoryReport:
    peak, e, fixed, per = plan.peak(batch)
    by_role: dict[str, int] = {}
    by_layer: dict[str, int] = {}
    rows = []
    for v in plan.variables:
        nbytes = v.bytes_at(batch)
        if v.alloc <= e <= v.free:
            by_role[v.role] = by_role.get(v.role, 0) + nbytes
            by_layer[v.layer] = by_layer.get(v.layer, 0) + nbytes
        rows.append(VariableReport(
            name=v.name, layer=v.layer, role=v.role, format=v.format, shape=v.shape_at(batch),
            bytes=nbytes, alloc_event=plan.events[v.alloc], free_event=plan.events[v.free],
            alive_at_peak=v.alloc <= e <= v.free,
        ))
    return MemoryReport(
        peak_bytes=peak, peak_event=plan.events[e], fixed_bytes=fixed, per_sample_bytes=per,
        by_role=dict(sorted(by_role.items(), key=lambda kv: -kv[1])),
        by_layer=by_layer, variables=rows,
    )


def predict(
    model: str | Model | Graph,
    strategy: str | Strategy = "proposed",
    batch: int = 100,
    *,
    retention: str = "step",
    workspace_budget: int = 0,
) -> Prediction:
    check_batch(batch)
    graph = resolve(model)
    strat = strategy if isinstance(strategy, Strategy) else load_strategy(strategy)
    plan = memory_plan(graph, strat, retention=retention, workspace_budget=workspace_budget)
    return Prediction(
        model=graph.model.name, strategy=strat.name, batch_size=batch, retention=retention,
        workspace_budget=workspace_budget, memory=memory_report(plan, batch),
        parameters=graph.parameter_count(strat.batchnorm),
    )


def compare(
    model: str | Model | Graph,
    strategies: list[str | Strategy],
    batch: int = 100,
    **knobs,
) -> Comparison:
    """Predict every strategy; savings are the first strategy's figure over each one's."""
    graph = resolve(model)
    preds = [predict(graph, s, batch, **knobs) for s in strategies]
    base = preds[0]
    savings = {p.strategy: {"peak_bytes": base.memory.peak_bytes / p.memory.peak_bytes} for p in preds}
    return Comparison(baseline=base.strategy, predictions=preds, savings=savings)
