"""Listing and filtering audit records, and their human-readable form (``volumed kms audit``).

One concern: answer "which db and which volume used this key, and who was refused" from the log.
Read-only. Callers: ``volumed.kms.audit.query``/``format_records`` (re-exported), the CLI.
"""

from __future__ import annotations

import datetime as _dt
import json
import sqlite3
from typing import Any, Iterator

from volumed.clock import iso_utc
from volumed.kms.arn import Arn
from volumed.kms.policy import wildcard

_CONTEXT_MEMBERS = ("encryptionContext", "sourceEncryptionContext", "destinationEncryptionContext")


def _time_text(t: Any) -> str | None:
    """A bound as CloudTrail's eventTime text (lexically comparable): datetime, epoch, or ISO."""
    if t is None:
        return None
    if isinstance(t, (int, float)):
        t = _dt.datetime.fromtimestamp(t, tz=_dt.timezone.utc)
    if isinstance(t, str):
        try:
            t = _dt.datetime.fromisoformat(t.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"time {t!r} is not ISO 8601 (e.g. 2026-01-31T12:00:00Z)") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    return iso_utc(t)


def contexts(record: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every encryption-context map a record carries (request contexts and grant constraints)."""
    params = record.get("requestParameters") or {}
    for name in _CONTEXT_MEMBERS:
        if isinstance(params.get(name), dict):
            yield params[name]
    constraints = params.get("constraints")
    if isinstance(constraints, dict):
        for v in constraints.values():
            if isinstance(v, dict):
                yield v


def _key_matches(record: dict[str, Any], key: str) -> bool:
    arns = [r.get("ARN", "") for r in record.get("resources") or ()]
    key_id = (record.get("requestParameters") or {}).get("keyId")
    for cand in arns + ([key_id] if isinstance(key_id, str) else []):
        if cand == key or cand.endswith("/" + key):
            return True
    return False


def _principal_matches(record: dict[str, Any], principal: str) -> bool:
    ident = record.get("userIdentity") or {}
    issuer = ((ident.get("sessionContext") or {}).get("sessionIssuer") or {}).get("arn")
    for cand in (ident.get("arn"), issuer):
        if cand and (cand == principal or wildcard.match(principal, cand)):
            return True
    return False


def _context_matches(record: dict[str, Any], key: str | None, value: str | None) -> bool:
    for ctx in contexts(record):
        for k, v in ctx.items():
            if (key is None or k.lower() == key.lower()) and (value is None or v == value):
                return True
    return False


def query(conn: sqlite3.Connection, key: str | None = None, event_name: str | None = None, principal: str | None = None,
          context_key: str | None = None, context_value: str | None = None, since: Any = None,
          until: Any = None, errors_only: bool = False, limit: int | None = None) -> list[dict[str, Any]]:
    """Records in log order that pass every given filter.

    ``key``: key ARN or id (matches resources and requestParameters.keyId). ``event_name``: e.g.
    "Decrypt" (case-insensitive). ``principal``: caller ARN, role ARN of an assumed-role session,
    or a glob such as ``*:user/alice``. ``context_key``/``context_value``: an encryption-context pair
    (key case-insensitive, value exact; either alone matches any of the other) in the request's
    context or a grant's constraints. ``since``/``until``: inclusive bounds (datetime, epoch or
    ISO text). ``errors_only``: failed and denied calls only. ``limit``: the newest N matches."""
    lo, hi = _time_text(since), _time_text(until)
    out = []
    for (text,) in conn.execute("SELECT record FROM audit ORDER BY seq"):
        try:
            rec = json.loads(text)
        except ValueError:
            continue  # an edited, unreadable record: verify reports it
        t = rec.get("eventTime", "")
        if (lo and t < lo) or (hi and t > hi):
            continue
        if event_name and rec.get("eventName", "").lower() != event_name.lower():
            continue
        if errors_only and not rec.get("errorCode"):
            continue
        if key and not _key_matches(rec, key):
            continue
        if principal and not _principal_matches(rec, principal):
            continue
        if (context_key or context_value) and not _context_matches(rec, context_key, context_value):
            continue
        out.append(rec)
    return out[-limit:] if limit else out


def _short_principal(ident: dict[str, Any]) -> str:
    arn = ident.get("arn") or "?"
    parsed = Arn.try_parse(arn)
    return parsed.resource if parsed else arn


def format_record(rec: dict[str, Any]) -> str:
    """One line: time, event, outcome, principal (and service), key id, encryption context."""
    ident = rec.get("userIdentity") or {}
    who = _short_principal(ident)
    if ident.get("invokedBy"):
        who += f" via {ident['invokedBy']}"
    outcome = rec.get("errorCode") or "OK"
    keys = [r.get("ARN", "").rsplit("/", 1)[-1] for r in rec.get("resources") or ()]
    ctx = " ".join(f"{k}={v}" for c in contexts(rec) for k, v in sorted(c.items()))
    parts = [rec.get("eventTime", "?"), f"{rec.get('eventName', '?'):<32}", f"{outcome:<24}", who,
             "key " + ",".join(keys) if keys else "-", ctx]
    return "  ".join(p for p in parts if p).rstrip()


def format_records(records: list[dict[str, Any]]) -> str:
    """The human-readable listing of ``volumed kms audit`` (one line per record)."""
    return "\n".join(format_record(r) for r in records)
