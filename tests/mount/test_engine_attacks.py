"""Attacks on the native request engine's guarantees (issue 12's review): revocation whose record
cannot be written, engine teardown racing other threads, the refused write past the end after an
unmount. Each test names the guarantee it attacks; mounts are served by separate processes."""

import errno
import json
import os
import random
import subprocess
import sys
import textwrap
import time

import pytest

from tests.mount.conftest import ROOT, direct_read, kms_client

pytestmark = [pytest.mark.mount, pytest.mark.timeout(120)]

MiB = 1 << 20
RECOVERABLE = "inaccessible-encryption-credentials-recoverable"


def _eio(fn, *args):
    with pytest.raises(OSError) as info:
        fn(*args)
    assert info.value.errno == errno.EIO, info.value


# ---- revocation must not wait for (or depend on) the state record's write --------------------

def test_latch_callbacks_run_before_the_record_is_written(tmp_path):
    """Closing the latch cuts the data path off first (the native engine's latch, the key wipe),
    then persists the record: the record's fsync can take seconds under heavy writes, and EIO is
    due within one second of the revocation."""
    from volumed.clock import FakeClock
    from volumed.mount.latch import AccessLatch

    rec = tmp_path / "rec.json"
    latch = AccessLatch(FakeClock(1000.0), rec, "arn:aws:kms:us-east-1:111122223333:key/k")
    seen = []
    latch.on_close(lambda: seen.append(rec.exists()))
    assert latch.close(RECOVERABLE, "revoked")
    assert seen == [False]  # the callback ran before the record was written
    assert json.loads(rec.read_text())["state"] == RECOVERABLE


def test_latch_closes_even_when_the_record_cannot_be_written(tmp_path):
    """A state directory that refuses the record (full disk, I/O error) must not leave the mount
    serving: the callbacks still run, the state is inaccessible, the failure is only logged."""
    from volumed.clock import FakeClock
    from volumed.mount.latch import AccessLatch

    rec = tmp_path / "rec.json"
    rec.mkdir()
    (rec / "x").write_text("a directory where the record goes: the rename fails")
    latch = AccessLatch(FakeClock(1000.0), rec, "k")
    seen = []
    latch.on_close(lambda: seen.append("closed"))
    assert latch.close(RECOVERABLE, "revoked")
    assert seen == ["closed"] and not latch.serving


@pytest.mark.parametrize("engine", ["native", "python"])
def test_revocation_cuts_off_when_the_state_record_cannot_be_written(kms_env, make_volume, mounter,
                                                                     engine):
    """The revocation record's write fails (here: a directory sits at its name; in life a full
    or failing state disk): the mount is still cut off with EIO within a second, the daemon keeps
    answering status, and unmounts cleanly."""
    m = mounter(kms_env, make_volume(kms_env, size=16 * MiB), "--engine", engine)
    data = random.Random(5).randbytes(MiB)
    fd = os.open(m.file, os.O_RDWR)
    try:
        os.pwrite(fd, data, 0)
        os.fsync(fd)
        st = m.status()
        rec = kms_env.tmp / "state" / f"{st['volume_uuid']}.json"
        rec.unlink()
        rec.mkdir()
        (rec / "keep").write_text("not empty: a rename over it fails")
        kms_client(kms_env).disable_key(KeyId=st["key_arn"])
        m.wait_state(RECOVERABLE, timeout=1.0)
        _eio(direct_read, m.file, 0, 65536)
        _eio(os.pread, fd, 4096, 0)
        _eio(os.fsync, fd)
        assert m.status()["cut_off"] is True
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    logs = "".join(p.read_text() for p in (kms_env.tmp / "run").glob("*.log"))
    assert "could not record" in logs
    kms_env.run("unmount", m.mountpoint)
