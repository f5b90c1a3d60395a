"""Test-wide JAX settings: strict promotion, eight simulated CPU devices.

This file sits at the repository root so that the doctests inside
``gradchain/`` run under the same settings as ``tests/``.
"""

import jax

# Before any computation: later updates of the device count are refused.
jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


def pytest_addoption(parser):
    parser.addoption(
        "--slow",
        action="store_true",
        help="also run the cases marked slow, and many more hypothesis examples per property",
    )


def pytest_configure(config):
    from hypothesis import HealthCheck, settings

    common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
    # The default run is reproducible (derandomized) and small; --slow explores.
    settings.register_profile("fast", max_examples=4, derandomize=True, **common)
    settings.register_profile("slow", max_examples=40, **common)
    settings.load_profile("slow" if config.getoption("--slow") else "fast")


def pytest_collection_modifyitems(config, items):
    import pytest

    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow case: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
