"""The block device: a volume opened with its key, read and written at any byte range.

Volume.create makes a backing file (XTS = LUKS2, GCM = volumed's own format), Volume.open unwraps
the key through KMS and verifies the header MAC, and the instance serves read/write/discard/flush
from any number of threads:

- Every request locks the lock units it touches (RangeLock): one sector for XTS, one metadata
  group (72 sectors) for GCM. Overlapping requests serialize; disjoint ones run in parallel (the
  cipher and the pread/pwrite syscalls release the GIL).
- flush() is fdatasync for XTS; for GCM it takes the barrier (RangeLock.exclusive) so that no write
  is in flight while the volatile slots are declared durable.
- wipe_key() takes the barrier, closes the cipher (which overwrites its key) and drops the store;
  later requests raise KeyAccessError.
- read_records() returns sectors as stored (what a snapshot keeps); begin_capture() starts a
  copy-on-write session (volumed.volume.records) under the barrier: while it is open, write and
  discard first preserve the old records of the sectors they change that it has not copied yet.

Partial sectors are read-modify-written under the lock; whole sectors go straight to the store in
one batch. Callers: the CLI (volumed.cli.volume_cmd), the mount daemon, tests.
"""

from __future__ import annotations

import datetime as _dt
import os
import uuid as _uuid

from volumed.cipher import XtsCipher
from volumed.errors import FormatError, IntegrityError, KeyAccessError, StateError, UsageError, VolumedError
from volumed.volume import gcmformat, luks2
from volumed.volume.backing import BackingFile, staged_file
from volumed.volume.gcmstore import GcmStore, SectorKeys, init_groups
from volumed.volume.header import (CONTEXT_DB, CONTEXT_EBS, GCM_META_INFO, GCM_NOTE_INFO, MAC_INFO,
                                   SECTOR_SIZE, VolumeHeader, compute_mac, derive_key,
                                   snapshot_root_key, verify_mac)
from volumed.volume.ids import new_db_id, new_ebs_id, validate_db_id, validate_ebs_id
from volumed.volume.keywrap import new_wrapped_key, unwrap
from volumed.volume.ranges import RangeLock
from volumed.volume.records import CaptureSession, read_records
from volumed.volume.xtsstore import XtsStore

KEY_BYTES = {"xts": 64, "gcm": 32}
MAX_SIZE = 1 << 50  # 1 PiB


def _wipe(*bufs) -> None:
    for b in bufs:
        if isinstance(b, bytearray):
            b[:] = bytes(len(b))


def _reader(backing):
    def read(offset: int, length: int) -> bytes:
        return bytes(backing.pread(offset, length))
    return read


def load_header(backing, path: str = ""):
    """Parse a backing file's header: (header, extras, copies). FormatError says what is wrong.

    extras is (digest salt, digest) for LUKS2 volumes, None for GCM."""
    fsize = backing.size()
    if fsize < 2 * gcmformat.HDR_SIZE:
        raise FormatError(f"{path} is too short ({fsize} bytes) to be a volumed volume (truncated?)")
    read = _reader(backing)
    head, head2 = read(0, 8), read(luks2.HDR_SIZE, 8)
    if head[:6] == luks2.MAGIC_1 or head2[:6] == luks2.MAGIC_2:
        h, salt, digest, copies = luks2.decode(read)
        extras = (salt, digest)
    elif head == gcmformat.MAGIC or head2 == gcmformat.MAGIC:
        h, copies = gcmformat.decode(read)
        extras = None
    else:
        raise FormatError(f"{path} is not a volumed volume (no LUKS2 or volumed-GCM header)")
    need = h.data_offset + h.size if h.cipher == "xts" else gcmformat.file_size_for(h.size, h.format_version)
    if fsize < need:
        raise FormatError(f"{path} is truncated: its header says {need} bytes but the file holds {fsize}")
    return h, extras, copies


def refuse_old_gcm(h, path: str) -> None:
    """A GCM volume of format 1 is not opened (its nonces could repeat after a header rollback):
    FormatError that says how to upgrade it. Caller: Volume._open (the CLI and the mount daemon)."""
    if h.cipher == "gcm" and h.format_version < gcmformat.VERSION:
        raise FormatError(f"{path} is a GCM volume of format v{h.format_version}, which this volumed "
                          f"no longer writes (its nonces could repeat after a header rollback): run "
                          f"`volumed upgrade {path}` once (it rewrites the volume as format "
                          f"v{gcmformat.VERSION}), or restore a snapshot of it with `volumed restore`")


