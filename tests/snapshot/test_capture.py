"""Copy-on-write capture sessions (Volume.begin_capture) on an open, unmounted volume, with real
threads: the records read through a session are exactly those at the barrier whatever the writes
do meanwhile, and a live snapshot that fails (store error, key wiped) publishes nothing, ends its
session and leaves the volume serving."""

from __future__ import annotations

import random
import threading

import pytest

from tests.snapshot.conftest import MiB, contents, pattern
from volumed.errors import KeyAccessError, StateError, VolumedError
from volumed.snapshot import catalog, restore_snapshot
from volumed.snapshot.engine import CHUNK_SECTORS, snapshot_key
from volumed.snapshot.mounted import snapshot_live
from volumed.volume import Volume

pytestmark = pytest.mark.timeout(60)
SS = 4096


def _ops(seed: int, lo: int, hi: int, n: int) -> list[tuple[str, int, bytes | int]]:
    """n random writes (whole, partial, zeros) and discards inside sectors [lo, hi), some
    spanning chunk boundaries."""
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        kind = rnd.choice(["write", "partial", "zeros", "discard"])
        first = rnd.randrange(lo, hi - 1)
        count = rnd.randint(1, min(20, hi - first))
        if kind == "write":
            out.append(("write", first * SS, rnd.randbytes(count * SS)))
        elif kind == "partial":
            off = first * SS + rnd.randrange(1, SS)
            out.append(("write", off, rnd.randbytes(min(rnd.randint(1, count * SS), hi * SS - off))))
        elif kind == "zeros":
            out.append(("write", first * SS, bytes(count * SS)))
        else:
            off = first * SS + rnd.randrange(0, SS)
            out.append(("discard", off, min(count * SS, hi * SS - off)))
    return out


def _apply(vol, model: bytearray, ops) -> None:
    for kind, off, arg in ops:
        if kind == "write":
            vol.write(off, arg)
            model[off:off + len(arg)] = arg
        else:
            vol.discard(off, arg)
            model[off:off + arg] = bytes(arg)


def _copy(session, start: int, stop: int) -> list:
    out = []
    for first in range(start, stop, CHUNK_SECTORS):
        out += session.read_records(first, min(CHUNK_SECTORS, stop - first))
    return out


@pytest.mark.parametrize("cipher", ["xts", "gcm"])
def test_session_reads_the_state_at_the_barrier_while_writes_go_on(cipher, kms, make_volume):
    vol = Volume.open(make_volume(cipher, size=2 * MiB), kms=kms)   # 512 sectors, 32 chunks
    try:
        vol.write(0, pattern(1, 2 * MiB - 64 * 1024))                 # the last chunk is a hole
        vol.discard(200 * SS, 8 * SS)
        sectors = vol.header.sectors
        expected = vol.read_records(0, sectors)
        model = bytearray(vol.read(0, vol.size))
        # Two writers on disjoint halves (so the live result does not depend on their order):
        # a first batch once the copier has passed 10 chunks (it then straddles the copied
        # boundary), a second one while the copier runs on.
        go, first_done = threading.Event(), [threading.Event(), threading.Event()]
        errors = []

        def writer(t: int) -> None:
            lo, hi = (0, 256) if t == 0 else (256, 512)
            try:
                go.wait(30)
                _apply(vol, model, _ops(10 + t, lo, hi, 40))
                first_done[t].set()
                _apply(vol, model, _ops(20 + t, lo, hi, 40))
            except BaseException as exc:
                errors.append(exc)
                first_done[t].set()

        threads = [threading.Thread(target=writer, args=(t,)) for t in (0, 1)]
        for t in threads:
            t.start()
        with vol.begin_capture() as session:
            got = _copy(session, 0, 10 * CHUNK_SECTORS)
            go.set()
            for e in first_done:
                assert e.wait(30)
            got += _copy(session, 10 * CHUNK_SECTORS, sectors)
            captured = session.captured
        for t in threads:
            t.join(30)
        assert not errors
        assert got == expected                       # exactly the records at the barrier
        assert captured > 0                          # ... some of them preserved before a write
        assert vol.read(0, vol.size) == model        # and every write landed on the volume
        vol.begin_capture().close()                  # the session ended
    finally:
        vol.close()


