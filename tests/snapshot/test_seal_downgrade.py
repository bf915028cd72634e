"""The seal downgrade and what else a writer of the snapshot store (no key) can try against
`volumed snapshot seal`, restore, copy and share.

The attack: strip a sealed manifest's MAC, splice in an older chunk of the same volume (it decrypts
under the same data key), and wait for an operator to run `snapshot seal`, which checks only that
the chunks decrypt. Every key this volumed wraps for a snapshot carries the manifest-MAC marker in
its KMS encryption context (``volumed:manifest-mac=v1``), which the store writer cannot remove
without the key no longer unwrapping: an unsealed manifest whose key has it is refused everywhere,
seal included. One test per attack, each asserting the refusal and that nothing changed."""

from __future__ import annotations

import base64
import json

import pytest

from tests.snapshot.conftest import MiB, contents, pattern, write
from tests.snapshot.test_manifest_mac import make_legacy, tamper
from volumed.errors import IntegrityError, KeyAccessError, UsageError
from volumed.snapshot import catalog, copy_snapshot, create_snapshot, restore_snapshot, share_snapshot, seal
from volumed.snapshot.engine import seal_snapshot, snapshot_key, write_snapshot
from volumed.snapshot.keys import MAC_MARKER, snapshot_context
from volumed.snapshot.objects import manifest_name
from volumed.secrets import wipe
from volumed.snapshot.seal import ManifestMacRemoved, UnsealedManifest
from volumed.volume import Volume


class NoKms:
    """A key service that must not be called: a refusal comes before any KMS call."""

    def __getattr__(self, name):
        raise AssertionError(f"KMS {name} called")


def two_snapshots(kms, store, vol):
    """(older, newer) manifests of ``vol`` whose first chunks differ."""
    write(kms, vol, [(0, pattern(1, MiB))])
    old = create_snapshot(vol, kms=kms, store=store)
    write(kms, vol, [(0, pattern(2, MiB))])
    new = create_snapshot(vol, kms=kms, store=store)
    assert old["chunks"][0] != new["chunks"][0]
    return old, new


def splice_and_strip(store, old, new, **ctx_edit):
    """The attack's store edits: the newer manifest names the older chunk, its MAC is dropped."""
    tamper(store, new["snapshot_id"], lambda m: (m["chunks"].__setitem__(0, old["chunks"][0]),
                                                  m.update(**ctx_edit)), drop_mac=True)


def obj(store, sid: str) -> bytes:
    return store.get(manifest_name(sid))


@pytest.mark.parametrize("cipher", ["xts", "gcm"])
def test_seal_refuses_a_manifest_whose_mac_was_stripped(cipher, cli, kms, make_volume, tmp_path):
    """The downgrade itself: seal (CLI: one line, non-zero, nothing changed; before any KMS call),
    restore, copy and share all refuse the spliced, MAC-less manifest."""
    from volumed.snapshot.store import open_store

    store = open_store(kms_spec=str(tmp_path / "keystore"))
    vol = make_volume(cipher)
    old, new = two_snapshots(kms, store, vol)
    assert new["context"][MAC_MARKER] == "v1"
    sid = new["snapshot_id"]
    splice_and_strip(store, old, new)
    before = obj(store, sid)
    rc, out, err = cli("snapshot", "seal", sid)
    assert rc != 0 and out == ""
    assert len(err.strip().splitlines()) == 1 and "the MAC was removed" in err and "cannot be sealed" in err
    assert obj(store, sid) == before
    with pytest.raises(ManifestMacRemoved):
        seal_snapshot(store, sid, kms=NoKms())
    rc, _, err = cli("restore", sid, str(tmp_path / "r"))
    assert rc != 0 and "the MAC was removed" in err and not (tmp_path / "r").exists()
    with pytest.raises(ManifestMacRemoved):
        copy_snapshot(store, sid, kms=kms)
    with pytest.raises(ManifestMacRemoved):
        share_snapshot(store, sid, "111122223333", kms=kms)
    assert obj(store, sid) == before
    assert [m["snapshot_id"] for m in catalog.all_manifests(store)] == [old["snapshot_id"], sid]
    # list and describe say what it is, not "unsealed (run seal)", which would only be refused
    rc, out, _ = cli("snapshot", "list")
    line = next(ln for ln in out.splitlines() if ln.startswith(sid))
    assert "MAC REMOVED" in line and "UNSEALED" not in line
    rc, out, _ = cli("snapshot", "describe", sid, "--json")
    assert json.loads(out)["Sealed"] is False and json.loads(out)["MacRemoved"] is True


