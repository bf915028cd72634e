"""Attacks on the native GCM store (native/vc_gcmstore.c) where it differs from the Python
reference: its metadata-page cache (pages written back at flush, or early when a cache slot is
needed), its in-memory counter (skip-ahead from pages on disk, many writer threads), the session
it continues from the Python GcmStore, and the argument checks of its Python binding.

The attacks shared with the reference store are in test_gcm_attacks.py; these run on the native
store only.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from volumed.errors import FormatError, IntegrityError, StateError, UsageError
from volumed.volume import Volume, gcmformat as F, gcmstore
from volumed.volume.backing import BackingFile, RecordingBackingFile, simulate_power_cut
from volumed.volume.cores import native_module
from volumed.volume.header import GCM_META_INFO, derive_key
from volumed.volume.keywrap import unwrap

SS = 4096
G = F.GROUP_SECTORS
pytestmark = [pytest.mark.timeout(300),
              pytest.mark.skipif(native_module() is None, reason="needs the native extension")]


def _native(vol) -> None:
    assert vol.native_core is not None, "the native GCM store serves this volume"


def _entries(path, size):
    """Every used slot of the file: (sector, slot, salt bytes, counter, tag bytes)."""
    b = BackingFile(path, readonly=True)
    out = []
    for g in range(F.groups_for(size)):
        sub = F.slots(b.pread(F.meta_offset(g), SS))
        for i, k in zip(*np.nonzero(sub["ctr"])):
            out.append((g * G + int(i), int(k), sub["salt"][i, k].astype(">u8").tobytes(),
                        int(sub["ctr"][i, k]), sub["tag"][i, k].astype(">u8").tobytes()))
    b.close()
    return out


def _meta_key(path, kms) -> bytearray:
    """The metadata key of the volume at path (what only a holder of the data key can forge with)."""
    h = Volume.read_header(path)
    key = unwrap(kms, h.key_arn, h.wrapped_key, h.context, expect_len=32)
    return derive_key(key, h.uuid, GCM_META_INFO)


# ---- 1. no (key, nonce) pair repeats -------------------------------------------------------------

def test_a_counter_at_the_top_of_u64_in_a_valid_page_never_wraps_the_session_counter(make_volume, kms):
    """A metadata page with a valid MAC (made by a holder of the key, or a corrupted counter that
    was sealed) holding counter 2^64-1: skip-ahead must not wrap the session counter to 0 (the
    "empty" counter, so the acknowledged write would read back as zeros, and the counters below the
    reservation would be used again). The reference refuses the write (nonce space used)."""
    size = 1 << 20
    path = make_volume("gcm", size=size)
    mk = _meta_key(path, kms)
    with open(path, "r+b") as f:
        f.seek(F.meta_offset(0))
        page = bytearray(f.read(SS))
        e = 1 * 2 * F.SLOT_BYTES  # sector 1, slot 0
        page[e:e + 16] = os.urandom(16)
        page[e + 16:e + 24] = (2 ** 64 - 1).to_bytes(8, "big")
        page[e + 24:e + 40] = os.urandom(16)
        F.seal_meta(mk, 0, page)
        f.seek(F.meta_offset(0))
        f.write(page)
    with Volume.open(path, kms=kms) as vol:
        _native(vol)
        try:
            vol.write(0, b"W" * SS)
            vol.flush()
        except StateError as exc:
            assert "nonce space" in str(exc)
        else:
            assert vol.read(0, SS) == b"W" * SS, "an acknowledged write reads back as zeros"


def test_many_writer_threads_never_share_a_counter(make_volume, kms):
    """Four threads write sectors of the same groups (each sector once, so every encryption stays
    on disk) while a fifth flushes: every slot has its own counter under the one session salt, and
    every sector reads what was written."""
    size = 4 * G * SS
    path = make_volume("gcm", size=size)
    nsec = size // SS
    want = {}
    errors = []
    stop = threading.Event()

    def writer(t):
        try:
            for s in range(t, nsec, 4):
                data = bytes([t + 1]) * 8 + os.urandom(SS - 8)
                want[s] = data
                vol.write(s * SS, data)
        except BaseException as exc:  # reported below
            errors.append(exc)

    def flusher():
        while not stop.is_set():
            vol.flush()

    with Volume.open(path, kms=kms) as vol:
        _native(vol)
        ts = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
        f = threading.Thread(target=flusher)
        f.start()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        stop.set()
        f.join()
        assert not errors, errors
        for s, data in want.items():
            assert vol.read(s * SS, SS) == data
    ents = _entries(path, size)
    assert len(ents) == nsec
    assert len({e[2] for e in ents}) == 1
    ctrs = [e[3] for e in ents]
    assert len(set(ctrs)) == len(ctrs), "two sectors sealed under one (subkey, nonce)"


def test_the_native_store_continues_the_python_session_and_the_python_cipher_is_closed(
        make_volume, kms, monkeypatch):
    """The Python GcmStore begins the session (salt, reservation); the native store seals under
    that salt, and the Python session cipher is closed before the volume is served, so the salt has
    exactly one encryptor. The next open draws another salt."""
    made = []
    real = gcmstore.SectorKeys

    class Spy(real):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(self)

    monkeypatch.setattr(gcmstore, "SectorKeys", Spy)
    monkeypatch.setattr("volumed.volume.formats.SectorKeys", Spy)
    size = 1 << 20
    path = make_volume("gcm", size=size)
    salts = []
    for n in range(2):
        with Volume.open(path, kms=kms) as vol:
            _native(vol)
            keys = made[-1]
            with pytest.raises(Exception):
                keys.session().encrypt(bytes(SS), 0, bytes(12), bytearray(16), out=bytearray(SS))
            vol.write(n * SS, b"S" * SS)
        salts.append(keys.salt)
        got = [e[2] for e in _entries(path, size) if e[0] == n]
        assert got == [keys.salt]
    assert salts[0] != salts[1]


# ---- 3. durability: the metadata cache and power cuts ---------------------------------------------

@pytest.fixture
def colliding(make_volume, kms):
    """A sparse volume whose groups 0 and 4096 share a slot of the native metadata cache, with a
    flushed version in sectors 0-3 and 4096*50 + 0-3."""
    groups = gcmstore.META_CACHE_PAGES + 1
    size = groups * G * SS
    path = make_volume("gcm", size=size)
    far = gcmstore.META_CACHE_PAGES * G
    with Volume.open(path, kms=kms) as vol:
        _native(vol)
        vol.write(0, b"a" * 4 * SS)
        vol.write(far * SS, b"b" * 4 * SS)
    return path, size, far


def _evicting_writes(vol, far, x, y):
    vol.write(0, x * 4 * SS)         # group 0's page dirty in the cache
    vol.write(far * SS, y * 4 * SS)  # evicts it: written before any fdatasync
    vol.write(SS, x * SS)            # group 0 again (dirty sector: the volatile slot), evicts 4096
    vol.write(far * SS, y * SS)


@pytest.mark.parametrize("mode", ["all", "random", "torn"])
def test_metadata_pages_evicted_before_the_flush_keep_old_or_new_after_a_power_cut(
        colliding, kms, tmp_path, mode):
    path, size, far = colliding
    for seed in range(4):
        journal = str(tmp_path / f"j{mode}{seed}")
        vol = Volume.open(path, kms=kms, backing=RecordingBackingFile(path, journal))
        _native(vol)
        _evicting_writes(vol, far, b"X", b"Y")
        vol.abandon()
        simulate_power_cut(path, journal, mode=mode, seed=seed)
        with Volume.open(path, kms=kms) as vol:
            for s in range(4):
                assert vol.read(s * SS, SS) in (b"a" * SS, b"X" * SS), (seed, s)
                assert vol.read((far + s) * SS, SS) in (b"b" * SS, b"Y" * SS), (seed, s)
            vol.write(0, b"a" * 4 * SS)  # the flushed version again for the next round
            vol.write(far * SS, b"b" * 4 * SS)


def test_evicted_pages_and_a_flush_make_the_writes_durable_and_not_doubtful(colliding, kms, tmp_path):
    path, size, far = colliding
    journal = str(tmp_path / "j")
    vol = Volume.open(path, kms=kms, backing=RecordingBackingFile(path, journal))
    _evicting_writes(vol, far, b"X", b"Y")
    vol.flush()  # acknowledged
    vol.abandon()
    simulate_power_cut(path, journal, mode="all")
    with Volume.open(path, kms=kms) as vol:
        assert vol.read(0, 4 * SS) == b"X" * 4 * SS
        assert vol.read(far * SS, 4 * SS) == b"Y" * 4 * SS
        doubtful = list(vol.header.doubtful)
    b = BackingFile(path, readonly=True)
    for g, i in ((0, 1), (gcmstore.META_CACHE_PAGES, 0)):
        sub = F.slots(b.pread(F.meta_offset(g), SS))
        k = int(sub["ctr"][i, 1] > sub["ctr"][i, 0])
        ctr = int(sub["ctr"][i, k])
        assert not any(lo < ctr <= hi for lo, hi in doubtful), "an acknowledged write is doubtful"
        off = F.slot_offset(g, k, i)
    b.close()
    with open(path, "r+b") as f:  # tamper with the acknowledged slot of the far sector
        f.seek(off + 9)
        f.write(b"\x00\x01")
    with Volume.open(path, kms=kms) as vol:
        with pytest.raises(IntegrityError, match=f"sector {far} "):
            vol.read(far * SS, SS)


# ---- 2. integrity on the native path --------------------------------------------------------------

def test_a_metadata_page_moved_to_another_group_or_swapped_slots_fail(make_volume, kms):
    size = 3 * G * SS
    path = make_volume("gcm", size=size)
    with Volume.open(path, kms=kms) as vol:
        vol.write(0, os.urandom(size))
        vol.flush()
        vol.write(0, os.urandom(size))  # both slots of every sector hold data
    with open(path, "r+b") as f:
        f.seek(F.meta_offset(0))
        p0 = f.read(SS)
        f.seek(F.slot_offset(1, 0, 3))
        s0 = f.read(SS)
        f.seek(F.slot_offset(1, 1, 3))
        s1 = f.read(SS)
        f.seek(F.meta_offset(2))
        f.write(p0)           # group 0's page (valid MAC for group 0) over group 2's
        f.seek(F.slot_offset(1, 0, 3))
        f.write(s1)           # slot swap of sector 53
        f.seek(F.slot_offset(1, 1, 3))
        f.write(s0)
    with Volume.open(path, kms=kms) as vol:
        _native(vol)
        with pytest.raises(IntegrityError, match="metadata of sectors 100-149"):
            vol.read(100 * SS, SS)
        with pytest.raises(IntegrityError, match="sector 53 "):
            vol.read(53 * SS, SS)
        assert len(vol.read(0, 50 * SS)) == 50 * SS  # the rest is untouched


# ---- 4. the binding's argument checks -------------------------------------------------------------

@pytest.mark.parametrize("off,length", [(1 << 20, 1), ((1 << 64) - SS, SS), ((1 << 63), SS),
                                        (SS, (1 << 64) - SS), ((1 << 20) - SS, 2 * SS)])
def test_out_of_range_requests_to_the_native_core_are_refused(make_volume, kms, off, length):
    path = make_volume("gcm", size=1 << 20)
    with Volume.open(path, kms=kms) as vol:
        core = vol.native_core
        assert core is not None
        with pytest.raises((UsageError, ValueError, OverflowError)):
            core.read(off, length)
        with pytest.raises((UsageError, ValueError, OverflowError)):
            core.discard(off, length)
        if length <= 2 * SS:
            with pytest.raises((UsageError, ValueError, OverflowError)):
                core.write(off, bytes(length))
        assert core.read(0, SS) == bytes(SS)


@pytest.mark.parametrize("first,n", [(0, 1 << 52), (1 << 63, 1), (256, 1), (255, 2), (0, (1 << 63) - 1)])
def test_record_reads_out_of_range_are_refused_before_any_buffer_is_filled(make_volume, kms, first, n):
    """n * record size overflows for the larger counts: the range check must come first."""
    path = make_volume("gcm", size=1 << 20)
    with Volume.open(path, kms=kms) as vol:
        core = vol.native_core
        for call in (core.read_records, core.read_sealed):
            with pytest.raises((UsageError, ValueError, OverflowError, MemoryError, StateError)):
                call(first, n)
        assert core.read_records(255, 1) == [None]


def test_a_malformed_gcm_session_tuple_is_refused(make_volume, kms):
    mod = native_module()
    path = make_volume("gcm", size=1 << 20)
    fd = os.open(path, os.O_RDWR)
    try:
        good = (bytearray(32), bytearray(32), bytearray(32), bytes(16), bytes(16), 1, 1, 0, 0, 0,
                1 << 20, (1 << 63) - 1, b"", "{}", "{}")
        for bad in (good[:3] + (bytes(15),) + good[4:], good[:12] + (b"x" * 17,) + good[13:],
                    good[:2] + (bytearray(31),) + good[3:], good[:11] + ((1 << 64) - 1,) + good[12:],
                    good[:10] + (0,) + good[11:], good[:5] + (0,) + good[6:], good[:5]):
            with pytest.raises((ValueError, TypeError)):
                mod.VolumeCore(cipher="gcm", key=bytearray(32), data_offset=F.DATA_OFFSET,
                               size=1 << 20, name=path, fd=fd, gcm=bad)
    finally:
        os.close(fd)


# ---- a flush whose nonce note failed --------------------------------------------------------------

class _NoteFailsOnce(RecordingBackingFile):
    """The power-loss recorder whose next durable write (the nonce note) fails once with EIO. A
    subclass, so the reference core serves it (native_spec is None): the native store has the same
    flush order and no hook to fail only the note write."""

    fail_next = False

    def pwrite_durable(self, offset, data):
        if self.fail_next:
            self.fail_next = False
            raise OSError(5, "simulated EIO on the nonce note")
        return super().pwrite_durable(offset, data)


def test_a_flush_after_a_failed_nonce_note_writes_the_note_it_owes(make_volume, kms, tmp_path):
    """flush() fails when its note write fails; the next flush() succeeds and acknowledges the
    write. That write must not be doubtful after a power cut: a flipped byte in it is an
    IntegrityError, not a silent rollback to the older version."""
    path = make_volume("gcm", size=1 << 20)
    journal = str(tmp_path / "j")
    backing = _NoteFailsOnce(path, journal)
    vol = Volume.open(path, kms=kms, backing=backing)
    vol.write(0, b"A" * SS)
    vol.flush()
    vol.write(0, b"B" * SS)
    backing.fail_next = True
    with pytest.raises(OSError):
        vol.flush()
    vol.flush()  # acknowledged
    vol.abandon()
    simulate_power_cut(path, journal, mode="all")
    with Volume.open(path, kms=kms) as vol:
        assert vol.read(0, SS) == b"B" * SS
    sector, slot, _salt, ctr, _tag = max((e for e in _entries(path, 1 << 20) if e[0] == 0),
                                         key=lambda e: e[3])
    with open(path, "r+b") as f:
        f.seek(F.slot_offset(0, slot, 0) + 3)
        byte = f.read(1)[0]
        f.seek(F.slot_offset(0, slot, 0) + 3)
        f.write(bytes([byte ^ 0xa5]))
    with Volume.open(path, kms=kms) as vol:
        with pytest.raises(IntegrityError, match="sector 0 "):
            vol.read(0, SS)  # not "A" * SS


# ---- a write that fails half-way over a volatile slot ---------------------------------------------

@pytest.mark.parametrize("store", ["native", "reference"])
def test_a_write_that_fails_half_way_never_costs_an_earlier_write(make_volume, kms, monkeypatch, store):
    """Sectors 10 and 11 written (W1, returned) since the last flush, so a second write to them
    (W2) rewrites their volatile slot in place. W2 fails after its first page landed (the file size
    limit stands for ENOSPC or EIO half-way through a multi-page pwrite). W2 raised; the flush
    after it succeeds. Sector 10 must then read W1 or the flushed version, never fail as tampered."""
    import resource
    import signal

    if store == "reference":
        monkeypatch.setenv("VOLUMED_CIPHER", "reference")
    path = make_volume("gcm", size=1 << 20)
    with Volume.open(path, kms=kms) as vol:
        assert (vol.native_core is not None) == (store == "native")
        vol.write(10 * SS, b"A" * 2 * SS)
        vol.flush()
        vol.write(10 * SS, b"1" * 2 * SS)  # W1: slot 0 of sectors 10 and 11 (A is in slot 1), volatile
        old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (F.slot_offset(0, 0, 11), hard))
        try:
            with pytest.raises(OSError):
                vol.write(10 * SS, b"2" * 2 * SS)  # W2: sector 10's page lands, 11's does not
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            signal.signal(signal.SIGXFSZ, old)
        vol.flush()
        assert vol.read(10 * SS, SS) in (b"1" * SS, b"2" * SS, b"A" * SS)
        assert vol.read(11 * SS, SS) in (b"1" * SS, b"A" * SS)
    with Volume.open(path, kms=kms) as vol:
        assert vol.read(10 * SS, SS) in (b"1" * SS, b"2" * SS, b"A" * SS)


# ---- the subkey cache: more sessions than it keeps ---------------------------------------------

def test_reads_across_more_sessions_than_the_subkey_cache_holds_from_many_threads(make_volume, kms):
    """CIPHER_CACHE + 8 sessions each wrote one sector (each slot under its own salt); four threads
    then read them all, in different orders, twice: subkeys are evicted while other threads use
    them (reference-counted; run under ASan to see a use after free)."""
    n = gcmstore.CIPHER_CACHE + 8
    size = (n + G - 1) // G * G * SS
    path = make_volume("gcm", size=size)
    want = {}
    for s in range(n):
        with Volume.open(path, kms=kms) as vol:
            want[s] = s.to_bytes(4, "big") * (SS // 4)
            vol.write(s * SS, want[s])
    assert len({e[2] for e in _entries(path, size)}) == n
    errors = []

    def reader(vol, order):
        try:
            for _ in range(2):
                for s in order:
                    assert vol.read(s * SS, SS) == want[s], s
                assert vol.read(0, n * SS) == b"".join(want[s] for s in range(n))
        except BaseException as exc:  # reported below
            errors.append(exc)

    with Volume.open(path, kms=kms) as vol:
        _native(vol)
        orders = [list(range(n)), list(range(n))[::-1], list(range(0, n, 2)) + list(range(1, n, 2)),
                  sorted(range(n), key=lambda s: (s * 7919) % n)]
        ts = [threading.Thread(target=reader, args=(vol, o)) for o in orders]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    assert not errors, errors[0]


# ---- resize and power cuts ------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["all", "random", "torn"])
def test_a_power_cut_during_or_after_a_grow_keeps_the_data_and_opens(make_volume, kms, tmp_path, mode):
    """A grow from a partial last group (60 sectors) to 260 sectors, with unflushed writes on both
    sides of the old end, then the power goes: the volume opens at the old or the new size, every
    flushed sector reads its version, the others old or new, and the grown area reads zeros."""
    old, new = 60 * SS, 260 * SS
    path = make_volume("gcm", size=old)
    with Volume.open(path, kms=kms) as vol:
        vol.write(0, b"f" * old)
    for seed in range(3):
        journal = str(tmp_path / f"j{mode}{seed}")
        vol = Volume.open(path, kms=kms, backing=RecordingBackingFile(path, journal))
        _native(vol)
        grown = vol.size == new
        if not grown:
            vol.write(55 * SS, b"u" * 5 * SS)  # unflushed, before the grow's fdatasync
            vol.resize(new)
        vol.write(58 * SS, b"v" * 4 * SS)      # across the old end, unflushed
        vol.abandon()
        simulate_power_cut(path, journal, mode=mode, seed=seed)
        with Volume.open(path, kms=kms) as vol:
            assert vol.size in (old, new)
            assert vol.read(0, 55 * SS) == b"f" * 55 * SS
            for s in range(55, 60):
                assert vol.read(s * SS, SS) in (b"f" * SS, b"u" * SS, b"v" * SS), (seed, s)
            if vol.size == new:
                for s in range(60, 62):
                    assert vol.read(s * SS, SS) in (bytes(SS), b"v" * SS), (seed, s)
                assert vol.read(62 * SS, new - 62 * SS) == bytes(new - 62 * SS)
                vol.write(new - SS, b"e" * SS)
                vol.flush()
                assert vol.read(new - SS, SS) == b"e" * SS
                vol.write(new - SS, bytes(SS))


@pytest.mark.parametrize("chunk", [1 << 20, 8])
@pytest.mark.parametrize("mode", ["all", "random", "torn"])
def test_random_workloads_over_colliding_cache_slots_survive_repeated_power_cuts(
        colliding, kms, tmp_path, monkeypatch, mode, chunk):
    """Rounds of random writes, zero writes and flushes over groups 0, 1 and 4096 (0 and 4096
    share a native cache slot, so pages are evicted and written early), each round ending in a
    power cut and starting from the state the last one left: every sector reads its version at the
    round's last completed flush or one written after it, never an error. With a reservation of 8
    counters, header copies are written (and torn) in the middle of the workload too."""
    import random

    monkeypatch.setattr(gcmstore, "RESERVE_CHUNK", chunk)
    path, size, far = colliding
    sectors = [g * G + i for g in (0, 1, gcmstore.META_CACHE_PAGES)
               for i in (0, 1, 2, 48, 49)]
    with Volume.open(path, kms=kms) as vol:
        durable = {s: vol.read(s * SS, SS) for s in sectors}
    rng = random.Random(f"{mode}{chunk}")
    for rnd in range(6):
        journal = str(tmp_path / f"j{rnd}")
        vol = Volume.open(path, kms=kms, backing=RecordingBackingFile(path, journal))
        _native(vol)
        assert vol.native_core.gcm_state()[1] - vol.native_core.gcm_state()[3] < chunk
        later = {s: set() for s in sectors}
        for _ in range(40):
            op = rng.random()
            s = rng.choice(sectors)
            if op < 0.15:
                vol.flush()
                for t in sectors:
                    durable[t] = vol.read(t * SS, SS)
                    later[t] = set()
            elif op < 0.3:
                vol.write(s * SS, bytes(SS))
                later[s].add(bytes(SS))
            else:
                data = bytes([rnd, rng.randrange(256)]) * (SS // 2)
                vol.write(s * SS, data)
                later[s].add(data)
        vol.abandon()
        simulate_power_cut(path, journal, mode=mode, seed=rnd)
        with Volume.open(path, kms=kms) as vol:
            for s in sectors:
                got = bytes(vol.read(s * SS, SS))
                assert got == durable[s] or got in later[s], (rnd, s)
                durable[s] = got


def test_a_truncated_file_is_refused_at_open_and_left_as_it_is(make_volume, kms):
    """The file cut short (a bad copy, a full disk during cp): the open refuses it with one line
    (it would otherwise read zeros past the end of file) and writes nothing."""
    size = 3 * G * SS
    path = make_volume("gcm", size=size)
    with Volume.open(path, kms=kms) as vol:
        vol.write(0, os.urandom(size))
    os.truncate(path, F.slot_offset(1, 1, 10))  # group 1's slot 1 from sector 60 on, and group 2
    before = open(path, "rb").read()
    with pytest.raises(FormatError, match="truncated"):
        Volume.open(path, kms=kms)
    assert open(path, "rb").read() == before


# ---- a reservation whose header write failed ------------------------------------------------------

class _HeaderFailsOnce(BackingFile):
    """A backing file whose next header-copy write fails once with EIO (a subclass: the reference
    core serves it; the native reserve() has the same order and no hook to fail only the header)."""

    fail_next = False

    def pwrite(self, offset, data):
        if self.fail_next and offset < F.NOTE_OFFSET:
            self.fail_next = False
            raise OSError(5, "simulated EIO on a header copy")
        return super().pwrite(offset, data)


def test_no_counter_is_used_past_the_durable_reservation_after_a_failed_header_write(
        make_volume, kms, monkeypatch):
    """A reservation's header write fails: that write raises, and no later write may use counters
    of the reservation that never reached the disk (after a crash they would not be doubtful, so
    their torn slots would read as tampered, and the next session would start below them). The
    retry writes the copy that failed again (same seqid), never over the other, still the only
    durable valid one."""
    monkeypatch.setattr(gcmstore, "RESERVE_CHUNK", 4)
    size = 1 << 20
    path = make_volume("gcm", size=size)
    backing = _HeaderFailsOnce(path)
    vol = Volume.open(path, kms=kms, backing=backing)
    try:
        vol.write(0, os.urandom(3 * SS))
        vol.flush()
        backing.fail_next = True
        with pytest.raises(OSError):
            for s in range(3, 12):
                vol.write(s * SS, os.urandom(SS))
        vol.write(20 * SS, os.urandom(SS))
        vol.write(21 * SS, os.urandom(SS))
        vol.flush()
        top = max(e[3] for e in _entries(path, size))
        assert top <= Volume.read_header(path).nonce_reserved, "a counter past the durable reservation"
        with open(path, "rb") as f:  # the retry rewrote the failed copy, not the valid one
            raw = f.read(2 * 16384)
        seqids = sorted(int.from_bytes(raw[c * 16384 + 16:c * 16384 + 24], "big") for c in (0, 1))
        assert seqids[1] == seqids[0] + 1, seqids
    finally:
        vol.abandon()


@pytest.mark.parametrize("new_size", [(1 << 64) - SS, 1 << 63, (1 << 62) + SS])
def test_a_grow_whose_file_offsets_overflow_is_refused_by_the_core(make_volume, kms, new_size):
    """gcm_grow takes the size from its caller (Volume.resize caps it at 1 PiB first): a size whose
    last group's offset does not fit in 64 bits must be refused before any page is written (the
    offsets would wrap onto the volume's own data)."""
    path = make_volume("gcm", size=1 << 20)
    with Volume.open(path, kms=kms) as vol:
        vol.write(0, b"k" * SS)
        vol.flush()
        before = open(path, "rb").read()[F.DATA_OFFSET:]
        with pytest.raises((UsageError, ValueError, OverflowError)):
            vol.native_core.gcm_grow(new_size, *F.header_templates(vol.header))
        assert open(path, "rb").read()[F.DATA_OFFSET:] == before
        assert vol.read(0, SS) == b"k" * SS
