"""LUKS2 on-disk header for XTS volumes (see docs/FORMAT.md for the byte layout).

``encode(header, digest_salt, digest) -> bytes`` gives both header copies (primary at 0, secondary
at HDR_SIZE), each a 4096-byte binary header with checksum plus a 12 KiB JSON area.
``decode(read) -> (VolumeHeader, copies)`` parses and validates the copies, picks the valid one
with the highest seqid and reports which copies need repair. ``read(offset, length)`` returns bytes.

The JSON holds one crypt segment (aes-xts-plain64, 4096-byte sectors, "dynamic" size), a pbkdf2
digest of the volume key bound to the segment, no keyslots, and a ``volumed-kms`` token that
carries the KMS material and the header MAC. Callers: volumed.volume.device, volumed.volume.export.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct

from volumed.errors import FormatError
from volumed.volume.header import (HeaderCopy as Copy, HeaderReader, JsonObject, VolumeHeader,
                                    header_from_fields, require)
from volumed.volume.ids import check_header_ids

HDR_SIZE = 16384
BIN_SIZE = 4096
JSON_SIZE = HDR_SIZE - BIN_SIZE
DATA_OFFSET = 1 << 20
KEYSLOTS_SIZE = DATA_OFFSET - 2 * HDR_SIZE
MAGIC_1 = b"LUKS\xba\xbe"
MAGIC_2 = b"SKUL\xba\xbe"
TOKEN_TYPE = "volumed-kms"
ENCRYPTION = "aes-xts-plain64"
PBKDF2_ITERATIONS = 1000
_VALID_HDR_SIZES = {16384 << i for i in range(9)}  # 16 KiB .. 4 MiB
# Offsets in the binary header (big-endian).
_BIN = struct.Struct(">6sHQQ48s32s64s40s48sQ")  # up to hdr_offset, 264 bytes
_CSUM_OFF = 448


def volume_key_digest(key: bytearray, salt: bytes, iterations: int = PBKDF2_ITERATIONS) -> bytes:
    """The LUKS2 pbkdf2 digest of the volume key (PBKDF2-HMAC-SHA256, 32 bytes)."""
    return hashlib.pbkdf2_hmac("sha256", bytes(key), salt, iterations, 32)


def _json_obj(h: VolumeHeader, digest_salt: bytes, digest: bytes) -> JsonObject:
    token = {
        "type": TOKEN_TYPE, "keyslots": [], "volumed_format_version": h.format_version,
        "uuid": h.uuid, "cipher": h.cipher, "size": str(h.size), "sector_size": h.sector_size,
        "data_offset": str(h.data_offset), "key_arn": h.key_arn,
        "wrapped_key": base64.b64encode(h.wrapped_key).decode(), "context": h.context,
        "db_id": h.db_id, "ebs_id": h.ebs_id, "created": h.created,
        "mac": base64.b64encode(h.mac).decode(),
    }
    return {
        "keyslots": {},
        "tokens": {"0": token},
        "segments": {"0": {"type": "crypt", "offset": str(h.data_offset), "size": "dynamic",
                           "iv_tweak": "0", "encryption": ENCRYPTION, "sector_size": h.sector_size}},
        "digests": {"0": {"type": "pbkdf2", "keyslots": [], "segments": ["0"], "hash": "sha256",
                          "iterations": PBKDF2_ITERATIONS,
                          "salt": base64.b64encode(digest_salt).decode(),
                          "digest": base64.b64encode(digest).decode()}},
        "config": {"json_size": str(JSON_SIZE), "keyslots_size": str(KEYSLOTS_SIZE),
                   "flags": ["allow-discards"]},
    }


def _copy(json_bytes: bytes, h: VolumeHeader, which: int) -> bytes:
    magic = MAGIC_1 if which == 0 else MAGIC_2
    binhdr = bytearray(BIN_SIZE)
    _BIN.pack_into(binhdr, 0, magic, 2, HDR_SIZE, h.seqid, b"volumed", b"sha256", os.urandom(64),
                   h.uuid.encode(), b"volumed", which * HDR_SIZE)
    area = json_bytes + bytes(JSON_SIZE - len(json_bytes))
    binhdr[_CSUM_OFF:_CSUM_OFF + 32] = hashlib.sha256(bytes(binhdr) + area).digest()
    return bytes(binhdr) + area


def encode(h: VolumeHeader, digest_salt: bytes, digest: bytes) -> bytes:
    """Both header copies (2 * HDR_SIZE bytes) for ``h`` at its current seqid."""
    text = json.dumps(_json_obj(h, digest_salt, digest), separators=(",", ":")).encode() + b"\0"
    if len(text) > JSON_SIZE:
        raise FormatError("LUKS2 JSON metadata does not fit in its 12 KiB area")
    return _copy(text, h, 0) + _copy(text, h, 1)


def _parse_copy(read: HeaderReader, offset: int, which: int) -> Copy:
    c = Copy(offset)
    binhdr = read(offset, BIN_SIZE)
    if len(binhdr) < BIN_SIZE:
        c.error = "truncated"
        return c
    magic, version, hdr_size, seqid, *_rest = _BIN.unpack_from(binhdr, 0)
    if magic != (MAGIC_1 if which == 0 else MAGIC_2):
        c.error = "bad magic"
        return c
    if version != 2:
        c.error = f"LUKS version {version}"
        return c
    if hdr_size not in _VALID_HDR_SIZES:
        c.error = f"bad header size {hdr_size}"
        return c
    area = read(offset + BIN_SIZE, hdr_size - BIN_SIZE)
    if len(area) < hdr_size - BIN_SIZE:
        c.error = "truncated"
        return c
    if c.load_json(binhdr, _CSUM_OFF, 64, bytes(area), bytes(area).split(b"\0", 1)[0],
                   unreadable="unreadable JSON area", not_object="JSON area is not an object"):
        c.accept(seqid)
    return c


def _header_from_json(j: JsonObject, seqid: int) -> tuple[VolumeHeader, bytes, bytes]:
    tokens = j.get("tokens")
    if not isinstance(tokens, dict):
        raise FormatError("LUKS2 JSON has no tokens object")
    tok = next((t for t in tokens.values() if isinstance(t, dict) and t.get("type") == TOKEN_TYPE), None)
    if tok is None:
        raise FormatError("a LUKS2 volume without a volumed-kms token: not created by volumed "
                          "(open it with cryptsetup)")
    try:
        ver = int(tok["volumed_format_version"])
        if ver > 1:
            raise FormatError(f"volume format version {ver} is newer than this volumed supports (1); "
                              "upgrade volumed")
        h = header_from_fields(tok, seqid=seqid, format="luks2", format_version=ver)
        seg = j["segments"]["0"]
        dig = next(d for d in j["digests"].values() if "0" in d.get("segments", []))
        salt = base64.b64decode(dig["salt"], validate=True)
        digest = base64.b64decode(dig["digest"], validate=True)
        seg_ok = (seg.get("type") == "crypt" and seg.get("encryption") == ENCRYPTION
                  and int(seg.get("offset")) == h.data_offset and int(seg.get("sector_size")) == h.sector_size
                  and str(seg.get("iv_tweak", "0")) == "0")
    except FormatError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, StopIteration, OverflowError) as exc:
        raise FormatError(f"LUKS2 metadata of the volumed token or segment is malformed ({type(exc).__name__})")
    require(seg_ok, "the LUKS2 crypt segment disagrees with the volumed token (cipher, offset or "
                    "sector size altered)")
    require(h.cipher == "xts", "a LUKS2 volume must use the xts cipher")
    require(h.sector_size == 4096, f"unsupported sector size {h.sector_size}")
    require(h.size >= 0 and h.size % h.sector_size == 0, "volume size is not a whole number of sectors")
    require(h.data_offset >= 2 * HDR_SIZE and h.data_offset % 4096 == 0, "bad data offset")
    check_header_ids(h)
    return h, salt, digest


def decode(read: HeaderReader) -> tuple[VolumeHeader, bytes, bytes, list[Copy]]:
    """Parse both copies; return (header, digest salt, digest, copies). FormatError if neither is valid."""
    copies = [_parse_copy(read, 0, 0)]
    sec = _parse_copy(read, HDR_SIZE, 1)
    if not sec.ok and copies[0].ok:
        # Secondary of a foreign LUKS2 volume with a bigger header lives elsewhere.
        hs = struct.unpack_from(">Q", read(8, 8).ljust(8, b"\0"))[0]
        if hs in _VALID_HDR_SIZES and hs != HDR_SIZE:
            sec = _parse_copy(read, hs, 1)
    copies.append(sec)
    valid = [c for c in copies if c.ok]
    if not valid:
        raise FormatError("LUKS2 header: both copies are damaged "
                          f"(primary: {copies[0].error}; secondary: {copies[1].error})")
    best = max(valid, key=lambda c: c.seqid)
    h, salt, digest = _header_from_json(best.json, best.seqid)
    return h, salt, digest, copies
