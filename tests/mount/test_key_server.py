"""Mounts through a key server (``volumed kms serve``) over the network: the host holds no keystore,
only its host access key (an AWS profile); attach grants as the user, the daemon decrypts as the
host; a disabled key, a revoked grant or a deny policy fails the mount with EIO within 1 s (the
monitor polls the server's change counter); a short server outage is ridden out within
--kms-grace. Real FUSE mounts served by separate daemon processes, always torn down."""

from __future__ import annotations

import json
import os
import random

import pytest

from tests.kmsserver.conftest import KeyServer, admin_policy
from tests.mount.conftest import Env, direct_read
from tests.mount.test_revocation import RECOVERABLE, _assert_cut_off

pytestmark = [pytest.mark.mount, pytest.mark.timeout(180)]
MiB = 1 << 20


@pytest.fixture
def fleet(tmp_path, monkeypatch):
    """(server, env, user client): env's AWS settings are the user's; profile 'host' the host's."""
    server = KeyServer(tmp_path / "server-keystore").start()
    try:
        admin_policy(server, "alice")
        alice = server.access_key(server.user("alice"))
        host = server.access_key(server.host("fleet-host-1"))
        creds = tmp_path / "aws-credentials"
        creds.write_text(f"[host]\naws_access_key_id = {host['AccessKeyId']}\n"
                         f"aws_secret_access_key = {host['SecretAccessKey']}\n")
        aws = {"AWS_ACCESS_KEY_ID": alice["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": alice["SecretAccessKey"],
               "AWS_DEFAULT_REGION": server.region, "AWS_CA_BUNDLE": server.cert,
               "AWS_SHARED_CREDENTIALS_FILE": str(creds), "AWS_CONFIG_FILE": str(tmp_path / "aws-config")}
        for k, v in aws.items():
            monkeypatch.setenv(k, v)
        env = Env(tmp_path, server.url, aws)
        yield server, env, server.client(alice)
    finally:
        server.stop()


def _mount_remote(fleet, mounter, *args):
    server, env, user = fleet
    from volumed.volume.device import Volume

    key = user.create_key(Description="fleet volume")["KeyMetadata"]["Arn"]
    path = env.tmp / "vol.img"
    Volume.create(path, size=16 * MiB, kms=user, key_id=key, cipher="xts")
    assert not (env.tmp / "keystore").exists()
    m = mounter(env, path, "--host-profile", "host", *args)
    data = random.Random(2).randbytes(MiB)
    fd = os.open(m.file, os.O_RDWR)
    os.pwrite(fd, data, 0)
    os.fsync(fd)
    assert direct_read(m.file, 0, MiB) == data
    return m, user, key, fd, data


def _cut_within_a_second(m, fd, revoke):
    revoke()
    m.wait_state(RECOVERABLE, timeout=1.0)
    _assert_cut_off(m, fd)


def test_revoked_grant_over_the_network_fails_the_mount_within_a_second(fleet, mounter):
    m, user, key, fd, _ = _mount_remote(fleet, mounter)
    server = fleet[0]
    st = m.status()
    grant = next(g for g in user.list_grants(KeyId=key)["Grants"] if g["GrantId"] == st["grant_id"])
    assert grant["GranteePrincipal"] == server.host("fleet-host-1")  # the host key's principal
    _cut_within_a_second(m, fd, lambda: user.revoke_grant(KeyId=key, GrantId=st["grant_id"]))
    # the daemon's calls were the host's, signed with the host access key
    from volumed.kms.store.keystore import Keystore

    store = Keystore(str(server.keystore))
    try:
        recs = [json.loads(r[0]) for r in store.conn.execute("SELECT record FROM audit ORDER BY seq")]
    finally:
        store.close()
    host_calls = [r for r in recs if r["userIdentity"]["arn"] == server.host("fleet-host-1")]
    assert {r["eventName"] for r in host_calls} >= {"Decrypt", "GenerateDataKeyWithoutPlaintext"}
    assert all(r["userIdentity"].get("accessKeyId") for r in host_calls)


def test_disabled_key_over_the_network_fails_the_mount_within_a_second(fleet, mounter):
    m, user, key, fd, _ = _mount_remote(fleet, mounter)
    _cut_within_a_second(m, fd, lambda: user.disable_key(KeyId=key))
    assert "DisabledException" in m.status()["reason"]


def test_deny_policy_over_the_network_fails_the_mount_within_a_second(fleet, mounter):
    m, user, key, fd, _ = _mount_remote(fleet, mounter)
    server = fleet[0]
    policy = json.loads(user.get_key_policy(KeyId=key, PolicyName="default")["Policy"])
    policy["Statement"].append({"Effect": "Deny", "Principal": {"AWS": server.host("fleet-host-1")},
                                "Action": "kms:*", "Resource": "*"})
    _cut_within_a_second(m, fd, lambda: user.put_key_policy(KeyId=key, PolicyName="default",
                                                            Policy=json.dumps(policy)))


def test_short_server_outage_is_ridden_out_within_the_grace(fleet, mounter):
    m, user, key, fd, data = _mount_remote(fleet, mounter, "--kms-grace", "600")
    server = fleet[0]
    port = server.url.rsplit(":", 1)[1]
    server.stop()
    m.wait_state("kms-unreachable", timeout=5)
    assert direct_read(m.file, 0, MiB) == data  # still serving
    server.start(listen=f"127.0.0.1:{port}")
    m.wait_state("available", timeout=10)
    # and revocation still works after the outage
    _cut_within_a_second(m, fd, lambda: user.disable_key(KeyId=key))
