"""The `volumed` command.

Each command group lives in its own module with a ``register(subparsers)`` function that adds its
subcommands; each subcommand sets ``func`` (``args -> int``) with ``set_defaults``. ``main`` turns
every expected error into one line on stderr (what failed, why, what to do) and an exit code, never
a traceback. A ``func`` marked ``volumed.hardening.holds_keys`` (it unwraps a data key or handles
KMS plaintext) runs in a hardened process: not dumpable, no core, memory locked where possible.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from volumed import __version__
from volumed.errors import VolumedError, aws_error_code, aws_error_message
from volumed.hardening import harden_process

# Command-group modules, in help order. A module that fails to import is a bug, not a missing
# feature, so it is not hidden.
GROUPS = [
    "volumed.cli.kms_cmd",
    "volumed.cli.iam_cmd",
    "volumed.cli.volume_cmd",
    "volumed.cli.mount_cmd",
    "volumed.cli.snapshot_cmd",
    "volumed.cli.fault_cmd",
]


def _version_string() -> str:
    try:
        # Importing the cipher fails under VOLUMED_REQUIRE_NATIVE=1 without a working native
        # extension; --version reports that rather than every command failing to start.
        # deferred: the import's failure is reported, not raised
        from volumed.cipher import implementation

        impl = implementation()
    except Exception as exc:  # pragma: no cover - reported, not hidden
        impl = f"unavailable ({exc})"
    return f"volumed {__version__} (sector cipher: {impl})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="volumed",
        description="Encrypted block-storage volumes with AWS KMS-semantics key management.",
    )
    parser.add_argument("--version", action="version", version=_version_string())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in GROUPS:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # group not written yet
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    if getattr(func, "holds_keys", False):  # volumed.hardening.holds_keys
        harden_process()
    try:
        return int(func(args) or 0)
    except VolumedError as exc:
        print(f"volumed: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("volumed: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # botocore ClientError and friends: one line with the AWS code
        code = aws_error_code(exc)
        if code is None:
            raise
        print(f"volumed: {code}: {aws_error_message(exc)}".rstrip(": "), file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
