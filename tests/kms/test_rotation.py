"""Rotation: versioned key material, automatic rotation on its period driven by the clock,
on-demand rotation and its limit, every old ciphertext still decrypting."""

import pytest
from botocore.exceptions import ClientError, ParamValidationError

from tests.kms.conftest import code_of


def _material(kms, key):
    return kms.describe_key(KeyId=key)["KeyMetadata"]["CurrentKeyMaterialId"]


def test_status_default_period_and_next_date(kms, key, clock):
    s = kms.get_key_rotation_status(KeyId=key)
    assert s["KeyRotationEnabled"] is False and "RotationPeriodInDays" not in s
    assert s["KeyId"] == kms.describe_key(KeyId=key)["KeyMetadata"]["Arn"]
    kms.enable_key_rotation(KeyId=key)
    s = kms.get_key_rotation_status(KeyId=key)
    assert s["KeyRotationEnabled"] and s["RotationPeriodInDays"] == 365
    assert (s["NextRotationDate"] - clock.now()).days == 365
    kms.disable_key_rotation(KeyId=key)
    s = kms.get_key_rotation_status(KeyId=key)
    assert not s["KeyRotationEnabled"] and "NextRotationDate" not in s


@pytest.mark.parametrize("period", [89, 2561])
def test_period_out_of_range(kms, key, period):
    with pytest.raises(ParamValidationError if period < 90 else ClientError):
        kms.enable_key_rotation(KeyId=key, RotationPeriodInDays=period)
    assert not kms.get_key_rotation_status(KeyId=key)["KeyRotationEnabled"]


def test_automatic_rotation_keeps_old_ciphertexts(kms, key, clock):
    kms.enable_key_rotation(KeyId=key, RotationPeriodInDays=90)
    blobs = [kms.encrypt(KeyId=key, Plaintext=b"v1")["CiphertextBlob"]]
    m1 = _material(kms, key)
    clock.advance(days=89)
    assert _material(kms, key) == m1
    clock.advance(days=1)
    m2 = _material(kms, key)
    assert m2 != m1
    blobs.append(kms.encrypt(KeyId=key, Plaintext=b"v2")["CiphertextBlob"])
    clock.advance(days=90 * 3 + 1)  # three more periods pass without any call
    rot = kms.list_key_rotations(KeyId=key)["Rotations"]
    assert [r["RotationType"] for r in rot] == ["AUTOMATIC"] * 4
    assert [r["KeyMaterialState"] for r in rot] == ["NON_CURRENT"] * 3 + ["CURRENT"]
    assert rot[0]["KeyMaterialId"] == m2
    for blob, want in zip(blobs, (b"v1", b"v2")):
        d = kms.decrypt(CiphertextBlob=blob)
        assert d["Plaintext"] == want
    assert kms.decrypt(CiphertextBlob=blobs[0])["KeyMaterialId"] == m1
    everything = kms.list_key_rotations(KeyId=key, IncludeKeyMaterial="ALL_KEY_MATERIAL")["Rotations"]
    assert len(everything) == 5 and "RotationDate" not in everything[0]


def test_disabled_key_is_not_rotated_until_reenabled(kms, key, clock):
    kms.enable_key_rotation(KeyId=key, RotationPeriodInDays=90)
    kms.disable_key(KeyId=key)
    m1 = _material(kms, key)
    clock.advance(days=200)
    assert _material(kms, key) == m1
    assert kms.list_key_rotations(KeyId=key)["Rotations"] == []
    kms.enable_key(KeyId=key)
    rot = kms.list_key_rotations(KeyId=key)["Rotations"]
    assert len(rot) == 1 and rot[0]["RotationDate"] == clock.now()
    s = kms.get_key_rotation_status(KeyId=key)
    assert (s["NextRotationDate"] - clock.now()).days == 90


def test_on_demand_rotation_and_limit(kms, key):
    blob = kms.encrypt(KeyId=key, Plaintext=b"old")["CiphertextBlob"]
    kms.enable_key_rotation(KeyId=key)
    before = kms.get_key_rotation_status(KeyId=key)["NextRotationDate"]
    for _ in range(25):
        assert kms.rotate_key_on_demand(KeyId=key)["KeyId"] == key
    with pytest.raises(kms.exceptions.LimitExceededException):
        kms.rotate_key_on_demand(KeyId=key)
    rot = kms.list_key_rotations(KeyId=key, Limit=10)
    assert rot["Truncated"] and {r["RotationType"] for r in rot["Rotations"]} == {"ON_DEMAND"}
    assert kms.get_key_rotation_status(KeyId=key)["NextRotationDate"] == before
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"old"


def test_changing_period_keeps_start_and_overdue_rotates(kms, key, clock):
    kms.enable_key_rotation(KeyId=key, RotationPeriodInDays=365)
    clock.advance(days=100)
    kms.enable_key_rotation(KeyId=key, RotationPeriodInDays=90)
    assert len(kms.list_key_rotations(KeyId=key)["Rotations"]) == 1
