"""Range locking and run arithmetic for the block device.

RangeLock gives the Volume its thread-safety contract: every request locks the half-open range of
lock units it touches; overlapping requests wait for each other (so they behave as some serial
order), disjoint ones run in parallel. ``exclusive()`` waits for every range to be released and
holds off new ones (flush barriers, key wiping).

``runs(mask)`` turns a boolean numpy mask into (start, stop) pairs of consecutive True entries, so
callers loop over runs, never over sectors.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt


class RangeLock:
    """Exclusive locks on half-open integer ranges, plus a whole-space barrier."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._held: list[tuple[int, int]] = []
        self._barrier = False

    def _overlaps(self, lo: int, hi: int) -> bool:
        return any(a < hi and lo < b for a, b in self._held)

    @contextlib.contextmanager
    def lock(self, lo: int, hi: int) -> Iterator[None]:
        """Hold [lo, hi) until the with-block ends. Blocks while an overlapping range is held."""
        item = (lo, hi)
        with self._cond:
            while self._barrier or self._overlaps(lo, hi):
                self._cond.wait()
            self._held.append(item)
        try:
            yield
        finally:
            with self._cond:
                self._held.remove(item)
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the whole space: waits for all ranges to drain; new ranges wait until the end."""
        with self._cond:
            while self._barrier:
                self._cond.wait()
            self._barrier = True
            while self._held:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._barrier = False
                self._cond.notify_all()


def runs(mask: npt.NDArray[np.bool_]) -> list[tuple[int, int]]:
    """(start, stop) of every maximal run of True in the 1-D boolean ``mask``."""
    n = mask.size
    if n == 0:
        return []
    if n == 1:
        return [(0, 1)] if mask[0] else []
    if mask.all():
        return [(0, n)]
    if not mask.any():
        return []
    m = np.concatenate(([False], mask.astype(bool, copy=False), [False]))
    edges = np.flatnonzero(m[1:] != m[:-1])
    return [(int(a), int(b)) for a, b in zip(edges[0::2], edges[1::2])]


_scratch = threading.local()


def scratch(nbytes: int) -> memoryview:
    """A per-thread reusable buffer of ``nbytes`` (contents undefined). Valid until the same
    thread asks again: for ciphertext that is written out before the call returns."""
    buf = getattr(_scratch, "buf", None)
    if buf is None or len(buf) < nbytes:
        buf = _scratch.buf = bytearray(max(nbytes, 1 << 16))
    return memoryview(buf)[:nbytes]


_ZERO_SECTORS: dict[int, bytes] = {}


def zero_sectors(buf: bytes | bytearray | memoryview, sector_size: int) -> npt.NDArray[np.bool_]:
    """Boolean array: which sector-sized rows of ``buf`` (length a multiple of sector_size) are all zero.

    One sector (every 4 KiB random write) is compared with a zero sector by memcmp, which is
    cheaper than the numpy reduction (docs/PERFORMANCE.md, "Small measurements behind code
    choices"); the reduction pays off only over several sectors."""
    if len(buf) == sector_size:
        zero = _ZERO_SECTORS.get(sector_size)
        if zero is None:
            zero = _ZERO_SECTORS[sector_size] = bytes(sector_size)
        return np.array([bytes(buf) == zero], dtype=bool)
    a = np.frombuffer(buf, dtype=np.uint64)
    if a.size == 0:
        return np.zeros(0, dtype=bool)
    return np.logical_not(a.reshape(-1, sector_size // 8).any(axis=1))
