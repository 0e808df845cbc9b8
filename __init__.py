"""bnncost: predict the memory, operations, energy and time of training binary neural networks.

`import bnncost` is the one documented Python entry point; the packages behind it (layers,
costmodel, hardware_profiles, trainer) are installed as bnncost's subpackages.
"""

from bnncost.costmodel import compare, load_strategy, predict
from bnncost.hardware_profiles import load_device
from bnncost.layers import load_model

__all__ = ["compare", "load_device", "load_model", "load_strategy", "predict"]
