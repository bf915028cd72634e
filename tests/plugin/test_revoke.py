"""Key revocation through every path the monitor knows, and restoration, via the fixture handle."""

import errno
import os

import pytest

from tests.mount.conftest import direct_read

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("how", ["disable", "schedule-deletion", "revoke-grant", "deny-policy"])
def test_revoke_cuts_off_and_restore_brings_the_data_back(encrypted_volume, how):
    v = encrypted_volume
    fd = os.open(v.path, os.O_RDWR)
    os.pwrite(fd, b"committed" * 456, 0)
    os.fsync(fd)
    os.close(fd)
    v.revoke(how)
    st = v.status()
    assert st["state"] == "inaccessible-encryption-credentials-recoverable" and st["revoked_at"]
    with pytest.raises(OSError) as info:
        direct_read(v.path, 0, 4096)
    assert info.value.errno == errno.EIO
    v.restore()
    assert v.status()["state"] == "available"
    assert direct_read(v.path, 0, 4096) == (b"committed" * 456)[:4096]


def test_unknown_revocation_is_refused(encrypted_volume):
    with pytest.raises(ValueError, match="disable"):
        encrypted_volume.revoke("unplug")
    assert encrypted_volume.status()["state"] == "available"


def test_factory_makes_independent_volumes_on_one_keystore(encrypted_volume_factory, volumed_kms):
    a = encrypted_volume_factory(size="16M")
    b = encrypted_volume_factory(size="16M", cipher="gcm", key_arn=volumed_kms.create_key())
    assert a.status()["key_arn"] != b.status()["key_arn"]
    b.revoke("disable")
    assert a.status()["state"] == "available"


def test_encrypted_fs_restore_after_revocation_mounts_a_working_file_system(encrypted_fs):
    f = encrypted_fs.path / "table"
    f.write_bytes(b"kept" * 25000)
    fd = os.open(f, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    encrypted_fs.revoke("disable")
    with pytest.raises(OSError):
        with open(encrypted_fs.path / "new", "wb") as g:
            g.write(b"x" * 65536)
            g.flush()
            os.fsync(g.fileno())
    encrypted_fs.restore()
    assert f.read_bytes() == b"kept" * 25000
    with open(encrypted_fs.path / "after", "wb") as g:
        g.write(b"y" * 65536)
        g.flush()
        os.fsync(g.fileno())
