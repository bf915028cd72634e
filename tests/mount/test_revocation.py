"""Revocation, recovery and the terminal state, through the real daemon and the embedded key
service; time beyond a second is moved with the daemon's injected clock, never slept."""

import errno
import json
import os
import random
import time

import pytest

from tests.mount.conftest import direct_read, kms_client

pytestmark = [pytest.mark.mount, pytest.mark.timeout(120)]

MiB = 1 << 20
RECOVERABLE = "inaccessible-encryption-credentials-recoverable"
TERMINAL = "inaccessible-encryption-credentials"


def _eio(fn, *args):
    with pytest.raises(OSError) as info:
        fn(*args)
    assert info.value.errno == errno.EIO, info.value


def _prepare(env, make_volume, mounter, *args):
    """A mounted volume with 1 MiB of fsynced data at 0 (read once, so cached) and an
    unacknowledged write at 4 MiB. Returns (mount, admin client, key arn, data, open fd)."""
    m = mounter(env, make_volume(env, size=16 * MiB), *args)
    data = random.Random(1).randbytes(MiB)
    fd = os.open(m.file, os.O_RDWR)
    os.pwrite(fd, data, 0)
    os.fsync(fd)
    assert os.pread(fd, MiB, 0) == data
    assert direct_read(m.file, 0, MiB) == data
    os.pwrite(fd, b"not acknowledged", 4 * MiB)
    return m, kms_client(env), m.status()["key_arn"], data, fd


def _assert_cut_off(m, fd):
    """Every path to the data fails with EIO: O_DIRECT reads of ranges read before and never read,
    cached reads, and the fsync that would have acknowledged the pending write."""
    _eio(direct_read, m.file, 0, 65536)
    _eio(direct_read, m.file, 8 * MiB, 65536)
    _eio(os.pread, fd, 4096, 0)
    _eio(os.pwrite, fd, b"x", 0)
    _eio(os.fsync, fd)
    _eio(os.stat, m.file)
    assert os.listdir(m.mountpoint) == [os.path.basename(m.file)]  # the directory stays listable
    try:
        os.close(fd)
    except OSError:
        pass


def _revoke_and_check(m, fd, revoke, state=RECOVERABLE):
    revoke()
    t0 = time.monotonic()
    m.wait_state(state, timeout=1.0)
    took = time.monotonic() - t0
    _assert_cut_off(m, fd)
    st = m.status()
    assert st["state"] == state and st["revoked_at"]
    return took


def test_disabled_key_cuts_off_within_a_second_and_recovers(kms_env, make_volume, mounter):
    m, admin, key, data, fd = _prepare(kms_env, make_volume, mounter)
    grant = m.status()["grant_id"]
    _revoke_and_check(m, fd, lambda: admin.disable_key(KeyId=key))
    assert "DisabledException" in m.status()["reason"]
    # The state change goes to the daemon's log (the KMS audit log has only the calls).
    logs = "".join(p.read_text() for p in (kms_env.tmp / "run").glob("*.log"))
    assert f"state -> {RECOVERABLE} (DisabledException" in logs
    # The revocation is persisted next to nothing that dies with the daemon.
    uuid = m.status()["volume_uuid"]
    record = json.loads((kms_env.tmp / "state" / f"{uuid}.json").read_text())
    assert record["state"] == RECOVERABLE and record["revoked_at"]
    # While the key is disabled a new mount is refused (CreateGrant on a disabled key).
    kms_env.run("unmount", m.mountpoint)
    p = mounter(kms_env, m.volume, mountpoint=m.mountpoint, check=False)
    assert p.returncode != 0 and "DisabledException" in p.stderr and len(p.stderr.splitlines()) == 1
    # Access restored within the window: the mount re-checks, recovers, every fsynced byte is there.
    admin.enable_key(KeyId=key)
    m = mounter(kms_env, m.volume, mountpoint=m.mountpoint)
    assert m.status()["state"] == "available"
    assert m.status()["grant_id"] != grant  # a fresh grant: the old one was retired at unmount
    with open(m.file, "rb") as f:
        assert f.read(MiB) == data
    record = json.loads((kms_env.tmp / "state" / f"{uuid}.json").read_text())
    assert record["state"] == "available" and record["revoked_at"] is None


def test_scheduled_deletion_cuts_off_then_deletion_is_terminal(kms_env, make_volume, mounter):
    m, admin, key, data, fd = _prepare(kms_env, make_volume, mounter, "--recovery-window", "30")
    _revoke_and_check(m, fd, lambda: admin.schedule_key_deletion(KeyId=key, PendingWindowInDays=7))
    assert "KMSInvalidStateException" in m.status()["reason"]
    # The deletion window ends (daemon clock moved 8 days): the key is gone, the volume terminal.
    m.control({"op": "set-clock", "advance": 8 * 86400})
    m.wait_state(TERMINAL, timeout=2.0)
    assert "deleted" in m.status()["reason"]
    kms_env.run("unmount", m.mountpoint)
    p = mounter(kms_env, m.volume, mountpoint=m.mountpoint, check=False)
    assert p.returncode != 0 and "restore from a backup" in p.stderr


