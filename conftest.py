"""Test-wide JAX settings: strict promotion, eight simulated CPU devices.

This file sits at the repository root so that the doctests inside
``gradchain/`` run under the same settings as ``tests/``.
"""

import os

# One BLAS thread per process, before NumPy or jaxlib load OpenBLAS: pytest -n 2 already
# runs a process per core, and two threads each on a busy 2-core machine make LAPACK calls
# (eigh, qr: SOAP, Shampoo, GaLore) 100x slower.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

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
    parser.addoption(
        "--fuzz-examples",
        type=int,
        default=None,
        metavar="N",
        help="tests/test_fuzz.py: fuzz every registered case with N hypothesis examples per "
        "property (the long profile; default: the suite's profile, on a subset of cases)",
    )


def pytest_configure(config):
    from hypothesis import HealthCheck, settings

    common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
    # The default run is reproducible (derandomized) and small; --slow explores.
    settings.register_profile("fast", max_examples=4, derandomize=True, **common)
    settings.register_profile("slow", max_examples=40, **common)
    settings.load_profile("slow" if config.getoption("--slow") else "fast")


def pytest_report_header(config):
    if not config.getoption("--slow"):
        return "cases marked slow are deselected (long sweeps over the registry): run with --slow"
    return None


def pytest_collection_modifyitems(config, items):
    # Deselected rather than skipped: a skip line per case would bury the real skips, and
    # the header above says once why they do not run.
    if config.getoption("--slow") or config.getoption("--fuzz-examples"):
        return
    slow = [item for item in items if "slow" in item.keywords]
    if slow:
        items[:] = [item for item in items if "slow" not in item.keywords]
        config.hook.pytest_deselected(items=slow)
