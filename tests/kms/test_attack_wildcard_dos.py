"""Attack (issue 13, item 5): policy wildcards as a denial of service.

``*a*a*a*a*a*a*a*a*b`` in a StringLike condition against a 46-character encryption-context value
took seconds in a backtracking regex, inside the keystore's write lock, so every other client
waited. Now: a linear matcher (volumed.kms.policy.wildcard), encryption contexts capped at 8,192
characters, and the decision made outside the write lock (volumed.kms.policy.decisions)."""

from __future__ import annotations

import json
import threading

import pytest
from botocore.exceptions import ClientError
from hypothesis import given, settings
from hypothesis import strategies as st

from volumed import kms as kms_pkg
from volumed.kms import awsmodel
from volumed.kms.policy import authz, wildcard

EVIL = "*a*a*a*a*a*a*a*a*b"
# Generous: a backtracking matcher takes minutes to hours on these; a linear one milliseconds.
JOIN_TIMEOUT_S = 20.0


def _reference(pattern: str, text: str) -> bool:
    """Textbook dynamic programming: dp[i][j] = pattern[:i] matches text[:j]."""
    m, n = len(pattern), len(text)
    dp = [[False] * (n + 1) for _ in range(m + 1)]
    dp[0][0] = True
    for i in range(1, m + 1):
        c = pattern[i - 1]
        dp[i][0] = dp[i - 1][0] and c == "*"
        for j in range(1, n + 1):
            if c == "*":
                dp[i][j] = dp[i - 1][j] or dp[i][j - 1]
            else:
                dp[i][j] = dp[i - 1][j - 1] and (c == "?" or c == text[j - 1])
    return dp[m][n]


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="ab*?", max_size=10), st.text(alphabet="ab", max_size=12))
def test_matcher_agrees_with_the_reference(pattern, text):
    assert wildcard.match(pattern, text) == _reference(pattern, text)


def test_matcher_examples():
    assert wildcard.match("arn:aws:kms:*:111122223333:key/*", "arn:aws:kms:us-east-1:111122223333:key/k")
    assert not wildcard.match("arn:aws:kms:*:111122223333:key/*", "arn:aws:kms:us-east-1:444455556666:key/k")
    assert wildcard.match("kms:Re*", "kms:reencryptfrom", ignore_case=True)
    assert wildcard.match("a?c", "abc") and not wildcard.match("a?c", "ac")
    assert wildcard.match("*", "") and not wildcard.match("?", "")
    assert wildcard.match("a.*", "a.xyz") and not wildcard.match("a.*", "abxyz")  # "." is not special
    assert wildcard.match("[ab]", "[ab]") and not wildcard.match("[ab]", "a")


def _in_thread(fn, *args):
    out = {}

    def run():
        out["value"] = fn(*args)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(JOIN_TIMEOUT_S)
    assert not t.is_alive(), f"{fn.__name__} still running after {JOIN_TIMEOUT_S} s"
    return out["value"]


@pytest.mark.parametrize("pattern", [EVIL, EVIL.replace("a*", "?a*"), "*" + "?" * 40 + "*b"])
@pytest.mark.parametrize("n", [46, 8192])
def test_evil_pattern_finishes(pattern, n):
    assert _in_thread(wildcard.match, pattern, "a" * n) is False


def _evil_policy(account: str) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Sid": "Admin", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
         "Action": "kms:*", "Resource": "*"},
        {"Sid": "Evil", "Effect": "Deny", "Principal": "*", "Action": "kms:Encrypt", "Resource": "*",
         "Condition": {"StringLike": {"kms:EncryptionContext:x": EVIL}}}]})


def test_evil_condition_through_the_service(kms):
    key = kms.create_key(Policy=_evil_policy(kms.account_id()))["KeyMetadata"]["KeyId"]
    for n in (46, 4000):
        _in_thread(lambda: kms.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext={"x": "a" * n}))
    with pytest.raises(ClientError) as exc:
        kms.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext={"x": "a" * 46 + "b"})
    assert exc.value.response["Error"]["Code"] == "AccessDeniedException"


def test_encryption_context_is_capped(kms, key):
    big = {"x": "a" * awsmodel.MAX_ENCRYPTION_CONTEXT_CHARS}
    with pytest.raises(ClientError) as exc:
        kms.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext=big)
    err = exc.value.response["Error"]
    assert err["Code"] == "ValidationException" and "8192" in err["Message"]
    assert "aaaa" not in err["Message"]
    ok = {"x": "a" * (awsmodel.MAX_ENCRYPTION_CONTEXT_CHARS - 1)}
    kms.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext=ok)
    with pytest.raises(ClientError, match="8192"):
        kms.create_grant(KeyId=key, GranteePrincipal=kms.principal, Operations=["Encrypt"],
                         Constraints={"EncryptionContextSubset": big})


