"""The state of one key-service call while its transaction is open.

Built by volumed.kms.service for every call and handed to the operation functions
(volumed.kms.ops.*_ops): the connection, the keystore, the clock, who is calling, and the helpers
every operation needs (raising AWS errors, authorising an action on a key, noting a change).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field

from botocore.exceptions import ClientError

from volumed.clock import Clock
from volumed.kms import awsmodel
from volumed.kms.arn import Arn, KEYSTORE_PARTITION
from volumed.kms.awsmodel import Params
from volumed.kms.policy.authz import AuthzRequest
from volumed.kms.store import grantstore, iamstore
from volumed.kms.store.keystore import Keystore
from volumed.kms.values import Grant, GrantTerms, Key

# (action, key or None, request) -> None; raises the AccessDeniedException ClientError to refuse.
Authorizer = Callable[[str, Key | None, AuthzRequest], None]


@dataclass
class CallContext:
    conn: sqlite3.Connection
    store: Keystore
    clock: Clock
    principal: str
    via_service: str | None
    operation: str           # e.g. "Decrypt"
    params: Params
    authorizer: Authorizer
    changed: bool = False
    destroyed: bool = False  # a key was destroyed: the WAL is checkpointed after commit
    key_arns: list[str] = field(default_factory=list)
    _now: float | None = None

    @property
    def account(self) -> str:
        return self.store.account_id

    @property
    def region(self) -> str:
        return self.store.region

    def now(self) -> float:
        """The call's time (epoch seconds), fixed once per call."""
        if self._now is None:
            self._now = float(self.clock.time())
        return self._now

    def error(self, code: str, message: str) -> ClientError:
        """The ClientError to raise for ``code`` in this operation."""
        return awsmodel.client_error(code, message, self.operation)

    def change(self) -> None:
        """Note that this call changed the keystore (the change counter moves at commit)."""
        self.changed = True

    def key_arn(self, key_id: str) -> str:
        return str(Arn(KEYSTORE_PARTITION, "kms", self.region, self.account, f"key/{key_id}"))

    def alias_arn(self, alias: str) -> str:
        return str(Arn(KEYSTORE_PARTITION, "kms", self.region, self.account, alias))

    def authorize(self, action: str, key: Key | None, *, grant_request: GrantTerms | None = None,
                  grant: Grant | None = None, new_policy: str | None = None,
                  bypass_lockout_check: bool = False, retiring_principal: str | None = None) -> None:
        """Ask the authorizer whether the caller may do ``action`` on ``key`` (None for calls on
        no key). The request carries who calls, through which service, the encryption context
        and grant tokens of the call, the key's grants, the caller's identity policies
        (volumed.kms.store.iamstore) and the operation's own members (e.g. the grant request)."""
        params = self.params
        context = params.get("EncryptionContext")
        if context is None and self.operation == "ReEncrypt":
            context = params.get("DestinationEncryptionContext") if action == "kms:ReEncryptTo" \
                else params.get("SourceEncryptionContext")
        tokens = tuple(params.get("GrantTokens") or ())
        request = AuthzRequest(
            principal=self.principal, via_service=self.via_service, operation=self.operation,
            account=self.account, region=self.region, encryption_context=dict(context or {}),
            grant_tokens=tokens, token_grants=tuple(grantstore.grants_for_tokens(self.conn, tokens)),
            grants=tuple(grantstore.grants_of_key(self.conn, key.key_id)) if key else (),
            identity_policies=tuple(iamstore.policies_for_caller(self.conn, self.principal)),
            time=self.now(), grant_request=grant_request, grant=grant, new_policy=new_policy,
            bypass_lockout_check=bypass_lockout_check, retiring_principal=retiring_principal)
        if key is not None and key.arn not in self.key_arns:
            self.key_arns.append(key.arn)
        self.authorizer(action, key, request)
