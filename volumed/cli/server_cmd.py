"""`volumed kms serve` and the key server's access keys (`volumed iam create-access-key`,
`list-access-keys`, `delete-access-key`).

Registered into the ``kms`` and ``iam`` groups by volumed.cli.kms_cmd and volumed.cli.iam_cmd. The
access-key commands work on the server's keystore directory (--kms DIR): whoever holds that
directory holds the root key and is the server's administrator. Code: volumed.kms.server.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys

from volumed.errors import UsageError
from volumed.hardening import holds_keys


def _keystore_dir(args) -> str:
    from volumed import kms

    spec = args.kms if args.kms is not None else kms.default_spec()
    if spec == "aws" or spec.startswith(("https://", "http://")):
        raise UsageError("access keys are issued by the key server's administrator on the server's "
                         "keystore directory; give it with --kms DIR on the server")
    return spec


@holds_keys
def _serve(args) -> int:
    from volumed.kms.server import serve

    if args.check:
        url = args.url or f"{'http' if args.insecure_http else 'https'}://{args.listen}"
        ca = args.ca_bundle
        if ca is None and url.startswith("https://"):
            from volumed.kms.server.tls import TLS_DIR

            own = os.path.join(_keystore_dir(args), TLS_DIR, "cert.pem")
            ca = own if os.path.exists(own) else None
        ok, line = serve.check(url, ca)
        print(f"volumed: {line}", file=sys.stdout if ok else sys.stderr)
        return 0 if ok else 1
    return serve.serve(keystore=_keystore_dir(args), listen=args.listen, tls_cert=args.tls_cert,
                       tls_key=args.tls_key, insecure_http=args.insecure_http, rate=args.rate_limit,
                       burst=args.rate_burst, fake_time=args.fake_time, workers=args.workers)


def register_serve(sub) -> None:
    from volumed.kms.server import serve as serve_mod
    from volumed.kms.server.app import DEFAULT_RATE
    from volumed.kms.server.serve import DEFAULT_LISTEN

    p = sub.add_parser(
        "serve", help="serve the keystore to many hosts over the AWS KMS protocol (SigV4, TLS)",
        description="Serve the keystore at --kms DIR as an AWS KMS endpoint (JSON 1.1, SigV4 with "
                    "access keys from 'volumed iam create-access-key'). TLS with a self-signed "
                    "certificate made on first start unless --tls-cert/--tls-key. Prints one JSON "
                    "line (url, certificate, fingerprint) when it listens. See docs/KMS.md.")
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="ADDR:PORT",
                   help=f"address to listen on (default {DEFAULT_LISTEN}; port 0 picks a free one)")
    p.add_argument("--kms", "--keystore", dest="kms", metavar="DIR", default=None,
                   help="the keystore directory to serve (default: $VOLUMED_KMS or the default keystore)")
    p.add_argument("--tls-cert", metavar="FILE", default=None)
    p.add_argument("--tls-key", metavar="FILE", default=None)
    p.add_argument("--insecure-http", action="store_true",
                   help="plain HTTP (allowed only on a loopback address; tests and local tools)")
    p.add_argument("--rate-limit", type=float, default=DEFAULT_RATE, metavar="N",
                   help=f"requests per second per principal (default {DEFAULT_RATE:.0f}; 0 = no limit)")
    p.add_argument("--rate-burst", type=float, default=None, metavar="N",
                   help="bucket size (default twice the rate)")
    p.add_argument("--workers", type=int, default=serve_mod.default_workers(), metavar="N",
                   help="server processes accepting on the socket (default: CPUs, at most 4); "
                        "rate limits apply per process")
    p.add_argument("--check", action="store_true",
                   help="readiness probe: exit 0 if the server at --listen (or --url) answers")
    p.add_argument("--url", default=None, help="with --check: the server's URL")
    p.add_argument("--ca-bundle", default=None, metavar="FILE", help="with --check: the certificate to trust")
    p.add_argument("--fake-time", type=float, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=_serve)


@holds_keys
def _create_key(args) -> int:
    import time

    from volumed.kms.server import accesskeys
    from volumed.kms.store.keystore import Keystore

    store = Keystore(_keystore_dir(args))
    try:
        key_id, secret = accesskeys.create(store, args.principal_arn, args.service, time.time())
    finally:
        store.close()
    if args.json:
        print(json.dumps({"AccessKey": {"AccessKeyId": key_id, "SecretAccessKey": secret,
                                        "Principal": args.principal_arn, "Service": args.service,
                                        "Status": "Active"}}, indent=2))
    else:
        print(f"AccessKeyId      {key_id}\nSecretAccessKey  {secret}\nPrincipal        {args.principal_arn}"
              + (f"\nService          {args.service}" if args.service else "")
              + "\n(the secret is shown only now; store it in the host's AWS credentials file)")
    return 0


def _list_keys(args) -> int:
    from volumed.kms.server import accesskeys
    from volumed.kms.store.keystore import Keystore

    store = Keystore(_keystore_dir(args))
    try:
        rows = accesskeys.listing(store, args.principal)
    finally:
        store.close()
    if args.json:
        print(json.dumps({"AccessKeyMetadata": rows}, indent=2))
        return 0
    for r in rows:
        created = _dt.datetime.fromtimestamp(r["Created"], _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        print(f"{r['AccessKeyId']}  {created}  {r['Principal']}" + (f"  service={r['Service']}" if r["Service"] else ""))
    return 0


def _delete_key(args) -> int:
    from volumed.kms.server import accesskeys
    from volumed.kms.store.keystore import Keystore

    store = Keystore(_keystore_dir(args))
    try:
        accesskeys.delete(store, args.access_key_id)
    finally:
        store.close()
    print(f"deleted access key {args.access_key_id}")
    return 0


def register_access_keys(sub) -> None:
    def common(p):
        p.add_argument("--kms", metavar="DIR", default=None, help="the key server's keystore directory")
        p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("create-access-key", help="issue a key-server access key for a principal",
                       description="Issue an access key (id and secret, printed once) that signs "
                                   "requests to 'volumed kms serve' as PRINCIPAL_ARN.")
    p.add_argument("principal_arn", metavar="PRINCIPAL_ARN")
    p.add_argument("--service", default=None, metavar="SERVICE",
                   help="mark it a service credential (e.g. rds.amazonaws.com): it may act on behalf "
                        "of a user with kms:ViaService (docs/KMS.md)")
    common(p)
    p.set_defaults(func=_create_key)
    p = sub.add_parser("list-access-keys", help="list the key server's access keys (no secrets)")
    p.add_argument("--principal", default=None, metavar="ARN", help="only this principal's")
    common(p)
    p.set_defaults(func=_list_keys)
    p = sub.add_parser("delete-access-key", help="delete an access key (effective on the next request)")
    p.add_argument("access_key_id", metavar="ACCESS_KEY_ID")
    common(p)
    p.set_defaults(func=_delete_key)
