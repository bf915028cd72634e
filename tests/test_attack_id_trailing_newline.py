"""Attack on issue 13 item 6 ("validate every id") and the ARN type: Python's ``$`` also matches
before a final newline, so every ``^...$`` validator used with ``re.match`` let ``id + "\\n"``
through. A volume header's uuid ``<uuid>\\n`` passed check_header_ids and named the state file
``<uuid>\\n.json`` (a second lock and state file for one volume); ``snap-...\\n`` named a manifest;
Arn.parse accepted ``123456789012\\n`` as an account. Now every id check matches the whole string."""

from __future__ import annotations

import pytest

from volumed.errors import FormatError, UsageError, VolumedError
from volumed.kms.arn import Arn, InvalidArn
from volumed.kms.server import accesskeys
from volumed.mount import paths
from volumed.snapshot import store as snapstore
from volumed.snapshot.ids import validate_snapshot_id
from volumed.volume import ids

UUID = "12345678-1234-4234-8234-123456789abc"


def test_volume_ids_with_a_trailing_newline_are_refused(tmp_path, monkeypatch):
    assert ids.is_uuid(UUID) and not ids.is_uuid(UUID + "\n")
    assert not ids.is_db_id("db-" + "A" * 26 + "\n") and not ids.is_ebs_id("vol-" + "a" * 17 + "\n")
    monkeypatch.setenv("VOLUMED_STATE_DIR", str(tmp_path))
    with pytest.raises(FormatError):
        paths.volume_state_path(UUID + "\n")


def test_snapshot_ids_and_store_names_with_a_trailing_newline_are_refused():
    with pytest.raises(UsageError):
        validate_snapshot_id("snap-" + "a" * 17 + "\n")
    with pytest.raises(VolumedError):
        snapstore._check_name("snapshots/x.json\n")


def test_arns_and_access_key_principals_with_a_trailing_newline_are_refused():
    with pytest.raises(InvalidArn):
        Arn.parse("arn:aws:iam::123456789012\n:user/x")
    with pytest.raises(InvalidArn):
        Arn.parse("arn:aws\n:iam::123456789012:user/x")
    assert accesskeys.is_principal("arn:aws:iam::123456789012:user/carol")
    assert not accesskeys.is_principal("arn:aws:iam::123456789012:user/carol\n")
    assert not accesskeys.is_principal("arn:aws:iam::123456789012:user/*")  # the old on-behalf check took it
