"""A backing file's OSError reaches the caller as its own errno (issue 13, "Also"): a write into an
unallocated region of a sparse volume on a full file system fails with ENOSPC through the mount,
not EIO, and the daemon logs it as the disk's condition, not as a bug."""

from __future__ import annotations

import errno
import mmap
import os
import subprocess

import pytest

from tests.mount.conftest import rds_client

MiB = 1 << 20


@pytest.fixture
def small_fs(tmp_path):
    """A 3 MiB tmpfs (a real file system that fills up); unmounted after the mount fixtures."""
    d = tmp_path / "small"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0700", "tmpfs", str(d)], check=True)
    yield d
    if subprocess.run(["umount", str(d)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def direct_write(path, offset: int, data: bytes) -> None:
    """pwrite with O_DIRECT (no page cache: the daemon's answer is the write's result)."""
    buf = mmap.mmap(-1, len(data))
    buf[:] = data
    fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
    try:
        os.pwritev(fd, [buf], offset)
    finally:
        os.close(fd)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("cipher", ["xts", "gcm"])
def test_a_full_disk_is_enospc_through_the_mount(cipher, small_fs, kms_env, mounter):
    from tests.mount.conftest import kms_client
    from volumed.volume.device import Volume

    vol = small_fs / "vol.img"
    key = kms_client(kms_env).create_key(Description="full disk")["KeyMetadata"]["Arn"]
    Volume.create(vol, size=16 * MiB, kms=rds_client(kms_env), key_id=key, cipher=cipher)
    m = mounter(kms_env, vol)
    direct_write(m.file, 0, b"a" * 65536)  # fits
    with pytest.raises(OSError) as err:
        for i in range(1, 256):  # 16 MiB of sparse volume on a 3 MiB file system
            direct_write(m.file, i * 65536, bytes([i]) * 65536)
    assert err.value.errno == errno.ENOSPC, err.value
    assert m.status()["state"] == "available"  # a full disk is not a revocation
    # What was acknowledged before the disk filled still reads back.
    fd = os.open(m.file, os.O_RDONLY | os.O_DIRECT)
    try:
        buf = mmap.mmap(-1, 65536)
        os.preadv(fd, [buf], 0)
        assert bytes(buf) == b"a" * 65536
    finally:
        os.close(fd)
    log = (kms_env.tmp / "run").glob("*.log")
    text = "".join(p.read_text() for p in log)
    assert "ENOSPC" in text and "unexpected error" not in text


@pytest.mark.parametrize("code,expect", [(errno.ENOSPC, errno.ENOSPC), (errno.EDQUOT, errno.EDQUOT),
                                         (errno.EROFS, errno.EROFS), (errno.EIO, errno.EIO),
                                         (errno.EBADF, errno.EIO), (errno.EINVAL, errno.EIO)])
def test_the_boundary_passes_a_backing_errno_through_and_treats_others_as_bugs(code, expect, caplog):
    import pyfuse3
    import trio

    from volumed.mount.errno_map import fuse_errors

    @fuse_errors
    async def handler():
        raise OSError(code, os.strerror(code))

    with pytest.raises(pyfuse3.FUSEError) as err:
        trio.run(handler)
    assert err.value.errno == expect
    bug = any(r.exc_info for r in caplog.records)
    assert bug == (code not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO))
