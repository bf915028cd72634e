"""PostgreSQL (the Debian package, started by the test) with its data directory on encrypted_fs:
pgbench load, the key revoked mid-load, the server's I/O errors observed; access restored, the
volume remounted, the server started again: every transaction that committed before the
revocation is there, none that the client saw fail is, and pg_amcheck is clean.

The server is run by pytest-postgresql's PostgreSQLExecutor (what its ``postgresql_proc`` factory
runs; the factory itself is session-scoped and keeps its data directory under pytest's temporary
directory, so it cannot sit on a per-test encrypted_fs). PostgreSQL refuses to run as root: pg_ctl
runs as the ``postgres`` user through a two-line wrapper, and the data directory is chowned to it.
This module is the example in docs/TESTING.md.
"""

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import pytest

pytest.importorskip("pytest_postgresql")
psycopg = pytest.importorskip("psycopg")

from pytest_postgresql.executors import PostgreSQLExecutor  # noqa: E402

pytestmark = [pytest.mark.timeout(240), pytest.mark.volumed(size="256M")]

PG_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1:] or [None]
PG_BIN = PG_BIN[0]
if PG_BIN is None or shutil.which("runuser") is None:
    pytest.skip("needs the Debian postgresql package and runuser", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(*cmd, **kw):
    return subprocess.run(["runuser", "-u", "postgres", "--", *map(str, cmd)], capture_output=True,
                          text=True, timeout=120, **kw)


class Server:
    """A PostgreSQL server whose data directory is on an encrypted_fs, run as ``postgres``."""

    def __init__(self, fs):
        self.fs = fs
        self.run = tempfile.mkdtemp(prefix="vpg-")          # sockets and log: short, off the volume
        wrapper = os.path.join(self.run, "pg_ctl")
        with open(wrapper, "w") as f:
            f.write(f'#!/bin/sh\nexec runuser -u postgres -- {PG_BIN}/pg_ctl "$@"\n')
        os.chmod(wrapper, 0o755)
        shutil.chown(self.run, "postgres")
        shutil.chown(fs.path, "postgres")
        self.port = _free_port()
        self.executor = PostgreSQLExecutor(
            executable=wrapper, host="127.0.0.1", port=self.port, datadir=str(fs.path / "pg"),
            unixsocketdir=self.run, logfile=os.path.join(self.run, "pg.log"), startparams="-w",
            dbname="bench", user="postgres", postgres_options="-c fsync=on -c synchronous_commit=on")

    def start(self):
        try:
            self.executor.start()
        except Exception as exc:
            raise AssertionError(f"PostgreSQL did not start: {exc}\n{self.log()[-3000:]}") from None
        self.executor.wait_for_postgres()
        with open(self.fs.path / "pg" / "postmaster.pid") as f:
            self.postmaster = int(f.readline())
        deadline = time.monotonic() + 60          # crash recovery may still be running
        while True:
            try:
                self.connect().close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def connect(self, dbname="postgres"):
        return psycopg.connect(host=self.run, port=self.port, user="postgres", dbname=dbname,
                               autocommit=True, connect_timeout=10)

    def kill(self):
        """SIGKILL the postmaster and its children (the server may be stuck after a PANIC)."""
        import psutil

        try:
            proc = psutil.Process(self.postmaster)
            procs = proc.children(recursive=True) + [proc]
        except psutil.NoSuchProcess:
            return
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=20)
        # The executor's own stop runs pg_ctl stop, which fails on a dead server before the
        # executor forgets its launcher process; forget it here so start() launches anew.
        launcher = self.executor.process
        if launcher is not None:
            launcher.wait(timeout=20)
            self.executor._clear_process()

    def log(self) -> str:
        try:
            with open(os.path.join(self.run, "pg.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def close(self):
        self.kill()
        shutil.rmtree(self.run, ignore_errors=True)


@pytest.fixture
def pg(encrypted_fs):
    server = Server(encrypted_fs)
    yield server
    server.close()


def test_revocation_mid_load_loses_no_committed_transaction(pg, encrypted_fs):
    pg.start()
    with pg.connect() as c:
        # pytest-postgresql starts servers with -F (fsync off); this one must really sync.
        assert c.execute("SHOW fsync").fetchone()[0] == "on"
        c.execute("CREATE DATABASE bench")
    p = _as_postgres(f"{PG_BIN}/pgbench", "-i", "-s", "1", "-q", "-h", pg.run, "-p", pg.port, "bench")
    assert p.returncode == 0, p.stderr
    with pg.connect("bench") as c:
        c.execute("CREATE TABLE ledger (id int PRIMARY KEY, note text)")
    load = subprocess.Popen(["runuser", "-u", "postgres", "--", f"{PG_BIN}/pgbench", "-n", "-c", "2",
                             "-T", "60", "-h", pg.run, "-p", str(pg.port), "bench"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    committed, failed_after, uncertain = [], [], []
    revoked = threading.Event()

    def client():
        """One transaction per id; record what the server acknowledged and what failed."""
        i = 0
        conn = None
        while len(failed_after) < 3 and i < 100000:
            i += 1
            after = revoked.is_set()   # started once the mount was cut off: cannot reach the disk
            try:
                if conn is None:
                    conn = pg.connect("bench")
                conn.execute("INSERT INTO ledger VALUES (%s, 'x')", (i,))
                committed.append(i)
            except psycopg.Error:
                (failed_after if after else uncertain).append(i)
                conn = None
                time.sleep(0.05)

    t = threading.Thread(target=client)
    t.start()
    while len(committed) < 200 and t.is_alive():
        time.sleep(0.01)
    encrypted_fs.revoke("disable")      # returns once the daemon has cut the mount off
    revoked.set()
    t.join(timeout=120)
    assert not t.is_alive()
    load.wait(timeout=90)
    out = load.stdout.read()
    assert failed_after, "no transaction failed after the revocation"
    assert load.returncode != 0 or "error" in out.lower(), out
    # The server saw I/O errors from its storage.
    deadline = time.monotonic() + 30
    while "Input/output error" not in pg.log() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "Input/output error" in pg.log(), pg.log()[-3000:]
    pg.kill()

    encrypted_fs.restore()               # key enabled, volume remounted, ext4 mounted again
    # The killed server's lock file may be torn (its rewrite failed with EIO); PostgreSQL refuses an
    # empty one, so remove it as an operator would after making sure no postmaster runs.
    (encrypted_fs.path / "pg" / "postmaster.pid").unlink(missing_ok=True)
    pg.start()                           # crash recovery from the WAL
    with pg.connect("bench") as c:
        present = {r[0] for r in c.execute("SELECT id FROM ledger")}
    assert set(committed) <= present, f"lost committed {sorted(set(committed) - present)[:5]}"
    assert not present & set(failed_after), "a transaction that failed is present"
    # Failures before revoke() returned (the one in flight at the cut, and reconnects to a server
    # that already hit EIO while revoke() still waited for the cut to complete) may or may not be
    # present; once one failed, nothing committed after it.
    assert not uncertain or not committed or min(uncertain) > max(committed)
    print(f"committed {len(committed)}, failed after revocation {len(failed_after)}, "
          f"in flight {len(uncertain)}")
    p = _as_postgres(f"{PG_BIN}/pg_amcheck", "-h", pg.run, "-p", pg.port, "--install-missing",
                     "--heapallindexed", "-d", "bench")
    assert p.returncode == 0, p.stdout + p.stderr
