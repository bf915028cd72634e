"""Audit records: CloudTrail's KMS record shape, principals by ARN shape, calls through a service,
failures, secrets scrubbed, written inside the caller's transaction, a failed write fails the call,
the chain and the sealing schedule."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import stat

import pytest

from tests.kms.conftest_b import (ACCT, ALICE, HOST, KEY_ARN, RDS, REGION, call, fill, open_db)
from volumed.kms import audit
from volumed.kms.audit import log as audit_log


@pytest.fixture
def db(tmp_path):
    conn, clock, key_path = open_db(str(tmp_path))
    yield conn, clock, key_path
    conn.close()


def stored(conn) -> list[dict]:
    return [json.loads(t) for (t,) in conn.execute("SELECT record FROM audit ORDER BY seq")]


def test_decrypt_record_has_cloudtrail_shape(db):
    conn, clock, _ = db
    rec = call(conn, clock, 7, params={"KeyId": KEY_ARN, "EncryptionContext": {"aws:ebs:id": "vol-7"},
                                       "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"})
    assert stored(conn) == [rec]
    assert rec["eventVersion"] == "1.08"
    assert rec["eventSource"] == "kms.amazonaws.com"
    assert rec["eventName"] == "Decrypt"
    assert rec["eventTime"] == "2026-01-05T12:00:00Z"
    assert rec["awsRegion"] == REGION
    assert rec["eventType"] == "AwsApiCall"
    assert rec["eventCategory"] == "Management"
    assert rec["managementEvent"] is True
    assert rec["readOnly"] is True
    assert rec["recipientAccountId"] == ACCT
    assert rec["sourceIPAddress"] == "127.0.0.1"
    assert rec["userAgent"] == "volumed"
    assert rec["requestParameters"] == {"keyId": KEY_ARN, "encryptionContext": {"aws:ebs:id": "vol-7"},
                                        "encryptionAlgorithm": "SYMMETRIC_DEFAULT"}
    assert rec["responseElements"] is None
    assert rec["resources"] == [{"accountId": ACCT, "type": "AWS::KMS::Key", "ARN": KEY_ARN}]
    assert "errorCode" not in rec and "errorMessage" not in rec
    assert rec["requestID"] != rec["eventID"]
    assert rec["userIdentity"]["type"] == "IAMUser"
    assert rec["userIdentity"]["arn"] == ALICE
    assert rec["userIdentity"]["accountId"] == ACCT
    assert rec["userIdentity"]["userName"] == "alice"
    assert rec["userIdentity"]["principalId"].startswith("AIDA")


def test_assumed_role_and_root_identities():
    host = audit.user_identity(HOST, None)
    assert host["type"] == "AssumedRole"
    assert host["principalId"].startswith("AROA") and host["principalId"].endswith(":node1")
    assert host["sessionContext"]["sessionIssuer"] == {
        "type": "Role", "principalId": host["principalId"].split(":")[0],
        "arn": f"arn:aws:iam::{ACCT}:role/volumed-host", "accountId": ACCT, "userName": "volumed-host"}
    root = audit.user_identity(f"arn:aws:iam::{ACCT}:root", None)
    assert root == {"type": "Root", "principalId": ACCT, "arn": f"arn:aws:iam::{ACCT}:root", "accountId": ACCT}
    assert audit.user_identity("rds.amazonaws.com", None)["type"] == "AWSService"


def test_call_through_a_service_shows_the_service_as_cloudtrail_does(db):
    conn, clock, _ = db
    rec = call(conn, clock, 1, principal=HOST, via=RDS)
    assert rec["sourceIPAddress"] == "rds.amazonaws.com"
    assert rec["userAgent"] == "rds.amazonaws.com"
    assert rec["userIdentity"]["invokedBy"] == "rds.amazonaws.com"
    assert audit.service_host("custom.example") == "custom.example"


def test_denied_call_records_the_error(db):
    conn, clock, _ = db
    msg = f"User: {HOST} is not authorized to perform: kms:Decrypt on resource: {KEY_ARN}"
    rec = call(conn, clock, 1, principal=HOST, error=("AccessDeniedException", msg))
    assert rec["errorCode"] == "AccessDeniedException"
    assert rec["errorMessage"] == msg
    assert stored(conn)[0]["errorCode"] == "AccessDeniedException"


def test_create_grant_record_fields(db):
    conn, clock, _ = db
    params = {"KeyId": KEY_ARN, "GranteePrincipal": HOST, "Operations": ["Decrypt"],
              "Constraints": {"EncryptionContextSubset": {"aws:ebs:id": "vol-1"}},
              "GrantTokens": ["secret-token"], "Name": "attach-vol-1"}
    rec = call(conn, clock, event="CreateGrant", params=params,
               response={"GrantId": "g" * 64, "GrantToken": "another-secret-token"})
    assert rec["requestParameters"] == {
        "keyId": KEY_ARN, "granteePrincipal": HOST, "operations": ["Decrypt"], "name": "attach-vol-1",
        "constraints": {"encryptionContextSubset": {"aws:ebs:id": "vol-1"}}}
    assert rec["responseElements"] == {"grantId": "g" * 64}
    assert rec["readOnly"] is False


def test_secrets_never_reach_the_log(db):
    conn, clock, _ = db
    secret = bytes(range(32))
    wrapped = b"\xaa" * 80
    params = {"KeyId": KEY_ARN, "Plaintext": secret, "CiphertextBlob": wrapped,
              "SourceCiphertextBlob": wrapped, "NumberOfBytes": 64,
              "Nested": {"plaintext": base64.b64encode(secret).decode(), "keyMaterial": "KM-SECRET",
                         "blob": bytearray(secret), "ok": 1},
              "List": [secret, "fine"], "ImportToken": "TOK-SECRET", "PrivateKeyPlaintext": "PK-SECRET",
              "EncryptionContext": {"AWS:RDS:DB-ID": "db-1", "Tag": "x"}}
    response = {"Plaintext": secret, "CiphertextBlob": wrapped, "KeyId": KEY_ARN,
                "CiphertextForRecipient": wrapped}
    rec = call(conn, clock, event="GenerateDataKey", params=params, response=response)
    text = conn.execute("SELECT record FROM audit").fetchone()[0]
    for form in (base64.b64encode(secret).decode(), secret.hex(), base64.b64encode(wrapped).decode(),
                 wrapped.hex(), "SECRET"):
        assert form not in text
    assert rec["requestParameters"] == {"keyId": KEY_ARN, "numberOfBytes": 64, "nested": {"ok": 1},
                                        "list": ["fine"],
                                        "encryptionContext": {"AWS:RDS:DB-ID": "db-1", "Tag": "x"}}
    assert rec["responseElements"] == {"keyId": KEY_ARN}


def test_record_is_written_inside_the_callers_transaction(db):
    conn, clock, _ = db
    fill(conn, clock, 4)  # one short of a seal
    conn.execute("BEGIN IMMEDIATE")
    audit.record_call(conn, clock=clock, account_id=ACCT, region=REGION, event_name="Encrypt",
                      principal=ALICE, via_service=None, request_parameters={"KeyId": KEY_ARN},
                      response_elements=None, error_code=None, error_message=None, key_arn=KEY_ARN,
                      read_only=False)
    assert conn.in_transaction  # record_call did not commit
    assert conn.execute("SELECT COUNT(*) FROM audit_digest").fetchone()[0] == 1  # sealed inside it
    conn.execute("ROLLBACK")
    assert conn.execute("SELECT COUNT(*) FROM audit").fetchone()[0] == 4
    assert conn.execute("SELECT COUNT(*) FROM audit_digest").fetchone()[0] == 0
    assert audit.verify(conn).ok


def test_a_record_that_cannot_be_written_fails_the_call(db):
    conn, clock, _ = db
    conn.execute("CREATE TRIGGER full BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    with pytest.raises(sqlite3.DatabaseError, match="disk full"):
        call(conn, clock, 1)
    assert conn.execute("SELECT COUNT(*) FROM audit").fetchone()[0] == 0


def test_a_missing_signing_key_fails_the_call_at_seal_time(db):
    conn, clock, key_path = db
    fill(conn, clock, 4)
    os.unlink(key_path)
    audit_log._KEY_CACHE.clear()
    with pytest.raises(audit.AuditError, match="cannot read the audit signing key"):
        call(conn, clock, 5)
    assert conn.execute("SELECT COUNT(*) FROM audit").fetchone()[0] == 4


def test_schema_needs_no_key_and_logging_works_unconfigured(tmp_path):
    conn, clock, key_path = open_db(str(tmp_path), seal_every=None)
    audit.ensure_schema(conn)  # idempotent
    fill(conn, clock, 3)
    assert not os.path.exists(key_path)
    report = audit.verify(conn)
    assert report.ok and report.unsealed == 3
    assert any("not configured" in w for w in report.warnings)
    with pytest.raises(audit.AuditError, match="not configured"):
        audit.seal(conn, clock)


def test_schema_upgrades_the_stub_table(tmp_path):
    conn = sqlite3.connect(str(tmp_path / "old.db"), isolation_level=None)
    conn.execute("CREATE TABLE audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, record TEXT NOT NULL)")
    audit.ensure_schema(conn)
    cols = {r[1] for r in conn.execute("PRAGMA table_info(audit)")}
    assert {"prev_hash", "hash", "appended"} <= cols


def test_signing_key_file_is_private_and_configure_is_idempotent(db):
    conn, _, key_path = db
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    fp = audit.configure(conn, key_path, seal_every=5)
    assert fp == audit.fingerprint(audit.load_signing_key(key_path).public_key())
    with pytest.raises(FileExistsError):
        audit.create_signing_key(key_path)


def test_records_are_chained(db):
    conn, clock, _ = db
    fill(conn, clock, 3)
    rows = conn.execute("SELECT record, prev_hash, hash FROM audit ORDER BY seq").fetchall()
    assert rows[0][1] == audit.GENESIS
    for (text, prev, h), nxt in zip(rows, rows[1:] + [None]):
        assert h == audit.chain_hash(prev, text)
        if nxt:
            assert nxt[1] == h


def test_sealed_every_n_records(db):
    conn, clock, _ = db
    fill(conn, clock, 12)
    digests = [json.loads(b) for (b,) in conn.execute("SELECT body FROM audit_digest ORDER BY dseq")]
    assert [(d["firstSeq"], d["lastSeq"]) for d in digests] == [(1, 5), (6, 10)]
    assert digests[1]["previousDigestHash"] == conn.execute(
        "SELECT hash FROM audit_digest WHERE dseq = 1").fetchone()[0]
    report = audit.verify(conn)
    assert report.ok and report.sealed_through == 10 and report.unsealed == 2


def test_sealed_at_least_hourly_by_the_injected_clock(tmp_path):
    conn, clock, _ = open_db(str(tmp_path), seal_every=1000, seal_interval=3600)
    call(conn, clock, 1)
    clock.advance(1800)
    call(conn, clock, 2)
    assert conn.execute("SELECT COUNT(*) FROM audit_digest").fetchone()[0] == 0
    clock.advance(1800)
    call(conn, clock, 3)
    body = json.loads(conn.execute("SELECT body FROM audit_digest").fetchone()[0])
    assert (body["firstSeq"], body["lastSeq"]) == (1, 3)


def test_seal_on_demand_and_latest_anchor(db):
    conn, clock, _ = db
    assert audit.latest_anchor(conn) is None
    fill(conn, clock, 2)
    conn.execute("BEGIN IMMEDIATE")
    body = audit.seal(conn, clock)
    conn.execute("COMMIT")
    assert (body["firstSeq"], body["lastSeq"]) == (1, 2)
    anchor = audit.latest_anchor(conn)
    assert anchor == conn.execute("SELECT hash FROM audit_digest").fetchone()[0]
    assert audit.seal(conn, clock) is None  # nothing left to seal
    report = audit.verify(conn, anchor=anchor)
    assert report.ok and report.anchor_found and report.latest_anchor == anchor
