"""Encrypt/Decrypt/ReEncrypt/GenerateDataKey*: round trips, the authenticated encryption context,
tampering, IncorrectKeyException, data-key sizes."""

import pytest
from botocore.exceptions import ClientError, ParamValidationError

from tests.kms.conftest import code_of, message_of

CTX = {"aws:rds:db-id": "db-ABC", "aws:ebs:id": "vol-123"}


def test_round_trip_without_key_id(kms, key):
    r = kms.encrypt(KeyId=key, Plaintext=b"hello", EncryptionContext=CTX)
    assert r["KeyId"].endswith(key) and r["EncryptionAlgorithm"] == "SYMMETRIC_DEFAULT"
    d = kms.decrypt(CiphertextBlob=r["CiphertextBlob"], EncryptionContext=dict(reversed(CTX.items())))
    assert d["Plaintext"] == b"hello" and d["KeyId"] == r["KeyId"]


def test_boto3_blob_input_forms(kms, key):
    import io

    for value in ("text", bytearray(b"text"), io.BytesIO(b"text")):
        blob = kms.encrypt(KeyId=key, Plaintext=value)["CiphertextBlob"]
        assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"text"


@pytest.mark.parametrize("context", [None, {}, {"aws:ebs:id": "vol-123"}, {**CTX, "x": "y"},
                                     {"aws:rds:db-id": "db-abc", "aws:ebs:id": "vol-123"}])
def test_wrong_or_missing_context_is_invalid_ciphertext(kms, key, context):
    blob = kms.encrypt(KeyId=key, Plaintext=b"hello", EncryptionContext=CTX)["CiphertextBlob"]
    kw = {} if context is None else {"EncryptionContext": context}
    with pytest.raises(kms.exceptions.InvalidCiphertextException) as ei:
        kms.decrypt(CiphertextBlob=blob, **kw)
    assert message_of(ei) == ""


def test_every_flipped_bit_is_invalid_ciphertext(kms, key):
    good = kms.encrypt(KeyId=key, Plaintext=b"sixteen bytes!!!", EncryptionContext=CTX)["CiphertextBlob"]
    for bit in range(len(good) * 8):
        blob = bytearray(good)
        blob[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(kms.exceptions.InvalidCiphertextException):
            kms.decrypt(CiphertextBlob=bytes(blob), EncryptionContext=CTX)


@pytest.mark.parametrize("junk", [b"x", b"\0" * 64, b"VKC1" + b"\0" * 60])
def test_malformed_blob(kms, key, junk):
    with pytest.raises(kms.exceptions.InvalidCiphertextException):
        kms.decrypt(CiphertextBlob=junk)


def test_truncated_and_extended_blobs(kms, key):
    blob = kms.encrypt(KeyId=key, Plaintext=b"hello")["CiphertextBlob"]
    for bad in (blob[:-1], blob + b"\0"):
        with pytest.raises(kms.exceptions.InvalidCiphertextException):
            kms.decrypt(CiphertextBlob=bad)


def test_incorrect_key(kms, key):
    other = kms.create_key()["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=key, Plaintext=b"hello")["CiphertextBlob"]
    with pytest.raises(kms.exceptions.IncorrectKeyException):
        kms.decrypt(CiphertextBlob=blob, KeyId=other)
    kms.create_alias(AliasName="alias/k", TargetKeyId=key)
    assert kms.decrypt(CiphertextBlob=blob, KeyId="alias/k")["Plaintext"] == b"hello"


def test_re_encrypt_moves_key_and_context(kms, key):
    other = kms.create_key()["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=key, Plaintext=b"payload", EncryptionContext=CTX)["CiphertextBlob"]
    r = kms.re_encrypt(CiphertextBlob=blob, SourceEncryptionContext=CTX, DestinationKeyId=other,
                       DestinationEncryptionContext={"new": "ctx"})
    assert "Plaintext" not in r
    assert r["SourceKeyId"].endswith(key) and r["KeyId"].endswith(other)
    assert kms.decrypt(CiphertextBlob=r["CiphertextBlob"], EncryptionContext={"new": "ctx"})["Plaintext"] == b"payload"
    with pytest.raises(kms.exceptions.InvalidCiphertextException):
        kms.re_encrypt(CiphertextBlob=blob, DestinationKeyId=other)  # source context missing
    with pytest.raises(kms.exceptions.IncorrectKeyException):
        kms.re_encrypt(CiphertextBlob=blob, SourceEncryptionContext=CTX, SourceKeyId=other, DestinationKeyId=other)


@pytest.mark.parametrize("kw,size", [({"KeySpec": "AES_256"}, 32), ({"KeySpec": "AES_128"}, 16),
                                     ({"NumberOfBytes": 1}, 1), ({"NumberOfBytes": 64}, 64),
                                     ({"NumberOfBytes": 1024}, 1024)])
def test_generate_data_key_sizes(kms, key, kw, size):
    r = kms.generate_data_key(KeyId=key, EncryptionContext=CTX, **kw)
    assert len(r["Plaintext"]) == size
    assert kms.decrypt(CiphertextBlob=r["CiphertextBlob"], EncryptionContext=CTX)["Plaintext"] == r["Plaintext"]
    w = kms.generate_data_key_without_plaintext(KeyId=key, EncryptionContext=CTX, **kw)
    assert "Plaintext" not in w
    assert len(kms.decrypt(CiphertextBlob=w["CiphertextBlob"], EncryptionContext=CTX)["Plaintext"]) == size


@pytest.mark.parametrize("kw", [{}, {"KeySpec": "AES_256", "NumberOfBytes": 32}, {"NumberOfBytes": 1025},
                                {"KeySpec": "AES_512"}])
def test_generate_data_key_bad_sizes(kms, key, kw):
    with pytest.raises(ClientError) as ei:
        kms.generate_data_key(KeyId=key, **kw)
    assert code_of(ei) == "ValidationException"


def test_data_key_size_below_model_minimum(kms, key):
    with pytest.raises(ParamValidationError):
        kms.generate_data_key(KeyId=key, NumberOfBytes=0)


def test_grant_tokens_must_be_well_formed(kms, key):
    with pytest.raises(kms.exceptions.InvalidGrantTokenException):
        kms.encrypt(KeyId=key, Plaintext=b"x", GrantTokens=["garbage"])


def test_wrong_algorithm(kms, key):
    with pytest.raises(kms.exceptions.InvalidKeyUsageException):
        kms.encrypt(KeyId=key, Plaintext=b"x", EncryptionAlgorithm="RSAES_OAEP_SHA_256")
