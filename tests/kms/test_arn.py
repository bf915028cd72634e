"""One parsed ARN type, and the four session-to-role checks (key policy, grants, identity-policy
store, IAM calls) agreeing on it, across partitions (issue 13, "Also")."""

from __future__ import annotations

import json
import sqlite3

import pytest
from botocore.exceptions import ClientError

from volumed.kms import arn as A
from volumed.kms.arn import Arn, InvalidArn
from volumed.kms.ops import iam_ops
from volumed.kms.policy import grants, policy
from volumed.kms.store import iamstore

ACCT = "111122223333"


def test_parse_round_trips_and_names_the_fault():
    a = Arn.parse(f"arn:aws-us-gov:sts::{ACCT}:assumed-role/Admin/alice@x")
    assert (a.partition, a.service, a.region, a.account) == ("aws-us-gov", "sts", "", ACCT)
    assert a.session == ("Admin", "alice@x")
    assert str(a.session_role()) == f"arn:aws-us-gov:iam::{ACCT}:role/Admin"
    assert str(a) == f"arn:aws-us-gov:sts::{ACCT}:assumed-role/Admin/alice@x"
    assert Arn.parse(f"arn:aws:iam::{ACCT}:role/team/a/Admin").role_name == "Admin"
    assert Arn.parse("arn:aws:kms:us-east-1:111122223333:alias/x").resource == "alias/x"
    for bad, fault in (("arn:aws:iam", "not an ARN"), ("arn:foo:iam::111122223333:root", "partition"),
                       ("arn:aws:iam::1234:root", "account"), ("arn:aws:iam::111122223333:", "resource"),
                       ("ARN:aws:iam::111122223333:root", "not an ARN")):
        with pytest.raises(InvalidArn, match=fault) as exc:
            Arn.parse(bad)
        assert exc.value.code == "ValidationException"
    assert Arn.try_parse("rds.amazonaws.com") is None
    with pytest.raises(InvalidArn, match="limit"):
        Arn.parse("arn:aws:iam::111122223333:user/" + "a" * 3000)


SESSION = {p: f"arn:{p}:sts::{ACCT}:assumed-role/Admin/s1" for p in ("aws", "aws-cn", "aws-us-gov")}
ROLE = f"arn:aws:iam::{ACCT}:role/ops/Admin"


def _policy_names(entry: str, caller: str) -> bool:
    doc = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": entry},
                                                   "Action": "kms:Decrypt", "Resource": "*"}]}
    req = policy.Request(principal_arn=caller, principal_account=policy.account_of(caller) or "",
                         action="kms:Decrypt", resource=f"arn:aws:kms:us-east-1:{ACCT}:key/k")
    return policy.evaluate(doc, [], req).allowed


def _store_with_role_policy():
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
    iamstore.ensure_schema(conn)
    iamstore.put(conn, ROLE, "p", json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["iam:*", "kms:*"], "Resource": "*"}]}), 0.0)
    return conn


def _checks(entry: str, caller: str) -> dict[str, bool]:
    """The four checks: does ``entry`` (a role) cover ``caller``?"""
    conn = _store_with_role_policy()
    return {
        "key policy": _policy_names(entry, caller),
        "grant": grants.grantee_matches(entry, caller),
        "iam store": bool(iamstore.policies_for_caller(conn, caller)),
        "iam": iam_ops.may(conn, caller, ACCT, "Get", f"arn:aws:iam::{ACCT}:user/bob"),
    }


@pytest.mark.parametrize("partition", ["aws", "aws-cn", "aws-us-gov"])
def test_the_checks_agree_on_the_partition(partition):
    """The attack: a session of another partition with the same account id and role name. The
    key policy used to accept it (it ignored the partition) while grants refused it."""
    caller = SESSION[partition]
    results = _checks(ROLE, caller)
    want = partition == "aws"
    assert results == {k: want for k in results}, results
    assert A.covers(ROLE, caller) is want


def test_account_entry_delegates_only_within_its_partition():
    root = f"arn:aws:iam::{ACCT}:root"
    assert A.account_covers(root, SESSION["aws"])
    assert not A.account_covers(root, SESSION["aws-cn"])
    assert not A.account_covers(root, f"arn:aws:iam::444455556666:user/x")
    assert not A.account_covers(root, "rds.amazonaws.com")


def _allow_role_policy(account: str) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Sid": "Root", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
         "Action": "kms:*", "Resource": "*"},
        {"Sid": "Role", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{account}:role/ops/Admin"},
         "Action": ["kms:Encrypt", "kms:Decrypt"], "Resource": "*"}]})


def test_end_to_end_a_foreign_partition_session_gets_nothing(kms):
    """Through the service: key policy naming the role, a grant to the role, an identity policy on
    the role. A same-named session of aws-cn is refused by all three; the aws session by none."""
    acct = kms.account_id()
    key = kms.create_key(Policy=_allow_role_policy(acct))["KeyMetadata"]["KeyId"]
    other = kms.create_key()["KeyMetadata"]["KeyId"]
    role = f"arn:aws:iam::{acct}:role/ops/Admin"
    kms.create_grant(KeyId=other, GranteePrincipal=role, Operations=["Encrypt"])
    third = kms.create_key()["KeyMetadata"]["KeyId"]
    kms.put_principal_policy(PrincipalArn=f"arn:aws:iam::{acct}:role/Admin", PolicyName="p",
                             PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
                                 {"Effect": "Allow", "Action": "kms:Encrypt", "Resource": "*"}]}))
    for partition in ("aws", "aws-cn", "aws-us-gov"):
        s = kms.with_identity(principal=f"arn:{partition}:sts::{acct}:assumed-role/Admin/s1")
        for key_id in (key, other, third):
            if partition == "aws":
                s.encrypt(KeyId=key_id, Plaintext=b"x")
            else:
                with pytest.raises(ClientError) as exc:
                    s.encrypt(KeyId=key_id, Plaintext=b"x")
                assert exc.value.response["Error"]["Code"] == "AccessDeniedException"


def test_iam_targets_must_be_in_the_keystore_partition(kms):
    acct = kms.account_id()
    doc = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "kms:Encrypt", "Resource": "*"}]})
    with pytest.raises(ClientError, match="partition aws-cn"):
        kms.put_principal_policy(PrincipalArn=f"arn:aws-cn:iam::{acct}:role/Admin", PolicyName="p",
                                 PolicyDocument=doc)
    with pytest.raises(ClientError, match="session's role arn:aws:iam::"):
        kms.put_principal_policy(PrincipalArn=f"arn:aws:sts::{acct}:assumed-role/Admin/s",
                                 PolicyName="p", PolicyDocument=doc)
    # the root of a foreign partition is not this keystore's root
    foreign_root = kms.with_identity(principal=f"arn:aws-cn:iam::{acct}:root")
    with pytest.raises(ClientError) as exc:
        foreign_root.put_principal_policy(PrincipalArn=f"arn:aws:iam::{acct}:role/Admin",
                                          PolicyName="p", PolicyDocument=doc)
    assert exc.value.response["Error"]["Code"] == "AccessDenied"
