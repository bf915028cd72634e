"""The volume header as one Python object, and its MAC.

VolumeHeader is format-neutral: volumed.volume.luks2 (XTS) and volumed.volume.gcmformat (GCM) turn
it into bytes and back. ``mac_fields()`` is the canonical set of fields the header MAC covers: every
field that matters (format, cipher, sector size, data offset, size, ids, key ARN, wrapped key,
context, and for GCM the nonce reservation and the doubtful-nonce ranges). Only the copy sequence
id and the MAC itself are outside it.

The MAC key is HKDF-SHA256(data key, salt = volume UUID bytes, info = "volumed header mac v1");
the MAC is HMAC-SHA256(mac key, canonical JSON of mac_fields()). Callers: device (verify on open,
seal on every header update), create.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import uuid as _uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from volumed.errors import FormatError, IntegrityError

if TYPE_CHECKING:
    from typing_extensions import Buffer

SECTOR_SIZE = 4096
CONTEXT_DB = "aws:rds:db-id"
CONTEXT_EBS = "aws:ebs:id"
MAC_INFO = b"volumed header mac v1"
GCM_META_INFO = b"volumed gcm metadata mac v1"
GCM_NOTE_INFO = b"volumed gcm nonce note v2"
SNAPSHOT_ROOT_INFO = b"volumed snapshot manifest root v1"


@dataclasses.dataclass
class VolumeHeader:
    """Everything a volume's header says. ``wrapped_key`` is the KMS ciphertext blob, never a key."""

    uuid: str
    cipher: str               # "xts" or "gcm"
    size: int                 # bytes visible to users, a multiple of sector_size
    sector_size: int
    data_offset: int          # where the data area starts in the backing file
    key_arn: str
    wrapped_key: bytes
    context: dict[str, str]
    db_id: str
    ebs_id: str
    created: str = ""
    mac: bytes = b""
    seqid: int = 0
    format: str = ""          # "luks2" or "volumed-gcm"
    format_version: int = 1
    # GCM only: nonce counters (see docs/FORMAT.md "Nonces").
    nonce_reserved: int = 0
    nonce_flushed: int = 0
    doubtful: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # (lo, hi] ranges

    @property
    def sectors(self) -> int:
        return self.size // self.sector_size

    def mac_fields(self) -> dict[str, object]:
        """The canonical dict the header MAC covers."""
        d: dict[str, object] = {
            "format": self.format, "format_version": self.format_version, "uuid": self.uuid,
            "cipher": self.cipher, "size": self.size, "sector_size": self.sector_size,
            "data_offset": self.data_offset, "key_arn": self.key_arn,
            "wrapped_key": self.wrapped_key.hex(), "context": self.context,
            "db_id": self.db_id, "ebs_id": self.ebs_id, "created": self.created,
        }
        if self.cipher == "gcm":
            d.update(nonce_reserved=self.nonce_reserved, nonce_flushed=self.nonce_flushed,
                     doubtful=[list(r) for r in self.doubtful])
        return d

    def to_dict(self) -> dict[str, object]:
        """JSON-friendly summary for ``volumed info --json`` (wrapped key base64, no secrets)."""
        d = self.mac_fields()
        d["wrapped_key"] = base64.b64encode(self.wrapped_key).decode()
        d["mac"] = base64.b64encode(self.mac).decode()
        d["seqid"] = self.seqid
        d["sectors"] = self.sectors
        return d

    def check_context(self) -> None:
        """The context must name this header's own db id and EBS id (else IntegrityError)."""
        if self.context.get(CONTEXT_DB) != self.db_id or self.context.get(CONTEXT_EBS) != self.ebs_id:
            raise IntegrityError(
                f"volume header context {self.context} does not match its db id {self.db_id} "
                f"and EBS id {self.ebs_id}: the header was altered; restore it from a backup")


def derive_key(data_key: Buffer, volume_uuid: str, info: bytes) -> bytearray:
    """HKDF-SHA256 subkey (32 bytes) of the data key, bound to the volume UUID and ``info``."""
    hk = HKDF(algorithm=hashes.SHA256(), length=32, salt=_uuid.UUID(volume_uuid).bytes, info=info)
    return bytearray(hk.derive(bytes(data_key)))


