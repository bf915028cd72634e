"""Key policies and identity policies: grammar, every operator and condition key deciding a request
both ways, AWS's absent-key traps, deny over allow, the IAM delegation of the account root
statement, the seed page's two example policies and the AWS managed aws/rds policy."""

from __future__ import annotations

import json

import pytest

from volumed.kms.policy import policy as P

ACCT = "111122223333"
OTHER = "444455556666"
REGION = "us-east-1"
KEY = f"arn:aws:kms:{REGION}:{ACCT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
OTHER_KEY = f"arn:aws:kms:{REGION}:{ACCT}:key/ffffffff-12ab-34cd-56ef-1234567890ab"
ALICE = f"arn:aws:iam::{ACCT}:user/alice"
BOB = f"arn:aws:iam::{ACCT}:user/bob"
ROOT = f"arn:aws:iam::{ACCT}:root"
HOST = f"arn:aws:sts::{ACCT}:assumed-role/volumed-host/node1"
HOST_ROLE = f"arn:aws:iam::{ACCT}:role/volumed-host"
EVE = f"arn:aws:iam::{OTHER}:user/eve"
RDS = f"rds.{REGION}.amazonaws.com"
CTX = {"aws:rds:db-id": "db-ABC", "aws:ebs:id": "vol-1"}
ALLOW_ALL_IDENTITY = {"Version": "2012-10-17",
                      "Statement": {"Effect": "Allow", "Action": "kms:*", "Resource": "*"}}


def req(action="kms:Decrypt", principal=ALICE, account=None, **kw) -> P.Request:
    if account is None:
        account = P.account_of(principal)
    return P.Request(principal_arn=principal, principal_account=account, action=action,
                     resource=kw.pop("resource", KEY), **kw)


def pol(*statements, version="2012-10-17") -> dict:
    return {"Version": version, "Statement": list(statements)}


def allow(principal=ALICE, action="kms:*", resource="*", condition=None, sid=None, effect="Allow"):
    st = {"Effect": effect, "Principal": {"AWS": principal} if principal != "*" else "*",
          "Action": action, "Resource": resource}
    if condition:
        st["Condition"] = condition
    if sid:
        st["Sid"] = sid
    return st


def deny(**kw):
    return allow(effect="Deny", **kw)


def allowed(policy, request, identity=()) -> bool:
    return P.evaluate(policy, list(identity), request).allowed


# ------------------------------------------------------------------------------------------------
# Grammar


