"""Authorization through the real embedded service (every response shape-checked): key policies,
identity policies only where the key policy enables them, grants and their constraints, the
seed page's two example policies, aws/rds only via RDS, the host only through a grant, deny over
allow, and the lockout safety check."""

from __future__ import annotations

import json

import pytest

from tests.kms.conftest import code_of, message_of
from volumed.kms import principals

CTX = {"aws:rds:db-id": "db-ABC", "aws:ebs:id": "vol-1"}


@pytest.fixture
def ids(kms):
    """Principals of the keystore's account."""
    acct = kms.account_id()
    rds = principals.rds_via(kms.region())
    return {"acct": acct, "rds": rds, "admin": kms.principal, "root": principals.root_arn(acct),
            "alice": principals.user_arn(acct, "alice"), "bob": principals.user_arn(acct, "bob"),
            "host": principals.host_arn(acct, "host1")}


def as_(kms, principal, via=None):
    return kms.with_identity(principal=principal, via_service=via)


def allow_policy(actions="kms:*", **extra) -> str:
    st = {"Effect": "Allow", "Action": actions, "Resource": "*"}
    st.update(extra)
    return json.dumps({"Version": "2012-10-17", "Statement": [st]})


def key_policy(*statements) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def admin_statement(ids) -> dict:
    return {"Sid": "Admin", "Effect": "Allow", "Principal": {"AWS": ids["admin"]}, "Action": "kms:*",
            "Resource": "*"}


def make_key(kms, policy: str | None = None) -> str:
    params = {"Policy": policy} if policy else {}
    return kms.create_key(**params)["KeyMetadata"]["KeyId"]


def denied(call, **kw):
    with pytest.raises(Exception) as exc:
        call(**kw)
    assert code_of(exc) == "AccessDeniedException", code_of(exc)
    return message_of(exc)


# -- principals and identity policies -------------------------------------------------------------
def test_admin_has_kms_star_and_a_principal_with_nothing_is_refused(kms, key, ids):
    kms.encrypt(KeyId=key, Plaintext=b"x")
    alice = as_(kms, ids["alice"])
    msg = denied(alice.encrypt, KeyId=key, Plaintext=b"x")
    arn = kms.describe_key(KeyId=key)["KeyMetadata"]["Arn"]
    assert msg == (f"User: {ids['alice']} is not authorized to perform: kms:Encrypt on resource: {arn} "
                   "because no identity-based policy allows the kms:Encrypt action")
    denied(alice.describe_key, KeyId=key)
    denied(alice.create_key)
    denied(alice.list_keys)


def test_identity_policies_count_only_where_the_key_policy_enables_them(kms, ids):
    kms.put_principal_policy(PrincipalArn=ids["alice"], PolicyName="use",
                             PolicyDocument=allow_policy(["kms:Encrypt", "kms:DescribeKey"]))
    alice = as_(kms, ids["alice"])
    enabled = make_key(kms)  # default policy: the account root -> identity policies count
    alice.encrypt(KeyId=enabled, Plaintext=b"x")
    alice.describe_key(KeyId=enabled)
    denied(alice.decrypt, CiphertextBlob=kms.encrypt(KeyId=enabled, Plaintext=b"x")["CiphertextBlob"])
    closed = make_key(kms, key_policy(admin_statement(ids)))  # names the admin only
    msg = denied(alice.encrypt, KeyId=closed, Plaintext=b"x")
    assert "because no resource-based policy allows" in msg
    kms.encrypt(KeyId=closed, Plaintext=b"x")  # the admin, named directly, needs no identity policy


def test_key_policy_naming_a_principal_needs_no_identity_policy(kms, ids):
    key = make_key(kms, key_policy(admin_statement(ids), {
        "Effect": "Allow", "Principal": {"AWS": ids["bob"]}, "Action": "kms:Encrypt", "Resource": "*"}))
    bob = as_(kms, ids["bob"])
    bob.encrypt(KeyId=key, Plaintext=b"x")
    denied(bob.describe_key, KeyId=key)


