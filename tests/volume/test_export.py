"""volumed export --luks: a standalone LUKS2 image whose unwritten sectors decrypt to zeros, so an
ext4 file system written through volumed checks clean after decryption by dissect-fve."""

from __future__ import annotations

import subprocess

import pytest

from tests.volume.conftest import raw_key
from tests.volume.test_xts_format import _dissect_stream
from volumed.errors import UsageError
from volumed.volume import Volume
from volumed.volume.export import export_luks

SIZE = 8 << 20  # dissect-fve decrypts in pure Python (~3 MiB/s): keep the image small


@pytest.mark.timeout(120)
def test_exported_ext4_checks_clean(tmp_path, make_volume, kms):
    plain = tmp_path / "plain.ext4"
    plain.write_bytes(b"")
    subprocess.run(["truncate", "-s", str(SIZE), str(plain)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", str(plain)],
                   check=True, capture_output=True)
    path = make_volume("xts", size=SIZE)
    with Volume.open(path, kms=kms) as vol, open(plain, "rb") as f:
        for off in range(0, SIZE, 1 << 20):
            vol.write(off, f.read(1 << 20))  # zero chunks become holes
    out = tmp_path / "export.luks"
    with Volume.open(path, kms=kms) as vol:
        export_luks(vol, out)
        with pytest.raises(UsageError, match="already exists"):
            export_luks(vol, out)
    subprocess.run(["cryptsetup", "luksDump", str(out)], check=True, capture_output=True)
    key = bytes(raw_key(kms, path))
    fh, stream = _dissect_stream(str(out), key)
    decrypted = tmp_path / "decrypted.ext4"
    with fh, open(decrypted, "wb") as w:
        stream.seek(0)
        for _ in range(SIZE // (1 << 20)):
            w.write(stream.read(1 << 20))
    assert decrypted.read_bytes() == plain.read_bytes()
    r = subprocess.run(["e2fsck", "-fn", str(decrypted)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    # The source volume itself is still sparse: the export filled the holes, not the volume.
    import os

    assert os.stat(path).st_blocks * 512 < os.stat(out).st_blocks * 512