@pytest.mark.parametrize("doc, fragment", [
    ("{not json", "not valid JSON"),
    ("[]", "must be a JSON object"),
    ({"Version": "2012-10-17"}, "no Statement"),
    ({"Version": "2019-01-01", "Statement": []}, "Version must be one of"),
    ({"Statement": []}, "non-empty list"),
    ({"Statement": [allow(), {**allow(), "Effect": "allow"}]}, "Statement[1].Effect must be Allow or Deny"),
    ({"Statement": {"Effect": "Allow", "Action": "kms:*", "Resource": "*"}},
     "Statement needs exactly one of Principal or NotPrincipal"),
    ({"Statement": [{**allow(), "NotPrincipal": {"AWS": BOB}}]}, "exactly one of Principal or NotPrincipal"),
    ({"Statement": [{k: v for k, v in allow().items() if k != "Action"}]}, "Statement[0] needs exactly one of Action"),
    ({"Statement": [{k: v for k, v in allow().items() if k != "Resource"}]}, "needs exactly one of Resource"),
    ({"Statement": [allow(action="Decrypt")]}, "Statement[0].Action 'Decrypt' is not an action"),
    ({"Statement": [allow(action=[])]}, "Statement[0].Action must be a string or a non-empty list"),
    ({"Statement": [allow(principal="arn:aws:iam::12:user/x")]}, "is not a valid principal"),
    ({"Statement": [allow(principal="arn:aws:iam::*:root")]}, "wildcards are allowed in a principal"),
    ({"Statement": [{**allow(), "Principal": {"Canonical": "x"}}]}, "unsupported principal type"),
    ({"Statement": [allow(resource="key/1")]}, "must be \"*\" or an ARN"),
    ({"Statement": [{**allow(), "Sids": "x"}]}, "unknown element 'Sids'"),
    ({"Statement": [allow(condition={"StringEqualz": {"kms:ViaService": RDS}})]},
     "unsupported operator 'StringEqualz'"),
    ({"Statement": [allow(condition={"StringEquals": {"kms:ViaService": []}})]}, "non-empty list"),
    ({"Statement": [allow(condition={"StringEquals": {"kms:ViaService": {"a": 1}}})]}, "must be a string"),
    ({"Statement": [allow(condition={"Bool": {"kms:GrantIsForAWSResource": "yes"}})]}, "must be true or false"),
    ({"Statement": [allow(condition={"NullIfExists": {"kms:ViaService": "true"}})]}, "Null takes no IfExists"),
    ({"Statement": [allow(condition={"StringEquals": {"ViaService": RDS}})]}, "is not a condition key"),
    ({"Statement": [allow(sid="a"), allow(sid="a")]}, "Statement[1].Sid 'a' is not unique"),
    ({"Statement": [allow()], "Extra": 1}, "unknown policy element 'Extra'"),
])
def test_malformed_policies_name_the_problem(doc, fragment):
    text = doc if isinstance(doc, str) else json.dumps(doc)
    with pytest.raises(P.MalformedPolicyDocument) as exc:
        P.parse_policy(text)
    assert fragment in str(exc.value)
    assert exc.value.code == "MalformedPolicyDocumentException"


def test_oversized_policy_is_malformed():
    big = json.dumps(pol(allow(sid="x" * 40000)))
    with pytest.raises(P.MalformedPolicyDocument, match="limit is 32768"):
        P.parse_policy(big)


def test_single_statement_object_bare_account_and_string_values_parse():
    doc = {"Version": "2012-10-17", "Id": "k", "Statement": {
        "Sid": "Enable IAM User Permissions", "Effect": "Allow", "Principal": {"AWS": ACCT},
        "Action": "kms:*", "Resource": "*"}}
    p = P.parse_policy(doc)
    assert p.statements[0].principals == (ROOT,)
    assert json.loads(p.to_json()) == doc


def test_identity_policies_may_not_name_principals():
    with pytest.raises(P.MalformedPolicyDocument, match="not allowed in an identity policy"):
        P.parse_policy(pol(allow()), kind="identity")
    P.parse_policy(ALLOW_ALL_IDENTITY, kind="identity")


def test_version_defaults_and_old_version_accepted():
    assert P.parse_policy({"Statement": [allow()]}).version == "2008-10-17"
    assert P.parse_policy(pol(allow(), version="2008-10-17")).version == "2008-10-17"


# ------------------------------------------------------------------------------------------------
# Principals, actions, resources


def test_principal_matching_direct_star_role_and_others():
    assert allowed(pol(allow(principal=ALICE)), req(principal=ALICE))
    assert not allowed(pol(allow(principal=ALICE)), req(principal=BOB))
    assert allowed(pol(allow(principal="*")), req(principal=EVE))
    # An assumed-role session is named by its role ARN (any path) or its own session ARN.
    assert allowed(pol(allow(principal=HOST_ROLE)), req(principal=HOST))
    assert allowed(pol(allow(principal=f"arn:aws:iam::{ACCT}:role/svc/volumed-host")), req(principal=HOST))
    assert allowed(pol(allow(principal=HOST)), req(principal=HOST))
    assert not allowed(pol(allow(principal=f"arn:aws:iam::{OTHER}:role/volumed-host")), req(principal=HOST))
    assert not allowed(pol(allow(principal=f"arn:aws:iam::{ACCT}:role/other")), req(principal=HOST))


