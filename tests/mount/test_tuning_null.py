"""The benchmark-only null-cipher mount: same FUSE code over a plain file; it refuses real volumes
and files it did not create."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.mount.conftest import VOLUMED, ROOT

pytestmark = [pytest.mark.mount, pytest.mark.timeout(60)]


def _null_mount(env, size, path, mnt):
    return subprocess.run(VOLUMED + ["mount", "--bench-null-cipher", str(size), str(path), str(mnt)],
                          env=env.env, cwd=ROOT, capture_output=True, text=True, timeout=30)


def test_null_cipher_refuses_a_real_volume_and_leaves_it_unchanged(kms_env, make_volume, tmp_path):
    vol = make_volume(kms_env, size=4 << 20)
    before = vol.read_bytes()
    mnt = tmp_path / "m"
    mnt.mkdir()
    p = _null_mount(kms_env, 4 << 20, vol, mnt)
    assert p.returncode == 2
    assert "is a volumed volume" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert not os.path.ismount(mnt)
    assert vol.read_bytes() == before


def test_null_cipher_refuses_a_foreign_file(kms_env, tmp_path):
    f = tmp_path / "data.bin"
    f.write_bytes(b"precious" * 512)
    mnt = tmp_path / "m"
    mnt.mkdir()
    p = _null_mount(kms_env, 4 << 20, f, mnt)
    assert p.returncode == 2 and "not created by --bench-null-cipher" in p.stderr
    assert f.read_bytes() == b"precious" * 512


def test_null_cipher_serves_a_plain_file_through_the_same_fuse_code(kms_env, tmp_path):
    plain, mnt = tmp_path / "plain.img", tmp_path / "m"
    mnt.mkdir()
    p = _null_mount(kms_env, 4 << 20, plain, mnt)
    assert p.returncode == 0, p.stderr
    file = p.stdout.strip()
    try:
        fd = os.open(file, os.O_RDWR)
        os.pwrite(fd, b"abc" * 5000, 4096 + 7)
        os.fsync(fd)
        os.close(fd)
        # Not encrypted: the plain file holds the bytes as written.
        with open(plain, "rb") as f:
            f.seek(4096 + 7)
            assert f.read(15000) == b"abc" * 5000
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
    # Mounting it again is allowed (its own file).
    p = _null_mount(kms_env, 4 << 20, plain, mnt)
    assert p.returncode == 0, p.stderr
    subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
