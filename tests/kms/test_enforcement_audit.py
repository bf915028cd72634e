"""Enforcement meets the audit log: every operation, allowed or refused, leaves exactly one record
with the right fields (caller, key, error, the service a call came through); the keystore seals
its log with a private signing key that never reaches the database; the grant and policy commands
of `volumed kms` refuse with one line."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys

import pytest

from volumed import kms as kms_pkg
from volumed.kms import audit, awsmodel, principals
from volumed.kms.store import rootkey

CTX = {"aws:rds:db-id": "db-ABC", "aws:ebs:id": "vol-1"}


def cli_runner(tmp_path, *group):
    """run(*argv, ok=True, **env): ``volumed <group> *argv`` in a subprocess on the keystore
    tmp_path/ks; asserts success, or (ok=False) a non-zero exit with exactly one 'volumed: ' line."""
    env = dict(os.environ, VOLUMED_KMS=str(tmp_path / "ks"))
    env.pop("VOLUMED_PRINCIPAL", None)
    env.pop("VOLUMED_VIA_SERVICE", None)

    def run(*argv, ok=True, **extra_env):
        p = subprocess.run([sys.executable, "-m", "volumed", *group, *argv], capture_output=True,
                           env=dict(env, **extra_env), cwd=tmp_path)
        if ok:
            assert p.returncode == 0, p.stderr.decode()
        else:
            lines = p.stderr.decode().strip().splitlines()
            assert p.returncode != 0 and len(lines) == 1 and lines[0].startswith("volumed: "), p.stderr.decode()
        return p
    return run


def records(kms) -> list[dict]:
    conn = sqlite3.connect(os.path.join(kms.keystore_path, "keystore.db"))
    try:
        return [json.loads(t) for (t,) in conn.execute("SELECT record FROM audit ORDER BY seq")]
    finally:
        conn.close()


def _calls(key, blob, grant_id):
    """(method, params) of every kind of call a principal can make on a key."""
    return [
        ("describe_key", dict(KeyId=key)), ("encrypt", dict(KeyId=key, Plaintext=b"x", EncryptionContext=CTX)),
        ("decrypt", dict(CiphertextBlob=blob, EncryptionContext=CTX)),
        ("generate_data_key", dict(KeyId=key, KeySpec="AES_256", EncryptionContext=CTX)),
        ("generate_data_key_without_plaintext", dict(KeyId=key, KeySpec="AES_256", EncryptionContext=CTX)),
        ("re_encrypt", dict(CiphertextBlob=blob, SourceEncryptionContext=CTX, DestinationKeyId=key,
                            DestinationEncryptionContext=CTX)),
        ("create_grant", dict(KeyId=key, GranteePrincipal="arn:aws:iam::111122223333:user/x", Operations=["Decrypt"])),
        ("list_grants", dict(KeyId=key)), ("revoke_grant", dict(KeyId=key, GrantId=grant_id)),
        ("retire_grant", dict(KeyId=key, GrantId=grant_id)),
        ("get_key_policy", dict(KeyId=key, PolicyName="default")),
        ("put_key_policy", dict(KeyId=key, PolicyName="default", Policy=json.dumps(
            {"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*"}]}))),
        ("list_key_policies", dict(KeyId=key)), ("disable_key", dict(KeyId=key)), ("enable_key", dict(KeyId=key)),
        ("update_key_description", dict(KeyId=key, Description="d")),
        ("enable_key_rotation", dict(KeyId=key)), ("get_key_rotation_status", dict(KeyId=key)),
        ("rotate_key_on_demand", dict(KeyId=key)), ("list_key_rotations", dict(KeyId=key)),
        ("create_alias", dict(AliasName="alias/x", TargetKeyId=key)),
        ("schedule_key_deletion", dict(KeyId=key, PendingWindowInDays=7)),
        ("cancel_key_deletion", dict(KeyId=key)),
        ("create_key", {}), ("list_keys", {}), ("list_aliases", {}),
        ("list_retirable_grants", dict(RetiringPrincipal="arn:aws:iam::111122223333:user/x")),
    ]


def test_every_refused_operation_leaves_one_record(kms, key):
    blob = kms.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext=CTX)["CiphertextBlob"]
    grant_id = kms.create_grant(KeyId=key, GranteePrincipal=kms.principal, Operations=["Decrypt"])["GrantId"]
    arn = kms.describe_key(KeyId=key)["KeyMetadata"]["Arn"]
    alice_arn = principals.user_arn(kms.account_id(), "alice")
    alice = kms.with_identity(principal=alice_arn)
    before = kms.change_counter()
    for method, params in _calls(key, blob, grant_id):
        n = len(records(kms))
        with pytest.raises(alice.exceptions.AccessDeniedException):
            getattr(alice, method)(**params)
        new = records(kms)[n:]
        assert len(new) == 1, method
        [rec] = new
        assert rec["errorCode"] == "AccessDeniedException" and rec["errorMessage"].startswith(
            f"User: {alice_arn} is not authorized to perform: kms:"), method
        assert rec["userIdentity"]["arn"] == alice_arn and rec["userIdentity"]["type"] == "IAMUser"
        assert rec["eventName"] == awsmodel.operation_name(method) and rec["sourceIPAddress"] == "127.0.0.1"
        if "KeyId" in params or "CiphertextBlob" in params or "TargetKeyId" in params:
            assert rec["resources"] == [{"accountId": kms.account_id(), "type": "AWS::KMS::Key", "ARN": arn}], method
        assert not {"plaintext", "ciphertextBlob"} & set(rec.get("requestParameters") or {}), method
    assert kms.change_counter() == before  # nothing changed
    assert kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Enabled"


def test_every_allowed_operation_leaves_one_record(kms, key):
    blob = kms.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext=CTX)["CiphertextBlob"]
    grant_id = kms.create_grant(KeyId=key, GranteePrincipal=kms.principal, Operations=["Decrypt"])["GrantId"]
    calls = [c for c in _calls(key, blob, grant_id) if c[0] not in ("retire_grant", "put_key_policy")]
    for method, params in calls:
        n = len(records(kms))
        getattr(kms, method)(**params)
        [rec] = records(kms)[n:]
        assert "errorCode" not in rec and rec["userIdentity"]["arn"] == kms.principal, method
        assert rec["eventName"] == awsmodel.operation_name(method)
    # The two left out above need their own set-up: a grant still there to retire (revoke_grant
    # took the first), and a policy that keeps the caller in (the lockout check refuses others).
    kms.enable_key(KeyId=key)  # cancel_key_deletion above left it Disabled
    grant_id = kms.create_grant(KeyId=key, GranteePrincipal=kms.principal, RetiringPrincipal=kms.principal,
                                Operations=["Decrypt"])["GrantId"]
    policy = kms.get_key_policy(KeyId=key, PolicyName="default")["Policy"]
    for method, params in (("retire_grant", dict(KeyId=key, GrantId=grant_id)),
                           ("put_key_policy", dict(KeyId=key, PolicyName="default", Policy=policy))):
        n = len(records(kms))
        getattr(kms, method)(**params)
        [rec] = records(kms)[n:]
        assert "errorCode" not in rec and rec["eventName"] == awsmodel.operation_name(method), method


def test_calls_via_rds_and_through_a_grant_are_recorded_as_such(kms, key):
    acct, rds = kms.account_id(), principals.rds_via(kms.region())
    user = kms.with_identity(via_service=rds)
    host_arn = principals.host_arn(acct, "host1")
    blob = user.generate_data_key_without_plaintext(KeyId=key, KeySpec="AES_256", EncryptionContext=CTX)["CiphertextBlob"]
    g = user.create_grant(KeyId=key, GranteePrincipal=host_arn, RetiringPrincipal=host_arn,
                          Operations=["Decrypt"], Constraints={"EncryptionContextSubset": CTX})
    host = kms.with_identity(principal=host_arn, via_service=None)
    host.decrypt(CiphertextBlob=blob, EncryptionContext=CTX, GrantTokens=[g["GrantToken"]])
    with pytest.raises(host.exceptions.AccessDeniedException):
        host.decrypt(CiphertextBlob=blob, EncryptionContext={"aws:ebs:id": "vol-2"})
    gen, grant, dec, refused = records(kms)[-4:]
    for rec in (gen, grant):
        assert rec["userIdentity"]["invokedBy"] == "rds.amazonaws.com"
        assert rec["sourceIPAddress"] == "rds.amazonaws.com" and rec["userAgent"] == "rds.amazonaws.com"
        assert rec["userIdentity"]["arn"] == kms.principal
    assert grant["requestParameters"]["granteePrincipal"] == host_arn
    assert grant["requestParameters"]["constraints"] == {"encryptionContextSubset": CTX}
    assert "grantToken" not in json.dumps(grant.get("responseElements") or {}).replace("grantId", "")
    assert dec["userIdentity"]["type"] == "AssumedRole" and dec["userIdentity"]["arn"] == host_arn
    assert "invokedBy" not in dec["userIdentity"] and dec["sourceIPAddress"] == "127.0.0.1"
    assert dec["requestParameters"]["encryptionContext"] == CTX
    assert g["GrantToken"] not in json.dumps(records(kms))
    assert refused["errorCode"] == "AccessDeniedException"
    assert refused["requestParameters"]["encryptionContext"] == {"aws:ebs:id": "vol-2"}


def test_signing_key_private_and_never_in_the_database(keystore, clock):
    client = kms_pkg.connect(keystore, clock=clock)
    key = client.create_key()["KeyMetadata"]["KeyId"]
    for _ in range(audit.DEFAULT_SEAL_EVERY + 1):  # enough records for a sealed digest
        client.describe_key(KeyId=key)
    path = os.path.join(keystore, audit.SIGNING_KEY_FILE)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    conn = sqlite3.connect(os.path.join(keystore, "keystore.db"))
    assert conn.execute("SELECT COUNT(*) FROM audit_digest").fetchone()[0] >= 1
    assert audit.verify(conn).ok
    conn.close()
    client.close()
    from cryptography.hazmat.primitives import serialization

    private = audit.load_signing_key(path).private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    pem = open(path, "rb").read()
    for name in os.listdir(keystore):
        if name.startswith("keystore.db"):
            data = open(os.path.join(keystore, name), "rb").read()
            assert private not in data and pem not in data and private.hex().encode() not in data
    os.chmod(path, 0o644)
    with pytest.raises(rootkey.KeystoreError, match="chmod 600"):
        kms_pkg.connect(keystore, clock=clock)


@pytest.mark.timeout(120)
def test_grant_and_policy_commands_with_enforcement(tmp_path):
    run = cli_runner(tmp_path, "kms")

    md = json.loads(run("create-key", "--json").stdout)["KeyMetadata"]
    key, acct = md["KeyId"], md["AWSAccountId"]
    alice, host = principals.user_arn(acct, "alice"), principals.host_arn(acct, "h")
    for argv in (["create-grant", key, "--grantee", host, "--operations", "Decrypt"],
                 ["list-grants", key], ["list-retirable-grants", host], ["get-key-policy", key],
                 ["put-key-policy", key, "p.json"]):
        (tmp_path / "p.json").write_text(json.dumps({"Statement": [
            {"Effect": "Allow", "Principal": {"AWS": alice}, "Action": "kms:*", "Resource": "*"}]}))
        p = run(*argv, ok=False, VOLUMED_PRINCIPAL=alice)
        assert b"AccessDeniedException" in p.stderr and p.returncode == 5, argv
    g = json.loads(run("create-grant", key, "--grantee", host, "--retiring-principal", host,
                       "--operations", "Decrypt", "--via-service", f"rds.{md['Arn'].split(':')[3]}.amazonaws.com",
                       "--json").stdout)
    assert g["GrantId"] in run("list-grants", key).stdout.decode()
    p = run("revoke-grant", key, g["GrantId"], "--principal", host, ok=False)
    assert b"AccessDeniedException" in p.stderr
    p = run("retire-grant", key, g["GrantId"], "--principal", alice, ok=False)
    assert b"AccessDeniedException" in p.stderr
    run("retire-grant", key, g["GrantId"], "--principal", host)
    p = run("put-key-policy", key, "p.json", ok=False)  # would lock the administrator out
    assert b"MalformedPolicyDocumentException" in p.stderr and b"update the key policy" in p.stderr
    assert alice not in run("get-key-policy", key).stdout.decode()
    refused = json.loads(run("audit", "--errors", "--principal", alice, "--json").stdout)["Records"]
    assert len(refused) == 6 and {r["errorCode"] for r in refused} == {"AccessDeniedException"}
    assert b"OK" in run("audit", "verify").stdout