def test_principal_lists_and_aws_star_object():
    p = {"Statement": [{"Effect": "Allow", "Principal": {"AWS": [BOB, ALICE]}, "Action": "kms:*",
                        "Resource": "*"}]}
    assert allowed(p, req(principal=ALICE))
    p2 = {"Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "kms:*", "Resource": "*"}]}
    assert allowed(p2, req(principal=EVE))


def test_not_principal_deny_spares_only_the_named():
    p = pol(allow(principal="*"), {"Effect": "Deny", "NotPrincipal": {"AWS": [ALICE, ROOT]},
                                   "Action": "kms:Decrypt", "Resource": "*"})
    assert allowed(p, req(principal=ALICE))
    assert not allowed(p, req(principal=BOB))
    assert P.evaluate(p, [], req(principal=BOB)).explicit_deny
    assert allowed(p, req("kms:Encrypt", principal=BOB))
    assert allowed(p, req(principal=ROOT))


@pytest.mark.parametrize("pattern, action, hit", [
    ("kms:*", "kms:Decrypt", True), ("*", "kms:Decrypt", True),
    ("kms:Generate*", "kms:GenerateDataKeyWithoutPlaintext", True),
    ("kms:Generate*", "kms:Decrypt", False), ("kms:?ncrypt", "kms:Encrypt", True),
    ("kms:?ncrypt", "kms:ReEncrypt", False), ("KMS:decrypt", "kms:Decrypt", True),
    ("kms:ReEncrypt*", "kms:ReEncryptFrom", True), ("s3:*", "kms:Decrypt", False),
])
def test_action_wildcards_case_insensitive(pattern, action, hit):
    assert allowed(pol(allow(action=pattern)), req(action)) is hit


def test_not_action_and_not_resource():
    p = pol({"Effect": "Allow", "Principal": {"AWS": ALICE}, "NotAction": ["kms:Decrypt", "kms:Put*"],
             "Resource": "*"})
    assert allowed(p, req("kms:Encrypt"))
    assert not allowed(p, req("kms:Decrypt"))
    assert not allowed(p, req("kms:PutKeyPolicy"))
    p = pol({"Effect": "Allow", "Principal": {"AWS": ALICE}, "Action": "kms:*", "NotResource": OTHER_KEY})
    assert allowed(p, req(resource=KEY))
    assert not allowed(p, req(resource=OTHER_KEY))


def test_resource_patterns():
    assert allowed(pol(allow(resource=KEY)), req(resource=KEY))
    assert not allowed(pol(allow(resource=KEY)), req(resource=OTHER_KEY))
    assert allowed(pol(allow(resource=f"arn:aws:kms:*:{ACCT}:key/*")), req(resource=OTHER_KEY))
    assert not allowed(pol(allow(resource=f"arn:aws:kms:*:{OTHER}:key/*")), req(resource=KEY))


# ------------------------------------------------------------------------------------------------
# Conditions: every operator both ways


OPERATOR_CASES = [
    # (operator, key, policy value, request that matches, request that does not)
    ("StringEquals", "kms:ViaService", RDS, req(via_service=RDS), req(via_service="ec2.us-east-1.amazonaws.com")),
    ("StringNotEquals", "kms:ViaService", RDS, req(via_service="ec2.us-east-1.amazonaws.com"), req(via_service=RDS)),
    ("StringEqualsIgnoreCase", "kms:EncryptionContext:aws:rds:db-id", "DB-abc",
     req(encryption_context=CTX), req(encryption_context={"aws:rds:db-id": "db-abd"})),
    ("StringNotEqualsIgnoreCase", "kms:EncryptionContext:aws:rds:db-id", "DB-abc",
     req(encryption_context={"aws:rds:db-id": "db-xyz"}), req(encryption_context=CTX)),
    ("StringLike", "kms:ViaService", "rds.*.amazonaws.com", req(via_service=RDS),
     req(via_service="ec2.us-east-1.amazonaws.com")),
    ("StringNotLike", "kms:ViaService", "rds.*.amazonaws.com", req(via_service="ec2.us-east-1.amazonaws.com"),
     req(via_service=RDS)),
    ("ArnLike", "aws:PrincipalArn", f"arn:aws:iam::{ACCT}:user/a*", req(principal=ALICE), req(principal=BOB)),
    ("ArnNotLike", "aws:PrincipalArn", f"arn:aws:iam::{ACCT}:user/a*", req(principal=BOB), req(principal=ALICE)),
    ("Bool", "kms:GrantIsForAWSResource", "true", req("kms:CreateGrant", grant_is_for_aws_resource=True),
     req("kms:CreateGrant", grant_is_for_aws_resource=False)),
    ("Bool", "kms:GrantIsForAWSResource", False, req("kms:CreateGrant", grant_is_for_aws_resource=False),
     req("kms:CreateGrant", grant_is_for_aws_resource=True)),
    ("Null", "kms:ViaService", "true", req(), req(via_service=RDS)),
    ("Null", "kms:ViaService", "false", req(via_service=RDS), req()),
    ("StringEqualsIfExists", "kms:ViaService", RDS, req(via_service=RDS), req(via_service="ec2.us-east-1.amazonaws.com")),
    ("ForAnyValue:StringEquals", "kms:EncryptionContextKeys", "aws:ebs:id", req(encryption_context=CTX),
     req(encryption_context={"other": "x"})),
    ("ForAllValues:StringEquals", "kms:EncryptionContextKeys", ["aws:ebs:id", "aws:rds:db-id"],
     req(encryption_context=CTX), req(encryption_context={**CTX, "extra": "x"})),
    ("ForAnyValue:StringLike", "kms:GrantOperations", "Generate*",
     req("kms:CreateGrant", grant_operations=["Decrypt", "GenerateDataKey"]),
     req("kms:CreateGrant", grant_operations=["Decrypt"])),
    ("ForAllValues:StringEquals", "kms:GrantOperations", ["Decrypt", "DescribeKey"],
     req("kms:CreateGrant", grant_operations=["Decrypt"]),
     req("kms:CreateGrant", grant_operations=["Decrypt", "Encrypt"])),
    ("ForAnyValue:StringNotEquals", "kms:EncryptionContextKeys", "aws:ebs:id", req(encryption_context=CTX),
     req(encryption_context={"aws:ebs:id": "vol-1"})),
    ("ForAllValues:StringNotLike", "kms:EncryptionContextKeys", "aws:*",
     req(encryption_context={"app": "x"}), req(encryption_context={"app": "x", "aws:ebs:id": "v"})),
]


@pytest.mark.parametrize("op, key, value, yes, no", OPERATOR_CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in OPERATOR_CASES])
def test_each_operator_decides_both_ways(op, key, value, yes, no):
    p = pol(allow(principal="*", condition={op: {key: value}}))
    assert allowed(p, yes)
    assert not allowed(p, no)


