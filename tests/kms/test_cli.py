"""`volumed kms ...` through real subprocesses: human and --json output, one-line errors naming
the AWS code with a non-zero exit, and nothing changed by a refused command."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def run(tmp_path):
    env = dict(os.environ, VOLUMED_KMS=str(tmp_path / "ks"))
    env.pop("VOLUMED_PRINCIPAL", None)

    def run(*argv, ok=True, stdin=None):
        p = subprocess.run([sys.executable, "-m", "volumed", "kms", *argv], capture_output=True,
                           env=env, cwd=tmp_path, input=stdin)
        if ok:
            assert p.returncode == 0, p.stderr.decode()
        else:
            assert p.returncode != 0
            lines = p.stderr.decode().strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("volumed: "), p.stderr.decode()
            assert "Traceback" not in p.stderr.decode()
        return p
    run.ks = str(tmp_path / "ks")
    run.tmp = tmp_path
    return run


def _json(p):
    return json.loads(p.stdout)


def test_key_walkthrough(run):
    md = _json(run("create-key", "--description", "db key", "--json"))["KeyMetadata"]
    key = md["KeyId"]
    assert md["KeyState"] == "Enabled"
    run("create-alias", "alias/db", key)
    out = run("list-keys").stdout.decode()
    assert key in out and "alias/db" in out and "db key" in out
    assert _json(run("list-aliases", "--json"))["Aliases"][0]["AliasName"] == "alias/db"
    assert "Enabled" in run("describe-key", "alias/db").stdout.decode()

    (run.tmp / "plain").write_bytes(b"database password")
    run("encrypt", "alias/db", "--in", "plain", "--out", "ct", "--context", "aws:ebs:id=vol-1")
    assert b"database password" not in (run.tmp / "ct").read_bytes()
    p = run("decrypt", "--in", "ct", "--out", "-", "--context", "aws:ebs:id=vol-1")
    assert p.stdout == b"database password"
    p = run("decrypt", "--in", "ct", "--out", "back", "--context", "aws:ebs:id=vol-2", ok=False)
    assert b"InvalidCiphertextException" in p.stderr and not (run.tmp / "back").exists()

    run("enable-key-rotation", key, "--period-days", "90")
    st = _json(run("get-key-rotation-status", key, "--json"))
    assert st["KeyRotationEnabled"] and st["RotationPeriodInDays"] == 90
    run("rotate-key", key)
    assert "ON_DEMAND" in run("list-key-rotations", key).stdout.decode()
    assert run("decrypt", "--in", "ct", "--out", "-", "--context", "aws:ebs:id=vol-1").stdout == b"database password"
    run("disable-key-rotation", key)

    run("disable-key", key)
    p = run("encrypt", key, "--in", "plain", "--out", "ct2", ok=False)
    assert b"DisabledException" in p.stderr and b"enable-key" in p.stderr and not (run.tmp / "ct2").exists()
    run("enable-key", key)
    r = _json(run("schedule-key-deletion", key, "--days", "7", "--json"))
    assert r["KeyState"] == "PendingDeletion" and r["PendingWindowInDays"] == 7
    run("cancel-key-deletion", key)
    assert _json(run("describe-key", key, "--json"))["KeyMetadata"]["KeyState"] == "Disabled"


def _state(run):
    """Everything a refused command must leave unchanged."""
    import sqlite3

    db = sqlite3.connect(os.path.join(run.ks, "keystore.db"))
    return [db.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
            for t in ("keys", "materials", "aliases", "grants", "grant_tokens")]


@pytest.mark.parametrize("argv,code", [
    (["describe-key", "00000000-0000-0000-0000-000000000000"], "NotFoundException"),
    (["schedule-key-deletion", "KEY", "--days", "31"], "ValidationException"),
    (["schedule-key-deletion", "KEY", "--days", "6"], "ValidationException"),
    (["create-alias", "alias/aws/mine", "KEY"], "NotAuthorizedException"),
    (["create-alias", "alias/taken", "KEY"], "AlreadyExistsException"),
    (["cancel-key-deletion", "KEY"], "KMSInvalidStateException"),
    (["disable-key", "alias/aws/rds"], "AccessDeniedException"),
    (["enable-key-rotation", "KEY", "--period-days", "5000"], "ValidationException"),
    (["decrypt", "--in", "junk", "--out", "x"], "InvalidCiphertextException"),
    (["put-key-policy", "KEY", "badpolicy"], "MalformedPolicyDocumentException"),
    (["revoke-grant", "KEY", "0" * 64], "NotFoundException"),
    (["create-grant", "KEY", "--grantee", "arn:aws:iam::111122223333:user/x", "--operations", "Fly"],
     "ValidationException"),
])
def test_bad_input_is_one_line_and_changes_nothing(run, argv, code):
    from volumed import kms

    client = kms.connect(run.ks)  # set-up in process; only the command under test is a subprocess
    key = client.create_key()["KeyMetadata"]["KeyId"]
    client.create_alias(AliasName="alias/taken", TargetKeyId=key)
    client.describe_key(KeyId="alias/aws/rds")
    client.close()
    (run.tmp / "junk").write_bytes(b"not a ciphertext at all, definitely")
    (run.tmp / "badpolicy").write_text("{not json")
    before = _state(run)
    p = run(*[key if a == "KEY" else a for a in argv], ok=False)
    assert p.stderr.decode().startswith(f"volumed: {code}")
    assert len(p.stderr.decode().strip().splitlines()) == 1, p.stderr  # one line, no traceback
    assert _state(run) == before


def test_grants_and_policy_commands(run):
    key = _json(run("create-key", "--json"))["KeyMetadata"]["KeyId"]
    host = "arn:aws:sts::111122223333:assumed-role/volumed-host/h1"
    g = _json(run("create-grant", key, "--grantee", host, "--operations", "Decrypt,DescribeKey",
                  "--retiring-principal", host, "--context-subset", "aws:ebs:id=vol-1", "--name", "a", "--json"))
    [entry] = _json(run("list-grants", key, "--json"))["Grants"]
    assert entry["Operations"] == ["Decrypt", "DescribeKey"]
    assert entry["Constraints"] == {"EncryptionContextSubset": {"aws:ebs:id": "vol-1"}}
    assert g["GrantId"] in run("list-retirable-grants", host).stdout.decode()
    run("retire-grant", "--token", g["GrantToken"])
    g2 = _json(run("create-grant", key, "--grantee", host, "--operations", "Decrypt", "--json"))
    run("revoke-grant", key, g2["GrantId"])
    assert _json(run("list-grants", key, "--json"))["Grants"] == []

    policy = json.loads(run("get-key-policy", key).stdout)
    policy["Statement"][0]["Sid"] = "Edited"
    (run.tmp / "policy.json").write_text(json.dumps(policy))
    run("put-key-policy", key, "policy.json")
    assert json.loads(_json(run("get-key-policy", key, "--json"))["Policy"])["Statement"][0]["Sid"] == "Edited"


def test_bad_context_and_oversized_input(run):
    key = _json(run("create-key", "--json"))["KeyMetadata"]["KeyId"]
    (run.tmp / "big").write_bytes(b"x" * 4097)
    p = run("encrypt", key, "--in", "big", "--out", "o", ok=False)
    assert b"4096" in p.stderr
    (run.tmp / "small").write_bytes(b"x")
    p = run("encrypt", key, "--in", "small", "--out", "o", "--context", "novalue", ok=False)
    assert b"KEY=VALUE" in p.stderr
    p = run("encrypt", key, "--in", "missing-file", "--out", "o", ok=False)
    assert b"missing-file" in p.stderr
