"""Several real processes on one keystore: no lost updates, no "database is locked" reaching a
caller, and a change committed in one process seen by the next call in another."""

import multiprocessing as mp

import pytest

from volumed import kms as kms_pkg

pytestmark = pytest.mark.timeout(120)
WORKERS, ROUNDS = 4, 30
GRANTEE = "arn:aws:iam::111122223333:user/w"


def _hammer(keystore, key, worker, errors):
    try:
        c = kms_pkg.connect(keystore)
        for i in range(ROUNDS):
            c.create_grant(KeyId=key, GranteePrincipal=GRANTEE, Operations=["Decrypt"], Name=f"w{worker}-{i}")
            blob = c.encrypt(KeyId=key, Plaintext=f"{worker}-{i}".encode(), EncryptionContext={"w": str(worker)})
            assert c.decrypt(CiphertextBlob=blob["CiphertextBlob"], EncryptionContext={"w": str(worker)})["Plaintext"] \
                == f"{worker}-{i}".encode()
            c.create_alias(AliasName=f"alias/w{worker}-{i}", TargetKeyId=key)
            c.change_counter()
        c.close()
    except BaseException as exc:  # reported to the parent, which fails the test
        errors.put(f"worker {worker}: {type(exc).__name__}: {exc}")


def test_processes_hammering_one_keystore(tmp_path):
    keystore = str(tmp_path / "ks")
    c = kms_pkg.connect(keystore)
    key = c.create_key()["KeyMetadata"]["KeyId"]
    start = c.change_counter()
    ctx = mp.get_context("spawn")
    errors = ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(keystore, key, w, errors)) for w in range(WORKERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(100)
    problems = []
    while not errors.empty():
        problems.append(errors.get())
    assert problems == []
    assert all(p.exitcode == 0 for p in procs)
    grants = []
    marker = None
    while True:
        page = c.list_grants(KeyId=key, Limit=100, **({"Marker": marker} if marker else {}))
        grants += page["Grants"]
        if not page["Truncated"]:
            break
        marker = page["NextMarker"]
    assert len(grants) == WORKERS * ROUNDS
    assert len({g["GrantId"] for g in grants}) == WORKERS * ROUNDS
    aliases = c.list_aliases(Limit=1000)["Aliases"]
    assert len(aliases) == WORKERS * ROUNDS
    assert c.change_counter() == start + 2 * WORKERS * ROUNDS
    c.close()


def _watch_then_encrypt(keystore, key, ready, go, result):
    c = kms_pkg.connect(keystore)
    c.encrypt(KeyId=key, Plaintext=b"x")
    ready.put(c.change_counter())
    go.get(timeout=60)
    result.put(c.change_counter())
    try:
        c.encrypt(KeyId=key, Plaintext=b"x")
        result.put("allowed")
    except c.exceptions.DisabledException:
        result.put("DisabledException")


def test_change_in_one_process_seen_by_next_call_in_another(tmp_path):
    keystore = str(tmp_path / "ks")
    c = kms_pkg.connect(keystore)
    key = c.create_key()["KeyMetadata"]["KeyId"]
    ctx = mp.get_context("spawn")
    ready, go, result = ctx.Queue(), ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=_watch_then_encrypt, args=(keystore, key, ready, go, result))
    p.start()
    before = ready.get(timeout=60)
    c.disable_key(KeyId=key)
    go.put(1)
    assert result.get(timeout=60) > before
    assert result.get(timeout=60) == "DisabledException"
    p.join(30)
    c.close()


def test_threads_share_one_client(kms, key):
    from concurrent.futures import ThreadPoolExecutor

    def work(i):
        blob = kms.encrypt(KeyId=key, Plaintext=str(i).encode())["CiphertextBlob"]
        kms.change_counter()
        kms.create_grant(KeyId=key, GranteePrincipal=GRANTEE, Operations=["Decrypt"])
        return kms.decrypt(CiphertextBlob=blob)["Plaintext"] == str(i).encode()

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(work, range(64)))
    assert len(kms.list_grants(KeyId=key, Limit=100)["Grants"]) == 64
