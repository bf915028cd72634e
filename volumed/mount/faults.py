"""Fault injection for a mount started with ``--allow-faults``: the wrappers the daemon builds.

FaultBacking (around the volume's backing file, below the cipher)
    A RecordingBackingFile: every write not yet made durable by fdatasync keeps its pre-image in
    an undo journal, so ``power_cut(mode, seed)`` can apply simulate_power_cut ("all", "random",
    "torn" at 4 KiB) while the daemon still runs; from then on every backing call fails with EIO
    (the disk is gone) until the volume is unmounted and mounted again. It also remembers the
    previous on-disk image of each 4 KiB page written (at most ``ROLLBACK_PAGES``), so
    ``rollback(offsets)`` can put an older, validly encrypted version of a sector back. On an XTS
    volume the native core serves the data area through it (``native_spec``): the core writes the
    journal's records itself, and a second copy of them that flushes leave alone (the history
    file beside the journal) from which rollback takes the previous images; a power cut first
    fails the core's backing (``VolumeCore.fail_backing``), so no native write lands after it.
FaultVolume (around the opened Volume, above the cipher; offsets are the decrypted file's)
    Before each read/write/discard/flush: the throttle (volumed.mount.throttle), a fixed latency,
    then the error plan: errno on byte ranges, on the Nth matching operation, or with a
    probability, and bad sectors whose reads fail until a write rewrites them.

Errors reach the kernel with the injected errno: FaultVolume raises ``to_error(errno)``, which the
daemon sets to pyfuse3.FUSEError (passed through unchanged by volumed.mount.errno_map).
Callers: volumed.mount.daemon (builds both and answers the "fault" control op via ``FaultControl``).
"""

from __future__ import annotations

import contextlib
import errno as _errno
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from volumed.errors import UsageError
from volumed.mount import throttle
from volumed.mount.engine import NativeObject
from volumed.mount.protocol import FaultReply
from volumed.volume.backing import _REC, PAGE, RecordingBackingFile, simulate_power_cut
from volumed.volume.formats import format_of
from volumed.volume.device import Volume
from volumed.volume.header import VolumeHeader

if TYPE_CHECKING:
    from typing_extensions import Buffer

ROLLBACK_PAGES = 4096    # 16 MiB of remembered previous page images at most (locked memory)
OPS = ("read", "write", "flush", "any")


def errno_value(name: str | int) -> int:
    """``"EIO"``, ``"ENOSPC"`` or a number -> the errno number; UsageError for anything else."""
    if isinstance(name, int) or (isinstance(name, str) and name.isdigit()):
        return int(name)
    value = getattr(_errno, str(name).upper(), None)
    if not isinstance(value, int):
        raise UsageError(f"unknown errno {name!r}: use a name such as EIO, ENOSPC, EROFS, or a number")
    return value


class PowerLost(OSError):
    """Raised by FaultBacking after a simulated power cut: the disk is gone."""

    def __init__(self) -> None:
        super().__init__(_errno.EIO, "simulated power loss: the disk is gone until remounted")


