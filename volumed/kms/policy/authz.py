"""Authorization of one embedded key-service call, as AWS KMS decides it.

``authorize(action, key, request)`` is the service's ``_authorize``: it returns to allow and raises
AccessDeniedException (AWS's message shape) to refuse. The rules (docs/POLICY.md):

1. ``policy.evaluate(key policy, the caller's identity policies, Request)``. An explicit Deny
   refuses at once: no grant can help.
2. An implicit deny is looked up in the key's grants (``grants.allowing_grant``): the grantee
   matches the caller, the operation is in the grant, its constraints hold for the request's
   encryption context. CreateGrant through a grant needs a grant with CreateGrant for which the
   new grant is as strict or stricter (``grants.is_as_strict``). RetireGrant is allowed to the
   grant's retiring principal, to its grantee when the grant includes RetireGrant, and to the
   account that issued it.
3. Calls on no key (CreateKey, ListKeys, ListAliases, ListRetirableGrants) are decided by the
   caller's identity policies alone (Resource ``*``), as IAM does.
4. CreateKey/PutKeyPolicy with a policy: after the call is allowed, the lockout safety check
   (``policy.would_lock_out``) unless BypassPolicyLockoutSafetyCheck; a malformed policy is left
   to the operation, which reports MalformedPolicyDocumentException.

``request`` is the ``AuthzRequest`` volumed.kms.ops.context.CallContext.authorize builds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from botocore.exceptions import ClientError

from volumed.kms import arn as _arn
from volumed.kms import awsmodel, principals
from volumed.kms.policy import grants, policy
from volumed.kms.values import Grant, GrantTerms, Key

LOCKOUT_MESSAGE = ("The new key policy will not allow you to update the key policy in the future.")


@dataclasses.dataclass(frozen=True)
class AuthzRequest:
    """Everything one authorization check reads: who calls (``principal``, through
    ``via_service``), the call (``operation``, e.g. "Decrypt", in the keystore's ``account`` and
    ``region``), its encryption context and grant tokens, the key's grants and those the tokens
    name, the caller's identity policies (text), and per operation: ``grant_request`` (CreateGrant),
    ``grant`` (the grant RetireGrant/RevokeGrant acts on), ``new_policy`` and
    ``bypass_lockout_check`` (CreateKey/PutKeyPolicy), ``retiring_principal``
    (ListRetirableGrants). ``time`` and ``grant_tokens`` are not read by the decision (the cache
    key leaves them out: volumed.kms.policy.decisions)."""

    principal: str
    via_service: str | None
    operation: str
    account: str
    region: str
    encryption_context: dict[str, str]
    grant_tokens: tuple[str, ...] = ()
    token_grants: tuple[Grant, ...] = ()
    grants: tuple[Grant, ...] = ()
    identity_policies: tuple[str, ...] = ()
    time: float = 0.0
    grant_request: GrantTerms | None = None
    grant: Grant | None = None
    new_policy: str | None = None
    bypass_lockout_check: bool = False
    retiring_principal: str | None = None


def condition_request(action: str, key: Key | None, request: AuthzRequest) -> policy.Request:
    """The policy.Request (condition-key context) of one call.

    kms:EncryptionContext* come from the call's encryption context; for CreateGrant from the
    grant's constraints (as AWS evaluates them), with kms:GrantOperations, kms:GranteePrincipal,
    kms:RetiringPrincipal and kms:GrantIsForAWSResource (true when the call comes through a
    service, e.g. RDS creating a grant on the user's behalf)."""
    principal = request.principal
    context = dict(request.encryption_context)
    grant_ops: list[str] | None = None
    grantee = retiring = None
    for_aws: bool | None = None
    gr = request.grant_request
    if action == "kms:CreateGrant" and gr is not None:
        grant_ops = list(gr.operations)
        grantee = gr.grantee
        retiring = gr.retiring
        for_aws = request.via_service is not None
        for pairs in (gr.constraints or {}).values():
            context.update(pairs or {})
    return policy.Request(
        principal_arn=principal, principal_account=policy.account_of(principal) or "",
        action=action, resource=key.arn if key else "*", via_service=request.via_service,
        encryption_context=context or None, grant_operations=grant_ops,
        grant_is_for_aws_resource=for_aws, grantee_principal=grantee, retiring_principal=retiring)


def _identity_only_policy(account: str) -> dict[str, object]:
    """A resource policy that only enables the account's identity policies: how calls on no key
    (and IAM calls) are decided, since IAM has no resource policy of its own."""
    return {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": principals.root_arn(account)},
        "Action": "*", "Resource": "*"}]}


