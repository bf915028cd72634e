"""The service's side of the audit contract: every call, allowed or refused, reaches
``audit.record_call`` once, in the call's transaction (refused calls in one of their own), with
the caller, the key and the error; never with plaintext, ciphertext or key material."""

import pytest

from volumed.kms import audit

CTX = {"aws:ebs:id": "vol-1"}


@pytest.fixture
def recorded(monkeypatch):
    calls = []
    real = audit.record_call

    def spy(conn, **kw):
        assert conn.in_transaction
        calls.append(kw)
        return real(conn, **kw)
    monkeypatch.setattr(audit, "record_call", spy)
    return calls


def _walk(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from _walk(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v)
    else:
        yield obj


def test_success_and_refusal_recorded(kms, key, recorded):
    recorded.clear()
    dk = kms.generate_data_key(KeyId=key, NumberOfBytes=64, EncryptionContext=CTX)
    kms.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext=CTX)
    kms.disable_key(KeyId=key)
    with pytest.raises(kms.exceptions.DisabledException):
        kms.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext=CTX)
    names = [c["event_name"] for c in recorded]
    assert names == ["GenerateDataKey", "Decrypt", "DisableKey", "Decrypt"]
    arn = kms.describe_key(KeyId=key)["KeyMetadata"]["Arn"]
    assert all(c["key_arn"] == arn and c["principal"] == kms.principal for c in recorded[:4])
    assert recorded[3]["error_code"] == "DisabledException" and recorded[0]["error_code"] is None
    assert recorded[1]["read_only"] and not recorded[2]["read_only"]
    assert recorded[0]["request_parameters"]["encryptionContext"] == CTX
    assert recorded[0]["request_parameters"]["numberOfBytes"] == 64
    assert recorded[1]["request_parameters"]["keyId"] == arn  # from the blob, as CloudTrail
    for c in recorded:
        for value in _walk([c["request_parameters"], c["response_elements"]]):
            assert not isinstance(value, (bytes, bytearray))
            assert value not in ("plaintext", "Plaintext", "CiphertextBlob", "ciphertextBlob")


def test_access_denied_recorded_and_nothing_else_changed(kms, recorded):
    kid = kms.describe_key(KeyId="alias/aws/rds")["KeyMetadata"]["KeyId"]
    recorded.clear()
    with pytest.raises(kms.exceptions.AccessDeniedException):
        kms.with_identity(via_service="rds.us-east-1.amazonaws.com").schedule_key_deletion(KeyId=kid)
    [c] = recorded
    assert c["error_code"] == "AccessDeniedException" and c["via_service"] == "rds.us-east-1.amazonaws.com"
    assert kms.describe_key(KeyId=kid)["KeyMetadata"]["KeyState"] == "Enabled"
