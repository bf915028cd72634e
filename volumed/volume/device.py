"""The block device: a volume opened with its key, read and written at any byte range.

Volume.create makes a backing file (XTS = LUKS2, GCM = volumed's own format), Volume.open unwraps
the key through KMS and verifies the header MAC, and the instance serves read/write/discard/flush
from any number of threads through its core (volumed.volume.cores: the native core by default,
the Python reference core on request or without the extension). What depends on the format is in
volumed.volume.formats; the I/O rules (range locks, read-modify-write of partial sectors, the key
latch, the capture session) are the core's:

- Overlapping requests serialize; disjoint ones run in parallel.
- flush() is the durability point (fdatasync for XTS; GCM's is a barrier).
- wipe_key() waits for in-flight requests and wipes the key; later requests raise KeyAccessError.
- read_records() returns sectors as stored (what a snapshot keeps); begin_capture() starts a
  copy-on-write session (volumed.volume.records): while it is open, write and discard first
  preserve the old records of the sectors they change that it has not copied yet.

The header (LUKS2 or GCM copies, resize, repair) is written here through the Python BackingFile.
Callers: the CLI (volumed.cli.volume_cmd), the mount daemon, tests.
"""

from __future__ import annotations

import fcntl
import os
import uuid as _uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from volumed.clock import SYSTEM_CLOCK, Clock, iso_utc
from volumed.errors import FormatError, KeyAccessError, StateError, UsageError, VolumedError
from volumed.secrets import wipe
from volumed.volume import gcmformat, luks2
from volumed.volume.backing import BackingFile, StrPath, staged_file
from volumed.volume.cores import VolumeCore
from volumed.volume.formats import Extras, Opened, format_of
from volumed.volume.header import (CONTEXT_DB, CONTEXT_EBS, MAC_INFO, SECTOR_SIZE, HeaderCopy,
                                   HeaderReader, VolumeHeader, derive_key, snapshot_root_key,
                                   verify_mac)
from volumed.volume.ids import new_db_id, new_ebs_id, validate_db_id, validate_ebs_id
from volumed.volume.keywrap import KmsClient, new_wrapped_key, unwrap
from volumed.volume.records import DEFAULT_MAX_KEPT_BYTES, CaptureSession

if TYPE_CHECKING:
    from typing_extensions import Buffer

    from volumed._native import VolumeCore as NativeCore

MAX_SIZE = 1 << 50  # 1 PiB


def _reader(backing: BackingFile) -> HeaderReader:
    def read(offset: int, length: int) -> bytes:
        return bytes(backing.pread(offset, length))
    return read


def load_header(backing: BackingFile, path: str = "") -> tuple[VolumeHeader, Extras, list[HeaderCopy]]:
    """Parse a backing file's header: (header, extras, copies). FormatError says what is wrong.

    extras is (digest salt, digest) for LUKS2 volumes, None for GCM."""
    fsize = backing.size()
    if fsize < 2 * gcmformat.HDR_SIZE:
        raise FormatError(f"{path} is too short ({fsize} bytes) to be a volumed volume (truncated?)")
    read = _reader(backing)
    head, head2 = read(0, 8), read(luks2.HDR_SIZE, 8)
    if head[:6] == luks2.MAGIC_1 or head2[:6] == luks2.MAGIC_2:
        h, salt, digest, copies = luks2.decode(read)
        extras: Extras = (salt, digest)
    elif head == gcmformat.MAGIC or head2 == gcmformat.MAGIC:
        h, copies = gcmformat.decode(read)
        extras = None
    else:
        raise FormatError(f"{path} is not a volumed volume (no LUKS2 or volumed-GCM header)")
    need = format_of(h.cipher).file_size_for(h.data_offset, h.size, h.format_version)
    if fsize < need:
        raise FormatError(f"{path} is truncated: its header says {need} bytes but the file holds {fsize}")
    return h, extras, copies


def _open_backing(path: StrPath, readonly: bool = False) -> BackingFile:
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


