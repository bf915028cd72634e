"""Principal ARNs the embedded key service uses for the people and hosts of a keystore.

Callers: volumed.kms.service (the client's default principal), the CLI (``--principal`` defaults and
grants to the host), the mount daemon (which calls as the host principal), tests.
"""

from __future__ import annotations

import getpass
import os
import socket
from typing import Protocol

from volumed.kms.arn import Arn, KEYSTORE_PARTITION


def user_arn(account: str, login: str) -> str:
    """The IAM user ARN of ``login`` in ``account``."""
    return str(Arn(KEYSTORE_PARTITION, "iam", "", account, f"user/{login}"))


def host_arn(account: str, hostname: str) -> str:
    """The assumed-role session ARN a host serving mounts calls as (role ``volumed-host``)."""
    return str(Arn(KEYSTORE_PARTITION, "sts", "", account, f"assumed-role/volumed-host/{hostname}"))


def root_arn(account: str) -> str:
    """The account principal named in default key policies."""
    return str(Arn.root(KEYSTORE_PARTITION, account))


def rds_via(region: str) -> str:
    """The kms:ViaService value of calls RDS makes on a user's behalf."""
    return f"rds.{region}.amazonaws.com"


def current_login() -> str:
    """The login name of this process (falls back to the uid when there is none)."""
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry, no LOGNAME: a container uid
        return f"uid{os.getuid()}"


class _HasAccount(Protocol):
    """A key-service client that names its keystore's account (EmbeddedKMS.account_id)."""

    def account_id(self) -> str: ...


def default_user_principal(client: _HasAccount) -> str:
    """The keystore's user ARN for the current login (the CLI's and the tests' default caller)."""
    return user_arn(client.account_id(), current_login())


def default_host_principal(client: _HasAccount) -> str:
    """The host principal of this machine on the client's keystore."""
    return host_arn(client.account_id(), socket.gethostname())
