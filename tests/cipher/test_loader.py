"""volumed.cipher's choice of implementation: native when it is built and passes its self-test,
the reference with a warning otherwise, an error under VOLUMED_REQUIRE_NATIVE=1."""

import subprocess
import sys

import pytest

from volumed import cipher
from volumed.cipher import reference


def run_python(code: str, **env):
    import os

    full = {k: v for k, v in os.environ.items() if not k.startswith("VOLUMED_")}
    full.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full,
                          timeout=60)


HIDE_NATIVE = "import sys; sys.modules['volumed._native'] = None\n"


def test_missing_native_falls_back_with_a_warning():
    out = run_python(HIDE_NATIVE + "import volumed.cipher as c; print(c.implementation())")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "reference"
    assert "native sector cipher unavailable" in out.stderr


def test_missing_native_is_an_error_when_required():
    out = run_python(HIDE_NATIVE + "import volumed.cipher", VOLUMED_REQUIRE_NATIVE="1")
    assert out.returncode != 0
    assert "native sector cipher required but unavailable" in out.stderr


def test_reference_can_be_forced():
    out = run_python("import volumed.cipher as c; print(c.implementation(), c.XtsCipher.__module__)",
                     VOLUMED_CIPHER="reference")
    assert out.stdout.split() == ["reference", "volumed.cipher.reference"]


def test_reference_passes_the_startup_self_test():
    cipher._self_test(reference)


def test_failing_self_test_counts_as_broken(native, monkeypatch):
    monkeypatch.setattr(cipher, "_KAT_XTS_SHA256", "00" * 32)
    mod, err = cipher._load_native()
    assert mod is None and "self-test" in str(err)
    monkeypatch.setenv("VOLUMED_REQUIRE_NATIVE", "1")
    with pytest.raises(ImportError, match="self-test"):
        cipher._select()


def test_version_names_the_active_implementation(native):
    out = run_python("import volumed.cli as c, sys; sys.argv = ['volumed', '--version']; c.main()")
    assert f"native ({native.openssl_version()})" in out.stdout
