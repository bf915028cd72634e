"""Attack (issue 13, item 8): make a call fail validation with a real grant token in its list
members, then look for the token in the error and in the audit log. It must be in neither."""

from __future__ import annotations

import os
import sqlite3

import pytest
from botocore.exceptions import ClientError

from volumed.kms.store import keystore as ks


def _audit_text(kms) -> str:
    conn = sqlite3.connect(os.path.join(kms.keystore_path, ks.DB_FILE))
    try:
        rows = conn.execute("SELECT record FROM audit").fetchall()
        digests = conn.execute("SELECT body FROM audit_digest").fetchall()
    finally:
        conn.close()
    return "\n".join(r[0] for r in rows + digests)


@pytest.mark.parametrize("shape", ["too many tokens", "token too long"])
def test_grant_tokens_never_reach_the_error_or_the_audit_log(kms, key, shape):
    token = kms.create_grant(KeyId=key, GranteePrincipal=kms.principal, Operations=["Encrypt"])["GrantToken"]
    if shape == "too many tokens":  # GrantTokens: at most 10 members
        tokens, secret = [token] * 11, token
    else:  # one member longer than 8192 characters, carrying the real token
        secret = token
        tokens = [token + "A" * 8200]
    with pytest.raises(ClientError) as exc:
        kms.encrypt(KeyId=key, Plaintext=b"x", GrantTokens=tokens)
    err = exc.value.response["Error"]
    assert err["Code"] == "ValidationException"
    assert "grantTokens" in err["Message"]  # it still says which member is at fault
    assert secret not in err["Message"] and secret not in str(exc.value)
    log = _audit_text(kms)
    assert "ValidationException" in log  # the refused call was recorded ...
    assert secret not in log  # ... without the token
    assert secret[:24] not in log
