"""Kernel-side tuning of a mounted volumed file system (root only; best effort).

The FUSE connection's backing device info (``/sys/class/bdi/0:N``) caps read-ahead at 128 KiB and
the connection (``/sys/fs/fuse/connections/N``) keeps at most 12 background requests (write-back,
read-ahead) in flight. Larger read-ahead means fewer, larger read requests through the Python
request path; more background requests keep the worker threads busy during write-back.
Called by ``volumed mount`` once the daemon is ready, and by the benchmark's null-cipher mount.
"""

from __future__ import annotations

import os

READ_AHEAD_KB = 1024
MAX_BACKGROUND = 64


def tune_mount(mountpoint: str, *, read_ahead_kb: int = READ_AHEAD_KB,
               max_background: int = MAX_BACKGROUND) -> dict[str, int]:
    """Raise read-ahead and the background-request limit of the FUSE mount at ``mountpoint``.

    Returns what was set ({"read_ahead_kb": n, "max_background": n}; a key is missing when the
    kernel refused or the file does not exist). Never raises for a missing sysfs file. Must not be
    called from the mount's own request loop (it stats the mount point).
    """
    dev = os.stat(mountpoint).st_dev
    major, minor = os.major(dev), os.minor(dev)
    done: dict[str, int] = {}
    for key, path, value in (
            ("read_ahead_kb", f"/sys/class/bdi/{major}:{minor}/read_ahead_kb", read_ahead_kb),
            ("max_background", f"/sys/fs/fuse/connections/{minor}/max_background", max_background),
            ("congestion_threshold", f"/sys/fs/fuse/connections/{minor}/congestion_threshold",
             max_background * 3 // 4)):
        try:
            with open(path, "w") as f:
                f.write(str(value))
            done[key] = value
        except OSError:
            pass
    return done
