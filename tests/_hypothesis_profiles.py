"""Hypothesis profiles for the whole suite, chosen by ``HYPOTHESIS_PROFILE``.

* ``fast`` (default): 50 examples per test, for the edit-test loop.
* ``ci``: 500 examples, derandomized so that a CI failure reproduces.
* ``thorough``: 5000 examples, for a deliberate hunt.

Importing this module registers the profiles and loads the selected one; the
property-test modules import it (so does ``tests/conftest.py`` if it wants the
profile applied suite-wide). Registering twice is harmless.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("fast", max_examples=50, deadline=None)
settings.register_profile(
    "ci",
    max_examples=500,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("thorough", max_examples=5000, deadline=None, print_blob=True)

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "fast")
settings.load_profile(PROFILE)