def test_stripping_the_marker_from_the_manifest_too_does_not_get_it_sealed(kms, store, make_volume, tmp_path):
    """The writer also removes the marker from the manifest's context: the key no longer unwraps
    under the stated context but does under the marked one, so seal names the removal."""
    vol = make_volume("xts")
    old, new = two_snapshots(kms, store, vol)
    sid = new["snapshot_id"]
    splice_and_strip(store, old, new, context=snapshot_context(new["volume"]["db_id"], sid, marked=False))
    before = obj(store, sid)
    with pytest.raises(UnsealedManifest):  # restore cannot tell before KMS: it says to seal
        restore_snapshot(store, sid, str(tmp_path / "r"), kms=kms)
    with pytest.raises(ManifestMacRemoved, match="the MAC was removed"):
        seal_snapshot(store, sid, kms=kms)
    assert obj(store, sid) == before
    # Any marker value counts as the marker; an extra pair is not the snapshot's context at all.
    tamper(store, sid, lambda m: m.update(context={**new["context"], MAC_MARKER: "v0"}))
    with pytest.raises(ManifestMacRemoved):
        seal_snapshot(store, sid, kms=NoKms())
    legacy_ctx = snapshot_context(new["volume"]["db_id"], sid, marked=False)
    tamper(store, sid, lambda m: m.update(context={**legacy_ctx, "x": "y"}))
    with pytest.raises(IntegrityError, match="not the snapshot's own"):
        seal_snapshot(store, sid, kms=NoKms())
    assert not (tmp_path / "r").exists()


def test_a_wrapped_key_swapped_in_from_another_snapshot_is_refused(kms, store, make_volume, tmp_path):
    """The writer moves another snapshot's wrapped key (marked, or a legacy one without the
    marker) into a manifest, with or without its context, sealed or not."""
    vol = make_volume("xts")
    legacy = create_snapshot(vol, kms=kms, store=store)
    make_legacy(kms, store, legacy["snapshot_id"])
    legacy = catalog.peek(store, legacy["snapshot_id"])
    other, target = two_snapshots(kms, store, vol)
    sid = target["snapshot_id"]
    out = str(tmp_path / "r")
    original = obj(store, sid)
    for donor in (other, legacy):
        store.put(manifest_name(sid), original)
        # its key and its context: the context names the donor, not this snapshot
        tamper(store, sid, lambda m, d=donor: m.update(wrapped_key=d["wrapped_key"], context=d["context"]))
        with pytest.raises(IntegrityError, match="not the snapshot's own"):
            restore_snapshot(store, sid, out, kms=kms)
        for drop in (False, True):  # sealed or stripped: no way to get it sealed
            tamper(store, sid, lambda m, d=donor: m.update(wrapped_key=d["wrapped_key"], context=d["context"]),
                   drop_mac=drop)
            before = obj(store, sid)
            with pytest.raises(IntegrityError):  # not its context, or (marked donor) its MAC removed
                seal_snapshot(store, sid, kms=kms)
            assert obj(store, sid) == before
        # its key under this snapshot's legacy context, MAC dropped: KMS refuses the key under
        # both contexts (it is bound to the donor's id), so the refusal is KMS's
        legacy_ctx = snapshot_context(target["volume"]["db_id"], sid, marked=False)
        tamper(store, sid, lambda m, d=donor: m.update(wrapped_key=d["wrapped_key"], context=legacy_ctx),
               drop_mac=True)
        before = obj(store, sid)
        with pytest.raises(KeyAccessError) as exc:
            seal_snapshot(store, sid, kms=kms)
        assert exc.value.code == "InvalidCiphertextException"
        assert obj(store, sid) == before
    assert not (tmp_path / "r").exists()


