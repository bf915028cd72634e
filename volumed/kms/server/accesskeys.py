"""Access keys of the key server: who a SigV4-signed request comes from.

An access key is (id, secret, principal ARN, optional service). SigV4 needs the secret on the
server to recompute a signature, so the secret is stored wrapped (AES-256-GCM under the keystore's
root key, bound to the key id: volumed.kms.store.rootkey.wrap), never hashed and never in plaintext.
The principal and the service come from this table only, never from a request.

A *service credential* (``service`` set, e.g. ``rds.amazonaws.com``) stands for an AWS service
acting on behalf of a user: a request signed with it may name the user in the signed header
``x-volumed-on-behalf-of``; the call then runs as that user with ``kms:ViaService`` =
``<service>.<region>.amazonaws.com`` (docs/KMS.md, "Server mode"). No other credential can claim a
service.

Table ``access_keys`` lives in the keystore database. Callers: ``volumed iam create-access-key``
and friends (volumed.cli.iam_cmd, as the keystore's administrator, with the keystore directory),
the server (``lookup`` on every request, from its own read connection).
"""

from __future__ import annotations

import re
import secrets
import sqlite3
from typing import Any

from volumed.errors import UsageError
from volumed.kms.store import rootkey
from volumed.kms.store.keystore import Keystore
from volumed.secrets import wipe

SCHEMA = """CREATE TABLE IF NOT EXISTS access_keys (
    access_key_id TEXT PRIMARY KEY, principal TEXT NOT NULL, service TEXT,
    wrapped_secret BLOB NOT NULL, created REAL NOT NULL)"""
_PRINCIPAL_RE = re.compile(r"^arn:aws:(iam::\d{12}:(user|role)/[\w+=,.@/-]{1,512}|iam::\d{12}:root|"
                           r"sts::\d{12}:assumed-role/[\w+=,.@-]{1,64}/[\w+=,.@-]{1,64})$")
_SERVICE_RE = re.compile(r"^[a-z0-9-]{2,63}\.amazonaws\.com$")
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


def ensure_schema(conn: sqlite3.Connection) -> None:
    conn.execute(SCHEMA)


def _wrap_id(access_key_id: str) -> str:
    return "access-key:" + access_key_id


def new_id() -> str:
    """AKIA + 16 base32 characters, as AWS's long-term access key ids look."""
    return "AKIA" + "".join(secrets.choice(_ALPHABET) for _ in range(16))


def is_principal(arn: object) -> bool:
    """True if ``arn`` is a principal an access key can stand for (or a service act on behalf of)."""
    return isinstance(arn, str) and _PRINCIPAL_RE.fullmatch(arn) is not None


def check_principal(arn: str) -> str:
    if not is_principal(arn):
        raise UsageError(f"{arn!r} is not a principal ARN an access key can stand for; use "
                         f"arn:aws:iam::ACCOUNT:user/NAME, :role/NAME or "
                         f"arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION")
    return arn


def check_service(service: str | None) -> str | None:
    if service is not None and not _SERVICE_RE.fullmatch(service):
        raise UsageError(f"{service!r} is not a service principal; use e.g. rds.amazonaws.com")
    return service


def create(store: Keystore, principal: str, service: str | None, now: float) -> tuple[str, str]:
    """A new access key for ``principal`` (of the keystore's account); returns (id, secret). The
    secret exists in plaintext only in the return value."""
    check_principal(principal)
    check_service(service)
    account = principal.split(":")[4]
    if account != store.account_id:
        raise UsageError(f"{principal} is not in this keystore's account {store.account_id}; "
                         f"use arn:aws:iam::{store.account_id}:user/NAME or similar")
    key_id = new_id()
    secret = secrets.token_urlsafe(30)[:40]
    wrapped = rootkey.wrap(store.root, _wrap_id(key_id), 0, secret.encode())

    def txn(conn: sqlite3.Connection) -> None:
        ensure_schema(conn)
        conn.execute("INSERT INTO access_keys (access_key_id, principal, service, wrapped_secret, created) "
                      "VALUES (?, ?, ?, ?, ?)", (key_id, principal, service, wrapped, now))
        Keystore.bump(conn)
    store.run(txn)
    return key_id, secret


def listing(store: Keystore, principal: str | None = None) -> list[dict[str, Any]]:
    """Every access key (or one principal's), without secrets."""
    def txn(conn: sqlite3.Connection) -> list[sqlite3.Row]:
        ensure_schema(conn)
        sql = "SELECT access_key_id, principal, service, created FROM access_keys"
        args: tuple[str, ...] = ()
        if principal:
            sql += " WHERE principal = ?"
            args = (principal,)
        return conn.execute(sql + " ORDER BY created, access_key_id", args).fetchall()
    return [{"AccessKeyId": r[0], "Principal": r[1], "Service": r[2], "Created": r[3]} for r in store.run(txn)]


def delete(store: Keystore, access_key_id: str) -> None:
    """Delete an access key; requests signed with it fail from the next request on."""
    def txn(conn: sqlite3.Connection) -> int:
        ensure_schema(conn)
        cur = conn.execute("DELETE FROM access_keys WHERE access_key_id = ?", (access_key_id,))
        if cur.rowcount:
            Keystore.bump(conn)
        return cur.rowcount
    if not store.run(txn):
        raise UsageError(f"no access key {access_key_id!r}; list them with 'volumed iam list-access-keys'")


def lookup(conn: sqlite3.Connection, root: bytes | bytearray, access_key_id: str) -> tuple[str, str | None, str] | None:
    """(principal, service, secret) of an access key, or None if there is no such key."""
    row = conn.execute("SELECT principal, service, wrapped_secret FROM access_keys WHERE access_key_id = ?",
                       (access_key_id,)).fetchone()
    if row is None:
        return None
    secret = rootkey.unwrap(root, _wrap_id(access_key_id), 0, row[2])
    try:
        return str(row[0]), row[1], bytes(secret).decode()
    finally:
        wipe(secret)
