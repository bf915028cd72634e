"""Property test: volumed.kms.policy.policy.evaluate agrees with the independent model in
tests/kms/policy_model.py on random key policies, identity policies and requests drawn from a
vocabulary that makes statements overlap often (so allows, denies and delegation all occur)."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.kms import policy_model
from volumed.kms.policy import policy as P

from tests.kms.test_policy import ACCT, ALICE, BOB, EVE, HOST, KEY, OTHER, RDS, ROOT
from tests.kms.test_policy import OTHER_KEY as KEY2

EC2 = "ec2.us-east-1.amazonaws.com"

CALLERS = [(ALICE, ACCT), (BOB, ACCT), (HOST, ACCT), (ROOT, ACCT), (EVE, OTHER)]
PRINCIPAL_ENTRIES = [ALICE, BOB, HOST, ROOT, ACCT, EVE, f"arn:aws:iam::{OTHER}:root",
                     f"arn:aws:iam::{ACCT}:role/volumed-host", f"arn:aws:iam::{OTHER}:role/volumed-host"]
ACTIONS = ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey", "kms:CreateGrant", "kms:DescribeKey",
           "kms:PutKeyPolicy", "kms:ReEncryptFrom"]
ACTION_PATTERNS = ACTIONS + ["kms:*", "*", "kms:Generate*", "kms:De*", "kms:?ncrypt", "KMS:decrypt",
                             "kms:ReEncrypt*"]
RESOURCES = ["*", KEY, KEY2, f"arn:aws:kms:*:{ACCT}:key/*", f"arn:aws:kms:*:{OTHER}:key/*",
             "arn:aws:kms:us-east-1:*:key/1234abcd-*-1234567890ab"]
CONTEXTS = [None, {}, {"aws:rds:db-id": "db-1"}, {"aws:rds:db-id": "db-1", "aws:ebs:id": "vol-1"},
            {"AWS:RDS:DB-ID": "DB-1"}, {"app": "x", "aws:ebs:id": "vol-2"}]
GRANT_OPS = [None, ["Decrypt"], ["Decrypt", "Encrypt"], ["GenerateDataKey", "DescribeKey"]]

OPERATORS = ["StringEquals", "StringNotEquals", "StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase",
             "StringLike", "StringNotLike", "ArnLike", "ArnNotLike"]
SET_FORMS = ["", "ForAnyValue:", "ForAllValues:"]
STRING_KEYS = {
    "kms:ViaService": [RDS, EC2, "rds.*.amazonaws.com", "*"],
    "kms:CallerAccount": [ACCT, OTHER],
    "aws:PrincipalArn": [ALICE, f"arn:aws:iam::{ACCT}:role/volumed-host", f"arn:aws:iam::{ACCT}:user/*"],
    "kms:EncryptionContext:aws:rds:db-id": ["db-1", "DB-1", "db-*"],
    "kms:EncryptionContext:AWS:EBS:ID": ["vol-1", "vol-?"],
    "kms:EncryptionContextKeys": ["aws:rds:db-id", "aws:ebs:id", "aws:*", "app"],
    "kms:GrantOperations": ["Decrypt", "Encrypt", "Generate*", "DescribeKey"],
    "kms:GranteePrincipal": [HOST, ALICE],
}


@st.composite
def conditions(draw):
    out: dict = {}
    for _ in range(draw(st.integers(0, 2))):
        kind = draw(st.sampled_from(["string", "string", "bool", "null"]))
        if kind == "string":
            key = draw(st.sampled_from(sorted(STRING_KEYS)))
            op = draw(st.sampled_from(SET_FORMS)) + draw(st.sampled_from(OPERATORS))
            op += draw(st.sampled_from(["", "IfExists"]))
            vals = draw(st.lists(st.sampled_from(STRING_KEYS[key]), min_size=1, max_size=2))
        elif kind == "bool":
            key = "kms:GrantIsForAWSResource"
            op = draw(st.sampled_from(["Bool", "BoolIfExists"]))
            vals = [draw(st.sampled_from([True, False, "true", "False"]))]
        else:
            key = draw(st.sampled_from(["kms:ViaService", "kms:EncryptionContextKeys",
                                        "kms:EncryptionContext:aws:ebs:id", "kms:GrantOperations"]))
            op = "Null"
            vals = [draw(st.sampled_from(["true", "false"]))]
        out.setdefault(op, {})[key] = vals if len(vals) > 1 else vals[0]
    return out


@st.composite
def statements(draw, identity: bool):
    s: dict = {"Effect": draw(st.sampled_from(["Allow", "Allow", "Deny"]))}
    if not identity:
        if draw(st.integers(0, 9)) == 0:
            s["NotPrincipal"] = {"AWS": draw(st.lists(st.sampled_from(PRINCIPAL_ENTRIES), min_size=1, max_size=2))}
        elif draw(st.integers(0, 4)) == 0:
            s["Principal"] = "*"
        else:
            s["Principal"] = {"AWS": draw(st.lists(st.sampled_from(PRINCIPAL_ENTRIES + ["*"]), min_size=1,
                                                   max_size=2))}
    actions = draw(st.lists(st.sampled_from(ACTION_PATTERNS), min_size=1, max_size=2))
    s["NotAction" if draw(st.integers(0, 7)) == 0 else "Action"] = actions
    resources = draw(st.lists(st.sampled_from(RESOURCES), min_size=1, max_size=2))
    s["NotResource" if draw(st.integers(0, 9)) == 0 else "Resource"] = resources
    cond = draw(conditions())
    if cond:
        s["Condition"] = cond
    return s


def policies(identity: bool):
    return st.builds(lambda sts: {"Version": "2012-10-17", "Statement": sts},
                     st.lists(statements(identity), min_size=1, max_size=4))


@st.composite
def requests(draw):
    principal, account = draw(st.sampled_from(CALLERS))
    action = draw(st.sampled_from(ACTIONS))
    grant = action == "kms:CreateGrant"
    return {
        "principal": principal, "account": account, "action": action,
        "resource": draw(st.sampled_from([KEY, KEY2])),
        "via_service": draw(st.sampled_from([None, RDS, EC2])),
        "context": draw(st.sampled_from(CONTEXTS)),
        "grant_operations": draw(st.sampled_from(GRANT_OPS)) if grant else None,
        "grant_is_for_aws_resource": draw(st.sampled_from([None, True, False])) if grant else None,
        "grantee": draw(st.sampled_from([None, HOST, ALICE])) if grant else None,
        "retiring": None,
    }


def to_request(r: dict) -> P.Request:
    return P.Request(principal_arn=r["principal"], principal_account=r["account"], action=r["action"],
                     resource=r["resource"], via_service=r["via_service"], encryption_context=r["context"],
                     grant_operations=r["grant_operations"],
                     grant_is_for_aws_resource=r["grant_is_for_aws_resource"],
                     grantee_principal=r["grantee"], retiring_principal=r["retiring"])


def outcome(d: P.Decision) -> str:
    return "explicit-deny" if d.explicit_deny else "allow" if d.allowed else "implicit-deny"


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies(identity=False), st.lists(policies(identity=True), max_size=2), requests())
def test_evaluate_agrees_with_the_independent_model(key_policy, identity_policies, request):
    want = policy_model.decide(key_policy, identity_policies, request)
    got = outcome(P.evaluate(json.dumps(key_policy), identity_policies, to_request(request)))
    assert got == want


@settings(max_examples=200, deadline=None)
@given(policies(identity=False), st.lists(policies(identity=True), max_size=2),
       st.sampled_from(CALLERS))
def test_lockout_check_agrees_with_the_model(key_policy, identity_policies, caller):
    principal, account = caller
    model_req = {"principal": principal, "account": account, "action": "kms:PutKeyPolicy",
                 "resource": KEY, "via_service": None, "context": None}
    want = policy_model.decide(key_policy, identity_policies, model_req) != "allow"
    assert P.would_lock_out(key_policy, principal, account, identity_policies, key_arn=KEY) is want


@settings(max_examples=1500, deadline=None)
@given(conditions().filter(bool), requests())
def test_each_condition_block_agrees_with_the_model(condition, request):
    """The condition operators alone, where most of the absent-key subtleties live."""
    stmt = {"Effect": "Allow", "Principal": "*", "Action": "*", "Resource": "*", "Condition": condition}
    want = policy_model.statement_applies(stmt, request)
    parsed = P.parse_policy({"Statement": [stmt]}).statements[0]
    got = all(P.condition_matches(c, to_request(request)) for c in parsed.conditions)
    assert got == want