KEY_CASES = [
    ("kms:ViaService", RDS, req(via_service=RDS), req(via_service=None)),
    ("kms:CallerAccount", ACCT, req(principal=ALICE), req(principal=EVE)),
    ("aws:PrincipalAccount", ACCT, req(principal=BOB), req(principal=EVE)),
    ("aws:PrincipalArn", ALICE, req(principal=ALICE), req(principal=BOB)),
    ("aws:PrincipalArn", HOST_ROLE, req(principal=HOST), req(principal=ALICE)),
    ("kms:EncryptionContext:aws:ebs:id", "vol-1", req(encryption_context=CTX),
     req(encryption_context={"aws:ebs:id": "vol-2"})),
    ("kms:EncryptionContext:AWS:EBS:ID", "vol-1", req(encryption_context={"aws:EBS:id": "vol-1"}),
     req(encryption_context={"aws:ebs:id": "VOL-1"})),
    ("kms:EncryptionContextKeys", "aws:ebs:id", req(encryption_context={"aws:ebs:id": "v"}),
     req(encryption_context={"aws:rds:db-id": "d"})),
    ("kms:GrantOperations", "Decrypt", req("kms:CreateGrant", grant_operations=["Decrypt"]),
     req("kms:CreateGrant", grant_operations=["Encrypt"])),
    ("kms:GrantIsForAWSResource", "true", req("kms:CreateGrant", grant_is_for_aws_resource=True),
     req("kms:CreateGrant")),
    ("kms:GranteePrincipal", HOST, req("kms:CreateGrant", grantee_principal=HOST),
     req("kms:CreateGrant", grantee_principal=BOB)),
    ("kms:RetiringPrincipal", ALICE, req("kms:CreateGrant", retiring_principal=ALICE),
     req("kms:CreateGrant", retiring_principal=BOB)),
]


