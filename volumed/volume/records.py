"""Raw sector records of an open volume, and the copy-on-write session that keeps a point in time.

A record is a sector exactly as the volume stores it, which is what a snapshot stores
(docs/SNAPSHOTS.md, "Chunk objects"); nothing is decrypted except GCM slots that may be crash
residue:

- XTS: the 4096-byte ciphertext in the data area; an all-zero sector is a hole: None.
- GCM: session salt (16) + nonce (12) + tag (16) + ciphertext (4096) of the slot a read uses
  (GcmStore.current_slots); never-written and zero-marker sectors: None.

``read_records(vol, first, n)`` reads them; the caller provides consistency (holds the volume
alone, or the sectors' range locks). ``CaptureSession`` (Volume.begin_capture) lets a snapshot of a
volume that keeps serving I/O be the exact state at one barrier: the session copies the records
in sector order, each chunk under its range lock, and until it is closed every write or discard
first preserves, under the range lock it already holds, the old records of the sectors it changes
that the session has not copied yet (capture-before-write). The copier then takes those instead of
the disk's. Preserved records are held in memory until the copier passes them: at most the
distinct sectors written ahead of the copier while it runs (4 KiB each), never spilled to disk,
and never more than the session's ``max_kept_bytes``: a write that would exceed it fails the
session (the snapshot) and frees what it held; the write itself goes on.

Callers: volumed.volume.device (Volume.read_records, begin_capture, the write hook), and through
those the snapshot engine. Package-internal: reads Volume and store internals.
"""

from __future__ import annotations

import copy
import datetime as _dt
import threading

import numpy as np

from volumed.errors import VolumedError
from volumed.volume import gcmformat as F
from volumed.volume.ranges import runs

PAGE = 4096
_ZERO = bytes(PAGE)
DEFAULT_MAX_KEPT_BYTES = 256 << 20   # preserved records a session may hold (the daemon mlocks them)


def read_records(vol, first: int, n: int) -> list[bytes | None]:
    """Records of sectors [first, first+n) of the open Volume ``vol`` (None = absent).
    KeyAccessError once its key was wiped (revocation): records are not served after that."""
    store = vol._live()
    if vol.header.cipher == "xts":
        data = bytes(store.backing.pread(store.base + first * PAGE, n * PAGE)).ljust(n * PAGE, b"\0")
        return [None if data[i * PAGE:(i + 1) * PAGE] == _ZERO else data[i * PAGE:(i + 1) * PAGE]
                for i in range(n)]
    out: list[bytes | None] = []
    for s, slot in zip(range(first, first + n), store.current_slots(first, n)):
        if slot is None:
            out.append(None)
            continue
        k, counter, tag, salt = slot
        g, i = divmod(s, F.GROUP_SECTORS)
        data = bytes(store.backing.pread(F.slot_offset(g, k, i), PAGE)).ljust(PAGE, b"\0")
        out.append(salt + F.nonce_bytes(np.array([counter], dtype=np.uint64)) + tag + data)
    return out


