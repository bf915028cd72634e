"""The reference volume core: the VolumeCore protocol (volumed.volume.cores) in pure Python over a
Python sector store (XtsStore, GcmStore).

It is the test oracle of the native core (volumed._native.VolumeCore, native/vcore.c): the
differential tests run the same request sequences through both and compare replies and files byte
for byte, so the two implement the same rules:

- Every request locks the lock units it touches (RangeLock; the store's ``lock_unit`` sectors:
  1 for XTS, one metadata group for GCM). Overlapping requests serialize, disjoint ones run in
  parallel (the cipher and pread/pwrite release the GIL).
- Partial sectors are read-modify-written in one bounce buffer over the whole range under the lock,
  so the store writes once; whole sectors go straight to the store.
- flush() is the store's flush; a store whose flush is a barrier (GCM) runs it under
  RangeLock.exclusive so that no write is in flight while it declares its writes durable.
- wipe_key() takes the barrier (in-flight requests drain), then the format's ``drop`` callback wipes
  the key; later calls raise KeyAccessError.
- The capture session of a snapshot of a live volume: capture_begin (under the barrier: flush and
  open), then every write/discard first preserves the old records of the sectors it changes that
  the copier has not passed (under the range lock it holds); capture_read hands out the records as
  they were at the barrier, consecutive ranges from sector 0. At most ``max_kept_bytes`` are held:
  past it the session fails (never the write) and frees what it held.

Production serves both formats natively; this core serves them where the native core cannot
(no extension, a backing file Python must see). Callers: volumed.volume.formats.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol, TypeAlias

import numpy as np

from volumed.errors import KeyAccessError, StateError, UsageError, VolumedError
from volumed.volume.cores import CaptureStats
from volumed.volume.ranges import RangeLock, runs
from volumed.volume.xtsstore import XtsStore

if TYPE_CHECKING:
    from typing_extensions import Buffer

RecordReader: TypeAlias = Callable[[int, int], list[bytes | None]]
"""``records(first, n)``: the records of sectors [first, first+n) as stored, None where absent."""


class SectorStore(Protocol):
    """The sectors of one volume format under its key (XtsStore, GcmStore), used by RefCore under
    its range locks: the store itself locks nothing. Whole sectors only."""

    @property
    def lock_unit(self) -> int:
        """Sectors per range-lock unit (1 for XTS, a metadata group for GCM)."""
    @property
    def flush_is_barrier(self) -> bool:
        """True when flush must run with no request in flight (GCM)."""
    def read_sectors(self, first: int, out: memoryview) -> None: ...
    def write_sectors(self, first: int, data: memoryview) -> None: ...
    def discard_sectors(self, first: int, n: int) -> None: ...
    def flush(self) -> None: ...

HOLE_COST = 64  # a preserved hole's share of max_kept_bytes: a map entry (vc_capture.c's HOLE_COST)
KEPT_LIMIT_MESSAGE = ("writes during the copy needed more than {} bytes of preserved records in "
                      "memory (the snapshot's limit, $VOLUMED_SNAPSHOT_MAX_PRESERVED): retry when "
                      "writes are lighter, or raise the limit")


class _Capture:
    """The state of one capture session (see the module docstring)."""

    def __init__(self, sectors: int, max_kept_bytes: int):
        self.sectors = sectors
        self.max_kept_bytes = max_kept_bytes
        self.next = 0                          # sectors below are copied; moves under range locks
        self.kept: dict[int, bytes | None] = {}
        self.kept_bytes = 0
        self.captured = 0
        self.peak_kept = 0
        self.error: str | None = None
        self.mutex = threading.Lock()

    def fail(self, why: str) -> None:
        with self.mutex:
            self.error = self.error or why
            self.kept.clear()
            self.kept_bytes = 0


class RefCore:
    """VolumeCore over a Python store. ``records(first, n)`` reads raw records (the format's rule);
    ``drop()`` wipes the key (the format's rule); ``path`` names the volume in messages."""

    def __init__(self, store: SectorStore, *, size: int, sector_size: int, path: str,
                 records: RecordReader, drop: Callable[[], None]):
        self._store: SectorStore | None = store
        self._records = records
        self._drop = drop
        self._locks = RangeLock()
        self._unit = store.lock_unit
        self._cap: _Capture | None = None
        self.size = size
        self.sector_size = sector_size
        self.path = path
        self.flush_is_barrier = store.flush_is_barrier

    # ---- the key latch -----------------------------------------------------------------------

    def _live(self) -> SectorStore:
        store = self._store
        if store is None:
            raise KeyAccessError.wiped(self.path)
        return store

    def _units(self, first: int, last: int) -> tuple[int, int]:
        return first // self._unit, -(-last // self._unit)

    def _range(self, what: str, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise UsageError(f"{what} of {length} bytes at {offset} is outside the volume "
                             f"(size {self.size})")

    @contextlib.contextmanager
    def barrier(self) -> Iterator[None]:
        """No request in flight while the block runs (resize of a GCM volume, close);
        KeyAccessError once the key was wiped."""
        with self._locks.exclusive():
            self._live()
            yield

    def wipe_key(self) -> None:
        with self._locks.exclusive():
            if self._store is not None:
                self._store = None
                self._drop()

    # ---- I/O ---------------------------------------------------------------------------------

    def read(self, offset: int, length: int) -> bytearray:
        self._range("read", offset, length)
        if length == 0:
            return bytearray()
        ss = self.sector_size
        first, last = offset // ss, -(-(offset + length) // ss)
        buf = bytearray((last - first) * ss)
        self._live()
        with self._locks.lock(*self._units(first, last)):
            self._live().read_sectors(first, memoryview(buf))
        start = offset - first * ss
        if start == 0 and length == len(buf):
            return buf
        return buf[start:start + length]

    def readinto(self, offset: int, out: Buffer) -> None:
        mv = memoryview(out).cast("B")
        mv[:] = self.read(offset, len(mv))

    def write(self, offset: int, data: Buffer) -> None:
        mv = memoryview(data).cast("B")
        n = len(mv)
        self._range("write", offset, n)
        if n == 0:
            return
        ss = self.sector_size
        first, last = offset // ss, -(-(offset + n) // ss)
        self._live()
        with self._locks.lock(*self._units(first, last)):
            store = self._live()
            self._before_change(first, last)
            head = offset - first * ss
            if head == 0 and n % ss == 0:
                store.write_sectors(first, mv)
                return
            b = memoryview(bytearray((last - first) * ss))
            if head:
                store.read_sectors(first, b[:ss])
            if (offset + n) % ss and not (head and last - first == 1):
                store.read_sectors(last - 1, b[-ss:])
            b[head:head + n] = mv
            store.write_sectors(first, b)

    def discard(self, offset: int, length: int) -> None:
        self._range("discard", offset, length)
        ss = self.sector_size
        first, last = -(-offset // ss), (offset + length) // ss
        if last <= first:
            if length:
                self.write(offset, bytes(length))
            return
        if offset < first * ss:
            self.write(offset, bytes(first * ss - offset))
        if (offset + length) > last * ss:
            self.write(last * ss, bytes(offset + length - last * ss))
        with self._locks.lock(*self._units(first, last)):
            store = self._live()
            self._before_change(first, last)
            store.discard_sectors(first, last - first)

    def flush(self) -> None:
        store = self._live()
        if store.flush_is_barrier:
            with self._locks.exclusive():
                self._live().flush()
        else:
            store.flush()

    def set_size(self, size: int) -> None:
        with self._locks.exclusive():
            self.size = size

    def read_records(self, first: int, n: int) -> list[bytes | None]:
        self._live()
        return self._records(first, n)

    def read_sealed(self, first: int, n: int) -> bytearray:
        """Sectors as a LUKS2 reader expects them: stored ciphertext, holes encrypted zeros."""
        ss = self.sector_size
        with self._locks.lock(*self._units(first, first + n)):
            store = self._live()
            if not isinstance(store, XtsStore):
                raise UsageError(f"{self.path} is not an XTS volume: only XTS sectors export to LUKS2")
            recs = self._records(first, n)
            out = bytearray(n * ss)
            mv = memoryview(out)
            for i, r in enumerate(recs):
                if r is not None:
                    mv[i * ss:(i + 1) * ss] = r
            for a, b in runs(np.array([r is None for r in recs], dtype=bool)):
                store.cipher.encrypt(mv[a * ss:b * ss], first + a)
        return out

    # ---- capture session ---------------------------------------------------------------------

    def capture_begin(self, max_kept_bytes: int) -> None:
        if max_kept_bytes <= 0:
            raise ValueError(f"max_kept_bytes must be positive, not {max_kept_bytes}")
        with self._locks.exclusive():
            store = self._live()
            if self._cap is not None:
                raise StateError(f"a snapshot of {self.path} is already being taken: wait for it "
                                 "to finish, then try again")
            store.flush()  # durable; GCM's volatile slots become the sectors' versions
            self._cap = _Capture(self.size // self.sector_size, max_kept_bytes)

    def _before_change(self, first: int, last: int) -> None:
        """Under the range lock of [first, last), before anything changes (never raises)."""
        cap = self._cap
        if cap is None:
            return
        lo, hi = max(first, cap.next), min(last, cap.sectors)
        if lo >= hi or cap.error:
            return
        with cap.mutex:
            todo = np.array([s not in cap.kept for s in range(lo, hi)])
        got: dict[int, bytes | None] = {}
        try:
            for a, b in runs(todo):
                got.update(zip(range(lo + a, lo + b), self._records(lo + a, b - a)))
        except Exception as exc:  # noqa: BLE001 - the write goes on; the snapshot fails
            cap.fail(f"sectors {lo}-{hi - 1} could not be preserved before a write: {exc}")
            return
        size = sum(HOLE_COST if r is None else len(r) for r in got.values())
        with cap.mutex:
            if cap.error:
                return
            over = cap.kept_bytes + size > cap.max_kept_bytes
            if not over:
                cap.kept.update(got)
                cap.kept_bytes += size
                cap.captured += len(got)
                cap.peak_kept = max(cap.peak_kept, len(cap.kept))
        if over:
            cap.fail(KEPT_LIMIT_MESSAGE.format(cap.max_kept_bytes))

    def capture_read(self, first: int, n: int) -> list[bytes | None]:
        cap = self._cap
        with self._locks.lock(*self._units(first, first + n)):
            self._live()  # a revoked volume's records are not copied on, even if all preserved
            cap = self._cap
            if cap is None:
                raise StateError("the capture session was closed")
            if first != cap.next or first + n > cap.sectors:
                raise UsageError(f"capture reads must be consecutive: at {cap.next}, asked {first}+{n}")
            if cap.error:
                raise StateError(cap.error)
            with cap.mutex:
                kept = {s: cap.kept.pop(s) for s in range(first, first + n) if s in cap.kept}
                cap.kept_bytes -= sum(HOLE_COST if r is None else len(r) for r in kept.values())
            recs: list[bytes | None] = self._records(first, n) if len(kept) < n else [None] * n
            for s, rec in kept.items():
                recs[s - first] = rec
            cap.next = first + n
        return recs

    def capture_stats(self) -> CaptureStats:
        cap = self._cap
        if cap is None:
            raise StateError("no capture session is open")
        with cap.mutex:
            return {"captured": cap.captured, "peak_kept": cap.peak_kept,
                    "kept_bytes": cap.kept_bytes, "failed": cap.error is not None}

    def capture_end(self) -> None:
        with self._locks.exclusive():
            cap, self._cap = self._cap, None
        if cap is not None:
            with cap.mutex:
                cap.kept.clear()
                cap.kept_bytes = 0
