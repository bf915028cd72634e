"""pyfuse3 Operations presenting a volume as one regular file.

The mount point is a directory holding exactly one regular file, named after the volume's EBS id and
sized as the volume: the decrypted view. Every handler checks the access latch first, so once the
key is revoked every request fails with EIO (volumed.mount.errno_map does the mapping). An
OSError of the backing file reaches the caller as its own errno where that means something to it
(ENOSPC of a full disk under a sparse file, EDQUOT, EROFS, ...), not as EIO: handlers let it
propagate to errno_map unchanged.

Tuned for throughput (docs/MOUNT.md, "Concurrency invariants"; docs/PERFORMANCE.md):
- the kernel's writeback cache is on: write(2) fills the page cache and returns; the kernel writes
  dirty pages back in large requests, and fsync/fdatasync (and O_SYNC/O_DSYNC writes) first write
  back every dirty page, then send FSYNC, which calls Volume.flush(), the durability point. A write
  is acknowledged only when such an fsync returns success, or when a write(2) on a file opened
  O_DIRECT returns (those bypass the cache and are flushed before the reply);
- ``keep_cache`` and long entry/attribute timeouts: the file never changes behind the kernel's back
  (revocation and fault injection invalidate it explicitly);
- requests of at most ``INLINE_BYTES`` (random 4 KiB I/O, small write-backs) run inline on the
  loop: on two busy cores a thread hop costs far more than one sector's cipher and a backing
  pread, and a read that would wait for the disk waits on the loop too (overlapping such waits in
  threads cost more than it saved). Larger reads and writes run in worker threads behind a
  CapacityLimiter, so several are in flight at once; buffers go to the Volume without copies.
  Large reads (the kernel's read-ahead, up to 1 MiB each) have their own, wider limiter
  (``READ_THREADS``): they mostly wait for the disk with the GIL released, so more of them may
  overlap without slowing the random read/write mix;
- a flush that is a plain ``fdatasync`` (XTS, the benchmark's null cipher) runs inline too: a
  database on ext4 over the mount sends one FSYNC per commit, and the thread hop around it was a
  large share of each commit's cost. GCM's flush is a barrier that waits for every request in
  flight (and a mounted snapshot's copy), so it stays in a thread, as does every flush while the
  volume says it may block.

The measurements behind each of these choices (A/B runs, dated) are in docs/PERFORMANCE.md
("The tuned path" and "Changed").
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import pyfuse3
import trio

from volumed.mount.errno_map import fuse_errors

ROOT_INODE = pyfuse3.ROOT_INODE
FILE_INODE = ROOT_INODE + 1
INLINE_BYTES = 32768  # requests up to this size run inline (docs/PERFORMANCE.md: the thread hop's cost)
THREAD = INLINE_BYTES + 1  # nbytes for _run that always means "in a worker thread"
INLINE = 0  # nbytes for _run that means "inline unless the volume may block"
READ_THREADS = 16  # large reads in flight at once (they share no limiter with the rest)
ATTR_TIMEOUT = 60.0
T = TypeVar("T")


class ServedVolume(Protocol):
    """What VolumeFS serves: a volumed.volume.device.Volume, the fault layer's FaultVolume, or the
    benchmark's NullVolume (thread-safe read/write/flush)."""

    @property
    def may_block(self) -> bool: ...
    @property
    def flush_is_barrier(self) -> bool: ...
    def read(self, offset: int, length: int) -> bytes | bytearray: ...
    def write(self, offset: int, data: bytes) -> None: ...
    def flush(self) -> None: ...


class Latch(Protocol):
    """The access latch VolumeFS checks before every request (volumed.mount.latch.AccessLatch)."""

    def check_serving(self) -> None: ...


async def invalidate_file_cache(log: logging.Logger | None = None) -> None:
    """Drop the kernel's cached pages and attributes of the file, from a worker thread (never
    inside a request: the kernel may write dirty pages back to this loop and wait for the
    replies). A failure is logged on ``log`` if given. Callers: revocation (VolumeFS's latch
    callback, the daemon after the key wipe) and the daemon after a power-cut or rollback fault."""
    try:
        await trio.to_thread.run_sync(pyfuse3.invalidate_inode, FILE_INODE, False)
    except OSError as exc:
        if log is not None:
            log.warning("could not invalidate the kernel's cached pages: %s", exc)


