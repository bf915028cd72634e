"""Snapshot records <-> plaintext sectors under a data key.

``make_cipher(cipher, key, aad_uuid)`` gives the sector cipher of a snapshot's data key: XTS an
XtsCipher, GCM a gcmstore.SectorKeys (the AAD is bound to the UUID of the volume the sectors were
written on: ``manifest["aad_uuid"]``). It wipes ``key``.
``decrypt(c, cipher, first, records)`` returns the plaintext of the chunk (absent = zeros); a GCM
record is format 2 (salt || nonce || tag || ciphertext, under the session subkey of the salt) or
format 1 (nonce || tag || ciphertext under the data key, from volumes made before format 2); one
that fails to verify is an IntegrityError naming the sector. ``encrypt(c, cipher, first, plain,
nonce_base)`` makes records again (absent for all-zero sectors): GCM format 2 under the subkey of
the SectorKeys' own fresh salt, nonces ``nonce_base + sector`` (each sector once per copy).
Callers: restore (plaintext into a new volume), engine.copy_snapshot (another key).
"""

from __future__ import annotations

import numpy as np

from volumed.cipher import XtsCipher
from volumed.errors import IntegrityError
from volumed.volume import gcmformat as F
from volumed.volume.gcmstore import SectorKeys

PAGE = 4096
_ZERO = bytes(PAGE)


def make_cipher(cipher: str, key: bytearray, aad_uuid: str):
    """The sector cipher for a snapshot's data key (the constructor wipes ``key``)."""
    return XtsCipher(key) if cipher == "xts" else SectorKeys(key, aad_uuid)


def decrypt(c, cipher: str, first: int, records: list[bytes | None], where: str = "the snapshot") -> bytearray:
    """Plaintext of len(records) sectors starting at sector ``first``."""
    n = len(records)
    out = bytearray(n * PAGE)
    mv = memoryview(out)
    for i, r in enumerate(records):
        if r is None:
            continue
        if cipher == "xts":
            mv[i * PAGE:(i + 1) * PAGE] = r
            c.decrypt(mv[i * PAGE:(i + 1) * PAGE], first + i)
        else:
            g, r = (c.for_salt(r[:F.SALT_BYTES]), r[F.SALT_BYTES:]) if len(r) > PAGE + 28 else (c.v1(), r)
            mv[i * PAGE:(i + 1) * PAGE] = r[28:]
            failed = g.decrypt(mv[i * PAGE:(i + 1) * PAGE], first + i, r[:12], r[12:28])
            if failed:
                raise IntegrityError(f"sector {first + i} of {where} fails authentication: the "
                                     "snapshot does not match its key; do not restore it")
    return out


def encrypt(c, cipher: str, first: int, plain: bytearray, nonce_base: int = 1) -> list[bytes | None]:
    """Records of the sectors in ``plain`` (starting at sector ``first``) under cipher ``c``."""
    n = len(plain) // PAGE
    out: list[bytes | None] = []
    mv = memoryview(plain)
    for i in range(n):
        sec = mv[i * PAGE:(i + 1) * PAGE]
        if sec == _ZERO:
            out.append(None)
            continue
        buf = bytearray(PAGE)
        if cipher == "xts":
            c.encrypt(sec, first + i, out=buf)
            out.append(bytes(buf))
        else:
            nonce = F.nonce_bytes(np.array([nonce_base + first + i], dtype=np.uint64))
            tag = bytearray(16)
            c.session().encrypt(sec, first + i, nonce, tag, out=buf)
            out.append(c.salt + nonce + bytes(tag) + bytes(buf))
    return out