def identity_decision(req: policy.Request, identity_policies: Sequence[str], account: str) -> policy.Decision:
    """Decide ``req`` by the caller's identity policies alone (callers in ``account`` only).
    Callers: ``authorize`` for calls on no key, volumed.kms.ops.iam_ops for IAM calls."""
    return policy.evaluate(_identity_only_policy(account), identity_policies, req)


def _denied(message: str, request: AuthzRequest) -> ClientError:
    return awsmodel.client_error("AccessDeniedException", message, request.operation)


def _key_grants(key: Key, request: AuthzRequest) -> list[Grant]:
    """The key's grants, and any grant named by the call's tokens that is on this key."""
    out = list(request.grants)
    seen = {g.grant_id for g in out}
    for g in request.token_grants:
        if g.grant_id not in seen and g.key_arn == key.arn:
            out.append(g)
    return out


def _grant_allows(action: str, key: Key, request: AuthzRequest) -> bool:
    """Whether a grant lets the caller do ``action`` (after the policies' implicit deny)."""
    caller = request.principal
    key_grants = _key_grants(key, request)
    if action == "kms:CreateGrant":
        new = request.grant_request or GrantTerms(grantee="", operations=())
        return any(grants.grantee_matches(g.grantee, caller)
                   and "CreateGrant" in g.operations and grants.is_as_strict(g, new)
                   for g in key_grants)
    if action == "kms:RetireGrant":
        g = request.grant
        if g is None:
            return False
        return bool(
            (g.retiring and grants.grantee_matches(g.retiring, caller))
            or (grants.grantee_matches(g.grantee, caller) and "RetireGrant" in g.operations)
            or (g.issuing_account == caller and _arn.is_account_root(caller)))
    return grants.allowing_grant(key_grants, caller, action, request.encryption_context) is not None


def _check_lockout(key: Key | None, request: AuthzRequest) -> None:
    """The lockout safety check of CreateKey/PutKeyPolicy (MalformedPolicyDocumentException)."""
    text = request.new_policy
    if text is None or request.bypass_lockout_check:
        return
    try:
        parsed = policy.parse_policy(text, kind="key")
    except policy.MalformedPolicyDocument:
        return  # the operation reports it, with the pointing message
    account = request.account
    key_arn = key.arn if key else f"arn:aws:kms:{request.region}:{account}:key/" \
                                  "00000000-0000-0000-0000-000000000000"
    if policy.would_lock_out(parsed, request.principal, policy.account_of(request.principal) or "",
                             request.identity_policies, key_arn=key_arn,
                             via_service=request.via_service):
        raise awsmodel.client_error("MalformedPolicyDocumentException", LOCKOUT_MESSAGE,
                                    request.operation)


def authorize(action: str, key: Key | None, request: AuthzRequest) -> None:
    """Allow (return) or refuse (raise AccessDeniedException) ``action`` on ``key`` for the caller
    in ``request``; see the module docstring. Caller: EmbeddedKMS._authorize, for every check an
    operation makes."""
    req = condition_request(action, key, request)
    identity = request.identity_policies
    if key is None:
        decision = identity_decision(req, identity, request.account)
        if not decision.allowed:
            raise _denied(policy.access_denied_message(req.principal_arn, action, "*", decision.explicit_deny,
                                                       "identity-based policy"), request)
    else:
        decision = policy.evaluate(key.policy, identity, req)
        if decision.explicit_deny:
            raise _denied(decision.message(req), request)
        if not decision.allowed and not _grant_allows(action, key, request):
            raise _denied(decision.message(req), request)
    _check_lockout(key, request)