def test_deny_over_allow(kms, key, ids):
    kms.put_principal_policy(PrincipalArn=ids["alice"], PolicyName="all", PolicyDocument=allow_policy())
    alice = as_(kms, ids["alice"])
    alice.encrypt(KeyId=key, Plaintext=b"x")
    kms.put_principal_policy(PrincipalArn=ids["alice"], PolicyName="no-encrypt", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Action": "kms:Encrypt", "Resource": "*"}]}))
    msg = denied(alice.encrypt, KeyId=key, Plaintext=b"x")
    assert msg.endswith("with an explicit deny in an identity-based policy")
    alice.describe_key(KeyId=key)
    # A key-policy Deny beats the admin's kms:* and any grant.
    kms.create_grant(KeyId=key, GranteePrincipal=ids["bob"], Operations=["Encrypt"])
    kms.put_key_policy(KeyId=key, PolicyName="default", Policy=key_policy(
        {"Effect": "Allow", "Principal": {"AWS": ids["root"]}, "Action": "kms:*", "Resource": "*"},
        {"Effect": "Deny", "Principal": "*", "Action": "kms:Encrypt", "Resource": "*"}))
    msg = denied(kms.encrypt, KeyId=key, Plaintext=b"x")
    assert msg.endswith("with an explicit deny in a resource-based policy")
    denied(as_(kms, ids["bob"]).encrypt, KeyId=key, Plaintext=b"x")


# -- the seed page's two example policies ---------------------------------------------------------
def test_example_policy_use_only_via_rds(kms, ids):
    key = make_key(kms, key_policy(admin_statement(ids), {
        "Sid": "UseOnlyViaRDS", "Effect": "Allow", "Principal": {"AWS": ids["alice"]},
        "Action": ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey*", "kms:CreateGrant", "kms:DescribeKey"],
        "Resource": "*", "Condition": {"StringEquals": {"kms:ViaService": ids["rds"]}}}))
    via_rds = as_(kms, ids["alice"], ids["rds"])
    blob = via_rds.generate_data_key_without_plaintext(KeyId=key, KeySpec="AES_256",
                                                       EncryptionContext=CTX)["CiphertextBlob"]
    via_rds.decrypt(CiphertextBlob=blob, EncryptionContext=CTX)
    direct = as_(kms, ids["alice"])
    denied(direct.decrypt, CiphertextBlob=blob, EncryptionContext=CTX)
    denied(as_(kms, ids["alice"], "ec2.us-east-1.amazonaws.com").decrypt, CiphertextBlob=blob,
           EncryptionContext=CTX)


def test_example_policy_use_only_with_a_given_encryption_context(kms, ids):
    key = make_key(kms, key_policy(admin_statement(ids), {
        "Sid": "OnlyForDbABC", "Effect": "Allow", "Principal": {"AWS": ids["alice"]},
        "Action": ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey*", "kms:CreateGrant"],
        "Resource": "*", "Condition": {"StringEquals": {"kms:EncryptionContext:aws:rds:db-id": "db-ABC"}}}))
    alice = as_(kms, ids["alice"])
    blob = alice.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext=CTX)["CiphertextBlob"]
    alice.decrypt(CiphertextBlob=blob, EncryptionContext=CTX)
    # Condition key names are case-insensitive, values case-sensitive.
    alice.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext={"AWS:RDS:DB-ID": "db-ABC"})
    denied(alice.encrypt, KeyId=key, Plaintext=b"x", EncryptionContext={"aws:rds:db-id": "db-abc"})
    denied(alice.encrypt, KeyId=key, Plaintext=b"x", EncryptionContext={"aws:rds:db-id": "db-XYZ"})
    denied(alice.encrypt, KeyId=key, Plaintext=b"x")
    # CreateGrant: the condition is evaluated against the grant's constraints, as AWS does.
    alice.create_grant(KeyId=key, GranteePrincipal=ids["host"], Operations=["Decrypt"],
                       Constraints={"EncryptionContextSubset": CTX})
    denied(alice.create_grant, KeyId=key, GranteePrincipal=ids["host"], Operations=["Decrypt"])


