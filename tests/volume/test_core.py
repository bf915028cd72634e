"""The native volume core (native/vcore.c, volumed._native.VolumeCore) against the reference
(volumed.volume.refcore): the same random request sequences through both give the same replies and
byte-identical backing files; overlapping requests from many threads behave as some serial order;
the power-loss recorder, the capture session and the key latch keep their rules; native calls run
without the GIL."""

from __future__ import annotations

import os
import random
import re
import shutil
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.volume.conftest import raw_key
from volumed.errors import KeyAccessError, StateError, UsageError
from volumed.volume import RecordingBackingFile, Volume, simulate_power_cut
from volumed.volume import gcmformat as F, gcmstore
from volumed.volume.cores import native_module
from volumed.volume.header import MAC_INFO, derive_key, verify_mac

pytestmark = [pytest.mark.timeout(300),
              pytest.mark.skipif(native_module() is None, reason="needs the native extension")]

SS = 4096
SIZE = 64 * SS


def _pair(make_volume, kms, tmp_path, cipher: str):
    """Open(core) -> Volume for two copies of one new volume: native and reference."""
    path = make_volume(cipher, size=SIZE)
    key = bytes(raw_key(kms, path))
    opened = []

    def open_(core: str, backing=None) -> Volume:
        copy = str(tmp_path / f"copy-{len(opened)}-{core}")
        shutil.copyfile(path, copy)
        vol = Volume._open_with_key(copy, bytearray(key), core=core,
                                    backing=backing(copy) if backing else None)
        opened.append(vol)
        return vol

    open_.key = key
    yield open_
    for v in opened:
        v.close()


@pytest.fixture
def pair(make_volume, kms, tmp_path):
    yield from _pair(make_volume, kms, tmp_path, "xts")


@pytest.fixture
def gcm_pair(make_volume, kms, tmp_path, monkeypatch):
    """The same for GCM, every session with one salt (so both files can be byte-identical)."""
    monkeypatch.setattr(gcmstore, "new_salt", lambda: b"\x5a" * 16)
    yield from _pair(make_volume, kms, tmp_path, "gcm")


@pytest.fixture(params=["xts", "gcm"])
def any_pair(request):
    return request.getfixturevalue("pair" if request.param == "xts" else "gcm_pair")


def _outcome(fn, *args):
    try:
        r = fn(*args)
        return ("ok", bytes(r) if isinstance(r, (bytes, bytearray)) else r)
    except Exception as exc:  # noqa: BLE001 - the reply, compared across cores
        return (type(exc).__name__, re.sub(r"copy-\d+-\w+", "X", str(exc)))


offsets = st.integers(min_value=0, max_value=SIZE + 2 * SS)
lengths = st.integers(min_value=0, max_value=6 * SS)
ops = st.lists(st.tuples(st.sampled_from(["write", "zeros", "read", "discard", "flush"]), offsets,
                         lengths, st.integers(0, 255)), min_size=1, max_size=25)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seq=ops)
