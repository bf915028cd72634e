"""The ciphertext blob of the embedded key service: what Encrypt/GenerateDataKey return and
Decrypt/ReEncrypt take. Pure functions; callers: volumed.kms.ops.crypto_ops.

Layout (all integers big-endian)::

    offset  size  field
    0       4     magic b"VKC1" (format version 1)
    4       16    key id (the UUID's 16 bytes)
    20      4     key material version
    24      12    GCM nonce (random)
    36      n     AES-256-GCM ciphertext of the plaintext
    36+n    16    GCM tag

AAD = b"volumed-kms-ciphertext-v1" || bytes 0..24 of the blob || canonical encryption context
(JSON, keys sorted, no spaces, UTF-8). A different or missing context, another key's material or any
flipped bit fails the tag; the header names key and version, so Decrypt needs no KeyId.
"""

from __future__ import annotations

import json
import os
import struct
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"VKC1"
_HEADER = struct.Struct(">4s16sI")
_NONCE = 12
_TAG = 16
_LABEL = b"volumed-kms-ciphertext-v1"
MIN_LEN = _HEADER.size + _NONCE + _TAG


class BadBlob(Exception):
    """Not a ciphertext of this service, or it failed to verify (-> InvalidCiphertextException)."""


@dataclass(frozen=True)
class Header:
    key_id: str
    version: int


def canonical_context(context: Mapping[str, str] | None) -> bytes:
    """The encryption context as the bytes that are authenticated."""
    return json.dumps(context or {}, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def parse_header(blob: bytes) -> Header:
    """Key id and material version named by a blob (not yet authenticated); BadBlob if malformed."""
    if len(blob) < MIN_LEN or blob[:4] != MAGIC:
        raise BadBlob()
    _, kid, version = _HEADER.unpack_from(blob)
    return Header(str(uuid.UUID(bytes=kid)), version)


def seal(material: bytes | bytearray, key_id: str, version: int, plaintext: bytes | bytearray,
         context: Mapping[str, str] | None) -> bytes:
    """Encrypt ``plaintext`` under one version of a key's material, bound to ``context``."""
    header = _HEADER.pack(MAGIC, uuid.UUID(key_id).bytes, version)
    nonce = os.urandom(_NONCE)
    ct = AESGCM(bytes(material)).encrypt(nonce, bytes(plaintext), _LABEL + header + canonical_context(context))
    return header + nonce + ct


def open_(material: bytes | bytearray, blob: bytes, context: Mapping[str, str] | None) -> bytearray:
    """Decrypt a blob whose header named this material; BadBlob on any mismatch or tampering."""
    header = blob[:_HEADER.size]
    nonce = blob[_HEADER.size:_HEADER.size + _NONCE]
    try:
        return bytearray(AESGCM(bytes(material)).decrypt(
            nonce, bytes(blob[_HEADER.size + _NONCE:]), _LABEL + header + canonical_context(context)))
    except InvalidTag:
        raise BadBlob() from None