class IOCounters:
    """Requests served (reads, writes, fsyncs) and bytes read and written through the mount
    (reported by status)."""

    def __init__(self) -> None:
        self.requests = 0
        self.bytes_read = 0
        self.bytes_written = 0


class VolumeFS(pyfuse3.Operations):
    """The FUSE file system of one mounted volume.

    volume: an open volumed.volume.device.Volume (read/write/flush, thread-safe).
    name: the file's name (the volume's EBS id); size: the volume size in bytes.
    latch: volumed.mount.latch.AccessLatch, checked before every request.
    """

    enable_writeback_cache = True
    supports_dot_lookup = True

    def __init__(self, volume: ServedVolume, *, name: str, size: int, latch: Latch,
                 threads: int = 4):
        super().__init__()
        self.volume = volume
        self.name = name.encode()
        self.size = size
        self.latch = latch
        self.counters = IOCounters()
        self.limiter = trio.CapacityLimiter(threads)
        self.read_limiter = trio.CapacityLimiter(max(threads, READ_THREADS))
        self._mtime_ns = time.time_ns()
        self._next_fh = 1
        self._sync_fhs: set[int] = set()
        self._token: trio.lowlevel.TrioToken | None = None  # the trio loop's, taken at the first open
        # A barrier flush (GCM) waits for other requests and must not hold up the loop.
        self._flush_size = THREAD if volume.flush_is_barrier else INLINE
        on_close = getattr(latch, "on_close", None)
        if on_close is not None:
            on_close(self._on_latch_closed)

    def _on_latch_closed(self) -> None:
        """Revocation (latch callback, on the loop or in a worker thread): start invalidating the
        kernel's cached pages at once, without waiting for the key wipe, so cached reads and writes
        into cached pages (the writeback cache takes those without asking) fail as soon as
        possible. The daemon invalidates again after the wipe."""
        if self._token is None:
            return
        try:
            trio.lowlevel.current_trio_token()
        except RuntimeError:
            self._token.run_sync_soon(self._drop_cached_pages)
            return
        self._drop_cached_pages()

    def _drop_cached_pages(self) -> None:
        """Start ``invalidate_file_cache`` in a system task (the daemon logs a second failure)."""
        trio.lowlevel.spawn_system_task(invalidate_file_cache)

    async def _run(self, nbytes: int, fn: Callable[..., T], *args: Any) -> T:
        """Run a Volume call after checking the latch: inline when ``nbytes`` <= INLINE_BYTES and
        the volume does not say it may block (``may_block``: the fault layer while a latency or
        throttle is set), else in a worker thread behind the limiter (THREAD forces a thread)."""
        self.latch.check_serving()
        if nbytes <= INLINE_BYTES and not self.volume.may_block:
            return fn(*args)
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    async def _read(self, off: int, size: int) -> bytes | bytearray:
        """A read through ``_run``, except that reads larger than INLINE_BYTES (the kernel's
        read-ahead) go behind their own, wider ``read_limiter``."""
        if size <= INLINE_BYTES:
            return await self._run(size, self.volume.read, off, size)
        self.latch.check_serving()
        return await trio.to_thread.run_sync(self.volume.read, off, size, limiter=self.read_limiter)

    def _restore_size(self) -> None:
        """After a refused write past the end: the writeback cache accepted it and grew the size the
        kernel caches (the kernel trusts its own size then), so truncate the file back to the
        volume's size through the mount. From a system task and a worker thread, never inside a
        request (the kernel sends the truncate to this loop)."""

        async def truncate() -> None:
            path = await trio.to_thread.run_sync(self._own_path)
            if path is not None:
                try:
                    await trio.to_thread.run_sync(os.truncate, path, self.size)
                except OSError:
                    pass

        trio.lowlevel.spawn_system_task(truncate)

    def _own_path(self) -> str | None:
        """The file's path through this mount: the fuse.volumed mount holding a file of this
        volume's name (one daemon per volume per host). Worker threads only."""
        name = self.name.decode()
        try:
            lines = open("/proc/self/mountinfo").read().splitlines()
        except OSError:
            return None
        for line in lines:
            left, _, right = line.partition(" - ")
            if right.split(" ", 1)[0] != "fuse.volumed":
                continue
            mp = left.split(" ")[4].encode().decode("unicode_escape")
            path = os.path.join(mp, name)
            if os.path.exists(path):
                return path
        return None

    def _attrs(self, inode: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        a.generation = 0
        a.entry_timeout = ATTR_TIMEOUT
        a.attr_timeout = ATTR_TIMEOUT
        a.st_uid = 0
        a.st_gid = 0
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = self._mtime_ns
        a.st_blksize = 4096
        if inode == ROOT_INODE:
            a.st_mode = stat.S_IFDIR | 0o700
            a.st_nlink = 2
            a.st_size = 0
        elif inode == FILE_INODE:
            a.st_mode = stat.S_IFREG | 0o600
            a.st_nlink = 1
            a.st_size = self.size
            a.st_blocks = self.size // 512
        else:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return a

    @fuse_errors
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        if inode != ROOT_INODE:  # the directory stays listable after revocation; the file does not
            self.latch.check_serving()
        return self._attrs(inode)

    @fuse_errors
    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        self.latch.check_serving()
        if parent_inode == ROOT_INODE and name == self.name:
            return self._attrs(FILE_INODE)
        if name in (b".", b".."):
            return self._attrs(ROOT_INODE)
        raise pyfuse3.FUSEError(errno.ENOENT)

    @fuse_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if inode != ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    @fuse_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        if start_id < 1:
            pyfuse3.readdir_reply(token, self.name, self._attrs(FILE_INODE), 1)

    async def releasedir(self, fh: int) -> None:
        pass

    @fuse_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        self.latch.check_serving()
        if inode != FILE_INODE:
            raise pyfuse3.FUSEError(errno.EISDIR if inode == ROOT_INODE else errno.ENOENT)
        if flags & os.O_TRUNC:
            raise pyfuse3.FUSEError(errno.EINVAL)
        if self._token is None:
            self._token = trio.lowlevel.current_trio_token()
        fh, self._next_fh = self._next_fh, self._next_fh + 1
        if flags & os.O_DIRECT:  # O_SYNC/O_DSYNC writes go through the cache and the kernel's fsync
            self._sync_fhs.add(fh)  # every write on it is acknowledged: flush before replying
        return pyfuse3.FileInfo(fh=fh, direct_io=False, keep_cache=True)

    @fuse_errors
    # pyfuse3 replies with any buffer; its stub says bytes, and copying a bytearray would cost.
    async def read(self, fh: int, off: int, size: int) -> bytes | bytearray:  # type: ignore[override]
        self.counters.requests += 1
        if off >= self.size:
            self.latch.check_serving()
            return b""
        size = min(size, self.size - off)
        data = await self._read(off, size)
        self.counters.bytes_read += len(data)
        return data

    @fuse_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        self.counters.requests += 1
        if off + len(buf) > self.size:
            # Past the end. With the writeback cache this is a write-back of pages the kernel
            # accepted beyond the size: refuse it and set the kernel's size back.
            self._restore_size()
            raise pyfuse3.FUSEError(errno.ENOSPC)
        await self._run(len(buf), self.volume.write, off, buf)
        if fh in self._sync_fhs:
            await self._flush()
        self.counters.bytes_written += len(buf)
        return len(buf)

    @fuse_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        """The durability point: returns only when every earlier write is on stable storage."""
        self.counters.requests += 1
        await self._flush()

    async def _flush(self) -> None:
        """Volume.flush() between two latch checks (so no flush succeeds once the latch is closed):
        inline for a plain fdatasync, in a worker thread for a barrier or a volume that may block
        (``_run``)."""
        await self._run(self._flush_size, self.volume.flush)
        self.latch.check_serving()

    @fuse_errors
    async def flush(self, fh: int) -> None:
        self.latch.check_serving()

    async def release(self, fh: int) -> None:
        self._sync_fhs.discard(fh)

    @fuse_errors
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
                      fh: int | None, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        """Only a truncate to the volume's own size and time updates are accepted (a volume's size is
        fixed here; with the writeback cache the kernel sends the mtime/ctime it kept at write-back)."""
        self.latch.check_serving()
        if inode != FILE_INODE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        others = fields.update_mode or fields.update_uid or fields.update_gid
        if others or (fields.update_size and attr.st_size != self.size):
            raise pyfuse3.FUSEError(errno.EINVAL)
        if fields.update_mtime:  # the writeback cache keeps mtime in the kernel and flushes it here
            self._mtime_ns = attr.st_mtime_ns
        return self._attrs(inode)

    @fuse_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = self.size // 4096
        s.f_bfree = s.f_bavail = 0
        s.f_files = 2
        s.f_ffree = s.f_favail = 0
        s.f_namemax = 255
        return s
