"""The fuzz tests' budget: small, fixed and reproducible (the bench explores further)."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile(
    "unit",
    max_examples=150,
    deadline=None,  # a busy machine must not fail a test: time is measured in bench/
    derandomize=True,  # the same examples on every run; bench/fuzz.py draws new ones
    database=None,  # nothing written: found failures are kept as @example seeds
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("unit")
