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
from volumed.volume.backing import staged_file
from volumed.volume.ranges import runs, zero_sectors

CHUNK_SECTORS = 256


def export_luks(vol, out) -> None:
    """Write the LUKS2 image of the open XTS volume ``vol`` to the new file ``out``."""
    out = os.fspath(out)
    if vol.header.cipher != "xts":
        raise UsageError(f"{vol.path} is a GCM volume; only XTS volumes export to LUKS2")
    if os.path.lexists(out):
        raise UsageError(f"{out} already exists: choose a new output path")
    try:
        with staged_file(out) as dst, vol._locks.exclusive():
            store = vol._live()
            ss, base = vol.sector_size, vol.header.data_offset
            dst.pwrite(0, vol._luks_bytes())
            dst.truncate(base)
            total = vol.size // ss
            buf = bytearray(CHUNK_SECTORS * ss)
            for first in range(0, total, CHUNK_SECTORS):
                n = min(CHUNK_SECTORS, total - first)
                mv = memoryview(buf)[:n * ss]
                vol._backing.preadinto(base + first * ss, mv)
                for a, b in runs(zero_sectors(mv, ss)):
                    store.cipher.encrypt(mv[a * ss:b * ss], first + a)  # zeros in place
                dst.pwrite(base + first * ss, mv)
    except FileExistsError:
        raise UsageError(f"{out} already exists: choose a new output path") from None
    except OSError as exc:
        raise VolumedError(f"cannot export {vol.path} to {out}: {exc.strerror}") from None