@pytest.mark.parametrize("slow_call", ["kms", "iam"])
@pytest.mark.parametrize("other_kind", ["another connection", "a client sharing the keystore"])
def test_a_slow_decision_does_not_block_other_clients(kms, key, keystore, clock, monkeypatch, other_kind,
                                                      slow_call):
    """Hold one caller's policy evaluation open (as a costly condition would), in a KMS call or an
    IAM extension call, and show that a Decrypt of another client goes through meanwhile: the
    decision is made outside the keystore's write lock, and the slow call still completes
    afterwards with the right answer."""
    blob = kms.encrypt(KeyId=key, Plaintext=b"secret")["CiphertextBlob"]
    slow_principal = f"arn:aws:iam::{kms.account_id()}:user/slow"
    entered, release = threading.Event(), threading.Event()

    def slowed(real, principal_of):
        def slow(*args):
            if principal_of(*args) == slow_principal:
                entered.set()
                assert release.wait(JOIN_TIMEOUT_S * 3)
            return real(*args)
        return slow
    monkeypatch.setattr(authz, "authorize", slowed(authz.authorize, lambda a, k, r: r.principal))
    monkeypatch.setattr(authz, "identity_decision",
                        slowed(authz.identity_decision, lambda req, p, a: req.principal_arn))
    slow = kms.with_identity(principal=slow_principal)
    result = {}

    def call_slowly():
        try:
            if slow_call == "kms":
                slow.decrypt(CiphertextBlob=blob)
            else:
                slow.get_principal_policy(PrincipalArn=slow_principal, PolicyName="p")
        except ClientError as err:
            result["code"] = err.response["Error"]["Code"]
    t = threading.Thread(target=call_slowly, daemon=True)
    t.start()
    try:
        assert entered.wait(JOIN_TIMEOUT_S)
        other = kms_pkg.connect(keystore, clock=clock) if other_kind == "another connection" else \
            kms.with_identity()
        try:
            assert _in_thread(lambda: other.decrypt(CiphertextBlob=blob)["Plaintext"]) == b"secret"
            assert t.is_alive()  # the slow decision is still open
        finally:
            if other_kind == "another connection":
                other.close()
    finally:
        release.set()
        t.join(JOIN_TIMEOUT_S)
    assert not t.is_alive()
    # decided, and decided right
    assert result == {"code": "AccessDeniedException" if slow_call == "kms" else "AccessDenied"}


def test_decisions_are_cached_by_their_inputs(kms, key, monkeypatch):
    """A repeated call is decided once; a changed policy is decided afresh; inputs that change on
    every pass (concurrent writers) still finish, decided inside the lock on the last pass."""
    calls = []
    real = authz.authorize

    def counting(action, key_, request):
        calls.append(action)
        return real(action, key_, request)
    monkeypatch.setattr(authz, "authorize", counting)
    kms.encrypt(KeyId=key, Plaintext=b"x")
    assert calls == ["kms:Encrypt"]
    kms.encrypt(KeyId=key, Plaintext=b"x")
    assert calls == ["kms:Encrypt"]  # same inputs: the cached decision
    deny = json.loads(kms.get_key_policy(KeyId=key, PolicyName="default")["Policy"])
    deny["Statement"].append({"Sid": "NoEncrypt", "Effect": "Deny", "Principal": "*",
                              "Action": "kms:Encrypt", "Resource": "*"})
    kms.put_key_policy(KeyId=key, PolicyName="default", Policy=json.dumps(deny))
    calls.clear()
    with pytest.raises(ClientError) as exc:
        kms.encrypt(KeyId=key, Plaintext=b"x")
    assert exc.value.response["Error"]["Code"] == "AccessDeniedException" and calls == ["kms:Encrypt"]

    from volumed.kms.policy import decisions
    counter = iter(range(10**6))
    monkeypatch.setattr(decisions, "fingerprint", lambda *a: str(next(counter)))
    calls.clear()
    assert kms.describe_key(KeyId=key)["KeyMetadata"]["KeyId"] == key
    assert len(calls) == decisions.MAX_PASSES + 1  # every pass missed; the last decided inside
