"""Snapshots of mounted volumes: the CLI prepares the key, the daemon copies the sectors.

The daemon holds the volume (its flock) and calls KMS as the host principal, whose grant allows
Decrypt and GenerateDataKeyWithoutPlaintext only. So the user's CLI does phase 1
(engine.snapshot_key: ReEncrypt to the snapshot's context) and sends the result over the daemon's
control channel: ``{"op": "snapshot", "store": SPEC, "key": {...}, "description": TEXT,
"max_preserved": BYTES}`` (the CLI's $VOLUMED_SNAPSHOT_MAX_PRESERVED, else 256 MiB). The
daemon answers with ``daemon_snapshot(volume, msg)`` in a worker thread: under the store lock it
takes the volume's I/O barrier only to flush and open a capture session (Volume.begin_capture),
then copies the records while I/O goes on; a write to a sector not copied yet first preserves the
sector's old record (volumed.volume.records). The snapshot holds exactly the writes acknowledged
(fsync returned) before the barrier. Callers: engine.create_snapshot (client side), the mount
daemon's control handler (server side).

Test hook (daemons started with --allow-faults only): ``"hold": {"after_chunks": K, "dir": D}``
makes the copier, after storing K chunks, create ``D/held`` and wait (no volume lock held) until
``D/release`` exists, so a test can write during the copy without racing it.
"""

from __future__ import annotations

import os
import time

from volumed.errors import KeyAccessError, StateError, VolumedError


def find_mount(volume_path: str) -> dict | None:
    """The ``volumed status`` entry of the mount serving ``volume_path``, if any."""
    from volumed.mount import client

    want = os.path.realpath(volume_path)
    for st in client.status_all():
        if st.get("volume") and os.path.realpath(st["volume"]) == want:
            return st
    return None


def snapshot_through_daemon(volume_path: str, *, kms, store, description: str = "") -> dict:
    """Snapshot a mounted volume through its daemon; returns the saved manifest."""
    from volumed.mount import control, paths
    from volumed.snapshot import catalog
    from volumed.snapshot.engine import max_preserved, snapshot_key
    from volumed.volume import Volume

    st = find_mount(volume_path)
    if st is None or not st.get("mountpoint"):
        raise StateError(f"volume {volume_path} is open in another volumed process (not a mount on "
                         "this host): close it first, then snapshot it")
    header = Volume.read_header(volume_path)
    cap = max_preserved()  # a malformed setting is refused before any KMS call
    key = snapshot_key(kms, header)
    msg = {"op": "snapshot", "store": store.spec, "key": key, "description": description,
           "max_preserved": cap}
    try:  # the reply comes when the copy is done: wait as long as a slow copy may take
        reply = control.request(paths.socket_path(paths.mount_id(st["mountpoint"])), msg,
                                timeout=reply_timeout(header.size))
    except OSError as exc:
        raise VolumedError(f"snapshot of mounted {volume_path} failed: no answer from its daemon "
                           f"({exc.strerror or exc}); see volumed status") from None
    if not reply.get("ok"):
        error = reply.get("error", "control request failed")
        if "unknown op" in error:
            raise StateError(f"the daemon serving {volume_path} cannot take snapshots (older "
                             "volumed): unmount the volume, then snapshot it")
        raise VolumedError(f"snapshot of mounted {volume_path} failed: {error}")
    return catalog.peek(store, key["snapshot_id"])  # to show: the daemon sealed it, nothing is used


def reply_timeout(size: int) -> float:
    """Seconds to wait for the daemon's answer to a snapshot of a ``size``-byte volume: a minute
    plus 1 s per 16 MiB (the copy runs at 100-170 MiB/s on the 2-core test machine)."""
    return 60.0 + size / (16 << 20)


def daemon_snapshot(volume, msg: dict, allow_faults: bool = False) -> dict:
    """Server side (in the daemon, in a worker thread): the reply to a "snapshot" request.
    ``allow_faults``: the daemon was started with --allow-faults (the "hold" test hook)."""
    from volumed.snapshot.engine import max_preserved
    from volumed.snapshot.store import open_store

    hold = msg.get("hold")
    if hold is not None and not allow_faults:
        return {"ok": False, "error": "hold needs a daemon started with --allow-faults"}
    try:
        return snapshot_live(volume, open_store(msg["store"]), msg["key"],
                             description=msg.get("description", ""),
                             progress=_hold(hold) if hold else None,
                             max_kept_bytes=max_preserved(msg.get("max_preserved")))
    except VolumedError as exc:
        return {"ok": False, "error": str(exc)}


def snapshot_live(volume, store, key: dict, *, description: str = "", progress=None,
                  max_kept_bytes: int | None = None, clock=None) -> dict:
    """Snapshot an open Volume that keeps serving I/O (engine.write_snapshot with live=True; at
    most ``max_kept_bytes`` of preserved records): the reply ``{"ok": true, "snapshot_id"}``, or
    ``{"ok": false, "error": ONE LINE}`` with nothing published (the capture session ended, the
    chunks stored for it removed)."""
    from volumed.snapshot.engine import write_snapshot

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


HOLD_TIMEOUT = 60.0


def _hold(spec: dict):
    """The progress callback of the "hold" test hook (see the module docstring)."""
    after, d = int(spec["after_chunks"]), spec["dir"]

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
