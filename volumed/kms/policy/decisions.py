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
   The same holds for the identity-policy decisions of the IAM extension calls.
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
import dataclasses
import hashlib
import json
import threading
from collections.abc import Callable
from typing import Any

from volumed.errors import aws_error_code, aws_error_message

MAX_PASSES = 8
MAX_ENTRIES = 1024
_IGNORED = ("time", "grant_tokens")  # not read by the authorizer (tokens arrive as token_grants)

# ("value", v): the decision returned v; ("deny", code, message): it raised a refusal;
# ("inside",): it raised anything else.
Outcome = tuple[Any, ...]


class NeedDecision(Exception):
    """Internal: abort the transaction; run ``decide()`` outside the lock, cache it under
    ``fingerprint``, and run the transaction again."""

    def __init__(self, fingerprint: str, decide: Callable[[], object]):
        super().__init__(fingerprint)
        self.fingerprint, self.decide = fingerprint, decide


def _plain(obj: object) -> object:
    """A dataclass (key, grant, authorization request, policy request) as a dict of what decisions
    read: the authorization request loses the members no decision reads (``_IGNORED``)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {k: v for k, v in dataclasses.asdict(obj).items() if k not in _IGNORED}
        return {"__type__": type(obj).__name__, **fields}
    return repr(obj)


def fingerprint(kind: str, *inputs: object) -> str:
    """SHA-256 of the canonical JSON of a decision's kind and everything it reads."""
    text = json.dumps([kind, list(inputs)], sort_keys=True, separators=(",", ":"), default=_plain)
    return hashlib.sha256(text.encode()).hexdigest()


class DecisionCache:
    """Outcomes by fingerprint: ("value", v) (the decision returned v), ("deny", code, message)
    (it raised a refusal) or ("inside",) (it raised anything else: decide in the transaction,
    where the error surfaces as before). Thread-safe, least recently used entries dropped."""

    def __init__(self, max_entries: int = MAX_ENTRIES):
        self._lock = threading.Lock()
        self._entries: collections.OrderedDict[str, Outcome] = collections.OrderedDict()
        self._max = max_entries

    def get(self, fp: str) -> Outcome | None:
        with self._lock:
            hit = self._entries.get(fp)
            if hit is not None:
                self._entries.move_to_end(fp)
            return hit

    def _put(self, fp: str, outcome: Outcome) -> None:
        with self._lock:
            self._entries[fp] = outcome
            self._entries.move_to_end(fp)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def decide(self, need: NeedDecision, refusal_type: type[Exception]) -> None:
        """Run ``need.decide()`` (outside any lock) and remember the outcome."""
        try:
            value = need.decide()
        except refusal_type as err:
            self._put(need.fingerprint, ("deny", aws_error_code(err), aws_error_message(err)))
        except Exception:  # noqa: BLE001 - surfaced by deciding inside the transaction next pass
            self._put(need.fingerprint, ("inside",))
        else:
            self._put(need.fingerprint, ("value", value))
