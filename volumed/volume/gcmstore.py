"""Sector store of GCM volumes: authenticated sectors, two slots per sector, counter nonces.

Layout and entry encoding are in volumed.volume.gcmformat; the design and the crash argument are in
docs/FORMAT.md ("GCM volumes"). In short:

- Each sector has two slots (nonce+tag in the group's metadata page, data in the slot's page).
  The slot with the higher counter is the sector's current version.
- A write goes to the *other* slot unless the sector was already written since the last flush,
  in which case it rewrites that volatile slot. So the version made durable by the last flush is
  never touched before the next flush: after a crash each sector has its durable version plus
  possibly a newer slot, which either verifies (a later write that fully landed) or not.
- Counters are reserved in the header before use. The header remembers the counters that a session
  which crashed may have left half-written ("doubtful" ranges): a doubtful slot that fails to verify
  is crash residue and ignored; any other slot that fails is tampering (IntegrityError).
- A metadata page carries a MAC, so zeroing entries or whole pages is detected; all metadata pages
  are written at create/resize, so no metadata page is legitimately a hole.

flush() must be called with the device's barrier held (flush_is_barrier): it fdatasyncs, forgets
which sectors are volatile, and records the flushed counter in the header (written after the
fdatasync, made durable by the next one). Callers: volumed.volume.device, under its range locks;
lock units are whole groups, because a write rewrites its group's metadata page.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from volumed.errors import IntegrityError, StateError
from volumed.volume import gcmformat as F
from volumed.volume.header import compute_mac
from volumed.volume.ranges import runs, scratch, zero_sectors

log = logging.getLogger("volumed.volume")

PAGE = F.PAGE
G = F.GROUP_SECTORS
RESERVE_CHUNK = 1 << 20          # counters reserved per header update (4 GiB of sector writes)
NONCE_LIMIT = (1 << 63) - 1      # last counter ever used under one key; see docs/FORMAT.md
MAX_DOUBTFUL = 64
META_CACHE_PAGES = 4096          # verified metadata pages kept in memory (16 MiB, 1.1 GiB of data)
AAD_TAG = b"volumed-gcm-v1"


def aad_prefix(volume_uuid: str) -> bytes:
    """The per-volume AAD prefix: format tag || volume UUID (16 bytes); the cipher appends n."""
    import uuid

    return AAD_TAG + uuid.UUID(volume_uuid).bytes


def empty_meta_page(meta_key, group: int) -> bytearray:
    page = bytearray(PAGE)
    F.seal_meta(meta_key, group, page)
    return page


def init_groups(backing, meta_key, first_group: int, end_group: int) -> None:
    """Write sealed empty metadata pages for groups [first_group, end_group) (create, resize)."""
    for g in range(first_group, end_group):
        backing.pwrite(F.meta_offset(g), empty_meta_page(meta_key, g))


class GcmStore:
    lock_unit = G
    flush_is_barrier = True

    def __init__(self, backing, header, cipher, meta_key: bytearray, mac_key: bytearray, path: str = "",
                 copy_damaged: bool = False):
        self.backing = backing
        self.header = header
        self.cipher = cipher
        self.meta_key = meta_key
        self.mac_key = mac_key
        self.path = path
        # Sectors written since the last flush, per group (only groups touched since then).
        self._dirty: dict[int, np.ndarray] = {}
        self._zeroed: list[np.ndarray] = []
        self._ctr_lock = threading.Lock()
        self._hdr_lock = threading.Lock()
        self._doubtful = [tuple(r) for r in header.doubtful]
        self._next = 0
        self._cache: dict[int, bytearray] = {}
        self._cache_lock = threading.Lock()
        self._start_session(copy_damaged)

    # ---- header and nonce reservation ------------------------------------------------------

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

    def _start_session(self, copy_damaged: bool) -> None:
        """Begin a session: counters of an unclean previous session become doubtful; a fresh range
        is reserved (durably) before any is used. Writing the header here also repairs a damaged
        copy. If a copy was damaged it may have been the newest, whose reservation can exceed the
        surviving copy's by at most one chunk (plus one group): skip that far."""
        h = self.header
        if copy_damaged:
            h.nonce_reserved = min(h.nonce_reserved + RESERVE_CHUNK + G, NONCE_LIMIT)
        if h.nonce_flushed < h.nonce_reserved:  # the last session did not close cleanly
            self._add_doubtful(h.nonce_flushed, h.nonce_reserved)
        h.nonce_flushed = h.nonce_reserved
        self._next = h.nonce_reserved + 1
        if self._next > NONCE_LIMIT:  # exhausted: readable, never written again under this key
            self.backing.fdatasync()
            self._write_header(sync_after=True)
            return
        self._reserve(self._next)

    def _add_doubtful(self, lo: int, hi: int) -> None:
        rs = sorted(self._doubtful + [(lo, hi)])
        merged: list[tuple[int, int]] = []
        for a, b in rs:
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
            else:
                merged.append((a, b))
        while len(merged) > MAX_DOUBTFUL:  # merge across the smallest gap (fewest counters lose trust)
            i = min(range(len(merged) - 1), key=lambda j: merged[j + 1][0] - merged[j][1])
            merged[i:i + 2] = [(merged[i][0], merged[i + 1][1])]
        self._doubtful = merged

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
        failed = self.cipher.decrypt(out, g * G + i, F.nonce_bytes(np.array([ctr], dtype=np.uint64)), tag)
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
            real = (pc != 0) & ptag.any(axis=1)
            dst = out[rel * PAGE:(rel + cnt) * PAGE]
            for a, b in runs(~real):
                dst[a * PAGE:b * PAGE] = bytes((b - a) * PAGE)
            for k in (0, 1):
                for a, b in runs(real & (prim == k)):
                    self.backing.preadinto(F.slot_offset(g, k, i0 + a), dst[a * PAGE:b * PAGE])
            for a, b in runs(real):
                failed = self.cipher.decrypt(dst[a * PAGE:b * PAGE], first + rel + a,
                                             F.nonce_bytes(pc[a:b]), ptag[a:b].astype(">u8").tobytes())
                for j in failed:
                    j = a + j
                    self._fallback(g, i0 + j, int(prim[j]), sub[j], dst[j * PAGE:(j + 1) * PAGE])

    def current_slots(self, first: int, n: int) -> list[tuple[int, int, bytes] | None]:
        """For sectors [first, first+n) (the caller holds their groups' locks): the slot a read
        uses, as (slot, counter, tag bytes), or None where the sector stores no data (never
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

    def _current_slot(self, g: int, i: int, entry, doubtful) -> tuple[int, int, bytes] | None:
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
            return attempt, c, entry["tag"][attempt].astype(">u8").tobytes()
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
        c0 = int.from_bytes(page[e + 4:e + 12], "big")
        c1 = int.from_bytes(page[e + 32:e + 40], "big")
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
        page[o:o + 12] = nonce
        page[o + 12:o + 28] = tag
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
        """Durability point; the caller holds the device barrier."""
        self.backing.fdatasync()
        self._dirty.clear()
        self._punch_stale()
        last = self._next - 1
        if last > self.header.nonce_flushed:
            self.header.nonce_flushed = last
            self._write_header(sync_after=False)

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
