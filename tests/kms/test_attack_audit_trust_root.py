"""Attack (issue 13, item 3): `audit verify` must not trust the database it verifies.

The attacker can write keystore.db but cannot read audit-signing.key (nor write the keystore
directory). Before: they rewrote records, resealed every digest with a key of their own and
pointed the database's signing-key path at it, and verify said OK; they removed trailing digests
and raised the database's seal schedule, and verify said OK. Now the trust root is the public key
pinned in audit-signing.pub beside the database, and each digest signs the schedule."""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.kms.conftest_b import fill, open_db
from tests.kms.test_audit_verify import rehash_from, resign_digests
from volumed import kms as kms_pkg
from volumed.cli import audit_cmd
from volumed.kms import audit
from volumed.kms.audit import log as audit_log


def _cli_verify(keystore: str, *extra: str) -> int:
    parser = argparse.ArgumentParser(prog="volumed kms")
    audit_cmd.register_audit(parser.add_subparsers(dest="kms_command"))
    args = parser.parse_args(["audit", "verify", "--kms", keystore, *extra])
    return args.func(args)


@pytest.fixture
def sealed_keystore(keystore, clock):
    """A real keystore with two sealed digests and an unsealed record."""
    client = kms_pkg.connect(keystore, clock=clock)
    key = client.create_key()["KeyMetadata"]["KeyId"]
    blob = client.encrypt(KeyId=key, Plaintext=b"x")["CiphertextBlob"]
    conn = sqlite3.connect(os.path.join(keystore, "keystore.db"), isolation_level=None)
    for _ in range(2):
        for _ in range(3):
            client.decrypt(CiphertextBlob=blob)
        audit.seal(conn, clock)
    client.decrypt(CiphertextBlob=blob)
    client.close()
    yield keystore, conn
    conn.close()


def test_keystore_pins_its_signing_key_outside_the_database(sealed_keystore):
    keystore, conn = sealed_keystore
    pin = os.path.join(keystore, audit.PIN_FILE)
    assert stat.S_IMODE(os.stat(pin).st_mode) == 0o644
    signing = audit.load_signing_key(os.path.join(keystore, audit.SIGNING_KEY_FILE)).public_key()
    assert [audit.fingerprint(k) for k in audit.read_pin(pin)] == [audit.fingerprint(signing)]
    report = audit.verify(conn)
    assert report.ok and report.trust_root == pin
    for dseq, body in conn.execute("SELECT dseq, body FROM audit_digest").fetchall():
        body = json.loads(body)
        assert body["digestVersion"] == 2 and body["sealEvery"] == audit.DEFAULT_SEAL_EVERY


