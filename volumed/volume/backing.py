"""The backing file: the only object that touches a volume's bytes on disk.

BackingFile
    pread/pwrite/punch_hole/fdatasync/size/truncate over one file descriptor. ``pread`` returns a
    bytearray of exactly the length asked, zero-filled past the end of the file.
RecordingBackingFile(path, journal_path)
    The same interface for power-loss simulation. Before each pwrite or punch_hole it appends the
    pre-image of the range (offset, old bytes) to an undo journal; fdatasync truncates the journal
    (everything before it is durable); pwrite_durable is durable at once, so it is not journalled. The journal is not fsynced: a killed process leaves its
    writes in the page cache, and this is a simulation of what a power cut would then lose.
simulate_power_cut(path, journal_path, mode, seed) -> PowerCutReport
    Run after the writer died (or closed the file without flushing). Applies the crash model to the
    writes recorded since the last fdatasync: "all" drops every one, "random" drops a random subset
    of whole writes, "torn" keeps or drops every 4 KiB page of every write independently (tearing
    multi-page writes). A dropped piece reverts to what the last kept write (or the durable state)
    put there. Removes the journal.

Journal record: 16-byte little-endian header (u64 offset, u64 length) then ``length`` old bytes.
Callers: volumed.volume.device (BackingFile by default), the mount daemon's crash tests, our tests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import random
import secrets
import struct
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TypeAlias

from volumed.errors import FormatError

if TYPE_CHECKING:
    from typing_extensions import Buffer

    from volumed._native import VolumeCore as NativeCore

StrPath: TypeAlias = str | os.PathLike[str]

PAGE = 4096
_REC = struct.Struct("<QQ")
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


def _punch(fd: int, offset: int, length: int) -> None:
    import ctypes
    import ctypes.util

    global _fallocate
    if _fallocate is None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.fallocate
        fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        _fallocate = fn
    if _fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


_fallocate: Callable[[int, int, int, int], int] | None = None


class BackingFile:
    """A volume's backing file opened read-write (or read-only with ``readonly=True``)."""

    _sync_lost = 0  # the errno of a failed fdatasync: every later one fails (see fdatasync)

    def __init__(self, path: StrPath, *, readonly: bool = False, create: bool = False):
        flags = os.O_RDONLY if readonly else os.O_RDWR
        if create:
            flags |= os.O_CREAT | os.O_EXCL
        flags |= getattr(os, "O_CLOEXEC", 0)
        self.path = os.fspath(path)
        self.fd = os.open(self.path, flags, 0o600)
        self.readonly = readonly

    def native_spec(self) -> dict[str, int] | None:
        """The descriptors the native core serves this file with (VolumeCore keyword arguments:
        fd, journal_fd, ...), or None when a subclass hooks the calls (test tracers): then the
        reference core serves it, so every call still goes through the hooks."""
        return {"fd": self.fd} if type(self) is BackingFile else None

    def served_by(self, core: NativeCore) -> None:
        """Told by the format when a native core serves this file (it then does its I/O itself)."""
        return None

    def pread(self, offset: int, length: int) -> bytearray:
        """Exactly ``length`` bytes at ``offset``; bytes past end of file read as zeros."""
        buf = bytearray(length)
        self.preadinto(offset, buf)
        return buf

    def preadinto(self, offset: int, buf: Buffer) -> None:
        """Fill the writable buffer ``buf`` from ``offset`` (zeros past end of file)."""
        mv = memoryview(buf).cast("B")
        done = 0
        while done < len(mv):
            n = os.preadv(self.fd, [mv[done:]], offset + done)
            if n == 0:
                mv[done:] = bytes(len(mv) - done)
                return
            done += n

    def pwrite(self, offset: int, data: Buffer) -> None:
        """Write all of ``data`` at ``offset``."""
        mv = memoryview(data).cast("B")
        done = 0
        while done < len(mv):
            done += os.pwrite(self.fd, mv[done:], offset + done)

    def pwrite_durable(self, offset: int, data: Buffer) -> None:
        """Write ``data`` at ``offset`` and return once it is durable (RWF_DSYNC: this write only,
        not the others pending, cheaper than an fdatasync: docs/PERFORMANCE.md, "GCM
        write+fsync"). Falls back to pwrite + fdatasync where the flag is missing."""
        flag = getattr(os, "RWF_DSYNC", 0)
        if flag:
            try:
                if os.pwritev(self.fd, [data], offset, flag) == memoryview(data).nbytes:
                    return
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
        self.pwrite(offset, data)
        self.fdatasync()

    def punch_hole(self, offset: int, length: int) -> None:
        """Deallocate [offset, offset+length): reads return zeros afterwards; size unchanged."""
        if length > 0:
            _punch(self.fd, offset, length)

    def fdatasync(self) -> None:
        """Make every completed write durable. Once an fdatasync failed, every later call fails
        with EIO until the file is opened again: the kernel reports a write-back error once and
        leaves the failed pages clean, so a later fdatasync would succeed without their data
        (the native core's vb_sync keeps the same rule)."""
        if self._sync_lost:
            raise OSError(errno.EIO, "an earlier fdatasync of the backing file failed "
                          f"({os.strerror(self._sync_lost)}): writes since the last successful "
                          "flush may never have reached the disk; unmount and mount the volume again")
        try:
            os.fdatasync(self.fd)
        except OSError as exc:
            self._sync_lost = exc.errno or errno.EIO
            raise

    def size(self) -> int:
        """Current file size in bytes."""
        return os.fstat(self.fd).st_size

    def truncate(self, size: int) -> None:
        """Set the file size (used only to grow a sparse volume)."""
        os.ftruncate(self.fd, size)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def publish(tmp: str, path: str) -> None:
    """Give the finished file ``tmp`` its name ``path`` without ever replacing an existing file
    (a hard link; where the file system has none, a rename after checking), then make the name
    durable (fsync of the directory). FileExistsError if ``path`` exists. Caller: staged_file."""
    try:
        os.link(tmp, path)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, "exists", path) from None
        os.rename(tmp, path)
    fsync_dir(path)


