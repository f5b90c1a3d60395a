"""Schedules: functions from an integer step to a scalar hyperparameter value.

Each factory checks its arguments at once and returns a pure ``jax.numpy``
function ``schedule(step) -> jax.Array``, a float scalar in the default float
dtype, that runs under ``jit``, ``vmap`` and ``lax.scan`` with ``step`` a Python
int, an int32 array or a tracer (an array of steps gives an array of values).
Hyperparameters given as traced arrays (inside ``jit`` or ``vmap``) are not checked.

Names, arguments and values follow Optax, with these differences: a bad argument
raises (Optax often logs and returns a constant schedule); interpolations are
written to keep float32 relative accuracy near zero, where Optax's ``1 - t/T``
and ``1 + cos`` cancel (the two differ there by under 1e-7 times the scale);
and the differences noted in the docstrings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from gradchain import _check
from gradchain._base import Schedule

Steps: TypeAlias = int | np.integer | jax.Array
"""A step count: a Python int, or an integer scalar array (traced ones pass unchecked)."""


def as_float(x: ArrayLike) -> jax.Array:
    """``x`` cast to the default float dtype (explicitly, for strict promotion)."""
    return jnp.asarray(x).astype(jnp.result_type(float))


def check_steps(fn: str, name: str, value: Any, *, positive: bool) -> Any:
    """Checks a step count; returns it as a Python int, or unchanged when traced."""
    if isinstance(value, np.ndarray | jax.Array) and jnp.issubdtype(value.dtype, jnp.integer):
        _check.number(fn, name, value)  # a scalar
        if _check.concrete_value(value) is None:  # traced
            return value
        value = int(value)
    (_check.positive_int if positive else _check.non_negative_int)(fn, name, value)
    return int(value)


def check_boundaries(
    fn: str, name: str, values: Sequence[Any], *, ordered: bool = True
) -> list[int]:
    """Checks that ``values`` are integer steps >= 0, in increasing order if ``ordered``."""
    for b in values:
        if isinstance(b, bool) or not isinstance(b, int | np.integer):
            raise TypeError(
                f"{fn}: `{name}` must hold integer steps; got {type(b).__name__} {b!r}."
            )
        if b < 0:
            raise ValueError(f"{fn}: `{name}` must hold steps >= 0; got {b!r}.")
    out = [int(b) for b in values]
    if ordered and out != sorted(out):
        raise ValueError(f"{fn}: `{name}` must be in increasing order; got {out!r}.")
    return out


def check_finite(fn: str, **values: Any) -> None:
    for name, value in values.items():
        _check.finite(fn, name, value)


def _flag(fn: str, name: str, value: Any) -> None:
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{fn}: `{name}` must be a bool; got {type(value).__name__} {value!r}.")


def transition_progress(step: ArrayLike, steps: Any, begin: Any = 0) -> tuple[jax.Array, jax.Array]:
    """The fractions (ahead, done) of a ``steps``-step transition starting at ``begin``.

    Each is a ratio of integers, so each keeps its relative accuracy near 0.
    """
    done = jnp.clip(jnp.asarray(step) - begin, 0, steps)
    denominator = as_float(jnp.maximum(steps, 1))  # no NaN for a traced `steps` of 0
    return as_float(steps - done) / denominator, as_float(done) / denominator


def interpolate(start: ArrayLike, stop: ArrayLike, ahead: jax.Array, done: jax.Array) -> jax.Array:
    return as_float(start) * ahead + as_float(stop) * done


def cosine_shape(ahead: jax.Array) -> jax.Array:
    """``(1 + cos(pi * done)) / 2``, written as ``sin(pi/2 * ahead)**2`` to avoid cancellation."""
    return jnp.sin(jnp.pi / 2 * ahead) ** 2


def constant_schedule(value: ArrayLike) -> Schedule:
    """The same value at every step.

    Args:
      value: a finite number or scalar array.

    Returns:
      A schedule.

    Raises:
      TypeError: if ``value`` is not a number.
      ValueError: if it is NaN or infinite.

    Example:
      >>> import gradchain as gc
      >>> round(float(gc.constant_schedule(0.5)(1000)), 4)
      0.5
    """
    _check.finite("constant_schedule", "value", value)

    def schedule(step: ArrayLike) -> jax.Array:
        return jnp.full(jnp.shape(step), as_float(value))

    return schedule


def _polynomial(
    fn: str, init: ArrayLike, end: ArrayLike, power: ArrayLike | None, steps: Any, begin: Any
) -> Schedule:
    """``end + (init - end) * ahead**power``; ``power=None`` is exactly linear."""
    check_finite(fn, init_value=init, end_value=end)
    if power is not None:
        _check.positive(fn, "power", power)
    steps = check_steps(fn, "transition_steps", steps, positive=True)
    begin = check_steps(fn, "transition_begin", begin, positive=False)

    def schedule(step: ArrayLike) -> jax.Array:
        ahead, done = transition_progress(step, steps, begin)
        if power is None:
            return interpolate(init, end, ahead, done)
        # Weights ahead**p and 1 - ahead**p = -expm1(p * log1p(-done)), each accurate.
        p = as_float(power)
        return interpolate(init, end, ahead**p, -jnp.expm1(p * jnp.log1p(-done)))

    return schedule


def linear_schedule(
    init_value: ArrayLike,
    end_value: ArrayLike,
    transition_steps: Steps,
    transition_begin: Steps = 0,
) -> Schedule:
    """``init_value`` up to ``transition_begin``, then linear to ``end_value``.

    Args:
      init_value: the value up to ``transition_begin``.
      end_value: the value from ``transition_begin + transition_steps`` on.
      transition_steps: the length of the transition, an integer > 0.
      transition_begin: the step where the transition starts, an integer >= 0.

    Returns:
      A schedule.

    Raises:
      TypeError: if a value is not a number or a step count not an integer.
      ValueError: if an argument is NaN, infinite or outside its range above.

    Example:
      >>> import gradchain as gc
      >>> s = gc.linear_schedule(1.0, 0.0, transition_steps=4, transition_begin=2)
      >>> [round(float(s(t)), 4) for t in (0, 2, 3, 6, 9)]
      [1.0, 1.0, 0.75, 0.0, 0.0]
    """
    fn = "linear_schedule"
    return _polynomial(fn, init_value, end_value, None, transition_steps, transition_begin)


def polynomial_schedule(
    init_value: ArrayLike,
    end_value: ArrayLike,
    power: ArrayLike,
    transition_steps: Steps,
    transition_begin: Steps = 0,
) -> Schedule:
    """``end + (init - end) * (1 - d / transition_steps) ** power``, ``d = t - transition_begin``.

    ``d`` is clipped to ``[0, transition_steps]``.

    Args:
      init_value: the value up to ``transition_begin``.
      end_value: the value from ``transition_begin + transition_steps`` on.
      power: the exponent, > 0 (Optax accepts any: 0 never leaves ``init_value``,
        a negative power reaches infinity).
      transition_steps: the length of the transition, an integer > 0.
      transition_begin: the step where the transition starts, an integer >= 0.

    Returns:
      A schedule.

    Raises:
      TypeError: if a value is not a number or a step count not an integer.
      ValueError: if an argument is NaN, infinite or outside its range above.

    Example:
      >>> import gradchain as gc
      >>> s = gc.polynomial_schedule(1.0, 0.0, power=2, transition_steps=10)
      >>> [round(float(s(t)), 4) for t in (0, 5, 10)]
      [1.0, 0.25, 0.0]
    """
    fn = "polynomial_schedule"
    return _polynomial(fn, init_value, end_value, power, transition_steps, transition_begin)


def exponential_decay(
    init_value: ArrayLike,
    transition_steps: Steps,
    decay_rate: ArrayLike,
    transition_begin: Steps = 0,
    staircase: bool = False,
    end_value: ArrayLike | None = None,
) -> Schedule:
    """``init * decay_rate ** ((t - transition_begin) / transition_steps)``, ``init`` before.

    With ``staircase`` the exponent is floored: "multiply the learning rate by
    0.9 every 100 epochs" is ``exponential_decay(lr, 100, 0.9, staircase=True)``.
    ``end_value`` bounds the value from below when ``decay_rate < 1``, from above
    otherwise.

    Args:
      init_value: the value up to ``transition_begin``.
      transition_steps: the steps per factor of ``decay_rate``, an integer > 0.
      decay_rate: the factor, > 0 (< 1 decays, > 1 grows).
      transition_begin: the step where the decay starts, an integer >= 0.
      staircase: whether the value changes only every ``transition_steps`` steps.
      end_value: an optional bound on the side the value moves towards.

    Returns:
      A schedule.

    Raises:
      TypeError: if a value is not a number, a step count not an integer, or
        ``staircase`` not a bool.
      ValueError: if a value is NaN or infinite, ``decay_rate <= 0``,
        ``transition_steps <= 0``, ``transition_begin < 0``, or ``end_value`` is
        behind ``init_value`` (Optax then returns ``end_value`` at every step).

    Example:
      >>> import gradchain as gc
      >>> s = gc.exponential_decay(1.0, transition_steps=100, decay_rate=0.9, staircase=True)
      >>> [round(float(s(t)), 4) for t in (0, 99, 100, 250)]
      [1.0, 1.0, 0.9, 0.81]
    """
    fn = "exponential_decay"
    _check.finite(fn, "init_value", init_value)
    _check.positive(fn, "decay_rate", decay_rate)
    steps = check_steps(fn, "transition_steps", transition_steps, positive=True)
    begin = check_steps(fn, "transition_begin", transition_begin, positive=False)
    _flag(fn, "staircase", staircase)
    if end_value is not None:
        _check.finite(fn, "end_value", end_value)
        init, rate, end = map(_check.concrete_value, (init_value, decay_rate, end_value))
        if (init is not None and rate is not None and end is not None) and (
            end > init if rate < 1 else end < init
        ):
            raise ValueError(
                f"{fn}: `end_value` must not be behind init_value={init_value!r} in the "
                f"direction of decay_rate={decay_rate!r}; got {end_value!r}."
            )

    def schedule(step: ArrayLike) -> jax.Array:
        t = jnp.asarray(step)
        exponent = as_float(t - begin) / as_float(steps)
        if staircase:
            exponent = jnp.floor(exponent)
        init, rate = as_float(init_value), as_float(decay_rate)
        value = jnp.where(t <= begin, init, init * rate**exponent)
        if end_value is None:
            return value
        end = as_float(end_value)
        return jnp.where(rate < 1, jnp.maximum(value, end), jnp.minimum(value, end))

    return schedule


def inverse_time_decay_schedule(
    init_value: ArrayLike,
    decay_rate: ArrayLike,
    transition_steps: Steps = 1,
    staircase: bool = False,
) -> Schedule:
    """``init / (1 + decay_rate * t / transition_steps)``; Optax has no such schedule.

    Args:
      init_value: the value at step 0.
      decay_rate: a number >= 0.
      transition_steps: the step unit, an integer > 0.
      staircase: whether to floor ``t / transition_steps``.

    Returns:
      A schedule.

    Raises:
      TypeError: if a value is not a number, a step count not an integer or
        ``staircase`` not a bool.
      ValueError: if an argument is NaN, infinite or outside its range above.

    Example:
      >>> import gradchain as gc
      >>> s = gc.inverse_time_decay_schedule(1.0, decay_rate=0.5, transition_steps=10)
      >>> [round(float(s(t)), 4) for t in (0, 10, 20)]
      [1.0, 0.6667, 0.5]
    """
    fn = "inverse_time_decay_schedule"
    _check.finite(fn, "init_value", init_value)
    _check.non_negative(fn, "decay_rate", decay_rate)
    steps = check_steps(fn, "transition_steps", transition_steps, positive=True)
    _flag(fn, "staircase", staircase)

    def schedule(step: ArrayLike) -> jax.Array:
        units = as_float(step) / as_float(steps)
        if staircase:
            units = jnp.floor(units)
        return as_float(init_value) / (1 + as_float(decay_rate) * units)

    return schedule


def inverse_sqrt_decay_schedule(
    init_value: ArrayLike, decay_rate: ArrayLike = 1.0, transition_steps: Steps = 1
) -> Schedule:
    """``init / (1 + decay_rate * sqrt(t / transition_steps))``; Optax has no such schedule.

    Args:
      init_value: the value at step 0.
      decay_rate: a number >= 0.
      transition_steps: the step unit, an integer > 0.

    Returns:
      A schedule.

    Raises:
      TypeError: if a value is not a number or a step count not an integer.
      ValueError: if an argument is NaN, infinite or outside its range above.

    Example:
      With the defaults, the decay ``0.1 / (1 + sqrt(t))``:

      >>> import gradchain as gc
      >>> s = gc.inverse_sqrt_decay_schedule(0.1)
      >>> [round(float(s(t)), 4) for t in (0, 1, 4, 9)]
      [0.1, 0.05, 0.0333, 0.025]
    """
    fn = "inverse_sqrt_decay_schedule"
    _check.finite(fn, "init_value", init_value)
    _check.non_negative(fn, "decay_rate", decay_rate)
    steps = check_steps(fn, "transition_steps", transition_steps, positive=True)

    def schedule(step: ArrayLike) -> jax.Array:
        root = jnp.sqrt(as_float(step) / as_float(steps))
        return as_float(init_value) / (1 + as_float(decay_rate) * root)

    return schedule


def cosine_decay_schedule(
    init_value: ArrayLike, decay_steps: Steps, alpha: ArrayLike = 0.0, exponent: ArrayLike = 1.0
) -> Schedule:
    """``init * ((1 - alpha) * c**exponent + alpha)``, ``c = (1 + cos(pi * min(t, T) / T)) / 2``.

    ``T`` is ``decay_steps``: the value goes from ``init_value`` to ``alpha * init_value``.

    Args:
      init_value: the value at step 0.
      decay_steps: the length of the decay, an integer > 0.
      alpha: the final value as a fraction of ``init_value``.
      exponent: the power of ``c``, > 0 (Optax accepts any, as for ``power``
        in :func:`polynomial_schedule`).

    Returns:
      A schedule.

    Raises:
      TypeError: if a value is not a number or a step count not an integer.
      ValueError: if an argument is NaN, infinite or outside its range above.

    Example:
      >>> import gradchain as gc
      >>> s = gc.cosine_decay_schedule(1.0, decay_steps=10, alpha=0.1)
      >>> [round(float(s(t)), 4) for t in (0, 5, 10, 20)]
      [1.0, 0.55, 0.1, 0.1]

    References:
      Loshchilov and Hutter, SGDR: Stochastic Gradient Descent with Warm Restarts, 2017.
    """
    fn = "cosine_decay_schedule"
    check_finite(fn, init_value=init_value, alpha=alpha)
    _check.positive(fn, "exponent", exponent)
    steps = check_steps(fn, "decay_steps", decay_steps, positive=True)

    def schedule(step: ArrayLike) -> jax.Array:
        c = cosine_shape(transition_progress(step, steps)[0]) ** as_float(exponent)
        return as_float(init_value) * ((1 - as_float(alpha)) * c + as_float(alpha))

    return schedule
