"""Which request engine serves a mount's FUSE requests, and the two engines behind one interface.

- ``native`` (the default for XTS, GCM and null-cipher volumes): volumed._native.FuseEngine
  (native/fuse_engine.c) mounts with libfuse and serves every request in native worker threads,
  each reading its own clone of /dev/fuse, straight into the volume's native core
  (native/vcore.h); the GIL is never taken on the request path. At most ``--io-threads`` of them
  serve on the CPU at once; up to ``--io-depth`` exist, so requests waiting for the backing disk
  do not hold the CPU's threads (docs/MOUNT.md, "Concurrency invariants"). The access latch is
  the engine's (native memory), closed by ``close_latch`` at revocation.
- ``python``: pyfuse3 on the daemon's trio loop, volumed.mount.fs.VolumeFS over the Volume (any
  volume on request with ``--engine python``, through the same native core; and volumes served by
  the Python reference core: ``VOLUMED_CIPHER=reference`` or no native extension).

Both engines answer every request with the same rules (tests/mount/test_engine_differential.py).
The daemon (volumed.mount.daemon) keeps the rest either way: the control channel, the key monitor,
revocation, snapshots, faults and status run on its trio loop.

Faults (``--allow-faults``) on the native engine: while a fault is set (volumed.mount.faults
FaultVolume.active), the engine calls ``FaultVolume.gate`` (taking the GIL) before each read,
write and flush; with none set it serves without Python (docs/TESTING.md).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import pyfuse3
import trio

from volumed.errors import UsageError
from volumed.mount.fs import VolumeFS, invalidate_file_cache
from volumed.volume.cores import native_module

ENGINES = ("native", "python")
MOUNT_OPTIONS = ("fsname=volumed", "subtype=volumed", "allow_other", "default_permissions")
EXIT_GRACE = 5.0  # seconds the native loop may keep serving open files after an unmount

log = logging.getLogger("volumed.mount")

# The native extension's objects (volumed._native: VolumeCore, FuseEngine) carry no static types.
NativeObject = Any
FaultHook = Callable[[int, int, int], int]  # (op, offset, length) -> errno or 0
native_extension: Callable[[], Any] = native_module


def default_io_threads() -> int:
    """The number of CPUs this process may run on (the issue's default for ``--io-threads``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except OSError:
        return max(1, os.cpu_count() or 1)


IO_DEPTH = 16  # default --io-depth: see docs/PERFORMANCE.md, "I/O depth" (2026-12-05)


def default_io_depth(io_threads: int) -> int:
    """The default ``--io-depth``: IO_DEPTH worker threads, and never fewer than ``io_threads``."""
    return max(IO_DEPTH, io_threads)


def choose(requested: str | None, native_core: NativeObject | None) -> str:
    """"native" or "python" for a volume whose native core is ``native_core`` (Volume.native_core:
    None when the Python reference core serves it). UsageError when the native engine is asked
    for a volume it cannot serve (one clear line)."""
    if requested is not None and requested not in ENGINES:
        raise UsageError(f"unknown engine {requested!r}: choose native or python")
    if requested == "python":
        return "python"
    if native_core is None:
        if requested == "native":
            raise UsageError("--engine native needs the native volume core, and this volume is "
                             "served by the Python reference core (VOLUMED_CIPHER=reference or no "
                             "native extension): use --engine python")
        return "python"
    return "native"


def connection_minor(mountpoint: str) -> int | None:
    """The FUSE connection number (the device minor) of the mount at ``mountpoint``, from
    /proc/self/mountinfo (never a stat of the mount point: it could be our own dead mount)."""
    try:
        lines = open("/proc/self/mountinfo").read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split(" ")
        mp = fields[4].encode().decode("unicode_escape")
        if mp == mountpoint and " - fuse" in line:
            return int(fields[2].split(":")[1])
    return None


def abort_connection(minor: int | None) -> bool:
    """Abort a FUSE connection (its requests fail with ENOTCONN, its readers wake up)."""
    if minor is None:
        return False
    try:
        with open(f"/sys/fs/fuse/connections/{minor}/abort", "w") as f:
            f.write("1")
        return True
    except OSError:
        return False


class NativeEngine:
    """A mount served by volumed._native.FuseEngine (see the module docstring)."""

    name = "native"

    def __init__(self, core: NativeObject, *, mountpoint: str, file_name: str, threads: int,
                 depth: int | None = None, options: Iterable[str] = MOUNT_OPTIONS):
        self.core = core
        self.mountpoint = mountpoint
        self.file_name = file_name
        self.threads = threads
        self.depth = max(threads, depth if depth is not None else default_io_depth(threads))
        self.options = ",".join(sorted(options))
        self.fe: NativeObject = None
        self._minor: int | None = None

    def mount(self) -> None:
        """Mount (libfuse, as root: mount(2) directly). OSError if the kernel refuses."""
        self.fe = native_extension().FuseEngine(self.core, self.mountpoint, self.file_name,
                                             self.threads, self.options, self.depth)
        self._minor = connection_minor(self.mountpoint)

    async def serve(self) -> None:
        """Serve in native threads until the mount ends (unmounted, aborted or ``terminate``)."""
        self.fe.start()
        await trio.to_thread.run_sync(self.fe.wait, abandon_on_cancel=True)

    def terminate(self) -> None:
        """End serving: detach the mount; if open files (a loop device) keep the connection
        serving for more than EXIT_GRACE seconds, abort it so the daemon can exit (from a thread:
        never blocks the loop)."""
        fe, minor = self.fe, self._minor
        fe.exit()

        def reaper() -> None:
            try:
                ended = fe.wait(EXIT_GRACE)
            except ValueError:  # closed (or being closed) by the daemon meanwhile: nothing to reap
                return
            if not ended:
                log.warning("open files still use the mount: aborting its FUSE connection")
                abort_connection(minor)

        threading.Thread(target=reaper, daemon=True).start()

    def close_latch(self) -> None:
        """Revocation: from now on every request that touches the volume fails with EIO."""
        self.fe.close_latch()

    def drain(self) -> None:
        """Wait for the requests in flight (blocking: from a worker thread)."""
        self.fe.drain()

    async def invalidate(self, log: logging.Logger | None = None) -> None:
        """Drop the kernel's cached pages and attributes of the file (from a worker thread)."""
        err = await trio.to_thread.run_sync(self.fe.invalidate)
        if err and log is not None:
            log.warning("could not invalidate the kernel's cached pages: %s", os.strerror(err))

    def set_fault_hook(self, hook: FaultHook | None) -> None:
        """``hook(op, off, len) -> errno`` sees every read/write/flush first; None: no Python."""
        self.fe.set_hook(hook)

    def stats(self) -> dict[str, Any]:
        s = self.fe.stats()
        return {"engine": self.name, "io_threads": self.threads, "io_depth": self.depth,
                "requests": s["requests"], "io_requests": s["io_requests"],
                "disk_waits": s["disk_waits"], "workers_used": s["workers"],
                "requests_per_worker": s["per_worker"], "bytes_read": s["bytes_read"],
                "bytes_written": s["bytes_written"]}

    def close(self) -> None:
        """Unmount and free the engine (aborting the connection if open files still hold it)."""
        if self.fe is None:
            return
        if not self.fe.close():
            abort_connection(self._minor)
            if not self.fe.close():
                log.error("the native engine did not stop; leaving it to the process exit")
                return
        self.fe = None


class PythonEngine:
    """A mount served by pyfuse3 on the trio loop through volumed.mount.fs.VolumeFS."""

    name = "python"

    def __init__(self, fs: VolumeFS, *, mountpoint: str, threads: int,
                 options: Iterable[str] = MOUNT_OPTIONS):
        self.fs = fs
        self.mountpoint = mountpoint
        self.threads = threads
        self.options = set(options)
        self._mounted = False

    def mount(self) -> None:
        pyfuse3.init(self.fs, self.mountpoint, self.options)
        self._mounted = True

    async def serve(self) -> None:
        await pyfuse3.main(min_tasks=2, max_tasks=64)

    def terminate(self) -> None:
        pyfuse3.terminate()

    def close_latch(self) -> None:
        """The Python latch is the daemon's AccessLatch, which VolumeFS checks itself."""

    def drain(self) -> None:
        """Requests in flight finish inside Volume calls; wipe_key waits for them."""

    async def invalidate(self, log: logging.Logger | None = None) -> None:
        await invalidate_file_cache(log)

    def set_fault_hook(self, hook: FaultHook | None) -> None:
        """VolumeFS already serves through the FaultVolume."""

    def stats(self) -> dict[str, Any]:
        c = self.fs.counters
        return {"engine": self.name, "io_threads": self.threads, "requests": c.requests,
                "io_requests": c.requests, "bytes_read": c.bytes_read,
                "bytes_written": c.bytes_written}

    def close(self) -> None:
        if self._mounted:
            self._mounted = False
            pyfuse3.close(unmount=True)


class Engine(Protocol):
    """What the daemon needs of an engine (NativeEngine, PythonEngine)."""

    name: str
    threads: int

    def mount(self) -> None: ...
    async def serve(self) -> None: ...
    def terminate(self) -> None: ...
    def close_latch(self) -> None: ...
    def drain(self) -> None: ...
    async def invalidate(self, log: logging.Logger | None = None) -> None: ...
    def set_fault_hook(self, hook: FaultHook | None) -> None: ...
    def stats(self) -> dict[str, Any]: ...
    def close(self) -> None: ...