def fsync_dir(path: str) -> None:
    """Make the directory entry of ``path`` durable (fsync of its directory)."""
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def staged_file(path: StrPath) -> Iterator[BackingFile]:
    """Build the new file ``path`` out of sight: yields a BackingFile on a hidden name in the same
    directory (``.NAME.tmp-RANDOM``); when the block ends normally the file is fdatasynced and
    published under ``path`` (``publish``: never replaces a file); when it raises, the file is
    removed, so a failure leaves nothing behind. FileExistsError if ``path`` exists at publication.
    Callers: Volume.create, export_luks."""
    path = os.fspath(path)
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)),
                       f".{os.path.basename(path)}.tmp-{secrets.token_hex(6)}")
    f = BackingFile(tmp, create=True)
    try:
        yield f
        f.fdatasync()
        f.close()
        publish(tmp, path)
    finally:
        f.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


class RecordingBackingFile(BackingFile):
    """BackingFile that keeps an undo journal of everything written since the last fdatasync."""

    def __init__(self, path: StrPath, journal_path: StrPath, *, readonly: bool = False,
                 create: bool = False) -> None:
        super().__init__(path, readonly=readonly, create=create)
        self.journal_path = os.fspath(journal_path)
        self._jfd = os.open(self.journal_path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)

    def native_spec(self) -> dict[str, int] | None:
        """The native core keeps the journal itself (vc_backing.c: same records, same rules)."""
        if type(self) is not RecordingBackingFile:
            return None
        return {"fd": self.fd, "journal_fd": self._jfd}

    def _record(self, offset: int, length: int) -> None:
        old = self.pread(offset, length)
        os.write(self._jfd, _REC.pack(offset, length) + bytes(old))

    def pwrite(self, offset: int, data: Buffer) -> None:
        mv = memoryview(data).cast("B")
        self._record(offset, len(mv))
        super().pwrite(offset, mv)

    def punch_hole(self, offset: int, length: int) -> None:
        if length > 0:
            self._record(offset, length)
        super().punch_hole(offset, length)

    def pwrite_durable(self, offset: int, data: Buffer) -> None:
        # Durable when it returns: a power cut cannot undo it, so it is not journalled. (Callers
        # write it over a range no pending write touches.)
        BackingFile.pwrite(self, offset, data)

    def fdatasync(self) -> None:
        super().fdatasync()
        os.ftruncate(self._jfd, 0)

    def close(self) -> None:
        super().close()
        if self._jfd >= 0:
            os.close(self._jfd)
            self._jfd = -1


