"""Scaling by a number: scale, scale_by_learning_rate, scale_by_schedule.

Each keeps its factor in its state (see :func:`get_hyperparams`), so the factor
can be read and changed between steps.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

from gradchain import _check, _tree
from gradchain._base import GradientTransformation, Params, ScalarOrSchedule, Schedule, Updates
from gradchain._hyperparams import Hyperparams, hyperparam_transform


class ScaleState(NamedTuple):
    """State of :func:`scale` and :func:`scale_by_learning_rate`."""

    step: jax.Array  # int32[], updates seen so far (drives schedules)
    hparams: Hyperparams


def scale_tree(updates: Updates, factor: jax.Array) -> Updates:
    """Multiplies every leaf by a scalar in the compute dtype, keeping each leaf's dtype."""

    def leaf(u: jax.Array) -> jax.Array:
        dt = _tree.compute_dtype(u.dtype, factor.dtype)
        return (u.astype(dt) * factor.astype(dt)).astype(u.dtype)

    return jax.tree.map(leaf, updates)


class ScaleByScheduleState(NamedTuple):
    """State of :func:`scale_by_schedule`."""

    step: jax.Array  # int32[], updates seen so far
    hparams: Hyperparams  # step_size, following the schedule


def _scaling(
    fn: str,
    name: str,
    value: ScalarOrSchedule,
    sign: float,
    state_type: type[Any] = ScaleState,
) -> GradientTransformation:
    """A transform multiplying updates by ``sign * hparams[name]``."""

    def apply(updates: Updates, params: Params | None, hp: dict[str, jax.Array]) -> Updates:
        del params
        return scale_tree(updates, -hp[name] if sign < 0 else hp[name])

    return hyperparam_transform(fn, state_type, {name: value}, apply)


def scale(step_size: ScalarOrSchedule) -> GradientTransformation:
    """Multiplies updates by a fixed factor (any sign), or by a schedule's value.

    Args:
      step_size: a finite number, a scalar array or a schedule.

    Returns:
      A GradientTransformation whose state is a ScaleState.

    Raises:
      TypeError: if ``step_size`` is not a number, a scalar array or a schedule.
      ValueError: if it is NaN or infinite.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.scale(-0.1)
      >>> u, _ = tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))
      >>> round(float(u[0]), 4)
      -0.2
    """
    _check.finite("scale", "step_size", step_size, schedule_ok=True)
    return _scaling("scale", "step_size", step_size, 1.0)


def scale_by_learning_rate(
    learning_rate: ScalarOrSchedule, *, flip_sign: bool = True
) -> GradientTransformation:
    """Multiplies updates by ``-learning_rate`` (or ``+`` when ``flip_sign=False``).

    Gradients point uphill; the minus sign turns them into descent steps, so
    ``chain(..., scale_by_learning_rate(lr))`` gives updates to add to the
    parameters with :func:`apply_updates`.

    Args:
      learning_rate: a number >= 0, a scalar array, or a schedule.
      flip_sign: whether to negate the updates.

    Returns:
      A GradientTransformation whose state is a ScaleState.

    Raises:
      ValueError: if ``learning_rate`` is a negative, NaN or infinite number.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.scale_by_learning_rate(gc.linear_schedule(1.0, 0.0, 4))
      >>> state = tx.init(jnp.zeros(1))
      >>> steps = []
      >>> for _ in range(3):
      ...     u, state = tx.update(jnp.ones(1), state)
      ...     steps.append(round(float(u[0]), 2))
      >>> steps
      [-1.0, -0.75, -0.5]
    """
    fn = "scale_by_learning_rate"
    _check.non_negative(fn, "learning_rate", learning_rate, schedule_ok=True)
    return _scaling(fn, "learning_rate", learning_rate, -1.0 if flip_sign else 1.0)


def scale_by_schedule(step_size_fn: Schedule) -> GradientTransformation:
    """Multiplies updates by ``step_size_fn(step)``, the step counting updates from 0.

    Args:
      step_size_fn: a schedule: a function from an int32 step to a scalar.

    Returns:
      A GradientTransformation whose state is a ScaleByScheduleState.

    Raises:
      TypeError: if ``step_size_fn`` is not callable.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.scale_by_schedule(lambda step: 0.5 ** step)
      >>> state = tx.init(jnp.zeros(1))
      >>> u, state = tx.update(jnp.ones(1), state)
      >>> u, state = tx.update(jnp.ones(1), state)
      >>> float(u[0])
      0.5
    """
    if not _check.is_schedule(step_size_fn):
        raise TypeError(
            f"scale_by_schedule: `step_size_fn` must be a function of the step; got "
            f"{type(step_size_fn).__name__} {step_size_fn!r:.60}. For a fixed factor use scale()."
        )
    return _scaling("scale_by_schedule", "step_size", step_size_fn, 1.0, ScaleByScheduleState)
