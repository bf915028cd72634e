"""Pure-Python reference sector cipher (cryptography + numpy). See volumed.cipher for the contract.

The fallback when the native extension (native/, ``volumed._native``) is not built, and the oracle
the native core is tested against byte for byte (tests/cipher/). Vectorised so that a batch costs a
few library calls, not one per sector:

XTS (IEEE 1619, whole blocks only: sector sizes are multiples of 512)
    1. one AES-ECB call under K2 turns all n sector tweaks into T_0 .. T_{n-1};
    2. numpy computes every block's tweak T_i * alpha^j in GF(2^128) for j < sector_size/16, by
       doubling: columns [m, 2m) are columns [0, m) times x^m, so about log2(blocks) steps;
    3. XOR, one AES-ECB call under K1 over the whole batch, XOR.
GCM
    one AESGCM call per sector (the AEAD has no batch interface).

Keys live in bytearrays that close() overwrites; cryptography copies them into its own OpenSSL
contexts for the length of a call.
"""

from __future__ import annotations

import hmac
import struct
from typing import TYPE_CHECKING, SupportsIndex

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

if TYPE_CHECKING:
    from typing_extensions import Buffer, Self

# What the known-answer helpers take: byte strings whose length they check.
Bytes = bytes | bytearray | memoryview
U64Array = npt.NDArray[np.uint64]

MAX_SECTOR_SIZE = 16 * 1024 * 1024
_U64 = np.dtype("<u8")
_M64 = (1 << 64) - 1


def _take_key(key: Buffer, size: int) -> bytearray:
    """Copy key (any bytes-like of ``size`` bytes) into a new bytearray; overwrite the caller's
    buffer with zeros when it is writable. Wrong length: ValueError, the caller's buffer untouched."""
    view = memoryview(key).cast("B")
    if len(view) != size:
        raise ValueError(f"key must be {size} bytes, got {len(view)}")
    owned = bytearray(view)
    if not view.readonly:
        view[:] = bytes(size)
    return owned


def _check_sector_size(sector_size: int, multiple_of_512: bool) -> int:
    if not (0 < sector_size <= MAX_SECTOR_SIZE) or (multiple_of_512 and sector_size % 512):
        kind = "multiple of 512 " if multiple_of_512 else "number "
        raise ValueError(f"sector_size must be a positive {kind}at most {MAX_SECTOR_SIZE}, got {sector_size}")
    return sector_size


def _check_sector(first_sector: SupportsIndex, n: int, step: int, what: str) -> int:
    """first_sector as an int whose batch's largest counter ((first+n-1)*step) fits 64 bits."""
    first = int(first_sector.__index__())
    if not 0 <= first <= _M64:
        raise ValueError("first_sector must be an integer in 0..2**64-1")
    if n and (first + n - 1) * step > _M64:
        raise ValueError(f"sector numbers of this batch overflow {what}")
    return first


def _check_buf(buf: Buffer, out: Buffer | None, sector_size: int) -> tuple[memoryview, memoryview]:
    """The byte views of buf and of the output (out, or buf itself), checked as the native core
    checks them: writable output, whole sectors, equal lengths, no partial overlap."""
    src = memoryview(buf).cast("B")
    dst = src if out is None else memoryview(out).cast("B")
    if dst.readonly:
        raise ValueError("output buffer is read-only")
    if len(src) % sector_size:
        raise ValueError(f"buffer length {len(src)} is not a multiple of the sector size {sector_size}")
    if len(dst) != len(src):
        raise ValueError("out must have the same length as buf")
    if out is not None and len(src):
        a, b = np.frombuffer(src, np.uint8), np.frombuffer(dst, np.uint8)
        if a.ctypes.data != b.ctypes.data and np.may_share_memory(a, b):
            raise ValueError("out overlaps buf without being the same memory")
    return src, dst


def _side(obj: Buffer, want: int, writable: bool, what: str) -> memoryview:
    view = memoryview(obj).cast("B")
    if len(view) != want or (writable and view.readonly):
        prefix = "a writable buffer of " if writable else ""
        raise ValueError(f"{what} must be {prefix}{want} bytes, got {len(view)}")
    return view


def _times_x_pow(lo: U64Array, hi: U64Array, m: int) -> tuple[U64Array, U64Array]:
    """Multiply GF(2^128) elements (XTS byte order: 128-bit little-endian, as lo/hi uint64 arrays)
    by x^m, 1 <= m <= 64, reducing modulo x^128 + x^7 + x^2 + x + 1."""
    if m == 64:
        over, hi2, lo2 = hi, lo, np.zeros_like(lo)
    else:
        s, r = np.uint64(m), np.uint64(64 - m)
        over, hi2, lo2 = hi >> r, (hi << s) | (lo >> r), lo << s
    # over * x^128 == over * (x^7 + x^2 + x + 1); deg(over) < 64, so the result fits 128 bits.
    one, two, seven = np.uint64(1), np.uint64(2), np.uint64(7)
    red_lo = over ^ (over << one) ^ (over << two) ^ (over << seven)
    red_hi = (over >> np.uint64(63)) ^ (over >> np.uint64(62)) ^ (over >> np.uint64(57))
    return lo2 ^ red_lo, hi2 ^ red_hi


