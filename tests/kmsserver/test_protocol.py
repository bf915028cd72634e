"""The key server driven by boto3: every answer has AWS's shapes; the audit log records the network
caller; the wire protocol's failures carry AWS's error codes."""

from __future__ import annotations

import json
import urllib.request
import ssl

import pytest
from botocore.exceptions import ClientError

from volumed.kms import awsmodel

pytestmark = pytest.mark.timeout(120)


def _code(exc_info) -> str:
    return exc_info.value.response["Error"]["Code"]


def test_boto3_round_trip_with_aws_shapes(server, alice):
    kms = server.client(alice)
    key = kms.create_key(Description="server test")["KeyMetadata"]
    kms.create_alias(AliasName="alias/server-test", TargetKeyId=key["KeyId"])
    calls = [
        ("DescribeKey", kms.describe_key(KeyId="alias/server-test")),
        ("ListKeys", kms.list_keys()),
        ("ListAliases", kms.list_aliases()),
        ("Encrypt", kms.encrypt(KeyId=key["Arn"], Plaintext=b"secret", EncryptionContext={"v": "1"})),
        ("GenerateDataKey", kms.generate_data_key(KeyId=key["KeyId"], KeySpec="AES_256")),
        ("GenerateDataKeyWithoutPlaintext", kms.generate_data_key_without_plaintext(KeyId=key["KeyId"], KeySpec="AES_256")),
        ("GetKeyPolicy", kms.get_key_policy(KeyId=key["KeyId"], PolicyName="default")),
        ("GetKeyRotationStatus", kms.get_key_rotation_status(KeyId=key["KeyId"])),
    ]
    for op, resp in calls:
        awsmodel.validate_response(op, resp)
    blob = calls[3][1]["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=blob, EncryptionContext={"v": "1"})["Plaintext"] == b"secret"
    with pytest.raises(ClientError) as e:
        kms.decrypt(CiphertextBlob=blob, EncryptionContext={"v": "2"})
    assert _code(e) == "InvalidCiphertextException"
    with pytest.raises(kms.exceptions.NotFoundException):
        kms.describe_key(KeyId="alias/missing")
    assert key["Arn"].split(":")[4] == server.account
    paginator = kms.get_paginator("list_keys")
    assert sum(len(p["Keys"]) for p in paginator.paginate(PaginationConfig={"PageSize": 1})) >= 1


def test_audit_records_the_network_caller(server, alice):
    kms = server.client(alice)
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    resp = kms.encrypt(KeyId=key, Plaintext=b"x")
    request_id = resp["ResponseMetadata"]["RequestId"]
    with pytest.raises(ClientError):
        kms.disable_key(KeyId="1234abcd-12ab-34cd-56ef-1234567890ab")
    from volumed.kms.store.keystore import Keystore

    store = Keystore(str(server.keystore))
    try:
        records = [json.loads(r[0]) for r in store.conn.execute("SELECT record FROM audit ORDER BY seq")]
    finally:
        store.close()
    enc = next(r for r in records if r["requestID"] == request_id)
    assert enc["eventName"] == "Encrypt"
    assert enc["sourceIPAddress"] == "127.0.0.1"
    assert "Boto3" in enc["userAgent"] or "botocore" in enc["userAgent"]
    assert enc["userIdentity"]["accessKeyId"] == alice.id
    assert enc["userIdentity"]["arn"] == server.user("alice")
    denied = [r for r in records if r["eventName"] == "DisableKey"]
    assert denied and denied[-1]["errorCode"] == "NotFoundException"
    assert alice["SecretAccessKey"] not in json.dumps(records)


def _raw(server, creds, target: str, body: bytes, extra_headers=None, sign=True):
    """POST a hand-made (optionally SigV4-signed) request; returns (status, parsed JSON body)."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    headers = {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": target, **(extra_headers or {})}
    req = AWSRequest(method="POST", url=server.url + "/", data=body, headers=headers)
    if sign:
        SigV4Auth(Credentials(creds["AccessKeyId"], creds["SecretAccessKey"]), "kms", server.region).add_auth(req)
    prepared = req.prepare()
    ctx = ssl.create_default_context(cafile=server.cert)
    r = urllib.request.Request(prepared.url, data=body, headers=dict(prepared.headers), method="POST")
    try:
        with urllib.request.urlopen(r, context=ctx, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_malformed_json_is_a_serialization_exception(server, alice):
    status, body = _raw(server, alice, "TrentService.ListKeys", b"{not json")
    assert (status, body["__type"]) == (400, "SerializationException")
    status, body = _raw(server, alice, "TrentService.DescribeKey", json.dumps({"KeyId": 7}).encode())
    assert body["__type"] == "SerializationException"
    status, body = _raw(server, alice, "TrentService.Encrypt",
                        json.dumps({"KeyId": "alias/x", "Plaintext": "!!not base64"}).encode())
    assert body["__type"] == "SerializationException"


def test_unknown_operation_and_validation(server, alice):
    status, body = _raw(server, alice, "TrentService.MakeCoffee", b"{}")
    assert (status, body["__type"]) == (400, "UnknownOperationException")
    status, body = _raw(server, alice, "SomethingElse.ListKeys", b"{}")
    assert body["__type"] == "UnknownOperationException"
    status, body = _raw(server, alice, "TrentService.DescribeKey", b"{}")
    assert (status, body["__type"]) == (400, "ValidationException")
    status, body = _raw(server, alice, "TrentService.CreateKey", json.dumps({"KeySpec": "NOPE"}).encode())
    assert body["__type"] == "ValidationException"


def test_size_limits(server, alice):
    import http.client
    from urllib.parse import urlsplit

    # A body announced larger than the limit is refused before it is read.
    u = urlsplit(server.url)
    conn = http.client.HTTPSConnection(u.hostname, u.port, context=ssl.create_default_context(cafile=server.cert))
    conn.putrequest("POST", "/")
    conn.putheader("X-Amz-Target", "TrentService.ListKeys")
    conn.putheader("Content-Length", str(300 * 1024))
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413 and json.loads(resp.read())["__type"] == "ValidationException"
    conn.close()
    status, body = _raw(server, alice, "TrentService.ListKeys", b"{}", {"X-Padding": "a" * (20 * 1024)})
    assert status == 431 and body["__type"] == "ValidationException"


def test_rate_limit_answers_throttling(make_server):
    server = make_server("--rate-limit", "1", "--rate-burst", "3")
    from tests.kmsserver.conftest import admin_policy

    admin_policy(server, "alice")
    kms = server.client(server.access_key(server.user("alice")))
    codes = []
    for _ in range(8):
        try:
            kms.list_keys()
            codes.append("ok")
        except ClientError as exc:
            codes.append(exc.response["Error"]["Code"])
    assert codes[:3] == ["ok"] * 3 and "ThrottlingException" in codes
    # another principal has its own bucket
    bob = server.client(server.access_key(server.user("alice")))
    bob_arn = server.user("bob")
    admin_policy(server, "bob")
    bob = server.client(server.access_key(bob_arn))
    bob.list_keys()


def test_token_bucket_with_injected_clock():
    from volumed.clock import FakeClock
    from volumed.kms.server.ratelimit import RateLimiter

    clock = FakeClock(1000.0)
    lim = RateLimiter(2, 2, clock)
    assert [lim.allow("a") for _ in range(3)] == [True, True, False]
    assert lim.allow("b")
    clock.advance(0.5)
    assert lim.allow("a") and not lim.allow("a")
    clock.advance(10)
    assert [lim.allow("a") for _ in range(3)] == [True, True, False]
    assert RateLimiter(0, None, clock).allow("x")


def test_sts_get_caller_identity(server, alice):
    host = server.access_key(server.host("h1"))
    assert server.client(host, "sts").get_caller_identity()["Arn"] == server.host("h1")
    assert server.client(alice, "sts").get_caller_identity()["Account"] == server.account
