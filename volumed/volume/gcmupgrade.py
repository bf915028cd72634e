"""``volumed upgrade``: rewrite a GCM volume of format 1 as format 2 (docs/FORMAT.md, "Upgrading").

Format 1 sealed every sector under the data key itself with a counter nonce taken from the header,
so an older header coming back made nonces repeat; volumed no longer opens it. The upgrade holds
the volume's lock, unwraps its key, verifies the header MAC, reads every sector by the format-1
rules (a newer slot that fails is crash residue only if its counter is doubtful; any other failure
stops the upgrade with IntegrityError and changes nothing), and writes the plaintext through a
format-2 store into a new hidden file beside the volume (same UUID, ids, wrapped key and context).
The new file is made durable, then renamed over the volume: after a crash at any point the path
holds either the old volume, untouched, or the complete new one. A crash can leave the hidden file
``.NAME.upgrade-RANDOM`` behind (remove it). Needs free space for the new file's data.
Callers: volumed.cli.volume_cmd (upgrade), tests.
"""

from __future__ import annotations

import contextlib
import copy
import os
import secrets
from collections.abc import Callable
from typing import TypeAlias

import numpy as np

from volumed.errors import IntegrityError, UsageError
from volumed.volume import gcmformat as F
from volumed.secrets import wipe
from volumed.volume.backing import BackingFile, StrPath, fsync_dir
from volumed.volume.device import _lock_exclusive, _open_backing, load_header
from volumed.volume.gcmstore import GcmStore, SectorKeys, init_groups
from volumed.volume.header import (GCM_META_INFO, GCM_NOTE_INFO, MAC_INFO, VolumeHeader, compute_mac,
                                   derive_key, verify_mac)
from volumed.volume.keywrap import KmsClient, unwrap
from volumed.volume.ranges import runs, zero_sectors

PAGE = F.PAGE
V1G = F.V1_GROUP_SECTORS


def _v1_doubtful(h: VolumeHeader) -> list[tuple[int, int]]:
    """The doubtful ranges a format-1 open would have used (plus an unclean last session)."""
    rs = [(int(a), int(b)) for a, b in h.doubtful]
    if h.nonce_flushed < h.nonce_reserved:
        rs.append((h.nonce_flushed, h.nonce_reserved))
    return rs


def read_v1_group(backing: BackingFile, h: VolumeHeader, keys: SectorKeys, meta_key: bytearray,
                  g: int, path: str) -> bytearray:
    """Plaintext of the sectors of format-1 group ``g`` (IntegrityError names a bad sector)."""
    n = min(V1G, h.sectors - g * V1G)
    page = backing.pread(F.v1_meta_offset(g), PAGE)
    if not F.meta_ok(meta_key, g, page, version=1):
        raise IntegrityError(f"metadata of sectors {g * V1G}-{g * V1G + V1G - 1} of {path} fails "
                             "authentication: the volume was altered on disk; it cannot be upgraded")
    sub = F.v1_slots(page)
    doubtful = _v1_doubtful(h)
    c = keys.v1()
    out = bytearray(n * PAGE)
    mv = memoryview(out)
    for i in range(n):
        s = g * V1G + i
        ctr = sub["ctr"][i]
        dst = mv[i * PAGE:(i + 1) * PAGE]
        for k in ((1, 0) if ctr[1] > ctr[0] else (0, 1)):
            counter = int(ctr[k])
            if counter == 0 or not sub["tag"][i][k].any():
                break  # never written, or written with zeros
            backing.preadinto(F.v1_slot_offset(g, k, i), dst)
            tag = sub["tag"][i][k].astype(">u8").tobytes()
            if not c.decrypt(dst, s, F.nonce_bytes(np.array([counter], dtype=np.uint64)), tag):
                break
            if not any(lo < counter <= hi for lo, hi in doubtful):
                raise IntegrityError(f"sector {s} of {path} fails authentication (data altered on "
                                     "disk); it cannot be upgraded: restore a snapshot instead")
            # crash residue: the sector's version is the other slot (zeros if none verifies)
    return out


def _new_header(h: VolumeHeader) -> VolumeHeader:
    h2 = copy.copy(h)
    h2.format_version = F.VERSION
    h2.data_offset = F.DATA_OFFSET
    h2.nonce_reserved = h2.nonce_flushed = h.nonce_reserved
    h2.doubtful = []
    h2.seqid = 0
    return h2


Progress: TypeAlias = Callable[[int, int], None]
"""``progress(done, total)``: groups rewritten so far, of all."""


def upgrade(path: StrPath, *, kms: KmsClient, grant_tokens: list[str] | None = None,
            progress: Progress | None = None) -> tuple[VolumeHeader, bool]:
    """Upgrade the GCM volume at ``path`` to format 2: (new header, True), or (header, False) if
    it is format 2 already. UsageError for an XTS volume; nothing changes on any error."""
    name = os.fspath(path)
    old = _open_backing(name)
    try:
        _lock_exclusive(old, name)
        h, _extras, _copies = load_header(old, name)
        if h.cipher != "gcm":
            raise UsageError(f"{name} is an XTS (LUKS2) volume: only GCM volumes have a format upgrade")
        if h.format_version >= F.VERSION:
            return h, False
        key = unwrap(kms, h.key_arn, h.wrapped_key, h.context, grant_tokens, expect_len=32)
        subkeys = [derive_key(key, h.uuid, info) for info in (MAC_INFO, GCM_META_INFO, GCM_NOTE_INFO)]
        keys = SectorKeys(key, h.uuid)  # wipes key
        try:
            verify_mac(subkeys[0], h, name)
            h2 = _rewrite(old, name, h, keys, subkeys[0], subkeys[1], subkeys[2], progress)
        finally:
            keys.close()
            wipe(*subkeys)
        return h2, True
    finally:
        old.close()


def _rewrite(old: BackingFile, path: str, h: VolumeHeader, keys: SectorKeys, mac_key: bytearray,
             meta_key: bytearray, note_key: bytearray, progress: Progress | None) -> VolumeHeader:
    """Write the format-2 volume beside ``path`` and rename it over ``path``."""
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)),
                       f".{os.path.basename(path)}.upgrade-{secrets.token_hex(6)}")
    h2 = _new_header(h)
    st = os.fstat(old.fd)
    new = BackingFile(tmp, create=True)
    try:
        os.fchmod(new.fd, st.st_mode & 0o7777)
        with contextlib.suppress(PermissionError):
            os.fchown(new.fd, st.st_uid, st.st_gid)
        new.truncate(F.file_size_for(h2.size))
        init_groups(new, meta_key, 0, F.groups_for(h2.size))
        h2.mac = compute_mac(mac_key, h2)
        for seq in (0, 1):
            h2.seqid = seq
            new.pwrite(*F.encode_copy(h2))
        store = GcmStore(new, h2, keys, meta_key, mac_key, note_key, path)
        total = F.groups_for(h.size, 1)
        for g in range(total):
            plain = read_v1_group(old, h, keys, meta_key, g, path)
            mv = memoryview(plain)
            for a, b in runs(~zero_sectors(plain, PAGE)):
                store.write_sectors(g * V1G + a, mv[a * PAGE:b * PAGE])
            plain[:] = bytes(len(plain))
            if progress:
                progress(g + 1, total)
        store.close()  # flush and a clean header: the new volume has no doubtful counter
        new.fdatasync()
        new.close()
        os.rename(tmp, path)
        fsync_dir(path)
    except BaseException:
        new.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return h2