class FaultBacking(RecordingBackingFile):
    """The backing file of a fault-enabled mount (see the module docstring)."""

    def __init__(self, path: str, journal_path: str, *, native: bool = False, **kw: bool):
        super().__init__(path, journal_path, **kw)
        os.ftruncate(self._jfd, 0)  # a journal left by a killed daemon: its writes all happened
        self._lock = threading.RLock()
        self._previous: dict[int, bytes] = {}
        self.lost = False
        self.native = native
        self._core: NativeObject = None  # the native core serving the data area, once told
        self.history_path = self.journal_path + ".history"
        self._hfd = -1
        if native:
            self._hfd = os.open(self.history_path,
                                os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o600)

    def native_spec(self) -> dict[str, int] | None:
        """For a mount served by the native engine (``native``): the native core serves the file
        and writes the undo journal (the same records) and the history of previous page images
        (the journal's records, kept across flushes; rollback reads it) itself. A power cut first
        routes the engine's requests through FaultVolume.gate (EIO once the power is off), stops
        the core's backing (``fail_backing``: in-flight writes drain, later ones fail) and then
        applies the journal. None: the reference core serves the file through these hooks."""
        if not self.native:
            return None
        return {"fd": self.fd, "journal_fd": self._jfd, "history_fd": self._hfd,
                "history_max_bytes": 2 * ROLLBACK_PAGES * (PAGE + _REC.size)}

    def served_by(self, core: NativeObject) -> None:
        self._core = core

    def _history(self) -> dict[int, bytes]:
        """Previous images of whole pages the native core wrote (the latest record wins)."""
        images: dict[int, bytes] = {}
        data = os.pread(self._hfd, os.fstat(self._hfd).st_size, 0)
        pos = 0
        while pos + _REC.size <= len(data):
            off, ln = _REC.unpack_from(data, pos)
            pos += _REC.size
            old = data[pos:pos + ln]
            pos += ln
            for poff in range(off - off % PAGE, off + ln, PAGE):
                if poff >= off and poff + PAGE <= off + ln:
                    images[poff] = old[poff - off:poff - off + PAGE]
        return images

    def _alive(self) -> None:
        if self.lost:
            raise PowerLost()

    def _record(self, offset: int, length: int) -> None:
        """The journal record of RecordingBackingFile, and the previous image of whole pages."""
        old = self.pread(offset, length)
        os.write(self._jfd, _REC.pack(offset, length) + bytes(old))
        for poff in range(offset - offset % PAGE, offset + length, PAGE):
            if poff >= offset and poff + PAGE <= offset + length:
                self._remember(poff, bytes(old[poff - offset:poff - offset + PAGE]))

    def _remember(self, poff: int, image: bytes) -> None:
        self._previous.pop(poff, None)
        self._previous[poff] = image
        if len(self._previous) > ROLLBACK_PAGES:
            self._previous.pop(next(iter(self._previous)))

    def preadinto(self, offset: int, buf: Buffer) -> None:
        self._alive()
        super().preadinto(offset, buf)

    def pwrite(self, offset: int, data: Buffer) -> None:
        with self._lock:
            self._alive()
            super().pwrite(offset, data)

    def punch_hole(self, offset: int, length: int) -> None:
        with self._lock:
            self._alive()
            super().punch_hole(offset, length)

    def pwrite_durable(self, offset: int, data: Buffer) -> None:
        with self._lock:  # durable once it returns: a power cut after it keeps it
            self._alive()
            super().pwrite_durable(offset, data)

    def fdatasync(self) -> None:
        with self._lock:
            self._alive()
            super().fdatasync()

    def close(self) -> None:
        super().close()
        if self._hfd >= 0:
            os.close(self._hfd)
            self._hfd = -1
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.history_path)

    def power_cut(self, mode: str = "all", seed: int | None = None) -> dict[str, Any]:
        """Lose power now: later calls fail with EIO; the writes not yet fdatasync'ed are dropped
        by ``mode``. Returns the PowerCutReport as a dict. Only once per mount."""
        if mode not in ("all", "random", "torn"):
            raise UsageError(f"unknown power-cut mode {mode!r}: use all, random or torn")
        with self._lock:
            if self.lost:
                raise UsageError("the power is already off: unmount and mount the volume again")
            self.lost = True
            if self._core is not None:  # in-flight native writes finish, later ones fail (EIO)
                self._core.fail_backing(_errno.EIO)
            report = simulate_power_cut(self.path, self.journal_path, mode, seed)
            os.ftruncate(self._jfd, 0)
        return {"writes": report.writes, "dropped": report.dropped, "torn": report.torn,
                "pages_dropped": report.pages_dropped, "mode": report.mode}

    def rollback(self, page_offsets: Iterable[int]) -> int:
        """Write back the remembered previous image of each backing page in ``page_offsets``
        (durably, bypassing the journal); returns how many pages were rolled back."""
        done = 0
        with self._lock:
            self._alive()
            previous = {**self._history(), **self._previous} if self._core is not None else self._previous
            for poff in page_offsets:
                image = previous.get(poff)
                if image is None:
                    continue
                os.pwrite(self.fd, image, poff)
                done += 1
            os.fdatasync(self.fd)
        return done


