"""SigV4 on the server: one test per authentication failure, each answering AWS's error code; the
principal comes from the access key only; a host without a grant cannot use a key; kms:ViaService
only through a service credential."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from unittest import mock

import pytest
from botocore.exceptions import ClientError

from tests.kmsserver.conftest import ROOT, Creds, admin_policy

pytestmark = pytest.mark.timeout(120)


def _code(fn, *a, **kw) -> tuple[str, str]:
    with pytest.raises(ClientError) as info:
        fn(*a, **kw)
    err = info.value.response["Error"]
    return err["Code"], err.get("Message", "")


def test_bad_signature(server, alice):
    wrong = Creds(alice, SecretAccessKey=alice["SecretAccessKey"][:-1] + ("A" if alice["SecretAccessKey"][-1] != "A" else "B"))
    code, msg = _code(server.client(wrong).list_keys)
    assert code == "InvalidSignatureException" and "signature we calculated does not match" in msg


def test_tampered_body_fails_the_signature(server, alice):
    """The signature covers the body: a body altered after signing is refused and changes nothing."""
    import ssl
    import urllib.request

    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    kms = server.client(alice)
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    signed = json.dumps({"KeyId": key, "Description": "a"}).encode()
    req = AWSRequest(method="POST", url=server.url + "/", data=signed, headers={
        "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "TrentService.UpdateKeyDescription"})
    SigV4Auth(Credentials(alice.id, alice["SecretAccessKey"]), "kms", server.region).add_auth(req)
    sent = signed.replace(b'"a"', b'"b"')
    r = urllib.request.Request(server.url + "/", data=sent, headers=dict(req.headers), method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(r, context=ssl.create_default_context(cafile=server.cert), timeout=10)
    assert json.loads(info.value.read())["__type"] == "InvalidSignatureException"
    assert kms.describe_key(KeyId=key)["KeyMetadata"]["Description"] == ""


def test_wrong_region(server, alice):
    code, msg = _code(server.client(alice, region="eu-west-1").list_keys)
    assert code == "InvalidSignatureException" and "valid region" in msg


def test_expired_date(server, alice):
    past = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(minutes=6)
    kms = server.client(alice)
    with mock.patch("botocore.auth.get_current_datetime", return_value=past):
        code, msg = _code(kms.list_keys)
    assert code == "InvalidSignatureException" and msg.startswith("Signature expired")
    future = past + dt.timedelta(minutes=12)
    with mock.patch("botocore.auth.get_current_datetime", return_value=future):
        code, msg = _code(kms.list_keys)
    assert code == "InvalidSignatureException" and "not yet current" in msg
    within = past + dt.timedelta(minutes=2)  # 4 minutes of skew is allowed
    with mock.patch("botocore.auth.get_current_datetime", return_value=within):
        kms.list_keys()


def test_unknown_access_key_id(server, alice):
    code, msg = _code(server.client(Creds(alice, AccessKeyId="AKIAAAAAAAAAAAAAAAAA")).list_keys)
    assert code == "UnrecognizedClientException" and "security token" in msg


def test_deleted_access_key(server, alice):
    second = server.access_key(server.user("alice"))
    kms = server.client(second)
    kms.list_keys()
    subprocess.run([sys.executable, "-m", "volumed", "iam", "delete-access-key", second.id, "--kms",
                    str(server.keystore)], check=True, capture_output=True, env=server.env(), cwd=ROOT)
    code, _ = _code(kms.list_keys)
    assert code == "UnrecognizedClientException"


def test_unsigned_and_incomplete_requests(server, alice):
    from tests.kmsserver.test_protocol import _raw

    status, body = _raw(server, alice, "TrentService.ListKeys", b"{}", sign=False)
    assert (status, body["__type"]) == (400, "MissingAuthenticationTokenException")
    status, body = _raw(server, alice, "TrentService.ListKeys", b"{}", sign=False,
                        extra_headers={"Authorization": "AWS4-HMAC-SHA256 Credential=x"})
    assert body["__type"] == "IncompleteSignatureException"
    status, body = _raw(server, alice, "TrentService.ListKeys", b"{}",
                        extra_headers={"X-Amz-Security-Token": "forged"})
    assert body["__type"] == "UnrecognizedClientException"


def test_the_principal_comes_from_the_access_key(server, alice):
    """A request cannot name its principal: headers that would are signed but ignored or refused."""
    mallory = server.access_key(server.user("mallory"))
    kms = server.client(mallory)
    kms.meta.events.register("before-sign.kms.*", lambda request, **_: request.headers.__setitem__(
        "x-volumed-on-behalf-of", server.user("alice")))
    code, msg = _code(kms.create_key)
    assert code == "AccessDeniedException" and "not a service credential" in msg
    code, _ = _code(server.client(mallory).create_key)  # mallory itself has no permissions
    assert code == "AccessDeniedException"


def test_second_host_cannot_use_a_key_without_a_grant(server, alice):
    """Host B knows every key id, ciphertext, grant id and grant token of host A's volume; none of
    it lets B use the key."""
    user = server.client(alice)
    host_a = server.access_key(server.host("host-a"))
    host_b = server.access_key(server.host("host-b"))
    key = user.create_key()["KeyMetadata"]["Arn"]
    ctx = {"volume": "vol-1"}
    blob = user.generate_data_key_without_plaintext(KeyId=key, KeySpec="AES_256",
                                                    EncryptionContext=ctx)["CiphertextBlob"]
    grant = user.create_grant(KeyId=key, GranteePrincipal=server.host("host-a"),
                              Operations=["Decrypt", "GenerateDataKeyWithoutPlaintext"],
                              Constraints={"EncryptionContextSubset": ctx})
    a = server.client(host_a)
    assert len(a.decrypt(CiphertextBlob=blob, EncryptionContext=ctx, GrantTokens=[grant["GrantToken"]])["Plaintext"]) == 32
    b = server.client(host_b)
    every_key = [k["KeyArn"] for k in user.list_keys()["Keys"]]
    assert key in every_key
    for k in every_key:
        for call in (lambda: b.decrypt(CiphertextBlob=blob, EncryptionContext=ctx, KeyId=k,
                                       GrantTokens=[grant["GrantToken"]]),
                     lambda: b.generate_data_key_without_plaintext(KeyId=k, KeySpec="AES_256", EncryptionContext=ctx,
                                                                   GrantTokens=[grant["GrantToken"]]),
                     lambda: b.create_grant(KeyId=k, GranteePrincipal=server.host("host-b"), Operations=["Decrypt"]),
                     lambda: b.describe_key(KeyId=k)):
            code, _ = _code(call)
            assert code in ("AccessDeniedException", "IncorrectKeyException"), code
    code, _ = _code(b.retire_grant, KeyId=key, GrantId=grant["GrantId"])
    assert code == "AccessDeniedException"
    # A's grant still works; revoking it cuts A off too
    user.revoke_grant(KeyId=key, GrantId=grant["GrantId"])
    code, _ = _code(a.decrypt, CiphertextBlob=blob, EncryptionContext=ctx)
    assert code == "AccessDeniedException"


def test_via_service_only_through_a_service_credential(server, alice):
    """kms:ViaService is set only for calls signed with a credential the administrator marked as
    a service's (--service rds.amazonaws.com), on behalf of the user named in a signed header."""
    user = server.client(alice)
    key = user.create_key()["KeyMetadata"]
    acct = server.account
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{acct}:root"}, "Action": "kms:*", "Resource": "*"},
        {"Effect": "Allow", "Principal": {"AWS": server.user("carol")}, "Action": "kms:Encrypt", "Resource": "*",
         "Condition": {"StringEquals": {"kms:ViaService": f"rds.{server.region}.amazonaws.com"}}}]}
    user.put_key_policy(KeyId=key["KeyId"], PolicyName="default", Policy=json.dumps(policy))
    carol = server.access_key(server.user("carol"))
    code, _ = _code(server.client(carol).encrypt, KeyId=key["KeyId"], Plaintext=b"x")
    assert code == "AccessDeniedException"  # carol directly: no ViaService

    def on_behalf(client, arn):
        client.meta.events.register("before-sign.kms.*", lambda request, **_: request.headers.__setitem__(
            "x-volumed-on-behalf-of", arn))
        return client
    rds = server.access_key(f"arn:aws:iam::{acct}:role/rds-service", service="rds.amazonaws.com")
    on_behalf(server.client(rds), server.user("carol")).encrypt(KeyId=key["KeyId"], Plaintext=b"x")
    host = server.access_key(server.host("h1"))
    code, msg = _code(on_behalf(server.client(host), server.user("carol")).encrypt, KeyId=key["KeyId"], Plaintext=b"x")
    assert code == "AccessDeniedException" and "not a service credential" in msg
    # the audit record shows carol, invoked by RDS, with the service credential's key id
    from volumed.kms.store.keystore import Keystore

    store = Keystore(str(server.keystore))
    try:
        rec = [json.loads(r[0]) for r in store.conn.execute("SELECT record FROM audit ORDER BY seq")
               if '"Encrypt"' in r[0] and "errorCode" not in r[0]][-1]
    finally:
        store.close()
    assert rec["userIdentity"]["arn"] == server.user("carol")
    assert rec["userIdentity"]["invokedBy"] == "rds.amazonaws.com" and "errorCode" not in rec
    assert rec["userIdentity"]["accessKeyId"] == rds.id


