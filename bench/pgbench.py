"""pgbench (PostgreSQL from Debian, run as user postgres) on ext4 over a loop device whose file is:
the volumed XTS mount's file, a file inside gocryptfs, or a plain file. Called by bench.suite."""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import subprocess
from pathlib import Path

from bench.targets import run

PORT = 55432


def pg_bin() -> Path:
    """The newest installed PostgreSQL's bin directory (Debian layout)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if not found:
        raise RuntimeError("PostgreSQL is not installed (scripts/bench installs postgresql)")
    return Path(found[-1]).parent


def _as_postgres(cmd, **kw) -> subprocess.CompletedProcess:
    return run(["runuser", "-u", "postgres", "--", *cmd], **kw)


def attach_loop(image, *, direct_io: bool) -> str:
    """Attach ``image`` to a free loop device (``direct_io``: the loop driver reads and writes the
    file with O_DIRECT, so ext4's pages are not cached a second time in the file's page cache);
    returns the device path."""
    mode = "on" if direct_io else "off"
    return run(["losetup", "--find", "--show", f"--direct-io={mode}", image]).stdout.strip()


@contextlib.contextmanager
def database(image: str, image_size: int, work: Path, *, scale: int, direct_io: bool,
             port: int = PORT):
    """mkfs.ext4 on ``image`` (a file of ``image_size`` bytes, created if missing) through a loop
    device (``attach_loop``), mount it, initdb, start PostgreSQL on ``port`` and pgbench -i -s
    ``scale``; yields a function ``bench(seconds, clients=4) -> TPS``. On exit stops the server,
    unmounts and detaches the loop device (also after a failure)."""
    if not os.path.exists(image):
        with open(image, "wb") as f:
            f.truncate(image_size)
    mnt = work / "pgmnt"
    shutil.rmtree(mnt, ignore_errors=True)
    mnt.mkdir(parents=True)
    dev = attach_loop(image, direct_io=direct_io)
    try:
        run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", dev])
        run(["mount", dev, mnt])
    except Exception:
        run(["losetup", "-d", dev], check=False)
        raise
    pg = pg_bin()
    data = mnt / "data"
    sock = "/tmp"
    try:
        data.mkdir()
        shutil.chown(data, "postgres", "postgres")
        _as_postgres([pg / "initdb", "-D", data, "-A", "trust", "--no-sync"])
        _as_postgres([pg / "pg_ctl", "-D", data, "-w", "-l", data / "log", "-o",
                      f"-p {port} -k {sock} -c listen_addresses='' -c shared_buffers=64MB", "start"])
        try:
            _as_postgres([pg / "pgbench", "-h", sock, "-p", port, "-i", "-q", "-s", scale, "postgres"])

            def bench(seconds: int, clients: int = 4) -> float:
                out = _as_postgres([pg / "pgbench", "-h", sock, "-p", port, "-c", clients, "-j", 2,
                                    "-T", seconds, "postgres"], timeout=seconds * 5 + 120).stdout
                m = re.search(r"tps = ([0-9.]+)", out)
                if not m:
                    raise RuntimeError(f"pgbench printed no tps: {out[-300:]}")
                return float(m.group(1))

            yield bench
        finally:
            _as_postgres([pg / "pg_ctl", "-D", data, "-w", "-m", "fast", "stop"], check=False)
    finally:
        run(["umount", mnt], check=False)
        run(["losetup", "-d", dev], check=False)


def run_pgbench(image: str, image_size: int, work: Path, *, scale: int, seconds: int,
                clients: int = 4, direct_io: bool = False) -> float:
    """One fresh database on ``image`` (``database``), one pgbench run of ``seconds`` with
    ``clients`` clients; returns its TPS."""
    with database(image, image_size, work, scale=scale, direct_io=direct_io) as bench:
        return bench(seconds, clients)
