"""Crash consistency under the crash model of docs/FORMAT.md, in both modes.

The harness (crashsim.py) traces real workloads (aligned, unaligned, zero, discard, flush) and
replays at least 2,000 random power cuts per cipher mode (1,000 dropping random subsets of whole
writes, 1,000 also tearing multi-page writes at 4 KiB); some crashed states get a second workload and a second power cut (recovery of recovery). The power-loss
recorder the mount daemon uses (RecordingBackingFile + simulate_power_cut) is tested on its own.
"""

from __future__ import annotations

import os
import random

import pytest

from tests.volume.conftest import raw_key
from tests.volume.crashsim import Run
from volumed.volume import RecordingBackingFile, Volume, simulate_power_cut

POINTS = 1000  # per cipher and policy: dropping random subsets of whole writes / also tearing them


def _workdir(tmp_path):
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK):
        import tempfile

        return tempfile.mkdtemp(dir=shm, prefix="volumed-crash-")
    return str(tmp_path)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("cipher,sectors", [("xts", 24), ("gcm", 100)])
def test_random_crash_points(cipher, sectors, make_volume, kms, tmp_path):
    path = make_volume(cipher, size=sectors * 4096)
    key = bytes(raw_key(kms, path))
    with open(path, "rb") as f:
        base = f.read()
    work = _workdir(tmp_path)
    rng = random.Random(f"crash-{cipher}")
    counts = {False: 0, True: 0}  # torn -> crash points checked
    try:
        while min(counts.values()) < POINTS:
            run = Run(work, base, key, sectors, rng, ops=40)
            for _ in range(50):
                torn = counts[True] < counts[False]
                k = rng.randrange(1, len(run.trace) + 1)
                after, durable_digests = run.check_point(k, rng, torn=torn)
                counts[torn] += 1
                if rng.random() < 0.04:  # recovery of recovery: work on the crashed state, crash again
                    run2 = Run(work, after, key, sectors, rng, ops=25, durable=durable_digests)
                    for _ in range(5):
                        run2.check_point(rng.randrange(1, len(run2.trace) + 1), rng, torn=True)
                        counts[True] += 1
    finally:
        if work.startswith("/dev/shm"):
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    assert min(counts.values()) >= POINTS


@pytest.mark.parametrize("cipher", ["xts", "gcm"])
@pytest.mark.parametrize("mode", ["all", "random", "torn"])
def test_power_cut_recorder(cipher, mode, make_volume, kms, tmp_path):
    """A writer on RecordingBackingFile dies; simulate_power_cut drops unflushed writes; every
    sector then reads its flushed version or the later one, and the report says what was dropped."""
    path = make_volume(cipher, size=1 << 20)
    journal = str(tmp_path / "journal")
    rng = random.Random(mode + cipher)
    old = rng.randbytes(1 << 20)
    new = rng.randbytes(1 << 20)
    vol = Volume.open(path, kms=kms, backing=RecordingBackingFile(path, journal))
    vol.write(0, old)
    vol.flush()
    assert os.path.getsize(journal) <= 16 + 16384  # GCM: the header note of the flushed counter
    for off in range(0, 1 << 20, 64 << 10):  # 16 multi-page writes after the flush
        vol.write(off, new[off:off + (64 << 10)])
    vol.abandon()  # the process dies: no flush, no close
    report = simulate_power_cut(path, journal, mode=mode, seed=7)
    assert report.writes >= 16
    assert report.dropped > 0 or report.torn > 0
    if mode == "torn":
        assert report.torn > 0
    assert not os.path.exists(journal)
    with Volume.open(path, kms=kms) as vol:
        data = vol.read(0, 1 << 20)
    for s in range(256):
        piece = data[s * 4096:(s + 1) * 4096]
        assert piece in (old[s * 4096:(s + 1) * 4096], new[s * 4096:(s + 1) * 4096]), s
    if mode == "all":
        assert data == old


def test_power_cut_after_flush_loses_nothing(make_volume, kms, tmp_path):
    path = make_volume("gcm", size=1 << 20)
    journal = str(tmp_path / "journal")
    data = os.urandom(300_000)
    vol = Volume.open(path, kms=kms, backing=RecordingBackingFile(path, journal))
    vol.write(12345, data)
    vol.flush()
    vol.abandon()
    report = simulate_power_cut(path, journal, mode="all")
    assert report.dropped <= 1  # at most the unsynced header note of the flushed counter
    with Volume.open(path, kms=kms) as vol:
        assert vol.read(12345, len(data)) == data


@pytest.mark.parametrize("cipher", ["xts", "gcm"])
def test_power_cut_at_every_point_of_a_resize(cipher, make_volume, kms, tmp_path):
    """Growing is atomic: at every trace point, with random subsets of unsynced writes lost, the
    volume opens with the old or the new size and its data intact."""
    from tests.volume.crashsim import TracingBacking

    path = make_volume(cipher, size=80 * 4096)
    key = bytes(raw_key(kms, path))
    data = os.urandom(80 * 4096)
    with Volume.open(path, kms=kms) as vol:
        vol.write(0, data)
    with open(path, "rb") as f:
        base = f.read()
    trace: list = []
    vol = Volume._open_with_key(path, bytearray(key), backing=TracingBacking(path, trace))
    start = len(trace)
    vol.resize(300 * 4096)
    vol.abandon()
    with open(path, "rb") as f:
        grown_len = len(f.read())
    rng = random.Random(cipher)
    work = _workdir(tmp_path)
    crashed = os.path.join(work, "crashed")
    for k in range(start, len(trace) + 1):
        for _ in range(4):
            syncs = [i for i in range(k) if trace[i][0] == "s"]
            f_idx = syncs[-1] if syncs else -1
            img = bytearray(base) + bytearray(max(0, grown_len - len(base)))
            for i in range(k):
                if trace[i][0] == "w" and (i < f_idx or rng.random() < 0.5):
                    _, off, d = trace[i]
                    img[off:off + len(d)] = d
            with open(crashed, "wb") as fh:
                fh.write(img)
            with Volume._open_with_key(crashed, bytearray(key)) as v2:
                assert v2.size in (80 * 4096, 300 * 4096)
                assert v2.read(0, 80 * 4096) == data
                if v2.size == 300 * 4096:
                    assert v2.read(80 * 4096, 220 * 4096) == bytes(220 * 4096)
    if work.startswith("/dev/shm"):
        import shutil

        shutil.rmtree(work, ignore_errors=True)