def test_one_session_at_a_time_and_close_is_idempotent(kms, make_volume):
    with Volume.open(make_volume("xts", size=1 * MiB), kms=kms) as vol:
        s = vol.begin_capture()
        with pytest.raises(StateError, match="already being taken"):
            vol.begin_capture()
        s.close()
        s.close()
        with vol.begin_capture() as s2:
            assert len(s2.read_records(0, 16)) == 16
        vol.write(0, b"after")                       # no session: writes are plain again
        assert vol.read(0, 5) == b"after"


def test_a_record_that_cannot_be_preserved_fails_the_session_not_the_write(kms, make_volume,
                                                                          monkeypatch):
    # The reference core, whose record reader can be made to fail (the native core's failure path
    # is the same rule in native/vc_capture.c, cap_before_write).
    with Volume.open(make_volume("xts", size=1 * MiB), kms=kms, core="reference") as vol:
        vol.write(0, pattern(3, 64 * 1024))
        with vol.begin_capture() as session:
            session.read_records(0, CHUNK_SECTORS)

            def broken(*a):
                raise OSError(5, "Input/output error")

            monkeypatch.setattr(vol._core, "_records", broken)
            vol.write(100 * SS, b"w" * SS)           # the write itself succeeds
            monkeypatch.undo()
            assert vol.read(100 * SS, SS) == b"w" * SS
            with pytest.raises(VolumedError, match="could not be preserved before a write"):
                session.read_records(CHUNK_SECTORS, CHUNK_SECTORS)


class _FaultyStore:
    """A store whose ``nth`` chunk put first runs ``action`` (fault injection under the copier)."""

    def __init__(self, inner, nth: int, action):
        self.inner, self.nth, self.action, self.puts = inner, nth, action, 0

    def put(self, name: str, data: bytes) -> None:
        if name.startswith("chunks/"):
            self.puts += 1
            if self.puts == self.nth:
                self.action()
        self.inner.put(name, data)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _nothing_published(store) -> None:
    assert catalog.all_manifests(store) == []
    assert store.list("chunks/") == []               # the failed attempt's chunks were removed


@pytest.mark.parametrize("cipher", ["xts", "gcm"])
def test_store_failure_mid_copy_publishes_nothing_and_the_volume_serves_on(cipher, kms, store,
                                                                          make_volume, tmp_path):
    vol = Volume.open(make_volume(cipher, size=2 * MiB), kms=kms)
    try:
        vol.write(0, pattern(4, 2 * MiB))

        def fail():
            raise VolumedError("cannot write chunks/ab/cd to the snapshot store: No space left on device")

        reply = snapshot_live(vol, _FaultyStore(store, 3, fail), snapshot_key(kms, vol.header))
        assert reply["ok"] is False and "No space left" in reply["error"]
        assert "\n" not in reply["error"]
        _nothing_published(store)
        vol.write(4096, b"still serving")
        state = vol.read(0, vol.size)
        key = snapshot_key(kms, vol.header)
        assert snapshot_live(vol, store, key) == {"ok": True, "snapshot_id": key["snapshot_id"]}
    finally:
        vol.close()
    out = str(tmp_path / "restored")
    restore_snapshot(store, key["snapshot_id"], out, kms=kms)
    assert contents(kms, out) == state


@pytest.mark.parametrize("cipher", ["xts", "gcm"])
def test_key_wiped_mid_copy_fails_the_snapshot_cleanly(cipher, kms, store, make_volume):
    vol = Volume.open(make_volume(cipher, size=2 * MiB), kms=kms)
    try:
        vol.write(0, pattern(5, 2 * MiB))
        reply = snapshot_live(vol, _FaultyStore(store, 3, vol.wipe_key), snapshot_key(kms, vol.header))
        assert reply == {"ok": False, "error": "the volume's key was wiped (access revoked) during "
                                               "the snapshot: nothing was saved; restore access, "
                                               "then retry"}
        _nothing_published(store)
        with pytest.raises(KeyAccessError):
            vol.write(0, b"x")
    finally:
        vol.close()


def test_the_hold_test_hook_needs_a_daemon_that_allows_faults(kms, store, make_volume):
    from volumed.snapshot.mounted import daemon_snapshot

    with Volume.open(make_volume("xts", size=1 * MiB), kms=kms) as vol:
        msg = {"op": "snapshot", "store": store.spec, "key": snapshot_key(kms, vol.header),
               "hold": {"after_chunks": 1, "dir": str(store.root)}}
        assert daemon_snapshot(vol, msg) == {"ok": False, "error": "hold needs a daemon started "
                                                                   "with --allow-faults"}
        assert catalog.all_manifests(store) == []
