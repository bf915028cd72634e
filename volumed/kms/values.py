"""The key service's value types: a key and a grant as the service holds them.

Before these, keys and grants were dicts whose members were named only in docstrings (a keys row
with AWS names mixed in, grants in the ListGrants wire shape). Now a ``Key`` is one row of the
keys table and a ``Grant`` one stored grant; both are frozen. The wire shapes AWS returns
(KeyMetadata, GrantListEntry) stay dicts, built from these by the operations and the grant store
(typed in volumed.kms.awsmodel). Callers: volumed.kms.policy (grant semantics, authorization),
volumed.kms.store (grants as stored), volumed.kms.ops (keys), the service.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Mapping
from typing import Any

# CreateGrant's Constraints as stored: constraint type (EncryptionContextSubset,
# EncryptionContextEquals) -> the encryption-context pairs it names.
Constraints = dict[str, dict[str, str]]


@dataclasses.dataclass(frozen=True)
class Key:
    """One KMS key: a row of the keystore's ``keys`` table (docs/KMS.md). Times are epoch seconds;
    ``state`` is Enabled, Disabled or PendingDeletion; ``policy`` the key policy text as stored."""

    key_id: str
    arn: str
    created: float
    description: str
    key_usage: str
    key_spec: str
    key_manager: str  # CUSTOMER or AWS
    origin: str
    state: str
    deletion_date: float | None
    pending_window: int | None
    policy: str
    rotation_enabled: bool
    rotation_period: int | None
    rotation_anchor: float | None
    on_demand_count: int
    current_version: int

    @classmethod
    def from_row(cls, row: sqlite3.Row | Mapping[str, Any]) -> Key:
        """A ``keys`` row (sqlite3.Row or dict with the column names) as a Key."""
        return cls(
            key_id=row["key_id"], arn=row["arn"], created=row["created"], description=row["description"],
            key_usage=row["key_usage"], key_spec=row["key_spec"], key_manager=row["key_manager"],
            origin=row["origin"], state=row["state"], deletion_date=row["deletion_date"],
            pending_window=row["pending_window"], policy=row["policy"],
            rotation_enabled=bool(row["rotation_enabled"]), rotation_period=row["rotation_period"],
            rotation_anchor=row["rotation_anchor"], on_demand_count=row["on_demand_count"],
            current_version=row["current_version"])


@dataclasses.dataclass(frozen=True)
class GrantTerms:
    """What a grant allows, and to whom: CreateGrant's request, before the grant exists (the
    authorizer checks a grant created through another grant against it)."""

    grantee: str
    operations: tuple[str, ...]
    constraints: Constraints | None = None
    retiring: str | None = None
    name: str | None = None


@dataclasses.dataclass(frozen=True)
class Grant:
    """A stored grant. ``key_arn`` is the ARN of its key (ListGrants' KeyId); ``issuing_account``
    the root ARN of the account that created it; ``created`` epoch seconds."""

    key_arn: str
    grant_id: str
    created: float
    grantee: str
    issuing_account: str
    operations: tuple[str, ...]
    constraints: Constraints | None = None
    retiring: str | None = None
    name: str | None = None
