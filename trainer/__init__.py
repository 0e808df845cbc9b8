"""The bundled numpy BNN trainer (METHOD 7): the same models and strategies as the cost model, executed.

Imports `layers` and only the strategy and format definitions of `costmodel`
(never its memory, op or energy formulas), so `verify` compares two
independent computations.
"""

from bnncost.trainer.errors import TrainerError, TrainingDiverged
from bnncost.trainer.run import EpochReport, StepMeasurement, TrainingResult, run_steps, train

__all__ = ["TrainerError", "TrainingDiverged", "EpochReport", "StepMeasurement", "TrainingResult",
           "run_steps", "train"]
