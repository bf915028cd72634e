"""Snapshot manifest MACs: who may vouch for a manifest, and the check before any chunk is used.

A manifest's SHA-256 only detects damage: anyone who can write the store can edit a manifest (splice
a chunk of an older snapshot of the same volume into a newer one, add an account to
``shared_with``, change ``owner_account``) and recompute it. So each manifest object also carries
``"mac"``: HMAC-SHA256 over the manifest's canonical JSON (every field: ids, owner_account,
shared_with, the wrapped key and its context, the chunk list, parent, sizes) under

    root    = HKDF-SHA256(data key, salt = none, info = "volumed snapshot manifest root v1")
    mac key = HKDF-SHA256(root, salt = UTF-8 snapshot id, info = "volumed snapshot manifest mac v1")

where the data key is the snapshot's plaintext data key (the volume's own for snapshots of it and
same-key copies). Only a holder of that key can seal: the store alone cannot. The root comes from
an open Volume (Volume.snapshot_root) or from a Decrypt of the snapshot's wrapped key
(``root_from_kms``); nothing read from the store is trusted to name the key it is checked with
except the wrapped key itself, which KMS only unwraps under the context naming this snapshot id.

A manifest without a MAC (written before this check existed) is refused with the command that
seals it (``volumed snapshot seal SNAP``, run by an operator with access to the key after the
chunks are checked: engine.seal_snapshot). A manifest without a MAC whose key carries the
manifest-MAC marker (keys.MAC_MARKER, in the KMS encryption context) was MAC'd from birth: its MAC
was removed in the store, and it is refused everywhere, seal included (ManifestMacRemoved); if the
marker was stripped from the manifest's context too, the key no longer unwraps under the stated
context but does under the marked one, which ``open_for_seal`` checks. Callers: catalog (verify,
seal), engine, restore.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from volumed.errors import IntegrityError, KeyAccessError
from volumed.secrets import wipe
from volumed.snapshot import keys
from volumed.snapshot.keys import KmsClient
from volumed.snapshot.objects import Manifest
from volumed.volume.header import snapshot_root_key

MAC_INFO = b"volumed snapshot manifest mac v1"


class UnsealedManifest(IntegrityError):
    """A manifest with no MAC (written by an older volumed)."""

    code = "UnsealedManifest"


class ManifestMacRemoved(IntegrityError):
    """A manifest with no MAC whose snapshot key carries the manifest-MAC marker: it was created
    with a MAC, which a writer of the store removed."""

    code = "ManifestMacRemoved"


def mac_key(root: bytes | bytearray, snap_id: str) -> bytearray:
    """The manifest MAC key of ``snap_id`` under ``root``."""
    hk = HKDF(algorithm=hashes.SHA256(), length=32, salt=snap_id.encode(), info=MAC_INFO)
    return bytearray(hk.derive(bytes(root)))


def compute(root: bytes | bytearray, snap_id: str, canonical: bytes) -> str:
    """HMAC-SHA256 (hex) of a manifest's canonical JSON."""
    k = mac_key(root, snap_id)
    try:
        return hmac.new(bytes(k), canonical, hashlib.sha256).hexdigest()
    finally:
        wipe(k)


def matches(root: bytes | bytearray, snap_id: str, canonical: bytes, mac: str | None) -> bool:
    """True if ``mac`` is the MAC of the manifest under ``root``."""
    return isinstance(mac, str) and hmac.compare_digest(compute(root, snap_id, canonical), mac)


def unsealed_message(snap_id: str) -> str:
    return (f"snapshot {snap_id} has no manifest MAC (written by an older volumed), so its chunk "
            "list, owner and sharing cannot be trusted: someone with access to its KMS key checks "
            f"it and seals it with `volumed snapshot seal {snap_id}` (docs/SNAPSHOTS.md)")


