"""The key server's ASGI application: AWS KMS's JSON 1.1 protocol over HTTP, SigV4-authenticated.

One request, in order (each refusal answered with AWS's error shape, ``{"__type", "message"}``):

  1. limits: header bytes (``max_header``) and body bytes (``max_body``)  -> 431/413 ValidationException
  2. SigV4 (volumed.kms.server.sigv4) against the access keys (volumed.kms.server.accesskeys):
     the principal is the access key's; a service credential may name the user it acts for in the
     signed header ``x-volumed-on-behalf-of`` and the call then carries ``kms:ViaService``
  3. per-principal token bucket (volumed.kms.server.ratelimit)            -> ThrottlingException
  4. ``X-Amz-Target: TrentService.<Operation>``                          -> UnknownOperationException
  5. JSON body -> boto3 parameters (volumed.kms.server.wire)              -> SerializationException
  6. the embedded key service (volumed.kms.service.EmbeddedKMS) as that principal, on a
     group-commit keystore (volumed.kms.server.commit): policy, grants, audit record (with source
     IP, user agent, access key id, request id) and the change all commit before the answer.

Extensions beside KMS: ``GET /ping`` (readiness, no auth), ``X-Amz-Target:
VolumedService.GetChangeCounter`` (signed; the keystore's change counter, which the mount monitor
polls instead of a real check: docs/KMS.md), and STS ``GetCallerIdentity`` (signed for ``sts``;
``aws sts get-caller-identity`` and volumed's mount learn a host credential's principal from it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

from botocore.exceptions import ClientError, ParamValidationError

from volumed.clock import SYSTEM_CLOCK, Clock
from volumed.errors import VolumedError, aws_error_code, aws_error_message
from volumed.kms import audit, awsmodel
from volumed.kms.awsmodel import Response
from volumed.kms.ops import keys
from volumed.kms.server import accesskeys, sigv4, wire
from volumed.kms.server.commit import GroupCommitKeystore
from volumed.kms.server.errors import WireError, status_of
from volumed.kms.server.ratelimit import RateLimiter
from volumed.kms.service import EmbeddedKMS, OPERATIONS
from volumed.kms.store.keystore import DB_FILE

log = logging.getLogger("volumed.kms.server")

MAX_BODY = 256 * 1024
MAX_HEADER = 16 * 1024
DEFAULT_RATE = 2000.0
ON_BEHALF_HEADER = "x-volumed-on-behalf-of"
# ASGI's three arguments (the ASGI spec; uvicorn calls the application with these)
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
_OP_TO_METHOD = {awsmodel.operation_name(m): m for m in OPERATIONS}


class KeyServer:
    """The application object (ASGI callable). ``clock`` drives SigV4's skew check, rate limits
    and the key service's time."""

    def __init__(self, keystore_dir: str, *, clock: Clock = SYSTEM_CLOCK, rate: float = DEFAULT_RATE,
                 burst: float | None = None, max_body: int = MAX_BODY, max_header: int = MAX_HEADER,
                 workers: int = 64):
        self.clock = clock
        self.store = GroupCommitKeystore(keystore_dir)
        try:
            self.kms = EmbeddedKMS(self.store, clock=clock)
            self.store.run(lambda conn: accesskeys.ensure_schema(conn))
            self._check_audit_writable()
            self._read = sqlite3.connect(os.path.join(self.store.directory, DB_FILE), timeout=10,
                                         isolation_level=None, check_same_thread=False)
            self._read.execute("PRAGMA busy_timeout = 10000")
        except BaseException:
            self.store.close()
            raise
        self._read_lock = threading.Lock()
        self.region = self.store.region
        self.account = self.store.account_id
        self.limiter = RateLimiter(rate, burst if burst is not None else max(1.0, 2 * rate), clock)
        self.max_body = max_body
        self.max_header = max_header
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kms-call")

    def _check_audit_writable(self) -> None:
        """Refuse to serve unless the audit log can be written and sealed: the signing key loads and
        a write transaction on the database commits."""
        row = self.store.run(lambda conn: conn.execute(
            "SELECT value FROM audit_config WHERE name = 'signing_key_path'").fetchone())
        if row is None:
            raise audit.AuditError(f"the audit log of {self.store.directory} has no signing key "
                                   "configured; the server will not serve without an audit log")
        audit.load_signing_key(row[0])
        try:
            self.store.run(lambda conn: conn.execute(
                "UPDATE audit_config SET value = value WHERE name = 'signing_key_path'"))
        except sqlite3.Error as exc:
            raise audit.AuditError(f"cannot write the audit log in {self.store.directory}: {exc}; "
                                   "the server will not serve without an audit log") from None

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.store.close()
        self._read.close()

    # -- reads outside the write path ----------------------------------------------------------
    def _lookup(self, access_key_id: str) -> sigv4.KeyOwner | None:
        with self._read_lock:
            return accesskeys.lookup(self._read, self.store.root, access_key_id)

    def change_counter(self) -> int:
        with self._read_lock:
            counter = int(self._read.execute("SELECT v FROM meta WHERE k = 'change_counter'").fetchone()[0])
            due = keys.deletion_due(self._read, self.clock.time())
        if due:  # a deletion window ended: apply it, so watchers see the key's destruction
            self.kms.apply_time_effects()
            with self._read_lock:
                counter = int(self._read.execute("SELECT v FROM meta WHERE k = 'change_counter'").fetchone()[0])
        return counter

    # -- ASGI ----------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        request_id = str(uuid.uuid4())
        content_type = wire.CONTENT_TYPE
        try:
            status, body, content_type = await self._handle(scope, receive, request_id)
        except WireError as exc:
            status, body = exc.status, wire.error_body(exc.code, exc.message)
            if exc.sts:
                body, content_type = _sts_error(exc, request_id), "text/xml"
        except Exception as exc:  # a bug or a keystore fault: never a traceback to the caller
            log.error("request %s failed: %s: %s", request_id, type(exc).__name__, exc)
            status, body = 500, wire.error_body("KMSInternalException", "An internal error occurred; "
                                                "see the server log for request " + request_id)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", content_type.encode()),
                                (b"content-length", str(len(body)).encode()),
                                (b"x-amzn-requestid", request_id.encode())]})
        await send({"type": "http.response.body", "body": body})

    async def _read_body(self, scope: Scope, receive: Receive, headers: dict[str, str]) -> bytes:
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            raise WireError("ValidationException", f"request body exceeds {self.max_body} bytes", 413)
        chunks: list[bytes] = []
        size = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                raise WireError("ValidationException", "client disconnected", 400)
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise WireError("ValidationException", f"request body exceeds {self.max_body} bytes", 413)
            chunks.append(chunk)
            if not msg.get("more_body"):
                return b"".join(chunks)

    def _headers(self, scope: Scope) -> dict[str, str]:
        headers: dict[str, str] = {}
        total = 0
        for k, v in scope["headers"]:
            total += len(k) + len(v) + 4
            name = k.decode("latin-1").lower()
            value = v.decode("latin-1").strip()
            headers[name] = f"{headers[name]},{value}" if name in headers else value
        if total > self.max_header:
            raise WireError("ValidationException", f"request headers exceed {self.max_header} bytes", 431)
        return headers

    async def _handle(self, scope: Scope, receive: Receive, request_id: str) -> tuple[int, bytes, str]:
        headers = self._headers(scope)
        if scope["method"] == "GET" and scope["path"] == "/ping":
            ok = self.store._writer.is_alive()
            return (200 if ok else 503), (b'{"status":"ok"}' if ok else b'{"status":"down"}'), "application/json"
        body = await self._read_body(scope, receive, headers)
        is_sts = headers.get("content-type", "").startswith("application/x-www-form-urlencoded")
        try:
            auth, (principal, service, _secret) = sigv4.verify(
                method=scope["method"], path=scope.get("raw_path", b"/").decode("latin-1").split("?")[0] or "/",
                query=scope.get("query_string", b"").decode("latin-1"), headers=headers, body=body,
                region=self.region, services=("sts",) if is_sts else ("kms",), now=self.clock.time(),
                lookup=self._lookup)
        except WireError as exc:
            exc.sts = is_sts
            raise
        signer = principal
        via = None
        on_behalf = headers.get(ON_BEHALF_HEADER)
        if on_behalf is not None:
            if ON_BEHALF_HEADER not in auth["signed"]:
                raise WireError("IncompleteSignatureException", f"'{ON_BEHALF_HEADER}' must be a 'SignedHeader'")
            if not service:
                raise WireError("AccessDeniedException",
                                f"{principal} is not a service credential: only an access key created "
                                f"with --service may act on behalf of another principal")
            # the same shapes an access key may stand for, whole (no trailing text after the account)
            if not accesskeys.is_principal(on_behalf) or on_behalf.split(":")[4] != self.account:
                raise WireError("AccessDeniedException", f"{on_behalf!r} is not a principal of account {self.account}")
            principal = on_behalf
            via = f"{service.split('.', 1)[0]}.{self.region}.amazonaws.com"
        if not self.limiter.allow(signer):
            err = WireError("ThrottlingException", "Rate exceeded")
            err.sts = is_sts
            raise err
        if is_sts:
            return self._sts(body, principal, request_id)
        target = headers.get("x-amz-target", "")
        prefix, _, operation = target.partition(".")
        if prefix == "VolumedService" and operation == "GetChangeCounter":
            counter = await asyncio.get_running_loop().run_in_executor(self.pool, self.change_counter)
            return 200, b'{"ChangeCounter":%d}' % counter, wire.CONTENT_TYPE
        if prefix != "TrentService" or not operation:
            raise WireError("UnknownOperationException", f"unknown target {target[:128]!r}")
        method = _OP_TO_METHOD.get(operation)
        if method is None:
            if operation in awsmodel.service_model().operation_names:
                raise WireError("UnsupportedOperationException",
                                f"{operation} is not supported by volumed kms serve")
            raise WireError("UnknownOperationException", f"unknown operation {operation[:128]!r}")
        params = wire.decode_request(operation, body)
        client = self.kms.with_identity(principal=principal, via_service=via)
        client.request_meta = {"source_ip": (scope.get("client") or ("unknown",))[0],
                               "user_agent": headers.get("user-agent", "")[:1024],
                               "access_key_id": auth["access_key_id"], "request_id": request_id}

        def call() -> tuple[Response | None, ClientError | WireError | None]:
            try:
                return getattr(client, method)(**params), None
            except ClientError as err:
                return None, err
            except ParamValidationError as err:
                return None, WireError("ValidationException", str(err).replace("\n", " "))
            except VolumedError as err:  # keystore or audit fault
                log.error("request %s: %s", request_id, err)
                return None, WireError("KMSInternalException", str(err), 500)
        response, failure = await asyncio.get_running_loop().run_in_executor(self.pool, call)
        if isinstance(failure, WireError):
            raise failure
        if failure is not None:
            code = aws_error_code(failure) or "KMSInternalException"
            raise WireError(code, aws_error_message(failure), status_of(code))
        assert response is not None
        return 200, wire.encode_response(operation, response), wire.CONTENT_TYPE

    def _sts(self, body: bytes, principal: str, request_id: str) -> tuple[int, bytes, str]:
        form = parse_qs(body.decode("utf-8", "replace"))
        action = (form.get("Action") or [""])[0]
        if action != "GetCallerIdentity":
            err = WireError("InvalidAction", f"Could not find operation {action[:64]} for version 2011-06-15")
            err.sts = True
            raise err
        user_id = audit.user_identity(principal, None).get("principalId", principal)
        xml = ('<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
               f"<GetCallerIdentityResult><Arn>{escape(principal)}</Arn><UserId>{escape(user_id)}</UserId>"
               f"<Account>{self.account}</Account></GetCallerIdentityResult>"
               f"<ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata>"
               "</GetCallerIdentityResponse>")
        return 200, xml.encode(), "text/xml"




def _sts_error(exc: WireError, request_id: str) -> bytes:
    return ('<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>'
            f"<Code>{escape(exc.code)}</Code><Message>{escape(exc.message)}</Message></Error>"
            f"<RequestId>{request_id}</RequestId></ErrorResponse>").encode()
