"""The keystore on disk: layout and permissions, the root key (file or passphrase), key material
never stored in plaintext, and a scan of every byte for every secret a session produced."""

import os
import stat

import pytest

from volumed import kms as kms_pkg
from volumed.errors import VolumedError
from volumed.kms.store import rootkey
from tests.kms.conftest import ShapeCheckedClient


def test_layout_and_modes(kms, keystore):
    kms.create_key()
    assert stat.S_IMODE(os.stat(keystore).st_mode) == 0o700
    root = os.path.join(keystore, "root.key")
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o600 and os.path.getsize(root) == 32
    for name in ("keystore.db", "keystore.db-wal"):
        assert stat.S_IMODE(os.stat(os.path.join(keystore, name)).st_mode) == 0o600


def test_second_client_sees_same_keystore(kms, keystore, clock):
    kid = kms.create_key()["KeyMetadata"]["KeyId"]
    other = kms_pkg.connect(keystore, clock=clock)
    try:
        assert other.account_id() == kms.account_id()
        assert other.describe_key(KeyId=kid)["KeyMetadata"]["KeyId"] == kid
    finally:
        other.close()


def test_missing_root_key_is_one_clear_error(kms, keystore):
    kms.create_key()
    os.rename(os.path.join(keystore, "root.key"), os.path.join(keystore, "root.key.bak"))
    with pytest.raises(VolumedError, match="root key .* is missing"):
        kms_pkg.connect(keystore)


def test_root_key_from_another_keystore_refused(kms, keystore, tmp_path):
    kms.create_key()
    other = str(tmp_path / "other")
    kms_pkg.connect(other).close()
    os.replace(os.path.join(other, "root.key"), os.path.join(keystore, "root.key"))
    with pytest.raises(VolumedError, match="wrong root key"):
        kms_pkg.connect(keystore)


def test_passphrase_keystore(tmp_path, monkeypatch, clock):
    ks = str(tmp_path / "pp")
    monkeypatch.setenv(rootkey.PASSPHRASE_ENV, "correct horse")
    c = kms_pkg.connect(ks, clock=clock)
    blob = c.encrypt(KeyId=c.create_key()["KeyMetadata"]["KeyId"], Plaintext=b"x")["CiphertextBlob"]
    c.close()
    assert not os.path.exists(os.path.join(ks, "root.key"))
    monkeypatch.setenv(rootkey.PASSPHRASE_ENV, "wrong")
    with pytest.raises(VolumedError, match="wrong root key"):
        kms_pkg.connect(ks)
    monkeypatch.delenv(rootkey.PASSPHRASE_ENV)
    with pytest.raises(VolumedError, match="protected by a passphrase"):
        kms_pkg.connect(ks)
    monkeypatch.setenv(rootkey.PASSPHRASE_ENV, "correct horse")
    c = kms_pkg.connect(ks, clock=clock)
    assert c.decrypt(CiphertextBlob=blob)["Plaintext"] == b"x"
    c.close()


def test_altered_material_detected(kms, keystore, key):
    import sqlite3

    db = sqlite3.connect(os.path.join(keystore, "keystore.db"))
    other = kms.create_key()["KeyMetadata"]["KeyId"]
    wrapped = db.execute("SELECT wrapped FROM materials WHERE key_id = ?", (other,)).fetchone()[0]
    db.execute("UPDATE materials SET wrapped = ? WHERE key_id = ?", (wrapped, key))
    db.commit()
    with pytest.raises(VolumedError, match="failed to verify"):
        kms.encrypt(KeyId=key, Plaintext=b"x")


def test_default_spec(monkeypatch):
    monkeypatch.setenv("VOLUMED_KMS", "/somewhere")
    assert kms_pkg.default_spec() == "/somewhere"
    monkeypatch.delenv("VOLUMED_KMS")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert kms_pkg.default_spec() == "/var/lib/volumed"
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_DATA_HOME", "/xdg")
    assert kms_pkg.default_spec() == "/xdg/volumed"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", "/home/u")
    assert kms_pkg.default_spec() == "/home/u/.local/share/volumed"


def test_aws_spec_gives_boto3_client(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    c = kms_pkg.connect("aws")
    assert type(c).__module__.startswith("botocore") and c.meta.region_name == "eu-west-1"
    c = kms_pkg.connect("https://kms.example.test")
    assert c.meta.endpoint_url == "https://kms.example.test"


def _all_bytes(directory):
    out = {}
    for dirpath, _, files in os.walk(directory):
        for f in files:
            if f == "root.key":
                continue
            with open(os.path.join(dirpath, f), "rb") as fh:
                out[f] = fh.read()
    return out


def _key_material(kms, keystore):
    """The plaintext key material of every version (unwrapped the way the service does)."""
    import sqlite3

    root = rootkey.read_file_key(keystore)
    db = sqlite3.connect(os.path.join(keystore, "keystore.db"))
    rows = db.execute("SELECT key_id, version, wrapped FROM materials").fetchall()
    return [bytes(rootkey.unwrap(root, k, v, w)) for k, v, w in rows]


def test_no_secret_at_rest(kms, keystore, clock):
    """Every key material version, data key and plaintext of the session is absent from every
    byte of db, wal and shm (only root.key, the root, is excluded)."""
    secrets = []
    keys = [kms.create_key()["KeyMetadata"]["KeyId"] for _ in range(3)]
    keys.append(kms.describe_key(KeyId="alias/aws/rds")["KeyMetadata"]["KeyId"])
    for k in keys[:3]:
        kms.enable_key_rotation(KeyId=k, RotationPeriodInDays=90)
        kms.rotate_key_on_demand(KeyId=k)
    clock.advance(days=91)
    for i, k in enumerate(keys[:3]):
        for n in (16, 32, 64):
            secrets.append(kms.generate_data_key(KeyId=k, NumberOfBytes=n, EncryptionContext={"i": str(i)})["Plaintext"])
        w = kms.generate_data_key_without_plaintext(KeyId=k, KeySpec="AES_256", EncryptionContext={"i": "w"})
        secrets.append(kms.decrypt(CiphertextBlob=w["CiphertextBlob"], EncryptionContext={"i": "w"})["Plaintext"])
        plain = os.urandom(48)
        secrets.append(plain)
        blob = kms.encrypt(KeyId=k, Plaintext=plain)["CiphertextBlob"]
        kms.re_encrypt(CiphertextBlob=blob, DestinationKeyId=keys[(i + 1) % 3])
    materials = _key_material(kms, keystore)
    assert len(materials) >= 4 + 3 * 2
    secrets += materials
    files = _all_bytes(keystore)
    assert {"keystore.db"} <= set(files)
    for name, data in files.items():
        for s in secrets:
            for window in (s, s[:16], s[-16:]):
                assert window not in data, f"secret bytes found in {name}"


def test_unusable_keystore_paths_are_one_clear_error(tmp_path):
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(VolumedError, match="cannot create keystore"):
        kms_pkg.connect(str(afile))
    with pytest.raises(VolumedError, match="not a directory"):
        kms_pkg.connect(str(afile / "below"))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "keystore.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(VolumedError, match="is it a volumed keystore"):
        kms_pkg.connect(str(tmp_path / "junk"))
