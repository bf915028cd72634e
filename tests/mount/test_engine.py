"""The native FUSE request engine (issue 12) against the pyfuse3 engine and under load: the same
random request sequences give the same replies and files on both; 16 threads of random I/O with
fsync end byte for byte as a model says; several workers on cloned /dev/fuse descriptors serve;
requests are answered while a Python thread in the daemon holds the GIL; both errno tables agree."""

import errno
import mmap
import os
import random
import shutil
import threading
import time

import pytest

from tests.mount.conftest import direct_read, write_fsynced

pytestmark = [pytest.mark.mount, pytest.mark.timeout(240)]

MiB = 1 << 20


def _status(m) -> dict:
    return m.status()


def _run_all(threads: list) -> None:
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _fuse_fds(pid: int) -> int:
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/fuse":
                n += 1
        except OSError:
            pass
    return n


# ---- errno tables --------------------------------------------------------------------------------

def test_errno_tables_of_both_engines_agree():
    from volumed import _native
    from volumed.errors import IntegrityError, KeyAccessError, StateError, UsageError
    from volumed.mount.errno_map import errno_for

    native = _native.engine_errno_table()
    python = {"VC_E_KEY": KeyAccessError("x"), "VC_E_INTEGRITY": IntegrityError("x"),
              "VC_E_RANGE": UsageError("x"), "VC_E_STATE": StateError("x"),
              "VC_E_NOMEM": MemoryError("x")}
    for name in ("ENOSPC", "EDQUOT", "EIO", "EROFS", "EFBIG", "ENOMEM", "EBADF"):
        code = getattr(errno, name)
        python[name] = OSError(code, os.strerror(code))
    assert set(native) == set(python)
    assert {k: errno_for(v) for k, v in python.items()} == native
    assert native["ENOSPC"] == errno.ENOSPC and native["VC_E_KEY"] == errno.EIO
    assert native["EBADF"] == errno.EIO  # an errno outside PASSED_THROUGH is a bug: EIO


def test_native_passed_through_list_is_errno_maps():
    """native/fuse_engine.h's FE_PASSED_THROUGH (every errno the table lists besides EBADF) is
    the same set as errno_map.PASSED_THROUGH: an errno added to one list is added to both."""
    from volumed import _native
    from volumed.mount.errno_map import PASSED_THROUGH

    native = _native.engine_errno_table()
    listed = {getattr(errno, k) for k in native if not k.startswith("VC_E_") and k != "EBADF"}
    assert listed == PASSED_THROUGH
    assert all(native[errno.errorcode[code]] == code for code in PASSED_THROUGH)


# ---- the differential test ---------------------------------------------------------------------

def _outcome(fn, *args):
    try:
        r = fn(*args)
    except OSError as exc:
        return ("err", exc.errno)
    return ("ok", r)


def _aligned(n: int):
    import mmap

    return mmap.mmap(-1, n)


