"""Realistic sizes: sparse 1 GiB volumes written across their whole range, a power cut in the middle
of large writes, and the same code against moto's KMS (AWS's API, as boto3 speaks it)."""

from __future__ import annotations

import os
import random

import pytest

from volumed.volume import RecordingBackingFile, Volume, simulate_power_cut

GIB = 1 << 30
SS = 4096


@pytest.mark.timeout(120)
@pytest.mark.parametrize("cipher", ["xts", "gcm"])
def test_one_gib_volume_survives_a_torn_power_cut(cipher, make_volume, kms, tmp_path):
    path = make_volume(cipher, size=GIB)
    assert os.stat(path).st_size > GIB
    assert os.stat(path).st_blocks * 512 < (32 << 20)  # sparse: only headers (and GCM metadata)
    rng = random.Random(cipher)
    journal = str(tmp_path / "journal")
    durable: dict[int, bytes] = {}
    vol = Volume.open(path, kms=kms, backing=RecordingBackingFile(path, journal))
    head = rng.randbytes(8 << 20)
    vol.write(0, head)
    durable.update({s: head[s * SS:(s + 1) * SS] for s in range(len(head) // SS)})
    for _ in range(300):  # scattered 4 KiB writes across the whole GiB, incl. the last sector
        s = rng.randrange(GIB // SS)
        durable[s] = rng.randbytes(SS)
        vol.write(s * SS, durable[s])
    durable[GIB // SS - 1] = b"L" * SS
    vol.write(GIB - SS, durable[GIB // SS - 1])
    vol.flush()
    later: dict[int, bytes] = {}
    for _ in range(24):  # 1 MiB writes after the flush, then the power goes
        s = rng.randrange(GIB // SS - 256)
        data = rng.randbytes(1 << 20)
        vol.write(s * SS, data)
        for i in range(256):
            later.setdefault(s + i, []).append(data[i * SS:(i + 1) * SS])
    vol._backing.close()
    report = simulate_power_cut(path, journal, mode="torn", seed=3)
    assert report.torn > 0 and report.pages_dropped > 0
    with Volume.open(path, kms=kms) as vol:
        for s in set(durable) | set(later):
            got = vol.read(s * SS, SS)
            allowed = [durable.get(s, bytes(SS))] + later.get(s, [])
            assert got in allowed, s
        touched = set(durable) | set(later)
        untouched = next(s for s in range(GIB // SS // 2, GIB // SS)
                         if not touched & {s, s + 1, s + 2})
        assert vol.read(untouched * SS, 3 * SS) == bytes(3 * SS)
    assert os.stat(path).st_blocks * 512 < (128 << 20)


def test_moto_kms_create_open_and_context_binding(tmp_path):
    import boto3
    from moto import mock_aws

    from volumed.errors import IntegrityError, KeyAccessError
    from volumed.volume import luks2
    from volumed.volume.backing import BackingFile

    with mock_aws():
        client = boto3.client("kms", region_name="us-east-1")
        key = client.create_key(Description="rds")["KeyMetadata"]["Arn"]
        path = tmp_path / "v"
        h = Volume.create(path, size=4 << 20, kms=client, key_id=key, cipher="xts")
        assert h.key_arn == key
        with Volume.open(path, kms=client, grant_tokens=["token-not-checked-by-moto"]) as vol:
            vol.write(100, b"through boto3")
        with Volume.open(path, kms=client) as vol:
            assert vol.read(100, 13) == b"through boto3"
        # Another volume's context on this volume's wrapped key: KMS itself refuses.
        b = BackingFile(path)
        h, salt, digest, _ = luks2.decode(lambda o, n: bytes(b.pread(o, n)))
        h.context = {"aws:rds:db-id": h.db_id, "aws:ebs:id": "vol-0123456789abcdef0"}
        h.ebs_id = "vol-0123456789abcdef0"
        b.pwrite(0, luks2.encode(h, salt, digest))
        b.close()
        with pytest.raises((KeyAccessError, IntegrityError)):
            Volume.open(path, kms=client)
