"""Injectable clocks. Everything time-dependent (rotation, deletion windows, the key monitor)
takes a Clock so tests move time instead of sleeping."""

from __future__ import annotations

import datetime as _dt
import threading
import time


class Clock:
    """Wall-clock time as an aware UTC datetime and as epoch seconds."""

    def now(self) -> _dt.datetime:
        return _dt.datetime.fromtimestamp(self.time(), tz=_dt.timezone.utc)

    def time(self) -> float:
        return time.time()


SYSTEM_CLOCK = Clock()


class FakeClock(Clock):
    """A clock that only moves when told to. Thread-safe."""

    def __init__(self, start: float | _dt.datetime | None = None):
        if start is None:
            start = time.time()
        if isinstance(start, _dt.datetime):
            start = start.timestamp()
        self._t = float(start)
        self._lock = threading.Lock()

    def time(self) -> float:
        with self._lock:
            return self._t

    def advance(self, seconds: float = 0.0, *, days: float = 0.0) -> None:
        with self._lock:
            self._t += seconds + days * 86400.0

    def set(self, t: float | _dt.datetime) -> None:
        if isinstance(t, _dt.datetime):
            t = t.timestamp()
        with self._lock:
            self._t = float(t)


def iso_utc(when: float | _dt.datetime, *, micros: bool = False) -> str:
    """``when`` (epoch seconds or an aware datetime) as ``YYYY-MM-DDTHH:MM:SSZ`` in UTC, the form
    AWS and CloudTrail use; ``micros`` adds ``.ffffff`` before the Z."""
    if not isinstance(when, _dt.datetime):
        when = _dt.datetime.fromtimestamp(when, _dt.timezone.utc)
    return when.astimezone(_dt.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ" if micros else "%Y-%m-%dT%H:%M:%SZ")
