"""Keys of the embedded service: lookup by any KeyId form, metadata, state checks, key material,
and the effects of time (automatic rotation, end of the deletion window).

Callers: the operation modules (volumed.kms.ops.*_ops) through a CallContext; volumed.kms.service runs
``apply_time_effects`` at the start of every call (and from ``change_counter`` when a deletion
window has ended), so time-dependent changes need no background process.
"""

from __future__ import annotations

import os
import re
import sqlite3
import uuid

from botocore.exceptions import ClientError

from volumed.kms.arn import Arn, KEYSTORE_PARTITION
from volumed.kms.awsmodel import KeyMetadata, to_datetime
from volumed.kms.ops import managed
from volumed.kms.ops.context import CallContext
from volumed.kms.store import grantstore, rootkey
from volumed.kms.values import Key
from volumed.secrets import wipe

DAY = 86400.0
ALIAS_RE = re.compile(r"^alias/[A-Za-z0-9/_-]{1,256}$")


# -- lookup ------------------------------------------------------------------------------------
def get(ctx: CallContext, key_id: str) -> Key | None:
    """The key with this id, or None (no resolution, no authorisation)."""
    row = ctx.conn.execute("SELECT * FROM keys WHERE key_id = ?", (key_id,)).fetchone()
    return Key.from_row(row) if row else None


def existing(ctx: CallContext, key_id: str) -> Key:
    """The key with this id, which the caller knows exists (read again after a change)."""
    key = get(ctx, key_id)
    if key is None:
        raise not_found(ctx, key_id)
    return key


def not_found(ctx: CallContext, key_id: str) -> ClientError:
    """NotFoundException for a key id, with AWS's message."""
    return ctx.error("NotFoundException", f"Key '{ctx.key_arn(key_id)}' does not exist")


def resolve(ctx: CallContext, ref: str) -> Key:
    """The key a KeyId names: key id, key ARN, alias name or alias ARN (AWS managed aliases are
    created on first reference). NotFoundException / InvalidArnException as AWS."""
    if ref.startswith("arn:"):
        arn = Arn.try_parse(ref)
        if (arn is None or arn.service != "kms" or not arn.region or not arn.account
                or not arn.resource.startswith(("key/", "alias/")) or arn.resource in ("key/", "alias/")):
            raise ctx.error("InvalidArnException", f"Invalid arn {ref}")
        rest = arn.resource
        if (arn.partition, arn.region, arn.account) != (KEYSTORE_PARTITION, ctx.region, ctx.account):
            raise ctx.error("NotFoundException", f"Key '{ref}' does not exist" if rest.startswith("key/")
                            else f"Alias {ref} is not found.")
        ref = rest[4:] if rest.startswith("key/") else rest
    if ref.startswith("alias/"):
        return _resolve_alias(ctx, ref)
    try:
        uuid.UUID(ref)
    except ValueError:
        raise ctx.error("NotFoundException", f"Invalid keyId '{ref}'") from None
    key = get(ctx, ref)
    if key is None:
        raise not_found(ctx, ref)
    return key


def _resolve_alias(ctx: CallContext, alias: str) -> Key:
    """The key behind an alias name (creating an AWS managed one on first reference)."""
    row = ctx.conn.execute("SELECT key_id FROM aliases WHERE name = ?", (alias,)).fetchone()
    if row is None and alias in managed.MANAGED_ALIASES:
        return create_managed(ctx, alias)
    if row is None:
        raise ctx.error("NotFoundException", f"Alias {ctx.alias_arn(alias)} is not found.")
    key = get(ctx, row["key_id"])
    if key is None:
        raise not_found(ctx, row["key_id"])
    return key


