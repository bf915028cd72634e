"""Rotation operations: Enable/DisableKeyRotation, GetKeyRotationStatus, RotateKeyOnDemand,
ListKeyRotations. Automatic rotation itself happens lazily in volumed.kms.ops.keys.apply_time_effects.
Called by volumed.kms.service with an open transaction's CallContext."""

from __future__ import annotations

from volumed.kms.awsmodel import Params, Response, to_datetime
from volumed.kms.ops import keys
from volumed.kms.ops.context import CallContext
from volumed.kms.ops.paging import page

DEFAULT_PERIOD = 365
ON_DEMAND_LIMIT = 25


def enable_key_rotation(ctx: CallContext, p: Params) -> Response:
    """Rotation on with a period of 90-2560 days (default 365). Enabling starts the period now;
    changing the period of an enabled key keeps its start (a now-overdue key rotates at once)."""
    key = keys.resolve(ctx, p["KeyId"])
    ctx.authorize("kms:EnableKeyRotation", key)
    keys.require_enabled(ctx, key)
    period = p.get("RotationPeriodInDays", DEFAULT_PERIOD)
    anchor = key.rotation_anchor if key.rotation_enabled else ctx.now()
    ctx.conn.execute("UPDATE keys SET rotation_enabled = 1, rotation_period = ?, rotation_anchor = ? "
                     "WHERE key_id = ?", (period, anchor, key.key_id))
    ctx.change()
    keys.apply_time_effects(ctx)
    return {}


def disable_key_rotation(ctx: CallContext, p: Params) -> Response:
    """Automatic rotation off (existing versions stay; on-demand still works)."""
    key = keys.resolve(ctx, p["KeyId"])
    ctx.authorize("kms:DisableKeyRotation", key)
    keys.require_enabled(ctx, key)
    ctx.conn.execute("UPDATE keys SET rotation_enabled = 0 WHERE key_id = ?", (key.key_id,))
    ctx.change()
    return {}


def get_key_rotation_status(ctx: CallContext, p: Params) -> Response:
    """Whether rotation is on and, if so, its period and next date."""
    key = keys.resolve(ctx, p["KeyId"])
    ctx.authorize("kms:GetKeyRotationStatus", key)
    out: Response = {"KeyRotationEnabled": bool(key.rotation_enabled), "KeyId": key.arn}
    if key.rotation_enabled and key.rotation_anchor is not None and key.rotation_period is not None:
        out["RotationPeriodInDays"] = key.rotation_period
        out["NextRotationDate"] = to_datetime(key.rotation_anchor + key.rotation_period * keys.DAY)
    return out


def rotate_key_on_demand(ctx: CallContext, p: Params) -> Response:
    """New current key material now (at most 25 times per key); the automatic schedule stays."""
    key = keys.resolve(ctx, p["KeyId"])
    ctx.authorize("kms:RotateKeyOnDemand", key)
    if key.key_manager == "AWS":
        raise ctx.error("UnsupportedOperationException",
                        f"{key.arn} is an AWS managed key; AWS rotates it every year")
    keys.require_enabled(ctx, key)
    if key.on_demand_count >= ON_DEMAND_LIMIT:
        raise ctx.error("LimitExceededException",
                        f"{key.arn} has reached the limit of {ON_DEMAND_LIMIT} on-demand rotations")
    keys.add_material(ctx, key.key_id, key.current_version + 1, "ON_DEMAND", ctx.now())
    ctx.conn.execute("UPDATE keys SET on_demand_count = on_demand_count + 1 WHERE key_id = ?", (key.key_id,))
    return {"KeyId": key.key_id}


def list_key_rotations(ctx: CallContext, p: Params) -> Response:
    """Completed rotations, oldest first; with IncludeKeyMaterial ALL_KEY_MATERIAL also the
    original material."""
    key = keys.resolve(ctx, p["KeyId"])
    ctx.authorize("kms:ListKeyRotations", key)
    rows = ctx.conn.execute("SELECT * FROM materials WHERE key_id = ? ORDER BY version",
                            (key.key_id,)).fetchall()
    everything = p.get("IncludeKeyMaterial") == "ALL_KEY_MATERIAL"
    items = []
    for r in rows:
        if r["rotation_type"] is None and not everything:
            continue
        item = {"KeyId": key.key_id, "KeyMaterialId": r["material_id"],
                "KeyMaterialState": "CURRENT" if r["version"] == key.current_version else "NON_CURRENT"}
        if r["rotation_type"] is not None:
            item.update(RotationDate=to_datetime(r["created"]), RotationType=r["rotation_type"])
        items.append(item)
    return page(ctx, items, "Rotations")