def test_grant_condition_keys(kms, ids):
    key = make_key(kms, key_policy(admin_statement(ids), {
        "Effect": "Allow", "Principal": {"AWS": ids["alice"]}, "Action": "kms:CreateGrant", "Resource": "*",
        "Condition": {"Bool": {"kms:GrantIsForAWSResource": "true"},
                      "ForAllValues:StringEquals": {"kms:GrantOperations": ["Decrypt", "DescribeKey"]},
                      "StringLike": {"kms:GranteePrincipal": "arn:aws:sts::*:assumed-role/volumed-host/*",
                                     "kms:RetiringPrincipal": "arn:aws:sts::*"}}}))
    good = dict(KeyId=key, GranteePrincipal=ids["host"], RetiringPrincipal=ids["host"], Operations=["Decrypt"])
    as_(kms, ids["alice"], ids["rds"]).create_grant(**good)
    denied(as_(kms, ids["alice"]).create_grant, **good)  # not for an AWS resource: no service
    via = as_(kms, ids["alice"], ids["rds"])
    denied(via.create_grant, **dict(good, Operations=["Decrypt", "Encrypt"]))
    denied(via.create_grant, **dict(good, GranteePrincipal=ids["bob"]))
    denied(via.create_grant, **dict(good, RetiringPrincipal=ids["bob"]))
    arn_key = make_key(kms, key_policy(admin_statement(ids), {
        "Effect": "Allow", "Principal": "*", "Action": "kms:DescribeKey", "Resource": "*",
        "Condition": {"ArnLike": {"aws:PrincipalArn": "arn:aws:iam::*:role/volumed-host"},
                      "StringEquals": {"kms:CallerAccount": ids["acct"]}}}))
    as_(kms, ids["host"]).describe_key(KeyId=arn_key)  # a session counts as its role
    denied(as_(kms, ids["bob"]).describe_key, KeyId=arn_key)
    other = principals.host_arn("111122223333", "host1")
    denied(as_(kms, other).describe_key, KeyId=arn_key)  # another account


# -- grants -------------------------------------------------------------------------------------
def test_host_has_nothing_but_its_grant(kms, key, ids):
    host = as_(kms, ids["host"])
    blob = kms.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext=CTX)["CiphertextBlob"]
    denied(host.decrypt, CiphertextBlob=blob, EncryptionContext=CTX)
    denied(host.describe_key, KeyId=key)
    g = kms.create_grant(KeyId=key, GranteePrincipal=ids["host"], RetiringPrincipal=ids["host"],
                         Operations=["Decrypt", "GenerateDataKeyWithoutPlaintext"],
                         Constraints={"EncryptionContextSubset": CTX})
    assert host.decrypt(CiphertextBlob=blob, EncryptionContext=CTX, GrantTokens=[g["GrantToken"]])["Plaintext"] == b"x"
    host.decrypt(CiphertextBlob=blob, EncryptionContext=CTX)  # immediately consistent without a token
    host.generate_data_key_without_plaintext(KeyId=key, KeySpec="AES_256", EncryptionContext=CTX)
    denied(host.encrypt, KeyId=key, Plaintext=b"x", EncryptionContext=CTX)  # not a grant operation
    denied(host.describe_key, KeyId=key)
    denied(host.generate_data_key, KeyId=key, KeySpec="AES_256", EncryptionContext=CTX)


def test_each_grant_constraint_enforced(kms, key, ids):
    host = as_(kms, ids["host"])
    sub = {"aws:ebs:id": "vol-1"}
    kms.create_grant(KeyId=key, GranteePrincipal=ids["host"], Operations=["Encrypt"],
                     Constraints={"EncryptionContextSubset": sub})
    host.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext=CTX)          # a superset
    host.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext={"AWS:EBS:ID": "vol-1"})  # key case
    denied(host.encrypt, KeyId=key, Plaintext=b"x", EncryptionContext={"aws:ebs:id": "VOL-1"})
    denied(host.encrypt, KeyId=key, Plaintext=b"x")
    key2 = make_key(kms)
    kms.create_grant(KeyId=key2, GranteePrincipal=ids["host"], Operations=["Encrypt", "DescribeKey"],
                     Constraints={"EncryptionContextEquals": CTX})
    host.encrypt(KeyId=key2, Plaintext=b"x", EncryptionContext=dict(CTX))
    denied(host.encrypt, KeyId=key2, Plaintext=b"x", EncryptionContext=dict(CTX, extra="1"))
    denied(host.encrypt, KeyId=key2, Plaintext=b"x", EncryptionContext=sub)
    host.describe_key(KeyId=key2)  # constraints do not apply to DescribeKey


