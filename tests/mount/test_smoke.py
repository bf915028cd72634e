import os

import pytest

from tests.mount.conftest import kms_client

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
    assert st["bytes_written"] == 8192  # the writeback cache writes back whole pages (12288..20480)
    # The attach created one grant to the host, constrained to the volume's context.
    admin = kms_client(env)
    key_id = st["key_arn"].rsplit("/", 1)[-1]
    grants = {g["GrantId"]: g for g in admin.list_grants(KeyId=key_id)["Grants"]}
    g = grants[st["grant_id"]]
    assert g["GranteePrincipal"] == g["RetiringPrincipal"] == st["host_principal"]
    assert set(g["Operations"]) == {"Decrypt", "GenerateDataKeyWithoutPlaintext"}
    assert g["Constraints"]["EncryptionContextSubset"] == st["encryption_context"]
    env.run("unmount", m.mountpoint)
    assert not os.path.ismount(m.mountpoint)
    # Unmount retired it.
    assert st["grant_id"] not in {g["GrantId"] for g in admin.list_grants(KeyId=key_id)["Grants"]}