# -- creation and material ---------------------------------------------------------------------
def insert_key(ctx: CallContext, *, description: str, policy: str, key_manager: str,
               rotation_enabled: bool = False, rotation_period: int | None = None) -> Key:
    """Create an Enabled SYMMETRIC_DEFAULT key with its first key material version."""
    key_id = str(uuid.uuid4())
    now = ctx.now()
    ctx.conn.execute(
        "INSERT INTO keys (key_id, arn, created, description, key_usage, key_spec, key_manager, origin,"
        " state, policy, rotation_enabled, rotation_period, rotation_anchor) "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (key_id, ctx.key_arn(key_id), now, description, "ENCRYPT_DECRYPT", "SYMMETRIC_DEFAULT",
         key_manager, "AWS_KMS", "Enabled", policy, int(rotation_enabled), rotation_period,
         now if rotation_enabled else None))
    add_material(ctx, key_id, 1, None, now)
    ctx.change()
    return existing(ctx, key_id)


def create_managed(ctx: CallContext, alias: str) -> Key:
    """Create the AWS managed key behind ``alias`` (first reference), yearly rotation on."""
    key = insert_key(ctx, description=managed.MANAGED_ALIASES[alias],
                     policy=managed.managed_key_policy(alias, ctx.account, ctx.region),
                     key_manager="AWS", rotation_enabled=True,
                     rotation_period=managed.MANAGED_ROTATION_DAYS)
    now = ctx.now()
    ctx.conn.execute("INSERT INTO aliases (name, key_id, created, updated) VALUES (?,?,?,?)",
                     (alias, key.key_id, now, now))
    return key


def add_material(ctx: CallContext, key_id: str, version: int, rotation_type: str | None,
                 when: float) -> None:
    """Generate, wrap and store key material ``version`` and make it current."""
    material = bytearray(os.urandom(32))
    try:
        wrapped = rootkey.wrap(ctx.store.root, key_id, version, material)
    finally:
        wipe(material)
    ctx.conn.execute("INSERT INTO materials (key_id, version, created, rotation_type, material_id, wrapped)"
                     " VALUES (?,?,?,?,?,?)", (key_id, version, when, rotation_type, os.urandom(32).hex(), wrapped))
    ctx.conn.execute("UPDATE keys SET current_version = ? WHERE key_id = ?", (version, key_id))
    ctx.change()


def material(ctx: CallContext, key_id: str, version: int) -> tuple[bytearray, str] | None:
    """(plaintext material, material id) of one version, or None if there is no such version.
    The caller wipes the bytearray."""
    row = ctx.conn.execute("SELECT wrapped, material_id FROM materials WHERE key_id = ? AND version = ?",
                           (key_id, version)).fetchone()
    if row is None:
        return None
    return rootkey.unwrap(ctx.store.root, key_id, version, row["wrapped"]), str(row["material_id"])


def current_material_id(ctx: CallContext, key: Key) -> str:
    """The KeyMaterialId of the key's current version."""
    return str(ctx.conn.execute("SELECT material_id FROM materials WHERE key_id = ? AND version = ?",
                            (key.key_id, key.current_version)).fetchone()[0])


# -- state checks (the key-state table) --------------------------------------------------------
def require_enabled(ctx: CallContext, key: Key) -> None:
    """Cryptographic use, CreateGrant, rotation changes: DisabledException / KMSInvalidState."""
    if key.state == "Disabled":
        raise ctx.error("DisabledException", f"{key.arn} is disabled.")
    require_not_pending(ctx, key)


def require_not_pending(ctx: CallContext, key: Key) -> None:
    """Enable/Disable, ScheduleKeyDeletion, CreateAlias: refused only while pending deletion."""
    if key.state == "PendingDeletion":
        raise ctx.error("KMSInvalidStateException", f"{key.arn} is pending deletion.")


