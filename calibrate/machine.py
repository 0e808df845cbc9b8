"""The machine itself: CPU model, cache levels, RAM, and the bandwidth of each memory level.

Cache levels come from Linux sysfs (/sys/devices/system/cpu/cpu0/cache/index*: level, type, size;
instruction caches skipped). A machine that shows none (some VMs, other systems) gets no cache
level and the file says so; DRAM is always the last level. Bandwidth is what numpy's copy
sustains on one core (bytes read plus written per second of the process's CPU time) for a buffer that fits in the level:
a quarter of its capacity (so source and destination both fit with room to spare), and for DRAM
four times the largest cache (at least 64 MiB). The statistic is the median over repeats.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SYSFS_CACHE = Path("/sys/devices/system/cpu/cpu0/cache")


@dataclass
class Level:
    name: str
    capacity_bytes: int
    how: str  # where the capacity came from


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


ARCHES = {"x86_64": "x86-64", "amd64": "x86-64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "armv7",
          "riscv64": "riscv64"}
VENDORS = {"GenuineIntel": "intel", "AuthenticAMD": "amd", "0x41": "arm"}  # vendor_id, or an Arm CPU implementer


def cpu_arch_and_vendor() -> tuple[str | None, str | None, str]:
    """This machine's instruction set and CPU maker as device tables name them, and where they were read."""
    machine = platform.machine()
    arch = ARCHES.get(machine.lower())
    vendor = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("vendor_id", "CPU implementer") and value.strip() in VENDORS:
                vendor = VENDORS[value.strip()]
                break
    except OSError:
        pass
    return arch, vendor, f"platform.machine() {machine!r}, /proc/cpuinfo vendor_id or CPU implementer"


def _size(text: str) -> int:
    text = text.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * mult


def cache_levels(root: Path = SYSFS_CACHE) -> list[Level]:
    """Data and unified caches of cpu0, smallest first, one per level."""
    found: dict[int, int] = {}
    try:
        for d in sorted(root.glob("index*")):
            kind = (d / "type").read_text().strip()
            if kind == "Instruction":
                continue
            level = int((d / "level").read_text())
            found[level] = max(found.get(level, 0), _size((d / "size").read_text()))
    except (OSError, ValueError):
        return []
    levels, last = [], 0
    for lv in sorted(found):
        if found[lv] > last:  # capacities must grow; a level no larger than the one before adds nothing
            levels.append(Level(f"l{lv}", found[lv], f"sysfs {root}/index*: level {lv}"))
            last = found[lv]
    return levels


def ram() -> tuple[int, int, str]:
    """(installed bytes, bytes available to a new process, source) from /proc/meminfo."""
    try:
        info = {}
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            info[key] = int(rest.split()[0]) * 1024
        return info["MemTotal"], info.get("MemAvailable", info["MemFree"]), "/proc/meminfo MemTotal, MemAvailable"
    except (OSError, KeyError, ValueError, IndexError):
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return pages, pages // 2, "sysconf physical pages; half of it assumed available"


def blas_threads() -> int | None:
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return None


def copy_bandwidth(nbytes: int, repeats: int) -> float:
    """Bytes moved (read + written) per second by np.copyto of a float32 buffer of `nbytes`, median."""
    n = max(256, nbytes // 4)
    src = np.ones(n, np.float32)
    dst = np.empty_like(src)
    inner = max(1, (32 << 20) // (8 * n))  # ~32 MiB moved per sample: long enough to time
    np.copyto(dst, src)
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        for _ in range(inner):
            np.copyto(dst, src)
        times.append((time.process_time() - t0) / inner)
    return 2 * n * 4 / float(np.median(times))


def dram_probe_bytes(levels: list[Level]) -> int:
    largest = max((lv.capacity_bytes for lv in levels), default=0)
    return max(64 << 20, 4 * largest)
