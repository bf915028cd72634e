"""EBS-style throttling: the token-bucket model on an injected clock (no sleeping), and a real
throttled gp3 mount whose O_DIRECT reads (Python's and fio's) take at least what 3,000 IOPS allow."""

import mmap
import os
import time

import pytest

from volumed.clock import FakeClock
from volumed.errors import UsageError
from volumed.mount import throttle
from volumed.mount.throttle import GIB, IO_UNIT, MIB, Throttle, io_units, spec


def _run(t: Throttle, clock: FakeClock, sizes) -> float:
    """Issue I/Os back to back, each waiting what acquire says (on the fake clock)."""
    start = clock.time()
    for n in sizes:
        clock.advance(t.acquire(n))
    return clock.time() - start


def test_ios_above_256k_count_in_256k_units():
    assert [io_units(n) for n in (1, 4096, IO_UNIT, IO_UNIT + 1, MIB, 16 * MIB)] == [1, 1, 1, 2, 4, 64]


def test_gp3_defaults_and_provisioning_limits():
    s = spec("gp3", size=100 * GIB)
    assert (s.iops, s.throughput) == (3000, 125 * MIB)
    assert spec("gp3", size=100 * GIB, iops=16000, throughput_mib=1000).iops == 16000
    with pytest.raises(UsageError, match="500 per GiB"):
        spec("gp3", size=8 * GIB, iops=5000)           # 8 GiB allows at most 4000
    with pytest.raises(UsageError, match="MiB/s"):
        spec("gp3", size=100 * GIB, iops=3000, throughput_mib=1000)   # 0.25 MiB/s per IOPS
    with pytest.raises(UsageError, match="unknown volume type"):
        spec("st1", size=GIB)
    assert spec("io2", size=100 * GIB, iops=10000).throughput == int(2560 * MIB)
    g = spec("gp2", size=100 * GIB)
    assert (g.baseline_iops, g.iops, g.credits) == (300, 3000, 5_400_000)


def test_gp3_4k_iops_are_capped_at_3000():
    clock = FakeClock(0)
    t = Throttle(spec("gp3", size=GIB), clock)
    took = _run(t, clock, [4096] * 30000)
    burst = 3000 * throttle.BURST_SECONDS
    assert took == pytest.approx((30000 - burst) / 3000, rel=1e-6)


def test_gp3_large_ios_are_capped_by_throughput_and_units():
    clock = FakeClock(0)
    t = Throttle(spec("gp3", size=GIB), clock)
    took = _run(t, clock, [MIB] * 1250)            # 1250 MiB at 125 MiB/s
    assert took >= 1250 / 125 - 1
    assert t.ops == 1250 * 4                        # 1 MiB = four 256 KiB operations
    clock = FakeClock(0)
    t = Throttle(spec("gp3", size=100 * GIB, iops=4000, throughput_mib=1000), clock)
    took = _run(t, clock, [512 * 1024] * 4000)      # 2 units each: 8000 ops at 4000 IOPS
    assert took >= 8000 / 4000 - 0.1


def test_gp2_bursts_until_credits_run_out_then_falls_to_baseline():
    clock = FakeClock(0)
    t = Throttle(spec("gp2", size=10 * GIB), clock)   # baseline 100 IOPS, burst 3000
    # While credits last: 3000 IOPS.
    assert _run(t, clock, [4096] * 30000) == pytest.approx(10.0, abs=0.2)
    t.credits.tokens = 0.0                             # the 5.4 M credits spent
    assert _run(t, clock, [4096] * 1000) == pytest.approx(10.0, abs=0.1)   # 100 IOPS


def _direct_reads(path, n, size=4096):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, size)
    try:
        t0 = time.monotonic()
        for i in range(n):
            os.preadv(fd, [buf], (i % 4096) * size)
        return time.monotonic() - t0
    finally:
        os.close(fd)


@pytest.mark.timeout(120)
@pytest.mark.volumed(size="32M", volume_type="gp3")
def test_throttled_gp3_mount_takes_at_least_the_iops_budget(encrypted_volume):
    # Lower bound only: N reads at 3,000 IOPS take at least (N - burst) / 3000 seconds; a slow
    # machine only makes it slower.
    n = 3000
    took = _direct_reads(encrypted_volume.path, n)
    assert took >= (n - 3000 * throttle.BURST_SECONDS) / 3000
    st = encrypted_volume.fault.status()["throttle"]
    assert st["volume_type"] == "gp3" and st["iops"] == 3000 and st["ops_counted"] >= n


@pytest.mark.timeout(120)
@pytest.mark.volumed(size="32M", volume_type="gp3")
def test_throttled_gp3_mount_caps_fio_iops(encrypted_volume):
    """fio's random 4 KiB O_DIRECT reads on a gp3 mount: N of them take at least what 3,000 IOPS
    allow after the burst (a lower bound: a slow machine only makes it slower)."""
    import json
    import shutil
    import subprocess

    if shutil.which("fio") is None:
        pytest.skip("fio is not installed (scripts/test installs it)")
    n = 4500
    p = subprocess.run(
        ["fio", "--name=gp3", f"--filename={encrypted_volume.path}", "--rw=randread", "--bs=4k",
         "--direct=1", "--ioengine=psync", f"--number_ios={n}", "--size=32M", "--randrepeat=0",
         "--allow_file_create=0", "--output-format=json"],
        capture_output=True, text=True, timeout=100)
    assert p.returncode == 0, p.stderr
    job = json.loads(p.stdout[p.stdout.index("{"):])["jobs"][0]
    assert job["read"]["total_ios"] == n
    took = job["job_runtime"] / 1000
    assert took >= (n - 3000 * throttle.BURST_SECONDS) / 3000, job["read"]["iops"]