@pytest.mark.parametrize("key, value, yes, no", KEY_CASES, ids=[c[0] for c in KEY_CASES])
def test_each_condition_key_decides_both_ways(key, value, yes, no):
    p = pol(allow(principal="*", condition={"StringEquals": {key: value}}))
    assert allowed(p, yes)
    assert not allowed(p, no)


def test_condition_key_names_are_case_insensitive_values_are_not():
    p = pol(allow(principal="*", condition={"StringEquals": {"KMS:VIASERVICE": RDS}}))
    assert allowed(p, req(via_service=RDS))
    assert not allowed(p, req(via_service=RDS.upper()))


def test_values_of_one_key_are_ored_keys_and_operators_anded():
    ored = pol(allow(principal="*", condition={"StringEquals": {"kms:ViaService": [RDS, "ec2.us-east-1.amazonaws.com"]}}))
    assert allowed(ored, req(via_service="ec2.us-east-1.amazonaws.com"))
    anded = pol(allow(principal="*", condition={
        "StringEquals": {"kms:ViaService": RDS, "kms:CallerAccount": ACCT},
        "StringLike": {"kms:EncryptionContext:aws:rds:db-id": "db-*"}}))
    assert allowed(anded, req(via_service=RDS, encryption_context=CTX))
    assert not allowed(anded, req(via_service=RDS))
    assert not allowed(anded, req(via_service=RDS, encryption_context=CTX, principal=EVE))
    assert not allowed(anded, req(encryption_context=CTX))


# ------------------------------------------------------------------------------------------------
# The absent-key and empty-context traps AWS documents


def test_negated_operator_on_absent_key_matches():
    # The classic trap: "deny unless via RDS" written with StringNotEquals also denies direct calls
    # (absent kms:ViaService), which is what AWS does.
    p = pol(allow(), deny(principal="*", action="kms:Decrypt",
                          condition={"StringNotEquals": {"kms:ViaService": RDS}}))
    assert P.evaluate(p, [], req()).explicit_deny
    assert allowed(p, req(via_service=RDS))


def test_positive_operator_on_absent_key_does_not_match_unless_ifexists():
    p = pol(allow(principal="*", condition={"StringEquals": {"kms:ViaService": RDS}}))
    assert not allowed(p, req())
    p = pol(allow(principal="*", condition={"StringEqualsIfExists": {"kms:ViaService": RDS}}))
    assert allowed(p, req())
    assert not allowed(p, req(via_service="s3.us-east-1.amazonaws.com"))


def test_negated_ifexists_on_absent_key_matches():
    p = pol(allow(principal="*", condition={"StringNotEqualsIfExists": {"kms:ViaService": RDS}}))
    assert allowed(p, req())
    assert not allowed(p, req(via_service=RDS))


