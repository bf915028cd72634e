"""Fixtures for the sector cipher tests: every test runs against both implementations.

``impl`` is the module providing XtsCipher/GcmCipher/kat_*: the reference (volumed.cipher.reference)
or the native extension (volumed._native). The native one is skipped when it is not built, except
under VOLUMED_REQUIRE_NATIVE=1 (scripts/test sets it), where its absence fails the test.
"""

import os
import random

import pytest

from volumed import cipher
from volumed.cipher import reference


def native_module():
    """volumed._native if built and past its self-test; else fail (native required) or skip."""
    mod, err = cipher._load_native()
    if mod is None:
        if os.environ.get("VOLUMED_REQUIRE_NATIVE") == "1":
            pytest.fail(f"native sector cipher required but unavailable: {err}")
        pytest.skip(f"native sector cipher unavailable: {err}")
    return mod


@pytest.fixture(params=["reference", "native"])
def impl(request):
    return reference if request.param == "reference" else native_module()


@pytest.fixture
def native():
    return native_module()


@pytest.fixture
def rng(request):
    """A random.Random seeded from the test id, so failures reproduce."""
    return random.Random(request.node.nodeid)
