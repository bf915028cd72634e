"""Principal ARNs and the client's identity."""

import socket

from volumed.kms import principals


def test_arn_forms():
    assert principals.user_arn("111122223333", "ana") == "arn:aws:iam::111122223333:user/ana"
    assert principals.host_arn("111122223333", "db1") == "arn:aws:sts::111122223333:assumed-role/volumed-host/db1"
    assert principals.rds_via("eu-west-1") == "rds.eu-west-1.amazonaws.com"


def test_defaults_follow_the_keystore(kms):
    assert kms.principal == principals.default_user_principal(kms)
    assert principals.default_host_principal(kms) == principals.host_arn(kms.account_id(), socket.gethostname())
    assert kms.via_service is None and kms.region() == "us-east-1"
    host = kms.with_identity(principal=principals.default_host_principal(kms))
    assert host.via_service is None and host.account_id() == kms.account_id()
    assert host.with_identity(via_service="x").principal == host.principal
