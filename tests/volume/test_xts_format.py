"""XTS volumes are LUKS2 volumes: cryptsetup reads the header, dissect-fve (an independent LUKS2
implementation) decrypts what volumed wrote; the header is MAC'd, duplicated and repairable."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess

import pytest
from dissect.fve.crypto.dmcrypt import CryptStream
from dissect.fve.luks.luks import LUKS

from tests.volume.conftest import raw_key
from volumed.errors import FormatError, IntegrityError, KeyAccessError
from volumed.volume import Volume, luks2
from volumed.volume.backing import BackingFile


def _write(path, kms, pieces):
    with Volume.open(path, kms=kms) as vol:
        for off, data in pieces:
            vol.write(off, data)


def test_luksdump_shows_segment_and_token(make_volume):
    path = make_volume("xts", size=8 << 20)
    out = subprocess.run(["cryptsetup", "luksDump", path], capture_output=True, text=True, check=True).stdout
    assert "Version:       \t2" in out
    assert "aes-xts-plain64" in out and "sector: 4096 [bytes]" in out
    assert "offset: 1048576 [bytes]" in out
    assert "volumed-kms" in out
    assert "pbkdf2" in out
    h = Volume.read_header(path)
    assert h.uuid in out
    token = json.loads(subprocess.run(["cryptsetup", "token", "export", "--token-id", "0", path],
                                      capture_output=True, text=True, check=True).stdout)
    assert token["type"] == "volumed-kms" and token["key_arn"] == h.key_arn
    assert token["context"] == h.context
    subprocess.run(["cryptsetup", "isLuks", path], check=True)


def _dissect_stream(path, key: bytes):
    fh = open(path, "rb")
    luks = LUKS(fh)
    seg = luks.metadata.segments[0]
    dig = luks.metadata.digests[0]
    assert seg.encryption == "aes-xts-plain64" and seg.sector_size == 4096
    assert 0 in dig.segments
    # The LUKS2 digest binds the volume key to the segment.
    assert hashlib.pbkdf2_hmac(dig.hash, key, dig.salt, dig.iterations, len(dig.digest)) == dig.digest
    return fh, CryptStream(fh, seg.encryption, key, len(key) * 8, seg.offset, seg.size, seg.iv_tweak,
                           seg.sector_size)


def test_dissect_fve_reads_back_what_volumed_wrote(make_volume, kms):
    path = make_volume("xts", size=8 << 20)
    rnd = os.urandom(3 << 20)
    pieces = [(0, rnd[:4096]), (12345, rnd[4096:100_000]), (5 << 20, rnd[100_000:])]
    _write(path, kms, pieces)
    key = bytes(raw_key(kms, path))
    fh, stream = _dissect_stream(path, key)
    with fh:
        for off, data in pieces:
            stream.seek(off)
            assert stream.read(len(data)) == data


def _rewrite_header(path, mutate):
    """Rewrite both LUKS2 copies with valid checksums after mutate(header): an attacker's edit."""
    b = BackingFile(path)
    try:
        h, salt, digest, _ = luks2.decode(lambda o, n: bytes(b.pread(o, n)))
        h = dataclasses.replace(h)
        mutate(h)
        b.pwrite(0, luks2.encode(h, salt, digest))
    finally:
        b.close()


@pytest.mark.parametrize("field,value", [("size", 4 << 20), ("data_offset", 2 << 20), ("ebs_id", "vol-0123456789abcdef0"),
                                         ("key_arn", "arn:aws:kms:us-east-1:111122223333:key/x"),
                                         ("db_id", "db-ABCDEFGHIJKLMNOPQRSTUVWXYZ"), ("sector_size", 512)])
def test_altered_header_refuses_to_open(make_volume, kms, field, value):
    path = make_volume("xts", size=8 << 20)
    os.truncate(path, 16 << 20)  # room for a moved data area, so only the MAC can object
    _rewrite_header(path, lambda h: setattr(h, field, value))
    with pytest.raises((IntegrityError, KeyAccessError, FormatError)) as ei:
        Volume.open(path, kms=kms)
    if field == "sector_size":  # only 4 KiB sectors exist: refused before the MAC is checked
        assert isinstance(ei.value, FormatError) and "sector size" in str(ei.value)
    elif field in ("size", "data_offset", "ebs_id", "db_id"):
        assert isinstance(ei.value, IntegrityError)
        assert "MAC" in str(ei.value)


def test_altered_context_is_refused_by_kms(make_volume, kms):
    path = make_volume("xts", size=8 << 20)

    def mutate(h):
        h.context = dict(h.context, **{"aws:ebs:id": "vol-0123456789abcdef0"})
        h.ebs_id = "vol-0123456789abcdef0"

    _rewrite_header(path, mutate)
    with pytest.raises(KeyAccessError) as ei:
        Volume.open(path, kms=kms)
    assert ei.value.code in ("InvalidCiphertextException", "AccessDeniedException")


