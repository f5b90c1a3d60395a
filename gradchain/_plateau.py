"""Reduce on plateau: scale the updates down when the loss stops improving.

The scale lives in the state (``state.scale``), so it is read like any other
field, survives checkpoints and works under ``jit`` and ``lax.scan``; the
numeric settings (``factor``, ``rtol``, ``atol``, ``min_scale``) are
hyperparameters in the state, readable and settable by name.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradchain import _check, _tree
from gradchain._base import GradientTransformationExtraArgs, Params, Updates
from gradchain._hyperparams import Hyperparams, HyperparamSpec, values


class ReduceOnPlateauState(NamedTuple):
    """State of :func:`reduce_on_plateau`."""

    scale: jax.Array  # float32[], the factor applied to the updates
    best_value: jax.Array  # float32[], the best (averaged) loss so far; inf at first
    plateau_count: jax.Array  # int32[], checks without improvement since the last one
    cooldown_count: jax.Array  # int32[], checks left before plateaus count again
    accumulated: jax.Array  # int32[], losses summed into avg_value in this window
    avg_value: jax.Array  # float32[], the mean of those losses
    hparams: Hyperparams  # factor, rtol, atol, min_scale


def reduce_on_plateau(
    factor: float = 0.1,
    patience: int = 10,
    rtol: float = 1e-4,
    atol: float = 0.0,
    cooldown: int = 0,
    accumulation_size: int = 1,
    min_scale: float = 0.0,
) -> GradientTransformationExtraArgs:
    r"""Multiplies the updates by a scale that shrinks by ``factor`` when the loss plateaus.

    Every ``accumulation_size`` updates, the mean :math:`v` of the losses
    passed as ``value=`` is checked: it improves if
    :math:`v < b - \mathrm{rtol}\,|b| - \mathrm{atol}` with :math:`b` the best
    mean so far (which it then becomes). After ``patience`` checks without
    improvement the scale becomes :math:`\max(\mathrm{scale} \cdot
    \mathrm{factor}, \mathrm{min\_scale})` and the next ``cooldown`` checks do
    not count. The updates are multiplied by the scale after this update's
    check. Place it last in a chain, after the learning rate.

    Optax 0.2.8's names, defaults and numbers, except for one defect: Optax
    tests :math:`v < (1 - \mathrm{rtol})\, b - \mathrm{atol}`, which for a
    negative loss (a log-likelihood, an ELBO) lies *above* :math:`b`, so a
    worse loss counts as an improvement and the scale never drops. Here the
    margin is relative to :math:`|b|`; for positive losses the two agree.

    The integer settings (``patience``, ``cooldown``, ``accumulation_size``)
    shape the control flow and stay Python integers; the others are
    hyperparameters in the state.

    Args:
      factor: the scale's multiplier at a plateau, in (0, 1].
      patience: checks without improvement before the scale drops, >= 0.
      rtol: relative improvement needed, in [0, 1).
      atol: absolute improvement needed, >= 0.
      cooldown: checks ignored after a drop, >= 0.
      accumulation_size: losses averaged into one check, >= 1 (use more when
        ``value`` is a noisy minibatch loss).
      min_scale: the scale never drops below this, >= 0.

    Returns:
      A GradientTransformationExtraArgs whose state is a ReduceOnPlateauState;
      its ``update`` takes ``value=`` (the loss).

    Raises:
      ValueError: for a number out of range; at update, if ``value`` is
        missing or not a real scalar.
      TypeError: if an integer setting is not an integer.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.reduce_on_plateau(factor=0.5, patience=1)
      >>> state = tx.init(jnp.zeros(1))
      >>> for loss in [3.0, 2.0, 2.0]:
      ...     u, state = tx.update(jnp.ones(1), state, value=jnp.float32(loss))
      >>> float(state.scale), float(u[0])
      (0.5, 0.5)

    References:
      PyTorch's ``torch.optim.lr_scheduler.ReduceLROnPlateau``; Optax's
      ``optax.contrib.reduce_on_plateau``.
    """
    fn = "reduce_on_plateau"
    _check.in_range(fn, "factor", factor, 0.0, 1.0, lo_open=True)
    _check.non_negative_int(fn, "patience", patience)
    _check.decay_rate(fn, "rtol", rtol)
    _check.non_negative(fn, "atol", atol)
    _check.non_negative_int(fn, "cooldown", cooldown)
    _check.positive_int(fn, "accumulation_size", accumulation_size)
    _check.non_negative(fn, "min_scale", min_scale)
    spec = HyperparamSpec(fn, dict(factor=factor, rtol=rtol, atol=atol, min_scale=min_scale))

    def init_fn(params: Params) -> ReduceOnPlateauState:
        del params
        f32, i32 = jnp.float32, jnp.int32
        return ReduceOnPlateauState(
            scale=jnp.ones([], f32),
            best_value=jnp.full([], jnp.inf, f32),
            plateau_count=jnp.zeros([], i32),
            cooldown_count=jnp.zeros([], i32),
            accumulated=jnp.zeros([], i32),
            avg_value=jnp.zeros([], f32),
            hparams=spec.init(),
        )

    def update_fn(
        updates: Updates,
        state: ReduceOnPlateauState,
        params: Params | None = None,
        **extra_args: Any,
    ) -> tuple[Updates, ReduceOnPlateauState]:
        del params
        _tree.check_state(fn, state, ReduceOnPlateauState)
        _tree.check_no_float0(fn, "updates", updates)
        loss = _tree.objective_value(fn, extra_args.get("value"))
        hp = values(state.hparams)
        n = _tree.safe_increment(state.accumulated)
        avg = state.avg_value + (loss.astype(jnp.float32) - state.avg_value) / n.astype(jnp.float32)
        check = n >= accumulation_size
        best = state.best_value
        margin = hp["rtol"] * jnp.abs(best) + hp["atol"]
        threshold = jnp.where(jnp.isfinite(best), best - margin, best)  # inf - inf is NaN
        improved = avg < threshold
        in_cooldown = state.cooldown_count > 0
        calm = improved | in_cooldown
        plateau = jnp.where(calm, 0, _tree.safe_increment(state.plateau_count))
        drop = ~calm & (plateau >= patience)
        scale = jnp.where(
            drop, jnp.maximum(state.scale * hp["factor"], hp["min_scale"]), state.scale
        )
        cool = jnp.where(drop, cooldown, jnp.maximum(state.cooldown_count - 1, 0))
        new = ReduceOnPlateauState(
            scale=jnp.where(check, scale, state.scale).astype(jnp.float32),
            best_value=jnp.where(check & improved, avg, best).astype(jnp.float32),
            plateau_count=jnp.where(check, jnp.where(drop, 0, plateau), state.plateau_count).astype(
                jnp.int32
            ),
            cooldown_count=jnp.where(check, cool, state.cooldown_count).astype(jnp.int32),
            accumulated=jnp.where(check, 0, n).astype(jnp.int32),
            avg_value=jnp.where(check, 0.0, avg).astype(jnp.float32),
            hparams=state.hparams,
        )

        def apply(u: jax.Array) -> jax.Array:
            (uc, s) = _tree.upcast(u, new.scale)
            return (uc * s).astype(u.dtype)

        return jax.tree.map(apply, updates), new

    return GradientTransformationExtraArgs(init_fn, update_fn)
