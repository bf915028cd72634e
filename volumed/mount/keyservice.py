"""Key-service clients for the mount, and how the mount reads a key-service error.

``connect(spec, principal=, via_service=)`` is volumed.kms.connect (embedded keystore, ``aws`` or an
endpoint URL). The helpers below work on any boto3-kms-compatible client, so the mount runs against
the embedded service and against AWS KMS alike.

``classify(exc)`` sorts a failed call into:
  "deleted"   the key no longer exists (NotFoundException)               -> terminal
  "revoked"   an authorization answer: the key, grant, policy or context no longer allow the use
              (AccessDenied, Disabled, KMSInvalidState, InvalidGrantToken, ...) -> recoverable
  "transient" anything else: busy, throttled, unreachable, internal     -> retry with backoff
"""

from __future__ import annotations

from volumed import kms
from volumed.errors import VolumedError
from volumed.kms.server.remote import change_counter_fn

REVOKED_CODES = frozenset({
    "AccessDeniedException", "DisabledException", "KMSInvalidStateException",
    "InvalidGrantTokenException", "InvalidGrantIdException", "IncorrectKeyException",
    "InvalidCiphertextException", "InvalidKeyUsageException", "UnauthorizedOperation",
})
DELETED_CODES = frozenset({"NotFoundException"})


def connect(spec, *, principal=None, via_service=None, clock=None, profile=None):
    """A client of the key service named by ``spec`` (see volumed.kms.connect); ``clock`` drives
    the embedded service's deletion windows (the daemon passes its injectable clock); ``profile``
    is the AWS profile whose credentials sign calls to an endpoint (a host's access key)."""
    return kms.connect(spec, principal=principal, via_service=via_service, clock=clock, profile=profile)


def default_spec():
    return kms.default_spec()


def error_code(exc: BaseException) -> str | None:
    """The AWS error code of a botocore ClientError or a VolumedError, else None."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return response.get("Error", {}).get("Code")
    if isinstance(exc, VolumedError):
        return exc.code
    return None


def error_message(exc: BaseException) -> str:
    """A one-line description: "Code: message"."""
    code = error_code(exc)
    response = getattr(exc, "response", None)
    msg = response.get("Error", {}).get("Message", "") if isinstance(response, dict) else str(exc)
    text = f"{code}: {msg}" if code else f"{type(exc).__name__}: {msg}"
    return text.rstrip(": ").replace("\n", " ")


def classify(exc: BaseException) -> str:
    """"deleted", "revoked" or "transient" (see the module docstring)."""
    code = error_code(exc)
    if code in DELETED_CODES:
        return "deleted"
    if code in REVOKED_CODES:
        return "revoked"
    return "transient"


def arn_parts(key_arn: str) -> tuple[str, str]:
    """(region, account) of a key ARN ``arn:aws:kms:<region>:<account>:key/<id>``."""
    parts = key_arn.split(":")
    if len(parts) < 6 or parts[2] != "kms":
        raise VolumedError(f"not a KMS key ARN: {key_arn!r}", code="InvalidArnException")
    return parts[3], parts[4]


def change_counter(client):
    """The keystore's change counter callable: the embedded service's, or a ``volumed kms serve``
    endpoint's (volumed.kms.server.remote); None for AWS KMS (no such thing)."""
    fn = getattr(client, "change_counter", None)
    if callable(fn):
        return fn
    return change_counter_fn(client)