def _block_tweaks(t: U64Array, blocks: int) -> U64Array:
    """From encrypted sector tweaks t (n x 2 uint64, lo/hi) the tweak of every block:
    an (n, blocks, 2) array whose [i, j] is t[i] * alpha^j."""
    n = t.shape[0]
    tw = np.empty((n, blocks, 2), dtype=_U64)
    tw[:, 0, :] = t
    done = 1
    while done < blocks:
        take = min(done, blocks - done)
        lo, hi = tw[:, :take, 0], tw[:, :take, 1]
        m = done
        while m:
            step = min(m, 64)
            lo, hi = _times_x_pow(lo, hi, step)
            m -= step
        tw[:, done:done + take, 0] = lo
        tw[:, done:done + take, 1] = hi
        done += take
    return tw


def xts_units(key: Bytes, tweaks: bytes, data: Buffer, encrypt: bool) -> memoryview:
    """XTS over n data units of equal length (a multiple of 16): data unit i uses the 16-byte tweak
    tweaks[16i:16i+16]. key is 32 (AES-128-XTS) or 64 (AES-256-XTS) bytes, K1 || K2. The core of
    XtsCipher, and the reference side of the XTS known-answer tests (kat_xts)."""
    half = len(key) // 2
    k1, k2 = memoryview(key)[:half], memoryview(key)[half:]
    n = len(tweaks) // 16
    data = memoryview(data).cast("B")
    blocks = len(data) // (16 * n) if n else 0
    if not n:
        return memoryview(b"")
    t = Cipher(algorithms.AES(k2), modes.ECB()).encryptor().update(tweaks)
    tw = _block_tweaks(np.frombuffer(t, _U64).reshape(n, 2), blocks)
    x = np.frombuffer(data, _U64).reshape(n, blocks, 2) ^ tw
    aes = Cipher(algorithms.AES(k1), modes.ECB())
    ctx = aes.encryptor() if encrypt else aes.decryptor()
    y = np.frombuffer(ctx.update(x.reshape(-1).data.cast("B")), _U64).reshape(n, blocks, 2)
    np.bitwise_xor(y, tw, out=x)
    return x.reshape(-1).data.cast("B")


INT_MAX = 2**31 - 1


def _kat_len_ok(fn: str, what: str, n: int) -> None:
    """The native helpers hand a whole buffer to one int-sized OpenSSL call; both sides refuse
    longer ones with the same error."""
    if n > INT_MAX:
        raise ValueError(f"{fn}: {what} of {n} bytes is longer than INT_MAX ({INT_MAX} bytes)")


def kat_xts(key: Bytes, tweak: Bytes, data: Bytes, encrypt: bool) -> bytes:
    """One XTS data unit, for known-answer tests only (mirrors volumed._native.kat_xts)."""
    if len(key) not in (32, 64) or len(tweak) != 16 or len(data) % 16 or not len(data):
        raise ValueError("kat_xts needs a 32- or 64-byte key, a 16-byte tweak and whole blocks")
    _kat_len_ok("kat_xts", "data", len(data))
    return bytes(xts_units(bytes(key), bytes(tweak), data, encrypt))


def kat_gcm_seal(key: Bytes, nonce: Bytes, aad: Bytes, data: Bytes) -> tuple[bytes, bytes]:
    """AES-256-GCM seal, for known-answer tests only (mirrors volumed._native.kat_gcm_seal)."""
    if len(key) != 32 or len(nonce) != 12:
        raise ValueError("kat_gcm needs a 32-byte key and a 12-byte nonce")
    _kat_len_ok("kat_gcm_seal", "aad", len(aad))
    _kat_len_ok("kat_gcm_seal", "data", len(data))
    ct = AESGCM(bytes(key)).encrypt(bytes(nonce), bytes(data), bytes(aad))
    return ct[:-16], ct[-16:]


def kat_gcm_open(key: Bytes, nonce: Bytes, aad: Bytes, data: Bytes, tag: Bytes) -> bytes | None:
    """AES-256-GCM open; None when the tag does not verify (known-answer tests only)."""
    if len(key) != 32 or len(nonce) != 12:
        raise ValueError("kat_gcm needs a 32-byte key and a 12-byte nonce")
    _kat_len_ok("kat_gcm_open", "aad", len(aad))
    _kat_len_ok("kat_gcm_open", "data", len(data))
    if len(tag) != 16:
        raise ValueError("kat_gcm_open needs a 16-byte tag")
    try:
        return AESGCM(bytes(key)).decrypt(bytes(nonce), bytes(data) + bytes(tag), bytes(aad))
    except InvalidTag:
        return None


