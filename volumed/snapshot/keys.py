"""The snapshot's data key: which encryption context, which KMS calls.

A snapshot keeps the volume's data key wrapped for the context
``{"aws:rds:db-id": <the volume's db id>, "aws:ebs:id": <snapshot id>, "volumed:manifest-mac": "v1"}``
(EBS puts the snapshot id in the context of a snapshot's key; the last pair is the manifest-MAC
marker, MAC_MARKER below; snapshots made before manifest MACs have a key without it). Moving a wrapped key from one context to another is one
ReEncrypt: the plaintext key never leaves the key service. A copy under another KMS key gets a
fresh data key (GenerateDataKeyWithoutPlaintext) under the new key and the new snapshot's context.
Unwrapping (Decrypt) happens only where sectors must be decrypted: restore under another key or to
a GCM volume, and copies under another key. Callers: engine, restore.
"""

from __future__ import annotations

import base64
from typing import Any, TypeAlias

from volumed.errors import KeyAccessError, aws_error_code, aws_error_message
from volumed.volume.header import CONTEXT_DB, CONTEXT_EBS
from volumed.snapshot.objects import Manifest
from volumed.volume.keywrap import new_wrapped_key, unwrap

# boto3's "kms" client or volumed.kms's embedded service (the same methods, responses and errors);
# boto3 ships no types, so the calls are not checked.
KmsClient: TypeAlias = Any
Context: TypeAlias = dict[str, str]

KEY_BYTES = {"xts": 64, "gcm": 32}

# The manifest-MAC marker: a pair in the encryption context of every snapshot key wrapped for a
# snapshot whose manifest is MAC'd from birth (every snapshot and copy this volumed makes, and every
# manifest `snapshot seal` seals). KMS binds the context to the wrapped key, so a key that unwraps
# under a context with the marker proves its manifest must carry a MAC: a writer of the store who
# strips the MAC (to have a spliced manifest sealed) cannot strip the marker without the key no
# longer unwrapping. Keys of snapshots made before manifest MACs have no marker (legacy).
MAC_MARKER = "volumed:manifest-mac"
MAC_MARKER_VERSION = "v1"


def snapshot_context(db_id: str, snap_id: str, *, marked: bool = True) -> Context:
    """The encryption context of a snapshot's wrapped data key: with the manifest-MAC marker
    (``marked``, every key this volumed wraps), or the legacy context of older snapshots."""
    ctx = {CONTEXT_DB: db_id, CONTEXT_EBS: snap_id}
    if marked:
        ctx[MAC_MARKER] = MAC_MARKER_VERSION
    return ctx


def has_mac_marker(ctx: object) -> bool:
    """True if the context (as a manifest states it) carries the manifest-MAC marker, whatever its
    value: only the KMS Decrypt under it proves it is the key's."""
    return isinstance(ctx, dict) and MAC_MARKER in ctx


def _refused(action: str, key: str, exc: Exception) -> KeyAccessError:
    """The KeyAccessError for a KMS refusal; anything that is not a KMS answer is re-raised."""
    code = aws_error_code(exc)
    if code is None:
        raise exc
    msg = aws_error_message(exc)
    return KeyAccessError(f"{action} with KMS key {key} failed: {code}: {msg} (check that the key "
                          "is enabled and that your principal may use it)", code=code)


def rewrap(kms: KmsClient, blob: bytes, src_arn: str, src_ctx: Context, dst_key: str, dst_ctx: Context) -> tuple[bytes, str]:
    """ReEncrypt ``blob`` from (src_arn, src_ctx) to (dst_key, dst_ctx): (new blob, dest key ARN).
    KMS refusals become KeyAccessError with the AWS code."""
    try:
        resp = kms.re_encrypt(CiphertextBlob=blob, SourceKeyId=src_arn, SourceEncryptionContext=src_ctx,
                              DestinationKeyId=dst_key, DestinationEncryptionContext=dst_ctx)
    except Exception as exc:
        raise _refused("ReEncrypt of the snapshot key", src_arn, exc) from None
    return bytes(resp["CiphertextBlob"]), str(resp["KeyId"])


def fresh(kms: KmsClient, key_id: str, cipher: str, ctx: Context) -> tuple[bytes, str]:
    """A new wrapped data key for ``cipher`` under ``key_id`` and ``ctx``: (blob, key ARN)."""
    return new_wrapped_key(kms, key_id, KEY_BYTES[cipher], ctx)


def open_key(kms: KmsClient, key_arn: str, wrapped: bytes, ctx: Context, cipher: str) -> bytearray:
    """The plaintext data key (Decrypt of ``wrapped`` under ``key_arn`` and ``ctx``); the caller
    hands it to a cipher (which wipes it) or wipes it."""
    return unwrap(kms, key_arn, wrapped, ctx, expect_len=KEY_BYTES[cipher])


def open_snapshot_key(kms: KmsClient, manifest: Manifest) -> bytearray:
    """open_key for a snapshot's own wrapped key."""
    return open_key(kms, manifest["key_arn"], base64.b64decode(manifest["wrapped_key"]),
                    manifest["context"], manifest["volume"]["cipher"])


def key_manager(kms: KmsClient, key_id: str) -> tuple[str, str]:
    """(key ARN, KeyManager: "AWS" or "CUSTOMER") from DescribeKey."""
    try:
        meta = kms.describe_key(KeyId=key_id)["KeyMetadata"]
    except Exception as exc:
        raise _refused("DescribeKey", key_id, exc) from None
    return meta["Arn"], meta.get("KeyManager", "CUSTOMER")
