import subprocess
import sys


def test_version_names_cipher_implementation():
    out = subprocess.run([sys.executable, "-m", "volumed", "--version"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "sector cipher:" in out.stdout


def test_no_command_prints_help_and_fails():
    out = subprocess.run([sys.executable, "-m", "volumed"], capture_output=True, text=True)
    assert out.returncode == 2
