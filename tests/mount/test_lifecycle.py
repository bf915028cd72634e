"""Daemon lifecycle and the control channel: status, unmount by fusermount3, root-only control,
hardening, mount refusals, the mount helper."""

import json
import os
import stat
import subprocess
import sys
import time

import pytest

from tests.mount.conftest import ROOT

pytestmark = [pytest.mark.mount, pytest.mark.timeout(120)]

MiB = 1 << 20


def test_status_lists_every_mount_with_its_details(kms_env, make_volume, mounter):
    a = mounter(kms_env, make_volume(kms_env, size=16 * MiB))
    b = mounter(kms_env, make_volume(kms_env, size=16 * MiB))
    with open(a.file, "r+b") as f:
        f.write(b"x" * 10000)
        f.flush()
        os.fsync(f.fileno())
    out = json.loads(kms_env.run("status", "--json").stdout)
    by_file = {m["file"]: m for m in out}
    assert set(by_file) == {a.file, b.file}
    sa = by_file[a.file]
    for key in ("volume", "key_arn", "encryption_context", "grant_id", "state",
                "last_successful_check", "bytes_read", "bytes_written"):
        assert sa[key] not in (None, ""), key
    # The writeback cache writes back whole 4 KiB pages: 10000 bytes -> 3 pages.
    assert sa["state"] == "available" and sa["bytes_written"] == 3 * 4096
    assert set(sa["encryption_context"]) == {"aws:rds:db-id", "aws:ebs:id"}
    text = kms_env.run("status").stdout
    assert a.file in text and "available" in text


def test_fusermount_unmount_ends_the_daemon_and_retires_the_grant(kms_env, make_volume, mounter):
    from tests.mount.conftest import kms_client

    m = mounter(kms_env, make_volume(kms_env, size=16 * MiB))
    st = m.status()
    pid = m.pid()
    subprocess.run(["fusermount3", "-u", str(m.mountpoint)], check=True, timeout=30)
    from volumed.mount.client import _pid_alive

    deadline = time.monotonic() + 10
    while _pid_alive(pid):   # the daemon is not our child: watch /proc
        assert time.monotonic() < deadline, "daemon did not exit after fusermount3 -u"
        time.sleep(0.05)
    grants = kms_client(kms_env).list_grants(KeyId=st["key_arn"])["Grants"]
    assert st["grant_id"] not in {g["GrantId"] for g in grants}
    assert json.loads(kms_env.run("status", "--json").stdout) == []


