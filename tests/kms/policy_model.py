"""An independent model of AWS KMS authorization by key policy and identity policies.

Written from AWS's documented rules (IAM policy evaluation logic, IAM condition operators, the KMS
key policy and condition-key pages), for the property test of volumed.kms.policy.policy.evaluate. It
imports nothing from volumed and works on raw JSON dicts, so a shared bug cannot hide.

The rules it encodes:
- Result is "explicit-deny", "allow" or "implicit-deny".
- Any Deny that applies (key policy or identity policy) -> explicit-deny.
- A key policy Allow that applies and names the caller (its ARN, "*", or its role when the caller
  is an assumed-role session) -> allow.
- A key policy Allow that applies and names the caller's account (account id or its :root ARN) lets
  the caller's identity policies decide: any identity Allow that applies -> allow.
- For Deny, naming the account covers every principal of that account. NotPrincipal covers every
  caller it does not name (an account entry exempts only the root itself).
- Action names are case-insensitive with * and ? wildcards; resources case-sensitive with wildcards.
- Conditions: every operator/key pair must hold (AND); the values listed for one key are OR'ed.
  Null tests whether the key is present. When the key is absent (or an empty list): IfExists ->
  true; ForAllValues -> true; ForAnyValue -> false; a Not operator -> true; otherwise false.
  ForAllValues: every request value matches; ForAnyValue: some request value matches. Without a
  set qualifier: a positive operator needs some request value to match, a Not operator needs no
  request value to match any listed value.
"""

from __future__ import annotations

import re

NEGATIVE_OPS = {"StringNotEquals", "StringNotEqualsIgnoreCase", "StringNotLike", "ArnNotEquals",
                "ArnNotLike"}


def wildcard_match(pattern: str, text: str) -> bool:
    """Iterative glob matcher: * matches any run, ? one character (a classic two-pointer walk)."""
    p = t = 0
    star = -1
    mark = 0
    while t < len(text):
        if p < len(pattern) and (pattern[p] == "?" or pattern[p] == text[t]):
            p += 1
            t += 1
        elif p < len(pattern) and pattern[p] == "*":
            star = p
            mark = t
            p += 1
        elif star != -1:
            p = star + 1
            mark += 1
            t = mark
        else:
            return False
    while p < len(pattern) and pattern[p] == "*":
        p += 1
    return p == len(pattern)


def listify(x):
    return x if isinstance(x, list) else [x]


def canonical_entry(entry: str) -> str:
    if re.fullmatch(r"\d{12}", entry):
        return "arn:aws:iam::" + entry + ":root"
    return entry


def principal_entries(element) -> list[str]:
    if element == "*":
        return ["*"]
    out = []
    for kind, value in element.items():
        for e in listify(value):
            out.append(canonical_entry(e) if kind == "AWS" else "service:" + e)
    return out


def caller_named(entry: str, req: dict) -> bool:
    caller = req["principal"]
    if entry in ("*", caller):
        return True
    session = re.fullmatch(r"arn:aws:sts::(\d{12}):assumed-role/([^/]+)/.+", caller)
    role = re.fullmatch(r"arn:aws:iam::(\d{12}):role/(.*/)?([^/]+)", entry)
    if session and role:
        return session.group(1) == role.group(1) and session.group(2) == role.group(3)
    return False


def account_named(entry: str, req: dict) -> bool:
    return entry == "arn:aws:iam::" + req["account"] + ":root"


def request_values(req: dict, key: str):
    """The request's values for a condition key as a list, or None when absent."""
    k = key.lower()
    ctx = req.get("context")
    if k.startswith("kms:encryptioncontext:"):
        name = k.split(":", 2)[2]
        found = [v for ck, v in (ctx or {}).items() if ck.lower() == name]
        return found if found else None
    if k == "kms:encryptioncontextkeys":
        return sorted(ctx) if ctx else None
    if k == "kms:grantoperations":
        ops = req.get("grant_operations")
        return list(ops) if ops else None
    if k == "kms:grantisforawsresource":
        b = req.get("grant_is_for_aws_resource")
        return None if b is None else [str(b).lower()]
    if k == "aws:principalarn":
        m = re.fullmatch(r"arn:aws:sts::(\d{12}):assumed-role/([^/]+)/.+", req["principal"])
        return ["arn:aws:iam::%s:role/%s" % m.groups()] if m else [req["principal"]]
    simple = {"kms:viaservice": req.get("via_service"), "kms:calleraccount": req["account"],
              "aws:principalaccount": req["account"], "kms:granteeprincipal": req.get("grantee"),
              "kms:retiringprincipal": req.get("retiring")}
    v = simple.get(k)
    return None if v is None else [v]


