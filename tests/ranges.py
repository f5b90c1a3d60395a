"""The valid ranges a hyperparameter error message states, and values outside each.

``tests/test_errors.py`` checks every numeric argument of every public factory
against one of these kinds; test modules of a family of transforms contribute
their rows as ``HYPERPARAMETERS`` and ``FACTORIES`` tables (see
``tests/test_errors.py``, section 5).
"""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
import numpy as np

RATE, NON_NEGATIVE, POSITIVE, FINITE = "in [0, 1)", "in [0, inf)", "in (0, inf)", "in (-inf, inf)"
UNIT = "in (0, 1]"  # a step towards a target, e.g. lookahead's slow_step_size
AT_LEAST_ONE = "in [1, inf)"  # a growth factor, e.g. scale_by_rprop's eta_plus
PROBABILITY = "in [0, 1]"  # a probability, e.g. scale_by_kron's preconditioner_update_probability
BAD_NUMBERS: dict[str, tuple[Any, ...]] = {
    RATE: (-0.1, 1.0, 1.5, math.nan, math.inf, np.float32(-0.5), jnp.asarray(1.0)),
    NON_NEGATIVE: (-1e-3, -math.inf, math.nan, math.inf, np.float64(-1.0), jnp.asarray(-1.0)),
    POSITIVE: (0.0, -1.0, math.nan, math.inf, jnp.asarray(0.0)),
    FINITE: (math.nan, math.inf, -math.inf, jnp.asarray(math.nan)),
    UNIT: (0.0, -0.5, 1.5, math.nan, math.inf, jnp.asarray(0.0)),
    AT_LEAST_ONE: (0.5, 0.0, -1.0, math.nan, math.inf, jnp.asarray(0.9)),
    PROBABILITY: (-0.1, 1.5, math.nan, math.inf, np.float32(-0.5), jnp.asarray(1.5)),
}
BAD_TYPES: tuple[Any, ...] = ("0.1", [0.1], True, 1j, jnp.ones(2), None)
VALID = {
    RATE: 0.5,
    NON_NEGATIVE: 0.1,
    POSITIVE: 1.0,
    FINITE: -0.5,
    UNIT: 0.5,
    AT_LEAST_ONE: 1.5,
    PROBABILITY: 0.5,
}