def test_control_channel_is_root_only_and_daemon_is_hardened(kms_env, make_volume, mounter):
    m = mounter(kms_env, make_volume(kms_env, size=16 * MiB))
    from volumed.mount import paths

    with kms_env.in_process():
        sock = paths.socket_path(paths.mount_id(m.mountpoint))
        run = paths.run_dir()
    assert stat.S_IMODE(os.stat(run).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    pid = m.pid()
    with open(f"/proc/{pid}/limits") as f:
        core = [line for line in f if line.startswith("Max core file size")][0]
    assert core.split()[4] == "0"
    # Not dumpable (no core, no ptrace by others), and its memory, the key's included, is locked:
    # the daemon reads both back from the kernel (PR_GET_DUMPABLE, its own VmLck); VmLck is
    # checked from outside too.
    hardening = m.status()["hardening"]
    assert hardening["dumpable"] is False and hardening["locked_kib"] > 0, hardening
    with open(f"/proc/{pid}/status") as f:
        vmlck = [int(line.split()[1]) for line in f if line.startswith("VmLck:")]
    assert vmlck and vmlck[0] > 0
    # Loosen the file permissions (and reach the socket through a link outside the 0700 test
    # directories): the SO_PEERCRED check still refuses a non-root peer.
    os.chmod(sock, 0o666)
    link = f"/tmp/volumed-test-{os.getpid()}.sock"
    os.link(sock, link)
    try:
        code = ("import os, socket; os.setgid(65534); os.setuid(65534); "
                "s = socket.socket(socket.AF_UNIX); s.connect(%r); "
                "print(s.recv(4096).decode())" % link)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
        assert "root only" in out.stdout, out
    finally:
        os.unlink(link)
        os.chmod(sock, 0o600)
    assert m.status()["state"] == "available"


def test_mount_refusals_are_one_line(kms_env, make_volume, mounter, tmp_path):
    vol = make_volume(kms_env, size=16 * MiB)
    p = kms_env.run("mount", vol, tmp_path / "missing", check=False)
    assert p.returncode == 2 and "does not exist" in p.stderr and len(p.stderr.splitlines()) == 1
    p = kms_env.run("mount", tmp_path / "nope.img", tmp_path, check=False)
    assert p.returncode == 2 and len(p.stderr.splitlines()) == 1
    m = mounter(kms_env, vol)
    other = tmp_path / "other"
    other.mkdir()
    p = kms_env.run("mount", vol, other, check=False)
    assert p.returncode == 6 and "already mounted" in p.stderr and len(p.stderr.splitlines()) == 1
    assert not os.path.ismount(other)
    assert m.status()["state"] == "available"
    p = kms_env.run("unmount", other, check=False)
    assert p.returncode == 2 and "not a volumed mount" in p.stderr
    kms_env.run("unmount", m.mountpoint)
    env = dict(kms_env.env, AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="y", AWS_DEFAULT_REGION="us-east-1")
    p = subprocess.run([sys.executable, "-m", "volumed", "mount", str(vol), str(other), "--kms",
                        "http://127.0.0.1:1"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "did not answer" in p.stderr and len(p.stderr.splitlines()) == 1
    assert not os.path.ismount(other)


def test_a_refused_second_attach_leaves_no_grant_behind(kms_env, make_volume, mounter, tmp_path):
    """Attach a mounted volume again: the second daemon finds the volume locked and fails. A grant
    of its own (attached under another host name) is retired; the first mount's grant, which
    CreateGrant hands a second attach on the same host again (it is named after volume and host),
    is left to the mount that serves with it."""
    from tests.mount.conftest import VOLUMED, kms_client

    vol = make_volume(kms_env, size=16 * MiB)
    m = mounter(kms_env, vol)
    st = m.status()
    admin = kms_client(kms_env)

    def grants() -> set[str]:
        return {g["GrantId"] for g in admin.list_grants(KeyId=st["key_arn"])["Grants"]}

    assert grants() == {st["grant_id"]}
    other = tmp_path / "other"
    other.mkdir()
    p = kms_env.run("mount", vol, other, check=False)
    assert p.returncode == 6 and "already mounted" in p.stderr
    assert grants() == {st["grant_id"]}
    # Another host name (a UTS namespace of its own): its attach makes a second grant.
    p = subprocess.run(["unshare", "--uts", "sh", "-c", 'hostname volumed-other-host && exec "$@"',
                        "sh", *VOLUMED, "mount", str(vol), str(other)], env=kms_env.env, cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 6 and "already mounted" in p.stderr and len(p.stderr.splitlines()) == 1
    assert grants() == {st["grant_id"]}
    assert not os.path.ismount(other)
    m.control({"op": "check"})
    assert m.status()["grant_id"] == st["grant_id"]
    m.wait_state("available")


def test_mount_helper_for_mount_t_fuse_volumed(kms_env, make_volume, tmp_path):
    """`mount -t fuse.volumed VOLUME MOUNTPOINT -o kms=...` through /sbin/mount.fuse.volumed, and
    the documented /etc/fstab line (mount -T reads it from a file of the test's own)."""
    vol = make_volume(kms_env, size=16 * MiB)
    mp = tmp_path / "helper"
    mp.mkdir()
    helper = "/sbin/mount.fuse.volumed"
    if os.path.islink(helper) and not os.path.exists(helper):
        os.unlink(helper)  # left dangling by a killed earlier run whose clone is gone
    installed = not os.path.lexists(helper)
    if installed:
        os.symlink(ROOT / "scripts" / "mount.fuse.volumed", helper)
    env = dict(kms_env.env)
    try:
        p = subprocess.run(["mount", "-t", "fuse.volumed", "-o", f"kms={kms_env.kms},recovery-window=3",
                            str(vol), str(mp)], env=env, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        assert len(os.listdir(mp)) == 1
        kms_env.run("unmount", mp)
        fstab = tmp_path / "fstab"
        fstab.write_text(f"{vol}  {mp}  fuse.volumed  kms={kms_env.kms},nofail,_netdev  0  0\n")
        p = subprocess.run(["mount", "-T", str(fstab), str(mp)], env=env, capture_output=True,
                           text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        assert os.path.ismount(mp) and len(os.listdir(mp)) == 1
        kms_env.run("unmount", mp)
    finally:
        subprocess.run(["fusermount3", "-uz", str(mp)], capture_output=True)
        if installed:
            os.unlink(helper)


def test_foreground_mount_serves_until_unmounted(kms_env, make_volume, tmp_path):
    from tests.mount.conftest import VOLUMED, teardown_mount

    vol = make_volume(kms_env, size=16 * MiB)
    mp = tmp_path / "fg"
    mp.mkdir()
    proc = subprocess.Popen(VOLUMED + ["mount", "--foreground", str(vol), str(mp)], env=kms_env.env,
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        file = proc.stdout.readline().strip()
        assert file.startswith(str(mp)) and os.path.getsize(file) == 16 * MiB
        with open(file, "r+b") as f:
            f.write(b"foreground")
            f.flush()
            os.fsync(f.fileno())
        kms_env.run("unmount", mp)
        assert proc.wait(timeout=30) == 0
        assert not os.path.ismount(mp)
    finally:
        if proc.poll() is None:
            proc.kill()
        teardown_mount(mp, None)
