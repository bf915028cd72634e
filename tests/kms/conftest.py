"""Fixtures of the key-service tests.

``kms`` is an embedded client on a fresh keystore whose every response is checked against
botocore's output shape for the operation (``ShapeCheckedClient``), so no test can receive a
response boto3 would not produce. Time comes from ``clock`` (a FakeClock): tests move it.
"""

from __future__ import annotations

import datetime as dt

import pytest

from volumed import kms as kms_pkg
from volumed.clock import FakeClock
from volumed.kms import awsmodel
from volumed.kms.service import OPERATIONS

START = dt.datetime(2026, 1, 5, 12, 0, tzinfo=dt.timezone.utc)


class ShapeCheckedClient:
    """Wraps a KMS client; every operation's response is validated against the service model.
    Extension methods and attributes pass through."""

    def __init__(self, client):
        self._client = client
        self.checked = 0

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if name in OPERATIONS:
            op = awsmodel.operation_name(name)

            def call(**kwargs):
                response = attr(**kwargs)
                awsmodel.validate_response(op, response)
                self.checked += 1
                return response
            return call
        if name == "with_identity":
            return lambda **kw: ShapeCheckedClient(attr(**kw))
        return attr


@pytest.fixture(autouse=True)
def every_client_is_shape_checked(monkeypatch):
    """Every embedded-service client a KMS test makes with volumed.kms.connect (not only the
    ``kms`` fixture's) has each response validated against botocore's output shapes."""
    connect = kms_pkg.connect

    def checked_connect(*args, **kwargs):
        client = connect(*args, **kwargs)
        if not type(client).__module__.startswith("volumed."):  # boto3 (AWS specs): its own shapes
            return client
        return ShapeCheckedClient(client)

    monkeypatch.setattr(kms_pkg, "connect", checked_connect)


@pytest.fixture
def clock():
    return FakeClock(START)


@pytest.fixture
def keystore(tmp_path):
    return str(tmp_path / "keystore")


@pytest.fixture
def kms(keystore, clock):
    client = kms_pkg.connect(keystore, clock=clock)  # shape-checked (every_client_is_shape_checked)
    yield client
    client.close()


@pytest.fixture
def key(kms):
    """A fresh customer managed key's id."""
    return kms.create_key(Description="test key")["KeyMetadata"]["KeyId"]


def code_of(excinfo) -> str:
    return excinfo.value.response["Error"]["Code"]


def message_of(excinfo) -> str:
    return excinfo.value.response["Error"]["Message"]
