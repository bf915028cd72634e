"""Issue 13, items 1 and 2, carried out as attacks on GCM volumes (format 2):

- an older header (valid MAC) put back over the file, a file-level copy restored, and two copies
  of one file used at once: the next sessions count from the same reserved counter, and still no
  (key, nonce) pair repeats, because every session seals under its own subkey (the salt in each
  slot entry); a write after such a rollback still outranks what is on disk (skip-ahead);
- a power cut right after fsync: the acknowledged data reads back, and a flipped byte in its slot
  is an IntegrityError, not the older version;
- more than MAX_DOUBTFUL unclean sessions: resolved, never merged over counters that were clean;
- a crash between a flush's fdatasync and its nonce note: the data reads back, no pair repeats.

Every attack runs on both GCM stores: the native one (native/vc_gcmstore.c, the default) and the
Python reference (gcmstore.GcmStore, VOLUMED_CIPHER=reference).
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from volumed.errors import IntegrityError
from volumed.volume import Volume, gcmformat as F, gcmstore
from volumed.volume.backing import BackingFile, RecordingBackingFile, simulate_power_cut
from volumed.volume.cores import native_module

SS = 4096
SIZE = 1 << 20
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True, params=["native", "reference"])
def store(request, monkeypatch):
    """The GCM store every Volume.open of the test uses."""
    if request.param == "native" and native_module() is None:
        pytest.skip("needs the native extension")
    if request.param == "reference":
        monkeypatch.setenv("VOLUMED_CIPHER", "reference")
    return request.param


def _served_by(vol, store) -> None:
    assert (vol.native_core is not None) == (store == "native")


def _entries(path):
    """Every used slot of the file: (sector, slot, salt bytes, counter, tag bytes)."""
    b = BackingFile(path, readonly=True)
    out = []
    for g in range(F.groups_for(SIZE)):
        sub = F.slots(b.pread(F.meta_offset(g), SS))
        for i, k in zip(*np.nonzero(sub["ctr"])):
            out.append((g * F.GROUP_SECTORS + int(i), int(k), sub["salt"][i, k].astype(">u8").tobytes(),
                        int(sub["ctr"][i, k]), sub["tag"][i, k].astype(">u8").tobytes()))
    b.close()
    return out


def _ciphertext(path, sector, slot):
    g, i = divmod(sector, F.GROUP_SECTORS)
    with open(path, "rb") as f:
        f.seek(F.slot_offset(g, slot, i))
        return f.read(SS)


def _assert_no_pair_repeats(files, plain):
    """No (subkey, nonce) pair is used twice across ``files``, while counters alone do repeat (the
    attack took place). And the check that does not trust the salts: wherever two distinct
    encryptions share a counter, their ciphertexts' XOR is not their plaintexts' XOR (it would be
    under one key and nonce). ``plain`` maps (file, sector) to the plaintext written there."""
    seen, by_ctr = {}, {}
    for path in files:
        for sector, slot, salt, ctr, tag in _entries(path):
            if seen.get((salt, ctr), (None, None, None, None))[3] == (sector, tag):
                continue  # the same encryption, copied with the file before the copies diverged
            assert (salt, ctr) not in seen, f"(key, nonce) pair repeats: {seen[(salt, ctr)]} and {(path, sector)}"
            seen[(salt, ctr)] = (path, sector, slot, (sector, tag))
            by_ctr.setdefault(ctr, []).append((path, sector, slot))
    shared = [v for v in by_ctr.values() if len(v) > 1]
    assert shared, "the attack did not make counters collide"
    checked = 0
    for group in shared:
        for i, (p1, s1, k1) in enumerate(group):
            for p2, s2, k2 in group[i + 1:]:
                if (p1, s1) in plain and (p2, s2) in plain:
                    xc = bytes(a ^ b for a, b in zip(_ciphertext(p1, s1, k1), _ciphertext(p2, s2, k2)))
                    xp = bytes(a ^ b for a, b in zip(plain[(p1, s1)], plain[(p2, s2)]))
                    assert xc != xp, f"keystream reused: {(p1, s1)} and {(p2, s2)}"
                    checked += 1
    assert checked


def _write(vol, sectors, fill):
    plain = {}
    for s in sectors:
        plain[s] = bytes([fill]) * SS
        vol.write(s * SS, plain[s])
    vol.flush()
    return plain


def test_older_header_put_back_does_not_repeat_nonces(make_volume, kms):
    path = make_volume("gcm", size=SIZE)
    with open(path, "rb") as f:
        old_header = f.read(F.DATA_OFFSET)  # both header copies and the notes, valid MACs
    with Volume.open(path, kms=kms) as vol:
        p1 = _write(vol, range(0, 50), 0x11)
    with open(path, "r+b") as f:
        f.write(old_header)
    with Volume.open(path, kms=kms) as vol:  # counts from the same reservation as the first
        p2 = _write(vol, range(50, 100), 0x22)
    _assert_no_pair_repeats([path], {(path, s): p for s, p in {**p1, **p2}.items()})


def test_restored_file_copy_does_not_repeat_nonces(make_volume, kms, tmp_path):
    path = make_volume("gcm", size=SIZE)
    backup = str(tmp_path / "backup")
    shutil.copyfile(path, backup)
    with Volume.open(path, kms=kms) as vol:
        p1 = _write(vol, range(0, 60), 0x33)
    kept = str(tmp_path / "what-the-attacker-kept")
    shutil.copyfile(path, kept)
    shutil.copyfile(backup, path)  # the file-level backup comes back (a VM snapshot rolled back)
    with Volume.open(path, kms=kms) as vol:
        p2 = _write(vol, range(0, 60), 0x44)
    _assert_no_pair_repeats([path, kept], {**{(kept, s): p for s, p in p1.items()},
                                           **{(path, s): p for s, p in p2.items()}})


def test_two_copies_used_at_once_do_not_repeat_nonces(make_volume, kms, tmp_path):
    path = make_volume("gcm", size=SIZE)
    with Volume.open(path, kms=kms) as vol:
        _write(vol, range(0, 10), 0x55)
    twin = str(tmp_path / "twin.gcm")
    shutil.copyfile(path, twin)  # `cp` of the volume; both copies mounted
    a, b = Volume.open(path, kms=kms), Volume.open(twin, kms=kms)
    try:
        pa = _write(a, range(0, 80), 0x66)
        pb = _write(b, range(0, 80), 0x77)
    finally:
        a.close()
        b.close()
    _assert_no_pair_repeats([path, twin], {**{(path, s): p for s, p in pa.items()},
                                           **{(twin, s): p for s, p in pb.items()}})


def test_a_write_after_a_header_rollback_outranks_the_data_on_disk(make_volume, kms):
    path = make_volume("gcm", size=SIZE)
    with open(path, "rb") as f:
        old_header = f.read(F.DATA_OFFSET)
    with Volume.open(path, kms=kms) as vol:
        vol.write(0, b"x" * SS)
        vol.flush()
        vol.write(0, b"X" * SS)  # both slots used, with the session's first two counters
    with open(path, "r+b") as f:
        f.write(old_header)
    with Volume.open(path, kms=kms) as vol:
        vol.write(0, b"Y" * SS)  # would get the first counter again, below "X"'s
    with Volume.open(path, kms=kms) as vol:
        assert vol.read(0, SS) == b"Y" * SS


def _current(path, sector):
    ents = [e for e in _entries(path) if e[0] == sector]
    return max(ents, key=lambda e: e[3])


def test_power_cut_right_after_fsync_keeps_acknowledged_data_authenticated(make_volume, kms, tmp_path):
    path = make_volume("gcm", size=SIZE)
    with Volume.open(path, kms=kms) as vol:
        vol.write(0, b"A" * SS)
    journal = str(tmp_path / "journal")
    vol = Volume.open(path, kms=kms, backing=RecordingBackingFile(path, journal))
    vol.write(0, b"B" * SS)
    vol.flush()                 # acknowledged
    vol.abandon()               # the power goes: nothing after the flush reaches the disk
    simulate_power_cut(path, journal, mode="all")
    with Volume.open(path, kms=kms) as vol:
        assert vol.read(0, SS) == b"B" * SS
        _sector, _slot, _salt, ctr, _tag = _current(path, 0)
        assert not any(lo < ctr <= hi for lo, hi in vol.header.doubtful)
    _sector, slot, *_ = _current(path, 0)
    off = F.slot_offset(0, slot, 0) + 7
    with open(path, "r+b") as f:
        f.seek(off)
        byte = f.read(1)
        f.seek(off)
        f.write(bytes([byte[0] ^ 1]))
    with Volume.open(path, kms=kms) as vol:
        with pytest.raises(IntegrityError, match="sector 0 "):
            vol.read(0, SS)   # not "A" * SS: the older version is not returned silently


def test_unflushed_writes_may_still_fall_back_after_a_power_cut(make_volume, kms, tmp_path):
    """The crash guarantee stays: a write after the last flush that the power cut tore reads as
    the flushed version, without error."""
    path = make_volume("gcm", size=SIZE)
    with Volume.open(path, kms=kms) as vol:
        vol.write(0, b"A" * 4 * SS)
    for seed in range(6):
        journal = str(tmp_path / f"journal{seed}")
        vol = Volume.open(path, kms=kms, backing=RecordingBackingFile(path, journal))
        vol.write(0, os.urandom(4 * SS))
        vol.abandon()  # the process dies (a native core holds its own descriptor)
        simulate_power_cut(path, journal, mode="torn", seed=seed)
        with Volume.open(path, kms=kms) as vol:
            assert len(vol.read(0, 4 * SS)) == 4 * SS  # each sector old or new, never an error
            vol.write(0, b"A" * 4 * SS)


def test_many_unclean_sessions_are_resolved_not_merged(make_volume, kms, tmp_path, monkeypatch):
    monkeypatch.setattr(gcmstore, "MAX_DOUBTFUL", 3)
    path = make_volume("gcm", size=SIZE)
    clean_ctrs = []
    expect = {}
    for n in range(8):
        journal = str(tmp_path / f"j{n}")
        vol = Volume.open(path, kms=kms, backing=RecordingBackingFile(path, journal))
        # a clean, flushed write of its own sector (acknowledged: never doubtful) ...
        expect[60 + n] = bytes([n + 1]) * SS
        vol.write((60 + n) * SS, expect[60 + n])
        vol.flush()
        clean_ctrs.append(_current(path, 60 + n)[3])
        # ... then an unflushed write that the power cut tears (residue in a doubtful range)
        vol.write(n * SS, os.urandom(SS))
        vol.abandon()  # the process dies (a native core holds its own descriptor)
        simulate_power_cut(path, journal, mode="all")
        h = Volume.read_header(path)
        assert len(h.doubtful) <= 3
        for c in clean_ctrs:
            assert not any(lo < c <= hi for lo, hi in h.doubtful), "a clean counter became doubtful"
    with Volume.open(path, kms=kms) as vol:
        for s, want in expect.items():
            assert vol.read(s * SS, SS) == want
        assert vol.read(0, 8 * SS) == bytes(8 * SS)
    _s, slot, *_ = _current(path, 61)
    with open(path, "r+b") as f:
        f.seek(F.slot_offset(1, slot, 11) + 5)
        f.write(b"\xee\xee")
    with Volume.open(path, kms=kms) as vol:
        with pytest.raises(IntegrityError, match="sector 61 "):
            vol.read(61 * SS, SS)


def test_resolution_skips_a_damaged_metadata_page(make_volume, kms, monkeypatch):
    """A tampered metadata page does not stop the open that resolves the doubtful ranges; its
    sectors still fail to read."""
    monkeypatch.setattr(gcmstore, "MAX_DOUBTFUL", 1)
    path = make_volume("gcm", size=SIZE)
    with Volume.open(path, kms=kms) as vol:
        vol.write(0, os.urandom(4 * F.GROUP_SECTORS * SS))
    with open(path, "r+b") as f:
        f.seek(F.meta_offset(2) + 100)
        f.write(b"\x55")
    for _ in range(3):
        vol = Volume.open(path, kms=kms)
        vol.write(0, os.urandom(SS))
        vol.abandon()  # killed
    with Volume.open(path, kms=kms) as vol:
        assert len(vol.header.doubtful) <= 1
        with pytest.raises(IntegrityError, match="metadata of sectors 100-149"):
            vol.read(120 * SS, SS)


def test_a_crash_between_the_data_and_the_note_repeats_no_pair(make_volume, kms, store):
    """A flush's data made durable but the process dead before its nonce note was written (the
    notes as they were before the flush put back: the same bytes on disk): the data reads back (its
    counters are doubtful, and it verifies); the next session writes under a new subkey, so no
    (key, nonce) pair repeats although the counters come back."""
    path = make_volume("gcm", size=SIZE)
    plain = {}
    with Volume.open(path, kms=kms) as vol:
        _served_by(vol, store)
        plain.update({(path, s): p for s, p in _write(vol, range(4), 1).items()})
    old_header = open(path, "rb").read(F.DATA_OFFSET)
    vol = Volume.open(path, kms=kms)
    plain.update({(path, s): p for s, p in _write(vol, range(4, 8), 2).items()})
    vol.abandon()                 # the process dies after the flush ...
    with open(path, "r+b") as f:  # ... whose note had not been written
        f.seek(F.NOTE_OFFSET)
        f.write(old_header[F.NOTE_OFFSET:])
    with Volume.open(path, kms=kms) as vol:
        assert vol.header.doubtful, "the unnoted counters are doubtful"
        assert vol.read(0, 8 * SS) == bytes([1]) * 4 * SS + bytes([2]) * 4 * SS
    with open(path, "r+b") as f:
        f.write(old_header)       # the header from before that session: its counters again
    with Volume.open(path, kms=kms) as vol:  # (in a group the crashed session did not touch)
        plain.update({(path, s): p for s, p in _write(vol, range(60, 64), 3).items()})
        assert vol.read(0, 8 * SS) == bytes([1]) * 4 * SS + bytes([2]) * 4 * SS
    _assert_no_pair_repeats([path], plain)
