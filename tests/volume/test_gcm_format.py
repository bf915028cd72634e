"""GCM volumes are authenticated: altered, moved, swapped or foreign sectors fail with an error that
names the sector; zeroing written data or metadata is detected; nonces never repeat; the header
survives a damaged copy; rollback behaves as docs/FORMAT.md says."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

from volumed.errors import FormatError, IntegrityError, KeyAccessError, StateError
from volumed.volume import Volume, gcmformat as F, gcmstore
from volumed.volume.backing import BackingFile

SS = 4096


def _current_slot_offset(path, sector):
    g, i = divmod(sector, F.GROUP_SECTORS)
    b = BackingFile(path, readonly=True)
    page = b.pread(F.meta_offset(g), SS)
    b.close()
    ctr = F.slots(page)[i]["ctr"]
    k = int(ctr[1] > ctr[0])
    assert ctr[k] != 0
    return F.slot_offset(g, k, i)


def _poke(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _peek(path, offset, n):
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(n)


@pytest.fixture
def written(make_volume, kms):
    path = make_volume("gcm", size=4 << 20)
    data = os.urandom(200 * SS)
    with Volume.open(path, kms=kms) as vol:
        vol.write(0, data)
    return path, data


def test_flipped_bit_fails_that_sector_only(written, kms, caplog):
    path, data = written
    off = _current_slot_offset(path, 77)
    b = bytearray(_peek(path, off + 100, 1))
    b[0] ^= 0x04
    _poke(path, off + 100, bytes(b))
    with Volume.open(path, kms=kms) as vol, caplog.at_level(logging.ERROR, logger="volumed.volume"):
        with pytest.raises(IntegrityError, match="sector 77 "):
            vol.read(76 * SS, 3 * SS)
        assert any("sector 77" in r.getMessage() for r in caplog.records)
        assert vol.read(76 * SS, SS) == data[76 * SS:77 * SS]
        assert vol.read(78 * SS, SS) == data[78 * SS:79 * SS]
        vol.write(77 * SS, data[77 * SS:78 * SS])  # rewriting the sector heals it
        assert vol.read(77 * SS, SS) == data[77 * SS:78 * SS]


def test_swapped_sectors_fail(written, kms):
    path, _ = written
    a, b = _current_slot_offset(path, 3), _current_slot_offset(path, 4)
    da, db = _peek(path, a, SS), _peek(path, b, SS)
    _poke(path, a, db)
    _poke(path, b, da)
    with Volume.open(path, kms=kms) as vol:
        for s in (3, 4):
            with pytest.raises(IntegrityError, match=f"sector {s} "):
                vol.read(s * SS, SS)


def test_sector_copied_from_another_volume_fails(written, make_volume, kms):
    path, data = written
    other = make_volume("gcm", size=4 << 20)
    with Volume.open(other, kms=kms) as vol:
        vol.write(0, data)
    for s in (5, 6):
        _poke(path, _current_slot_offset(path, s), _peek(other, _current_slot_offset(other, s), SS))
    with Volume.open(path, kms=kms) as vol:
        with pytest.raises(IntegrityError, match="sector 5 "):
            vol.read(5 * SS, SS)
    # Copying the metadata page too does not help: it is MAC'd under the other volume's key.
    _poke(path, F.meta_offset(0), _peek(other, F.meta_offset(0), SS))
    with Volume.open(path, kms=kms) as vol:
        with pytest.raises(IntegrityError, match="metadata of sectors 0-49"):
            vol.read(5 * SS, SS)


def test_zeroing_written_data_or_metadata_is_detected(written, kms):
    path, _ = written
    _poke(path, _current_slot_offset(path, 10), bytes(SS))
    with Volume.open(path, kms=kms) as vol:
        with pytest.raises(IntegrityError, match="sector 10 "):
            vol.read(10 * SS, SS)
    _poke(path, F.meta_offset(1), bytes(SS))  # the whole metadata page of sectors 50..99
    with Volume.open(path, kms=kms) as vol:
        with pytest.raises(IntegrityError, match="metadata of sectors 50-99"):
            vol.read(70 * SS, SS)


def test_unwritten_sectors_read_zeros_and_zero_writes_store_no_data(make_volume, kms):
    path = make_volume("gcm", size=4 << 20)
    with Volume.open(path, kms=kms) as vol:
        assert vol.read(0, 4 << 20) == bytes(4 << 20)
        vol.write(0, os.urandom(64 * SS))
        vol.flush()
        before = os.stat(path).st_blocks
        vol.write(0, bytes(64 * SS))
        vol.flush()
        assert vol.read(0, 64 * SS) == bytes(64 * SS)
        assert os.stat(path).st_blocks < before - 64 * 8 // 2
    # A zeroed sector is authenticated as zeros: its metadata says so under the page MAC.
    with Volume.open(path, kms=kms) as vol:
        assert vol.read(0, 64 * SS) == bytes(64 * SS)


def test_rollback_of_sector_and_metadata_is_not_detected(written, kms):
    """Documented limit: writing back an older valid (data, metadata page) pair of the same volume
    rolls the sector back undetected; rolling back only the data is detected."""
    path, data = written
    off_meta, off_slot = F.meta_offset(0), _current_slot_offset(path, 2)
    old_meta, old_slot = _peek(path, off_meta, SS), _peek(path, off_slot, SS)
    new = os.urandom(SS)
    with Volume.open(path, kms=kms) as vol:
        vol.write(2 * SS, new)
        vol.flush()
        vol.write(2 * SS, os.urandom(SS))  # third version: now the old slot is overwritten
    with Volume.open(path, kms=kms) as vol:
        assert vol.read(2 * SS, SS) != new
    _poke(path, off_slot, old_slot)
    _poke(path, off_meta, old_meta)
    with Volume.open(path, kms=kms) as vol:
        assert vol.read(2 * SS, SS) == data[2 * SS:3 * SS]  # rolled back, undetected


def _all_counters(path, size):
    b = BackingFile(path, readonly=True)
    out = []
    for g in range(F.groups_for(size)):
        ctr = F.slots(b.pread(F.meta_offset(g), SS))["ctr"].ravel()
        out.append(ctr[ctr != 0])
    b.close()
    return np.concatenate(out)


def test_nonces_never_repeat_across_sessions_and_crashes(make_volume, kms):
    size = 1 << 20
    path = make_volume("gcm", size=size)
    seen_reserved = []
    for session in range(4):
        vol = Volume.open(path, kms=kms)
        seen_reserved.append(vol.header.nonce_reserved)
        for _ in range(3):
            vol.write(0, os.urandom(size))
            vol.flush()
        if session % 2:
            vol.close()
        else:
            vol.abandon()  # killed: no clean close
    ctrs = _all_counters(path, size)
    assert len(ctrs) == len(np.unique(ctrs))
    assert seen_reserved == sorted(set(seen_reserved))
    h = Volume.read_header(path)
    assert len(h.doubtful) >= 1  # the killed sessions' counters are remembered as doubtful


def test_nonce_space_exhaustion_makes_the_volume_read_only(make_volume, kms, monkeypatch):
    path = make_volume("gcm", size=1 << 20)
    monkeypatch.setattr(gcmstore, "NONCE_LIMIT", 3 * 256 + 10)
    monkeypatch.setattr(gcmstore, "RESERVE_CHUNK", 100)
    data = os.urandom(1 << 20)
    with Volume.open(path, kms=kms) as vol:
        vol.write(0, data)
        vol.write(0, data)
        with pytest.raises(StateError, match="nonce space"):
            for _ in range(3):
                vol.write(0, os.urandom(1 << 20))
    with Volume.open(path, kms=kms) as vol:
        assert len(vol.read(0, 1 << 20)) == 1 << 20
        with pytest.raises(StateError):
            vol.write(0, os.urandom(1 << 20))


def test_damaged_header_copy_is_repaired_and_nonces_skip_ahead(written, kms):
    path, data = written
    h = Volume.read_header(path)
    newest = (h.seqid % 2) * F.HDR_SIZE
    _poke(path, newest + 300, os.urandom(64))
    h2 = Volume.read_header(path)
    assert h2.seqid == h.seqid - 1
    with Volume.open(path, kms=kms) as vol:
        assert vol.read(0, 200 * SS) == data
        assert vol.header.nonce_reserved >= h.nonce_reserved + gcmstore.RESERVE_CHUNK
    b = BackingFile(path, readonly=True)
    _, copies = F.decode(lambda o, n: bytes(b.pread(o, n)))
    b.close()
    assert all(c.ok for c in copies)


def test_gcm_bad_headers(tmp_path, written):
    path, _ = written
    for off in (0, F.HDR_SIZE):
        # flip a bit (writing a fixed byte left the copy intact whenever that byte was already 1)
        _poke(path, off + 40, bytes([_peek(path, off + 40, 1)[0] ^ 0x01]))
    with pytest.raises(FormatError, match="both copies are damaged"):
        Volume.read_header(path)
    newer = tmp_path / "newer"
    buf = bytearray(2 * F.HDR_SIZE + SS)
    buf[0:10] = F.MAGIC + (F.VERSION + 1).to_bytes(2, "big")
    newer.write_bytes(bytes(buf))
    with pytest.raises(FormatError, match="newer than this volumed supports"):
        Volume.read_header(newer)


def test_gcm_resize_grows_and_keeps_data(written, kms):
    path, data = written
    with Volume.open(path, kms=kms) as vol:
        vol.resize(8 << 20)
        assert vol.read(0, 200 * SS) == data
        assert vol.read(6 << 20, SS) == bytes(SS)
        vol.write((8 << 20) - SS, b"e" * SS)
    with Volume.open(path, kms=kms) as vol:
        assert vol.size == 8 << 20
        assert vol.read((8 << 20) - SS, SS) == b"e" * SS


@pytest.mark.parametrize("field,value", [("size", 8 << 20), ("nonce_reserved", 5), ("doubtful", [[0, 1 << 40]]),
                                         ("db_id", "db-ABCDEFGHIJKLMNOPQRSTUVWXYZ"), ("sector_size", 512),
                                         ("ebs_id", "vol-0123456789abcdef0"),
                                         ("key_arn", "arn:aws:kms:us-east-1:111122223333:key/x")])
def test_altered_gcm_header_fails_its_mac(written, kms, field, value):
    """An attacker rewrites a header copy consistently (checksum fixed): the MAC refuses it."""
    path, _ = written
    os.truncate(path, F.file_size_for(8 << 20))
    b = BackingFile(path)
    h, _ = F.decode(lambda o, n: bytes(b.pread(o, n)))
    setattr(h, field, value)
    if field == "nonce_reserved":
        h.nonce_flushed = 5
    for seq in (h.seqid + 1, h.seqid + 2):
        h.seqid = seq
        off, data = F.encode_copy(h)
        b.pwrite(off, data)
    b.close()
    if field == "sector_size":  # only 4 KiB sectors exist: refused before the MAC is checked
        with pytest.raises(FormatError, match="sector size"):
            Volume.open(path, kms=kms)
    elif field == "key_arn":  # the key service refuses first (no such key), as for XTS
        with pytest.raises((IntegrityError, KeyAccessError)):
            Volume.open(path, kms=kms)
    else:
        with pytest.raises(IntegrityError, match="MAC"):
            Volume.open(path, kms=kms)


def test_flush_then_wipe_is_a_clean_close_but_unflushed_writes_are_not(make_volume, kms):
    """The mount's shutdown is flush, wipe_key, close: no doubtful counters should pile up."""
    path = make_volume("gcm", size=1 << 20)
    for _ in range(3):
        vol = Volume.open(path, kms=kms)
        vol.write(0, os.urandom(8 * SS))
        vol.flush()
        vol.wipe_key()
        vol.close()
    assert Volume.read_header(path).doubtful == []
    vol = Volume.open(path, kms=kms)
    vol.write(0, os.urandom(8 * SS))
    vol.wipe_key()  # revoked with unflushed writes: no I/O, the session stays unclean
    vol.close()
    vol = Volume.open(path, kms=kms)
    assert len(vol.header.doubtful) == 1
    vol.close()


def test_doubtful_ranges_stay_bounded(make_volume, kms, monkeypatch):
    monkeypatch.setattr(gcmstore, "MAX_DOUBTFUL", 3)
    path = make_volume("gcm", size=1 << 20)
    for _ in range(6):
        vol = Volume.open(path, kms=kms)
        vol.write(0, os.urandom(SS))
        vol.abandon()  # killed
    h = Volume.read_header(path)
    assert 1 <= len(h.doubtful) <= 3
