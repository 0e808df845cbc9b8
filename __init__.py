"""bnncost: predict the memory, operations, energy and time of training binary neural networks.

`import bnncost` is the one documented Python entry point; the packages behind it (layers,
costmodel, hardware_profiles, trainer) are installed as bnncost's subpackages. In a notebook:

    import bnncost
    p = bnncost.predict("cnv", strategy="proposed", batch=100, device="raspberry-pi-4b")
    p.memory.peak_bytes          # the peak of one training step, in bytes
    p.records()                  # one dict per role; p.to_dict() is the --json document

Models, strategies, devices and engines are names (as the command line takes them) or paths to your
own YAML files, or objects already loaded. A byte count (`workspace`) is an int or a string with a
unit ("64KiB"). Every result renders as an HTML table in Jupyter and has `to_dict()` and `records()`.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version as _version

from bnncost.costmodel import load_engine, load_strategy
from bnncost.costmodel import compare as _compare
from bnncost.costmodel import predict as _predict
from bnncost.costmodel.fitting import FitTable
from bnncost.costmodel.fitting import fit as _fit
from bnncost.costmodel.prediction import Comparison, Prediction
from bnncost.costmodel.summary import Summary
from bnncost.costmodel.summary import summary as _summary
from bnncost.costmodel.sweep import Sweep, parse_batches
from bnncost.costmodel.sweep import sweep as _sweep
from bnncost.hardware_profiles import Device, load_device
from bnncost.hardware_profiles.units import convert as _convert
from bnncost.layers import load_model

try:
    __version__ = _version("bnncost")
except PackageNotFoundError:  # a checkout used without installing it: the version pyproject.toml declares
    import re as _re
    from pathlib import Path as _Path

    __version__ = _re.search(r'^version = "([^"]+)"', (_Path(__file__).parent / "pyproject.toml").read_text(),
                             _re.M).group(1)

DEFAULT_STRATEGIES = ("standard", "proposed")


def _device(device: str | Device | None) -> Device | None:
    return load_device(device) if isinstance(device, str) else device


def _knobs(engine, retention: str | None, workspace: int | str | None) -> dict:
    return {"engine": engine, "retention": retention,
            "workspace_budget": None if workspace is None else _convert(workspace, "bytes")}


def _names(strategies) -> list:
    return [s.strip() for s in strategies.split(",") if s.strip()] if isinstance(strategies, str) else list(strategies)


def predict(model, strategy="proposed", batch: int = 100, *, device=None, engine=None, retention: str | None = None,
            workspace: int | str | None = None, epoch_samples: int | None = None) -> Prediction:
    """One training step costed: memory (peak, formula, by role and variable), ops, and on a device
    energy, time and fit. The same figures as `bnncost predict`."""
    return _predict(model, strategy, batch, device=_device(device), epoch_samples=epoch_samples,
                    **_knobs(engine, retention, workspace))


def compare(model, strategies=DEFAULT_STRATEGIES, batch: int = 100, *, device=None, engine=None,
            retention: str | None = None, workspace: int | str | None = None,
            epoch_samples: int | None = None) -> Comparison:
    """Strategies side by side (a list, or "a,b"); savings are ratios against the first."""
    return _compare(model, _names(strategies), batch, device=_device(device), epoch_samples=epoch_samples,
                    **_knobs(engine, retention, workspace))


def fit(model, device, strategies=DEFAULT_STRATEGIES, batch: int = 100, *, engine=None,
        retention: str | None = None, workspace: int | str | None = None) -> FitTable:
    """The largest batch that fits the device's usable memory, per strategy."""
    return _fit(model, _names(strategies), _device(device), batch, **_knobs(engine, retention, workspace))


def sweep(model, strategies=DEFAULT_STRATEGIES, batches="1:4096", *, device=None, engine=None,
          retention: str | None = None, workspace: int | str | None = None) -> Sweep:
    """Peak memory (and energy and time per sample on a device) over batch sizes: a list, or a spec
    as the command line takes it ("1:4096" powers of two, "1:100:10", "1,8,64")."""
    values = parse_batches(batches, log=True) if isinstance(batches, str) else list(batches)
    return _sweep(model, _names(strategies), values, device=_device(device), **_knobs(engine, retention, workspace))


def summary(model, strategy="proposed", batch: int = 100, *, device=None, engine=None,
            retention: str | None = None, workspace: int | str | None = None) -> Summary:
    """Layer by layer, as Larq's summary: shapes, 1-bit and real parameters, MACs, bytes kept for
    backward, ops per phase (energy and time per layer on a device), with totals."""
    return _summary(model, strategy, batch, device=_device(device), **_knobs(engine, retention, workspace))


__all__ = ["Comparison", "FitTable", "Prediction", "Summary", "Sweep", "__version__", "compare", "fit",
           "load_device", "load_engine", "load_model", "load_strategy", "predict", "summary", "sweep"]
