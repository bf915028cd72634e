"""Storage of grants and grant tokens (enforcement is volumed.kms.policy.grants' and the authorizer's).

A grant row holds the key, grantee, retiring principal, operations and constraints exactly as
CreateGrant received them. Every CreateGrant call issues a new token; all tokens of one grant are
interchangeable and die with it. Callers: volumed.kms.ops.grant_ops (the grant operations),
volumed.kms.ops.context (grants handed to the authorizer), volumed.kms.ops.keys (a destroyed key's grants).
"""

from __future__ import annotations

import base64
import json
import os
import re
import sqlite3
from collections.abc import Callable, Iterable

from volumed.kms.awsmodel import GrantListEntry, to_datetime
from volumed.kms.values import Constraints, Grant

TOKEN_PREFIX = "vgt1"
_TOKEN_RE = re.compile(r"^vgt1[A-Za-z0-9_-]{64}$")


def new_grant_id() -> str:
    """A grant id in AWS's form (64 hex digits)."""
    return os.urandom(32).hex()


def new_token() -> str:
    """A fresh opaque grant token."""
    return TOKEN_PREFIX + base64.urlsafe_b64encode(os.urandom(48)).decode()


def is_well_formed_token(token: str) -> bool:
    """Whether ``token`` could have been issued by this service (malformed -> InvalidGrantToken)."""
    return bool(_TOKEN_RE.fullmatch(token))


def _grant(row: sqlite3.Row, key_arn_of: Callable[[str], str]) -> Grant:
    """A grants row as a Grant (its key named by ARN)."""
    return Grant(key_arn=key_arn_of(row["key_id"]), grant_id=row["grant_id"], created=row["created"],
                 grantee=row["grantee"], issuing_account=row["issuing_account"],
                 operations=tuple(json.loads(row["operations"])),
                 constraints=json.loads(row["constraints"]) if row["constraints"] else None,
                 retiring=row["retiring"] or None, name=row["name"] or None)


def list_entry(grant: Grant) -> GrantListEntry:
    """A grant as ListGrants' GrantListEntry (KeyId as the key ARN; absent members left out)."""
    entry: GrantListEntry = {
        "KeyId": grant.key_arn,
        "GrantId": grant.grant_id,
        "CreationDate": to_datetime(grant.created),
        "GranteePrincipal": grant.grantee,
        "IssuingAccount": grant.issuing_account,
        "Operations": list(grant.operations),
    }
    if grant.name:
        entry["Name"] = grant.name
    if grant.retiring:
        entry["RetiringPrincipal"] = grant.retiring
    if grant.constraints:
        entry["Constraints"] = grant.constraints
    return entry


def _arn_of(conn: sqlite3.Connection) -> Callable[[str], str]:
    """key id -> key ARN lookup on ``conn``."""
    def arn(key_id: str) -> str:
        row = conn.execute("SELECT arn FROM keys WHERE key_id = ?", (key_id,)).fetchone()
        return str(row["arn"]) if row else key_id
    return arn


def insert(conn: sqlite3.Connection, *, grant_id: str, key_id: str, name: str | None, created: float,
           grantee: str, retiring: str | None, operations: list[str], constraints: Constraints | None,
           issuing_account: str) -> None:
    """Store a new grant."""
    seq = conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM grants").fetchone()[0]
    conn.execute(
        "INSERT INTO grants (grant_id, key_id, name, created, grantee, retiring, operations, "
        "constraints, issuing_account, seq) VALUES (?,?,?,?,?,?,?,?,?,?)",
        (grant_id, key_id, name, created, grantee, retiring, json.dumps(operations),
         json.dumps(constraints) if constraints else None, issuing_account, seq))


def add_token(conn: sqlite3.Connection, grant_id: str) -> str:
    """Issue a new token for a grant and return it."""
    token = new_token()
    conn.execute("INSERT INTO grant_tokens (token, grant_id) VALUES (?, ?)", (token, grant_id))
    return token


def row_by_id(conn: sqlite3.Connection, grant_id: str) -> sqlite3.Row | None:
    """The grants row with this id, or None."""
    row: sqlite3.Row | None = conn.execute("SELECT * FROM grants WHERE grant_id = ?",
                                           (grant_id,)).fetchone()
    return row


def row_by_token(conn: sqlite3.Connection, token: str) -> sqlite3.Row | None:
    """The live grant a token names, or None."""
    row: sqlite3.Row | None = conn.execute("SELECT g.* FROM grant_tokens t JOIN grants g ON g.grant_id = "
                                           "t.grant_id WHERE t.token = ?", (token,)).fetchone()
    return row


def grant(conn: sqlite3.Connection, row: sqlite3.Row) -> Grant:
    """A stored grant (a grants row) as a Grant."""
    return _grant(row, _arn_of(conn))


def grants_of_key(conn: sqlite3.Connection, key_id: str) -> list[Grant]:
    """Every grant on a key, oldest first."""
    arn = _arn_of(conn)
    rows = conn.execute("SELECT * FROM grants WHERE key_id = ? ORDER BY seq", (key_id,)).fetchall()
    return [_grant(r, arn) for r in rows]


def grants_for_tokens(conn: sqlite3.Connection, tokens: Iterable[str] | None) -> list[Grant]:
    """The live grants the given tokens name (unknown or dead tokens name none)."""
    out: list[Grant] = []
    seen: set[str] = set()
    for t in tokens or ():
        row = row_by_token(conn, t)
        if row is not None and row["grant_id"] not in seen:
            seen.add(row["grant_id"])
            out.append(grant(conn, row))
    return out


def rows_for_retiring(conn: sqlite3.Connection, principal: str) -> list[sqlite3.Row]:
    """Grants whose RetiringPrincipal is ``principal``, oldest first."""
    return conn.execute("SELECT * FROM grants WHERE retiring = ? ORDER BY seq", (principal,)).fetchall()


def delete(conn: sqlite3.Connection, grant_id: str) -> None:
    """Remove a grant and all its tokens."""
    conn.execute("DELETE FROM grant_tokens WHERE grant_id = ?", (grant_id,))
    conn.execute("DELETE FROM grants WHERE grant_id = ?", (grant_id,))


def delete_for_key(conn: sqlite3.Connection, key_id: str) -> None:
    """Remove every grant of a destroyed key."""
    conn.execute("DELETE FROM grant_tokens WHERE grant_id IN (SELECT grant_id FROM grants WHERE key_id = ?)",
                 (key_id,))
    conn.execute("DELETE FROM grants WHERE key_id = ?", (key_id,))
