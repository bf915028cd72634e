"""`volumed kms audit --key alias/x` finds the records of the aliased key: records name keys by ARN
(every call the mount and the host make) or id, never by alias."""

import json
import os
import subprocess
import sys

import pytest

from volumed import kms

pytestmark = pytest.mark.timeout(120)


def _volumed(env, *argv):
    return subprocess.run([sys.executable, "-m", "volumed", *argv], capture_output=True, text=True, env=env)


def test_audit_filter_by_alias_matches_calls_made_by_arn(tmp_path):
    ks = str(tmp_path / "ks")
    client = kms.connect(ks)
    key = client.create_key(Description="orders")["KeyMetadata"]
    other = client.create_key(Description="other")["KeyMetadata"]
    client.create_alias(AliasName="alias/orders", TargetKeyId=key["KeyId"])
    client.encrypt(KeyId=key["Arn"], Plaintext=b"x", EncryptionContext={"aws:rds:db-id": "db-A"})
    client.encrypt(KeyId=other["Arn"], Plaintext=b"y")
    client.close()

    env = dict(os.environ, VOLUMED_KMS=ks)
    p = _volumed(env, "kms", "audit", "--key", "alias/orders", "--json")
    assert p.returncode == 0, p.stderr
    records = json.loads(p.stdout)["Records"]
    names = [r["eventName"] for r in records]
    assert "Encrypt" in names and "CreateKey" in names
    assert all(key["Arn"] in json.dumps(r) or r["requestParameters"].get("keyId") in
               (key["KeyId"], key["Arn"]) for r in records)
    assert not any(other["Arn"] in json.dumps(r.get("resources")) for r in records)

    p = _volumed(env, "kms", "audit", "--key", "alias/nope")
    assert p.returncode != 0
    assert p.stderr.strip().count("\n") == 0 and "no alias alias/nope" in p.stderr