def _run_sequence(path: str, mountpoint: str, seed: int, n: int) -> list:
    """The same random requests for either engine; every reply (value or errno) recorded."""
    rng = random.Random(seed)
    size = os.path.getsize(path)
    out = []
    fd = os.open(path, os.O_RDWR)
    dfd = os.open(path, os.O_RDWR | os.O_DIRECT)
    try:
        for _ in range(n):
            op = rng.choice(["write", "write", "read", "read", "direct-write", "direct-read",
                             "fsync", "fdatasync", "truncate-same", "truncate-other", "open-trunc",
                             "fallocate", "read-past-end", "stat", "statvfs", "listdir",
                             "missing", "chmod", "open-dir-rw"])
            if op == "write":
                length = rng.choice([1, 512, 4096, 5000, 65536, 300_000])
                off = rng.randrange(0, size - length)
                out.append((op, off, length, _outcome(os.pwrite, fd, rng.randbytes(length), off)))
            elif op == "read":
                length = rng.choice([1, 4096, 5000, 131072, 1 << 20])
                off = rng.randrange(0, size - 1)
                out.append((op, off, length, _outcome(os.pread, fd, length, off)))
            elif op == "direct-write":
                length = rng.choice([4096, 65536])
                off = rng.randrange(0, (size - length) // 4096) * 4096
                buf = _aligned(length)
                buf.write(rng.randbytes(length))
                out.append((op, off, _outcome(os.pwritev, dfd, [buf], off)))
            elif op == "direct-read":
                length = rng.choice([4096, 65536])
                off = rng.randrange(0, (size - length) // 4096) * 4096
                buf = _aligned(length)
                n_read = _outcome(os.preadv, dfd, [buf], off)
                out.append((op, off, n_read, bytes(buf)))
            elif op == "fsync":
                out.append((op, _outcome(os.fsync, fd)))
            elif op == "fdatasync":
                out.append((op, _outcome(os.fdatasync, fd)))
            elif op == "truncate-same":
                out.append((op, _outcome(os.ftruncate, fd, size)))
            elif op == "truncate-other":
                out.append((op, _outcome(os.ftruncate, fd, rng.choice([0, 4096, size - 1]))))
            elif op == "open-trunc":
                r = _outcome(os.open, path, os.O_RDWR | os.O_TRUNC)
                if r[0] == "ok":
                    os.close(r[1])
                    r = ("ok", "fd")
                out.append((op, r))
            elif op == "fallocate":
                out.append((op, _outcome(_fallocate, fd)))
            elif op == "read-past-end":
                out.append((op, _outcome(os.pread, fd, 4096, size + rng.randrange(0, 8192))))
            elif op == "stat":
                st = os.stat(path)
                out.append((op, st.st_size, st.st_mode, st.st_nlink, st.st_blocks, st.st_uid))
            elif op == "statvfs":
                s = os.statvfs(mountpoint)
                out.append((op, s.f_bsize, s.f_blocks, s.f_bfree, s.f_files, s.f_namemax))
            elif op == "listdir":
                out.append((op, sorted(os.listdir(mountpoint))))
            elif op == "missing":
                out.append((op, _outcome(os.stat, os.path.join(mountpoint, "nope"))))
            elif op == "chmod":
                out.append((op, _outcome(os.chmod, path, 0o644)))
            elif op == "open-dir-rw":
                out.append((op, _outcome(os.open, mountpoint, os.O_RDWR)))
        os.fsync(fd)
    finally:
        os.close(dfd)
        os.close(fd)
    return out


def _fallocate(fd):
    """fallocate(2) itself (os.posix_fallocate would fall back to writing zeros in glibc)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    if libc.fallocate(fd, 0x01 | 0x02, 0, 4096) != 0:  # KEEP_SIZE | PUNCH_HOLE
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return 0


@pytest.mark.parametrize("cipher", ["xts", "gcm"])
def test_both_engines_give_the_same_replies_and_files(kms_env, make_volume, mounter, cipher):
    vol = make_volume(kms_env, size=8 * MiB, cipher=cipher)
    copy = kms_env.tmp / "copy.img"
    shutil.copyfile(vol, copy)
    results, contents = {}, {}
    for engine, image in (("native", vol), ("python", copy)):
        m = mounter(kms_env, image, "--engine", engine, "--io-threads", "2")
        assert _status(m)["engine"] == engine
        results[engine] = [_run_sequence(m.file, str(m.mountpoint), seed, 150) for seed in (1, 2, 3)]
        with open(m.file, "rb") as f:
            contents[engine] = f.read()
        kms_env.run("unmount", m.mountpoint)
    for a, b in zip(results["native"], results["python"]):
        for i, (x, y) in enumerate(zip(a, b)):
            assert x == y, (i, x[:3], y[:3])
    assert contents["native"] == contents["python"]
    # XTS is deterministic under one key: the encrypted images are equal byte for byte too (GCM
    # sessions draw random salts: tests/volume/test_core.py compares GCM files with a fixed one).
    if cipher == "xts":
        assert open(vol, "rb").read() == open(copy, "rb").read()


# ---- stress ------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sixteen_threads_of_random_io_with_fsync_match_a_model(kms_env, make_volume, mounter):
    seconds = float(os.environ.get("VOLUMED_STRESS_SECONDS", "60"))
    size = 32 * MiB
    vol = make_volume(kms_env, size=size)
    m = mounter(kms_env, vol, "--engine", "native")
    model = bytearray(size)
    stripe = 64 * 1024  # thread t owns every stripe s with s % 16 == t: no two threads overlap
    errors = []
    deadline = time.monotonic() + seconds

    def worker(t: int):
        rng = random.Random(t)
        fd = os.open(m.file, os.O_RDWR)
        try:
            mine = [s for s in range(size // stripe) if s % 16 == t]
            while time.monotonic() < deadline:
                s = rng.choice(mine)
                base = s * stripe
                off = base + rng.randrange(0, stripe - 1)
                length = rng.randrange(1, base + stripe - off + 1)
                r = rng.random()
                if r < 0.5:
                    data = rng.randbytes(length)
                    assert os.pwrite(fd, data, off) == length
                    model[off:off + length] = data
                elif r < 0.95:
                    got = os.pread(fd, length, off)
                    if got != bytes(model[off:off + length]):
                        errors.append((t, off, length))
                        return
                else:
                    os.fsync(fd)
            os.fsync(fd)
        except Exception as exc:  # reported below, with the thread that failed
            errors.append((t, repr(exc)))
        finally:
            os.close(fd)

    _run_all([threading.Thread(target=worker, args=(t,)) for t in range(16)])
    assert not errors, errors[:5]
    st = _status(m)
    assert st["engine"] == "native" and st["requests"] > 0
    kms_env.run("unmount", m.mountpoint)
    m = mounter(kms_env, vol, mountpoint=m.mountpoint)
    with open(m.file, "rb") as f:
        assert f.read() == bytes(model)


# ---- cloned descriptors, the GIL, status -------------------------------------------------------

def test_several_workers_on_cloned_descriptors_serve(kms_env, make_volume, mounter):
    vol = make_volume(kms_env, size=16 * MiB)
    m = mounter(kms_env, vol, "--engine", "native", "--io-threads", "4")

    def load(t):
        for i in range(200):
            direct_read(m.file, ((t * 200 + i) % 4096) * 4096, 4096)

    threads = [threading.Thread(target=load, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    st = _status(m)
    assert st["engine"] == "native" and st["io_threads"] == 4
    assert st["workers_used"] >= 2, st
    assert sum(st["requests_per_worker"]) == st["requests"]
    # The master descriptor and a clone per worker started (FUSE_DEV_IOC_CLONE).
    assert _fuse_fds(m.pid()) >= 1 + st["workers_used"]


def test_requests_waiting_for_the_disk_give_their_cpu_slot_up(kms_env, make_volume, mounter):
    """--io-threads 1 --io-depth 8: one request at a time on the CPU, up to 8 workers. With the
    backing file's pages evicted, reads wait for the disk and give their CPU slot up meanwhile
    (status: disk_waits); concurrent O_DIRECT writes (a flush each) and fsyncs go through the same
    slots; every reply is right and the file ends as a model says."""
    size = 16 * MiB
    vol = make_volume(kms_env, size=size)
    m = mounter(kms_env, vol, "--engine", "native", "--io-threads", "1", "--io-depth", "8")
    st = _status(m)
    assert st["io_threads"] == 1 and st["io_depth"] == 8 and st["disk_waits"] == 0
    model = bytearray(os.urandom(size))
    write_fsynced(m.file, 0, model)
    bfd = os.open(vol, os.O_RDONLY)  # the daemon's writes are durable, so its pages are clean
    try:
        os.posix_fadvise(bfd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(bfd)
    sectors = size // 4096
    errors = []

    def reader(t: int):
        rng = random.Random(t)
        for _ in range(64):
            s = rng.randrange(sectors // 2)  # the writers own the upper half
            if direct_read(m.file, s * 4096, 4096) != bytes(model[s * 4096:(s + 1) * 4096]):
                errors.append(("read", t, s))

    def writer(t: int):
        rng = random.Random(100 + t)
        fd = os.open(m.file, os.O_RDWR | os.O_DIRECT)
        buf = mmap.mmap(-1, 4096)
        try:
            for i in range(32):
                s = sectors // 2 + t + 2 * rng.randrange(sectors // 4)
                data = rng.randbytes(4096)
                buf[:] = data
                assert os.pwritev(fd, [buf], s * 4096) == 4096
                model[s * 4096:(s + 1) * 4096] = data
                if i % 8 == 7:
                    os.fsync(fd)
        except Exception as exc:  # reported below
            errors.append(("write", t, repr(exc)))
        finally:
            os.close(fd)

    _run_all([threading.Thread(target=reader, args=(t,)) for t in range(6)]
             + [threading.Thread(target=writer, args=(t,)) for t in range(2)])
    assert not errors, errors[:5]
    st = _status(m)
    assert st["disk_waits"] > 0, st
    assert sum(st["requests_per_worker"]) == st["requests"]
    assert direct_read(m.file, 0, size) == bytes(model)


def test_default_io_depth_and_a_depth_below_the_threads(kms_env, make_volume, mounter):
    """The default depth is 16 worker threads (never fewer than --io-threads); a depth below an
    explicit --io-threads is refused with one line before anything is attached."""
    vol = make_volume(kms_env, size=16 * MiB)
    p = mounter(kms_env, vol, "--io-threads", "4", "--io-depth", "2", check=False)
    assert p.returncode != 0
    assert p.stderr.strip().splitlines() == [p.stderr.strip()]
    assert "--io-depth 2 is below --io-threads 4" in p.stderr
    m = mounter(kms_env, vol, "--io-threads", "20")
    assert _status(m)["io_depth"] == 20
    kms_env.run("unmount", m.mountpoint)
    m = mounter(kms_env, vol, mountpoint=m.mountpoint)
    st = _status(m)
    assert st["io_threads"] == len(os.sched_getaffinity(0))
    assert st["io_depth"] == max(16, st["io_threads"])


def test_requests_are_served_while_python_holds_the_gil(kms_env, make_volume, mounter):
    vol = make_volume(kms_env, size=16 * MiB)
    m = mounter(kms_env, vol, "--engine", "native")
    reply = {}
    holder = threading.Thread(target=lambda: reply.update(m.control({"op": "hold-gil",
                                                                      "seconds": 3.0})))
    holder.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    fd = os.open(m.file, os.O_RDWR)
    try:
        for i in range(20):
            os.pwrite(fd, bytes([i]) * 4096, i * 4096)
            os.fsync(fd)
            assert direct_read(m.file, i * 4096, 4096) == bytes([i]) * 4096
    finally:
        os.close(fd)
    t1 = time.monotonic()
    holder.join()
    assert reply["ok"], reply
    assert reply["other_python_ran"] <= 1  # the daemon's Python really was stopped meanwhile
    assert reply["held_from"] < t0 and t1 < reply["held_until"], (reply, t0, t1)


def test_fixture_mounts_of_xts_volumes_are_native(kms_env, make_volume, mounter):
    """The fixtures mount with --allow-faults and no --engine: XTS is served natively, with one
    worker thread per CPU at most; a fault set goes through the gate and clearing it turns it off."""
    vol = make_volume(kms_env, size=16 * MiB)
    m = mounter(kms_env, vol)
    st = _status(m)
    assert st["engine"] == "native" and st["io_threads"] == len(os.sched_getaffinity(0))
    m.control({"op": "fault", "kind": "bad-sector", "sectors": [3]})
    with pytest.raises(OSError) as exc:
        direct_read(m.file, 3 * 4096, 4096)
    assert exc.value.errno == errno.EIO
    m.control({"op": "fault", "kind": "clear"})
    assert direct_read(m.file, 3 * 4096, 4096) == bytes(4096)


def test_gcm_volumes_are_served_by_the_native_engine(kms_env, make_volume, mounter):
    """GCM mounts go to the native engine over the native GCM store by default (the fixtures'
    mounts too), and the data written there reads back after a remount."""
    vol = make_volume(kms_env, size=16 * MiB, cipher="gcm")
    m = mounter(kms_env, vol)
    st = _status(m)
    assert st["engine"] == "native" and st["io_threads"] == len(os.sched_getaffinity(0))
    data = os.urandom(3 * MiB)
    write_fsynced(m.file, 12345, data)
    kms_env.run("unmount", m.mountpoint)
    m = mounter(kms_env, vol, "--engine", "python")
    assert _status(m)["engine"] == "python"
    assert direct_read(m.file, 0, 4 * MiB)[12345:12345 + len(data)] == data
