r"""Optimistic gradients: a step along the gradient plus a correction by its last change.

Extra-gradient methods evaluate the gradient twice per step; the optimistic
gradient method approximates the second evaluation by the gradient of the
previous step, so it needs one gradient and one stored copy of it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradchain import _check, _tree
from gradchain._base import GradientTransformation, Params, ScalarOrSchedule, Updates
from gradchain._hyperparams import Hyperparams, HyperparamSpec, values


class ScaleByOptimisticGradientState(NamedTuple):
    """State of :func:`scale_by_optimistic_gradient`."""

    step: jax.Array  # int32[], updates seen so far
    previous_gradient: Updates  # the last step's updates, in the parameters' dtypes
    hparams: Hyperparams  # alpha, beta


def scale_by_optimistic_gradient(
    alpha: ScalarOrSchedule = 1.0, beta: ScalarOrSchedule = 1.0
) -> GradientTransformation:
    r"""Generalized optimistic gradients (Mokhtari, Ozdaglar and Pattathil).

    .. math::
      u_t = (\alpha + \beta)\, g_t - \beta\, g_{t-1},

    with :math:`g_{-1} = g_0`, so the first update is :math:`\alpha g_0` (as
    Optax 0.2.8 does). :math:`\alpha = \beta = 1` is optimistic gradient
    descent, :math:`2 g_t - g_{t-1}`; :math:`\beta = 0` is plain gradient
    descent. The sign is kept: chain a :func:`scale_by_learning_rate` after it.

    Args:
      alpha: :math:`\alpha`, the weight of the current gradient, > 0; a
        number or a schedule (Optax's transform takes numbers only).
      beta: :math:`\beta`, the weight of the gradient's change (a negative
        momentum), >= 0; a number or a schedule.

    Returns:
      A GradientTransformation whose state is a ScaleByOptimisticGradientState.

    Raises:
      ValueError: if ``alpha`` or ``beta`` is a number out of range.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.scale_by_optimistic_gradient()
      >>> state = tx.init(jnp.zeros(2))
      >>> u, state = tx.update(jnp.array([1.0, 2.0]), state)  # first step: alpha * g
      >>> u, state = tx.update(jnp.array([3.0, 2.0]), state)  # then 2 g_t - g_{t-1}
      >>> [float(x) for x in u]
      [5.0, 2.0]

    References:
      Mokhtari, Ozdaglar and Pattathil, A Unified Analysis of Extra-gradient and
      Optimistic Gradient Methods for Saddle Point Problems: Proximal Point Approach,
      AISTATS 2020 (arXiv:1901.08511, 2019), eq. (7) and section 5.
    """
    fn = "scale_by_optimistic_gradient"
    _check.positive(fn, "alpha", alpha, schedule_ok=True)
    _check.non_negative(fn, "beta", beta, schedule_ok=True)
    spec = HyperparamSpec(fn, dict(alpha=alpha, beta=beta))

    def init_fn(params: Params) -> ScaleByOptimisticGradientState:
        return ScaleByOptimisticGradientState(
            jnp.zeros([], jnp.int32), _tree.zeros_like(params), spec.init()
        )

    def update_fn(
        updates: Updates, state: ScaleByOptimisticGradientState, params: Params | None = None
    ) -> tuple[Updates, ScaleByOptimisticGradientState]:
        del params  # the update depends on the gradients only
        _tree.check_state(fn, state, ScaleByOptimisticGradientState)
        _tree.check_matches(fn, updates, "state.previous_gradient", state.previous_gradient)
        hp = values(state.hparams)
        first = state.step == 0

        def leaf(g: jax.Array, prev: jax.Array) -> tuple[jax.Array, jax.Array]:
            gc, pc, a, b = _tree.upcast(g, prev, hp["alpha"], hp["beta"])
            pc = jnp.where(first, gc, pc)
            out = (a + b) * gc - b * pc
            return out.astype(g.dtype), g.astype(prev.dtype)

        new_updates, previous = _tree.map_leaves(leaf, 2, updates, state.previous_gradient)
        step = _tree.safe_increment(state.step)
        new_state = ScaleByOptimisticGradientState(
            step, previous, spec.advance(state.hparams, step)
        )
        return new_updates, new_state

    return GradientTransformation(init_fn, update_fn)
