"""The fio jobs of the suite and how one is run and read.

Sequential jobs make one pass over the whole file (then fsync), so they measure the path to the
disk rather than how often a small file can be rewritten in the page cache; random jobs run for a
fixed time.

One I/O mode for all but the ``-direct`` jobs: buffered (page cache), ``end_fsync=1``,
``ioengine=psync``. The ``-direct`` random reads open with O_DIRECT (``direct=1``): no page cache on
either side of the FUSE mount, so they measure the request path alone (issue 12). Queue depth comes
from ``numjobs`` threads on the same file: with buffered files ``libaio`` and ``io_uring`` complete
inside the submit call (the kernel's buffered path is synchronous), so ``iodepth`` would not put
more than one request in flight; N threads each doing psync do. Called by bench.suite."""

from __future__ import annotations

import json
import subprocess

# name -> (fio rw, block size, threads (queue depth), extra options, reported metric)
JOBS = {
    "seq-write-1M": ("write", "1M", 1, [], "bw"),
    "seq-read-1M": ("read", "1M", 1, [], "bw"),
    "rand-write-4K-qd1": ("randwrite", "4k", 1, [], "iops"),
    "rand-write-4K-qd16": ("randwrite", "4k", 16, [], "iops"),
    "rand-read-4K-qd1": ("randread", "4k", 1, [], "iops"),
    "rand-read-4K-qd16": ("randread", "4k", 16, [], "iops"),
    "rand-read-4K-qd1-direct": ("randread", "4k", 1, ["--direct=1"], "iops"),
    "rand-read-4K-qd16-direct": ("randread", "4k", 16, ["--direct=1"], "iops"),
    "rand-rw70-4K-qd16": ("randrw", "4k", 16, ["--rwmixread=70"], "iops"),
}


def drop_caches() -> None:
    """Write back and drop the page cache, dentries and inodes (root only)."""
    subprocess.run(["sync"], check=False)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def run_job(job: str, path: str, size: int, runtime: float) -> dict:
    """Run ``job`` on ``path`` (an existing, prefilled file of ``size`` bytes): one pass for the
    sequential jobs, ``runtime`` seconds for the random ones. Returns {"value": MB/s or IOPS, "unit": ..., "read_iops", "write_iops", "read_mbs",
    "write_mbs"}. Raises RuntimeError with fio's message when fio fails."""
    rw, bs, threads, extra, metric = JOBS[job]
    timing = [] if rw in ("read", "write") else ["--time_based", f"--runtime={runtime}s"]
    cmd = ["fio", "--name=" + job, "--filename=" + path, f"--size={size}", f"--rw={rw}", f"--bs={bs}",
           "--ioengine=psync", "--direct=0", "--end_fsync=1", f"--numjobs={threads}", "--thread",
           "--group_reporting", *timing, "--randrepeat=0",
           "--norandommap", "--file_service_type=roundrobin", "--allow_file_create=0",
           "--output-format=json", *extra]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=runtime * 10 + 120)
    if p.returncode != 0:
        raise RuntimeError(f"fio {job} on {path} failed: {(p.stderr or p.stdout).strip()[-400:]}")
    out = json.loads(p.stdout[p.stdout.index("{"):])
    j = out["jobs"][0]
    r, w = j["read"], j["write"]
    res = {"read_iops": r["iops"], "write_iops": w["iops"],
           "ios": r.get("total_ios", 0) + w.get("total_ios", 0),
           "read_mbs": r["bw_bytes"] / 1e6, "write_mbs": w["bw_bytes"] / 1e6}
    if metric == "bw":
        res.update(value=res["read_mbs"] + res["write_mbs"], unit="MB/s")
    else:
        res.update(value=res["read_iops"] + res["write_iops"], unit="IOPS")
    return res
