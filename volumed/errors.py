"""Domain errors shared by every layer.

Every error volumed raises on purpose derives from VolumedError. Each carries an exit code for the
CLI and, where AWS defines one, the AWS error code. The CLI prints ``str(err)`` as one line; the
FUSE boundary (volumed.mount) is the only place that turns these into errno values.
"""

from __future__ import annotations


class VolumedError(Exception):
    """Base class. ``code`` is an AWS error code or a volumed code; ``exit_code`` is for the CLI.
    A subclass names its own as class keywords: ``class X(VolumedError, exit_code=2, code="...")``."""

    exit_code = 1
    code = "VolumedError"

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code

    def __init_subclass__(cls, *, exit_code: int | None = None, code: str | None = None) -> None:
        super().__init_subclass__()
        if exit_code is not None:
            cls.exit_code = exit_code
        if code is not None:
            cls.code = code


class UsageError(VolumedError, exit_code=2, code="ValidationException"):
    """Bad input from the user: wrong argument, malformed file, value out of range."""


class FormatError(VolumedError, exit_code=3, code="FormatError"):
    """A backing file is not a volumed volume, is damaged, or is of a newer version."""


class IntegrityError(VolumedError, exit_code=4, code="IntegrityError"):
    """Authenticated data failed to verify (GCM sector tag, header MAC)."""


class KeyAccessError(VolumedError, exit_code=5, code="AccessDeniedException"):
    """The key service refused or could not provide the volume's key (carries the AWS code)."""

    @classmethod
    def wiped(cls, path: str) -> KeyAccessError:
        """The volume at ``path`` no longer holds its key: revoked or closed (the native core
        words its own VC_E_KEY the same way, native/vcore.c key_gone)."""
        return cls(f"the key of volume {path} has been wiped (access revoked or volume closed); "
                   "reopen it once access is restored")


class StateError(VolumedError, exit_code=6, code="InvalidStateException"):
    """The operation does not fit the object's state (mounted volume, terminal volume, ...)."""


def aws_error_code(exc: BaseException) -> str | None:
    """The AWS error code carried by ``exc``: a botocore ClientError's ``Error.Code`` or a
    VolumedError's ``code``; None for anything else."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        return code if isinstance(code, str) else None
    if isinstance(exc, VolumedError):
        return exc.code
    return None


def aws_error_message(exc: BaseException) -> str:
    """The message of a botocore ClientError's ``Error.Message`` (or ``str(exc)``)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        message = response.get("Error", {}).get("Message")
        if isinstance(message, str):
            return message
    return str(exc)
