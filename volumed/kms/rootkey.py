"""The keystore's root key and the wrapping of key material under it.

The root key is 32 bytes, either random in ``<keystore>/root.key`` (mode 0600, created once) or
derived with scrypt from the passphrase in ``VOLUMED_KEYSTORE_PASSPHRASE`` (salt and parameters in
the database). Key material is stored only as ``wrap(root, key_id, version, material)``:
12-byte nonce || AES-256-GCM(material) || tag, with AAD binding key id and version, so a wrapped
blob cannot be moved to another key or version. Callers: volumed.kms.keystore (load/create),
volumed.kms.material (wrap/unwrap).
"""

from __future__ import annotations

import hashlib
import hmac
import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from volumed.errors import VolumedError

ROOT_KEY_FILE = "root.key"
PASSPHRASE_ENV = "VOLUMED_KEYSTORE_PASSPHRASE"
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
_CHECK_LABEL = b"volumed-keystore-root-check-v1"
_WRAP_LABEL = b"volumed-key-material-v1"


class KeystoreError(VolumedError):
    """The keystore cannot be opened: missing or wrong root key, unreadable directory."""

    exit_code = 5
    code = "KeystoreError"


def create_file_key(directory: str) -> None:
    """Write a new random root key file (0600). Fails if one exists: a root key is never replaced."""
    path = os.path.join(directory, ROOT_KEY_FILE)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, os.urandom(32))
        os.fsync(fd)
    finally:
        os.close(fd)


def read_file_key(directory: str) -> bytearray:
    """The root key from ``root.key``; KeystoreError naming the fix when it is missing or damaged."""
    path = os.path.join(directory, ROOT_KEY_FILE)
    try:
        with open(path, "rb") as f:
            data = bytearray(f.read())
    except FileNotFoundError:
        raise KeystoreError(f"keystore root key {path} is missing; without it no key in "
                            f"{directory} can be used (restore it from your backup)") from None
    except PermissionError:
        raise KeystoreError(f"cannot read keystore root key {path}: permission denied; "
                            f"run as the keystore's owner") from None
    if len(data) != 32:
        raise KeystoreError(f"keystore root key {path} is damaged (expected 32 bytes)")
    return data


def derive_passphrase_key(passphrase: str, salt: bytes) -> bytearray:
    """scrypt(passphrase, salt) -> 32-byte root key."""
    return bytearray(hashlib.scrypt(passphrase.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R,
                                    p=SCRYPT_P, maxmem=64 * 1024 * 1024, dklen=32))


def check_value(root: bytes) -> str:
    """A public value that tells a right root key from a wrong one (HMAC of a fixed label)."""
    return hmac.new(bytes(root), _CHECK_LABEL, hashlib.sha256).hexdigest()


def verify(root: bytes, expected: str, directory: str) -> None:
    """KeystoreError unless ``root`` is this keystore's root key."""
    if not hmac.compare_digest(check_value(root), expected):
        raise KeystoreError(f"wrong root key for keystore {directory} (wrong "
                            f"{PASSPHRASE_ENV} or a root.key from another keystore)")


def _aad(key_id: str, version: int) -> bytes:
    return _WRAP_LABEL + b"\0" + key_id.encode() + b"\0" + str(version).encode()


def wrap(root: bytes, key_id: str, version: int, material: bytes) -> bytes:
    """Encrypt key material for storage."""
    nonce = os.urandom(12)
    return nonce + AESGCM(bytes(root)).encrypt(nonce, bytes(material), _aad(key_id, version))


def unwrap(root: bytes, key_id: str, version: int, wrapped: bytes) -> bytearray:
    """Decrypt stored key material; KeystoreError if it was altered or moved."""
    from cryptography.exceptions import InvalidTag

    try:
        return bytearray(AESGCM(bytes(root)).decrypt(wrapped[:12], wrapped[12:], _aad(key_id, version)))
    except InvalidTag:
        raise KeystoreError(f"stored key material of {key_id} version {version} failed to "
                            f"verify: the keystore database was altered") from None


def wipe(buf: bytearray | None) -> None:
    """Overwrite a secret buffer in place."""
    if buf is not None:
        for i in range(len(buf)):
            buf[i] = 0
