"""Byte formats of the snapshot store's objects, and their SHA-256 checks (docs/SNAPSHOTS.md).

Chunk ``chunks/<h[:2]>/<h>`` where h = SHA-256 (hex) of the whole object, so a chunk is named by
its content, identical chunks are stored once, and a damaged chunk never matches its name:

    0   4  magic ``VSCK``
    4   1  version (1)
    5   1  cipher (0 = xts, 1 = gcm)
    6   2  record size (u16 BE): 4096 for xts; 4140 for gcm (4124 in chunks of GCM format 1)
    8   2  n, sectors covered by the chunk (u16 BE)
    10  6  zero
    16  ceil(n/8)  presence bitmap (bit i, LSB first in byte i//8, = sector i has a record)
    ..  records of the present sectors, in order

A record is the sector as it is on the volume: XTS, the 4096-byte ciphertext; GCM, the 16-byte
session salt, the 12-byte nonce, the 16-byte tag and the 4096-byte ciphertext of the sector's
current slot (GCM format 1 volumes had no salt). An absent sector
reads as zeros (an XTS hole, a GCM empty or zero-marker slot).

Manifest ``snapshots/<snap-id>.json``: UTF-8 JSON ``{"manifest": M, "sha256": hex, "mac": hex}``
where sha256 is SHA-256 of M's canonical JSON (sorted keys, no spaces), a damage check anyone can
recompute, and mac the manifest MAC (volumed.snapshot.seal), which only a holder of the snapshot's
data key can compute. Callers: catalog.
"""

from __future__ import annotations

import hashlib
import json
import struct
from typing import Any, TypeAlias

from volumed.errors import FormatError, IntegrityError

CHUNK_MAGIC = b"VSCK"
CHUNK_VERSION = 1
_CHUNK_HDR = struct.Struct(">4sBBHH6x")
CIPHERS = {"xts": 0, "gcm": 1}
RECORD_SIZE = {"xts": 4096, "gcm": 16 + 12 + 16 + 4096}
RECORD_SIZES = {"xts": (4096,), "gcm": (RECORD_SIZE["gcm"], 12 + 16 + 4096)}  # gcm: format 2, 1
MANIFEST_FORMAT = "volumed-snapshot"
MANIFEST_VERSION = 1

# A manifest M as JSON (fields in docs/SNAPSHOTS.md). A plain dict: it is read from the store,
# hashed and MAC'd whole (canonical), and written back with every field it had.
Manifest: TypeAlias = dict[str, Any]


def chunk_name(digest_hex: str) -> str:
    """Store name of the chunk whose SHA-256 is ``digest_hex``."""
    return f"chunks/{digest_hex[:2]}/{digest_hex}"


def manifest_name(snap_id: str) -> str:
    """Store name of a snapshot's manifest."""
    return f"snapshots/{snap_id}.json"


def encode_chunk(cipher: str, records: list[bytes | None]) -> tuple[str, bytes] | None:
    """(sha256 hex, object bytes) of a chunk of ``records`` (None = absent sector), or None when
    every sector is absent (an all-zero chunk is not stored)."""
    if all(r is None for r in records):
        return None
    n = len(records)
    bitmap = bytearray((n + 7) // 8)
    body = []
    for i, r in enumerate(records):
        if r is not None:
            bitmap[i // 8] |= 1 << (i % 8)
            body.append(bytes(r))
    rsize = len(body[0])
    if rsize not in RECORD_SIZES[cipher] or any(len(b) != rsize for b in body):
        raise ValueError(f"records of a {cipher} chunk must all be one of {RECORD_SIZES[cipher]} bytes")
    data = _CHUNK_HDR.pack(CHUNK_MAGIC, CHUNK_VERSION, CIPHERS[cipher], rsize, n) \
        + bytes(bitmap) + b"".join(body)
    return hashlib.sha256(data).hexdigest(), data


def decode_chunk(digest_hex: str, data: bytes, cipher: str, where: str) -> list[bytes | None]:
    """The records of a chunk fetched as ``digest_hex``; IntegrityError (naming ``where``) if its
    content does not hash to its name or its fields are not those of a ``cipher`` chunk."""
    if hashlib.sha256(data).hexdigest() != digest_hex:
        raise IntegrityError(f"chunk {digest_hex[:16]}... of {where} is damaged (its SHA-256 does not "
                             "match): the snapshot store was altered; restore from another snapshot")
    try:
        magic, ver, cid, rsize, n = _CHUNK_HDR.unpack_from(data, 0)
    except struct.error:
        raise IntegrityError(f"chunk {digest_hex[:16]}... of {where} is truncated") from None
    if magic != CHUNK_MAGIC or ver != CHUNK_VERSION or cid != CIPHERS[cipher] or rsize not in RECORD_SIZES[cipher]:
        raise FormatError(f"chunk {digest_hex[:16]}... of {where} is not a {cipher} chunk of format "
                          f"version {CHUNK_VERSION}")
    off = _CHUNK_HDR.size
    bitmap = data[off:off + (n + 7) // 8]
    off += (n + 7) // 8
    out: list[bytes | None] = []
    for i in range(n):
        if bitmap[i // 8] >> (i % 8) & 1:
            out.append(data[off:off + rsize])
            off += rsize
        else:
            out.append(None)
    if off != len(data) or (out and out[-1] is not None and len(out[-1]) != rsize):
        raise FormatError(f"chunk {digest_hex[:16]}... of {where} has the wrong length")
    return out


def canonical(manifest: Manifest) -> bytes:
    """The canonical JSON of a manifest (sorted keys, no spaces): what its SHA-256 and MAC cover."""
    return json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()


def encode_manifest(manifest: Manifest, mac: str) -> bytes:
    """The manifest object's bytes: the manifest, the SHA-256 of its canonical JSON and its MAC
    (volumed.snapshot.seal)."""
    return json.dumps({"manifest": manifest, "sha256": hashlib.sha256(canonical(manifest)).hexdigest(),
                       "mac": mac}, sort_keys=True, indent=1).encode()


def decode_manifest(data: bytes, where: str) -> tuple[Manifest, str | None]:
    """(manifest, MAC hex or None if it has none) of a manifest object; IntegrityError if it fails
    its SHA-256, FormatError if it is not a volumed snapshot manifest of a known version. The MAC
    is not checked here (it needs the snapshot's key: volumed.snapshot.seal)."""
    try:
        outer = json.loads(data.decode())
        manifest, digest = outer["manifest"], outer["sha256"]
        mac = outer.get("mac")
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        raise IntegrityError(f"the manifest of {where} is damaged (not readable JSON)") from None
    if not isinstance(manifest, dict) or hashlib.sha256(canonical(manifest)).hexdigest() != digest:
        raise IntegrityError(f"the manifest of {where} is damaged (its SHA-256 does not match)")
    if mac is not None and not isinstance(mac, str):
        raise IntegrityError(f"the manifest of {where} is damaged (its MAC is not a string)")
    if manifest.get("format") != MANIFEST_FORMAT:
        raise FormatError(f"{where} is not a volumed snapshot manifest")
    if manifest.get("version") != MANIFEST_VERSION:
        raise FormatError(f"snapshot {where} has manifest version {manifest.get('version')}; this "
                          f"volumed reads version {MANIFEST_VERSION}")
    if manifest.get("snapshot_id") != where:
        raise IntegrityError(f"the manifest stored as {where} names snapshot "
                             f"{manifest.get('snapshot_id')!r}: the store was altered")
    return manifest, mac