def test_grant_idempotent_by_name(kms, key, ids):
    params = dict(KeyId=key, GranteePrincipal=ids["host"], Operations=["Decrypt"], Name="vol-1-host1")
    a = kms.create_grant(**params)
    b = kms.create_grant(**params)
    assert a["GrantId"] == b["GrantId"] and a["GrantToken"] != b["GrantToken"]
    assert len(kms.list_grants(KeyId=key)["Grants"]) == 1
    c = kms.create_grant(**dict(params, Operations=["Encrypt"]))
    assert c["GrantId"] != a["GrantId"]


def test_create_grant_through_a_grant_only_as_strict(kms, key, ids):
    kms.create_grant(KeyId=key, GranteePrincipal=ids["alice"], Operations=["Decrypt", "CreateGrant"],
                     Constraints={"EncryptionContextSubset": {"aws:rds:db-id": "db-ABC"}})
    alice = as_(kms, ids["alice"])
    alice.create_grant(KeyId=key, GranteePrincipal=ids["host"], Operations=["Decrypt"],
                       Constraints={"EncryptionContextSubset": CTX})
    denied(alice.create_grant, KeyId=key, GranteePrincipal=ids["host"], Operations=["Decrypt"])
    denied(alice.create_grant, KeyId=key, GranteePrincipal=ids["host"], Operations=["Decrypt", "Encrypt"],
           Constraints={"EncryptionContextSubset": CTX})


def test_revoke_and_retire_end_access_on_the_next_call(kms, key, ids):
    host = as_(kms, ids["host"])
    blob = kms.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext=CTX)["CiphertextBlob"]
    g = kms.create_grant(KeyId=key, GranteePrincipal=ids["host"], Operations=["Decrypt"])
    host.decrypt(CiphertextBlob=blob, EncryptionContext=CTX, GrantTokens=[g["GrantToken"]])
    kms.revoke_grant(KeyId=key, GrantId=g["GrantId"])
    denied(host.decrypt, CiphertextBlob=blob, EncryptionContext=CTX, GrantTokens=[g["GrantToken"]])
    g = kms.create_grant(KeyId=key, GranteePrincipal=ids["host"], RetiringPrincipal=ids["host"],
                         Operations=["Decrypt"])
    host.decrypt(CiphertextBlob=blob, EncryptionContext=CTX)
    host.retire_grant(KeyId=key, GrantId=g["GrantId"])  # the retiring principal needs no policy
    denied(host.decrypt, CiphertextBlob=blob, EncryptionContext=CTX)


def test_revoke_in_another_process_ends_access(kms, key, ids, keystore):
    import multiprocessing

    host = as_(kms, ids["host"])
    blob = kms.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext=CTX)["CiphertextBlob"]
    g = kms.create_grant(KeyId=key, GranteePrincipal=ids["host"], Operations=["Decrypt"])
    host.decrypt(CiphertextBlob=blob, EncryptionContext=CTX)
    proc = multiprocessing.get_context("spawn").Process(target=_revoke, args=(keystore, key, g["GrantId"]))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0
    denied(host.decrypt, CiphertextBlob=blob, EncryptionContext=CTX)


def _revoke(keystore, key, grant_id):
    from volumed import kms as kms_pkg

    client = kms_pkg.connect(keystore)
    client.revoke_grant(KeyId=key, GrantId=grant_id)
    client.close()


