"""pgbench (PostgreSQL from Debian, run as user postgres) on ext4 over a loop device whose file is:
the volumed XTS mount's file, a file inside gocryptfs, or a plain file. Called by bench.suite."""

from __future__ import annotations

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


def run_pgbench(image: str, image_size: int, work: Path, *, scale: int, seconds: int,
                clients: int = 4) -> float:
    """mkfs.ext4 on ``image`` (a file of ``image_size`` bytes, created if missing), loop-mount it,
    initdb, pgbench -i -s ``scale``, run ``seconds`` with ``clients`` clients; return TPS.
    Always unmounts and stops the server."""
    if not os.path.exists(image):
        with open(image, "wb") as f:
            f.truncate(image_size)
    mnt = work / "pgmnt"
    shutil.rmtree(mnt, ignore_errors=True)
    mnt.mkdir(parents=True)
    run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", image])
    run(["mount", "-o", "loop", image, mnt])
    pg = pg_bin()
    data = mnt / "data"
    sock = "/tmp"
    try:
        data.mkdir()
        shutil.chown(data, "postgres", "postgres")
        _as_postgres([pg / "initdb", "-D", data, "-A", "trust", "--no-sync"])
        _as_postgres([pg / "pg_ctl", "-D", data, "-w", "-l", data / "log", "-o",
                      f"-p {PORT} -k {sock} -c listen_addresses='' -c shared_buffers=64MB", "start"])
        try:
            _as_postgres([pg / "pgbench", "-h", sock, "-p", PORT, "-i", "-q", "-s", scale, "postgres"])
            out = _as_postgres([pg / "pgbench", "-h", sock, "-p", PORT, "-c", clients, "-j", 2,
                                "-T", seconds, "postgres"], timeout=seconds * 5 + 120).stdout
        finally:
            _as_postgres([pg / "pg_ctl", "-D", data, "-w", "-m", "fast", "stop"], check=False)
        m = re.search(r"tps = ([0-9.]+)", out)
        if not m:
            raise RuntimeError(f"pgbench printed no tps: {out[-300:]}")
        return float(m.group(1))
    finally:
        run(["umount", mnt], check=False)