def snapshot_root_key(data_key: Buffer) -> bytearray:
    """HKDF-SHA256 subkey (32 bytes, no salt, info "volumed snapshot manifest root v1") of a data
    key: the root of snapshot manifest MAC keys (volumed.snapshot.seal). A volume's snapshots share
    its data key, so the open Volume keeps this root and no snapshot needs another Decrypt."""
    hk = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=SNAPSHOT_ROOT_INFO)
    return bytearray(hk.derive(bytes(data_key)))


def _canonical(fields: dict[str, object]) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def compute_mac(mac_key: Buffer, header: VolumeHeader) -> bytes:
    """HMAC-SHA256 of the header's MAC'd fields."""
    return hmac.new(bytes(mac_key), _canonical(header.mac_fields()), hashlib.sha256).digest()


def verify_mac(mac_key: Buffer, header: VolumeHeader, path: str = "") -> None:
    """Raise IntegrityError unless the header MAC verifies (names which check failed)."""
    if not hmac.compare_digest(compute_mac(mac_key, header), header.mac):
        raise IntegrityError(
            f"volume header of {path or 'the volume'} fails its MAC: a field (cipher, sector size, "
            "offsets, size, ids, key, context or nonce state) was altered; do not use this header")
    header.check_context()


HeaderReader: TypeAlias = Callable[[int, int], bytes]
"""``read(offset, length)``: bytes of the backing file (zeros past its end), for the header parsers."""

# A header copy's parsed JSON. Its values are whatever the file holds: the parsers convert and check
# each one where they read it (luks2/gcmformat._header_from_json, under one try/except).
JsonObject: TypeAlias = dict[str, Any]


@dataclasses.dataclass
class HeaderCopy:
    """One parsed on-disk header copy: ``ok`` with ``seqid`` and ``json``, or an ``error`` string."""

    offset: int
    ok: bool = False
    error: str = "missing"
    seqid: int = -1
    json: JsonObject = dataclasses.field(default_factory=dict)

    def load_json(self, binary: bytes | bytearray, csum_off: int, csum_len: int, rest: bytes,
                  text: bytes, *, unreadable: str, not_object: str) -> bool:
        """The part both header formats share: the copy's SHA-256 checksum (over ``binary`` with its
        checksum field [csum_off, csum_off + csum_len) zeroed, then ``rest``) must equal the
        field's first 32 bytes, and ``text`` must be a JSON object, which becomes ``json``. False,
        with ``error`` set ("checksum mismatch", ``unreadable`` or ``not_object``), otherwise."""
        zeroed = bytearray(binary)
        csum = bytes(zeroed[csum_off:csum_off + 32])
        zeroed[csum_off:csum_off + csum_len] = bytes(csum_len)
        if hashlib.sha256(bytes(zeroed) + rest).digest() != csum:
            self.error = "checksum mismatch"
            return False
        try:
            obj = json.loads(text.decode())
        except (UnicodeDecodeError, ValueError, RecursionError):
            self.error = unreadable
            return False
        if not isinstance(obj, dict):
            self.error = not_object
            return False
        self.json = obj
        return True

    def accept(self, seqid: int) -> None:
        """Mark the copy valid at ``seqid``."""
        self.ok, self.error, self.seqid = True, "", seqid


def require(cond: bool, what: str) -> None:
    """Parser helper: raise FormatError(what) unless cond."""
    if not cond:
        raise FormatError(what)


def header_from_fields(j: JsonObject, *, seqid: int, format: str, format_version: int,
                       **extra: Any) -> VolumeHeader:
    """A VolumeHeader from the fields every format's JSON stores alike (luks2's token,
    gcmformat's header object); ``extra`` adds a format's own. Raises what the conversions raise
    (KeyError, TypeError, ValueError, AttributeError, OverflowError, binascii.Error, a ValueError): each parser
    turns those into its own FormatError."""
    return VolumeHeader(
        uuid=str(j["uuid"]), cipher=str(j["cipher"]), size=int(j["size"]),
        sector_size=int(j["sector_size"]), data_offset=int(j["data_offset"]),
        key_arn=str(j["key_arn"]), wrapped_key=base64.b64decode(j["wrapped_key"], validate=True),
        context={str(k): str(v) for k, v in dict(j["context"]).items()},
        db_id=str(j["db_id"]), ebs_id=str(j["ebs_id"]), created=str(j.get("created", "")),
        mac=base64.b64decode(j["mac"], validate=True), seqid=seqid, format=format,
        format_version=format_version, **extra)