@pytest.mark.parametrize("ctx", [None, {}])
def test_forallvalues_passes_an_empty_or_absent_context(ctx):
    # "Only these context keys" written with ForAllValues alone admits requests with no context.
    p = pol(allow(principal="*", condition={"ForAllValues:StringEquals": {"kms:EncryptionContextKeys": "aws:ebs:id"}}))
    assert allowed(p, req(encryption_context=ctx))
    # The documented fix: add Null false to demand a context.
    fixed = pol(allow(principal="*", condition={
        "ForAllValues:StringEquals": {"kms:EncryptionContextKeys": "aws:ebs:id"},
        "Null": {"kms:EncryptionContextKeys": "false"}}))
    assert not allowed(fixed, req(encryption_context=ctx))
    assert allowed(fixed, req(encryption_context={"aws:ebs:id": "v"}))


@pytest.mark.parametrize("ctx", [None, {}])
def test_foranyvalue_fails_an_empty_or_absent_context(ctx):
    p = pol(allow(principal="*", condition={"ForAnyValue:StringEquals": {"kms:EncryptionContextKeys": "aws:ebs:id"}}))
    assert not allowed(p, req(encryption_context=ctx))


def test_null_on_context_key():
    p = pol(allow(principal="*", condition={"Null": {"kms:EncryptionContext:aws:ebs:id": "false"}}))
    assert allowed(p, req(encryption_context=CTX))
    assert not allowed(p, req(encryption_context={"x": "y"}))
    assert not allowed(p, req())


def test_bool_on_absent_key_fails_but_ifexists_passes():
    assert not allowed(pol(allow(principal="*", condition={"Bool": {"kms:GrantIsForAWSResource": True}})),
                       req("kms:CreateGrant"))
    assert allowed(pol(allow(principal="*", condition={"BoolIfExists": {"kms:GrantIsForAWSResource": True}})),
                   req("kms:CreateGrant"))


def test_negated_operator_on_multivalued_key_needs_no_value_to_match():
    p = pol(allow(principal="*", condition={"StringNotEquals": {"kms:EncryptionContextKeys": "secret"}}))
    assert allowed(p, req(encryption_context={"a": "1", "b": "2"}))
    assert not allowed(p, req(encryption_context={"a": "1", "secret": "2"}))


# ------------------------------------------------------------------------------------------------
# Evaluation: deny over allow, delegation to identity policies


def test_explicit_deny_in_key_policy_beats_every_allow():
    p = pol(allow(principal=ALICE), deny(principal=ALICE, action="kms:Decrypt"))
    d = P.evaluate(p, [ALLOW_ALL_IDENTITY], req())
    assert not d.allowed and d.explicit_deny and d.where == "resource-based policy"
    assert allowed(p, req("kms:Encrypt"))


def test_deny_naming_the_account_covers_all_its_principals():
    p = pol(allow(principal="*"), deny(principal=ROOT, action="kms:Decrypt"))
    assert P.evaluate(p, [], req(principal=BOB)).explicit_deny
    assert P.evaluate(p, [], req(principal=HOST)).explicit_deny
    assert allowed(p, req(principal=EVE))


def test_explicit_deny_in_identity_policy_wins_even_without_delegation():
    p = pol(allow(principal=ALICE))
    ident = {"Statement": [{"Effect": "Deny", "Action": "kms:Decrypt", "Resource": "*"}]}
    d = P.evaluate(p, [ident], req())
    assert d.explicit_deny and d.where == "identity-based policy"
    assert P.evaluate(p, [ident], req("kms:Encrypt")).allowed


def test_root_statement_enables_identity_policies_but_allows_no_one_by_itself():
    p = P.default_key_policy(ACCT)
    d = P.evaluate(p, [], req(principal=BOB))
    assert not d.allowed and not d.explicit_deny and d.where == "identity-based policy"
    d = P.evaluate(p, [ALLOW_ALL_IDENTITY], req(principal=BOB))
    assert d.allowed and d.where == "identity-based policy"
    # The host has no identity policy: its only way to the key is a grant.
    assert not allowed(p, req(principal=HOST))
    # The root user itself is named directly.
    assert allowed(p, req(principal=ROOT))


