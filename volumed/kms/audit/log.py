"""CloudTrail-format, tamper-evident audit log of the embedded key service.

The log lives in the keystore's SQLite database so that a record is appended in the same
transaction as the change it describes. The service calls, for every KMS call, allowed or denied:

    ensure_schema(conn)                      once per connection (idempotent; needs no key)
    configure(conn, signing_key_path)        once per keystore open (creates the 0600 Ed25519 key)
    record_call(conn, *, clock, account_id, region, event_name, principal, via_service,
                request_parameters, response_elements, error_code, error_message,
                key_arn, read_only, source_ip="127.0.0.1", user_agent="volumed",
                access_key_id=None, request_id=None)

``record_call`` runs inside the caller's open write transaction (BEGIN IMMEDIATE) and never
commits. If it raises, the call fails: the log is never silently incomplete. Members named like
plaintext, ciphertext, key material or grant tokens, and any bytes value, are dropped before a
record is built, whatever the caller passes.

Tamper evidence (modelled on CloudTrail log file integrity validation; docs/AUDIT.md):

- records are chained: ``hash = SHA-256(prev_hash || record text)``, the first ``prev_hash`` all
  zeros;
- on a fixed schedule (every ``seal_every`` records, and at the first append once the oldest
  unsealed record is ``seal_interval`` seconds old by the injected clock) the unsealed records are
  sealed by a digest: it lists the SHA-256 of each record's text and the chain hash of the last,
  carries the previous digest's hash and signature and (format v2) the seal schedule, and is
  signed with Ed25519 by the keystore's audit signing key, whose public half ``configure`` pins in
  ``audit-signing.pub`` beside the database: the verifier's trust root;
- ``verify`` checks all of it and names the seq numbers at fault; ``latest_anchor`` gives the hash
  of the newest digest, which a user keeps elsewhere and passes back to ``verify`` to catch a
  truncated tail.
"""

from __future__ import annotations

import contextlib
import base64
import datetime as _dt
import hashlib
import json
import os
import re
import sqlite3
import uuid
from typing import Any, TypedDict

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from volumed import safefile
from volumed.clock import Clock, iso_utc
from volumed.errors import VolumedError
from volumed.kms.arn import Arn

EVENT_VERSION = "1.08"
GENESIS = "0" * 64
DEFAULT_SEAL_EVERY = 100
DEFAULT_SEAL_INTERVAL = 3600.0
SIGNING_KEY_FILE = "audit-signing.key"  # suggested name inside the keystore directory
PIN_FILE = "audit-signing.pub"  # the trusted public key(s), beside the database, outside it
DIGEST_VERSION = 2  # 2: the seal schedule is signed in every digest; 1: it was not

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, record TEXT NOT NULL,
    prev_hash TEXT, hash TEXT, appended REAL);
