"""Tamper evidence: verify passes an untouched log and names the place of each kind of tampering
(edit, delete, insert, reorder, forged or removed digest), and an anchor kept elsewhere catches a
truncated tail. Each test tampers with the real SQLite file the way someone with write access to
it (but not the signing key) could."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.kms.conftest_b import call, fill, open_db
from volumed.kms import audit


@pytest.fixture
def log(tmp_path):
    """13 records: digests 1 (records 1-5) and 2 (6-10), records 11-13 unsealed."""
    conn, clock, key_path = open_db(str(tmp_path), seal_every=5)
    fill(conn, clock, 13)
    assert audit.verify(conn).ok
    yield conn, clock, key_path
    conn.close()


def rows(conn):
    return conn.execute("SELECT seq, record, prev_hash, hash FROM audit ORDER BY seq").fetchall()


def edit(conn, seq: int, old: str, new: str) -> None:
    text = conn.execute("SELECT record FROM audit WHERE seq = ?", (seq,)).fetchone()[0]
    assert old in text
    conn.execute("UPDATE audit SET record = ? WHERE seq = ?", (text.replace(old, new), seq))


def rehash_from(conn, seq: int) -> None:
    """What a careful forger does after a change: recompute the chain from ``seq`` on."""
    prev = audit.GENESIS
    for s, text, _, h in rows(conn):
        if s >= seq:
            h = audit.chain_hash(prev, text)
            conn.execute("UPDATE audit SET prev_hash = ?, hash = ? WHERE seq = ?", (prev, h, s))
        prev = h


def resign_digests(conn, key: Ed25519PrivateKey, *, fingerprint: str | None = None) -> None:
    """Rebuild every digest over the records as they now are and sign with ``key`` (a forger's)."""
    prev_hash, prev_sig = audit.GENESIS, ""
    for dseq, text in conn.execute("SELECT dseq, body FROM audit_digest ORDER BY dseq").fetchall():
        body = json.loads(text)
        sealed = conn.execute("SELECT record, hash FROM audit WHERE seq BETWEEN ? AND ? ORDER BY seq",
                              (body["firstSeq"], body["lastSeq"])).fetchall()
        body.update(recordHashes=[audit.content_hash(t) for t, _ in sealed], lastHash=sealed[-1][1],
                    previousDigestHash=prev_hash,
                    previousDigestSignature=prev_sig,
                    publicKeyFingerprint=fingerprint or audit.fingerprint(key.public_key()))
        new = json.dumps(body, sort_keys=True, separators=(",", ":"))
        prev_hash = audit.content_hash(new)  # the same SHA-256 of the text
        prev_sig = key.sign(new.encode()).hex()
        conn.execute("UPDATE audit_digest SET body = ?, signature = ?, hash = ? WHERE dseq = ?",
                     (new, prev_sig, prev_hash, dseq))


def problems(report):
    return sorted((p.kind, p.seq) for p in report.problems)


def digest_messages(conn, dseq: int) -> list[str]:
    return [p.message for p in audit.verify(conn).problems if p.digest == dseq]


def test_untouched_log_verifies(log):
    conn, _, _ = log
    anchor = audit.latest_anchor(conn)
    report = audit.verify(conn, anchor=anchor)
    assert report.ok, report.format()
    assert (report.records, report.digests, report.sealed_through, report.unsealed) == (13, 2, 10, 3)
    assert report.anchor_found
    assert "audit log OK" in report.format()
    json.dumps(report.to_dict())


def test_edited_sealed_record_is_named(log):
    conn, _, _ = log
    edit(conn, 3, "vol-3", "vol-X")
    report = audit.verify(conn)
    assert not report.ok
    assert problems(report) == [("edited", 3)]
    assert "record 3" in report.format()


def test_edited_and_rehashed_record_is_named_by_its_digest(log):
    conn, _, _ = log
    edit(conn, 3, "vol-3", "vol-X")
    rehash_from(conn, 3)
    report = audit.verify(conn)
    assert problems(report) == [("edited", 3)]
    assert "sealed in digest 1" in report.problems[0].message


def test_edited_unsealed_record_is_named_by_the_chain(log):
    conn, _, _ = log
    edit(conn, 12, "db-12", "db-99")
    assert problems(audit.verify(conn)) == [("edited", 12)]


def test_rewritten_unsealed_tail_is_beyond_the_chain_alone(log):
    """The documented limit: records after the last digest are protected by the chain only, which
    anyone can recompute. verify says how many records are in that state."""
    conn, _, _ = log
    edit(conn, 12, "db-12", "db-99")
    rehash_from(conn, 12)
    report = audit.verify(conn)
    assert report.ok
    assert any("records 11..13 are not sealed yet" in w for w in report.warnings)


def test_deleted_sealed_record_is_named(log):
    conn, _, _ = log
    conn.execute("DELETE FROM audit WHERE seq = 4")
    report = audit.verify(conn)
    assert problems(report) == [("deleted", 4)]


def test_deleted_sealed_record_with_renumbering_and_rehash_is_named(log):
    conn, _, _ = log
    conn.execute("DELETE FROM audit WHERE seq = 4")
    conn.execute("UPDATE audit SET seq = seq - 1 WHERE seq > 4")
    rehash_from(conn, 4)
    report = audit.verify(conn)
    assert ("deleted", 4) in problems(report)
    # The unsealed record 11 now sits at the sealed number 10: also named.
    assert ("inserted", 10) in problems(report)


def test_deleted_unsealed_record_breaks_the_chain_there(log):
    conn, _, _ = log
    conn.execute("DELETE FROM audit WHERE seq = 12")
    report = audit.verify(conn)
    assert problems(report) == [("chain", 13)]
    assert "records 12..12 are missing" in report.problems[0].message


def test_inserted_record_is_named(log):
    conn, clock, _ = log
    forged = rows(conn)[2][1].replace("vol-3", "vol-FORGED")
    conn.execute("UPDATE audit SET seq = seq + 100 WHERE seq >= 4")
    conn.execute("UPDATE audit SET seq = seq - 99 WHERE seq >= 104")
    conn.execute("INSERT INTO audit (seq, record, prev_hash, hash) VALUES (4, ?, '', '')", (forged,))
    rehash_from(conn, 4)
    report = audit.verify(conn)
    assert problems(report) == [("inserted", 4)], report.format()


def test_reordered_records_are_named(log):
    conn, _, _ = log
    r = {s: (t, p, h) for s, t, p, h in rows(conn)}
    for a, b in ((2, 3), (3, 2)):
        conn.execute("UPDATE audit SET record = ?, prev_hash = ?, hash = ? WHERE seq = ?", (*r[b], a))
    report = audit.verify(conn)
    assert {p.kind for p in report.problems} == {"reordered"}
    assert report.seqs() == {2, 3}
    assert any("sealed as 3" in p.message and "now at 2" in p.message for p in report.problems)


def test_reordered_and_rehashed_records_are_named(log):
    conn, _, _ = log
    r = {s: t for s, t, _, _ in rows(conn)}
    conn.execute("UPDATE audit SET record = ? WHERE seq = 7", (r[8],))
    conn.execute("UPDATE audit SET record = ? WHERE seq = 8", (r[7],))
    rehash_from(conn, 7)
    report = audit.verify(conn)
    assert not report.ok and report.seqs() == {7, 8}


def test_forged_digests_signed_with_another_key_are_refused(log):
    conn, _, _ = log
    edit(conn, 3, "vol-3", "vol-X")
    rehash_from(conn, 3)
    resign_digests(conn, Ed25519PrivateKey.generate())
    report = audit.verify(conn)
    assert {p.kind for p in report.problems} == {"key"}
    assert {p.digest for p in report.problems} == {1, 2}


def test_forged_digest_claiming_the_real_key_fails_its_signature(log):
    conn, _, key_path = log
    real_fp = audit.fingerprint(audit.load_signing_key(key_path).public_key())
    edit(conn, 8, "vol-8", "vol-X")
    rehash_from(conn, 8)
    resign_digests(conn, Ed25519PrivateKey.generate(), fingerprint=real_fp)
    report = audit.verify(conn)
    assert ("digest", None) in problems(report)
    assert any("signature is invalid" in p.message for p in report.problems)


def test_altered_digest_body_is_caught(log):
    conn, _, _ = log
    body = conn.execute("SELECT body FROM audit_digest WHERE dseq = 2").fetchone()[0]
    conn.execute("UPDATE audit_digest SET body = ? WHERE dseq = 2", (body.replace('"lastSeq":10', '"lastSeq":9'),))
    msgs = digest_messages(conn, 2)
    assert any("stored hash does not match" in m for m in msgs)
    assert any("signature is invalid" in m for m in msgs)


def test_removed_digest_breaks_the_digest_chain(log):
    conn, _, _ = log
    conn.execute("DELETE FROM audit_digest WHERE dseq = 1")
    assert any("follows a digest that is missing" in m for m in digest_messages(conn, 2))


def test_removed_middle_digest_is_named(tmp_path):
    conn, clock, _ = open_db(str(tmp_path), seal_every=3)
    fill(conn, clock, 9)
    conn.execute("DELETE FROM audit_digest WHERE dseq = 2")
    msgs = digest_messages(conn, 3)
    assert any("digests 2..2 are missing" in m for m in msgs)
    assert any("does not chain to digest 1" in m for m in msgs)


def test_all_digests_removed_and_chain_rebuilt_breaks_the_schedule(log):
    conn, _, _ = log
    conn.execute("DELETE FROM audit_digest")
    edit(conn, 2, "vol-2", "vol-X")
    rehash_from(conn, 2)
    report = audit.verify(conn)
    assert [p.kind for p in report.problems] == ["schedule"]
    assert "records 1..13 should have been sealed" in report.problems[0].message


def test_anchor_catches_a_truncated_tail(log):
    conn, clock, _ = log
    fill(conn, clock, 2, start=14)  # digest 3 seals 11..15
    anchor = audit.latest_anchor(conn)
    assert audit.verify(conn, anchor=anchor).ok
    # The tail (records and the digest that sealed them) is cut off.
    conn.execute("DELETE FROM audit WHERE seq > 10")
    conn.execute("DELETE FROM audit_digest WHERE dseq = 3")
    assert audit.verify(conn).ok  # without the anchor nothing shows
    report = audit.verify(conn, anchor=anchor)
    assert not report.ok and report.anchor_found is False
    assert [p.kind for p in report.problems] == ["anchor"]
    assert "truncated" in report.format()


def test_anchor_still_found_after_later_appends(log):
    conn, clock, _ = log
    anchor = audit.latest_anchor(conn)
    fill(conn, clock, 10, start=14)
    report = audit.verify(conn, anchor=anchor)
    assert report.ok and report.anchor_found and report.latest_anchor != anchor


def test_public_key_forms_and_a_wrong_key(log, tmp_path):
    conn, _, key_path = log
    priv = audit.load_signing_key(key_path)
    raw = priv.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    pem = tmp_path / "audit.pub"
    pem.write_bytes(priv.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo))
    for form in (raw, raw.hex(), str(pem), key_path, priv.public_key(), [priv]):
        assert audit.verify(conn, public_key=form).ok
    report = audit.verify(conn, public_key=Ed25519PrivateKey.generate().public_key())
    assert {p.kind for p in report.problems} == {"key"}


