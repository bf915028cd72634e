"""Helpers of the audit-log tests (not a pytest conftest: imported by tests/kms/test_audit*.py).

A real SQLite database in a temporary directory, opened the
way the keystore opens it (autocommit; each call one BEGIN IMMEDIATE transaction), and a helper
that appends one KMS call record the way the key service does."""

from __future__ import annotations

import datetime as dt
import os
import sqlite3

from volumed.clock import FakeClock
from volumed.kms import audit

ACCT = "111122223333"
REGION = "us-east-1"
KEY_ID = "1234abcd-12ab-34cd-56ef-1234567890ab"
KEY_ARN = f"arn:aws:kms:{REGION}:{ACCT}:key/{KEY_ID}"
OTHER_KEY_ARN = f"arn:aws:kms:{REGION}:{ACCT}:key/ffffffff-12ab-34cd-56ef-1234567890ab"
ALICE = f"arn:aws:iam::{ACCT}:user/alice"
HOST = f"arn:aws:sts::{ACCT}:assumed-role/volumed-host/node1"
RDS = f"rds.{REGION}.amazonaws.com"
START = dt.datetime(2026, 1, 5, 12, 0, tzinfo=dt.timezone.utc)


def open_db(directory: str, *, seal_every: int | None = 5, seal_interval: float = 3600.0):
    """(conn, clock, signing key path) on ``directory``/keystore.db with the audit schema; sealing
    configured unless ``seal_every`` is None."""
    conn = sqlite3.connect(os.path.join(directory, "keystore.db"), isolation_level=None)
    audit.ensure_schema(conn)
    key_path = os.path.join(directory, audit.SIGNING_KEY_FILE)
    if seal_every is not None:
        audit.configure(conn, key_path, seal_every=seal_every, seal_interval=seal_interval)
    return conn, FakeClock(START), key_path


def call(conn, clock, n: int = 0, *, event="Decrypt", principal=ALICE, via=None, key_arn=KEY_ARN,
         context=None, error=None, params=None, response=None):
    """Append the record of one KMS call in its own transaction, as the key service does."""
    if context is None:
        context = {"aws:rds:db-id": f"db-{n}", "aws:ebs:id": f"vol-{n}"}
    request = params if params is not None else {"KeyId": key_arn, "EncryptionContext": context}
    conn.execute("BEGIN IMMEDIATE")
    try:
        rec = audit.record_call(
            conn, clock=clock, account_id=ACCT, region=REGION, event_name=event, principal=principal,
            via_service=via, request_parameters=request, response_elements=response,
            error_code=error[0] if error else None, error_message=error[1] if error else None,
            key_arn=key_arn, read_only=event in ("Decrypt", "DescribeKey"))
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    clock.advance(1)
    return rec


def fill(conn, clock, count: int, start: int = 1) -> None:
    for i in range(start, start + count):
        call(conn, clock, i)
