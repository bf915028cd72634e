"""Volume and database identifiers in AWS's shapes.

``new_db_id()`` gives ``db-`` + 26 characters (RDS DbiResourceId: upper-case letters and digits),
``new_ebs_id()`` gives ``vol-`` + 17 lower-case hex digits. The validators raise UsageError with one
line saying what shape was expected. Callers: Volume.create (ids the user did not give), the CLI.
"""

from __future__ import annotations

import re
import secrets

from volumed.errors import UsageError

_DB_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
DB_ID_RE = re.compile(r"^db-[A-Z0-9]{26}$")
EBS_ID_RE = re.compile(r"^vol-[0-9a-f]{17}$")


def new_db_id() -> str:
    """A fresh random ``db-XXXXXXXXXXXXXXXXXXXXXXXXXX`` id (26 upper-case letters/digits)."""
    return "db-" + "".join(secrets.choice(_DB_ALPHABET) for _ in range(26))


def new_ebs_id() -> str:
    """A fresh random ``vol-`` + 17 hex id."""
    return "vol-" + secrets.token_hex(9)[:17]


def is_db_id(value: str) -> bool:
    """True if ``value`` has the shape of an RDS resource id."""
    return isinstance(value, str) and DB_ID_RE.match(value) is not None


def is_ebs_id(value: str) -> bool:
    """True if ``value`` has the shape of an EBS volume id."""
    return isinstance(value, str) and EBS_ID_RE.match(value) is not None


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
