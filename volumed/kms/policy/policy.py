"""The IAM policy language of KMS key policies and identity policies, and AWS KMS's evaluation rules.

One concern: given a key policy, the caller's identity policies and one request, decide. Pure
functions over parsed documents; no I/O. Callers: the embedded key service's ``_authorize`` (every
operation), CreateKey/PutKeyPolicy (``parse_policy``, ``would_lock_out``), the identity-policy store
(``parse_policy(kind="identity")``) and the keystore set-up (``default_key_policy``,
``aws_managed_rds_policy``).

Evaluation, as AWS KMS does it (docs/POLICY.md has the details and the choices made):

1. An explicit Deny in the key policy or in any identity policy of the caller wins.
2. An Allow in the key policy whose Principal names the caller (its ARN, its role for an assumed-role
   session, or ``"*"``) allows.
3. An Allow in the key policy naming the caller's *account* (``arn:aws:iam::<account>:root`` or the
   bare account id) does not allow by itself: it enables the account's identity policies for the
   actions and conditions of that statement. Then an Allow in an identity policy allows.
4. Otherwise implicit deny. Grants (volumed.kms.policy.grants) are checked by the caller after an implicit
   deny, never after an explicit one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Callable, Iterable
from typing import Any

from volumed.errors import VolumedError
from volumed.kms import arn as _arn
from volumed.kms import principals
from volumed.kms.arn import Arn
from volumed.kms.policy import wildcard

VERSIONS = ("2012-10-17", "2008-10-17")
MAX_POLICY_BYTES = 32768  # AWS's key policy size limit

_STATEMENT_ELEMENTS = ("Sid", "Effect", "Principal", "NotPrincipal", "Action", "NotAction",
                       "Resource", "NotResource", "Condition")

# Base condition operators: name -> (comparison, negated), each positive operator beside its
# negation. ArnEquals compares like ArnLike, as in AWS.
_OPERATORS: dict[str, tuple[str, bool]] = {
    name: (kind, negated)
    for kind, positive, negative in (
        ("equals", "StringEquals", "StringNotEquals"),
        ("iequals", "StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase"),
        ("like", "StringLike", "StringNotLike"),
        ("like", "ArnEquals", "ArnNotEquals"),
        ("like", "ArnLike", "ArnNotLike"),
    )
    for name, negated in ((positive, False), (negative, True))
}
_OPERATORS.update(Bool=("bool", False), Null=("null", False))
_SET_PREFIXES = ("ForAnyValue:", "ForAllValues:")

_ACCOUNT_RE = re.compile(r"^\d{12}$")
_ACTION_RE = re.compile(r"^[A-Za-z0-9-]+:[A-Za-z0-9*?]+$")


class MalformedPolicyDocument(VolumedError):
    """A policy document that is not valid JSON or breaks the policy grammar.

    The message names the element at fault ("Statement[1].Effect must be Allow or Deny").
    The key service reports it as MalformedPolicyDocumentException."""

    exit_code = 2
    code = "MalformedPolicyDocumentException"


# ---------------------------------------------------------------------------------------------
# Parsed documents


@dataclasses.dataclass(frozen=True)
class Condition:
    """One (operator, key, values) test. ``op`` is the full operator as written."""

    op: str
    base: str
    set_form: str | None  # "ForAnyValue", "ForAllValues" or None
    if_exists: bool
    key: str  # lower-cased: condition key names are case-insensitive
    values: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Statement:
    sid: str | None
    effect: str  # "Allow" | "Deny"
    principals: tuple[str, ...] | None  # normalised entries; "*" for everyone; None if absent
    not_principals: tuple[str, ...] | None
    actions: tuple[str, ...] | None
    not_actions: tuple[str, ...] | None
    resources: tuple[str, ...] | None
    not_resources: tuple[str, ...] | None
    conditions: tuple[Condition, ...]


@dataclasses.dataclass(frozen=True)
class Policy:
    version: str
    statements: tuple[Statement, ...]
    document: dict[str, Any]  # the document as given (for GetKeyPolicy)

    def to_json(self) -> str:
        """The document as JSON text (what GetKeyPolicy returns)."""
        return json.dumps(self.document, indent=2)


def parse_policy(text_or_dict: str | bytes | dict[str, Any] | Policy, *, kind: str = "key") -> Policy:
    """Parse and validate a policy document; raise MalformedPolicyDocument naming the fault.

    ``kind`` is "key" (a resource-based key policy: every statement needs Principal or
    NotPrincipal) or "identity" (an identity policy: no Principal elements allowed).
    Callers: CreateKey, PutKeyPolicy, the identity-policy store, ``evaluate`` (given raw dicts)."""
    if isinstance(text_or_dict, Policy):
        return text_or_dict
    if kind not in ("key", "identity"):
        raise ValueError(f"kind must be 'key' or 'identity', not {kind!r}")
    if isinstance(text_or_dict, (str, bytes)):
        return _parse_text(text_or_dict, kind)
    return _parse_document(text_or_dict, kind)


@functools.lru_cache(maxsize=256)
def _parse_text(text: str | bytes, kind: str) -> Policy:
    """Parse policy text; cached, as the key service evaluates the same stored policies on every
    call (a Policy is immutable apart from ``document``, which callers must not change)."""
    raw = text.encode() if isinstance(text, str) else text
    if len(raw) > MAX_POLICY_BYTES:
        raise MalformedPolicyDocument(f"policy is {len(raw)} bytes; the limit is {MAX_POLICY_BYTES}")
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedPolicyDocument(f"policy is not valid JSON: {exc}") from None
    return _parse_document(doc, kind)


def _parse_document(doc: Any, kind: str) -> Policy:
    if not isinstance(doc, dict):
        raise MalformedPolicyDocument("policy must be a JSON object")
    for name in doc:
        if name not in ("Version", "Id", "Statement"):
            raise MalformedPolicyDocument(f"unknown policy element {name!r} "
                                          "(expected Version, Id, Statement)")
    version = doc.get("Version", "2008-10-17")
    if version not in VERSIONS:
        raise MalformedPolicyDocument(f"Version must be one of {', '.join(VERSIONS)}, not {version!r}")
    if "Id" in doc and not isinstance(doc["Id"], str):
        raise MalformedPolicyDocument("Id must be a string")
    if "Statement" not in doc:
        raise MalformedPolicyDocument("policy has no Statement")
    raw_statements = doc["Statement"]
    single = isinstance(raw_statements, dict)
    if single:
        raw_statements = [raw_statements]
    if not isinstance(raw_statements, list) or not raw_statements:
        raise MalformedPolicyDocument("Statement must be an object or a non-empty list of objects")
    statements = []
    sids = set()
    for i, st in enumerate(raw_statements):
        where = "Statement" if single else f"Statement[{i}]"
        parsed = _parse_statement(st, where, kind)
        if parsed.sid is not None:
            if parsed.sid in sids:
                raise MalformedPolicyDocument(f"{where}.Sid {parsed.sid!r} is not unique")
            sids.add(parsed.sid)
        statements.append(parsed)
    return Policy(version=version, statements=tuple(statements), document=doc)


def _parse_statement(st: Any, where: str, kind: str) -> Statement:
    if not isinstance(st, dict):
        raise MalformedPolicyDocument(f"{where} must be an object")
    for name in st:
        if name not in _STATEMENT_ELEMENTS:
            raise MalformedPolicyDocument(f"{where} has unknown element {name!r}")
    sid = st.get("Sid")
    if sid is not None and (not isinstance(sid, str) or not re.fullmatch(r"[A-Za-z0-9 _.:/=+@-]*", sid)):
        raise MalformedPolicyDocument(f"{where}.Sid must be a string of letters, digits, spaces and _.:/=+@-")
    effect = st.get("Effect")
    if effect not in ("Allow", "Deny"):
        raise MalformedPolicyDocument(f"{where}.Effect must be Allow or Deny")
    principals = not_principals = None
    if kind == "identity":
        for name in ("Principal", "NotPrincipal"):
            if name in st:
                raise MalformedPolicyDocument(f"{where}.{name} is not allowed in an identity policy")
    else:
        principals, not_principals = _either(st, "Principal", _parse_principal, where)
    actions, not_actions = _either(st, "Action", _parse_actions, where)
    resources, not_resources = _either(st, "Resource", _parse_resources, where)
    conditions = _parse_conditions(st.get("Condition", {}), f"{where}.Condition")
    return Statement(sid, effect, principals, not_principals, actions, not_actions, resources,
                     not_resources, conditions)


def _either(st: dict[str, Any], name: str, parse: Callable[[Any, str], tuple[str, ...]],
            where: str) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
    """Parse the one of ``name``/``Not<name>`` a statement must have: (parsed, None) or (None, parsed)."""
    if (name in st) == (f"Not{name}" in st):
        raise MalformedPolicyDocument(f"{where} needs exactly one of {name} or Not{name}")
    if name in st:
        return parse(st[name], f"{where}.{name}"), None
    return None, parse(st[f"Not{name}"], f"{where}.Not{name}")


def _strings(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise MalformedPolicyDocument(f"{where} must be a string or a non-empty list of strings")


def _parse_principal(value: Any, where: str) -> tuple[str, ...]:
    if value == "*":
        return ("*",)
    if not isinstance(value, dict) or not value:
        raise MalformedPolicyDocument(f'{where} must be "*" or an object such as {{"AWS": "<ARN>"}}')
    out: list[str] = []
    for ptype, entries in value.items():
        if ptype == "AWS":
            for entry in _strings(entries, f"{where}.AWS"):
                out.append(_normalise_aws_principal(entry, f"{where}.AWS"))
        elif ptype == "Service":
            for entry in _strings(entries, f"{where}.Service"):
                if not re.fullmatch(r"[a-z0-9.-]+\.amazonaws\.com", entry):
                    raise MalformedPolicyDocument(
                        f"{where}.Service {entry!r} is not a service principal like rds.amazonaws.com")
                out.append("service:" + entry)
        else:
            raise MalformedPolicyDocument(f"{where} has unsupported principal type {ptype!r} "
                                          "(use AWS or Service)")
    return tuple(out)


def _normalise_aws_principal(entry: str, where: str) -> str:
    if entry == "*":
        return "*"
    if _ACCOUNT_RE.fullmatch(entry):
        return principals.root_arn(entry)
    if "*" in entry or "?" in entry:
        raise MalformedPolicyDocument(f"{where} {entry!r}: wildcards are allowed in a principal "
                                      'only as "*" on its own (use a condition on aws:PrincipalArn)')
    parsed = Arn.try_parse(entry)
    if parsed is None or not parsed.is_principal:
        raise MalformedPolicyDocument(f"{where} {entry!r} is not a valid principal (an account id, or "
                                      "an ARN of a root, user, role or assumed-role session)")
    return entry


def _parse_actions(value: Any, where: str) -> tuple[str, ...]:
    out = []
    for a in _strings(value, where):
        if a != "*" and not _ACTION_RE.fullmatch(a):
            raise MalformedPolicyDocument(f"{where} {a!r} is not an action like kms:Decrypt or kms:*")
        out.append(a)
    return tuple(out)


def _parse_resources(value: Any, where: str) -> tuple[str, ...]:
    out = []
    for r in _strings(value, where):
        if r != "*" and not r.startswith("arn:"):
            raise MalformedPolicyDocument(f'{where} {r!r} must be "*" or an ARN')
        out.append(r)
    return tuple(out)


def _parse_operator(op: str, where: str) -> tuple[str, str | None, bool]:
    set_form = None
    base = op
    for prefix in _SET_PREFIXES:
        if base.startswith(prefix):
            set_form = prefix[:-1]
            base = base[len(prefix):]
    if_exists = base.endswith("IfExists")
    if if_exists:
        base = base[: -len("IfExists")]
    if base not in _OPERATORS:
        raise MalformedPolicyDocument(f"{where} has unsupported operator {op!r} (supported: "
                                      f"{', '.join(sorted(_OPERATORS))}, with ForAnyValue:/"
                                      "ForAllValues: and ...IfExists)")
    if base == "Null" and (if_exists or set_form):
        raise MalformedPolicyDocument(f"{where} operator {op!r}: Null takes no IfExists or set form")
    return base, set_form, if_exists


def _condition_value(v: Any) -> str | None:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v
    if isinstance(v, (int, float)):
        return str(v)
    return None


def _parse_conditions(value: Any, where: str) -> tuple[Condition, ...]:
    if not isinstance(value, dict):
        raise MalformedPolicyDocument(f"{where} must be an object of operators")
    out = []
    for op, tests in value.items():
        base, set_form, if_exists = _parse_operator(op, where)
        if not isinstance(tests, dict) or not tests:
            raise MalformedPolicyDocument(f"{where}.{op} must be a non-empty object of condition keys")
        for key, raw in tests.items():
            if not isinstance(key, str) or ":" not in key:
                raise MalformedPolicyDocument(f"{where}.{op} key {key!r} is not a condition key like "
                                              "kms:ViaService")
            items = raw if isinstance(raw, list) else [raw]
            maybe = [_condition_value(v) for v in items]
            values = [v for v in maybe if v is not None]
            if not values or len(values) != len(maybe):
                raise MalformedPolicyDocument(f"{where}.{op}.{key} must be a string, boolean, number "
                                              "or a non-empty list of them")
            if base in ("Bool", "Null") and any(v.lower() not in ("true", "false") for v in values):
                raise MalformedPolicyDocument(f"{where}.{op}.{key} must be true or false")
            out.append(Condition(op, base, set_form, if_exists, key.lower(), tuple(values)))
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# Requests and the condition-key context


@dataclasses.dataclass
class Request:
    """One authorization question: may ``principal_arn`` perform ``action`` on ``resource``?

    ``action`` is "kms:<Operation>"; ``resource`` the key ARN. The other fields feed condition keys
    and are None when the request does not carry them (an absent key, in IAM's terms)."""

    principal_arn: str
    principal_account: str
    action: str
    resource: str
    via_service: str | None = None
    encryption_context: dict[str, str] | None = None
    grant_operations: list[str] | None = None
    grant_is_for_aws_resource: bool | None = None
    grantee_principal: str | None = None
    retiring_principal: str | None = None

    def condition_values(self, key: str) -> list[str] | None:
        """The values of condition key ``key`` (any case) for this request; None when absent.

        Single-valued keys give a one-element list; kms:EncryptionContextKeys and
        kms:GrantOperations give every value; an empty list counts as absent."""
        key = key.lower()
        prefix = "kms:encryptioncontext:"
        if key.startswith(prefix):
            want = key[len(prefix):]
            ctx = self.encryption_context or {}
            vals = [v for k, v in ctx.items() if k.lower() == want]
            return vals or None
        if key == "kms:encryptioncontextkeys":
            return list(self.encryption_context) if self.encryption_context else None
        if key == "kms:grantoperations":
            return list(self.grant_operations) if self.grant_operations else None
        single = {
            "kms:viaservice": self.via_service,
            "kms:calleraccount": self.principal_account,
            "aws:principalaccount": self.principal_account,
            "aws:principalarn": principal_arn_key(self.principal_arn),
            "kms:granteeprincipal": self.grantee_principal,
            "kms:retiringprincipal": self.retiring_principal,
            "kms:grantisforawsresource": (None if self.grant_is_for_aws_resource is None
                                          else _condition_value(bool(self.grant_is_for_aws_resource))),
        }.get(key)
        return None if single is None else [single]


def principal_arn_key(arn: str) -> str:
    """The aws:PrincipalArn value of a caller: an assumed-role session counts as its role."""
    return _arn.principal_key(arn)


account_of = _arn.account_of


# ---------------------------------------------------------------------------------------------
# Matching


def _glob(pattern: str, text: str, *, ignore_case: bool = False) -> bool:
    """IAM wildcard match: ``*`` any run of characters, ``?`` one character, nothing else special;
    linear in the text (volumed.kms.policy.wildcard), never a backtracking regex."""
    return wildcard.match(pattern, text, ignore_case=ignore_case)


def _compare(kind: str, actual: str, wanted: str) -> bool:
    if kind == "equals":
        return actual == wanted
    if kind == "iequals":
        return actual.casefold() == wanted.casefold()
    if kind == "like":
        return _glob(wanted, actual)
    if kind == "bool":
        return actual.lower() == wanted.lower()
    raise AssertionError(kind)


def condition_matches(cond: Condition, request: Request) -> bool:
    """Whether one condition test holds for the request, with AWS's absent-key rules:
    Null tests presence; on an absent (or empty multi-valued) key ...IfExists and ForAllValues
    match, ForAnyValue does not, a negated operator matches and any other operator does not.
    Several policy values are OR'ed."""
    values = request.condition_values(cond.key)
    kind, negated = _OPERATORS[cond.base]
    if kind == "null":
        return any((values is None) == (v.lower() == "true") for v in cond.values)
    if not values:
        if cond.if_exists or cond.set_form == "ForAllValues":
            return True
        if cond.set_form == "ForAnyValue":
            return False
        return negated

    def one(x: str) -> bool:
        hit = any(_compare(kind, x, w) for w in cond.values)
        return not hit if negated else hit

    if cond.set_form == "ForAllValues":
        return all(one(x) for x in values)
    if cond.set_form == "ForAnyValue" or not negated:
        return any(one(x) for x in values)
    return all(one(x) for x in values)  # negated, no set form: no value may match


def _names_directly(entry: str, arn: str) -> bool:
    """Whether a normalised principal entry names this caller: "*", its ARN, its role when the
    caller is an assumed-role session (matched by account and role name, any path), or a service."""
    if entry == "*":
        return True
    if entry.startswith("service:"):
        return entry[len("service:"):] == arn
    return _arn.covers(entry, arn)


def _action_matches(st: Statement, action: str) -> bool:
    if st.actions is not None:
        return any(_glob(a, action, ignore_case=True) for a in st.actions)
    return not any(_glob(a, action, ignore_case=True) for a in st.not_actions or ())


def _resource_matches(st: Statement, resource: str) -> bool:
    if st.resources is not None:
        return any(_glob(r, resource) for r in st.resources)
    return not any(_glob(r, resource) for r in st.not_resources or ())


def _conditions_match(st: Statement, request: Request) -> bool:
    return all(condition_matches(c, request) for c in st.conditions)


def _applies(st: Statement, request: Request) -> bool:
    return (_action_matches(st, request.action) and _resource_matches(st, request.resource)
            and _conditions_match(st, request))


def _principal_match(st: Statement, request: Request) -> str | None:
    """How a key-policy statement's principal element covers the caller: "direct", "account"
    (names the caller's account, not the caller) or None.

    For Deny, naming the account covers every principal of the account. NotPrincipal covers every
    caller it does not name directly (an account entry in NotPrincipal exempts only the root).
    An account entry covers only callers of its own partition and account (volumed.kms.arn)."""
    arn = request.principal_arn
    if st.not_principals is not None:
        return None if any(_names_directly(e, arn) for e in st.not_principals) else "direct"
    entries = st.principals or ()
    if any(_names_directly(e, arn) for e in entries):
        return "direct"
    if any(_arn.account_covers(e, arn) for e in entries):
        return "account"
    return None


# ---------------------------------------------------------------------------------------------
# Evaluation


@dataclasses.dataclass(frozen=True)
class Decision:
    """The outcome of ``evaluate``.

    ``allowed``: the policies allow the request. ``explicit_deny``: a Deny statement matched (grants
    must not be consulted). ``where``: the policy kind to name in AccessDeniedException
    ("resource-based policy" or "identity-based policy"). ``reason``: one human line. ``sid``: the
    deciding statement's Sid, if any."""

    allowed: bool
    explicit_deny: bool
    reason: str
    where: str = "resource-based policy"
    sid: str | None = None

    def message(self, request: Request) -> str:
        """AWS's AccessDeniedException message for this (deny) decision."""
        return access_denied_message(request.principal_arn, request.action, request.resource,
                                     self.explicit_deny, self.where)


def _ident_policies(identity_policies: Iterable[Any] | None) -> list[Policy]:
    return [parse_policy(p, kind="identity") for p in identity_policies or ()]


def evaluate(key_policy: Policy | dict[str, Any] | str, identity_policies: Iterable[Any] | None,
             request: Request) -> Decision:
    """Decide ``request`` under ``key_policy`` and the caller's ``identity_policies`` (see module doc).

    Policies may be given parsed or raw (raw ones are parsed, raising MalformedPolicyDocument).
    Caller: the key service's ``_authorize``; after an implicit deny it consults grants."""
    kp = parse_policy(key_policy, kind="key")
    ips = _ident_policies(identity_policies)

    for st in kp.statements:
        if st.effect == "Deny" and _principal_match(st, request) and _applies(st, request):
            return Decision(False, True, f"explicit deny in the key policy (statement {st.sid or '?'})",
                            "resource-based policy", st.sid)
    for ip in ips:
        for st in ip.statements:
            if st.effect == "Deny" and _applies(st, request):
                return Decision(False, True,
                                f"explicit deny in an identity policy (statement {st.sid or '?'})",
                                "identity-based policy", st.sid)

    delegated: Statement | None = None
    for st in kp.statements:
        if st.effect != "Allow" or not _applies(st, request):
            continue
        how = _principal_match(st, request)
        if how == "direct":
            return Decision(True, False, f"allowed by the key policy (statement {st.sid or '?'})",
                            "resource-based policy", st.sid)
        if how == "account" and delegated is None:
            delegated = st
    if delegated is None:
        return Decision(False, False, "no key-policy statement allows the caller",
                        "resource-based policy")
    for ip in ips:
        for st in ip.statements:
            if st.effect == "Allow" and _applies(st, request):
                return Decision(True, False,
                                f"allowed by an identity policy (statement {st.sid or '?'}) that the "
                                f"key policy enables (statement {delegated.sid or '?'})",
                                "identity-based policy", st.sid)
    return Decision(False, False, "the key policy enables identity policies, but none allows the caller",
                    "identity-based policy")


def access_denied_message(principal: str, action: str, resource: str, explicit: bool,
                          where: str = "resource-based policy") -> str:
    """AccessDeniedException's message as AWS KMS sends it on the wire, e.g.
    ``User: arn:... is not authorized to perform: kms:Encrypt on resource: arn:... with an explicit
    deny in a resource-based policy`` or ``... because no identity-based policy allows the
    kms:Encrypt action``."""
    head = f"User: {principal} is not authorized to perform: {action} on resource: {resource}"
    if explicit:
        return f"{head} with an explicit deny in {'an' if where[0] in 'aeiou' else 'a'} {where}"
    return f"{head} because no {where} allows the {action} action"


def would_lock_out(policy: Policy | dict[str, Any] | str, caller_arn: str, caller_account: str,
                   identity_policies: Iterable[Any] | None = None, *, key_arn: str | None = None,
                   via_service: str | None = None) -> bool:
    """The lockout safety check of CreateKey and PutKeyPolicy: True when, under ``policy``, the
    caller could no longer call kms:PutKeyPolicy on the key. ``key_arn`` may be None at CreateKey
    time (a placeholder ARN of the caller's account is used)."""
    resource = key_arn or f"arn:aws:kms:us-east-1:{caller_account}:key/00000000-0000-0000-0000-000000000000"
    req = Request(principal_arn=caller_arn, principal_account=caller_account,
                  action="kms:PutKeyPolicy", resource=resource, via_service=via_service)
    return not evaluate(policy, identity_policies, req).allowed


def default_key_policy(account: str) -> dict[str, Any]:
    """AWS's default key policy (CreateKey without Policy): the account root may do ``kms:*``,
    which enables the account's identity policies."""
    return {
        "Version": "2012-10-17",
        "Id": "key-default-1",
        "Statement": [{
            "Sid": "Enable IAM User Permissions",
            "Effect": "Allow",
            "Principal": {"AWS": principals.root_arn(account)},
            "Action": "kms:*",
            "Resource": "*",
        }],
    }


def aws_managed_rds_policy(account: str, region: str) -> dict[str, Any]:
    """The key policy AWS gives the AWS managed key aws/rds: the account's principals may use the
    key only through RDS (kms:CallerAccount and kms:ViaService); the account may read metadata and
    revoke grants directly (through its identity policies)."""
    return {
        "Version": "2012-10-17",
        "Id": "auto-rds-2",
        "Statement": [
            {
                "Sid": "Allow access through RDS for all principals in the account that are "
                       "authorized to use RDS",
                "Effect": "Allow",
                "Principal": {"AWS": "*"},
                "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*",
                           "kms:CreateGrant", "kms:DescribeKey"],
                "Resource": "*",
                "Condition": {"StringEquals": {
                    "kms:CallerAccount": account,
                    "kms:ViaService": f"rds.{region}.amazonaws.com",
                }},
            },
            {
                "Sid": "Allow direct access to key metadata to the account",
                "Effect": "Allow",
                "Principal": {"AWS": principals.root_arn(account)},
                "Action": ["kms:Describe*", "kms:Get*", "kms:List*", "kms:RevokeGrant"],
                "Resource": "*",
            },
        ],
    }
