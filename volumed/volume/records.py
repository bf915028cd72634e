"""Raw sector records of an open volume, and the copy-on-write session that keeps a point in time.

A record is a sector exactly as the volume stores it, which is what a snapshot stores
(docs/SNAPSHOTS.md, "Chunk objects"); nothing is decrypted except GCM slots that may be crash
residue:

- XTS: the 4096-byte ciphertext in the data area; an all-zero sector is a hole: None.
- GCM: nonce (12) + tag (16) + ciphertext (4096) of the slot a read uses
  (GcmStore.current_slots); never-written and zero-marker sectors: None.

The volume's core reads them (VolumeCore.read_records; the format's rule, volumed.volume.formats
for the reference). ``CaptureSession`` (Volume.begin_capture) lets a snapshot of a volume that
keeps serving I/O be the exact state at one barrier: the core copies the records in sector order,
each chunk under its range lock, and until the session is closed every write or discard first
preserves, under the range lock it already holds, the old records of the sectors it changes that
the copier has not passed yet (capture-before-write). Preserved records are held in memory until
the copier passes them, never spilled to disk, and never more than the session's
``max_kept_bytes``: a write that would exceed it fails the session (the snapshot) and frees what
it held; the write itself goes on. The rules are implemented twice, by the native core
(native/vc_capture.c) and the reference (volumed.volume.refcore), and tested against each other.

Callers: volumed.volume.device (Volume.begin_capture), and through it the snapshot engine.
"""

from __future__ import annotations

import copy
import datetime as _dt
from typing import TYPE_CHECKING

from volumed.errors import VolumedError
from volumed.volume.cores import CaptureStats, VolumeCore

if TYPE_CHECKING:
    from volumed.volume.device import Volume

PAGE = 4096
DEFAULT_MAX_KEPT_BYTES = 256 << 20   # preserved records a session may hold (the daemon mlocks them)


class CaptureSession:
    """The records of a volume as they were when the session began, read while it keeps serving.

    Made by Volume.begin_capture once its core opened the session under the I/O barrier (after a
    flush): the core (native or reference, volumed.volume.cores) preserves old records before
    writes and hands them out. ``read_records`` must be called for consecutive ranges from sector
    0; ``header`` and ``path`` are the volume's at the barrier, so the session stands in for the
    Volume in the snapshot engine. ``started`` is the barrier's time (the snapshot's point in
    time). ``max_kept_bytes`` bounds the preserved records held at once: past it the session fails
    (the snapshot, never the write) and keeps nothing more. ``close()`` (or leaving the
    with-block) ends it, on success or failure."""

    def __init__(self, vol: Volume, core: VolumeCore, *, started: _dt.datetime,
                 max_kept_bytes: int = DEFAULT_MAX_KEPT_BYTES):
        self._vol = vol
        self._core = core
        self.started = started
        self.max_kept_bytes = max_kept_bytes
        self.header = copy.copy(vol.header)   # a later resize does not change the point in time
        self.path = vol.path
        self.sectors = self.header.sectors
        self._final: CaptureStats | None = None   # the counters when it closed

    def read_records(self, first: int, n: int) -> list[bytes | None]:
        """Records of sectors [first, first+n) as they were at the barrier; ``first`` is where the
        previous call ended (0 at the start). A write to them is either wholly before (and
        preserved their old records) or wholly after. VolumedError once the session failed."""
        if self._final is not None:
            raise VolumedError("the capture session was closed")
        return self._core.capture_read(first, n)

    def _stats(self) -> CaptureStats:
        return self._final if self._final is not None else self._core.capture_stats()

    @property
    def kept_bytes(self) -> int:
        """Bytes of preserved records held now (bounded by ``max_kept_bytes``)."""
        return self._stats()["kept_bytes"]

    @property
    def captured(self) -> int:
        """Sectors preserved before a write (for reports)."""
        return self._stats()["captured"]

    @property
    def peak_kept(self) -> int:
        """Most records held in memory at once."""
        return self._stats()["peak_kept"]

    def close(self) -> None:
        """End the session: writes stop preserving records, memory is released. Idempotent."""
        if self._final is None:
            try:
                final: CaptureStats = {**self._core.capture_stats(), "kept_bytes": 0}
            except VolumedError:
                final = {"captured": 0, "peak_kept": 0, "kept_bytes": 0, "failed": True}
            self._final = final
            self._core.capture_end()
        self._vol._end_capture(self)

    def __enter__(self) -> "CaptureSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
