"""Known-answer tests: IEEE 1619 XTS, NIST CAVP XTS and GCM, for both implementations.

The one-unit primitives (kat_xts, kat_gcm_seal/open) check the raw modes; the vectors that fit the
sector API (64-byte XTS keys with 512-byte data units; GCM vectors whose AAD ends in 8 bytes we can
read as a sector number) also go through XtsCipher/GcmCipher, so the batch path is pinned to the
standards too, not only to the other implementation.
"""

import pytest

from tests.cipher.vectors import IEEE_XTS, NIST_GCM_256_DECRYPT, NIST_GCM_256_ENCRYPT, NIST_XTS_256

h = bytes.fromhex


def _tweak(seq: int) -> bytes:
    return seq.to_bytes(16, "little")


@pytest.mark.parametrize("vec", IEEE_XTS, ids=[f"ieee{v[0]}" for v in IEEE_XTS])
def test_ieee_xts_unit(impl, vec):
    num, key, seq, pt, ct = vec
    if num != 1:  # equal key halves: OpenSSL 3 refuses to encrypt (storage-formats.md)
        assert impl.kat_xts(h(key), _tweak(seq), h(pt), True).hex() == ct
    assert impl.kat_xts(h(key), _tweak(seq), h(ct), False).hex() == pt


@pytest.mark.parametrize("vec", [v for v in IEEE_XTS if len(v[1]) == 128 and len(v[3]) == 1024],
                         ids=lambda v: f"ieee{v[0]}")
def test_ieee_xts_through_sector_api(impl, vec):
    _, key, seq, pt, ct = vec
    buf = bytearray(h(pt))
    c = impl.XtsCipher(bytearray(h(key)), sector_size=512)
    c.encrypt(buf, seq)
    assert buf.hex() == ct
    c.decrypt(buf, seq)
    assert buf.hex() == pt


def test_equal_halves_refused(impl):
    key = bytearray(h(IEEE_XTS[0][1]) * 2)  # 64 zero bytes
    with pytest.raises(ValueError, match="halves"):
        impl.XtsCipher(key)
    key = bytearray(b"\x01" * 32 + b"\x01" * 32)
    with pytest.raises(ValueError, match="halves"):
        impl.XtsCipher(key)
    assert key == bytearray(64), "the caller's copy is wiped even when refused"


@pytest.mark.parametrize("vec", NIST_XTS_256, ids=lambda v: f"seq{v[1]}-{len(v[2]) // 2}B")
def test_nist_xts(impl, vec):
    key, seq, pt, ct = vec
    assert impl.kat_xts(h(key), _tweak(seq), h(pt), True).hex() == ct
    assert impl.kat_xts(h(key), _tweak(seq), h(ct), False).hex() == pt


def _gcm_id(v):
    return f"pt{len(v[2]) // 2}-aad{len(v[3]) // 2}-{v[0][:6]}"


@pytest.mark.parametrize("vec", NIST_GCM_256_ENCRYPT, ids=_gcm_id)
def test_nist_gcm_seal_open(impl, vec):
    key, iv, pt, aad, ct, tag = map(h, vec)
    assert impl.kat_gcm_seal(key, iv, aad, pt) == (ct, tag)
    assert impl.kat_gcm_open(key, iv, aad, ct, tag) == pt


@pytest.mark.parametrize("vec", [v for v in NIST_GCM_256_ENCRYPT if len(v[3]) >= 16 and v[2]],
                         ids=_gcm_id)
def test_nist_gcm_through_sector_api(impl, vec):
    key, iv, pt, aad, ct, tag = map(h, vec)
    c = impl.GcmCipher(bytearray(key), aad[:-8], sector_size=len(pt))
    sector = int.from_bytes(aad[-8:], "big")
    buf, tags = bytearray(pt), bytearray(16)
    c.encrypt(buf, sector, iv, tags)
    assert (bytes(buf), bytes(tags)) == (ct, tag)
    assert c.decrypt(buf, sector, iv, tags) == []
    assert buf == pt


@pytest.mark.parametrize("vec", NIST_GCM_256_DECRYPT,
                         ids=lambda v: f"pt{len(v[2]) // 2}-aad{len(v[3]) // 2}-{'fail' if v[5] is None else 'pass'}")
def test_nist_gcm_decrypt(impl, vec):
    key, iv, ct, aad, tag, pt = vec
    got = impl.kat_gcm_open(h(key), h(iv), h(aad), h(ct), h(tag))
    assert got == (None if pt is None else h(pt))
