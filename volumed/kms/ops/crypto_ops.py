"""Cryptographic operations: Encrypt, Decrypt, ReEncrypt, GenerateDataKey,
GenerateDataKeyWithoutPlaintext. Key material is unwrapped only inside the call and wiped before
it returns; the service keeps no plaintext. Called by volumed.kms.service."""

from __future__ import annotations

import os

from volumed.kms.awsmodel import Params, Response
from volumed.kms.ops import keys
from volumed.kms.ops.context import CallContext
from volumed.kms.store import blob
from volumed.kms.values import Key
from volumed.secrets import wipe

ALGORITHM = "SYMMETRIC_DEFAULT"
_KEYSPEC_BYTES = {"AES_256": 32, "AES_128": 16}


def _check_algorithm(ctx: CallContext, p: Params, *names: str) -> None:
    """InvalidKeyUsageException for any encryption algorithm but SYMMETRIC_DEFAULT."""
    for name in names:
        if p.get(name, ALGORITHM) != ALGORITHM:
            raise ctx.error("InvalidKeyUsageException",
                            f"{name} {p[name]} is not valid for a symmetric encryption key; use {ALGORITHM}")


def _seal(ctx: CallContext, key: Key, plaintext: bytes | bytearray,
          context: dict[str, str] | None) -> tuple[bytes, str]:
    """(blob, material id) of ``plaintext`` under the key's current material."""
    found = keys.material(ctx, key.key_id, key.current_version)
    assert found is not None, "a key's current material version always exists"
    mat, material_id = found
    try:
        return blob.seal(mat, key.key_id, key.current_version, plaintext, context), material_id
    finally:
        wipe(mat)


def _usable_key(ctx: CallContext, ref: str, action: str) -> Key:
    """Resolve, authorise ``action`` and require Enabled: the key to encrypt under."""
    key = keys.resolve(ctx, ref)
    ctx.authorize(action, key)
    keys.require_enabled(ctx, key)
    return key


def _open(ctx: CallContext, data: bytes, context: dict[str, str] | None, key_ref: str | None,
          action: str) -> tuple[Key, bytearray, str]:
    """(key, plaintext, material id) of a ciphertext blob. InvalidCiphertextException (empty
    message) for anything that does not verify; IncorrectKeyException when ``key_ref`` names
    another key; NotFoundException when the blob's key has been deleted."""
    try:
        header = blob.parse_header(data)
    except (blob.BadBlob, ValueError):
        raise ctx.error("InvalidCiphertextException", "") from None
    if key_ref is not None:
        named = keys.resolve(ctx, key_ref)
        if named.key_id != header.key_id:
            raise ctx.error("IncorrectKeyException", "The key ID in the request does not identify a "
                                                     "CMK that can perform this operation.")
    key = keys.get(ctx, header.key_id)
    if key is None:
        if keys.was_deleted(ctx, header.key_id):
            raise keys.not_found(ctx, header.key_id)
        raise ctx.error("InvalidCiphertextException", "")
    ctx.authorize(action, key)
    keys.require_enabled(ctx, key)
    found = keys.material(ctx, key.key_id, header.version)
    if found is None:
        raise ctx.error("InvalidCiphertextException", "")
    mat, material_id = found
    try:
        return key, blob.open_(mat, data, context), material_id
    except blob.BadBlob:
        raise ctx.error("InvalidCiphertextException", "") from None
    finally:
        wipe(mat)


def encrypt(ctx: CallContext, p: Params) -> Response:
    """Encrypt up to 4096 bytes under the current key material, bound to the context."""
    _check_algorithm(ctx, p, "EncryptionAlgorithm")
    key = _usable_key(ctx, p["KeyId"], "kms:Encrypt")
    ct, _ = _seal(ctx, key, p["Plaintext"], p.get("EncryptionContext"))
    return {"CiphertextBlob": ct, "KeyId": key.arn, "EncryptionAlgorithm": ALGORITHM}


def decrypt(ctx: CallContext, p: Params) -> Response:
    """Decrypt a blob under the key and version its header names (KeyId optional)."""
    _check_algorithm(ctx, p, "EncryptionAlgorithm")
    if "Recipient" in p:
        raise ctx.error("UnsupportedOperationException", "Recipient (Nitro Enclaves) is not supported "
                                                         "by the embedded key service")
    key, plaintext, material_id = _open(ctx, p["CiphertextBlob"], p.get("EncryptionContext"),
                                        p.get("KeyId"), "kms:Decrypt")
    return {"KeyId": key.arn, "Plaintext": bytes(plaintext), "EncryptionAlgorithm": ALGORITHM,
            "KeyMaterialId": material_id}


def re_encrypt(ctx: CallContext, p: Params) -> Response:
    """Decrypt under the source key and context, encrypt under the destination; the plaintext
    never leaves this function."""
    _check_algorithm(ctx, p, "SourceEncryptionAlgorithm", "DestinationEncryptionAlgorithm")
    src, plaintext, src_material = _open(ctx, p["CiphertextBlob"], p.get("SourceEncryptionContext"),
                                         p.get("SourceKeyId"), "kms:ReEncryptFrom")
    try:
        dst = _usable_key(ctx, p["DestinationKeyId"], "kms:ReEncryptTo")
        ct, dst_material = _seal(ctx, dst, plaintext, p.get("DestinationEncryptionContext"))
    finally:
        wipe(plaintext)
    return {"CiphertextBlob": ct, "SourceKeyId": src.arn, "KeyId": dst.arn,
            "SourceEncryptionAlgorithm": ALGORITHM, "DestinationEncryptionAlgorithm": ALGORITHM,
            "SourceKeyMaterialId": src_material, "DestinationKeyMaterialId": dst_material}


def _data_key(ctx: CallContext, p: Params, action: str) -> tuple[Key, bytearray, bytes, str]:
    """(key, plaintext data key, its blob, material id) for GenerateDataKey*."""
    if "Recipient" in p:
        raise ctx.error("UnsupportedOperationException", "Recipient (Nitro Enclaves) is not supported "
                                                         "by the embedded key service")
    n, spec = p.get("NumberOfBytes"), p.get("KeySpec")
    if (n is None) == (spec is None):
        raise ctx.error("ValidationException", "Please specify either number of bytes or key spec.")
    size = n if n is not None else _KEYSPEC_BYTES[str(spec)]
    key = _usable_key(ctx, p["KeyId"], action)
    plaintext = bytearray(os.urandom(size))
    ct, material_id = _seal(ctx, key, plaintext, p.get("EncryptionContext"))
    return key, plaintext, ct, material_id


def generate_data_key(ctx: CallContext, p: Params) -> Response:
    """A fresh data key, in plaintext and encrypted under the KMS key."""
    key, plaintext, ct, material_id = _data_key(ctx, p, "kms:GenerateDataKey")
    try:
        return {"CiphertextBlob": ct, "Plaintext": bytes(plaintext), "KeyId": key.arn,
                "KeyMaterialId": material_id}
    finally:
        wipe(plaintext)


def generate_data_key_without_plaintext(ctx: CallContext, p: Params) -> Response:
    """A fresh data key, only encrypted; the plaintext is wiped here."""
    key, plaintext, ct, material_id = _data_key(ctx, p, "kms:GenerateDataKeyWithoutPlaintext")
    wipe(plaintext)
    return {"CiphertextBlob": ct, "KeyId": key.arn, "KeyMaterialId": material_id}
