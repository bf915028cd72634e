"""Real-mount I/O through the daemon: random access against a reference, concurrency, durability
(unmount/remount, SIGKILL, simulated power cut) and ext4 on a loop device."""

import os
import random
import subprocess
import threading

import pytest

from tests.mount.conftest import direct_read, kill_daemon

pytestmark = [pytest.mark.mount, pytest.mark.timeout(180)]

MiB = 1 << 20


def _random_ops(rng, fd, ref: bytearray, n: int):
    size = len(ref)
    for _ in range(n):
        aligned = rng.random() < 0.4
        if aligned:
            length = rng.choice([4096, 8192, 65536, 131072, 1 << 20])
            off = rng.randrange(0, (size - length) // 4096) * 4096
        else:
            length = rng.randrange(1, 300_000)
            off = rng.randrange(0, size - length)
        if rng.random() < 0.55:
            data = rng.randbytes(length)
            assert os.pwrite(fd, data, off) == length
            ref[off:off + length] = data
        else:
            assert os.pread(fd, length, off) == bytes(ref[off:off + length]), (off, length)
        if rng.random() < 0.05:
            os.fsync(fd)


@pytest.mark.parametrize("cipher", ["xts", "gcm"])
def test_random_io_matches_reference(cipher, kms_env, make_volume, mounter):
    size = 32 * MiB
    m = mounter(kms_env, make_volume(kms_env, size=size, cipher=cipher))
    ref = bytearray(size)
    rng = random.Random(f"io-{cipher}")
    fd = os.open(m.file, os.O_RDWR)
    try:
        _random_ops(rng, fd, ref, 300)
        os.fsync(fd)
        # Past the end: reads are short, writes are refused (with the writeback cache, at the
        # fsync that follows: the kernel buffers the write, the daemon refuses its write-back).
        assert os.pread(fd, 10, size - 4) == bytes(ref[-4:])
        with pytest.raises(OSError):
            os.pwrite(fd, b"xx", size - 1)
            os.fsync(fd)
    finally:
        try:
            os.close(fd)
        except OSError:
            pass  # close reports the refused write-back again
    # O_DIRECT reads bypass the page cache: the daemon's answer itself is right.
    for off in (0, 4096 * 7, size - 4 * MiB):
        assert direct_read(m.file, off, MiB) == bytes(ref[off:off + MiB])
    with open(m.file, "rb") as f:
        assert f.read() == bytes(ref)
    st = m.status()
    assert st["bytes_written"] > 0 and st["bytes_read"] > 0


def test_concurrent_readers_and_writers(kms_env, make_volume, mounter):
    size = 32 * MiB
    m = mounter(kms_env, make_volume(kms_env, size=size))
    nthreads, region = 4, size // 4
    errors = []

    def worker(i):
        try:
            rng = random.Random(i)
            base = i * region
            ref = bytearray(region)
            fd = os.open(m.file, os.O_RDWR)
            try:
                for _ in range(60):
                    length = rng.randrange(1, 200_000)
                    off = rng.randrange(0, region - length)
                    if rng.random() < 0.6:
                        data = rng.randbytes(length)
                        os.pwrite(fd, data, base + off)
                        ref[off:off + length] = data
                    else:
                        got = os.pread(fd, length, base + off)
                        assert got == bytes(ref[off:off + length]), (i, off, length)
                os.fsync(fd)
                assert os.pread(fd, region, base) == bytes(ref)
            finally:
                os.close(fd)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(nthreads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors


def _write_pattern(path, chunks, *, sync: bool):
    fd = os.open(path, os.O_RDWR)
    try:
        for off, data in chunks:
            os.pwrite(fd, data, off)
        if sync:
            (os.fdatasync if sync == "fdatasync" else os.fsync)(fd)
    finally:
        os.close(fd)


def _write_direct(path, chunks, flag):
    import mmap

    fd = os.open(path, os.O_RDWR | flag)
    try:
        for off, data in chunks:
            buf = mmap.mmap(-1, len(data))
            buf[:] = data
            assert os.pwritev(fd, [buf], off) == len(data)
    finally:
        os.close(fd)


def _check(path, chunks):
    with open(path, "rb") as f:
        for off, data in chunks:
            f.seek(off)
            assert f.read(len(data)) == data, off


def _chunks(seed, n=40, size=32 * MiB):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        length = rng.randrange(1, 100_000)
        off = (size // n) * i + rng.randrange(0, size // n - length)
        out.append((off, rng.randbytes(length)))
    return out


def test_fsynced_data_survives_unmount_and_sigkill(kms_env, make_volume, mounter):
    vol = make_volume(kms_env, size=32 * MiB)
    m = mounter(kms_env, vol)
    first = _chunks("first")
    _write_pattern(m.file, first, sync=True)
    kms_env.run("unmount", m.mountpoint)
    m = mounter(kms_env, vol, mountpoint=m.mountpoint)
    _check(m.file, first)
    second = _chunks("second")
    _write_pattern(m.file, second, sync=True)
    kill_daemon(m)
    # The dead daemon left a dead mount point and run-time files: the next mount cleans them up.
    m = mounter(kms_env, vol, mountpoint=m.mountpoint)
    _check(m.file, second)


@pytest.mark.parametrize("mode", ["all", "torn"])
def test_fsynced_data_survives_power_cut(mode, kms_env, make_volume, mounter):
    from volumed.volume.backing import simulate_power_cut

    vol = make_volume(kms_env, size=32 * MiB, cipher="gcm" if mode == "torn" else "xts")
    journal = kms_env.tmp / "journal"
    m = mounter(kms_env, vol, "--test-recording-journal", journal)
    durable = _chunks("durable")
    _write_pattern(m.file, durable[:20], sync=True)
    _write_pattern(m.file, durable[20:], sync="fdatasync")  # fdatasync acknowledges as fsync does
    # O_DIRECT and O_SYNC writes are acknowledged when write(2) returns, without an fsync.
    direct = [(8 * MiB + i * 3 * 65536, random.Random(i).randbytes(65536)) for i in range(4)]
    _write_direct(m.file, direct[2:], os.O_SYNC)
    _write_direct(m.file, direct[:2], os.O_DIRECT)
    durable += direct
    lost = _chunks("maybe-lost", n=20)
    lost = [(off + 37, data) for off, data in lost]   # not sector-aligned, overlapping durable ones
    _write_pattern(m.file, lost, sync=False)
    kill_daemon(m)
    report = simulate_power_cut(vol, journal, mode=mode, seed=7)
    print(report)
    m = mounter(kms_env, vol, mountpoint=m.mountpoint)
    if mode == "all":  # the power cut really dropped what was not acknowledged
        with open(m.file, "rb") as f:
            f.seek(lost[0][0])
            assert f.read(len(lost[0][1])) != lost[0][1]
    # Every byte written before the fsync is there unless a later (unsynced) write covered it.
    later = bytearray(32 * MiB)
    for off, data in lost:
        later[off:off + len(data)] = b"\1" * len(data)
    with open(m.file, "rb") as f:
        for off, data in durable:
            f.seek(off)
            got = f.read(len(data))
            for j in range(0, len(data)):
                if not later[off + j]:
                    assert got[j] == data[j], (off, j)


def test_ext4_on_loop_device(kms_env, make_volume, mounter, tmp_path):
    vol = make_volume(kms_env, size=64 * MiB)
    m = mounter(kms_env, vol)
    subprocess.run(["mkfs.ext4", "-q", "-F", m.file], check=True, timeout=60)
    fsmnt = tmp_path / "ext4"
    fsmnt.mkdir()
    subprocess.run(["mount", "-o", "loop", m.file, str(fsmnt)], check=True, timeout=60)
    try:
        files = {f"f{i}.bin": random.Random(i).randbytes(random.Random(i).randrange(1, 3 * MiB))
                 for i in range(8)}
        for name, data in files.items():
            (fsmnt / name).write_bytes(data)
        subprocess.run(["sync"], check=True)
        p = kms_env.run("unmount", m.mountpoint, check=False)
        assert p.returncode == 6 and "losetup -d" in p.stderr   # the loop device still uses it
        assert m.status()["state"] == "available"
    finally:
        subprocess.run(["umount", str(fsmnt)], check=True, timeout=60)
    subprocess.run(["e2fsck", "-fn", m.file], check=True, timeout=60, capture_output=True)
    kms_env.run("unmount", m.mountpoint)
    m = mounter(kms_env, vol, mountpoint=m.mountpoint)
    subprocess.run(["mount", "-o", "loop,ro", m.file, str(fsmnt)], check=True, timeout=60)
    try:
        for name, data in files.items():
            assert (fsmnt / name).read_bytes() == data
    finally:
        subprocess.run(["umount", str(fsmnt)], check=True, timeout=60)


def test_gcm_tampered_sector_is_eio_and_logged(kms_env, make_volume, mounter):
    from volumed.mount import paths
    from volumed.volume import gcmformat as F

    vol = make_volume(kms_env, size=16 * MiB, cipher="gcm")
    m = mounter(kms_env, vol)
    with open(m.file, "r+b") as f:
        f.write(random.Random(5).randbytes(16 * 4096))
        f.flush()
        os.fsync(f.fileno())
    # Sector 5's data pages (both slots; docs/FORMAT.md "GCM volumes"): flip one bit in each.
    fd = os.open(vol, os.O_RDWR)
    try:
        for slot in (0, 1):
            pos = F.slot_offset(0, slot, 5) + 100
            b = os.pread(fd, 1, pos)
            os.pwrite(fd, bytes([b[0] ^ 1]), pos)
    finally:
        os.close(fd)
    with pytest.raises(OSError) as info:
        direct_read(m.file, 5 * 4096, 4096)
    assert info.value.errno == 5
    assert direct_read(m.file, 4 * 4096, 4096) == random.Random(5).randbytes(16 * 4096)[4 * 4096:5 * 4096]
    with kms_env.in_process():
        log = paths.log_path(paths.mount_id(m.mountpoint)).read_text()
    assert "integrity failure" in log and "sector 5 of" in log
    assert m.status()["state"] == "available"   # a bad sector is not a key problem


def test_sqlite_database_on_ext4_on_the_mount(kms_env, make_volume, mounter, tmp_path):
    import sqlite3

    vol = make_volume(kms_env, size=64 * MiB)
    m = mounter(kms_env, vol)
    subprocess.run(["mkfs.ext4", "-q", "-F", m.file], check=True, timeout=60)
    fsmnt = tmp_path / "db"
    fsmnt.mkdir()
    for round_ in range(2):
        subprocess.run(["mount", "-o", "loop", m.file, str(fsmnt)], check=True, timeout=60)
        try:
            db = sqlite3.connect(fsmnt / "orders.db")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, item TEXT)")
            with db:
                db.executemany("INSERT INTO orders (item) VALUES (?)", [(f"item{i}",) for i in range(2000)])
            assert db.execute("SELECT count(*) FROM orders").fetchone()[0] == 2000 * (round_ + 1)
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            db.close()
        finally:
            subprocess.run(["umount", str(fsmnt)], check=True, timeout=60)
        kms_env.run("unmount", m.mountpoint)
        m = mounter(kms_env, vol, mountpoint=m.mountpoint)
    subprocess.run(["e2fsck", "-fn", m.file], check=True, timeout=60, capture_output=True)


def test_the_file_keeps_its_size_like_a_disk(kms_env, make_volume, mounter, tmp_path):
    """O_TRUNC and truncate to another size fail with EINVAL and change nothing; dd with
    conv=notrunc copies an image onto the file (docs/MOUNT.md, "A fixed size, like a disk")."""
    import errno

    m = mounter(kms_env, make_volume(kms_env, size=16 * MiB))
    data = random.Random(5).randbytes(MiB)
    fd = os.open(m.file, os.O_RDWR)
    try:
        os.pwrite(fd, data, 0)
        os.fsync(fd)
        for attempt in (lambda: os.open(m.file, os.O_WRONLY | os.O_TRUNC),
                        lambda: os.ftruncate(fd, 0), lambda: os.truncate(m.file, 32 * MiB)):
            with pytest.raises(OSError) as info:
                attempt()
            assert info.value.errno == errno.EINVAL
        assert os.path.getsize(m.file) == 16 * MiB
        os.truncate(m.file, 16 * MiB)  # to its own size: accepted, nothing changes
        os.ftruncate(fd, 16 * MiB)
        assert os.path.getsize(m.file) == 16 * MiB
        assert os.pread(fd, MiB, 0) == data
    finally:
        os.close(fd)
    image = tmp_path / "image"
    image.write_bytes(data[::-1])
    subprocess.run(["dd", f"if={image}", f"of={m.file}", "bs=64k", "conv=notrunc,fsync", "status=none"],
                   check=True, timeout=60)
    assert direct_read(m.file, 0, MiB) == data[::-1]
    assert os.path.getsize(m.file) == 16 * MiB
