"""The encrypted sector records of an open volume, as a snapshot stores them.

XTS: a sector's record is its 4096-byte ciphertext in the data area; an all-zero sector is a hole
(absent). GCM: the record is nonce (12) + tag (16) + ciphertext (4096) of the sector's current
slot, chosen the way the volume reads it: the slot with the higher counter, unless that slot is
crash residue (doubtful counter that fails to verify), then the other; empty and zero-marker slots
are absent. Nothing is decrypted except doubtful slots, to tell residue from data.

This reads the Volume's backing file and GCM store directly (``vol._backing``, ``vol._store``):
the snapshot must see the sectors exactly as stored. The caller holds the volume so that no write
runs meanwhile: an unmounted volume opened by the snapshot engine (its flock), or the mount
daemon's volume under its I/O barrier. Callers: engine.create_snapshot, the daemon's snapshot.
"""

from __future__ import annotations

import numpy as np

from volumed.errors import IntegrityError
from volumed.volume import gcmformat as F

PAGE = 4096
_ZERO = bytes(PAGE)


def read_records(vol, first: int, n: int) -> list[bytes | None]:
    """Records of sectors [first, first+n) of the open volume ``vol`` (None = absent)."""
    if vol.header.cipher == "xts":
        data = bytes(vol._backing.pread(vol.header.data_offset + first * PAGE, n * PAGE))
        data = data.ljust(n * PAGE, b"\0")
        return [None if data[i * PAGE:(i + 1) * PAGE] == _ZERO else data[i * PAGE:(i + 1) * PAGE]
                for i in range(n)]
    return [_gcm_record(vol, s) for s in range(first, first + n)]


def _gcm_record(vol, sector: int) -> bytes | None:
    store = vol._store
    if store is None:
        raise IntegrityError(f"cannot read {vol.path}: its key was wiped")
    g, i = divmod(sector, F.GROUP_SECTORS)
    entry = F.slots(store._meta(g))[i]
    ctr = entry["ctr"]
    k = 1 if ctr[1] > ctr[0] else 0
    for attempt in (k, 1 - k):
        c = int(ctr[attempt])
        if c == 0:
            return None
        doubtful = bool(store._is_doubtful(np.array([c], dtype=np.uint64))[0])
        if doubtful and not store._decrypt_slot(g, i, attempt, entry, memoryview(bytearray(PAGE))):
            continue  # crash residue: the sector's version is the other slot
        if not entry["tag"][attempt].any():
            return None  # written with zeros
        data = bytes(vol._backing.pread(F.slot_offset(g, attempt, i), PAGE)).ljust(PAGE, b"\0")
        tag = entry["tag"][attempt].astype(">u8").tobytes()
        return F.nonce_bytes(np.array([c], dtype=np.uint64)) + tag + data
    return None  # neither slot was ever made durable: the sector is unwritten
