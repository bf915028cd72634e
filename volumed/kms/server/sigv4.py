"""SigV4 verification on the server: who signed a request, or the AWS error saying why not.

The signature is recomputed with botocore's own signer (``botocore.auth.SigV4Auth``) over exactly
the headers the client listed in ``SignedHeaders``, the server's own SHA-256 of the body, and the
client's ``x-amz-date``; the credential scope must name this server's region and the service
(``kms``, or ``sts`` for GetCallerIdentity). Rules and the AWS error code of each failure:

  no Authorization header                         MissingAuthenticationTokenException
  malformed header, host, x-amz-date,            IncompleteSignatureException
  content-type or a present x-amz-target unsigned (the operation and protocol are signed)
  unknown (or deleted) access key, session token  UnrecognizedClientException
  x-amz-date more than 5 minutes from the clock   InvalidSignatureException "Signature expired" /
                                                  "Signature not yet current"
  scope of another region or service, wrong date  InvalidSignatureException
  signature or body hash mismatch                 InvalidSignatureException

Caller: volumed.kms.server.app, once per request, with an injectable clock.
"""

from __future__ import annotations

import calendar
import datetime as _dt
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Mapping
from typing import TypedDict

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest, HTTPHeaders
from botocore.credentials import Credentials

from volumed.kms.server.errors import WireError

MAX_SKEW_S = 300
_TS = "%Y%m%dT%H%M%SZ"
_AUTH_RE = re.compile(r"^AWS4-HMAC-SHA256 (.*)$", re.S)
_CRED_RE = re.compile(r"^([A-Z0-9]{16,128})/(\d{8})/([a-z0-9-]+)/([a-z0-9-]+)/aws4_request$")
_SIG_RE = re.compile(r"^[0-9a-f]{64}$")


class _Recompute(SigV4Auth):  # type: ignore[misc]  # botocore is untyped (Any); its signer is the reference
    """botocore's SigV4 signer restricted to the headers the client signed."""

    def __init__(self, credentials: Credentials, service: str, region: str, signed: list[str]):
        super().__init__(credentials, service, region)
        self._signed = signed

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        out = HTTPHeaders()
        for name in self._signed:
            out[name] = request.headers.get(name, "")
        return out


class Authorization(TypedDict):
    """The parts of a SigV4 Authorization header (and its credential scope)."""

    access_key_id: str
    date: str
    region: str
    service: str
    signed: list[str]
    signature: str


# (principal, service it acts for or None, secret) of an access key
KeyOwner = tuple[str, str | None, str]


def _incomplete(message: str) -> WireError:
    return WireError("IncompleteSignatureException", message)


def parse_authorization(value: str) -> Authorization:
    """The Credential, SignedHeaders and Signature parts of an Authorization header."""
    m = _AUTH_RE.fullmatch(value or "")
    if not m:
        raise _incomplete(f"Authorization header requires the AWS4-HMAC-SHA256 algorithm. "
                          f"Authorization={value[:64]}")
    parts: dict[str, str] = {}
    for item in m.group(1).split(","):
        k, sep, v = item.strip().partition("=")
        if sep:
            parts[k] = v
    for need in ("Credential", "SignedHeaders", "Signature"):
        if need not in parts:
            raise _incomplete(f"Authorization header requires '{need}' parameter. "
                              f"Authorization={value[:64]}")
    cred = _CRED_RE.fullmatch(parts["Credential"])
    if not cred:
        raise _incomplete("Authorization header requires a Credential of the form "
                          "ACCESSKEYID/YYYYMMDD/REGION/SERVICE/aws4_request")
    if not _SIG_RE.fullmatch(parts["Signature"]):
        raise _incomplete("Signature must be 64 lowercase hexadecimal characters")
    signed = parts["SignedHeaders"].split(";")
    if signed != sorted(signed) or any(not h or h != h.lower() for h in signed):
        raise _incomplete("SignedHeaders must be lowercase header names, sorted and separated by ';'")
    if "host" not in signed:
        raise _incomplete("'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.")
    if "x-amz-date" not in signed:
        raise _incomplete("'X-Amz-Date' must be a 'SignedHeader' in the AWS Authorization.")
    if "content-type" not in signed:  # it chooses the protocol (KMS JSON or STS query)
        raise _incomplete("'Content-Type' must be a 'SignedHeader' in the AWS Authorization.")
    return {"access_key_id": cred.group(1), "date": cred.group(2), "region": cred.group(3),
            "service": cred.group(4), "signed": signed, "signature": parts["Signature"]}


