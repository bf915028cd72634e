"""Alias operations: CreateAlias, UpdateAlias, DeleteAlias, ListAliases. Called by
volumed.kms.service with an open transaction's CallContext; return response bodies."""

from __future__ import annotations

import sqlite3

from volumed.kms.awsmodel import Params, Response, to_datetime
from volumed.kms.ops import keys
from volumed.kms.ops.context import CallContext
from volumed.kms.ops.paging import page
from volumed.kms.values import Key

RESERVED_PREFIX = "alias/aws/"


def _check_name(ctx: CallContext, name: str) -> None:
    """InvalidAliasNameException / NotAuthorizedException (alias/aws/ reserved) for a bad name."""
    if not keys.ALIAS_RE.fullmatch(name):
        raise ctx.error("InvalidAliasNameException",
                        f"Alias name '{name}' is not valid: it must be 'alias/' followed by 1-256 of "
                        f"A-Z a-z 0-9 / _ -")
    if name.startswith(RESERVED_PREFIX):
        raise ctx.error("NotAuthorizedException",
                        f"Alias name '{name}' is reserved for AWS managed keys (prefix '{RESERVED_PREFIX}')")


def _target(ctx: CallContext, ref: str, action: str) -> Key:
    """The key an alias may point to: a key id or ARN (not an alias), authorised, not pending deletion."""
    if ref.startswith("alias/") or ":alias/" in ref:
        raise ctx.error("ValidationException", "Aliases must refer to keys. Not aliases")
    key = keys.resolve(ctx, ref)
    ctx.authorize(action, key)
    keys.require_not_pending(ctx, key)
    return key


def create_alias(ctx: CallContext, p: Params) -> Response:
    """A new alias for a key; AlreadyExistsException if the name is taken."""
    name = p["AliasName"]
    _check_name(ctx, name)
    key = _target(ctx, p["TargetKeyId"], "kms:CreateAlias")
    if ctx.conn.execute("SELECT 1 FROM aliases WHERE name = ?", (name,)).fetchone():
        raise ctx.error("AlreadyExistsException", f"An alias with the name {ctx.alias_arn(name)} already exists")
    ctx.conn.execute("INSERT INTO aliases (name, key_id, created, updated) VALUES (?,?,?,?)",
                     (name, key.key_id, ctx.now(), ctx.now()))
    ctx.change()
    return {}


def _existing(ctx: CallContext, name: str) -> sqlite3.Row:
    """The aliases row of a name; NotFoundException if there is none."""
    _check_name(ctx, name)
    row: sqlite3.Row | None = ctx.conn.execute("SELECT * FROM aliases WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise ctx.error("NotFoundException", f"Alias {ctx.alias_arn(name)} is not found.")
    return row


def update_alias(ctx: CallContext, p: Params) -> Response:
    """Point an existing alias at another key."""
    alias = _existing(ctx, p["AliasName"])
    ctx.authorize("kms:UpdateAlias", keys.get(ctx, alias["key_id"]))
    key = _target(ctx, p["TargetKeyId"], "kms:UpdateAlias")
    ctx.conn.execute("UPDATE aliases SET key_id = ?, updated = ? WHERE name = ?",
                     (key.key_id, ctx.now(), alias["name"]))
    ctx.change()
    return {}


def delete_alias(ctx: CallContext, p: Params) -> Response:
    """Remove an alias (its key is untouched)."""
    alias = _existing(ctx, p["AliasName"])
    ctx.authorize("kms:DeleteAlias", keys.get(ctx, alias["key_id"]))
    ctx.conn.execute("DELETE FROM aliases WHERE name = ?", (alias["name"],))
    ctx.change()
    return {}


def list_aliases(ctx: CallContext, p: Params) -> Response:
    """All aliases, or those of one key, by name, paginated."""
    sql, args = "SELECT * FROM aliases", tuple[str, ...]()
    if "KeyId" in p:
        key = keys.resolve(ctx, p["KeyId"])
        ctx.authorize("kms:ListAliases", key)
        sql, args = sql + " WHERE key_id = ?", (key.key_id,)
    else:
        ctx.authorize("kms:ListAliases", None)
    rows = ctx.conn.execute(sql + " ORDER BY name", args).fetchall()
    items = [{"AliasName": r["name"], "AliasArn": ctx.alias_arn(r["name"]), "TargetKeyId": r["key_id"],
              "CreationDate": to_datetime(r["created"]), "LastUpdatedDate": to_datetime(r["updated"])}
             for r in rows]
    return page(ctx, items, "Aliases")
