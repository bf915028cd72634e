"""Where mounts keep their files.

Run-time files (lost at reboot, as they should be) live in the run directory, ``/run/volumed`` by
default or ``$VOLUMED_RUN_DIR``: per mount ``<id>.sock`` (control socket), ``<id>.json`` (who serves
what) and ``<id>.log`` (the daemon's log). ``<id>`` is derived from the mount point's real path.
The per-volume lock ``vol-<uuid>.lock`` makes sure one volume is served by one daemon.

Persisted state (survives reboot) lives in ``/var/lib/volumed/mounts`` or ``$VOLUMED_STATE_DIR``:
``<volume uuid>.json``, the volume's revocation record (see volumed.mount.latch).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from volumed.errors import FormatError, UsageError
from volumed.volume.ids import is_uuid


def run_dir() -> Path:
    """The run directory, created 0700 (root-only) if missing."""
    d = Path(os.environ.get("VOLUMED_RUN_DIR", "/run/volumed"))
    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(d, 0o700)
    except PermissionError:
        raise UsageError(f"mounts are managed by root ({d} is root-only); run as root") from None
    return d


def state_dir() -> Path:
    """The directory of persisted per-volume state, created 0700 if missing."""
    d = Path(os.environ.get("VOLUMED_STATE_DIR", "/var/lib/volumed/mounts"))
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    return d


def mount_id(mountpoint: str | os.PathLike[str]) -> str:
    """A short stable name for a mount point (its real path hashed). Only the parent directory is
    resolved: the mount point itself may be a FUSE mount whose daemon is hung or dead (or this
    very process)."""
    real = real_mountpoint(mountpoint)
    return hashlib.sha256(real.encode()).hexdigest()[:16]


def real_mountpoint(mountpoint: str | os.PathLike[str]) -> str:
    """The mount point's path with its parent resolved, without touching the mount point itself."""
    p = os.path.abspath(os.fspath(mountpoint)).rstrip("/") or "/"
    return os.path.join(os.path.realpath(os.path.dirname(p)), os.path.basename(p))


def socket_path(mid: str) -> Path:
    return run_dir() / f"{mid}.sock"


def record_path(mid: str) -> Path:
    return run_dir() / f"{mid}.json"


def log_path(mid: str) -> Path:
    return run_dir() / f"{mid}.log"


def _checked_uuid(volume_uuid: str) -> str:
    """``volume_uuid`` if it is a canonical UUID (the header parsers refuse any other, so this is
    a second line of defence: nothing outside these directories is ever named)."""
    if not is_uuid(volume_uuid):
        raise FormatError(f"malformed volume uuid {str(volume_uuid)[:80]!r}: refusing to name a file after it")
    return volume_uuid


def volume_lock_path(volume_uuid: str) -> Path:
    return run_dir() / f"vol-{_checked_uuid(volume_uuid)}.lock"


def volume_state_path(volume_uuid: str) -> Path:
    return state_dir() / f"{_checked_uuid(volume_uuid)}.json"