def test_an_older_version_of_the_same_snapshot_stripped_of_its_mac_is_refused(kms, store, make_volume, cmk):
    """Replay: the manifest as it was before a share, put back without its MAC (the same
    snapshot id, so the same wrapped key): the marker still refuses it. Put back with its MAC
    it is a valid older version (fewer accounts): denial of service, documented."""
    vol = make_volume("xts", key_id=cmk)
    m = create_snapshot(vol, kms=kms, store=store)
    sid = m["snapshot_id"]
    older = obj(store, sid)
    share_snapshot(store, sid, "111122223333", kms=kms)
    store.put(manifest_name(sid), older)
    tamper(store, sid, lambda x: x["chunks"].__setitem__(0, None), drop_mac=True)
    with pytest.raises(ManifestMacRemoved):
        seal_snapshot(store, sid, kms=kms)
    store.put(manifest_name(sid), older)
    assert catalog.load(store, sid, kms=kms)["shared_with"] == []


def test_chunks_moved_from_another_volume_are_refused(kms, store, make_volume, tmp_path):
    """A chunk of another volume's snapshot (another data key) in a sealed manifest fails its MAC;
    stripped of the MAC too, the marker refuses it before any chunk or key is used."""
    a, b = make_volume("xts"), make_volume("xts")
    write(kms, a, [(0, pattern(7, MiB))])
    write(kms, b, [(0, pattern(8, MiB))])
    sa = create_snapshot(a, kms=kms, store=store)
    sb = create_snapshot(b, kms=kms, store=store)
    sid = sb["snapshot_id"]
    tamper(store, sid, lambda m: m["chunks"].__setitem__(0, sa["chunks"][0]))
    with pytest.raises(IntegrityError, match="fails its MAC"):
        seal_snapshot(store, sid, kms=kms)
    with pytest.raises(IntegrityError, match="fails its MAC"):
        restore_snapshot(store, sid, str(tmp_path / "r"), kms=kms)
    tamper(store, sid, lambda m: None, drop_mac=True)
    with pytest.raises(ManifestMacRemoved):
        seal_snapshot(store, sid, kms=NoKms())
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("cipher", ["xts", "gcm"])
def test_a_genuine_legacy_snapshot_seals_gets_the_marker_and_restores(cipher, kms, store, make_volume, tmp_path):
    """Made before manifest MACs (key without the marker, no MAC): seal checks it, rewraps its key
    under the marked context and MACs it; it restores; its MAC stripped again, it is refused."""
    vol = make_volume(cipher)
    write(kms, vol, [(0, pattern(9, 300_000))])
    sid = create_snapshot(vol, kms=kms, store=store)["snapshot_id"]
    make_legacy(kms, store, sid)
    with pytest.raises(UnsealedManifest, match=f"volumed snapshot seal {sid}"):
        restore_snapshot(store, sid, str(tmp_path / "r0"), kms=kms)
    m = seal_snapshot(store, sid, kms=kms)
    assert m["context"] == snapshot_context(Volume.read_header(vol).db_id, sid)
    assert catalog.load(store, sid, kms=kms) == m
    restore_snapshot(store, sid, str(tmp_path / "r1"), kms=kms)
    assert contents(kms, str(tmp_path / "r1")) == contents(kms, vol)
    assert seal_snapshot(store, sid, kms=kms) == m  # sealed and marked: unchanged
    tamper(store, sid, lambda x: None, drop_mac=True)
    with pytest.raises(ManifestMacRemoved):
        seal_snapshot(store, sid, kms=kms)
    assert not (tmp_path / "r0").exists()


def test_a_sealed_snapshot_made_before_the_marker_gets_it_at_seal(kms, store, make_volume, tmp_path):
    """Sealed by a volumed that had manifest MACs but no marker: seal verifies it and adds the
    marker (rewrap, re-MAC), after which stripping its MAC no longer gets it sealed."""
    vol = make_volume("xts")
    write(kms, vol, [(0, pattern(10, MiB))])
    sid = create_snapshot(vol, kms=kms, store=store)["snapshot_id"]
    make_legacy(kms, store, sid)
    m = catalog.peek(store, sid)
    root = seal.root_from_kms(kms, m)
    catalog.save(store, m, root)  # MAC'd under the legacy context, as that version wrote it
    wipe(root)
    assert MAC_MARKER not in catalog.load(store, sid, kms=kms)["context"]
    sealed = seal_snapshot(store, sid, kms=kms)
    assert sealed["context"][MAC_MARKER] == "v1" and sealed["chunks"] == m["chunks"]
    assert base64.b64decode(sealed["wrapped_key"]) != base64.b64decode(m["wrapped_key"])
    restore_snapshot(store, sid, str(tmp_path / "r"), kms=kms)
    assert contents(kms, str(tmp_path / "r")) == contents(kms, vol)
    tamper(store, sid, lambda x: None, drop_mac=True)
    with pytest.raises(ManifestMacRemoved):
        seal_snapshot(store, sid, kms=NoKms())


