"""The key server's wire errors: an AWS error code, a message and an HTTP status.

AWS JSON 1.1 services answer a failure with ``{"__type": CODE, "message": MESSAGE}`` and a 4xx/5xx
status; botocore turns that into the ClientError of CODE. Callers: every module of the server.
"""

from __future__ import annotations


class WireError(Exception):
    """A request refused before or outside the key service (auth, protocol, limits). ``sts``: the
    request was an STS call, answered in STS's XML error shape (set by volumed.kms.server.app)."""

    sts: bool = False

    def __init__(self, code: str, message: str, status: int = 400):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


# HTTP status AWS KMS uses for a key-service error code (all others: 400).
STATUS = {"KMSInternalException": 500, "DependencyTimeoutException": 503,
          "InternalFailure": 500, "ServiceUnavailable": 503}


def status_of(code: str) -> int:
    return STATUS.get(code, 400)
