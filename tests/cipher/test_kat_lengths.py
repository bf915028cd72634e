"""The known-answer helpers refuse buffers longer than INT_MAX with a clear error instead of casting
the length to int (issue 13 item 11). The buffer is an untouched anonymous mapping: 2 GiB of
address space, no memory, and both implementations refuse it before reading or allocating."""

from __future__ import annotations

import mmap

import pytest

INT_MAX = 2**31 - 1


@pytest.fixture
def huge():
    return mmap.mmap(-1, INT_MAX + 17)  # 2**31 + 16: whole AES blocks for XTS


def test_kat_xts_refuses_more_than_int_max(impl, huge):
    with pytest.raises(ValueError, match=r"kat_xts: data of 2147483664 bytes is longer than INT_MAX"):
        impl.kat_xts(bytes(64), bytes(16), huge, True)


@pytest.mark.parametrize("which", ["aad", "data"])
def test_kat_gcm_refuses_more_than_int_max(impl, huge, which):
    big, small = huge, b"x" * 32
    aad, data = (big, small) if which == "aad" else (small, big)
    with pytest.raises(ValueError, match=rf"kat_gcm_seal: {which} of \d+ bytes is longer than INT_MAX"):
        impl.kat_gcm_seal(bytes(32), bytes(12), aad, data)
    with pytest.raises(ValueError, match=rf"kat_gcm_open: {which} of \d+ bytes is longer than INT_MAX"):
        impl.kat_gcm_open(bytes(32), bytes(12), aad, data, bytes(16))


def test_lengths_at_the_limit_still_work(impl):
    """The check is a bound, not a new restriction: ordinary lengths round-trip."""
    ct, tag = impl.kat_gcm_seal(bytes(32), bytes(12), b"a" * 100, b"p" * 5000)
    assert impl.kat_gcm_open(bytes(32), bytes(12), b"a" * 100, ct, tag) == b"p" * 5000