class ErrorRule:
    """Fail matching operations with ``errno``: ``io`` (the operation) in OPS; optional byte range [start, end) of
    the file; ``nth`` (fail only the Nth matching operation from now); ``probability``; ``count``
    (how many failures before the rule retires; None = unlimited)."""

    def __init__(self, *, io: str = "any", errno: str | int = "EIO", start: int | None = None,
                 end: int | None = None, nth: int | None = None, probability: float | None = None,
                 count: int | None = None, seed: int | None = None):
        if io not in OPS:
            raise UsageError(f"unknown operation {io!r}: use one of {', '.join(OPS)}")
        if probability is not None and not 0.0 <= float(probability) <= 1.0:
            raise UsageError(f"probability {probability} is not between 0 and 1")
        if nth is not None and int(nth) < 1:
            raise UsageError(f"nth must be 1 or more (got {nth})")
        self.op, self.errno = io, errno_value(errno)
        self.start = None if start is None else int(start)
        self.end = None if end is None else int(end)
        self.nth = None if nth is None else int(nth)
        self.probability = None if probability is None else float(probability)
        self.count = 1 if self.nth is not None and count is None else (None if count is None else int(count))
        self.seen = 0
        self.failed = 0
        self.rng = random.Random(seed)

    def matches(self, op: str, offset: int, length: int) -> bool:
        """Decide (and count) whether this operation fails."""
        if self.count is not None and self.failed >= self.count:
            return False
        if self.op != "any" and self.op != op:
            return False
        if op != "flush" and self.start is not None:
            end = self.end if self.end is not None else self.start + 1
            if offset + length <= self.start or offset >= end:
                return False
        self.seen += 1
        if self.nth is not None and self.seen != self.nth:
            return False
        if self.probability is not None and self.rng.random() >= self.probability:
            return False
        self.failed += 1
        return True

    def to_json(self) -> dict[str, Any]:
        return {"io": self.op, "errno": _errno.errorcode.get(self.errno, self.errno),
                "start": self.start, "end": self.end, "nth": self.nth,
                "probability": self.probability, "count": self.count, "failed": self.failed}


