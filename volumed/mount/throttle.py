"""EBS-style throttling of a mounted volume: volume types, token buckets, the 256 KiB I/O unit.

EBS counts an I/O of up to 256 KiB as one operation and a larger one as ceil(size / 256 KiB)
operations; a volume's IOPS and throughput limits are both enforced. Volume types (``spec``):

- ``gp3`` (default): 3,000 IOPS and 125 MiB/s included; provisionable up to 16,000 IOPS
  (at most 500 IOPS per GiB) and 1,000 MiB/s (at most 0.25 MiB/s per provisioned IOPS).
- ``io2``: provisioned IOPS (default 3,000; up to 256,000 and 1,000 per GiB); throughput
  0.256 MiB/s per IOPS up to 4,000 MiB/s.
- ``gp2``: baseline 3 IOPS per GiB (at least 100, at most 16,000), bursting to 3,000 IOPS while
  burst credits last (5.4 million credits, full at attach, refilled at the baseline rate);
  throughput up to 250 MiB/s.

``TokenBucket`` runs on an injectable clock (volumed.clock-style ``time()``), and ``Throttle.acquire``
returns how long the caller must wait instead of sleeping itself, so the logic is tested without
sleeping. Reservations may drive a bucket negative: concurrent callers queue behind each other.
Callers: volumed.mount.faults.FaultVolume (the daemon's fault layer), tests.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from typing import Any, Protocol

from volumed.errors import UsageError

IO_UNIT = 256 * 1024
MIB = 1 << 20
GIB = 1 << 30
BURST_SECONDS = 0.05   # bucket depth of a rate limit: 50 ms of its rate (EBS smooths over ~ms)
GP2_CREDITS = 5_400_000


class TimeSource(Protocol):
    """Anything with ``time()`` in seconds (a volumed.clock.Clock, MonotonicClock)."""

    def time(self) -> float: ...


class MonotonicClock:
    """Real elapsed time for rate limits (the daemon's fake wall clock must not freeze them)."""

    def time(self) -> float:
        return time.monotonic()


class TokenBucket:
    """``rate`` tokens per second, at most ``capacity`` banked, starting with ``initial`` (full)."""

    def __init__(self, rate: float, capacity: float, clock: TimeSource, initial: float | None = None):
        if rate <= 0 or capacity <= 0:
            raise UsageError(f"a token bucket needs a positive rate and capacity (got {rate}, {capacity})")
        self.rate, self.capacity, self.clock = float(rate), float(capacity), clock
        self.tokens = self.capacity if initial is None else float(initial)
        self.stamp = clock.time()

    def _refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def reserve(self, n: float, now: float) -> float:
        """Take ``n`` tokens now (possibly going negative); return the seconds until they exist."""
        self._refill(now)
        self.tokens -= n
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


@dataclasses.dataclass(frozen=True)
class VolumeSpec:
    """Resolved limits of a volume: iops, throughput (bytes/s), and gp2's baseline and credits."""

    volume_type: str
    iops: int
    throughput: int
    baseline_iops: int | None = None
    credits: int | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def spec(volume_type: str = "gp3", *, size: int, iops: int | None = None,
         throughput_mib: float | None = None) -> VolumeSpec:
    """The limits of a ``volume_type`` volume of ``size`` bytes with optional provisioned ``iops``
    and throughput (MiB/s). Raises UsageError (one line, with the allowed range) when out of range."""
    gib = max(1, size // GIB)
    if volume_type == "gp3":
        iops = 3000 if iops is None else int(iops)
        max_iops = min(16000, 500 * gib) if iops > 3000 else 16000
        if not 3000 <= iops <= max(3000, max_iops):
            raise UsageError(f"gp3 IOPS {iops} out of range: 3000 to {max(3000, max_iops)} for a "
                             f"{gib} GiB volume (500 per GiB, at most 16000)")
        tput = 125.0 if throughput_mib is None else float(throughput_mib)
        if not 125 <= tput <= min(1000.0, max(125.0, iops * 0.25)):
            raise UsageError(f"gp3 throughput {tput} MiB/s out of range: 125 to "
                             f"{min(1000.0, max(125.0, iops * 0.25)):g} MiB/s at {iops} IOPS")
        return VolumeSpec("gp3", iops, int(tput * MIB))
    if volume_type == "io2":
        iops = 3000 if iops is None else int(iops)
        if not 100 <= iops <= min(256000, 1000 * gib):
            raise UsageError(f"io2 IOPS {iops} out of range: 100 to {min(256000, 1000 * gib)} "
                             f"for a {gib} GiB volume (1000 per GiB, at most 256000)")
        if throughput_mib is not None:
            raise UsageError("io2 throughput follows from its IOPS; drop the throughput option")
        return VolumeSpec("io2", iops, int(min(4000.0, iops * 0.256) * MIB))
    if volume_type == "gp2":
        if iops is not None or throughput_mib is not None:
            raise UsageError("gp2 IOPS and throughput follow from the volume size; drop those options")
        base = min(16000, max(100, 3 * gib))
        return VolumeSpec("gp2", max(3000, base), 250 * MIB, baseline_iops=base,
                          credits=GP2_CREDITS if base < 3000 else None)
    raise UsageError(f"unknown volume type {volume_type!r}: use gp3, io2 or gp2")


def io_units(nbytes: int) -> int:
    """Operations EBS counts for one I/O of ``nbytes``: one per started 256 KiB."""
    return max(1, math.ceil(nbytes / IO_UNIT))


class Throttle:
    """Enforces a VolumeSpec. ``acquire(nbytes)`` reserves the I/O and returns seconds to wait."""

    def __init__(self, vspec: VolumeSpec, clock: TimeSource | None = None):
        self.spec = vspec
        self.clock = clock = clock or MonotonicClock()
        self._lock = threading.Lock()
        self.iops = TokenBucket(vspec.iops, max(1.0, vspec.iops * BURST_SECONDS), clock)
        self.bytes = TokenBucket(vspec.throughput, max(IO_UNIT, vspec.throughput * BURST_SECONDS), clock)
        self.credits: TokenBucket | None = None
        if vspec.credits is not None and vspec.baseline_iops is not None:
            self.credits = TokenBucket(vspec.baseline_iops, vspec.credits, clock)
        self.ops = 0

    def acquire(self, nbytes: int) -> float:
        """Count one I/O of ``nbytes`` against every limit; return the wait before it may run."""
        units = io_units(nbytes)
        with self._lock:
            now = self.clock.time()
            self.ops += units
            wait = max(self.iops.reserve(units, now), self.bytes.reserve(max(nbytes, 1), now))
            if self.credits is not None:
                wait = max(wait, self.credits.reserve(units, now))
            return wait

    def status(self) -> dict[str, Any]:
        """The spec and counters (reported by the daemon's fault status)."""
        out = self.spec.to_json()
        out["ops_counted"] = self.ops
        if self.credits is not None:
            out["burst_credits"] = max(0.0, self.credits.tokens)
        return out
