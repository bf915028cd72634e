"""Authorization decided outside the keystore's write lock (issue 13, item 5).

Every key-service call is one BEGIN IMMEDIATE transaction, which holds SQLite's write lock for
every process on the keystore. Evaluating policies inside it let one caller with a costly
condition (a long encryption-context value against a wildcard pattern) stall every other client,
mount monitors included. Policy evaluation is a pure function of what the transaction read (the
key, its policy and grants, the caller's identity policies, the request), so it is moved out:

1. The call runs its transaction. When it reaches an authorization whose inputs have no decision
   in the cache, ``NeedDecision`` (carrying the inputs as read, a consistent snapshot) aborts it:
   the transaction rolls back and both locks are released.
2. The service decides outside any lock (``DecisionCache.decide``) and runs the call again.
3. The re-run reads the inputs again under the lock. The cache is keyed by a SHA-256 of the
   inputs' canonical JSON, so a decision is used only for exactly the inputs that the committing
   transaction saw: a policy changed in between is a different key and is decided afresh.

A call that keeps meeting new inputs (other writers changing the policy each time) is decided
inside the lock after ``MAX_PASSES`` passes, so it always finishes. The cache (LRU) is shared by
the clients of one open keystore; repeated calls with the same policy need one pass.

Callers: volumed.kms.service (``_call`` and ``_authorize``); the keystore holds one cache.
"""

from __future__ import annotations

import collections
import hashlib
import json
import threading

MAX_PASSES = 8
MAX_ENTRIES = 1024
_IGNORED = ("time", "grant_tokens")  # not read by the authorizer (tokens arrive as token_grants)


class NeedDecision(Exception):
    """Internal: abort the transaction; decide ``(action, key, request)`` outside the lock."""

    def __init__(self, fingerprint: str, action: str, key, request: dict):
        super().__init__(fingerprint)
        self.fingerprint, self.action, self.key, self.request = fingerprint, action, key, request


def fingerprint(action: str, key, request: dict) -> str:
    """SHA-256 of the canonical JSON of everything the authorizer reads."""
    inputs = {"action": action, "key": key,
              "request": {k: v for k, v in request.items() if k not in _IGNORED}}
    text = json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


class DecisionCache:
    """Outcomes by fingerprint: ("allow",), ("deny", code, message) or ("inside",) (decide in
    the transaction: the authorizer raised something other than a refusal). Thread-safe."""

    def __init__(self, max_entries: int = MAX_ENTRIES):
        self._lock = threading.Lock()
        self._entries: collections.OrderedDict[str, tuple] = collections.OrderedDict()
        self._max = max_entries

    def get(self, fp: str) -> tuple | None:
        with self._lock:
            hit = self._entries.get(fp)
            if hit is not None:
                self._entries.move_to_end(fp)
            return hit

    def _put(self, fp: str, outcome: tuple) -> None:
        with self._lock:
            self._entries[fp] = outcome
            self._entries.move_to_end(fp)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def decide(self, need: NeedDecision, authorizer, refusal_type: type) -> None:
        """Run ``authorizer(action, key, request)`` (outside any lock) and remember the outcome."""
        try:
            authorizer(need.action, need.key, need.request)
        except refusal_type as err:
            error = err.response["Error"]
            self._put(need.fingerprint, ("deny", error["Code"], error["Message"]))
        except Exception:  # noqa: BLE001 - surfaced by deciding inside the transaction next pass
            self._put(need.fingerprint, ("inside",))
        else:
            self._put(need.fingerprint, ("allow",))
