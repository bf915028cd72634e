"""Benchmark only: the mount's FUSE code over a plain file, with no cipher at all.

``volumed mount --bench-null-cipher SIZE FILE MOUNTPOINT`` serves FILE (a plain sparse file,
created at SIZE if missing) through exactly the same request engine as a real mount (``--engine
native``, the default: the native engine over the native core's null cipher; ``--engine python``:
``VolumeFS`` on pyfuse3), so a benchmark can separate the FUSE request path's cost from the
cipher's. It exists for ``scripts/bench`` only:

- it never reads or writes a volume header, and there is no "null" cipher in ``volumed.cipher``, so
  no volume can name it (no downgrade path);
- it refuses any FILE that holds a volume header (LUKS2 or GCM), or that is not empty and was not
  created by it (it marks its files with a ``user.volumed.bench-null`` extended attribute or, where
  the file system has none, refuses all existing non-empty files);
- no key service, no grant, no monitor: the latch never closes.

Run as ``python -m volumed.mount.nullserve SIZE FILE MOUNTPOINT`` (what the CLI starts); prints
``ready PATH`` on stdout once the mount serves, then serves until unmounted (``fusermount3 -u``) or
SIGTERM.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

import trio

from volumed.errors import UsageError, VolumedError
from volumed.mount.engine import (Engine, NativeEngine, NativeObject, PythonEngine,
                                  default_io_threads, native_extension)
from volumed.mount.fs import VolumeFS
from volumed.mount.tuning import tune_mount
from volumed.volume.device import Volume

MARK = "user.volumed.bench-null"
FILE_NAME = "bench-null"


class NullVolume:
    """The Volume interface (read/write/flush/wipe_key/close) over a plain file: no encryption."""

    flush_is_barrier = False   # a plain fdatasync
    may_block = False

    def __init__(self, path: str, size: int):
        self.size = size
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            # The native core's null store: the same request path as an XTS volume's, without the
            # cipher (so XTS vs null measures the cipher alone). It keeps its own descriptor.
            self.native_core = _native_module().VolumeCore(fd, cipher="null", size=size, name=path)
        finally:
            os.close(fd)

    def read(self, offset: int, length: int) -> bytes | bytearray:
        """``length`` bytes at ``offset`` (short only at the end)."""
        length = min(length, self.size - offset)
        data: bytes | bytearray = self.native_core.read(offset, length) if length > 0 else b""
        return data

    def write(self, offset: int, data: bytes) -> None:
        """Write all of ``data`` at ``offset``."""
        self.native_core.write(offset, data)

    def flush(self) -> None:
        """Durability point, as Volume.flush."""
        self.native_core.flush()

    def wipe_key(self) -> None:
        """No key to wipe."""

    def close(self) -> None:
        self.native_core = None


def _native_module() -> NativeObject:
    native = native_extension()
    if native is None:
        raise VolumedError("the null-cipher mount needs the native extension (volumed._native); "
                           "rebuild it with native/rebuild")
    return native


class OpenLatch:
    """A latch that never closes (no key, nothing to revoke)."""

    serving = True

    def check_serving(self) -> None:
        return None


def prepare_file(path: str, size: int) -> None:
    """Create ``path`` as a sparse plain file of ``size`` bytes, or accept one this module created.
    Raises UsageError for a volume (any file with a volumed header) or any other non-empty file."""
    if size <= 0 or size % 4096:
        raise UsageError(f"--bench-null-cipher size {size} must be a positive multiple of 4096")
    if os.path.exists(path) and os.path.getsize(path) > 0:
        try:
            Volume.read_header(path)
            is_volume = True
        except Exception:
            is_volume = False
        if is_volume:
            raise UsageError(f"{path} is a volumed volume: the null cipher serves only its own plain "
                             "benchmark files, never a real volume")
        try:
            marked = os.getxattr(path, MARK) == b"1"
        except OSError:
            marked = False
        if not marked:
            raise UsageError(f"{path} is not empty and was not created by --bench-null-cipher; "
                             "give a new path")
    else:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL if not os.path.exists(path)
                     else os.O_RDWR, 0o600)
        os.close(fd)
        try:
            os.setxattr(path, MARK, b"1")
        except OSError:
            pass
    os.truncate(path, size)


def serve(size: int, path: str, mountpoint: str, ready: Callable[[str], None], *, engine: str = "native",
          io_threads: int = 0, io_depth: int = 0) -> None:
    """Serve ``path`` at ``mountpoint`` until unmounted; ``ready(file)`` once up. ``engine``:
    "native" (the native engine over the native core's null cipher, as XTS volumes are served) or
    "python" (VolumeFS over NullVolume on pyfuse3)."""
    prepare_file(path, size)
    options = ("fsname=volumed-bench-null", "subtype=volumed", "allow_other", "default_permissions")
    threads = io_threads or default_io_threads()
    if engine == "native":
        mod = native_extension()
        if mod is None:
            raise UsageError("the native engine needs the native extension (volumed._native)")
        fd = os.open(path, os.O_RDWR)
        vol: NullVolume | None = None
        core: NativeObject | NullVolume = mod.VolumeCore(fd, cipher="null", size=size, name=path)
        os.close(fd)  # the core keeps its own descriptor
        server: Engine = NativeEngine(core, mountpoint=mountpoint, file_name=FILE_NAME, threads=threads,
                              depth=io_depth or None, options=options)
    else:
        vol = core = NullVolume(path, size)
        fs = VolumeFS(vol, name=FILE_NAME, size=size, latch=OpenLatch())
        server = PythonEngine(fs, mountpoint=mountpoint, threads=4, options=options)
    server.mount()

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            async def signals() -> None:
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
                    async for _ in sigs:
                        server.terminate()

            async def announce() -> None:
                await trio.sleep(0)
                await trio.to_thread.run_sync(tune_mount, mountpoint)
                ready(os.path.join(mountpoint, FILE_NAME))

            nursery.start_soon(signals)
            nursery.start_soon(announce)
            await server.serve()
            nursery.cancel_scope.cancel()

    try:
        trio.run(run)
    finally:
        core.flush()
        if vol is not None:
            vol.close()
        server.close()


def main(argv: list[str]) -> int:
    """``python -m volumed.mount.nullserve SIZE FILE MOUNTPOINT [ENGINE [IO_THREADS [IO_DEPTH]]]``."""
    size, path, mountpoint = int(argv[0]), os.path.abspath(argv[1]), os.path.realpath(argv[2])
    engine = argv[3] if len(argv) > 3 else "native"
    io_threads = int(argv[4]) if len(argv) > 4 else 0
    io_depth = int(argv[5]) if len(argv) > 5 else 0
    out = os.fdopen(os.dup(1), "w")

    def ready(file: str) -> None:
        out.write(f"ready {file}\n")
        out.flush()

    try:
        serve(size, path, mountpoint, ready, engine=engine, io_threads=io_threads, io_depth=io_depth)
    except (UsageError, RuntimeError, OSError) as exc:  # one line for the CLI, no traceback
        out.write(f"error {exc}\n")
        out.flush()
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
