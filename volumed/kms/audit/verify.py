"""Verification of the audit log's hash chain and signed digests (``volumed kms audit verify``).

One concern: read the log and its digests and say whether anything was edited, removed, inserted
or reordered, and where. Read-only. Callers: ``volumed.kms.audit.verify`` (re-exported), the CLI.

Method:
0. The trust root: the public key given (``--public-key``), else the keys pinned in
   ``audit-signing.pub`` beside the database (never the key the database names, which whoever can
   write the database could replace). The key the database names must be one of them, or the
   database was repointed.
1. Each digest: its stored hash matches its body, its Ed25519 signature verifies under the given
   public key, it names the previous digest's hash and signature, and its range continues the
   previous one. A forged or altered digest fails here.
2. The sealed records: the content hashes the digests list, in order, are aligned (difflib) with
   the content hashes of the records as they are now, so a record edited and re-chained, or moved,
   is still told apart from its neighbours. Unmatched sealed hashes are deleted, edited or moved
   records; unmatched present records are inserted ones; each is named by seq.
3. The whole chain: each record's ``prev_hash`` is the previous record's hash, and each record's
   text matches its hash; breaks not already explained are reported, which covers the unsealed tail.
4. The schedule: an unsealed tail longer than the schedule allows means digests were removed. The
   schedule is the one signed in the newest (v2) digest, or the database's where stricter.
5. The anchor, if given, must be the hash of a digest present: otherwise the log was truncated (or
   its digests replaced) after the user took the anchor.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import sqlite3
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from volumed.kms.audit import log as _audit


@dataclasses.dataclass(frozen=True)
class Finding:
    """One problem: ``kind`` is edited, deleted, inserted, reordered, chain, digest, schedule,
    anchor or key; ``seq``/``digest`` say where (None when not applicable)."""

    kind: str
    message: str
    seq: int | None = None
    digest: int | None = None
    moved_to: int | None = None  # for "reordered": where the sealed record is now


@dataclasses.dataclass
class VerifyReport:
    """The outcome of ``verify``. ``ok`` is True when there are no problems; ``warnings`` are
    limits of what could be checked (no public key, unsealed records)."""

    records: int = 0
    digests: int = 0
    sealed_through: int = 0
    unsealed: int = 0
    anchor: str | None = None
    anchor_found: bool | None = None
    latest_anchor: str | None = None
    public_key: str | None = None  # hex of the (first) key digests were checked against
    trust_root: str | None = None  # where the trusted keys came from: the pin file or --public-key
    problems: list[Finding] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, kind: str, message: str, *, seq: int | None = None, digest: int | None = None,
            moved_to: int | None = None) -> None:
        self.problems.append(Finding(kind, message, seq, digest, moved_to))

    def seqs(self, kind: str | None = None) -> set[int]:
        """The seq numbers named by problems (of one kind, if given)."""
        return {s for p in self.problems if kind is None or p.kind == kind
                for s in (p.seq, p.moved_to) if s is not None}

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "records": self.records, "digests": self.digests,
                "sealedThrough": self.sealed_through, "unsealed": self.unsealed,
                "anchor": self.anchor, "anchorFound": self.anchor_found,
                "latestAnchor": self.latest_anchor, "publicKey": self.public_key,
                "trustRoot": self.trust_root,
                "problems": [dataclasses.asdict(p) for p in self.problems],
                "warnings": list(self.warnings)}

    def format(self) -> str:
        """Human-readable summary, one problem per line."""
        n = len(self.problems)
        head = "audit log OK" if self.ok else f"audit log FAILED verification ({n} problem{'s' * (n != 1)})"
        lines = [f"{head}: {self.records} records, {self.digests} digests, sealed through seq "
                 f"{self.sealed_through}, {self.unsealed} unsealed"]
        if self.anchor is not None:
            lines.append(f"anchor {self.anchor[:16]}...: {'found' if self.anchor_found else 'NOT FOUND'}")
        lines += [f"  {line}" for line in _grouped(self.problems)]
        lines += [f"  warning: {w}" for w in self.warnings]
        if self.latest_anchor and self.ok:
            lines.append(f"latest anchor (keep it elsewhere): {self.latest_anchor}")
        if self.public_key:
            lines.append(f"signing public key (for --public-key): {self.public_key}")
        if self.trust_root:
            lines.append(f"trusted keys from: {self.trust_root}")
        return "\n".join(lines)


def _grouped(problems: list[Finding]) -> list[str]:
    """One line per problem, except that a run of three or more same-kind problems on consecutive
    records (a whole range deleted, say) becomes one line with the range and the first message."""
    out: list[str] = []
    i = 0
    while i < len(problems):
        j = i
        while (j + 1 < len(problems) and problems[j + 1].kind == problems[i].kind
               and (seq := problems[j].seq) is not None and problems[j + 1].seq == seq + 1):
            j += 1
        p = problems[i]
        if j - i >= 2:
            out.append(f"{p.kind}: records {p.seq}..{problems[j].seq} ({j - i + 1} records), "
                       f"the first: {p.message}")
        else:
            out += [f"{q.kind}: {q.message}" for q in problems[i:j + 1]]
        i = j + 1
    return out


def load_public_keys(public_key: Any) -> list[Ed25519PublicKey]:
    """Public keys from: an Ed25519 public or private key, 32 raw bytes, a hex string of them, a
    PEM file path (private or public), or a list of these."""
    if public_key is None:
        return []
    if isinstance(public_key, (list, tuple)):
        return [k for item in public_key for k in load_public_keys(item)]
    if isinstance(public_key, Ed25519PublicKey):
        return [public_key]
    if isinstance(public_key, Ed25519PrivateKey):
        return [public_key.public_key()]
    if isinstance(public_key, (bytes, bytearray)) and len(public_key) == 32:
        return [Ed25519PublicKey.from_public_bytes(bytes(public_key))]
    if isinstance(public_key, str) and len(public_key) == 64 and all(c in "0123456789abcdef" for c in public_key):
        return [Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key))]
    if isinstance(public_key, (str, os.PathLike)):
        with open(public_key, "rb") as f:
            data = f.read()
        if b"PRIVATE KEY" in data:
            pub: object = serialization.load_pem_private_key(data, password=None).public_key()
        else:
            pub = serialization.load_pem_public_key(data)
        if not isinstance(pub, Ed25519PublicKey):
            raise TypeError(f"{os.fspath(public_key)!s} holds a {type(pub).__name__}, not an Ed25519 key")
        return [pub]
    raise TypeError(f"cannot use {type(public_key).__name__} as an audit public key")


def _pinned_keys(conn: sqlite3.Connection, report: VerifyReport) -> list[Ed25519PublicKey]:
    """The trust root when no public key is given: the keys pinned in ``audit-signing.pub``
    beside the database (never the key the database names, which its writer could replace).
    Reports a "key" problem when there is none, or it could have been replaced by others."""
    path = _audit.pin_path(conn)
    where = path or "the pin file (the database is not a file)"
    try:
        if path is None:
            raise FileNotFoundError
        mode = os.stat(path).st_mode & 0o777
        keys = _audit.read_pin(path)
    except FileNotFoundError:
        report.add("key", f"no trusted public key: {where} is missing; pass --public-key, or open the "
                          "keystore once with this version to pin its signing key (the key the database "
                          "names is not trusted: whoever can write the database could have replaced it)")
        return []
    except (OSError, ValueError) as exc:
        report.add("key", f"cannot read the pinned public key {path}: {exc}")
        return []
    if mode & 0o022:
        report.add("key", f"the pinned public key {path} has mode {mode:04o}: others could replace it, "
                          f"so it is no trust root; run 'chmod 644 {path}'")
        return []
    if not keys:  # an empty pin would otherwise mean "check no signature"
        report.add("key", f"the pin file {path} lists no key, so it is no trust root; add the line "
                          "'ed25519 <hex>' of the signing key, or pass --public-key")
        return []
    report.trust_root = path
    return keys


def _check_configured_key(conn: sqlite3.Connection, keys: list[Ed25519PublicKey], report: VerifyReport) -> None:
    """The signing key the database names (its public key row, and the key file its path names)
    must be a trusted one: otherwise the database was repointed at someone else's key."""
    cfg = _audit._config(conn)
    if cfg is None or not keys:
        return
    trusted = {_audit.fingerprint(k) for k in keys}
    named = []
    if cfg.get("public_key"):
        try:
            named += load_public_keys(cfg["public_key"])
        except ValueError:
            report.add("key", "the database's audit public key is malformed (altered)")
    try:
        named.append(_audit.load_signing_key(cfg["signing_key_path"]).public_key())
    except _audit.AuditError:
        pass  # unreadable here (another user's key): the public key row was checked
    for k in named:
        fp = _audit.fingerprint(k)
        if fp not in trusted:
            report.add("key", f"the database names signing key {fp[:16]}... ({cfg['signing_key_path']}), "
                              "which is not a trusted key: the database was repointed at another key")
            return


