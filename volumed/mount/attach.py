"""The EBS attach flow: the user's grant to the host, and its retirement.

Caller: volumed.mount.client (``volumed mount``) calls ``create_grant`` as the user, through the
service (ViaService rds), before starting the daemon; the daemon calls ``retire_grant`` as the host
(the grant's retiring principal) when it unmounts.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import socket
from dataclasses import dataclass

from botocore.exceptions import BotoCoreError

from volumed.errors import KeyAccessError, VolumedError, aws_error_code
from volumed.kms.arn import Arn
from volumed.kms.principals import host_arn
from volumed.mount import keyservice
from volumed.mount.keyservice import KmsClient

# What the host needs, and no more: Decrypt to unwrap the data key at open; the monitor's check is a
# GenerateDataKeyWithoutPlaintext under the volume's context (authorised exactly like Decrypt, and
# returns no plaintext). RetireGrant needs no operation: the host is the retiring principal.
HOST_OPERATIONS = ["Decrypt", "GenerateDataKeyWithoutPlaintext"]

log = logging.getLogger("volumed.mount")


@dataclass
class Grant:
    """A grant to the host for one volume. ``token`` makes it usable at once."""

    grant_id: str
    token: str
    key_arn: str
    host_principal: str

    def to_json(self) -> dict[str, str]:
        return {"grant_id": self.grant_id, "token": self.token, "key_arn": self.key_arn,
                "host_principal": self.host_principal}

    @classmethod
    def from_json(cls, d: dict[str, str]) -> "Grant":
        return cls(d["grant_id"], d["token"], d["key_arn"], d["host_principal"])


def grant_name(volume_uuid: str, hostname: str) -> str:
    """The grant's Name: the same volume on the same host reuses its grant (CreateGrant is
    idempotent by Name)."""
    host = re.sub(r"[^A-Za-z0-9:/_-]", "-", hostname)
    return f"volumed-{volume_uuid}-{host}"[:256]


def host_principal(key_arn: str, hostname: str | None = None) -> str:
    """The host principal of this machine in the key's account and partition."""
    key = keyservice.key_arn(key_arn)
    host = Arn.parse(host_arn(key.account, hostname or socket.gethostname()))
    return str(dataclasses.replace(host, partition=key.partition))


def create_grant(user_client: KmsClient, *, key_arn: str, context: dict[str, str], volume_uuid: str,
                 volume_name: str, hostname: str | None = None, grantee: str | None = None) -> Grant:
    """DescribeKey then CreateGrant as the user; the grant lets the host use the key for this
    volume's context only. ``grantee`` overrides the hostname's principal (a key server's
    host access key). Raises KeyAccessError (with the AWS code) when the user may not attach."""
    hostname = hostname or socket.gethostname()
    try:
        meta = user_client.describe_key(KeyId=key_arn)["KeyMetadata"]
        arn = meta["Arn"]
        host = grantee or host_principal(arn, hostname)
        resp = user_client.create_grant(
            KeyId=arn, GranteePrincipal=host, RetiringPrincipal=host,
            Operations=list(HOST_OPERATIONS),
            Constraints={"EncryptionContextSubset": dict(context)},
            Name=grant_name(volume_uuid, hostname),
        )
    except Exception as exc:
        code = aws_error_code(exc)
        if code is None:
            if keyservice.classify(exc) == "transient" and _is_service_failure(exc):
                raise VolumedError(f"cannot attach {volume_name}: the key service did not answer "
                                   f"({keyservice.error_message(exc)}); check --kms and try again",
                                   code="KMSUnreachable") from None
            raise
        raise KeyAccessError(
            f"cannot attach {volume_name}: {keyservice.error_message(exc)} "
            f"(attaching needs kms:DescribeKey and kms:CreateGrant on {key_arn} for your principal, "
            f"and an enabled key)", code=code) from None
    return Grant(resp["GrantId"], resp["GrantToken"], arn, host)


def _is_service_failure(exc: BaseException) -> bool:
    """True for failures to reach the key service (connection, timeout), not bugs."""
    return isinstance(exc, (BotoCoreError, OSError))


class Attachment:
    """This host's hold on a volume's key for one mount: the host's key-service client and the
    grant, retired at most once (``retire``), whichever of the daemon's exits comes first."""

    def __init__(self, host_client: KmsClient, grant: Grant):
        self.host_client = host_client
        self.grant = grant
        self.retired = False

    def retire(self) -> None:
        """RetireGrant as the host, once; the outcome goes to the daemon's log."""
        if self.retired:
            return
        self.retired = True
        why = retire_grant(self.host_client, self.grant)
        log.info("grant %s %s", self.grant.grant_id, "retired" if why is None else f"not retired: {why}")


def retire_grant(host_client: KmsClient, grant: Grant) -> str | None:
    """RetireGrant as the host. Returns None on success, else the one-line reason (the key may be
    disabled or deleted, or the grant already revoked; none of that stops an unmount)."""
    try:
        host_client.retire_grant(KeyId=grant.key_arn, GrantId=grant.grant_id)
    except Exception as exc:  # reported by the caller, never fatal to the unmount
        return keyservice.error_message(exc)
    return None
