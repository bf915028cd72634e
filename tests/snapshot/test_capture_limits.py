"""The capture session's limits and edges: a byte cap on the records it preserves (it fails the
snapshot, never a write), a failed session preserves nothing more, the snapshot's time is the
barrier's, the volume says it may block while a session is open, GCM slot reuse by fsyncs during
the copy, a wipe_key mid-copy ends the session, and a resize during it leaves the point in time
alone."""

from __future__ import annotations

import os
import threading

import pytest

from tests.snapshot.conftest import MiB, contents, pattern
from tests.snapshot.test_capture import _nothing_published
from volumed.clock import FakeClock
from volumed.errors import UsageError, VolumedError
from volumed.snapshot import catalog, restore_snapshot
from volumed.snapshot.engine import CHUNK_SECTORS, describe, max_preserved, snapshot_key
from volumed.snapshot.mounted import daemon_snapshot, snapshot_live
from volumed.volume import Volume

pytestmark = pytest.mark.timeout(60)
SS = 4096


# ---- 1. memory cap ---------------------------------------------------------------------------

def test_the_cap_fails_the_session_not_the_write_and_frees_what_it_held(kms, make_volume):
    with Volume.open(make_volume("xts", size=1 * MiB), kms=kms) as vol:
        vol.write(0, pattern(1, 1 * MiB))
        with vol.begin_capture(max_kept_bytes=3 * SS) as session:
            vol.write(100 * SS, b"a" * 3 * SS)              # 3 records: exactly the cap
            assert session.kept_bytes == 3 * SS
            vol.write(200 * SS, b"b" * SS)                  # one more: over it
            assert vol.read(200 * SS, SS) == b"b" * SS     # the write happened
            assert session.kept_bytes == 0                 # the session let go of its records
            with pytest.raises(VolumedError, match=f"more than {3 * SS} bytes of preserved records"):
                session.read_records(0, CHUNK_SECTORS)


@pytest.mark.parametrize("cipher", ["xts", "gcm"])
def test_a_snapshot_over_the_cap_fails_in_one_line_and_publishes_nothing(cipher, kms, store,
                                                                        make_volume):
    vol = Volume.open(make_volume(cipher, size=2 * MiB), kms=kms)
    try:
        vol.write(0, pattern(2, 2 * MiB))

        def bulk_load(done: int, total: int) -> None:    # after the first chunk: 64 sectors ahead
            if done == 2:
                vol.write(256 * SS, pattern(3, 64 * SS))

        reply = snapshot_live(vol, store, snapshot_key(kms, vol.header), progress=bulk_load,
                              max_kept_bytes=32 * SS)
        assert reply["ok"] is False and "\n" not in reply["error"]
        assert reply["error"].startswith("nothing was saved: writes during the copy needed more "
                                         f"than {32 * SS} bytes")
        _nothing_published(store)
        assert not vol.may_block                             # the session ended
        assert vol.read(256 * SS, 64 * SS) == pattern(3, 64 * SS)
    finally:
        vol.close()


def test_the_daemon_applies_the_cap_the_cli_sends(kms, store, make_volume, tmp_path):
    hold = tmp_path / "hold"
    hold.mkdir()
    vol = Volume.open(make_volume("xts", size=1 * MiB), kms=kms)
    try:
        vol.write(0, pattern(4, 1 * MiB))
        msg = {"op": "snapshot", "store": store.spec, "key": snapshot_key(kms, vol.header),
               "max_preserved": 4 * SS, "hold": {"after_chunks": 1, "dir": str(hold)}}
        replies = []
        t = threading.Thread(target=lambda: replies.append(daemon_snapshot(vol, msg, True)))
        t.start()
        try:
            _wait_for(hold / "held")
            vol.write(64 * SS, b"c" * 5 * SS)               # 5 records > 4
        finally:
            (hold / "release").touch()
            t.join(30)
        assert replies[0]["ok"] is False and f"more than {4 * SS} bytes" in replies[0]["error"]
        _nothing_published(store)
    finally:
        vol.close()


def _wait_for(path, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.005)


def test_the_cap_setting(monkeypatch):
    monkeypatch.delenv("VOLUMED_SNAPSHOT_MAX_PRESERVED", raising=False)
    assert max_preserved() == 256 * MiB
    monkeypatch.setenv("VOLUMED_SNAPSHOT_MAX_PRESERVED", "64M")
    assert max_preserved() == 64 * MiB
    assert max_preserved(12345) == 12345
    for bad in ("lots", "0"):
        monkeypatch.setenv("VOLUMED_SNAPSHOT_MAX_PRESERVED", bad)
        with pytest.raises(UsageError, match="VOLUMED_SNAPSHOT_MAX_PRESERVED|invalid size"):
            max_preserved()


# ---- 2. a failed session preserves nothing more ------------------------------------------------

def test_a_failed_session_stops_preserving(kms, make_volume, monkeypatch):
    # The reference core, whose record reader can be made to fail (see test_capture.py).
    with Volume.open(make_volume("xts", size=1 * MiB), kms=kms, core="reference") as vol:
        vol.write(0, pattern(5, 1 * MiB))
        with vol.begin_capture() as session:
            vol.write(50 * SS, b"x" * SS)                  # preserved
            assert session.captured == 1

            def broken(*a):
                raise OSError(5, "Input/output error")

            monkeypatch.setattr(vol._core, "_records", broken)
            vol.write(60 * SS, b"y" * SS)                  # fails the session
            monkeypatch.undo()
            assert session.kept_bytes == 0
            calls = []
            real = vol._core._records
            monkeypatch.setattr(vol._core, "_records", lambda *a: calls.append(a) or real(*a))
            vol.write(70 * SS, b"z" * 8 * SS)
            vol.discard(100 * SS, 16 * SS)
            assert calls == [] and session.captured == 1 and session.kept_bytes == 0
            assert vol.read(70 * SS, 8 * SS) == b"z" * 8 * SS


