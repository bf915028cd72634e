"""Sector store of GCM volumes (format 2): authenticated sectors, two slots per sector, session subkeys.

Layout and entry encoding are in volumed.volume.gcmformat; the design, the crash argument and the
nonce-uniqueness argument are in docs/FORMAT.md ("GCM volumes"). In short:

- Each session (one open) draws a random 16-byte salt; its sectors are sealed under the session
  subkey HKDF-SHA256(data key, salt = volume UUID, info = SUBKEY_INFO || salt) (SectorKeys), and the
  salt is stored in every slot entry it writes. So a (key, nonce) pair cannot repeat even if the
  header's nonce reservation comes back older (a restored header, a file-level copy mounted twice):
  a new session always has a new key.
- Each sector has two slots (salt+counter+tag in the group's metadata page, data in the slot's
  page). The slot with the higher counter is the sector's current version; counters still come from
  the header's reservation, and a loaded metadata page with a counter above it makes the session
  skip ahead (so a new write always outranks what is on disk).
- A write goes to the *other* slot unless the sector was already written since the last flush,
  in which case it rewrites that volatile slot. So the version made durable by the last flush is
  never touched before the next flush.
- flush() fdatasyncs the data, then writes the nonce note (the last counter now durable) as one
  durable page write (RWF_DSYNC), so an acknowledged write is never doubtful. At open, counters
  above the last durable note of an unclean session become a "doubtful" range: a doubtful slot that fails to
  verify is crash residue and ignored; any other slot that fails is IntegrityError. More than
  MAX_DOUBTFUL ranges are resolved (every doubtful slot verified once, residue cleared) and
  dropped, never merged.
- A metadata page carries a MAC, so zeroing entries or whole pages is detected; all metadata pages
  are written at create/resize, so no metadata page is legitimately a hole.

flush() must be called with the device's barrier held (flush_is_barrier). Callers:
volumed.volume.device, under its range locks; lock units are whole groups, because a write rewrites
its group's metadata page.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import uuid as _uuid

import numpy as np

from volumed.cipher import GcmCipher
from volumed.errors import IntegrityError, StateError
from volumed.volume import gcmformat as F
from volumed.volume.header import compute_mac
from volumed.volume.ranges import runs, scratch, zero_sectors

log = logging.getLogger("volumed.volume")

PAGE = F.PAGE
G = F.GROUP_SECTORS
RESERVE_CHUNK = 1 << 20          # counters reserved per header update (4 GiB of sector writes)
NONCE_LIMIT = (1 << 63) - 1      # last counter ever used in one volume; see docs/FORMAT.md
MAX_DOUBTFUL = 64
META_CACHE_PAGES = 4096          # verified metadata pages kept in memory (16 MiB, 800 MiB of data)
CIPHER_CACHE = 256               # session subkeys kept ready for reads
AAD_TAG = b"volumed-gcm-v2"
AAD_TAG_V1 = b"volumed-gcm-v1"
SUBKEY_INFO = b"volumed gcm sector key v2"


def new_salt() -> bytes:
    """A session's random salt (os.urandom; the differential tests fix it to compare files)."""
    return os.urandom(F.SALT_BYTES)


@dataclasses.dataclass(frozen=True)
class SessionState:
    """Where a started session stands (GcmStore.session_state): what the native GCM store
    continues from (its salt, next counter, last nonce note number, doubtful (lo, hi] ranges)."""

    salt: bytes
    next: int
    note_seq: int
    doubtful: list[tuple[int, int]]


def aad_prefix(volume_uuid: str, tag: bytes = AAD_TAG) -> bytes:
    """The per-volume AAD prefix: format tag || volume UUID (16 bytes); the cipher appends n."""
    return tag + _uuid.UUID(volume_uuid).bytes