def test_identity_policies_do_not_count_without_the_root_statement():
    p = pol(allow(principal=BOB))
    d = P.evaluate(p, [ALLOW_ALL_IDENTITY], req(principal=ALICE))
    assert not d.allowed and d.where == "resource-based policy"


def test_delegation_is_limited_to_the_root_statements_actions_and_conditions():
    p = pol(allow(principal=ROOT, action="kms:Describe*"),
            allow(principal=ACCT, action="kms:Decrypt", condition={"StringEquals": {"kms:ViaService": RDS}}))
    assert allowed(p, req("kms:DescribeKey"), [ALLOW_ALL_IDENTITY])
    assert not allowed(p, req("kms:Encrypt"), [ALLOW_ALL_IDENTITY])
    assert not allowed(p, req("kms:Decrypt"), [ALLOW_ALL_IDENTITY])
    assert allowed(p, req("kms:Decrypt", via_service=RDS), [ALLOW_ALL_IDENTITY])


def test_identity_policy_resource_and_conditions_apply():
    ident = {"Statement": [{"Effect": "Allow", "Action": "kms:Decrypt", "Resource": KEY,
                            "Condition": {"StringEquals": {"kms:EncryptionContext:aws:ebs:id": "vol-1"}}}]}
    p = P.default_key_policy(ACCT)
    assert allowed(p, req(encryption_context=CTX), [ident])
    assert not allowed(p, req(encryption_context={"aws:ebs:id": "vol-2"}), [ident])
    assert not allowed(p, req(resource=OTHER_KEY, encryption_context=CTX), [ident])


def test_other_accounts_root_delegates_to_that_account_only():
    p = pol(allow(principal=ROOT), allow(principal=f"arn:aws:iam::{OTHER}:root", action="kms:Decrypt"))
    assert allowed(p, req(principal=EVE), [ALLOW_ALL_IDENTITY])
    assert not allowed(p, req("kms:Encrypt", principal=EVE), [ALLOW_ALL_IDENTITY])
    assert not allowed(p, req(principal=EVE))


# ------------------------------------------------------------------------------------------------
# The seed page's example policies, aws/rds, defaults, lockout, messages


def via_rds_only_policy():
    """Seed page: the key may be used only by requests that come through RDS."""
    return pol(allow(principal=ROOT, action="kms:*"),
               deny(principal="*", action=["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*",
                                           "kms:GenerateDataKey*", "kms:CreateGrant"],
                    condition={"StringNotEquals": {"kms:ViaService": RDS}}))


def test_seed_policy_use_only_via_rds():
    p = via_rds_only_policy()
    assert allowed(p, req(via_service=RDS), [ALLOW_ALL_IDENTITY])
    d = P.evaluate(p, [ALLOW_ALL_IDENTITY], req())
    assert d.explicit_deny
    assert P.evaluate(p, [ALLOW_ALL_IDENTITY], req(via_service="ec2.us-east-1.amazonaws.com")).explicit_deny
    assert allowed(p, req("kms:DescribeKey"), [ALLOW_ALL_IDENTITY])


def context_only_policy():
    """Seed page: the key may be used only with a given encryption context."""
    return pol(allow(principal=ROOT, action=["kms:Describe*", "kms:PutKeyPolicy", "kms:GetKeyPolicy"]),
               allow(principal=ALICE, action=["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey*"],
                     condition={"StringEquals": {"kms:EncryptionContext:aws:rds:db-id": "db-ABC"}}))


def test_seed_policy_use_only_with_given_encryption_context():
    p = context_only_policy()
    assert allowed(p, req(encryption_context=CTX))
    assert allowed(p, req("kms:GenerateDataKeyWithoutPlaintext", encryption_context={"AWS:RDS:DB-ID": "db-ABC"}))
    assert not allowed(p, req(encryption_context={"aws:rds:db-id": "db-abc"}))
    assert not allowed(p, req(encryption_context={"aws:rds:db-id": "db-XYZ"}))
    assert not allowed(p, req(encryption_context=None))
    assert not allowed(p, req(encryption_context=CTX, principal=BOB))


