"""The one interface to an open volume's sectors: the VolumeCore protocol, and which core serves.

Both the mount (volumed.mount.fs, and the native FUSE engine through native/vcore.h) and the Python
Volume API (snapshots, export, restore, the crash model, tests) go through an object of this
protocol; nothing probes it with hasattr or reaches into its fields. Implementations:

- ``volumed._native.VolumeCore`` (native/vcore.c): XTS, GCM and the null cipher, the default;
- ``volumed.volume.refcore.RefCore``: the pure-Python reference over a Python store; the test oracle
  of the native core, and the core of backing files whose every call must be seen by Python code
  (the fault layer's FaultBacking with the python engine, test tracers).

``choose(requested)`` picks "native" or "reference": ``core="reference"`` (Volume.open/create's
argument) or ``VOLUMED_CIPHER=reference`` force the reference; otherwise native when the extension
loaded and passed its self-test (volumed.cipher), else the reference.
"""

from __future__ import annotations

import os
from typing import Protocol

from volumed.errors import UsageError

CORES = ("native", "reference")


class VolumeCore(Protocol):
    """Decrypted bytes of one open volume, served to any number of threads.

    Offsets and lengths are bytes of the volume ([0, size)); a range outside it raises UsageError.
    Overlapping requests behave as some serial order. ``flush`` is the only durability point. After
    ``wipe_key`` (which waits for calls in flight) every call raises KeyAccessError."""

    @property
    def size(self) -> int: ...
    @property
    def sector_size(self) -> int: ...
    def read(self, offset: int, length: int) -> bytearray: ...
    def readinto(self, offset: int, buf) -> None: ...
    def write(self, offset: int, data) -> None: ...
    def discard(self, offset: int, length: int) -> None: ...
    def flush(self) -> None: ...
    def wipe_key(self) -> None: ...
    def set_size(self, size: int) -> None: ...
    def read_records(self, first: int, n: int) -> list[bytes | None]:
        """Sectors as stored (what a snapshot keeps), None for absent ones; no lock taken."""
    def read_sealed(self, first: int, n: int) -> bytearray:
        """Sectors as a LUKS2 reader expects them (XTS export)."""
    def capture_begin(self, max_kept_bytes: int) -> None: ...
    def capture_read(self, first: int, n: int) -> list[bytes | None]: ...
    def capture_stats(self) -> dict: ...
    def capture_end(self) -> None: ...


def native_module():
    """volumed._native when the native cipher is active (loaded, self-tested), else None."""
    from volumed import cipher

    if not cipher.implementation().startswith("native"):
        return None
    from volumed import _native  # type: ignore[attr-defined]

    return _native


def choose(requested: str | None = None) -> str:
    """"native" or "reference" (see the module docstring). UsageError for another name."""
    if requested is not None and requested not in CORES:
        raise UsageError(f"unknown volume core {requested!r}: choose native or reference")
    if requested == "reference" or os.environ.get("VOLUMED_CIPHER", "").lower() == "reference":
        return "reference"
    return "native" if native_module() is not None else "reference"
