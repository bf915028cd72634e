"""Snapshots of unmounted volumes restore exactly; incremental snapshots store only changed
chunks; deleting one snapshot keeps the others restorable."""

from __future__ import annotations

import pytest

from tests.snapshot.conftest import MiB, chunk_bytes, contents, pattern, write
from volumed.errors import UsageError
from volumed.snapshot import create_snapshot, delete_snapshot, restore_snapshot
from volumed.snapshot.ids import SNAP_ID_RE
from volumed.volume import Volume
from volumed.volume.keywrap import unwrap

CHUNK = 64 * 1024


@pytest.mark.parametrize("cipher", ["xts", "gcm"])
def test_snapshot_restores_exactly(cipher, kms, store, make_volume, tmp_path):
    vol = make_volume(cipher)
    write(kms, vol, [(0, pattern(1, 300_000)), (5 * MiB + 123, pattern(2, 10_000)),
                     (8 * MiB - 4096, pattern(3, 4096))])
    before = contents(kms, vol)
    m = create_snapshot(vol, kms=kms, store=store)
    assert SNAP_ID_RE.match(m["snapshot_id"])
    write(kms, vol, [(0, b"later" * 1000)])  # after the snapshot: not in it
    out = str(tmp_path / "restored")
    h = restore_snapshot(store, m["snapshot_id"], out, kms=kms)
    assert contents(kms, out) == before
    src = Volume.read_header(vol)
    assert h.uuid != src.uuid and h.ebs_id != src.ebs_id and h.key_arn == src.key_arn
    k_src = unwrap(kms, src.key_arn, src.wrapped_key, src.context)
    k_new = unwrap(kms, h.key_arn, h.wrapped_key, h.context)
    # XTS under the same key reuses the data key (ReEncrypt); GCM never shares it (nonces).
    assert (k_src == k_new) == (cipher == "xts")


def test_snapshot_key_is_bound_to_the_snapshot_id(kms, store, make_volume):
    import base64

    vol = make_volume("xts")
    m = create_snapshot(vol, kms=kms, store=store)
    assert m["context"] == {"aws:rds:db-id": Volume.read_header(vol).db_id, "aws:ebs:id": m["snapshot_id"],
                            "volumed:manifest-mac": "v1"}  # the manifest-MAC marker (docs/SNAPSHOTS.md)
    blob = base64.b64decode(m["wrapped_key"])
    with pytest.raises(Exception):
        kms.decrypt(CiphertextBlob=blob, EncryptionContext=Volume.read_header(vol).context)


