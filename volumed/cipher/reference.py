"""Pure-Python reference sector cipher (cryptography). See volumed.cipher for the contract.

Simple first version: one cryptography call per sector. (To be vectorised with numpy.)
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def _take_key(key, size: int) -> bytearray:
    if len(key) != size:
        raise ValueError(f"key must be {size} bytes, got {len(key)}")
    owned = bytearray(key)
    if isinstance(key, bytearray):
        key[:] = bytes(len(key))
    return owned


def _check_buf(buf, out, sector_size: int) -> tuple[memoryview, memoryview]:
    src = memoryview(buf).cast("B")
    if len(src) % sector_size:
        raise ValueError(f"buffer length {len(src)} is not a multiple of the sector size {sector_size}")
    dst = src if out is None else memoryview(out).cast("B")
    if len(dst) != len(src):
        raise ValueError("out must have the same length as buf")
    if dst.readonly:
        raise ValueError("output buffer is read-only")
    return src, dst


class XtsCipher:
    def __init__(self, key, sector_size: int = 4096):
        if sector_size % 512 or sector_size <= 0:
            raise ValueError("sector_size must be a positive multiple of 512")
        self._key: bytearray | None = _take_key(key, 64)
        if self._key[:32] == self._key[32:]:
            self.close()
            raise ValueError("XTS key halves must differ")
        self.sector_size = sector_size

    def _run(self, buf, first_sector: int, out, encrypt: bool) -> None:
        if self._key is None:
            raise ValueError("cipher is closed")
        src, dst = _check_buf(buf, out, self.sector_size)
        ss = self.sector_size
        step = ss // 512
        key = bytes(self._key)
        for i in range(len(src) // ss):
            tweak = struct.pack("<QQ", (first_sector + i) * step, 0)
            c = Cipher(algorithms.AES(key), modes.XTS(tweak))
            ctx = c.encryptor() if encrypt else c.decryptor()
            dst[i * ss:(i + 1) * ss] = ctx.update(src[i * ss:(i + 1) * ss]) + ctx.finalize()

    def encrypt(self, buf, first_sector: int, out=None) -> None:
        self._run(buf, first_sector, out, True)

    def decrypt(self, buf, first_sector: int, out=None) -> None:
        self._run(buf, first_sector, out, False)

    def close(self) -> None:
        if self._key is not None:
            self._key[:] = bytes(len(self._key))
            self._key = None


class GcmCipher:
    def __init__(self, key, aad_prefix: bytes, sector_size: int = 4096):
        self._key: bytearray | None = _take_key(key, 32)
        self._aad_prefix = bytes(aad_prefix)
        self.sector_size = sector_size

    def _aead(self) -> AESGCM:
        if self._key is None:
            raise ValueError("cipher is closed")
        return AESGCM(bytes(self._key))

    def encrypt(self, buf, first_sector: int, nonces, tags_out, out=None) -> None:
        aead = self._aead()
        src, dst = _check_buf(buf, out, self.sector_size)
        ss = self.sector_size
        n = len(src) // ss
        nv = memoryview(nonces).cast("B")
        tv = memoryview(tags_out).cast("B")
        if len(nv) != 12 * n or len(tv) != 16 * n:
            raise ValueError("nonces must be 12*n bytes and tags_out 16*n bytes")
        for i in range(n):
            aad = self._aad_prefix + struct.pack(">Q", first_sector + i)
            ct = aead.encrypt(bytes(nv[i * 12:(i + 1) * 12]), bytes(src[i * ss:(i + 1) * ss]), aad)
            dst[i * ss:(i + 1) * ss] = ct[:ss]
            tv[i * 16:(i + 1) * 16] = ct[ss:]

    def decrypt(self, buf, first_sector: int, nonces, tags, out=None) -> list[int]:
        aead = self._aead()
        src, dst = _check_buf(buf, out, self.sector_size)
        ss = self.sector_size
        n = len(src) // ss
        nv = memoryview(nonces).cast("B")
        tv = memoryview(tags).cast("B")
        if len(nv) != 12 * n or len(tv) != 16 * n:
            raise ValueError("nonces must be 12*n bytes and tags 16*n bytes")
        failed = []
        for i in range(n):
            aad = self._aad_prefix + struct.pack(">Q", first_sector + i)
            try:
                pt = aead.decrypt(bytes(nv[i * 12:(i + 1) * 12]),
                                  bytes(src[i * ss:(i + 1) * ss]) + bytes(tv[i * 16:(i + 1) * 16]), aad)
            except InvalidTag:
                failed.append(i)
                pt = bytes(ss)
            dst[i * ss:(i + 1) * ss] = pt
        return failed

    def close(self) -> None:
        if self._key is not None:
            self._key[:] = bytes(len(self._key))
            self._key = None