# ---- 3. the snapshot's time is the barrier's ---------------------------------------------------

def test_a_live_snapshot_is_dated_at_its_barrier_not_when_its_manifest_is_written(kms, store,
                                                                                  make_volume):
    clock = FakeClock(1_800_000_000.0)
    vol = Volume.open(make_volume("xts", size=1 * MiB), kms=kms)
    try:
        key = snapshot_key(kms, vol.header)
        reply = snapshot_live(vol, store, key, clock=clock,
                              progress=lambda done, total: clock.advance(3600))   # a long copy
    finally:
        vol.close()
    assert reply["ok"] is True
    m = catalog.peek(store, key["snapshot_id"])
    assert m["created"] == "2027-01-15T08:00:00.000000Z"
    assert describe(m)["StartTime"] == m["created"]


def test_an_unmounted_snapshot_is_dated_when_its_copy_starts(kms, store, make_volume):
    from volumed.snapshot.engine import write_snapshot

    clock = FakeClock(1_800_000_000.0)
    with Volume.open(make_volume("xts", size=1 * MiB), kms=kms) as vol:
        m = write_snapshot(vol, store, snapshot_key(kms, vol.header), clock=clock,
                           progress=lambda done, total: clock.advance(60))
    assert m["created"] == "2027-01-15T08:00:00.000000Z"


# ---- 4. the volume may block while a session is open -------------------------------------------

def test_may_block_while_a_session_is_open_also_through_the_fault_layer(kms, make_volume):
    from volumed.mount.faults import FaultVolume

    with Volume.open(make_volume("xts", size=1 * MiB), kms=kms) as vol:
        faulty = FaultVolume(vol)
        assert vol.may_block is False and faulty.may_block is False
        session = vol.begin_capture()
        assert vol.may_block is True and faulty.may_block is True
        session.close()
        assert vol.may_block is False and faulty.may_block is False


# ---- 6. GCM slot reuse, wipe_key, resize -------------------------------------------------------

def test_gcm_fsyncs_during_the_copy_reuse_slots_yet_the_snapshot_is_exact(kms, store, make_volume,
                                                                         tmp_path):
    vol = Volume.open(make_volume("gcm", size=1 * MiB), kms=kms)

    def churn(base: int) -> None:
        # Each sector rewritten and fsynced four times: both of its slots are reused, the one
        # that held the barrier's record included.
        for rnd in range(4):
            vol.write(20 * SS, pattern(base + rnd, 3 * SS))          # ahead of the copier
            vol.write(2 * SS, pattern(base + 50 + rnd, SS))          # already copied
            vol.flush()

    try:
        vol.write(0, pattern(6, 1 * MiB))
        vol.flush()
        expected = vol.read_records(0, vol.header.sectors)
        with vol.begin_capture() as session:
            got = session.read_records(0, CHUNK_SECTORS)
            churn(100)
            for first in range(CHUNK_SECTORS, session.sectors, CHUNK_SECTORS):
                got += session.read_records(first, CHUNK_SECTORS)
        assert got == expected                                       # the records at the barrier
        state = bytes(vol.read(0, vol.size))
        key = snapshot_key(kms, vol.header)
        reply = snapshot_live(vol, store, key, progress=lambda done, total: done == 1 and churn(300))
        assert reply["ok"] is True
        assert vol.read(20 * SS, 3 * SS) == pattern(303, 3 * SS)     # the writes landed
    finally:
        vol.close()
    out = str(tmp_path / "restored")
    restore_snapshot(store, key["snapshot_id"], out, kms=kms)
    assert contents(kms, out) == state                               # and are not in the snapshot


@pytest.mark.parametrize("cipher", ["xts", "gcm"])
def test_wipe_key_mid_copy_ends_the_session(cipher, kms, store, make_volume):
    vol = Volume.open(make_volume(cipher, size=1 * MiB), kms=kms)
    try:
        vol.write(0, pattern(7, 1 * MiB))

        def revoke(done: int, total: int) -> None:
            if done == 2:
                assert vol.may_block          # the session is open mid-copy
                vol.wipe_key()

        reply = snapshot_live(vol, store, snapshot_key(kms, vol.header), progress=revoke)
        assert reply["ok"] is False and "wiped" in reply["error"]
        assert vol.may_block is False         # the write hook is gone
        _nothing_published(store)
    finally:
        vol.close()


@pytest.mark.parametrize("cipher", ["xts", "gcm"])
def test_a_resize_during_the_copy_leaves_the_point_in_time_alone(cipher, kms, store, make_volume,
                                                                 tmp_path):
    vol = Volume.open(make_volume(cipher, size=1 * MiB), kms=kms)
    try:
        vol.write(0, pattern(8, 1 * MiB))
        state = bytes(vol.read(0, vol.size))

        def grow(done: int, total: int) -> None:
            if done == 3:
                vol.resize(2 * MiB)
                vol.write(0, b"after" * 1000)               # copied already: not preserved
                vol.write(40 * SS, b"later" * 2000)         # not copied yet: preserved first
                vol.write(1 * MiB, pattern(9, 64 * SS))     # beyond the snapshot's size

        key = snapshot_key(kms, vol.header)
        assert snapshot_live(vol, store, key, progress=grow)["ok"] is True
        assert vol.size == 2 * MiB
    finally:
        vol.close()
    m = catalog.peek(store, key["snapshot_id"])
    assert m["volume"]["size"] == 1 * MiB and len(m["chunks"]) == 16
    out = str(tmp_path / "restored")
    restore_snapshot(store, key["snapshot_id"], out, kms=kms)
    assert contents(kms, out) == state