def test_retire_grant_rules(kms, key, ids):
    bob = as_(kms, ids["bob"])
    g = kms.create_grant(KeyId=key, GranteePrincipal=ids["host"], Operations=["Decrypt"])
    denied(bob.retire_grant, KeyId=key, GrantId=g["GrantId"])
    denied(as_(kms, ids["host"]).retire_grant, KeyId=key, GrantId=g["GrantId"])  # no RetireGrant op
    g2 = kms.create_grant(KeyId=key, GranteePrincipal=ids["host"], Operations=["Decrypt", "RetireGrant"])
    as_(kms, ids["host"]).retire_grant(GrantToken=g2["GrantToken"])
    g3 = kms.create_grant(KeyId=key, GranteePrincipal=ids["host"], RetiringPrincipal=ids["bob"],
                          Operations=["Decrypt"])
    bob.retire_grant(KeyId=key, GrantId=g3["GrantId"])
    denied(bob.revoke_grant, KeyId=key, GrantId=g["GrantId"])  # revoking is the key policy's
    kms.retire_grant(KeyId=key, GrantId=g["GrantId"])  # the admin's kms:* covers RetireGrant
    assert kms.list_grants(KeyId=key)["Grants"] == []


def test_invalid_grant_token(kms, key, ids):
    with pytest.raises(kms.exceptions.InvalidGrantTokenException):
        as_(kms, ids["host"]).decrypt(CiphertextBlob=b"\0" * 80, GrantTokens=["not-a-token"])


def test_user_without_create_grant_or_describe_key_cannot_attach(kms, key, ids):
    """The mount's attach is DescribeKey + CreateGrant as the user via RDS."""
    alice = as_(kms, ids["alice"], ids["rds"])
    host = dict(KeyId=key, GranteePrincipal=ids["host"], RetiringPrincipal=ids["host"],
                Operations=["Decrypt", "GenerateDataKeyWithoutPlaintext"],
                Constraints={"EncryptionContextSubset": CTX})
    denied(alice.describe_key, KeyId=key)
    denied(alice.create_grant, **host)
    kms.put_principal_policy(PrincipalArn=ids["alice"], PolicyName="d", PolicyDocument=allow_policy("kms:DescribeKey"))
    alice.describe_key(KeyId=key)
    denied(alice.create_grant, **host)
    kms.put_principal_policy(PrincipalArn=ids["alice"], PolicyName="g", PolicyDocument=allow_policy("kms:CreateGrant"))
    alice.create_grant(**host)


# -- aws/rds --------------------------------------------------------------------------------------
def test_aws_rds_usable_only_via_the_service(kms, ids):
    alice_rds = as_(kms, ids["alice"], ids["rds"])  # no identity policy: the key policy names "*"
    blob = alice_rds.encrypt(KeyId="alias/aws/rds", Plaintext=b"x", EncryptionContext=CTX)["CiphertextBlob"]
    alice_rds.decrypt(CiphertextBlob=blob, EncryptionContext=CTX)
    alice_rds.describe_key(KeyId="alias/aws/rds")
    denied(as_(kms, ids["alice"]).decrypt, CiphertextBlob=blob, EncryptionContext=CTX)
    denied(kms.decrypt, CiphertextBlob=blob, EncryptionContext=CTX)  # even the admin, directly
    kms.describe_key(KeyId="alias/aws/rds")                           # metadata directly: allowed
    kms.get_key_policy(KeyId="alias/aws/rds", PolicyName="default")
    denied(as_(kms, ids["alice"]).describe_key, KeyId="alias/aws/rds")  # ...through identity policies
    denied(as_(kms, principals.user_arn("111122223333", "eve"), ids["rds"]).decrypt,
           CiphertextBlob=blob, EncryptionContext=CTX)                  # another account
    # Management is refused to everyone, through RDS or not.
    for who in (kms, kms.with_identity(via_service=ids["rds"])):
        denied(who.disable_key, KeyId="alias/aws/rds")
        denied(who.schedule_key_deletion, KeyId="alias/aws/rds")
        denied(who.disable_key_rotation, KeyId="alias/aws/rds")
        denied(who.put_key_policy, KeyId="alias/aws/rds", PolicyName="default",
               Policy=key_policy(admin_statement(ids)))
    # Grants on it can be revoked directly; the host uses it only through a grant.
    host = as_(kms, ids["host"])
    denied(host.decrypt, CiphertextBlob=blob, EncryptionContext=CTX)
    g = alice_rds.create_grant(KeyId="alias/aws/rds", GranteePrincipal=ids["host"], Operations=["Decrypt"],
                               Constraints={"EncryptionContextSubset": CTX})
    host.decrypt(CiphertextBlob=blob, EncryptionContext=CTX, GrantTokens=[g["GrantToken"]])
    kms.revoke_grant(KeyId="alias/aws/rds", GrantId=g["GrantId"])
    denied(host.decrypt, CiphertextBlob=blob, EncryptionContext=CTX)


