"""One full key lifecycle against the embedded service and against moto's mocked AWS KMS,
comparing everything observable. Where moto departs from AWS (kms-semantics.md, "What the
open-source emulators lack"), the embedded service must give AWS's answer and the test says so
in ``MOTO_DEPARTS``."""

import pytest
from botocore.exceptions import ClientError

from volumed.kms import awsmodel

CTX = {"aws:rds:db-id": "db-ABC", "aws:ebs:id": "vol-1"}

# step -> (what AWS does, which the embedded service must do; why moto differs)
MOTO_DEPARTS = {
    "encrypt-while-disabled": ("DisabledException", "moto does not check key state on Encrypt"),
    "decrypt-while-disabled": ("DisabledException", "moto lets a disabled key decrypt"),
    "data-key-while-disabled": ("DisabledException", "moto does not check key state on GenerateDataKey"),
    "encrypt-while-pending": ("KMSInvalidStateException", "moto does not check key state on Encrypt"),
    "rotation-made-new-material": (True, "moto's rotation is bookkeeping only: no new key material"),
    "rotation-period": ((180, True), "moto's GetKeyRotationStatus has no period or next date"),
    "scheduled": (("PendingDeletion", 7, True), "moto's ScheduleKeyDeletion response lacks KeyState"),
    "window-too-short": ("ValidationException", "moto accepts a deletion window below 7 days"),
    "cancel-not-pending": ("KMSInvalidStateException", "moto cancels the deletion of a key not pending deletion"),
    "key-usage": ("ENCRYPT_DECRYPT", "moto's KeyMetadata omits KeyUsage"),
}


def _outcome(fn):
    try:
        return fn()
    except ClientError as exc:
        return exc.response["Error"]["Code"]


