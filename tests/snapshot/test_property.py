"""Property: any interleaving of writes, snapshots and snapshot deletions leaves every remaining
snapshot restoring exactly the volume as it was when that snapshot was taken."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.snapshot.conftest import contents
from volumed.snapshot import catalog, create_snapshot, delete_snapshot, restore_snapshot
from volumed.volume import Volume

SIZE = 40 * 4096  # three chunks, the last one short

op = st.one_of(
    st.tuples(st.just("write"), st.integers(0, SIZE - 1), st.integers(1, 3 * 4096), st.integers(0, 255)),
    st.tuples(st.just("snap")),
    st.tuples(st.just("delete"), st.integers(0, 10)),
)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("cipher", ["xts", "gcm"])
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(op, min_size=1, max_size=8))
def test_every_remaining_snapshot_restores_its_point_in_time(cipher, ops, kms, tmp_path):
    from volumed.snapshot.store import LocalStore

    run = next(_runs)
    base = tmp_path / f"run{run}"
    base.mkdir()
    store = LocalStore(str(base / "store"))
    vol = str(base / "vol")
    Volume.create(vol, size=SIZE, kms=kms, cipher=cipher)
    model = bytearray(SIZE)
    snaps: list[tuple[str, bytes]] = []
    with_volume = Volume.open(vol, kms=kms)  # closed around each snapshot (unmounted path)
    try:
        for o in ops:
            if o[0] == "write":
                _, off, n, byte = o
                n = min(n, SIZE - off)
                with_volume.write(off, bytes([byte]) * n)
                model[off:off + n] = bytes([byte]) * n
            elif o[0] == "snap":
                with_volume.close()
                snaps.append((create_snapshot(vol, kms=kms, store=store)["snapshot_id"], bytes(model)))
                with_volume = Volume.open(vol, kms=kms)
            elif snaps:
                sid, _ = snaps.pop(o[1] % len(snaps))
                delete_snapshot(store, sid)
    finally:
        with_volume.close()
    for i, (sid, want) in enumerate(snaps):
        out = str(base / f"r{i}")
        restore_snapshot(store, sid, out, kms=kms)
        assert contents(kms, out) == want
    referenced = {c for sid, _ in snaps for c in catalog.peek(store, sid)["chunks"] if c}
    assert {n.rsplit("/", 1)[1] for n in store.list("chunks/")} == referenced  # nothing leaks


_runs = itertools.count()