class CaptureSession:
    """The records of a volume as they were when the session began, read while it keeps serving.

    Made by Volume.begin_capture under the I/O barrier (after a flush). ``read_records`` must be
    called for consecutive ranges from sector 0 (the copier advances a watermark); ``header`` and
    ``path`` are the volume's at the barrier, so the session stands in for the Volume in the
    snapshot engine. ``started`` is the barrier's time (the snapshot's point in time).
    ``max_kept_bytes`` bounds the preserved records held at once: past it the session fails (the
    snapshot, never the write) and keeps nothing more. ``close()`` (or leaving the with-block)
    ends it, on success or failure."""

    def __init__(self, vol, *, started: _dt.datetime, max_kept_bytes: int = DEFAULT_MAX_KEPT_BYTES):
        if max_kept_bytes <= 0:
            raise ValueError(f"max_kept_bytes must be positive, not {max_kept_bytes}")
        self._vol = vol
        self.started = started
        self.max_kept_bytes = max_kept_bytes
        self.header = copy.copy(vol.header)   # a later resize does not change the point in time
        self.path = vol.path
        self.sectors = self.header.sectors
        self._next = 0                        # sectors below are copied; moves under range locks
        self._kept: dict[int, bytes | None] = {}
        self._kept_bytes = 0                  # bytes of the records in _kept (None counts 0)
        self._mutex = threading.Lock()
        self._error: str | None = None
        self._closed = False
        self.captured = 0                     # sectors preserved before a write (for reports)
        self.peak_kept = 0                    # most records held in memory at once

    def before_write(self, first: int, last: int) -> None:
        """Called by the Volume for a write/discard of sectors [first, last), holding their range
        lock, before anything changes: preserve the old records of those the copier has not
        reached. Never raises: a failure fails the session (the snapshot), not the write. A
        failed or closed session returns at once (nothing more is preserved)."""
        lo, hi = max(first, self._next), min(last, self.sectors)
        if lo >= hi or self._closed or self._error:
            return
        with self._mutex:
            todo = np.array([s not in self._kept for s in range(lo, hi)])
        got = {}
        try:
            for a, b in runs(todo):
                got.update(zip(range(lo + a, lo + b), read_records(self._vol, lo + a, b - a)))
        except Exception as exc:  # noqa: BLE001 - the write goes on; the snapshot fails
            self._fail(f"sectors {lo}-{hi - 1} could not be preserved before a write: {exc}")
            return
        size = sum(len(r) for r in got.values() if r is not None)
        with self._mutex:
            if self._closed or self._error:
                return
            if self._kept_bytes + size > self.max_kept_bytes:
                over = True
            else:
                over = False
                self._kept.update(got)
                self._kept_bytes += size
                self.captured += len(got)
                self.peak_kept = max(self.peak_kept, len(self._kept))
        if over:
            self._fail(f"writes during the copy needed more than {self.max_kept_bytes} bytes of "
                       "preserved records in memory (the snapshot's limit, "
                       "$VOLUMED_SNAPSHOT_MAX_PRESERVED): retry when writes are lighter, or raise "
                       "the limit")

    def read_records(self, first: int, n: int) -> list[bytes | None]:
        """Records of sectors [first, first+n) as they were at the barrier; ``first`` is where the
        previous call ended (0 at the start). Takes the sectors' range lock, so a write to them
        is either wholly before (and preserved its old records) or wholly after."""
        if first != self._next or first + n > self.sectors:
            raise ValueError(f"capture reads must be consecutive: at {self._next}, asked {first}+{n}")
        vol = self._vol
        with vol._locks.lock(*vol._units(first, first + n)):
            vol._live()  # a revoked volume's records are not copied on, even if all preserved
            if self._error or self._closed:
                raise VolumedError(self._error or "the capture session was closed")
            with self._mutex:
                kept = {s: self._kept.pop(s) for s in range(first, first + n) if s in self._kept}
                self._kept_bytes -= sum(len(r) for r in kept.values() if r is not None)
            recs = read_records(vol, first, n) if len(kept) < n else [None] * n
            for s, rec in kept.items():
                recs[s - first] = rec
            self._next = first + n
        return recs

    @property
    def kept_bytes(self) -> int:
        """Bytes of preserved records held now (bounded by ``max_kept_bytes``)."""
        return self._kept_bytes

    def _fail(self, why: str) -> None:
        with self._mutex:
            self._error = self._error or why
            self._kept.clear()
            self._kept_bytes = 0

    def close(self) -> None:
        """End the session: writes stop preserving records, memory is released. Idempotent."""
        with self._mutex:
            self._closed = True
            self._kept.clear()
            self._kept_bytes = 0
        self._vol._end_capture(self)

    def __enter__(self) -> "CaptureSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

