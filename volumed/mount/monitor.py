"""The key-access monitor: a trio task that keeps knowing whether the volume's key is still usable
by this host, through this grant, with this context.

The real check is ``GenerateDataKeyWithoutPlaintext`` as the host principal with the grant token and
the volume's encryption context: allowed only while the key state, the grant (and its constraint),
the key policy and any identity policy all still allow the host to use the key for this volume; it
returns no plaintext. It is audited, like any KMS call.

Scheduling (every decision compares ``clock.time()`` with a deadline, so an injected clock drives
it; the loop itself wakes every ``poll`` seconds of real time):
  - embedded key service: the keystore's change counter (cheap, not audited) is read every poll;
    a change triggers the real check at once; otherwise it runs every ``interval`` (default 300 s);
  - AWS KMS: no counter; the real check runs every ``interval`` (default 60 s).
Outcomes (volumed.mount.keyservice.classify):
  ok         -> latch.mark_ok()
  revoked    -> latch closed, state inaccessible-encryption-credentials-recoverable
  deleted    -> latch closed, state inaccessible-encryption-credentials (terminal)
  transient  -> (also: no answer within ``check_timeout`` seconds of real time, e.g. a keystore
                locked by another process, an endpoint that accepts but never answers)
                kms-unreachable since T; retried with exponential backoff (from ``backoff`` up to
                ``interval``); after ``grace`` seconds without a successful check the latch closes
                (recoverable: the host can no longer show it may use the key).
While closed-recoverable the monitor keeps watching: a completed deletion makes it terminal, and so
does the recovery window running out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from volumed.clock import Clock
from volumed.mount import keyservice
from volumed.mount.keyservice import ChangeCounter
from volumed.mount.latch import RECOVERABLE, TERMINAL, AccessLatch

log = logging.getLogger("volumed.mount")

EMBEDDED_INTERVAL = 300.0
AWS_INTERVAL = 60.0
DEFAULT_GRACE = 3600.0


class KeyMonitor:
    """check(): sync callable that raises on failure (run in a worker thread).
    counter(): sync callable returning the keystore change counter, or None for AWS KMS.
    latch: volumed.mount.latch.AccessLatch; clock: volumed.clock.Clock (may be swapped live)."""

    def __init__(self, *, check: Callable[[], None], counter: ChangeCounter | None,
                 latch: AccessLatch, clock: Clock, interval: float | None = None,
                 grace: float = DEFAULT_GRACE, window: float, poll: float = 0.1,
                 backoff: float = 0.5, check_timeout: float = 10.0):
        self.check = check
        self.counter = counter
        self.latch = latch
        self.clock = clock
        self.interval = interval or (EMBEDDED_INTERVAL if counter else AWS_INTERVAL)
        self.grace = grace
        self.window = window
        self.poll = poll
        self.backoff = backoff
        self.check_timeout = check_timeout
        self.failures = 0
        self.checks = 0
        self._last_counter: int | None = None
        self._next = clock.time() + self.interval
        self._wake = trio.Event()
        self._record_due = False  # the latch closed: its record is still to be written

    def request_check(self) -> None:
        """Make the next loop iteration run the real check (control channel, tests)."""
        self._next = float("-inf")
        self._wake.set()

    async def run(self) -> None:
        """Loop until cancelled. Never raises for a key-service failure. Starts with a real check
        (which also takes the counter's baseline), so a change between the volume's open and the
        monitor's start is not missed."""
        await self.run_check()
        while True:
            with trio.move_on_after(self.poll):
                await self._wake.wait()
            self._wake = trio.Event()
            await self.tick()

    def _close(self, state: str, reason: str) -> None:
        """Close the latch now (on the loop: the callbacks schedule the drain and the wipe); its
        record is written by ``_write_record`` afterwards, off the loop."""
        self.latch.close(state, reason, persist=False)
        self._record_due = True

    async def _write_record(self) -> None:
        """Write the latch's record in a worker thread (its fsync may take seconds behind heavy
        writes, and the loop runs the revocation's drain, wipe and invalidation meanwhile)."""
        if self._record_due:
            self._record_due = False
            with trio.CancelScope(shield=True):  # an unmount meanwhile must not lose the record
                await trio.to_thread.run_sync(self.latch.persist)

    async def tick(self) -> None:
        """One monitor step: read the counter, run the check if due, age the recovery window."""
        try:
            await self._tick()
        finally:
            await self._write_record()

    async def _tick(self) -> None:
        now = self.clock.time()
        if self.latch.state == TERMINAL:
            return
        if self.latch.state == RECOVERABLE and self.latch.revoked_at is not None \
                and now - self.latch.revoked_at > self.window:
            self._close(TERMINAL, "recovery window passed; restore from a backup")
            return
        due = now >= self._next
        if self.counter is not None:
            c = await self._read_counter()
            # A counter that answers again after failures (a key server back from an outage)
            # makes the real check due at once, so the mount leaves kms-unreachable promptly.
            if c is not None and (c != self._last_counter or self.failures):
                self._last_counter = c
                due = True
        if due:
            await self.run_check()

    async def _read_counter(self) -> int | None:
        counter = self.counter
        if counter is None:
            return None
        try:
            return await trio.to_thread.run_sync(counter)
        except Exception as exc:
            self._transient(exc)
            return None

    async def run_check(self) -> None:
        """Run the real check once and act on its outcome."""
        try:
            await self._run_check()
        finally:
            await self._write_record()

    async def _run_check(self) -> None:
        self.checks += 1
        try:
            with trio.fail_after(self.check_timeout):
                await trio.to_thread.run_sync(self.check, abandon_on_cancel=True)
        except trio.TooSlowError:
            self._transient(TimeoutError(f"the key check did not answer within {self.check_timeout:.0f}s"))
            return
        except Exception as exc:
            kind = keyservice.classify(exc)
            if kind == "transient":
                self._transient(exc)
            elif kind == "deleted":
                self._close(TERMINAL, f"key deleted: {keyservice.error_message(exc)}")
            else:
                self._close(RECOVERABLE, keyservice.error_message(exc))
            return
        finally:
            if self.counter is not None:
                # The check itself may move the counter: take the counter after it as the baseline.
                c = await self._read_counter()
                if c is not None:
                    self._last_counter = c
        self.failures = 0
        if self.latch.serving:
            self.latch.mark_ok()
        self._next = self.clock.time() + self.interval

    def _transient(self, exc: BaseException) -> None:
        now = self.clock.time()
        self.failures += 1
        delay = min(self.backoff * 2 ** (self.failures - 1), self.interval)
        self._next = now + delay
        if not self.latch.serving:
            return
        why = keyservice.error_message(exc)
        if self.failures == 1 or self.failures % 10 == 0:
            log.warning("key service unreachable (attempt %d, next in %.1fs): %s",
                        self.failures, delay, why)
        self.latch.mark_unreachable(why)
        last_ok = self.latch.last_ok if self.latch.last_ok is not None else self.latch.since
        if now - last_ok > self.grace:
            self._close(RECOVERABLE, f"no successful key check for {self.grace:.0f}s: {why}")
