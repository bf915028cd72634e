"""Per-principal request rate limits: a token bucket per caller ARN.

Each principal may make ``rate`` requests per second on average and ``burst`` at once; a request
finding its bucket empty is refused with ThrottlingException (botocore retries those with
backoff). Time comes from an injectable clock (volumed.clock). Caller: volumed.kms.server.app,
after authentication (the principal is known only then).
"""

from __future__ import annotations

import threading

from volumed.clock import Clock


class RateLimiter:
    def __init__(self, rate: float, burst: float | None, clock: Clock):
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(1.0, rate))
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, principal: str) -> bool:
        """Take one token from ``principal``'s bucket; False if it is empty. rate <= 0: no limit."""
        if self.rate <= 0:
            return True
        now = self.clock.time()
        with self._lock:
            tokens, last = self._buckets.get(principal, (self.burst, now))
            tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate)
            if tokens < 1.0:
                self._buckets[principal] = (tokens, now)
                return False
            self._buckets[principal] = (tokens - 1.0, now)
            if len(self._buckets) > 100_000:  # forget idle callers rather than grow without bound
                self._buckets = {k: v for k, v in self._buckets.items() if v[1] > now - 60}
            return True
