"""The identity-policy store: the administrator's kms:* policy on a new keystore, who may change
policies, validation, sessions inheriting their role's policies, the change counter, IAM calls
kept out of the KMS audit log, and `volumed iam` through real subprocesses."""

from __future__ import annotations

import json
import os

import pytest

from tests.kms.conftest import code_of, message_of
from tests.kms.test_enforcement_audit import cli_runner
from volumed import kms as kms_pkg
from volumed.kms import principals
from volumed.kms.store import iamstore

ALLOW_DECRYPT = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": ["kms:Decrypt", "kms:Encrypt"], "Resource": "*"}]})
IAM_ALL = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iam:*", "Resource": "*"}]})


def _audit_count(kms) -> int:
    import sqlite3

    conn = sqlite3.connect(os.path.join(kms.keystore_path, "keystore.db"))
    try:
        return conn.execute("SELECT COUNT(*) FROM audit").fetchone()[0]
    finally:
        conn.close()


def test_new_keystore_gives_its_administrator_kms_star(kms):
    listing = kms.list_principal_policies()["Policies"]
    assert listing == [{"PrincipalArn": kms.principal, "PolicyName": iamstore.ADMIN_POLICY_NAME}]
    doc = json.loads(kms.get_principal_policy(PrincipalArn=kms.principal,
                                              PolicyName=iamstore.ADMIN_POLICY_NAME)["PolicyDocument"])
    assert doc["Statement"][0]["Action"] == "kms:*"
    assert kms.principal == principals.default_user_principal(kms)


def test_put_get_list_delete_and_the_change_counter(kms):
    alice = principals.user_arn(kms.account_id(), "alice")
    before, audited = kms.change_counter(), _audit_count(kms)
    kms.put_principal_policy(PrincipalArn=alice, PolicyName="use", PolicyDocument=ALLOW_DECRYPT)
    assert kms.change_counter() == before + 1
    assert kms.get_principal_policy(PrincipalArn=alice, PolicyName="use")["PolicyDocument"] == ALLOW_DECRYPT
    assert kms.change_counter() == before + 1
    assert kms.list_principal_policies(PrincipalArn=alice)["Policies"] == [
        {"PrincipalArn": alice, "PolicyName": "use"}]
    kms.delete_principal_policy(PrincipalArn=alice, PolicyName="use")
    assert kms.change_counter() == before + 2
    assert _audit_count(kms) == audited  # IAM calls are not KMS calls
    with pytest.raises(Exception) as exc:
        kms.get_principal_policy(PrincipalArn=alice, PolicyName="use")
    assert code_of(exc) == "NoSuchEntity"
    with pytest.raises(Exception) as exc:
        kms.delete_principal_policy(PrincipalArn=alice, PolicyName="use")
    assert code_of(exc) == "NoSuchEntity"


def test_only_the_administrator_or_iam_star_may_manage_policies(kms):
    acct = kms.account_id()
    alice, bob = principals.user_arn(acct, "alice"), principals.user_arn(acct, "bob")
    as_alice = kms.with_identity(principal=alice)
    for call, kw in ((as_alice.put_principal_policy, dict(PrincipalArn=alice, PolicyName="p",
                                                          PolicyDocument=IAM_ALL)),
                     (as_alice.list_principal_policies, {}),
                     (as_alice.get_principal_policy, dict(PrincipalArn=kms.principal,
                                                          PolicyName=iamstore.ADMIN_POLICY_NAME)),
                     (as_alice.delete_principal_policy, dict(PrincipalArn=kms.principal,
                                                             PolicyName=iamstore.ADMIN_POLICY_NAME))):
        with pytest.raises(Exception) as exc:
            call(**kw)
        assert code_of(exc) == "AccessDenied", call
    assert "is not authorized to perform: iam:PutUserPolicy" in _msg(as_alice.put_principal_policy, alice)
    kms.put_principal_policy(PrincipalArn=alice, PolicyName="iam-admin", PolicyDocument=IAM_ALL)
    as_alice.put_principal_policy(PrincipalArn=bob, PolicyName="use", PolicyDocument=ALLOW_DECRYPT)
    assert len(as_alice.list_principal_policies()["Policies"]) == 3
    # iam:* is not kms:*: alice still may not use keys.
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    with pytest.raises(as_alice.exceptions.AccessDeniedException):
        as_alice.encrypt(KeyId=key, Plaintext=b"x")
    kms.with_identity(principal=bob).encrypt(KeyId=key, Plaintext=b"x")


def _msg(call, target):
    with pytest.raises(Exception) as exc:
        call(PrincipalArn=target, PolicyName="p", PolicyDocument=IAM_ALL)
    return message_of(exc)


