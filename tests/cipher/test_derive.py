"""GcmCipher.derive: the subkey is HKDF-SHA256(key, salt, info) exactly (checked against the
cryptography package), native and reference agree, and a closed cipher derives nothing."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def _seal(c, sector=9):
    buf, tag = bytearray(b"s" * 4096), bytearray(16)
    c.encrypt(buf, sector, bytes(11) + b"\x01", tag)
    return bytes(buf), bytes(tag)


def test_derive_is_hkdf_sha256(impl):
    key, salt, info = os.urandom(32), os.urandom(16), b"volumed gcm sector key v2" + os.urandom(16)
    root = impl.GcmCipher(bytearray(key), b"root")
    sub = root.derive(salt, info, b"prefix")
    want = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(key)
    assert _seal(sub) == _seal(impl.GcmCipher(bytearray(want), b"prefix"))
    assert _seal(sub) != _seal(root.derive(salt, info + b"x", b"prefix"))
    buf, tag = _seal(sub)
    assert sub.decrypt(bytearray(buf), 9, bytes(11) + b"\x01", tag) == []
    root.close()
    assert not sub.closed  # the subkey lives on its own
    with pytest.raises(ValueError):
        root.derive(salt, info, b"prefix")
    sub.close()
