"""The keystore's root key and the wrapping of key material under it.

The root key is 32 bytes, either random in ``<keystore>/root.key`` (mode 0600, created once) or
derived with scrypt from the passphrase in ``VOLUMED_KEYSTORE_PASSPHRASE`` (salt and the scrypt
parameters N, r, p in the database beside it, so they can be raised later; a keystore made before
they were stored used N=2**15, r=8, p=1). A root key file others could read is refused. Key material is stored only as ``wrap(root, key_id, version, material)``:
12-byte nonce || AES-256-GCM(material) || tag, with AAD binding key id and version, so a wrapped
blob cannot be moved to another key or version. Callers: volumed.kms.store.keystore (load/create),
volumed.kms.ops.keys (wrap/unwrap), volumed.kms.server.accesskeys (access key secrets).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from volumed.errors import VolumedError

ROOT_KEY_FILE = "root.key"
PASSPHRASE_ENV = "VOLUMED_KEYSTORE_PASSPHRASE"
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**17, 8, 1  # new keystores: 128 MiB of memory per guess
LEGACY_SCRYPT = (2**15, 8, 1)  # keystores that stored no parameters were made with these
MIN_SCRYPT_N = 2**14  # stored parameters below this are refused (a downgraded database)
MAX_SCRYPT_N = 2**22
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
    """The root key from ``root.key``; KeystoreError naming the fix when it is missing, damaged,
    or readable or writable by anyone but its owner (then every wrapped key is as good as public)."""
    path = os.path.join(directory, ROOT_KEY_FILE)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise KeystoreError(f"keystore root key {path} is missing; without it no key in "
                            f"{directory} can be used (restore it from your backup)") from None
    except PermissionError:
        raise KeystoreError(f"cannot read keystore root key {path}: permission denied; "
                            f"run as the keystore's owner") from None
    except OSError as exc:  # ELOOP: a symlink planted in its place
        raise KeystoreError(f"cannot open keystore root key {path}: {exc.strerror}; it must be "
                            f"a regular file") from None
    try:
        st = os.fstat(fd)
        mode = st.st_mode & 0o777
        if mode & 0o077:
            raise KeystoreError(f"keystore root key {path} has mode {mode:04o}: other users could "
                                f"read or replace it and unwrap every key; run 'chmod 600 {path}'")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = bytearray(f.read(33))
    finally:
        os.close(fd)
    if len(data) != 32:
        raise KeystoreError(f"keystore root key {path} is damaged (expected 32 bytes)")
    return data


def scrypt_params(meta: Mapping[str, str]) -> tuple[int, int, int]:
    """(N, r, p) of a passphrase keystore from its meta rows: the stored ones, or LEGACY_SCRYPT
    for a keystore that stored none. KeystoreError if the stored ones are out of range."""
    if "scrypt_n" not in meta:
        return LEGACY_SCRYPT
    try:
        n, r, p = int(meta["scrypt_n"]), int(meta["scrypt_r"]), int(meta["scrypt_p"])
    except (KeyError, ValueError):
        raise KeystoreError("the keystore's scrypt parameters are damaged") from None
    if not (MIN_SCRYPT_N <= n <= MAX_SCRYPT_N and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16):
        raise KeystoreError(f"the keystore's scrypt parameters N={n} r={r} p={p} are out of range "
                            f"(N a power of two in 2**14..2**22): the database was altered")
    return n, r, p


def derive_passphrase_key(passphrase: str, salt: bytes,
                          params: tuple[int, int, int] = (SCRYPT_N, SCRYPT_R, SCRYPT_P)) -> bytearray:
    """scrypt(passphrase, salt) -> 32-byte root key, with ``params`` (N, r, p)."""
    n, r, p = params
    return bytearray(hashlib.scrypt(passphrase.encode(), salt=salt, n=n, r=r, p=p,
                                    maxmem=2 * 128 * r * n * p + (1 << 20), dklen=32))


def check_value(root: bytes | bytearray) -> str:
    """A public value that tells a right root key from a wrong one (HMAC of a fixed label)."""
    return hmac.new(bytes(root), _CHECK_LABEL, hashlib.sha256).hexdigest()


def verify(root: bytes | bytearray, expected: str, directory: str) -> None:
    """KeystoreError unless ``root`` is this keystore's root key."""
    if not hmac.compare_digest(check_value(root), expected):
        raise KeystoreError(f"wrong root key for keystore {directory} (wrong "
                            f"{PASSPHRASE_ENV} or a root.key from another keystore)")


def _aad(key_id: str, version: int) -> bytes:
    return _WRAP_LABEL + b"\0" + key_id.encode() + b"\0" + str(version).encode()


def wrap(root: bytes | bytearray, key_id: str, version: int, material: bytes | bytearray) -> bytes:
    """Encrypt key material for storage."""
    nonce = os.urandom(12)
    return nonce + AESGCM(bytes(root)).encrypt(nonce, bytes(material), _aad(key_id, version))


def unwrap(root: bytes | bytearray, key_id: str, version: int, wrapped: bytes) -> bytearray:
    """Decrypt stored key material; KeystoreError if it was altered or moved."""
    try:
        return bytearray(AESGCM(bytes(root)).decrypt(wrapped[:12], wrapped[12:], _aad(key_id, version)))
    except InvalidTag:
        raise KeystoreError(f"stored key material of {key_id} version {version} failed to "
                            f"verify: the keystore database was altered") from None


