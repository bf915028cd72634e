"""The embedded key service client: boto3's ``kms`` client, served from a local keystore.

``EmbeddedKMS`` has boto3's method names, parameters, responses and errors for every operation in
``OPERATIONS``. Every call goes through ``_call``: botocore's client-side validation, AWS's
server-side constraints, one BEGIN IMMEDIATE transaction (time effects, KeyId resolution,
``_authorize``, the operation, the audit record, the change counter), commit. A ClientError rolls
the transaction back and is recorded in the audit log in a transaction of its own. Policies are
evaluated outside the transaction (volumed.kms.policy.decisions): a call whose authorization is not yet
decided rolls back, is decided with no lock held, and runs again (an operation may so run more
than once in one call; only its committed run has effects).

Non-AWS extensions (not in boto3; code that must also run against AWS must not rely on them):
``account_id()``, ``region()``, ``principal``, ``via_service``, ``change_counter()``,
``with_identity(principal=..., via_service=...)``, ``keystore_path``, and the identity-policy
calls (IAM's job in AWS; not in the KMS audit log; volumed.kms.ops.iam_ops decides who may make them):
``put_principal_policy(PrincipalArn=, PolicyName=, PolicyDocument=)``,
``get_principal_policy(PrincipalArn=, PolicyName=)`` -> {PrincipalArn, PolicyName, PolicyDocument},
``list_principal_policies(PrincipalArn=None)`` -> {Policies: [{PrincipalArn, PolicyName}]},
``delete_principal_policy(PrincipalArn=, PolicyName=)``.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
import types
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from botocore.exceptions import ClientError
from botocore.paginate import Paginator

from volumed.clock import Clock, SYSTEM_CLOCK, iso_utc
from volumed.errors import aws_error_code, aws_error_message
from volumed.kms import audit, awsmodel, principals
from volumed.kms.arn import Arn
from volumed.kms.awsmodel import Params, Response
from volumed.kms.ops import alias_ops, crypto_ops, grant_ops, iam_ops, key_ops, keys, managed, rotation_ops
from volumed.kms.ops.context import CallContext
from volumed.kms.policy import authz, decisions
from volumed.kms.policy.authz import AuthzRequest
from volumed.kms.policy.policy import Decision, Request
from volumed.kms.store import grantstore
from volumed.kms.store.keystore import Keystore
from volumed.kms.values import Key

T = TypeVar("T")
Operation = Callable[[CallContext, Params], Response]

# boto3 method name -> operation function
OPERATIONS: dict[str, Operation] = {
    "create_key": key_ops.create_key,
    "describe_key": key_ops.describe_key,
    "list_keys": key_ops.list_keys,
    "enable_key": key_ops.enable_key,
    "disable_key": key_ops.disable_key,
    "schedule_key_deletion": key_ops.schedule_key_deletion,
    "cancel_key_deletion": key_ops.cancel_key_deletion,
    "update_key_description": key_ops.update_key_description,
    "get_key_policy": key_ops.get_key_policy,
    "put_key_policy": key_ops.put_key_policy,
    "list_key_policies": key_ops.list_key_policies,
    "create_alias": alias_ops.create_alias,
    "update_alias": alias_ops.update_alias,
    "delete_alias": alias_ops.delete_alias,
    "list_aliases": alias_ops.list_aliases,
    "enable_key_rotation": rotation_ops.enable_key_rotation,
    "disable_key_rotation": rotation_ops.disable_key_rotation,
    "get_key_rotation_status": rotation_ops.get_key_rotation_status,
    "rotate_key_on_demand": rotation_ops.rotate_key_on_demand,
    "list_key_rotations": rotation_ops.list_key_rotations,
    "encrypt": crypto_ops.encrypt,
    "decrypt": crypto_ops.decrypt,
    "re_encrypt": crypto_ops.re_encrypt,
    "generate_data_key": crypto_ops.generate_data_key,
    "generate_data_key_without_plaintext": crypto_ops.generate_data_key_without_plaintext,
    "create_grant": grant_ops.create_grant,
    "list_grants": grant_ops.list_grants,
    "list_retirable_grants": grant_ops.list_retirable_grants,
    "retire_grant": grant_ops.retire_grant,
    "revoke_grant": grant_ops.revoke_grant,
}

_READ_ONLY_PREFIXES = ("Describe", "List", "Get")
_CRYPTO_OPS = {"Encrypt", "Decrypt", "ReEncrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext"}
_KEY_REF_PARAMS = ("KeyId", "TargetKeyId", "DestinationKeyId", "SourceKeyId")
_BLOB_PARAMS = ("Plaintext", "CiphertextBlob")


class _Unset:
    """The default of with_identity's arguments: keep this client's value."""


_UNSET = _Unset()


def _blob_bytes(value: Any) -> bytes:
    """boto3 accepts bytes, bytearray, str (UTF-8) and readable objects for blob members."""
    if isinstance(value, str):
        return value.encode()
    if hasattr(value, "read"):
        return bytes(value.read())
    return bytes(value)


def _camel(obj: Any) -> Any:
    """Request/response members in CloudTrail's lowerCamel form, times as ISO strings; blob
    members (plaintext, ciphertext) left out entirely."""
    if isinstance(obj, dict):
        return {(k[0].lower() + k[1:] if k else k): _camel(v) for k, v in obj.items()
                if k != "ResponseMetadata" and not isinstance(v, (bytes, bytearray))}
    if isinstance(obj, list):
        return [_camel(v) for v in obj]
    if isinstance(obj, dt.datetime):
        return iso_utc(obj)
    return obj


class EmbeddedKMS:
    """A boto3-compatible KMS client on a keystore directory. Thread-safe. Obtain it through
    ``volumed.kms.connect``."""

    def __init__(self, store: Keystore, principal: str | None = None, via_service: str | None = None,
                 clock: Clock | None = None):
        self._store = store
        self._clock = clock or SYSTEM_CLOCK
        self.principal = principal or principals.user_arn(store.account_id, principals.current_login())
        self._decide_inside = threading.local()  # .active: this thread's last pass decides inside
        self.via_service = via_service
        # Extension: what a network call's audit record carries (source_ip, user_agent,
        # access_key_id, request_id: audit.record_call); set by volumed.kms.server per request.
        self.request_meta: audit.RequestMeta = {}
        self.exceptions = awsmodel.exceptions()
        self.meta = types.SimpleNamespace(region_name=store.region, service_model=awsmodel.service_model(),
                                          endpoint_url=None)

    # -- non-AWS extensions ---------------------------------------------------------------------
    @property
    def keystore_path(self) -> str:
        """Extension: the keystore directory."""
        return self._store.directory

    def account_id(self) -> str:
        """Extension: the keystore's 12-digit account id."""
        return self._store.account_id

    def region(self) -> str:
        """Extension: the keystore's region."""
        return self._store.region

    def change_counter(self) -> int:
        """Extension: a number that goes up whenever anything in the keystore changes (any
        process). Cheap and not audited; the mount's key monitor polls it. A deletion window that
        has ended is applied here too, so watchers see a key's destruction without other calls."""
        with self._store.lock:
            if keys.deletion_due(self._store.conn, self._clock.time()):
                self.apply_time_effects()
            return self._store.change_counter()

    def apply_time_effects(self) -> None:
        """Extension: destroy keys whose deletion window has ended and rotate keys whose rotation is
        due, in a transaction of their own (not audited, as no call is made), then checkpoint the
        WAL. Callers: ``change_counter`` here and the key server's when a deletion is due."""
        def sweep(conn: sqlite3.Connection) -> None:
            ctx = self._context(conn, "ChangeCounter", {})
            keys.apply_time_effects(ctx)
            if ctx.changed:
                Keystore.bump(conn)
        self._store.run(sweep)
        self._store.checkpoint()

    def with_identity(self, principal: str | None | _Unset = _UNSET,
                      via_service: str | None | _Unset = _UNSET) -> "EmbeddedKMS":
        """Extension: a client on the same keystore calling as another principal and/or through
        another service (unnamed arguments keep this client's values)."""
        return EmbeddedKMS(self._store,
                           self.principal if isinstance(principal, _Unset) else principal,
                           self.via_service if isinstance(via_service, _Unset) else via_service,
                           self._clock)

    # -- identity policies (extensions; volumed.kms.ops.iam_ops) -----------------------------------------
    def _iam(self, fn: Callable[[sqlite3.Connection], T], change: bool) -> T:
        """Run one IAM extension call in its own transaction (change counter bumped if ``change``),
        its identity-policy decisions made outside the write lock (``_identity_decision``)."""
        def txn(conn: sqlite3.Connection) -> T:
            result = fn(conn)
            if change:
                Keystore.bump(conn)
            return result
        return self._run_deciding_outside(txn)

    def put_principal_policy(self, *, PrincipalArn: str, PolicyName: str, PolicyDocument: str) -> Response:
        """Extension: attach (or replace) an identity policy of an IAM user or role ARN."""
        self._iam(lambda conn: iam_ops.put_policy(conn, self.principal, self.account_id(), PrincipalArn,
                                              PolicyName, PolicyDocument, self._clock.time(),
                                              self._identity_decision), True)
        return {}

    def get_principal_policy(self, *, PrincipalArn: str, PolicyName: str) -> Response:
        """Extension: one attached identity policy's document."""
        doc = self._iam(lambda conn: iam_ops.get_policy(conn, self.principal, self.account_id(), PrincipalArn,
                                                    PolicyName, self._identity_decision), False)
        return {"PrincipalArn": PrincipalArn, "PolicyName": PolicyName, "PolicyDocument": doc}

    def list_principal_policies(self, *, PrincipalArn: str | None = None) -> Response:
        """Extension: attached identity policies, of one principal or of all the caller may list."""
        rows = self._iam(lambda conn: iam_ops.list_policies(conn, self.principal, self.account_id(),
                                                        PrincipalArn, self._identity_decision), False)
        return {"Policies": [{"PrincipalArn": p, "PolicyName": n} for p, n in rows]}

    def delete_principal_policy(self, *, PrincipalArn: str, PolicyName: str) -> Response:
        """Extension: detach an identity policy."""
        self._iam(lambda conn: iam_ops.delete_policy(conn, self.principal, self.account_id(), PrincipalArn,
                                                 PolicyName, self._identity_decision), True)
        return {}

    def close(self) -> None:
        """Close the keystore (for every client sharing it) and wipe the root key from memory."""
        self._store.close()

    def can_paginate(self, method: str) -> bool:
        """As boto3: whether ``get_paginator(method)`` exists."""
        return method in OPERATIONS and \
            awsmodel.operation_name(method) in awsmodel.paginator_model()._paginator_config

    def get_paginator(self, method: str) -> Any:
        """boto3's paginator for a List* method (botocore's own Paginator over this client)."""
        if not self.can_paginate(method):
            raise ValueError(f"Operation cannot be paginated: {method}")
        op = awsmodel.operation_name(method)
        return Paginator(getattr(self, method), awsmodel.paginator_model().get_paginator(op),
                         awsmodel.service_model().operation_model(op))

    # -- the call path -------------------------------------------------------------------------
    def _context(self, conn: sqlite3.Connection, operation: str, params: Params) -> CallContext:
        """The CallContext of one call of this client's principal inside transaction ``conn``."""
        return CallContext(conn=conn, store=self._store, clock=self._clock, principal=self.principal,
                           via_service=self.via_service, operation=operation, params=params,
                           authorizer=self._authorize)

    def _authorize(self, action: str, key: Key | None, request: AuthzRequest) -> None:
        """Decide whether ``request.principal`` may do ``action`` on ``key`` (None for calls on
        no key): key policy, identity
        policies, grants, as AWS KMS (volumed.kms.policy.authz). Raises the AccessDeniedException
        ClientError to refuse; returns to allow.

        Inside the transaction only the decision cache is consulted; a miss raises NeedDecision so
        that ``_call`` decides outside the write lock and runs the call again
        (volumed.kms.policy.decisions). On the last pass (``self._decide_inside``) it decides here."""
        self._decided(request.operation, lambda: authz.authorize(action, key, request),
                      "authorize", action, key, request)

    def _decided(self, operation: str, decide: Callable[[], T], kind: str, *inputs: object) -> T:
        """``decide()``'s outcome for these ``inputs`` (everything it reads) from the keystore's
        decision cache; a miss raises NeedDecision, except on the last pass, which decides here.
        A cached refusal is raised again as a fresh ClientError of ``operation``."""
        fp = decisions.fingerprint(kind, *inputs)
        outcome = self._store.decisions.get(fp)
        if outcome is None:
            if not getattr(self._decide_inside, "active", False):
                raise decisions.NeedDecision(fp, decide)
            return decide()
        if outcome[0] == "deny":
            raise awsmodel.client_error(outcome[1], outcome[2], operation)
        if outcome[0] == "inside":
            return decide()
        value: T = outcome[1]
        return value

    def _identity_decision(self, req: Request, identity_policies: Sequence[str], account: str) -> Decision:
        """authz.identity_decision for the IAM extension calls, decided outside the write lock."""
        return self._decided("iam", lambda: authz.identity_decision(req, identity_policies, account),
                             "identity", req, list(identity_policies), account)

    def _prepare(self, ctx: CallContext) -> None:
        """Time effects, then AWS managed keys the call names (committed even if the call fails)."""
        keys.apply_time_effects(ctx)
        for name in _KEY_REF_PARAMS:
            ref = ctx.params.get(name)
            if isinstance(ref, str):
                parsed = Arn.try_parse(ref)
                alias = parsed.resource if parsed else ref
                if alias in managed.MANAGED_ALIASES and not ctx.conn.execute(
                        "SELECT 1 FROM aliases WHERE name = ?", (alias,)).fetchone():
                    keys.create_managed(ctx, alias)

    def _check_grant_tokens(self, ctx: CallContext) -> None:
        """InvalidGrantTokenException for any GrantTokens member this service cannot have issued."""
        for token in ctx.params.get("GrantTokens") or ():
            if not grantstore.is_well_formed_token(token):
                raise ctx.error("InvalidGrantTokenException", "The grant token is not valid")

    def _audit(self, ctx: CallContext, response: Response | None, error: ClientError | None) -> None:
        """Hand the call to audit.record_call (blob members dropped; Decrypt's key named as keyId)."""
        op = ctx.operation
        request = _camel(ctx.params)
        if op in _CRYPTO_OPS:
            request.setdefault("encryptionAlgorithm", "SYMMETRIC_DEFAULT")
            if ctx.key_arns:  # Decrypt names its key in the blob; CloudTrail records it as keyId
                request.setdefault("keyId", ctx.key_arns[0])
        audit.record_call(
            ctx.conn, clock=self._clock, account_id=ctx.account, region=ctx.region, event_name=op,
            principal=ctx.principal, via_service=ctx.via_service, request_parameters=request,
            response_elements=None if (response is None or op in _CRYPTO_OPS) else (_camel(response) or None),
            error_code=aws_error_code(error) if error else None,
            error_message=aws_error_message(error) if error else None,
            key_arn=ctx.key_arns[0] if ctx.key_arns else None,
            read_only=op.startswith(_READ_ONLY_PREFIXES) or op in _CRYPTO_OPS, **self.request_meta)

    def _call(self, method: str, params: Params) -> Response:
        """The one path of every operation (see the module docstring); returns the boto3-shaped response."""
        operation = awsmodel.operation_name(method)
        awsmodel.validate_request(operation, params)
        params = dict(params)
        for name in _BLOB_PARAMS:
            if name in params:
                params[name] = _blob_bytes(params[name])
        fn = OPERATIONS[method]
        last_ctx: dict[str, CallContext] = {}

        def txn(conn: sqlite3.Connection) -> Response:
            ctx = last_ctx["ctx"] = self._context(conn, operation, params)
            awsmodel.check_constraints(operation, params)
            self._prepare(ctx)
            self._check_grant_tokens(ctx)
            response = fn(ctx, params)
            if params.get("DryRun"):
                raise ctx.error("DryRunOperationException",
                                "The request would have succeeded, but the DryRun option is set.")
            self._audit(ctx, response, None)
            if ctx.changed:
                Keystore.bump(conn)
            return response

        try:
            response = self._run_deciding_outside(txn)
        except ClientError as err:
            self._record_failure(operation, params, err, last_ctx.get("ctx"))
            raise
        if last_ctx["ctx"].destroyed:
            self._store.checkpoint()
        response["ResponseMetadata"] = awsmodel.response_metadata()
        return response

    def _run_deciding_outside(self, txn: Callable[[sqlite3.Connection], T]) -> T:
        """``self._store.run(txn)``, deciding each authorization the transaction meets outside the
        keystore's locks and running it again (volumed.kms.policy.decisions); after MAX_PASSES passes
        (inputs that keep changing under concurrent writers) the last pass decides inside."""
        for _ in range(decisions.MAX_PASSES):
            try:
                return self._store.run(txn)
            except decisions.NeedDecision as need:
                self._store.decisions.decide(need, ClientError)
        self._decide_inside.active = True
        try:
            return self._store.run(txn)
        finally:
            self._decide_inside.active = False

    def _record_failure(self, operation: str, params: Params, err: ClientError, failed: CallContext | None) -> None:
        """Audit a refused call in its own transaction (time effects and AWS managed keys the call
        named are kept, as they would have been by any other call)."""
        def txn(conn: sqlite3.Connection) -> bool:
            ctx = self._context(conn, operation, params)
            self._prepare(ctx)
            if failed is not None:
                ctx.key_arns = [a for a in failed.key_arns if keys.get(ctx, a.rsplit("/", 1)[-1])]
            self._audit(ctx, None, err)
            if ctx.changed:
                Keystore.bump(conn)
            return ctx.destroyed
        if self._store.run(txn):
            self._store.checkpoint()


def _make_method(method: str) -> Callable[..., Response]:
    """The boto3-style keyword-only method for ``method``."""
    def call(self: EmbeddedKMS, *args: object, **kwargs: Any) -> Response:
        if args:
            raise TypeError(f"{method}() only accepts keyword arguments.")
        return self._call(method, kwargs)
    call.__name__ = method
    call.__qualname__ = f"EmbeddedKMS.{method}"
    op = awsmodel.operation_name(method)
    call.__doc__ = f"AWS KMS {op} (boto3 ``kms.{method}``), served from the local keystore."
    return call


for _m in OPERATIONS:
    setattr(EmbeddedKMS, _m, _make_method(_m))
