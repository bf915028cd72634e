"""Keep unwrapped keys out of core dumps, ptrace and swap, in every process that holds one.

``harden_process()`` makes the process not dumpable (no core, no ptrace by non-root,
/proc/pid/mem closed), sets the core limit to 0 and locks memory as it is faulted in (so key memory
never reaches swap). ``holds_keys`` marks a CLI command function whose process unwraps a data key
or handles plaintext from KMS; ``volumed.cli.main`` hardens the process before running such a
command. Callers: the mount daemon (before the data key is unwrapped), volumed.cli.

Test hook: with $VOLUMED_TEST_HARDENING_LOG set, ``note_key_unwrapped()`` (called by
volume.keywrap.unwrap after every successful Decrypt of a data key) appends one JSON line with the
process's state at that moment (``current_state()``) to that file, so a test can see that every
command that unwraps a key does so in a hardened process.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import resource
from collections.abc import Callable
from typing import Any, TypedDict, TypeVar

log = logging.getLogger("volumed.hardening")

PR_GET_DUMPABLE, PR_SET_DUMPABLE = 3, 4
MCL_CURRENT, MCL_FUTURE, MCL_ONFAULT = 1, 2, 4
ENV_TEST_LOG = "VOLUMED_TEST_HARDENING_LOG"
F = TypeVar("F", bound=Callable[..., Any])  # a decorated function keeps its signature


class Hardened(TypedDict):
    """What harden_process made take effect."""

    dumpable: bool    # True: the process is still dumpable (PR_SET_DUMPABLE failed)
    core_limit: int
    mlockall: bool    # memory locked as it is faulted in


class HardeningState(TypedDict):
    """The process's state read back from the kernel (current_state)."""

    dumpable: bool    # PR_GET_DUMPABLE
    locked_kib: int   # VmLck of /proc/self/status
    core_limit: int   # soft RLIMIT_CORE


def _can_lock_all() -> bool:
    """True if mlockall(MCL_FUTURE) cannot make later allocations fail: root (CAP_IPC_LOCK) or an
    unlimited RLIMIT_MEMLOCK. Otherwise a command that maps more than the (often 8 MiB) limit
    would fail with ENOMEM."""
    return os.geteuid() == 0 or resource.getrlimit(resource.RLIMIT_MEMLOCK)[0] == resource.RLIM_INFINITY


def harden_process(lock_memory: bool | None = None) -> Hardened:
    """Not dumpable, core limit 0, and (``lock_memory``; None = where it is safe, see
    _can_lock_all) all memory locked as it is faulted in. Returns what took effect; a lock that
    fails is logged, not fatal (mlockall needs CAP_IPC_LOCK or a large enough limit)."""
    libc = ctypes.CDLL(None, use_errno=True)
    dumpable = libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if lock_memory is None:
        lock_memory = _can_lock_all()
    locked = False
    if lock_memory:
        rc = libc.mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)
        locked = rc == 0
        if rc != 0:
            log.warning("mlockall failed (errno %d): key memory may be swapped", ctypes.get_errno())
    return {"dumpable": dumpable, "core_limit": 0, "mlockall": locked}


def current_state() -> HardeningState:
    """What is in effect now, read back from the kernel (the daemon's status shows it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    locked = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmLck:"):
                locked = int(line.split()[1])
    return {"dumpable": libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 1, "locked_kib": locked,
            "core_limit": resource.getrlimit(resource.RLIMIT_CORE)[0]}


def holds_keys(func: F) -> F:
    """Mark a CLI command function: its process unwraps keys, so volumed.cli.main hardens it first."""
    setattr(func, "holds_keys", True)
    return func


def note_key_unwrapped() -> None:
    """The test hook (module docstring); nothing unless $VOLUMED_TEST_HARDENING_LOG is set."""
    path = os.environ.get(ENV_TEST_LOG)
    if not path:
        return
    import sys

    rec = dict(current_state(), pid=os.getpid(), argv=sys.argv[1:3])
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, (json.dumps(rec) + "\n").encode())
    finally:
        os.close(fd)
