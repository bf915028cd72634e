"""Snapshot records <-> plaintext sectors under a data key.

``make_cipher(cipher, key, aad_uuid)`` gives the sector cipher of a snapshot's data key (GCM binds
the AAD to the UUID of the volume the sectors were written on: ``manifest["aad_uuid"]``). It wipes
``key``; it carries its format's record rules (formats.RecordCipher). ``decrypt(c, first, records)``
returns the plaintext of the chunk (absent = zeros); a GCM record that fails to verify is an
IntegrityError naming the sector. ``encrypt(c, first, plain, nonce_base)`` makes records again
(absent for all-zero sectors); GCM nonces are
``nonce_base + sector``, unique because each copy under another key has a fresh key.
Callers: restore (plaintext into a new volume), engine.copy_snapshot (another key).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from volumed.volume.formats import format_of

if TYPE_CHECKING:
    from typing_extensions import Buffer

PAGE = 4096
_ZERO = bytes(PAGE)


class SnapshotCipher(Protocol):
    """A format's sector cipher under a snapshot's data key (Format.snapshot_cipher, a
    formats.RecordCipher): opens and seals records by that format's rules; its holder closes it
    (which wipes the key)."""

    def open_record(self, out: memoryview, sector: int, rec: bytes, where: str) -> None: ...

    def seal_record(self, plain: Buffer, sector: int, nonce_base: int) -> bytes: ...

    def close(self) -> None: ...


def make_cipher(cipher: str, key: bytearray, aad_uuid: str) -> SnapshotCipher:
    """The sector cipher for a snapshot's data key (the constructor wipes ``key``)."""
    return format_of(cipher).snapshot_cipher(key, aad_uuid)


def decrypt(c: SnapshotCipher, first: int, records: list[bytes | None], where: str = "the snapshot") -> bytearray:
    """Plaintext of len(records) sectors starting at sector ``first`` (c's format opens each)."""
    out = bytearray(len(records) * PAGE)
    mv = memoryview(out)
    for i, r in enumerate(records):
        if r is not None:
            c.open_record(mv[i * PAGE:(i + 1) * PAGE], first + i, r, where)
    return out


def encrypt(c: SnapshotCipher, first: int, plain: bytearray, nonce_base: int = 1) -> list[bytes | None]:
    """Records of the sectors in ``plain`` (starting at sector ``first``) under cipher ``c``."""
    mv = memoryview(plain)
    out: list[bytes | None] = []
    for i in range(len(plain) // PAGE):
        sec = mv[i * PAGE:(i + 1) * PAGE]
        out.append(None if sec == _ZERO else c.seal_record(sec, first + i, nonce_base))
    return out
