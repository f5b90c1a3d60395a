r"""Rectified Adam (RAdam): momentum SGD until Adam's variance estimate is tractable.

Apart from its rectifier, RAdam is :func:`scale_by_adam`'s arithmetic (at least
float32, moments in their own dtype, updates in the gradients'). The rectifier
needs :math:`\rho_t`, which the paper's formula gets by cancellation; this
module computes it without (see ``_radam_rectifier``).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradchain import _check, _tree
from gradchain._base import GradientTransformation, Params, ScalarOrSchedule, Updates
from gradchain._hyperparams import Hyperparams, HyperparamSpec, values


class ScaleByRadamState(NamedTuple):
    """State of :func:`scale_by_radam`."""

    step: jax.Array  # int32[], updates seen so far
    mu: Updates  # EMA of the updates
    nu: Updates  # EMA of their squares
    hparams: Hyperparams


def _horner(x: jax.Array, coefficients: tuple[float, ...]) -> jax.Array:
    out = jnp.zeros_like(x)
    for c in reversed(coefficients):
        out = out * x + c
    return out


# expm1(y) - y = y^2 (1/2! + y/3! + ... + y^10/12!), for 0 <= y < 1 (truncation < 1e-9 relative).
_EXPM1_MINUS_Y = tuple(1 / math.factorial(k) for k in range(2, 13))
# -log1p(-c) - c = c^2 (1/2 + c/3 + ... + c^15/17), for 0 <= c < 0.3 (truncation < 1e-9).
_NEG_LOG1P_MINUS_C = tuple(1 / k for k in range(2, 18))


def _radam_rectifier(b2: jax.Array, one_minus_b2: jax.Array, step: jax.Array) -> tuple[Any, Any]:
    r"""RAdam's :math:`\rho_t` and rectification :math:`r_t`, scalars in float32.

    :math:`\rho_t = \rho_\infty - 2t\beta^t / (1-\beta^t)` subtracts two
    numbers close to :math:`\rho_\infty = 2/(1-\beta) - 1` (about 2000 for
    :math:`\beta = 0.999`) to get one close to :math:`t`. Written so in float32,
    as Optax 0.2.8 does, :math:`\rho_t` is off by up to 0.04 in the first steps
    (measured; :math:`\rho_1` comes out 0.974, not 1), and :math:`r_t`, which
    multiplies by :math:`\rho_t - 4`, by up to 0.6% (measured, at :math:`t = 7`).
    Computed here, :math:`\rho_t` is within 5e-7 of float64 for every
    :math:`\beta \in [0, 1)` and step tested (tests/test_adaptive.py). With :math:`c = 1-\beta`,
    :math:`L = -\log(1-c)` and :math:`y = tL`, for :math:`y < 1` this uses the
    equal form

    .. math::
      \rho_t = \frac{2\,[(e^y - 1 - y) + t (L - c)]}{c\,(e^y - 1)} - 1,

    whose two bracketed terms are positive and taken from series, so nothing
    cancels; from :math:`y \ge 1` on, :math:`\rho_t \ge 0.4 \rho_\infty` and
    the direct form loses at most a bit or two.
    """
    t = step.astype(b2.dtype)
    c = one_minus_b2
    log_b2 = jnp.log1p(-c)  # -L
    y = -t * log_b2
    y_small = jnp.minimum(y, 1)
    c_small = jnp.minimum(c, 0.3)
    excess_exp = y_small * y_small * _horner(y_small, _EXPM1_MINUS_Y)
    excess_log = jnp.where(
        c < 0.3, c_small * c_small * _horner(c_small, _NEG_LOG1P_MINUS_C), -log_b2 - c
    )
    rho_early = 2 * (excess_exp + t * excess_log) / (c * jnp.expm1(y_small)) - 1
    rho_inf = 2 / c - 1
    rho_late = rho_inf - 2 * t * jnp.exp(-y) / -jnp.expm1(-y)
    rho = jnp.where(y < 1, rho_early, rho_late)
    ratio = (rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)
    return rho, jnp.sqrt(jnp.maximum(ratio, 0))  # ratio < 0 only where rho < 4: not used


def scale_by_radam(
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-8,
    eps_root: ScalarOrSchedule = 0.0,
    threshold: ScalarOrSchedule = 5.0,
    *,
    nesterov: bool = False,
) -> GradientTransformation:
    r"""Rectified Adam's scaling: momentum SGD until the second moment is trustworthy.

    .. math::
      \rho_\infty = \frac{2}{1-\beta_2} - 1, \quad
      \rho_t = \rho_\infty - \frac{2 t \beta_2^t}{1-\beta_2^t}, \quad
      r_t = \sqrt{\frac{(\rho_t-4)(\rho_t-2)\rho_\infty}{(\rho_\infty-4)(\rho_\infty-2)\rho_t}},

    and the update is :math:`r_t \hat m_t / (\sqrt{\hat v_t + \epsilon_{root}} +
    \epsilon)` where :math:`\rho_t \ge` ``threshold``, else :math:`\hat m_t`.
    The paper's threshold is 4 (:math:`\rho_t > 4`); Optax's and PyTorch's is 5.

    Args:
      b1: decay of the first moment, in [0, 1).
      b2: decay of the second moment, in [0, 1).
      eps: added to the denominator outside the root, >= 0.
      eps_root: added inside the root, >= 0.
      threshold: the :math:`\rho_t` from which the adaptive step is used, finite.
      nesterov: use the look-ahead first moment of :func:`scale_by_adam`.

    Returns:
      A GradientTransformation whose state is a ScaleByRadamState.

    Raises:
      ValueError: if a number is out of range.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.scale_by_radam()
      >>> u, _ = tx.update(jnp.array([0.5, -2.0]), tx.init(jnp.zeros(2)))
      >>> [round(float(x), 4) for x in u]  # rho_1 = 1 < 5: the debiased momentum, g
      [0.5, -2.0]

    References:
      Liu et al., On the Variance of the Adaptive Learning Rate and Beyond,
      ICLR 2020, Algorithm 2.
    """
    fn = "scale_by_radam"
    _check.decay_rate(fn, "b1", b1, schedule_ok=True)
    _check.decay_rate(fn, "b2", b2, schedule_ok=True)
    _check.non_negative(fn, "eps", eps, schedule_ok=True)
    _check.non_negative(fn, "eps_root", eps_root, schedule_ok=True)
    _check.finite(fn, "threshold", threshold, schedule_ok=True)
    hyperparams = dict(b1=b1, b2=b2, eps=eps, eps_root=eps_root, threshold=threshold)
    spec = HyperparamSpec(fn, hyperparams, rates=("b1", "b2"))

    def init_fn(params: Params) -> ScaleByRadamState:
        zeros = _tree.zeros_like
        return ScaleByRadamState(
            jnp.zeros([], jnp.int32), zeros(params), zeros(params), spec.init()
        )

    def update_fn(
        updates: Updates, state: ScaleByRadamState, params: Params | None = None
    ) -> tuple[Updates, ScaleByRadamState]:
        del params
        _tree.check_state(fn, state, ScaleByRadamState)
        _tree.check_matches(fn, updates, "state.mu", state.mu)
        _tree.check_matches(fn, updates, "state.nu", state.nu)
        hp = values(state.hparams)
        comp = state.hparams.complement
        step = _tree.safe_increment(state.step)
        rho, r = _radam_rectifier(hp["b2"], comp["b2"], step)
        rectify = rho >= hp["threshold"]
        corrections = (
            _tree.debias(hp["b1"], step),
            _tree.debias(hp["b2"], step),
            _tree.debias(hp["b1"], _tree.safe_increment(step)),
        )
        scalars = (hp["b1"], hp["b2"], comp["b1"], comp["b2"], hp["eps"], hp["eps_root"], r)

        def leaf(
            g: jax.Array, m: jax.Array, v: jax.Array
        ) -> tuple[jax.Array, jax.Array, jax.Array]:
            gc, mc, vc, b1_, b2_, omb1, omb2, eps_, eps_root_, r_, c1, c2, c1n = _tree.upcast(
                g, m, v, *scalars, *corrections
            )
            new_m = omb1 * gc + b1_ * mc
            new_v = omb2 * _tree.abs_sq(gc) + b2_ * vc
            if nesterov:
                m_hat = b1_ * (new_m / c1n) + omb1 * (gc / c1)
            else:
                m_hat = new_m / c1
            adaptive = r_ * m_hat / (jnp.sqrt(new_v / c2 + eps_root_) + eps_)
            out = jnp.where(rectify, adaptive, m_hat)
            return out.astype(g.dtype), new_m.astype(m.dtype), new_v.astype(v.dtype)

        updates, mu, nu = _tree.map_leaves(leaf, 3, updates, state.mu, state.nu)
        return updates, ScaleByRadamState(step, mu, nu, spec.advance(state.hparams, step))

    return GradientTransformation(init_fn, update_fn)
