"""Encrypted volumes: the on-disk formats (LUKS2 for XTS, volumed-GCM) and the block device.

Public API: Volume, VolumeHeader, BackingFile, RecordingBackingFile, simulate_power_cut,
PowerCutReport, parse_size. See docs/FORMAT.md.
"""

from volumed.volume.backing import BackingFile, PowerCutReport, RecordingBackingFile, simulate_power_cut
from volumed.volume.device import Volume, parse_size
from volumed.volume.header import VolumeHeader

__all__ = ["Volume", "VolumeHeader", "BackingFile", "RecordingBackingFile", "simulate_power_cut",
           "PowerCutReport", "parse_size"]
