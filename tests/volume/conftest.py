"""Fixtures for the volume tests: an embedded key service in a temporary keystore, volumes on it,
and raw keys for the crash harness (which reopens a volume thousands of times)."""

from __future__ import annotations

import os

import pytest

from volumed.kms.principals import rds_via

VIA = rds_via("us-east-1")


@pytest.fixture
def kms(tmp_path):
    """A client of the embedded key service (the keystore user, calling through RDS)."""
    from volumed import kms as kmsmod

    return kmsmod.connect(str(tmp_path / "keystore"), via_service=VIA)


@pytest.fixture
def make_volume(tmp_path, kms):
    """make_volume(cipher="xts", size=...) -> path of a new volume."""
    from volumed.volume import Volume

    counter = iter(range(1000))

    def make(cipher: str = "xts", size: int = 16 << 20, **kw) -> str:
        path = str(tmp_path / f"vol{next(counter)}.{cipher}")
        Volume.create(path, size=size, kms=kms, cipher=cipher, **kw)
        return path

    return make


def raw_key(kms, path) -> bytearray:
    """The volume's unwrapped data key (for tests that reopen a volume many times)."""
    from volumed.volume import Volume
    from volumed.volume.keywrap import unwrap

    h = Volume.read_header(path)
    return unwrap(kms, h.key_arn, h.wrapped_key, h.context)


def blocks(path) -> int:
    """Allocated 512-byte blocks of a file (how sparse it is)."""
    return os.stat(path).st_blocks
