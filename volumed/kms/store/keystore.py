"""The keystore directory: SQLite database (WAL) + root key, opened by many processes at once.

Layout of ``<dir>`` (0700):
    keystore.db (+ -wal, -shm)   keys, wrapped key material, aliases, grants, identity policies,
                                 audit log, meta (incl. the administrator's ARN)
    root.key                     32 random bytes, 0600 (absent when a passphrase derives the root)
    audit-signing.key            Ed25519 key sealing the audit log, 0600 (never in the database)
    audit-signing.pub            its public half, pinned 0644: audit verify's trust root
    .lock                        flock taken while a keystore is opened (initialisation, upgrades)

Concurrency: every call of the service is one ``BEGIN IMMEDIATE`` transaction (``Keystore.run``):
writers queue on SQLite's lock with a busy timeout, and a call that still meets SQLITE_BUSY is
rolled back and run again, so "database is locked" never reaches a caller. A committed change is
visible to the next transaction of any process. ``meta.change_counter`` goes up on every
committed change; ``Keystore.change_counter`` reads it without a write lock.
"""

from __future__ import annotations

from typing import Any

import fcntl
import os
import random
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from volumed.kms import audit
from volumed.kms.policy import decisions
from volumed.kms.store import iamstore, rootkey
from volumed.secrets import wipe

T = TypeVar("T")

DB_FILE = "keystore.db"
SCHEMA_VERSION = "1"
BUSY_TIMEOUT_S = 10.0
MAX_ATTEMPTS = 200

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS keys (
    key_id TEXT PRIMARY KEY, arn TEXT NOT NULL, created REAL NOT NULL,
    description TEXT NOT NULL, key_usage TEXT NOT NULL, key_spec TEXT NOT NULL,
    key_manager TEXT NOT NULL, origin TEXT NOT NULL, state TEXT NOT NULL,
    deletion_date REAL, pending_window INTEGER, policy TEXT NOT NULL,
    rotation_enabled INTEGER NOT NULL DEFAULT 0, rotation_period INTEGER,
    rotation_anchor REAL, on_demand_count INTEGER NOT NULL DEFAULT 0,
    current_version INTEGER NOT NULL DEFAULT 1);
CREATE TABLE IF NOT EXISTS materials (
    key_id TEXT NOT NULL, version INTEGER NOT NULL, created REAL NOT NULL,
    rotation_type TEXT, material_id TEXT NOT NULL, wrapped BLOB NOT NULL,
    PRIMARY KEY (key_id, version));