def scenario(kms):
    """Run the lifecycle; return [(step, observation)] with observations that do not depend on
    generated ids, times or ciphertext bytes."""
    obs = []

    def see(step, value):
        obs.append((step, value))

    md = kms.create_key(Description="parity")["KeyMetadata"]
    key = md["KeyId"]
    see("created", (md["KeyState"], md["Enabled"], md["KeyManager"], md["KeySpec"], md["Description"]))
    see("key-usage", md.get("KeyUsage"))
    kms.create_alias(AliasName="alias/parity", TargetKeyId=key)
    see("alias-resolves", kms.describe_key(KeyId="alias/parity")["KeyMetadata"]["KeyId"] == key)
    see("alias-listed", [a["AliasName"] for a in kms.list_aliases(KeyId=key)["Aliases"]])
    see("alias-duplicate", _outcome(lambda: kms.create_alias(AliasName="alias/parity", TargetKeyId=key)))

    blob = kms.encrypt(KeyId="alias/parity", Plaintext=b"secret", EncryptionContext=CTX)["CiphertextBlob"]
    d = kms.decrypt(CiphertextBlob=blob, EncryptionContext=CTX)
    see("decrypt", (d["Plaintext"], d["KeyId"].endswith(key)))
    see("decrypt-missing-context", _outcome(lambda: kms.decrypt(CiphertextBlob=blob)))
    see("decrypt-wrong-context", _outcome(lambda: kms.decrypt(CiphertextBlob=blob, EncryptionContext={"x": "y"})))
    see("describe-unknown", _outcome(lambda: kms.describe_key(KeyId="alias/does-not-exist")))

    dk = kms.generate_data_key(KeyId=key, KeySpec="AES_256", EncryptionContext=CTX)
    see("data-key", (len(dk["Plaintext"]), kms.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext=CTX)["Plaintext"] == dk["Plaintext"]))
    dk64 = kms.generate_data_key_without_plaintext(KeyId=key, NumberOfBytes=64, EncryptionContext=CTX)
    see("data-key-64", ("Plaintext" in dk64, len(kms.decrypt(CiphertextBlob=dk64["CiphertextBlob"], EncryptionContext=CTX)["Plaintext"])))

    other = kms.create_key()["KeyMetadata"]["KeyId"]
    re = kms.re_encrypt(CiphertextBlob=blob, SourceEncryptionContext=CTX, DestinationKeyId=other)
    see("re-encrypt", ("Plaintext" in re, kms.decrypt(CiphertextBlob=re["CiphertextBlob"])["Plaintext"]))

    see("rotation-off", kms.get_key_rotation_status(KeyId=key)["KeyRotationEnabled"])
    kms.enable_key_rotation(KeyId=key, RotationPeriodInDays=180)
    s = kms.get_key_rotation_status(KeyId=key)
    see("rotation-on", s["KeyRotationEnabled"])
    see("rotation-period", (s.get("RotationPeriodInDays"), "NextRotationDate" in s))
    material = kms.describe_key(KeyId=key)["KeyMetadata"].get("CurrentKeyMaterialId")
    kms.rotate_key_on_demand(KeyId=key)
    rotated = kms.describe_key(KeyId=key)["KeyMetadata"].get("CurrentKeyMaterialId")
    see("rotation-made-new-material", material is not None and rotated != material)
    see("rotations-listed", [r.get("RotationType") for r in kms.list_key_rotations(KeyId=key)["Rotations"]])
    see("old-ciphertext-after-rotation", kms.decrypt(CiphertextBlob=blob, EncryptionContext=CTX)["Plaintext"])
    kms.disable_key_rotation(KeyId=key)
    see("rotation-disabled", kms.get_key_rotation_status(KeyId=key)["KeyRotationEnabled"])

    kms.disable_key(KeyId=key)
    see("disabled", kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"])
    see("encrypt-while-disabled", _outcome(lambda: kms.encrypt(KeyId=key, Plaintext=b"x") and "allowed"))
    see("decrypt-while-disabled", _outcome(lambda: kms.decrypt(CiphertextBlob=blob, EncryptionContext=CTX) and "allowed"))
    see("data-key-while-disabled", _outcome(lambda: kms.generate_data_key(KeyId=key, KeySpec="AES_256") and "allowed"))
    kms.enable_key(KeyId=key)
    see("re-enabled-decrypts", kms.decrypt(CiphertextBlob=blob, EncryptionContext=CTX)["Plaintext"])

    r = kms.schedule_key_deletion(KeyId=key, PendingWindowInDays=7)
    see("scheduled", (r.get("KeyState"), r.get("PendingWindowInDays"), "DeletionDate" in r))
    see("pending", kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"])
    see("encrypt-while-pending", _outcome(lambda: kms.encrypt(KeyId=key, Plaintext=b"x") and "allowed"))
    kms.cancel_key_deletion(KeyId=key)
    see("cancelled-state", kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"])
    see("keys-listed", len(kms.list_keys()["Keys"]))
    third = kms.create_key()["KeyMetadata"]["KeyId"]
    see("cancel-not-pending", _outcome(lambda: kms.cancel_key_deletion(KeyId=third) and "allowed"))
    see("window-too-short", _outcome(lambda: kms.schedule_key_deletion(KeyId=third, PendingWindowInDays=6) and "allowed"))
    return obs


@pytest.fixture
def moto_kms(monkeypatch):
    moto = pytest.importorskip("moto")
    import boto3

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(var, "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with moto.mock_aws():
        yield boto3.client("kms", region_name="us-east-1")


def test_lifecycle_matches_aws_as_moto_models_it(kms, moto_kms):
    embedded = dict(scenario(kms))
    mocked = dict(scenario(moto_kms))
    assert embedded.keys() == mocked.keys()
    for step, value in embedded.items():
        if step in MOTO_DEPARTS:
            aws_answer, _why = MOTO_DEPARTS[step]
            assert value == aws_answer, step
        else:
            assert value == mocked[step], f"{step}: embedded {value!r}, moto {mocked[step]!r}"
    # the departures are real: if moto ever starts agreeing with AWS, this list should shrink
    departs = {s: mocked[s] for s in MOTO_DEPARTS if mocked[s] != MOTO_DEPARTS[s][0]}
    assert departs, "moto now matches AWS on every listed departure; trim MOTO_DEPARTS"