def test_rewritten_log_resealed_with_the_attackers_key_and_repointed_fails(sealed_keystore, tmp_path, capsys):
    keystore, conn = sealed_keystore
    # rewrite who called: every Decrypt was made by "mallory" instead
    conn.execute("UPDATE audit SET record = replace(record, ':user/', ':user/mallory-') "
                 "WHERE record LIKE '%\"Decrypt\"%'")
    rehash_from(conn, 1)
    evil = Ed25519PrivateKey.generate()
    evil_path = tmp_path / "evil.key"
    evil_path.write_bytes(evil.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
    resign_digests(conn, evil)
    evil_pub = evil.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    conn.executemany("UPDATE audit_config SET value = ? WHERE name = ?",
                     [(str(evil_path), "signing_key_path"), (evil_pub.hex(), "public_key")])
    # what the old verifier trusted (the key the database names) now vouches for the rewrite ...
    assert audit.verify(conn, public_key=str(evil_path)).ok
    # ... but the verifier's trust root is the pinned key, outside the database
    report = audit.verify(conn)
    assert not report.ok
    kinds = {p.kind for p in report.problems}
    assert "key" in kinds
    assert any("repointed" in p.message for p in report.problems)
    assert {p.digest for p in report.problems if p.kind == "key"} >= {1, 2}
    assert _cli_verify(keystore) == 4
    out = capsys.readouterr().out
    assert "FAILED" in out and "repointed" in out


def test_version_1_digests_still_verify_with_a_note(tmp_path, monkeypatch):
    monkeypatch.setattr(audit_log, "DIGEST_VERSION", 1)
    conn, clock, _ = open_db(str(tmp_path), seal_every=5)
    fill(conn, clock, 7)
    monkeypatch.setattr(audit_log, "DIGEST_VERSION", 2)
    fill(conn, clock, 5, start=8)
    bodies = [json.loads(b) for (b,) in conn.execute("SELECT body FROM audit_digest ORDER BY dseq")]
    assert [b["digestVersion"] for b in bodies] == [1, 2] and "sealEvery" not in bodies[0]
    report = audit.verify(conn)
    assert report.ok
    assert any("format v1" in w for w in report.warnings)
    conn.close()


def test_a_pin_others_could_replace_or_a_missing_pin_is_no_trust_root(sealed_keystore, clock):
    keystore, conn = sealed_keystore
    pin = os.path.join(keystore, audit.PIN_FILE)
    os.chmod(pin, 0o666)
    report = audit.verify(conn)
    assert not report.ok and "chmod 644" in report.problems[0].message
    os.chmod(pin, 0o644)
    os.rename(pin, pin + ".gone")  # a keystore made before pinning
    report = audit.verify(conn)
    assert not report.ok and [p.kind for p in report.problems] == ["key"]
    assert "--public-key" in report.problems[0].message
    # the key given on the command line is a trust root too
    assert audit.verify(conn, public_key=os.path.join(keystore, audit.SIGNING_KEY_FILE)).ok
    kms_pkg.connect(keystore, clock=clock).close()  # opening it with this version pins the key
    assert audit.verify(conn).ok


def test_a_replaced_signing_key_file_is_refused_at_open(sealed_keystore, clock):
    keystore, _ = sealed_keystore
    path = os.path.join(keystore, audit.SIGNING_KEY_FILE)
    os.rename(path, path + ".old")
    audit.create_signing_key(path)
    with pytest.raises(audit.AuditError, match="not the key pinned") as exc:
        kms_pkg.connect(keystore, clock=clock)
    assert "\n" not in str(exc.value)


def test_reordered_or_removed_seals_are_detected(tmp_path):
    """Seals swapped, or trailing seals removed with the database's schedule raised to hide it."""
    conn, clock, _ = open_db(str(tmp_path), seal_every=3)
    fill(conn, clock, 10)  # digests 1..3, record 10 unsealed
    rows = conn.execute("SELECT dseq, body, signature, hash FROM audit_digest ORDER BY dseq").fetchall()
    # swap digests 2 and 3 (each keeps its own valid signature)
    for (dseq, *_), (_, body, sig, h) in zip(rows[1:3], reversed(rows[1:3])):
        conn.execute("UPDATE audit_digest SET body = ?, signature = ?, hash = ? WHERE dseq = ?",
                     (body, sig, h, dseq))
    report = audit.verify(conn)
    assert not report.ok and {p.kind for p in report.problems} >= {"digest"}
    # remove the last seal: the schedule signed in digest 2 says records 7..10 are overdue
    for dseq, body, sig, h in rows[1:3]:
        conn.execute("UPDATE audit_digest SET body = ?, signature = ?, hash = ? WHERE dseq = ?",
                     (body, sig, h, dseq))
    assert audit.verify(conn).ok
    conn.execute("DELETE FROM audit_digest WHERE dseq = 3")
    conn.execute("UPDATE audit_config SET value = '1000' WHERE name = 'seal_every'")
    report = audit.verify(conn)
    assert [p.kind for p in report.problems] == ["schedule"]
    assert "every 3 records" in report.problems[0].message  # the signed schedule, not the database's
    conn.close()