def test_replaced_signing_key_is_refused_unless_pinned(log, tmp_path):
    conn, clock, key_path = log
    # A key file that is not the pinned one is refused: the log is not sealed with it.
    other = str(tmp_path / "other.key")
    with pytest.raises(audit.AuditError, match="not the key pinned"):
        audit.configure(conn, other, seal_every=5)
    # A rotation on purpose: the owner adds the new key's line to the pin file.
    pin = tmp_path / audit.PIN_FILE
    pin.write_text(pin.read_text() + audit.pin_line(audit.load_signing_key(other).public_key()) + "\n")
    audit.configure(conn, other, seal_every=5)
    call(conn, clock, 14)
    call(conn, clock, 15)
    assert audit.verify(conn).ok  # old digests under the old key, digest 3 under the new one
    report = audit.verify(conn, public_key=key_path)  # a verifier that trusts the old key only
    assert {p.digest for p in report.problems if p.kind == "key"} >= {3}
    assert audit.verify(conn, public_key=[str(other), key_path]).ok


def test_removed_unsealed_records_show_as_a_numbering_gap_once_the_log_goes_on(log):
    conn, clock, _ = log
    conn.execute("DELETE FROM audit WHERE seq >= 12")  # cut the unsealed tail...
    assert audit.verify(conn).ok  # (alone, that is the documented limit)
    call(conn, clock, 14)  # ...then the service appends again: numbers are never reused
    report = audit.verify(conn)
    assert problems(report) == [("deleted", 12)]
    assert "records 12..13 are missing" in report.problems[0].message


def test_a_removed_range_is_one_line(log):
    conn, _, _ = log
    conn.execute("DELETE FROM audit WHERE seq BETWEEN 2 AND 9")
    report = audit.verify(conn)
    assert report.seqs("deleted") == set(range(2, 10))
    text = report.format()
    assert "deleted: records 2..9 (8 records), the first: record 2 (sealed in digest 1)" in text
    assert len([line for line in text.splitlines() if "deleted" in line]) == 1
