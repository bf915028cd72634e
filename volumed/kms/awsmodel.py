"""botocore's KMS service model, used as the contract of the embedded key service.

One concern: what boto3 would accept, return and raise. The embedded client (volumed.kms.service)
validates every request with ``validate_request`` exactly as boto3 does client-side (raising
``botocore.exceptions.ParamValidationError``), then applies the server-side constraints AWS checks
(enums, ranges, lengths) with ``check_constraints`` (raising ValidationException), and raises errors
through ``client_error`` as the same ``ClientError`` subclasses boto3's ``client.exceptions`` holds.
Tests use ``validate_response`` to hold every response to the model's output shape.
"""

from __future__ import annotations

import datetime as _dt
import functools
import re
import uuid
from collections.abc import Iterator, Mapping
from typing import Any, NotRequired, TypedDict

import botocore.session
from botocore import xform_name
from botocore.errorfactory import BaseClientExceptions, ClientExceptionsFactory
from botocore.exceptions import ClientError, ParamValidationError
from botocore.validate import ParamValidator



class GrantListEntry(TypedDict):
    """One grant as ListGrants/ListRetirableGrants return it."""

    KeyId: str
    GrantId: str
    CreationDate: _dt.datetime | None
    GranteePrincipal: str
    IssuingAccount: str
    Operations: list[str]
    Name: NotRequired[str]
    RetiringPrincipal: NotRequired[str]
    Constraints: NotRequired[dict[str, dict[str, str]]]


class KeyMetadata(TypedDict):
    """DescribeKey's and CreateKey's KeyMetadata, as the embedded service fills it."""

    AWSAccountId: str
    KeyId: str
    Arn: str
    CreationDate: _dt.datetime | None
    Enabled: bool
    Description: str
    KeyUsage: str
    KeyState: str
    Origin: str
    KeyManager: str
    CustomerMasterKeySpec: str
    KeySpec: str
    EncryptionAlgorithms: list[str]
    MultiRegion: bool
    CurrentKeyMaterialId: str
    DeletionDate: NotRequired[_dt.datetime | None]
    PendingDeletionWindowInDays: NotRequired[int | None]


# A request's parameters and a response body as boto3 passes them (the service model's shapes).
Params = dict[str, Any]
Response = dict[str, Any]

# Codes AWS KMS sends on the wire that its service model does not declare.
_UNMODELLED_CODES = ("AccessDeniedException", "ValidationException", "NotAuthorizedException")


@functools.lru_cache(maxsize=1)
def service_model() -> Any:
    """The KMS ServiceModel of the installed botocore (cached; botocore is untyped)."""
    return botocore.session.get_session().get_service_model("kms")


@functools.lru_cache(maxsize=1)
def paginator_model() -> Any:
    """botocore's KMS pagination config (which List* calls page, by which tokens)."""
    return botocore.session.get_session().get_paginator_model("kms")


@functools.lru_cache(maxsize=1)
def exceptions() -> BaseClientExceptions:
    """``client.exceptions`` for the embedded client: botocore's own factory output for the KMS
    model plus the unmodelled codes, so ``except client.exceptions.X`` works as with boto3."""
    base = ClientExceptionsFactory().create_client_exceptions(service_model())
    mapping = dict(base._code_to_exception)
    extra = {code: type(code, (ClientError,), {}) for code in _UNMODELLED_CODES if code not in mapping}
    mapping.update(extra)
    return type(type(base).__name__, (type(base),), extra)(mapping)


def client_error(code: str, message: str, operation: str) -> ClientError:
    """A ClientError of the class boto3 raises for ``code`` with AWS's response layout."""
    response = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": response_metadata(status=400),
    }
    return exceptions().from_code(code)(response, operation)


def response_metadata(status: int = 200) -> dict[str, Any]:
    """The ResponseMetadata member boto3 adds to every response."""
    return {"RequestId": str(uuid.uuid4()), "HTTPStatusCode": status,
            "HTTPHeaders": {"x-amzn-requestid": "embedded"}, "RetryAttempts": 0}


def to_datetime(t: float | None) -> _dt.datetime | None:
    """Epoch seconds -> aware UTC datetime (the type boto3 returns for timestamps)."""
    if t is None:
        return None
    return _dt.datetime.fromtimestamp(t, tz=_dt.timezone.utc)


def operation_name(method: str) -> str:
    """boto3 method name (``create_key``) -> operation name (``CreateKey``)."""
    return str(_method_to_op()[method])


@functools.lru_cache(maxsize=1)
def _method_to_op() -> dict[str, str]:
    return {xform_name(op): op for op in service_model().operation_names}


def validate_request(operation: str, params: Mapping[str, Any]) -> None:
    """Raise ParamValidationError exactly where boto3 would, before any request is sent."""
    shape = service_model().operation_model(operation).input_shape
    if shape is None:
        if params:
            raise ParamValidationError(report=f"Unknown parameters: {sorted(params)}")
        return
    report = ParamValidator().validate(params, shape)
    if report.has_errors():
        raise ParamValidationError(report=report.generate_report())


def validate_response(operation: str, response: Mapping[str, Any]) -> None:
    """Check a response against the model's output shape: required members present, types right,
    nothing extra (ResponseMetadata, which boto3 adds, excepted). Raises AssertionError."""
    shape = service_model().operation_model(operation).output_shape
    body = {k: v for k, v in response.items() if k != "ResponseMetadata"}
    assert "ResponseMetadata" in response, f"{operation}: no ResponseMetadata"
    if shape is None:
        assert body == {}, f"{operation}: output has no shape but got {sorted(body)}"
        return
    report = ParamValidator().validate(body, shape)
    assert not report.has_errors(), f"{operation} response: {report.generate_report()}"
    _check_output_values(shape, body, operation)


