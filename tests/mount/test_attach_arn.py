"""ARNs in the attach flow go through volumed.kms.arn.Arn: the host principal is in the key's own
partition and account, and anything but a KMS key ARN is refused with one code."""

from __future__ import annotations

import pytest

from volumed.errors import VolumedError
from volumed.mount import attach, keyservice


@pytest.mark.parametrize("partition", ["aws", "aws-cn", "aws-us-gov"])
def test_the_host_principal_keeps_the_partition_of_the_keys_arn(partition):
    key = f"arn:{partition}:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    assert attach.host_principal(key, "db-host-1") == \
        f"arn:{partition}:sts::123456789012:assumed-role/volumed-host/db-host-1"


@pytest.mark.parametrize("text", ["arn:aws:iam::123456789012:role/R", "key/abc", "arn:aws:kms:us-east-1"])
def test_only_a_kms_key_arn_is_accepted(text):
    with pytest.raises(VolumedError) as err:
        keyservice.key_arn(text)
    assert err.value.code == "InvalidArnException"


def test_the_region_comes_from_the_parsed_arn():
    assert keyservice.key_arn("arn:aws:kms:ap-south-1:123456789012:key/k").region == "ap-south-1"