def test_aws_managed_rds_policy_usable_only_via_rds():
    p = P.parse_policy(P.aws_managed_rds_policy(ACCT, REGION))
    for action in ("kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKeyWithoutPlaintext", "kms:CreateGrant",
                   "kms:ReEncryptFrom", "kms:DescribeKey"):
        assert allowed(p, req(action, via_service=RDS)), action
        assert allowed(p, req(action, principal=HOST, via_service=RDS)), action
    assert not allowed(p, req("kms:Decrypt"), [ALLOW_ALL_IDENTITY])
    assert not allowed(p, req("kms:Decrypt", via_service=f"rds.eu-west-1.amazonaws.com"), [ALLOW_ALL_IDENTITY])
    assert not allowed(p, req("kms:Decrypt", principal=EVE, via_service=RDS), [ALLOW_ALL_IDENTITY])
    # Direct metadata access and RevokeGrant go through the account's identity policies.
    for action in ("kms:DescribeKey", "kms:ListGrants", "kms:GetKeyPolicy", "kms:RevokeGrant"):
        assert allowed(p, req(action), [ALLOW_ALL_IDENTITY]), action
        assert not allowed(p, req(action, principal=HOST)), action
    for action in ("kms:DisableKey", "kms:PutKeyPolicy", "kms:ScheduleKeyDeletion"):
        assert not allowed(p, req(action), [ALLOW_ALL_IDENTITY]), action


def test_default_key_policy_shape():
    p = P.default_key_policy(ACCT)
    assert p["Statement"][0] == {"Sid": "Enable IAM User Permissions", "Effect": "Allow",
                                 "Principal": {"AWS": ROOT}, "Action": "kms:*", "Resource": "*"}
    P.parse_policy(json.dumps(p))


def test_lockout_check():
    assert not P.would_lock_out(P.default_key_policy(ACCT), ALICE, ACCT, [ALLOW_ALL_IDENTITY])
    assert P.would_lock_out(P.default_key_policy(ACCT), ALICE, ACCT, [])
    assert P.would_lock_out(pol(allow(principal=BOB)), ALICE, ACCT, [ALLOW_ALL_IDENTITY])
    assert not P.would_lock_out(pol(allow(principal=ALICE, action="kms:PutKeyPolicy")), ALICE, ACCT)
    assert P.would_lock_out(pol(allow(principal=ALICE), deny(principal="*", action="kms:Put*")), ALICE, ACCT)
    assert not P.would_lock_out(pol(allow(principal=ALICE, resource=KEY)), ALICE, ACCT, key_arn=KEY)


def test_access_denied_messages_have_aws_shape():
    assert P.access_denied_message(ALICE, "kms:Encrypt", KEY, True) == (
        f"User: {ALICE} is not authorized to perform: kms:Encrypt on resource: {KEY} "
        "with an explicit deny in a resource-based policy")
    assert P.access_denied_message(ALICE, "kms:Encrypt", KEY, True, "identity-based policy").endswith(
        "with an explicit deny in an identity-based policy")
    assert P.access_denied_message(ALICE, "kms:Decrypt", KEY, False) == (
        f"User: {ALICE} is not authorized to perform: kms:Decrypt on resource: {KEY} "
        "because no resource-based policy allows the kms:Decrypt action")
    d = P.evaluate(P.default_key_policy(ACCT), [], req())
    assert d.message(req()).endswith("because no identity-based policy allows the kms:Decrypt action")


def test_decision_names_the_deciding_statement():
    d = P.evaluate(pol(allow(principal=ALICE, sid="AliceUse")), [], req())
    assert d.allowed and d.sid == "AliceUse" and "AliceUse" in d.reason
