"""The state of one key-service call while its transaction is open.

Built by volumed.kms.service for every call and handed to the operation functions
(volumed.kms.ops_*): the connection, the keystore, the clock, who is calling, and the helpers every
operation needs (raising AWS errors, authorising an action on a key, noting a change).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from volumed.kms import awsmodel
from volumed.kms.arn import Arn, KEYSTORE_PARTITION
from volumed.kms.store import grantstore, iamstore


@dataclass
class CallContext:
    conn: object
    store: object            # volumed.kms.store.keystore.Keystore
    clock: object            # volumed.clock.Clock
    principal: str
    via_service: str | None
    operation: str           # e.g. "Decrypt"
    params: dict
    authorizer: object       # callable(action, key, request) -> None (raises AccessDenied)
    changed: bool = False
    destroyed: bool = False  # a key was destroyed: the WAL is checkpointed after commit
    key_arns: list = field(default_factory=list)
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

    def error(self, code: str, message: str):
        """The ClientError to raise for ``code`` in this operation."""
        return awsmodel.client_error(code, message, self.operation)

    def change(self) -> None:
        """Note that this call changed the keystore (the change counter moves at commit)."""
        self.changed = True

    def key_arn(self, key_id: str) -> str:
        return str(Arn(KEYSTORE_PARTITION, "kms", self.region, self.account, f"key/{key_id}"))

    def alias_arn(self, alias: str) -> str:
        return str(Arn(KEYSTORE_PARTITION, "kms", self.region, self.account, alias))

    def authorize(self, action: str, key: dict | None, **extra) -> None:
        """Ask the authorizer whether the caller may do ``action`` on ``key`` (None for calls on
        no key). The request carries who calls, through which service, the key's ARN, the
        encryption context and grant tokens of the call, the key's grants, the caller's identity
        policies (volumed.kms.store.iamstore) and ``extra`` (e.g. the grant request)."""
        params = self.params
        context = params.get("EncryptionContext")
        if context is None and self.operation == "ReEncrypt":
            context = params.get("DestinationEncryptionContext") if action == "kms:ReEncryptTo" \
                else params.get("SourceEncryptionContext")
        tokens = list(params.get("GrantTokens") or [])
        request = {
            "principal": self.principal,
            "via_service": self.via_service,
            "action": action,
            "operation": self.operation,
            "account": self.account,
            "region": self.region,
            "key_arn": key["Arn"] if key else None,
            "encryption_context": dict(context or {}),
            "grant_tokens": tokens,
            "token_grants": grantstore.grants_for_tokens(self.conn, tokens),
            "grants": grantstore.grants_of_key(self.conn, key["KeyId"]) if key else [],
            "identity_policies": iamstore.policies_for_caller(self.conn, self.principal),
            "time": self.now(),
        }
        request.update(extra)
        if key is not None and key["Arn"] not in self.key_arns:
            self.key_arns.append(key["Arn"])
        self.authorizer(action, key, request)

