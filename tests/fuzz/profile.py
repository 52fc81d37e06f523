"""The fuzz suite's hypothesis profile.

It keeps CI to a couple of minutes; ``CORRAL_FUZZ_EXAMPLES`` raises the number
of examples per RPC for a longer run by hand.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "fuzz",
    max_examples=int(os.environ.get("CORRAL_FUZZ_EXAMPLES", "150")),
    deadline=None,
    derandomize=False,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
FUZZ = settings.get_profile("fuzz")
