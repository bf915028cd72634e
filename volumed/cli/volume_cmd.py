"""Volume commands: create, info, export --luks, resize, upgrade.

Each prints one clear line and exits non-zero on bad input, leaving nothing on disk. The user's
principal calls KMS through RDS (ViaService rds.<region>.amazonaws.com), as RDS does for a user.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from volumed.cli.common import Subparsers, add_json_option, add_kms_options, print_json, subcommand, user_kms
from volumed.errors import UsageError
from volumed.hardening import holds_keys

if TYPE_CHECKING:
    from volumed.volume.header import VolumeHeader

# The volume layer (volumed.volume: the formats, the device, the cipher's users) costs the CLI's
# start-up 20-35 ms (python -X importtime), so each command imports what it uses ("deferred").


def _human(n: int) -> str:
    for unit, m in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= m and n % m == 0:
            return f"{n // m} {unit}"
    return f"{n} bytes"


def _summary(path: str, h: VolumeHeader) -> str:
    lines = [
        f"volume:      {path}",
        f"format:      {h.format} ({'AES-256-XTS, LUKS2-compatible' if h.cipher == 'xts' else 'AES-256-GCM, authenticated'})",
        f"uuid:        {h.uuid}",
        f"size:        {_human(h.size)} ({h.size} bytes, {h.sectors} sectors of {h.sector_size})",
        f"db id:       {h.db_id}",
        f"ebs id:      {h.ebs_id}",
        f"kms key:     {h.key_arn}",
        f"context:     " + ", ".join(f"{k}={v}" for k, v in sorted(h.context.items())),
        f"created:     {h.created}",
        f"seqid:       {h.seqid}",
    ]
    if h.cipher == "gcm":
        from volumed.volume.gcmformat import VERSION  # deferred: CLI start-up cost

        lines.append(f"gcm format:  v{h.format_version}" + (
            f" (opens only after `volumed upgrade {path}`)" if h.format_version < VERSION else ""))
        lines.append(f"nonces:      reserved to {h.nonce_reserved}, flushed to {h.nonce_flushed}, "
                     f"{len(h.doubtful)} doubtful range(s)")
    return "\n".join(lines)


@holds_keys
def cmd_create(args: argparse.Namespace) -> int:
    from volumed.volume import Volume, parse_size  # deferred: CLI start-up cost

    size = parse_size(args.size)
    h = Volume.create(args.volume, size=size, kms=user_kms(args), key_id=args.key,
                      cipher=args.cipher, db_id=args.db_id, ebs_id=args.ebs_id)
    if args.json:
        print_json(h.to_dict())
    else:
        print(_summary(args.volume, h))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from volumed.volume import Volume  # deferred: CLI start-up cost

    h = Volume.read_header(args.volume)
    if args.json:
        print_json(h.to_dict())
    else:
        print(_summary(args.volume, h))
    return 0


@holds_keys
def cmd_export(args: argparse.Namespace) -> int:
    from volumed.volume import Volume  # deferred: CLI start-up cost
    from volumed.volume.export import export_luks  # deferred: CLI start-up cost

    if not args.luks:
        raise UsageError("export needs --luks (the only export format)")
    h = Volume.read_header(args.volume)
    if h.cipher != "xts":
        raise UsageError(f"{args.volume} is a GCM volume; only XTS volumes export to LUKS2")
    if os.path.lexists(args.out):
        raise UsageError(f"{args.out} already exists: choose a new output path")
    with Volume.open(args.volume, kms=user_kms(args)) as vol:
        export_luks(vol, args.out)
    print(f"exported {args.volume} to {args.out} (standalone LUKS2, {_human(h.size)})")
    return 0


@holds_keys
def cmd_resize(args: argparse.Namespace) -> int:
    from volumed.volume import Volume, parse_size  # deferred: CLI start-up cost

    size = parse_size(args.size)
    h = Volume.read_header(args.volume)
    if size < h.size:
        raise UsageError(f"cannot shrink {args.volume} from {h.size} to {size} bytes: volumes only grow")
    with Volume.open(args.volume, kms=user_kms(args)) as vol:
        vol.resize(size)
    print(f"resized {args.volume} to {_human(size)} ({size} bytes)")
    return 0


@holds_keys  # it unwraps the data key: hardened at dispatch, like the mount daemon
def cmd_upgrade(args: argparse.Namespace) -> int:
    from volumed.volume.gcmupgrade import upgrade  # deferred: CLI start-up cost

    h, done = upgrade(args.volume, kms=user_kms(args))
    if done:
        print(f"upgraded {args.volume} to GCM format v{h.format_version} ({_human(h.size)}, uuid {h.uuid})")
    else:
        print(f"{args.volume} is already GCM format v{h.format_version}: nothing to do")
    return 0


def register(sub: Subparsers) -> None:
    """Add create, info, export, resize and upgrade to the ``volumed`` command."""
    p = subcommand(sub, "create", cmd_create, "create an encrypted volume file (sparse)", "volume")
    p.add_argument("--size", required=True, metavar="SIZE", help="bytes, or with K/M/G/T (e.g. 1G)")
    p.add_argument("--cipher", choices=["xts", "gcm"], default="xts",
                   help="xts (LUKS2-compatible, default) or gcm (authenticated)")
    p.add_argument("--key", default="alias/aws/rds", metavar="KEY", help="KMS key id, ARN or alias")
    p.add_argument("--db-id", metavar="DB", default=None, help="db-... (generated when not given)")
    p.add_argument("--ebs-id", metavar="VOL", default=None, help="vol-... (generated when not given)")
    add_kms_options(p)
    add_json_option(p)

    subcommand(sub, "info", cmd_info, "print a volume's header (no key needed)", "volume", json_option=True)

    p = sub.add_parser("export", help="write a standalone LUKS2 image of an XTS volume")
    p.add_argument("--luks", action="store_true", required=True, help="export as LUKS2 (required)")
    p.add_argument("volume", metavar="VOLUME")
    p.add_argument("out", metavar="OUT")
    add_kms_options(p)
    p.set_defaults(func=cmd_export)

    subcommand(sub, "resize", cmd_resize, "grow a volume (shrinking is refused)", "volume", "size",
               kms_options=True)
    subcommand(sub, "upgrade", cmd_upgrade, "rewrite a GCM volume of an older format as the current one",
               "volume", kms_options=True)
