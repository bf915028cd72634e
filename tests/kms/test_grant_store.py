"""Grant and key-policy storage (enforcement belongs to the authorizer): CreateGrant with Name
idempotency, tokens, ListGrants, ListRetirableGrants, RetireGrant, RevokeGrant, Get/PutKeyPolicy."""

import json

import pytest
from botocore.exceptions import ClientError

from tests.kms.conftest import code_of

HOST = "arn:aws:sts::111122223333:assumed-role/volumed-host/h1"
ADMIN = "arn:aws:iam::111122223333:user/admin"
SUBSET = {"EncryptionContextSubset": {"aws:ebs:id": "vol-1"}}


def test_create_and_list_grant_as_given(kms, key):
    r = kms.create_grant(KeyId=key, GranteePrincipal=HOST, RetiringPrincipal=ADMIN,
                         Operations=["Decrypt", "RetireGrant"], Constraints=SUBSET, Name="attach-vol-1")
    assert len(r["GrantId"]) == 64 and r["GrantToken"]
    [g] = kms.list_grants(KeyId=key)["Grants"]
    assert g["GrantId"] == r["GrantId"] and g["GranteePrincipal"] == HOST
    assert g["RetiringPrincipal"] == ADMIN and g["Operations"] == ["Decrypt", "RetireGrant"]
    assert g["Constraints"] == SUBSET and g["Name"] == "attach-vol-1"
    assert g["KeyId"] == kms.describe_key(KeyId=key)["KeyMetadata"]["Arn"]
    assert g["IssuingAccount"] == f"arn:aws:iam::{kms.account_id()}:root"


def test_name_makes_create_grant_idempotent(kms, key):
    a = kms.create_grant(KeyId=key, GranteePrincipal=HOST, Operations=["Decrypt"], Name="n")
    b = kms.create_grant(KeyId=key, GranteePrincipal=HOST, Operations=["Decrypt"], Name="n")
    assert a["GrantId"] == b["GrantId"] and a["GrantToken"] != b["GrantToken"]
    c = kms.create_grant(KeyId=key, GranteePrincipal=HOST, Operations=["Encrypt"], Name="n")
    d = kms.create_grant(KeyId=key, GranteePrincipal=HOST, Operations=["Decrypt"])
    assert len({a["GrantId"], c["GrantId"], d["GrantId"]}) == 3
    # every token of the grant works and dies with it
    kms.encrypt(KeyId=key, Plaintext=b"x", GrantTokens=[a["GrantToken"], b["GrantToken"]])
    kms.retire_grant(GrantToken=a["GrantToken"])
    with pytest.raises(kms.exceptions.InvalidGrantTokenException):
        kms.retire_grant(GrantToken=b["GrantToken"])


def test_filters_and_retirable(kms, key):
    g1 = kms.create_grant(KeyId=key, GranteePrincipal=HOST, RetiringPrincipal=ADMIN, Operations=["Decrypt"])
    kms.create_grant(KeyId=key, GranteePrincipal=ADMIN, Operations=["Encrypt"])
    assert [g["GrantId"] for g in kms.list_grants(KeyId=key, GranteePrincipal=HOST)["Grants"]] == [g1["GrantId"]]
    assert [g["GrantId"] for g in kms.list_grants(KeyId=key, GrantId=g1["GrantId"])["Grants"]] == [g1["GrantId"]]
    assert [g["GrantId"] for g in kms.list_retirable_grants(RetiringPrincipal=ADMIN)["Grants"]] == [g1["GrantId"]]
    with pytest.raises(kms.exceptions.InvalidGrantIdException):
        kms.list_grants(KeyId=key, GrantId="nope")


def test_retire_by_key_and_id_and_revoke(kms, key):
    g1 = kms.create_grant(KeyId=key, GranteePrincipal=HOST, Operations=["Decrypt"])
    g2 = kms.create_grant(KeyId=key, GranteePrincipal=HOST, Operations=["Decrypt"])
    kms.retire_grant(KeyId=key, GrantId=g1["GrantId"])
    kms.revoke_grant(KeyId=key, GrantId=g2["GrantId"])
    assert kms.list_grants(KeyId=key)["Grants"] == []
    with pytest.raises(kms.exceptions.NotFoundException):
        kms.revoke_grant(KeyId=key, GrantId=g2["GrantId"])
    with pytest.raises(ClientError) as ei:
        kms.retire_grant(GrantId=g2["GrantId"])
    assert code_of(ei) == "ValidationException"


def test_grant_on_other_key_not_found(kms, key):
    other = kms.create_key()["KeyMetadata"]["KeyId"]
    g = kms.create_grant(KeyId=key, GranteePrincipal=HOST, Operations=["Decrypt"])
    with pytest.raises(kms.exceptions.NotFoundException):
        kms.revoke_grant(KeyId=other, GrantId=g["GrantId"])
    assert len(kms.list_grants(KeyId=key)["Grants"]) == 1


