"""Writers of one S3 store (moto): the conditional-put lock serialises a snapshot delete with a
create that reuses the deleted snapshot's chunks; a chunk swept anyway (by a writer that ignores
the lock) fails the new snapshot before its manifest is published; stale locks expire."""

from __future__ import annotations

import threading
import time

import pytest

from tests.snapshot.conftest import MiB, contents, pattern, write
from volumed.clock import FakeClock
from volumed.errors import StateError
from volumed.snapshot import catalog, create_snapshot, delete_snapshot, restore_snapshot
from volumed.snapshot.objects import chunk_name
from volumed.snapshot.store import S3Store

pytestmark = pytest.mark.timeout(60)
BUCKET = "fleet-snapshots"


def test_delete_of_the_parent_waits_for_a_create_that_reuses_its_chunks(s3, kms, make_volume,
                                                                        tmp_path):
    vol = make_volume("xts", size=2 * MiB)
    write(kms, vol, [(0, pattern(1, 2 * MiB))])
    creator = S3Store(BUCKET, "prod", client=s3)
    parent = create_snapshot(vol, kms=kms, store=creator)
    write(kms, vol, [(0, b"changed" * 100)])
    state = contents(kms, vol)

    held, release, deleter_waits = threading.Event(), threading.Event(), threading.Event()

    def hold(done: int, total: int) -> None:      # the create, mid-copy, holding the store lock
        if done == 2:
            held.set()
            assert release.wait(30)

    def waiting(seconds: float) -> None:          # the deleter found the lock taken
        deleter_waits.set()
        time.sleep(0.01)

    deleter = S3Store(BUCKET, "prod", client=s3, sleep=waiting)
    results, errors = {}, []

    def run(name, fn):
        try:
            results[name] = fn()
        except BaseException as exc:
            errors.append(exc)

    c = threading.Thread(target=run, args=("create", lambda: create_snapshot(
        vol, kms=kms, store=creator, progress=hold)))
    c.start()
    try:
        assert held.wait(30)
        d = threading.Thread(target=run, args=("delete", lambda: delete_snapshot(
            deleter, parent["snapshot_id"])))
        d.start()
        assert deleter_waits.wait(30)             # the delete cannot sweep while create runs
        assert "delete" not in results
    finally:
        release.set()
        c.join(30)
    d.join(30)
    assert not errors and results["delete"] > 0
    child = results["create"]
    assert child["parent"] == parent["snapshot_id"]
    assert [m["snapshot_id"] for m in catalog.all_manifests(creator)] == [child["snapshot_id"]]
    out = str(tmp_path / "restored")
    restore_snapshot(creator, child["snapshot_id"], out, kms=kms)
    assert contents(kms, out) == state
    assert "prod/.lock" not in [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]


def test_a_reused_chunk_swept_during_the_copy_fails_the_snapshot_before_it_is_published(
        s3, kms, make_volume):
    vol = make_volume("xts", size=2 * MiB)
    write(kms, vol, [(0, pattern(2, 2 * MiB))])
    store = S3Store(BUCKET, "prod", client=s3)
    parent = create_snapshot(vol, kms=kms, store=store)
    write(kms, vol, [(0, b"changed" * 100)])
    reused = parent["chunks"][20]

    def old_writer_sweeps(done: int, total: int) -> None:   # a writer that ignores the lock
        if done == total:
            s3.delete_object(Bucket=BUCKET, Key="prod/" + chunk_name(reused))

    with pytest.raises(StateError, match=f"chunk {reused[:12]}... it reuses from an earlier "
                                         "snapshot was removed"):
        create_snapshot(vol, kms=kms, store=store, progress=old_writer_sweeps)
    assert [m["snapshot_id"] for m in catalog.all_manifests(store)] == [parent["snapshot_id"]]
    names = set(store.list("chunks/"))
    assert names == {chunk_name(c) for c in parent["chunks"] if c and c != reused}  # own swept


def test_the_lock_waits_then_refuses_and_an_expired_lease_is_broken(s3):
    clock = FakeClock(1_800_000_000.0)
    a = S3Store(BUCKET, "p", client=s3, clock=clock, sleep=clock.advance, lease=3600, lock_wait=60)
    b = S3Store(BUCKET, "p", client=s3, clock=clock, sleep=clock.advance, lease=3600, lock_wait=60)
    with a.lock():
        start = clock.time()
        with pytest.raises(StateError, match=r"s3://fleet-snapshots/p/ is locked by \S+:\d+ "):
            with b.lock():
                pass
        assert clock.time() - start >= 60                  # it waited lock_wait first
        clock.advance(3600)                                # a's lease is over (a died, say)
        with b.lock():
            assert s3.get_object(Bucket=BUCKET, Key="p/.lock")["Body"].read()
    # a's release finds b's lock gone and does not delete anything else; the lock is free
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="p/")
    with a.lock():
        pass
    assert S3Store(BUCKET, "p", client=s3).list() == []    # the lock object is not a store object