class SectorKeys:
    """The data key of a GCM volume (or snapshot) and the sector ciphers made from it.

    The data key lives only in a cipher object (locked memory, the native core): ``v1()``, the
    format-1 cipher (the data key itself, AAD tag volumed-gcm-v1, for reading old volumes and
    snapshots). ``for_salt(salt)``: the format-2 cipher of the session with that salt, derived from
    it without the key passing through Python (subkey HKDF-SHA256(data key, salt = UUID, info =
    SUBKEY_INFO || salt), AAD tag volumed-gcm-v2), cached. ``salt`` is a random 16-byte salt drawn
    for this object (a session, or a snapshot copy) and ``session()`` its cipher. The constructor
    wipes ``data_key`` (a bytearray); close() closes every cipher."""

    def __init__(self, data_key: bytearray, volume_uuid: str):
        self.uuid = volume_uuid
        self._uuid_bytes = _uuid.UUID(volume_uuid).bytes
        self._root = GcmCipher(data_key, aad_prefix(volume_uuid, AAD_TAG_V1))  # wipes data_key
        self.salt = new_salt()
        self._ciphers: dict[bytes, object] = {}
        self._lock = threading.Lock()

    def for_salt(self, salt: bytes):
        c = self._ciphers.get(salt)
        if c is not None:
            return c
        with self._lock:
            c = self._ciphers.get(salt)
            if c is None:
                c = self._root.derive(self._uuid_bytes, SUBKEY_INFO + salt, aad_prefix(self.uuid))
                if len(self._ciphers) >= CIPHER_CACHE:
                    # dropped, not closed: a reader may hold it; freeing it wipes its key
                    self._ciphers.pop(next(iter(self._ciphers)))
                self._ciphers[salt] = c
        return c

    def session(self):
        return self.for_salt(self.salt)

    def v1(self):
        return self._root

    def close(self) -> None:
        with self._lock:
            for c in list(self._ciphers.values()) + [self._root]:
                c.close()
            self._ciphers.clear()


def empty_meta_page(meta_key, group: int) -> bytearray:
    page = bytearray(PAGE)
    F.seal_meta(meta_key, group, page)
    return page


def init_groups(backing, meta_key, first_group: int, end_group: int) -> None:
    """Write sealed empty metadata pages for groups [first_group, end_group) (create, resize)."""
    for g in range(first_group, end_group):
        backing.pwrite(F.meta_offset(g), empty_meta_page(meta_key, g))


def _salts(arr: np.ndarray) -> list[bytes]:
    """Distinct salts (16 bytes each) of an (n, 2) u64 array of salts."""
    return [r.astype(">u8").tobytes() for r in np.unique(arr.reshape(-1, 2), axis=0)]


