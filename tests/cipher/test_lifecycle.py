"""Key handling, argument checks and the closed state, identical for both implementations."""

import os

import numpy as np
import pytest


def xts(impl, **kw):
    return impl.XtsCipher(bytearray(os.urandom(64)), **kw)


def gcm(impl, **kw):
    return impl.GcmCipher(bytearray(os.urandom(32)), b"prefix", **kw)


def test_constructor_wipes_callers_key(impl):
    key = bytearray(os.urandom(64))
    impl.XtsCipher(key)
    assert key == bytearray(64)
    gkey = bytearray(os.urandom(32))
    impl.GcmCipher(gkey, b"")
    assert gkey == bytearray(32)
    arr = np.frombuffer(os.urandom(64), np.uint8).copy()
    impl.XtsCipher(arr)
    assert not arr.any()
    view = memoryview(bytearray(os.urandom(64)))
    impl.XtsCipher(view)
    assert view == bytes(64)


def test_readonly_key_is_accepted_and_left_alone(impl):
    key = os.urandom(64)
    impl.XtsCipher(key)
    assert len(key) == 64 and key != bytes(64)


def test_wrong_key_length_leaves_callers_key(impl):
    key = bytearray(os.urandom(63))
    with pytest.raises(ValueError, match="64 bytes"):
        impl.XtsCipher(key)
    assert key != bytearray(63)
    with pytest.raises(ValueError, match="32 bytes"):
        impl.GcmCipher(bytearray(64), b"")


def test_encryption_survives_wiping_the_callers_key(impl):
    key = os.urandom(64)
    a, b = impl.XtsCipher(bytearray(key)), impl.XtsCipher(bytearray(key))
    x, y = bytearray(4096), bytearray(4096)
    a.encrypt(x, 5)
    b.encrypt(y, 5)
    assert x == y != bytearray(4096)


@pytest.mark.parametrize("make", [xts, gcm])
def test_closed_cipher_refuses_every_call(impl, make):
    c = make(impl)
    assert not c.closed
    c.close()
    c.close()  # idempotent
    assert c.closed
    with pytest.raises(ValueError, match="closed"):
        if make is xts:
            c.encrypt(bytearray(4096), 0)
        else:
            c.encrypt(bytearray(4096), 0, bytes(12), bytearray(16))
    with pytest.raises(ValueError, match="closed"):
        if make is xts:
            c.decrypt(bytearray(4096), 0)
        else:
            c.decrypt(bytearray(4096), 0, bytes(12), bytes(16))


def test_context_manager_closes(impl):
    with xts(impl) as c:
        c.encrypt(bytearray(4096), 0)
    assert c.closed


@pytest.mark.parametrize("ss", [0, -512, 100, 511, 4097, 32 * 1024 * 1024])
def test_bad_xts_sector_size(impl, ss):
    with pytest.raises(ValueError, match="sector_size"):
        xts(impl, sector_size=ss)


def test_bad_buffers(impl):
    c = xts(impl)
    with pytest.raises(ValueError, match="multiple"):
        c.encrypt(bytearray(4095), 0)
    with pytest.raises(ValueError, match="read-only"):
        c.encrypt(bytes(4096), 0)
    with pytest.raises(ValueError, match="read-only"):
        c.encrypt(bytearray(4096), 0, out=bytes(4096))
    with pytest.raises(ValueError, match="same length"):
        c.encrypt(bytearray(8192), 0, out=bytearray(4096))
    shared = bytearray(3 * 4096)
    with pytest.raises(ValueError, match="overlaps"):
        c.encrypt(memoryview(shared)[:8192], 0, out=memoryview(shared)[4096:])
    c.encrypt(bytes(4096), 0, out=bytearray(4096))  # read-only input is fine with out


def test_bad_gcm_side_buffers(impl):
    c = gcm(impl)
    with pytest.raises(ValueError, match="nonces"):
        c.encrypt(bytearray(8192), 0, bytes(12), bytearray(32))
    with pytest.raises(ValueError, match="tags_out"):
        c.encrypt(bytearray(8192), 0, bytes(24), bytearray(16))
    with pytest.raises(ValueError, match="tags_out"):
        c.encrypt(bytearray(4096), 0, bytes(12), bytes(16))
    with pytest.raises(ValueError, match="tags"):
        c.decrypt(bytearray(4096), 0, bytes(12), bytes(15))
    with pytest.raises(ValueError):
        c.encrypt(bytearray(8192), 2**64 - 1, bytes(24), bytearray(32))


def test_failed_calls_change_nothing(impl):
    c = xts(impl)
    buf = bytearray(os.urandom(4096))
    before = bytes(buf)
    with pytest.raises(ValueError):
        c.encrypt(buf, 0, out=bytearray(8192))
    assert buf == before