def metadata(ctx: CallContext, key: Key) -> KeyMetadata:
    """The KeyMetadata structure of DescribeKey/CreateKey."""
    md: KeyMetadata = {
        "AWSAccountId": ctx.account,
        "KeyId": key.key_id,
        "Arn": key.arn,
        "CreationDate": to_datetime(key.created),
        "Enabled": key.state == "Enabled",
        "Description": key.description,
        "KeyUsage": key.key_usage,
        "KeyState": key.state,
        "Origin": key.origin,
        "KeyManager": key.key_manager,
        "CustomerMasterKeySpec": key.key_spec,
        "KeySpec": key.key_spec,
        "EncryptionAlgorithms": ["SYMMETRIC_DEFAULT"],
        "MultiRegion": False,
        "CurrentKeyMaterialId": current_material_id(ctx, key),
    }
    if key.state == "PendingDeletion":
        md["DeletionDate"] = to_datetime(key.deletion_date)
        md["PendingDeletionWindowInDays"] = key.pending_window
    return md


# -- time --------------------------------------------------------------------------------------
def apply_time_effects(ctx: CallContext) -> None:
    """Destroy keys whose deletion window has ended; rotate Enabled keys whose rotation is due
    (once per elapsed period, dated when it fell due). Disabled keys are not rotated."""
    now = ctx.now()
    for row in ctx.conn.execute("SELECT key_id FROM keys WHERE state = 'PendingDeletion' AND deletion_date <= ?",
                                (now,)).fetchall():
        destroy(ctx, row["key_id"])
    due = ctx.conn.execute(
        "SELECT key_id, rotation_anchor, rotation_period, current_version FROM keys WHERE state = 'Enabled'"
        " AND rotation_enabled = 1 AND rotation_anchor + rotation_period * ? <= ?", (DAY, now)).fetchall()
    for row in due:
        anchor, version = row["rotation_anchor"], row["current_version"]
        while anchor + row["rotation_period"] * DAY <= now:
            anchor += row["rotation_period"] * DAY
            version += 1
            add_material(ctx, row["key_id"], version, "AUTOMATIC", anchor)
        ctx.conn.execute("UPDATE keys SET rotation_anchor = ? WHERE key_id = ?", (anchor, row["key_id"]))


def rotate_if_overdue(ctx: CallContext, key: Key) -> None:
    """On re-enable: a key whose rotation fell due while it was disabled rotates now."""
    if (key.rotation_enabled and key.rotation_anchor is not None and key.rotation_period is not None
            and key.rotation_anchor + key.rotation_period * DAY <= ctx.now()):
        add_material(ctx, key.key_id, key.current_version + 1, "AUTOMATIC", ctx.now())
        ctx.conn.execute("UPDATE keys SET rotation_anchor = ? WHERE key_id = ?", (ctx.now(), key.key_id))


def deletion_due(conn: sqlite3.Connection, now: float) -> bool:
    """Whether some key's deletion window has ended but the key is not yet destroyed."""
    return conn.execute("SELECT 1 FROM keys WHERE state = 'PendingDeletion' AND deletion_date <= ? LIMIT 1",
                        (now,)).fetchone() is not None


def destroy(ctx: CallContext, key_id: str) -> None:
    """Delete a key with all its material, aliases and grants; remember only that it existed."""
    arn = ctx.key_arn(key_id)
    ctx.conn.execute("DELETE FROM materials WHERE key_id = ?", (key_id,))
    ctx.conn.execute("DELETE FROM aliases WHERE key_id = ?", (key_id,))
    grantstore.delete_for_key(ctx.conn, key_id)
    ctx.conn.execute("DELETE FROM keys WHERE key_id = ?", (key_id,))
    ctx.conn.execute("INSERT OR REPLACE INTO deleted_keys (key_id, arn, deleted) VALUES (?,?,?)",
                     (key_id, arn, ctx.now()))
    ctx.change()
    ctx.destroyed = True


def was_deleted(ctx: CallContext, key_id: str) -> bool:
    """Whether a key with this id existed and was destroyed."""
    return ctx.conn.execute("SELECT 1 FROM deleted_keys WHERE key_id = ?", (key_id,)).fetchone() is not None
