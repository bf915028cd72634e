"""Attack on the key server's SigV4 check: a signature that does not cover ``X-Amz-Target`` (or
``Content-Type``, which chooses between the KMS and STS protocols) leaves the operation open.

SigV4 signs only the headers the client lists. Before, the server required only ``host`` and
``x-amz-date`` in SignedHeaders, so a request signed over those two (a minimal signer, or one
whose signature was captured: a proxy log, a TLS-terminating balancer) could be re-sent within
the 5-minute window with another X-Amz-Target and the same body: a ``DescribeKey {"KeyId": K}``
became ``ScheduleKeyDeletion {"KeyId": K}`` as the signer. botocore and the AWS CLI always sign
both headers, so requiring them refuses no real client."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

pytestmark = pytest.mark.timeout(120)


def _signer(keep: tuple[str, ...]):
    class _Only(SigV4Auth):
        def headers_to_sign(self, request):
            out = super().headers_to_sign(request)
            for name in list(out.keys()):
                if name not in keep:
                    del out[name]
            return out
    return _Only


def _send(server, creds, target: str, body: bytes, headers: dict):
    r = urllib.request.Request(server.url + "/", data=body, method="POST",
                               headers=dict(headers, **{"X-Amz-Target": target}))
    try:
        with urllib.request.urlopen(r, context=ssl.create_default_context(cafile=server.cert), timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.parametrize("keep,missing", [(("host", "x-amz-date", "content-type"), "x-amz-target"),
                                          (("host", "x-amz-date", "x-amz-target"), "content-type")])
def test_an_operation_the_signature_does_not_cover_is_refused(server, alice, keep, missing):
    kms = server.client(alice)
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    body = json.dumps({"KeyId": key}).encode()
    req = AWSRequest(method="POST", url=server.url + "/", data=body, headers={
        "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "TrentService.DescribeKey"})
    _signer(keep)(Credentials(alice.id, alice["SecretAccessKey"]), "kms", server.region).add_auth(req)
    assert missing not in req.headers["Authorization"]
    status, answer = _send(server, alice, "TrentService.ScheduleKeyDeletion", body, dict(req.headers))
    assert status == 400 and answer["__type"] == "IncompleteSignatureException", answer
    assert missing in answer["message"].lower()
    assert kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Enabled"
