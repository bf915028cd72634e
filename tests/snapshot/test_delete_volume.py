"""`volumed delete`: grants retired, every copy of the wrapped key destroyed (crypto-erase),
mounted volumes refused."""

from __future__ import annotations

import base64
import os
import socket

import pytest

from tests.snapshot.conftest import contents, pattern, write
from volumed.errors import FormatError, StateError
from volumed.mount.attach import grant_name, host_principal
from volumed.snapshot import delete_volume
from volumed.snapshot.erase import volume_grants
from volumed.volume import Volume


def _grant(kms, h, host):
    return kms.create_grant(KeyId=h.key_arn, GranteePrincipal=host_principal(h.key_arn, host),
                            Operations=["Decrypt"], Name=grant_name(h.uuid, host),
                            Constraints={"EncryptionContextSubset": h.context})["GrantId"]


@pytest.mark.parametrize("cipher", ["xts", "gcm"])
def test_delete_erases_the_key_copies_and_retires_grants(cipher, kms, make_volume, cmk, tmp_path):
    vol = make_volume(cipher, key_id=cmk)
    write(kms, vol, [(0, pattern(6, 100_000))])
    h = Volume.read_header(vol)
    mine = [_grant(kms, h, socket.gethostname()), _grant(kms, h, "other-host")]
    other_vol = make_volume(cipher, key_id=cmk)
    keep = _grant(kms, Volume.read_header(other_vol), socket.gethostname())
    link = str(tmp_path / "hardlink-to-the-same-file")
    os.link(vol, link)
    r = delete_volume(vol, kms=kms)
    assert r["grants_retired"] == 2 and not os.path.exists(vol)
    ids = {g["GrantId"] for g in kms.list_grants(KeyId=cmk)["Grants"]}
    assert not ids & set(mine) and keep in ids
    raw = open(link, "rb").read()
    for form in (h.wrapped_key, base64.b64encode(h.wrapped_key), h.wrapped_key.hex().encode()):
        assert form not in raw
    assert not any(raw[:h.data_offset])
    with pytest.raises(FormatError):
        Volume.open(link, kms=kms)  # the key service is intact, the file is not decryptable
    assert volume_grants(kms, cmk, h.uuid) == []
    assert contents(kms, other_vol)[:1] == b"\0"  # other volumes under the key are untouched


def test_delete_refuses_a_mounted_volume(kms, make_volume):
    vol = make_volume("xts")
    write(kms, vol, [(0, b"keep")])
    before = open(vol, "rb").read()
    with Volume.open(vol, kms=kms):  # what the mount daemon holds
        with pytest.raises(StateError, match="mounted"):
            delete_volume(vol, kms=kms)
    assert open(vol, "rb").read() == before
    assert contents(kms, vol)[:4] == b"keep"


def test_delete_of_a_volume_whose_key_is_gone(kms, make_volume, cmk):
    vol = make_volume("gcm", key_id=cmk)
    kms.schedule_key_deletion(KeyId=cmk, PendingWindowInDays=7)
    r = delete_volume(vol, kms=kms)
    assert r["grants_retired"] == 0 and not os.path.exists(vol)
