"""A type per volume format: every decision that depends on the cipher lives here, not in
``if cipher == "xts"`` branches through the volume, snapshot and mount modules.

XtsFormat   LUKS2 (aes-xts-plain64), the production default; served by the native core
            (volumed._native.VolumeCore) unless the reference is asked for or the backing file is
            one whose every call Python must see (the fault layer, test tracers).
GcmFormat   volumed's authenticated format (docs/FORMAT.md); served by the native core over the
            native GCM store (native/vc_gcmstore.c) on the same terms as XTS, else by the reference
            core over the Python GcmStore (which begins every session either way).

Each format also says how its snapshot records are sealed and opened under a snapshot's key
(``snapshot_cipher``, ``open_record``, ``seal_record``: volumed.snapshot.recrypt) and whether a
record is the sector as stored (``records_are_sectors``: a restore under the same key copies it).

``format_of(name)`` gives the format of a header's ``cipher``. ``open_volume`` (Format.open) returns
an ``Opened``: the core, and the format's rules for resize, close and key wiping. Package-internal:
Volume (volumed.volume.device), the snapshot recrypt and restore code and the fault layer are the
callers; Opened reads the Volume's header and backing file.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import uuid as _uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Generic, Literal, Protocol, TypeAlias, TypeVar

import numpy as np

from volumed.cipher import XtsCipher
from volumed.errors import FormatError, IntegrityError, UsageError
from volumed.secrets import wipe
from volumed.volume import cores, gcmformat, gcmstore, luks2
from volumed.volume.backing import BackingFile
from volumed.volume.gcmstore import GcmStore, SectorKeys, init_groups
from volumed.volume.header import (GCM_META_INFO, GCM_NOTE_INFO, HeaderCopy, VolumeHeader,
                                   compute_mac, derive_key)
from volumed.volume.refcore import RecordReader, RefCore
from volumed.volume.xtsstore import XtsStore

if TYPE_CHECKING:
    from typing_extensions import Buffer

    from volumed._native import VolumeCore as NativeCore
    from volumed.volume.device import Volume

PAGE = 4096
_ZERO = bytes(PAGE)

LuksExtras: TypeAlias = tuple[bytes, bytes]
"""What a LUKS2 header holds besides the VolumeHeader: the volume key digest's salt and digest."""
Extras: TypeAlias = LuksExtras | None
"""A format's extras (load_header's second value): LuksExtras for XTS, None for GCM."""


class _Closable(Protocol):
    def close(self) -> None: ...


CipherT = TypeVar("CipherT", bound=_Closable)


@dataclasses.dataclass(frozen=True)
class RecordCipher(Generic[CipherT]):
    """A format's sector cipher under a snapshot's data key (``cipher``: XtsCipher, SectorKeys)
    bound to that format's rules for the snapshot records it opens and seals, so a caller never
    pairs a cipher with another format's rules. close() wipes the key."""

    cipher: CipherT
    open_with: Callable[[CipherT, memoryview, int, bytes, str], None]
    seal_with: Callable[[CipherT, Buffer, int, int], bytes]

    def open_record(self, out: memoryview, sector: int, rec: bytes, where: str) -> None:
        """Decrypt one record into ``out`` (one sector); IntegrityError if it fails to verify."""
        self.open_with(self.cipher, out, sector, rec, where)

    def seal_record(self, plain: Buffer, sector: int, nonce_base: int) -> bytes:
        """The record of one plaintext sector."""
        return self.seal_with(self.cipher, plain, sector, nonce_base)

    def close(self) -> None:
        self.cipher.close()


