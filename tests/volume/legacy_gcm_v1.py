"""A frozen writer of GCM volumes of format 1, as volumed wrote them before format 2 (commit f4eabe3).

Independent of volumed.volume.gcmformat/gcmstore on purpose: the upgrade tests need real format-1
files even though volumed no longer writes them. Layout (docs/FORMAT.md, "Format 1"): two 16 KiB
header copies (binary prefix version 1, JSON with format_version 1, data_offset 32768), then groups
of 72 sectors: a metadata page of 2x72 slots of 28 bytes (4 zero bytes, u64 counter, 16-byte tag)
and HMAC-SHA256(metadata key, "VGMP" || u64 group || bytes 0..4063) at 4064, then 72 slot-0 and 72
slot-1 data pages. Sectors: AES-256-GCM under the data key, nonce 4 zero bytes || counter, AAD
"volumed-gcm-v1" || UUID bytes || u64 sector.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import hmac
import json
import struct
import uuid as _uuid

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from volumed.volume.header import GCM_META_INFO, MAC_INFO, VolumeHeader, compute_mac, derive_key
from volumed.volume.keywrap import new_wrapped_key, unwrap

PAGE = 4096
HDR = 16384
DATA = 2 * HDR
G = 72
GROUP_BYTES = PAGE * (1 + 2 * G)


def meta_offset(g: int) -> int:
    return DATA + g * GROUP_BYTES


def slot_offset(g: int, k: int, i: int) -> int:
    return DATA + g * GROUP_BYTES + PAGE * (1 + k * G + i)


def _copy(h: VolumeHeader) -> tuple[int, bytes]:
    j = {"format": h.format, "format_version": 1, "uuid": h.uuid, "cipher": "gcm", "size": h.size,
         "sector_size": PAGE, "data_offset": DATA, "key_arn": h.key_arn,
         "wrapped_key": base64.b64encode(h.wrapped_key).decode(), "context": h.context,
         "db_id": h.db_id, "ebs_id": h.ebs_id, "created": h.created,
         "nonce_reserved": h.nonce_reserved, "nonce_flushed": h.nonce_flushed,
         "doubtful": [list(r) for r in h.doubtful], "mac": base64.b64encode(h.mac).decode()}
    text = json.dumps(j, sort_keys=True, separators=(",", ":")).encode()
    buf = bytearray(HDR)
    struct.pack_into(">8sHHIQQ", buf, 0, b"VOLUMEDG", 1, h.seqid % 2, len(text), h.seqid, HDR)
    buf[128:128 + len(text)] = text
    buf[32:64] = hashlib.sha256(bytes(buf)).digest()
    return (h.seqid % 2) * HDR, bytes(buf)


class V1Volume:
    """create(path, kms, size) then write(sector, data[, slot]), write_header(), close()."""

    def __init__(self, path, kms, size: int, *, db_id="db-ABCDEFGHIJKLMNOPQRSTUVWXYZ",
                 ebs_id="vol-0123456789abcdef0"):
        self.path = str(path)
        ctx = {"aws:rds:db-id": db_id, "aws:ebs:id": ebs_id}
        wrapped, arn = new_wrapped_key(kms, "alias/aws/rds", 32, ctx)
        self.key = bytes(unwrap(kms, arn, wrapped, ctx, expect_len=32))
        self.h = VolumeHeader(uuid=str(_uuid.uuid4()), cipher="gcm", size=size, sector_size=PAGE,
                              data_offset=DATA, key_arn=arn, wrapped_key=wrapped, context=ctx,
                              db_id=db_id, ebs_id=ebs_id, format="volumed-gcm", format_version=1,
                              created=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                              nonce_reserved=1 << 20, nonce_flushed=1 << 20)
        self.meta_key = bytes(derive_key(self.key, self.h.uuid, GCM_META_INFO))
        self.mac_key = bytes(derive_key(self.key, self.h.uuid, MAC_INFO))
        self.groups = (size // PAGE + G - 1) // G
        self.pages = [bytearray(PAGE) for _ in range(self.groups)]
        self.next = 1
        self.f = open(self.path, "xb+")
        self.f.truncate(DATA + self.groups * GROUP_BYTES)
        for g in range(self.groups):
            self._seal(g)
        self.write_header()

    def _seal(self, g: int) -> None:
        p = self.pages[g]
        p[4064:] = hmac.new(self.meta_key, b"VGMP" + g.to_bytes(8, "big") + bytes(p[:4064]),
                            hashlib.sha256).digest()
        self.f.seek(meta_offset(g))
        self.f.write(p)

    def write_header(self) -> None:
        self.h.mac = compute_mac(self.mac_key, self.h)
        for _ in range(2):
            self.h.seqid += 1
            off, data = _copy(self.h)
            self.f.seek(off)
            self.f.write(data)

    def slots(self, sector: int) -> tuple[int, int]:
        g, i = divmod(sector, G)
        p = self.pages[g]
        return tuple(int.from_bytes(p[(2 * i + k) * 28 + 4:(2 * i + k) * 28 + 12], "big") for k in (0, 1))

    def write(self, sector: int, data: bytes, slot: int | None = None) -> int:
        """Seal ``data`` (4096 bytes) into ``slot`` (default: the non-current one); its counter."""
        g, i = divmod(sector, G)
        c0, c1 = self.slots(sector)
        k = (0 if c1 > c0 else 1) if slot is None else slot
        ctr = self.next
        self.next += 1
        nonce = bytes(4) + ctr.to_bytes(8, "big")
        aad = b"volumed-gcm-v1" + _uuid.UUID(self.h.uuid).bytes + sector.to_bytes(8, "big")
        sealed = AESGCM(self.key).encrypt(nonce, bytes(data), aad)
        o = (2 * i + k) * 28
        self.pages[g][o:o + 28] = nonce + sealed[PAGE:]
        self._seal(g)
        self.f.seek(slot_offset(g, k, i))
        self.f.write(sealed[:PAGE])
        return ctr

    def close(self) -> None:
        self.f.close()
