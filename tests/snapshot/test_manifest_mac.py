"""Attacks on the snapshot store by someone who can write it but holds no key (issue 13 item 4):
a manifest edited and its SHA-256 recomputed is refused before any chunk is used; a manifest
without a MAC is refused with the command that seals it."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from tests.snapshot.conftest import MiB, contents, pattern, write
from volumed.errors import IntegrityError
from volumed.snapshot import catalog, copy_snapshot, create_snapshot, restore_snapshot, share_snapshot
from volumed.snapshot.keys import snapshot_context
from volumed.snapshot.objects import canonical, manifest_name
from volumed.snapshot.seal import ManifestMacRemoved

OTHER = "111122223333"


def make_legacy(kms, store, snap_id: str) -> None:
    """Rewrite a snapshot as a volumed from before manifest MACs wrote it (with the key access the
    test has): its key rewrapped under the context without the manifest-MAC marker, no MAC."""
    name = manifest_name(snap_id)
    outer = json.loads(store.get(name))
    m = outer["manifest"]
    ctx = snapshot_context(m["volume"]["db_id"], snap_id, marked=False)
    resp = kms.re_encrypt(CiphertextBlob=base64.b64decode(m["wrapped_key"]), SourceEncryptionContext=m["context"],
                          DestinationKeyId=m["key_arn"], DestinationEncryptionContext=ctx)
    m.update(wrapped_key=base64.b64encode(resp["CiphertextBlob"]).decode(), context=ctx)
    outer["sha256"] = hashlib.sha256(canonical(m)).hexdigest()
    del outer["mac"]
    store.put(name, json.dumps(outer).encode())


def tamper(store, snap_id: str, edit, *, drop_mac: bool = False) -> None:
    """Rewrite a manifest object as a store writer can: edit the manifest, recompute its SHA-256,
    keep (or drop) the MAC it had."""
    name = manifest_name(snap_id)
    outer = json.loads(store.get(name))
    edit(outer["manifest"])
    outer["sha256"] = hashlib.sha256(canonical(outer["manifest"])).hexdigest()
    if drop_mac:
        outer.pop("mac", None)
    store.put(name, json.dumps(outer).encode())


@pytest.mark.parametrize("cipher", ["xts", "gcm"])
def test_a_chunk_spliced_from_an_older_snapshot_is_refused(cipher, kms, store, make_volume, tmp_path):
    vol = make_volume(cipher)
    write(kms, vol, [(0, pattern(1, MiB))])
    old = create_snapshot(vol, kms=kms, store=store)
    write(kms, vol, [(0, pattern(2, MiB))])
    new = create_snapshot(vol, kms=kms, store=store)
    assert old["chunks"][0] != new["chunks"][0]
    # Same data key and AAD: the old chunk's records verify under the new snapshot's key.
    tamper(store, new["snapshot_id"], lambda m: m["chunks"].__setitem__(0, old["chunks"][0]))
    out = tmp_path / "r"
    with pytest.raises(IntegrityError, match="fails its MAC"):
        restore_snapshot(store, new["snapshot_id"], str(out), kms=kms)
    assert not out.exists()
    with pytest.raises(IntegrityError, match="fails its MAC"):
        copy_snapshot(store, new["snapshot_id"], kms=kms)
    with pytest.raises(IntegrityError, match="fails its MAC"):  # the copier's path too
        copy_snapshot(store, new["snapshot_id"], kms=kms, key_id=kms.create_key()["KeyMetadata"]["Arn"])
    # The migration command does not whitewash a sealed manifest that fails its MAC.
    from volumed.snapshot.engine import seal_snapshot

    with pytest.raises(IntegrityError, match="fails its MAC"):
        seal_snapshot(store, new["snapshot_id"], kms=kms)
    # Dropping the MAC does not help: its key carries the manifest-MAC marker, so it is refused
    # as altered, and not offered for sealing (test_seal_downgrade.py has the seal side).
    tamper(store, new["snapshot_id"], lambda m: None, drop_mac=True)
    with pytest.raises(ManifestMacRemoved, match="the MAC was removed"):
        restore_snapshot(store, new["snapshot_id"], str(out), kms=kms)
    assert not out.exists()


def test_owner_and_sharing_are_authenticated(kms, store, make_volume, cmk, tmp_path):
    vol = make_volume("xts", key_id=cmk)
    m = create_snapshot(vol, kms=kms, store=store)
    sid = m["snapshot_id"]
    tamper(store, sid, lambda x: x.__setitem__("shared_with", [OTHER]))
    with pytest.raises(IntegrityError, match="fails its MAC"):
        copy_snapshot(store, sid, kms=kms)
    with pytest.raises(IntegrityError, match="fails its MAC"):
        share_snapshot(store, sid, "444455556666", kms=kms)
    tamper(store, sid, lambda x: x.update(shared_with=[], owner_account=OTHER))
    other = kms.with_identity(principal=f"arn:aws:iam::{OTHER}:user/mallory")
    kms.create_grant(KeyId=cmk, GranteePrincipal=f"arn:aws:iam::{OTHER}:user/mallory",
                     Operations=["Decrypt", "ReEncryptFrom", "ReEncryptTo", "DescribeKey"])
    with pytest.raises(IntegrityError, match="fails its MAC"):  # even with access to the key
        restore_snapshot(store, sid, str(tmp_path / "stolen"), kms=other)
    assert not (tmp_path / "stolen").exists()


def test_a_forged_manifest_is_never_a_parent(kms, store, make_volume, tmp_path):
    """A manifest planted for the volume (its uuid, a later date, chunks of its choice) fails its
    MAC under the volume's key, so the next snapshot neither names it as parent nor trusts its
    chunk list; it is restorable on its own."""
    vol = make_volume("gcm")
    write(kms, vol, [(0, pattern(3, MiB))])
    first = create_snapshot(vol, kms=kms, store=store)
    forged = dict(first, snapshot_id="snap-0123456789abcdef0", created="2999-01-01T00:00:00.000000Z",
                  chunks=[None] * len(first["chunks"]))
    store.put(manifest_name(forged["snapshot_id"]), json.dumps(
        {"manifest": forged, "sha256": hashlib.sha256(canonical(forged)).hexdigest(),
         "mac": "00" * 32}).encode())
    write(kms, vol, [(5 * MiB, b"later")])
    second = create_snapshot(vol, kms=kms, store=store)
    assert second["parent"] == first["snapshot_id"]
    out = str(tmp_path / "r")
    restore_snapshot(store, second["snapshot_id"], out, kms=kms)
    assert contents(kms, out) == contents(kms, vol)


@pytest.mark.parametrize("cipher", ["xts", "gcm"])
def test_seal_migrates_an_unsealed_manifest_after_checking_its_chunks(cipher, cli, kms, make_volume, tmp_path):
    from volumed.snapshot.store import open_store

    vol = make_volume(cipher)
    write(kms, vol, [(0, pattern(5, 300_000))])
    rc, out, _ = cli("snapshot", "create", vol, "--json")
    assert rc == 0
    sid = json.loads(out)["SnapshotId"]
    store = open_store(kms_spec=str(tmp_path / "keystore"))
    make_legacy(kms, store, sid)  # as an older volumed wrote it
    rc, out, _ = cli("snapshot", "list")
    assert "UNSEALED" in out
    rc, out, _ = cli("snapshot", "describe", sid, "--json")
    assert json.loads(out)["Sealed"] is False
    rc, _, err = cli("restore", sid, str(tmp_path / "r1"))
    assert rc != 0 and f"volumed snapshot seal {sid}" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r1").exists()
    rc, out, err = cli("snapshot", "seal", sid)
    assert rc == 0, err
    assert "sealed" in out
    rc, out, _ = cli("snapshot", "list", "--json")
    assert [d["Sealed"] for d in json.loads(out)["Snapshots"]] == [True]
    rc, _, err = cli("restore", sid, str(tmp_path / "r2"))
    assert rc == 0, err
    assert contents(kms, str(tmp_path / "r2")) == contents(kms, vol)
    if cipher == "gcm":  # a chunk whose tags fail under the snapshot's key is not sealed
        write(kms, str(tmp_path / "r2"), [(0, b"x")])
        rc, out, _ = cli("snapshot", "create", str(tmp_path / "r2"), "--json")
        sid2 = json.loads(out)["SnapshotId"]
        chunk = catalog.peek(store, sid)["chunks"][0]   # another data key, another AAD
        make_legacy(kms, store, sid2)
        tamper(store, sid2, lambda x: x["chunks"].__setitem__(0, chunk))
        rc, _, err = cli("snapshot", "seal", sid2)
        assert rc != 0 and "fails authentication" in err
        assert catalog.read_with_mac(store, sid2)[1] is None
