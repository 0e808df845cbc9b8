"""Device tables: what a device's memory, operations and power cost.

Each shipped device is a YAML file beside this module; a user's own file is
passed by path wherever a device name is accepted. See ``README.md`` here for
the schema and how every figure was derived.

>>> from hardware_profiles import load_device
>>> pi = load_device("raspberry-pi-4b")
>>> pi.op("float32", "add").pj > 0
True
"""

from bnncost.hardware_profiles.loader import list_devices, load_device, parse_device, parse_device_text
from bnncost.hardware_profiles.schema import FORMATS, OP_KINDS, Device, Memory, MemoryLevel, Op, PowerSpec
from bnncost.hardware_profiles.units import DeviceError, parse_quantity

__all__ = [
    "FORMATS",
    "OP_KINDS",
    "Device",
    "DeviceError",
    "Memory",
    "MemoryLevel",
    "Op",
    "PowerSpec",
    "list_devices",
    "load_device",
    "parse_device",
    "parse_device_text",
    "parse_quantity",
]
