"""The CLI: snapshot create/list/describe/copy/share/delete, restore, delete, with --json and
one-line errors."""

from __future__ import annotations

import json
import os

from tests.snapshot.conftest import contents, pattern, write


def test_snapshot_commands_end_to_end(cli, kms, make_volume, tmp_path):
    vol = make_volume("xts")
    write(kms, vol, [(0, pattern(3, 70_000))])
    rc, out, _ = cli("snapshot", "create", vol, "--json")
    assert rc == 0
    snap = json.loads(out)["SnapshotId"]
    assert os.path.isdir(tmp_path / "keystore" / "snapshots")  # default store: next to the keystore
    rc, out, _ = cli("snapshot", "list", "--json")
    assert [s["SnapshotId"] for s in json.loads(out)["Snapshots"]] == [snap]
    rc, out, _ = cli("snapshot", "describe", snap, "--json")
    assert json.loads(out)["Encrypted"] is True
    rc, out, _ = cli("snapshot", "copy", snap, "--json")
    copy = json.loads(out)["SnapshotId"]
    rc, out, err = cli("restore", copy, str(tmp_path / "restored"), "--progress", "always", "--json")
    assert rc == 0, err
    assert contents(kms, str(tmp_path / "restored")) == contents(kms, vol)
    rc, out, _ = cli("snapshot", "delete", snap, "--json")
    assert rc == 0 and json.loads(out)["Deleted"] is True
    rc, out, _ = cli("delete", str(tmp_path / "restored"), "--json")
    assert rc == 0 and json.loads(out)["grants_retired"] == 0


def test_one_line_errors(cli, kms, make_volume, tmp_path):
    vol = make_volume("xts")
    rc, out, _ = cli("snapshot", "create", vol, "--json")
    snap = json.loads(out)["SnapshotId"]
    rc, _, err = cli("snapshot", "share", snap, "--account", "111122223333")
    assert rc != 0 and err.count("\n") == 1
    assert "You can't share a snapshot that has been encrypted using the AWS managed key" in err
    rc, _, err = cli("snapshot", "describe", "snap-nope")
    assert rc == 2 and "invalid snapshot id" in err and err.count("\n") == 1
    rc, _, err = cli("snapshot", "describe", "snap-0123456789abcdef0")
    assert rc == 2 and "does not exist" in err
    rc, _, err = cli("restore", snap, vol)
    assert rc == 2 and "already exists" in err
    rc, _, err = cli("delete", str(tmp_path / "missing"))
    assert rc == 2 and "does not exist" in err
