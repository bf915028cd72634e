"""Fixture teardown leaves nothing behind, even when the test failed and its daemon was killed:
an inner pytest session (two xdist workers) runs such tests; afterwards no mount, loop device or
daemon process of it remains."""

import glob
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(180)

INNER = textwrap.dedent('''
    import os

    def _note(tmp, vol, *more):
        with open(os.path.join(os.environ["PIDS_DIR"], str(vol.pid())), "w") as f:
            f.write("\\n".join([vol.run_dir, *map(str, more)]))

    def test_daemon_killed_under_ext4(encrypted_fs):
        (encrypted_fs.path / "f").write_bytes(b"x" * 100000)
        _note(None, encrypted_fs.volume, encrypted_fs.root)
        encrypted_fs.volume.kill_daemon()
        assert False, "failing on purpose after killing the daemon"

    def test_fails_while_everything_is_mounted(encrypted_fs):
        _note(None, encrypted_fs.volume, encrypted_fs.root)
        encrypted_fs.volume.fault.error(io="read", errno="EIO")
        assert False, "failing on purpose with ext4 mounted"

    def test_daemon_killed_under_plain_volume(encrypted_volume_factory):
        v = encrypted_volume_factory(size="16M")
        _note(None, v)
        v.kill_daemon()
''')


def _leftovers(base: str, pids, run_dirs) -> list[str]:
    found = []
    with open("/proc/self/mountinfo") as f:
        found += [f"mount {line.split()[4]}" for line in f if base in line]
    found += [f"directory {d}" for d in run_dirs if os.path.exists(d)]
    for bf in glob.glob("/sys/block/loop*/loop/backing_file"):
        try:
            with open(bf) as f:
                if base in f.read():
                    found.append(f"loop device {bf.split('/')[3]}")
        except OSError:
            pass
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                    found.append(f"daemon {pid}")
        except FileNotFoundError:
            pass
    for env in glob.glob("/proc/[0-9]*/environ"):
        try:
            with open(env, "rb") as f:
                if f"VOLUMED_STATE_DIR={base}".encode() in f.read():
                    found.append(f"process {env.split('/')[2]}")
        except OSError:
            pass
    return found


def test_teardown_after_failures_and_killed_daemons(tmp_path):
    (tmp_path / "test_inner.py").write_text(INNER)
    pids_dir = tmp_path / "pids"
    pids_dir.mkdir()
    base = str(tmp_path / "base")
    p = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2",
         "--basetemp", base, str(tmp_path / "test_inner.py")],
        cwd=tmp_path, env=dict(os.environ, PIDS_DIR=str(pids_dir)),
        capture_output=True, text=True, timeout=150)
    out = p.stdout + p.stderr
    assert "2 failed, 1 passed" in out, out
    assert "failing on purpose" in out
    pids = [int(n) for n in os.listdir(pids_dir)]
    run_dirs = [d for n in os.listdir(pids_dir) for d in (pids_dir / n).read_text().split("\n")]
    assert len(pids) == 3
    assert _leftovers(base, pids, run_dirs) == []
