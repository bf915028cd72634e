"""Group commit for the key server: many calls, one fsync.

``GroupCommitKeystore`` is a Keystore whose ``run(fn)`` hands ``fn`` to one writer thread. The
writer takes every call waiting (up to ``max_batch``), opens one ``BEGIN IMMEDIATE``, runs each call
inside its own SAVEPOINT (a call that raises rolls back to its savepoint only, exactly as its own
transaction would have), commits once (one WAL fsync under ``synchronous=FULL``) and only then
wakes the callers. So a call is answered only after it is durable, and a batch of N concurrent
calls costs one fsync instead of N. Calls still see each other's effects in order, as serial
transactions would (the audit chain too: each record chains onto the previous one in the batch).

SQLITE_BUSY (another process, e.g. ``volumed iam create-access-key`` on the same keystore, holds
the write lock) rolls the whole batch back and runs it again, like Keystore.run does for one call;
``fn`` must have no effects outside the database (the same contract as Keystore.run).
Caller: volumed.kms.server.app (the server's EmbeddedKMS runs on it).
"""

from __future__ import annotations

import fcntl
import os
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import TypeVar, cast

from volumed.kms.store import rootkey
from volumed.kms.store.keystore import Keystore, MAX_ATTEMPTS, _is_busy, begin_immediate


T = TypeVar("T")


class _Call:
    __slots__ = ("fn", "done", "result", "exc")

    def __init__(self, fn: Callable[[sqlite3.Connection], object]):
        self.fn = fn
        self.done = threading.Event()
        self.result: object = None
        self.exc: BaseException | None = None


class GroupCommitKeystore(Keystore):
    def __init__(self, directory: str, max_batch: int = 128):
        super().__init__(directory)
        self.max_batch = max_batch
        self.batches = 0
        self.calls = 0
        self._queue: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._batch_fd = os.open(os.path.join(self.directory, ".server-write.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        self._writer = threading.Thread(target=self._write_loop, name="kms-group-commit", daemon=True)
        self._writer.start()

    def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if threading.current_thread() is self._writer:
            raise RuntimeError("nested key-service transaction on the group-commit writer")
        call = _Call(fn)
        self._queue.put(call)
        call.done.wait()
        if call.exc is not None:
            raise call.exc
        return cast(T, call.result)  # what fn returned, set by the writer thread

    def close(self) -> None:
        if hasattr(self, "_writer"):  # (Keystore.__init__ closes a store it failed to open)
            self._queue.put(None)
            self._writer.join(timeout=30)
            os.close(self._batch_fd)
        super().close()

    # -- the writer ----------------------------------------------------------------------------
    def _write_loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            try:
                self._run_batch(batch)
            except BaseException as exc:  # the commit itself failed: no call of the batch happened
                for call in batch:
                    call.result, call.exc = None, exc
            for call in batch:
                call.done.set()

    def _run_batch(self, batch: list[_Call]) -> None:
        # Several server processes (--workers) queue on one flock, which wakes the next writer as
        # soon as a batch commits, instead of SQLite's busy handler sleeping 1, 2, 5, 10... ms.
        fcntl.flock(self._batch_fd, fcntl.LOCK_EX)
        try:
            self._run_batch_locked(batch)
        finally:
            fcntl.flock(self._batch_fd, fcntl.LOCK_UN)

    def _run_batch_locked(self, batch: list[_Call]) -> None:
        conn = self.conn
        with self.lock:
            for attempt in range(MAX_ATTEMPTS):
                if not begin_immediate(conn, attempt):
                    continue
                try:
                    for call in batch:
                        call.result, call.exc = None, None
                        conn.execute("SAVEPOINT call")
                        try:
                            call.result = call.fn(conn)
                        except sqlite3.OperationalError as exc:
                            if _is_busy(exc):
                                raise
                            conn.execute("ROLLBACK TO call")
                            call.exc = exc
                        except Exception as exc:
                            conn.execute("ROLLBACK TO call")
                            call.exc = exc
                        conn.execute("RELEASE call")
                    conn.execute("COMMIT")
                    self.batches += 1
                    self.calls += len(batch)
                    return
                except sqlite3.OperationalError as exc:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    if _is_busy(exc):
                        continue
                    raise
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            raise rootkey.KeystoreError(f"keystore {self.directory} stayed locked by other "
                                        f"processes for too long; try again")