class Opened:
    """An open volume's core plus its format's rules (made by Format.open)."""

    core: cores.VolumeCore
    flush_is_barrier = False

    def resize(self, vol: Volume, new_size: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Final flush, then wipe the key (the Volume closes the backing file)."""
        try:
            self.core.flush()
        finally:
            self.drop()

    def drop(self) -> None:
        """Wipe the key (waits for calls in flight); later I/O raises KeyAccessError."""
        self.core.wipe_key()

    def kill(self) -> None:
        """Wipe the key with no bookkeeping I/O at all (the process dying, in the crash tests)."""
        self.core.wipe_key()

    @property
    def native(self) -> NativeCore | None:
        """The native VolumeCore serving this volume, or None (the reference core serves it)."""
        return None


def _commit_header(vol: Volume, new_size: int, write: Callable[[], None]) -> None:
    """Set the header's size and MAC and write it with ``write()``; on failure the volume keeps
    its size (the header in memory is put back)."""
    old = vol.header.size
    vol.header.size = new_size
    try:
        vol.header.mac = compute_mac(vol._mac_key, vol.header)
        write()
    except BaseException:
        vol.header.size = old
        vol.header.mac = compute_mac(vol._mac_key, vol.header)
        raise


# ---- XTS (LUKS2) ---------------------------------------------------------------------------------

def xts_records(backing: BackingFile, base: int) -> RecordReader:
    """Reference reader of XTS records: ciphertext in place; an all-zero sector is a hole (None)."""
    def read(first: int, n: int) -> list[bytes | None]:
        data = bytes(backing.pread(base + first * PAGE, n * PAGE)).ljust(n * PAGE, b"\0")
        return [None if data[i * PAGE:(i + 1) * PAGE] == _ZERO else data[i * PAGE:(i + 1) * PAGE]
                for i in range(n)]
    return read


class XtsOpened(Opened):
    """``core`` is ``native`` (the native core) or a RefCore over an XtsStore (native None)."""

    def __init__(self, core: cores.VolumeCore, native: NativeCore | None):
        self.core = core
        self._native = native

    @property
    def native(self) -> NativeCore | None:
        return self._native

    def resize(self, vol: Volume, new_size: int) -> None:
        backing = vol._backing
        backing.truncate(max(backing.size(), vol.header.data_offset + new_size))
        backing.fdatasync()
        _commit_header(vol, new_size, lambda: XTS.write_header(vol))
        self.core.set_size(new_size)


class XtsFormat:
    name: Literal["xts"] = "xts"
    key_bytes = 64
    format_name = "luks2"
    label = "AES-256-XTS, LUKS2-compatible"
    data_offset = luks2.DATA_OFFSET
    format_version = 1
    exports_luks = True

    def file_size_for(self, data_offset: int, size: int, version: int = 1) -> int:
        return data_offset + size

    @staticmethod
    def refuse_old_version(h: VolumeHeader, path: str) -> None:
        return None  # LUKS2 has one version

    def initialize(self, backing: BackingFile, h: VolumeHeader, key: bytearray,
                   mac_key: bytearray) -> LuksExtras:
        """Lay out a new volume's file (sparse data area, both LUKS2 header copies)."""
        salt = os.urandom(32)
        digest = luks2.volume_key_digest(key, salt)
        h.mac = compute_mac(mac_key, h)
        backing.truncate(h.data_offset + h.size)
        backing.pwrite(0, luks2.encode(h, salt, digest))
        return salt, digest

    def open(self, path: str, backing: BackingFile, h: VolumeHeader, extras: Extras,
             copies: list[HeaderCopy], key: bytearray, mac_key: bytearray,
             core: str | None) -> Opened:
        assert extras is not None, "a LUKS2 header has a digest"
        salt, digest = extras
        if luks2.volume_key_digest(key, salt) != digest:
            raise IntegrityError(f"the LUKS2 digest of {path} does not match its volume key: "
                                 "the header was altered (other LUKS2 tools would refuse the key)")
        spec = backing.native_spec()
        native = cores.native_module() if cores.choose(core) == "native" and spec else None
        if native is not None and spec is not None:
            ncore: NativeCore = native.VolumeCore(cipher="xts", key=key, data_offset=h.data_offset,
                                                  size=h.size, name=path, **spec)
            backing.served_by(ncore)
            return XtsOpened(ncore, ncore)
        cipher = XtsCipher(key)
        store = XtsStore(backing, h, cipher)
        return XtsOpened(RefCore(store, size=h.size, sector_size=h.sector_size, path=path,
                                 records=xts_records(backing, h.data_offset), drop=cipher.close),
                         None)

    @staticmethod
    def header_bytes(vol: Volume) -> bytes:
        assert vol._extras is not None, "a LUKS2 header has a digest"
        salt, digest = vol._extras
        return luks2.encode(vol.header, salt, digest)

    def repair(self, vol: Volume, copies: list[HeaderCopy]) -> None:
        """Rewrite a damaged or stale LUKS2 copy from the valid newest one."""
        best = vol.header.seqid
        bad = [i for i, c in enumerate(copies) if not (c.ok and c.seqid == best)]
        if not bad:
            return
        data = self.header_bytes(vol)
        for i in bad:
            vol._backing.pwrite(i * luks2.HDR_SIZE, data[i * luks2.HDR_SIZE:(i + 1) * luks2.HDR_SIZE])
        vol._backing.fdatasync()

    def write_header(self, vol: Volume) -> None:
        """Atomic LUKS2 header update: primary then secondary, each made durable before the next."""
        vol.header.seqid += 1
        data = self.header_bytes(vol)
        b = vol._backing
        b.fdatasync()
        b.pwrite(0, data[:luks2.HDR_SIZE])
        b.fdatasync()
        b.pwrite(luks2.HDR_SIZE, data[luks2.HDR_SIZE:])
        b.fdatasync()

    @staticmethod
    def backing_pages(header: VolumeHeader, sectors: Iterable[int]) -> list[int]:
        """Backing-file offsets of the 4 KiB pages holding ``sectors``' data (in place)."""
        return [header.data_offset + s * header.sector_size for s in sectors]

    # Snapshot records (volumed.snapshot.recrypt): a record is the sector's ciphertext, so a
    # restore under the snapshot's own key copies records into place (``records_are_sectors``).
    records_are_sectors = True

    @staticmethod
    def snapshot_cipher(key: bytearray, aad_uuid: str) -> RecordCipher[XtsCipher]:
        return RecordCipher(XtsCipher(key), XtsFormat.open_record, XtsFormat.seal_record)

    @staticmethod
    def open_record(c: XtsCipher, out: memoryview, sector: int, rec: bytes, where: str) -> None:
        """Decrypt one record into ``out`` (one sector)."""
        out[:] = rec
        c.decrypt(out, sector)

    @staticmethod
    def seal_record(c: XtsCipher, plain: Buffer, sector: int, nonce_base: int) -> bytes:
        buf = bytearray(PAGE)
        c.encrypt(plain, sector, out=buf)
        return bytes(buf)


# ---- GCM -----------------------------------------------------------------------------------------

def gcm_records(store: GcmStore) -> RecordReader:
    """GCM records: nonce + tag + ciphertext of the slot a read uses; None when never written."""
    F = gcmformat

    def read(first: int, n: int) -> list[bytes | None]:
        out: list[bytes | None] = []
        for s, slot in zip(range(first, first + n), store.current_slots(first, n)):
            if slot is None:
                out.append(None)
                continue
            k, counter, tag, salt = slot
            g, i = divmod(s, F.GROUP_SECTORS)
            data = bytes(store.backing.pread(F.slot_offset(g, k, i), PAGE)).ljust(PAGE, b"\0")
            out.append(salt + F.nonce_bytes(np.array([counter], dtype=np.uint64)) + tag + data)
        return out
    return read


class GcmOpened(Opened):
    flush_is_barrier = True
    core: RefCore

    def __init__(self, store: GcmStore, cipher: SectorKeys, path: str, h: VolumeHeader):
        self.store = store
        self._cipher = cipher
        self._killed = False
        self.core = RefCore(store, size=h.size, sector_size=h.sector_size, path=path,
                            records=gcm_records(store), drop=self._drop_keys)

    def _drop_keys(self) -> None:
        if not self._killed:
            self.store.retire()  # under the barrier: records a clean session if nothing is dirty
        self._cipher.close()
        wipe(self.store.meta_key, self.store.note_key)

    def kill(self) -> None:
        self._killed = True
        self.core.wipe_key()

    def resize(self, vol: Volume, new_size: int) -> None:
        with self.core.barrier():
            self.store.grow(new_size)
            backing = vol._backing
            backing.truncate(max(backing.size(), self.store.file_size_for(new_size)))
            backing.fdatasync()
            _commit_header(vol, new_size, lambda: self.store.write_header(sync_after=True))
            self.core.size = new_size

    def close(self) -> None:
        try:
            with self.core.barrier():
                self.store.close()  # the barrier flush and the header's final state
        finally:
            self.drop()


# The gcm= argument of a native GCM core (native/vcore_py.c, vcpy_init).
GcmSessionArg = tuple[bytearray, bytearray, bytearray, bytes, bytes, int, int, int, int, int, int,
                      int, bytes, str, str]


class GcmNativeOpened(Opened):
    """A GCM volume served by the native GCM store (native/vc_gcmstore.c) in a native core."""

    flush_is_barrier = True

    def __init__(self, core: NativeCore, h: VolumeHeader, mac_key: bytearray) -> None:
        self.core: NativeCore = core
        self._h = h
        self._mac_key = mac_key  # the Volume's own (it wipes it at close)

    @property
    def native(self) -> NativeCore:
        return self.core

    def _sync_header(self) -> None:
        """The header in memory follows what the core wrote (seqid, nonce counters)."""
        seqid, reserved, flushed, _next = self.core.gcm_state()
        h = self._h
        h.seqid, h.nonce_reserved, h.nonce_flushed = seqid, reserved, flushed
        h.mac = compute_mac(self._mac_key, h)

    def resize(self, vol: Volume, new_size: int) -> None:
        _commit_header(vol, new_size, lambda: self.core.gcm_grow(
            new_size, *gcmformat.header_templates(vol.header)))
        self._sync_header()

    def close(self) -> None:
        try:
            self.core.close_clean()  # the barrier flush and the header's final state
            self._sync_header()
        finally:
            self.drop()

    def kill(self) -> None:
        self.core.kill()


def _native_session(store: GcmStore, h: VolumeHeader, meta_key: bytearray, note_key: bytearray,
                    mac_key: bytearray) -> GcmSessionArg:
    """The ``gcm=`` argument of a native GCM VolumeCore: the session ``store`` began (the keys are
    copied into the core's locked memory and these buffers wiped by it; mac_key is copied first,
    the Volume keeps its own)."""
    st = store.session_state()
    doubtful = b"".join(struct.pack("=QQ", a, b) for a, b in st.doubtful)
    mac_t, hdr_t = gcmformat.header_templates(h)
    return (meta_key, note_key, bytearray(mac_key), _uuid.UUID(h.uuid).bytes, st.salt, st.next,
            h.nonce_reserved, h.nonce_flushed, h.seqid, st.note_seq, gcmstore.RESERVE_CHUNK,
            gcmstore.NONCE_LIMIT, doubtful, mac_t, hdr_t)


class GcmFormat:
    name: Literal["gcm"] = "gcm"
    key_bytes = 32
    format_name = "volumed-gcm"
    label = "AES-256-GCM, authenticated"
    data_offset = gcmformat.DATA_OFFSET
    format_version = gcmformat.VERSION
    exports_luks = False

    def file_size_for(self, data_offset: int, size: int, version: int = gcmformat.VERSION) -> int:
        return gcmformat.file_size_for(size, version)

    @staticmethod
    def refuse_old_version(h: VolumeHeader, path: str) -> None:
        """A GCM volume of format 1 is not opened (its nonces could repeat after a header
        rollback): FormatError that says how to upgrade it. Caller: Volume._open (the CLI and the
        mount daemon)."""
        if h.format_version < gcmformat.VERSION:
            raise FormatError(f"{path} is a GCM volume of format v{h.format_version}, which this "
                              f"volumed no longer writes (its nonces could repeat after a header "
                              f"rollback): run `volumed upgrade {path}` once (it rewrites the volume "
                              f"as format v{gcmformat.VERSION}), or restore a snapshot of it with "
                              f"`volumed restore`")

    def initialize(self, backing: BackingFile, h: VolumeHeader, key: bytearray,
                   mac_key: bytearray) -> None:
        meta_key = derive_key(key, h.uuid, GCM_META_INFO)
        try:
            h.mac = compute_mac(mac_key, h)
            backing.truncate(gcmformat.file_size_for(h.size))
            init_groups(backing, meta_key, 0, gcmformat.groups_for(h.size))
            for seq in (0, 1):
                h.seqid = seq
                off, data = gcmformat.encode_copy(h)
                backing.pwrite(off, data)
        finally:
            wipe(meta_key)
        return None

    def open(self, path: str, backing: BackingFile, h: VolumeHeader, extras: Extras,
             copies: list[HeaderCopy], key: bytearray, mac_key: bytearray,
             core: str | None) -> Opened:
        """The Python GcmStore begins the session (note, doubtful ranges and their resolution,
        reservation, header repair: one implementation of the open-time rules); the native GCM
        store continues it when the native core serves this backing file, else the reference
        core serves it over that GcmStore."""
        meta_key = derive_key(key, h.uuid, GCM_META_INFO)
        note_key = derive_key(key, h.uuid, GCM_NOTE_INFO)
        spec = backing.native_spec()
        native = cores.native_module() if cores.choose(core) == "native" and spec else None
        core_key = bytearray(key) if native is not None else None  # the native core wipes it
        cipher = None
        try:
            cipher = SectorKeys(key, h.uuid)  # wipes key; GcmOpened closes it
            store = GcmStore(backing, h, cipher, meta_key, mac_key, note_key, path,  # repairs on start
                             copy_damaged=not all(c.ok for c in copies))
            if native is None or spec is None:
                return GcmOpened(store, cipher, path, h)
            ncore: NativeCore = native.VolumeCore(
                cipher="gcm", key=core_key, data_offset=h.data_offset, size=h.size, name=path,
                gcm=_native_session(store, h, meta_key, note_key, mac_key), **spec)
            backing.served_by(ncore)
            cipher.close()
            return GcmNativeOpened(ncore, h, mac_key)
        except BaseException:
            if cipher is not None:
                cipher.close()
            wipe(meta_key, note_key, core_key)
            raise

    def repair(self, vol: Volume, copies: list[HeaderCopy]) -> None:
        return None  # GcmStore repairs its header copies when it starts

    @staticmethod
    def backing_pages(header: VolumeHeader, sectors: Iterable[int]) -> list[int]:
        """Backing-file offsets of the pages holding ``sectors``' data (both slots of each)."""
        F = gcmformat
        return [F.slot_offset(s // F.GROUP_SECTORS, k, s % F.GROUP_SECTORS)
                for s in sectors for k in (0, 1)]

    # Snapshot records: session salt (16) + nonce (12) + tag (16) + ciphertext (format 2), or
    # nonce + tag + ciphertext (format 1, read only); the AAD binds the UUID of the volume the
    # sectors were written on. Never copied into place (a restore re-encrypts).
    records_are_sectors = False

    @staticmethod
    def snapshot_cipher(key: bytearray, aad_uuid: str) -> RecordCipher[SectorKeys]:
        # a fresh salt for the records this object seals
        return RecordCipher(SectorKeys(key, aad_uuid), GcmFormat.open_record, GcmFormat.seal_record)

    @staticmethod
    def open_record(c: SectorKeys, out: memoryview, sector: int, rec: bytes, where: str) -> None:
        S = gcmformat.SALT_BYTES
        g, rec = (c.for_salt(rec[:S]), rec[S:]) if len(rec) > PAGE + 28 else (c.v1(), rec)
        out[:] = rec[28:]
        if g.decrypt(out, sector, rec[:12], rec[12:28]):
            raise IntegrityError(f"sector {sector} of {where} fails authentication: the "
                                 "snapshot does not match its key; do not restore it")

    @staticmethod
    def seal_record(c: SectorKeys, plain: Buffer, sector: int, nonce_base: int) -> bytes:
        buf = bytearray(PAGE)
        nonce = gcmformat.nonce_bytes(np.array([nonce_base + sector], dtype=np.uint64))
        tag = bytearray(16)
        c.session().encrypt(plain, sector, nonce, tag, out=buf)
        return c.salt + nonce + bytes(tag) + bytes(buf)


VolumeFormat: TypeAlias = XtsFormat | GcmFormat
"""A format type: what a volume of one cipher does differently."""

XTS = XtsFormat()
GCM = GcmFormat()
FORMATS: dict[str, VolumeFormat] = {"xts": XTS, "gcm": GCM}


def format_of(cipher: str) -> VolumeFormat:
    """The format type for a header's cipher name; UsageError for an unknown one."""
    try:
        return FORMATS[cipher]
    except KeyError:
        raise UsageError(f"invalid cipher {cipher!r}: choose xts or gcm") from None