# -- key policies -----------------------------------------------------------------------------------
def test_put_key_policy_validation_and_lockout(kms, key, ids):
    with pytest.raises(kms.exceptions.MalformedPolicyDocumentException) as exc:
        kms.put_key_policy(KeyId=key, PolicyName="default", Policy='{"Statement": [{"Effect": "Maybe"}]}')
    assert "Statement[0].Effect must be Allow or Deny" in message_of(exc)
    lockout = key_policy({"Effect": "Allow", "Principal": {"AWS": ids["bob"]}, "Action": "kms:*", "Resource": "*"})
    with pytest.raises(kms.exceptions.MalformedPolicyDocumentException) as exc:
        kms.put_key_policy(KeyId=key, PolicyName="default", Policy=lockout)
    assert "will not allow you to update the key policy" in message_of(exc)
    with pytest.raises(kms.exceptions.MalformedPolicyDocumentException):
        kms.create_key(Policy=lockout)
    assert len(kms.list_keys()["Keys"]) == 1
    kms.put_key_policy(KeyId=key, PolicyName="default", Policy=lockout, BypassPolicyLockoutSafetyCheck=True)
    denied(kms.describe_key, KeyId=key)  # locked out, as asked
    bob = as_(kms, ids["bob"])
    with pytest.raises(kms.exceptions.MalformedPolicyDocumentException):  # bob would lock himself out
        bob.put_key_policy(KeyId=key, PolicyName="default", Policy=key_policy(admin_statement(ids)))
    bob.put_key_policy(KeyId=key, PolicyName="default", Policy=key_policy(admin_statement(ids)),
                       BypassPolicyLockoutSafetyCheck=True)
    kms.describe_key(KeyId=key)


def test_get_key_policy_needs_permission(kms, key, ids):
    assert json.loads(kms.get_key_policy(KeyId=key, PolicyName="default")["Policy"])["Statement"][0][
        "Principal"] == {"AWS": ids["root"]}
    denied(as_(kms, ids["alice"]).get_key_policy, KeyId=key, PolicyName="default")
    denied(as_(kms, ids["alice"]).put_key_policy, KeyId=key, PolicyName="default",
           Policy=key_policy(admin_statement(ids)))


def test_encryption_context_keys_and_the_empty_context_trap(kms, ids):
    only_known_keys = {"Effect": "Allow", "Principal": {"AWS": ids["alice"]}, "Action": "kms:Encrypt",
                       "Resource": "*", "Condition": {"ForAllValues:StringEquals": {
                           "kms:EncryptionContextKeys": ["aws:rds:db-id", "aws:ebs:id"]}}}
    key = make_key(kms, key_policy(admin_statement(ids), only_known_keys))
    alice = as_(kms, ids["alice"])
    alice.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext=CTX)
    denied(alice.encrypt, KeyId=key, Plaintext=b"x", EncryptionContext=dict(CTX, other="1"))
    alice.encrypt(KeyId=key, Plaintext=b"x")  # the trap: ForAllValues passes on an empty context
    strict = dict(only_known_keys, Condition=dict(only_known_keys["Condition"],
                                                  Null={"kms:EncryptionContextKeys": "false"}))
    kms.put_key_policy(KeyId=key, PolicyName="default", Policy=key_policy(admin_statement(ids), strict))
    denied(alice.encrypt, KeyId=key, Plaintext=b"x")
    alice.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext=CTX)
