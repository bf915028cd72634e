"""Snapshot ids in EBS's shape: ``snap-`` + 17 lower-case hex digits.

Callers: engine (new ids), the CLI and catalog (validation of user input).
"""

from __future__ import annotations

import re
import secrets

from volumed.errors import UsageError

SNAP_ID_RE = re.compile(r"^snap-[0-9a-f]{17}$")


def new_snapshot_id() -> str:
    """A fresh random snapshot id."""
    return "snap-" + secrets.token_hex(9)[:17]


def validate_snapshot_id(value: str) -> str:
    """Return ``value`` if it has the snapshot id shape, else raise UsageError (one line)."""
    if not isinstance(value, str) or not SNAP_ID_RE.fullmatch(value):
        raise UsageError(f"invalid snapshot id {value!r}: expected 'snap-' followed by 17 lower-case "
                         "hex digits (see volumed snapshot list)")
    return value
