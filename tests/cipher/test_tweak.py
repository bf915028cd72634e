"""LUKS2 aes-xts-plain64 with 4096-byte sectors: sector n is tweaked with 8n (512-byte units),
checked against cryptography's XTS directly and against the one-unit KAT primitive."""

import os

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


@pytest.mark.parametrize("sector", [0, 1, 7, 2**32 + 3, 2**61 - 1])
def test_plain64_tweak_counts_512_byte_units(impl, sector):
    key, data = os.urandom(64), os.urandom(4096)
    buf = bytearray(data)
    impl.XtsCipher(bytearray(key)).encrypt(buf, sector)
    tweak = (8 * sector).to_bytes(16, "little")
    enc = Cipher(algorithms.AES(key), modes.XTS(tweak)).encryptor()
    assert buf == enc.update(data) + enc.finalize()
    assert bytes(buf) == impl.kat_xts(key, tweak, data, True)


def test_sector_within_batch_uses_its_own_number(impl):
    key, data = os.urandom(64), os.urandom(3 * 4096)
    batch = bytearray(data)
    impl.XtsCipher(bytearray(key)).encrypt(batch, 10)
    one = bytearray(data[4096:8192])
    impl.XtsCipher(bytearray(key)).encrypt(one, 11)
    assert batch[4096:8192] == one


def test_tweak_overflow_refused(impl):
    c = impl.XtsCipher(bytearray(os.urandom(64)))
    with pytest.raises(ValueError):
        c.encrypt(bytearray(8192), 2**61 - 1)  # second sector's tweak 8*2**61 needs 65 bits
    with pytest.raises(ValueError):
        c.encrypt(bytearray(4096), -1)
    with pytest.raises(ValueError):
        c.encrypt(bytearray(4096), 2**64)
