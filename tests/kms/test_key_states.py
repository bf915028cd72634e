"""The key-state table of kms-semantics.md, cell by cell: what a Disabled and a PendingDeletion
key refuse, with which error, and that a refused call changes nothing."""

import pytest
from botocore.exceptions import ClientError

from tests.kms.conftest import code_of, message_of

GRANTEE = "arn:aws:iam::111122223333:user/grantee"


def _calls(kms, key, blob):
    return {
        "Encrypt": lambda: kms.encrypt(KeyId=key, Plaintext=b"x"),
        "Decrypt": lambda: kms.decrypt(CiphertextBlob=blob),
        "ReEncrypt": lambda: kms.re_encrypt(CiphertextBlob=blob, DestinationKeyId=key),
        "GenerateDataKey": lambda: kms.generate_data_key(KeyId=key, KeySpec="AES_256"),
        "GenerateDataKeyWithoutPlaintext": lambda: kms.generate_data_key_without_plaintext(KeyId=key, NumberOfBytes=64),
        "CreateGrant": lambda: kms.create_grant(KeyId=key, GranteePrincipal=GRANTEE, Operations=["Decrypt"]),
        "EnableKey": lambda: kms.enable_key(KeyId=key),
        "DisableKey": lambda: kms.disable_key(KeyId=key),
        "ScheduleKeyDeletion": lambda: kms.schedule_key_deletion(KeyId=key, PendingWindowInDays=7),
        "CreateAlias": lambda: kms.create_alias(AliasName="alias/new", TargetKeyId=key),
        "CancelKeyDeletion": lambda: kms.cancel_key_deletion(KeyId=key),
        "EnableKeyRotation": lambda: kms.enable_key_rotation(KeyId=key),
        "DisableKeyRotation": lambda: kms.disable_key_rotation(KeyId=key),
        "RotateKeyOnDemand": lambda: kms.rotate_key_on_demand(KeyId=key),
        "DescribeKey": lambda: kms.describe_key(KeyId=key),
        "GetKeyPolicy": lambda: kms.get_key_policy(KeyId=key, PolicyName="default"),
        "PutKeyPolicy": lambda: kms.put_key_policy(KeyId=key, PolicyName="default", Policy=kms.get_key_policy(KeyId=key)["Policy"]),
        "ListGrants": lambda: kms.list_grants(KeyId=key),
        "GetKeyRotationStatus": lambda: kms.get_key_rotation_status(KeyId=key),
        "ListKeyRotations": lambda: kms.list_key_rotations(KeyId=key),
    }


# operation -> (error when Disabled, error when PendingDeletion); None = allowed
TABLE = {
    "Encrypt": ("DisabledException", "KMSInvalidStateException"),
    "Decrypt": ("DisabledException", "KMSInvalidStateException"),
    "ReEncrypt": ("DisabledException", "KMSInvalidStateException"),
    "GenerateDataKey": ("DisabledException", "KMSInvalidStateException"),
    "GenerateDataKeyWithoutPlaintext": ("DisabledException", "KMSInvalidStateException"),
    "CreateGrant": ("DisabledException", "KMSInvalidStateException"),
    "EnableKey": (None, "KMSInvalidStateException"),
    "DisableKey": (None, "KMSInvalidStateException"),
    "ScheduleKeyDeletion": (None, "KMSInvalidStateException"),
    "CreateAlias": (None, "KMSInvalidStateException"),
    "CancelKeyDeletion": ("KMSInvalidStateException", None),
    "EnableKeyRotation": ("DisabledException", "KMSInvalidStateException"),
    "DisableKeyRotation": ("DisabledException", "KMSInvalidStateException"),
    "RotateKeyOnDemand": ("DisabledException", "KMSInvalidStateException"),
    "DescribeKey": (None, None),
    "GetKeyPolicy": (None, None),
    "PutKeyPolicy": (None, None),
    "ListGrants": (None, None),
    "GetKeyRotationStatus": (None, None),
    "ListKeyRotations": (None, None),
}


def _into(kms, key, state):
    if state == "Disabled":
        kms.disable_key(KeyId=key)
    else:
        kms.schedule_key_deletion(KeyId=key, PendingWindowInDays=7)


def _snapshot(kms, key):
    md = kms.describe_key(KeyId=key)["KeyMetadata"]
    return (md["KeyState"], md.get("DeletionDate"), md["CurrentKeyMaterialId"],
            len(kms.list_grants(KeyId=key)["Grants"]), len(kms.list_aliases()["Aliases"]),
            kms.get_key_rotation_status(KeyId=key)["KeyRotationEnabled"])


@pytest.mark.parametrize("state,column", [("Disabled", 0), ("PendingDeletion", 1)])
@pytest.mark.parametrize("op", sorted(TABLE))
def test_key_state_table(kms, key, op, state, column):
    blob = kms.encrypt(KeyId=key, Plaintext=b"secret")["CiphertextBlob"]
    _into(kms, key, state)
    expected = TABLE[op][column]
    call = _calls(kms, key, blob)[op]
    if expected is None:
        call()
        return
    before = _snapshot(kms, key)
    with pytest.raises(ClientError) as ei:
        call()
    assert code_of(ei) == expected
    arn = kms.describe_key(KeyId=key)["KeyMetadata"]["Arn"]
    if expected == "DisabledException":
        assert message_of(ei) == f"{arn} is disabled."
    elif state == "PendingDeletion":
        assert message_of(ei) == f"{arn} is pending deletion."
    else:
        assert message_of(ei) == f"{arn} is not pending deletion."
    assert _snapshot(kms, key) == before


def test_cancel_deletion_leaves_key_disabled(kms, key):
    kms.schedule_key_deletion(KeyId=key, PendingWindowInDays=7)
    assert kms.cancel_key_deletion(KeyId=key)["KeyId"].endswith(key)
    md = kms.describe_key(KeyId=key)["KeyMetadata"]
    assert md["KeyState"] == "Disabled" and "DeletionDate" not in md


def test_window_below_model_minimum_is_a_client_side_error(kms, key):
    from botocore.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError):  # as boto3: the model's min is 1
        kms.schedule_key_deletion(KeyId=key, PendingWindowInDays=0)


@pytest.mark.parametrize("window", [1, 6, 31, 365])
def test_window_outside_7_30_refused(kms, key, window):
    with pytest.raises(ClientError) as ei:
        kms.schedule_key_deletion(KeyId=key, PendingWindowInDays=window)
    assert code_of(ei) == "ValidationException"
    assert kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Enabled"


def test_schedule_reports_window(kms, key, clock):
    r = kms.schedule_key_deletion(KeyId=key)
    assert r["PendingWindowInDays"] == 30 and r["KeyState"] == "PendingDeletion"
    assert (r["DeletionDate"] - clock.now()).days == 30
    md = kms.describe_key(KeyId=key)["KeyMetadata"]
    assert md["PendingDeletionWindowInDays"] == 30 and md["DeletionDate"] == r["DeletionDate"]
