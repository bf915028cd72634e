"""Operating the key server: the AWS CLI against it, concurrent clients, kill -9 mid-load, the
readiness probe, and what it refuses at start."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import threading

import pytest
from botocore.exceptions import ClientError

from tests.kmsserver.conftest import ROOT, admin_policy

pytestmark = pytest.mark.timeout(240)


def _aws(server, creds, *args, check=True):
    aws = shutil.which("aws", path=os.path.dirname(sys.executable)) or shutil.which("aws")
    assert aws, "the AWS CLI (awscli, test extras) is not installed"
    env = server.env(AWS_ACCESS_KEY_ID=creds["AccessKeyId"], AWS_SECRET_ACCESS_KEY=creds["SecretAccessKey"],
                     AWS_DEFAULT_REGION=server.region, AWS_CA_BUNDLE=server.cert,
                     AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null")
    p = subprocess.run([aws, *args, "--endpoint-url", server.url, "--output", "json"],
                       capture_output=True, text=True, env=env, timeout=60)
    if check:
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout) if p.stdout.strip() else {}
    return p


def test_aws_cli_drives_every_operation_the_demo_uses(server, alice, tmp_path):
    key = _aws(server, alice, "kms", "create-key", "--description", "cli")["KeyMetadata"]
    kid = key["KeyId"]
    _aws(server, alice, "kms", "create-alias", "--alias-name", "alias/cli", "--target-key-id", kid)
    assert _aws(server, alice, "kms", "describe-key", "--key-id", "alias/cli")["KeyMetadata"]["KeyId"] == kid
    (tmp_path / "pt").write_bytes(b"fleet")
    blob = _aws(server, alice, "kms", "encrypt", "--key-id", kid, "--plaintext", f"fileb://{tmp_path / 'pt'}",
                "--encryption-context", "volume=v1")["CiphertextBlob"]
    (tmp_path / "ct").write_bytes(base64.b64decode(blob))
    out = _aws(server, alice, "kms", "decrypt", "--ciphertext-blob", f"fileb://{tmp_path / 'ct'}",
               "--encryption-context", "volume=v1")
    assert base64.b64decode(out["Plaintext"]) == b"fleet"
    host = server.access_key(server.host("cli-host"))
    grant = _aws(server, alice, "kms", "create-grant", "--key-id", kid, "--grantee-principal",
                 server.host("cli-host"), "--operations", "Decrypt", "GenerateDataKeyWithoutPlaintext")
    _aws(server, host, "kms", "generate-data-key-without-plaintext", "--key-id", kid, "--key-spec", "AES_256",
         "--grant-tokens", grant["GrantToken"])
    grants = _aws(server, alice, "kms", "list-grants", "--key-id", kid)["Grants"]
    assert [g["GrantId"] for g in grants] == [grant["GrantId"]]
    _aws(server, alice, "kms", "revoke-grant", "--key-id", kid, "--grant-id", grant["GrantId"])
    p = _aws(server, host, "kms", "generate-data-key-without-plaintext", "--key-id", kid, "--key-spec", "AES_256",
             check=False)
    assert p.returncode != 0 and "AccessDeniedException" in p.stderr
    _aws(server, alice, "kms", "disable-key", "--key-id", kid)
    assert _aws(server, alice, "kms", "describe-key", "--key-id", kid)["KeyMetadata"]["KeyState"] == "Disabled"
    _aws(server, alice, "kms", "enable-key", "--key-id", kid)
    _aws(server, alice, "kms", "schedule-key-deletion", "--key-id", kid, "--pending-window-in-days", "7")
    assert _aws(server, host, "sts", "get-caller-identity")["Arn"] == server.host("cli-host")
    p = _aws(server, dict(alice, SecretAccessKey="wrong" + alice["SecretAccessKey"][5:]), "kms", "list-keys", check=False)
    assert p.returncode != 0 and "InvalidSignatureException" in p.stderr


def _load(server, creds, n_threads: int, per_thread: int, acked: list, errors: list, stop=None):
    def work(i):
        kms = server.client(creds)
        for j in range(per_thread):
            if stop is not None and stop.is_set():
                return
            try:
                kid = kms.create_key(Description=f"t{i}-{j}")["KeyMetadata"]["KeyId"]
                kms.create_alias(AliasName=f"alias/t{i}-{j}", TargetKeyId=kid)
                blob = kms.encrypt(KeyId=kid, Plaintext=f"{i}-{j}".encode())["CiphertextBlob"]
                acked.append((kid, f"alias/t{i}-{j}", blob, f"{i}-{j}".encode()))
            except Exception as exc:  # the server was killed under us
                errors.append(exc)
                return
    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    return threads


def _audit_verify(server):
    return subprocess.run([sys.executable, "-m", "volumed", "kms", "audit", "verify", "--kms", str(server.keystore)],
                          capture_output=True, text=True, env=server.env(), cwd=ROOT)


def test_concurrent_clients_never_corrupt_the_keystore(make_server):
    server = make_server()
    admin_policy(server, "alice")
    creds = server.access_key(server.user("alice"))
    acked, errors = [], []
    for t in _load(server, creds, 16, 6, acked, errors):
        t.join()
    assert not errors and len(acked) == 96
    kms = server.client(creds)
    for kid, alias, blob, pt in acked:
        assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == pt
        assert kms.describe_key(KeyId=alias)["KeyMetadata"]["KeyId"] == kid
    server.stop()
    p = _audit_verify(server)
    assert p.returncode == 0, p.stdout + p.stderr


def test_kill_9_mid_load_loses_no_acknowledged_change(make_server):
    server = make_server()
    admin_policy(server, "alice")
    creds = server.access_key(server.user("alice"))
    acked, errors = [], []
    stop = threading.Event()
    threads = _load(server, creds, 8, 1000, acked, errors, stop)
    import time

    deadline = time.monotonic() + 60
    while len(acked) < 40 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.kill9()  # mid-load: requests are in flight
    stop.set()
    for t in threads:
        t.join()
    assert len(acked) >= 40 and errors
    server.start()
    kms = server.client(creds)
    for kid, alias, blob, pt in list(acked):
        assert kms.describe_key(KeyId=alias)["KeyMetadata"]["KeyId"] == kid
        assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == pt
    server.stop()
    p = _audit_verify(server)
    assert p.returncode == 0, p.stdout + p.stderr


def test_readiness_probe(server):
    probe = [sys.executable, "-m", "volumed", "kms", "serve", "--check", "--kms", str(server.keystore)]
    p = subprocess.run(probe + ["--url", server.url], capture_output=True, text=True, env=server.env(), cwd=ROOT)
    assert p.returncode == 0 and "is ready" in p.stdout
    p = subprocess.run(probe + ["--url", "https://127.0.0.1:1"], capture_output=True, text=True, env=server.env(), cwd=ROOT)
    assert p.returncode == 1 and "not reachable" in p.stderr and p.stderr.count("\n") == 1


def test_start_refusals(tmp_path, make_server):
    from tests.kmsserver.conftest import KeyServer

    s = KeyServer(tmp_path / "ks")
    run = lambda *a: subprocess.run([sys.executable, "-m", "volumed", "kms", "serve", "--kms", str(s.keystore), *a],
                                    capture_output=True, text=True, env=s.env(), cwd=ROOT, timeout=60)
    p = run("--listen", "0.0.0.0:0", "--insecure-http")
    assert p.returncode == 2 and "only on a loopback address" in p.stderr and p.stderr.count("\n") == 1
    p = run("--listen", "nonsense")
    assert p.returncode == 2 and "ADDR:PORT" in p.stderr
    p = run("--tls-cert", "/nonexistent")
    assert p.returncode == 2 and "go together" in p.stderr
    # no audit log, no service: an audit signing key that cannot be read stops the server
    (s.keystore / "audit-signing.key").write_bytes(b"garbage")
    p = run("--listen", "127.0.0.1:0")
    assert p.returncode != 0 and "audit" in p.stderr and p.stderr.count("\n") == 1, p.stderr


def test_plain_http_on_loopback(make_server):
    server = make_server("--insecure-http")
    assert server.url.startswith("http://127.0.0.1:")
    admin_policy(server, "alice")
    server.client(server.access_key(server.user("alice"))).list_keys()
