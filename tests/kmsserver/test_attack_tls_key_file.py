"""Attack (issue 13 item 7's pattern, in the key server): the self-signed TLS key is written
through the safe temporary file.

Before: ``ensure_certificate`` wrote the private key to the fixed name ``server-tls/key.pem.tmp``
with O_CREAT | O_TRUNC and no O_NOFOLLOW: a symlink planted there received the server's TLS private
key (into a file the planter can read), and a file planted there kept its own mode (0644) through
the rename, so key.pem ended up readable by everyone. Whoever holds that key can impersonate the
key server to every host (hosts pin only the certificate). Now both files go through
volumed.safefile (O_EXCL | O_NOFOLLOW, random name, 0600 for the key), and an existing key.pem
that others could read is refused."""

from __future__ import annotations

import os
import stat

import pytest

from volumed.errors import UsageError
from volumed.kms.server import tls


def test_a_planted_symlink_or_file_at_the_old_temporary_name_gets_nothing(tmp_path):
    d = tmp_path / tls.TLS_DIR
    d.mkdir(mode=0o700)
    stolen = tmp_path / "stolen"
    stolen.write_bytes(b"")
    os.chmod(stolen, 0o666)
    os.symlink(stolen, d / "key.pem.tmp")
    (d / "cert.pem.tmp").write_bytes(b"")
    cert, key, created = tls.ensure_certificate(str(tmp_path), [])
    assert created
    assert stolen.read_bytes() == b""  # nothing went through the link
    assert stat.S_IMODE(os.lstat(key).st_mode) == 0o600
    assert b"PRIVATE KEY" in open(key, "rb").read()
    assert tls.fingerprint(cert)


def test_a_planted_world_readable_file_does_not_make_the_key_readable(tmp_path):
    d = tmp_path / tls.TLS_DIR
    d.mkdir(mode=0o700)
    planted = d / "key.pem.tmp"
    planted.write_bytes(b"")
    os.chmod(planted, 0o644)
    _, key, _ = tls.ensure_certificate(str(tmp_path), [])
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600


def test_an_existing_key_others_can_read_is_refused(tmp_path):
    _, key, _ = tls.ensure_certificate(str(tmp_path), [])
    os.chmod(key, 0o644)
    with pytest.raises(UsageError, match="chmod 600") as exc:
        tls.ensure_certificate(str(tmp_path), [])
    assert "\n" not in str(exc.value)
    os.chmod(key, 0o600)
    assert tls.ensure_certificate(str(tmp_path), [])[2] is False
