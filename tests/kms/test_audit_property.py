"""Property test: whatever single tampering someone without the signing key does to sealed records
(edit, delete, insert, swap; with or without recomputing the chain and renumbering), verify fails
and names a seq number at or next to the place tampered with."""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.kms.conftest_b import START, call
from tests.kms.test_audit_verify import rehash_from, rows
from volumed.clock import FakeClock
from volumed.kms import audit


@pytest.fixture(scope="module")
def key_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("audit-key") / audit.SIGNING_KEY_FILE)
    audit.create_signing_key(path)
    return path


def build(key_path: str, n: int) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    audit.ensure_schema(conn)
    audit.configure(conn, key_path, seal_every=4)
    clock = FakeClock(START)
    for i in range(1, n + 1):
        call(conn, clock, i)
    return conn


@settings(max_examples=120, deadline=None)
@given(n=st.integers(6, 14), data=st.data())
def test_any_tampering_of_sealed_records_is_found_and_placed(key_path, n, data):
    conn = build(key_path, n)
    sealed = audit.verify(conn, public_key=key_path).sealed_through
    target = data.draw(st.integers(1, sealed), label="target")
    action = data.draw(st.sampled_from(["edit", "delete", "insert", "swap"]), label="action")
    rechain = data.draw(st.booleans(), label="rechain")
    renumber = data.draw(st.booleans(), label="renumber")
    texts = {s: t for s, t, _, _ in rows(conn)}
    if action == "edit":
        conn.execute("UPDATE audit SET record = ? WHERE seq = ?",
                     (texts[target].replace(f"vol-{target}", "vol-FORGED"), target))
    elif action == "delete":
        conn.execute("DELETE FROM audit WHERE seq = ?", (target,))
        if renumber:
            conn.execute("UPDATE audit SET seq = seq - 1 WHERE seq > ?", (target,))
    elif action == "insert":
        conn.execute("UPDATE audit SET seq = -seq WHERE seq >= ?", (target,))
        conn.execute("UPDATE audit SET seq = 1 - seq WHERE seq < 0")
        conn.execute("INSERT INTO audit (seq, record, prev_hash, hash) VALUES (?, ?, '', '')",
                     (target, texts[target].replace(f"vol-{target}", "vol-FORGED")))
    else:
        other = target + 1 if target < n else target - 1
        conn.execute("UPDATE audit SET record = ? WHERE seq = ?", (texts[other], target))
        conn.execute("UPDATE audit SET record = ? WHERE seq = ?", (texts[target], other))
    if rechain:
        rehash_from(conn, max(1, target - 1))
    report = audit.verify(conn, public_key=key_path)
    assert not report.ok
    named = report.seqs()
    assert named, report.format()
    assert min(abs(s - target) for s in named) <= 1, report.format()
