"""Snapshot records <-> plaintext sectors under a data key.

``make_cipher(cipher, key, aad_uuid)`` gives the sector cipher of a snapshot's data key (GCM binds
the AAD to the UUID of the volume the sectors were written on: ``manifest["aad_uuid"]``). It wipes
``key``. ``decrypt(c, cipher, first, records)`` returns the plaintext of the chunk (absent = zeros);
a GCM record that fails to verify is an IntegrityError naming the sector. ``encrypt(c, cipher,
first, plain, nonce_base)`` makes records again (absent for all-zero sectors); GCM nonces are
``nonce_base + sector``, unique because each copy under another key has a fresh key.
Callers: restore (plaintext into a new volume), engine.copy_snapshot (another key).
"""

from __future__ import annotations

from typing import Protocol

from volumed.volume.formats import format_of

PAGE = 4096
_ZERO = bytes(PAGE)


class SnapshotCipher(Protocol):
    """A format's sector cipher under a snapshot's data key (Format.snapshot_cipher): the format
    opens and seals records with it; its holder closes it (which wipes the key)."""

    def close(self) -> None: ...


def make_cipher(cipher: str, key: bytearray, aad_uuid: str) -> SnapshotCipher:
    """The sector cipher for a snapshot's data key (the constructor wipes ``key``)."""
    return format_of(cipher).snapshot_cipher(key, aad_uuid)


def decrypt(c: SnapshotCipher, cipher: str, first: int, records: list[bytes | None], where: str = "the snapshot") -> bytearray:
    """Plaintext of len(records) sectors starting at sector ``first`` (the format opens each)."""
    fmt = format_of(cipher)
    out = bytearray(len(records) * PAGE)
    mv = memoryview(out)
    for i, r in enumerate(records):
        if r is not None:
            # c was made by this format's snapshot_cipher (make_cipher), so it is the format's own cipher
            fmt.open_record(c, mv[i * PAGE:(i + 1) * PAGE], first + i, r, where)  # type: ignore[arg-type]
    return out


def encrypt(c: SnapshotCipher, cipher: str, first: int, plain: bytearray, nonce_base: int = 1) -> list[bytes | None]:
    """Records of the sectors in ``plain`` (starting at sector ``first``) under cipher ``c``."""
    fmt = format_of(cipher)
    mv = memoryview(plain)
    out: list[bytes | None] = []
    for i in range(len(plain) // PAGE):
        sec = mv[i * PAGE:(i + 1) * PAGE]
        # c is the format's own cipher, as in decrypt
        out.append(None if sec == _ZERO else fmt.seal_record(c, sec, first + i, nonce_base))  # type: ignore[arg-type]
    return out