CREATE TABLE IF NOT EXISTS audit_digest (
    dseq INTEGER PRIMARY KEY, body TEXT NOT NULL, signature TEXT NOT NULL, hash TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit_config (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# Request/response members that must never reach the log (compared lower-cased, without "_").
_FORBIDDEN_WORDS = ("plaintext", "ciphertext", "keymaterial", "privatekey", "secret", "password",
                    "passphrase", "importtoken", "granttoken", "wrappingkey", "sharedsecret")
# Maps whose members are data (context pairs, tags), not parameter names: no renaming inside.
_DATA_MAPS = {"encryptioncontext", "sourceencryptioncontext", "destinationencryptioncontext",
              "encryptioncontextsubset", "encryptioncontextequals"}


class RequestMeta(TypedDict, total=False):
    """What a network call's record carries beyond the call (``record_call``'s keyword arguments
    of the same names): set per request by volumed.kms.server, empty for the embedded service."""

    source_ip: str
    user_agent: str
    access_key_id: str | None
    request_id: str | None


class AuditError(VolumedError):
    """The audit log cannot be written or sealed (the call that wanted the record fails)."""

    code = "KMSInternalException"


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the audit tables if missing (idempotent, no key needed). Adds the chain columns to a
    log created by the early interface stub. Caller: the keystore, once per connection."""
    for stmt in _SCHEMA.split(";"):  # not executescript: it would COMMIT an open transaction
        if stmt.strip():
            conn.execute(stmt)
    cols = {r[1] for r in conn.execute("PRAGMA table_info(audit)").fetchall()}
    for col, typ in (("prev_hash", "TEXT"), ("hash", "TEXT"), ("appended", "REAL")):
        if col not in cols:
            conn.execute(f"ALTER TABLE audit ADD COLUMN {col} {typ}")


# ---------------------------------------------------------------------------------------------
# Signing key and configuration


def create_signing_key(path: str) -> None:
    """Create a new Ed25519 signing key at ``path`` (PEM, mode 0600); refuse to overwrite one."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)


_KEY_CACHE: dict[str, tuple[int, Ed25519PrivateKey]] = {}


def load_signing_key(path: str) -> Ed25519PrivateKey:
    """The Ed25519 private key in ``path`` (cached by modification time). Raises AuditError."""
    try:
        mtime = os.stat(path).st_mtime_ns
        hit = _KEY_CACHE.get(path)
        if hit and hit[0] == mtime:
            return hit[1]
        with open(path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except (OSError, ValueError) as exc:
        raise AuditError(f"cannot read the audit signing key {path}: {exc}; the audit log cannot be "
                         "sealed (restore the key file, or see docs/AUDIT.md)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise AuditError(f"audit signing key {path} is not an Ed25519 key")
    _KEY_CACHE[path] = (mtime, key)
    return key


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(public_key: Ed25519PublicKey) -> str:
    """SHA-256 of the raw public key, hex: how digests name the key that signed them."""
    return hashlib.sha256(_raw_public(public_key)).hexdigest()


def database_directory(conn: sqlite3.Connection) -> str | None:
    """The directory of ``conn``'s main database file (None for an in-memory database)."""
    for row in conn.execute("PRAGMA database_list").fetchall():
        if row[1] == "main" and row[2]:
            return os.path.dirname(os.path.abspath(str(row[2])))
    return None


def pin_path(conn: sqlite3.Connection) -> str | None:
    """``<database directory>/audit-signing.pub``: where the trusted public keys are pinned."""
    directory = database_directory(conn)
    return os.path.join(directory, PIN_FILE) if directory else None


def pin_line(public_key: Ed25519PublicKey) -> str:
    """One line of the pin file: ``ed25519 <64 hex digits of the raw public key>``."""
    return f"ed25519 {_raw_public(public_key).hex()}"


def read_pin(path: str) -> list[Ed25519PublicKey]:
    """The public keys pinned in ``path`` (lines ``ed25519 <hex>``; ``#`` comments). Raises
    OSError if unreadable, ValueError if malformed."""
    keys = []
    with open(path, encoding="ascii") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            kind, _, hexkey = line.partition(" ")
            if kind != "ed25519" or len(hexkey.strip()) != 64:
                raise ValueError(f"{path} line {n} is not 'ed25519 <64 hex digits>'")
            keys.append(Ed25519PublicKey.from_public_bytes(bytes.fromhex(hexkey.strip())))
    return keys


def _write_pin(path: str, public_key: Ed25519PublicKey) -> None:
    """Create the pin file (0644, never overwritten) naming ``public_key``, whole or not at all:
    written and fsync'd under a temporary name, then linked to ``path`` (a link never replaces an
    existing pin: FileExistsError), so a crash cannot leave an empty pin that lists no key."""
    text = ("# The audit log's signing public key(s). `volumed kms audit verify` trusts only these,\n"
            "# never the key the database names. To rotate the signing key on purpose, add its line.\n"
            f"{pin_line(public_key)}\n")
    tmp = safefile.temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        try:
            os.fchmod(fd, 0o644)
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    safefile.fsync_dir(os.path.dirname(path))


def _check_pin(conn: sqlite3.Connection, signing_key_path: str, pub: Ed25519PublicKey) -> None:
    """Pin ``pub`` beside the database on first use; refuse a signing key the pin does not list."""
    path = pin_path(conn)
    if path is None:
        return  # an in-memory log: verify needs the public key given
    if not os.path.exists(path):
        try:
            _write_pin(path, pub)
        except FileExistsError:
            pass  # another process pinned it first
        except OSError as exc:
            raise AuditError(f"cannot pin the audit signing public key in {path}: {exc.strerror}") from None
    try:
        pinned = read_pin(path)
    except (OSError, ValueError) as exc:
        raise AuditError(f"cannot read the pinned audit public key {path}: {exc}") from None
    if fingerprint(pub) not in {fingerprint(k) for k in pinned}:
        raise AuditError(f"audit signing key {signing_key_path} is not the key pinned in {path}: it was "
                         f"replaced; restore the original, or if you rotated it on purpose add the line "
                         f"'{pin_line(pub)}' to {path}")


def configure(conn: sqlite3.Connection, signing_key_path: str, *,
              seal_every: int = DEFAULT_SEAL_EVERY,
              seal_interval: float = DEFAULT_SEAL_INTERVAL) -> str:
    """Turn on sealing: create the signing key file if missing (0600), pin its public key in
    ``audit-signing.pub`` beside the database if nothing is pinned yet (0644; the verifier's trust
    root), and record its path, its public key and the schedule in the database. Returns the key's
    fingerprint. AuditError if the key is not one the pin file lists.

    Caller: the keystore when it opens (``<keystore dir>/audit-signing.key``). Writes its rows; in
    autocommit mode they commit at once, inside a transaction they commit with it."""
    if seal_every < 1 or seal_interval <= 0:
        raise ValueError("seal_every must be >= 1 and seal_interval > 0")
    signing_key_path = os.path.abspath(signing_key_path)
    if not os.path.exists(signing_key_path):
        try:
            create_signing_key(signing_key_path)
        except FileExistsError:
            pass  # another process created it first
    pub = load_signing_key(signing_key_path).public_key()
    _check_pin(conn, signing_key_path, pub)
    rows = {"signing_key_path": signing_key_path, "public_key": _raw_public(pub).hex(),
            "seal_every": str(int(seal_every)), "seal_interval": repr(float(seal_interval))}
    have = dict(conn.execute("SELECT name, value FROM audit_config").fetchall())
    if any(have.get(k) != v for k, v in rows.items()):
        conn.executemany("INSERT OR REPLACE INTO audit_config (name, value) VALUES (?, ?)",
                         list(rows.items()))
    return fingerprint(pub)


def _config(conn: sqlite3.Connection) -> dict[str, Any] | None:
    cfg = dict(conn.execute("SELECT name, value FROM audit_config").fetchall())
    if "signing_key_path" not in cfg:
        return None
    return {"signing_key_path": cfg["signing_key_path"], "public_key": cfg.get("public_key"),
            "seal_every": int(cfg.get("seal_every", DEFAULT_SEAL_EVERY)),
            "seal_interval": float(cfg.get("seal_interval", DEFAULT_SEAL_INTERVAL))}


# ---------------------------------------------------------------------------------------------
# Building records


def _forbidden(name: str) -> bool:
    n = name.lower().replace("_", "")
    return any(w in n for w in _FORBIDDEN_WORDS)


def _camel(name: str) -> str:
    return name[:1].lower() + name[1:] if name[:1].isupper() and not name.isupper() else name


def scrub(obj: Any, *, data_map: bool = False) -> Any:
    """A copy of request/response parameters fit for the log: secret-named members and bytes
    values dropped, parameter names in CloudTrail's lowerCamelCase (names inside encryption
    context maps are data and kept as they are)."""
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return None
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            k = str(k)
            if isinstance(v, (bytes, bytearray, memoryview)):
                continue
            if data_map:
                out[k] = scrub(v, data_map=False) if isinstance(v, (dict, list)) else v
                continue
            if _forbidden(k):
                continue
            name = _camel(k)
            out[name] = scrub(v, data_map=name.lower() in _DATA_MAPS)
        return out
    if isinstance(obj, (list, tuple)):
        return [scrub(v) for v in obj if not isinstance(v, (bytes, bytearray, memoryview))]
    if isinstance(obj, _dt.datetime):
        return iso_utc(obj)
    return obj


def _principal_id(prefix: str, arn: str) -> str:
    digest = base64.b32encode(hashlib.sha256(arn.encode()).digest()).decode()
    return prefix + digest[:17]


def user_identity(principal: str, via_service: str | None) -> dict[str, Any]:
    """CloudTrail's userIdentity for a caller ARN: Root, IAMUser, AssumedRole (with its session
    issuer), or AWSService; ``invokedBy`` names the service a call came through."""
    a = Arn.try_parse(principal)
    if a is None or a.service not in ("iam", "sts") or not a.account:
        ident: dict[str, Any] = {"type": "AWSService" if (principal or "").endswith("amazonaws.com") else "Unknown",
                       "arn": principal}
    else:
        account = a.account
        if a.is_root:
            ident = {"type": "Root", "principalId": account, "arn": principal, "accountId": account}
        elif a.session is not None:
            role, session = a.session
            role_arn = str(a.session_role())
            role_id = _principal_id("AROA", role_arn)
            ident = {"type": "AssumedRole", "principalId": f"{role_id}:{session}", "arn": principal,
                     "accountId": account,
                     "sessionContext": {"sessionIssuer": {"type": "Role", "principalId": role_id,
                                                          "arn": role_arn, "accountId": account,
                                                          "userName": role}}}
        elif a.resource.startswith("role/"):
            ident = {"type": "AssumedRole", "principalId": _principal_id("AROA", principal),
                     "arn": principal, "accountId": account}
        else:
            ident = {"type": "IAMUser", "principalId": _principal_id("AIDA", principal),
                     "arn": principal, "accountId": account, "userName": a.resource.rsplit("/", 1)[-1]}
    if via_service:
        ident["invokedBy"] = service_host(via_service)
    return ident


def service_host(via_service: str) -> str:
    """The service as CloudTrail names the caller: rds.us-east-1.amazonaws.com -> rds.amazonaws.com."""
    m = re.match(r"^([a-z0-9-]+)\.[a-z]{2}(?:-[a-z]+)+-\d\.amazonaws\.com$", via_service)
    return f"{m.group(1)}.amazonaws.com" if m else via_service


def _canonical(obj: Any) -> str:
    """The stored text: compact, sorted JSON; odd value types (Decimal, UUID) as strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def content_hash(record_text: str) -> str:
    """SHA-256 of a record's stored text alone: what digests list, so that a record edited and
    re-chained, or moved, is still found by its content."""
    return hashlib.sha256(record_text.encode()).hexdigest()


def chain_hash(prev_hash: str, record_text: str) -> str:
    """SHA-256 over the previous record's hash (32 bytes) and this record's stored text."""
    return hashlib.sha256(bytes.fromhex(prev_hash) + record_text.encode()).hexdigest()


def record_call(conn: sqlite3.Connection, *, clock: Clock, account_id: str, region: str, event_name: str,
                principal: str, via_service: str | None, request_parameters: Any, response_elements: Any,
                error_code: str | None, error_message: str | None, key_arn: str | None, read_only: bool,
                source_ip: str = "127.0.0.1", user_agent: str = "volumed", access_key_id: str | None = None,
                request_id: str | None = None) -> dict[str, Any]:
    """Append one CloudTrail-shaped record for a KMS call, allowed or denied, and seal on schedule.
    Over the network (volumed.kms.server) the caller's address, user agent, access key id and the
    request id it was answered with are passed in; the embedded service leaves the defaults.

    Runs inside the caller's write transaction and does not commit. Raises (sqlite3.Error or
    AuditError) if the record cannot be written or sealed; the caller then fails the call. Returns
    the record as stored. Caller: the key service, once per operation."""
    via_host = service_host(via_service) if via_service else None
    record: dict[str, Any] = {
        "eventVersion": EVENT_VERSION,
        "userIdentity": user_identity(principal, via_service),
        "eventTime": iso_utc(clock.now()),
        "eventSource": "kms.amazonaws.com",
        "eventName": event_name,
        "awsRegion": region,
        "sourceIPAddress": via_host or source_ip,
        "userAgent": via_host or user_agent,
        "requestParameters": scrub(request_parameters) if request_parameters is not None else None,
        "responseElements": scrub(response_elements) if response_elements is not None else None,
        "requestID": request_id or str(uuid.uuid4()),
        "eventID": str(uuid.uuid4()),
        "readOnly": bool(read_only),
        "eventType": "AwsApiCall",
        "managementEvent": True,
        "recipientAccountId": account_id,
        "eventCategory": "Management",
    }
    if access_key_id:
        record["userIdentity"]["accessKeyId"] = access_key_id
    if key_arn:
        record["resources"] = [{"accountId": account_id, "type": "AWS::KMS::Key", "ARN": key_arn}]
    if error_code:
        record["errorCode"] = error_code
        record["errorMessage"] = error_message or ""
    text = _canonical(record)
    last = conn.execute("SELECT hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    prev = last[0] if last and last[0] else GENESIS
    cur = conn.execute("INSERT INTO audit (record, prev_hash, hash, appended) VALUES (?, ?, ?, ?)",
                       (text, prev, chain_hash(prev, text), clock.time()))
    if cur.rowcount != 1:
        raise AuditError("the audit record was not written; the call was not performed")
    cfg = _config(conn)
    if cfg is not None:
        _seal_if_due(conn, cfg, clock)
    return record


# ---------------------------------------------------------------------------------------------
# Sealing


# (digest number, body, signature, hash) of a stored digest
_Digest = tuple[int, dict[str, Any], str, str]


def _last_digest(conn: sqlite3.Connection) -> _Digest | None:
    row = conn.execute("SELECT dseq, body, signature, hash FROM audit_digest "
                       "ORDER BY dseq DESC LIMIT 1").fetchone()
    if row is None:
        return None
    return row[0], json.loads(row[1]), row[2], row[3]


def _seal_if_due(conn: sqlite3.Connection, cfg: dict[str, Any], clock: Clock) -> None:
    last = _last_digest(conn)
    sealed_to = last[1]["lastSeq"] if last else 0
    count, oldest = conn.execute("SELECT COUNT(*), MIN(appended) FROM audit WHERE seq > ?",
                                 (sealed_to,)).fetchone()
    if count >= cfg["seal_every"] or (oldest is not None
                                      and clock.time() - oldest >= cfg["seal_interval"]):
        _seal(conn, cfg, clock, last)


def seal(conn: sqlite3.Connection, clock: Clock) -> dict[str, Any] | None:
    """Seal every unsealed record now with a signed digest (returns the digest body, or None when
    nothing is unsealed). Needs ``configure``. Callers: tools that want a fresh anchor."""
    cfg = _config(conn)
    if cfg is None:
        raise AuditError("audit sealing is not configured (no signing key); see docs/AUDIT.md")
    return _seal(conn, cfg, clock, _last_digest(conn))


def _seal(conn: sqlite3.Connection, cfg: dict[str, Any], clock: Clock, last: _Digest | None) -> dict[str, Any] | None:
    sealed_to = last[1]["lastSeq"] if last else 0
    rows = conn.execute("SELECT seq, hash, record FROM audit WHERE seq > ? ORDER BY seq",
                        (sealed_to,)).fetchall()
    if not rows:
        return None
    key = load_signing_key(cfg["signing_key_path"])
    body = {
        "digestVersion": DIGEST_VERSION,
        "digestSeq": (last[0] + 1) if last else 1,
        "firstSeq": rows[0][0],
        "lastSeq": rows[-1][0],
        "recordHashes": [content_hash(r[2]) for r in rows],
        "lastHash": rows[-1][1],
        "created": iso_utc(clock.now()),
        "previousDigestHash": last[3] if last else GENESIS,
        "previousDigestSignature": last[2] if last else "",
        "publicKeyFingerprint": fingerprint(key.public_key()),
    }
    if DIGEST_VERSION >= 2:  # the schedule is signed: removing trailing digests cannot be hidden
        body.update(sealEvery=cfg["seal_every"], sealInterval=cfg["seal_interval"])
    text = _canonical(body)
    signature = key.sign(text.encode()).hex()
    digest_hash = hashlib.sha256(text.encode()).hexdigest()
    conn.execute("INSERT INTO audit_digest (dseq, body, signature, hash) VALUES (?, ?, ?, ?)",
                 (body["digestSeq"], text, signature, digest_hash))
    return body


def latest_anchor(conn: sqlite3.Connection) -> str | None:
    """The hash of the newest digest: what a user keeps elsewhere to pass to ``verify(anchor=)``.
    None before the first seal. Records appended since are not covered until the next seal."""
    last = _last_digest(conn)
    return last[3] if last else None

