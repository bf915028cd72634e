"""CloudTrail-format audit log of the embedded key service (interface stub; issue 3 fills it in).

The log lives in the keystore's SQLite database so that a record is appended in the same
transaction as the change it describes. The service calls, for every KMS call, allowed or denied:

    ensure_schema(conn)                      once per connection (idempotent)
    record_call(conn, *, clock, account_id, region, event_name, principal, via_service,
                request_parameters, response_elements, error_code, error_message,
                key_arn, read_only, source_ip="127.0.0.1", user_agent="volumed")

inside an open write transaction (BEGIN IMMEDIATE). If record_call raises, the call fails: the log
is never silently incomplete. request_parameters/response_elements must never hold plaintext,
ciphertext or key material; record_call drops any member named like one as a second guard.
"""

from __future__ import annotations

import json
import uuid

_FORBIDDEN = {"plaintext", "ciphertextblob", "ciphertextforrecipient", "sourceciphertextblob"}


def ensure_schema(conn) -> None:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, record TEXT NOT NULL)"
    )


def _scrub(obj):
    if isinstance(obj, dict):
        return {k: _scrub(v) for k, v in obj.items() if k.lower() not in _FORBIDDEN}
    if isinstance(obj, list):
        return [_scrub(v) for v in obj]
    return obj


def record_call(conn, *, clock, account_id, region, event_name, principal, via_service,
                request_parameters, response_elements, error_code, error_message, key_arn,
                read_only, source_ip="127.0.0.1", user_agent="volumed") -> dict:
    record = {
        "eventVersion": "1.08",
        "userIdentity": {"type": "IAMUser", "arn": principal, "accountId": account_id},
        "eventTime": clock.now().strftime("%Y-%m-%dT%H:%M:%SZ"),
        "eventSource": "kms.amazonaws.com",
        "eventName": event_name,
        "awsRegion": region,
        "sourceIPAddress": via_service or source_ip,
        "userAgent": user_agent,
        "requestParameters": _scrub(request_parameters),
        "responseElements": _scrub(response_elements),
        "requestID": str(uuid.uuid4()),
        "eventID": str(uuid.uuid4()),
        "readOnly": bool(read_only),
        "eventType": "AwsApiCall",
        "recipientAccountId": account_id,
    }
    if key_arn:
        record["resources"] = [{"accountId": account_id, "type": "AWS::KMS::Key", "ARN": key_arn}]
    if error_code:
        record["errorCode"] = error_code
        record["errorMessage"] = error_message or ""
    conn.execute("INSERT INTO audit (record) VALUES (?)", (json.dumps(record, sort_keys=True),))
    return record
