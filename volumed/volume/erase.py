"""Crypto-erase of a volume: destroy every copy of its wrapped data key in the backing file.

The wrapped key lives only in the header: XTS (LUKS2) keeps it in the volumed-kms token of both
header copies (0 and 16 KiB); GCM in both header copies (0 and 16 KiB). ``crypto_erase(backing,
header)`` overwrites the whole header area, [0, data_offset) (1 MiB for XTS: both copies and the
unused keyslot area; 32 KiB for GCM), with zeros and fdatasyncs. The sectors stay on disk, but no
key can ever decrypt them again: KMS never held the data key, only wrapped it. The caller holds the
volume's flock (no daemon has it open). Caller: volumed.snapshot.erase (``volumed delete``).
"""

from __future__ import annotations

from volumed.volume.backing import BackingFile
from volumed.volume.header import VolumeHeader

ERASE_BLOCK = 1 << 16


def crypto_erase(backing: BackingFile, header: VolumeHeader) -> int:
    """Zero [0, header.data_offset) of ``backing`` durably; returns the bytes overwritten."""
    end = header.data_offset
    zeros = bytes(ERASE_BLOCK)
    off = 0
    while off < end:
        n = min(ERASE_BLOCK, end - off)
        backing.pwrite(off, zeros[:n])
        off += n
    backing.fdatasync()
    return end
