"""The small shared helpers of the base layer: error codes, UTC stamps, wiping."""

from __future__ import annotations

import datetime as dt

from botocore.exceptions import ClientError

from volumed.clock import iso_utc
from volumed.errors import KeyAccessError, UsageError, aws_error_code, aws_error_message
from volumed.secrets import wipe


def test_aws_error_code_of_client_error_and_domain_error() -> None:
    err = ClientError({"Error": {"Code": "DisabledException", "Message": "key is disabled"}}, "Decrypt")
    assert aws_error_code(err) == "DisabledException"
    assert aws_error_message(err) == "key is disabled"
    assert aws_error_code(UsageError("bad")) == "ValidationException"
    assert aws_error_code(KeyAccessError("no", code="KMSInvalidStateException")) == "KMSInvalidStateException"
    assert aws_error_code(ValueError("x")) is None
    assert aws_error_message(ValueError("x")) == "x"


def test_iso_utc_from_epoch_and_datetime() -> None:
    assert iso_utc(0) == "1970-01-01T00:00:00Z"
    assert iso_utc(1.25, micros=True) == "1970-01-01T00:00:01.250000Z"
    plus2 = dt.datetime(2026, 1, 1, 2, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert iso_utc(plus2) == "2026-01-01T00:00:00Z"


def test_wipe_zeroes_mutable_buffers_and_skips_the_rest() -> None:
    a, b = bytearray(b"secret"), bytearray(b"more")
    view = memoryview(bytearray(b"\xff" * 8))
    wipe(a, None, b"immutable", b, view)
    assert a == bytearray(6) and b == bytearray(4) and bytes(view) == bytes(8)
