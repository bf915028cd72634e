"""Key lifecycle operations: CreateKey, DescribeKey, ListKeys, EnableKey, DisableKey,
ScheduleKeyDeletion, CancelKeyDeletion, UpdateKeyDescription, Get/PutKeyPolicy, ListKeyPolicies.

Each function takes the CallContext of an open transaction and the validated parameters and
returns the response body (without ResponseMetadata). Called only by volumed.kms.service.
"""

from __future__ import annotations

from volumed.kms.awsmodel import Params, Response, to_datetime
from volumed.kms.ops import keys, managed
from volumed.kms.ops.context import CallContext
from volumed.kms.ops.paging import page
from volumed.kms.policy import policy
from volumed.kms.values import Key

MIN_WINDOW, MAX_WINDOW, DEFAULT_WINDOW = 7, 30, 30


def create_key(ctx: CallContext, p: Params) -> Response:
    """A customer managed symmetric key, Enabled, with the given or the default key policy."""
    ctx.authorize("kms:CreateKey", None, new_policy=p.get("Policy"))
    for name, allowed in (("KeyUsage", "ENCRYPT_DECRYPT"), ("KeySpec", "SYMMETRIC_DEFAULT"),
                          ("CustomerMasterKeySpec", "SYMMETRIC_DEFAULT"), ("Origin", "AWS_KMS")):
        if p.get(name, allowed) != allowed:
            raise ctx.error("UnsupportedOperationException",
                            f"{name} {p[name]} is not supported by the embedded key service "
                            f"(only {allowed})")
    for name in ("CustomKeyStoreId", "XksKeyId"):
        if name in p:
            raise ctx.error("UnsupportedOperationException", f"{name} is not supported by the embedded key service")
    if p.get("MultiRegion"):
        raise ctx.error("UnsupportedOperationException", "multi-Region keys are not supported by the embedded key service")
    policy = p.get("Policy")
    if policy is not None:
        check_policy_document(ctx, policy)
    else:
        policy = managed.default_key_policy(ctx.account)
    key = keys.insert_key(ctx, description=p.get("Description", ""), policy=policy, key_manager="CUSTOMER")
    ctx.key_arns.append(key.arn)
    return {"KeyMetadata": keys.metadata(ctx, key)}


def check_policy_document(ctx: CallContext, text: str) -> None:
    """MalformedPolicyDocumentException (with volumed.kms.policy.policy's pointed message) unless
    ``text`` is a key policy the policy language accepts. The text is stored as given."""
    try:
        policy.parse_policy(text, kind="key")
    except policy.MalformedPolicyDocument as exc:
        raise ctx.error("MalformedPolicyDocumentException", str(exc)) from None


def describe_key(ctx: CallContext, p: Params) -> Response:
    """KeyMetadata of any key in any state."""
    key = keys.resolve(ctx, p["KeyId"])
    ctx.authorize("kms:DescribeKey", key)
    return {"KeyMetadata": keys.metadata(ctx, key)}


def list_keys(ctx: CallContext, p: Params) -> Response:
    """Every key of the keystore (any state), oldest first, paginated."""
    ctx.authorize("kms:ListKeys", None)
    rows = ctx.conn.execute("SELECT key_id, arn FROM keys ORDER BY created, key_id").fetchall()
    return page(ctx, [{"KeyId": r["key_id"], "KeyArn": r["arn"]} for r in rows], "Keys")


def _set_state(ctx: CallContext, key: Key, state: str, **cols: float | int | None) -> None:
    """Set a key's state (and other columns) and note the change."""
    sets = ", ".join(["state = ?"] + [f"{c} = ?" for c in cols])
    ctx.conn.execute(f"UPDATE keys SET {sets} WHERE key_id = ?", (state, *cols.values(), key.key_id))
    ctx.change()


def enable_key(ctx: CallContext, p: Params) -> Response:
    """Enabled again; a rotation that fell due while disabled happens now."""
    key = keys.resolve(ctx, p["KeyId"])
    ctx.authorize("kms:EnableKey", key)
    keys.require_not_pending(ctx, key)
    _set_state(ctx, key, "Enabled")
    keys.rotate_if_overdue(ctx, keys.existing(ctx, key.key_id))
    return {}


