"""`volumed iam <command>`: the embedded key service's identity policies (a minimal IAM).

A key policy statement naming the account (``arn:aws:iam::<account>:root``, as AWS's default key
policy does) enables identity policies; these commands attach them to IAM user and role ARNs of
the keystore's account. They call the embedded client's extension methods
(``put_principal_policy`` and friends, volumed.kms.service); with ``--kms aws`` use AWS IAM instead.
Errors are one line (volumed.cli.common.KmsCommandError); nothing changes when a call fails.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from volumed.cli import server_cmd
from volumed.cli.common import (Handler, Subparsers, add_json_option, add_kms_options, call, command_group,
                                emit, embedded_keystore, kms_client, read_text, table)


def _client(args: argparse.Namespace) -> Any:
    """The embedded client for this invocation; UsageError for AWS KMS (use AWS IAM there)."""
    embedded_keystore(args, "identity policies are kept only by the embedded key service; with AWS "
                            "KMS attach IAM policies with AWS IAM (aws iam put-user-policy / put-role-policy)")
    return kms_client(args)


def _put(args: argparse.Namespace) -> int:
    document = read_text(args.file)
    r = call(_client(args), "put_principal_policy", PrincipalArn=args.target, PolicyName=args.name,
             PolicyDocument=document)
    return emit(args, r, lambda r: print(f"policy {args.name} attached to {args.target}"))


def _get(args: argparse.Namespace) -> int:
    r = call(_client(args), "get_principal_policy", PrincipalArn=args.target, PolicyName=args.name)
    if args.json:
        r = dict(r, PolicyDocument=json.loads(r["PolicyDocument"]))
    return emit(args, r, lambda r: print(r["PolicyDocument"]))


def _list(args: argparse.Namespace) -> int:
    params = {"PrincipalArn": args.target} if args.target else {}
    r = call(_client(args), "list_principal_policies", **params)
    return emit(args, r, lambda r: table(r["Policies"], [("PRINCIPAL", "PrincipalArn"),
                                                         ("POLICY", "PolicyName")]))


def _delete(args: argparse.Namespace) -> int:
    r = call(_client(args), "delete_principal_policy", PrincipalArn=args.target, PolicyName=args.name)
    return emit(args, r, lambda r: print(f"policy {args.name} detached from {args.target}"))


def _cmd(sub: Subparsers, name: str, func: Handler, help: str, *,
         target_optional: bool = False) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=help)
    p.add_argument("target", metavar="PRINCIPAL", nargs="?" if target_optional else None,
                   help="IAM user or role ARN, e.g. arn:aws:iam::<account>:user/alice")
    add_kms_options(p)
    add_json_option(p)
    p.set_defaults(func=func)
    return p


def register(subparsers: Subparsers) -> None:
    """Add ``volumed iam`` and its subcommands (called by volumed.cli.build_parser)."""
    sub = command_group(
        subparsers, "iam", "identity policies of the embedded key service's principals", dest="iam_command",
        description="Identity policies: they count where a key policy enables them (a statement "
                    "naming arn:aws:iam::<account>:root). Changing them needs the keystore "
                    "administrator or an identity policy allowing iam:*.")
    p = _cmd(sub, "put-policy", _put, "attach (or replace) the identity policy NAME from FILE")
    p.add_argument("name", metavar="NAME")
    p.add_argument("file", metavar="FILE", help="policy JSON ('-' for stdin)")
    p = _cmd(sub, "get-policy", _get, "print an attached identity policy")
    p.add_argument("name", metavar="NAME")
    _cmd(sub, "list-policies", _list, "list attached identity policies (of PRINCIPAL, or all)",
         target_optional=True)
    p = _cmd(sub, "delete-policy", _delete, "detach an identity policy")
    p.add_argument("name", metavar="NAME")
    server_cmd.register_access_keys(sub)
