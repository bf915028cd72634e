"""The volume commands through real subprocesses: output, one-line errors, nothing left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(120)


def run(tmp_path, *args):
    env = dict(os.environ, VOLUMED_KMS=str(tmp_path / "keystore"))
    env.pop("VOLUMED_REQUIRE_NATIVE", None)
    return subprocess.run([sys.executable, "-m", "volumed", *args], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=60)


def one_line_error(r, code=None):
    assert r.returncode != 0
    if code is not None:
        assert r.returncode == code, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and "RuntimeWarning" not in ln
             and "warnings.warn" not in ln]
    assert len(lines) == 1 and lines[0].startswith("volumed: "), r.stderr
    assert "Traceback" not in r.stderr


def test_create_info_resize_export(tmp_path):
    r = run(tmp_path, "create", "v.img", "--size", "1G", "--db-id", "db-ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    assert r.returncode == 0, r.stderr
    assert "1 GiB" in r.stdout and "db-ABCDEFGHIJKLMNOPQRSTUVWXYZ" in r.stdout and "vol-" in r.stdout
    assert os.stat(tmp_path / "v.img").st_blocks * 512 < (2 << 20)  # sparse
    r = run(tmp_path, "info", "v.img", "--json")
    info = json.loads(r.stdout)
    assert info["size"] == 1 << 30 and info["cipher"] == "xts" and info["key_arn"].startswith("arn:aws:kms:")
    assert info["context"]["aws:rds:db-id"] == "db-ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    r = run(tmp_path, "resize", "v.img", "1100M")
    assert r.returncode == 0, r.stderr
    r = run(tmp_path, "resize", "v.img", "512M")
    one_line_error(r, 2)
    assert "only grow" in r.stderr
    assert json.loads(run(tmp_path, "info", "v.img", "--json").stdout)["size"] == 1100 << 20
    r = run(tmp_path, "create", "g.img", "--size", "8388608", "--cipher", "gcm")
    assert r.returncode == 0 and "AES-256-GCM" in r.stdout
    r = run(tmp_path, "export", "--luks", "g.img", "g.luks")
    one_line_error(r, 2)
    assert not (tmp_path / "g.luks").exists()
    assert run(tmp_path, "create", "small.img", "--size", "4M").returncode == 0
    r = run(tmp_path, "export", "--luks", "small.img", "small.luks")
    assert r.returncode == 0, r.stderr
    assert os.path.getsize(tmp_path / "small.luks") == os.path.getsize(tmp_path / "small.img")
    subprocess.run(["cryptsetup", "luksDump", str(tmp_path / "small.luks")], check=True, capture_output=True)
    r = run(tmp_path, "export", "--luks", "small.img", "small.luks")
    one_line_error(r, 2)


def test_bad_input_leaves_nothing(tmp_path):
    before = set(os.listdir(tmp_path))
    for args, words in [
        (("create", "a.img", "--size", "12Q"), "invalid size"),
        (("create", "a.img", "--size", "1000"), "multiple of 4096"),
        (("create", "a.img", "--size", "1M", "--db-id", "db-nope"), "invalid db id"),
        (("create", "a.img", "--size", "1M", "--key", "alias/missing"), "NotFoundException"),
        (("info", "missing.img"), "does not exist"),
    ]:
        r = run(tmp_path, *args)
        one_line_error(r)
        assert words in r.stderr, r.stderr
    after = set(os.listdir(tmp_path)) - {"keystore"}
    assert after == before
    (tmp_path / "junk").write_bytes(os.urandom(100_000))
    r = run(tmp_path, "info", "junk")
    one_line_error(r, 3)
    assert "not a volumed volume" in r.stderr
    r = run(tmp_path, "create", "junk", "--size", "1M")
    one_line_error(r, 2)
    assert "already exists" in r.stderr
