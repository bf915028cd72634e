"""Attacks on the native request engine's guarantees (issue 12's review): revocation whose record
cannot be written, engine teardown racing other threads, the refused write past the end, a failed
fdatasync of the backing file, O_DIRECT switched on with fcntl. Each test names the guarantee it
attacks; mounts are served by separate processes."""

import errno
import json
import os
import random
import subprocess
import sys
import textwrap
import time

import pytest

from tests.mount.conftest import ROOT, direct_read, kms_client

pytestmark = [pytest.mark.mount, pytest.mark.timeout(120)]

MiB = 1 << 20
RECOVERABLE = "inaccessible-encryption-credentials-recoverable"


def _eio(fn, *args):
    with pytest.raises(OSError) as info:
        fn(*args)
    assert info.value.errno == errno.EIO, info.value


# ---- revocation must not wait for (or depend on) the state record's write --------------------

def test_latch_callbacks_run_before_the_record_is_written(tmp_path):
    """Closing the latch cuts the data path off first (the native engine's latch, the key wipe),
    then persists the record: the record's fsync can take seconds under heavy writes, and EIO is
    due within one second of the revocation."""
    from volumed.clock import FakeClock
    from volumed.mount.latch import AccessLatch

    rec = tmp_path / "rec.json"
    latch = AccessLatch(FakeClock(1000.0), rec, "arn:aws:kms:us-east-1:111122223333:key/k")
    seen = []
    latch.on_close(lambda: seen.append(rec.exists()))
    assert latch.close(RECOVERABLE, "revoked")
    assert seen == [False]  # the callback ran before the record was written
    assert json.loads(rec.read_text())["state"] == RECOVERABLE


def test_latch_closes_even_when_the_record_cannot_be_written(tmp_path):
    """A state directory that refuses the record (full disk, I/O error) must not leave the mount
    serving: the callbacks still run, the state is inaccessible, the failure is only logged."""
    from volumed.clock import FakeClock
    from volumed.mount.latch import AccessLatch

    rec = tmp_path / "rec.json"
    rec.mkdir()
    (rec / "x").write_text("a directory where the record goes: the rename fails")
    latch = AccessLatch(FakeClock(1000.0), rec, "k")
    seen = []
    latch.on_close(lambda: seen.append("closed"))
    assert latch.close(RECOVERABLE, "revoked")
    assert seen == ["closed"] and not latch.serving


def test_the_revocation_record_is_written_off_the_daemon_loop(tmp_path, monkeypatch):
    """The record's fsync may wait seconds behind heavy writes on the state disk. It must not hold
    the daemon's loop meanwhile: that loop runs the drain, the key wipe, the cached pages'
    invalidation (due within a second) and the status requests. Here the write blocks until the
    test, still running on the loop, has seen the latch closed and the loop turn."""
    import threading

    import trio
    from botocore.exceptions import ClientError

    from volumed.clock import FakeClock
    from volumed.mount.latch import AccessLatch, VolumeRecord
    from volumed.mount.monitor import KeyMonitor

    release = threading.Event()
    save = VolumeRecord.save

    released_by_loop: list[bool] = []

    def slow_save(self, path):
        if self.state == RECOVERABLE:  # True only if the loop ran on while this write waited
            released_by_loop.append(release.wait(10))
        save(self, path)

    monkeypatch.setattr(VolumeRecord, "save", slow_save)

    def check():
        raise ClientError({"Error": {"Code": "DisabledException", "Message": "no"}}, "Check")

    rec = tmp_path / "rec.json"
    clock = FakeClock(1000.0)
    latch = AccessLatch(clock, rec, "k")
    closed = []
    latch.on_close(lambda: closed.append(latch.state))
    mon = KeyMonitor(check=check, counter=None, latch=latch, clock=clock, window=86400.0)

    async def main():
        async with trio.open_nursery() as n:
            n.start_soon(mon.run_check)
            with trio.fail_after(5):  # never fires while the loop itself is blocked
                while not closed:
                    await trio.sleep(0.01)
                await trio.sleep(0.05)  # the loop turns while the record is being written
            release.set()
        assert VolumeRecord.load(rec).state == RECOVERABLE

    try:
        t0 = time.monotonic()
        trio.run(main)
        assert time.monotonic() - t0 < 5, "the loop was held while the record was written"
        assert released_by_loop == [True], "the loop was held while the record was written"
    finally:
        release.set()