class FaultVolume:
    """A Volume seen through the fault plan (see the module docstring). Other attributes pass
    through to the wrapped Volume. Thread-safe."""

    def __init__(self, volume: Volume, *, to_error: Callable[[int], Exception] | None = None,
                 sleep: Callable[[float], None] = time.sleep, backing: FaultBacking | None = None):
        self.volume = volume
        self.backing = backing  # the FaultBacking whose power cut ``gate`` reports
        self.to_error = to_error or (lambda e: OSError(e, os.strerror(e)))
        self.sleep = sleep
        self._lock = threading.Lock()
        self.rules: list[ErrorRule] = []
        self.bad: set[int] = set()
        self.latency = 0.0
        self.throttle: throttle.Throttle | None = None
        self.injected = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.volume, name)

    @property
    def may_block(self) -> bool:
        """True while calls may sleep (latency or throttle set) or the wrapped volume says it may
        block (a snapshot's capture session): the FUSE side should then run them in worker
        threads rather than on its event loop."""
        return (self.latency > 0 or self.throttle is not None
                or self.volume.may_block)

    def _before(self, op: str, offset: int, length: int) -> None:
        throttle = self.throttle
        wait = throttle.acquire(length) if throttle is not None and op != "flush" else 0.0
        wait += self.latency
        if wait > 0:
            self.sleep(wait)
        with self._lock:
            fail = None
            if op == "read" and self.bad:
                ss = self.volume.sector_size
                if any(s in self.bad for s in range(offset // ss, -(-(offset + length) // ss))):
                    fail = _errno.EIO
            for rule in self.rules:
                if fail is None and rule.matches(op, offset, length):
                    fail = rule.errno
            if fail is not None:
                self.injected += 1
        if fail is not None:
            raise self.to_error(fail)

    @property
    def active(self) -> bool:
        """True while any fault is set or the power is off: the native engine then sends every
        read, write and flush through ``gate`` first (volumed.mount.engine)."""
        return bool(self.rules or self.bad or self.latency > 0 or self.throttle is not None
                    or self.power_lost())

    def power_lost(self) -> bool:
        """True after a simulated power cut of the backing file (FaultBacking.lost)."""
        return self.backing is not None and self.backing.lost

    def gate(self, op: int, offset: int, length: int) -> int:
        """The native engine's fault hook: ``op`` 0 read, 1 write, 2 flush (checked before the
        native I/O, as ``_before``), 3 heal (after a successful write, as ``_heal``). Returns the
        errno to fail the request with, or 0. The same rules as the Python path, one copy."""
        if op == 3:
            self._heal(offset, length)
            return 0
        if self.power_lost():
            return _errno.EIO
        try:
            self._before(("read", "write", "flush")[op], offset, length)
        except Exception as exc:
            return getattr(exc, "errno", None) or _errno.EIO
        return 0

    def read(self, offset: int, length: int) -> bytes | bytearray:
        self._before("read", offset, length)
        data: bytes | bytearray = self.volume.read(offset, length)
        return data

    def write(self, offset: int, data: Buffer) -> None:
        n = len(memoryview(data).cast("B"))
        self._before("write", offset, n)
        self.volume.write(offset, data)
        self._heal(offset, n)

    def discard(self, offset: int, length: int) -> None:
        self._before("write", offset, length)
        self.volume.discard(offset, length)
        self._heal(offset, length)

    def flush(self) -> None:
        self._before("flush", 0, 0)
        self.volume.flush()

    def _heal(self, offset: int, length: int) -> None:
        """A bad sector wholly rewritten reads again (the drive remapped it)."""
        if not self.bad:
            return
        ss = self.volume.sector_size
        with self._lock:
            for s in range(-(-offset // ss), (offset + length) // ss):
                self.bad.discard(s)

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"errors": [r.to_json() for r in self.rules], "bad_sectors": sorted(self.bad),
                    "latency": self.latency, "injected": self.injected,
                    "throttle": None if self.throttle is None else self.throttle.status()}


def backing_pages(header: VolumeHeader, sectors: Iterable[int]) -> list[int]:
    """Backing-file offsets of the 4 KiB pages holding the data of volume ``sectors`` (the
    format's rule: volumed.volume.formats)."""
    pages: list[int] = format_of(header.cipher).backing_pages(header, sectors)
    return pages


def handle(kind: str, msg: Mapping[str, Any], fvol: FaultVolume, backing: FaultBacking,
           header: VolumeHeader) -> FaultReply:
    """Answer a "fault" control request of ``kind`` with parameters ``msg`` (blocking: the daemon
    runs it in a worker thread).

    kinds: error {io, errno, start, end, nth, probability, count, seed}; bad-sector {sectors};
    latency {seconds}; throttle {volume_type, iops, throughput_mib} or {off: true}; clear;
    power-cut {mode, seed}; rollback {sectors}; status. Raises UsageError for bad requests."""
    if kind == "error":
        rule = ErrorRule(**{k: msg[k] for k in ("io", "errno", "start", "end", "nth", "probability",
                                                 "count", "seed") if msg.get(k) is not None})
        with fvol._lock:
            fvol.rules.append(rule)
    elif kind == "bad-sector":
        sectors = [int(s) for s in msg.get("sectors", [])]
        nsec = header.size // header.sector_size
        if not sectors or any(not 0 <= s < nsec for s in sectors):
            raise UsageError(f"bad-sector needs sector numbers between 0 and {nsec - 1}")
        with fvol._lock:
            fvol.bad.update(sectors)
    elif kind == "latency":
        seconds = float(msg.get("seconds", 0.0))
        if not 0.0 <= seconds <= 10.0:
            raise UsageError(f"latency {seconds} s out of range: 0 to 10 seconds")
        fvol.latency = seconds
    elif kind == "throttle":
        if msg.get("off"):
            fvol.throttle = None
        else:
            fvol.throttle = throttle.Throttle(throttle.spec(
                msg.get("volume_type") or "gp3", size=header.size, iops=msg.get("iops"),
                throughput_mib=msg.get("throughput_mib")))
    elif kind == "clear":
        with fvol._lock:
            fvol.rules.clear()
            fvol.bad.clear()
        fvol.latency = 0.0
        fvol.throttle = None
    elif kind == "power-cut":
        return FaultReply(report=backing.power_cut(msg.get("mode", "all"), msg.get("seed")))
    elif kind == "rollback":
        sectors = [int(s) for s in msg.get("sectors", [])]
        if not sectors:
            raise UsageError("rollback needs sector numbers")
        return FaultReply(pages=backing.rollback(backing_pages(header, sectors)))
    elif kind != "status":
        raise UsageError(f"unknown fault kind {kind!r}: use error, bad-sector, latency, throttle, "
                         "clear, power-cut, rollback or status")
    out = fvol.status()
    out["power_lost"] = backing.lost
    return FaultReply(faults=out)
