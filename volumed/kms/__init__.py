"""The key service: ``connect(spec)`` gives a boto3-compatible KMS client.

    spec = a keystore directory  -> the embedded service (volumed.kms.service.EmbeddedKMS)
    spec = "aws"                 -> boto3.client("kms"), configured the usual boto3 way
    spec = "https://..."         -> boto3.client("kms", endpoint_url=spec)

Callers: the CLI (volumed.cli.common.kms_client), the volume format, the mount daemon, tests and
users' own code.

Inside, by concern and in layers (docs/ARCHITECTURE.md; import-linter checks the order): server/
(``volumed kms serve``) over service.py (EmbeddedKMS) over ops/ (the operations) over store/ (the
keystore) over audit/ (the log) over policy/ (pure authorization) over principals.py, awsmodel.py
and values.py (Key, Grant) over arn.py.
"""

from __future__ import annotations

import os
from typing import Any

from volumed.clock import Clock

ENV_SPEC = "VOLUMED_KMS"
SYSTEM_KEYSTORE = "/var/lib/volumed"


def default_spec() -> str:
    """$VOLUMED_KMS, else /var/lib/volumed as root, else $XDG_DATA_HOME/volumed or
    ~/.local/share/volumed."""
    spec = os.environ.get(ENV_SPEC)
    if spec:
        return spec
    if os.geteuid() == 0:
        return SYSTEM_KEYSTORE
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "volumed")


def connect(spec: str | None = None, principal: str | None = None, via_service: str | None = None,
            clock: Clock | None = None, profile: str | None = None) -> Any:
    """A KMS client for ``spec`` (default ``default_spec()``). For the embedded service,
    ``principal`` defaults to the keystore's user for the current login; ``clock`` (a
    volumed.clock.Clock) drives rotation and deletion windows. For AWS, principal and via_service
    come from the boto3 credentials (of AWS profile ``profile`` if given) and are ignored here;
    an endpoint URL (``volumed kms serve``) with no region configured gets $VOLUMED_REGION or
    us-east-1, and its CA bundle comes from AWS_CA_BUNDLE or the profile's ca_bundle.
    Typed Any: boto3's clients are untyped; EmbeddedKMS has the same methods."""
    spec = spec or default_spec()
    if spec == "aws" or spec.startswith(("https://", "http://")):
        import boto3  # an optional path: only --kms aws / https:// needs boto3

        session = boto3.Session(profile_name=profile)
        if spec == "aws":
            return session.client("kms")
        region = session.region_name or os.environ.get("VOLUMED_REGION") or "us-east-1"
        return session.client("kms", endpoint_url=spec, region_name=region)
    # The service loads botocore and its KMS model (~170 ms); importing volumed.kms for
    # default_spec() or volumed.kms.principals (~15 ms) must not pay for it.
    from volumed.kms.service import EmbeddedKMS  # deferred: start-up cost (botocore, ~170 ms)
    from volumed.kms.store.keystore import Keystore  # deferred: start-up cost (with the service)

    return EmbeddedKMS(Keystore(spec), principal=principal, via_service=via_service, clock=clock)
