"""Differential tests: each implementation against an independent oracle (cryptography, one call
per sector, no numpy, no native code), and native against reference byte for byte.

Covers every sector count from 1 to 300, random first sectors (including beyond 2**32 and near the
64-bit end), in-place and separate output, and the buffer types callers use (bytearray, memoryview,
numpy arrays of bytes and of wider integers, read-only bytes as input when out is given).
"""

import os
import struct

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SS = 4096
MAX_SECTORS = 300
POOL = os.urandom(SS * MAX_SECTORS)
NONCES = os.urandom(12 * MAX_SECTORS)


def oracle_xts(key: bytes, data: bytes, first: int, encrypt: bool, ss: int = SS) -> bytes:
    out = bytearray()
    for i in range(len(data) // ss):
        c = Cipher(algorithms.AES(key), modes.XTS(struct.pack("<QQ", (first + i) * (ss // 512), 0)))
        ctx = c.encryptor() if encrypt else c.decryptor()
        out += ctx.update(data[i * ss:(i + 1) * ss]) + ctx.finalize()
    return bytes(out)


def oracle_gcm_seal(key: bytes, prefix: bytes, data: bytes, first: int, nonces: bytes):
    aead, out, tags = AESGCM(key), bytearray(), bytearray()
    for i in range(len(data) // SS):
        ct = aead.encrypt(nonces[12 * i:12 * i + 12], data[i * SS:(i + 1) * SS],
                          prefix + struct.pack(">Q", first + i))
        out += ct[:SS]
        tags += ct[SS:]
    return bytes(out), bytes(tags)


def first_sector(rng, n: int) -> int:
    return rng.choice([0, rng.randrange(1 << 20), rng.randrange(1 << 32, 1 << 40),
                       (1 << 61) - n - rng.randrange(100)])


def as_kind(data: bytes, kind: str):
    """A fresh writable buffer of the given kind holding data."""
    if kind == "bytearray":
        return bytearray(data)
    if kind == "memoryview":
        return memoryview(bytearray(data))
    if kind == "numpy-u8":
        return np.frombuffer(data, np.uint8).copy()
    if kind == "numpy-u32":
        return np.frombuffer(data, np.uint32).copy()
    raise AssertionError(kind)


KINDS = ["bytearray", "memoryview", "numpy-u8", "numpy-u32"]


def run_xts(c, data: bytes, first: int, encrypt: bool, count: int) -> bytes:
    """Apply c in place or into a separate buffer, varying buffer kinds by count."""
    kind = KINDS[count % len(KINDS)]
    op = c.encrypt if encrypt else c.decrypt
    if count % 2:
        buf = as_kind(data, kind)
        op(buf, first)
        return bytes(memoryview(buf).cast("B"))
    out = as_kind(bytes(len(data)), kind)
    op(data if count % 4 == 0 else as_kind(data, kind), first, out=out)
    return bytes(memoryview(out).cast("B"))


@pytest.mark.timeout(120)
def test_xts_every_count_against_oracle(impl, rng):
    key = os.urandom(64)
    c = impl.XtsCipher(bytearray(key))
    for n in range(1, MAX_SECTORS + 1):
        data, first = POOL[:n * SS], first_sector(rng, n)
        ct = run_xts(c, data, first, True, n)
        assert ct == oracle_xts(key, data, first, True), f"encrypt, {n} sectors from {first}"
        assert run_xts(c, ct, first, False, n + 1) == data, f"decrypt, {n} sectors from {first}"


@pytest.mark.timeout(120)
def test_gcm_every_count_against_oracle(impl, rng):
    key, prefix = os.urandom(32), os.urandom(16)
    c = impl.GcmCipher(bytearray(key), prefix)
    for n in range(1, MAX_SECTORS + 1):
        data, first, nonces = POOL[:n * SS], first_sector(rng, n), NONCES[:12 * n]
        kind = KINDS[n % len(KINDS)]
        tags = as_kind(bytes(16 * n), kind)
        if n % 2:
            buf = as_kind(data, kind)
            c.encrypt(buf, first, as_kind(nonces, kind), tags)
        else:
            buf = as_kind(bytes(len(data)), kind)
            c.encrypt(data, first, nonces, tags, out=buf)
        ct, tag = bytes(memoryview(buf).cast("B")), bytes(memoryview(tags).cast("B"))
        assert (ct, tag) == oracle_gcm_seal(key, prefix, data, first, nonces), f"{n} sectors from {first}"
        back = bytearray(len(data))
        assert c.decrypt(ct, first, nonces, tag, out=back) == []
        assert back == data


@pytest.mark.parametrize("ss", [512, 1024, 4096, 8192])
def test_xts_sector_sizes_against_oracle(impl, rng, ss):
    key = os.urandom(64)
    c = impl.XtsCipher(bytearray(key), sector_size=ss)
    for n in (1, 2, 7, 64):
        data, first = os.urandom(n * ss), rng.randrange(1 << 40)
        buf = bytearray(data)
        c.encrypt(buf, first)
        assert buf == oracle_xts(key, data, first, True, ss)


@pytest.mark.timeout(120)
def test_native_matches_reference_byte_for_byte(native, rng):
    from volumed.cipher import reference

    for n in (1, 2, 3, 31, 32, 33, 64, 255, 256, 257, 300):
        key, gkey, prefix = os.urandom(64), os.urandom(32), os.urandom(rng.randrange(40))
        data, first, nonces = POOL[:n * SS], first_sector(rng, n), NONCES[:12 * n]
        outs = []
        for mod in (native, reference):
            x = bytearray(data)
            mod.XtsCipher(bytearray(key)).encrypt(x, first)
            g, tags = bytearray(data), bytearray(16 * n)
            mod.GcmCipher(bytearray(gkey), prefix).encrypt(g, first, nonces, tags)
            outs.append((bytes(x), bytes(g), bytes(tags)))
        assert outs[0] == outs[1], f"{n} sectors from {first}"


def test_native_thread_counts_agree(native):
    key = os.urandom(64)
    c = native.XtsCipher(bytearray(key))
    saved = native.get_threads()
    try:
        results = []
        for threads in (1, 2, 3, 8):
            native.set_threads(threads, adaptive=False)
            buf = bytearray(POOL)
            c.encrypt(buf, 12345)
            results.append(bytes(buf))
        assert all(r == results[0] for r in results)
        assert results[0] == oracle_xts(key, POOL, 12345, True)
    finally:
        native.set_threads(saved)


def test_empty_batch_is_a_no_op(impl):
    c = impl.XtsCipher(bytearray(os.urandom(64)))
    c.encrypt(bytearray(), 0)
    g = impl.GcmCipher(bytearray(os.urandom(32)), b"p")
    g.encrypt(bytearray(), 0, b"", bytearray())
    assert g.decrypt(bytearray(), 0, b"", b"") == []
