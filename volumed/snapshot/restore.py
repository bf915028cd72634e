"""``volumed restore``: a new volume from a snapshot.

Same KMS key, XTS: the new volume reuses the snapshot's data key, rewrapped with ReEncrypt for the
new volume's context {aws:rds:db-id, aws:ebs:id}; its LUKS2 header is built for that wrapped key
and the snapshot's ciphertext records are written in place (XTS ciphertext depends only on the key
and the sector number). Another key, or any GCM snapshot: a new volume with a new data key
(Volume.create), and every sector decrypted under the snapshot's key and written through the new
volume. GCM never reuses the data key: the restored volume and the original would both draw nonces
from the same counters under one key (docs/SNAPSHOTS.md). Chunks are verified as they are read; a
damaged one stops the restore with IntegrityError and the partial volume is removed.
Callers: the CLI, tests.
"""

from __future__ import annotations

import base64
import os
import uuid as _uuid

from volumed.clock import SYSTEM_CLOCK, iso_utc
from volumed.errors import UsageError, VolumedError
from volumed.secrets import wipe
from volumed.snapshot import catalog, keys, recrypt
from volumed.snapshot.engine import CHUNK_SECTORS, Progress, check_access, chunk_records
from volumed.snapshot.keys import KmsClient
from volumed.snapshot.objects import Manifest
from volumed.snapshot.store import Store
from volumed.volume import Volume, luks2
from volumed.volume.backing import staged_file
from volumed.volume.formats import format_of
from volumed.volume.header import CONTEXT_DB, CONTEXT_EBS, MAC_INFO, VolumeHeader, compute_mac, derive_key
from volumed.volume.ids import new_db_id, new_ebs_id, validate_db_id, validate_ebs_id

PAGE = 4096


def _check_target(path: str) -> None:
    if os.path.lexists(path):
        raise UsageError(f"{path} already exists: choose a new path (volumed never overwrites a file)")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"cannot create {path}: directory {parent} does not exist")


def restore_snapshot(store: Store, snap_id: str, volume_path: str | os.PathLike[str], *, kms: KmsClient,
                     key_id: str | None = None, ebs_id: str | None = None, db_id: str | None = None,
                     progress: Progress = None) -> VolumeHeader:
    """Create the volume ``volume_path`` holding exactly the snapshot's data; return its header.
    New ids unless given. Leaves nothing behind on failure."""
    volume_path = os.fspath(volume_path)
    _check_target(volume_path)
    check_access(catalog.peek(store, snap_id), kms, for_restore=True)  # refuse early, before KMS
    m = catalog.load(store, snap_id, kms=kms)  # its MAC, before any chunk is read
    check_access(m, kms, for_restore=True)  # and again on what the MAC vouches for
    db_id = validate_db_id(db_id) if db_id else new_db_id()
    ebs_id = validate_ebs_id(ebs_id) if ebs_id else new_ebs_id()
    target = keys.key_manager(kms, key_id)[0] if key_id else m["key_arn"]
    if target == m["key_arn"] and format_of(m["volume"]["cipher"]).records_are_sectors:
        return _restore_shared_key(store, m, volume_path, kms, db_id, ebs_id, progress)
    return _restore_new_key(store, m, volume_path, kms, target, db_id, ebs_id, progress)


def _restore_new_key(store: Store, m: Manifest, path: str, kms: KmsClient, target: str, db_id: str,
                     ebs_id: str, progress: Progress) -> VolumeHeader:
    """Volume.create under ``target`` (a new data key), then decrypt-and-write every chunk."""
    cipher = m["volume"]["cipher"]
    h = Volume.create(path, size=m["volume"]["size"], kms=kms, key_id=target, cipher=cipher,
                      db_id=db_id, ebs_id=ebs_id)
    c = None
    try:
        c = recrypt.make_cipher(cipher, keys.open_snapshot_key(kms, m), m["aad_uuid"])
        with Volume.open(path, kms=kms) as vol:
            total = len(m["chunks"])
            for ci in range(total):
                if m["chunks"][ci] is not None:
                    first = ci * CHUNK_SECTORS
                    plain = recrypt.decrypt(c, first, chunk_records(store, m, ci), m["snapshot_id"])
                    vol.write(first * PAGE, plain)
                    wipe(plain)
                if progress:
                    progress(ci + 1, total)
            vol.flush()
    except BaseException:
        os.unlink(path)  # ours: created above, never handed out
        raise
    finally:
        if c is not None:
            c.close()
    return h


def _restore_shared_key(store: Store, m: Manifest, path: str, kms: KmsClient, db_id: str, ebs_id: str,
                        progress: Progress) -> VolumeHeader:
    """XTS under the snapshot's key: ReEncrypt the data key to the new context, build the LUKS2
    header, copy the ciphertext records in place."""
    ctx = {CONTEXT_DB: db_id, CONTEXT_EBS: ebs_id}
    wrapped, arn = keys.rewrap(kms, base64.b64decode(m["wrapped_key"]), m["key_arn"], m["context"],
                               m["key_arn"], ctx)
    key = keys.open_key(kms, arn, wrapped, ctx, "xts")
    size = m["volume"]["size"]
    vol_uuid = str(_uuid.uuid4())
    h = VolumeHeader(uuid=vol_uuid, cipher="xts", size=size, sector_size=PAGE,
                     data_offset=luks2.DATA_OFFSET, key_arn=arn, wrapped_key=wrapped, context=ctx,
                     db_id=db_id, ebs_id=ebs_id, format="luks2",
                     created=iso_utc(SYSTEM_CLOCK.now()))
    mac_key = None
    try:
        mac_key = derive_key(key, vol_uuid, MAC_INFO)
        salt = os.urandom(32)
        digest = luks2.volume_key_digest(key, salt)
        h.mac = compute_mac(mac_key, h)
    finally:
        wipe(key, mac_key)
    try:
        with staged_file(path) as backing:
            backing.truncate(h.data_offset + size)
            backing.pwrite(0, luks2.encode(h, salt, digest))
            total = len(m["chunks"])
            for ci in range(total):
                if m["chunks"][ci] is not None:
                    first = ci * CHUNK_SECTORS
                    for i, rec in enumerate(chunk_records(store, m, ci)):
                        if rec is not None:
                            backing.pwrite(h.data_offset + (first + i) * PAGE, rec)
                if progress:
                    progress(ci + 1, total)
    except FileExistsError:
        raise UsageError(f"{path} already exists: choose a new path") from None
    except OSError as exc:
        raise VolumedError(f"cannot create volume {path}: {exc.strerror}") from None
    return h


