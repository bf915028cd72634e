"""Client side of volumed's extensions to a ``volumed kms serve`` endpoint (over boto3's own
connection pool, credentials and CA bundle, signed with SigV4 like every KMS call).

``change_counter_fn(client)``: a callable returning the server's keystore change counter (the mount
monitor polls it every 100 ms and runs its real, audited check only when it moved), or None when
the endpoint does not answer it (not a volumed key server: the monitor then checks on its interval). ``caller_arn(session, endpoint_url)``: the principal of
a credential (STS GetCallerIdentity against the server): the host principal a grant must name.
Callers: volumed.mount.keyservice, volumed.mount.client.
"""

from __future__ import annotations

import json

from collections.abc import Callable
from typing import Any

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.exceptions import ClientError

TARGET = "VolumedService.GetChangeCounter"


def is_volumed_endpoint(client: Any) -> bool:
    url = getattr(getattr(client, "meta", None), "endpoint_url", None) or ""
    return url.startswith(("http://", "https://")) and ".amazonaws.com" not in url


def _signed_post(client: Any, target: str, body: bytes) -> Any:
    url = client.meta.endpoint_url.rstrip("/") + "/"
    req = AWSRequest(method="POST", url=url, data=body,
                     headers={"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": target})
    creds = client._request_signer._credentials.get_frozen_credentials()
    SigV4Auth(creds, "kms", client.meta.region_name).add_auth(req)
    return client._endpoint.http_session.send(req.prepare())


def change_counter_fn(client: Any) -> Callable[[], int] | None:
    """The server's change counter as a callable (raises ClientError or a connection error), or
    None when ``client`` does not talk to a volumed key server."""
    if not is_volumed_endpoint(client):
        return None

    def counter() -> int:
        resp = _signed_post(client, TARGET, b"{}")
        if resp.status_code != 200:
            try:
                err = json.loads(resp.content)
            except ValueError:
                err = {}
            code = err.get("__type", f"HTTP{resp.status_code}")
            raise ClientError({"Error": {"Code": code, "Message": err.get("message", "")},
                               "ResponseMetadata": {"HTTPStatusCode": resp.status_code}}, "GetChangeCounter")
        return int(json.loads(resp.content)["ChangeCounter"])

    try:  # only an endpoint that answers the call is a volumed key server (moto, AWS: not)
        counter()
    except Exception:
        return None
    return counter


def caller_arn(session: Any, endpoint_url: str, region: str) -> str:
    """The ARN of ``session``'s credentials as the key server knows them."""
    sts = session.client("sts", endpoint_url=endpoint_url, region_name=region)
    return str(sts.get_caller_identity()["Arn"])
