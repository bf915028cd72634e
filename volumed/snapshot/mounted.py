"""Snapshots of mounted volumes: the CLI prepares the key, the daemon copies the sectors.

The daemon holds the volume (its flock) and calls KMS as the host principal, whose grant allows
Decrypt and GenerateDataKeyWithoutPlaintext only. So the user's CLI does phase 1
(engine.snapshot_key: ReEncrypt to the snapshot's context) and sends the result over the daemon's
control channel: ``{"op": "snapshot", "store": SPEC, "key": {...}, "description": TEXT}``. The
daemon answers with ``daemon_snapshot(volume, msg)`` in a worker thread: it takes the volume's I/O
barrier (waits for in-flight requests; new ones wait), flushes, copies every sector record into
the store and releases the barrier. Writes acknowledged before the request (fsync returned) are
in the snapshot; I/O is paused for the copy (which reads the whole volume: 6-10 s per GiB;
docs/SNAPSHOTS.md). Callers: engine.create_snapshot (client side), the mount daemon's control
handler (server side).
"""

from __future__ import annotations

import os

from volumed.errors import StateError, VolumedError


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
    from volumed.mount import client
    from volumed.snapshot import catalog
    from volumed.snapshot.engine import snapshot_key
    from volumed.volume import Volume

    st = find_mount(volume_path)
    if st is None or not st.get("mountpoint"):
        raise StateError(f"volume {volume_path} is open in another volumed process (not a mount on "
                         "this host): close it first, then snapshot it")
    key = snapshot_key(kms, Volume.read_header(volume_path))
    try:
        client.send(st["mountpoint"], {"op": "snapshot", "store": store.spec, "key": key,
                                       "description": description})
    except VolumedError as exc:
        if "unknown op" in str(exc):
            raise StateError(f"the daemon serving {volume_path} cannot take snapshots (older "
                             "volumed): unmount the volume, then snapshot it") from None
        raise VolumedError(f"snapshot of mounted {volume_path} failed: {exc}") from None
    return catalog.load(store, key["snapshot_id"])


def daemon_snapshot(volume, msg: dict) -> dict:
    """Server side (in the daemon, in a worker thread): pause I/O, flush, copy, resume."""
    from volumed.snapshot.engine import write_snapshot
    from volumed.snapshot.store import open_store

    store = open_store(msg["store"])
    with volume._locks.exclusive():  # in-flight requests drain; new ones wait until we are done
        if volume._store is None:
            return {"ok": False, "error": "the volume's key was wiped (revoked): no snapshot possible"}
        volume._store.flush()  # durable, and GCM's volatile slots become the sectors' versions
        m = write_snapshot(volume, store, msg["key"], description=msg.get("description", ""))
    return {"ok": True, "snapshot_id": m["snapshot_id"]}
