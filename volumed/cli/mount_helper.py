"""The mount helper: ``mount -t fuse.volumed VOLUME MOUNTPOINT [-o OPTIONS]`` and /etc/fstab.

mount(8) runs ``/sbin/mount.fuse.volumed VOLUME MOUNTPOINT [-sfnv] [-o OPTIONS]`` (install it as a
symlink to scripts/mount.fuse.volumed, which runs this module). Options understood (others, e.g.
rw, defaults, noauto, nofail, _netdev, are ignored): ``kms=SPEC``, ``principal=ARN``,
``recovery-window=DAYS``, ``kms-grace=SECONDS``, ``check-interval=SECONDS``. It then does what
``volumed mount`` does: it translates the arguments and runs the CLI, beside which it lives.
"""

from __future__ import annotations

import sys

from volumed.cli import main as cli_main
from volumed.errors import UsageError

OPTIONS = {"kms": "--kms", "principal": "--principal", "recovery-window": "--recovery-window",
           "kms-grace": "--kms-grace", "check-interval": "--check-interval"}


def translate(argv: list[str]) -> list[str]:
    """mount(8) helper arguments -> ``volumed mount`` arguments."""
    positional, opts = [], []
    it = iter(argv)
    for arg in it:
        if arg == "-o":
            opts.extend(next(it, "").split(","))
        elif arg.startswith("-o"):
            opts.extend(arg[2:].split(","))
        elif arg.startswith("-"):
            continue  # -s (sloppy), -f (fake), -n (no mtab), -v (verbose): nothing to do
        else:
            positional.append(arg)
    if len(positional) != 2:
        raise UsageError("usage: mount.fuse.volumed VOLUME MOUNTPOINT [-o options]")
    out = ["mount", *positional]
    for opt in opts:
        name, eq, value = opt.partition("=")
        if name in OPTIONS and eq:
            out += [OPTIONS[name], value]
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m volumed.cli.mount_helper`` (scripts/mount.fuse.volumed)."""
    try:
        args = translate(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        print(f"mount.fuse.volumed: {exc}", file=sys.stderr)
        return exc.exit_code
    return cli_main(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
