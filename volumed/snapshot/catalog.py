"""Finding and loading snapshot manifests in a store.

``load(store, snap_id, kms=... | root=...)`` returns a manifest whose MAC verified (the only way to
get a manifest whose chunks may be used; UsageError with the snapshot-id hint if there is none);
``peek(store, snap_id)`` the same manifest checked only against damage (SHA-256), for describe and
delete, which use no chunk. ``all_manifests(store)`` every readable manifest, oldest first
(unverified: listing, sweeping chunks no manifest names); ``of_volume(store, uuid, root)`` those of
one volume whose MAC verifies under ``root`` (a parent for an incremental snapshot); ``save(store,
manifest, root)`` seals and writes one. A damaged manifest is reported by ``load``; the listing
skips it with a note so one bad object does not hide the rest. Callers: engine, restore, the CLI.
"""

from __future__ import annotations

import logging

from volumed.errors import IntegrityError, UsageError, VolumedError
from volumed.secrets import wipe
from volumed.snapshot import seal
from volumed.snapshot.ids import validate_snapshot_id
from volumed.snapshot.keys import KmsClient
from volumed.snapshot.objects import Manifest, canonical, decode_manifest, encode_manifest, manifest_name
from volumed.snapshot.store import ObjectMissing, Store

log = logging.getLogger("volumed.snapshot")


def _read(store: Store, snap_id: str) -> tuple[Manifest, str | None]:
    validate_snapshot_id(snap_id)
    try:
        data = store.get(manifest_name(snap_id))
    except ObjectMissing:
        raise UsageError(f"snapshot {snap_id} does not exist in the snapshot store {store.spec} "
                         "(see volumed snapshot list)", code="InvalidSnapshot.NotFound") from None
    return decode_manifest(data, snap_id)


def read_with_mac(store: Store, snap_id: str) -> tuple[Manifest, str | None]:
    """(manifest checked for damage only, its MAC or None): for engine.seal_snapshot."""
    return _read(store, snap_id)


def peek(store: Store, snap_id: str) -> Manifest:
    """The manifest of ``snap_id``, checked for damage but NOT authenticated: anyone who can write
    the store can have written it. Never use its chunks or trust its owner/sharing from it."""
    return _read(store, snap_id)[0]


def load_with_root(store: Store, snap_id: str, *, kms: KmsClient) -> tuple[Manifest, bytearray]:
    """(verified manifest, its MAC root) for callers that seal a manifest under the same data key
    (share, a same-key copy); the caller wipes the root (volumed.secrets.wipe)."""
    m, mac = _read(store, snap_id)
    if mac is None:  # refuse before any KMS call
        seal.refuse_unsealed(m)
    root = seal.root_from_kms(kms, m)
    try:
        seal.verify(root, snap_id, canonical(m), mac)
    except BaseException:
        wipe(root)
        raise
    return m, root


def load(store: Store, snap_id: str, *, kms: KmsClient | None = None,
         root: bytes | bytearray | None = None) -> Manifest:
    """The manifest of ``snap_id`` after its MAC verified under ``root`` (the snapshot's MAC root,
    wiped by the caller) or, without it, under the root of the snapshot's own data key (one
    Decrypt through ``kms``). IntegrityError if it was altered, seal.UnsealedManifest if it has no
    MAC (seal.ManifestMacRemoved if its key's context says it was created with one)."""
    m, mac = _read(store, snap_id)
    if root is not None:
        seal.verify(root, snap_id, canonical(m), mac)
        return m
    if kms is None:
        raise TypeError("catalog.load needs kms or root")
    if mac is None:  # refuse before any KMS call (ManifestMacRemoved if its key says it had one)
        seal.refuse_unsealed(m)
    own = seal.root_from_kms(kms, m)
    try:
        seal.verify(own, snap_id, canonical(m), mac)
    finally:
        wipe(own)
    return m


def save(store: Store, manifest: Manifest, root: bytes | bytearray) -> None:
    """Seal (MAC under ``root``) and write (or rewrite) a manifest, after making every chunk put
    before it durable; durable itself on return."""
    sid = manifest["snapshot_id"]
    mac = seal.compute(root, sid, canonical(manifest))
    store.sync()
    store.put(manifest_name(sid), encode_manifest(manifest, mac))
    store.sync()


def _all(store: Store) -> list[tuple[Manifest, str | None]]:
    out = []
    for name in store.list("snapshots/"):
        if not name.endswith(".json"):
            continue
        snap_id = name[len("snapshots/"):-len(".json")]
        try:
            out.append(decode_manifest(store.get(name), snap_id))
        except (IntegrityError, VolumedError) as exc:
            log.warning("skipping %s: %s", name, exc)
    return sorted(out, key=lambda p: (p[0]["created"], p[0]["snapshot_id"]))


def all_with_mac(store: Store) -> list[tuple[Manifest, str | None]]:
    """(manifest, MAC or None) of every readable manifest, oldest first (MACs not checked): the
    listing, which shows which manifests still need ``volumed snapshot seal``."""
    return _all(store)


def all_manifests(store: Store) -> list[Manifest]:
    """Every readable manifest in the store, oldest first (damaged ones logged and skipped; MACs
    not checked)."""
    return [m for m, _ in _all(store)]


def of_volume(store: Store, volume_uuid: str, root: bytes | bytearray | None = None) -> list[Manifest]:
    """Manifests of snapshots taken of the volume ``volume_uuid`` (not copies), oldest first. With
    ``root`` (the volume's Volume.snapshot_root) only those whose MAC verifies under it; without,
    unverified (a hint to the user, never a parent)."""
    out = []
    for m, mac in _all(store):
        if m["volume"]["uuid"] != volume_uuid or m.get("source_snapshot"):
            continue
        if root is not None and not seal.matches(root, m["snapshot_id"], canonical(m), mac):
            log.warning("not using snapshot %s as a parent: its manifest MAC does not verify under "
                        "the volume's key", m["snapshot_id"])
            continue
        out.append(m)
    return out
