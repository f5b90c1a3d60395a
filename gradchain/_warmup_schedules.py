"""Warmup schedules: warmup + exponential decay, and warmup-stable-decay (WSD).

Same conventions as the basic schedules (``gradchain/_schedules.py``): arguments
checked at once, naming the function, the argument and the value; pure
``jax.numpy`` functions of the step that run under ``jit``, ``vmap`` and
``lax.scan``; Optax's names, signatures and numbers where Optax has the schedule.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from gradchain import _check
from gradchain._base import Schedule
from gradchain._cyclic_schedules import check_choice, check_fraction, concrete_steps
from gradchain._schedules import (
    Steps,
    as_float,
    check_finite,
    check_steps,
    cosine_shape,
    exponential_decay,
    interpolate,
    transition_progress,
)


def warmup_exponential_decay_schedule(
    init_value: ArrayLike,
    peak_value: ArrayLike,
    warmup_steps: Steps,
    transition_steps: Steps,
    decay_rate: ArrayLike,
    transition_begin: Steps = 0,
    staircase: bool = False,
    end_value: ArrayLike | None = None,
) -> Schedule:
    """Linear warmup from ``init_value`` to ``peak_value``, then :func:`exponential_decay`.

    From ``warmup_steps`` on, the value is ``exponential_decay(peak_value,
    transition_steps, decay_rate, transition_begin, staircase, end_value)`` at
    ``step - warmup_steps``: ``transition_begin`` counts from the end of the warmup.

    Args:
      init_value: the value at step 0.
      peak_value: the value at ``warmup_steps``.
      warmup_steps: the length of the warmup, an integer >= 0.
      transition_steps: the steps per factor of ``decay_rate``, an integer > 0.
      decay_rate: the factor, > 0 (< 1 decays, > 1 grows; Optax keeps the peak for 0).
      transition_begin: the steps after the warmup spent at ``peak_value``, >= 0.
      staircase: whether the value changes only every ``transition_steps`` steps.
      end_value: an optional bound on the side the value moves towards.

    Returns:
      A schedule.

    Raises:
      TypeError: if a value is not a number, a step count not an integer, or
        ``staircase`` not a bool.
      ValueError: if an argument is NaN, infinite or outside its range above, or
        ``end_value`` is behind ``peak_value`` (Optax then jumps to ``end_value``).

    Example:
      >>> import gradchain as gc
      >>> s = gc.warmup_exponential_decay_schedule(0.0, 1.0, 4, transition_steps=2, decay_rate=0.5)
      >>> [round(float(s(t)), 4) for t in (0, 2, 4, 6, 8)]
      [0.0, 0.5, 1.0, 0.5, 0.25]
    """
    fn = "warmup_exponential_decay_schedule"
    check_finite(fn, init_value=init_value, peak_value=peak_value)
    warmup = check_steps(fn, "warmup_steps", warmup_steps, positive=False)
    check_steps(fn, "transition_steps", transition_steps, positive=True)
    _check.positive(fn, "decay_rate", decay_rate)
    check_steps(fn, "transition_begin", transition_begin, positive=False)
    if not isinstance(staircase, bool):
        raise TypeError(
            f"{fn}: `staircase` must be a bool; got {type(staircase).__name__} {staircase!r}."
        )
    if end_value is not None:
        _check.finite(fn, "end_value", end_value)
        peak, rate, end = map(_check.concrete_value, (peak_value, decay_rate, end_value))
        if (peak is not None and rate is not None and end is not None) and (
            end > peak if rate < 1 else end < peak
        ):
            raise ValueError(
                f"{fn}: `end_value` must not be behind peak_value={peak_value!r} in the "
                f"direction of decay_rate={decay_rate!r}; got {end_value!r}."
            )
    decay = exponential_decay(
        peak_value, transition_steps, decay_rate, transition_begin, staircase, end_value
    )

    def schedule(step: ArrayLike) -> jax.Array:
        t = jnp.asarray(step)
        warm = interpolate(init_value, peak_value, *transition_progress(t, warmup))
        return jnp.where(t < warmup, warm, decay(t - warmup))

    return schedule


def warmup_stable_decay_schedule(
    peak_value: ArrayLike,
    total_steps: Steps,
    warmup_steps: Steps = 0,
    *,
    decay_steps: Steps | None = None,
    decay_fraction: ArrayLike | None = None,
    init_value: ArrayLike = 0.0,
    end_value: ArrayLike = 0.0,
    decay_shape: str = "linear",
) -> Schedule:
    """Warmup, a constant stable phase, and a cooldown ending at ``total_steps`` (WSD).

    With ``W = warmup_steps``, ``D`` the cooldown length and ``T = total_steps``:
    linear from ``init_value`` to ``peak_value`` over ``[0, W]``; ``peak_value``
    up to ``T - D``; then, with ``d = (t - (T - D)) / D``,
    ``end_value + (peak_value - end_value) * f(d)`` up to ``T``, and
    ``end_value`` after. The cooldown shape ``f`` is

    - ``"linear"``: ``1 - d``,
    - ``"cosine"``: ``(1 + cos(pi d)) / 2``,
    - ``"1-sqrt"``: ``1 - sqrt(d)`` (Hägele et al. find it beats linear).

    A run may stop anywhere in the stable phase and cool down from there: the
    schedule of a longer run agrees with this one up to ``T - D``.

    Args:
      peak_value: the value of the stable phase.
      total_steps: the step where the cooldown ends, an integer > 0.
      warmup_steps: the length of the warmup, an integer >= 0.
      decay_steps: the cooldown length ``D``, an integer > 0; give this or
        ``decay_fraction``, not both.
      decay_fraction: ``D`` as a fraction of ``total_steps``, in (0, 1],
        rounded to the nearest step (20% matches a cosine schedule, per
        Hägele et al.).
      init_value: the value at step 0.
      end_value: the value at ``total_steps`` and after.
      decay_shape: ``"linear"``, ``"cosine"`` or ``"1-sqrt"``.

    Returns:
      A schedule.

    Raises:
      TypeError: if a value is not a number, a step count not an integer, or
        ``decay_fraction`` is traced.
      ValueError: if an argument is NaN, infinite or outside its range above,
        both or neither of ``decay_steps`` and ``decay_fraction`` are given, or
        the warmup and cooldown together exceed ``total_steps``.

    Example:
      >>> import gradchain as gc
      >>> s = gc.warmup_stable_decay_schedule(1.0, 10, 2, decay_steps=4, decay_shape="1-sqrt")
      >>> [round(float(s(t)), 4) for t in (0, 1, 2, 6, 7, 10, 12)]
      [0.0, 0.5, 1.0, 1.0, 0.5, 0.0, 0.0]

    References:
      Hu et al., MiniCPM: Unveiling the Potential of Small Language Models with
      Scalable Training Strategies, 2024. Hägele et al., Scaling Laws and
      Compute-Optimal Training Beyond Fixed Training Durations, 2024.
    """
    fn = "warmup_stable_decay_schedule"
    check_finite(fn, peak_value=peak_value, init_value=init_value, end_value=end_value)
    total = check_steps(fn, "total_steps", total_steps, positive=True)
    warmup = check_steps(fn, "warmup_steps", warmup_steps, positive=False)
    shape = check_choice(fn, "decay_shape", decay_shape, ("linear", "cosine", "1-sqrt"))
    if (decay_steps is None) == (decay_fraction is None):
        raise ValueError(
            f"{fn}: give exactly one of `decay_steps` and `decay_fraction` (the cooldown "
            f"length); got decay_steps={decay_steps!r}, decay_fraction={decay_fraction!r}. "
            f"decay_fraction=0.2 cools down over the last 20% of total_steps."
        )
    if decay_steps is not None:
        decay = check_steps(fn, "decay_steps", decay_steps, positive=True)
    else:
        _check.in_range(fn, "decay_fraction", decay_fraction, 0.0, 1.0, lo_open=True)
        fraction = check_fraction(fn, "decay_fraction", decay_fraction)
        total = concrete_steps(fn, "total_steps", total, positive=True)
        decay = math.floor(fraction * total + 0.5)
        if decay < 1:
            raise ValueError(
                f"{fn}: `decay_fraction` of total_steps={total} must give a cooldown of one "
                f"step or more; got {decay_fraction!r}, which rounds to {decay} steps."
            )
    if all(isinstance(n, int) for n in (total, warmup, decay)) and warmup + decay > total:
        raise ValueError(
            f"{fn}: the warmup and cooldown must fit in total_steps={total}; got "
            f"warmup_steps={warmup} and a cooldown of {decay} steps. Shorten one or the other."
        )

    def schedule(step: ArrayLike) -> jax.Array:
        t = jnp.asarray(step)
        warm = interpolate(init_value, peak_value, *transition_progress(t, warmup))
        ahead, done = transition_progress(t, decay, total - decay)
        if shape == "cosine":
            ahead = cosine_shape(ahead)
        elif shape == "1-sqrt":
            ahead = ahead / (1 + jnp.sqrt(done))  # 1 - sqrt(d) without cancellation near d = 1
        peak, end = as_float(peak_value), as_float(end_value)
        return jnp.where(t < warmup, warm, end + (peak - end) * ahead)

    return schedule
