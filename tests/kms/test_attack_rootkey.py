"""Attacks on the keystore's root key (issue 13, item 9): a cheap passphrase derivation whose
parameters could never be raised, and a root.key file other users can read."""

from __future__ import annotations

import os
import sqlite3

import pytest

from volumed import kms as kms_pkg
from volumed.errors import VolumedError
from volumed.kms.store import rootkey


def _meta(ks: str) -> dict:
    conn = sqlite3.connect(os.path.join(ks, "keystore.db"))
    try:
        return dict(conn.execute("SELECT k, v FROM meta").fetchall())
    finally:
        conn.close()


def test_new_passphrase_keystore_uses_stored_strong_parameters(tmp_path, monkeypatch, clock):
    ks = str(tmp_path / "pp")
    monkeypatch.setenv(rootkey.PASSPHRASE_ENV, "correct horse")
    kms_pkg.connect(ks, clock=clock).close()
    meta = _meta(ks)
    assert int(meta["scrypt_n"]) >= 2**17 and int(meta["scrypt_r"]) == 8 and int(meta["scrypt_p"]) == 1
    assert rootkey.scrypt_params(meta) == (int(meta["scrypt_n"]), 8, 1)


def test_keystore_made_before_parameters_were_stored_still_opens(tmp_path, monkeypatch, clock):
    """A keystore of the previous version: root derived with N=2**15 and no parameters stored."""
    ks = str(tmp_path / "old")
    monkeypatch.setenv(rootkey.PASSPHRASE_ENV, "correct horse")
    monkeypatch.setattr(rootkey, "SCRYPT_N", 2**15)
    c = kms_pkg.connect(ks, clock=clock)
    blob = c.encrypt(KeyId=c.create_key()["KeyMetadata"]["KeyId"], Plaintext=b"old")["CiphertextBlob"]
    c.close()
    conn = sqlite3.connect(os.path.join(ks, "keystore.db"))
    conn.execute("DELETE FROM meta WHERE k IN ('scrypt_n', 'scrypt_r', 'scrypt_p')")
    conn.commit()
    conn.close()
    monkeypatch.setattr(rootkey, "SCRYPT_N", 2**17)
    c = kms_pkg.connect(ks, clock=clock)
    try:
        assert c.decrypt(CiphertextBlob=blob)["Plaintext"] == b"old"
    finally:
        c.close()


def test_lowered_parameters_in_the_database_do_not_open_it(tmp_path, monkeypatch, clock):
    """Someone who can write the database lowers N to make guessing cheap: the key derived with
    the lowered N is not the root (its check value fails), and absurd values are refused."""
    ks = str(tmp_path / "pp")
    monkeypatch.setenv(rootkey.PASSPHRASE_ENV, "correct horse")
    kms_pkg.connect(ks, clock=clock).close()
    conn = sqlite3.connect(os.path.join(ks, "keystore.db"))
    for n, match in (("16384", "wrong root key"), ("2", "out of range")):
        conn.execute("UPDATE meta SET v = ? WHERE k = 'scrypt_n'", (n,))
        conn.commit()
        with pytest.raises(VolumedError, match=match):
            kms_pkg.connect(ks, clock=clock)
    conn.close()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o644])
def test_root_key_file_others_can_read_is_refused(kms, keystore, mode):
    path = os.path.join(keystore, "root.key")
    kms.create_key()
    os.chmod(path, mode)
    with pytest.raises(VolumedError) as exc:
        kms_pkg.connect(keystore)
    msg = str(exc.value)
    assert "\n" not in msg and path in msg and f"{mode:04o}" in msg and f"chmod 600 {path}" in msg
    os.chmod(path, 0o600)
    kms_pkg.connect(keystore).close()


def test_root_key_symlink_is_refused(kms, keystore, tmp_path):
    path = os.path.join(keystore, "root.key")
    kms.create_key()
    moved = str(tmp_path / "elsewhere.key")
    os.rename(path, moved)
    os.symlink(moved, path)
    with pytest.raises(VolumedError, match="regular file"):
        kms_pkg.connect(keystore)