def test_validation(kms):
    acct = kms.account_id()
    alice = principals.user_arn(acct, "alice")
    cases = [
        (dict(PrincipalArn=alice, PolicyName="p", PolicyDocument="{"), "MalformedPolicyDocument", "not valid JSON"),
        (dict(PrincipalArn=alice, PolicyName="p", PolicyDocument=json.dumps({"Statement": [
            {"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*"}]})),
         "MalformedPolicyDocument", "Statement[0].Principal is not allowed in an identity policy"),
        (dict(PrincipalArn=principals.host_arn(acct, "h"), PolicyName="p", PolicyDocument=ALLOW_DECRYPT),
         "ValidationError", f"arn:aws:iam::{acct}:role/volumed-host"),
        (dict(PrincipalArn=principals.user_arn("111122223333", "x"), PolicyName="p", PolicyDocument=ALLOW_DECRYPT),
         "ValidationError", "not this keystore's account"),
        (dict(PrincipalArn=alice, PolicyName="bad name!", PolicyDocument=ALLOW_DECRYPT), "ValidationError",
         "policy name"),
    ]
    for kw, code, text in cases:
        with pytest.raises(Exception) as exc:
            kms.put_principal_policy(**kw)
        assert code_of(exc) == code and text in message_of(exc), (kw, message_of(exc))
    assert len(kms.list_principal_policies()["Policies"]) == 1


def test_a_session_has_its_roles_policies(kms):
    acct = kms.account_id()
    role = f"arn:aws:iam::{acct}:role/volumed-host"
    host = kms.with_identity(principal=principals.host_arn(acct, "h1"))
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    with pytest.raises(host.exceptions.AccessDeniedException):
        host.encrypt(KeyId=key, Plaintext=b"x")
    kms.put_principal_policy(PrincipalArn=role, PolicyName="use", PolicyDocument=ALLOW_DECRYPT)
    host.encrypt(KeyId=key, Plaintext=b"x")


def test_identity_policy_conditions(kms):
    acct = kms.account_id()
    alice = principals.user_arn(acct, "alice")
    kms.put_principal_policy(PrincipalArn=alice, PolicyName="via-rds", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": "kms:Encrypt", "Resource": "*",
            "Condition": {"StringLike": {"kms:ViaService": "rds.*.amazonaws.com"}}}]}))
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    kms.with_identity(principal=alice, via_service=principals.rds_via(kms.region())).encrypt(KeyId=key, Plaintext=b"x")
    with pytest.raises(kms.exceptions.AccessDeniedException):
        kms.with_identity(principal=alice).encrypt(KeyId=key, Plaintext=b"x")


def test_keystore_admin_is_recorded_once(keystore, clock):
    a = kms_pkg.connect(keystore, clock=clock)
    admin = a.principal
    a.close()
    b = kms_pkg.connect(keystore, principal="arn:aws:iam::000000000000:user/other", clock=clock)
    assert [p["PrincipalArn"] for p in b.with_identity(principal=admin).list_principal_policies()["Policies"]] == [admin]
    b.close()


@pytest.mark.timeout(120)
def test_iam_cli(tmp_path):
    run = cli_runner(tmp_path)

    acct = json.loads(run("kms", "describe-key", "alias/aws/rds", "--json").stdout)["KeyMetadata"]["AWSAccountId"]
    alice = principals.user_arn(acct, "alice")
    (tmp_path / "p.json").write_text(ALLOW_DECRYPT)
    (tmp_path / "bad.json").write_text('{"Statement": {"Effect": "Allow"}}')
    assert "attached" in run("iam", "put-policy", alice, "use", "p.json").stdout.decode()
    assert json.loads(run("iam", "get-policy", alice, "use", "--json").stdout)["PolicyDocument"] == json.loads(ALLOW_DECRYPT)
    assert alice in run("iam", "list-policies").stdout.decode()
    listed = json.loads(run("iam", "list-policies", alice, "--json").stdout)["Policies"]
    assert listed == [{"PrincipalArn": alice, "PolicyName": "use"}]
    p = run("iam", "put-policy", alice, "bad", "bad.json", ok=False)
    assert b"MalformedPolicyDocument" in p.stderr and b"Statement" in p.stderr and p.returncode == 2
    p = run("iam", "delete-policy", alice, "use", "--principal", alice, ok=False)
    assert b"AccessDenied" in p.stderr and p.returncode == 5
    run("iam", "delete-policy", alice, "use")
    p = run("iam", "get-policy", alice, "use", ok=False)
    assert b"NoSuchEntity" in p.stderr
    p = run("iam", "list-policies", "--kms", "aws", ok=False)
    assert b"AWS IAM" in p.stderr
