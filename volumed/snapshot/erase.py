"""``volumed delete VOLUME``: retire the volume's grants, crypto-erase its header, remove the file.

Order: lock the backing file (a mounted volume's daemon holds the flock: refused, nothing
changed); read the header; ListGrants on the volume's key and retire every grant the mount made
for this volume (named ``volumed-<volume uuid>-<host>``, volumed.mount.attach.grant_name); then
overwrite every copy of the wrapped key (volumed.volume.erase.crypto_erase) and unlink the file.
A key that no longer exists or is pending deletion has no usable grants: deletion goes on. Any
other refusal to list grants stops before the header is touched. Callers: the CLI, tests.
"""

from __future__ import annotations

import fcntl
import os
from typing import Any

from volumed.errors import KeyAccessError, StateError, aws_error_code
from volumed.snapshot.keys import KmsClient
from volumed.volume.device import _open_backing, load_header
from volumed.volume.erase import crypto_erase

_NO_GRANTS = ("NotFoundException", "KMSInvalidStateException", "DisabledException")


def volume_grants(kms: KmsClient, key_arn: str, volume_uuid: str) -> list[dict[str, Any]]:
    """The grants the mount created for this volume (by name), on any host."""
    prefix = f"volumed-{volume_uuid}-"
    out, marker = [], None
    while True:
        kw = {"KeyId": key_arn}
        if marker:
            kw["Marker"] = marker
        resp = kms.list_grants(**kw)
        out += [g for g in resp.get("Grants", []) if str(g.get("Name", "")).startswith(prefix)]
        if not resp.get("Truncated"):
            return out
        marker = resp.get("NextMarker")


def _retire(kms: KmsClient, key_arn: str, grant_id: str) -> None:
    """RetireGrant, else RevokeGrant (the key administrator may revoke any grant)."""
    try:
        kms.retire_grant(KeyId=key_arn, GrantId=grant_id)
    except Exception:
        kms.revoke_grant(KeyId=key_arn, GrantId=grant_id)


def delete_volume(path: str, *, kms: KmsClient) -> dict[str, Any]:
    """Delete the unmounted volume at ``path``; returns {"grants_retired", "erased_bytes"}."""
    path = os.fspath(path)
    backing = _open_backing(path)
    try:
        try:
            fcntl.flock(backing.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StateError(f"volume {path} is mounted (or open in another volumed process): "
                             "unmount it first (volumed unmount MOUNTPOINT)") from None
        h = load_header(backing, path)[0]
        try:
            grants = volume_grants(kms, h.key_arn, h.uuid)
        except Exception as exc:
            code = aws_error_code(exc)
            if code in _NO_GRANTS:
                grants = []
            elif code is not None:
                raise KeyAccessError(f"cannot delete {path}: ListGrants on {h.key_arn} failed: {code} "
                                     "(deleting needs kms:ListGrants and kms:RevokeGrant on the key); "
                                     "nothing was changed", code=code) from None
            else:
                raise
        for g in grants:
            try:
                _retire(kms, h.key_arn, g["GrantId"])
            except Exception as exc:
                code = aws_error_code(exc)
                if code is None:
                    raise
                raise KeyAccessError(f"cannot delete {path}: retiring grant {g['GrantId']} failed: "
                                     f"{code}; nothing in the volume was changed", code=code) from None
        erased = crypto_erase(backing, h)
        os.unlink(path)
    finally:
        backing.close()
    return {"grants_retired": len(grants), "erased_bytes": erased, "volume_uuid": h.uuid,
            "ebs_id": h.ebs_id}
