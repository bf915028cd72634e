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

from tests.mount.conftest import Env, Mount, kms_client, rds_client, teardown_mount, write_fsynced

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
    write_fsynced(m.file, 0, data)
    env.run("unmount", m.mountpoint)
    old = json.loads(env.run("snapshot", "create", vol, "--json").stdout)["SnapshotId"]
    m = mount(env, vol)
    write_fsynced(m.file, 2 * MiB, b"in the newer snapshot")
    env.run("unmount", m.mountpoint)
    snap = json.loads(env.run("snapshot", "create", vol, "--json").stdout)["SnapshotId"]
    m = mount(env, vol)
    write_fsynced(m.file, 4 * MiB, b"after the last snapshot")
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


class _HeldSnapshot:
    """A snapshot request sent straight to the daemon with the "hold" test hook: the copier stops
    after ``after`` chunks (holding no volume lock) until ``release()``; the reply arrives in a
    thread, so the test can act while the copy is provably still running."""

    def __init__(self, env, m, vol, after: int):
        import threading

        from volumed.mount import control, paths
        from volumed.snapshot.engine import snapshot_key
        from volumed.volume import Volume

        self.dir = env.tmp / f"hold-{os.urandom(4).hex()}"
        self.dir.mkdir()
        with env.in_process():
            self.key = snapshot_key(rds_client(env), Volume.read_header(vol))
            sock = paths.socket_path(paths.mount_id(m.mountpoint))
        self.store = str(env.tmp / "keystore" / "snapshots")     # the default store of env.run
        msg = {"op": "snapshot", "store": self.store, "key": self.key,
               "hold": {"after_chunks": after, "dir": str(self.dir)}}
        self.reply: dict | None = None
        self.thread = threading.Thread(
            target=lambda: setattr(self, "reply", control.request(sock, msg, timeout=90)), daemon=True)
        self.thread.start()

    def wait_held(self, timeout: float = 30.0) -> None:
        import time

        deadline = time.monotonic() + timeout
        while not (self.dir / "held").exists():
            assert self.thread.is_alive(), f"the snapshot ended before its hold: {self.reply}"
            assert time.monotonic() < deadline, "the copier never reached its hold"
            time.sleep(0.01)

    def release(self) -> dict:
        (self.dir / "release").touch()
        self.thread.join(60)
        assert not self.thread.is_alive(), "no reply to the snapshot request"
        return self.reply


@pytest.mark.parametrize("cipher", ["xts", "gcm"])
def test_writes_during_the_copy_complete_and_are_not_in_the_snapshot(cipher, env, mount):
    """Copy-on-write: the I/O pause is only the flush and the session start. A writes+fsyncs A,
    the snapshot starts and its copier is held after 4 of 256 chunks; B overwrites the same
    sectors and its fsync returns while the copy is still running; the snapshot restores A
    exactly (copied and not-yet-copied chunks alike) and the volume holds B."""
    from volumed.volume import Volume

    vol, _key = _volume(env, cipher)
    m = mount(env, vol)
    a, b = random.Random(7).randbytes(2 * MiB), random.Random(8).randbytes(2 * MiB)
    write_fsynced(m.file, 0, a)
    snap = _HeldSnapshot(env, m, vol, after=4)
    try:
        snap.wait_held()
        write_fsynced(m.file, 0, b)
        assert snap.reply is None and snap.thread.is_alive()   # B acknowledged mid-copy
    finally:
        reply = snap.release()
    assert reply == {"ok": True, "snapshot_id": snap.key["snapshot_id"]}
    assert m.status()["state"] == "available"
    env.run("unmount", m.mountpoint)
    new = env.tmp / "restored.img"
    env.run("restore", snap.key["snapshot_id"], new)
    with env.in_process():
        with Volume.open(new, kms=rds_client(env)) as v:
            assert v.read(0, 2 * MiB) == a
            assert v.read(2 * MiB, v.size - 2 * MiB) == bytes(v.size - 2 * MiB)
        with Volume.open(vol, kms=rds_client(env)) as v:
            assert v.read(0, 2 * MiB) == b


@pytest.mark.parametrize("cipher", ["xts", "gcm"])
def test_revocation_during_the_copy_fails_the_snapshot_and_publishes_nothing(cipher, env, mount):
    from volumed.snapshot import catalog
    from volumed.snapshot.store import open_store

    vol, key = _volume(env, cipher)
    m = mount(env, vol)
    write_fsynced(m.file, 0, random.Random(9).randbytes(2 * MiB))
    snap = _HeldSnapshot(env, m, vol, after=2)
    try:
        snap.wait_held()
        kms_client(env).disable_key(KeyId=key)
        m.control({"op": "check"})
        m.wait_state(RECOVERABLE, timeout=10.0)                # the key is wiped
    finally:
        reply = snap.release()
    assert reply["ok"] is False and "key was wiped" in reply["error"], reply
    store = open_store(snap.store)
    assert catalog.all_manifests(store) == []
    assert store.list("chunks/") == []
    with pytest.raises(OSError):
        _read(m.file, 0, 4096)
