"""Copies under the same and another key; the sharing rules (AWS managed key refused, shared
snapshots must be copied before restore)."""

from __future__ import annotations

import base64

import pytest

from tests.snapshot.conftest import MiB, chunk_bytes, contents, pattern, write
from volumed.errors import KeyAccessError, StateError
from volumed.snapshot import copy_snapshot, create_snapshot, restore_snapshot, share_snapshot
from volumed.snapshot import catalog

OTHER = "111122223333"


@pytest.mark.parametrize("cipher", ["xts", "gcm"])
def test_copy_under_another_key_decrypts_under_that_key_only(cipher, kms, store, make_volume, cmk, tmp_path):
    vol = make_volume(cipher, key_id="alias/aws/rds")
    write(kms, vol, [(0, pattern(7, MiB + 5)), (5 * MiB, b"tail" * 1000)])
    state = contents(kms, vol)
    src = create_snapshot(vol, kms=kms, store=store)
    before = chunk_bytes(store)
    copy = copy_snapshot(store, src["snapshot_id"], kms=kms, key_id=cmk)
    assert copy["key_arn"] == cmk and copy["source_snapshot"] == src["snapshot_id"]
    assert copy["stored_bytes"] >= MiB and chunk_bytes(store) - before == copy["stored_bytes"]
    assert not set(filter(None, copy["chunks"])) & set(filter(None, src["chunks"]))  # re-encrypted
    blob = base64.b64decode(copy["wrapped_key"])
    with pytest.raises(Exception):  # the copy's data key is not under the old key
        kms.decrypt(CiphertextBlob=blob, KeyId=src["key_arn"], EncryptionContext=copy["context"])
    # A copy under the new key needs only the new key: disable the old one, restore still works.
    old = kms.create_key()["KeyMetadata"]["Arn"]
    vol2 = make_volume(cipher, key_id=old)
    write(kms, vol2, [(0, pattern(8, 200_000))])
    state2 = contents(kms, vol2)
    s2 = create_snapshot(vol2, kms=kms, store=store)
    c2 = copy_snapshot(store, s2["snapshot_id"], kms=kms, key_id=cmk)
    kms.disable_key(KeyId=old)
    out = str(tmp_path / "from-copy")
    restore_snapshot(store, c2["snapshot_id"], out, kms=kms)
    assert contents(kms, out) == state2
    with pytest.raises(KeyAccessError) as err:
        restore_snapshot(store, s2["snapshot_id"], str(tmp_path / "from-original"), kms=kms)
    assert err.value.code == "DisabledException"
    out = str(tmp_path / "first")
    restore_snapshot(store, copy["snapshot_id"], out, kms=kms)
    assert contents(kms, out) == state


def test_copy_under_the_same_key_shares_chunks_and_data_key(kms, store, make_volume, tmp_path):
    vol = make_volume("xts")
    write(kms, vol, [(0, pattern(9, 500_000))])
    src = create_snapshot(vol, kms=kms, store=store)
    before = chunk_bytes(store)
    copy = copy_snapshot(store, src["snapshot_id"], kms=kms)
    assert copy["stored_bytes"] == 0 and chunk_bytes(store) == before
    assert copy["chunks"] == src["chunks"] and copy["key_arn"] == src["key_arn"]
    assert copy["context"]["aws:ebs:id"] == copy["snapshot_id"]  # rewrapped (ReEncrypt) for the copy
    assert copy["wrapped_key"] != src["wrapped_key"]
    from volumed.snapshot.engine import delete_snapshot

    delete_snapshot(store, src["snapshot_id"])  # the copy keeps the shared chunks alive
    out = str(tmp_path / "r")
    restore_snapshot(store, copy["snapshot_id"], out, kms=kms)
    assert contents(kms, out) == contents(kms, vol)


def test_sharing_a_snapshot_under_the_aws_managed_key_is_refused(kms, store, make_volume):
    vol = make_volume("xts", key_id="alias/aws/rds")
    m = create_snapshot(vol, kms=kms, store=store)
    with pytest.raises(StateError, match="You can't share a snapshot that has been encrypted using "
                                         "the AWS managed key"):
        share_snapshot(store, m["snapshot_id"], OTHER, kms=kms)
    assert catalog.peek(store, m["snapshot_id"])["shared_with"] == []


def test_share_under_a_customer_key_records_and_requires_a_copy(kms, store, make_volume, cmk, tmp_path):
    vol = make_volume("xts", key_id=cmk)
    m = create_snapshot(vol, kms=kms, store=store)
    rec, hint = share_snapshot(store, m["snapshot_id"], OTHER, kms=kms)
    assert rec["shared_with"] == [OTHER]
    assert f"arn:aws:iam::{OTHER}:root" in hint and "kms:Decrypt" in hint and "kms:CreateGrant" in hint
    assert catalog.peek(store, m["snapshot_id"])["shared_with"] == [OTHER]
    other = kms.with_identity(principal=f"arn:aws:iam::{OTHER}:user/alice")
    with pytest.raises(StateError, match="copy it first"):
        restore_snapshot(store, m["snapshot_id"], str(tmp_path / "x"), kms=other)
    stranger = kms.with_identity(principal="arn:aws:iam::444455556666:user/eve")
    with pytest.raises(KeyAccessError, match="not shared"):
        copy_snapshot(store, m["snapshot_id"], kms=stranger)
    assert not (tmp_path / "x").exists()