@dataclasses.dataclass
class PowerCutReport:
    """What simulate_power_cut did: ``writes`` recorded since the last flush; ``dropped`` of them
    lost wholly or in part; ``torn`` of them kept in part; ``pages_dropped`` 4 KiB pieces undone."""

    writes: int
    dropped: int
    torn: int
    pages_dropped: int
    mode: str


def _read_journal(journal_path: str) -> list[tuple[int, bytes]]:
    recs = []
    with open(journal_path, "rb") as f:
        data = f.read()
    pos = 0
    while pos + _REC.size <= len(data):
        off, ln = _REC.unpack_from(data, pos)
        pos += _REC.size
        if pos + ln > len(data):
            raise FormatError(f"power-cut journal {journal_path} is truncated")
        recs.append((off, data[pos:pos + ln]))
        pos += ln
    return recs


def _pieces(off: int, ln: int) -> Iterator[tuple[int, int]]:
    """Split [off, off+ln) at 4 KiB page boundaries of the file."""
    end = off + ln
    while off < end:
        stop = min(end, (off // PAGE + 1) * PAGE)
        yield off, stop - off
        off = stop


def simulate_power_cut(path: StrPath, journal_path: StrPath, mode: str = "all",
                       seed: int | None = None) -> PowerCutReport:
    """Apply a power cut to ``path`` using the undo journal left by a RecordingBackingFile.

    The writer must be dead or closed. See the module docstring for the modes.
    """
    if mode not in ("all", "random", "torn"):
        raise ValueError(f"unknown power-cut mode {mode!r}")
    path, journal_path = os.fspath(path), os.fspath(journal_path)
    recs = _read_journal(journal_path) if os.path.exists(journal_path) else []
    rng = random.Random(seed)
    n = len(recs)
    # Which pieces (write index, page piece) survive.
    if mode == "all":
        keep_write = [False] * n
    else:
        keep_write = [rng.random() < 0.5 for _ in range(n)]
        if n and all(keep_write):
            keep_write[rng.randrange(n)] = False
    # Content after each write, per piece: the pre-image of the next write touching that piece, or
    # the current file content for the last one. Process pieces by (offset, length) identity.
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        history: dict[tuple[int, int], list[tuple[int, bytes]]] = {}
        for i, (off, old) in enumerate(recs):
            for poff, pln in _pieces(off, len(old)):
                history.setdefault((poff, pln), []).append((i, old[poff - off:poff - off + pln]))
        pages_dropped = 0
        piece_keep: dict[tuple[int, int, int], bool] = {}
        for (poff, pln), hist in history.items():
            for i, _old in hist:
                k = keep_write[i]
                if mode == "torn" and len(recs[i][1]) > PAGE:
                    k = rng.random() < 0.5
                piece_keep[(i, poff, pln)] = k
        if piece_keep and all(piece_keep.values()):  # a power cut that loses nothing proves nothing
            piece_keep[rng.choice(sorted(piece_keep))] = False
        for (poff, pln), hist in sorted(history.items()):
            # Pieces overlapping differently-aligned writes are handled per exact piece; our
            # writers are page-aligned, so pieces coincide.
            cur = _pread(fd, poff, pln)
            after = [h[1] for h in hist[1:]] + [cur]
            final = hist[0][1]  # durable state: before the first recorded write
            for (i, _old), content in zip(hist, after):
                if piece_keep[(i, poff, pln)]:
                    final = content
                else:
                    pages_dropped += 1
            if final != cur:
                _restore(fd, poff, final)
        os.ftruncate(fd, size)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    if os.path.exists(journal_path):
        os.unlink(journal_path)
    kept: dict[int, set[bool]] = {}
    for (i, _poff, _pln), k in piece_keep.items():
        kept.setdefault(i, set()).add(k)
    dropped = sum(1 for ks in kept.values() if False in ks)   # writes not (wholly) kept
    torn = sum(1 for ks in kept.values() if ks == {True, False})  # partly kept, partly dropped
    return PowerCutReport(writes=n, dropped=dropped, torn=torn, pages_dropped=pages_dropped, mode=mode)


def _pread(fd: int, off: int, ln: int) -> bytes:
    data = os.pread(fd, ln, off)
    return data + bytes(ln - len(data))


def _restore(fd: int, off: int, content: bytes) -> None:
    if len(content) == PAGE and off % PAGE == 0 and not any(content):
        _punch(fd, off, PAGE)
    else:
        os.pwrite(fd, content, off)
