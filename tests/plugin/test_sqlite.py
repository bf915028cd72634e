"""SQLite on encrypted_fs (ext4 on a loop device over the decrypted file): committed transactions
survive a remount and a simulated power loss that provably dropped writes."""

import mmap
import os
import sqlite3

import pytest

pytestmark = pytest.mark.timeout(180)


def _connect(path):
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous=FULL")
    return db


def _commit_rows(db, first, n):
    for i in range(first, first + n):
        db.execute("BEGIN")
        db.execute("INSERT INTO t(id, payload) VALUES (?, ?)", (i, os.urandom(200).hex()))
        db.execute("COMMIT")


def _check(path, committed):
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        ids = {r[0] for r in db.execute("SELECT id FROM t")}
    finally:
        db.close()
    assert set(committed) <= ids, f"lost committed rows {sorted(set(committed) - ids)[:5]}"
    return ids


def test_committed_transactions_survive_remount(encrypted_fs):
    path = encrypted_fs.path / "app.db"
    db = _connect(path)
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, payload TEXT)")
    _commit_rows(db, 0, 50)
    db.close()
    encrypted_fs.remount()
    assert _check(path, range(50)) == set(range(50))


@pytest.mark.parametrize("mode", ["all", "torn"])
def test_power_loss_drops_unsynced_writes_but_no_committed_transaction(encrypted_fs, mode):
    path = encrypted_fs.path / "app.db"
    db = _connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, payload TEXT)")
    _commit_rows(db, 0, 40)
    # Unsynced writes that reach the volume: a transaction in progress whose pages SQLite spills
    # (cache of 10 pages), and a file written with O_DIRECT (through the loop device to the
    # daemon, never flushed).
    db.execute("PRAGMA cache_size=10")
    db.execute("BEGIN")
    for i in range(1000, 1400):
        db.execute("INSERT INTO t(id, payload) VALUES (?, ?)", (i, os.urandom(500).hex()))
    fd = os.open(encrypted_fs.path / "scratch", os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600)
    buf = mmap.mmap(-1, 1 << 20)
    buf.write(os.urandom(1 << 20))
    os.pwritev(fd, [buf], 0)
    os.close(fd)
    report = encrypted_fs.power_cut(mode, seed=3)
    db.close()   # the old connection's file is on the file system that lost power
    assert report["writes"] > 0 and report["dropped"] > 0 and report["pages_dropped"] > 0
    ids = _check(path, range(40))
    assert not ids & set(range(1000, 1400)), "an uncommitted transaction became visible"
