"""Attack on issue 13 item 10 ("harden every command that unwraps a key"), in the key server:
`volumed kms serve` holds the keystore's root key, every KMS key's material and, in each
GenerateDataKey/Decrypt answer, plaintext data keys; `volumed iam create-access-key` reads the
root key to wrap a secret. Before, neither was hardened: the server could dump core (RLIMIT_CORE
unchanged, dumpable) and swap. Now both run as holds_keys commands (not dumpable, core limit 0,
memory locked where safe), the server's forked workers included (they inherit it)."""

from __future__ import annotations

import os

import pytest

from volumed.cli import server_cmd

pytestmark = pytest.mark.timeout(120)


def _core_limit(pid: int) -> str:
    with open(f"/proc/{pid}/limits") as f:
        return next(line for line in f if line.startswith("Max core file size")).split()[4]


def test_the_key_server_process_is_hardened(server):
    pid = server.proc.pid
    assert _core_limit(pid) == "0"
    with open(f"/proc/{pid}/status") as f:
        locked = int(next(line for line in f if line.startswith("VmLck:")).split()[1])
    if os.geteuid() == 0:
        assert locked > 0


def test_server_commands_that_hold_keys_are_marked():
    assert getattr(server_cmd._serve, "holds_keys", False)
    assert getattr(server_cmd._create_key, "holds_keys", False)
