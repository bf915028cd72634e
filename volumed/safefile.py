"""Writing a whole file under its name safely: the one helper for every "temp file + rename".

``write_atomic(path, data)`` writes ``data`` to a new file in ``path``'s own directory, named
``.<name>.tmp-<16 random hex>``, opened with O_CREAT | O_EXCL | O_NOFOLLOW (so a file or symlink
planted at that name, by someone who can write the directory, is refused, never written through),
mode 0600 unless told otherwise; then fsync, rename over ``path`` (a rename replaces a symlink at
``path`` itself, it does not follow it) and fsync of the directory. Readers see the old file or the
new one whole. On any failure the temporary file is removed and the OSError propagates (callers
turn it into their one-line error). ``durable=False`` skips both fsyncs for callers that make a
batch durable at once (the snapshot store: one syncfs before a manifest names the objects).
``is_temp_name(name)`` tells a listing which names are such leftovers.
Callers: volumed.snapshot.store, volumed.mount.latch, ``volumed kms ... --out``, the key server's
self-signed TLS certificate and key (volumed.kms.server.tls); the audit pin uses temp_name and a link.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Buffer

_MARK = ".tmp-"


def temp_name(path: str) -> str:
    """A fresh temporary name beside ``path`` (unpredictable: planting a link in advance needs luck,
    and O_EXCL refuses it anyway)."""
    d, base = os.path.split(os.path.abspath(path))
    return os.path.join(d, f".{base}{_MARK}{secrets.token_hex(8)}")


def is_temp_name(name: str) -> bool:
    """True for a name write_atomic uses for its temporary files (a crash leaves them behind)."""
    return _MARK in name


def fsync_dir(directory: str) -> None:
    """Make a directory's entries (a rename, a new name) durable."""
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_atomic(path: str | os.PathLike[str], data: Buffer, *, mode: int = 0o600, durable: bool = True) -> None:
    """Replace ``path`` with a file holding exactly ``data`` (see the module docstring)."""
    path = os.fspath(path)
    tmp = temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            view = memoryview(data).cast("B")
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(os.path.dirname(os.path.abspath(path)))