@pytest.mark.parametrize("engine", ["native", "python"])
def test_revocation_cuts_off_when_the_state_record_cannot_be_written(kms_env, make_volume, mounter,
                                                                     engine):
    """The revocation record's write fails (here: a directory sits at its name; in life a full
    or failing state disk): the mount is still cut off with EIO within a second, the daemon keeps
    answering status, and unmounts cleanly."""
    m = mounter(kms_env, make_volume(kms_env, size=16 * MiB), "--engine", engine)
    data = random.Random(5).randbytes(MiB)
    fd = os.open(m.file, os.O_RDWR)
    try:
        os.pwrite(fd, data, 0)
        os.fsync(fd)
        st = m.status()
        rec = kms_env.tmp / "state" / f"{st['volume_uuid']}.json"
        rec.unlink()
        rec.mkdir()
        (rec / "keep").write_text("not empty: a rename over it fails")
        kms_client(kms_env).disable_key(KeyId=st["key_arn"])
        m.wait_state(RECOVERABLE, timeout=1.0)
        _eio(direct_read, m.file, 0, 65536)
        _eio(os.pread, fd, 4096, 0)
        _eio(os.fsync, fd)
        assert m.status()["cut_off"] is True
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    deadline = time.monotonic() + 5  # the record is written after the cut, off the loop
    while "could not record" not in "".join(p.read_text() for p in (kms_env.tmp / "run").glob("*.log")):
        assert time.monotonic() < deadline, "the failed record write was not logged"
        time.sleep(0.05)
    kms_env.run("unmount", m.mountpoint)


# ---- engine teardown against the daemon's other threads ------------------------------------------

TEARDOWN_SCRIPT = textwrap.dedent(r'''
    import os, sys, threading, time
    from volumed import _native

    mp, backing = sys.argv[1], sys.argv[2]
    fd = os.open(backing, os.O_RDWR)
    core = _native.VolumeCore(fd, cipher="null", size=1 << 20, name=backing)
    bad = []
    for rnd in range(int(sys.argv[3])):
        fe = _native.FuseEngine(core, mp, "vol", 2, "fsname=volumed,subtype=volumed")
        fe.start()
        with open(os.path.join(mp, "vol"), "rb") as f:
            assert len(f.read(4096)) == 4096
        started = threading.Barrier(4)

        def blocked():  # the unmount reaper, or the daemon's abandoned serve(): wait() for ever
            started.wait()
            try:
                ended = fe.wait()
                if ended is not True:
                    bad.append(("wait", ended))
            except ValueError:
                pass

        def status():  # status requests: stats() holds the GIL while it reads the engine
            started.wait()
            while True:
                try:
                    st = fe.stats()
                except ValueError:
                    return
                if st["threads"] != 2 or len(st["per_worker"]) > 2:
                    bad.append(("stats", st["threads"], len(st["per_worker"])))

        ts = [threading.Thread(target=blocked)] + [threading.Thread(target=status) for _ in range(2)]
        for t in ts:
            t.start()
        started.wait()
        assert fe.close() is True
        for t in ts:
            t.join(20)
            assert not t.is_alive(), "a thread still inside the engine after close()"
    print("bad", bad)
    sys.exit(1 if bad else 0)
''')


def test_engine_close_waits_for_threads_inside_it(tmp_path):
    """close() frees the engine: a thread blocked in wait() (the unmount reaper, serve() abandoned
    on a crash) or reading stats() (a status request) meanwhile must never see freed memory.
    glibc's MALLOC_PERTURB_ fills freed memory, so a stats() answered from the freed engine shows
    a garbage thread count; under AddressSanitizer the same run reports the use after free."""
    mp = tmp_path / "mnt"
    mp.mkdir()
    backing = tmp_path / "backing"
    backing.write_bytes(b"\x01" * (1 << 20))
    env = dict(os.environ, PYTHONPATH=str(ROOT), MALLOC_PERTURB_="165")
    try:
        p = subprocess.run([sys.executable, "-c", TEARDOWN_SCRIPT, str(mp), str(backing), "30"],
                           env=env, capture_output=True, text=True, timeout=100)
        assert p.returncode == 0, p.stdout + p.stderr[-3000:]
    finally:
        subprocess.run(["fusermount3", "-uz", str(mp)], capture_output=True)


# ---- the refused write past the end: the kernel's size comes back ------------------------------

def test_write_past_the_end_restores_the_size(kms_env, make_volume, mounter):
    """The writeback cache accepts a write past the end; its write-back fails (ENOSPC at fsync)
    and the engine truncates the kernel's grown size back to the volume's."""
    size = 16 * MiB
    m = mounter(kms_env, make_volume(kms_env, size=size))
    fd = os.open(m.file, os.O_RDWR)
    try:
        os.pwrite(fd, b"x" * 4096, size)
        with pytest.raises(OSError) as info:
            os.fsync(fd)
        assert info.value.errno == errno.ENOSPC
        deadline = time.monotonic() + 5
        while os.fstat(fd).st_size != size:
            assert time.monotonic() < deadline, os.fstat(fd).st_size
            time.sleep(0.05)
    finally:
        os.close(fd)
    assert os.path.getsize(m.file) == size


# ---- a failed fdatasync of the backing file is not forgotten -----------------------------------

@pytest.fixture
def failing_disk(tmp_path):
    """An ext4 file system (no journal) on a loop device whose own backing file lives on a small
    tmpfs: once the tmpfs is full, the loop device fails writes with EIO, so ext4's write-back of
    the volume's blocks fails at fdatasync, as a failing disk's would. ``free()`` makes room again.
    Unmounted and detached afterwards, even on failure."""
    t = tmp_path / "tmpfs"
    e = tmp_path / "ext4"
    t.mkdir()
    e.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m,mode=0700", "tmpfs", str(t)], check=True)
    try:
        img = t / "disk.img"
        with open(img, "wb") as f:
            f.truncate(64 * MiB)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-E",
                        "lazy_itable_init=0", str(img)], check=True, timeout=60)
        subprocess.run(["mount", "-o", "loop", str(img), str(e)], check=True, timeout=60)

        class Disk:
            path = e

            @staticmethod
            def fill() -> None:
                """Leave no room on the tmpfs under the loop device."""
                with open(t / "filler", "wb") as f:
                    try:
                        while True:
                            f.write(b"\xff" * MiB)
                            f.flush()
                    except OSError:
                        pass

            @staticmethod
            def free() -> None:
                (t / "filler").unlink()

        yield Disk
    finally:
        subprocess.run(["umount", str(e)], capture_output=True, timeout=60)
        subprocess.run(["umount", "-l", str(e)], capture_output=True, timeout=60)
        subprocess.run(["umount", str(t)], capture_output=True, timeout=60)
        subprocess.run(["umount", "-l", str(t)], capture_output=True, timeout=60)


@pytest.mark.parametrize("engine", ["native", "python"])
def test_an_fsync_after_a_failed_backing_fdatasync_is_not_acknowledged(kms_env, failing_disk,
                                                                         mounter, engine):
    """fdatasync reports a write-back error once: the pages that failed are clean afterwards and
    a second fdatasync succeeds although their data never reached the disk. An fsync through the
    mount after a failed one must therefore fail too (until the volume is remounted), never
    acknowledge writes that are lost."""
    from tests.mount.conftest import rds_client
    from volumed.volume.device import Volume

    vol = failing_disk.path / "vol.img"
    key = kms_client(kms_env).create_key(Description="failing disk")["KeyMetadata"]["Arn"]
    Volume.create(vol, size=16 * MiB, kms=rds_client(kms_env), key_id=key, cipher="xts")
    m = mounter(kms_env, vol, "--engine", engine)
    fd = os.open(m.file, os.O_RDWR)
    try:
        os.pwrite(fd, b"a" * MiB, 0)
        os.fsync(fd)  # fits: acknowledged
        failing_disk.fill()
        os.pwrite(fd, random.Random(7).randbytes(4 * MiB), 2 * MiB)
        with pytest.raises(OSError) as first:
            os.fsync(fd)
        assert first.value.errno in (errno.EIO, errno.ENOSPC), first.value
        failing_disk.free()
        with pytest.raises(OSError) as second:  # the lost writes are not acknowledged now either
            os.fsync(fd)
        assert second.value.errno == errno.EIO, second.value
    finally:
        os.close(fd)
    kms_env.run("unmount", m.mountpoint)


# ---- O_DIRECT turned on with fcntl is acknowledged like O_DIRECT at open -----------------------

@pytest.mark.parametrize("engine", ["native", pytest.param("python", marks=pytest.mark.xfail(
    strict=True, reason="pyfuse3 hands write() no file flags: that engine sees O_DIRECT only at open"))])