def verify(conn: sqlite3.Connection, anchor: str | None = None, public_key: Any = None) -> "VerifyReport":
    """Check the audit log in ``conn`` (see module doc) and return a VerifyReport naming every
    problem by seq (records) or digest number. ``public_key`` (the trust root) defaults to the
    keys pinned in ``audit-signing.pub`` beside the database, never to the key the database
    names; ``anchor`` is a digest hash the user kept (from ``latest_anchor``)."""
    report = VerifyReport(anchor=anchor)
    rows = conn.execute("SELECT seq, record, prev_hash, hash, appended FROM audit ORDER BY seq").fetchall()
    digests = conn.execute("SELECT dseq, body, signature, hash FROM audit_digest ORDER BY dseq").fetchall()
    report.records, report.digests = len(rows), len(digests)
    if public_key is not None:
        keys = load_public_keys(public_key)
        report.trust_root = "--public-key"
    elif digests or _audit._config(conn) is not None:
        keys = _pinned_keys(conn, report)
    else:
        keys = []  # nothing was ever signed: the hash chain is all there is
    if keys:
        report.public_key = _audit._raw_public(keys[0]).hex()
    _check_configured_key(conn, keys, report)

    expected, digest_hashes, last_hashes, schedule = _check_digests(digests, keys, report)
    report.latest_anchor = digest_hashes[-1] if digest_hashes else None
    sealed_through = max(expected) if expected else 0
    report.sealed_through = sealed_through

    ident = {}
    for seq, text, prev, h, _ in rows:
        ident[seq] = _audit.content_hash(text)
        if not (h and prev and _safe_hash(prev, text) == h):
            report.add("edited", f"record {seq}: its content does not match its hash (edited)", seq=seq)
    _check_sealed(rows, ident, expected, report)
    _check_sealed_chain(rows, last_hashes, report)
    _check_chain(rows, report)
    _check_schedule(conn, rows, sealed_through, schedule, report)

    if anchor is not None:
        report.anchor_found = anchor in digest_hashes
        if not report.anchor_found:
            report.add("anchor", f"anchor {anchor} is not the hash of any digest: the log was truncated "
                                 "or its digests were replaced after the anchor was taken")
    return report