def _open_backing(path, readonly: bool = False) -> BackingFile:
    """BackingFile for an existing volume; OS errors become one-line VolumedErrors."""
    if os.path.isdir(path):
        raise FormatError(f"{path} is a directory, not a volume")
    try:
        return BackingFile(path, readonly=readonly)
    except FileNotFoundError:
        raise UsageError(f"volume {path} does not exist") from None
    except IsADirectoryError:
        raise FormatError(f"{path} is a directory, not a volume") from None
    except OSError as exc:
        raise VolumedError(f"cannot open volume {path}: {exc.strerror}") from None


def _lock_exclusive(backing, path: str) -> None:
    """One open Volume per backing file (flock, released when the process dies). Two writers
    would reserve the same GCM nonces and undo each other's header updates."""
    import fcntl

    try:
        fcntl.flock(backing.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise StateError(f"volume {path} is already open (mounted or in use by another volumed "
                         "process); unmount or close it first") from None


def parse_size(text: str) -> int:
    """Parse a size like 1G, 512M, 64K, 1T or plain bytes (binary units). UsageError if malformed."""
    t = str(text).strip().upper().removesuffix("IB").removesuffix("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
    try:
        if t and t[-1] in mult:
            n = int(t[:-1]) * mult[t[-1]]
        else:
            n = int(t)
    except ValueError:
        raise UsageError(f"invalid size {text!r}: use bytes or a number with K, M, G or T (e.g. 1G)") from None
    return n


def _check_size(size: int) -> None:
    if size <= 0 or size % SECTOR_SIZE or size > MAX_SIZE:
        raise UsageError(f"invalid volume size {size}: must be a positive multiple of {SECTOR_SIZE} "
                         "bytes, at most 1 PiB")


class Volume:
    """An open volume. See the module docstring for the thread-safety contract."""

    def __init__(self, path, header, backing, store, cipher, mac_key, extras):
        self.path = os.fspath(path)
        self.header: VolumeHeader = header
        self.sector_size = header.sector_size
        self._backing = backing
        self._store = store
        self._cipher = cipher
        self._mac_key = mac_key
        self._extras = extras
        self._locks = RangeLock()
        self._capture: CaptureSession | None = None   # the open capture session, if any
        self._snap_root: bytearray | None = None        # header.snapshot_root_key of the data key

    # ---- creation and opening --------------------------------------------------------------

    @classmethod
    def create(cls, path, *, size: int, kms, key_id: str = "alias/aws/rds", cipher: str = "xts",
               db_id: str | None = None, ebs_id: str | None = None) -> VolumeHeader:
        """Create a sparse volume file at ``path`` (must not exist); return its header.

        Asks KMS for a data key with GenerateDataKeyWithoutPlaintext under ``key_id`` and the
        context {aws:rds:db-id, aws:ebs:id}, then Decrypt (same caller) to seal the header MAC
        (and for GCM the metadata pages). Leaves nothing behind on failure."""
        path = os.fspath(path)
        if cipher not in KEY_BYTES:
            raise UsageError(f"invalid cipher {cipher!r}: choose xts or gcm")
        _check_size(size)
        db_id = validate_db_id(db_id) if db_id else new_db_id()
        ebs_id = validate_ebs_id(ebs_id) if ebs_id else new_ebs_id()
        if os.path.lexists(path):
            raise UsageError(f"{path} already exists: choose a new path (volumed never overwrites a file)")
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise UsageError(f"cannot create {path}: directory {parent} does not exist")
        context = {CONTEXT_DB: db_id, CONTEXT_EBS: ebs_id}
        wrapped, arn = new_wrapped_key(kms, key_id, KEY_BYTES[cipher], context)
        key = unwrap(kms, arn, wrapped, context, expect_len=KEY_BYTES[cipher])
        vol_uuid = str(_uuid.uuid4())
        h = VolumeHeader(
            uuid=vol_uuid, cipher=cipher, size=size, sector_size=SECTOR_SIZE,
            data_offset=luks2.DATA_OFFSET if cipher == "xts" else gcmformat.DATA_OFFSET,
            key_arn=arn, wrapped_key=wrapped, context=context, db_id=db_id, ebs_id=ebs_id,
            created=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            format="luks2" if cipher == "xts" else "volumed-gcm",
            format_version=1 if cipher == "xts" else gcmformat.VERSION)
        mac_key = meta_key = None
        try:
            mac_key = derive_key(key, vol_uuid, MAC_INFO)
            with staged_file(path) as backing:
                if cipher == "xts":
                    salt = os.urandom(32)
                    digest = luks2.volume_key_digest(key, salt)
                    h.mac = compute_mac(mac_key, h)
                    backing.truncate(h.data_offset + size)
                    backing.pwrite(0, luks2.encode(h, salt, digest))
                else:
                    meta_key = derive_key(key, vol_uuid, GCM_META_INFO)
                    h.mac = compute_mac(mac_key, h)
                    backing.truncate(gcmformat.file_size_for(size))
                    init_groups(backing, meta_key, 0, gcmformat.groups_for(size))
                    for seq in (0, 1):
                        h.seqid = seq
                        off, data = gcmformat.encode_copy(h)
                        backing.pwrite(off, data)
        except FileExistsError:
            raise UsageError(f"{path} already exists: choose a new path (volumed never overwrites a file)") from None
        except OSError as exc:
            raise VolumedError(f"cannot create volume {path}: {exc.strerror}") from None
        finally:
            _wipe(key, mac_key, meta_key)
        return h

    @staticmethod
    def read_header(path) -> VolumeHeader:
        """The header of the volume at ``path`` (no key needed; nothing verified but checksums)."""
        backing = _open_backing(path, readonly=True)
        try:
            return load_header(backing, os.fspath(path))[0]
        finally:
            backing.close()

    @classmethod
    def open(cls, path, *, kms, grant_tokens: list[str] | None = None, backing=None) -> "Volume":
        """Open a volume: parse the header, unwrap the key (Decrypt with the header's key ARN,
        context and ``grant_tokens``), verify the header MAC, repair a damaged header copy."""
        def unwrap_key(h):
            return unwrap(kms, h.key_arn, h.wrapped_key, h.context, grant_tokens,
                          expect_len=KEY_BYTES[h.cipher])

        return cls._open(path, backing, unwrap_key)

    @classmethod
    def _open_with_key(cls, path, key: bytearray, backing=None) -> "Volume":
        """Open with an already unwrapped key (the crash harness uses it). Wipes ``key``."""
        return cls._open(path, backing, lambda h: key)

    @classmethod
    def _open(cls, path, backing, get_key) -> "Volume":
        """Shared by open and _open_with_key: parse, get the key with get_key(header), set up."""
        path = os.fspath(path)
        owns = backing is None
        if owns:
            backing = _open_backing(path)
        try:
            _lock_exclusive(backing, path)
            h, extras, copies = load_header(backing, path)
            refuse_old_gcm(h, path)
            return cls._from_key(path, backing, h, extras, copies, get_key(h))
        except BaseException:
            if owns:
                backing.close()
            raise

    @classmethod
    def _from_key(cls, path, backing, h, extras, copies, key: bytearray) -> "Volume":
        mac_key = meta_key = note_key = snap_root = None
        try:
            mac_key = derive_key(key, h.uuid, MAC_INFO)
            verify_mac(mac_key, h, path)
            snap_root = snapshot_root_key(key)  # before the cipher takes (and wipes) the key
            if h.cipher == "xts":
                salt, digest = extras
                if luks2.volume_key_digest(key, salt) != digest:
                    raise IntegrityError(f"the LUKS2 digest of {path} does not match its volume key: "
                                         "the header was altered (other LUKS2 tools would refuse the key)")
                cipher = XtsCipher(key)
                store = XtsStore(backing, h, cipher)
                vol = cls(path, h, backing, store, cipher, mac_key, extras)
                vol._repair_luks(copies)
            else:
                meta_key = derive_key(key, h.uuid, GCM_META_INFO)
                note_key = derive_key(key, h.uuid, GCM_NOTE_INFO)
                cipher = SectorKeys(key, h.uuid)  # wipes key; the Volume closes it
                try:
                    store = GcmStore(backing, h, cipher, meta_key, mac_key, note_key, path,
                                     copy_damaged=not all(c.ok for c in copies))  # repairs on start
                except BaseException:
                    cipher.close()
                    raise
                vol = cls(path, h, backing, store, cipher, mac_key, extras)
            vol._snap_root = snap_root
            return vol
        except BaseException:
            _wipe(key, mac_key, meta_key, note_key, snap_root)
            raise
        finally:
            _wipe(key)

    # ---- header updates --------------------------------------------------------------------

    def _luks_bytes(self) -> bytes:
        salt, digest = self._extras
        return luks2.encode(self.header, salt, digest)

    def _repair_luks(self, copies) -> None:
        """Rewrite a damaged or stale LUKS2 copy from the valid newest one."""
        best = self.header.seqid
        bad = [i for i, c in enumerate(copies) if not (c.ok and c.seqid == best)]
        if not bad:
            return
        data = self._luks_bytes()
        for i in bad:
            self._backing.pwrite(i * luks2.HDR_SIZE, data[i * luks2.HDR_SIZE:(i + 1) * luks2.HDR_SIZE])
        self._backing.fdatasync()

    def _write_luks_both(self) -> None:
        """Atomic LUKS2 header update: primary then secondary, each made durable before the next."""
        self.header.seqid += 1
        data = self._luks_bytes()
        self._backing.fdatasync()
        self._backing.pwrite(0, data[:luks2.HDR_SIZE])
        self._backing.fdatasync()
        self._backing.pwrite(luks2.HDR_SIZE, data[luks2.HDR_SIZE:])
        self._backing.fdatasync()

    @property
    def size(self) -> int:
        """The volume's size in bytes (the header's, so a resize changes both at once)."""
        return self.header.size

    def resize(self, new_size: int) -> None:
        """Grow the volume to ``new_size`` bytes (shrinking is refused); atomic header update."""
        _check_size(new_size)
        store = self._live()
        if new_size < self.size:
            raise UsageError(f"cannot shrink {self.path} from {self.size} to {new_size} bytes: "
                             "volumes only grow (copy the data to a smaller volume instead)")
        if new_size == self.size:
            return
        with self._locks.exclusive():
            if store.flush_is_barrier:
                store.grow(new_size)
            self._backing.truncate(max(self._backing.size(), store.file_size_for(new_size)))
            self._backing.fdatasync()
            old = self.header.size
            self.header.size = new_size
            try:
                self.header.mac = compute_mac(self._mac_key, self.header)
                if self.header.cipher == "xts":
                    self._write_luks_both()
                else:
                    store._write_header(sync_after=True)
            except BaseException:  # the volume keeps its size unless the new header is on disk
                self.header.size = old
                self.header.mac = compute_mac(self._mac_key, self.header)
                raise

    # ---- I/O -------------------------------------------------------------------------------

    def _live(self):
        store = self._store
        if store is None:
            raise KeyAccessError(f"the key of volume {self.path} has been wiped (access revoked or "
                                 "volume closed); reopen it once access is restored")
        return store

    def _units(self, first: int, last: int) -> tuple[int, int]:
        u = self._store.lock_unit if self._store is not None else 1
        return first // u, -(-last // u)

    def read(self, offset: int, length: int) -> bytes | bytearray:
        """``length`` bytes from ``offset`` (short only at the end of the volume)."""
        if offset < 0 or length < 0:
            raise UsageError(f"invalid read range offset={offset} length={length}")
        if offset >= self.size or length == 0:
            return b""
        length = min(length, self.size - offset)
        ss = self.sector_size
        first, last = offset // ss, -(-(offset + length) // ss)
        buf = bytearray((last - first) * ss)
        self._live()
        with self._locks.lock(*self._units(first, last)):
            store = self._live()
            store.read_sectors(first, memoryview(buf))
        start = offset - first * ss
        if start == 0 and length == len(buf):
            return buf  # a bytearray: pyfuse3 and every caller take any buffer; no second copy
        return bytes(memoryview(buf)[start:start + length])

    def write(self, offset: int, data) -> None:
        """Write all of ``data`` (any bytes-like) at ``offset``; partial sectors are read-modify-written."""
        mv = memoryview(data).cast("B")
        n = len(mv)
        if offset < 0 or offset + n > self.size:
            raise UsageError(f"write of {n} bytes at {offset} is outside the volume (size {self.size})")
        if n == 0:
            return
        ss = self.sector_size
        first, last = offset // ss, -(-(offset + n) // ss)
        self._live()
        with self._locks.lock(*self._units(first, last)):
            store = self._live()
            cap = self._capture
            if cap is not None:
                cap.before_write(first, last)
            head = offset - first * ss
            if head == 0 and n % ss == 0:
                store.write_sectors(first, mv)
                return
            # Partial first and/or last sector: one bounce buffer over the whole range with the edge
            # sectors read first, so the store writes once (for GCM: one nonce allocation and one
            # seal of each metadata page, not one per piece).
            b = memoryview(bytearray((last - first) * ss))
            if head:
                store.read_sectors(first, b[:ss])
            if (offset + n) % ss and not (head and last - first == 1):
                store.read_sectors(last - 1, b[-ss:])
            b[head:head + n] = mv
            store.write_sectors(first, b)

    def discard(self, offset: int, length: int) -> None:
        """Make [offset, offset+length) read as zeros; whole sectors get their space back."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise UsageError(f"discard of {length} bytes at {offset} is outside the volume (size {self.size})")
        ss = self.sector_size
        first, last = -(-offset // ss), (offset + length) // ss
        if last <= first:
            if length:
                self.write(offset, bytes(length))
            return
        if offset < first * ss:
            self.write(offset, bytes(first * ss - offset))
        if (offset + length) > last * ss:
            self.write(last * ss, bytes(offset + length - last * ss))
        with self._locks.lock(*self._units(first, last)):
            store = self._live()
            cap = self._capture
            if cap is not None:
                cap.before_write(first, last)
            store.discard_sectors(first, last - first)

    def flush(self) -> None:
        """Durability point: every write that returned before flush() was called is durable on return."""
        store = self._live()
        if store.flush_is_barrier:
            with self._locks.exclusive():
                self._live().flush()
        else:
            store.flush()

    # ---- sector records (snapshots) --------------------------------------------------------

    def read_records(self, first: int, n: int) -> list[bytes | None]:
        """The records of sectors [first, first+n) as stored (volumed.volume.records: XTS
        ciphertext, GCM nonce+tag+ciphertext; None = absent). Takes no lock: the caller holds the
        volume still or uses a capture session. KeyAccessError once the key was wiped."""
        return read_records(self, first, n)

    def begin_capture(self, *, clock=None, max_kept_bytes: int | None = None) -> CaptureSession:
        """Fix this moment as a point in time while I/O goes on (a snapshot of a mounted volume):
        under the barrier (in-flight requests drain, new ones wait) flush and open a capture
        session, stamped with ``clock``'s time (the session's ``started``); O(1) besides the
        flush. ``max_kept_bytes`` (default records.DEFAULT_MAX_KEPT_BYTES) bounds the preserved
        records it holds. Read the records from the session's read_records, then close it
        (success or not). StateError if a session is open; KeyAccessError if wiped."""
        from volumed.clock import SYSTEM_CLOCK
        from volumed.volume.records import DEFAULT_MAX_KEPT_BYTES

        with self._locks.exclusive():
            store = self._live()
            if self._capture is not None:
                raise StateError(f"a snapshot of {self.path} is already being taken: wait for it "
                                 "to finish, then try again")
            store.flush()  # durable; GCM's volatile slots become the sectors' versions
            session = self._capture = CaptureSession(
                self, started=(clock or SYSTEM_CLOCK).now(),
                max_kept_bytes=max_kept_bytes or DEFAULT_MAX_KEPT_BYTES)
        return session

    @property
    def may_block(self) -> bool:
        """True while a capture session is open: a write may then read old records to preserve
        them and wait for the copier's chunk lock, so the mount runs requests in worker threads
        rather than on its event loop (volumed.mount.fs reads this)."""
        return self._capture is not None

    def snapshot_root(self) -> bytearray:
        """A copy of the root of this volume's snapshot manifest MAC keys (the caller wipes it);
        KeyAccessError once the key was wiped. Caller: volumed.snapshot.engine (seal a manifest,
        verify its parent)."""
        root = self._snap_root
        if root is None:
            raise KeyAccessError(f"the key of volume {self.path} has been wiped (access revoked or "
                                 "volume closed)")
        return bytearray(root)

    def _end_capture(self, session: CaptureSession) -> None:
        """CaptureSession.close: writes stop calling it (one in flight finds it closed)."""
        if self._capture is session:
            self._capture = None

    def wipe_key(self) -> None:
        """Revocation: wipe the key now (waits for in-flight requests); later I/O raises KeyAccessError."""
        with self._locks.exclusive():
            self._drop_key()

    def _drop_key(self) -> None:
        if self._store is not None and hasattr(self._store, "retire"):
            self._store.retire()
        if self._cipher is not None:
            self._cipher.close()
        _wipe(self._mac_key, getattr(self._store, "meta_key", None), getattr(self._store, "note_key", None),
              self._snap_root)
        self._cipher = self._store = self._snap_root = None

    def close(self) -> None:
        """Flush (if the key is present), wipe the key and close the backing file."""
        with self._locks.exclusive():
            try:
                if self._store is not None:
                    if self._store.flush_is_barrier:
                        self._store.close()
                    else:
                        self._store.flush()
            finally:
                self._drop_key()
                self._backing.close()

    def __enter__(self) -> "Volume":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
