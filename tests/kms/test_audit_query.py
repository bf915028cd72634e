"""Listing and filtering the audit log, its human-readable form, and the `volumed kms audit`
commands on a real keystore database file: "which db and which volume used this key, and who was
refused"."""

from __future__ import annotations

import argparse
import datetime as dt
import json

import pytest

from tests.kms.conftest_b import (ALICE, HOST, KEY_ARN, KEY_ID, OTHER_KEY_ARN, RDS, START, call,
                                  open_db)
from volumed.cli import audit_cmd
from volumed.errors import UsageError
from volumed.kms import audit

DENIED = ("AccessDeniedException", f"User: {HOST} is not authorized to perform: kms:Decrypt")


@pytest.fixture
def log(tmp_path):
    """A keystore directory whose log holds a small story of two volumes and a refusal."""
    conn, clock, _ = open_db(str(tmp_path), seal_every=4)
    call(conn, clock, 1, event="GenerateDataKeyWithoutPlaintext", principal=ALICE)  # 12:00:00
    call(conn, clock, 1, event="CreateGrant", principal=ALICE,
         params={"KeyId": KEY_ARN, "GranteePrincipal": HOST, "Operations": ["Decrypt"],
                 "Constraints": {"EncryptionContextSubset": {"aws:ebs:id": "vol-1"}}},
         response={"GrantId": "g1"})
    call(conn, clock, 1, event="Decrypt", principal=HOST, via=RDS)  # 12:00:02
    clock.advance(3600)
    call(conn, clock, 2, event="Decrypt", principal=HOST, error=DENIED)  # 13:00:03
    call(conn, clock, 2, event="Decrypt", principal=HOST, key_arn=OTHER_KEY_ARN)
    call(conn, clock, 0, event="DescribeKey", principal=ALICE, params={"KeyId": KEY_ID})
    yield conn, str(tmp_path)
    conn.close()


def events(records):
    return [r["eventName"] for r in records]


def test_no_filter_lists_everything_in_order(log):
    conn, _ = log
    assert events(audit.query(conn)) == ["GenerateDataKeyWithoutPlaintext", "CreateGrant", "Decrypt",
                                         "Decrypt", "Decrypt", "DescribeKey"]


def test_filters(log):
    conn, _ = log
    assert len(audit.query(conn, key=KEY_ARN)) == 5
    assert len(audit.query(conn, key=KEY_ID)) == 5
    assert len(audit.query(conn, key=OTHER_KEY_ARN.rsplit("/", 1)[1])) == 1
    assert len(audit.query(conn, event_name="decrypt")) == 3
    assert events(audit.query(conn, principal=ALICE)) == ["GenerateDataKeyWithoutPlaintext", "CreateGrant",
                                                          "DescribeKey"]
    assert len(audit.query(conn, principal="arn:aws:iam::111122223333:role/volumed-host")) == 3
    assert len(audit.query(conn, principal="*:user/alice")) == 3
    errors = audit.query(conn, errors_only=True)
    assert [(r["eventName"], r["userIdentity"]["arn"], r["errorCode"]) for r in errors] == [
        ("Decrypt", HOST, "AccessDeniedException")]
    assert audit.query(conn, limit=2) == audit.query(conn)[-2:]


def test_context_filters_answer_which_db_and_volume(log):
    conn, _ = log
    vol1 = audit.query(conn, context_key="aws:ebs:id", context_value="vol-1")
    assert events(vol1) == ["GenerateDataKeyWithoutPlaintext", "CreateGrant", "Decrypt"]  # grant constraint counts
    assert len(audit.query(conn, context_key="AWS:EBS:ID", context_value="vol-1")) == 3  # key any case
    assert audit.query(conn, context_key="aws:ebs:id", context_value="VOL-1") == []  # value exact
    assert len(audit.query(conn, context_key="aws:rds:db-id")) == 4
    assert len(audit.query(conn, context_value="db-2")) == 2


def test_time_filters(log):
    conn, _ = log
    hour = START + dt.timedelta(hours=1)
    assert len(audit.query(conn, since=hour)) == 3
    assert len(audit.query(conn, until=hour)) == 3
    assert len(audit.query(conn, since="2026-01-05T13:00:00Z", until=hour.timestamp() + 3)) == 1
    with pytest.raises(ValueError, match="not ISO 8601"):
        audit.query(conn, since="yesterday")


def test_human_readable_lines(log):
    conn, _ = log
    lines = audit.format_records(audit.query(conn)).splitlines()
    assert len(lines) == 6
    assert lines[2].startswith("2026-01-05T12:00:02Z  Decrypt")
    assert "assumed-role/volumed-host/node1 via rds.amazonaws.com" in lines[2]
    assert "aws:ebs:id=vol-1" in lines[2] and "aws:rds:db-id=db-1" in lines[2]
    assert f"key {KEY_ID}" in lines[2]
    assert "AccessDeniedException" in lines[3]
    assert "OK" in lines[0]


# ------------------------------------------------------------------------------------------------
# The command line


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="volumed kms")
    audit_cmd.register_audit(parser.add_subparsers(dest="kms_command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_lists_with_filters(log, capsys):
    _, keystore = log
    assert run(["audit", "--kms", keystore, "--context", "aws:ebs:id=vol-1", "--event", "Decrypt"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and "Decrypt" in out[0] and "via rds.amazonaws.com" in out[0]
    assert run(["audit", "--kms", keystore, "--errors", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)["Records"]
    assert [r["errorCode"] for r in records] == ["AccessDeniedException"]
    assert run(["audit", "--kms", keystore, "--principal", "nobody"]) == 0
    assert "no audit records match" in capsys.readouterr().err


def test_cli_verify_ok_then_tampered(log, capsys):
    conn, keystore = log
    assert run(["audit", "verify", "--kms", keystore]) == 0
    out = capsys.readouterr().out
    assert out.startswith("audit log OK")
    anchor = audit.latest_anchor(conn)
    assert anchor in out
    assert run(["audit", "--kms", keystore, "verify", "--anchor", anchor, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["anchorFound"] is True
    conn.execute("UPDATE audit SET record = replace(record, 'vol-1', 'vol-9') WHERE seq = 3")
    assert run(["audit", "verify", "--kms", keystore]) == 4
    out = capsys.readouterr().out
    assert "FAILED" in out and "record 3" in out


def test_cli_refuses_what_it_cannot_read(tmp_path):
    with pytest.raises(UsageError, match="only by the embedded key service"):
        run(["audit", "--kms", "aws"])
    with pytest.raises(UsageError, match="no keystore at"):
        run(["audit", "--kms", str(tmp_path / "none")])
    with pytest.raises(SystemExit):
        run(["audit", "--kms", str(tmp_path), "--context", "=x"])


def test_cli_bad_time_and_bad_public_key_are_one_line_errors(log, tmp_path):
    _, keystore = log
    with pytest.raises(UsageError, match="not ISO 8601"):
        run(["audit", "--kms", keystore, "--since", "yesterday"])
    with pytest.raises(UsageError, match="cannot use public key"):
        run(["audit", "verify", "--kms", keystore, "--public-key", str(tmp_path / "missing.pem")])
