"""Finding and loading snapshot manifests in a store.

``load(store, snap_id)`` returns a verified manifest (UsageError with the snapshot-id hint if there
is none); ``all_manifests(store)`` every readable manifest, oldest first; ``of_volume(store, uuid)``
those of one volume; ``save(store, manifest)`` writes one. A damaged manifest is reported by
``load``; the listing skips it with a note so one bad object does not hide the rest.
Callers: engine, restore, the CLI.
"""

from __future__ import annotations

import logging

from volumed.errors import IntegrityError, UsageError, VolumedError
from volumed.snapshot.ids import validate_snapshot_id
from volumed.snapshot.objects import decode_manifest, encode_manifest, manifest_name
from volumed.snapshot.store import ObjectMissing

log = logging.getLogger("volumed.snapshot")


def load(store, snap_id: str) -> dict:
    """The verified manifest of ``snap_id``."""
    validate_snapshot_id(snap_id)
    try:
        data = store.get(manifest_name(snap_id))
    except ObjectMissing:
        raise UsageError(f"snapshot {snap_id} does not exist in the snapshot store {store.spec} "
                         "(see volumed snapshot list)", code="InvalidSnapshot.NotFound") from None
    return decode_manifest(data, snap_id)


def save(store, manifest: dict) -> None:
    """Write (or rewrite) a manifest, after making every chunk put before it durable; durable
    itself on return."""
    store.sync()
    store.put(manifest_name(manifest["snapshot_id"]), encode_manifest(manifest))
    store.sync()


def all_manifests(store) -> list[dict]:
    """Every readable manifest in the store, oldest first (damaged ones logged and skipped)."""
    out = []
    for name in store.list("snapshots/"):
        if not name.endswith(".json"):
            continue
        snap_id = name[len("snapshots/"):-len(".json")]
        try:
            out.append(decode_manifest(store.get(name), snap_id))
        except (IntegrityError, VolumedError) as exc:
            log.warning("skipping %s: %s", name, exc)
    return sorted(out, key=lambda m: (m["created"], m["snapshot_id"]))


def of_volume(store, volume_uuid: str) -> list[dict]:
    """Manifests of snapshots taken of the volume ``volume_uuid`` (not copies), oldest first."""
    return [m for m in all_manifests(store)
            if m["volume"]["uuid"] == volume_uuid and not m.get("source_snapshot")]
