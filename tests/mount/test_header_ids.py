"""A header whose ids are paths (issue 13 item 6): the parsers refuse it before anything is named
after it, so mounting it writes nothing outside the run and state directories."""

from __future__ import annotations

import os

import pytest


from volumed.errors import FormatError
from volumed.volume import gcmformat, luks2
from volumed.volume.backing import BackingFile
from volumed.volume.device import Volume, load_header

MiB = 1 << 20
EVIL = "../outside/owned"


def rewrite_header(path, **fields) -> None:
    """Re-encode the volume's header with ``fields`` changed, checksums recomputed (what someone
    who can write the file but has no key can do; the MAC no longer verifies, but the old daemon
    used the header before checking it)."""
    b = BackingFile(str(path))
    try:
        read = lambda off, n: bytes(b.pread(off, n))  # noqa: E731
        if bytes(b.pread(0, 6)) == luks2.MAGIC_1:
            h, salt, digest, _ = luks2.decode(read)
            for k, v in fields.items():
                setattr(h, k, v)
            b.pwrite(0, luks2.encode(h, salt, digest))
        else:
            h, _ = gcmformat.decode(read)
            for k, v in fields.items():
                setattr(h, k, v)
            for seq in (h.seqid + 1, h.seqid + 2):
                h.seqid = seq
                off, data = gcmformat.encode_copy(h)
                b.pwrite(off, data)
        b.fdatasync()
    finally:
        b.close()


@pytest.mark.parametrize("cipher", ["xts", "gcm"])
@pytest.mark.parametrize("fields", [{"uuid": EVIL}, {"ebs_id": "../../etc/passwd"},
                                    {"db_id": "db-../x"}, {"uuid": "A" * 36}])
def test_parsers_refuse_ids_that_are_not_ids(cipher, fields, kms_env, make_volume):
    vol = make_volume(kms_env, size=4 * MiB, cipher=cipher)
    rewrite_header(vol, **fields)
    with pytest.raises(FormatError, match="malformed"):
        Volume.read_header(vol)
    b = BackingFile(str(vol), readonly=True)
    try:
        with pytest.raises(FormatError):
            load_header(b, str(vol))
    finally:
        b.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("cipher", ["xts", "gcm"])
def test_mounting_a_header_with_a_path_for_a_uuid_writes_nothing_outside(cipher, kms_env, make_volume,
                                                                        mounter, tmp_path):
    """The chain the old code allowed: the CLI (root) read the volume's state record from
    ``state/<uuid>.json``, found it expired and rewrote it through ``<uuid>.tmp`` opened without
    O_NOFOLLOW. With uuid ``../outside/owned`` and a record and a symlink planted there, root
    overwrote the symlink's target."""
    vol = make_volume(kms_env, size=4 * MiB, cipher=cipher)
    outside = tmp_path / "outside"
    outside.mkdir()
    record = b'{"state": "available", "revoked_at": 1.0, "reason": "planted", "key_arn": ""}'
    (outside / "owned.json").write_bytes(record)
    victim = tmp_path / "victim"
    victim.write_bytes(b"root-owned file")
    os.symlink(victim, outside / "owned.tmp")
    (tmp_path / "run" / "vol-..").mkdir(parents=True)  # and run/vol-../outside/owned.lock
    rewrite_header(vol, uuid=EVIL)
    p = mounter(kms_env, vol, check=False)
    assert p.returncode == 3 and "uuid" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert victim.read_bytes() == b"root-owned file"
    assert (outside / "owned.json").read_bytes() == record
    assert sorted(os.listdir(outside)) == ["owned.json", "owned.tmp"]
    assert not (tmp_path / "run" / "outside").exists()
    for d in ("run", "state"):
        for root, _dirs, files in os.walk(tmp_path / d):
            assert not any("owned" in f for f in files), (root, files)
    p = kms_env.run("info", vol, check=False)
    assert p.returncode == 3 and len(p.stderr.strip().splitlines()) == 1
