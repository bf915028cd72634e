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

from volumed.kms.awsmodel import to_datetime

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


def _entry(row, key_arn_of) -> dict:
    """A grants row as a GrantListEntry (KeyId as the key ARN)."""
    entry = {
        "KeyId": key_arn_of(row["key_id"]),
        "GrantId": row["grant_id"],
        "CreationDate": to_datetime(row["created"]),
        "GranteePrincipal": row["grantee"],
        "IssuingAccount": row["issuing_account"],
        "Operations": json.loads(row["operations"]),
    }
    if row["name"]:
        entry["Name"] = row["name"]
    if row["retiring"]:
        entry["RetiringPrincipal"] = row["retiring"]
    if row["constraints"]:
        entry["Constraints"] = json.loads(row["constraints"])
    return entry


def _arn_of(conn):
    """key id -> key ARN lookup on ``conn``."""
    def arn(key_id):
        row = conn.execute("SELECT arn FROM keys WHERE key_id = ?", (key_id,)).fetchone()
        return row["arn"] if row else key_id
    return arn


def insert(conn, *, grant_id, key_id, name, created, grantee, retiring, operations, constraints,
           issuing_account) -> None:
    """Store a new grant."""
    seq = conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM grants").fetchone()[0]
    conn.execute(
        "INSERT INTO grants (grant_id, key_id, name, created, grantee, retiring, operations, "
        "constraints, issuing_account, seq) VALUES (?,?,?,?,?,?,?,?,?,?)",
        (grant_id, key_id, name, created, grantee, retiring, json.dumps(operations),
         json.dumps(constraints) if constraints else None, issuing_account, seq))


def add_token(conn, grant_id: str) -> str:
    """Issue a new token for a grant and return it."""
    token = new_token()
    conn.execute("INSERT INTO grant_tokens (token, grant_id) VALUES (?, ?)", (token, grant_id))
    return token


def find_named(conn, key_id: str, name: str):
    """The grant on ``key_id`` created with this Name (for idempotent CreateGrant), or None."""
    return conn.execute("SELECT * FROM grants WHERE key_id = ? AND name = ?", (key_id, name)).fetchone()


def row_by_id(conn, grant_id: str):
    """The grants row with this id, or None."""
    return conn.execute("SELECT * FROM grants WHERE grant_id = ?", (grant_id,)).fetchone()


def row_by_token(conn, token: str):
    """The live grant a token names, or None."""
    return conn.execute("SELECT g.* FROM grant_tokens t JOIN grants g ON g.grant_id = t.grant_id "
                        "WHERE t.token = ?", (token,)).fetchone()


def entry(conn, row) -> dict:
    """A stored grant as a GrantListEntry."""
    return _entry(row, _arn_of(conn))


def grants_of_key(conn, key_id: str) -> list[dict]:
    """Every grant on a key as GrantListEntry dicts, oldest first."""
    arn = _arn_of(conn)
    rows = conn.execute("SELECT * FROM grants WHERE key_id = ? ORDER BY seq", (key_id,)).fetchall()
    return [_entry(r, arn) for r in rows]


def grants_for_tokens(conn, tokens) -> list[dict]:
    """The live grants the given tokens name (unknown or dead tokens name none)."""
    out, seen = [], set()
    for t in tokens or ():
        row = row_by_token(conn, t)
        if row is not None and row["grant_id"] not in seen:
            seen.add(row["grant_id"])
            out.append(entry(conn, row))
    return out


def rows_for_retiring(conn, principal: str) -> list:
    """Grants whose RetiringPrincipal is ``principal``, oldest first."""
    return conn.execute("SELECT * FROM grants WHERE retiring = ? ORDER BY seq", (principal,)).fetchall()


def rows_of_key(conn, key_id: str) -> list:
    """A key's grants rows, oldest first."""
    return conn.execute("SELECT * FROM grants WHERE key_id = ? ORDER BY seq", (key_id,)).fetchall()


def delete(conn, grant_id: str) -> None:
    """Remove a grant and all its tokens."""
    conn.execute("DELETE FROM grant_tokens WHERE grant_id = ?", (grant_id,))
    conn.execute("DELETE FROM grants WHERE grant_id = ?", (grant_id,))


def delete_for_key(conn, key_id: str) -> None:
    """Remove every grant of a destroyed key."""
    conn.execute("DELETE FROM grant_tokens WHERE grant_id IN (SELECT grant_id FROM grants WHERE key_id = ?)",
                 (key_id,))
    conn.execute("DELETE FROM grants WHERE key_id = ?", (key_id,))
