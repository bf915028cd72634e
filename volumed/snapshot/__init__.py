"""Snapshots of volumes: point-in-time, incremental, encrypted copies kept in a snapshot store.

Modules, one concern each (format and key handling in docs/SNAPSHOTS.md):

- ``ids``      snapshot ids (``snap-`` + 17 hex)
- ``store``    the object store interface; a local directory and S3 (boto3); ``open_store(spec)``
- ``objects``  the byte formats of manifests and chunks, with their SHA-256 (damage) checks
- ``keys``     the snapshot's wrapped data key: context, ReEncrypt, fresh keys, unwrap
- ``recrypt``  records <-> plaintext under a data key (restore and copy under another key)
- ``seal``     manifest MACs: the key derived from the snapshot's data key and id, verification
- ``catalog``  listing, finding and loading (MAC-verified) manifests of a store
- ``engine``   create, copy, share, delete, seal (migration) of snapshots; ``latest_snapshot_hint``
- ``mounted``  snapshots of volumes that keep serving I/O (the holder's side; the mount sends the order)
- ``restore``  a new volume from a snapshot
- ``erase``    ``volumed delete``: retire the volume's grants, crypto-erase its header

Public API: create_snapshot, copy_snapshot, share_snapshot, delete_snapshot, restore_snapshot,
delete_volume, latest_snapshot_hint, open_store.
"""

from volumed.snapshot.engine import (copy_snapshot, create_snapshot, delete_snapshot,
                                     latest_snapshot_hint, share_snapshot)
from volumed.snapshot.erase import delete_volume
from volumed.snapshot.restore import restore_snapshot
from volumed.snapshot.store import open_store

__all__ = ["create_snapshot", "copy_snapshot", "share_snapshot", "delete_snapshot",
           "restore_snapshot", "delete_volume", "latest_snapshot_hint", "open_store"]
