import os

import pytest

pytestmark = [pytest.mark.mount, pytest.mark.timeout(120)]


@pytest.mark.parametrize("which", ["embedded", "moto"])
def test_mount_read_write_unmount(which, request, make_volume, mounter):
    env = request.getfixturevalue("kms_env" if which == "embedded" else "moto_env")
    vol = make_volume(env, size=16 << 20)
    m = mounter(env, vol)
    assert os.path.basename(m.file).startswith("vol-")
    assert os.listdir(m.mountpoint) == [os.path.basename(m.file)]
    assert os.path.getsize(m.file) == 16 << 20
    fd = os.open(m.file, os.O_RDWR)
    os.pwrite(fd, b"hello" * 1000, 12345)
    os.fsync(fd)
    assert os.pread(fd, 5000, 12345) == b"hello" * 1000
    os.close(fd)
    st = m.status()
    assert st["state"] == "available"
    assert st["bytes_written"] == 5000
    env.run("unmount", m.mountpoint)
    assert not os.path.ismount(m.mountpoint)
