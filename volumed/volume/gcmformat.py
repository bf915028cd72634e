"""On-disk format of GCM volumes (see docs/FORMAT.md for the byte tables).

Format version 2 (what volumed writes). Header: two 16 KiB copies at 0 and HDR_SIZE. Copy k holds
the versions whose seqid % 2 == k, so every header update overwrites the older copy and the newer
one stays intact. A copy is a 128-byte binary prefix (magic, version, json length, seqid, SHA-256
checksum of the whole copy) and a JSON text. Then two 4 KiB nonce notes at NOTE_OFFSET (the
durable "flushed up to" counter, see encode_note). Data area from DATA_OFFSET: groups of
GROUP_SECTORS sectors, each one metadata page followed by the sectors' slot-0 data pages and then
their slot-1 data pages.

Metadata page: GROUP_SECTORS entries of two slots, each slot = 16-byte session salt + 64-bit
big-endian counter + 16-byte tag; counter 0 = empty slot; tag of all zeros = the sector was written
with zeros (no data stored). The slot's key is the session subkey of its salt (gcmstore.SectorKeys)
and its nonce 4 zero bytes + the counter. The last 32 bytes are HMAC-SHA256(metadata key, "VGM2" ||
group number (u64 BE) || the first 4064 bytes).

Format version 1 (made by volumed before the nonce fix) is parsed only so that opening it can say
how to upgrade it (volumed.volume.gcmupgrade reads it with the V1_* layout). Callers:
volumed.volume.gcmstore, gcmupgrade, device, records.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import struct
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from volumed.errors import FormatError
from volumed.volume.header import (HeaderCopy as Copy, HeaderReader, JsonObject, VolumeHeader,
                                    header_from_fields, require)
from volumed.volume.ids import check_header_ids

if TYPE_CHECKING:
    from typing_extensions import Buffer

MAGIC = b"VOLUMEDG"
VERSION = 2
HDR_SIZE = 16384
NOTE_OFFSET = 2 * HDR_SIZE
PAGE = 4096
DATA_OFFSET = NOTE_OFFSET + 2 * PAGE             # 40960
GROUP_SECTORS = 50
SALT_BYTES = 16
SLOT_BYTES = SALT_BYTES + 8 + 16                 # 40
ENTRIES_BYTES = GROUP_SECTORS * 2 * SLOT_BYTES   # 4000
MAC_OFF = PAGE - 32
GROUP_BYTES = PAGE * (1 + 2 * GROUP_SECTORS)
_PREFIX = struct.Struct(">8sHHIQQ")                # magic, version, copy, json_len, seqid, hdr_size
_CSUM_OFF = 32
_JSON_OFF = 128
SLOT_DTYPE = np.dtype([("salt", ">u8", (2,)), ("ctr", ">u8"), ("tag", ">u8", (2,))])
_META_TAG = b"VGM2"

# Format version 1: no notes, 72 sectors per group, 28-byte slots (4 zero bytes, counter, tag),
# page MAC over "VGMP" || group || entries; sectors under the data key itself.
V1_DATA_OFFSET = 2 * HDR_SIZE
V1_GROUP_SECTORS = 72
V1_SLOT_DTYPE = np.dtype([("pad", ">u4"), ("ctr", ">u8"), ("tag", ">u8", (2,))])
V1_GROUP_BYTES = PAGE * (1 + 2 * V1_GROUP_SECTORS)


def groups_for(size: int, version: int = VERSION) -> int:
    """Number of metadata groups for a volume of ``size`` bytes."""
    g = GROUP_SECTORS if version == VERSION else V1_GROUP_SECTORS
    return (size // PAGE + g - 1) // g


def file_size_for(size: int, version: int = VERSION) -> int:
    """Backing file size of a GCM volume of ``size`` bytes."""
    if version == VERSION:
        return DATA_OFFSET + groups_for(size) * GROUP_BYTES
    return V1_DATA_OFFSET + groups_for(size, 1) * V1_GROUP_BYTES


def meta_offset(group: int) -> int:
    return DATA_OFFSET + group * GROUP_BYTES


def slot_offset(group: int, slot: int, index: int) -> int:
    """Backing offset of the data page of sector ``group*GROUP_SECTORS+index`` in ``slot``."""
    return DATA_OFFSET + group * GROUP_BYTES + PAGE * (1 + slot * GROUP_SECTORS + index)


def v1_meta_offset(group: int) -> int:
    return V1_DATA_OFFSET + group * V1_GROUP_BYTES


def v1_slot_offset(group: int, slot: int, index: int) -> int:
    return V1_DATA_OFFSET + group * V1_GROUP_BYTES + PAGE * (1 + slot * V1_GROUP_SECTORS + index)


def _page_mac(meta_key: Buffer, tag: bytes, group: int, page: bytes | bytearray) -> bytes:
    return hmac.new(bytes(meta_key), tag + group.to_bytes(8, "big") + bytes(page[:MAC_OFF]),
                    hashlib.sha256).digest()


def seal_meta(meta_key: Buffer, group: int, page: bytearray) -> None:
    """Write the page MAC into the last 32 bytes of ``page`` (4096-byte bytearray)."""
    page[ENTRIES_BYTES:MAC_OFF] = bytes(MAC_OFF - ENTRIES_BYTES)
    page[MAC_OFF:] = _page_mac(meta_key, _META_TAG, group, page)


def meta_ok(meta_key: Buffer, group: int, page: bytes | bytearray, version: int = VERSION) -> bool:
    """True if the metadata page's MAC verifies (an all-zero page never does)."""
    want = _page_mac(meta_key, _META_TAG if version == VERSION else b"VGMP", group, page)
    return hmac.compare_digest(want, bytes(page[MAC_OFF:]))