def test_recovery_window_passing_while_mounted_is_terminal(kms_env, make_volume, mounter):
    m, admin, key, data, fd = _prepare(kms_env, make_volume, mounter)
    _revoke_and_check(m, fd, lambda: admin.disable_key(KeyId=key))
    n = m.status()["checks"]
    m.control({"op": "set-clock", "advance": 6 * 86400, "check": True})
    deadline = time.monotonic() + 2.0
    while m.status()["checks"] == n:  # the window is judged before a check is counted
        assert time.monotonic() < deadline, "no key check ran after the clock moved"
        time.sleep(0.02)
    assert m.status()["state"] == RECOVERABLE
    m.control({"op": "set-clock", "advance": 86400 + 60})
    m.wait_state(TERMINAL, timeout=2.0)
    kms_env.run("unmount", m.mountpoint)
    admin.enable_key(KeyId=key)
    p = mounter(kms_env, m.volume, mountpoint=m.mountpoint, check=False)
    assert p.returncode == 6 and "restore from a backup" in p.stderr


def test_recovery_window_passing_while_unmounted_is_terminal(kms_env, make_volume, mounter):
    m, admin, key, data, fd = _prepare(kms_env, make_volume, mounter)
    _revoke_and_check(m, fd, lambda: admin.disable_key(KeyId=key))
    kms_env.run("unmount", m.mountpoint)
    admin.enable_key(KeyId=key)
    later = time.time() + 7 * 86400 + 3600
    p = mounter(kms_env, m.volume, "--fake-time", later, mountpoint=m.mountpoint, check=False)
    assert p.returncode == 6 and "restore from a backup" in p.stderr, p.stderr
    # Terminal is for good, whatever the clock says now.
    p = mounter(kms_env, m.volume, mountpoint=m.mountpoint, check=False)
    assert p.returncode == 6 and TERMINAL in p.stderr


def test_revoked_grant_cuts_off(kms_env, make_volume, mounter):
    m, admin, key, data, fd = _prepare(kms_env, make_volume, mounter)
    grant = m.status()["grant_id"]
    _revoke_and_check(m, fd, lambda: admin.revoke_grant(KeyId=key, GrantId=grant))


def test_deny_policy_cuts_off(kms_env, make_volume, mounter):
    m, admin, key, data, fd = _prepare(kms_env, make_volume, mounter)
    host = m.status()["host_principal"]
    account = key.split(":")[4]
    policy = {"Version": "2012-10-17", "Statement": [
        {"Sid": "Enable IAM User Permissions", "Effect": "Allow",
         "Principal": {"AWS": f"arn:aws:iam::{account}:root"}, "Action": "kms:*", "Resource": "*"},
        {"Sid": "Deny the host", "Effect": "Deny", "Principal": {"AWS": host},
         "Action": ["kms:Decrypt", "kms:GenerateDataKey*"], "Resource": "*"}]}
    _revoke_and_check(m, fd, lambda: admin.put_key_policy(KeyId=key, PolicyName="default",
                                                          Policy=json.dumps(policy)))


def test_user_without_create_grant_cannot_attach(kms_env, make_volume, mounter):
    vol = make_volume(kms_env, size=16 * MiB)
    account = kms_client(kms_env).account_id()
    p = mounter(kms_env, vol, "--principal", f"arn:aws:iam::{account}:user/nobody", check=False)
    assert getattr(p, "returncode", 0) != 0, "attached without kms:CreateGrant"
    assert "AccessDeniedException" in p.stderr and "CreateGrant" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_revocation_under_ext4_fails_direct_io_through_the_loop_device(kms_env, make_volume, mounter,
                                                                      tmp_path):
    import subprocess

    from tests.mount.conftest import teardown_mount

    m = mounter(kms_env, make_volume(kms_env, size=64 * MiB))
    subprocess.run(["mkfs.ext4", "-q", "-F", m.file], check=True, timeout=60)
    fsmnt = tmp_path / "ext4"
    fsmnt.mkdir()
    subprocess.run(["mount", "-o", "loop", m.file, str(fsmnt)], check=True, timeout=60)
    try:
        (fsmnt / "table.dat").write_bytes(random.Random(3).randbytes(4 * MiB))
        subprocess.run(["sync"], check=True)
        key = m.status()["key_arn"]
        kms_client(kms_env).disable_key(KeyId=key)
        m.wait_state(RECOVERABLE, timeout=1.0)
        # The loop device's reads reach the mount: O_DIRECT through ext4 fails.
        _eio(direct_read, fsmnt / "table.dat", 0, MiB)
        # New data cannot reach the volume: fsync of a write fails.
        with open(fsmnt / "new.dat", "wb") as f:
            f.write(b"x" * 65536)
            f.flush()
            with pytest.raises(OSError):
                os.fsync(f.fileno())
    finally:
        subprocess.run(["umount", str(fsmnt)], capture_output=True, timeout=60)
        teardown_mount(m.mountpoint, None)  # detaches the loop device


def test_identity_policy_deny_on_the_host_role_cuts_off(kms_env, make_volume, mounter):
    m, admin, key, data, fd = _prepare(kms_env, make_volume, mounter)
    account = key.split(":")[4]
    deny = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Deny", "Action": ["kms:Decrypt", "kms:GenerateDataKey*"], "Resource": "*"}]}
    _revoke_and_check(m, fd, lambda: admin.put_principal_policy(
        PrincipalArn=f"arn:aws:iam::{account}:role/volumed-host", PolicyName="no-keys",
        PolicyDocument=json.dumps(deny)))


def test_retired_grant_cuts_off(kms_env, make_volume, mounter):
    m, admin, key, data, fd = _prepare(kms_env, make_volume, mounter)
    st = m.status()
    host = kms_client(kms_env, principal=st["host_principal"])   # the grant's retiring principal
    _revoke_and_check(m, fd, lambda: host.retire_grant(KeyId=key, GrantId=st["grant_id"]))