def as_text(v) -> str:
    if v is True:
        return "true"
    if v is False:
        return "false"
    return str(v)


def value_matches(base: str, have: str, want: str) -> bool:
    if base in ("StringEquals", "StringNotEquals"):
        return have == want
    if base in ("StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase"):
        return have.lower() == want.lower()
    if base in ("StringLike", "StringNotLike", "ArnEquals", "ArnLike", "ArnNotEquals", "ArnNotLike"):
        return wildcard_match(want, have)
    if base == "Bool":
        return have.lower() == want.lower()
    raise ValueError(base)


def condition_holds(op: str, key: str, wanted, req: dict) -> bool:
    wants = [as_text(w) for w in listify(wanted)]
    have = request_values(req, key)
    if op == "Null":
        absent = not have
        return any((w.lower() == "true") == absent for w in wants)
    qualifier = None
    if ":" in op:
        qualifier, op = op.split(":", 1)
    if_exists = op.endswith("IfExists")
    base = op[: -len("IfExists")] if if_exists else op
    negative = base in NEGATIVE_OPS
    if not have:
        if if_exists:
            return True
        if qualifier == "ForAllValues":
            return True
        if qualifier == "ForAnyValue":
            return False
        return negative

    def single(v: str) -> bool:
        matched = False
        for w in wants:
            if value_matches(base, v, w):
                matched = True
        return (not matched) if negative else matched

    results = [single(v) for v in have]
    if qualifier == "ForAllValues":
        return all(results)
    if qualifier == "ForAnyValue":
        return any(results)
    return all(results) if negative else any(results)


def statement_applies(st: dict, req: dict) -> bool:
    if "Action" in st:
        if not any(wildcard_match(a.lower(), req["action"].lower()) for a in listify(st["Action"])):
            return False
    else:
        if any(wildcard_match(a.lower(), req["action"].lower()) for a in listify(st["NotAction"])):
            return False
    if "Resource" in st:
        if not any(wildcard_match(r, req["resource"]) for r in listify(st["Resource"])):
            return False
    else:
        if any(wildcard_match(r, req["resource"]) for r in listify(st["NotResource"])):
            return False
    for op, tests in (st.get("Condition") or {}).items():
        for key, wanted in tests.items():
            if not condition_holds(op, key, wanted, req):
                return False
    return True


def statements(policy: dict) -> list[dict]:
    return listify(policy["Statement"])


def decide(key_policy: dict, identity_policies: list[dict], req: dict) -> str:
    """'explicit-deny', 'allow' or 'implicit-deny' for ``req`` (a dict with principal, account,
    action, resource, and optional via_service, context, grant_operations,
    grant_is_for_aws_resource, grantee, retiring)."""
    key_statements = statements(key_policy)
    id_statements = [s for p in identity_policies for s in statements(p)]

    def covers(st: dict, for_deny: bool) -> str | None:
        if "NotPrincipal" in st:
            excluded = any(caller_named(e, req) for e in principal_entries(st["NotPrincipal"]))
            return None if excluded else "caller"
        entries = principal_entries(st["Principal"])
        if any(caller_named(e, req) for e in entries):
            return "caller"
        if any(account_named(e, req) for e in entries):
            return "caller" if for_deny else "account"
        return None

    for st in key_statements:
        if st["Effect"] == "Deny" and covers(st, True) and statement_applies(st, req):
            return "explicit-deny"
    for st in id_statements:
        if st["Effect"] == "Deny" and statement_applies(st, req):
            return "explicit-deny"
    iam_enabled = False
    for st in key_statements:
        if st["Effect"] != "Allow" or not statement_applies(st, req):
            continue
        how = covers(st, False)
        if how == "caller":
            return "allow"
        if how == "account":
            iam_enabled = True
    if iam_enabled and any(st["Effect"] == "Allow" and statement_applies(st, req)
                           for st in id_statements):
        return "allow"
    return "implicit-deny"