CREATE TABLE IF NOT EXISTS aliases (
    name TEXT PRIMARY KEY, key_id TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS grants (
    grant_id TEXT PRIMARY KEY, key_id TEXT NOT NULL, name TEXT, created REAL NOT NULL,
    grantee TEXT NOT NULL, retiring TEXT, operations TEXT NOT NULL, constraints TEXT,
    issuing_account TEXT NOT NULL, seq INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS grants_key ON grants (key_id);
CREATE TABLE IF NOT EXISTS grant_tokens (token TEXT PRIMARY KEY, grant_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS deleted_keys (key_id TEXT PRIMARY KEY, arn TEXT NOT NULL, deleted REAL NOT NULL);
"""


class Busy(Exception):
    """Internal: SQLite stayed busy; the transaction is retried."""


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    """Whether an OperationalError is SQLITE_BUSY/LOCKED (retried), not a real fault."""
    msg = str(exc).lower()
    return "locked" in msg or "busy" in msg


def begin_immediate(conn: sqlite3.Connection, attempt: int) -> bool:
    """BEGIN IMMEDIATE on ``conn``; False, after a short random back-off, when another writer holds
    the database (the caller retries, up to MAX_ATTEMPTS). Other errors propagate."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if _is_busy(exc):
            time.sleep(min(0.05, 0.001 * (attempt + 1)) * random.random())
            return False
        raise
    return True


class Keystore:
    """An open keystore directory. Thread-safe: ``lock`` (re-entrant) guards the one connection;
    one per client family (``with_identity`` clients share it)."""

    def __init__(self, directory: str):
        self.directory = os.path.abspath(directory)
        self.lock = threading.RLock()
        self.decisions = decisions.DecisionCache()  # authorization outcomes, decided outside the lock
        try:
            self._ensure_initialised()
            self.conn = self._open()
            audit.ensure_schema(self.conn)
            meta: dict[str, str] = dict(self.conn.execute("SELECT k, v FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            raise rootkey.KeystoreError(f"keystore {self.directory} cannot be opened: {exc}; "
                                        f"is it a volumed keystore?") from None
        self.account_id: str = meta["account_id"]
        self.region: str = meta["region"]
        self.root = self._load_root(meta)
        try:
            self._configure_audit()
        except BaseException:
            self.close()
            raise

    def _configure_audit(self) -> None:
        """Turn on the audit log's sealing with ``<dir>/audit-signing.key`` (created 0600 on first
        open; only its path and public key go into the database). A signing key others can read
        is refused: whoever holds it can re-sign an altered log (docs/AUDIT.md)."""
        path = os.path.join(self.directory, audit.SIGNING_KEY_FILE)
        try:
            mode = os.stat(path).st_mode & 0o777
        except FileNotFoundError:
            mode = None
        if mode is not None and mode & 0o077:
            raise rootkey.KeystoreError(f"audit signing key {path} has mode {mode:04o}: others could "
                                        f"re-sign an altered audit log; run 'chmod 600 {path}'")
        have = dict(self.conn.execute("SELECT name, value FROM audit_config").fetchall())
        seal_every, seal_interval = audit.DEFAULT_SEAL_EVERY, audit.DEFAULT_SEAL_INTERVAL
        if have.get("signing_key_path") == os.path.abspath(path):
            seal_every = int(have.get("seal_every", audit.DEFAULT_SEAL_EVERY))
            seal_interval = float(have.get("seal_interval", audit.DEFAULT_SEAL_INTERVAL))
        try:
            audit.configure(self.conn, path, seal_every=seal_every, seal_interval=seal_interval)
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
            pass  # another process holds the write lock for 10 s; the next open configures it

    # -- opening -------------------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        """A connection with autocommit off (explicit BEGIN), busy timeout, FULL sync, secure delete."""
        conn = sqlite3.connect(os.path.join(self.directory, DB_FILE), timeout=BUSY_TIMEOUT_S,
                               isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        conn.execute("PRAGMA synchronous = FULL")  # a key, once created, survives power loss
        conn.execute("PRAGMA secure_delete = ON")  # destroyed key material leaves no free-page copies
        return conn

    def _ensure_initialised(self) -> None:
        """Create the directory, database and root key once; safe when several processes race."""
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise rootkey.KeystoreError(f"cannot create keystore {self.directory}: "
                                        f"{(exc.strerror or str(exc)).lower()}; choose a directory with --kms or "
                                        f"VOLUMED_KMS") from None
        if not os.access(self.directory, os.R_OK | os.W_OK | os.X_OK):
            raise rootkey.KeystoreError(f"keystore {self.directory} is not readable and writable "
                                        f"by you; choose another with --kms or VOLUMED_KMS")
        lockfd = os.open(os.path.join(self.directory, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lockfd, fcntl.LOCK_EX)
            conn = self._open()
            try:
                try:
                    os.chmod(os.path.join(self.directory, DB_FILE), 0o600)  # -wal/-shm inherit it
                except PermissionError:  # another user's keystore opened with shared access
                    pass
                conn.execute("PRAGMA journal_mode = WAL")
                conn.executescript(_SCHEMA)
                audit.ensure_schema(conn)
                have = conn.execute("SELECT v FROM meta WHERE k = 'account_id'").fetchone()
                if have is None:
                    self._initialise(conn)
                iamstore.ensure_schema(conn)
                account = conn.execute("SELECT v FROM meta WHERE k = 'account_id'").fetchone()[0]
                iamstore.ensure_admin(conn, account, time.time())
            finally:
                conn.close()
        finally:
            os.close(lockfd)

    def _initialise(self, conn: sqlite3.Connection) -> None:
        """First use of a keystore (under the init flock): account id, region, root key, check value."""
        passphrase = os.environ.get(rootkey.PASSPHRASE_ENV)
        meta = {"account_id": "".join(str(random.SystemRandom().randrange(10)) for _ in range(12)),
                "region": os.environ.get("VOLUMED_REGION", "us-east-1"),
                "schema_version": SCHEMA_VERSION, "change_counter": "0"}
        if passphrase:
            salt = secrets.token_bytes(16)
            params = (rootkey.SCRYPT_N, rootkey.SCRYPT_R, rootkey.SCRYPT_P)
            root = rootkey.derive_passphrase_key(passphrase, salt, params)
            meta.update(root_source="passphrase", scrypt_salt=salt.hex(), scrypt_n=str(params[0]),
                        scrypt_r=str(params[1]), scrypt_p=str(params[2]))
        else:
            if not os.path.exists(os.path.join(self.directory, rootkey.ROOT_KEY_FILE)):
                rootkey.create_file_key(self.directory)
            root = rootkey.read_file_key(self.directory)
            meta["root_source"] = "file"
        meta["root_check"] = rootkey.check_value(root)
        wipe(root)
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)", list(meta.items()))
        conn.execute("COMMIT")

    def _load_root(self, meta: dict[str, Any]) -> bytearray:
        """This keystore's root key from root.key or the passphrase; KeystoreError if wrong or missing."""
        if meta["root_source"] == "passphrase":
            passphrase = os.environ.get(rootkey.PASSPHRASE_ENV)
            if not passphrase:
                raise rootkey.KeystoreError(f"keystore {self.directory} is protected by a "
                                            f"passphrase; set {rootkey.PASSPHRASE_ENV}")
            root = rootkey.derive_passphrase_key(passphrase, bytes.fromhex(meta["scrypt_salt"]),
                                                 rootkey.scrypt_params(meta))
        else:
            root = rootkey.read_file_key(self.directory)
        rootkey.verify(root, meta["root_check"], self.directory)
        return root

    # -- transactions --------------------------------------------------------------------------
    def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` in one BEGIN IMMEDIATE transaction and commit; on any exception roll
        back and re-raise. SQLITE_BUSY anywhere restarts the whole transaction (``fn`` must have no
        effects outside the database). Returns fn's result."""
        with self.lock:
            for attempt in range(MAX_ATTEMPTS):
                if not begin_immediate(self.conn, attempt):
                    continue
                try:
                    result = fn(self.conn)
                    self.conn.execute("COMMIT")
                    return result
                except sqlite3.OperationalError as exc:
                    self._rollback()
                    if _is_busy(exc):
                        continue
                    raise
                except BaseException:
                    self._rollback()
                    raise
            raise rootkey.KeystoreError(f"keystore {self.directory} stayed locked by other "
                                        f"processes for too long; try again")

    def _rollback(self) -> None:
        """Roll back the open transaction, if any."""
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    @staticmethod
    def bump(conn: sqlite3.Connection) -> None:
        """Record a change (inside run()); watchers see the counter move."""
        conn.execute("UPDATE meta SET v = CAST(CAST(v AS INTEGER) + 1 AS TEXT) WHERE k = 'change_counter'")

    def change_counter(self) -> int:
        """The committed change counter, read without taking the write lock."""
        with self.lock:
            for _ in range(MAX_ATTEMPTS):
                try:
                    row = self.conn.execute("SELECT v FROM meta WHERE k = 'change_counter'").fetchone()
                    return int(row[0])
                except sqlite3.OperationalError as exc:
                    if not _is_busy(exc):
                        raise
                    time.sleep(0.005)
            raise rootkey.KeystoreError(f"keystore {self.directory} stayed locked; try again")

    def checkpoint(self) -> None:
        """Copy the WAL into the database and truncate it (after a key's destruction, so no old
        page with its wrapped material stays in the WAL). Best effort: readers in other processes
        may hold old pages; the next checkpoint gets them."""
        with self.lock:
            try:
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise

    def close(self) -> None:
        """Close the connection and overwrite the root key in memory."""
        with self.lock:
            wipe(self.root)
            self.conn.close()
