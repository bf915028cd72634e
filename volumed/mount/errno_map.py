"""The FUSE boundary: the one place where errors become errno values.

``fuse_errors`` wraps every request handler of volumed.mount.fs.VolumeFS:
  - pyfuse3.FUSEError passes through (the handler chose the errno itself);
  - KeyAccessError (the key is gone: revoked, wiped, refused) -> EIO;
  - IntegrityError (a sector failed to verify) -> EIO and one log line naming the sector;
  - anything else -> EIO and a logged traceback (a bug; never data in the message).
Cancellation (trio.Cancelled, a BaseException) is not caught.
"""

from __future__ import annotations

import errno
import functools
import logging

import pyfuse3

from volumed.errors import IntegrityError, KeyAccessError

log = logging.getLogger("volumed.mount")


def fuse_errors(handler):
    """Decorate an async pyfuse3 request handler so domain errors reach the kernel as errno."""

    @functools.wraps(handler)
    async def wrapper(*args, **kwargs):
        try:
            return await handler(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except KeyAccessError:
            raise pyfuse3.FUSEError(errno.EIO) from None
        except IntegrityError as exc:
            log.error("integrity failure in %s: %s", handler.__name__, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception:
            log.exception("unexpected error in %s; returning EIO", handler.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper
