"""Every command that unwraps a data key (or handles KMS plaintext) runs in a hardened process
(issue 13 item 10): not dumpable, core limit 0, memory locked where possible. Each command runs as
its own process with the test hook $VOLUMED_TEST_HARDENING_LOG, which records the process's state
at the moment each key is unwrapped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from volumed.hardening import ENV_TEST_LOG, holds_keys

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(300)


class Runner:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.log = tmp / "hardening.log"
        self.env = dict(os.environ, VOLUMED_KMS=str(tmp / "ks"), PYTHONPATH=str(ROOT),
                        **{ENV_TEST_LOG: str(self.log)})
        self.env.pop("VOLUMED_PRINCIPAL", None)
        self.env.pop("VOLUMED_SNAPSHOT_STORE", None)

    def run(self, *argv) -> tuple[str, list[dict]]:
        """Run ``volumed ARGV``; return its stdout and the unwrap records it left."""
        self.log.unlink(missing_ok=True)
        p = subprocess.run([sys.executable, "-m", "volumed", *map(str, argv)], env=self.env,
                           cwd=self.tmp, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        recs = [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []
        return p.stdout, recs


def hardened(recs) -> bool:
    return bool(recs) and all(not r["dumpable"] and r["core_limit"] == 0 for r in recs)


def test_every_command_that_unwraps_a_key_is_hardened(tmp_path):
    r = Runner(tmp_path)
    out, recs = r.run("kms", "create-key", "--json")
    cmk = json.loads(out)["KeyMetadata"]["Arn"]
    seen = {}
    for name, argv in [
        ("create xts", ["create", "v.img", "--size", "4M", "--key", cmk]),
        ("create gcm", ["create", "g.img", "--size", "4M", "--cipher", "gcm"]),
        ("resize", ["resize", "v.img", "8M"]),
        ("export", ["export", "--luks", "v.img", "v.luks"]),
        ("snapshot create", ["snapshot", "create", "v.img", "--json"]),
    ]:
        out, recs = r.run(*argv)
        seen[name] = recs
        if name == "snapshot create":
            snap = json.loads(out)["SnapshotId"]
    out, recs = r.run("snapshot", "copy", snap, "--json")
    seen["snapshot copy"] = recs
    out, recs = r.run("snapshot", "copy", snap, "--key", "alias/aws/rds", "--json")
    seen["snapshot copy --key"] = recs
    seen["snapshot share"] = r.run("snapshot", "share", snap, "--account", "111122223333")[1]
    seen["snapshot seal"] = r.run("snapshot", "seal", snap)[1]
    seen["restore"] = r.run("restore", snap, "r.img")[1]
    seen["restore gcm"] = r.run("restore", json.loads(r.run("snapshot", "create", "g.img", "--json")[0])
                                ["SnapshotId"], "rg.img")[1]
    (tmp_path / "plain").write_bytes(b"secret")
    r.run("kms", "encrypt", cmk, "--in", "plain", "--out", "ct")
    seen["kms decrypt"] = r.run("kms", "decrypt", "--in", "ct", "--out", "back")[1]
    not_hardened = {name: recs for name, recs in seen.items() if not hardened(recs)}
    assert not not_hardened, not_hardened
    assert all(rec["locked_kib"] > 0 for recs in seen.values() for rec in recs)  # root: mlockall
    # Commands that unwrap nothing leave no record (the hook sees only unwraps).
    assert r.run("info", "v.img")[1] == []


def test_the_hook_sees_an_unhardened_unwrap(tmp_path):
    """The check above would catch a command that forgot ``holds_keys``: the same unwrap in a
    plain process is recorded as dumpable."""
    log = tmp_path / "log"
    code = ("from volumed import kms\n"
            "from volumed.volume.keywrap import new_wrapped_key, unwrap\n"
            f"c = kms.connect({str(tmp_path / 'ks')!r})\n"
            "ctx = {'aws:ebs:id': 'vol-1'}\n"
            "k = c.create_key()['KeyMetadata']['Arn']\n"
            "w, arn = new_wrapped_key(c, k, 32, ctx)\n"
            "unwrap(c, arn, w, ctx)\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), **{ENV_TEST_LOG: str(log)})
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(recs) == 1 and recs[0]["dumpable"] is True


def test_the_marked_commands_are_the_key_holders():
    from volumed.cli import build_parser

    marked = set()
    parser = build_parser()

    def walk(p, prefix):
        for action in p._actions:
            if action.__class__.__name__ == "_SubParsersAction":
                for name, sub in action.choices.items():
                    walk(sub, prefix + [name])
        func = p.get_default("func")
        if func is not None and getattr(func, "holds_keys", False):
            marked.add(" ".join(prefix))

    walk(parser, [])
    assert marked == {"create", "resize", "export", "upgrade", "restore", "snapshot create", "snapshot copy",
                      "snapshot share", "snapshot seal", "kms encrypt", "kms decrypt",
                      "kms serve", "iam create-access-key"}  # the key server holds the root key
    assert holds_keys(lambda a: 0).holds_keys is True
