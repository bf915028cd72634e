"""The embedded service's minimal IAM: identity policies attached to principals, stored in the keystore.

AWS KMS lets a key policy statement naming the account (``arn:aws:iam::<account>:root``) enable
the account's IAM identity policies; this table is where the embedded service keeps them. A policy
is attached to an IAM user or role ARN of the keystore's account; an assumed-role session
(``arn:aws:sts::A:assumed-role/R/S``) has the policies of its role ``arn:aws:iam::A:role/R``.

Callers: volumed.kms.store.keystore (schema, and the administrator's ``kms:*`` policy when a keystore is
created), volumed.kms.ops.context (the caller's policies, handed to the authorizer), volumed.kms.ops.iam_ops
(the put/get/list/delete extension calls). Pure storage: who may change policies is decided in
volumed.kms.ops.iam_ops.
"""

from __future__ import annotations

import json
import sqlite3

from volumed.kms import arn as _arn
from volumed.kms import principals

SCHEMA = """
CREATE TABLE IF NOT EXISTS identity_policies (
    principal TEXT NOT NULL, name TEXT NOT NULL, document TEXT NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (principal, name))
"""

ADMIN_POLICY_NAME = "volumed-keystore-admin"


def admin_policy_document() -> str:
    """The identity policy a new keystore gives its administrator: every KMS action on every key."""
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Sid": "KeystoreAdministrator", "Effect": "Allow", "Action": "kms:*", "Resource": "*"}]},
        indent=2)


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the identity-policy table if missing (idempotent; inside or outside a transaction)."""
    conn.execute(SCHEMA)


def ensure_admin(conn: sqlite3.Connection, account: str, now: float) -> None:
    """Once per keystore: record the administrator (the keystore's user for the login that opened
    it first, ``principals.user_arn``) in ``meta`` and attach ADMIN_POLICY_NAME to it. Runs under
    the keystore's initialisation lock; commits its own transaction. A keystore created before
    identity policies existed is given its administrator on its next open."""
    if conn.execute("SELECT 1 FROM meta WHERE k = 'admin_principal'").fetchone():
        return
    admin = principals.user_arn(account, principals.current_login())
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("INSERT OR REPLACE INTO meta (k, v) VALUES ('admin_principal', ?)", (admin,))
        put(conn, admin, ADMIN_POLICY_NAME, admin_policy_document(), now)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def admin_principal(conn: sqlite3.Connection) -> str | None:
    """The keystore administrator's ARN (None for a keystore not yet given one)."""
    row = conn.execute("SELECT v FROM meta WHERE k = 'admin_principal'").fetchone()
    return str(row[0]) if row else None


def policies_for_caller(conn: sqlite3.Connection, caller_arn: str) -> list[str]:
    """The policy documents (text) that apply to ``caller_arn``, in (principal, name) order: those
    attached to a principal that covers the caller by volumed.kms.arn.covers (itself, or for an
    assumed-role session its role, with any path, in the same partition and account)."""
    rows = conn.execute("SELECT principal, document FROM identity_policies "
                        "ORDER BY principal, name").fetchall()
    return [r[1] for r in rows if _arn.covers(r[0], caller_arn)]


def put(conn: sqlite3.Connection, principal: str, name: str, document: str, now: float) -> None:
    """Attach (or replace) the policy ``name`` of ``principal``. Inside the caller's transaction."""
    conn.execute("INSERT OR REPLACE INTO identity_policies (principal, name, document, updated) "
                 "VALUES (?, ?, ?, ?)", (principal, name, document, now))


def get(conn: sqlite3.Connection, principal: str, name: str) -> str | None:
    """The document of one attached policy, or None."""
    row = conn.execute("SELECT document FROM identity_policies WHERE principal = ? AND name = ?",
                       (principal, name)).fetchone()
    return str(row[0]) if row else None


def listing(conn: sqlite3.Connection, principal: str | None = None) -> list[tuple[str, str]]:
    """(principal, name) of every attached policy, or of one principal's, sorted."""
    if principal is None:
        rows = conn.execute("SELECT principal, name FROM identity_policies ORDER BY principal, name")
    else:
        rows = conn.execute("SELECT principal, name FROM identity_policies WHERE principal = ? "
                            "ORDER BY name", (principal,))
    return [(r[0], r[1]) for r in rows.fetchall()]


def delete(conn: sqlite3.Connection, principal: str, name: str) -> bool:
    """Detach one policy; whether it existed."""
    cur = conn.execute("DELETE FROM identity_policies WHERE principal = ? AND name = ?", (principal, name))
    return cur.rowcount > 0
