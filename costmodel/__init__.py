"""The cost model: strategies give roles their formats; memory, ops, energy and time are computed here."""

from bnncost.costmodel.engine import Engine, EngineError, engine_names, load_engine
from bnncost.costmodel.formats import FORMAT_BITS, tensor_bytes
from bnncost.costmodel.memory import MemoryPlan, Variable, memory_plan
from bnncost.costmodel.prediction import Comparison, Prediction, compare, predict
from bnncost.costmodel.strategy import Strategy, StrategyError, load_strategy, strategy_names

__all__ = [
    "FORMAT_BITS", "Comparison", "Engine", "EngineError", "MemoryPlan", "Prediction", "Strategy", "StrategyError", "Variable",
    "compare", "engine_names", "load_engine", "load_strategy", "memory_plan", "predict", "strategy_names", "tensor_bytes",
]
