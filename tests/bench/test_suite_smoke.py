"""Smoke test of the throughput suite (bench.suite --quick): it runs end to end on tiny sizes against
every target and writes well-formed outputs. Never asserts speed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.mount,
    pytest.mark.timeout(180),
    pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/fuse"), reason="needs root and /dev/fuse"),
    pytest.mark.skipif(not (shutil.which("fio") and shutil.which("gocryptfs")), reason="needs fio and gocryptfs"),
]

JOBS = "seq-write-1M,rand-rw70-4K-qd16,rand-read-4K-qd16-direct"


def test_quick_suite_writes_json_markdown_and_png(tmp_path):
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-m", "bench.suite", "--quick", "--jobs", JOBS, "--out", str(out),
                        "--io-threads-ab", "--dir", str(tmp_path / "work")], cwd=ROOT,
                       capture_output=True, text=True, timeout=170)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads((out / "fio.json").read_text())
    targets = {"xts", "gcm", "null", "gocryptfs", "raw"}
    assert set(res["summary"]) == set(JOBS.split(","))
    for job, by_target in res["summary"].items():
        # --io-threads-ab: XTS with 1 and 2 I/O threads run the random reads at QD16 only.
        extra = {"xts-io1", "xts-io2"} if job == "rand-read-4K-qd16-direct" else set()
        assert set(by_target) == targets | extra
        # The daemon's CPU time per request served, for every volumed mount. /proc counts CPU time
        # in clock ticks (10 ms), more than a --quick run may use, so 0 is a valid reading here.
        assert by_target["xts"]["daemon_cpu_us_per_request"] >= 0
        for s in by_target.values():
            assert s["median"] > 0 and s["unit"] in ("MB/s", "IOPS")
            assert set(s["ratios"]) == {"gocryptfs", "null", "raw"}
        assert by_target["raw"]["ratios"]["raw"] == pytest.approx(1.0)
    assert set(res["io_threads_ratio"]) == {"rand-read-4K-qd16-direct"}
    md = (out / "fio.md").read_text()
    assert md.count("\n| seq-write-1M |") == len(targets)
    assert "daemon CPU/request" in md and "--io-threads 2 / --io-threads 1" in md
    assert "vs gocryptfs" in md and "vs null cipher" in md and "vs raw file" in md
    assert (out / "fio.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Every mount it made is gone.
    mounts = Path("/proc/mounts").read_text()
    assert str(tmp_path) not in mounts
