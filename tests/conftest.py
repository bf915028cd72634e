"""Suite-wide settings. Part-specific fixtures live in each tests/<part>/conftest.py."""

import os

from hypothesis import HealthCheck, settings

# A shared 2-core CI machine: no per-example deadlines (they measure the machine, not the code).
settings.register_profile("ci", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
