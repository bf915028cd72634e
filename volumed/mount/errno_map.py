"""The FUSE boundary of the pyfuse3 engine: the one place where its errors become errno values.

``fuse_errors`` wraps every request handler of volumed.mount.fs.VolumeFS:
  - pyfuse3.FUSEError passes through (the handler chose the errno itself);
  - the domain errors by ``ERRNO_OF`` (KeyAccessError: the key is gone, revoked, wiped, refused;
    IntegrityError: a sector failed to verify, with one log line naming the sector);
  - OSError from the backing file: its own errno (ENOSPC, EDQUOT, EIO, ... as the system call
    reported it);
  - anything else -> EIO and a logged traceback (a bug; never data in the message).
Cancellation (trio.Cancelled, a BaseException) is not caught.

The native engine maps the core's return codes in native/fuse_engine.c (fe_errno_of); the same
error reaches the kernel as the same errno on both paths, which tests/mount/test_errno_tables.py
checks against ``volumed._native.engine_errno_table()``.
"""

from __future__ import annotations

import errno
import functools
import logging

import pyfuse3

from volumed.errors import IntegrityError, KeyAccessError, StateError, UsageError

log = logging.getLogger("volumed.mount")

# Domain error -> errno, in the order checked (the native table is keyed by the core's codes:
# VC_E_KEY, VC_E_INTEGRITY, VC_E_RANGE, VC_E_STATE, VC_E_NOMEM in that order).
ERRNO_OF = (
    (KeyAccessError, errno.EIO),
    (IntegrityError, errno.EIO),
    (UsageError, errno.EINVAL),
    (StateError, errno.EROFS),
    (MemoryError, errno.ENOMEM),
)


def errno_for(exc: BaseException) -> int:
    """The errno the kernel gets for ``exc`` raised by a Volume call inside a request."""
    for cls, value in ERRNO_OF:
        if isinstance(exc, cls):
            return value
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO


def fuse_errors(handler):
    """Decorate an async pyfuse3 request handler so domain errors reach the kernel as errno."""

    @functools.wraps(handler)
    async def wrapper(*args, **kwargs):
        try:
            return await handler(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except IntegrityError as exc:
            log.error("integrity failure in %s: %s", handler.__name__, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except (KeyAccessError, UsageError, StateError, MemoryError, OSError) as exc:
            raise pyfuse3.FUSEError(errno_for(exc)) from None
        except Exception:
            log.exception("unexpected error in %s; returning EIO", handler.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper
