"""The trainer's exceptions: bad input the user must fix, and a run that diverged."""

from __future__ import annotations


class TrainerError(ValueError):
    """Input the trainer cannot use (dataset, checkpoint, a format numpy cannot hold).

    A ValueError so that the CLI reports it as one line on stderr with exit code 2.
    """


class TrainingDiverged(RuntimeError):
    """Training diverged: the loss became NaN, infinite or exploded, or a parameter or optimizer state
    became non-finite; training stopped (the CLI exits with code 1)."""

    def __init__(self, step: int, epoch: int, loss: float, checkpoint: str | None = None, why: str | None = None):
        self.step, self.epoch, self.loss, self.checkpoint = step, epoch, loss, checkpoint
        kept = f"; last good checkpoint kept at {checkpoint}" if checkpoint else "; no checkpoint written"
        why = why or f"loss became {loss:.4g}"
        super().__init__(f"training diverged: {why} at step {step} (epoch {epoch}); training stopped{kept}")
