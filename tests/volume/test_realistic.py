"""Realistic sizes: sparse 1 GiB volumes written across their whole range, 1,000 power cuts per
cipher mode on one of them, a power cut in the middle
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
    vol.abandon()
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


CRASH_POINTS = 1000  # per cipher mode, half dropping whole writes, half tearing them at 4 KiB


@pytest.mark.timeout(240)
@pytest.mark.parametrize("cipher", ["xts", "gcm"])
def test_a_thousand_crash_points_on_a_sparse_gib_volume(cipher, make_volume, kms, tmp_path):
    """1,000 power cuts on one sparse 1 GiB volume, each after a few scattered whole-sector writes
    (some of zeros, so holes are punched, some over sectors written before) with a flush now and
    then; every other cut tears multi-page writes. After each cut every sector ever written reads
    as its acknowledged content or as a write issued after the last flush, never anything else, and
    the crashed state is where the next round starts (recovery of recovery). The small-volume
    harness (test_crash.py) covers unaligned writes and discards at every point of a trace."""
    from tests.volume.conftest import raw_key

    path = make_volume(cipher, size=GIB)
    key = bytes(raw_key(kms, path))
    journal = str(tmp_path / "journal")
    rng = random.Random(f"gib-crash-{cipher}")
    last = GIB // SS - 1
    durable: dict[int, bytes] = {}   # sector -> what it must read (acknowledged or survived)
    hot: list[int] = []              # sectors written before, to be overwritten again
    torn_total = 0
    for point in range(CRASH_POINTS):
        vol = Volume._open_with_key(path, bytearray(key), backing=RecordingBackingFile(path, journal))
        pending: dict[int, list[bytes]] = {}
        for _ in range(rng.randrange(1, 6)):
            n = rng.choice((1, 1, 2, 3, 8))
            s = rng.choice(hot) if hot and rng.random() < 0.5 else rng.choice((rng.randrange(last), last))
            s = min(s, last - n + 1)
            data = bytes(n * SS) if rng.random() < 0.15 else rng.randbytes(n * SS)
            vol.write(s * SS, data)
            for i in range(n):
                pending.setdefault(s + i, []).append(data[i * SS:(i + 1) * SS])
            if rng.random() < 0.2:  # acknowledged: the newest version is now the only one allowed
                vol.flush()
                durable.update({t: versions[-1] for t, versions in pending.items()})
                pending = {}
        vol.abandon()  # the power goes: no flush, no clean close
        report = simulate_power_cut(path, journal, mode="torn" if point % 2 else "random", seed=point)
        torn_total += report.torn
        vol = Volume._open_with_key(path, bytearray(key))
        check = set(pending) | set(rng.sample(sorted(durable), min(len(durable), 8)))
        for s in check:
            got = vol.read(s * SS, SS)
            allowed = [durable.get(s, bytes(SS))] + pending.get(s, [])
            assert got in allowed, f"{cipher}: sector {s} after crash point {point} is garbage"
            if s not in durable:
                hot.append(s)
            durable[s] = bytes(got)
        vol.abandon()  # and again right after recovery: no clean close either
    assert torn_total > 0
    with Volume._open_with_key(path, bytearray(key)) as vol:  # a last full check of every sector
        for s, want in durable.items():
            assert vol.read(s * SS, SS) == want, s
    assert os.stat(path).st_blocks * 512 < (256 << 20)  # still sparse
