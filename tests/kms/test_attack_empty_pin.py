"""Attack on issue 13 item 3's fix: a pin file that lists no key must not make `audit verify`
skip every signature.

An empty audit-signing.pub is what a crash between creating the pin file (O_CREAT) and writing
its line left behind; one that holds only comments is what an operator gets by commenting out a
rotated key. Before: verify took "no keys" as "nothing to check against", skipped every digest's
signature and said OK to a log rewritten and resealed by whoever could write the database; the
keystore then refused to open with "the key was replaced". Now the pin is written whole or not at
all (temporary file, then a link that never overwrites), and a pin listing no key is no trust root."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.kms.test_attack_audit_trust_root import sealed_keystore  # noqa: F401  (fixture)
from tests.kms.test_audit_verify import rehash_from, resign_digests
from volumed import kms as kms_pkg
from volumed.kms import audit
from volumed.kms.audit import log as audit_log


@pytest.mark.parametrize("content", ["", "# rotated: the old key is commented out\n"])
def test_a_pin_listing_no_key_is_no_trust_root(sealed_keystore, content):  # noqa: F811
    keystore, conn = sealed_keystore
    pin = os.path.join(keystore, audit.PIN_FILE)
    with open(pin, "w") as f:
        f.write(content)
    conn.execute("UPDATE audit SET record = replace(record, ':user/', ':user/mallory-') "
                 "WHERE record LIKE '%\"Decrypt\"%'")
    rehash_from(conn, 1)
    evil = Ed25519PrivateKey.generate()
    resign_digests(conn, evil)
    conn.execute("UPDATE audit_config SET value = ? WHERE name = 'public_key'",
                 (audit_log._raw_public(evil.public_key()).hex(),))
    report = audit.verify(conn)
    assert not report.ok
    assert any(p.kind == "key" and "no key" in p.message for p in report.problems)


def test_a_crash_while_pinning_leaves_no_empty_pin(keystore, clock, monkeypatch):
    """The pin appears whole or not at all: a write that fails half way leaves no pin file, so
    the next open pins the key instead of refusing it as 'replaced'."""
    real_write = os.write
    calls = {"n": 0}

    def dying_write(fd, data):
        if b"ed25519" in bytes(data) and calls["n"] == 0:
            calls["n"] += 1
            raise OSError(28, "No space left on device")
        return real_write(fd, data)
    monkeypatch.setattr(os, "write", dying_write)
    with pytest.raises(audit.AuditError, match="cannot pin"):
        kms_pkg.connect(keystore, clock=clock)
    monkeypatch.setattr(os, "write", real_write)
    pin = os.path.join(keystore, audit.PIN_FILE)
    assert not os.path.exists(pin)
    assert not [n for n in os.listdir(keystore) if ".tmp-" in n]
    kms_pkg.connect(keystore, clock=clock).close()
    assert len(audit.read_pin(pin)) == 1