def test_a_snapshot_key_without_the_marker_is_not_used_for_a_new_snapshot(kms, store, make_volume):
    """A key prepared by an older volumed (the CLI side of a mounted snapshot) would make a
    MAC'd manifest whose key lacks the marker: refused before anything is stored."""
    vol = make_volume("xts")
    with Volume.open(vol, kms=kms) as v:
        key = snapshot_key(kms, v.header)
        ctx = snapshot_context(v.header.db_id, key["snapshot_id"], marked=False)
        resp = kms.re_encrypt(CiphertextBlob=base64.b64decode(key["wrapped_key"]),
                              SourceEncryptionContext=key["context"], DestinationKeyId=key["key_arn"],
                              DestinationEncryptionContext=ctx)
        legacy = dict(key, wrapped_key=base64.b64encode(resp["CiphertextBlob"]).decode(), context=ctx)
        with pytest.raises(UsageError, match="no manifest-MAC marker"):
            write_snapshot(v, store, legacy)
    assert store.list() == []


def test_a_copy_of_a_sealed_legacy_snapshot_is_marked_from_birth(kms, store, make_volume, tmp_path):
    """The migration that leaves no unmarked key behind: copy the sealed legacy snapshot (a new
    id, its key wrapped with the marker from the start) and delete the original."""
    vol = make_volume("gcm")
    write(kms, vol, [(0, pattern(11, MiB))])
    sid = create_snapshot(vol, kms=kms, store=store)["snapshot_id"]
    make_legacy(kms, store, sid)
    seal_snapshot(store, sid, kms=kms)
    copy = copy_snapshot(store, sid, kms=kms)
    assert copy["context"][MAC_MARKER] == "v1"
    tamper(store, copy["snapshot_id"], lambda x: None, drop_mac=True)
    with pytest.raises(ManifestMacRemoved):
        seal_snapshot(store, copy["snapshot_id"], kms=NoKms())
    assert json.loads(obj(store, copy["snapshot_id"])).get("mac") is None


def test_seal_without_reencrypt_changes_nothing(kms, store, make_volume, cmk):
    """Sealing a legacy snapshot rewraps its key (ReEncrypt): an operator allowed only Decrypt is
    refused with the AWS code, and the manifest stays as it was (no MAC without the marker)."""
    vol = make_volume("xts", key_id=cmk)
    write(kms, vol, [(0, pattern(12, MiB))])
    sid = create_snapshot(vol, kms=kms, store=store)["snapshot_id"]
    make_legacy(kms, store, sid)
    before = obj(store, sid)
    operator = kms.principal.rsplit(":", 1)[0] + ":user/operator"
    kms.create_grant(KeyId=cmk, GranteePrincipal=operator, Operations=["Decrypt"])
    with pytest.raises(KeyAccessError, match="ReEncrypt") as exc:
        seal_snapshot(store, sid, kms=kms.with_identity(principal=operator))
    assert exc.value.code == "AccessDeniedException"
    assert obj(store, sid) == before


def test_the_downgrade_is_refused_on_s3_too(kms, s3, make_volume, tmp_path):
    """The same attack on an S3 store (moto): seal refuses before any KMS call, nothing changes."""
    from volumed.snapshot.store import S3Store

    store = S3Store("fleet-snapshots", "team/a", client=s3)
    vol = make_volume("gcm")
    old, new = two_snapshots(kms, store, vol)
    splice_and_strip(store, old, new)
    before = obj(store, new["snapshot_id"])
    with pytest.raises(ManifestMacRemoved):
        seal_snapshot(store, new["snapshot_id"], kms=NoKms())
    with pytest.raises(ManifestMacRemoved):
        restore_snapshot(store, new["snapshot_id"], str(tmp_path / "r"), kms=kms)
    assert obj(store, new["snapshot_id"]) == before and not (tmp_path / "r").exists()
