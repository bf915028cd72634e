"""``volumed export --luks``: a standalone LUKS2 image of an XTS volume.

The image has the volume's header (fresh copies, same token, so volumed can still open it) and
every sector of the data area: written sectors copied as stored, unwritten sectors (holes) filled
with the encryption of zeros, so any LUKS2 implementation given the volume key reads zeros there.
Written to a temporary file next to OUT and linked into place: OUT never half-exists.
Callers: volumed.cli.volume_cmd.
"""

from __future__ import annotations

import os

from volumed.errors import UsageError, VolumedError
from volumed.volume.backing import StrPath, staged_file
from volumed.volume.device import Volume
from volumed.volume.formats import XtsFormat

CHUNK_SECTORS = 256


def export_luks(vol: Volume, out: StrPath) -> None:
    """Write the LUKS2 image of the open XTS volume ``vol`` to the new file ``out``."""
    out = os.fspath(out)
    fmt = vol.format
    if not isinstance(fmt, XtsFormat):
        raise UsageError(f"{vol.path} is a GCM volume; only XTS volumes export to LUKS2")
    if os.path.lexists(out):
        raise UsageError(f"{out} already exists: choose a new output path")
    try:
        with staged_file(out) as dst:
            core = vol._live()
            ss, base = vol.sector_size, vol.header.data_offset
            dst.pwrite(0, fmt.header_bytes(vol))
            dst.truncate(base)
            total = vol.size // ss
            for first in range(0, total, CHUNK_SECTORS):
                n = min(CHUNK_SECTORS, total - first)
                dst.pwrite(base + first * ss, core.read_sealed(first, n))  # holes: encrypted zeros
    except FileExistsError:
        raise UsageError(f"{out} already exists: choose a new output path") from None
    except OSError as exc:
        raise VolumedError(f"cannot export {vol.path} to {out}: {exc.strerror}") from None
