"""Restore paths the other tests leave out: given ids (CLI), progress on stderr, restore under
another key (the old key disabled after), a shared snapshot copied by the other account and that
copy restored, and a store that holds no plaintext."""

from __future__ import annotations

import json

import pytest

from tests.snapshot.conftest import MiB, contents, pattern, write
from volumed.snapshot import copy_snapshot, create_snapshot, restore_snapshot, share_snapshot
from volumed.volume import Volume
from volumed.volume.keywrap import unwrap

pytestmark = pytest.mark.timeout(60)
OTHER = "111122223333"


def test_restore_with_given_ids_puts_them_in_the_header_and_the_key_context(cli, kms, make_volume,
                                                                            tmp_path):
    vol = make_volume("xts", size=1 * MiB)
    write(kms, vol, [(0, pattern(1, 100_000))])
    rc, out, err = cli("snapshot", "create", vol, "--json")
    assert rc == 0, err
    snap = json.loads(out)["SnapshotId"]
    out_path = str(tmp_path / "restored")
    rc, out, err = cli("restore", snap, out_path, "--ebs-id", "vol-0123456789abcdef0",
                       "--db-id", "db-ABCDEFGHIJKLMNOPQRSTUVWXY0", "--json")
    assert rc == 0, err
    h = Volume.read_header(out_path)
    assert (h.ebs_id, h.db_id) == ("vol-0123456789abcdef0", "db-ABCDEFGHIJKLMNOPQRSTUVWXY0")
    assert h.context == {"aws:rds:db-id": "db-ABCDEFGHIJKLMNOPQRSTUVWXY0",
                         "aws:ebs:id": "vol-0123456789abcdef0"}
    assert json.loads(out)["ebs_id"] == "vol-0123456789abcdef0"
    unwrap(kms, h.key_arn, h.wrapped_key, h.context)      # the data key is bound to that context
    assert contents(kms, out_path) == contents(kms, vol)


def test_restore_progress_goes_to_stderr(cli, kms, make_volume, tmp_path):
    vol = make_volume("xts", size=2 * MiB)
    write(kms, vol, [(0, pattern(2, 2 * MiB))])
    rc, out, _ = cli("snapshot", "create", vol, "--json", "--progress", "never")
    snap = json.loads(out)["SnapshotId"]
    rc, out, err = cli("restore", snap, str(tmp_path / "r1"), "--progress", "always", "--json")
    assert rc == 0, err
    assert "restore" in err and "100%" in err              # the bar, on stderr
    assert json.loads(out)["cipher"] == "xts"              # stdout stays clean JSON
    rc, out, err = cli("restore", snap, str(tmp_path / "r2"), "--progress", "never", "--json")
    assert rc == 0 and err == ""


@pytest.mark.parametrize("cipher", ["xts", "gcm"])
def test_restore_under_another_key_needs_only_that_key(cipher, kms, store, make_volume, cmk,
                                                       tmp_path):
    old = kms.create_key(Description="the volume's key")["KeyMetadata"]["Arn"]
    vol = make_volume(cipher, size=1 * MiB, key_id=old)
    write(kms, vol, [(0, pattern(3, 300_000))])
    state = contents(kms, vol)
    m = create_snapshot(vol, kms=kms, store=store)
    out = str(tmp_path / "restored")
    h = restore_snapshot(store, m["snapshot_id"], out, kms=kms, key_id=cmk)
    assert h.key_arn == cmk
    src = Volume.read_header(vol)
    assert unwrap(kms, h.key_arn, h.wrapped_key, h.context) != unwrap(kms, src.key_arn,
                                                                      src.wrapped_key, src.context)
    kms.disable_key(KeyId=old)
    assert contents(kms, out) == state                     # opens under cmk alone


def test_a_shared_snapshot_copied_by_the_other_account_restores_there(kms, store, make_volume,
                                                                       cmk, tmp_path):
    from volumed.snapshot.engine import policy_hint

    vol = make_volume("gcm", size=1 * MiB, key_id=cmk)
    write(kms, vol, [(0, pattern(4, 200_000)), (MiB - 4096, b"end")])
    state = contents(kms, vol)
    m = create_snapshot(vol, kms=kms, store=store)
    share_snapshot(store, m["snapshot_id"], OTHER, kms=kms)
    stmt = json.loads(policy_hint(cmk, OTHER).split("\n", 1)[1])
    policy = json.loads(kms.get_key_policy(KeyId=cmk, PolicyName="default")["Policy"])
    policy["Statement"].append(stmt)
    kms.put_key_policy(KeyId=cmk, PolicyName="default", Policy=json.dumps(policy))
    # The embedded keystore holds one account's keys, so "the other account's own key" is a key
    # whose policy gives that account (and not the snapshot's owner) the use of it.
    own_policy = {"Version": "2012-10-17", "Statement": [
        {"Sid": "admin", "Effect": "Allow", "Principal": {"AWS": kms.principal},
         "Action": ["kms:PutKeyPolicy", "kms:GetKeyPolicy", "kms:DescribeKey"], "Resource": "*"},
        {"Sid": "other account", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{OTHER}:root"},
         "Action": "kms:*", "Resource": "*"}]}
    own = kms.create_key(Description="the other account's key",
                         Policy=json.dumps(own_policy))["KeyMetadata"]["Arn"]
    other = kms.with_identity(principal=f"arn:aws:iam::{OTHER}:root")
    copy = copy_snapshot(store, m["snapshot_id"], kms=other, key_id=own)
    assert copy["owner_account"] == OTHER and copy["key_arn"] == own
    out = str(tmp_path / "theirs")
    h = restore_snapshot(store, copy["snapshot_id"], out, kms=other)
    assert h.key_arn == own
    assert contents(other, out) == state
    with pytest.raises(Exception):                        # the owner cannot use the copy's key
        unwrap(kms, h.key_arn, h.wrapped_key, h.context)


@pytest.mark.parametrize("cipher", ["xts", "gcm"])
def test_the_store_holds_no_plaintext(cipher, kms, store, make_volume, cmk):
    marker = b"PLAINTEXT-MARKER-0123456789abcdef"        # unique, and never in a random byte string
    vol = make_volume(cipher, size=1 * MiB)
    write(kms, vol, [(off, marker * 124) for off in range(0, MiB, 64 * 1024)])
    m = create_snapshot(vol, kms=kms, store=store)
    copy_snapshot(store, m["snapshot_id"], kms=kms, key_id=cmk)      # re-encrypted copy too
    names = store.list()
    assert any(n.startswith("chunks/") for n in names)
    for name in names:
        data = store.get(name)
        assert marker not in data and marker[:16] not in data, name
