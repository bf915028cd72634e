"""Overwriting secret buffers in place.

Python copies immutable ``bytes`` freely, so every key, plaintext data key or MAC key volumed holds
in Python lives in a ``bytearray`` and is wiped with ``wipe`` as soon as it is no longer needed (the
long-lived copy of a data key is in locked native memory, see native/keymem.c)."""

from __future__ import annotations


def wipe(*bufs: bytearray | memoryview | bytes | None) -> None:
    """Zero each mutable buffer in ``bufs``; ``None`` and immutable ``bytes`` are skipped (they
    cannot be wiped, which is why secrets are not kept in them)."""
    for buf in bufs:
        if isinstance(buf, bytearray):
            buf[:] = bytes(len(buf))
        elif isinstance(buf, memoryview) and not buf.readonly:
            buf.cast("B")[:] = bytes(buf.nbytes)
