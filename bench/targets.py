"""The five things the fio suite measures, all on the same backing disk (one work directory):
volumed XTS, volumed GCM, the null-cipher mount (same FUSE code, no cipher), gocryptfs, and the
raw backing file. Each ``Target`` is set up once per suite run (``start``), prefilled, and torn
down at the end (``stop``); ``file`` is the path fio works on. Used by bench.suite and
bench.pgbench."""

from __future__ import annotations

import os
import re
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
    """One configuration: ``start(size)`` makes ``self.file`` (size bytes, usable by fio).
    ``jobs``: the fio jobs it runs (None: all of them)."""

    name = ""
    label = ""
    jobs = None

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

    def daemon_sample(self) -> dict | None:
        """{"cpu": CPU seconds of the serving daemon so far, "requests": requests it served}, or
        None when this target has no volumed daemon (gocryptfs, the raw file)."""
        return None

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


def thread_options(t) -> list[str]:
    """``volumed mount`` options for a target's io_threads / io_depth (None: the default)."""
    return ([] if t.io_threads is None else ["--io-threads", str(t.io_threads)]) + \
           ([] if t.io_depth is None else ["--io-depth", str(t.io_depth)])


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of process ``pid`` (all its threads) so far."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class VolumedTarget(Target):
    cipher = "xts"
    io_threads = None  # --io-threads (None: the daemon's default, the CPUs)
    io_depth = None    # --io-depth (None: the daemon's default)

    def start(self, size: int) -> str:
        self._fresh()
        env = volumed_env(self.work.parent)
        vol = self.work / "volume.img"
        run(VOLUMED + ["create", vol, "--size", str(size), "--cipher", self.cipher], env=env)
        extra = thread_options(self)
        self.file = run(VOLUMED + ["mount", vol, self.mnt, *extra],
                        env=env).stdout.strip().splitlines()[-1]
        return self.file

    def daemon_sample(self) -> dict | None:
        import json

        out = run(VOLUMED + ["status", "--json"], env=volumed_env(self.work.parent)).stdout
        for m in json.loads(out):
            if m.get("mountpoint") == os.path.realpath(self.mnt):
                return {"cpu": process_cpu_seconds(m["pid"]), "requests": m.get("requests", 0),
                        "engine": m.get("engine")}
        return None

    def stop(self) -> None:
        if os.path.ismount(self.mnt):
            run(VOLUMED + ["unmount", self.mnt, "--force"], env=volumed_env(self.work.parent), check=False)
        super().stop()


class Xts(VolumedTarget):
    name, label, cipher = "xts", "volumed XTS", "xts"


class Gcm(VolumedTarget):
    name, label, cipher = "gcm", "volumed GCM", "gcm"


RAND_READ_QD16 = ("rand-read-4K-qd16", "rand-read-4K-qd16-direct")


class XtsIo1(VolumedTarget):
    """``--io-threads 1`` (random reads at QD16 only: the issue's 2-vs-1 thread ratio). The depth
    is pinned to the threads (N workers, each serving end to end, as the engine was when the
    target was set): with the default depth of 16 both would overlap 16 disk waits and the ratio
    would measure the disk, not the threads (docs/PERFORMANCE.md, "I/O depth")."""
    name, label, cipher, io_threads, io_depth, jobs = ("xts-io1", "volumed XTS, 1 I/O thread (--io-depth 1)",
                                                       "xts", 1, 1, RAND_READ_QD16)


class XtsIo2(VolumedTarget):
    name, label, cipher, io_threads, io_depth, jobs = ("xts-io2", "volumed XTS, 2 I/O threads (--io-depth 2)",
                                                       "xts", 2, 2, RAND_READ_QD16)


class Null(Target):
    name, label = "null", "null cipher"
    io_threads = None  # --io-threads (None: the daemon's default)
    io_depth = None    # --io-depth (None: the daemon's default)

    def start(self, size: int) -> str:
        self._fresh()
        extra = thread_options(self)
        out = run(VOLUMED + ["mount", "--bench-null-cipher", str(size), self.work / "plain.img", self.mnt,
                             *extra], env=volumed_env(self.work.parent))
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
EXTRA = [XtsIo1, XtsIo2]  # chosen by name with --targets (or --io-threads-ab)
VARIANT_BASES = {"xts": Xts, "gcm": Gcm, "null": Null}


def variant(name: str) -> type[Target] | None:
    """A thread-sweep target named ``xts-t8`` or ``xts-t2-d16`` (or ``gcm-``, ``null-``): that
    target mounted with ``--io-threads N`` (and ``--io-depth D``), running every job; None for any
    other name."""
    m = re.fullmatch(r"(xts|gcm|null)-t([0-9]+)(?:-d([0-9]+))?", name)
    if m is None:
        return None
    base, n = VARIANT_BASES[m.group(1)], int(m.group(2))
    d = int(m.group(3)) if m.group(3) else None
    label = f"{base.label}, --io-threads {n}" + (f" --io-depth {d}" if d else "")
    return type(f"{base.__name__}T{n}D{d}", (base,), {"name": name, "io_threads": n, "io_depth": d,
                                                       "label": label})


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
