"""`bnncost calibrate`: measure this machine and write a device file of what it sustains (METHOD 6.1).

- `machine`: the CPU, the cache levels (sysfs), the RAM, each level's bandwidth;
- `rates`: sustained rates of every (format, kind) the op counter uses, through the trainer's kernels;
- `operators`: the bundled trainer's operators timed on calibration networks, and their costs fitted;
- `device`: the device document assembled, with its sources, and written atomically.

This package imports the trainer (to time it) and the cost model (to count what it timed); the cost
model and the trainer never import it.
"""

from bnncost.calibrate.device import CalibrationError, calibrate, write_device

__all__ = ["CalibrationError", "calibrate", "write_device"]
