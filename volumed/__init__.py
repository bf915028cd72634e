"""volumed: encrypted block-storage volumes with AWS KMS-semantics key management.

Layers (see docs/ARCHITECTURE.md):
  volumed.kms     key service (embedded keystore or AWS KMS through boto3)
  volumed.cipher  sector cipher (native core in native/, pure-Python reference)
  volumed.volume  on-disk format and block device
  volumed.mount   FUSE daemon and key-access monitor
  volumed.cli     the `volumed` command
"""

__version__ = "0.1.0"
