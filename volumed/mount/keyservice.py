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

from collections.abc import Callable
from typing import Any, TypeAlias

from volumed import kms
from volumed.clock import Clock
from volumed.errors import VolumedError, aws_error_code, aws_error_message
from volumed.kms.arn import Arn
from volumed.kms.server.remote import change_counter_fn

REVOKED_CODES = frozenset({
    "AccessDeniedException", "DisabledException", "KMSInvalidStateException",
    "InvalidGrantTokenException", "InvalidGrantIdException", "IncorrectKeyException",
    "InvalidCiphertextException", "InvalidKeyUsageException", "UnauthorizedOperation",
})
DELETED_CODES = frozenset({"NotFoundException"})

# A boto3 "kms" client or volumed's EmbeddedKMS: the same methods, parameters and response shapes
# (boto3 clients carry no static types).
KmsClient: TypeAlias = Any
ChangeCounter: TypeAlias = Callable[[], int]


def connect(spec: str | None, *, principal: str | None = None, via_service: str | None = None,
            clock: Clock | None = None, profile: str | None = None) -> KmsClient:
    """A client of the key service named by ``spec`` (see volumed.kms.connect); ``clock`` drives
    the embedded service's deletion windows (the daemon passes its injectable clock); ``profile``
    is the AWS profile whose credentials sign calls to an endpoint (a host's access key)."""
    return kms.connect(spec, principal=principal, via_service=via_service, clock=clock, profile=profile)


def default_spec() -> str:
    return kms.default_spec()


def error_message(exc: BaseException) -> str:
    """A one-line description: "Code: message" (volumed.errors.aws_error_code and
    aws_error_message), or "ExceptionType: message" without a code."""
    code = aws_error_code(exc)
    msg = aws_error_message(exc)
    text = f"{code}: {msg}" if code else f"{type(exc).__name__}: {msg}"
    return text.rstrip(": ").replace("\n", " ")


def classify(exc: BaseException) -> str:
    """"deleted", "revoked" or "transient" (see the module docstring)."""
    code = aws_error_code(exc)
    if code in DELETED_CODES:
        return "deleted"
    if code in REVOKED_CODES:
        return "revoked"
    return "transient"


def key_arn(text: str) -> Arn:
    """A KMS key ARN ``arn:<partition>:kms:<region>:<account>:key/<id>`` parsed
    (volumed.kms.arn.Arn); VolumedError (InvalidArnException) for anything else."""
    arn = Arn.try_parse(text)
    if arn is None or arn.service != "kms":
        raise VolumedError(f"not a KMS key ARN: {text!r}", code="InvalidArnException")
    return arn


def change_counter(client: KmsClient) -> ChangeCounter | None:
    """The keystore's change counter callable: the embedded service's, or a ``volumed kms serve``
    endpoint's (volumed.kms.server.remote); None for AWS KMS (no such thing)."""
    fn = getattr(client, "change_counter", None)
    if callable(fn):
        counter: ChangeCounter = fn
        return counter
    return change_counter_fn(client)
