"""The one temporary-file helper (issue 13 item 7): a symlink planted at the temporary name never
receives the data; `volumed kms decrypt --out` and the snapshot store write through it."""

from __future__ import annotations

import os
import stat

import pytest

from volumed import safefile
from volumed.safefile import write_atomic

FIXED = "0123456789abcdef"


@pytest.fixture
def predictable(monkeypatch):
    """Make the helper's random suffix known, as an attacker who guessed it would have it."""
    monkeypatch.setattr(safefile.secrets, "token_hex", lambda n: FIXED[:2 * n])


def plant(path, victim):
    """A symlink at the temporary name write_atomic will use for ``path``, pointing at ``victim``."""
    link = safefile.temp_name(str(path))
    os.symlink(victim, link)
    return link


def test_write_atomic_writes_0600_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out"
    write_atomic(target, b"secret")
    assert target.read_bytes() == b"secret"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert os.listdir(tmp_path) == ["out"]
    write_atomic(target, b"new")  # replaces
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["out"]


@pytest.mark.parametrize("victim_exists", [True, False])
def test_a_planted_symlink_at_the_temporary_name_gets_nothing(tmp_path, predictable, victim_exists):
    victim = tmp_path / "victim"
    if victim_exists:
        victim.write_bytes(b"untouched")
    link = plant(tmp_path / "out", victim)
    with pytest.raises(FileExistsError):
        write_atomic(tmp_path / "out", b"plaintext key material")
    assert (victim.read_bytes() == b"untouched") if victim_exists else not victim.exists()
    assert os.path.islink(link) and not (tmp_path / "out").exists()


def test_a_symlink_at_the_target_itself_is_replaced_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    os.symlink(victim, tmp_path / "out")
    write_atomic(tmp_path / "out", b"data")
    assert victim.read_bytes() == b"untouched"
    assert not os.path.islink(tmp_path / "out") and (tmp_path / "out").read_bytes() == b"data"


def test_kms_decrypt_out_never_writes_plaintext_through_a_planted_symlink(tmp_path, monkeypatch, capsys,
                                                                          predictable):
    from volumed.cli import main

    monkeypatch.setenv("VOLUMED_KMS", str(tmp_path / "ks"))
    monkeypatch.delenv("VOLUMED_PRINCIPAL", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "plain").write_bytes(b"database password")
    assert main(["kms", "create-key", "--json"]) == 0
    import json

    key = json.loads(capsys.readouterr().out)["KeyMetadata"]["KeyId"]
    assert main(["kms", "encrypt", key, "--in", "plain", "--out", "ct"]) == 0
    victim = tmp_path / "victim"
    victim.write_bytes(b"")
    plant(tmp_path / "back", victim)
    os.symlink(victim, tmp_path / f"back.volumed-tmp-{os.getpid()}")  # the old fixed name, too
    capsys.readouterr()
    rc = main(["kms", "decrypt", "--in", "ct", "--out", "back"])
    err = capsys.readouterr().err
    assert rc != 0 and len(err.strip().splitlines()) == 1 and "cannot write back" in err
    assert victim.read_bytes() == b"" and not (tmp_path / "back").exists()


def test_snapshot_store_put_refuses_a_planted_symlink(tmp_path, predictable):
    from volumed.errors import VolumedError
    from volumed.snapshot.store import LocalStore

    store = LocalStore(str(tmp_path / "store"))
    store.put("chunks/ab/abcd", b"first")
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    plant(tmp_path / "store" / "chunks" / "ab" / "abce", victim)
    with pytest.raises(VolumedError, match="cannot write chunks/ab/abce"):
        store.put("chunks/ab/abce", b"records")
    assert victim.read_bytes() == b"untouched"
    assert store.list() == ["chunks/ab/abcd"]  # the planted temporary name is not an object
