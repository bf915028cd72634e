"""Fault injection through the fixture handle and `volumed fault`, on real mounts."""

import errno
import os
import random
import subprocess
import sys

import pytest

from tests.mount.conftest import direct_read as _direct_read
from tests.mount.conftest import write_fsynced as _write_sync

pytestmark = pytest.mark.timeout(120)

MiB = 1 << 20


def _errno_of(fn, *args):
    with pytest.raises(OSError) as info:
        fn(*args)
    return info.value.errno


def test_errno_on_a_byte_range_nth_op_and_probability(encrypted_volume):
    v = encrypted_volume
    _write_sync(v.path, 0, random.Random(1).randbytes(MiB))
    v.fault.error(io="read", errno="ENOSPC", start=64 * 1024, end=68 * 1024)
    assert _errno_of(_direct_read, v.path, 64 * 1024, 4096) == errno.ENOSPC
    assert len(_direct_read(v.path, 128 * 1024, 4096)) == 4096      # outside the range: fine
    v.fault.clear()
    assert len(_direct_read(v.path, 64 * 1024, 4096)) == 4096
    # The 3rd write from now fails, once.
    v.fault.error(io="write", nth=3)
    fd = os.open(v.path, os.O_RDWR | os.O_DIRECT)
    import mmap

    buf = mmap.mmap(-1, 4096)
    try:
        results = []
        for i in range(5):
            try:
                os.pwritev(fd, [buf], i * 4096)
                results.append("ok")
            except OSError as exc:
                results.append(errno.errorcode[exc.errno])
    finally:
        os.close(fd)
    assert results == ["ok", "ok", "EIO", "ok", "ok"]
    v.fault.clear()
    v.fault.error(io="read", probability=1.0, errno="EROFS")
    assert _errno_of(_direct_read, v.path, 0, 4096) == errno.EROFS
    assert v.fault.status()["injected"] >= 3


def test_bad_sector_fails_reads_until_rewritten(encrypted_volume):
    v = encrypted_volume
    _write_sync(v.path, 0, bytes(range(256)) * 64 * 8)
    v.fault.bad_sectors(5)
    assert _errno_of(_direct_read, v.path, 5 * 4096, 4096) == errno.EIO
    assert _errno_of(_direct_read, v.path, 4 * 4096, 8192) == errno.EIO   # a read touching it
    assert len(_direct_read(v.path, 6 * 4096, 4096)) == 4096
    _write_sync(v.path, 5 * 4096, b"\x07" * 4096)                          # rewritten: remapped
    assert _direct_read(v.path, 5 * 4096, 4096) == b"\x07" * 4096
    assert v.fault.status()["bad_sectors"] == []


@pytest.mark.parametrize("cipher", ["xts", "gcm"])
def test_power_cut_drops_unflushed_writes_and_keeps_flushed_ones(encrypted_volume_factory, cipher):
    v = encrypted_volume_factory(cipher=cipher, size="16M")
    _write_sync(v.path, 0, b"A" * MiB)
    fd = os.open(v.path, os.O_RDWR)
    os.pwrite(fd, b"B" * MiB, 0)              # reaches the daemon, never flushed
    os.close(fd)
    report = v.power_cut("all")
    assert report["writes"] > 0 and report["dropped"] == report["writes"]
    assert _direct_read(v.path, 0, MiB) == b"A" * MiB


@pytest.mark.parametrize("cipher,mode", [("xts", "random"), ("xts", "torn"), ("gcm", "torn")])
def test_power_cut_modes_keep_each_page_old_or_new(encrypted_volume_factory, cipher, mode):
    v = encrypted_volume_factory(cipher=cipher, size="16M")
    _write_sync(v.path, 0, b"A" * MiB)
    fd = os.open(v.path, os.O_RDWR)
    for i in range(16):
        os.pwrite(fd, bytes([66 + i % 20]) * 65536, i * 65536)
    os.close(fd)
    report = v.power_cut(mode, seed=7)
    assert report["dropped"] >= 1 and report["pages_dropped"] >= 1
    data = _direct_read(v.path, 0, MiB)
    for i in range(16):
        for p in range(16):
            page = data[i * 65536 + p * 4096:i * 65536 + (p + 1) * 4096]
            assert page in (b"A" * 4096, bytes([66 + i % 20]) * 4096)


@pytest.mark.parametrize("engine", [  # native: the core's history file; python: FaultBacking's memory
    pytest.param(e, marks=pytest.mark.volumed(engine=e)) for e in ("native", "python")])
