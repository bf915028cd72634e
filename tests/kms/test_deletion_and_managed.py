"""The end of a deletion window (key and material destroyed, ciphertexts dead for good) and the
AWS managed key alias/aws/rds (created on first use, protected from management calls)."""

import json

import pytest
from botocore.exceptions import ClientError

from tests.kms.conftest import code_of, message_of

GRANTEE = "arn:aws:iam::111122223333:user/grantee"


def test_destroyed_material_leaves_no_copy_in_keystore_files(kms, key, clock, keystore):
    import os
    import sqlite3

    kms.rotate_key_on_demand(KeyId=key)
    db = sqlite3.connect(os.path.join(keystore, "keystore.db"))
    wrapped = [row[0] for row in db.execute("SELECT wrapped FROM materials WHERE key_id = ?", (key,))]
    db.close()
    assert len(wrapped) == 2
    kms.schedule_key_deletion(KeyId=key, PendingWindowInDays=7)
    clock.advance(days=7)
    kms.change_counter()
    for name in os.listdir(keystore):
        with open(os.path.join(keystore, name), "rb") as f:
            data = f.read()
        for w in wrapped:
            assert w[12:44] not in data, f"destroyed key material still in {name}"


def test_window_end_destroys_key_material_aliases_grants(kms, key, clock, keystore):
    import sqlite3

    blob = kms.encrypt(KeyId=key, Plaintext=b"data", EncryptionContext={"a": "b"})["CiphertextBlob"]
    kms.create_alias(AliasName="alias/doomed", TargetKeyId=key)
    kms.create_grant(KeyId=key, GranteePrincipal=GRANTEE, Operations=["Decrypt"])
    kms.schedule_key_deletion(KeyId=key, PendingWindowInDays=7)
    clock.advance(days=7) ; clock.advance(-1)
    assert kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "PendingDeletion"
    before = kms.change_counter()
    clock.advance(1)
    assert kms.change_counter() > before  # watchers see the destruction without any other call
    for call in (lambda: kms.describe_key(KeyId=key), lambda: kms.cancel_key_deletion(KeyId=key),
                 lambda: kms.decrypt(CiphertextBlob=blob, EncryptionContext={"a": "b"}),
                 lambda: kms.describe_key(KeyId="alias/doomed")):
        with pytest.raises(kms.exceptions.NotFoundException):
            call()
    assert kms.list_keys()["Keys"] == [] and kms.list_aliases()["Aliases"] == []
    db = sqlite3.connect(f"{keystore}/keystore.db")
    assert db.execute("SELECT count(*) FROM materials").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM grants").fetchone()[0] == 0


def test_cancelled_deletion_keeps_everything(kms, key, clock):
    blob = kms.encrypt(KeyId=key, Plaintext=b"data")["CiphertextBlob"]
    kms.schedule_key_deletion(KeyId=key, PendingWindowInDays=7)
    clock.advance(days=6)
    kms.cancel_key_deletion(KeyId=key)
    clock.advance(days=30)
    kms.enable_key(KeyId=key)
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"data"


def test_aws_rds_created_on_first_use(kms):
    assert kms.list_keys()["Keys"] == []
    md = kms.describe_key(KeyId="alias/aws/rds")["KeyMetadata"]
    assert md["KeyManager"] == "AWS" and md["KeyState"] == "Enabled"
    assert kms.describe_key(KeyId="alias/aws/rds")["KeyMetadata"]["KeyId"] == md["KeyId"]
    s = kms.get_key_rotation_status(KeyId=md["KeyId"])
    assert s["KeyRotationEnabled"] and s["RotationPeriodInDays"] == 365
    policy = json.loads(kms.get_key_policy(KeyId=md["KeyId"], PolicyName="default")["Policy"])
    cond = policy["Statement"][0]["Condition"]["StringEquals"]
    assert cond == {"kms:CallerAccount": kms.account_id(), "kms:ViaService": "rds.us-east-1.amazonaws.com"}
    aliases = kms.list_aliases()["Aliases"]
    assert [a["AliasName"] for a in aliases] == ["alias/aws/rds"]


def test_aws_rds_created_by_a_data_key_call(kms):
    r = kms.with_identity(via_service="rds.us-east-1.amazonaws.com").generate_data_key_without_plaintext(
        KeyId="alias/aws/rds", NumberOfBytes=64, EncryptionContext={"aws:rds:db-id": "db-1"})
    assert r["KeyId"] == kms.describe_key(KeyId="alias/aws/rds")["KeyMetadata"]["Arn"]


@pytest.mark.parametrize("call", [
    lambda k, key: k.disable_key(KeyId=key),
    lambda k, key: k.enable_key(KeyId=key),
    lambda k, key: k.schedule_key_deletion(KeyId=key, PendingWindowInDays=7),
    lambda k, key: k.cancel_key_deletion(KeyId=key),
    lambda k, key: k.enable_key_rotation(KeyId=key, RotationPeriodInDays=90),
    lambda k, key: k.disable_key_rotation(KeyId=key),
    lambda k, key: k.rotate_key_on_demand(KeyId=key),
    lambda k, key: k.put_key_policy(KeyId=key, PolicyName="default", Policy='{"Statement": [{"Effect": "Allow"}]}'),
    lambda k, key: k.create_alias(AliasName="alias/mine", TargetKeyId=key),
    lambda k, key: k.update_key_description(KeyId=key, Description="x"),
], ids=["disable", "enable", "schedule-deletion", "cancel-deletion", "enable-rotation", "disable-rotation",
        "rotate-on-demand", "put-policy", "create-alias", "update-description"])
def test_aws_rds_management_refused(kms, call):
    md = kms.describe_key(KeyId="alias/aws/rds")["KeyMetadata"]
    policy = kms.get_key_policy(KeyId=md["KeyId"])["Policy"]
    counter = kms.change_counter()
    with pytest.raises(kms.exceptions.AccessDeniedException) as ei:
        call(kms, md["KeyId"])
    action = message_of(ei).split("perform: ")[1].split(" ")[0]
    assert message_of(ei) == (f"User: {kms.principal} is not authorized to perform: {action} on resource: "
                              f"{md['Arn']} because no resource-based policy allows the {action} action")
    after = kms.describe_key(KeyId="alias/aws/rds")["KeyMetadata"]
    assert after == md | {"CreationDate": after["CreationDate"]}
    assert kms.get_key_policy(KeyId=md["KeyId"])["Policy"] == policy
    assert kms.get_key_rotation_status(KeyId=md["KeyId"])["RotationPeriodInDays"] == 365
    assert kms.change_counter() == counter


def test_customer_key_allows_the_same_calls(kms, key):
    kms.enable_key_rotation(KeyId=key, RotationPeriodInDays=90)
    kms.rotate_key_on_demand(KeyId=key)
    kms.disable_key_rotation(KeyId=key)
    kms.put_key_policy(KeyId=key, PolicyName="default", Policy=kms.get_key_policy(KeyId=key)["Policy"])
    kms.disable_key(KeyId=key)
    kms.schedule_key_deletion(KeyId=key, PendingWindowInDays=7)
    kms.cancel_key_deletion(KeyId=key)


def test_aws_rds_rotates_yearly(kms, clock):
    kid = kms.describe_key(KeyId="alias/aws/rds")["KeyMetadata"]["KeyId"]
    clock.advance(days=365)
    assert [r["RotationType"] for r in kms.list_key_rotations(KeyId=kid)["Rotations"]] == ["AUTOMATIC"]
