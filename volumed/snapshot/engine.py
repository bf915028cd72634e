"""Snapshot create, copy, share and delete; the terminal state's restore hint.

A snapshot is a manifest plus content-addressed chunks (volumed.snapshot.objects). Creating one
reads the volume's sector records (Volume.read_records, or of a volume that keeps serving I/O a
capture session, Volume.begin_capture) 16 sectors (64 KiB) at a time; a chunk
already in the store (the previous snapshot of the volume has it, or any other snapshot does) is not
stored again, so each snapshot stores only the chunks whose sectors changed, yet its manifest names
every chunk it needs and restores on its own. Deleting a snapshot removes its manifest and then the
chunks no remaining manifest names. Key handling: volumed.snapshot.keys.
Callers: the CLI (volumed.cli.snapshot_cmd), the mount daemon (snapshot of a mounted volume),
tests.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import json
import logging
import os
import re
from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeAlias

from volumed.clock import SYSTEM_CLOCK, Clock, iso_utc
from volumed.errors import IntegrityError, KeyAccessError, StateError, UsageError
from volumed.kms.arn import Arn
from volumed.secrets import wipe
from volumed.snapshot import catalog, keys, recrypt, seal
from volumed.snapshot.ids import new_snapshot_id
from volumed.snapshot.keys import KmsClient
from volumed.snapshot.objects import (MANIFEST_FORMAT, MANIFEST_VERSION, RECORD_SIZE, Manifest, canonical,
                                      chunk_name, decode_chunk, encode_chunk, manifest_name)
from volumed.snapshot.store import Store, open_store
from volumed.volume import Volume
from volumed.volume.device import parse_size
from volumed.volume.header import VolumeHeader
from volumed.volume.records import DEFAULT_MAX_KEPT_BYTES

CHUNK_SECTORS = 16
MANAGED_KEY_REFUSAL = ("You can't share a snapshot that has been encrypted using the AWS managed key "
                       "(aws/rds): copy it under a customer managed key (volumed snapshot copy SNAP "
                       "--key KEY) and share the copy")


ENV_MAX_PRESERVED = "VOLUMED_SNAPSHOT_MAX_PRESERVED"

# engine.snapshot_key's result, sent over the mount's control channel as JSON: snapshot_id, key_arn,
# wrapped_key (base64), context, owner_account.
SnapshotKey: TypeAlias = dict[str, Any]
Progress: TypeAlias = Callable[[int, int], None] | None  # (chunks done, total) after each chunk


class RecordSource(Protocol):
    """What a snapshot copies from: an open Volume held still, or its capture session."""

    @property
    def header(self) -> VolumeHeader: ...

    @property
    def path(self) -> str: ...

    def read_records(self, first: int, n: int) -> list[bytes | None]: ...


class MountedSnapshot(Protocol):
    """Snapshot a volume another process holds open (create_snapshot's ``mounted``); returns the
    saved manifest. volumed.mount.snapshots.snapshot_through_daemon is one."""

    def __call__(self, volume_path: str, *, kms: KmsClient, store: Store, description: str = "") -> Manifest: ...


def _stamp(when: _dt.datetime) -> str:
    return iso_utc(when, micros=True)


def _now(clock: Clock | None) -> str:
    return _stamp((clock or SYSTEM_CLOCK).now())


def max_preserved(value: int | str | None = None) -> int:
    """The byte cap on the records a live snapshot's capture session may hold in memory:
    ``value`` (bytes or a size like 512M) if given, else $VOLUMED_SNAPSHOT_MAX_PRESERVED, else
    256 MiB (records.DEFAULT_MAX_KEPT_BYTES). UsageError if malformed or not positive.
    Callers: mounted (the CLI side sends it, the daemon side applies it)."""
    if value is None:
        value = os.environ.get(ENV_MAX_PRESERVED) or DEFAULT_MAX_KEPT_BYTES
    n = parse_size(str(value))  # an int from the control request, or text
    if n <= 0:
        raise UsageError(f"invalid {ENV_MAX_PRESERVED} {value!r}: must be a positive size (e.g. 256M)")
    return n


def caller_account(kms: KmsClient) -> str:
    """The AWS account of the principal ``kms`` calls as (embedded: its principal ARN; AWS: STS)."""
    principal = getattr(kms, "principal", None)
    if isinstance(principal, str) and principal.startswith("arn:"):
        return Arn.parse(principal).account
    import boto3

    account: str = boto3.client("sts").get_caller_identity()["Account"]
    return account


def chunk_count(sectors: int) -> int:
    """Number of chunks of a volume of ``sectors`` sectors."""
    return -(-sectors // CHUNK_SECTORS)


def chunk_records(store: Store, manifest: Manifest, ci: int) -> list[bytes | None]:
    """The records of chunk ``ci`` of ``manifest`` (all None for an absent chunk), verified."""
    sectors = manifest["volume"]["size"] // 4096
    n = min(CHUNK_SECTORS, sectors - ci * CHUNK_SECTORS)
    digest = manifest["chunks"][ci]
    if digest is None:
        return [None] * n
    recs = decode_chunk(digest, store.get(chunk_name(digest)), manifest["volume"]["cipher"],
                        manifest["snapshot_id"])
    if len(recs) != n:
        raise IntegrityError(f"chunk {ci} of {manifest['snapshot_id']} covers {len(recs)} sectors, "
                             f"its manifest expects {n}")
    return recs


def _put_chunk(store: Store, cipher: str, records: list[bytes | None], known: set[str]) -> tuple[str | None, int]:
    """Store a chunk unless ``known`` (chunks of the previous snapshot's manifest, durable and
    verified by name when read) has it: (digest or None, bytes stored). A chunk object found in
    the store but named by no manifest is rewritten, not trusted: it may be the torn leftover of
    a snapshot that crashed before its manifest."""
    enc = encode_chunk(cipher, records)
    if enc is None:
        return None, 0
    digest, data = enc
    if digest in known:
        return digest, 0
    store.put(chunk_name(digest), data)
    known.add(digest)
    return digest, len(data)


def _manifest(snap_id: str, vol_header: dict[str, Any], *, key_arn: str, wrapped: bytes,
              ctx: keys.Context, owner: str, clock: Clock | None, aad_uuid: str,
              created: str | None = None, **extra: Any) -> Manifest:
    h = vol_header
    m: Manifest = {
        "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "snapshot_id": snap_id,
        "created": created or _now(clock), "state": "completed", "owner_account": owner, "shared_with": [],
        "volume": {"uuid": h["uuid"], "ebs_id": h["ebs_id"], "db_id": h["db_id"], "cipher": h["cipher"],
                   "size": h["size"], "sector_size": 4096, "path": h.get("path", "")},
        "aad_uuid": aad_uuid, "key_arn": key_arn,
        "wrapped_key": base64.b64encode(wrapped).decode(), "context": ctx,
        "chunk_sectors": CHUNK_SECTORS, "record_size": RECORD_SIZE[h["cipher"]],
        "parent": None, "source_snapshot": None, "chunks": [], "stored_bytes": 0, "description": "",
    }
    m.update(extra)
    return m


def snapshot_key(kms: KmsClient, header: VolumeHeader) -> SnapshotKey:
    """Phase 1 of a snapshot, as the user: a new snapshot id and the volume's data key rewrapped
    (ReEncrypt) for the snapshot's context. Needs no access to the volume's sectors, so the CLI
    can do it for a mounted volume whose daemon (a host principal without ReEncrypt) copies them."""
    snap_id = new_snapshot_id()
    ctx = keys.snapshot_context(header.db_id, snap_id)
    wrapped, arn = keys.rewrap(kms, header.wrapped_key, header.key_arn, header.context, header.key_arn, ctx)
    return {"snapshot_id": snap_id, "key_arn": arn, "wrapped_key": base64.b64encode(wrapped).decode(),
            "context": ctx, "owner_account": caller_account(kms)}


def write_snapshot(vol: Volume, store: Store, key: SnapshotKey, *, live: bool = False,
                   clock: Clock | None = None, description: str = "", progress: Progress = None,
                   max_kept_bytes: int | None = None) -> Manifest:
    """Phase 2: copy the open Volume's sector records into ``store`` under the snapshot ``key``
    (from snapshot_key) and save the manifest. Not ``live``: the caller holds the volume still (no
    write runs while this reads). ``live`` (the mount daemon): once the store lock is taken, a
    capture session (Volume.begin_capture: a flush under a short I/O pause) fixes the point in
    time and I/O goes on while the records are copied; it holds at most ``max_kept_bytes`` of
    preserved records (default: max_preserved()), past which the snapshot fails. The manifest's
    ``created`` is the point in time: the session's start (live), else the copy's start. Chunks
    reused from the parent are checked to still be in the store before the manifest is saved. On
    any failure no manifest is written and the chunks this call stored that no manifest names are
    removed; the session always ends. ``progress(done, total)`` runs after each chunk is stored,
    holding no volume lock."""
    if key["context"] == keys.snapshot_context(vol.header.db_id, key["snapshot_id"], marked=False):
        raise UsageError(f"the snapshot key for {vol.path} has no manifest-MAC marker "
                         f"({keys.MAC_MARKER}): it was made by an older volumed; run `volumed "
                         "snapshot create` with the same volumed version as the mount")
    if key["context"] != keys.snapshot_context(vol.header.db_id, key["snapshot_id"]):
        raise UsageError(f"snapshot key was made for another volume than {vol.path}")
    root = vol.snapshot_root()
    try:
        with store.lock():
            return _write_snapshot_locked(vol, store, key, root, live, clock, description, progress,
                                          max_kept_bytes)
    finally:
        wipe(root)


def _write_snapshot_locked(vol: Volume, store: Store, key: SnapshotKey, root: bytearray, live: bool,
                           clock: Clock | None, description: str, progress: Progress,
                           max_kept_bytes: int | None) -> Manifest:
    """write_snapshot under the store lock; ``root`` is the volume's manifest MAC root: the parent
    is the newest snapshot of the volume whose MAC verifies under it, the manifest is sealed with it."""
    previous = catalog.of_volume(store, vol.header.uuid, root)
    parent = previous[-1] if previous else None
    known = {c for c in (parent["chunks"] if parent else []) if c}
    added: list[str] = []
    try:
        source: contextlib.AbstractContextManager[RecordSource]
        if live:
            session = vol.begin_capture(clock=clock, max_kept_bytes=max_kept_bytes or max_preserved())
            source, created = session, _stamp(session.started)
        else:
            source, created = contextlib.nullcontext(vol), _now(clock)
        with source as src:
            chunks, stored = _copy_records(src, store, known, added, progress)
        _check_reused(store, chunks, added, key["snapshot_id"])
        h = src.header
        m = _manifest(key["snapshot_id"], {**vars(h), "path": src.path}, key_arn=key["key_arn"],
                      wrapped=base64.b64decode(key["wrapped_key"]), ctx=key["context"],
                      owner=key["owner_account"], clock=clock, aad_uuid=h.uuid, chunks=chunks,
                      stored_bytes=stored, parent=parent["snapshot_id"] if parent else None,
                      description=description, created=created)
        catalog.save(store, m, root)
    except BaseException:
        try:
            _sweep(store, added)
        except Exception as exc:  # the failure to report is the snapshot's own
            logging.getLogger("volumed.snapshot").warning(
                "could not remove the chunks of a failed snapshot from %s: %s", store.spec, exc)
        raise
    return m


def _check_reused(store: Store, chunks: list[str | None], added: Iterable[str], snap_id: str) -> None:
    """Before a manifest naming ``chunks`` is saved: every chunk it names that this call did not
    store itself (``added``) must still be in the store, else StateError. A writer that does not
    hold the store lock (an older volumed on the same S3 prefix) may have swept a chunk the new
    snapshot reuses from its parent; saving the manifest would publish an unrestorable snapshot."""
    mine = set(added)
    for digest in dict.fromkeys(c for c in chunks if c and c not in mine):
        if not store.exists(chunk_name(digest)):
            raise StateError(f"snapshot {snap_id} not saved: chunk {digest[:12]}... it reuses from "
                             f"an earlier snapshot was removed from the store {store.spec} during "
                             "the copy (a concurrent snapshot delete): retry the snapshot")


def _copy_records(src: RecordSource, store: Store, known: set[str], added: list[str],
                  progress: Progress) -> tuple[list[str | None], int]:
    """Store the chunks of ``src`` (a Volume or a capture session: header, read_records) in sector
    order; returns (chunk digests, bytes stored) and appends each digest stored to ``added``."""
    chunks: list[str | None] = []
    stored = 0
    sectors = src.header.sectors
    total = chunk_count(sectors)
    for ci in range(total):
        first = ci * CHUNK_SECTORS
        digest, n = _put_chunk(store, src.header.cipher,
                               src.read_records(first, min(CHUNK_SECTORS, sectors - first)), known)
        if digest is not None and n:
            added.append(digest)
        chunks.append(digest)
        stored += n
        if progress:
            progress(ci + 1, total)
    return chunks, stored


def _sweep(store: Store, candidates: Iterable[str]) -> int:
    """Delete the chunks among ``candidates`` (digests) that no manifest in the store names;
    returns the bytes freed. If any manifest is unreadable, nothing is removed (its chunks cannot
    be told apart) and a warning is logged. The caller holds the store lock."""
    names = [n for n in store.list("snapshots/") if n.endswith(".json")]
    remaining = catalog.all_manifests(store)
    if len(remaining) != len(names):
        logging.getLogger("volumed.snapshot").warning(
            "a manifest in %s is unreadable: unreferenced chunks were kept", store.spec)
        return 0
    used = {c for r in remaining for c in r["chunks"] if c}
    freed = 0
    for digest in set(candidates) - used:
        name = chunk_name(digest)
        try:
            freed += len(store.get(name))
        except Exception:
            pass
        store.delete(name)
    return freed


def snapshot_open_volume(vol: Volume, *, kms: KmsClient, store: Store, clock: Clock | None = None,
                         description: str = "", progress: Progress = None) -> Manifest:
    """snapshot_key then write_snapshot for an open Volume the caller holds still."""
    return write_snapshot(vol, store, snapshot_key(kms, vol.header), clock=clock,
                          description=description, progress=progress)


def create_snapshot(volume_path: str, *, kms: KmsClient, store: Store, clock: Clock | None = None,
                    description: str = "", progress: Progress = None,
                    mounted: MountedSnapshot | None = None) -> Manifest:
    """Snapshot the volume at ``volume_path``. Unmounted: opened (and so locked) for the duration.
    Open in another process (mounted): ``mounted(volume_path, kms=, store=, description=)`` takes
    it through the holder (a MountedSnapshot; the CLI passes the mount's
    volumed.mount.snapshots.snapshot_through_daemon); without one the StateError stands."""
    try:
        vol = Volume.open(volume_path, kms=kms)
    except StateError:
        if mounted is None:
            raise
        return mounted(volume_path, kms=kms, store=store, description=description)
    with vol:
        return snapshot_open_volume(vol, kms=kms, store=store, clock=clock, description=description,
                                    progress=progress)


def check_access(manifest: Manifest, kms: KmsClient, *, for_restore: bool) -> None:
    """The caller's account may use the snapshot: its owner may; an account it is shared with may
    copy it but must copy it before restoring (as with EBS/RDS shared encrypted snapshots)."""
    account = caller_account(kms)
    if account == manifest["owner_account"]:
        return
    sid = manifest["snapshot_id"]
    if account in manifest.get("shared_with", []):
        if for_restore:
            raise StateError(f"snapshot {sid} is shared with your account {account}: copy it first "
                             f"(volumed snapshot copy {sid} --key YOUR_KEY) and restore the copy",
                             code="InvalidSnapshot.Shared")
        return
    raise KeyAccessError(f"snapshot {sid} belongs to account {manifest['owner_account']} and is not "
                         f"shared with your account {account}", code="AuthFailure")


def copy_snapshot(store: Store, snap_id: str, *, kms: KmsClient, key_id: str | None = None,
                  clock: Clock | None = None, description: str = "", progress: Progress = None) -> Manifest:
    """A new snapshot with the same data. Same KMS key: it shares the data key (ReEncrypt to the
    new snapshot id's context) and every chunk. Another key: a new data key and every sector
    re-encrypted (a full copy). The source's manifest MAC is verified first (a Decrypt of its
    key); the copy is sealed under its own data key. Returns the new manifest."""
    check_access(catalog.peek(store, snap_id), kms, for_restore=False)  # refuse early, before KMS
    src, src_root = catalog.load_with_root(store, snap_id, kms=kms)
    try:
        check_access(src, kms, for_restore=False)
        return _copy_verified(store, src, src_root, kms=kms, key_id=key_id, clock=clock,
                              description=description, progress=progress)
    finally:
        wipe(src_root)


def _copy_verified(store: Store, src: Manifest, src_root: bytearray, *, kms: KmsClient, key_id: str | None,
                   clock: Clock | None, description: str, progress: Progress) -> Manifest:
    snap_id = src["snapshot_id"]
    cipher = src["volume"]["cipher"]
    new_id = new_snapshot_id()
    ctx = keys.snapshot_context(src["volume"]["db_id"], new_id)
    src_blob = base64.b64decode(src["wrapped_key"])
    dst_arn = keys.key_manager(kms, key_id)[0] if key_id else src["key_arn"]
    common = dict(ctx=ctx, owner=caller_account(kms), clock=clock, aad_uuid=src["aad_uuid"],
                  source_snapshot=snap_id, description=description or f"copy of {snap_id}")
    with store.lock():
        if dst_arn == src["key_arn"]:
            wrapped, arn = keys.rewrap(kms, src_blob, src["key_arn"], src["context"], dst_arn, ctx)
            m = _manifest(new_id, src["volume"], key_arn=arn, wrapped=wrapped,
                          chunks=list(src["chunks"]), **common)
            _check_reused(store, m["chunks"], (), new_id)
            catalog.save(store, m, src_root)  # the same data key: the same root
            return m
        wrapped, arn = keys.fresh(kms, dst_arn, cipher, ctx)
        old = recrypt.make_cipher(cipher, keys.open_snapshot_key(kms, src), src["aad_uuid"])
        new_key = keys.open_key(kms, arn, wrapped, ctx, cipher)
        new_root = seal.root_from_key(new_key)
        new = recrypt.make_cipher(cipher, new_key, src["aad_uuid"])
        try:
            chunks: list[str | None] = []
            stored, known = 0, set[str]()
            total = len(src["chunks"])
            for ci in range(total):
                recs = chunk_records(store, src, ci)
                first = ci * CHUNK_SECTORS
                plain = recrypt.decrypt(old, first, recs, snap_id)
                digest, n = _put_chunk(store, cipher, recrypt.encrypt(new, first, plain), known)
                wipe(plain)
                chunks.append(digest)
                stored += n
                if progress:
                    progress(ci + 1, total)
            m = _manifest(new_id, src["volume"], key_arn=arn, wrapped=wrapped, chunks=chunks,
                          stored_bytes=stored, **common)
            catalog.save(store, m, new_root)
        finally:
            old.close()
            new.close()
            wipe(new_root)
    return m


def seal_snapshot(store: Store, snap_id: str, *, kms: KmsClient, progress: Progress = None) -> Manifest:
    """Migration: give a manifest written before manifest MACs existed its MAC. Needs the
    snapshot's data key (Decrypt) and ReEncrypt on its KMS key. Every chunk is fetched and checked
    first (its SHA-256 and format; for GCM every sector's tag under the key), so a seal never
    vouches for a chunk that does not belong to the key; the operator running it vouches for the
    chunk list, owner and sharing as they stand (XTS sectors carry no tag: a chunk of another
    snapshot of the same volume would pass). Refused (seal.ManifestMacRemoved, nothing changed) if
    the snapshot's key carries the manifest-MAC marker: it was created with a MAC, which was removed.
    The sealed manifest's key is rewrapped (ReEncrypt) under the marked context, so its MAC cannot
    be removed and resealed later either. A manifest that is already sealed is verified; if its key
    has no marker yet (made before the marker) it gets one the same way, else it is returned
    unchanged."""
    with store.lock():
        m, mac = catalog.read_with_mac(store, snap_id)
        key = seal.open_for_seal(kms, m, sealed=mac is not None)
        root = seal.root_from_key(key)
        try:
            if mac is not None:
                wipe(key)
                seal.verify(root, snap_id, canonical(m), mac)
            else:
                _check_chunks(store, m, key, progress)  # wipes key
            if keys.has_mac_marker(m["context"]):
                return m
            ctx = keys.snapshot_context(m["volume"]["db_id"], snap_id)
            wrapped, arn = keys.rewrap(kms, base64.b64decode(m["wrapped_key"]), m["key_arn"],
                                       m["context"], m["key_arn"], ctx)
            m = dict(m, key_arn=arn, wrapped_key=base64.b64encode(wrapped).decode(), context=ctx)
            catalog.save(store, m, root)
        finally:
            wipe(key, root)
    return m


def _check_chunks(store: Store, m: Manifest, key: bytearray, progress: Progress) -> None:
    """Fetch every chunk of ``m`` and open every record under ``key`` (wiped: the cipher takes
    it): IntegrityError/FormatError on the first that does not belong."""
    cipher = m["volume"]["cipher"]
    c = recrypt.make_cipher(cipher, key, m["aad_uuid"])
    try:
        total = len(m["chunks"])
        for ci in range(total):
            if m["chunks"][ci] is not None:
                plain = recrypt.decrypt(c, ci * CHUNK_SECTORS, chunk_records(store, m, ci),
                                        m["snapshot_id"])
                wipe(plain)
            if progress:
                progress(ci + 1, total)
    finally:
        c.close()


ACCOUNT_RE = re.compile(r"^[0-9]{12}$")


def share_snapshot(store: Store, snap_id: str, account: str, *, kms: KmsClient) -> tuple[Manifest, str]:
    """Record that ``account`` may copy the snapshot; returns (manifest, what the key policy must
    allow). Refused (StateError, nothing recorded) for a snapshot under the AWS managed key."""
    if not ACCOUNT_RE.fullmatch(account or ""):
        raise UsageError(f"invalid account id {account!r}: expected 12 digits")
    check_access(catalog.peek(store, snap_id), kms, for_restore=True)  # refuse early, before KMS
    m, root = catalog.load_with_root(store, snap_id, kms=kms)
    try:
        check_access(m, kms, for_restore=True)
        arn, manager = keys.key_manager(kms, m["key_arn"])
        if manager == "AWS":
            raise StateError(f"cannot share {snap_id}: {MANAGED_KEY_REFUSAL}", code="InvalidParameterValue")
        with store.lock():
            m = catalog.load(store, snap_id, root=root)
            if account not in m["shared_with"]:
                m["shared_with"] = sorted(m["shared_with"] + [account])
                catalog.save(store, m, root)
    finally:
        wipe(root)
    return m, policy_hint(arn, account)


def policy_hint(key_arn: str, account: str) -> str:
    """The key policy statement that lets ``account`` copy a snapshot encrypted under ``key_arn``."""
    stmt = {"Sid": f"Allow account {account} to copy shared snapshots",
            "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
            "Action": ["kms:DescribeKey", "kms:Decrypt", "kms:ReEncrypt*", "kms:CreateGrant"],
            "Resource": "*"}
    return (f"the key policy of {key_arn} must allow account {account} to use the key; add this "
            f"statement (volumed kms put-key-policy), then that account copies the snapshot under "
            f"its own key before restoring:\n{json.dumps(stmt, indent=2)}")


def delete_snapshot(store: Store, snap_id: str, *, kms: KmsClient | None = None) -> int:
    """Delete a snapshot: its manifest, then every chunk no other manifest names (other
    snapshots stay restorable). Returns the bytes freed. If any manifest is unreadable no chunk
    is removed (its chunks cannot be told apart), and the manifest alone goes."""
    with store.lock():
        m = catalog.peek(store, snap_id)  # no chunk is used; its owner is as trusted as the store
        if kms is not None:
            check_access(m, kms, for_restore=True)
        store.delete(manifest_name(snap_id))
        return _sweep(store, {c for c in m["chunks"] if c})


def describe(m: Manifest, sealed: bool | None = None) -> dict[str, Any]:
    """The JSON view of a manifest for list/describe (no chunk list). ``sealed``: whether the
    stored object carries a manifest MAC (present, not verified: list and describe need no key).
    An unsealed manifest whose key context carries the manifest-MAC marker had its MAC removed in
    the store: ``MacRemoved`` says so (seal and restore refuse it; it is not a legacy snapshot)."""
    present = sum(1 for c in m["chunks"] if c)
    return {
        "SnapshotId": m["snapshot_id"], "StartTime": m["created"], "State": m["state"],
        "VolumeId": m["volume"]["ebs_id"], "DbId": m["volume"]["db_id"],
        "VolumeUuid": m["volume"]["uuid"], "VolumeSize": m["volume"]["size"],
        "Cipher": m["volume"]["cipher"], "KmsKeyId": m["key_arn"], "Encrypted": True,
        "OwnerId": m["owner_account"], "SharedWith": list(m.get("shared_with", [])),
        "ParentSnapshotId": m.get("parent"), "SourceSnapshotId": m.get("source_snapshot"),
        "Description": m.get("description", ""), "Chunks": len(m["chunks"]),
        "ChunksWithData": present, "StoredBytes": m.get("stored_bytes", 0),
        **({} if sealed is None else {"Sealed": sealed}),
        **({"MacRemoved": True} if sealed is False and keys.has_mac_marker(m.get("context")) else {}),
    }


def latest_snapshot_hint(volume_header: VolumeHeader, store: Store | None = None, *,
                         kms_spec: str | None = None) -> str | None:
    """One sentence naming the latest snapshot of the volume and the command that restores it, or
    None when the store has none (or cannot be read). Default store: open_store(kms_spec=...),
    i.e. $VOLUMED_SNAPSHOT_STORE, else next to the keystore ``kms_spec`` (the mount's --kms).
    The mount's terminal-state refusal calls it."""
    try:
        if store is None:
            store = open_store(kms_spec=kms_spec)
        snaps = catalog.of_volume(store, volume_header.uuid)
    except Exception:  # a hint must never turn a clear refusal into another error
        return None
    if not snaps:
        return None
    latest = snaps[-1]
    return (f"restore the latest snapshot, {latest['snapshot_id']} (taken {latest['created']}): "
            f"volumed restore {latest['snapshot_id']} NEW_VOLUME_PATH")


