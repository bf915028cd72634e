"""Sector cipher: encrypt or decrypt a batch of consecutive sectors in place.

This is the contract shared by the native core (``volumed._native``, built from native/) and the
pure-Python reference (``volumed.cipher.reference``). Both produce byte-identical output.

XtsCipher(key, sector_size=4096)
    key: 64-byte bytearray (AES-256-XTS, two 256-bit halves; equal halves are refused). The
    constructor copies the key into memory it owns and overwrites the caller's bytearray with zeros.
    encrypt(buf, first_sector, out=None) / decrypt(buf, first_sector, out=None)
        buf: any contiguous buffer (bytes-like; writable when out is None), length a multiple of
        sector_size. Sector i of buf is sector number ``first_sector + i`` of the segment. The tweak
        is LUKS2 aes-xts-plain64: ``first_sector*(sector_size//512) + i*(sector_size//512)`` as a
        64-bit little-endian integer zero-padded to 16 bytes. Result written to out (same length)
        or in place.
    close(): wipe the key. Any later call raises ValueError.

GcmCipher(key, aad_prefix, sector_size=4096)
    key: 32-byte bytearray (AES-256-GCM), wiped as above. aad_prefix: bytes bound into every
    sector's additional data (the volume format puts the volume UUID there).
    AAD of sector n = aad_prefix || n as 8-byte big-endian.
    encrypt(buf, first_sector, nonces, tags_out, out=None)
        nonces: n*12 bytes, one 96-bit nonce per sector (the caller guarantees uniqueness);
        tags_out: writable n*16 bytes receiving the tags.
    decrypt(buf, first_sector, nonces, tags, out=None) -> list[int]
        Returns the indices (relative to buf) of sectors that failed to verify; those sectors'
        output is zero-filled, never unauthenticated plaintext. Sectors that verify are decrypted.
    derive(salt, info, aad_prefix) -> GcmCipher
        A new cipher keyed by HKDF-SHA256(IKM = this key, salt, info) (32 bytes) with
        ``aad_prefix``; the native core derives it from locked memory into locked memory.
    close(): wipe the key.

``implementation()`` names the active implementation ("native (OpenSSL x.y)" or "reference").
Set VOLUMED_REQUIRE_NATIVE=1 to make a missing or broken native extension an error;
VOLUMED_CIPHER=reference forces the reference (for tests and benchmarks).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from types import ModuleType
from typing import TYPE_CHECKING

from volumed.cipher import reference

SECTOR_SIZE = 4096
XTS_KEY_BYTES = 64
GCM_KEY_BYTES = 32
GCM_NONCE_BYTES = 12
GCM_TAG_BYTES = 16


def _load_native() -> tuple[ModuleType | None, ImportError | None]:
    try:
        # deferred: the extension is optional (not built, or VOLUMED_CIPHER=reference skips it)
        from volumed import _native
    except ImportError as exc:
        return None, exc
    if not hasattr(_native, "XtsCipher"):
        return None, ImportError("volumed._native has no XtsCipher (stub build)")
    try:
        _self_test(_native)
    except Exception as exc:  # a broken build must not encrypt anything
        return None, ImportError(f"volumed._native failed its start-up self-test: {exc}")
    return _native, None


# Start-up known answers. XTS: IEEE 1619-2007 vector 10 (AES-256, data unit 0xff, 512 bytes of
# 00..ff twice). GCM: a NIST CAVS 14.0 gcmEncryptExtIV256 vector with 16-byte AAD, mapped onto
# aad_prefix = AAD[:8] and sector number = AAD[8:] (big-endian).
_KAT_XTS_KEY = ("2718281828459045235360287471352662497757247093699959574966967627"
                "3141592653589793238462643383279502884197169399375105820974944592")
_KAT_XTS_SHA256 = "e97e974fa393af794f7a4684395814cf820de60a01eaec677d87b452e316b364"
_KAT_GCM = ("92e11dcdaa866f5ce790fd24501f92509aacf4cb8b1339d50c9c1240935dd08b", "ac93a1a6145299bde902f21a",
            "2d71bcfa914e4ac045b2aa60955fad24", "1e0889016f67601c8ebea4943bc23ad6",
            "8995ae2e6df3dbf96fac7b7137bae67f", "eca5aa77d51d4a0a14d9c51e1da474ab")


def _self_test(native: ModuleType) -> None:
    """Known-answer check of a freshly imported native module (called once by _load_native):
    XTS encrypt/decrypt and GCM seal/open/tamper. Raises AssertionError on any mismatch."""
    key = bytearray.fromhex(_KAT_XTS_KEY)
    plain = bytes(range(256)) * 2
    buf = bytearray(plain)
    xts = native.XtsCipher(key, 512)
    xts.encrypt(buf, 0xFF)
    assert hashlib.sha256(buf).hexdigest() == _KAT_XTS_SHA256, "XTS known answer"
    xts.decrypt(buf, 0xFF)
    xts.close()
    assert buf == plain, "XTS round trip"

    k, iv, pt, aad, ct, tag = (bytes.fromhex(h) for h in _KAT_GCM)
    gcm = native.GcmCipher(bytearray(k), aad[:8], len(pt))
    sector = int.from_bytes(aad[8:], "big")
    buf, tags = bytearray(pt), bytearray(16)
    gcm.encrypt(buf, sector, iv, tags)
    assert (bytes(buf), bytes(tags)) == (ct, tag), "GCM known answer"
    assert gcm.decrypt(buf, sector, iv, tags) == [] and buf == pt, "GCM round trip"
    tags[0] ^= 1
    assert gcm.decrypt(buf, sector, iv, tags) == [0] and buf == bytes(len(pt)), "GCM tamper"
    gcm.close()


def _select() -> tuple[ModuleType, str]:
    forced = os.environ.get("VOLUMED_CIPHER", "").lower()
    if forced == "reference":
        return reference, "reference"
    native, err = _load_native()
    if native is not None:
        return native, f"native ({native.openssl_version()})"
    if os.environ.get("VOLUMED_REQUIRE_NATIVE") == "1" or forced == "native":
        raise ImportError(f"native sector cipher required but unavailable: {err}")
    warnings.warn(
        f"volumed: native sector cipher unavailable ({err}); using the slower pure-Python reference",
        RuntimeWarning,
        stacklevel=2,
    )
    return reference, "reference"


_impl, _impl_name = _select()
if TYPE_CHECKING:
    # The typed contract (volumed/_native.pyi); the reference implements the same API. The
    # redundant aliases mark them as this package's exports (strict mypy: no implicit re-export).
    from volumed._native import GcmCipher as GcmCipher, XtsCipher as XtsCipher
else:
    XtsCipher = _impl.XtsCipher
    GcmCipher = _impl.GcmCipher


def implementation() -> str:
    """Which sector cipher is active: "native (OpenSSL ...)" or "reference"."""
    return _impl_name


def native_module() -> ModuleType | None:
    """volumed._native when it is the active implementation (loaded, self-tested), else None."""
    return _impl if _impl is not reference else None
