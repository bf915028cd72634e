"""Key and alias operations: CreateKey, DescribeKey, ListKeys, Enable/DisableKey, aliases, every
KeyId form, pagination, and botocore-identical validation and exceptions."""

import pytest
from botocore.exceptions import ClientError, ParamValidationError

from tests.kms.conftest import code_of, message_of


def test_create_key_defaults(kms):
    md = kms.create_key()["KeyMetadata"]
    assert md["KeyState"] == "Enabled" and md["Enabled"] is True
    assert md["KeyManager"] == "CUSTOMER" and md["KeySpec"] == "SYMMETRIC_DEFAULT"
    assert md["Arn"] == f"arn:aws:kms:us-east-1:{kms.account_id()}:key/{md['KeyId']}"
    assert md["AWSAccountId"] == kms.account_id() and len(kms.account_id()) == 12


def test_every_keyid_form_names_the_key(kms, key):
    arn = kms.describe_key(KeyId=key)["KeyMetadata"]["Arn"]
    kms.create_alias(AliasName="alias/app", TargetKeyId=key)
    alias_arn = f"arn:aws:kms:us-east-1:{kms.account_id()}:alias/app"
    for ref in (key, arn, "alias/app", alias_arn):
        assert kms.describe_key(KeyId=ref)["KeyMetadata"]["KeyId"] == key


@pytest.mark.parametrize("ref,code", [
    ("00000000-0000-0000-0000-000000000000", "NotFoundException"),
    ("not-a-key", "NotFoundException"),
    ("alias/missing", "NotFoundException"),
    ("arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000", "NotFoundException"),
    ("arn:aws:kms:nonsense", "InvalidArnException"),
])
def test_unknown_keys(kms, ref, code):
    with pytest.raises(ClientError) as ei:
        kms.describe_key(KeyId=ref)
    assert code_of(ei) == code


def test_not_found_message_names_the_arn(kms):
    kid = "00000000-0000-0000-0000-000000000000"
    with pytest.raises(kms.exceptions.NotFoundException) as ei:
        kms.encrypt(KeyId=kid, Plaintext=b"x")
    assert message_of(ei) == f"Key 'arn:aws:kms:us-east-1:{kms.account_id()}:key/{kid}' does not exist"


def test_list_keys_paginates(kms):
    ids = {kms.create_key()["KeyMetadata"]["KeyId"] for _ in range(5)}
    seen, marker = [], None
    while True:
        kw = {"Limit": 2} | ({"Marker": marker} if marker else {})
        page = kms.list_keys(**kw)
        seen += [k["KeyId"] for k in page["Keys"]]
        if not page["Truncated"]:
            break
        marker = page["NextMarker"]
    assert set(seen) == ids and len(seen) == 5
    with pytest.raises(kms.exceptions.InvalidMarkerException):
        kms.list_keys(Marker="bogus")


def test_enable_disable(kms, key):
    kms.disable_key(KeyId=key)
    md = kms.describe_key(KeyId=key)["KeyMetadata"]
    assert md["KeyState"] == "Disabled" and md["Enabled"] is False
    kms.enable_key(KeyId=key)
    assert kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Enabled"


def test_aliases(kms, key):
    other = kms.create_key()["KeyMetadata"]["KeyId"]
    kms.create_alias(AliasName="alias/a", TargetKeyId=key)
    with pytest.raises(kms.exceptions.AlreadyExistsException):
        kms.create_alias(AliasName="alias/a", TargetKeyId=other)
    listed = kms.list_aliases()["Aliases"]
    assert [(a["AliasName"], a["TargetKeyId"]) for a in listed] == [("alias/a", key)]
    assert kms.list_aliases(KeyId=other)["Aliases"] == []
    kms.update_alias(AliasName="alias/a", TargetKeyId=other)
    assert kms.describe_key(KeyId="alias/a")["KeyMetadata"]["KeyId"] == other
    kms.delete_alias(AliasName="alias/a")
    with pytest.raises(kms.exceptions.NotFoundException):
        kms.describe_key(KeyId="alias/a")


@pytest.mark.parametrize("name,code", [
    ("alias/aws/mine", "NotAuthorizedException"),
    ("noprefix", "InvalidAliasNameException"),
    ("alias/has space", "ValidationException"),
])
def test_bad_alias_names_change_nothing(kms, key, name, code):
    with pytest.raises(ClientError) as ei:
        kms.create_alias(AliasName=name, TargetKeyId=key)
    assert code_of(ei) == code
    assert kms.list_aliases()["Aliases"] == []


