"""Grant semantics as pure functions over grants (volumed.kms.values.Grant, and GrantTerms for a
grant CreateGrant is asked to make).

A grant names its grantee, operations and optional constraints (``{"EncryptionContextSubset":
{...}, "EncryptionContextEquals": {...}}``). Grants only ever allow. Callers: the key service's
CreateGrant (``validate_operations``, ``validate_constraints``, ``is_as_strict``) and the
authorizer after the policies give an implicit deny (``grant_allows``, ``allowing_grant``).

Rules (AWS KMS GrantConstraints):
- EncryptionContextSubset: the request's context includes every pair; EncryptionContextEquals: the
  request's context is exactly these pairs. Keys compare case-insensitively, values
  case-sensitively. An empty map counts as no constraint. Both may be given; both must hold.
- Constraints apply only to operations that take an encryption context. DescribeKey and RetireGrant
  ignore them; for CreateGrant they bound the grants it creates (``is_as_strict``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from volumed.errors import UsageError
from volumed.kms import arn as _arn
from volumed.kms.values import Constraints, Grant, GrantTerms

GRANT_OPERATIONS = frozenset({
    "Decrypt", "Encrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext", "ReEncryptFrom",
    "ReEncryptTo", "Sign", "Verify", "GetPublicKey", "CreateGrant", "RetireGrant", "DescribeKey",
    "GenerateDataKeyPair", "GenerateDataKeyPairWithoutPlaintext", "GenerateMac", "VerifyMac",
    "DeriveSharedSecret",
})

# Operations that take an EncryptionContext, to which constraints apply.
CONTEXT_OPERATIONS = frozenset({
    "Decrypt", "Encrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext", "ReEncryptFrom",
    "ReEncryptTo", "GenerateDataKeyPair", "GenerateDataKeyPairWithoutPlaintext",
})

CONSTRAINT_TYPES = ("EncryptionContextSubset", "EncryptionContextEquals")
MAX_CONSTRAINT_PAIRS = 8
MAX_CONSTRAINT_VALUE = 384


def validate_operations(operations: Any) -> list[str]:
    """Check CreateGrant's Operations: a non-empty list of known grant operations, no repeats.
    Returns them; raises UsageError (ValidationException) naming the bad member."""
    if not isinstance(operations, (list, tuple)) or not operations:
        raise UsageError("Operations must be a non-empty list of grant operations")
    for op in operations:
        if op not in GRANT_OPERATIONS:
            raise UsageError(f"Operations: {op!r} is not a grant operation; valid: "
                             f"{', '.join(sorted(GRANT_OPERATIONS))}")
    if len(set(operations)) != len(operations):
        raise UsageError("Operations must not repeat an operation")
    return list(operations)


def validate_constraints(constraints: Any) -> Constraints | None:
    """Check CreateGrant's Constraints and return them normalised (empty maps dropped; None when
    nothing is left). Raises UsageError (ValidationException) naming the fault."""
    if constraints is None:
        return None
    if not isinstance(constraints, Mapping):
        raise UsageError("Constraints must be an object with EncryptionContextSubset or "
                         "EncryptionContextEquals")
    out: Constraints = {}
    for name, pairs in constraints.items():
        if name not in CONSTRAINT_TYPES:
            raise UsageError(f"Constraints: unknown constraint {name!r}; valid: {', '.join(CONSTRAINT_TYPES)}")
        if pairs is None:
            continue
        if not isinstance(pairs, Mapping):
            raise UsageError(f"Constraints.{name} must be a map of strings to strings")
        if len(pairs) > MAX_CONSTRAINT_PAIRS:
            raise UsageError(f"Constraints.{name} has {len(pairs)} pairs; the limit is {MAX_CONSTRAINT_PAIRS}")
        folded: set[str] = set()
        for k, v in pairs.items():
            if not isinstance(k, str) or not isinstance(v, str) or not k:
                raise UsageError(f"Constraints.{name} must map non-empty strings to strings")
            if len(v) > MAX_CONSTRAINT_VALUE:
                raise UsageError(f"Constraints.{name}[{k!r}] is longer than {MAX_CONSTRAINT_VALUE} characters")
            if k.lower() in folded:
                raise UsageError(f"Constraints.{name} has keys that differ only by case ({k!r}); "
                                 "constraint keys are case-insensitive")
            folded.add(k.lower())
        if pairs:
            out[name] = dict(pairs)
    return out or None


def _fold(pairs: Mapping[str, str]) -> dict[str, str]:
    """Context pairs with case-folded keys (grant constraint keys are case-insensitive)."""
    return {k.lower(): v for k, v in pairs.items()}


def _includes(context: Mapping[str, str], pairs: Mapping[str, str]) -> bool:
    ctx = _fold(context)
    return all(ctx.get(k) == v for k, v in _fold(pairs).items())


def _equals(context: Mapping[str, str], pairs: Mapping[str, str]) -> bool:
    return _fold(context) == _fold(pairs) and len(context) == len(pairs)


def constraints_allow(constraints: Mapping[str, Mapping[str, str]] | None,
                      encryption_context: Mapping[str, str] | None) -> bool:
    """Whether a request's encryption context satisfies a grant's constraints (None/{} = none)."""
    constraints = constraints or {}
    ctx = encryption_context or {}
    subset = constraints.get("EncryptionContextSubset")
    equals = constraints.get("EncryptionContextEquals")
    if subset and not _includes(ctx, subset):
        return False
    if equals and not _equals(ctx, equals):
        return False
    return True


def grant_allows(grant: Grant | GrantTerms, operation: str, encryption_context: Mapping[str, str] | None) -> bool:
    """Whether ``grant`` allows ``operation`` (a grant operation name such as "Decrypt", with or
    without a "kms:" prefix) for a request carrying ``encryption_context``.

    Constraints are checked only for operations that take a context; for CreateGrant the caller
    must also check ``is_as_strict(grant, new_grant)``."""
    if operation.startswith("kms:"):
        operation = operation[4:]
    if operation not in grant.operations:
        return False
    if operation not in CONTEXT_OPERATIONS:
        return True
    return constraints_allow(grant.constraints, encryption_context)


def is_as_strict(parent_grant: Grant | GrantTerms, new_grant: Grant | GrantTerms) -> bool:
    """Whether a grant created under ``parent_grant``'s CreateGrant permission is allowed: its
    operations are a subset of the parent's, and every encryption context it would accept the
    parent's constraints accept too (so it is as strict or stricter)."""
    if not set(new_grant.operations) <= set(parent_grant.operations):
        return False
    parent = parent_grant.constraints or {}
    child = new_grant.constraints or {}
    p_sub, p_eq = parent.get("EncryptionContextSubset"), parent.get("EncryptionContextEquals")
    c_sub, c_eq = child.get("EncryptionContextSubset"), child.get("EncryptionContextEquals")
    if not p_sub and not p_eq:
        return True
    if c_eq:
        # The child accepts exactly c_eq (or nothing, if its own Subset contradicts it).
        if c_sub and not _includes(c_eq, c_sub):
            return True
        return constraints_allow(parent, c_eq)
    if p_eq:
        return False  # the child accepts contexts with extra pairs; the parent does not
    # Parent Subset only; child Subset only (or none): the child's smallest context must carry
    # the parent's pairs.
    return bool(c_sub) and _includes(c_sub or {}, p_sub or {})


def grantee_matches(grantee_principal: str, caller_arn: str) -> bool:
    """Whether a grant's GranteePrincipal covers the caller: the same ARN, or the caller is an
    assumed-role session of the grantee role (``arn:aws:sts::A:assumed-role/R/S`` for
    ``arn:aws:iam::A:role/[path/]R``, same partition): the one rule of volumed.kms.arn.covers."""
    return _arn.covers(grantee_principal, caller_arn)


def allowing_grant(grants: Iterable[Grant], caller_arn: str, operation: str,
                   encryption_context: Mapping[str, str] | None) -> Grant | None:
    """The first of a key's ``grants`` that lets ``caller_arn`` perform ``operation`` with this
    context, or None. Caller: the key service's ``_authorize`` after ``policy.evaluate`` gives an
    implicit (never an explicit) deny; for CreateGrant it must also check ``is_as_strict``."""
    for g in grants:
        if grantee_matches(g.grantee, caller_arn) and grant_allows(
                g, operation, encryption_context):
            return g
    return None
