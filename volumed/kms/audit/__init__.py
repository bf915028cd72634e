"""The key service's CloudTrail-format, tamper-evident audit log (docs/AUDIT.md).

One concern per module: ``log`` writes records in the caller's transaction and seals them with
signed digests; ``query`` lists and formats them (``volumed kms audit``); ``verify`` checks the hash
chain and digests against the pinned public key (``volumed kms audit verify``). ``verify`` and
``query`` read what ``log`` writes; ``log`` imports neither. The names callers need are
re-exported here, so ``from volumed.kms import audit`` then ``audit.record_call``/``audit.verify``.
"""

from __future__ import annotations

from volumed.kms.audit.log import (DEFAULT_SEAL_EVERY, DEFAULT_SEAL_INTERVAL, DIGEST_VERSION, GENESIS, PIN_FILE,
                                   SIGNING_KEY_FILE, AuditError, RequestMeta, chain_hash, configure, content_hash,
                                   create_signing_key, ensure_schema, fingerprint, latest_anchor,
                                   load_signing_key, pin_line, read_pin, record_call, scrub, seal,
                                   service_host, user_identity)
from volumed.kms.audit.query import format_record, format_records, query
from volumed.kms.audit.verify import Finding, VerifyReport, verify

__all__ = ["DEFAULT_SEAL_EVERY", "DEFAULT_SEAL_INTERVAL", "DIGEST_VERSION", "GENESIS", "PIN_FILE",
           "SIGNING_KEY_FILE", "AuditError", "RequestMeta", "Finding", "VerifyReport", "chain_hash", "configure",
           "content_hash", "create_signing_key", "ensure_schema", "fingerprint", "format_record",
           "format_records", "latest_anchor", "load_signing_key", "pin_line", "query", "read_pin",
           "record_call", "scrub", "seal", "service_host", "user_identity", "verify"]
