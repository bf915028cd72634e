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

``request`` is the dict volumed.kms.ops.context.CallContext.authorize builds (principal, via_service,
encryption_context, grants, token_grants, identity_policies, and per call grant_request, grant,
key_policy, bypass_lockout_check, retiring_principal).
"""

from __future__ import annotations

from volumed.kms import arn as _arn
from volumed.kms import awsmodel, principals
from volumed.kms.policy import grants, policy

LOCKOUT_MESSAGE = ("The new key policy will not allow you to update the key policy in the future.")


def condition_request(action: str, key: dict | None, request: dict) -> policy.Request:
    """The policy.Request (condition-key context) of one call.

    kms:EncryptionContext* come from the call's encryption context; for CreateGrant from the
    grant's constraints (as AWS evaluates them), with kms:GrantOperations, kms:GranteePrincipal,
    kms:RetiringPrincipal and kms:GrantIsForAWSResource (true when the call comes through a
    service, e.g. RDS creating a grant on the user's behalf)."""
    principal = request["principal"]
    context = dict(request.get("encryption_context") or {})
    grant_ops = grantee = retiring = for_aws = None
    if action == "kms:CreateGrant" and request.get("grant_request"):
        gr = request["grant_request"]
        grant_ops = list(gr.get("Operations") or [])
        grantee = gr.get("GranteePrincipal")
        retiring = gr.get("RetiringPrincipal")
        for_aws = request.get("via_service") is not None
        for pairs in (gr.get("Constraints") or {}).values():
            context.update(pairs or {})
    return policy.Request(
        principal_arn=principal, principal_account=policy.account_of(principal) or "",
        action=action, resource=key["Arn"] if key else "*", via_service=request.get("via_service"),
        encryption_context=context or None, grant_operations=grant_ops,
        grant_is_for_aws_resource=for_aws, grantee_principal=grantee, retiring_principal=retiring)


def _identity_only_policy(account: str) -> dict:
    """A resource policy that only enables the account's identity policies: how calls on no key
    (and IAM calls) are decided, since IAM has no resource policy of its own."""
    return {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": principals.root_arn(account)},
        "Action": "*", "Resource": "*"}]}


def identity_decision(req: policy.Request, identity_policies, account: str) -> policy.Decision:
    """Decide ``req`` by the caller's identity policies alone (callers in ``account`` only).
    Callers: ``authorize`` for calls on no key, volumed.kms.ops.iam_ops for IAM calls."""
    return policy.evaluate(_identity_only_policy(account), identity_policies, req)


def _denied(message: str, request: dict):
    return awsmodel.client_error("AccessDeniedException", message, request["operation"])


def _key_grants(key: dict, request: dict) -> list[dict]:
    """The key's grants, and any grant named by the call's tokens that is on this key."""
    out = list(request.get("grants") or [])
    seen = {g["GrantId"] for g in out}
    for g in request.get("token_grants") or ():
        if g["GrantId"] not in seen and g.get("KeyId") == key["Arn"]:
            out.append(g)
    return out


def _grant_allows(action: str, key: dict, request: dict) -> bool:
    """Whether a grant lets the caller do ``action`` (after the policies' implicit deny)."""
    caller = request["principal"]
    key_grants = _key_grants(key, request)
    if action == "kms:CreateGrant":
        new = request.get("grant_request") or {}
        return any(grants.grantee_matches(g.get("GranteePrincipal", ""), caller)
                   and "CreateGrant" in (g.get("Operations") or ()) and grants.is_as_strict(g, new)
                   for g in key_grants)
    if action == "kms:RetireGrant":
        g = request.get("grant") or {}
        return bool(
            (g.get("RetiringPrincipal") and grants.grantee_matches(g["RetiringPrincipal"], caller))
            or (grants.grantee_matches(g.get("GranteePrincipal", ""), caller)
                and "RetireGrant" in (g.get("Operations") or ()))
            or (g.get("IssuingAccount") == caller and _arn.is_account_root(caller)))
    return grants.allowing_grant(key_grants, caller, action, request.get("encryption_context")) is not None


def _check_lockout(key: dict | None, request: dict) -> None:
    """The lockout safety check of CreateKey/PutKeyPolicy (MalformedPolicyDocumentException)."""
    text = request.get("key_policy")
    if text is None or request.get("bypass_lockout_check"):
        return
    try:
        parsed = policy.parse_policy(text, kind="key")
    except policy.MalformedPolicyDocument:
        return  # the operation reports it, with the pointing message
    account = request["account"]
    key_arn = key["Arn"] if key else f"arn:aws:kms:{request['region']}:{account}:key/" \
                                      "00000000-0000-0000-0000-000000000000"
    if policy.would_lock_out(parsed, request["principal"], policy.account_of(request["principal"]) or "",
                             request.get("identity_policies"), key_arn=key_arn,
                             via_service=request.get("via_service")):
        raise awsmodel.client_error("MalformedPolicyDocumentException", LOCKOUT_MESSAGE,
                                    request["operation"])


def authorize(action: str, key: dict | None, request: dict) -> None:
    """Allow (return) or refuse (raise AccessDeniedException) ``action`` on ``key`` for the caller
    in ``request``; see the module docstring. Caller: EmbeddedKMS._authorize, for every check an
    operation makes."""
    req = condition_request(action, key, request)
    identity = request.get("identity_policies") or []
    if key is None:
        decision = identity_decision(req, identity, request["account"])
        if not decision.allowed:
            raise _denied(policy.access_denied_message(req.principal_arn, action, "*", decision.explicit_deny,
                                                       "identity-based policy"), request)
    else:
        decision = policy.evaluate(key["Policy"], identity, req)
        if decision.explicit_deny:
            raise _denied(decision.message(req), request)
        if not decision.allowed and not _grant_allows(action, key, request):
            raise _denied(decision.message(req), request)
    _check_lockout(key, request)
