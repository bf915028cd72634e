"""The mount's access state, the latch that stops serving, and its persisted record.

States (names follow RDS):
  available                                       key usable; serving
  kms-unreachable                                 the key service does not answer; still serving
                                                  (``since`` says from when) until the grace period
  inaccessible-encryption-credentials-recoverable access revoked; nothing is served; a later mount
                                                  within the recovery window re-checks and recovers
  inaccessible-encryption-credentials             terminal: the key is deleted or the recovery window
                                                  passed; only a restore from a backup brings data back

Once one of the two inaccessible states is entered the latch is closed for the life of the daemon:
``check_serving()`` raises KeyAccessError, which the FUSE boundary turns into EIO.

The record (volumed.mount.paths.volume_state_path) persists the revocation time so it survives a
reboot; ``VolumeRecord`` reads and writes it atomically.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from volumed.clock import Clock
from volumed.errors import KeyAccessError
from volumed.safefile import write_atomic

AVAILABLE = "available"
KMS_UNREACHABLE = "kms-unreachable"
RECOVERABLE = "inaccessible-encryption-credentials-recoverable"
TERMINAL = "inaccessible-encryption-credentials"
INACCESSIBLE = (RECOVERABLE, TERMINAL)

DEFAULT_RECOVERY_WINDOW = 7 * 86400.0

log = logging.getLogger("volumed.mount")


@dataclass
class VolumeRecord:
    """What survives a reboot about a volume's key access: state, when access was lost and why."""

    state: str = AVAILABLE
    revoked_at: float | None = None
    reason: str = ""
    key_arn: str = ""

    @classmethod
    def load(cls, path: Path) -> "VolumeRecord":
        """The record at ``path``, or a fresh (available) one when there is none."""
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return cls()
        return cls(**{k: data[k] for k in ("state", "revoked_at", "reason", "key_arn") if k in data})

    def save(self, path: Path) -> None:
        """Write atomically and durably (volumed.safefile.write_atomic)."""
        write_atomic(path, json.dumps(asdict(self), sort_keys=True).encode())

    def expired(self, now: float, window: float) -> bool:
        """True when access was lost more than ``window`` seconds before ``now``."""
        return self.revoked_at is not None and now - self.revoked_at > window


@dataclass
class AccessLatch:
    """The live state of one mount. Thread-safe; read by FUSE handlers, written by the monitor.

    ``on_close`` callbacks run once, synchronously, in the thread that closes the latch (the
    daemon registers wiping the key there); the kernel-cache invalidation is the daemon's job.
    """

    clock: Clock
    record_path: Path | None = None
    key_arn: str = ""
    state: str = AVAILABLE
    since: float = 0.0
    reason: str = ""
    last_ok: float | None = None
    unreachable_since: float | None = None
    revoked_at: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _on_close: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self.since = self.clock.time()

    @property
    def serving(self) -> bool:
        return self.state not in INACCESSIBLE

    def check_serving(self) -> None:
        """Raise KeyAccessError unless the mount may still serve. Called before every FUSE op."""
        if self.state in INACCESSIBLE:
            raise KeyAccessError(f"volume is {self.state}: {self.reason}")

    def on_close(self, fn: Callable[[], None]) -> None:
        self._on_close.append(fn)

    def mark_ok(self) -> None:
        """A key check succeeded: back to available (unless the latch is closed)."""
        with self._lock:
            self.last_ok = self.clock.time()
            if self.state == KMS_UNREACHABLE:
                self._set(AVAILABLE, "key service reachable again")
            self.unreachable_since = None

    def mark_unreachable(self, why: str) -> None:
        """A check failed transiently: enter kms-unreachable (once), remembering since when."""
        with self._lock:
            if self.state == AVAILABLE:
                self.unreachable_since = self.clock.time()
                self._set(KMS_UNREACHABLE, why)

    def close(self, state: str, reason: str, *, persist: bool = True) -> bool:
        """Enter an inaccessible state. Returns True if this call closed a serving latch.

        Recoverable after terminal is ignored; terminal after recoverable upgrades (keeping the
        original revocation time). The ``on_close`` callbacks (the native engine's latch, the key
        wipe) run first, then the record is written (``persist``), before returning: the record's
        fsync may wait seconds behind heavy writes, and the cut-off may not. The key monitor passes
        ``persist=False`` and calls ``persist()`` from a worker thread, so that the fsync does not
        hold the daemon's loop either (the drain, the wipe and the invalidation run there).
        """
        assert state in INACCESSIBLE
        with self._lock:
            if self.state == TERMINAL or self.state == state:
                return False
            was_serving = self.serving
            if self.revoked_at is None:
                self.revoked_at = self.clock.time()
            self._set(state, reason)
        if was_serving:
            for fn in self._on_close:
                try:
                    fn()
                except Exception:
                    log.exception("while closing the latch")
        if persist:
            self.persist()
        return was_serving

    def persist(self) -> None:
        """Write the record of the current state (any thread). A record that cannot be written (a
        full or failing state disk) is logged; the mount stays cut off all the same."""
        with self._lock:
            try:
                self._persist()
            except OSError as exc:
                log.error("could not record the state %s in %s (%s): the mount is cut off, but "
                          "after a reboot the revocation time is not known; free or repair that "
                          "disk", self.state, self.record_path, exc)

    def _set(self, state: str, reason: str) -> None:
        """Change state (caller holds the lock) and log it: state changes go to the daemon's log."""
        self.state, self.reason, self.since = state, reason, self.clock.time()
        log.warning("state -> %s (%s)", state, reason)

    def _persist(self) -> None:
        """Write the volume's record (state, revocation time, reason)."""
        if self.record_path is not None:
            VolumeRecord(self.state, self.revoked_at, self.reason, self.key_arn).save(self.record_path)

    def clear_record(self) -> None:
        """Access verified at mount: record the volume as available again."""
        if self.record_path is not None:
            VolumeRecord(AVAILABLE, None, "", self.key_arn).save(self.record_path)
