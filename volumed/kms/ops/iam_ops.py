"""The embedded service's IAM extension calls: attach, read, list and detach identity policies.

Not AWS KMS operations (AWS has them in IAM as Put/Get/List/DeleteUserPolicy and ...RolePolicy),
so they are not in the KMS audit log. Who may call them (docs/POLICY.md, "Identity policies"):

- the keystore administrator (``iamstore.admin_principal``) and the account root, always: like the
  root of an AWS account, they cannot lock themselves out of IAM;
- any other principal whose own identity policies allow the IAM action (``iam:PutUserPolicy`` for
  a user, ``iam:PutRolePolicy`` for a role, likewise Get/List/Delete) on the target's ARN, e.g.
  ``"Action": "iam:*"``.

Errors are ClientErrors with IAM's codes: AccessDenied, NoSuchEntity, MalformedPolicyDocument,
ValidationError. Caller: volumed.kms.service.EmbeddedKMS's extension methods, inside one
transaction; changes bump the keystore's change counter there.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Sequence

from botocore.exceptions import ClientError

from volumed.kms import arn as _arn
from volumed.kms import awsmodel
from volumed.kms.arn import Arn
from volumed.kms.policy import authz, policy
from volumed.kms.store import iamstore

_TARGET_NAME_RE = re.compile(r"^(user|role)/[\w+=,.@/-]{1,512}$")
_NAME_RE = re.compile(r"^[\w+=,.@-]{1,128}$")


# Makes an identity-policy decision: (request, identity policies, account) -> Decision
Decide = Callable[[policy.Request, Sequence[str], str], policy.Decision]


def _error(code: str, message: str, operation: str) -> ClientError:
    return awsmodel.client_error(code, message, operation)


def check_target(arn: str, account: str, operation: str) -> str:
    """A principal policies may be attached to: an IAM user or role ARN of this account, in the
    keystore's partition (an account id of another partition is another account)."""
    parsed = Arn.try_parse(arn)
    if parsed is None or parsed.service != "iam" or parsed.region or not _TARGET_NAME_RE.fullmatch(parsed.resource):
        hint = ""
        role = parsed.session_role() if parsed else None
        if role:
            hint = f"; attach it to the session's role {role}"
        raise _error("ValidationError", f"{arn!r} is not an IAM user or role ARN "
                                        f"(arn:{_arn.KEYSTORE_PARTITION}:iam::{account}:user/NAME or "
                                        f":role/NAME){hint}", operation)
    if not parsed.same_account(Arn.root(_arn.KEYSTORE_PARTITION, account)):
        raise _error("ValidationError", f"{arn} is in account {parsed.account} of partition "
                                        f"{parsed.partition}, not this keystore's account {account} "
                                        f"of partition {_arn.KEYSTORE_PARTITION}", operation)
    return arn


def check_name(name: str, operation: str) -> str:
    """A policy name IAM accepts (1-128 of letters, digits and +=,.@_-)."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise _error("ValidationError", f"policy name {name!r} must be 1-128 letters, digits or "
                                        "+=,.@_-", operation)
    return name


def iam_action(verb: str, target: str) -> str:
    """The IAM action of ``verb`` (Put, Get, List, Delete) on a user or role ARN."""
    kind = "Role" if ":role/" in target else "User"
    return f"iam:{verb}{kind}Polic{'ies' if verb == 'List' else 'y'}"


def may(conn: sqlite3.Connection, caller: str, account: str, verb: str, target: str,
        decide: Decide | None = None) -> bool:
    """Whether ``caller`` may do the IAM ``verb`` on ``target``'s policies (see module doc).
    ``decide(request, identity_policies, account)`` makes the identity-policy decision
    (authz.identity_decision unless the service passes its own, which decides outside the write
    lock)."""
    if caller == iamstore.admin_principal(conn) or _arn.is_root_of(caller, account):
        return True
    req = policy.Request(principal_arn=caller, principal_account=policy.account_of(caller) or "",
                         action=iam_action(verb, target), resource=target)
    decide = decide or authz.identity_decision
    return decide(req, iamstore.policies_for_caller(conn, caller), account).allowed


def _require(conn: sqlite3.Connection, caller: str, account: str, verb: str, target: str, operation: str,
             decide: Decide | None) -> None:
    if not may(conn, caller, account, verb, target, decide):
        action = iam_action(verb, target)
        raise _error("AccessDenied", policy.access_denied_message(caller, action, target, False,
                                                                  "identity-based policy"), operation)


def _authorized(conn: sqlite3.Connection, caller: str, account: str, verb: str, target: str, name: str,
                operation: str, decide: Decide | None) -> None:
    """The checks every call on one named policy makes: target, name, then the caller's right."""
    check_target(target, account, operation)
    check_name(name, operation)
    _require(conn, caller, account, verb, target, operation, decide)


def _no_such_policy(target: str, name: str, operation: str) -> ClientError:
    return _error("NoSuchEntity", f"The principal {target} has no policy named {name}", operation)


def put_policy(conn: sqlite3.Connection, caller: str, account: str, target: str, name: str, document: str,
               now: float, decide: Decide | None = None) -> None:
    """Attach or replace ``name`` on ``target`` after validating the document as an identity policy."""
    op = "PutPrincipalPolicy"
    _authorized(conn, caller, account, "Put", target, name, op, decide)
    try:
        policy.parse_policy(document, kind="identity")
    except policy.MalformedPolicyDocument as exc:
        raise _error("MalformedPolicyDocument", str(exc), op) from None
    iamstore.put(conn, target, name, document, now)


def get_policy(conn: sqlite3.Connection, caller: str, account: str, target: str, name: str,
               decide: Decide | None = None) -> str:
    """The document of ``name`` on ``target``; NoSuchEntity if none."""
    op = "GetPrincipalPolicy"
    _authorized(conn, caller, account, "Get", target, name, op, decide)
    doc = iamstore.get(conn, target, name)
    if doc is None:
        raise _no_such_policy(target, name, op)
    return doc


def list_policies(conn: sqlite3.Connection, caller: str, account: str, target: str | None,
                  decide: Decide | None = None) -> list[tuple[str, str]]:
    """(principal, name) pairs: of ``target``, or of every principal the caller may list (all
    of them for the administrator). AccessDenied when the caller may list none that exist."""
    op = "ListPrincipalPolicies"
    if target is not None:
        check_target(target, account, op)
        _require(conn, caller, account, "List", target, op, decide)
        return iamstore.listing(conn, target)
    rows = iamstore.listing(conn)
    visible = [r for r in rows if may(conn, caller, account, "List", r[0], decide)]
    if rows and not visible:
        raise _error("AccessDenied", f"User: {caller} is not authorized to perform: iam:ListUserPolicies "
                                     f"or iam:ListRolePolicies on any principal of this keystore", op)
    return visible


def delete_policy(conn: sqlite3.Connection, caller: str, account: str, target: str, name: str,
                  decide: Decide | None = None) -> None:
    """Detach ``name`` from ``target``; NoSuchEntity if it is not attached."""
    op = "DeletePrincipalPolicy"
    _authorized(conn, caller, account, "Delete", target, name, op, decide)
    if not iamstore.delete(conn, target, name):
        raise _no_such_policy(target, name, op)