class _Keyed:
    """Key ownership shared by both ciphers: the bytearray, close(), the context manager."""

    _key: bytearray | None = None

    def _live_key(self) -> bytearray:
        if self._key is None:
            raise ValueError("cipher is closed")
        return self._key

    @property
    def closed(self) -> bool:
        return self._key is None

    def close(self) -> None:
        """Overwrite the key; later calls raise ValueError. Idempotent."""
        if self._key is not None:
            self._key[:] = bytes(len(self._key))
            self._key = None

    def __enter__(self) -> Self:
        self._live_key()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class XtsCipher(_Keyed):
    """AES-256-XTS sectors with the LUKS2 aes-xts-plain64 tweak (see volumed.cipher)."""

    def __init__(self, key: Buffer, sector_size: int = 4096) -> None:
        self.sector_size = _check_sector_size(sector_size, True)
        self._key = _take_key(key, 64)
        if hmac.compare_digest(bytes(self._key[:32]), bytes(self._key[32:])):
            self.close()
            raise ValueError("XTS key halves must differ")

    def _run(self, buf: Buffer, first_sector: SupportsIndex, out: Buffer | None, encrypt: bool) -> None:
        key = self._live_key()
        ss = self.sector_size
        src, dst = _check_buf(buf, out, ss)
        n = len(src) // ss
        step = ss // 512
        first = _check_sector(first_sector, n, step, "the 64-bit tweak")
        if not n:
            return
        units = np.arange(n, dtype=_U64) * np.uint64(step) + np.uint64(first * step)
        tweaks = np.zeros((n, 2), dtype=_U64)
        tweaks[:, 0] = units
        dst[:] = xts_units(key, tweaks.tobytes(), src, encrypt)

    def encrypt(self, buf: Buffer, first_sector: int, out: Buffer | None = None) -> None:
        """Encrypt whole sectors; sector i of buf is sector first_sector + i."""
        self._run(buf, first_sector, out, True)

    def decrypt(self, buf: Buffer, first_sector: int, out: Buffer | None = None) -> None:
        """Decrypt whole sectors; sector i of buf is sector first_sector + i."""
        self._run(buf, first_sector, out, False)


class GcmCipher(_Keyed):
    """AES-256-GCM sectors, one nonce and tag per sector, AAD = aad_prefix || be64(sector)."""

    def __init__(self, key: Buffer, aad_prefix: Buffer, sector_size: int = 4096) -> None:
        prefix = bytes(aad_prefix)
        if len(prefix) > 1 << 20:
            raise ValueError("aad_prefix must be at most 1 MiB")
        self._aad_prefix = prefix
        self.sector_size = _check_sector_size(sector_size, False)
        self._key = _take_key(key, 32)

    def _begin(self, buf: Buffer, first_sector: SupportsIndex, nonces: Buffer, tags: Buffer,
               out: Buffer | None, seal: bool
               ) -> tuple[AESGCM, memoryview, memoryview, int, int, memoryview, memoryview]:
        """Checked arguments of one call: (aead, src, dst, first, n, nonce view, tag view)."""
        aead = AESGCM(memoryview(self._live_key()))
        src, dst = _check_buf(buf, out, self.sector_size)
        n = len(src) // self.sector_size
        first = _check_sector(first_sector, n, 1, "64 bits")
        nv = _side(nonces, 12 * n, False, "nonces")
        tv = _side(tags, 16 * n, seal, "tags_out" if seal else "tags")
        return aead, src, dst, first, n, nv, tv

    def _aad(self, sector: int) -> bytes:
        return self._aad_prefix + struct.pack(">Q", sector)

    def derive(self, salt: Buffer, info: Buffer, aad_prefix: Buffer) -> GcmCipher:
        """A new GcmCipher keyed by HKDF-SHA256(this key, salt, info), with ``aad_prefix``."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        sub = bytearray(HKDF(algorithm=hashes.SHA256(), length=32, salt=bytes(salt),
                             info=bytes(info)).derive(bytes(self._live_key())))
        return GcmCipher(sub, aad_prefix, self.sector_size)

    def encrypt(self, buf: Buffer, first_sector: int, nonces: Buffer, tags_out: Buffer,
                out: Buffer | None = None) -> None:
        """Seal whole sectors; tags_out receives one 16-byte tag per sector."""
        aead, src, dst, first, n, nv, tv = self._begin(buf, first_sector, nonces, tags_out, out, True)
        ss = self.sector_size
        for i in range(n):
            ct = aead.encrypt(nv[12 * i:12 * i + 12], src[i * ss:(i + 1) * ss], self._aad(first + i))
            dst[i * ss:(i + 1) * ss] = ct[:ss]
            tv[16 * i:16 * i + 16] = ct[ss:]

    def decrypt(self, buf: Buffer, first_sector: int, nonces: Buffer, tags: Buffer,
                out: Buffer | None = None) -> list[int]:
        """Open whole sectors; returns the indices (relative to buf) that failed to verify, whose
        output is zero-filled."""
        aead, src, dst, first, n, nv, tv = self._begin(buf, first_sector, nonces, tags, out, False)
        ss = self.sector_size
        failed: list[int] = []
        for i in range(n):
            sealed = bytes(src[i * ss:(i + 1) * ss]) + bytes(tv[16 * i:16 * i + 16])
            try:
                pt = aead.decrypt(nv[12 * i:12 * i + 12], sealed, self._aad(first + i))
            except InvalidTag:
                failed.append(i)
                pt = bytes(ss)
            dst[i * ss:(i + 1) * ss] = pt
        return failed
