"""The plugin as an installed user meets it: registered marker, a clear skip reason without root,
and `volumed fault` on something that is not a mount."""

import subprocess
import sys

from volumed import pytest_plugin


def test_marker_is_registered_through_the_entry_point(tmp_path):
    p = subprocess.run([sys.executable, "-m", "pytest", "--markers", "-p", "no:cacheprovider"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert "@pytest.mark.volumed(cipher=" in p.stdout


def test_skip_reason_names_what_is_missing(monkeypatch):
    monkeypatch.setattr(pytest_plugin.os, "geteuid", lambda: 1000)
    assert "need root" in pytest_plugin.skip_reason()
    monkeypatch.setattr(pytest_plugin.os, "geteuid", lambda: 0)
    monkeypatch.setattr(pytest_plugin.os.path, "exists", lambda p: p != "/dev/fuse")
    assert "/dev/fuse" in pytest_plugin.skip_reason()


def test_fault_on_a_directory_that_is_not_a_mount_is_one_line(tmp_path):
    p = subprocess.run([sys.executable, "-m", "volumed", "fault", "power-cut", str(tmp_path)],
                       capture_output=True, text=True, timeout=60,
                       env={"VOLUMED_RUN_DIR": str(tmp_path / "run"), "PATH": "/usr/bin:/bin"})
    assert p.returncode != 0
    assert p.stderr.strip().splitlines() == [p.stderr.strip()] and "not a volumed mount" in p.stderr