def check_time(amz_date: str, now: float) -> None:
    """InvalidSignatureException unless ``amz_date`` is within MAX_SKEW_S of ``now``."""
    try:
        t = calendar.timegm(time.strptime(amz_date, _TS))
    except (ValueError, TypeError):
        raise _incomplete("X-Amz-Date must be in the ISO 8601 basic format YYYYMMDDTHHMMSSZ") from None

    def fmt(x: float) -> str:
        return time.strftime(_TS, time.gmtime(x))
    if t < now - MAX_SKEW_S:
        raise WireError("InvalidSignatureException",
                        f"Signature expired: {amz_date} is now earlier than {fmt(now - MAX_SKEW_S)} "
                        f"({fmt(now)} - 5 min.)")
    if t > now + MAX_SKEW_S:
        raise WireError("InvalidSignatureException",
                        f"Signature not yet current: {amz_date} is still later than "
                        f"{fmt(now + MAX_SKEW_S)} ({fmt(now)} + 5 min.)")


def verify(*, method: str, path: str, query: str, headers: Mapping[str, str], body: bytes, region: str,
           services: tuple[str, ...], now: float,
           lookup: Callable[[str], KeyOwner | None]) -> tuple[Authorization, KeyOwner]:
    """Authenticate one request. ``headers`` maps lower-case names to values; ``lookup(akid)``
    gives (principal, service, secret) or None. Returns (parsed Authorization, lookup result)."""
    value = headers.get("authorization")
    if not value:
        raise WireError("MissingAuthenticationTokenException", "Missing Authentication Token")
    auth = parse_authorization(value)
    amz_date = headers.get("x-amz-date")
    if not amz_date:
        raise _incomplete("Authorization header requires existence of a 'X-Amz-Date' header.")
    if headers.get("x-amz-security-token"):
        raise WireError("UnrecognizedClientException", "The security token included in the request is invalid.")
    found = lookup(auth["access_key_id"])
    if found is None:
        raise WireError("UnrecognizedClientException", "The security token included in the request is invalid.")
    check_time(amz_date, now)
    if auth["service"] not in services:
        raise WireError("InvalidSignatureException",
                        f"Credential should be scoped to correct service: '{services[0]}'. ")
    if auth["region"] != region:
        raise WireError("InvalidSignatureException",
                        f"Credential should be scoped to a valid region, not '{auth['region']}'. ")
    if auth["date"] != amz_date[:8]:
        raise WireError("InvalidSignatureException",
                        f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of "
                        f"date from HTTP: '{auth['date']}' != '{amz_date[:8]}'")
    body_hash = hashlib.sha256(body).hexdigest()
    claimed = headers.get("x-amz-content-sha256")
    if claimed is not None and claimed != body_hash:
        raise WireError("InvalidSignatureException",
                        "The provided 'x-amz-content-sha256' header does not match what was computed.")
    if "x-amz-target" in headers and "x-amz-target" not in auth["signed"]:  # it names the operation
        raise _incomplete("'X-Amz-Target' must be a 'SignedHeader' in the AWS Authorization.")
    for name in auth["signed"]:
        if name not in headers:
            raise WireError("InvalidSignatureException", f"Signed header {name!r} is missing from the request")
    req = AWSRequest(method=method, url=f"https://{headers['host']}{path}" + (f"?{query}" if query else ""),
                     data=body, headers={n: headers[n] for n in auth["signed"]})
    req.context["timestamp"] = amz_date
    principal, service, secret = found
    signer = _Recompute(Credentials(auth["access_key_id"], secret), auth["service"], auth["region"],
                        auth["signed"])
    canonical = signer.canonical_request(req)
    expected: str = signer.signature(signer.string_to_sign(req, canonical), req)
    if not hmac.compare_digest(expected, auth["signature"]):
        raise WireError("InvalidSignatureException",
                        "The request signature we calculated does not match the signature you provided. "
                        "Check your AWS Secret Access Key and signing method. Consult the service "
                        "documentation for details.")
    return auth, found


def utc_now_iso(now: float) -> str:
    return _dt.datetime.fromtimestamp(now, _dt.timezone.utc).strftime(_TS)
