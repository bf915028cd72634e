"""The key-access monitor's decisions, driven step by step with a fake clock and a fake check
(no mount needed: the real-mount tests cover the wiring)."""

import pytest
import trio
from botocore.exceptions import ClientError, EndpointConnectionError

from volumed.clock import FakeClock
from volumed.mount.latch import (AVAILABLE, KMS_UNREACHABLE, RECOVERABLE, TERMINAL, AccessLatch,
                                 VolumeRecord)
from volumed.mount.monitor import KeyMonitor

pytestmark = pytest.mark.timeout(30)


def _client_error(code):
    return ClientError({"Error": {"Code": code, "Message": f"{code} says no"}}, "GenerateDataKeyWithoutPlaintext")


class FakeService:
    def __init__(self):
        self.counter = 0
        self.error = None
        self.calls = 0

    def check(self):
        self.calls += 1
        if self.error is not None:
            raise self.error

    def change_counter(self):
        return self.counter


def _monitor(tmp_path, *, embedded=True, grace=3600.0, window=7 * 86400.0):
    clock = FakeClock(1_000_000.0)
    svc = FakeService()
    latch = AccessLatch(clock, tmp_path / "rec.json", "arn:aws:kms:us-east-1:111122223333:key/k")
    closed = []
    latch.on_close(lambda: closed.append(latch.state))
    latch.mark_ok()
    mon = KeyMonitor(check=svc.check, counter=svc.change_counter if embedded else None, latch=latch,
                     clock=clock, grace=grace, window=window)
    return mon, svc, latch, clock, closed


def test_counter_change_triggers_the_real_check(tmp_path):
    async def main():
        mon, svc, latch, clock, closed = _monitor(tmp_path)
        mon._last_counter = svc.counter
        await mon.tick()
        assert svc.calls == 0                        # nothing changed, nothing due
        svc.counter += 1
        await mon.tick()
        assert svc.calls == 1 and latch.state == AVAILABLE
        clock.advance(301)                           # every few minutes regardless
        await mon.tick()
        assert svc.calls == 2
    trio.run(main)


@pytest.mark.parametrize("code", ["AccessDeniedException", "DisabledException",
                                  "KMSInvalidStateException", "InvalidGrantTokenException"])
def test_authorization_answers_revoke(tmp_path, code):
    async def main():
        mon, svc, latch, clock, closed = _monitor(tmp_path)
        svc.error = _client_error(code)
        await mon.run_check()
        assert latch.state == RECOVERABLE and code in latch.reason
        assert closed == [RECOVERABLE]
        rec = VolumeRecord.load(tmp_path / "rec.json")
        assert rec.state == RECOVERABLE and rec.revoked_at == clock.time()
        # Access coming back does not reopen a closed latch: only a new mount recovers.
        svc.error = None
        await mon.run_check()
        assert latch.state == RECOVERABLE
        # The window runs out: terminal, keeping the original revocation time.
        clock.advance(7 * 86400 + 1)
        await mon.tick()
        assert latch.state == TERMINAL
        assert VolumeRecord.load(tmp_path / "rec.json").revoked_at == rec.revoked_at
        assert closed == [RECOVERABLE]
    trio.run(main)


def test_deleted_key_is_terminal_at_once(tmp_path):
    async def main():
        mon, svc, latch, clock, closed = _monitor(tmp_path)
        svc.error = _client_error("NotFoundException")
        await mon.run_check()
        assert latch.state == TERMINAL and closed == [TERMINAL]
    trio.run(main)


def test_transient_failures_back_off_then_fail_after_grace(tmp_path):
    async def main():
        mon, svc, latch, clock, closed = _monitor(tmp_path, embedded=False, grace=600)
        svc.error = EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
        await mon.run_check()
        assert latch.state == KMS_UNREACHABLE and latch.unreachable_since == clock.time()
        first = mon._next - clock.time()
        await mon.run_check()
        assert mon._next - clock.time() == 2 * first    # exponential backoff
        svc.error = _client_error("ThrottlingException")
        clock.advance(300)
        await mon.run_check()
        assert latch.state == KMS_UNREACHABLE and latch.serving
        svc.error = None
        await mon.run_check()
        assert latch.state == AVAILABLE and latch.unreachable_since is None
        svc.error = _client_error("KMSInternalException")
        clock.advance(601)
        await mon.run_check()
        assert latch.state == RECOVERABLE and "601" not in latch.reason
    trio.run(main)


def test_aws_checks_on_the_interval_only(tmp_path):
    async def main():
        mon, svc, latch, clock, closed = _monitor(tmp_path, embedded=False)
        await mon.tick()
        assert svc.calls == 0
        clock.advance(60.5)
        await mon.tick()
        assert svc.calls == 1
    trio.run(main)


def test_a_check_that_never_answers_is_transient(tmp_path):
    import threading

    async def main():
        mon, svc, latch, clock, closed = _monitor(tmp_path)
        release = threading.Event()
        mon.check = lambda: release.wait(10)
        mon.check_timeout = 0.2
        await mon.run_check()
        release.set()
        assert latch.state == KMS_UNREACHABLE and "did not answer" in latch.reason
    trio.run(main)
