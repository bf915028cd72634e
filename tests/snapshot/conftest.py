"""Fixtures for the snapshot tests: an embedded key service, a local snapshot store, volumes
filled with known data, and helpers that read a volume back whole."""

from __future__ import annotations

import os

import pytest

from volumed.kms.principals import rds_via

VIA = rds_via("us-east-1")
MiB = 1 << 20


@pytest.fixture
def kms(tmp_path):
    """A client of the embedded key service (the keystore user, calling through RDS)."""
    from volumed import kms as kmsmod

    return kmsmod.connect(str(tmp_path / "keystore"), via_service=VIA)


@pytest.fixture
def store(tmp_path):
    from volumed.snapshot.store import LocalStore

    return LocalStore(str(tmp_path / "store"))


@pytest.fixture
def s3():
    """A moto S3 client with the bucket ``fleet-snapshots``."""
    from moto import mock_aws

    with mock_aws():
        import boto3

        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="fleet-snapshots")
        yield client


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """cli(*argv) -> (exit code, stdout, stderr) of ``volumed`` run in-process with the keystore
    in tmp_path and the default snapshot store next to it."""
    from volumed.cli import main

    monkeypatch.setenv("VOLUMED_KMS", str(tmp_path / "keystore"))
    monkeypatch.delenv("VOLUMED_SNAPSHOT_STORE", raising=False)

    def run(*argv):
        rc = main(list(argv))
        out, err = capsys.readouterr()
        return rc, out, err

    return run


@pytest.fixture
def cmk(kms):
    """A customer managed key's ARN."""
    return kms.create_key(Description="snapshot tests")["KeyMetadata"]["Arn"]


@pytest.fixture
def make_volume(tmp_path, kms):
    """make_volume(cipher, size=..., key_id=...) -> path of a new volume."""
    from volumed.volume import Volume

    counter = iter(range(1000))

    def make(cipher: str = "xts", size: int = 8 * MiB, **kw) -> str:
        path = str(tmp_path / f"vol{next(counter)}.{cipher}")
        Volume.create(path, size=size, kms=kms, cipher=cipher, **kw)
        return path

    return make


def write(kms, path, writes) -> None:
    """Apply [(offset, bytes), ...] to the volume and close it."""
    from volumed.volume import Volume

    with Volume.open(path, kms=kms) as v:
        for off, data in writes:
            v.write(off, data)


def contents(kms, path) -> bytes:
    """The whole plaintext of a volume."""
    from volumed.volume import Volume

    with Volume.open(path, kms=kms) as v:
        return v.read(0, v.size)


def chunk_bytes(store) -> int:
    """Bytes of all chunk objects in a local store (what the store really holds)."""
    total = 0
    for name in store.list("chunks/"):
        total += os.path.getsize(os.path.join(store.root, *name.split("/")))
    return total


def pattern(seed: int, n: int) -> bytes:
    """n deterministic, incompressible-looking bytes."""
    import hashlib

    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{i}".encode()).digest()
        i += 1
    return bytes(out[:n])
