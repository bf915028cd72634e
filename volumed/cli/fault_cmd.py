"""`volumed fault KIND MOUNTPOINT ...`: inject a fault into a mount started with --allow-faults.

Every kind is one "fault" request on the daemon's root-only control channel (volumed.mount.faults
answers it). Prints the daemon's reply as JSON (the fault state, or the power-cut report).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from volumed.cli.common import Subparsers, print_json
from volumed.errors import UsageError

if TYPE_CHECKING:
    from volumed.mount.protocol import Fault


def _sectors(text: str) -> list[int]:
    """ "3,5,8-10" -> [3, 5, 8, 9, 10]."""
    out: list[int] = []
    try:
        for part in text.split(","):
            a, _, b = part.partition("-")
            out.extend(range(int(a), int(b or a) + 1))
    except ValueError:
        raise UsageError(f"cannot read sectors {text!r}: use numbers and ranges such as 3,5,8-10") from None
    return out


def register(sub: Subparsers) -> None:
    p = sub.add_parser("fault", help="inject a fault into a mount started with --allow-faults (tests)",
                       description="Inject a fault into a running mount through its control channel. "
                                   "Only a mount started with --allow-faults accepts faults.")
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)

    e = kinds.add_parser("error", help="fail matching operations with an errno")
    e.add_argument("--io", choices=["read", "write", "flush", "any"], default="any")
    e.add_argument("--errno", default="EIO", help="errno name or number (default EIO)")
    e.add_argument("--offset", type=int, default=None, help="first byte of the range (file offset)")
    e.add_argument("--length", type=int, default=None, help="bytes in the range (default 1)")
    e.add_argument("--nth", type=int, default=None, help="fail only the Nth matching operation")
    e.add_argument("--probability", type=float, default=None, help="fail each matching operation with this probability")
    e.add_argument("--count", type=int, default=None, help="retire the rule after this many failures")
    e.add_argument("--seed", type=int, default=None)

    b = kinds.add_parser("bad-sector", help="reads of these 4 KiB sectors fail until rewritten")
    b.add_argument("--sectors", required=True, help="e.g. 3,5,8-10")

    lat = kinds.add_parser("latency", help="add a fixed delay to every operation")
    lat.add_argument("seconds", type=float)

    t = kinds.add_parser("throttle", help="enforce an EBS volume type's IOPS and throughput")
    t.add_argument("--volume-type", choices=["gp3", "io2", "gp2"], default="gp3")
    t.add_argument("--iops", type=int, default=None)
    t.add_argument("--throughput", type=float, default=None, metavar="MIB_S")
    t.add_argument("--off", action="store_true", help="stop throttling")

    kinds.add_parser("clear", help="remove errors, bad sectors, latency and throttling")
    kinds.add_parser("status", help="show the faults in force")

    c = kinds.add_parser("power-cut", help="lose power: drop writes not yet flushed; the disk is "
                                           "gone until unmounted and mounted again")
    c.add_argument("--mode", choices=["all", "random", "torn"], default="all")
    c.add_argument("--seed", type=int, default=None)

    r = kinds.add_parser("rollback", help="write the previous on-disk version of sectors back")
    r.add_argument("--sectors", required=True, help="e.g. 3,5,8-10")

    for sp in (e, b, lat, t, c, r, kinds.choices["clear"], kinds.choices["status"]):
        sp.add_argument("mountpoint", metavar="MOUNTPOINT")
        sp.set_defaults(func=_fault)


def request_for(args: argparse.Namespace) -> Fault:
    """The control request for parsed ``volumed fault`` arguments."""
    # deferred: CLI start-up cost (the mount stack loads trio, FUSE and the volume formats)
    from volumed.mount.protocol import Fault

    msg: dict[str, Any] = {}
    if args.kind == "error":
        end = None if args.offset is None else args.offset + (args.length or 1)
        msg.update(io=args.io, errno=args.errno, start=args.offset, end=end, nth=args.nth,
                   probability=args.probability, count=args.count, seed=args.seed)
    elif args.kind in ("bad-sector", "rollback"):
        msg["sectors"] = _sectors(args.sectors)
    elif args.kind == "latency":
        msg["seconds"] = args.seconds
    elif args.kind == "throttle":
        msg.update(volume_type=args.volume_type, iops=args.iops, throughput_mib=args.throughput,
                   off=args.off)
    elif args.kind == "power-cut":
        msg.update(mode=args.mode, seed=args.seed)
    return Fault(args.kind, {k: v for k, v in msg.items() if v is not None})


def _fault(args: argparse.Namespace) -> int:
    # deferred: CLI start-up cost (volumed.mount.client and what it imports, about 50 ms)
    from volumed.mount import client

    reply = client.channel(args.mountpoint).call(request_for(args))
    print_json(reply.fields())
    return 0
