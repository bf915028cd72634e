"""Grant operations: CreateGrant, ListGrants, ListRetirableGrants, RetireGrant, RevokeGrant.
They store and remove grants exactly as given; whether a grant allows a call is decided by the
authorizer (volumed.kms.service._authorize). Called by volumed.kms.service."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from volumed.errors import UsageError
from volumed.kms import principals
from volumed.kms.awsmodel import Params, Response
from volumed.kms.ops import keys
from volumed.kms.ops.context import CallContext
from volumed.kms.ops.paging import page
from volumed.kms.policy import grants
from volumed.kms.store import grantstore
from volumed.kms.values import GrantTerms, Key

T = TypeVar("T")

_GRANT_ID_RE = re.compile(r"^[0-9a-f]{64}$")


def _checked(ctx: CallContext, check: Callable[[Any], T], value: Any) -> T:
    """Run one of volumed.kms.policy.grants' validators; its UsageError becomes ValidationException."""
    try:
        return check(value)
    except UsageError as exc:
        raise ctx.error("ValidationException", str(exc)) from None


def create_grant(ctx: CallContext, p: Params) -> Response:
    """Store a grant and issue a token. With Name: a grant with the same name and the same
    parameters is returned again (same GrantId, a new token)."""
    key = keys.resolve(ctx, p["KeyId"])
    for name in ("GranteeServicePrincipal", "RetiringServicePrincipal"):
        if name in p:
            raise ctx.error("UnsupportedOperationException", f"{name} is not supported by the embedded key service")
    operations = _checked(ctx, grants.validate_operations, p["Operations"])
    constraints = _checked(ctx, grants.validate_constraints, p.get("Constraints"))
    request = GrantTerms(grantee=p["GranteePrincipal"], operations=tuple(operations),
                         constraints=constraints, retiring=p.get("RetiringPrincipal"), name=p.get("Name"))
    ctx.authorize("kms:CreateGrant", key, grant_request=request)
    keys.require_enabled(ctx, key)
    grant_id = None
    if p.get("Name"):
        for row in ctx.conn.execute("SELECT * FROM grants WHERE key_id = ? AND name = ?",
                                    (key.key_id, p["Name"])).fetchall():
            if (row["grantee"], row["retiring"], json.loads(row["operations"]),
                    json.loads(row["constraints"]) if row["constraints"] else None) == \
                    (p["GranteePrincipal"], p.get("RetiringPrincipal"), operations, constraints):
                grant_id = row["grant_id"]
                break
    if grant_id is None:
        grant_id = grantstore.new_grant_id()
        grantstore.insert(ctx.conn, grant_id=grant_id, key_id=key.key_id, name=p.get("Name"),
                          created=ctx.now(), grantee=p["GranteePrincipal"],
                          retiring=p.get("RetiringPrincipal"), operations=operations,
                          constraints=constraints, issuing_account=principals.root_arn(ctx.account))
    token = grantstore.add_token(ctx.conn, grant_id)
    ctx.change()
    return {"GrantToken": token, "GrantId": grant_id}


def _check_grant_id(ctx: CallContext, grant_id: str) -> None:
    if not _GRANT_ID_RE.fullmatch(grant_id):
        raise ctx.error("InvalidGrantIdException", f"Grant ID '{grant_id}' is not valid")


def list_grants(ctx: CallContext, p: Params) -> Response:
    key = keys.resolve(ctx, p["KeyId"])
    ctx.authorize("kms:ListGrants", key)
    if "GrantId" in p:
        _check_grant_id(ctx, p["GrantId"])
    items = [grantstore.list_entry(g) for g in grantstore.grants_of_key(ctx.conn, key.key_id)
             if g.grant_id == p.get("GrantId", g.grant_id) and g.grantee == p.get("GranteePrincipal", g.grantee)]
    return page(ctx, items, "Grants", default_limit=50)


def list_retirable_grants(ctx: CallContext, p: Params) -> Response:
    ctx.authorize("kms:ListRetirableGrants", None, retiring_principal=p["RetiringPrincipal"])
    rows = grantstore.rows_for_retiring(ctx.conn, p["RetiringPrincipal"])
    return page(ctx, [grantstore.list_entry(grantstore.grant(ctx.conn, r)) for r in rows], "Grants",
                default_limit=50)


def _grant_of(ctx: CallContext, key: Key, grant_id: str) -> sqlite3.Row:
    _check_grant_id(ctx, grant_id)
    row = grantstore.row_by_id(ctx.conn, grant_id)
    if row is None or row["key_id"] != key.key_id:
        raise ctx.error("NotFoundException", f"Grant ID {grant_id} not found")
    return row


def retire_grant(ctx: CallContext, p: Params) -> Response:
    """Delete a grant named by a token, or by KeyId and GrantId."""
    if "GrantToken" in p:
        if not grantstore.is_well_formed_token(p["GrantToken"]):
            raise ctx.error("InvalidGrantTokenException", "Grant token is not valid")
        row = grantstore.row_by_token(ctx.conn, p["GrantToken"])
        if row is None:
            raise ctx.error("InvalidGrantTokenException", "Grant token is not valid or its grant was "
                                                          "retired or revoked")
        if "GrantId" in p and p["GrantId"] != row["grant_id"]:
            raise ctx.error("InvalidGrantIdException", "GrantId does not match the grant token")
        key = keys.get(ctx, row["key_id"])
    elif "KeyId" in p and "GrantId" in p:
        key = keys.resolve(ctx, p["KeyId"])
        row = _grant_of(ctx, key, p["GrantId"])
    else:
        raise ctx.error("ValidationException", "Specify GrantToken, or KeyId and GrantId")
    ctx.authorize("kms:RetireGrant", key, grant=grantstore.grant(ctx.conn, row))
    grantstore.delete(ctx.conn, row["grant_id"])
    ctx.change()
    return {}


def revoke_grant(ctx: CallContext, p: Params) -> Response:
    key = keys.resolve(ctx, p["KeyId"])
    row = _grant_of(ctx, key, p["GrantId"])
    ctx.authorize("kms:RevokeGrant", key, grant=grantstore.grant(ctx.conn, row))
    grantstore.delete(ctx.conn, row["grant_id"])
    ctx.change()
    return {}