def test_damaged_primary_is_recovered_and_repaired(make_volume, kms):
    path = make_volume("xts", size=8 << 20)
    _write(path, kms, [(0, b"x" * 5000)])
    with open(path, "r+b") as f:
        f.seek(200)
        f.write(os.urandom(3000))
    h = Volume.read_header(path)
    assert h.size == 8 << 20
    with Volume.open(path, kms=kms) as vol:
        assert vol.read(0, 5000) == b"x" * 5000
    b = BackingFile(path, readonly=True)
    _, _, _, copies = luks2.decode(lambda o, n: bytes(b.pread(o, n)))
    b.close()
    assert all(c.ok for c in copies)
    subprocess.run(["cryptsetup", "luksDump", path], capture_output=True, check=True)


def test_resize_is_atomic_across_a_crash_between_copies(make_volume, kms):
    path = make_volume("xts", size=8 << 20)
    _write(path, kms, [(4096, b"keep" * 1024)])
    with open(path, "rb") as f:
        old_hdr = f.read(2 * luks2.HDR_SIZE)
    with Volume.open(path, kms=kms) as vol:
        vol.resize(16 << 20)
    assert Volume.read_header(path).size == 16 << 20
    # Crash after the primary was written, before the secondary: new primary + old secondary.
    with open(path, "r+b") as f:
        f.seek(luks2.HDR_SIZE)
        f.write(old_hdr[luks2.HDR_SIZE:])
    with Volume.open(path, kms=kms) as vol:
        assert vol.size == 16 << 20
        assert vol.read(4096, 4096) == b"keep" * 1024
    # Crash while writing the primary (torn): old secondary wins, old size, data intact.
    with open(path, "r+b") as f:
        f.seek(0)
        f.write(old_hdr[:luks2.HDR_SIZE])  # old primary is the "other" copy now ...
        f.seek(luks2.HDR_SIZE + 4096)
        f.write(os.urandom(4096))          # ... and the secondary is torn
    with Volume.open(path, kms=kms) as vol:
        assert vol.size == 8 << 20
        assert vol.read(4096, 4096) == b"keep" * 1024


def test_shrink_is_refused(make_volume, kms):
    from volumed.errors import UsageError

    path = make_volume("xts", size=8 << 20)
    with Volume.open(path, kms=kms) as vol:
        with pytest.raises(UsageError):
            vol.resize(4 << 20)
    assert Volume.read_header(path).size == 8 << 20


def test_bad_files_give_format_errors(tmp_path, make_volume):
    tiny = tmp_path / "tiny"
    tiny.write_bytes(b"LUKS\xba\xbe")
    garbage = tmp_path / "garbage"
    garbage.write_bytes(os.urandom(1 << 20))
    path = make_volume("xts", size=8 << 20)
    truncated = tmp_path / "truncated"
    shutil.copyfile(path, truncated)
    os.truncate(truncated, 2 << 20)
    both = tmp_path / "both"
    shutil.copyfile(path, both)
    with open(both, "r+b") as f:
        f.seek(100)
        f.write(b"\xff" * 100)
        f.seek(luks2.HDR_SIZE + 100)
        f.write(b"\xff" * 100)
    for p, words in [(tiny, "too short"), (garbage, "not a volumed volume"), (truncated, "truncated"),
                     (both, "both copies are damaged")]:
        with pytest.raises(FormatError, match=words):
            Volume.read_header(p)


def test_foreign_luks2_and_newer_version(tmp_path, make_volume):
    foreign = tmp_path / "foreign.img"
    foreign.write_bytes(b"")
    os.truncate(foreign, 20 << 20)
    kf = tmp_path / "kf"
    kf.write_bytes(os.urandom(64))
    subprocess.run(["cryptsetup", "luksFormat", "--type", "luks2", "--pbkdf", "pbkdf2",
                    "--pbkdf-force-iterations", "1000", "--batch-mode", str(foreign), str(kf)],
                   check=True, capture_output=True, timeout=60)
    with pytest.raises(FormatError, match="without a volumed-kms token"):
        Volume.read_header(foreign)
    path = make_volume("xts", size=8 << 20)
    b = BackingFile(path)
    raw = bytes(b.pread(0, luks2.HDR_SIZE))
    j = json.loads(raw[4096:].split(b"\0", 1)[0])
    j["tokens"]["0"]["volumed_format_version"] = 2
    text = json.dumps(j).encode() + b"\0"
    area = text + bytes(luks2.JSON_SIZE - len(text))
    binhdr = bytearray(raw[:4096])
    binhdr[448:512] = bytes(64)
    binhdr[448:480] = hashlib.sha256(bytes(binhdr) + area).digest()
    b.pwrite(0, bytes(binhdr) + area)
    b.pwrite(luks2.HDR_SIZE, bytes(luks2.HDR_SIZE))
    b.close()
    with pytest.raises(FormatError, match="newer than this volumed supports"):
        Volume.read_header(path)


def test_altered_luks_digest_refuses_to_open(make_volume, kms):
    path = make_volume("xts", size=8 << 20)
    b = BackingFile(path)
    h, salt, digest, _ = luks2.decode(lambda o, n: bytes(b.pread(o, n)))
    b.pwrite(0, luks2.encode(h, salt, bytes(32)))
    b.close()
    with pytest.raises(IntegrityError, match="LUKS2 digest"):
        Volume.open(path, kms=kms)
