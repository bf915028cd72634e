"""The AWS JSON 1.1 wire format of KMS, both ways, driven by botocore's service model.

``decode_request(operation, body)`` -> boto3-style parameters (blobs base64-decoded);
``encode_response(operation, response)`` -> the JSON body (blobs base64, timestamps epoch seconds,
``ResponseMetadata`` dropped); ``error_body(code, message)``. Malformed JSON or a member of the
wrong JSON type is a SerializationException, as AWS answers. Caller: volumed.kms.server.app.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import json
from typing import Any

from volumed.kms import awsmodel
from volumed.kms.awsmodel import Params, Response
from volumed.kms.server.errors import WireError

CONTENT_TYPE = "application/x-amz-json-1.1"


def _serialization(message: str) -> WireError:
    return WireError("SerializationException", message)


def _from_json(shape: Any, value: Any, path: str) -> Any:
    if value is None:
        return None
    t = shape.type_name
    if t == "structure":
        if not isinstance(value, dict):
            raise _serialization(f"{path or 'request'}: expected a JSON object")
        out: dict[str, Any] = {}
        for k, v in value.items():
            member = shape.members.get(k)
            out[k] = _from_json(member, v, f"{path}.{k}" if path else k) if member is not None else v
        return out
    if t == "list":
        if not isinstance(value, list):
            raise _serialization(f"{path}: expected a JSON array")
        return [_from_json(shape.member, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if t == "map":
        if not isinstance(value, dict):
            raise _serialization(f"{path}: expected a JSON object")
        return {k: _from_json(shape.value, v, f"{path}.{k}") for k, v in value.items()}
    if t == "blob":
        if not isinstance(value, str):
            raise _serialization(f"{path}: expected a base64 string")
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise _serialization(f"{path}: not valid base64") from None
    if t == "timestamp":
        if not isinstance(value, (int, float)):
            raise _serialization(f"{path}: expected epoch seconds")
        return _dt.datetime.fromtimestamp(value, _dt.timezone.utc)
    if t == "boolean" and not isinstance(value, bool):
        raise _serialization(f"{path}: expected true or false")
    if t in ("integer", "long") and (isinstance(value, bool) or not isinstance(value, int)):
        raise _serialization(f"{path}: expected an integer")
    if t == "string" and not isinstance(value, str):
        raise _serialization(f"{path}: expected a string")
    return value


def _to_json(shape: Any, value: Any) -> Any:
    if value is None:
        return None
    t = shape.type_name if shape is not None else None
    if t == "structure":
        return {k: _to_json(shape.members.get(k), v) for k, v in value.items()
                if k != "ResponseMetadata" and v is not None}
    if t == "list":
        return [_to_json(shape.member, v) for v in value]
    if t == "map":
        return {k: _to_json(shape.value, v) for k, v in value.items()}
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, _dt.datetime):
        return value.timestamp()
    return value


def decode_request(operation: str, body: bytes) -> Params:
    """The request body of ``operation`` as boto3 parameters; SerializationException if malformed."""
    try:
        data = json.loads(body.decode("utf-8", "strict") or "{}") if body else {}
    except (ValueError, UnicodeDecodeError) as exc:
        raise _serialization(f"Start of structure or map found where not expected, or malformed JSON: {exc}") from None
    shape = awsmodel.service_model().operation_model(operation).input_shape
    if shape is None:
        return {}
    params: Params = _from_json(shape, data, "")
    return params


def encode_response(operation: str, response: Response) -> bytes:
    shape = awsmodel.service_model().operation_model(operation).output_shape
    out = _to_json(shape, response) if shape is not None else {}
    return json.dumps(out or {}, separators=(",", ":")).encode()


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"__type": code, "message": message}, separators=(",", ":")).encode()
