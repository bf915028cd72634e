"""GCM verification failures are reported per sector: the failed sectors come back as their
indices within the batch and are zero-filled; every other sector still decrypts."""

import os

import pytest

N = 40
SS = 4096


@pytest.fixture
def sealed(impl):
    key, prefix = os.urandom(32), b"volume-uuid-0123"
    plain = os.urandom(N * SS)
    nonces = bytearray(os.urandom(12 * N))
    buf, tags = bytearray(plain), bytearray(16 * N)
    impl.GcmCipher(bytearray(key), prefix).encrypt(buf, 1000, nonces, tags)
    return impl, key, prefix, plain, buf, nonces, tags


def open_all(impl, key, prefix, buf, nonces, tags, first=1000, out=None):
    c = impl.GcmCipher(bytearray(key), prefix)
    return c.decrypt(buf, first, nonces, tags, out=out)


def check(plain, got, failed):
    for i in range(N):
        want = bytes(SS) if i in failed else plain[i * SS:(i + 1) * SS]
        assert got[i * SS:(i + 1) * SS] == want, f"sector {i}"


def test_flipped_data_bit(sealed):
    impl, key, prefix, plain, buf, nonces, tags = sealed
    buf[3 * SS + 100] ^= 0x01
    buf[39 * SS + SS - 1] ^= 0x80
    assert open_all(impl, key, prefix, buf, nonces, tags) == [3, 39]
    check(plain, buf, {3, 39})


def test_flipped_tag_bit(sealed):
    impl, key, prefix, plain, buf, nonces, tags = sealed
    tags[16 * 0] ^= 0x01
    tags[16 * 17 + 15] ^= 0x40
    out = bytearray(N * SS)
    assert open_all(impl, key, prefix, bytes(buf), nonces, tags, out=out) == [0, 17]
    check(plain, out, {0, 17})


def test_flipped_nonce_bit(sealed):
    impl, key, prefix, plain, buf, nonces, tags = sealed
    nonces[12 * 25 + 5] ^= 0x10
    assert open_all(impl, key, prefix, buf, nonces, tags) == [25]
    check(plain, buf, {25})


def test_wrong_sector_number(sealed):
    impl, key, prefix, plain, buf, nonces, tags = sealed
    assert open_all(impl, key, prefix, bytearray(buf), nonces, tags, first=1001) == list(range(N))
    # A single sector moved to another place in the batch fails there (swap sectors 1 and 2).
    swapped = bytearray(buf)
    swapped[SS:2 * SS], swapped[2 * SS:3 * SS] = buf[2 * SS:3 * SS], buf[SS:2 * SS]
    sw_nonces = bytearray(nonces)
    sw_nonces[12:24], sw_nonces[24:36] = nonces[24:36], nonces[12:24]
    sw_tags = bytearray(tags)
    sw_tags[16:32], sw_tags[32:48] = tags[32:48], tags[16:32]
    assert open_all(impl, key, prefix, swapped, sw_nonces, sw_tags) == [1, 2]


def test_wrong_aad_prefix(sealed):
    impl, key, prefix, plain, buf, nonces, tags = sealed
    assert open_all(impl, key, b"volume-uuid-0124", bytearray(buf), nonces, tags) == list(range(N))
    assert open_all(impl, key, prefix, buf, nonces, tags) == []
    assert buf == plain


def test_wrong_key(sealed):
    impl, key, prefix, plain, buf, nonces, tags = sealed
    other = bytes([key[0] ^ 1]) + key[1:]
    assert open_all(impl, other, prefix, buf, nonces, tags) == list(range(N))
    assert buf == bytes(N * SS)
