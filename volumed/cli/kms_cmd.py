"""`volumed kms <command>`: the key service by hand (embedded keystore or AWS KMS).

Every command maps to one KMS operation through ``volumed.kms.connect`` (``--kms``/VOLUMED_KMS).
Output is human-readable by default and the AWS response shape with ``--json``. An AWS error
becomes one line naming its code and what to do (volumed.cli.common.KmsCommandError); nothing is
written when a call fails (encrypt/decrypt write --out only after success, atomically).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from volumed.cli import audit_cmd, server_cmd
from volumed.cli.common import (Handler, Response, Subparsers, add_json_option, add_kms_options, call,
                                command_group, emit, fmt, kms_client, print_json, read_input, read_text,
                                table)
from volumed.errors import UsageError
from volumed.hardening import holds_keys, note_key_unwrapped
from volumed.safefile import write_atomic
from volumed.secrets import wipe


# -- output --------------------------------------------------------------------------------------
def _fields(obj: Response, names: list[str] | None = None) -> None:
    """Print one object as 'Name: value' lines."""
    names = names or list(obj)
    width = max(len(n) for n in names)
    for n in names:
        if n in obj:
            print(f"{n.ljust(width)}  {fmt(obj[n])}")


def _all_pages(client: Any, method: str, member: str, **params: Any) -> Response:
    """Follow Marker/NextMarker to the end; one response with every item."""
    items: list[Response] = []
    marker = None
    while True:
        page = call(client, method, **params, **({"Marker": marker} if marker else {}))
        items += page[member]
        if not page.get("Truncated"):
            return {member: items, "Truncated": False}
        marker = page["NextMarker"]


def _context(pairs: list[str] | None) -> dict[str, str]:
    """--context k=v (repeatable) -> dict; UsageError naming a malformed pair."""
    out = {}
    for pair in pairs or ():
        k, sep, v = pair.partition("=")
        if not sep or not k:
            raise UsageError(f"--context {pair!r} is not KEY=VALUE; e.g. --context aws:ebs:id=vol-123")
        out[k] = v
    return out


# -- commands ------------------------------------------------------------------------------------
_KEY_FIELDS = ["KeyId", "Arn", "KeyState", "Description", "KeyManager", "KeySpec", "KeyUsage",
               "CreationDate", "DeletionDate", "PendingDeletionWindowInDays", "CurrentKeyMaterialId",
               "AWSAccountId"]


def _create_key(args: argparse.Namespace) -> int:
    params = {"Description": args.description} if args.description else {}
    if args.policy:
        params["Policy"] = read_text(args.policy)
    r = call(kms_client(args), "create_key", **params)
    return emit(args, r, lambda r: _fields(r["KeyMetadata"], _KEY_FIELDS))


def _describe_key(args: argparse.Namespace) -> int:
    r = call(kms_client(args), "describe_key", KeyId=args.key)
    return emit(args, r, lambda r: _fields(r["KeyMetadata"], _KEY_FIELDS))


def _list_keys(args: argparse.Namespace) -> int:
    client = kms_client(args)
    r = _all_pages(client, "list_keys", "Keys")
    if args.json:
        return emit(args, r, None)
    rows = []
    aliases: dict[str | None, list[str]] = {}
    for a in _all_pages(client, "list_aliases", "Aliases")["Aliases"]:
        aliases.setdefault(a.get("TargetKeyId"), []).append(a["AliasName"])
    for k in r["Keys"]:
        md = call(client, "describe_key", KeyId=k["KeyId"])["KeyMetadata"]
        md["Aliases"] = aliases.get(k["KeyId"], [])
        rows.append(md)
    table(rows, [("KEY ID", "KeyId"), ("STATE", "KeyState"), ("MANAGER", "KeyManager"),
                 ("ALIASES", "Aliases"), ("DESCRIPTION", "Description")])
    return 0


def _create_alias(args: argparse.Namespace) -> int:
    r = call(kms_client(args), "create_alias", AliasName=args.alias, TargetKeyId=args.key)
    return emit(args, r, lambda r: print(f"{args.alias} -> {args.key}"))


def _delete_alias(args: argparse.Namespace) -> int:
    r = call(kms_client(args), "delete_alias", AliasName=args.alias)
    return emit(args, r, lambda r: print(f"deleted {args.alias}"))


def _list_aliases(args: argparse.Namespace) -> int:
    params = {"KeyId": args.key} if args.key else {}
    r = _all_pages(kms_client(args), "list_aliases", "Aliases", **params)
    return emit(args, r, lambda r: table(r["Aliases"], [("ALIAS", "AliasName"), ("KEY ID", "TargetKeyId"),
                                                          ("CREATED", "CreationDate")]))


def _simple(method: str, done: str) -> Handler:
    """A command that calls ``method`` with KeyId only and prints ``done``."""
    def run(args: argparse.Namespace) -> int:
        client = kms_client(args)
        r = call(client, method, KeyId=args.key)
        return emit(args, r, lambda r: print(done.format(key=args.key)))
    return run


def _schedule_deletion(args: argparse.Namespace) -> int:
    r = call(kms_client(args), "schedule_key_deletion", KeyId=args.key, PendingWindowInDays=args.days)
    return emit(args, r, lambda r: print(f"{r['KeyId']} is pending deletion; it and everything encrypted "
                                         f"under it is destroyed on {fmt(r['DeletionDate'])} unless you run "
                                         f"'volumed kms cancel-key-deletion {args.key}'"))


def _cancel_deletion(args: argparse.Namespace) -> int:
    r = call(kms_client(args), "cancel_key_deletion", KeyId=args.key)
    return emit(args, r, lambda r: print(f"{r['KeyId']} is no longer pending deletion; it is Disabled: "
                                         f"enable it with 'volumed kms enable-key {args.key}'"))


def _enable_rotation(args: argparse.Namespace) -> int:
    params = {"RotationPeriodInDays": args.period_days} if args.period_days else {}
    r = call(kms_client(args), "enable_key_rotation", KeyId=args.key, **params)
    return emit(args, r, lambda r: print(f"automatic rotation enabled for {args.key}"))


def _rotation_status(args: argparse.Namespace) -> int:
    r = call(kms_client(args), "get_key_rotation_status", KeyId=args.key)
    return emit(args, r, lambda r: _fields(r, ["KeyId", "KeyRotationEnabled", "RotationPeriodInDays",
                                               "NextRotationDate"]))


def _rotate(args: argparse.Namespace) -> int:
    r = call(kms_client(args), "rotate_key_on_demand", KeyId=args.key)
    return emit(args, r, lambda r: print(f"rotated {args.key}: new key material is current; older "
                                         f"ciphertexts still decrypt"))


def _list_rotations(args: argparse.Namespace) -> int:
    params = {"IncludeKeyMaterial": "ALL_KEY_MATERIAL"} if args.all else {}
    r = _all_pages(kms_client(args), "list_key_rotations", "Rotations", KeyId=args.key, **params)
    return emit(args, r, lambda r: table(r["Rotations"], [("ROTATED", "RotationDate"), ("TYPE", "RotationType"),
                                                           ("STATE", "KeyMaterialState"),
                                                           ("KEY MATERIAL", "KeyMaterialId")]))


def _write_output(path: str, data: bytes) -> None:
    """Write all of ``data`` or nothing (volumed.safefile.write_atomic: mode 0600, a temporary
    file opened O_EXCL|O_NOFOLLOW, so a planted symlink never receives plaintext)."""
    if path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    try:
        write_atomic(path, data)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None


@holds_keys
def _encrypt(args: argparse.Namespace) -> int:
    """encrypt KEY --in --out [--context]: KMS Encrypt of a file of 1-4096 bytes."""
    data = read_input(args.infile)
    if not 1 <= len(data) <= 4096:
        raise UsageError(f"{args.infile} has {len(data)} bytes; KMS Encrypt takes 1 to 4096 bytes "
                         f"(encrypt larger data under a data key from generate-data-key)")
    r = call(kms_client(args), "encrypt", KeyId=args.key, Plaintext=data, EncryptionContext=_context(args.context))
    _write_output(args.outfile, r["CiphertextBlob"])
    if args.json:
        print_json({k: v for k, v in r.items() if k != "CiphertextBlob" or args.outfile == "-"})
    elif args.outfile != "-":
        print(f"encrypted {len(data)} bytes under {r['KeyId']} -> {args.outfile}", file=sys.stderr)
    return 0


@holds_keys
def _decrypt(args: argparse.Namespace) -> int:
    """decrypt --in --out [--context] [--key]: KMS Decrypt; the plaintext buffer is wiped after writing."""
    data = read_input(args.infile)
    if not data:
        raise UsageError(f"{args.infile} is empty; it is not a ciphertext")
    params: dict[str, Any] = {"CiphertextBlob": data, "EncryptionContext": _context(args.context)}
    if args.key:
        params["KeyId"] = args.key
    r = call(kms_client(args), "decrypt", **params)
    plaintext = bytearray(r.pop("Plaintext"))
    note_key_unwrapped()
    try:
        _write_output(args.outfile, bytes(plaintext))
    finally:
        wipe(plaintext)
    if args.json:
        print_json(r)
    elif args.outfile != "-":
        print(f"decrypted under {r['KeyId']} -> {args.outfile}", file=sys.stderr)
    return 0


def _create_grant(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"KeyId": args.key, "GranteePrincipal": args.grantee,
              "Operations": [o for op in args.operations for o in op.split(",") if o]}
    if args.retiring_principal:
        params["RetiringPrincipal"] = args.retiring_principal
    if args.name:
        params["Name"] = args.name
    constraints: dict[str, dict[str, str]] = {}
    if args.context_subset:
        constraints["EncryptionContextSubset"] = _context(args.context_subset)
    if args.context_equals:
        constraints["EncryptionContextEquals"] = _context(args.context_equals)
    if constraints:
        params["Constraints"] = constraints
    r = call(kms_client(args), "create_grant", **params)
    return emit(args, r, lambda r: _fields(r, ["GrantId", "GrantToken"]))


_GRANT_COLUMNS = [("GRANT ID", "GrantId"), ("GRANTEE", "GranteePrincipal"), ("OPERATIONS", "Operations"),
                  ("RETIRING", "RetiringPrincipal"), ("CONSTRAINTS", "Constraints"), ("NAME", "Name")]


def _list_grants(args: argparse.Namespace) -> int:
    r = _all_pages(kms_client(args), "list_grants", "Grants", KeyId=args.key)
    return emit(args, r, lambda r: table(r["Grants"], _GRANT_COLUMNS))


def _list_retirable(args: argparse.Namespace) -> int:
    r = _all_pages(kms_client(args), "list_retirable_grants", "Grants", RetiringPrincipal=args.principal_arn)
    return emit(args, r, lambda r: table(r["Grants"], [("KEY", "KeyId")] + _GRANT_COLUMNS))


def _retire_grant(args: argparse.Namespace) -> int:
    if args.token:
        params = {"GrantToken": args.token}
    elif args.key and args.grant_id:
        params = {"KeyId": args.key, "GrantId": args.grant_id}
    else:
        raise UsageError("retire-grant needs --token TOKEN, or KEY and GRANT_ID")
    r = call(kms_client(args), "retire_grant", **params)
    return emit(args, r, lambda r: print("grant retired"))


def _revoke_grant(args: argparse.Namespace) -> int:
    r = call(kms_client(args), "revoke_grant", KeyId=args.key, GrantId=args.grant_id)
    return emit(args, r, lambda r: print(f"grant {args.grant_id} revoked"))


def _put_policy(args: argparse.Namespace) -> int:
    params = {"KeyId": args.key, "PolicyName": "default", "Policy": read_text(args.file)}
    if args.bypass_policy_lockout_safety_check:
        params["BypassPolicyLockoutSafetyCheck"] = True
    r = call(kms_client(args), "put_key_policy", **params)
    return emit(args, r, lambda r: print(f"key policy of {args.key} replaced"))


def _get_policy(args: argparse.Namespace) -> int:
    r = call(kms_client(args), "get_key_policy", KeyId=args.key, PolicyName="default")
    return emit(args, r, lambda r: print(r["Policy"]))


# -- registration --------------------------------------------------------------------------------
def _cmd(sub: Subparsers, name: str, func: Handler, help: str, *, key: bool = True,
         key_help: str = "key id, key ARN, alias name or alias ARN") -> argparse.ArgumentParser:
    """Add one subcommand with KEY (unless key=False), the key-service options and --json."""
    p = sub.add_parser(name, help=help, description=help)
    if key:
        p.add_argument("key", metavar="KEY", help=key_help)
    add_kms_options(p)
    add_json_option(p)
    p.set_defaults(func=func)
    return p


def register(subparsers: Subparsers) -> None:
    """Add ``volumed kms`` and its subcommands (called by volumed.cli.build_parser)."""
    sub = command_group(subparsers, "kms", "manage keys of the key service (embedded keystore or AWS KMS)",
                        dest="kms_command",
                        description="Key service commands. The service is --kms SPEC or $VOLUMED_KMS: "
                                    "a keystore directory, 'aws', or an https endpoint.")

    p = _cmd(sub, "create-key", _create_key, "create a customer managed symmetric key", key=False)
    p.add_argument("--description", default="")
    p.add_argument("--policy", metavar="FILE", help="key policy JSON (default: AWS's default key policy)")
    _cmd(sub, "list-keys", _list_keys, "list keys with their state and aliases", key=False)
    _cmd(sub, "describe-key", _describe_key, "show a key's metadata")
    p = _cmd(sub, "create-alias", _create_alias, "create an alias for a key", key=False)
    p.add_argument("alias", metavar="ALIAS", help="alias/<name>")
    p.add_argument("key", metavar="KEY", help="key id or key ARN")
    p = _cmd(sub, "delete-alias", _delete_alias, "delete an alias (not its key)", key=False)
    p.add_argument("alias", metavar="ALIAS")
    p = _cmd(sub, "list-aliases", _list_aliases, "list aliases", key=False)
    p.add_argument("--key", default=None, help="only aliases of this key")
    _cmd(sub, "enable-key", _simple("enable_key", "{key} is enabled"), "enable a key")
    _cmd(sub, "disable-key", _simple("disable_key", "{key} is disabled: it can no longer encrypt or decrypt"),
         "disable a key (reversible with enable-key)")
    p = _cmd(sub, "schedule-key-deletion", _schedule_deletion, "schedule a key's destruction after 7-30 days")
    p.add_argument("--days", type=int, default=30, help="pending window, 7-30 days (default 30)")
    _cmd(sub, "cancel-key-deletion", _cancel_deletion, "cancel a scheduled deletion (the key becomes Disabled)")
    p = _cmd(sub, "enable-key-rotation", _enable_rotation, "turn on automatic rotation")
    p.add_argument("--period-days", type=int, default=None, help="90-2560 days (default 365)")
    _cmd(sub, "disable-key-rotation", _simple("disable_key_rotation", "automatic rotation disabled for {key}"),
         "turn off automatic rotation")
    _cmd(sub, "get-key-rotation-status", _rotation_status, "show rotation state, period and next date")
    _cmd(sub, "rotate-key", _rotate, "rotate the key material now (on-demand rotation)")
    p = _cmd(sub, "list-key-rotations", _list_rotations, "list completed rotations")
    p.add_argument("--all", action="store_true", help="include the original key material")

    p = _cmd(sub, "encrypt", _encrypt, "encrypt a file of up to 4096 bytes")
    p.add_argument("--in", dest="infile", required=True, metavar="FILE", help="plaintext file ('-' for stdin)")
    p.add_argument("--out", dest="outfile", required=True, metavar="FILE", help="ciphertext file ('-' for stdout)")
    p.add_argument("--context", action="append", metavar="KEY=VALUE", help="encryption context pair (repeatable)")
    p = _cmd(sub, "decrypt", _decrypt, "decrypt a ciphertext file", key=False)
    p.add_argument("--in", dest="infile", required=True, metavar="FILE", help="ciphertext file ('-' for stdin)")
    p.add_argument("--out", dest="outfile", required=True, metavar="FILE", help="plaintext file ('-' for stdout)")
    p.add_argument("--context", action="append", metavar="KEY=VALUE", help="the encryption context it was encrypted with")
    p.add_argument("--key", default=None, help="require this key (IncorrectKeyException otherwise)")

    p = _cmd(sub, "create-grant", _create_grant, "allow a principal to use a key")
    p.add_argument("--grantee", required=True, metavar="ARN")
    p.add_argument("--operations", required=True, action="append", metavar="OP[,OP...]",
                   help="e.g. Decrypt,Encrypt,GenerateDataKey,DescribeKey,RetireGrant")
    p.add_argument("--retiring-principal", metavar="ARN")
    p.add_argument("--name", help="makes the call idempotent")
    p.add_argument("--context-subset", action="append", metavar="KEY=VALUE",
                   help="constraint: the request's context must include these pairs")
    p.add_argument("--context-equals", action="append", metavar="KEY=VALUE",
                   help="constraint: the request's context must be exactly these pairs")
    _cmd(sub, "list-grants", _list_grants, "list a key's grants")
    p = _cmd(sub, "list-retirable-grants", _list_retirable, "list grants a principal may retire", key=False)
    p.add_argument("principal_arn", metavar="PRINCIPAL_ARN")
    p = _cmd(sub, "retire-grant", _retire_grant, "retire a grant (by token, or KEY GRANT_ID)", key=False)
    p.add_argument("key", metavar="KEY", nargs="?")
    p.add_argument("grant_id", metavar="GRANT_ID", nargs="?")
    p.add_argument("--token", metavar="GRANT_TOKEN")
    p = _cmd(sub, "revoke-grant", _revoke_grant, "revoke a grant")
    p.add_argument("grant_id", metavar="GRANT_ID")
    p = _cmd(sub, "put-key-policy", _put_policy, "replace a key's policy with the JSON in FILE")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--bypass-policy-lockout-safety-check", action="store_true")
    _cmd(sub, "get-key-policy", _get_policy, "print a key's policy")

    audit_cmd.register_audit(sub)
    server_cmd.register_serve(sub)
