"""Fixtures of the key-server tests: a real ``volumed kms serve`` process on a free port (TLS with
its self-signed certificate), access keys issued on its keystore, boto3 clients that trust the
printed certificate and never retry (so each answer is the server's own)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

ROOT = Path(__file__).resolve().parents[2]
NO_RETRY = Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=5, read_timeout=30)


class Creds(dict):
    @property
    def id(self):
        return self["AccessKeyId"]


class KeyServer:
    """A key server process on ``keystore``; ``start()`` again after ``kill9()`` reopens it."""

    def __init__(self, keystore: Path, *extra):
        self.keystore = keystore
        self.extra = [str(a) for a in extra]
        self.proc = None
        self.info = None
        self._ensure_keystore()

    def _ensure_keystore(self):
        from volumed.kms.store.keystore import Keystore

        store = Keystore(str(self.keystore))
        self.account, self.region = store.account_id, store.region
        from volumed.kms.store import iamstore

        self.admin = iamstore.admin_principal(store.conn)
        store.close()

    def env(self, **extra) -> dict:
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore")
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_CA_BUNDLE"):
            env.pop(k, None)
        env.update(extra)
        return env

    def start(self, listen="127.0.0.1:0"):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "volumed", "kms", "serve", "--kms", str(self.keystore),
             "--listen", listen, *self.extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env(), cwd=ROOT, text=True)
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read()
            self.proc.wait()
            raise AssertionError(f"key server did not start: {err}")
        self.info = json.loads(line)
        return self

    @property
    def url(self) -> str:
        return self.info["url"]

    @property
    def cert(self) -> str:
        return self.info.get("certificate")

    def access_key(self, principal: str, service: str | None = None) -> Creds:
        args = [sys.executable, "-m", "volumed", "iam", "create-access-key", principal,
                "--kms", str(self.keystore), "--json"]
        if service:
            args += ["--service", service]
        out = subprocess.run(args, capture_output=True, text=True, env=self.env(), cwd=ROOT, check=True)
        return Creds(json.loads(out.stdout)["AccessKey"])

    def user(self, name: str) -> str:
        return f"arn:aws:iam::{self.account}:user/{name}"

    def host(self, name: str) -> str:
        return f"arn:aws:sts::{self.account}:assumed-role/volumed-host/{name}"

    def client(self, creds: Creds, service="kms", region=None, config=NO_RETRY):
        return boto3.client(service, endpoint_url=self.url, region_name=region or self.region,
                            aws_access_key_id=creds["AccessKeyId"],
                            aws_secret_access_key=creds["SecretAccessKey"],
                            verify=self.cert if self.cert else False, config=config)

    def kill9(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(Exception):
            self.proc.stdout.close()
            self.proc.stderr.close()


def admin_policy(server, name: str) -> None:
    """Give user NAME kms:* through an identity policy (the default key policy enables them)."""
    from volumed import kms

    admin = kms.connect(str(server.keystore))
    try:
        admin.put_principal_policy(PrincipalArn=server.user(name), PolicyName="kms-all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}]}))
    finally:
        admin.close()


@pytest.fixture
def make_server(tmp_path):
    made = []

    def make(*extra, keystore=None):
        s = KeyServer(keystore or tmp_path / f"keystore{len(made)}", *extra)
        made.append(s)
        return s.start()

    yield make
    for s in made:
        s.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server per test module (starting one costs seconds on a shared machine)."""
    s = KeyServer(tmp_path_factory.mktemp("keyserver") / "keystore")
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def alice(server):
    """User alice with kms:* (identity policy) and her access key."""
    admin_policy(server, "alice")
    return server.access_key(server.user("alice"))