def _safe_hash(prev: str, text: str) -> str | None:
    try:
        return _audit.chain_hash(prev, text)
    except ValueError:
        return None


def _check_digests(digests: list[Any], keys: list[Ed25519PublicKey], report: VerifyReport
                   ) -> tuple[dict[int, tuple[str, int]], list[str], list[tuple[int, int, str | None, int]],
                              tuple[int, float] | None]:
    """Check each digest; return {sealed seq: (content hash, digest number)}, the digests'
    recomputed hashes in order, (first, last, chain hash of last, digest) per digest, and the seal
    schedule (every, interval) signed in the newest version-2 digest (None if there is none)."""
    by_fp = {_audit.fingerprint(k): k for k in keys}
    schedule = None
    v1 = []
    expected: dict[int, tuple[str, int]] = {}
    hashes: list[str] = []
    last_hashes: list[tuple[int, int, str | None, int]] = []
    prev = None  # (dseq, body, signature, hash)
    for dseq, text, signature, stored_hash in digests:
        h = hashlib.sha256(text.encode()).hexdigest()
        hashes.append(h)
        try:
            body = json.loads(text)
            first, last, listed = int(body["firstSeq"]), int(body["lastSeq"]), list(body["recordHashes"])
        except (ValueError, KeyError, TypeError):
            report.add("digest", f"digest {dseq} is unreadable (altered)", digest=dseq)
            prev = None
            continue
        if h != stored_hash:
            report.add("digest", f"digest {dseq}: its stored hash does not match its contents (altered)",
                       digest=dseq)
        if keys:
            key = by_fp.get(body.get("publicKeyFingerprint"))
            if key is None:
                report.add("key", f"digest {dseq} is signed by an unknown key "
                                  f"{str(body.get('publicKeyFingerprint'))[:16]}... (forged, or the key was "
                                  "replaced)", digest=dseq)
            else:
                try:
                    key.verify(bytes.fromhex(signature), text.encode())
                except (InvalidSignature, ValueError):
                    report.add("digest", f"digest {dseq} (records {first}..{last}): signature is invalid "
                                         "(forged or altered)", digest=dseq)
        if body.get("digestSeq") != dseq:
            report.add("digest", f"digest {dseq} claims to be digest {body.get('digestSeq')} (moved)",
                       digest=dseq)
        if prev is None and dseq == digests[0][0]:
            if body.get("previousDigestHash") != _audit.GENESIS:
                report.add("digest", f"digest {dseq} follows a digest that is missing (digests before "
                                     f"{dseq} removed)", digest=dseq)
        elif prev is not None:
            pd, pbody, psig, ph = prev
            if dseq != pd + 1:
                report.add("digest", f"digests {pd + 1}..{dseq - 1} are missing (removed)", digest=dseq)
            if body.get("previousDigestHash") != ph or body.get("previousDigestSignature") != psig:
                report.add("digest", f"digest {dseq} does not chain to digest {pd} (digest chain broken)",
                           digest=dseq)
            if first != pbody["lastSeq"] + 1:
                report.add("digest", f"digest {dseq} starts at record {first}, not {pbody['lastSeq'] + 1} "
                                     "(digest range broken)", digest=dseq)
        if len(listed) != last - first + 1:
            report.add("digest", f"digest {dseq}: its record list does not match its range (altered)",
                       digest=dseq)
        for i, rh in enumerate(listed):
            expected[first + i] = (rh, dseq)
        last_hashes.append((first, last, body.get("lastHash"), dseq))
        prev = (dseq, body, signature, h)
        if body.get("digestVersion", 1) >= 2:
            try:
                schedule = (int(body["sealEvery"]), float(body["sealInterval"]))
            except (KeyError, TypeError, ValueError):
                report.add("digest", f"digest {dseq} has no readable seal schedule (altered)", digest=dseq)
        else:
            v1.append(dseq)
    if v1:
        report.warnings.append(f"{len(v1)} digest{'s' * (len(v1) != 1)} ({v1[0]}..{v1[-1]}) are format v1, made "
                               "before the seal schedule was signed: for them the schedule is the "
                               "database's, which its writer could change")
    return expected, hashes, last_hashes, schedule


