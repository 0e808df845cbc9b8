"""bnncost: predict the memory, operations, energy and time of training binary neural networks.

`import bnncost` is the one documented Python entry point; the packages behind it (layers,
costmodel, hardware_profiles, trainer) are installed as bnncost's subpackages.
"""

from importlib.metadata import PackageNotFoundError, version as _version

from bnncost.costmodel import compare, load_engine, load_strategy, predict
from bnncost.hardware_profiles import load_device
from bnncost.layers import load_model

try:
    __version__ = _version("bnncost")
except PackageNotFoundError:  # a checkout used without installing it: the version pyproject.toml declares
    import re as _re
    from pathlib import Path as _Path

    __version__ = _re.search(r'^version = "([^"]+)"', (_Path(__file__).parent / "pyproject.toml").read_text(),
                             _re.M).group(1)

__all__ = ["__version__", "compare", "load_device", "load_engine", "load_model", "load_strategy", "predict"]