def _check_output_values(shape: Any, value: Any, path: str) -> None:
    """Enums and timezone-awareness of timestamps, which ParamValidator does not check."""
    if value is None:
        return
    if shape.type_name == "structure":
        for name, member in shape.members.items():
            if name in value:
                _check_output_values(member, value[name], f"{path}.{name}")
    elif shape.type_name == "list":
        for i, item in enumerate(value):
            _check_output_values(shape.member, item, f"{path}[{i}]")
    elif shape.type_name == "map":
        for k, v in value.items():
            _check_output_values(shape.value, v, f"{path}[{k}]")
    elif shape.type_name == "string" and shape.enum:
        assert value in shape.enum, f"{path}: {value!r} not in {shape.enum}"
    elif shape.type_name == "timestamp":
        assert isinstance(value, _dt.datetime) and value.tzinfo is not None, f"{path}: naive time"


MAX_ENCRYPTION_CONTEXT_CHARS = 8192  # keys and values together, as AWS KMS limits them
_CONTEXT_PARAMS = ("EncryptionContext", "SourceEncryptionContext", "DestinationEncryptionContext")


def _context_sizes(params: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(where, characters) of every encryption context in a request, grant constraints included."""
    for name in _CONTEXT_PARAMS:
        if isinstance(params.get(name), dict):
            yield name[0].lower() + name[1:], params[name]
    for name, ctx in (params.get("Constraints") or {}).items():
        if isinstance(ctx, dict):
            yield f"constraints.{name[0].lower() + name[1:]}", ctx


def check_constraints(operation: str, params: Mapping[str, Any]) -> None:
    """The server-side checks AWS applies after boto3's (enum values, max lengths, integer and
    list ranges, an encryption context of at most MAX_ENCRYPTION_CONTEXT_CHARS characters, which
    also bounds the text a policy's StringLike patterns are matched against); raise
    ValidationException with AWS's message layout naming every violation."""
    shape = service_model().operation_model(operation).input_shape
    errors: list[str] = []
    if shape is not None:
        _constraints(shape, params, "", errors)
    for where, ctx in _context_sizes(params):
        n = sum(len(str(k)) + len(str(v)) for k, v in ctx.items())
        if n > MAX_ENCRYPTION_CONTEXT_CHARS:
            errors.append(f"Value at '{where}' failed to satisfy constraint: Member must have keys and "
                          f"values of at most {MAX_ENCRYPTION_CONTEXT_CHARS} characters in total ({n})")
    if errors:
        n = len(errors)
        msg = f"{n} validation error{'s' if n > 1 else ''} detected: " + "; ".join(errors)
        raise client_error("ValidationException", msg, operation)


@functools.lru_cache(maxsize=None)
def _pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern.removeprefix("^").removesuffix("$"))


def _constraints(shape: Any, value: Any, path: str, errors: list[str], hide: bool = False) -> None:
    """Append every violation in ``value`` to ``errors``. Values are quoted as AWS does, except
    sensitive members and list values and their items (``hide``): a list may hold grant tokens,
    which must never reach an error message and through it the audit log (docs/AUDIT.md)."""
    meta = shape.metadata
    where = path or "request"
    if shape.type_name == "structure":
        for name, member in shape.members.items():
            if name in value:
                sub = name[0].lower() + name[1:]
                _constraints(member, value[name], f"{path}.{sub}" if path else sub, errors)
        return
    if shape.type_name == "list":
        if "max" in meta and len(value) > meta["max"]:
            errors.append(f"Value of {len(value)} items at '{where}' failed to satisfy constraint: "
                          f"Member must have length less than or equal to {meta['max']}")
        for item in value:
            _constraints(shape.member, item, where, errors, hide=True)
        return
    if shape.type_name == "map":
        for k, v in value.items():
            _constraints(shape.key, k, where, errors, hide)
            _constraints(shape.value, v, where, errors, hide)
        return
    shown = "***" if (hide or meta.get("sensitive")) else value
    if shape.type_name == "string":
        if shape.enum and value not in shape.enum:
            errors.append(f"Value '{shown}' at '{where}' failed to satisfy constraint: "
                          f"Member must satisfy enum value set: [{', '.join(shape.enum)}]")
        if "max" in meta and len(value) > meta["max"]:
            errors.append(f"Value '{shown}' at '{where}' failed to satisfy constraint: "
                          f"Member must have length less than or equal to {meta['max']}")
        if "min" in meta and len(value) < meta["min"]:
            errors.append(f"Value '{shown}' at '{where}' failed to satisfy constraint: "
                          f"Member must have length greater than or equal to {meta['min']}")
        if "pattern" in meta and not _pattern(meta["pattern"]).fullmatch(value):
            errors.append(f"Value '{shown}' at '{where}' failed to satisfy constraint: "
                          f"Member must satisfy regular expression pattern: {meta['pattern']}")
    elif shape.type_name == "integer":
        if "min" in meta and value < meta["min"]:
            errors.append(f"Value '{value}' at '{where}' failed to satisfy constraint: "
                          f"Member must have value greater than or equal to {meta['min']}")
        if "max" in meta and value > meta["max"]:
            errors.append(f"Value '{value}' at '{where}' failed to satisfy constraint: "
                          f"Member must have value less than or equal to {meta['max']}")
    elif shape.type_name == "blob":
        n = len(value) if isinstance(value, (bytes, bytearray, str)) else None
        if n is not None and "max" in meta and n > meta["max"]:
            errors.append(f"Value at '{where}' failed to satisfy constraint: "
                          f"Member must have length less than or equal to {meta['max']}")
        if n is not None and "min" in meta and n < meta["min"]:
            errors.append(f"Value at '{where}' failed to satisfy constraint: "
                          f"Member must have length greater than or equal to {meta['min']}")