def test_differential_native_and_reference(any_pair, seq):
    """Random reads/writes/discards/flushes (partial sectors, holes, past the end) through both
    cores, XTS and GCM (the native GCM store against the Python GcmStore): equal replies and
    errors, byte-identical files (GCM: headers, notes, metadata pages and slots)."""
    pair = any_pair
    native, ref = pair("native"), pair("reference")
    assert native.native_core is not None and ref.native_core is None
    for op, off, ln, b in seq:
        data = bytes([b]) * ln
        if op == "write":
            calls = [(v.write, off, random.Random(b).randbytes(ln)) for v in (native, ref)]
        elif op == "zeros":
            calls = [(v.write, off, data) for v in (native, ref)]
        elif op == "read":
            calls = [(v.read, off, ln) for v in (native, ref)]
        elif op == "discard":
            calls = [(v.discard, off, ln) for v in (native, ref)]
        else:
            calls = [(v.flush,) for v in (native, ref)]
        a, r = (_outcome(*c) for c in calls)
        assert a == r, (op, off, ln)
    assert native.read(0, SIZE) == ref.read(0, SIZE)
    assert native.read_records(0, SIZE // SS) == ref.read_records(0, SIZE // SS)
    native.flush()
    ref.flush()
    with open(native.path, "rb") as f1, open(ref.path, "rb") as f2:
        assert f1.read() == f2.read()
    native.close()
    ref.close()


def test_errors_and_the_key_latch_read_the_same(any_pair):
    pair = any_pair
    native, ref = pair("native"), pair("reference")
    for v in (native, ref):
        with pytest.raises(UsageError, match=r"write of 10 bytes at .* is outside the volume"):
            v.write(SIZE - 5, b"x" * 10)
        v.wipe_key()
        with pytest.raises(KeyAccessError, match="has been wiped"):
            v.read(0, 1)
        with pytest.raises(KeyAccessError):
            v.write(0, b"x")
        with pytest.raises(KeyAccessError):
            v.flush()


def test_export_is_the_same_image(pair, tmp_path):
    from volumed.volume.export import export_luks

    native, ref = pair("native"), pair("reference")
    for v in (native, ref):
        v.write(5 * SS + 7, b"data" * 3000)
        v.discard(30 * SS, 4 * SS)
    export_luks(native, tmp_path / "n.img")
    export_luks(ref, tmp_path / "r.img")
    base = native.header.data_offset  # the header copies carry fresh random salts
    assert (tmp_path / "n.img").read_bytes()[base:] == (tmp_path / "r.img").read_bytes()[base:]


def test_capture_sessions_agree(any_pair):
    """A capture session with writes landing ahead of the copier: both cores hand out the
    records as they were at the barrier."""
    pair = any_pair
    native, ref = pair("native"), pair("reference")
    got = []
    for v in (native, ref):
        v.write(0, random.Random(1).randbytes(SIZE // 2))
        with v.begin_capture() as session:
            recs = session.read_records(0, 8)
            v.write(4 * SS, b"a" * 8 * SS)          # partly behind the copier, partly ahead
            v.discard(20 * SS, 4 * SS)
            v.write(40 * SS + 100, b"b" * SS)       # a hole before, partial sectors
            recs += session.read_records(8, SIZE // SS - 8)
            stats = (session.captured, session.peak_kept, session.kept_bytes)
            with pytest.raises(StateError, match="already being taken"):
                v.begin_capture()
        assert not v.may_block
        got.append((recs, stats))
    assert got[0] == got[1]


def test_overlapping_writes_from_threads_are_some_serial_order(any_pair):
    """16 threads write the same unaligned range with their own byte, and 16 more rewrite their own
    256-byte piece of one sector again and again (read-modify-write under the lock): the range is
    wholly one writer's, and no piece of the shared sector is lost."""
    vol = any_pair("native")
    off, ln = 3 * SS + 100, 10 * SS
    errors = []

    def whole(i):
        try:
            for _ in range(20):
                vol.write(off, bytes([i]) * ln)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    def piece(i):
        try:
            for k in range(40):
                vol.write(30 * SS + i * 256, bytes([(i * 7 + k) % 256]) * 256)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=whole, args=(i + 1,)) for i in range(16)]
    threads += [threading.Thread(target=piece, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    data = vol.read(off, ln)
    assert data == bytes([data[0]]) * ln and data[0] != 0
    assert vol.read(off - 100, 100) == bytes(100) and vol.read(off + ln, 50) == bytes(50)
    sector = vol.read(30 * SS, SS)
    for i in range(16):
        assert sector[i * 256:(i + 1) * 256] == bytes([(i * 7 + 39) % 256]) * 256, i


def test_reads_sharing_lock_units_see_each_write_whole(any_pair):
    """8 threads read overlapping spans of one GCM group (reads share their lock units) while 4
    threads rewrite the whole span with their own byte: every read returns one writer's bytes
    throughout, never a write half done, and the readers' overlapping spans agree with it."""
    vol = any_pair("native")
    off, ln = 10 * SS, 30 * SS
    vol.write(off, b"\x01" * ln)
    errors = []
    deadline = time.monotonic() + 1.5

    def writer(i):
        try:
            while time.monotonic() < deadline:
                vol.write(off, bytes([i]) * ln)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    def reader(i):
        try:
            while time.monotonic() < deadline:
                a = off + (i % 4) * 3 * SS + i * 7
                data = vol.read(a, ln - 12 * SS)
                assert data == bytes([data[0]]) * len(data) and data[0] in (1, 2, 3, 4, 5), i
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(2, 6)]
    threads += [threading.Thread(target=reader, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    data = vol.read(off, ln)
    assert data == bytes([data[0]]) * ln


@pytest.mark.parametrize("mode", ["all", "random", "torn"])
def test_native_power_cut_recorder(any_pair, tmp_path, mode):
    """The native core keeps RecordingBackingFile's undo journal itself (XTS and GCM): after the
    process dies, simulate_power_cut leaves every sector old or new, and "all" gives back the
    flushed state."""
    pair = any_pair
    journal = str(tmp_path / "journal")
    vol = pair("native", backing=lambda p: RecordingBackingFile(p, journal))
    assert vol.native_core is not None
    rng = random.Random(mode)
    old, new = rng.randbytes(SIZE), rng.randbytes(SIZE)
    vol.write(0, old)
    vol.flush()
    assert vol.format.name == "gcm" or os.path.getsize(journal) == 0  # GCM: the note follows the sync
    for off in range(0, SIZE, 4 * SS):   # unaligned: each write read-modify-writes two edges
        vol.write(off + 10, new[off + 10:min(off + 4 * SS + 10, SIZE)])
    vol.abandon()
    report = simulate_power_cut(vol.path, journal, mode=mode, seed=3)
    assert report.writes >= SIZE // (4 * SS)
    with Volume._open_with_key(vol.path, bytearray(pair.key)) as v2:
        data = v2.read(0, SIZE)
    versions = [old]                   # every state the file passed through
    cur = bytearray(old)
    for off in range(0, SIZE, 4 * SS):
        end = min(off + 4 * SS + 10, SIZE)
        cur[off + 10:end] = new[off + 10:end]
        versions.append(bytes(cur))
    for s in range(SIZE // SS):
        piece = data[s * SS:(s + 1) * SS]
        assert any(piece == v[s * SS:(s + 1) * SS] for v in versions), s
    if mode == "all":
        assert data == old


@pytest.mark.parametrize("writer", ["native", "reference"])
def test_gcm_files_open_with_either_store(gcm_pair, writer):
    """A GCM file written (and resized, zeroed, left dirty) by one store reads the same through the
    other: the same format."""
    reader = "reference" if writer == "native" else "native"
    vol = gcm_pair(writer)
    rng = random.Random(writer)
    data = bytearray(rng.randbytes(SIZE))
    vol.write(0, data)
    vol.flush()
    vol.write(3 * SS + 5, b"z" * 7000)
    data[3 * SS + 5:3 * SS + 7005] = b"z" * 7000
    vol.discard(20 * SS, 9 * SS)
    data[20 * SS:29 * SS] = bytes(9 * SS)
    vol.resize(2 * SIZE)
    vol.write(SIZE + 60 * SS, b"g" * SS)
    data += bytes(SIZE)
    data[SIZE + 60 * SS:SIZE + 61 * SS] = b"g" * SS
    vol.close()
    with Volume._open_with_key(vol.path, bytearray(gcm_pair.key), core=reader) as other:
        assert other.size == 2 * SIZE and other.read(0, 2 * SIZE) == data
        assert (other.native_core is not None) == (reader == "native")
        other.write(7 * SS, b"r" * SS)
        data[7 * SS:8 * SS] = b"r" * SS
    with Volume._open_with_key(vol.path, bytearray(gcm_pair.key), core=writer) as again:
        assert again.read(0, 2 * SIZE) == data


def test_native_gcm_header_copies_are_the_python_encoding(gcm_pair):
    """With doubtful ranges (unclean sessions), the header copy the native store writes at close
    verifies and is byte for byte gcmformat.encode_copy of what it says."""
    vol = gcm_pair("native")
    path = vol.path
    vol.abandon()
    for _ in range(2):
        v = Volume._open_with_key(path, bytearray(gcm_pair.key))
        v.write(0, os.urandom(2 * SS))
        v.abandon()                     # unclean: its counters become doubtful
    v = Volume._open_with_key(path, bytearray(gcm_pair.key))
    assert v.native_core is not None and v.header.doubtful
    v.write(60 * SS, b"q" * SS)
    v.close()
    raw = open(path, "rb").read(2 * F.HDR_SIZE)
    h, copies = F.decode(lambda o, n: raw[o:o + n])
    assert all(c.ok for c in copies) and h.doubtful and h.nonce_flushed == h.nonce_reserved
    verify_mac(derive_key(gcm_pair.key, h.uuid, MAC_INFO), h, path)
    off, data = F.encode_copy(h)
    assert raw[off:off + F.HDR_SIZE] == data


def test_native_reads_run_while_python_holds_the_gil(make_volume, kms):
    """A long native read in one thread; the main thread keeps running Python bytecode (it would
    be frozen if the read held the GIL) and leaves timestamps inside the read's interval."""
    path = make_volume("xts", size=64 << 20)
    with Volume.open(path, kms=kms) as vol:
        vol.write(0, os.urandom(64 << 20))
        core = vol.native_core
        span = []

        def reader():
            t0 = time.monotonic()
            for _ in range(4):
                core.read(0, 64 << 20)
            span.append((t0, time.monotonic()))

        stamps = []
        t = threading.Thread(target=reader)
        t.start()
        while t.is_alive():
            stamps.append(time.monotonic())
            x = 0
            for i in range(2000):
                x += i
        t.join()
        t0, t1 = span[0]
        inside = [s for s in stamps if t0 < s < t1]
        assert len(inside) >= 10, (len(inside), t1 - t0)


@pytest.mark.parametrize("cipher", ["xts", "gcm"])
def test_wipe_key_waits_for_calls_in_flight_then_refuses(make_volume, kms, cipher):
    path = make_volume(cipher, size=32 << 20)
    vol = Volume.open(path, kms=kms)
    try:
        core = vol.native_core
        results = []

        def big_reads():
            try:
                for _ in range(50):
                    results.append(len(core.read(0, 32 << 20)))
            except KeyAccessError:
                results.append("wiped")

        t = threading.Thread(target=big_reads)
        t.start()
        time.sleep(0.05)
        vol.wipe_key()
        t.join()
        assert all(r == 32 << 20 for r in results[:-1]) and results[-1] == "wiped"
        with pytest.raises(KeyAccessError):
            core.read(0, 1)
    finally:
        vol.close()


@pytest.mark.parametrize("cipher", ["xts", "gcm"])
def test_stress_threads_against_a_model(make_volume, kms, cipher):
    """16 threads for a few seconds: random unaligned writes, discards and reads, with flushes,
    each thread in its own 4-sector blocks (interleaved with the others', so neighbouring sectors
    are rewritten concurrently); every read of a thread's own bytes matches its model at once, and
    at the end the whole volume matches the models byte for byte, also after reopening."""
    size, block, threads = 4 << 20, 4 * SS, 16
    path = make_volume(cipher, size=size)
    vol = Volume.open(path, kms=kms)
    model = bytearray(size)
    errors = []
    deadline = time.monotonic() + 4.0

    def owned(i, rng):
        b = rng.randrange(size // block // threads) * threads + i
        return b * block

    def worker(i):
        rng = random.Random(i)
        try:
            while time.monotonic() < deadline:
                base = owned(i, rng)
                off = base + rng.randrange(block)
                ln = rng.randrange(1, base + block - off + 1)
                r = rng.random()
                if r < 0.45:
                    data = rng.randbytes(ln)
                    vol.write(off, data)
                    model[off:off + ln] = data
                elif r < 0.55:
                    vol.discard(off, ln)
                    model[off:off + ln] = bytes(ln)
                elif r < 0.95:
                    assert vol.read(off, ln) == model[off:off + ln], (i, off, ln)
                    vol.read(rng.randrange(size - SS), SS)        # anyone's bytes
                else:
                    vol.flush()
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    try:
        assert not errors, errors[:3]
        assert vol.read(0, size) == model
        vol.flush()
    finally:
        vol.close()
    with Volume.open(path, kms=kms) as again:
        assert again.read(0, size) == model


@pytest.mark.parametrize("cipher", ["xts", "gcm"])
def test_wipe_key_under_many_threads(make_volume, kms, cipher):
    """8 threads reading and writing while the key is wiped: every call either completes with
    the right bytes or raises KeyAccessError; none started after wipe_key returned succeeds."""
    path = make_volume(cipher, size=8 << 20)
    vol = Volume.open(path, kms=kms)
    try:
        vol.write(0, b"k" * (8 << 20))
        core = vol.native_core
        wiped_at = []
        bad = []

        def worker(i):
            rng = random.Random(i)
            while True:
                off = rng.randrange(0, (8 << 20) - 3 * SS)
                late = bool(wiped_at)    # wipe_key had returned before this call began
                try:
                    if i % 2:
                        if core.read(off, 3 * SS) != b"k" * (3 * SS):
                            bad.append(("data", off))
                    else:
                        core.write(off, b"k" * (3 * SS))
                    if late:
                        bad.append(("after", off))
                except KeyAccessError:
                    return

        ts = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in ts:
            t.start()
        time.sleep(0.3)
        vol.wipe_key()
        wiped_at.append(time.monotonic())
        for t in ts:
            t.join()
        assert not bad, bad[:5]
    finally:
        vol.close()


def test_preserved_holes_count_against_the_capture_cap(any_pair):
    """A sector never written is a hole: preserving one holds no record bytes, but an entry of
    the session's map all the same. Writes over holes ahead of the copier must count against
    max_kept_bytes, or a writer grows the daemon's memory with the volume's size, past the cap
    meant to bound it (every core the same)."""
    for core in ("native", "reference"):
        v = any_pair(core)
        with v.begin_capture(max_kept_bytes=1024) as session:
            v.write(8 * SS, b"h" * 48 * SS)  # 48 holes ahead of the copier
            assert v.read(8 * SS, 48 * SS) == b"h" * 48 * SS  # the write happened
            with pytest.raises(StateError, match="more than 1024 bytes of preserved records"):
                session.read_records(0, SIZE // SS)
