"""The FUSE boundary of the pyfuse3 engine: the one place where its errors become errno values.

``fuse_errors`` wraps every request handler of volumed.mount.fs.VolumeFS:
  - pyfuse3.FUSEError passes through (the handler chose the errno itself);
  - the domain errors by ``ERRNO_OF`` (KeyAccessError: the key is gone, revoked, wiped, refused;
    IntegrityError: a sector failed to verify, with one log line naming the sector; UsageError,
    StateError, MemoryError);
  - OSError of the backing file whose errno a block device's user can act on (PASSED_THROUGH:
    ENOSPC of a full disk, EDQUOT, EROFS, EFBIG, EIO of the disk below, ENOMEM) -> that errno,
    logged as a warning without a traceback (the first time and then at 2, 4, 8, ... occurrences
    per errno: a full disk does not flood the log);
  - anything else, another OSError included -> EIO and a logged traceback (a bug; never data in
    the message).
Cancellation (trio.Cancelled, a BaseException) is not caught.

The native engine maps the core's return codes in native/fuse_engine.c (fe_errno_of) by the same
table; tests/mount/test_engine.py checks the two agree through
``volumed._native.engine_errno_table()``.
"""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import pyfuse3

from volumed.errors import IntegrityError, KeyAccessError, StateError, UsageError

log = logging.getLogger("volumed.mount")
P = ParamSpec("P")
T = TypeVar("T")

# Domain error -> errno (the native table is keyed by the core's codes: VC_E_KEY, VC_E_INTEGRITY,
# VC_E_RANGE, VC_E_STATE, VC_E_NOMEM in that order).
ERRNO_OF = (
    (KeyAccessError, errno.EIO),
    (IntegrityError, errno.EIO),
    (UsageError, errno.EINVAL),
    (StateError, errno.EROFS),
    (MemoryError, errno.ENOMEM),
)
PASSED_THROUGH = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EIO,
                            errno.ENOMEM})
_seen: dict[int, int] = {}


def os_errno(exc: OSError) -> int | None:
    """The errno to return for a backing file's OSError, or None if it is a bug (EIO + traceback)."""
    return exc.errno if exc.errno in PASSED_THROUGH else None


def errno_for(exc: BaseException) -> int:
    """The errno the kernel gets for ``exc`` raised by a Volume call inside a request."""
    for cls, value in ERRNO_OF:
        if isinstance(exc, cls):
            return value
    if isinstance(exc, OSError):
        return os_errno(exc) or errno.EIO
    return errno.EIO


def _log_os_error(where: str, exc: OSError, code: int) -> None:
    n = _seen[code] = _seen.get(code, 0) + 1
    if n & (n - 1) == 0:  # 1, 2, 4, 8, ...
        log.warning("%s: the backing file reported %s (%s; %d time(s) so far): returned to the "
                    "caller as that errno", where, errno.errorcode.get(code, code),
                    exc.strerror, n)


def fuse_errors(handler: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Decorate an async pyfuse3 request handler so domain errors reach the kernel as errno."""
    name = getattr(handler, "__name__", "a request")

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await handler(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except IntegrityError as exc:
            log.error("integrity failure in %s: %s", name, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except (KeyAccessError, UsageError, StateError, MemoryError) as exc:
            raise pyfuse3.FUSEError(errno_for(exc)) from None
        except OSError as exc:
            code = os_errno(exc)
            if code is None:
                log.exception("unexpected error in %s; returning EIO", name)
                raise pyfuse3.FUSEError(errno.EIO) from None
            _log_os_error(name, exc, code)
            raise pyfuse3.FUSEError(code) from None
        except Exception:
            log.exception("unexpected error in %s; returning EIO", name)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper
