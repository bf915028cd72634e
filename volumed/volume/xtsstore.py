"""Sector store of XTS (LUKS2) volumes: sector n lives at data_offset + n*4096, encrypted in place.

An all-zero on-disk sector is a hole and reads as zeros without decryption (an XTS ciphertext of
all zeros has probability 2^-32768). A whole-sector write of zeros punches the hole. Reads and
writes decrypt/encrypt each run of consecutive non-hole sectors in one cipher call.
Callers: volumed.volume.device, under its range locks (this class has no locking of its own).
"""

from __future__ import annotations

from volumed.cipher import XtsCipher
from volumed.volume.backing import BackingFile
from volumed.volume.header import VolumeHeader
from volumed.volume.ranges import runs, scratch, zero_sectors


class XtsStore:
    lock_unit = 1              # sectors per lock unit
    flush_is_barrier = False   # fdatasync alone makes returned writes durable

    def __init__(self, backing: BackingFile, header: VolumeHeader, cipher: XtsCipher):
        self.backing = backing
        self.cipher = cipher
        self.ss = header.sector_size
        self.base = header.data_offset

    def read_sectors(self, first: int, out: memoryview) -> None:
        """Fill ``out`` (whole sectors) with the plaintext of sectors first, first+1, ..."""
        self.backing.preadinto(self.base + first * self.ss, out)
        holes = zero_sectors(out, self.ss)
        if not holes.any():
            self.cipher.decrypt(out, first)
            return
        for a, b in runs(~holes):
            self.cipher.decrypt(out[a * self.ss:b * self.ss], first + a)

    def write_sectors(self, first: int, data: memoryview) -> None:
        """Encrypt and store whole sectors; all-zero sectors become holes."""
        ss = self.ss
        zeros = zero_sectors(data, ss)
        buf = scratch(len(data))
        if not zeros.any():
            self.cipher.encrypt(data, first, out=buf)
            self.backing.pwrite(self.base + first * ss, buf)
            return
        for a, b in runs(zeros):
            self.backing.punch_hole(self.base + (first + a) * ss, (b - a) * ss)
        for a, b in runs(~zeros):
            self.cipher.encrypt(data[a * ss:b * ss], first + a, out=buf[a * ss:b * ss])
            self.backing.pwrite(self.base + (first + a) * ss, buf[a * ss:b * ss])

    def discard_sectors(self, first: int, n: int) -> None:
        """Make sectors [first, first+n) holes (read as zeros)."""
        self.backing.punch_hole(self.base + first * self.ss, n * self.ss)

    def flush(self) -> None:
        self.backing.fdatasync()

    def file_size_for(self, size: int) -> int:
        return self.base + size