def test_access_key_commands(server):
    run = lambda *a, check=True: subprocess.run([sys.executable, "-m", "volumed", "iam", *a, "--kms", str(server.keystore)],
                                                capture_output=True, text=True, env=server.env(), cwd=ROOT, check=check)
    p = run("create-access-key", "not-an-arn", check=False)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "not a principal ARN" in p.stderr
    p = run("create-access-key", "arn:aws:iam::000000000000:user/x", check=False)
    assert p.returncode == 2 and "not in this keystore's account" in p.stderr
    out = run("create-access-key", server.user("dave")).stdout
    akid = out.split()[1]
    assert akid.startswith("AKIA") and "SecretAccessKey" in out
    listing = run("list-access-keys").stdout
    assert akid in listing and server.user("dave") in listing and out.split()[3] not in listing
    p = run("delete-access-key", "AKIANOPE", check=False)
    assert p.returncode == 2 and "no access key" in p.stderr
    run("delete-access-key", akid)
    assert akid not in run("list-access-keys").stdout
    # the secret is stored wrapped: not in the database file
    secret = out.split()[3].encode()
    db = (server.keystore / "keystore.db").read_bytes() + b"".join(
        p.read_bytes() for p in server.keystore.glob("keystore.db-wal"))
    assert secret not in db