def disable_key(ctx: CallContext, p: Params) -> Response:
    """Disabled: every cryptographic use refused until EnableKey."""
    key = keys.resolve(ctx, p["KeyId"])
    ctx.authorize("kms:DisableKey", key)
    keys.require_not_pending(ctx, key)
    _set_state(ctx, key, "Disabled")
    return {}


def schedule_key_deletion(ctx: CallContext, p: Params) -> Response:
    """PendingDeletion for 7-30 days (default 30); the key is destroyed when the window ends."""
    key = keys.resolve(ctx, p["KeyId"])
    ctx.authorize("kms:ScheduleKeyDeletion", key)
    window = p.get("PendingWindowInDays", DEFAULT_WINDOW)
    if not MIN_WINDOW <= window <= MAX_WINDOW:
        raise ctx.error("ValidationException",
                        f"1 validation error detected: Value '{window}' at 'pendingWindowInDays' failed "
                        f"to satisfy constraint: Member must have value between {MIN_WINDOW} and {MAX_WINDOW}")
    keys.require_not_pending(ctx, key)
    deletion = ctx.now() + window * keys.DAY
    _set_state(ctx, key, "PendingDeletion", deletion_date=deletion, pending_window=window)
    return {"KeyId": key.arn, "DeletionDate": to_datetime(deletion), "KeyState": "PendingDeletion",
            "PendingWindowInDays": window}


def cancel_key_deletion(ctx: CallContext, p: Params) -> Response:
    """Back from PendingDeletion to Disabled (as AWS: not Enabled)."""
    key = keys.resolve(ctx, p["KeyId"])
    ctx.authorize("kms:CancelKeyDeletion", key)
    if key.state != "PendingDeletion":
        raise ctx.error("KMSInvalidStateException", f"{key.arn} is not pending deletion.")
    _set_state(ctx, key, "Disabled", deletion_date=None, pending_window=None)
    return {"KeyId": key.arn}


def update_key_description(ctx: CallContext, p: Params) -> Response:
    """Replace the description (refused while pending deletion)."""
    key = keys.resolve(ctx, p["KeyId"])
    ctx.authorize("kms:UpdateKeyDescription", key)
    keys.require_not_pending(ctx, key)
    ctx.conn.execute("UPDATE keys SET description = ? WHERE key_id = ?", (p["Description"], key.key_id))
    ctx.change()
    return {}


def _policy_name(ctx: CallContext, p: Params) -> None:
    """ValidationException unless PolicyName is absent or 'default'."""
    name = p.get("PolicyName", "default")
    if name != "default":
        raise ctx.error("ValidationException", f"Policy name '{name}' is not valid; the only key "
                                               f"policy name is 'default'")


def get_key_policy(ctx: CallContext, p: Params) -> Response:
    """The stored policy text, in any key state."""
    key = keys.resolve(ctx, p["KeyId"])
    ctx.authorize("kms:GetKeyPolicy", key)
    _policy_name(ctx, p)
    return {"Policy": key.policy, "PolicyName": "default"}


def put_key_policy(ctx: CallContext, p: Params) -> Response:
    """Store the policy text as given (allowed in every key state)."""
    key = keys.resolve(ctx, p["KeyId"])
    ctx.authorize("kms:PutKeyPolicy", key, new_policy=p["Policy"],
                  bypass_lockout_check=bool(p.get("BypassPolicyLockoutSafetyCheck")))
    _policy_name(ctx, p)
    check_policy_document(ctx, p["Policy"])
    ctx.conn.execute("UPDATE keys SET policy = ? WHERE key_id = ?", (p["Policy"], key.key_id))
    ctx.change()
    return {}


def list_key_policies(ctx: CallContext, p: Params) -> Response:
    """Always ['default'] (a KMS key has one policy)."""
    key = keys.resolve(ctx, p["KeyId"])
    ctx.authorize("kms:ListKeyPolicies", key)
    return page(ctx, ["default"], "PolicyNames")
