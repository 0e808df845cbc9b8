"""The trainer's exceptions: bad input the user must fix, and a run that diverged."""

from __future__ import annotations


class TrainerError(ValueError):
    """Input the trainer cannot use (dataset, checkpoint, a format numpy cannot hold).

    A ValueError so that the CLI reports it as one line on stderr with exit code 2.
    """


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; training stopped (the CLI exits with code 1)."""

    def __init__(self, step: int, epoch: int, loss: float, checkpoint: str | None = None):
        self.step, self.epoch, self.loss, self.checkpoint = step, epoch, loss, checkpoint
        kept = f"; last good checkpoint kept at {checkpoint}" if checkpoint else ""
        super().__init__(f"loss became {loss} at step {step} (epoch {epoch}); training stopped{kept}")
