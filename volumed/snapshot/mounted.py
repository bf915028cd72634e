"""Snapshots of volumes that keep serving I/O: the copy, done by whoever holds the open Volume.

A mounted volume is held by its daemon (the flock) and the daemon calls KMS as the host principal,
whose grant allows Decrypt and GenerateDataKeyWithoutPlaintext only. So the user's side does phase 1
(engine.snapshot_key: ReEncrypt to the snapshot's context) and hands the daemon a
``LiveSnapshotOrder`` (the store, that key, a description and the cap on preserved records: the
CLI's $VOLUMED_SNAPSHOT_MAX_PRESERVED, else 256 MiB). The daemon answers with ``daemon_snapshot``
in a worker thread: under the store lock it takes the volume's I/O barrier only to flush and open a
capture session (Volume.begin_capture), then copies the records while I/O goes on; a write to a
sector not copied yet first preserves the sector's old record (volumed.volume.records). The
snapshot holds exactly the writes acknowledged (fsync returned) before the barrier.

This module knows nothing of mounts: the order travels over the mount's control channel
(volumed.mount.snapshots sends it, volumed.mount.daemon answers it with ``daemon_snapshot``).

Test hook (daemons started with --allow-faults only): ``hold = {"after_chunks": K, "dir": D}``
makes the copier, after storing K chunks, create ``D/held`` and wait (no volume lock held) until
``D/release`` exists, so a test can write during the copy without racing it.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from volumed.clock import Clock
from volumed.errors import KeyAccessError, StateError, UsageError, VolumedError
from volumed.snapshot.engine import max_preserved, write_snapshot
from volumed.snapshot.store import open_store

HOLD_TIMEOUT = 60.0

Reply = dict[str, Any]  # {"ok": true, "snapshot_id": ID} or {"ok": false, "error": ONE LINE}


@dataclasses.dataclass(frozen=True)
class LiveSnapshotOrder:
    """What the holder of an open volume needs to snapshot it: the store's spec, the snapshot key
    (engine.snapshot_key's result), a description, the cap on preserved record bytes (None: the
    default) and the test hook ``hold`` ({"after_chunks": K, "dir": D})."""

    store: str
    key: dict[str, Any]
    description: str = ""
    max_preserved: int | None = None
    hold: dict[str, Any] | None = None

    def to_wire(self) -> dict[str, Any]:
        """The fields as JSON values (None fields left out)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> "LiveSnapshotOrder":
        """The order from its JSON fields; UsageError naming what is missing or malformed."""
        store, key, hold = d.get("store"), d.get("key"), d.get("hold")
        description, cap = d.get("description", ""), d.get("max_preserved")
        if not isinstance(store, str) or not isinstance(key, dict):
            raise UsageError("a snapshot request needs a store spec and a snapshot key")
        if not isinstance(description, str) or not (cap is None or isinstance(cap, (int, str))):
            raise UsageError("malformed snapshot request: description or max_preserved")
        if hold is not None and not isinstance(hold, dict):
            raise UsageError("malformed snapshot request: hold")
        return cls(store, key, description, None if cap is None else max_preserved(cap), hold)


def daemon_snapshot(volume: Any, order: LiveSnapshotOrder | Mapping[str, Any],
                    allow_faults: bool = False) -> Reply:
    """The holder's side (the daemon, in a worker thread): carry out ``order`` (a
    LiveSnapshotOrder or its wire fields) on the open ``volume``. ``allow_faults``: the daemon was
    started with --allow-faults (the "hold" test hook). Returns snapshot_live's reply."""
    try:
        if not isinstance(order, LiveSnapshotOrder):
            order = LiveSnapshotOrder.from_wire(order)
        if order.hold is not None and not allow_faults:
            return {"ok": False, "error": "hold needs a daemon started with --allow-faults"}
        return snapshot_live(volume, open_store(order.store), order.key,
                             description=order.description,
                             progress=_hold(order.hold) if order.hold else None,
                             max_kept_bytes=max_preserved(order.max_preserved))
    except VolumedError as exc:
        return {"ok": False, "error": str(exc)}


def snapshot_live(volume: Any, store: Any, key: dict[str, Any], *, description: str = "",
                  progress: Callable[[int, int], None] | None = None,
                  max_kept_bytes: int | None = None, clock: Clock | None = None) -> Reply:
    """Snapshot an open Volume that keeps serving I/O (engine.write_snapshot with live=True; at
    most ``max_kept_bytes`` of preserved records): the reply ``{"ok": true, "snapshot_id"}``, or
    ``{"ok": false, "error": ONE LINE}`` with nothing published (the capture session ended, the
    chunks stored for it removed)."""
    try:
        m = write_snapshot(volume, store, key, live=True, description=description, progress=progress,
                           max_kept_bytes=max_kept_bytes, clock=clock)
    except KeyAccessError:
        return {"ok": False, "error": "the volume's key was wiped (access revoked) during the "
                                      "snapshot: nothing was saved; restore access, then retry"}
    except (VolumedError, OSError) as exc:
        return {"ok": False, "error": f"nothing was saved: {_one_line(exc)}"}
    return {"ok": True, "snapshot_id": m["snapshot_id"]}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _hold(spec: Mapping[str, Any]) -> Callable[[int, int], None]:
    """The progress callback of the "hold" test hook (see the module docstring)."""
    after, d = int(spec["after_chunks"]), str(spec["dir"])

    def progress(done: int, total: int) -> None:
        if done != min(after, total):
            return
        open(os.path.join(d, "held"), "w").close()
        deadline = time.monotonic() + HOLD_TIMEOUT
        while not os.path.exists(os.path.join(d, "release")):
            if time.monotonic() > deadline:
                raise StateError(f"snapshot hold not released within {HOLD_TIMEOUT:.0f} s")
            time.sleep(0.005)

    return progress
