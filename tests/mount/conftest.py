"""Fixtures for real-mount tests: a key service, volumes, and mounts served by a separate daemon
process, always torn down (unmount, fusermount3 -uz, kill the daemon, detach loop devices)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VOLUMED = [sys.executable, "-m", "volumed"]

pytestmark = pytest.mark.mount


def _can_mount() -> bool:
    return os.geteuid() == 0 and os.path.exists("/dev/fuse")


def pytest_collection_modifyitems(config, items):
    if _can_mount():
        return
    skip = pytest.mark.skip(reason="needs root and /dev/fuse")
    for item in items:
        if "tests/mount" in str(item.fspath) and "mount" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def moto_endpoint():
    """A moto KMS server on 127.0.0.1 (a separate thread; daemons reach it over HTTP)."""
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}", server
    server.stop()


class Env:
    """Where a test's key service, volumes and daemon state live, and how to run the CLI there."""

    def __init__(self, tmp: Path, kms: str, extra_env: dict):
        self.tmp = tmp
        self.kms = kms
        self.env = dict(os.environ)
        self.env.update(extra_env)
        self.env.update({
            "VOLUMED_RUN_DIR": str(tmp / "run"),
            "VOLUMED_STATE_DIR": str(tmp / "state"),
            "VOLUMED_KMS": kms,
            "PYTHONPATH": str(ROOT),
            "PYTHONWARNINGS": "ignore",
        })

    def run(self, *args, check=True, timeout=60, **kw) -> subprocess.CompletedProcess:
        """Run ``volumed ARGS`` as a separate process."""
        p = subprocess.run(VOLUMED + [str(a) for a in args], env=self.env, cwd=ROOT,
                           capture_output=True, text=True, timeout=timeout, **kw)
        if check and p.returncode != 0:
            raise AssertionError(f"volumed {' '.join(map(str, args))} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
        return p

    @contextlib.contextmanager
    def in_process(self):
        """Apply this env's variables to the test process (for in-process key-service calls)."""
        keys = ("VOLUMED_RUN_DIR", "VOLUMED_STATE_DIR", "VOLUMED_KMS", "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
        old = {k: os.environ.get(k) for k in keys}
        os.environ.update({k: self.env[k] for k in keys if k in self.env})
        try:
            yield
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


class Mount:
    """A mounted volume: ``file`` is the decrypted view; ``control`` talks to its daemon."""

    def __init__(self, env: Env, volume: Path, mountpoint: Path, file: str):
        self.env, self.volume, self.mountpoint, self.file = env, volume, mountpoint, file

    def control(self, msg: dict) -> dict:
        from volumed.mount import control, paths

        with self.env.in_process():
            return control.request(paths.socket_path(paths.mount_id(self.mountpoint)), msg)

    def status(self) -> dict:
        return self.control({"op": "status"})["status"]

    def pid(self) -> int | None:
        from volumed.mount import paths

        with self.env.in_process():
            try:
                return json.loads(paths.record_path(paths.mount_id(self.mountpoint)).read_text())["pid"]
            except (OSError, ValueError):
                return None

    def wait_state(self, state: str, timeout: float = 1.0) -> float:
        """Wait until status shows ``state``; return the seconds it took (fails after timeout)."""
        t0 = time.monotonic()
        while True:
            st = self.status()
            # An inaccessible state counts once the cut is complete (key wiped, cached pages dropped).
            if st["state"] == state and (st.get("cut_off", True) or not state.startswith("inacc")):
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"state {st['state']!r} ({st.get('reason')}), wanted {state!r} within {timeout}s")
            time.sleep(0.02)


def teardown_mount(mountpoint: Path, pid: int | None) -> None:
    """Best-effort: detach loop devices on the file, unmount, kill the daemon, lazy-unmount."""
    from volumed.mount.client import loop_devices_on

    # loop_devices_on matches the mount's own path (a substring match on `losetup -a` also took
    # the loop devices of mnt10.. when tearing down mnt1).
    for dev in loop_devices_on(str(mountpoint)):
        subprocess.run(["umount", "-l", dev], capture_output=True)
        subprocess.run(["losetup", "-d", dev], capture_output=True)
    if pid:
        from volumed.mount.client import stop_process

        stop_process(pid, grace=5)
    subprocess.run(["fusermount3", "-uz", str(mountpoint)], capture_output=True)


@pytest.fixture
def moto_env(tmp_path, moto_endpoint):
    url, _ = moto_endpoint
    return Env(tmp_path, url, {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                               "AWS_DEFAULT_REGION": "us-east-1"})


def kms_client(env: Env, **kw):
    from volumed.mount import keyservice

    with env.in_process():
        return keyservice.connect(env.kms, **kw)


def rds_client(env: Env):
    """The test user's client, calling through RDS (as volume creation and attach do)."""
    from volumed.kms.principals import rds_via

    client = kms_client(env)
    if hasattr(client, "with_identity"):
        return client.with_identity(via_service=rds_via(client.region()))
    return client


@pytest.fixture
def kms_env(tmp_path):
    """The embedded key service in a fresh keystore."""
    return Env(tmp_path, str(tmp_path / "keystore"), {})


@pytest.fixture
def make_volume():
    """make_volume(env, size=..., key_id=...) -> path of a new volume under env.tmp."""
    counter = [0]

    def make(env: Env, *, size=64 << 20, key_id=None, cipher="xts"):
        counter[0] += 1
        path = env.tmp / f"vol{counter[0]}.img"
        from volumed.volume.device import Volume

        if key_id is None:
            key_id = kms_client(env).create_key(Description="volumed mount test")["KeyMetadata"]["Arn"]
        Volume.create(path, size=size, kms=rds_client(env), key_id=key_id, cipher=cipher)
        return path

    return make


@pytest.fixture
def mounter():
    """mounter(env, volume, *args) -> Mount, served by a background daemon; always torn down."""
    made = []

    def mount(env: Env, volume: Path, *args, mountpoint: Path | None = None, check=True):
        mp = mountpoint or env.tmp / f"mnt{len(made)}"
        mp.mkdir(exist_ok=True)
        made.append((env, mp))
        p = env.run("mount", volume, mp, "--allow-faults", *args, check=check)
        if not check and p.returncode != 0:
            return p
        m = Mount(env, volume, mp, p.stdout.strip())
        made[-1] = (env, mp, m.pid())
        return m

    yield mount
    for entry in made:
        env, mp = entry[0], entry[1]
        pid = entry[2] if len(entry) > 2 else None
        if pid:
            from volumed.mount import client

            with env.in_process(), contextlib.suppress(Exception):
                client.unmount(str(mp), timeout=20, force=True)
        teardown_mount(mp, pid)


def direct_read(path, offset: int, length: int) -> bytes:
    """Read with O_DIRECT (bypassing the page cache) into an aligned buffer."""
    import mmap

    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        buf = mmap.mmap(-1, length)
        n = os.preadv(fd, [buf], offset)
        return bytes(buf[:n])
    finally:
        os.close(fd)


def write_fsynced(path, offset: int, data) -> None:
    """Write ``data`` at ``offset`` and fsync: acknowledged when this returns."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def kill_daemon(m: Mount) -> None:
    """SIGKILL the daemon serving ``m`` and wait until it is gone."""
    from volumed.mount.client import stop_process

    pid = m.pid()
    assert stop_process(pid), f"daemon {pid} did not die"