def test_grants_paginate(kms, key):
    for _ in range(3):
        kms.create_grant(KeyId=key, GranteePrincipal=HOST, Operations=["Decrypt"])
    p1 = kms.list_grants(KeyId=key, Limit=2)
    p2 = kms.list_grants(KeyId=key, Limit=2, Marker=p1["NextMarker"])
    assert len(p1["Grants"]) == 2 and len(p2["Grants"]) == 1 and not p2["Truncated"]


def test_default_key_policy(kms, key):
    r = kms.get_key_policy(KeyId=key, PolicyName="default")
    assert r["PolicyName"] == "default"
    doc = json.loads(r["Policy"])
    assert doc["Statement"] == [{"Sid": "Enable IAM User Permissions", "Effect": "Allow",
                                 "Principal": {"AWS": f"arn:aws:iam::{kms.account_id()}:root"},
                                 "Action": "kms:*", "Resource": "*"}]
    assert kms.list_key_policies(KeyId=key)["PolicyNames"] == ["default"]


def test_put_key_policy_stores_text_as_given(kms, key):
    text = '{"Version":"2012-10-17",  "Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*"}]}'
    kms.put_key_policy(KeyId=key, PolicyName="default", Policy=text)
    assert kms.get_key_policy(KeyId=key)["Policy"] == text
    md = kms.create_key(Policy=text)["KeyMetadata"]
    assert kms.get_key_policy(KeyId=md["KeyId"])["Policy"] == text


@pytest.mark.parametrize("text", ["not json", "[]", '{"Statement": []}', '{"Statement": [{"Effect": "Maybe"}]}'])
def test_malformed_policy_changes_nothing(kms, key, text):
    before = kms.get_key_policy(KeyId=key)["Policy"]
    with pytest.raises(kms.exceptions.MalformedPolicyDocumentException):
        kms.put_key_policy(KeyId=key, PolicyName="default", Policy=text)
    assert kms.get_key_policy(KeyId=key)["Policy"] == before
    n = len(kms.list_keys()["Keys"])
    with pytest.raises(kms.exceptions.MalformedPolicyDocumentException):
        kms.create_key(Policy=text)
    assert len(kms.list_keys()["Keys"]) == n


def test_only_default_policy_name(kms, key):
    with pytest.raises(ClientError) as ei:
        kms.get_key_policy(KeyId=key, PolicyName="other")
    assert code_of(ei) == "ValidationException"


def test_every_mutation_moves_the_change_counter(kms, key):
    seen = [kms.change_counter()]

    def step(call):
        call()
        seen.append(kms.change_counter())
        assert seen[-1] > seen[-2], call

    g = {}
    step(lambda: g.update(kms.create_grant(KeyId=key, GranteePrincipal=HOST, Operations=["Decrypt"])))
    step(lambda: kms.retire_grant(GrantToken=g["GrantToken"]))
    step(lambda: kms.create_alias(AliasName="alias/c", TargetKeyId=key))
    step(lambda: kms.put_key_policy(KeyId=key, Policy=kms.get_key_policy(KeyId=key)["Policy"]))
    step(lambda: kms.disable_key(KeyId=key))
    step(lambda: kms.enable_key(KeyId=key))
    step(lambda: kms.rotate_key_on_demand(KeyId=key))
    step(lambda: kms.create_key())
    kms.describe_key(KeyId=key)
    kms.encrypt(KeyId=key, Plaintext=b"x")
    assert kms.change_counter() == seen[-1]


@pytest.mark.parametrize("ops,constraints", [
    (["Decrypt", "Decrypt"], None),
    ([], None),
    (["Decrypt"], {"EncryptionContextSubset": {"a": "1", "A": "2"}}),
])
def test_bad_grant_requests_change_nothing(kms, key, ops, constraints):
    kw = {"Constraints": constraints} if constraints else {}
    with pytest.raises(ClientError) as ei:
        kms.create_grant(KeyId=key, GranteePrincipal=HOST, Operations=ops, **kw)
    assert code_of(ei) == "ValidationException"
    assert kms.list_grants(KeyId=key)["Grants"] == []


def test_both_constraints_stored_empty_ones_dropped(kms, key):
    both = {"EncryptionContextSubset": {"a": "1"}, "EncryptionContextEquals": {"a": "1", "b": "2"}}
    kms.create_grant(KeyId=key, GranteePrincipal=HOST, Operations=["Decrypt"], Constraints=both)
    kms.create_grant(KeyId=key, GranteePrincipal=HOST, Operations=["Encrypt"],
                     Constraints={"EncryptionContextSubset": {}})
    stored = [g.get("Constraints") for g in kms.list_grants(KeyId=key)["Grants"]]
    assert stored == [both, None]
