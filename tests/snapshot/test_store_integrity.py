"""The S3 store against moto; damaged chunks and manifests are reported, never restored."""

from __future__ import annotations

import os

import pytest

from tests.snapshot.conftest import MiB, contents, pattern, write
from volumed.errors import IntegrityError, UsageError
from volumed.snapshot import create_snapshot, delete_snapshot, restore_snapshot
from volumed.snapshot.store import LocalStore, S3Store, open_store


@pytest.mark.parametrize("cipher", ["xts", "gcm"])
def test_s3_store_round_trip(cipher, s3, kms, make_volume, tmp_path):
    store = S3Store("fleet-snapshots", "prod/eu", client=s3)
    vol = make_volume(cipher)
    write(kms, vol, [(0, pattern(4, MiB)), (7 * MiB, b"end")])
    s1 = create_snapshot(vol, kms=kms, store=store)
    write(kms, vol, [(4096, b"changed")])
    s2 = create_snapshot(vol, kms=kms, store=store)
    assert 0 < s2["stored_bytes"] < 100_000
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="fleet-snapshots")["Contents"]]
    assert all(k.startswith("prod/eu/") for k in keys)
    assert f"prod/eu/snapshots/{s1['snapshot_id']}.json" in keys
    state2 = contents(kms, vol)
    delete_snapshot(store, s1["snapshot_id"])
    out = str(tmp_path / "r")
    restore_snapshot(store, s2["snapshot_id"], out, kms=kms)
    assert contents(kms, out) == state2


def test_open_store_specs(tmp_path, monkeypatch):
    st = open_store("s3://bucket/some/prefix")
    assert isinstance(st, S3Store) and st.bucket == "bucket" and st.prefix == "some/prefix/"
    assert isinstance(open_store(str(tmp_path / "d")), LocalStore)
    monkeypatch.setenv("VOLUMED_SNAPSHOT_STORE", str(tmp_path / "env"))
    assert open_store().root == str(tmp_path / "env")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        open_store(str(tmp_path / "file"))
    with pytest.raises(UsageError):
        open_store("s3:///nobucket")


@pytest.mark.parametrize("cipher", ["xts", "gcm"])
def test_damaged_chunk_is_reported_and_nothing_is_restored(cipher, kms, store, make_volume, tmp_path):
    vol = make_volume(cipher)
    write(kms, vol, [(0, pattern(5, 300_000))])
    m = create_snapshot(vol, kms=kms, store=store)
    name = store.list("chunks/")[1]
    path = os.path.join(store.root, *name.split("/"))
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 1
    open(path, "wb").write(data)
    out = str(tmp_path / "r")
    with pytest.raises(IntegrityError, match=f"chunk {name.split('/')[-1][:16]}.* of {m['snapshot_id']} is damaged"):
        restore_snapshot(store, m["snapshot_id"], out, kms=kms)
    assert not os.path.exists(out) and os.listdir(tmp_path / "store")  # nothing left behind


def test_damaged_manifest_is_reported(kms, store, make_volume, tmp_path):
    vol = make_volume("xts")
    m = create_snapshot(vol, kms=kms, store=store)
    path = os.path.join(store.root, "snapshots", f"{m['snapshot_id']}.json")
    text = open(path).read().replace('"stored_bytes": 0', '"stored_bytes": 1')
    text = text.replace(m["volume"]["ebs_id"], "vol-00000000000000000")
    open(path, "w").write(text)
    with pytest.raises(IntegrityError, match="manifest .* damaged"):
        restore_snapshot(store, m["snapshot_id"], str(tmp_path / "r"), kms=kms)
