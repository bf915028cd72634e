"""`volumed mount`, `volumed unmount`, `volumed status`: the volume as a file, and its state."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from volumed.cli.common import Subparsers, add_kms_options, print_json
from volumed.errors import UsageError

# volumed.mount.client (with the daemon's control channel, trio and the volume layer under it) costs
# the CLI's start-up about 50 ms (python -X importtime), the rest of volumed.mount about 1 ms; the
# commands that talk to a mount import what they use ("deferred").


def register(sub: Subparsers) -> None:
    p = sub.add_parser("mount", help="attach a volume and serve it as one file at MOUNTPOINT",
                       description="Attach VOLUME (grant the host access to its key) and serve the "
                                   "decrypted volume as MOUNTPOINT/<ebs id>. Returns once the mount "
                                   "is ready and prints the file's path.")
    p.add_argument("volume", metavar="VOLUME")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--foreground", action="store_true", help="serve in this process (service managers)")
    p.add_argument("--recovery-window", type=float, default=7.0, metavar="DAYS",
                   help="days a revoked volume stays recoverable (default 7)")
    p.add_argument("--kms-grace", type=float, default=3600.0, metavar="SECONDS",
                   help="how long the key service may be unreachable before the mount fails (default 3600)")
    p.add_argument("--check-interval", type=float, default=None, metavar="SECONDS",
                   help="seconds between key checks (default: 60 against AWS KMS; 300 with the "
                        "embedded service, which is also watched for changes every 100 ms)")
    p.add_argument("--engine", choices=("native", "python"), default=None,
                   help="who serves the FUSE requests: native worker threads (the default for XTS "
                        "volumes) or pyfuse3 on the daemon's event loop (GCM volumes' only engine)")
    p.add_argument("--io-threads", type=int, default=None, metavar="N",
                   help="native engine: requests served on the CPU at once, each by a worker thread "
                        "on its own /dev/fuse clone (default: the number of CPUs)")
    p.add_argument("--io-depth", type=int, default=None, metavar="D",
                   help="native engine: worker threads at most, so requests in flight; those beyond "
                        "--io-threads are requests waiting for the backing disk (default: 16, and "
                        "at least --io-threads)")
    p.add_argument("--host-profile", default=os.environ.get("VOLUMED_HOST_PROFILE"), metavar="PROFILE",
                   help="with --kms https://SERVER: the AWS profile holding this host's access key, "
                        "which the daemon signs with (default: $VOLUMED_HOST_PROFILE, else the same "
                        "credentials as the user); the grant names that key's principal")
    p.add_argument("--allow-faults", action="store_true",
                   help="enable test hooks (clock injection, power-cut recording); never in production")
    p.add_argument("--bench-null-cipher", default=None, metavar="SIZE",
                   help="benchmarks only: serve VOLUME as a plain, unencrypted file of SIZE (created "
                        "if missing) through the same FUSE code; refuses any real volume")
    p.add_argument("--fake-time", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--test-recording-journal", default=None, help=argparse.SUPPRESS)
    add_kms_options(p)
    p.set_defaults(func=_mount)

    u = sub.add_parser("unmount", help="flush, retire the grant, wipe the key and unmount")
    u.add_argument("mountpoint", metavar="MOUNTPOINT")
    u.add_argument("--force", action="store_true",
                   help="unmount even while a loop device is attached to the file")
    u.set_defaults(func=_unmount)

    s = sub.add_parser("status", help="every volumed mount on this host and its state")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=_status)


def _mount(args: argparse.Namespace) -> int:
    from volumed.mount import client, keyservice  # deferred: CLI start-up cost

    if args.bench_null_cipher is not None:
        return _mount_null(args)
    rc = client.mount(
        volume=args.volume, mountpoint=args.mountpoint,
        kms_spec=args.kms if args.kms is not None else keyservice.default_spec(),
        principal=args.principal, via_service=args.via_service, foreground=args.foreground,
        allow_faults=args.allow_faults, recovery_window=args.recovery_window * 86400.0,
        grace=args.kms_grace, interval=args.check_interval, fake_time=args.fake_time,
        recording_journal=args.test_recording_journal, host_profile=args.host_profile,
        engine=args.engine, io_threads=args.io_threads, io_depth=args.io_depth)
    if rc == 0 and not args.foreground:
        from volumed.mount.tuning import tune_mount  # deferred: CLI start-up cost

        tune_mount(args.mountpoint)
    return rc


def _mount_null(args: argparse.Namespace) -> int:
    """``--bench-null-cipher SIZE``: start volumed.mount.nullserve and wait until it serves."""
    from volumed.volume.device import parse_size  # deferred: CLI start-up cost (the volume layer)

    size = parse_size(args.bench_null_cipher)
    cmd = [sys.executable, "-m", "volumed.mount.nullserve", str(size), args.volume, args.mountpoint,
           args.engine or "native", str(args.io_threads or 0), str(args.io_depth or 0)]
    if args.foreground:
        os.execv(sys.executable, cmd)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    assert proc.stdout is not None  # stdout=PIPE
    line = proc.stdout.readline().strip()
    proc.stdout.close()
    if not line.startswith("ready "):
        proc.wait()
        raise UsageError(line.removeprefix("error ") or "the null-cipher mount did not start")
    print(line.removeprefix("ready "))
    return 0


def _unmount(args: argparse.Namespace) -> int:
    from volumed.mount import client  # deferred: CLI start-up cost

    client.unmount(args.mountpoint, force=args.force)
    return 0


def _status(args: argparse.Namespace) -> int:
    from volumed.mount import client  # deferred: CLI start-up cost

    mounts = client.status_all()
    if args.json:
        print_json(mounts)
        return 0
    if not mounts:
        print("no volumed mounts on this host")
        return 0
    for m in mounts:
        print(f"{m.get('file')}  {m.get('state')}")
        for key in ("volume", "key_arn", "encryption_context", "grant_id", "state_since", "reason",
                    "kms_unreachable_since", "last_successful_check", "engine", "io_threads", "io_depth",
                    "requests", "bytes_read", "bytes_written", "pid"):
            if m.get(key) not in (None, ""):
                print(f"    {key}: {m[key]}")
    return 0
