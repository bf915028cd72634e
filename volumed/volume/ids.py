"""Volume and database identifiers in AWS's shapes.

``new_db_id()`` gives ``db-`` + 26 characters (RDS DbiResourceId: upper-case letters and digits),
``new_ebs_id()`` gives ``vol-`` + 17 lower-case hex digits. The validators raise UsageError with one
line saying what shape was expected. ``check_header_ids(h)`` is the parsers' check (luks2, gcmformat):
every id a header names (uuid, db id, EBS id) has its shape, else FormatError, before anything
(a lock file, a state file, a file name in the mount) is built from it: a uuid like
``../outside/owned`` never reaches a path. Callers: Volume.create (ids the user did not give), the
CLI, the header parsers, volumed.mount.paths.
"""

from __future__ import annotations

import re
import secrets

from volumed.errors import FormatError, UsageError
from volumed.volume.header import VolumeHeader

_DB_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
DB_ID_RE = re.compile(r"^db-[A-Z0-9]{26}$")
EBS_ID_RE = re.compile(r"^vol-[0-9a-f]{17}$")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def new_db_id() -> str:
    """A fresh random ``db-XXXXXXXXXXXXXXXXXXXXXXXXXX`` id (26 upper-case letters/digits)."""
    return "db-" + "".join(secrets.choice(_DB_ALPHABET) for _ in range(26))


def new_ebs_id() -> str:
    """A fresh random ``vol-`` + 17 hex id."""
    return "vol-" + secrets.token_hex(9)[:17]


def is_db_id(value: str) -> bool:
    """True if ``value`` has the shape of an RDS resource id."""
    return isinstance(value, str) and DB_ID_RE.fullmatch(value) is not None


def is_ebs_id(value: str) -> bool:
    """True if ``value`` has the shape of an EBS volume id."""
    return isinstance(value, str) and EBS_ID_RE.fullmatch(value) is not None


def validate_db_id(value: str) -> str:
    """Return ``value`` if it is a db id, else raise UsageError."""
    if not is_db_id(value):
        raise UsageError(f"invalid db id {value!r}: expected 'db-' followed by 26 upper-case letters or digits")
    return value


def validate_ebs_id(value: str) -> str:
    """Return ``value`` if it is an EBS volume id, else raise UsageError."""
    if not is_ebs_id(value):
        raise UsageError(f"invalid EBS volume id {value!r}: expected 'vol-' followed by 17 lower-case hex digits")
    return value


def is_uuid(value: str) -> bool:
    """True if ``value`` is a UUID in canonical lower-case form (what Volume.create writes)."""
    return isinstance(value, str) and UUID_RE.fullmatch(value) is not None


def check_header_ids(h: VolumeHeader) -> None:
    """FormatError unless the header's uuid, db_id and ebs_id have their shapes (a header parser's
    last check: these values become file names)."""
    for field, ok in (("uuid", is_uuid(h.uuid)), ("db id", is_db_id(h.db_id)),
                      ("EBS id", is_ebs_id(h.ebs_id))):
        if not ok:
            value = {"uuid": h.uuid, "db id": h.db_id, "EBS id": h.ebs_id}[field]
            raise FormatError(f"the volume header's {field} {value[:80]!r} is malformed: the header "
                              "was altered or is not volumed's; do not use it")
