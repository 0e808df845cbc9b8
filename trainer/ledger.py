"""One ledger for every buffer the trainer holds during a training step (METHOD 4, 7).

A buffer is recorded with its name, layer, role, format, logical shape and
its real size (`.nbytes` of the numpy array the trainer allocated and uses),
and the events of `layers.timeline.step_events` at which it was allocated and
freed. Liveness is event-granular: a buffer is live at every event from its
alloc to its free event, both included; the peak is the largest sum of live
bytes over the events, and the event where it happens.

The ledger owns the arrays: operators fetch them by name and never keep their
own references, so freeing a name really releases the memory (tracemalloc
sees it). Persistent buffers (weights, optimizer state, batchnorm parameters
and running statistics) live across steps and appear in each step's ledger as
alive from `step_start` to `step_end`.

The rows are the variables of `layers.storage.stored_variables` (including
the forward activations `<layer>.output`, role `activation`) and the scratch
of `layers.scratch`, with the names, roles and lifetimes given there and the
bytes of the arrays really allocated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from bnncost.trainer import codec


@dataclass(frozen=True)
class LedgerRow:
    name: str
    layer: str
    role: str
    format: str
    shape: tuple  # logical shape (batch axis first when batched; workspace: rows held x row)
    stored_shape: tuple  # the numpy array's shape
    dtype: str
    bytes: int  # .nbytes of the array
    alloc: str
    free: str


@dataclass
class _Live:
    array: np.ndarray
    layer: str
    role: str
    format: str
    shape: tuple
    alloc: str
    free_at: str | None  # planned free event; None: freed explicitly


class Ledger:
    """Allocates, tracks and frees the trainer's buffers event by event."""

    def __init__(self, events: list[str], enabled: bool = True):
        self.events = events
        self.index = {e: i for i, e in enumerate(events)}
        self.enabled = enabled
        self.on_event: Callable[[str], None] | None = None  # told each event as the step reaches it (progress)
        self.persistent: dict[str, _Live] = {}
        self.live: dict[str, _Live] = {}
        self.rows: list[LedgerRow] = []
        self.current = events[0] if events else ""

    # -------------------------------------------------------------- persistent buffers

    def persist(self, name: str, layer: str, role: str, fmt: str, shape: tuple, array: np.ndarray) -> np.ndarray:
        """Register a buffer that lives across steps (created once, at init or on resume)."""
        self.persistent[name] = _Live(array, layer, role, fmt, tuple(shape), "step_start", "step_end")
        return array

    def replace_persistent(self, name: str, array: np.ndarray) -> None:
        old = self.persistent[name]
        if old.array.shape != array.shape or old.array.dtype != array.dtype:
            raise ValueError(f"{name}: shape/dtype {array.shape}/{array.dtype} differs from {old.array.shape}/{old.array.dtype}")
        old.array = array

    # -------------------------------------------------------------- a step

    def begin_step(self) -> None:
        self.rows = []
        self.live = {}
        self.current = "step_start"

    def event(self, name: str) -> None:
        if self.enabled and self.index[name] < self.index[self.current]:
            raise RuntimeError(f"ledger: event {name} after {self.current}")
        self.current = name
        if self.on_event is not None:
            self.on_event(name)

    def alloc(self, name: str, layer: str, role: str, fmt: str, shape: tuple, *,
              free_at: str | None = None, zero: bool = False) -> np.ndarray:
        """Allocate a buffer at the current event; `free_at` schedules its free (end of that event)."""
        if name in self.live:
            raise RuntimeError(f"ledger: {name} allocated twice")
        array = codec.empty(fmt, tuple(shape), zero=zero)
        self.live[name] = _Live(array, layer, role, fmt, tuple(shape), self.current, free_at or self.current)
        return array

    def __getitem__(self, name: str) -> np.ndarray:
        entry = self.live.get(name) or self.persistent.get(name)
        if entry is None:
            raise KeyError(f"ledger: no live buffer {name}")
        return entry.array

    def __contains__(self, name: str) -> bool:
        return name in self.live or name in self.persistent

    def free(self, name: str) -> None:
        entry = self.live.pop(name)
        if self.enabled:
            self.rows.append(LedgerRow(name, entry.layer, entry.role, entry.format, entry.shape,
                                       tuple(entry.array.shape), entry.array.dtype.str, int(entry.array.nbytes),
                                       entry.alloc, self.current))

    def end_event(self) -> None:
        """Free every buffer scheduled to die at the current event."""
        for name in [n for n, e in self.live.items() if e.free_at == self.current]:
            self.free(name)

    def end_step(self) -> None:
        """At step_end: free what is left and add the persistent buffers' rows."""
        for name in list(self.live):
            self.free(name)
        if self.enabled:
            for name, e in self.persistent.items():
                self.rows.append(LedgerRow(name, e.layer, e.role, e.format, e.shape, tuple(e.array.shape),
                                           e.array.dtype.str, int(e.array.nbytes), "step_start", "step_end"))

    # -------------------------------------------------------------- reading it

    def live_bytes(self, exclude_roles: tuple[str, ...] = ()) -> np.ndarray:
        """Live bytes at every event of the last step."""
        n = len(self.events)
        delta = np.zeros(n + 1, dtype=np.int64)
        for r in self.rows:
            if r.role in exclude_roles:
                continue
            delta[self.index[r.alloc]] += r.bytes
            delta[self.index[r.free] + 1] -= r.bytes
        return np.cumsum(delta)[:n]

    def peak(self, exclude_roles: tuple[str, ...] = ()) -> tuple[int, str]:
        live = self.live_bytes(exclude_roles)
        e = int(np.argmax(live))
        return int(live[e]), self.events[e]

    def persistent_bytes(self) -> int:
        return sum(int(e.array.nbytes) for e in self.persistent.values())


class NullLedger(Ledger):
    """A ledger that allocates but records nothing (evaluation passes)."""

    def __init__(self, persistent: dict[str, _Live]):
        super().__init__(["step_start"], enabled=False)
        self.persistent = persistent

    def event(self, name: str) -> None:
        self.current = name

    def end_event(self) -> None:
        for name in [n for n, e in self.live.items() if e.free_at == self.current]:
            self.live.pop(name)

    def free(self, name: str) -> None:
        self.live.pop(name, None)
