"""Regularization added to the updates: decoupled weight decay (L2) and an L1 term."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradchain import _check, _tree
from gradchain._base import (
    AnyTransformation,
    GradientTransformation,
    Params,
    ScalarOrSchedule,
    Updates,
)
from gradchain._hyperparams import Hyperparams, hyperparam_transform
from gradchain._wrappers import MaskOrFn, masked


class AddDecayedWeightsState(NamedTuple):
    """State of :func:`add_decayed_weights` and :func:`add_l1_penalty`."""

    step: jax.Array  # int32[], updates seen so far (drives schedules)
    hparams: Hyperparams


def _add_param_term(
    fn: str,
    name: str,
    value: ScalarOrSchedule,
    term: Callable[[jax.Array], jax.Array],
) -> GradientTransformation:
    """A transform adding ``hparams[name] * term(param)`` to each update."""

    def apply(updates: Updates, params: Params | None, hp: dict[str, jax.Array]) -> Updates:
        _tree.require_params(fn, params)
        _tree.check_matches(fn, updates, "params", params)
        coeff = hp[name]

        def leaf(u: jax.Array, p: jax.Array) -> jax.Array:
            dt = _tree.compute_dtype(u.dtype, p.dtype, coeff.dtype)
            return (u.astype(dt) + coeff.astype(dt) * term(p.astype(dt))).astype(u.dtype)

        return jax.tree.map(leaf, updates, params)

    return hyperparam_transform(fn, AddDecayedWeightsState, {name: value}, apply)


def _maybe_masked(tx: GradientTransformation, mask: MaskOrFn | None) -> AnyTransformation:
    return tx if mask is None else masked(tx, mask)


def add_decayed_weights(
    weight_decay: ScalarOrSchedule = 0.0, mask: MaskOrFn | None = None
) -> AnyTransformation:
    r"""Adds ``weight_decay * params`` to the updates: decoupled L2 weight decay.

    Placed before the learning-rate scaling, as in AdamW, it shrinks every
    weight by ``learning_rate * weight_decay`` per step, separately from the
    adaptive scaling (Loshchilov and Hutter, 2019). For plain SGD it equals an
    L2 loss term :math:`\frac{\lambda}{2}\|w\|^2`.

    Args:
      weight_decay: :math:`\lambda` >= 0, or a schedule.
      mask: where to decay: a tree of bools like the parameters (or a prefix),
        or a function of the parameters returning one. ``None`` decays all.

    Returns:
      A GradientTransformation whose state is a AddDecayedWeightsState (inside a
      MaskedState when ``mask`` is given).

    Raises:
      ValueError: if ``weight_decay`` is a negative, NaN or infinite number;
        at update, if ``params`` are missing or do not match the updates.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> params = {"w": jnp.array([2.0]), "b": jnp.array([2.0])}
      >>> tx = gc.add_decayed_weights(0.5, mask={"w": True, "b": False})
      >>> u, _ = tx.update({"w": jnp.zeros(1), "b": jnp.zeros(1)}, tx.init(params), params)
      >>> float(u["w"][0]), float(u["b"][0])
      (1.0, 0.0)

    References:
      Loshchilov and Hutter, Decoupled Weight Decay Regularization, ICLR 2019.
    """
    fn = "add_decayed_weights"
    _check.non_negative(fn, "weight_decay", weight_decay, schedule_ok=True)
    tx = _add_param_term(fn, "weight_decay", weight_decay, lambda p: p)
    return _maybe_masked(tx, mask)


def add_l1_penalty(l1: ScalarOrSchedule = 0.0, mask: MaskOrFn | None = None) -> AnyTransformation:
    r"""Adds ``l1 * sign(params)``: the (sub)gradient of the L1 term :math:`\lambda\|w\|_1`.

    Pushes every weight towards zero by a constant amount per step, which
    makes small weights exactly zero (sparsity), unlike L2's proportional
    shrinkage. ``sign(0) = 0``, so a weight at zero stays there.

    Args:
      l1: :math:`\lambda` >= 0, or a schedule.
      mask: where to apply it, as in :func:`add_decayed_weights`.

    Returns:
      A GradientTransformation whose state is a AddDecayedWeightsState (inside a
      MaskedState when ``mask`` is given).

    Raises:
      ValueError: if ``l1`` is a negative, NaN or infinite number; at update,
        if ``params`` are missing or do not match the updates.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> params = jnp.array([-3.0, 0.0, 2.0])
      >>> tx = gc.add_l1_penalty(0.1)
      >>> u, _ = tx.update(jnp.zeros(3), tx.init(params), params)
      >>> [round(float(x), 2) for x in u]
      [-0.1, 0.0, 0.1]

    References:
      Tibshirani, Regression Shrinkage and Selection via the Lasso, 1996.
    """
    fn = "add_l1_penalty"
    _check.non_negative(fn, "l1", l1, schedule_ok=True)
    return _maybe_masked(_add_param_term(fn, "l1", l1, jnp.sign), mask)