class GcmStore:
    lock_unit = G
    flush_is_barrier = True

    def __init__(self, backing, header, keys: SectorKeys, meta_key: bytearray, mac_key: bytearray,
                 note_key: bytearray, path: str = "", copy_damaged: bool = False):
        self.backing = backing
        self.header = header
        self.keys = keys
        self.meta_key = meta_key
        self.mac_key = mac_key
        self.note_key = note_key
        self.path = path
        # Sectors written since the last flush, per group (only groups touched since then).
        self._dirty: dict[int, np.ndarray] = {}
        self._zeroed: list[np.ndarray] = []
        self._ctr_lock = threading.Lock()
        self._hdr_lock = threading.Lock()
        self._doubtful = [tuple(r) for r in header.doubtful]
        self._next = 0
        self._note_seq = 0
        self._cache: dict[int, bytearray] = {}
        self._cache_lock = threading.Lock()
        self.salt = keys.salt                       # this session's salt and sector cipher
        self._salt_arr = np.frombuffer(self.salt, dtype=">u8")
        self.cipher = keys.session()
        self._start_session(copy_damaged)

    def session_state(self) -> SessionState:
        """This session's state after its start (salt, next counter, note number, doubtful)."""
        return SessionState(self.salt, self._next, self._note_seq,
                            [(int(a), int(b)) for a, b in self._doubtful])

    # ---- header, nonce note and nonce reservation ------------------------------------------

    def _write_header(self, sync_after: bool) -> None:
        """Write the next header copy (seqid+1). Always preceded by an fdatasync, so the other copy
        is durable while this one is being written."""
        with self._hdr_lock:
            h = self.header
            h.seqid += 1
            h.doubtful = [list(r) for r in self._doubtful]
            h.mac = compute_mac(self.mac_key, h)
            off, data = F.encode_copy(h)
            self.backing.pwrite(off, data)
            if sync_after:
                self.backing.fdatasync()

    def _read_note(self) -> int | None:
        """The flushed counter of the newest valid nonce note (None if neither copy is valid)."""
        best = None
        for which in (0, 1):
            got = F.decode_note(self.note_key, self.backing.pread(F.NOTE_OFFSET + which * PAGE, PAGE), which)
            if got is not None and (best is None or got[0] > best[0]):
                best = got
        if best is None:
            return None
        self._note_seq = best[0]
        return best[1]

    def _write_note(self, flushed: int) -> None:
        """Write the next note copy, durably (one page with RWF_DSYNC, not a second fdatasync)."""
        self._note_seq += 1
        off, page = F.encode_note(self.note_key, self._note_seq, flushed)
        self.backing.pwrite_durable(off, page)

    def _start_session(self, copy_damaged: bool) -> None:
        """Begin a session: counters of an unclean previous session above its last durable note
        become doubtful; a fresh range is reserved (durably) before any is used. Writing the header
        here also repairs a damaged copy. If a copy was damaged it may have been the newest, whose
        reservation can exceed the surviving copy's by at most one chunk (plus one group): skip
        that far (only for ordering: the new session's subkey is fresh anyway)."""
        h = self.header
        if copy_damaged:
            h.nonce_reserved = min(h.nonce_reserved + RESERVE_CHUNK + G, NONCE_LIMIT)
        noted = self._read_note()
        if noted is not None and h.nonce_flushed < noted <= h.nonce_reserved:
            h.nonce_flushed = noted  # the unclean session's last durable flush
        if h.nonce_flushed < h.nonce_reserved:  # the last session did not close cleanly
            self._add_doubtful(h.nonce_flushed, h.nonce_reserved)
        h.nonce_flushed = h.nonce_reserved
        self._next = h.nonce_reserved + 1
        if len(self._doubtful) > MAX_DOUBTFUL:
            self._resolve_doubtful()
        if self._next > NONCE_LIMIT:  # exhausted: readable, never written again under this key
            self.backing.fdatasync()
            self._write_header(sync_after=True)
            return
        self._reserve(self._next)

    def _add_doubtful(self, lo: int, hi: int) -> None:
        """Add (lo, hi]; overlapping or touching ranges join (they cover only doubtful counters)."""
        merged: list[tuple[int, int]] = []
        for a, b in sorted(self._doubtful + [(lo, hi)]):
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
            else:
                merged.append((a, b))
        self._doubtful = merged

    def _resolve_doubtful(self) -> None:
        """Too many doubtful ranges: verify every doubtful slot once, clear the entries of those
        that fail (crash residue: the sector's version is its other slot, or none), and drop all
        ranges. Merging them would make counters that were never in doubt doubtful. The cleared
        pages are made durable by the fdatasync before the header that drops the ranges; a crash
        in between leaves the ranges, and the next open resolves again."""
        log.warning("GCM volume %s: %d doubtful nonce ranges; verifying their slots once",
                    self.path, len(self._doubtful))
        cleared = 0
        for g in range(F.groups_for(self.header.size)):
            try:
                page = self._meta(g)
            except IntegrityError:  # logged; its sectors fail to read whatever the ranges say
                continue
            sub = F.slots(page)
            bad = self._is_doubtful(sub["ctr"]) & sub["tag"].any(axis=2)
            changed = False
            for i, k in zip(*np.nonzero(bad)):
                if not self._decrypt_slot(g, int(i), int(k), sub[i], memoryview(bytearray(PAGE))):
                    o = int(i) * 2 * F.SLOT_BYTES + int(k) * F.SLOT_BYTES
                    page[o:o + F.SLOT_BYTES] = bytes(F.SLOT_BYTES)
                    changed = True
                    cleared += 1
            if changed:
                F.seal_meta(self.meta_key, g, page)
                self.backing.pwrite(F.meta_offset(g), page)
        self._doubtful = []
        log.warning("GCM volume %s: doubtful ranges resolved (%d residue slots cleared)", self.path, cleared)

    def _reserve(self, need_upto: int) -> None:
        h = self.header
        if need_upto > NONCE_LIMIT:
            log.error("GCM volume %s has used its nonce space; refusing writes", self.path)
            raise StateError(f"volume {self.path} has used its nonce space under this key; it is "
                             "read-only now: copy its data to a new volume")
        new = min(max(h.nonce_reserved + RESERVE_CHUNK, need_upto), NONCE_LIMIT)
        self.backing.fdatasync()
        h.nonce_reserved = new
        self._write_header(sync_after=True)

    def _alloc(self, n: int) -> np.ndarray:
        with self._ctr_lock:
            last = self._next + n - 1
            if last > self.header.nonce_reserved:
                self._reserve(last)
            first = self._next
            self._next = last + 1
        return np.arange(first, first + n, dtype=np.uint64)

    def _skip_ahead(self, g: int, top: int) -> None:
        """A loaded page holds counter ``top`` at or above the next one: the header is older than
        the data (a restored header or file, or a copy used twice). Count on from above it, so new
        writes outrank what is on disk; nonces stay unique anyway (this session's subkey is new)."""
        with self._ctr_lock:
            if top >= self._next:
                log.warning("GCM volume %s: sectors %d-%d hold counter %d above this session's %d "
                            "(the header is older than the data); counting on from above it",
                            self.path, g * G, g * G + G - 1, top, self._next)
                self._next = top + 1

    def _is_doubtful(self, ctr: np.ndarray) -> np.ndarray:
        m = np.zeros(ctr.shape, dtype=bool)
        for lo, hi in self._doubtful:
            m |= (ctr > lo) & (ctr <= hi)
        return m

    # ---- metadata --------------------------------------------------------------------------

    def _meta(self, g: int) -> bytearray:
        """The verified metadata page of group g (caller holds the group's lock). Pages are cached
        as last written by this process: all metadata writes go through here."""
        page = self._cache.get(g)
        if page is not None:
            return page
        page = self.backing.pread(F.meta_offset(g), PAGE)
        if not F.meta_ok(self.meta_key, g, page):
            log.error("GCM metadata of sectors %d-%d of %s fails its MAC", g * G, g * G + G - 1, self.path)
            raise IntegrityError(f"metadata of sectors {g * G}-{g * G + G - 1} of {self.path} fails "
                                 "authentication: the volume was altered on disk")
        top = int(F.slots(page)["ctr"].max())
        if top >= self._next:
            self._skip_ahead(g, top)
        with self._cache_lock:
            if len(self._cache) >= META_CACHE_PAGES:
                self._cache.pop(next(iter(self._cache)))
            self._cache[g] = page
        return page

    def _decrypt_slot(self, g: int, i: int, k: int, entry, out: memoryview) -> bool:
        """Decrypt slot k of sector g*G+i into out (one sector); False if it does not verify."""
        ctr = int(entry["ctr"][k])
        if not entry["tag"][k].any():
            out[:] = bytes(PAGE)
            return True
        self.backing.preadinto(F.slot_offset(g, k, i), out)
        tag = entry["tag"][k].astype(">u8").tobytes()
        c = self.keys.for_salt(entry["salt"][k].astype(">u8").tobytes())
        failed = c.decrypt(out, g * G + i, F.nonce_bytes(np.array([ctr], dtype=np.uint64)), tag)
        return not failed

    def _fallback(self, g: int, i: int, k: int, entry, out: memoryview) -> None:
        """Slot k (the newer) of sector g*G+i failed: residue of a crash if doubtful, else tampering."""
        sector = g * G + i
        if not self._is_doubtful(np.array([entry["ctr"][k]], dtype=np.uint64))[0]:
            log.error("GCM sector %d of %s fails authentication", sector, self.path)
            raise IntegrityError(f"sector {sector} of {self.path} fails authentication (data altered on disk)")
        o = 1 - k
        if entry["ctr"][o] == 0:
            out[:] = bytes(PAGE)
            return
        if self._decrypt_slot(g, i, o, entry, out):
            return
        if self._is_doubtful(np.array([entry["ctr"][o]], dtype=np.uint64))[0]:
            out[:] = bytes(PAGE)  # neither version was ever made durable: the sector is unwritten
            return
        log.error("GCM sector %d of %s fails authentication", sector, self.path)
        raise IntegrityError(f"sector {sector} of {self.path} fails authentication (data altered on disk)")

    # ---- the store interface ---------------------------------------------------------------

    def _chunks(self, first: int, n: int):
        s, end = first, first + n
        while s < end:
            g, i0 = divmod(s, G)
            cnt = min(G - i0, end - s)
            yield s - first, g, i0, cnt
            s += cnt

    def read_sectors(self, first: int, out: memoryview) -> None:
        """Fill ``out`` with the plaintext of sectors first, ...; IntegrityError names a bad sector."""
        n = len(out) // PAGE
        for rel, g, i0, cnt in self._chunks(first, n):
            sub = F.slots(self._meta(g))[i0:i0 + cnt]
            ar = np.arange(cnt)
            ctr = sub["ctr"]
            prim = (ctr[:, 1] > ctr[:, 0]).astype(np.intp)
            pc = ctr[ar, prim]
            ptag = sub["tag"][ar, prim]
            psalt = sub["salt"][ar, prim]
            real = (pc != 0) & ptag.any(axis=1)
            dst = out[rel * PAGE:(rel + cnt) * PAGE]
            for a, b in runs(~real):
                dst[a * PAGE:b * PAGE] = bytes((b - a) * PAGE)
            for k in (0, 1):
                for a, b in runs(real & (prim == k)):
                    self.backing.preadinto(F.slot_offset(g, k, i0 + a), dst[a * PAGE:b * PAGE])
            if not real.any():
                continue
            rs = psalt[real]
            one = bool((rs == rs[0]).all())  # usual: every sector from one session
            for salt in ([rs[0].astype(">u8").tobytes()] if one else _salts(rs)):
                same = real if one else real & (psalt == np.frombuffer(salt, dtype=">u8")).all(axis=1)
                c = self.keys.for_salt(salt)
                for a, b in runs(same):
                    failed = c.decrypt(dst[a * PAGE:b * PAGE], first + rel + a,
                                       F.nonce_bytes(pc[a:b]), ptag[a:b].astype(">u8").tobytes())
                    for j in failed:
                        j = a + j
                        self._fallback(g, i0 + j, int(prim[j]), sub[j], dst[j * PAGE:(j + 1) * PAGE])

    def current_slots(self, first: int, n: int) -> list[tuple[int, int, bytes, bytes] | None]:
        """For sectors [first, first+n) (the caller holds their groups' locks): the slot a read
        uses, as (slot, counter, tag bytes, salt bytes), or None where the sector stores no data (never
        written, written with zeros, or neither slot ever made durable). The slot with the higher
        counter, unless it is crash residue (doubtful and fails to verify), then the other. Only
        doubtful slots are decrypted; other slots are not verified here (a read or a restore does).
        Caller: volumed.volume.records (the raw records a snapshot stores)."""
        out: list[tuple[int, int, bytes] | None] = []
        for _rel, g, i0, cnt in self._chunks(first, n):
            sub = F.slots(self._meta(g))[i0:i0 + cnt]
            doubtful = self._is_doubtful(sub["ctr"])
            for j in range(cnt):
                out.append(self._current_slot(g, i0 + j, sub[j], doubtful[j]))
        return out

    def _current_slot(self, g: int, i: int, entry, doubtful) -> tuple[int, int, bytes, bytes] | None:
        ctr = entry["ctr"]
        k = 1 if ctr[1] > ctr[0] else 0
        for attempt in (k, 1 - k):
            c = int(ctr[attempt])
            if c == 0:
                return None
            if doubtful[attempt] and not self._decrypt_slot(g, i, attempt, entry,
                                                            memoryview(bytearray(PAGE))):
                continue  # crash residue: the sector's version is the other slot
            if not entry["tag"][attempt].any():
                return None  # written with zeros
            return (attempt, c, entry["tag"][attempt].astype(">u8").tobytes(),
                    entry["salt"][attempt].astype(">u8").tobytes())
        return None

    def write_sectors(self, first: int, data: memoryview | None, n: int | None = None) -> None:
        """Store whole sectors (``data`` None = n sectors of zeros). All-zero sectors store no data."""
        n = len(data) // PAGE if data is not None else n
        for rel, g, i0, cnt in self._chunks(first, n):
            try:
                self._write_group(first + rel, g, i0, cnt,
                                  None if data is None else data[rel * PAGE:(rel + cnt) * PAGE])
            except BaseException:
                self._cache.pop(g, None)  # the cached page may be ahead of the disk
                raise

    def _dirty_of(self, g: int) -> np.ndarray:
        """The written-since-flush flags of group g (the caller holds the group's lock)."""
        d = self._dirty.get(g)
        if d is None:
            d = self._dirty[g] = np.zeros(G, dtype=bool)
        return d

    def _write_one(self, s: int, g: int, i: int, chunk) -> None:
        """_write_group for one sector, in scalar code (the 4 KiB random-write case)."""
        page = self._meta(g)
        e = i * 2 * F.SLOT_BYTES
        c0 = int.from_bytes(page[e + 16:e + 24], "big")
        c1 = int.from_bytes(page[e + 56:e + 64], "big")
        prim = 1 if c1 > c0 else 0
        d = self._dirty_of(g)
        if d[i]:
            target = prim
        else:
            cur = prim
            pc = c1 if prim else c0
            if pc and self._is_doubtful(np.array([pc], dtype=np.uint64))[0]:
                entry = F.slots(page)[i]
                if not self._decrypt_slot(g, i, prim, entry, memoryview(bytearray(PAGE))):
                    cur = 1 - prim
            target = 1 - cur
        zero = chunk is None or not np.frombuffer(chunk, dtype=np.uint64).any()
        nonce = F.nonce_bytes(self._alloc(1))
        if zero:
            tag = bytes(16)
        else:
            buf, tag = scratch(PAGE), bytearray(16)  # written out below, before returning
            self.cipher.encrypt(chunk, s, nonce, tag, out=buf)
        o = e + target * F.SLOT_BYTES
        page[o:o + 16] = self.salt
        page[o + 16:o + 24] = nonce[4:]
        page[o + 24:o + 40] = tag
        F.seal_meta(self.meta_key, g, page)
        if zero:
            self.backing.punch_hole(F.slot_offset(g, target, i), PAGE)
            self._zeroed.append(np.array([s], dtype=np.int64))
        else:
            self.backing.pwrite(F.slot_offset(g, target, i), buf)
        self.backing.pwrite(F.meta_offset(g), page)
        d[i] = True

    def _write_group(self, s: int, g: int, i0: int, cnt: int, chunk) -> None:
        """write_sectors for sectors s..s+cnt-1, all in group g starting at index i0."""
        if cnt == 1:
            return self._write_one(s, g, i0, chunk)
        page = self._meta(g)
        sub = F.slots(page)[i0:i0 + cnt]
        ar = np.arange(cnt)
        ctr = sub["ctr"]
        prim = (ctr[:, 1] > ctr[:, 0]).astype(np.intp)
        pc = ctr[ar, prim]
        d = self._dirty_of(g)
        dirty = d[i0:i0 + cnt].copy()
        cur = prim.copy()
        check = ~dirty & (pc != 0) & self._is_doubtful(pc)
        for j in np.flatnonzero(check):
            probe = memoryview(bytearray(PAGE))
            if not self._decrypt_slot(g, i0 + j, int(prim[j]), sub[j], probe):
                cur[j] = 1 - prim[j]
        target = np.where(dirty, prim, 1 - cur)
        if chunk is None:
            zeros = np.ones(cnt, dtype=bool)
        else:
            zeros = zero_sectors(chunk, PAGE)
        counters = self._alloc(cnt)
        tags = bytearray(cnt * 16)
        buf = scratch(cnt * PAGE) if not zeros.all() else None
        tmv = memoryview(tags)
        for a, b in runs(~zeros):
            self.cipher.encrypt(chunk[a * PAGE:b * PAGE], s + a, F.nonce_bytes(counters[a:b]),
                                tmv[a * 16:b * 16], out=buf[a * PAGE:b * PAGE])
        tag_arr = np.frombuffer(tags, dtype=">u8").reshape(cnt, 2)
        sub["salt"][ar, target] = self._salt_arr
        sub["ctr"][ar, target] = counters
        sub["tag"][ar, target] = tag_arr
        F.seal_meta(self.meta_key, g, page)
        for k in (0, 1):
            for a, b in runs(~zeros & (target == k)):
                self.backing.pwrite(F.slot_offset(g, k, i0 + a), buf[a * PAGE:b * PAGE])
            for a, b in runs(zeros & (target == k)):
                self.backing.punch_hole(F.slot_offset(g, k, i0 + a), (b - a) * PAGE)
        self.backing.pwrite(F.meta_offset(g), page)
        d[i0:i0 + cnt] = True
        if zeros.any():
            self._zeroed.append(s + np.flatnonzero(zeros))

    def discard_sectors(self, first: int, n: int) -> None:
        """Sectors [first, first+n) read as zeros; their space is returned at the next flush."""
        self.write_sectors(first, None, n)

    def flush(self) -> None:
        """Durability point; the caller holds the device barrier. The data and metadata are made
        durable first, then the nonce note that says so: after a power cut right after flush()
        returned, no acknowledged write is doubtful (its slot failing is IntegrityError)."""
        self.backing.fdatasync()
        self._dirty.clear()
        last = self._next - 1
        if last > self.header.nonce_flushed:
            self.header.nonce_flushed = last
            self._write_note(last)
        self._punch_stale()

    def _punch_stale(self) -> None:
        """After an fdatasync: punch the older slot of sectors zeroed since (space comes back)."""
        if not self._zeroed:
            return
        sectors = np.unique(np.concatenate(self._zeroed))
        self._zeroed.clear()
        for g in np.unique(sectors // G):
            g = int(g)
            idx = sectors[(sectors // G) == g] - g * G
            sub = F.slots(self._meta(g))
            ctr = sub["ctr"][idx]
            stale = (ctr[:, 1] <= ctr[:, 0]).astype(np.intp)  # the non-newest slot
            for k in (0, 1):
                mask = np.zeros(G, dtype=bool)
                mask[idx[stale == k]] = True
                for a, b in runs(mask):
                    self.backing.punch_hole(F.slot_offset(g, k, a), (b - a) * PAGE)

    def close(self) -> None:
        """Clean close: flush, then record that no reserved counter is outstanding."""
        self.flush()
        self.backing.fdatasync()
        self.header.nonce_flushed = self.header.nonce_reserved
        self._write_header(sync_after=True)

    def retire(self) -> None:
        """Before the key is wiped: if nothing was written since the last flush, record a clean
        session (so the next open adds no doubtful range); otherwise do no I/O at all."""
        if self._dirty or self._zeroed or self.header.nonce_flushed != self._next - 1:
            return
        try:
            self.backing.fdatasync()
            self.header.nonce_flushed = self.header.nonce_reserved
            self._write_header(sync_after=False)
        except OSError as exc:
            log.error("could not record a clean close of %s: %s", self.path, exc)

    def grow(self, new_size: int) -> None:
        """Prepare metadata for a larger size (the device updates size and header afterwards)."""
        old_groups = F.groups_for(self.header.size)
        init_groups(self.backing, self.meta_key, old_groups, F.groups_for(new_size))

    def file_size_for(self, size: int) -> int:
        return F.file_size_for(size)
