"""Envelope encryption of the volume's data key through a boto3-style KMS client.

``new_wrapped_key(kms, key_id, nbytes, context)`` asks for a fresh data key with
GenerateDataKeyWithoutPlaintext and returns (ciphertext blob, key ARN).
``unwrap(kms, header, grant_tokens)`` calls Decrypt with KeyId = the header's key ARN, the header's
encryption context and the grant tokens, and returns the key as a bytearray the caller must hand
to a cipher (which wipes it) or overwrite. KMS refusals become KeyAccessError carrying the AWS
code and naming what was wrong (key, context, access). Callers: volumed.volume.device.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from volumed.errors import KeyAccessError, aws_error_code, aws_error_message
from volumed.hardening import note_key_unwrapped


class KmsClient(Protocol):
    """The two calls a volume makes on a boto3-style KMS client (volumed.kms.connect, or boto3's
    ``kms`` client): keyword arguments and response shapes are AWS's, so they are not restated
    here (boto3's own client is untyped)."""

    def generate_data_key_without_plaintext(self, *args: Any, **kwargs: Any) -> Mapping[str, Any]: ...
    def decrypt(self, *args: Any, **kwargs: Any) -> Mapping[str, Any]: ...

_HINTS = {
    "AccessDeniedException": "the caller has no permission or grant for this key (check the key policy and grants)",
    "DisabledException": "the KMS key is disabled (enable it to use this volume)",
    "KMSInvalidStateException": "the KMS key is not usable, e.g. pending deletion (cancel the deletion to use this volume)",
    "NotFoundException": "the KMS key does not exist (check --key or the header's key ARN)",
    "InvalidCiphertextException": "the wrapped key or encryption context does not match (wrong key or context)",
    "IncorrectKeyException": "the wrapped key was made under a different KMS key",
    "InvalidGrantTokenException": "the grant token is invalid",
    "KeyUnavailableException": "the key service cannot reach the key right now; retry",
}


def _unreachable(exc: Exception) -> bool:
    """A botocore transport/credential failure (no AWS error code): the service was not reached."""
    try:
        from botocore.exceptions import BotoCoreError
    except ImportError:  # pragma: no cover - boto3 is a dependency
        return False
    return isinstance(exc, BotoCoreError)


def _check(action: str, key: str, exc: Exception) -> KeyAccessError:
    """The KeyAccessError for a failed KMS call, or re-raise what is not a KMS answer."""
    code = aws_error_code(exc)
    if code is not None:
        return _refusal(action, key, code, aws_error_message(exc))
    if _unreachable(exc):
        return KeyAccessError(f"{action} with KMS key {key} failed: the key service is unreachable "
                              f"({exc}); check --kms and credentials, then retry",
                              code="KeyUnavailableException")
    raise exc


def _refusal(action: str, key: str, code: str, msg: str) -> KeyAccessError:
    hint = _HINTS.get(code, msg or "refused")
    return KeyAccessError(f"{action} with KMS key {key} failed: {code}: {hint}"
                          + (f" ({msg})" if msg and msg != hint else ""), code=code or None)


def new_wrapped_key(kms: KmsClient, key_id: str, nbytes: int,
                    context: dict[str, str]) -> tuple[bytes, str]:
    """(CiphertextBlob, key ARN) of a fresh ``nbytes`` data key bound to ``context``."""
    try:
        resp = kms.generate_data_key_without_plaintext(
            KeyId=key_id, NumberOfBytes=nbytes, EncryptionContext=context)
    except Exception as exc:
        raise _check("GenerateDataKeyWithoutPlaintext", key_id, exc) from None
    return bytes(resp["CiphertextBlob"]), str(resp["KeyId"])


def unwrap(kms: KmsClient, key_arn: str, wrapped: bytes, context: dict[str, str],
           grant_tokens: list[str] | None = None, expect_len: int | None = None) -> bytearray:
    """The plaintext data key as a bytearray (Decrypt with KeyId, context and grant tokens)."""
    kw: dict[str, object] = {"CiphertextBlob": wrapped, "KeyId": key_arn, "EncryptionContext": context}
    if grant_tokens:
        kw["GrantTokens"] = list(grant_tokens)
    try:
        resp = kms.decrypt(**kw)
    except Exception as exc:
        raise _check("Decrypt of the volume key", key_arn, exc) from None
    plain = resp["Plaintext"]
    key = bytearray(plain)
    del plain, resp
    if expect_len is not None and len(key) != expect_len:
        key[:] = bytes(len(key))
        raise KeyAccessError(f"the key service returned a {len(key)}-byte key, expected {expect_len}",
                             code="InvalidCiphertextException")
    note_key_unwrapped()
    return key