def slots(page: bytes | bytearray) -> npt.NDArray[np.void]:
    """Structured (GROUP_SECTORS, 2) view of a metadata page's slots (fields salt, ctr, tag)."""
    return np.frombuffer(page, dtype=SLOT_DTYPE, count=GROUP_SECTORS * 2).reshape(GROUP_SECTORS, 2)


def v1_slots(page: bytes | bytearray) -> npt.NDArray[np.void]:
    """Structured (V1_GROUP_SECTORS, 2) view of a version-1 metadata page (fields ctr, tag)."""
    return np.frombuffer(page, dtype=V1_SLOT_DTYPE, count=V1_GROUP_SECTORS * 2).reshape(V1_GROUP_SECTORS, 2)


def nonce_bytes(counters: npt.NDArray[np.uint64]) -> bytes:
    """12-byte nonces (4 zero bytes + u64 BE counter) for an array of counters."""
    out = np.zeros(len(counters), dtype=[("pad", ">u4"), ("ctr", ">u8")])
    out["ctr"] = counters
    return out.tobytes()


# ---- nonce notes ----------------------------------------------------------------------------
# A note is one aligned 4 KiB page (atomic by the crash model); copy seq % 2 is at
# NOTE_OFFSET + (seq % 2) * PAGE. Bytes: "VGNS" | u16 version (2) | u16 copy | u64 seq |
# u64 flushed counter | zeros | HMAC-SHA256(note key, bytes 0..4063) at 4064.

_NOTE = struct.Struct(">4sHHQQ")
_NOTE_MAGIC = b"VGNS"


def encode_note(note_key: Buffer, seq: int, flushed: int) -> tuple[int, bytes]:
    """(offset, page) of the nonce note number ``seq`` saying counters <= ``flushed`` are durable."""
    which = seq % 2
    page = bytearray(PAGE)
    _NOTE.pack_into(page, 0, _NOTE_MAGIC, VERSION, which, seq, flushed)
    page[MAC_OFF:] = hmac.new(bytes(note_key), bytes(page[:MAC_OFF]), hashlib.sha256).digest()
    return NOTE_OFFSET + which * PAGE, bytes(page)


def decode_note(note_key: Buffer, page: bytes | bytearray, which: int) -> tuple[int, int] | None:
    """(seq, flushed) of a note copy, or None if it is absent, damaged or not this volume's."""
    if len(page) != PAGE:
        return None
    want = hmac.new(bytes(note_key), bytes(page[:MAC_OFF]), hashlib.sha256).digest()
    if not hmac.compare_digest(want, bytes(page[MAC_OFF:])):
        return None
    magic, version, copy_idx, seq, flushed = _NOTE.unpack_from(page, 0)
    if magic != _NOTE_MAGIC or version != VERSION or copy_idx != which or seq % 2 != which:
        return None
    return seq, flushed


# ---- header ---------------------------------------------------------------------------------

def _json_obj(h: VolumeHeader) -> JsonObject:
    return {
        "format": h.format, "format_version": h.format_version, "uuid": h.uuid, "cipher": h.cipher,
        "size": h.size, "sector_size": h.sector_size, "data_offset": h.data_offset,
        "key_arn": h.key_arn, "wrapped_key": base64.b64encode(h.wrapped_key).decode(),
        "context": h.context, "db_id": h.db_id, "ebs_id": h.ebs_id, "created": h.created,
        "nonce_reserved": h.nonce_reserved, "nonce_flushed": h.nonce_flushed,
        "doubtful": [list(r) for r in h.doubtful], "mac": base64.b64encode(h.mac).decode(),
    }


_MARKS = {"doubtful": "D", "nonce_flushed": "F", "nonce_reserved": "R", "mac": "M"}


