"""`volumed kms audit` and `volumed kms audit verify`: read and check the embedded key service's
CloudTrail-format audit log.

``register_audit(kms_subparsers)`` adds the commands; volumed.cli.kms_cmd.register calls it. They
read the keystore database directly and read-only (the log is local to the embedded service; for
AWS KMS the same records are in CloudTrail).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys

from volumed.cli.common import Subparsers, embedded_keystore, print_json
from volumed.errors import IntegrityError, UsageError
from volumed.kms import audit

DB_FILE = "keystore.db"


def _open_log(args: argparse.Namespace) -> sqlite3.Connection:
    """The keystore database named by --kms (or the default keystore), opened read-only."""
    spec = embedded_keystore(args, "the audit log is kept only by the embedded key service; for AWS "
                                   "KMS read the same records in CloudTrail")
    path = os.path.join(spec, DB_FILE)
    if not os.path.exists(path):
        raise UsageError(f"no keystore at {spec}: nothing to audit (choose one with --kms or VOLUMED_KMS)")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0)
        conn.execute("SELECT 1 FROM audit LIMIT 1")
    except sqlite3.Error as exc:
        raise UsageError(f"cannot read the audit log in {path}: {exc}") from None
    return conn


def _resolve_alias(conn: sqlite3.Connection, key: str | None) -> str | None:
    """The key id an alias (``alias/x`` or its ARN) names, read from the keystore without a KMS call
    (so filtering the log adds nothing to it); anything else is returned unchanged. Records name keys
    by ARN or id, never by alias, so an alias must be resolved before matching."""
    if not key or "alias/" not in key:
        return key
    name = key[key.index("alias/"):]
    try:
        row = conn.execute("SELECT key_id FROM aliases WHERE name = ?", (name,)).fetchone()
    except sqlite3.Error:
        row = None
    if row is None:
        raise UsageError(f"no alias {name} in this keystore: filter by key id or ARN instead "
                         "(see 'volumed kms list-aliases')")
    return str(row[0])


def _list(args: argparse.Namespace) -> int:
    conn = _open_log(args)
    try:
        records = audit.query(conn, key=_resolve_alias(conn, args.key), event_name=args.event, principal=args.principal,
                              context_key=args.context_key, context_value=args.context_value,
                              since=args.since, until=args.until, errors_only=args.errors,
                              limit=args.limit)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    finally:
        conn.close()
    if args.json:
        print_json({"Records": records})
    elif records:
        print(audit.format_records(records))
    else:
        print("no audit records match", file=sys.stderr)
    return 0


def _verify(args: argparse.Namespace) -> int:
    conn = _open_log(args)
    try:
        report = audit.verify(conn, anchor=args.anchor, public_key=args.public_key)
    except (OSError, ValueError, TypeError) as exc:
        raise UsageError(f"cannot use public key {args.public_key}: {exc}") from None
    finally:
        conn.close()
    if args.json:
        print_json(report.to_dict())
    else:
        print(report.format())
    return 0 if report.ok else IntegrityError.exit_code


def _context_filter(text: str) -> tuple[str, str | None]:
    key, sep, value = text.partition("=")
    if not key:
        raise argparse.ArgumentTypeError("use KEY or KEY=VALUE, e.g. aws:ebs:id=vol-0123")
    return key, (value if sep else None)


def register_audit(kms_subparsers: Subparsers) -> None:
    """Add ``audit`` (list and filter records) with its ``verify`` subcommand."""
    p = kms_subparsers.add_parser(
        "audit", help="list the key service's audit records (CloudTrail format)",
        description="List audit records, oldest first, filtered by key, event, principal, "
                    "encryption context and time. `volumed kms audit verify` checks the log's "
                    "hash chain and signed digests.")
    _common(p)
    p.add_argument("--key", help="key id or key ARN")
    p.add_argument("--event", metavar="NAME", help="event name, e.g. Decrypt or CreateGrant")
    p.add_argument("--principal", metavar="ARN", help="caller ARN, its role ARN, or a glob like '*:user/alice'")
    p.add_argument("--context", type=_context_filter, metavar="KEY[=VALUE]",
                   help="encryption-context pair (key case-insensitive), e.g. aws:rds:db-id=db-ABC")
    p.add_argument("--since", metavar="TIME", help="ISO 8601 time, e.g. 2026-01-31T00:00:00Z")
    p.add_argument("--until", metavar="TIME", help="ISO 8601 time")
    p.add_argument("--errors", action="store_true", help="only failed and refused calls")
    p.add_argument("--limit", type=int, metavar="N", help="only the newest N matches")
    p.set_defaults(func=_list_with_context)
    sub = p.add_subparsers(dest="audit_command", metavar="COMMAND")
    v = sub.add_parser("verify", help="check the audit log for tampering",
                       description="Check every record against the hash chain and the signed digests; "
                                   "name each record edited, removed, inserted or reordered. The "
                                   "digests are checked against --public-key or the keys pinned in "
                                   "<keystore>/audit-signing.pub, never against the key the database "
                                   "names. Exit 4 when the log fails verification.")
    _common(v, inherited=True)
    v.add_argument("--anchor", metavar="HASH", help="a digest hash kept elsewhere (catches a truncated tail)")
    v.add_argument("--public-key", metavar="FILE|HEX",
                   help="the signing key's public key (PEM file or 64 hex digits); default: the "
                        "keys pinned in <keystore>/audit-signing.pub (never the key the database names)")
    v.set_defaults(func=_verify)


def _common(p: argparse.ArgumentParser, *, inherited: bool = False) -> None:
    """--kms and --json; on ``verify`` they default to what was given before the word verify."""
    p.add_argument("--kms", metavar="DIR", default=argparse.SUPPRESS if inherited else None,
                   help="keystore directory (default: $VOLUMED_KMS, else the default keystore)")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS if inherited else False,
                   help="print JSON")


def _list_with_context(args: argparse.Namespace) -> int:
    ctx = args.context or (None, None)
    args.context_key, args.context_value = ctx
    return _list(args)
