"""`volumed snapshot create|list|describe|delete|copy|share|seal`, `volumed restore`, `volumed delete`.

The snapshot store is ``--store SPEC`` (a directory or s3://BUCKET/PREFIX), else
$VOLUMED_SNAPSHOT_STORE, else ``snapshots`` next to the embedded keystore. The user calls KMS
through RDS, as for volume commands. Every command prints one clear line on bad input and exits
non-zero with nothing changed; ``--json`` prints AWS-shaped JSON (EBS DescribeSnapshots fields).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from volumed.cli.common import (Subparsers, add_json_option, add_kms_options, command_group, print_json,
                                subcommand, user_kms)
from volumed.hardening import holds_keys

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

# The snapshot layer (volumed.snapshot, with the volume layer and the S3 store under it) costs the
# CLI's start-up 35-55 ms (python -X importtime), so each command imports what it uses ("deferred").

PROGRESS_MIN_CHUNKS = 1024  # show a progress bar from 64 MiB of snapshot up
T = TypeVar("T")


def _store(args: argparse.Namespace) -> Any:
    from volumed.snapshot.store import open_store  # deferred: CLI start-up cost

    return open_store(args.store, kms_spec=args.kms)


def _add_common(p: argparse.ArgumentParser) -> None:
    """--store, the key-service options and --json (added last: they close a command's options)."""
    p.add_argument("--store", metavar="SPEC", default=None,
                   help="snapshot store: a directory or s3://BUCKET/PREFIX (default: "
                        "$VOLUMED_SNAPSHOT_STORE, else 'snapshots' next to the keystore)")
    add_kms_options(p)
    add_json_option(p)


class _Progress:
    """A rich progress bar on stderr for long operations (shown when ``enabled``)."""

    def __init__(self, label: str, mode: str):
        self.label, self.mode = label, mode
        self.bar: Progress | None = None
        self.task: TaskID | None = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            if self.mode == "never" or (self.mode == "auto" and total < PROGRESS_MIN_CHUNKS):
                return
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TimeRemainingColumn

            self.bar = Progress("[progress.description]{task.description}", BarColumn(),
                                TaskProgressColumn(), TimeRemainingColumn(),
                                console=Console(stderr=True))
            self.bar.start()
            self.task = self.bar.add_task(self.label, total=total)
        assert self.task is not None
        self.bar.update(self.task, completed=done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _with_progress(args: argparse.Namespace, label: str, fn: Callable[[_Progress], T]) -> T:
    prog = _Progress(label, args.progress)
    try:
        return fn(prog)
    finally:
        prog.close()


def _print_snapshot(args: argparse.Namespace, m: dict[str, Any], extra: str = "") -> None:
    from volumed.snapshot.engine import describe  # deferred: CLI start-up cost

    d = describe(m)
    if args.json:
        print_json(d)
        return
    print(f"{d['SnapshotId']}  {d['VolumeId']}  {d['StartTime']}  {d['KmsKeyId']}  "
          f"stored {d['StoredBytes']} bytes{extra}")


@holds_keys
def cmd_create(args: argparse.Namespace) -> int:
    from volumed.mount.snapshots import snapshot_through_daemon  # deferred: CLI start-up cost (the mount stack)
    from volumed.snapshot.engine import create_snapshot  # deferred: CLI start-up cost

    m = _with_progress(args, "snapshot", lambda p: create_snapshot(
        args.volume, kms=user_kms(args), store=_store(args), description=args.description, progress=p,
        mounted=snapshot_through_daemon))
    _print_snapshot(args, m)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from volumed.snapshot import catalog  # deferred: CLI start-up cost
    from volumed.snapshot.engine import describe  # deferred: CLI start-up cost

    snaps = [describe(m, mac is not None) for m, mac in catalog.all_with_mac(_store(args))]
    if args.volume:
        snaps = [d for d in snaps if args.volume in (d["VolumeId"], d["VolumeUuid"], d["DbId"])]
    if args.json:
        print_json({"Snapshots": snaps})
        return 0
    if not snaps:
        print("no snapshots")
    for d in snaps:
        print(f"{d['SnapshotId']}  {d['VolumeId']}  {d['StartTime']}  {d['Cipher']}  "
              f"{d['VolumeSize']} bytes  stored {d['StoredBytes']}"
              + (f"  copy of {d['SourceSnapshotId']}" if d["SourceSnapshotId"] else "")
              + (f"  shared with {','.join(d['SharedWith'])}" if d["SharedWith"] else "")
              + ("" if d["Sealed"] else "  MAC REMOVED in the store: altered, do not use"
                 if d.get("MacRemoved") else "  UNSEALED (volumed snapshot seal)"))
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    from volumed.snapshot import catalog  # deferred: CLI start-up cost
    from volumed.snapshot.engine import describe  # deferred: CLI start-up cost

    m, mac = catalog.read_with_mac(_store(args), args.snapshot)
    d = describe(m, mac is not None)
    if args.json:
        print_json(d)
    else:
        for k, v in d.items():
            print(f"{k + ':':<18} {v}")
    return 0


def cmd_delete_snapshot(args: argparse.Namespace) -> int:
    from volumed.snapshot.engine import delete_snapshot  # deferred: CLI start-up cost

    freed = delete_snapshot(_store(args), args.snapshot, kms=user_kms(args))
    if args.json:
        print_json({"SnapshotId": args.snapshot, "Deleted": True, "FreedBytes": freed})
    else:
        print(f"deleted {args.snapshot} ({freed} bytes freed; other snapshots keep their chunks)")
    return 0


@holds_keys
def cmd_copy(args: argparse.Namespace) -> int:
    from volumed.snapshot.engine import copy_snapshot  # deferred: CLI start-up cost

    m = _with_progress(args, "copy", lambda p: copy_snapshot(
        _store(args), args.snapshot, kms=user_kms(args), key_id=args.key, description=args.description,
        progress=p))
    _print_snapshot(args, m, f"  (copy of {args.snapshot})")
    return 0


@holds_keys
def cmd_share(args: argparse.Namespace) -> int:
    from volumed.snapshot.engine import share_snapshot  # deferred: CLI start-up cost

    m, hint = share_snapshot(_store(args), args.snapshot, args.account, kms=user_kms(args))
    if args.json:
        print_json({"SnapshotId": args.snapshot, "SharedWith": m["shared_with"], "KeyPolicyNeeded": hint})
    else:
        print(f"shared {args.snapshot} with account {args.account}; {hint}")
    return 0


@holds_keys
def cmd_seal(args: argparse.Namespace) -> int:
    from volumed.snapshot.engine import seal_snapshot  # deferred: CLI start-up cost

    m = _with_progress(args, "seal", lambda p: seal_snapshot(_store(args), args.snapshot, kms=user_kms(args),
                                                            progress=p))
    if args.json:
        print_json({"SnapshotId": args.snapshot, "Sealed": True, "OwnerId": m["owner_account"],
                    "SharedWith": m["shared_with"]})
    else:
        print(f"sealed {args.snapshot}: every chunk checked; owner {m['owner_account']}, shared with "
              f"{', '.join(m['shared_with']) or 'no account'}")
    return 0


@holds_keys
def cmd_restore(args: argparse.Namespace) -> int:
    from volumed.snapshot.restore import restore_snapshot  # deferred: CLI start-up cost

    h = _with_progress(args, "restore", lambda p: restore_snapshot(
        _store(args), args.snapshot, args.volume, kms=user_kms(args), key_id=args.key,
        ebs_id=args.ebs_id, db_id=args.db_id, progress=p))
    if args.json:
        print_json(h.to_dict())
    else:
        print(f"restored {args.snapshot} to {args.volume} ({h.ebs_id}, {h.db_id}, key {h.key_arn})")
    return 0


def cmd_delete_volume(args: argparse.Namespace) -> int:
    from volumed.snapshot.erase import delete_volume  # deferred: CLI start-up cost

    r = delete_volume(args.volume, kms=user_kms(args))
    if args.json:
        print_json(r)
    else:
        print(f"deleted {args.volume} ({r['ebs_id']}): {r['grants_retired']} grant(s) retired, "
              f"{r['erased_bytes']} header bytes crypto-erased")
    return 0


def _progress_option(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--progress", choices=["auto", "always", "never"], default="auto",
                   help="progress bar on stderr (auto: from 64 MiB up)")
    return p


def register(sub: Subparsers) -> None:
    """Add the snapshot group, restore and delete to the ``volumed`` command."""
    ss = command_group(sub, "snapshot", "point-in-time, incremental, encrypted snapshots",
                       dest="snapshot_command", metavar="SUBCOMMAND", usage_to_stderr=False)
    snapshot = ("snapshot", "SNAP")

    p = subcommand(ss, "create", cmd_create, "snapshot a volume (only changed chunks are stored)", "volume")
    p.add_argument("--description", default="")
    _progress_option(p)
    _add_common(p)

    p = subcommand(ss, "list", cmd_list, "snapshots in the store")
    p.add_argument("--volume", metavar="ID", default=None, help="only this volume (vol-, db- or uuid)")
    _add_common(p)

    _add_common(subcommand(ss, "describe", cmd_describe, "one snapshot", snapshot))
    _add_common(subcommand(ss, "delete", cmd_delete_snapshot, "delete a snapshot (the others stay restorable)",
                           snapshot))

    p = subcommand(ss, "copy", cmd_copy, "copy a snapshot, under the same or another KMS key", snapshot)
    p.add_argument("--key", metavar="KEY", default=None,
                   help="KMS key of the copy (another key: a new data key, a full copy)")
    p.add_argument("--description", default="")
    _progress_option(p)
    _add_common(p)

    p = subcommand(ss, "share", cmd_share, "let another account copy a snapshot (customer managed keys only)",
                   snapshot)
    p.add_argument("--account", required=True, metavar="ID", help="12-digit AWS account id")
    _add_common(p)

    _add_common(_progress_option(subcommand(
        ss, "seal", cmd_seal, "add the manifest MAC to a snapshot made by an older volumed (checks every "
                              "chunk under its key first)", snapshot)))

    p = subcommand(sub, "restore", cmd_restore, "a new volume from a snapshot", snapshot, "volume")
    p.add_argument("--ebs-id", metavar="VOL", default=None, help="vol-... (generated when not given)")
    p.add_argument("--db-id", metavar="DB", default=None, help="db-... (generated when not given)")
    p.add_argument("--key", metavar="KEY", default=None,
                   help="KMS key of the new volume (default: the snapshot's; another key: a new data key)")
    _progress_option(p)
    _add_common(p)

    subcommand(sub, "delete", cmd_delete_volume, "delete a volume: retire its grants, crypto-erase its header",
               "volume", kms_options=True, json_option=True)