def test_rollback_puts_an_older_sector_back_unnoticed_by_xts(encrypted_volume, engine):
    v = encrypted_volume
    _write_sync(v.path, 8 * 4096, b"old!" * 1024)
    _write_sync(v.path, 8 * 4096, b"new!" * 1024)
    assert v.fault.rollback(8) == 1
    # XTS has no per-sector authentication: the older ciphertext decrypts to the older data.
    assert _direct_read(v.path, 8 * 4096, 4096) == b"old!" * 1024


@pytest.mark.volumed(cipher="gcm", size="16M")
def test_rollback_of_a_gcm_sector_is_detected(encrypted_volume):
    v = encrypted_volume
    _write_sync(v.path, 8 * 4096, b"old!" * 1024)
    _write_sync(v.path, 8 * 4096, b"new!" * 1024)
    _write_sync(v.path, 8 * 4096, b"3rd!" * 1024)
    assert v.fault.rollback(8) >= 1
    v.remount()
    # The data page rolled back without its tag: authentication fails, the read is an I/O error.
    assert _errno_of(_direct_read, v.path, 8 * 4096, 4096) == errno.EIO


@pytest.mark.volumed(cipher="gcm", size="16M")
def test_gcm_write_acknowledged_before_a_power_cut_stays_authenticated(encrypted_volume):
    """Issue 13 item 2: the power goes right after an fsync; the acknowledged data reads back, and
    a flipped byte in it is an I/O error, not the older version."""
    from volumed.volume import gcmformat as F

    v = encrypted_volume
    _write_sync(v.path, 8 * 4096, b"old!" * 1024)
    _write_sync(v.path, 8 * 4096, b"new!" * 1024)   # acknowledged by the fsync
    v.power_cut("all")                              # and remounted
    assert _direct_read(v.path, 8 * 4096, 4096) == b"new!" * 1024
    v.unmount()
    with open(v.image, "r+b") as f:
        f.seek(F.meta_offset(0))
        ctr = F.slots(f.read(4096))[8]["ctr"]
        f.seek(F.slot_offset(0, int(ctr[1] > ctr[0]), 8) + 99)
        b = f.read(1)
        f.seek(F.slot_offset(0, int(ctr[1] > ctr[0]), 8) + 99)
        f.write(bytes([b[0] ^ 1]))
    v.mount()
    assert _errno_of(_direct_read, v.path, 8 * 4096, 4096) == errno.EIO


def test_cli_injects_through_the_control_channel_only_with_allow_faults(encrypted_volume, tmp_path):
    v = encrypted_volume
    p = v.cli("fault", "bad-sector", "--sectors", "1-2", v.mountpoint)
    assert '"bad_sectors": [\n      1,\n      2\n    ]' in p.stdout
    assert _errno_of(_direct_read, v.path, 4096, 4096) == errno.EIO
    p = v.cli("fault", "error", "--errno", "EBOGUS", v.mountpoint, check=False)
    assert p.returncode != 0 and len(p.stderr.strip().splitlines()) == 1 and "EBOGUS" in p.stderr
    p = v.cli("fault", "throttle", "--volume-type", "gp3", "--iops", "99", v.mountpoint, check=False)
    assert p.returncode != 0 and "3000" in p.stderr
    # A mount without --allow-faults refuses every fault.
    v.unmount()
    v.cli("mount", v.image, v.mountpoint)
    try:
        p = v.cli("fault", "power-cut", v.mountpoint, check=False)
        assert p.returncode != 0 and "--allow-faults" in p.stderr
        assert len(_direct_read(v.path, 4096, 4096)) == 4096
    finally:
        v.unmount()
    v.mount()


def test_a_non_root_peer_is_refused(encrypted_volume):
    code = ("import os, sys, json, socket; from volumed.mount import control; os.setuid(65534); "
            "print(control.request(sys.argv[1], {'op': 'fault', 'kind': 'power-cut'}))")
    p = subprocess.run([sys.executable, "-c", code, str(encrypted_volume._sock())],
                       capture_output=True, text=True, timeout=30)
    assert "root only" in p.stdout or "Permission denied" in p.stderr
    assert encrypted_volume.fault.status()["power_lost"] is False


def test_latency_delays_every_operation(encrypted_volume):
    import time

    v = encrypted_volume
    v.fault.latency(0.05)
    t0 = time.monotonic()
    for i in range(4):
        _direct_read(v.path, i * 4096, 4096)
    assert time.monotonic() - t0 >= 4 * 0.05          # a lower bound only
    p = v.cli("fault", "latency", "11", v.mountpoint, check=False)
    assert p.returncode != 0 and "0 to 10 seconds" in p.stderr
    assert v.fault.status()["latency"] == 0.05       # the refused request changed nothing