def _check_sealed(rows: list[Any], ident: dict[int, str], expected: dict[int, tuple[str, int]],
                  report: VerifyReport) -> None:
    """Align the sealed hashes with the records present and name each difference by seq."""
    if not expected:
        return
    exp_seqs = sorted(expected)
    exp_hashes = [expected[s][0] for s in exp_seqs]
    act_seqs = [r[0] for r in rows]
    act_hashes = [ident[s] for s in act_seqs]
    where_now = {h: s for s, h in zip(act_seqs, act_hashes)}
    sealed_set = set(exp_hashes)
    already = report.seqs()
    matcher = difflib.SequenceMatcher(None, exp_hashes, act_hashes, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        for k in range(i1, i2):
            seq, (h, dseq) = exp_seqs[k], expected[exp_seqs[k]]
            if h in where_now:
                report.add("reordered", f"record sealed as {seq} (digest {dseq}) is now at {where_now[h]} "
                                        "(reordered)", seq=seq, digest=dseq, moved_to=where_now[h])
            elif seq in already:
                continue  # its edit is already reported
            elif seq in ident and ident[seq] not in sealed_set:
                report.add("edited", f"record {seq} differs from the record sealed in digest {dseq} "
                                     "(edited and re-hashed, or replaced)", seq=seq, digest=dseq)
                already.add(seq)
            else:
                report.add("deleted", f"record {seq} (sealed in digest {dseq}) is missing (deleted)",
                           seq=seq, digest=dseq)
        for k in range(j1, j2):
            seq, h = act_seqs[k], act_hashes[k]
            if h in sealed_set or seq in already or seq not in expected:
                continue  # moved (reported above), edited (reported), or outside the sealed ranges
                # (the unsealed tail, or a range whose digest is missing, which is reported)
            report.add("inserted", f"record {seq} is not in any digest (inserted)", seq=seq)
            already.add(seq)


def _check_sealed_chain(rows: list[Any], last_hashes: list[tuple[int, int, str | None, int]],
                        report: VerifyReport) -> None:
    """The chain hash of each digest's last record must be the one sealed (binds the chain, so the
    unsealed tail hangs off a sealed hash), unless a finding at or before it already explains it
    (a change re-chains everything after it)."""
    stored = {r[0]: r[3] for r in rows}
    named = report.seqs()
    for first, last, last_hash, dseq in last_hashes:
        if last in stored and stored[last] != last_hash and not any(s <= last for s in named):
            report.add("chain", f"records {first}..{last} were re-chained: record {last}'s hash is not the "
                                f"one sealed in digest {dseq}", seq=last, digest=dseq)


def _check_chain(rows: list[Any], report: VerifyReport) -> None:
    """Report breaks of the prev_hash links, and gaps in the numbering (seq numbers are never
    reused, so a gap means removed records), that no other finding explains."""
    named = report.seqs()
    prev_seq, prev_hash = 0, _audit.GENESIS
    for seq, _text, prev, h, _ in rows:
        explained = seq in named or prev_seq in named or any(s in named for s in range(prev_seq + 1, seq))
        gap = f"records {prev_seq + 1}..{seq - 1} are missing" if seq > prev_seq + 1 else ""
        if not explained and prev != prev_hash:
            first = "the start of the log" if prev_seq == 0 else f"record {prev_seq}"
            report.add("chain", f"record {seq} does not chain to {first}: records removed, inserted "
                                f"or reordered here{'; ' + gap if gap else ''}", seq=seq)
        elif not explained and gap:
            report.add("deleted", f"{gap} (removed, and the chain re-linked over the gap)",
                       seq=prev_seq + 1)
        prev_seq, prev_hash = seq, h


def _check_schedule(conn: sqlite3.Connection, rows: list[Any], sealed_through: int,
                    signed: tuple[int, float] | None, report: VerifyReport) -> None:
    """An unsealed tail longer than the schedule allows means trailing digests were removed. The
    schedule is the one signed in the newest digest (a database writer cannot raise it to hide
    the removal), or the database's where it is stricter or no digest signs one."""
    tail = [r for r in rows if r[0] > sealed_through]
    report.unsealed = len(tail)
    cfg = _audit._config(conn)
    if not tail:
        return
    if cfg is None and signed is None:
        report.warnings.append(f"sealing is not configured: {len(tail)} records are protected by the "
                               "hash chain only")
        return
    if signed:
        every, interval = signed
    else:
        assert cfg is not None
        every, interval = cfg["seal_every"], cfg["seal_interval"]
    if cfg is not None:
        every, interval = min(every, cfg["seal_every"]), min(interval, cfg["seal_interval"])
    times = [r[4] for r in tail if r[4] is not None]
    overdue = len(tail) >= every or (times and max(times) - min(times) >= interval)
    if overdue:
        report.add("schedule", f"records {tail[0][0]}..{tail[-1][0]} should have been sealed by the "
                               f"schedule (every {every} records or {interval:g} s) but no digest covers "
                               "them (digests removed)", seq=tail[0][0])
    else:
        report.warnings.append(f"records {tail[0][0]}..{tail[-1][0]} are not sealed yet: only the hash "
                               "chain protects them until the next digest")