def mac_removed_message(snap_id: str) -> str:
    return (f"snapshot {snap_id} was created with a manifest MAC (its key's KMS encryption context "
            f"carries {keys.MAC_MARKER}={keys.MAC_MARKER_VERSION}) but its manifest has none: the MAC "
            "was removed in the snapshot store, so its chunk list, owner and sharing cannot be "
            "trusted; it is refused and cannot be sealed (restore another snapshot; docs/SNAPSHOTS.md)")


def refuse_unsealed(manifest: Manifest) -> None:
    """The refusal of a manifest that has no MAC, before any KMS call: ManifestMacRemoved if its
    key carries the manifest-MAC marker, else UnsealedManifest (with the command that seals it)."""
    sid = manifest["snapshot_id"]
    if keys.has_mac_marker(manifest.get("context")):
        raise ManifestMacRemoved(mac_removed_message(sid))
    raise UnsealedManifest(unsealed_message(sid))


def verify(root: bytes | bytearray, snap_id: str, canonical: bytes, mac: str | None) -> None:
    """IntegrityError unless ``mac`` verifies (UnsealedManifest if there is none)."""
    if mac is None:
        raise UnsealedManifest(unsealed_message(snap_id))
    if not matches(root, snap_id, canonical, mac):
        raise IntegrityError(f"the manifest of snapshot {snap_id} fails its MAC: it was altered in "
                             "the snapshot store (chunk list, owner, sharing or key); do not use it")


def root_from_key(data_key: bytes | bytearray) -> bytearray:
    """The MAC root of a plaintext data key (the caller still wipes ``data_key``)."""
    return snapshot_root_key(data_key)


def check_context(manifest: Manifest) -> None:
    """IntegrityError unless the manifest's key context is the snapshot's own: its db id and
    snapshot id, with the manifest-MAC marker or (legacy) without; nothing else. KMS binds the
    wrapped key to it, so a wrapped key moved from another snapshot's manifest does not unwrap."""
    ctx = manifest.get("context") or {}
    db_id, sid = manifest["volume"]["db_id"], manifest["snapshot_id"]
    if ctx not in (keys.snapshot_context(db_id, sid), keys.snapshot_context(db_id, sid, marked=False)):
        raise IntegrityError(f"the manifest of snapshot {sid} names a key context {ctx} that is not "
                             "the snapshot's own: it was altered; do not use it")


def root_from_kms(kms: KmsClient, manifest: Manifest) -> bytearray:
    """The MAC root of a snapshot's own data key (one Decrypt under the snapshot's context, which
    must be its own: check_context)."""
    check_context(manifest)
    key = keys.open_snapshot_key(kms, manifest)
    try:
        return root_from_key(key)
    finally:
        wipe(key)


def open_for_seal(kms: KmsClient, manifest: Manifest, *, sealed: bool) -> bytearray:
    """The snapshot's plaintext data key for ``snapshot seal`` (the caller wipes it or hands it to
    a cipher). For a manifest with no MAC (not ``sealed``): refused before any KMS call if its
    context carries the manifest-MAC marker; and if the key does not unwrap under its stated
    (legacy) context but does under the marked one, the marker was stripped from the manifest
    too: ManifestMacRemoved, the key wiped, nothing sealed."""
    if not sealed and keys.has_mac_marker(manifest.get("context")):
        refuse_unsealed(manifest)
    check_context(manifest)
    try:
        return keys.open_snapshot_key(kms, manifest)
    except KeyAccessError as exc:
        if sealed or exc.code != "InvalidCiphertextException":
            raise
        marked = dict(manifest, context=keys.snapshot_context(manifest["volume"]["db_id"],
                                                              manifest["snapshot_id"]))
        try:
            wipe(keys.open_snapshot_key(kms, marked))
        except KeyAccessError:
            raise exc from None  # not ours either: the original refusal stands
        raise ManifestMacRemoved(mac_removed_message(manifest["snapshot_id"])) from None