def _marked(fields: dict[str, object]) -> str:
    text = json.dumps({k: "\x01" + _MARKS[k] if k in _MARKS else v for k, v in fields.items()},
                      sort_keys=True, separators=(",", ":"))
    for c in _MARKS.values():
        text = text.replace(f'"\\u0001{c}"', "\x01" + c)
    return text


def header_templates(h: VolumeHeader) -> tuple[str, str]:
    """The header MAC's canonical JSON (header.compute_mac) and the header copy's JSON
    (encode_copy) of ``h``, with the fields a session changes as markers: \\x01D doubtful,
    \\x01F nonce_flushed, \\x01R nonce_reserved, \\x01M the MAC (quoted base64). The native
    GCM store renders them into the same bytes (native/vc_gcmstore.c, write_header)."""
    return _marked(h.mac_fields()), _marked(_json_obj(h))


def encode_copy(h: VolumeHeader) -> tuple[int, bytes]:
    """(offset, bytes) of the header copy that holds ``h.seqid`` (copy seqid % 2)."""
    which = h.seqid % 2
    text = json.dumps(_json_obj(h), sort_keys=True, separators=(",", ":")).encode()
    if len(text) > HDR_SIZE - _JSON_OFF:
        raise FormatError("GCM header JSON does not fit in its 16 KiB copy")
    buf = bytearray(HDR_SIZE)
    _PREFIX.pack_into(buf, 0, MAGIC, h.format_version, which, len(text), h.seqid, HDR_SIZE)
    buf[_JSON_OFF:_JSON_OFF + len(text)] = text
    buf[_CSUM_OFF:_CSUM_OFF + 32] = hashlib.sha256(bytes(buf)).digest()
    return which * HDR_SIZE, bytes(buf)


def _parse_copy(read: HeaderReader, which: int) -> Copy:
    c = Copy(which * HDR_SIZE)
    raw = read(which * HDR_SIZE, HDR_SIZE)
    if len(raw) < HDR_SIZE:
        c.error = "truncated"
        return c
    magic, version, copy_idx, jlen, seqid, hdr_size = _PREFIX.unpack_from(raw, 0)
    if magic != MAGIC:
        c.error = "bad magic"
        return c
    if version > VERSION:
        raise FormatError(f"volume format version {version} is newer than this volumed supports "
                          f"({VERSION}); upgrade volumed")
    if version not in (1, VERSION) or hdr_size != HDR_SIZE or copy_idx != which or jlen > HDR_SIZE - _JSON_OFF:
        c.error = "inconsistent header fields"
        return c
    if not c.load_json(raw, _CSUM_OFF, 32, b"", bytes(raw[_JSON_OFF:_JSON_OFF + jlen]),
                       unreadable="unreadable JSON", not_object="inconsistent header fields"):
        return c
    if seqid % 2 != which or c.json.get("format_version") != version:
        c.error = "inconsistent header fields"
        return c
    c.accept(seqid)
    return c


def _header_from_json(j: JsonObject, seqid: int) -> VolumeHeader:
    try:
        h = header_from_fields(
            j, seqid=seqid, format=str(j["format"]), format_version=int(j["format_version"]),
            nonce_reserved=int(j["nonce_reserved"]), nonce_flushed=int(j["nonce_flushed"]),
            doubtful=[(int(a), int(b)) for a, b in list(j["doubtful"])[:4096]])
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise FormatError(f"GCM volume header is malformed ({type(exc).__name__})")
    require(h.format == "volumed-gcm" and h.cipher == "gcm", "GCM header names another format")
    require(h.sector_size == PAGE, f"unsupported sector size {h.sector_size}")
    require(h.format_version in (1, VERSION), f"unknown GCM format version {h.format_version}")
    require(h.data_offset == (DATA_OFFSET if h.format_version == VERSION else V1_DATA_OFFSET),
            "bad data offset")
    require(0 <= h.size < 1 << 60 and h.size % PAGE == 0, "volume size is not a whole number of sectors")
    require(0 <= h.nonce_flushed <= h.nonce_reserved < 1 << 64, "inconsistent nonce counters")
    check_header_ids(h)
    return h


def decode(read: HeaderReader) -> tuple[VolumeHeader, list[Copy]]:
    """Parse both copies; the valid one with the highest seqid wins. FormatError if none is valid."""
    copies = [_parse_copy(read, 0), _parse_copy(read, 1)]
    valid = [c for c in copies if c.ok]
    if not valid:
        raise FormatError("GCM volume header: both copies are damaged "
                          f"(first: {copies[0].error}; second: {copies[1].error})")
    best = max(valid, key=lambda c: c.seqid)
    return _header_from_json(best.json, best.seqid), copies