def test_o_direct_set_by_fcntl_is_acknowledged_on_return(kms_env, make_volume, mounter, engine):
    """A write(2) on a file in O_DIRECT mode is acknowledged when it returns (docs/MOUNT.md), and
    databases turn O_DIRECT on with fcntl(F_SETFL) after the open (InnoDB's O_DIRECT flush
    method does). Such a write must survive a power cut as one on a file opened O_DIRECT does."""
    import fcntl
    import mmap

    vol = make_volume(kms_env, size=16 * MiB)
    m = mounter(kms_env, vol, "--engine", engine)
    fd = os.open(m.file, os.O_RDWR)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_DIRECT)
        buf = mmap.mmap(-1, 65536)
        buf[:] = b"d" * 65536
        assert os.pwritev(fd, [buf], 8 * MiB) == 65536  # acknowledged
        kms_env.run("fault", "power-cut", m.mountpoint)
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    kms_env.run("unmount", m.mountpoint, check=False)
    m = mounter(kms_env, vol, mountpoint=m.mountpoint)
    assert direct_read(m.file, 8 * MiB, 65536) == b"d" * 65536


# ---- revocation in the middle of heavy writes ----------------------------------------------------

@pytest.mark.parametrize("cipher,io_threads", [("xts", "1"), ("xts", "4"), ("gcm", "4")])
def test_revocation_under_heavy_writes_loses_nothing_acknowledged(kms_env, make_volume, mounter,
                                                                   cipher, io_threads):
    """Eight writers (buffered + fsync, and O_DIRECT) each rewrite their own blocks with numbered
    versions while the key is disabled: the cut comes within a second, nothing succeeds after it,
    and once access is back every block holds its last acknowledged version or a later one."""
    import mmap
    import threading

    vol = make_volume(kms_env, size=16 * MiB, cipher=cipher)
    m = mounter(kms_env, vol, "--io-threads", io_threads)
    block = 65536
    acked: dict[int, int] = {}
    failures_after_cut: list = []
    cut = threading.Event()
    stop = threading.Event()

    def payload(w: int, v: int) -> bytes:
        return (w.to_bytes(2, "little") + v.to_bytes(4, "little")) * (block // 6) + b"\0" * (block % 6)

    def writer(w: int) -> None:
        direct = w % 2 == 1
        fd = os.open(m.file, os.O_RDWR | (os.O_DIRECT if direct else 0))
        buf = mmap.mmap(-1, block)
        try:
            v = 0
            while not stop.is_set():
                v += 1
                was_cut = cut.is_set()
                try:
                    if direct:
                        buf[:] = payload(w, v)
                        os.pwritev(fd, [buf], w * block)
                    else:
                        os.pwrite(fd, payload(w, v), w * block)
                        os.fsync(fd)
                except OSError as exc:
                    if exc.errno != errno.EIO:
                        failures_after_cut.append(("errno", w, exc.errno))
                    if cut.is_set():
                        return
                    continue
                if was_cut:
                    failures_after_cut.append(("acknowledged after the cut", w, v))
                acked[w] = v
        finally:
            try:
                os.close(fd)
            except OSError:
                pass

    ts = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in ts:
        t.start()
    try:
        # the cut comes once every writer has two acknowledged versions (a fixed pause would
        # leave a slow machine short of the assertion below)
        deadline = time.monotonic() + 30
        while len(acked) < 8 or min(acked.values()) < 2:
            assert time.monotonic() < deadline, acked
            time.sleep(0.02)
        st = m.status()
        kms_client(kms_env).disable_key(KeyId=st["key_arn"])
        m.wait_state(RECOVERABLE, timeout=1.0)
        cut.set()
        time.sleep(0.5)
    finally:
        stop.set()
        for t in ts:
            t.join(30)
    assert not failures_after_cut, failures_after_cut
    assert len(acked) == 8 and min(acked.values()) > 1, acked
    kms_env.run("unmount", m.mountpoint)
    kms_client(kms_env).enable_key(KeyId=st["key_arn"])
    m = mounter(kms_env, vol, mountpoint=m.mountpoint)
    for w, v in acked.items():
        got = direct_read(m.file, w * block, block)
        assert got[:2] == w.to_bytes(2, "little"), (w, got[:6])
        version = int.from_bytes(got[2:6], "little")
        assert version >= v and got == payload(w, version), (w, v, version)
