"""The mount against an AWS-compatible endpoint (moto's server): attach, serve, interval checks,
and transient key-service failures that must not fail the mount."""

import os
import socket
import time

import pytest

from tests.mount.conftest import Env, direct_read

pytestmark = [pytest.mark.mount, pytest.mark.timeout(120)]

MiB = 1 << 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server(port):
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server


def test_unreachable_key_service_does_not_fail_the_mount_until_the_grace_period(
        tmp_path, make_volume, mounter):
    port = _free_port()
    server = _server(port)
    env = Env(tmp_path, f"http://127.0.0.1:{port}", {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1"})
    try:
        m = mounter(env, make_volume(env, size=16 * MiB), "--check-interval", "1",
                    "--kms-grace", "600")
        with open(m.file, "r+b") as f:
            f.write(b"still here" * 100)
            f.flush()
            os.fsync(f.fileno())
        st = m.status()
        assert st["state"] == "available" and st["last_successful_check"]
        server.stop()
        m.control({"op": "check"})
        m.wait_state("kms-unreachable", timeout=5)
        st = m.status()
        assert st["kms_unreachable_since"]
        # Still serving: reads and fsync'd writes go on while the endpoint is away.
        assert direct_read(m.file, 0, 4096)[:1000] == b"still here" * 100
        with open(m.file, "r+b") as f:
            f.seek(MiB)
            f.write(b"written while unreachable")
            f.flush()
            os.fsync(f.fileno())
        server = _server(port)
        m.wait_state("available", timeout=10)
        # Unreachable for longer than the grace period: the mount fails (recoverable).
        server.stop()
        m.control({"op": "check"})
        m.wait_state("kms-unreachable", timeout=5)
        m.control({"op": "set-clock", "advance": 700, "check": True})
        m.wait_state("inaccessible-encryption-credentials-recoverable", timeout=5)
        with pytest.raises(OSError):
            direct_read(m.file, 0, 4096)
        server = _server(port)
    finally:
        server.stop()


def test_aws_key_checks_run_on_the_interval(moto_env, make_volume, mounter):
    m = mounter(moto_env, make_volume(moto_env, size=16 * MiB))
    st = m.status()
    assert st["grant_id"] and st["key_arn"].startswith("arn:aws:kms:us-east-1:")
    # No change counter against AWS: after the check at start, nothing is checked before the
    # interval (60 s) has passed.
    time.sleep(0.3)
    assert m.status()["checks"] == 1
    t = m.control({"op": "set-clock", "advance": 61})["time"]
    after = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
    deadline = time.monotonic() + 5
    # "checks" counts a check when it starts: wait until it has also finished successfully.
    while (st := m.status())["checks"] == 1 or (st["last_successful_check"] or "") < after:
        assert time.monotonic() < deadline, f"no successful check after the interval: {st}"
        time.sleep(0.05)
    assert st["state"] == "available"
    assert st["last_successful_check"] >= after
    # (moto does not refuse GenerateDataKeyWithoutPlaintext on a disabled key, so a disable is
    # invisible against moto; the embedded-service tests cover each revocation path.)
