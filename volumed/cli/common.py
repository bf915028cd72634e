"""Options and helpers shared by the CLI command groups.

``add_kms_options(parser)`` adds --kms, --principal, --via-service and --ca-bundle;
``kms_client(args, role)`` turns them into a key-service client through ``volumed.kms.connect``.
role "user" is the person or automation using the CLI (the keystore administrator by default);
role "host" is the host principal that serves mounts (its only way to a key is a grant).
``user_kms(args)`` is the user's client calling through RDS (ViaService rds.<region>.amazonaws.com),
as volume and snapshot commands do.

The key-service commands (kms, iam) share: ``call`` (one KMS call; an AWS error becomes one
``KmsCommandError`` line naming the code and what to do), ``emit`` (JSON or human output),
``table``/``fmt`` (human output), ``read_input``/``read_text`` (input files, '-' for stdin).
``embedded_keystore`` refuses, in one line, commands that need the keystore directory itself when
--kms names AWS KMS or a key server. ``command_group`` and ``subcommand`` register a group and a
plain subcommand (positionals, optional key-service options and --json).
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any, TypeAlias

from botocore.exceptions import ClientError, ParamValidationError

from volumed import kms
from volumed.errors import UsageError, VolumedError, aws_error_code, aws_error_message
from volumed.kms.principals import rds_via

# What ``add_subparsers`` returns (a command group's ``register`` adds its subcommands to it).
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
# A parsed command's handler: ``args -> exit status`` (None counts as 0 in volumed.cli.main).
Handler = Callable[[argparse.Namespace], "int | None"]
# An AWS-shaped response or request: JSON values keyed by AWS's field names.
Response = dict[str, Any]


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


def subcommand(sub: Subparsers, name: str, func: Handler, help: str,
               *positionals: str | tuple[str, str], kms_options: bool = False,
               json_option: bool = False, description: str | None = None) -> argparse.ArgumentParser:
    """Add subcommand ``name`` running ``func``: one positional argument per entry of
    ``positionals`` (a dest, shown upper-case, or a (dest, metavar) pair), then the key-service
    options and --json if asked."""
    p = sub.add_parser(name, help=help, description=description)
    for pos in positionals:
        dest, metavar = pos if isinstance(pos, tuple) else (pos, pos.upper())
        p.add_argument(dest, metavar=metavar)
    if kms_options:
        add_kms_options(p)
    if json_option:
        add_json_option(p)
    p.set_defaults(func=func)
    return p


def command_group(subparsers: Subparsers, name: str, help: str, *, dest: str, metavar: str = "COMMAND",
                  description: str | None = None, usage_to_stderr: bool = True) -> Subparsers:
    """Add command group ``name`` (``volumed kms``, ``volumed iam``, ...) and return its subparsers.
    The group alone prints its help (on stderr, or stdout) and exits 2."""
    top = subparsers.add_parser(name, help=help, description=description)
    sub = top.add_subparsers(dest=dest, metavar=metavar)

    def usage(args: argparse.Namespace) -> int:
        top.print_help(sys.stderr if usage_to_stderr else sys.stdout)
        return 2

    top.set_defaults(func=usage)
    return sub


def kms_client(args: argparse.Namespace, *, via_service: str | None = None,
               principal: str | None = None) -> Any:
    """A key-service client for this invocation. Explicit options win over the role defaults.
    (boto3's and the embedded client's ``kms`` methods: typed Any, as boto3 is untyped here.)"""
    return kms.connect(
        args.kms if args.kms is not None else kms.default_spec(),
        principal=args.principal or principal,
        via_service=args.via_service or via_service,
    )


def region() -> str:
    """$VOLUMED_REGION, $AWS_REGION or $AWS_DEFAULT_REGION, else us-east-1."""
    return next((os.environ[v] for v in ("VOLUMED_REGION", "AWS_REGION", "AWS_DEFAULT_REGION")
                 if os.environ.get(v)), "us-east-1")


def user_kms(args: argparse.Namespace) -> Any:
    """The user's client calling through RDS (ViaService rds.<region>.amazonaws.com), as RDS does
    for a user (volume and snapshot commands)."""
    return kms_client(args, via_service=rds_via(region()))


def embedded_keystore(args: argparse.Namespace, refusal: str) -> str:
    """The keystore directory named by --kms (or the default keystore); UsageError ``refusal``
    when --kms names AWS KMS or a key server (the command needs the keystore itself)."""
    spec: str = args.kms if args.kms is not None else kms.default_spec()
    if spec == "aws" or spec.startswith(("https://", "http://")):
        raise UsageError(refusal)
    return spec


def print_json(obj: object) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=True, default=_json_default)
    sys.stdout.write("\n")


def _json_default(o: object) -> str:
    if isinstance(o, (bytes, bytearray)):
        return base64.b64encode(bytes(o)).decode()
    if isinstance(o, dt.datetime):
        return o.isoformat()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


# -- key-service calls (kms and iam commands) ---------------------------------------------------
# AWS error code -> what the user can do about it
HINTS = {
    "NotFoundException": "list keys with 'volumed kms list-keys' and aliases with 'volumed kms list-aliases'",
    "DisabledException": "enable the key with 'volumed kms enable-key KEY'",
    "KMSInvalidStateException": "a key pending deletion can only be described or brought back with "
                                "'volumed kms cancel-key-deletion KEY'",
    "InvalidCiphertextException": "the input is not a ciphertext of this key service, was altered, or "
                                  "--context differs from the one it was encrypted with",
    "IncorrectKeyException": "the ciphertext was encrypted under another key; omit --key",
    "AccessDeniedException": "ask the key's administrator for a key policy statement, an identity policy "
                             "('volumed iam put-policy') or a grant, or call as another --principal or "
                             "--via-service (AWS managed keys alias/aws/* cannot be managed by anyone)",
    "AccessDenied": "identity policies are changed by the keystore administrator or a principal whose "
                    "identity policy allows iam:*",
    "NoSuchEntity": "list attached policies with 'volumed iam list-policies'",
    "MalformedPolicyDocument": "fix the policy file (JSON with a Statement list, no Principal)",
    "ValidationError": "",
    "AlreadyExistsException": "choose another alias name, or move the alias with update-alias",
    "NotAuthorizedException": "alias names starting alias/aws/ are reserved; choose another",
    "InvalidAliasNameException": "use alias/ followed by letters, digits, '/', '_' or '-'",
    "InvalidGrantTokenException": "list grants with 'volumed kms list-grants KEY'",
    "InvalidGrantIdException": "list grants with 'volumed kms list-grants KEY'",
    "MalformedPolicyDocumentException": "fix the policy file (JSON with a Statement list), or keep a "
                                        "statement that lets you call kms:PutKeyPolicy",
    "LimitExceededException": "",
    "UnsupportedOperationException": "",
    "ValidationException": "",
}
_EXIT_CODES = {"AccessDeniedException": 5, "AccessDenied": 5, "ValidationException": 2,
               "ValidationError": 2, "MalformedPolicyDocumentException": 2,
               "MalformedPolicyDocument": 2}


class KmsCommandError(VolumedError):
    """A key-service call failed; str() is the one line the CLI prints."""

    def __init__(self, code: str, message: str):
        hint = HINTS.get(code, "")
        text = f"{code}: {message}" if message else code
        if hint:
            text = f"{text.rstrip('.')}; {hint}"
        super().__init__(text, code=code)
        self.exit_code = _EXIT_CODES.get(code, 1)


def call(client: Any, method: str, **params: Any) -> Response:
    """Run one KMS call; ClientError/ParamValidationError -> KmsCommandError. ResponseMetadata is
    dropped."""
    try:
        response: Response = getattr(client, method)(**params)
    except ClientError as exc:
        raise KmsCommandError(aws_error_code(exc) or "Error", aws_error_message(exc)) from None
    except ParamValidationError as exc:
        raise KmsCommandError("ValidationException", " ".join(str(exc).split())) from None
    response.pop("ResponseMetadata", None)
    return response


def emit(args: argparse.Namespace, response: Response, human: Callable[[Response], object] | None) -> int:
    """Print the response as JSON (--json) or through ``human``; exit status 0."""
    if args.json or human is None:
        print_json(response)
    else:
        human(response)
    return 0


def fmt(value: object) -> str:
    """One value for human output."""
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ",".join(fmt(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return "-" if value is None or value == "" else str(value)


def table(rows: Iterable[Response], columns: list[tuple[str, str]]) -> None:
    """Print rows as aligned columns (header, field)."""
    rows = list(rows)
    cells = [[h for h, _ in columns]] + [[fmt(r.get(f)) for _, f in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    if not rows:
        print("(none)")


def read_input(path: str) -> bytes:
    """The bytes of a file ('-': stdin); UsageError naming the file if unreadable."""
    try:
        if path == "-":
            return sys.stdin.buffer.read()
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None


def read_text(path: str) -> str:
    """A UTF-8 text file (policies)."""
    try:
        return read_input(path).decode()
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text") from None
