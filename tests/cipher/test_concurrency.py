"""Several Python threads using one cipher object at once get correct results (the native core
hands each thread its own context and releases the GIL for the whole batch)."""

import os
import threading

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


def expected_xts(key, data, first):
    out = bytearray()
    for i in range(len(data) // 4096):
        enc = Cipher(algorithms.AES(key), modes.XTS((8 * (first + i)).to_bytes(16, "little"))).encryptor()
        out += enc.update(data[i * 4096:(i + 1) * 4096])
    return bytes(out)


@pytest.fixture(autouse=True)
def pool_always_helps():
    """Native: two threads per large batch with helpers always invited, whatever the load, so the
    pool's shared state is exercised by concurrent callers."""
    try:
        from volumed import _native
    except ImportError:
        yield
        return
    saved = _native.get_threads()
    _native.set_threads(2, adaptive=False)
    yield
    _native.set_threads(saved)


def run_threads(target, n):
    errors = []

    def wrap(i):
        try:
            target(i)
        except BaseException as exc:  # report in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]


@pytest.mark.timeout(120)
def test_threads_share_one_xts_cipher(impl):
    key = os.urandom(64)
    c = impl.XtsCipher(bytearray(key))
    sizes = [1, 3, 40, 64, 200]  # below and above the parallel threshold
    datas = {n: os.urandom(4096 * n) for n in sizes}
    wants = {(n, f): expected_xts(key, datas[n], f) for n in sizes for f in (0, 1 << 33)}

    def work(i):
        for rep in range(6):
            n, f = sizes[(i + rep) % len(sizes)], (0, 1 << 33)[rep % 2]
            buf = bytearray(datas[n])
            c.encrypt(buf, f)
            assert buf == wants[(n, f)], f"thread {i} rep {rep}"
            c.decrypt(buf, f)
            assert buf == datas[n]

    run_threads(work, 6)


@pytest.mark.timeout(120)
def test_threads_share_one_gcm_cipher(impl):
    c = impl.GcmCipher(bytearray(os.urandom(32)), b"p")
    data = os.urandom(4096 * 64)
    nonces = os.urandom(12 * 64)

    def work(i):
        for rep in range(4):
            buf, tags = bytearray(data), bytearray(16 * 64)
            c.encrypt(buf, i * 1000, nonces, tags)
            bad = rep % 64
            buf[bad * 4096] ^= 1
            assert c.decrypt(buf, i * 1000, nonces, tags) == [bad]
            assert buf[:bad * 4096] == data[:bad * 4096]

    run_threads(work, 5)


def test_close_while_other_threads_encrypt(impl):
    c = impl.XtsCipher(bytearray(os.urandom(64)))
    started = threading.Event()
    outcomes = []

    def work(i):
        buf = bytearray(4096 * 128)
        started.set()
        for _ in range(200):
            try:
                c.encrypt(buf, 0)
            except ValueError as exc:
                outcomes.append(str(exc))
                return
        outcomes.append("finished")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    started.wait(10)
    c.close()
    for t in threads:
        t.join(60)
    assert len(outcomes) == 3
    assert all(o in ("finished", "cipher is closed") for o in outcomes)
    with pytest.raises(ValueError, match="closed"):
        c.encrypt(bytearray(4096), 0)


def test_fork_child_can_use_the_pool(native):
    """Pool workers do not survive fork; the child starts its own and still gets right answers."""
    key = os.urandom(64)
    data = os.urandom(4096 * 256)
    c = native.XtsCipher(bytearray(key))
    buf = bytearray(data)
    c.encrypt(buf, 7)  # starts the pool in the parent
    assert native.pool_workers() >= 1
    pid = os.fork()
    if pid == 0:
        ok = False
        try:
            child = bytearray(data)
            c.encrypt(child, 7)
            ok = child == buf
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.timeout(120)
def test_native_batches_release_the_gil(native):
    """While one thread is inside one long native call, another thread runs Python code: it
    leaves timestamps in the middle of that call. With the GIL held for the batch it could only
    run before the call starts or after it returns (at most a switch interval of slack at the
    edges), never in its middle. Retried a few times: a busy machine may starve the other thread."""
    import time

    c = native.XtsCipher(bytearray(os.urandom(64)))
    buf = bytearray(128 << 20)
    native.set_threads(1, adaptive=False)  # one core for the batch, the other for the Python loop
    c.encrypt(buf, 0)  # warm up: pages touched, contexts made
    for _ in range(5):
        stamps, done = [], threading.Event()

        def spin():
            while not done.is_set():
                stamps.append(time.monotonic())

        t = threading.Thread(target=spin)
        t.start()
        t0 = time.monotonic()
        c.encrypt(buf, 0)  # one call: 128 MiB, some 20-100 ms on one core
        t1 = time.monotonic()
        done.set()
        t.join(10)
        middle = [s for s in stamps if t0 + 0.4 * (t1 - t0) < s < t0 + 0.6 * (t1 - t0)]
        if middle:
            return
    pytest.fail("no Python thread ran while native calls were in progress: the GIL is held")
