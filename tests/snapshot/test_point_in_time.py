"""The daemon side of a mounted volume's snapshot, in process: under concurrent writers, the
snapshot holds every write acknowledged (flushed) before it was requested, and is a consistent
point in time: the writes land on sectors in a random order, so only a snapshot of one instant
(the barrier that starts its capture session; later writes preserve the old records first) holds
exactly a prefix of the acknowledged sequence."""

from __future__ import annotations

import threading
import time

import pytest

from tests.snapshot.conftest import MiB, contents
from volumed.snapshot import restore_snapshot
from volumed.snapshot.engine import snapshot_key
from volumed.snapshot.mounted import daemon_snapshot
from volumed.volume import Volume

pytestmark = pytest.mark.timeout(60)


def _record(i: int) -> bytes:
    return (f"record {i:06d} ".encode() * 300)[:4096]


@pytest.mark.parametrize("cipher", ["xts", "gcm"])
def test_snapshot_under_concurrent_writes_holds_every_acknowledged_write(cipher, kms, store, make_volume,
                                                                         tmp_path):
    path = make_volume(cipher, size=8 * MiB)
    vol = Volume.open(path, kms=kms)
    import random

    order = random.Random(5).sample(range(1024), 1024)  # write i goes to sector order[i]
    acked: list[int] = []
    stop = threading.Event()
    others = threading.Event()

    def sequential():
        for i in range(1024):
            if stop.is_set():
                return
            vol.write(order[i] * 4096, _record(i))
            vol.flush()                      # acknowledged: fsync returned
            acked.append(i)

    def noise():  # unrelated unacknowledged writes elsewhere, to keep the barrier busy
        j = 0
        while not stop.is_set():
            vol.write(4 * MiB + (j % 256) * 4096, b"n" * 4096)
            j += 1
        others.set()

    threads = [threading.Thread(target=sequential), threading.Thread(target=noise)]
    for t in threads:
        t.start()
    try:
        while len(acked) < 40:
            time.sleep(0.005)
        key = snapshot_key(kms, vol.header)
        before = len(acked)                  # acknowledged before the snapshot was requested
        reply = daemon_snapshot(vol, {"op": "snapshot", "store": store.spec, "key": key})
        assert reply == {"ok": True, "snapshot_id": key["snapshot_id"]}
        deadline = time.monotonic() + 10     # poll: one fsync may take long on a loaded machine
        while len(acked) <= before and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(acked) > before           # writes went on after the pause
    finally:
        stop.set()
        for t in threads:
            t.join(20)
        vol.close()
    out = str(tmp_path / "restored")
    restore_snapshot(store, key["snapshot_id"], out, kms=kms)
    data = contents(kms, out)
    sector = {i: data[order[i] * 4096:(order[i] + 1) * 4096] for i in range(1024)}
    for i in range(1024):
        assert sector[i] in (_record(i), bytes(4096)), f"write {i} torn"
    present = [i for i in range(1024) if sector[i] == _record(i)]
    assert present == list(range(len(present)))  # a prefix of the write sequence: a point in time
    assert len(present) >= before