def test_alias_must_target_a_key(kms, key):
    kms.create_alias(AliasName="alias/a", TargetKeyId=key)
    with pytest.raises(ClientError) as ei:
        kms.create_alias(AliasName="alias/b", TargetKeyId="alias/a")
    assert code_of(ei) == "ValidationException"


def test_param_validation_is_botocore_s(kms):
    with pytest.raises(ParamValidationError):
        kms.describe_key()
    with pytest.raises(ParamValidationError):
        kms.describe_key(KeyId=5)
    with pytest.raises(ParamValidationError):
        kms.create_key(NoSuchParam=1)
    with pytest.raises(TypeError):
        kms._client.describe_key("positional")


def test_exception_classes_match_botocore_s(kms):
    import boto3

    real = boto3.client("kms", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")
    for code in ("NotFoundException", "DisabledException", "KMSInvalidStateException",
                 "InvalidCiphertextException", "IncorrectKeyException"):
        assert getattr(kms.exceptions, code).__name__ == getattr(real.exceptions, code).__name__
        assert issubclass(getattr(kms.exceptions, code), ClientError)
    assert issubclass(kms.exceptions.AccessDeniedException, ClientError)
    with pytest.raises(kms.exceptions.NotFoundException) as ei:
        kms.describe_key(KeyId="alias/nope")
    assert str(ei.value).startswith("An error occurred (NotFoundException) when calling the DescribeKey operation")


def test_server_side_constraints(kms, key):
    with pytest.raises(ClientError) as ei:
        kms.create_grant(KeyId=key, GranteePrincipal="arn:aws:iam::111122223333:user/x", Operations=["Fly"])
    assert code_of(ei) == "ValidationException" and "enum value set" in message_of(ei)
    with pytest.raises(ClientError) as ei:
        kms.encrypt(KeyId=key, Plaintext=b"x" * 4097)
    assert code_of(ei) == "ValidationException"


def test_update_description_and_client_identity(kms, key):
    kms.update_key_description(KeyId=key, Description="new")
    assert kms.describe_key(KeyId=key)["KeyMetadata"]["Description"] == "new"
    assert kms.principal.startswith(f"arn:aws:iam::{kms.account_id()}:user/")
    host = kms.with_identity(principal="arn:aws:sts::1:assumed-role/volumed-host/h", via_service="rds.us-east-1.amazonaws.com")
    assert host.principal.endswith("/h") and host.via_service.startswith("rds.")
    # Another account's host with no key-policy statement or grant is refused, as AWS KMS does.
    with pytest.raises(host.exceptions.AccessDeniedException):
        host.describe_key(KeyId=key)


def test_unsupported_key_types(kms):
    with pytest.raises(kms.exceptions.UnsupportedOperationException):
        kms.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")
    assert kms.list_keys()["Keys"] == []


def test_dry_run_changes_nothing(kms, key):
    with pytest.raises(kms.exceptions.DryRunOperationException):
        kms.create_grant(KeyId=key, GranteePrincipal="arn:aws:iam::111122223333:user/x",
                         Operations=["Decrypt"], DryRun=True)
    assert kms.list_grants(KeyId=key)["Grants"] == []


def test_boto3_paginators(kms):
    ids = {kms.create_key()["KeyMetadata"]["KeyId"] for _ in range(5)}
    pages = list(kms.get_paginator("list_keys").paginate(PaginationConfig={"PageSize": 2}))
    assert len(pages) == 3
    assert {k["KeyId"] for p in pages for k in p["Keys"]} == ids
    full = kms.get_paginator("list_keys").paginate().build_full_result()
    assert {k["KeyId"] for k in full["Keys"]} == ids
    assert kms.can_paginate("list_grants") and not kms.can_paginate("encrypt")


def test_shape_check_catches_what_boto3_would_not_return():
    from volumed.kms import awsmodel

    meta = awsmodel.response_metadata()
    with pytest.raises(AssertionError):
        awsmodel.validate_response("DescribeKey", {"KeyMetadata": {"KeyId": "x", "Extra": 1}, "ResponseMetadata": meta})
    with pytest.raises(AssertionError):
        awsmodel.validate_response("DescribeKey", {"KeyMetadata": {"KeyId": 5}, "ResponseMetadata": meta})
    with pytest.raises(AssertionError):
        awsmodel.validate_response("DescribeKey", {"KeyMetadata": {"KeyId": "x", "KeyState": "Sleeping"},
                                                   "ResponseMetadata": meta})
    with pytest.raises(AssertionError):
        awsmodel.validate_response("EnableKey", {"Unexpected": True, "ResponseMetadata": meta})
