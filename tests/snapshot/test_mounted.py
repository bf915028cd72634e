"""Snapshots and real mounts, through the real daemon in a separate process: the terminal-state
recovery path (revoke, the recovery window passes on the daemon's injected clock, re-enable,
restore the latest snapshot, mount, data intact to the snapshot), and the snapshot of a mounted
volume under concurrent writes."""

from __future__ import annotations

import contextlib
import json
import os
import random
from pathlib import Path

import pytest

from tests.mount.conftest import Env, Mount, kms_client, rds_client, teardown_mount

pytestmark = [pytest.mark.mount, pytest.mark.timeout(120),
              pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/fuse"),
                                 reason="needs root and /dev/fuse")]

MiB = 1 << 20
RECOVERABLE = "inaccessible-encryption-credentials-recoverable"
TERMINAL = "inaccessible-encryption-credentials"


@pytest.fixture
def env(tmp_path):
    return Env(tmp_path, str(tmp_path / "keystore"), {})


@pytest.fixture
def mount():
    """mount(env, volume) -> Mount served by a background daemon; always torn down."""
    made = []

    def do(env: Env, volume, *, check=True):
        mp = env.tmp / f"mnt{len(made)}"
        mp.mkdir(exist_ok=True)
        made.append([env, mp, None])
        p = env.run("mount", volume, mp, "--allow-faults", check=check)
        if p.returncode != 0:
            return p
        m = Mount(env, Path(volume), mp, p.stdout.strip())
        made[-1][2] = m.pid()
        return m

    yield do
    for env, mp, pid in made:
        if pid:
            from volumed.mount import client

            with env.in_process(), contextlib.suppress(Exception):
                client.unmount(str(mp), timeout=20)
        teardown_mount(mp, pid)


def _volume(env, cipher="xts"):
    from volumed.volume import Volume

    key = kms_client(env).create_key(Description="snapshot mount test")["KeyMetadata"]["Arn"]
    path = env.tmp / f"vol-{cipher}.img"
    Volume.create(path, size=16 * MiB, kms=rds_client(env), key_id=key, cipher=cipher)
    return path, key


def _write_fsynced(file, offset, data) -> None:
    fd = os.open(file, os.O_RDWR)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def _read(file, offset, n) -> bytes:
    with open(file, "rb") as f:
        f.seek(offset)
        return f.read(n)


@pytest.mark.parametrize("cipher", ["xts", "gcm"])
def test_terminal_state_recovery_through_the_latest_snapshot(cipher, env, mount):
    from volumed.snapshot.engine import latest_snapshot_hint
    from volumed.snapshot.store import open_store
    from volumed.volume import Volume

    vol, key = _volume(env, cipher)
    data = random.Random(2).randbytes(MiB)
    m = mount(env, vol)
    _write_fsynced(m.file, 0, data)
    env.run("unmount", m.mountpoint)
    old = json.loads(env.run("snapshot", "create", vol, "--json").stdout)["SnapshotId"]
    m = mount(env, vol)
    _write_fsynced(m.file, 2 * MiB, b"in the newer snapshot")
    env.run("unmount", m.mountpoint)
    snap = json.loads(env.run("snapshot", "create", vol, "--json").stdout)["SnapshotId"]
    m = mount(env, vol)
    _write_fsynced(m.file, 4 * MiB, b"after the last snapshot")
    admin = kms_client(env)
    admin.disable_key(KeyId=key)
    m.wait_state(RECOVERABLE, timeout=2.0)
    m.control({"op": "set-clock", "advance": 7 * 86400 + 60})
    m.wait_state(TERMINAL, timeout=2.0)
    env.run("unmount", m.mountpoint)
    admin.enable_key(KeyId=key)
    p = mount(env, vol, check=False)
    assert p.returncode == 6 and "restore from a backup" in p.stderr
    assert f"volumed restore {snap} NEW_VOLUME_PATH" in p.stderr, p.stderr  # the refusal names the way back
    assert len(p.stderr.strip().splitlines()) == 1
    hint = latest_snapshot_hint(Volume.read_header(vol), store=open_store(str(env.tmp / "keystore" / "snapshots")))
    assert hint and f"volumed restore {snap} " in hint and old not in hint
    new = env.tmp / "restored.img"
    env.run("restore", snap, new)
    m2 = mount(env, new)
    assert m2.status()["state"] == "available"
    assert _read(m2.file, 0, MiB) == data
    assert _read(m2.file, 2 * MiB, 21) == b"in the newer snapshot"
    assert _read(m2.file, 4 * MiB, 23) == bytes(23)  # written after the snapshot: not in it


@pytest.mark.parametrize("cipher", ["xts", "gcm"])
def test_snapshot_of_a_mounted_volume_under_concurrent_writes(cipher, env, mount):
    """Through the real daemon: writes land in a random sector order, each fsynced before the
    next; the snapshot (CLI -> control channel -> daemon's I/O barrier) holds every write
    acknowledged before it was requested and exactly a prefix of the sequence."""
    import threading
    import time

    from volumed.volume import Volume

    vol, _key = _volume(env, cipher)
    m = mount(env, vol)
    order = random.Random(6).sample(range(1024), 1024)
    record = lambda i: (f"write {i:05d} ".encode() * 400)[:4096]  # noqa: E731
    acked: list[int] = []
    stop = threading.Event()

    def writer():
        fd = os.open(m.file, os.O_RDWR)
        try:
            for i in range(1024):
                if stop.is_set():
                    return
                os.pwrite(fd, record(i), order[i] * 4096)
                os.fsync(fd)
                acked.append(i)
        finally:
            os.close(fd)

    t = threading.Thread(target=writer)
    t.start()
    try:
        while len(acked) < 20 and t.is_alive():
            time.sleep(0.01)
        before = len(acked)
        snap = json.loads(env.run("snapshot", "create", vol, "--json").stdout)["SnapshotId"]
        after = len(acked)
    finally:
        stop.set()
        t.join(30)
    assert m.status()["state"] == "available"
    new = env.tmp / "restored.img"
    env.run("restore", snap, new)
    with env.in_process():
        with Volume.open(new, kms=rds_client(env)) as v:
            data = v.read(0, 4 * MiB)
    got = {i: data[order[i] * 4096:(order[i] + 1) * 4096] for i in range(1024)}
    assert all(got[i] in (record(i), bytes(4096)) for i in range(1024))
    present = [i for i in range(1024) if got[i] == record(i)]
    assert present == list(range(len(present)))       # one point in time
    assert before <= len(present) <= after + 1         # every write acknowledged before the request
