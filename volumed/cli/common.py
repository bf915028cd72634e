"""Options and helpers shared by the CLI command groups.

``add_kms_options(parser)`` adds --kms, --principal, --via-service and --json;
``kms_client(args, role)`` turns them into a key-service client through ``volumed.kms.connect``.
role "user" is the person or automation using the CLI (the keystore administrator by default);
role "host" is the host principal that serves mounts (its only way to a key is a grant).
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def add_kms_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("key service")
    g.add_argument("--kms", metavar="SPEC", default=None,
                   help="keystore directory, 'aws', or an https endpoint URL "
                        "(default: $VOLUMED_KMS, else /var/lib/volumed as root or the user's data dir)")
    g.add_argument("--principal", metavar="ARN", default=os.environ.get("VOLUMED_PRINCIPAL"),
                   help="calling principal ARN (default: $VOLUMED_PRINCIPAL, else the keystore's user for your login)")
    g.add_argument("--via-service", metavar="NAME", default=os.environ.get("VOLUMED_VIA_SERVICE"),
                   help="the service the call comes through, e.g. rds.us-east-1.amazonaws.com")
    g.add_argument("--ca-bundle", metavar="FILE", default=None, type=_ca_bundle,
                   help="with an https --kms: the certificate(s) to trust (sets AWS_CA_BUNDLE, "
                        "e.g. the certificate 'volumed kms serve' printed)")


def _ca_bundle(path: str) -> str:
    """--ca-bundle: exported as AWS_CA_BUNDLE, which boto3 reads (here and in a mount's daemon)."""
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise argparse.ArgumentTypeError(f"{path} is not a file")
    os.environ["AWS_CA_BUNDLE"] = path
    return path


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the AWS-shaped JSON response")


def kms_client(args, *, via_service: str | None = None, principal: str | None = None):
    """A key-service client for this invocation. Explicit options win over the role defaults."""
    from volumed import kms

    return kms.connect(
        args.kms if args.kms is not None else kms.default_spec(),
        principal=args.principal or principal,
        via_service=args.via_service or via_service,
    )


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=True, default=_json_default)
    sys.stdout.write("\n")


def _json_default(o):
    import base64
    import datetime as dt

    if isinstance(o, (bytes, bytearray)):
        return base64.b64encode(bytes(o)).decode()
    if isinstance(o, dt.datetime):
        return o.isoformat()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")
