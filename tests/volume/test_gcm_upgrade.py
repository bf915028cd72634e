"""GCM volumes of format 1 (made by volumed before format 2) are refused with one line naming
`volumed upgrade`, and the upgrade rewrites them as format 2 keeping every sector, crash-safely:
refusing (and changing nothing) when a sector fails authentication."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest

from tests.volume.legacy_gcm_v1 import V1Volume, slot_offset
from volumed.errors import FormatError, IntegrityError
from volumed.volume import Volume, gcmformat as F, gcmupgrade

pytestmark = pytest.mark.timeout(120)
SS = 4096


def _v1(tmp_path, kms, name="old.gcm", sectors=(0, 1, 71, 72, 150)):
    v = V1Volume(tmp_path / name, kms, 1 << 20)
    data = {}
    for s in sectors:
        data[s] = os.urandom(SS)
        v.write(s, os.urandom(SS))   # an older version in the other slot
        v.write(s, data[s])
    return v, data


def _sha(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_v1_is_refused_with_the_way_forward(tmp_path, kms):
    v, _ = _v1(tmp_path, kms)
    v.close()
    with pytest.raises(FormatError, match=r"format v1.*volumed upgrade .*old\.gcm"):
        Volume.open(v.path, kms=kms)
    assert Volume.read_header(v.path).format_version == 1  # info still reads it


def test_upgrade_through_the_cli_keeps_every_sector(tmp_path, kms):
    v, data = _v1(tmp_path, kms)
    v.close()
    before = Volume.read_header(v.path)
    digest = _sha(v.path)
    env = dict(os.environ, VOLUMED_KMS=str(tmp_path / "keystore"))
    run = lambda *a: subprocess.run([sys.executable, "-m", "volumed", *a], capture_output=True,  # noqa: E731
                                    text=True, env=env, cwd=tmp_path, timeout=60)
    r = run("resize", v.path, "2M")  # any command that opens the volume gives the one line
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("volumed: ")]
    assert r.returncode != 0 and len(lines) == 1 and "volumed upgrade" in lines[0], r.stderr
    assert "Traceback" not in r.stderr and _sha(v.path) == digest
    r = run("info", v.path)
    assert r.returncode == 0 and "gcm format:  v1 (opens only after `volumed upgrade" in r.stdout
    (tmp_path / "mnt").mkdir()
    r = run("mount", v.path, str(tmp_path / "mnt"))  # the daemon opens it as the host: same line
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("volumed: ")]
    assert r.returncode != 0 and len(lines) == 1 and "volumed upgrade" in lines[0], r.stderr
    assert not os.path.ismount(tmp_path / "mnt") and _sha(v.path) == digest
    r = run("upgrade", v.path)
    assert r.returncode == 0, r.stderr
    assert "upgraded" in r.stdout
    h = Volume.read_header(v.path)
    assert (h.format_version, h.uuid, h.wrapped_key, h.context) == (
        F.VERSION, before.uuid, before.wrapped_key, before.context)
    with Volume.open(v.path, kms=kms) as vol:
        for s in range(256):
            assert vol.read(s * SS, SS) == data.get(s, bytes(SS)), s
        vol.write(3 * SS, b"n" * SS)
    with Volume.open(v.path, kms=kms) as vol:
        assert vol.read(3 * SS, SS) == b"n" * SS
    r = run("upgrade", v.path)
    assert r.returncode == 0 and "nothing to do" in r.stdout
    assert [n for n in os.listdir(tmp_path) if "upgrade" in n] == []


def test_upgrade_treats_crash_residue_as_format_1_did(tmp_path, kms):
    """An unclean format-1 session: its newer slot that fails (doubtful) falls back to the older."""
    v = V1Volume(tmp_path / "old.gcm", kms, 1 << 20)
    old = os.urandom(SS)
    v.write(5, old)
    v.h.nonce_flushed = v.next - 1      # flushed up to here; the next write is doubtful
    v.write(5, os.urandom(SS))
    v.write_header()
    c0, c1 = v.slots(5)
    v.f.seek(slot_offset(0, int(c1 > c0), 5))
    v.f.write(os.urandom(SS))           # torn by the crash
    v.close()
    gcmupgrade.upgrade(v.path, kms=kms)
    with Volume.open(v.path, kms=kms) as vol:
        assert vol.read(5 * SS, SS) == old


def test_tampered_v1_sector_stops_the_upgrade_and_changes_nothing(tmp_path, kms):
    v, _ = _v1(tmp_path, kms)
    c0, c1 = v.slots(72)
    v.f.seek(slot_offset(1, int(c1 > c0), 0) + 10)
    v.f.write(b"\xff")
    v.close()
    digest = _sha(v.path)
    with pytest.raises(IntegrityError, match="sector 72 "):
        gcmupgrade.upgrade(v.path, kms=kms)
    assert _sha(v.path) == digest
    assert sorted(os.listdir(tmp_path)) == ["keystore", "old.gcm"]


def test_a_crash_during_the_upgrade_leaves_the_old_volume(tmp_path, kms, monkeypatch):
    v, data = _v1(tmp_path, kms)
    v.close()
    digest = _sha(v.path)
    real = gcmupgrade.read_v1_group

    def dies(backing, h, keys, meta_key, g, path):
        if g == 2:
            raise KeyboardInterrupt  # stands in for the process dying half-way
        return real(backing, h, keys, meta_key, g, path)

    monkeypatch.setattr(gcmupgrade, "read_v1_group", dies)
    with pytest.raises(KeyboardInterrupt):
        gcmupgrade.upgrade(v.path, kms=kms)
    assert _sha(v.path) == digest
    monkeypatch.setattr(gcmupgrade, "read_v1_group", real)
    gcmupgrade.upgrade(v.path, kms=kms)
    with Volume.open(v.path, kms=kms) as vol:
        assert vol.read(150 * SS, SS) == data[150]


def test_snapshot_records_of_both_gcm_formats_decrypt():
    """Snapshots taken before format 2 hold format-1 records (no salt, the data key itself); new
    ones hold format-2 records (salt first, the session subkey): restore reads both."""
    import uuid

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from volumed.snapshot import objects, recrypt

    key, vol_uuid = os.urandom(32), str(uuid.uuid4())
    plain = os.urandom(2 * SS)
    enc = recrypt.make_cipher("gcm", bytearray(key), vol_uuid)
    v2 = recrypt.encrypt(enc, 10, bytearray(plain))
    enc.close()
    assert [len(r) for r in v2] == [objects.RECORD_SIZE["gcm"]] * 2
    nonce = bytes(4) + (7).to_bytes(8, "big")
    sealed = AESGCM(key).encrypt(nonce, plain[:SS], b"volumed-gcm-v1" + uuid.UUID(vol_uuid).bytes
                                 + (10).to_bytes(8, "big"))
    v1 = nonce + sealed[SS:] + sealed[:SS]
    for recs in ([v1, None], v2):
        digest, data = objects.encode_chunk("gcm", recs)
        assert objects.decode_chunk(digest, data, "gcm", "test") == recs
    dec = recrypt.make_cipher("gcm", bytearray(key), vol_uuid)
    assert recrypt.decrypt(dec, 10, [v1, v2[1]]) == plain
    bad = bytearray(v2[0])
    bad[0] ^= 1  # another salt: another subkey
    with pytest.raises(IntegrityError, match="sector 10 "):
        recrypt.decrypt(dec, 10, [bytes(bad), None])
    dec.close()
