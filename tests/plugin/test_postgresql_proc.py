"""pytest-postgresql's own ``postgresql_proc`` factory with its data directory on an encrypted
file system (the composition example of docs/TESTING.md).

``postgresql_proc`` makes a session-scoped server, so the encrypted file system under it is
session-scoped too (built from the plugin's EncryptedVolume and EncryptedFS). The factory picks
its data directory under pytest's temporary directory; the pg_ctl it is given
(``pg_ctl_as_postgres``, beside this file) runs pg_ctl as ``postgres`` and turns that directory
into a symlink onto the encrypted file system before initdb. The test shows the cluster is there:
the data directory resolves onto the volume, and a checkpoint's writes reach the volume's daemon.
"""

import glob
import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("pytest_postgresql")
pytest.importorskip("psycopg")

from pytest_postgresql import factories  # noqa: E402

from volumed.pytest_plugin import EncryptedFS, EncryptedVolume, VolumedKMS, skip_reason  # noqa: E402

pytestmark = [pytest.mark.timeout(240)]

if not glob.glob("/usr/lib/postgresql/*/bin/pg_ctl") or shutil.which("runuser") is None:
    pytest.skip("needs the Debian postgresql package and runuser", allow_module_level=True)

PG_CTL = str(Path(__file__).with_name("pg_ctl_as_postgres"))


@pytest.fixture(scope="session")
def encrypted_fs_for_postgresql(tmp_path_factory):
    """A session-scoped encrypted_fs whose ``path`` belongs to postgres (the server runs as
    postgres; pg_ctl_as_postgres puts its data directory and log there)."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    kms = VolumedKMS(tmp_path_factory.mktemp("pg-kms") / "keystore")
    vol = EncryptedVolume(tmp_path_factory.mktemp("pg-volume"), kms, size="256M")
    fs = None
    try:
        vol.mount()
        fs = EncryptedFS(vol)
        shutil.chown(fs.path, "postgres")
        os.environ["VOLUMED_PG_DATA_ON"] = str(fs.path)
        yield fs
    finally:
        os.environ.pop("VOLUMED_PG_DATA_ON", None)
        if fs is not None:
            fs.teardown()
        vol.teardown()


postgresql_on_volume_proc = factories.postgresql_proc(
    executable=PG_CTL, host="127.0.0.1", user="postgres", dbname="orders",
    postgres_options="-c fsync=on -c synchronous_commit=on")  # its start command passes -F
postgresql_on_volume = factories.postgresql("postgresql_on_volume_proc")


def test_postgresql_proc_keeps_its_cluster_on_the_encrypted_volume(
        encrypted_fs_for_postgresql, postgresql_on_volume_proc, postgresql_on_volume):
    fs = encrypted_fs_for_postgresql
    datadir = os.path.realpath(postgresql_on_volume_proc.datadir)
    assert datadir.startswith(str(fs.path) + os.sep), datadir
    before = fs.volume.status()["bytes_written"]
    with postgresql_on_volume.cursor() as cur:
        cur.execute("CREATE TABLE orders (id int PRIMARY KEY, note text)")
        cur.execute("INSERT INTO orders SELECT g, repeat('x', 200) FROM generate_series(1, 5000) g")
    postgresql_on_volume.commit()
    with postgresql_on_volume.cursor() as cur:
        cur.execute("CHECKPOINT")
        cur.execute("SELECT count(*) FROM orders")
        assert cur.fetchone()[0] == 5000
    os.sync()  # ext4's and the loop device's writes reach the volume's daemon
    assert fs.volume.status()["bytes_written"] > before
