"""Keep the daemon's keys out of core dumps, ptrace and swap.

Caller: volumed.mount.daemon, before the data key is unwrapped.
"""

from __future__ import annotations

import ctypes
import logging
import resource

log = logging.getLogger("volumed.mount")

PR_GET_DUMPABLE, PR_SET_DUMPABLE = 3, 4
MCL_CURRENT, MCL_FUTURE, MCL_ONFAULT = 1, 2, 4


def harden_process() -> dict:
    """Not dumpable (no core, no ptrace by non-root, /proc/pid/mem closed), core limit 0, and all
    memory locked as it is faulted in (so key memory never reaches swap). Returns what took effect;
    a step that fails is logged, not fatal (mlockall needs CAP_IPC_LOCK or a large enough limit)."""
    libc = ctypes.CDLL(None, use_errno=True)
    done = {}
    done["dumpable"] = libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    done["core_limit"] = 0
    rc = libc.mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)
    done["mlockall"] = rc == 0
    if rc != 0:
        log.warning("mlockall failed (errno %d): key memory may be swapped", ctypes.get_errno())
    return done


def current_state() -> dict:
    """What is in effect now, read back from the kernel (the daemon's status shows it):
    {"dumpable": bool (PR_GET_DUMPABLE), "locked_kib": VmLck of /proc/self/status}."""
    libc = ctypes.CDLL(None, use_errno=True)
    locked = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmLck:"):
                locked = int(line.split()[1])
    return {"dumpable": libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 1, "locked_kib": locked}
