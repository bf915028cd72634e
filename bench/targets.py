"""The five things the fio suite measures, all on the same backing disk (one work directory):
volumed XTS, volumed GCM, the null-cipher mount (same FUSE code, no cipher), gocryptfs, and the
raw backing file. Each ``Target`` is set up once per suite run (``start``), prefilled, and torn
down at the end (``stop``); ``file`` is the path fio works on. Used by bench.suite and
bench.pgbench."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

VOLUMED = [sys.executable, "-m", "volumed"]
GOCRYPTFS_PASS = "volumed-bench"  # throwaway password of a throwaway benchmark directory


def run(cmd, *, env=None, check=True, timeout=300) -> subprocess.CompletedProcess:
    """Run a command, capturing output; raise with its stderr on failure."""
    p = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({p.returncode}): {p.stderr.strip()[-500:]}")
    return p


def volumed_env(work: Path) -> dict:
    """Environment of the benchmark's own key service and run-time state (under ``work``)."""
    env = dict(os.environ)
    env.update({"VOLUMED_KMS": str(work / "keystore"), "VOLUMED_RUN_DIR": str(work / "run"),
                "VOLUMED_STATE_DIR": str(work / "state"), "PYTHONWARNINGS": "ignore"})
    return env


class Target:
    """One configuration: ``start(size)`` makes ``self.file`` (size bytes, usable by fio)."""

    name = ""
    label = ""

    def __init__(self, work: Path):
        self.work = work / self.name
        self.mnt = self.work / "mnt"
        self.file: str | None = None

    def start(self, size: int) -> str:
        raise NotImplementedError

    def stop(self) -> None:
        if os.path.ismount(self.mnt):
            run(["fusermount3", "-u", self.mnt], check=False)
            if os.path.ismount(self.mnt):
                run(["fusermount3", "-uz", self.mnt], check=False)

    def _fresh(self) -> None:
        self.stop()
        shutil.rmtree(self.work, ignore_errors=True)
        self.mnt.mkdir(parents=True)
        os.chmod(self.work, 0o755)


class Raw(Target):
    name, label = "raw", "raw file"

    def start(self, size: int) -> str:
        self._fresh()
        self.file = str(self.work / "test.img")
        return self.file


class VolumedTarget(Target):
    cipher = "xts"

    def start(self, size: int) -> str:
        self._fresh()
        env = volumed_env(self.work.parent)
        vol = self.work / "volume.img"
        run(VOLUMED + ["create", vol, "--size", str(size), "--cipher", self.cipher], env=env)
        self.file = run(VOLUMED + ["mount", vol, self.mnt], env=env).stdout.strip().splitlines()[-1]
        return self.file

    def stop(self) -> None:
        if os.path.ismount(self.mnt):
            run(VOLUMED + ["unmount", self.mnt, "--force"], env=volumed_env(self.work.parent), check=False)
        super().stop()


class Xts(VolumedTarget):
    name, label, cipher = "xts", "volumed XTS", "xts"


class Gcm(VolumedTarget):
    name, label, cipher = "gcm", "volumed GCM", "gcm"


class Null(Target):
    name, label = "null", "null cipher"

    def start(self, size: int) -> str:
        self._fresh()
        out = run(VOLUMED + ["mount", "--bench-null-cipher", str(size), self.work / "plain.img", self.mnt],
                  env=volumed_env(self.work.parent))
        self.file = out.stdout.strip().splitlines()[-1]
        return self.file


class Gocryptfs(Target):
    name, label = "gocryptfs", "gocryptfs"

    def start(self, size: int) -> str:
        self._fresh()
        cdir = self.work / "cipher"
        cdir.mkdir()
        ext = ["-extpass", f"echo {GOCRYPTFS_PASS}"]
        run(["gocryptfs", "-init", "-q", *ext, cdir])
        run(["gocryptfs", "-q", "-allow_other", *ext, cdir, self.mnt])
        self.file = str(self.mnt / "test.img")
        return self.file


ALL = [Xts, Gcm, Null, Gocryptfs, Raw]


def prefill(path: str, size: int) -> None:
    """Write ``path`` fully (1 MiB blocks of random-looking data) and fsync it, so reads hit data,
    not holes, on every target alike."""
    block = os.urandom(1 << 20)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for off in range(0, size, len(block)):
            os.pwrite(fd, block[:min(len(block), size - off)], off)
        os.fsync(fd)
    finally:
        os.close(fd)