@pytest.mark.parametrize("cipher", ["xts", "gcm"])
def test_incremental_stores_only_changed_chunks(cipher, kms, store, make_volume, tmp_path):
    vol = make_volume(cipher)
    write(kms, vol, [(0, pattern(1, 4 * MiB))])
    s1 = create_snapshot(vol, kms=kms, store=store)
    state1 = contents(kms, vol)
    size1 = chunk_bytes(store)
    assert size1 >= 4 * MiB  # every written sector is stored once
    # Three sectors in three different chunks change.
    write(kms, vol, [(4096 * 3, b"x" * 4096), (1 * MiB + 10, b"y" * 100), (6 * MiB, b"z" * 4096)])
    s2 = create_snapshot(vol, kms=kms, store=store)
    state2 = contents(kms, vol)
    grown = chunk_bytes(store) - size1
    assert 0 < grown <= 3 * (CHUNK + CHUNK // 8)  # three chunks (records + headers), not 4 MiB
    assert s2["stored_bytes"] == grown and s2["parent"] == s1["snapshot_id"]
    s3 = create_snapshot(vol, kms=kms, store=store)  # nothing changed: nothing stored
    assert s3["stored_bytes"] == 0 and chunk_bytes(store) - size1 == grown
    for snap, state in ((s1, state1), (s2, state2), (s3, state2)):
        out = str(tmp_path / f"r-{snap['snapshot_id']}")
        restore_snapshot(store, snap["snapshot_id"], out, kms=kms)
        assert contents(kms, out) == state


def test_deleting_one_snapshot_keeps_the_others(kms, store, make_volume, tmp_path):
    vol = make_volume("xts")
    write(kms, vol, [(0, pattern(1, 2 * MiB))])
    s1 = create_snapshot(vol, kms=kms, store=store)
    write(kms, vol, [(0, pattern(2, 100_000))])
    s2 = create_snapshot(vol, kms=kms, store=store)
    state2 = contents(kms, vol)
    write(kms, vol, [(MiB, pattern(3, 100_000))])
    s3 = create_snapshot(vol, kms=kms, store=store)
    state3 = contents(kms, vol)
    freed = delete_snapshot(store, s1["snapshot_id"])
    assert freed > 0  # the chunks only s1 had (overwritten in s2) are gone
    for snap, state in ((s2, state2), (s3, state3)):
        out = str(tmp_path / f"r-{snap['snapshot_id']}")
        restore_snapshot(store, snap["snapshot_id"], out, kms=kms)
        assert contents(kms, out) == state
    delete_snapshot(store, s2["snapshot_id"])
    delete_snapshot(store, s3["snapshot_id"])
    assert store.list("chunks/") == [] and store.list("snapshots/") == []
    with pytest.raises(UsageError, match="does not exist"):
        restore_snapshot(store, s3["snapshot_id"], str(tmp_path / "gone"), kms=kms)


def test_restore_refuses_an_existing_path_and_changes_nothing(kms, store, make_volume):
    vol = make_volume("xts")
    m = create_snapshot(vol, kms=kms, store=store)
    before = open(vol, "rb").read()
    with pytest.raises(UsageError, match="already exists"):
        restore_snapshot(store, m["snapshot_id"], vol, kms=kms)
    assert open(vol, "rb").read() == before


def test_snapshot_of_an_open_volume_is_refused(kms, store, make_volume):
    from volumed.errors import StateError
    from volumed.mount.snapshots import snapshot_through_daemon

    vol = make_volume("gcm")
    with Volume.open(vol, kms=kms):  # open in this process, not a mount: nobody to ask
        # as `volumed snapshot create` calls it: an open volume goes to its mount's daemon
        with pytest.raises(StateError, match="open in another volumed process"):
            create_snapshot(vol, kms=kms, store=store, mounted=snapshot_through_daemon)
        with pytest.raises(StateError, match="already open"):  # no handler: the lock's refusal
            create_snapshot(vol, kms=kms, store=store)
    assert store.list("snapshots/") == []


def test_latest_snapshot_hint(kms, store, make_volume):
    from volumed.snapshot import copy_snapshot, latest_snapshot_hint

    vol = make_volume("xts")
    h = Volume.read_header(vol)
    assert latest_snapshot_hint(h, store=store) is None
    create_snapshot(vol, kms=kms, store=store)
    s2 = create_snapshot(vol, kms=kms, store=store)
    copy_snapshot(store, s2["snapshot_id"], kms=kms)  # a copy is not a snapshot of the volume
    other = create_snapshot(make_volume("xts"), kms=kms, store=store)
    hint = latest_snapshot_hint(h, store=store)
    assert f"volumed restore {s2['snapshot_id']} " in hint and other["snapshot_id"] not in hint


@pytest.mark.parametrize("cipher", ["xts", "gcm"])
def test_odd_sizes_and_zeroed_sectors(cipher, kms, store, make_volume, tmp_path):
    vol = make_volume(cipher, size=37 * 4096)  # the last chunk covers 5 sectors
    write(kms, vol, [(0, pattern(1, 37 * 4096))])
    write(kms, vol, [(4096 * 3, bytes(4096 * 2)), (36 * 4096 + 7, b"end")])  # zeroed sectors: absent
    m = create_snapshot(vol, kms=kms, store=store)
    assert len(m["chunks"]) == 3
    for key in (None, "new"):
        out = str(tmp_path / f"r-{key}")
        kid = kms.create_key()["KeyMetadata"]["Arn"] if key else None
        restore_snapshot(store, m["snapshot_id"], out, kms=kms, key_id=kid)
        assert contents(kms, out) == contents(kms, vol)