def _lock_exclusive(backing: BackingFile, path: str) -> None:
    """One open Volume per backing file (flock, released when the process dies). Two writers
    would reserve the same GCM nonces and undo each other's header updates."""
    try:
        fcntl.flock(backing.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise StateError(f"volume {path} is already open (mounted or in use by another volumed "
                         "process); unmount or close it first") from None


def parse_size(text: str | int) -> int:
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

    def __init__(self, path: StrPath, header: VolumeHeader, backing: BackingFile, opened: Opened,
                 mac_key: bytearray, extras: Extras):
        self.path = os.fspath(path)
        self.header: VolumeHeader = header
        self.sector_size = header.sector_size
        self.format = format_of(header.cipher)
        self._backing = backing
        self._opened: Opened | None = opened          # None once closed (the core is let go)
        self._flush_is_barrier = opened.flush_is_barrier
        self._core: VolumeCore | None = opened.core   # None once the key is wiped
        self._mac_key = mac_key
        self._extras = extras
        self._capture: CaptureSession | None = None   # the open capture session, if any
        self._snap_root: bytearray | None = None        # header.snapshot_root_key of the data key

    # ---- creation and opening --------------------------------------------------------------

    @classmethod
    def create(cls, path: StrPath, *, size: int, kms: KmsClient, key_id: str = "alias/aws/rds",
               cipher: str = "xts",
               db_id: str | None = None, ebs_id: str | None = None) -> VolumeHeader:
        """Create a sparse volume file at ``path`` (must not exist); return its header.

        Asks KMS for a data key with GenerateDataKeyWithoutPlaintext under ``key_id`` and the
        context {aws:rds:db-id, aws:ebs:id}, then Decrypt (same caller) to seal the header MAC
        (and for GCM the metadata pages). Leaves nothing behind on failure."""
        path = os.fspath(path)
        fmt = format_of(cipher)
        _check_size(size)
        db_id = validate_db_id(db_id) if db_id else new_db_id()
        ebs_id = validate_ebs_id(ebs_id) if ebs_id else new_ebs_id()
        if os.path.lexists(path):
            raise UsageError(f"{path} already exists: choose a new path (volumed never overwrites a file)")
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise UsageError(f"cannot create {path}: directory {parent} does not exist")
        context = {CONTEXT_DB: db_id, CONTEXT_EBS: ebs_id}
        wrapped, arn = new_wrapped_key(kms, key_id, fmt.key_bytes, context)
        key = unwrap(kms, arn, wrapped, context, expect_len=fmt.key_bytes)
        vol_uuid = str(_uuid.uuid4())
        h = VolumeHeader(
            uuid=vol_uuid, cipher=cipher, size=size, sector_size=SECTOR_SIZE,
            data_offset=fmt.data_offset, key_arn=arn, wrapped_key=wrapped, context=context,
            db_id=db_id, ebs_id=ebs_id,
            created=iso_utc(SYSTEM_CLOCK.time()),
            format=fmt.format_name, format_version=fmt.format_version)
        mac_key = None
        try:
            mac_key = derive_key(key, vol_uuid, MAC_INFO)
            with staged_file(path) as backing:
                fmt.initialize(backing, h, key, mac_key)
        except FileExistsError:
            raise UsageError(f"{path} already exists: choose a new path (volumed never overwrites a file)") from None
        except OSError as exc:
            raise VolumedError(f"cannot create volume {path}: {exc.strerror}") from None
        finally:
            wipe(key, mac_key)
        return h

    @staticmethod
    def read_header(path: StrPath) -> VolumeHeader:
        """The header of the volume at ``path`` (no key needed; nothing verified but checksums)."""
        backing = _open_backing(path, readonly=True)
        try:
            return load_header(backing, os.fspath(path))[0]
        finally:
            backing.close()

    @classmethod
    def open(cls, path: StrPath, *, kms: KmsClient, grant_tokens: list[str] | None = None,
             backing: BackingFile | None = None, core: str | None = None) -> "Volume":
        """Open a volume: parse the header, unwrap the key (Decrypt with the header's key ARN,
        context and ``grant_tokens``), verify the header MAC, repair a damaged header copy.
        ``core``: "native" or "reference" (volumed.volume.cores.choose; default native)."""
        def unwrap_key(h: VolumeHeader) -> bytearray:
            return unwrap(kms, h.key_arn, h.wrapped_key, h.context, grant_tokens,
                          expect_len=format_of(h.cipher).key_bytes)

        return cls._open(path, backing, unwrap_key, core)

    @classmethod
    def _open_with_key(cls, path: StrPath, key: bytearray, backing: BackingFile | None = None,
                       core: str | None = None) -> "Volume":
        """Open with an already unwrapped key (the crash harness uses it). Wipes ``key``."""
        return cls._open(path, backing, lambda h: key, core)

    @classmethod
    def _open(cls, path: StrPath, backing: BackingFile | None,
              get_key: Callable[[VolumeHeader], bytearray], core: str | None = None) -> "Volume":
        """Shared by open and _open_with_key: parse, get the key with get_key(header), set up."""
        name = os.fspath(path)
        owns = backing is None
        opened = _open_backing(name) if backing is None else backing
        try:
            _lock_exclusive(opened, name)
            h, extras, copies = load_header(opened, name)
            format_of(h.cipher).refuse_old_version(h, name)
            return cls._from_key(name, opened, h, extras, copies, get_key(h), core)
        except BaseException:
            if owns:
                opened.close()
            raise

    @classmethod
    def _from_key(cls, path: str, backing: BackingFile, h: VolumeHeader, extras: Extras,
                  copies: list[HeaderCopy], key: bytearray, core: str | None = None) -> "Volume":
        mac_key = snap_root = None
        try:
            mac_key = derive_key(key, h.uuid, MAC_INFO)
            verify_mac(mac_key, h, path)
            snap_root = snapshot_root_key(key)  # before the core takes (and wipes) the key
            fmt = format_of(h.cipher)
            opened = fmt.open(path, backing, h, extras, copies, key, mac_key, core)
            vol = cls(path, h, backing, opened, mac_key, extras)
            vol._snap_root = snap_root
            fmt.repair(vol, copies)
            return vol
        except BaseException:
            wipe(key, mac_key, snap_root)
            raise
        finally:
            wipe(key)

    @property
    def size(self) -> int:
        """The volume's size in bytes (the header's, so a resize changes both at once)."""
        return self.header.size

    def resize(self, new_size: int) -> None:
        """Grow the volume to ``new_size`` bytes (shrinking is refused); atomic header update."""
        _check_size(new_size)
        self._live()
        if new_size < self.size:
            raise UsageError(f"cannot shrink {self.path} from {self.size} to {new_size} bytes: "
                             "volumes only grow (copy the data to a smaller volume instead)")
        if new_size == self.size:
            return
        assert self._opened is not None, "a volume whose key is present is open"
        self._opened.resize(self, new_size)

    # ---- I/O (the core serves it: volumed.volume.cores) -------------------------------------

    def _live(self) -> VolumeCore:
        core = self._core
        if core is None:
            raise KeyAccessError.wiped(self.path)
        return core

    @property
    def native_core(self) -> NativeCore | None:
        """The native VolumeCore (volumed._native) serving this volume, for the FUSE engine, or
        None when the reference core serves it (a fault-injecting backing on the python engine,
        core="reference")."""
        return self._opened.native if self._opened is not None and self._core is not None else None

    @property
    def flush_is_barrier(self) -> bool:
        """True when flush waits for every request in flight (GCM): the mount runs it off its loop."""
        return self._flush_is_barrier

    def read(self, offset: int, length: int) -> bytes | bytearray:
        """``length`` bytes from ``offset`` (short only at the end of the volume)."""
        if offset < 0 or length < 0:
            raise UsageError(f"invalid read range offset={offset} length={length}")
        if offset >= self.size or length == 0:
            return b""
        return self._live().read(offset, min(length, self.size - offset))

    def write(self, offset: int, data: Buffer) -> None:
        """Write all of ``data`` (any bytes-like) at ``offset``; partial sectors are read-modify-written."""
        self._live().write(offset, data)

    def discard(self, offset: int, length: int) -> None:
        """Make [offset, offset+length) read as zeros; whole sectors get their space back."""
        self._live().discard(offset, length)

    def flush(self) -> None:
        """Durability point: every write that returned before flush() was called is durable on return."""
        self._live().flush()

    # ---- sector records (snapshots) --------------------------------------------------------

    def read_records(self, first: int, n: int) -> list[bytes | None]:
        """The records of sectors [first, first+n) as stored (volumed.volume.records: XTS
        ciphertext, GCM nonce+tag+ciphertext; None = absent). Takes no lock: the caller holds the
        volume still or uses a capture session. KeyAccessError once the key was wiped."""
        return self._live().read_records(first, n)

    def begin_capture(self, *, clock: Clock | None = None,
                      max_kept_bytes: int | None = None) -> CaptureSession:
        """Fix this moment as a point in time while I/O goes on (a snapshot of a mounted volume):
        under the barrier (in-flight requests drain, new ones wait) flush and open a capture
        session, stamped with ``clock``'s time (the session's ``started``); O(1) besides the
        flush. ``max_kept_bytes`` (default records.DEFAULT_MAX_KEPT_BYTES) bounds the preserved
        records it holds. Read the records from the session's read_records, then close it
        (success or not). StateError if a session is open; KeyAccessError if wiped."""
        core = self._live()
        max_kept_bytes = max_kept_bytes or DEFAULT_MAX_KEPT_BYTES
        core.capture_begin(max_kept_bytes)
        session = self._capture = CaptureSession(self, core, started=(clock or SYSTEM_CLOCK).now(),
                                                 max_kept_bytes=max_kept_bytes)
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
            raise KeyAccessError.wiped(self.path)
        return bytearray(root)

    def _end_capture(self, session: CaptureSession) -> None:
        """CaptureSession.close: writes stop calling it (one in flight finds it closed)."""
        if self._capture is session:
            self._capture = None

    def wipe_key(self) -> None:
        """Revocation: wipe the key now (waits for in-flight requests); later I/O raises KeyAccessError."""
        if self._core is not None and self._opened is not None:
            self._opened.drop()
        self._drop_key()

    def _drop_key(self) -> None:
        wipe(self._mac_key, self._snap_root)
        self._core = None
        self._snap_root = None

    def close(self) -> None:
        """Flush (if the key is present), wipe the key and close the backing file."""
        self._end(lambda opened: opened.close())

    def abandon(self) -> None:
        """What the process dying does (the crash tests): no flush, no header update; the key is
        wiped and every descriptor of the backing file this Volume holds is closed (the native
        core's own too, unless a FUSE engine still holds the core)."""
        self._end(lambda opened: opened.kill())

    def _end(self, finish: Callable[[Opened], None]) -> None:
        """close/abandon: ``finish`` the opened format if the key is present, then always wipe the
        key, keep only the format's flush rule and close the backing file."""
        try:
            if self._core is not None and self._opened is not None:
                finish(self._opened)
        finally:
            self._drop_key()
            self._opened = None
            self._backing.close()

    def __enter__(self) -> "Volume":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
