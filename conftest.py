"""Test-wide JAX settings: strict promotion, eight simulated CPU devices.

This file sits at the repository root so that the doctests inside
``gradchain/`` run under the same settings as ``tests/``.
"""

import jax

# Before any computation: later updates of the device count are refused.
jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
