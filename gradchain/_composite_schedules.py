"""Schedules built from others: warmup + cosine, warmup + constant, piecewise, joins.

Same conventions as the basic schedules (``gradchain/_schedules.py``): arguments
checked at once, pure ``jax.numpy`` functions of the step, Optax's names and numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from gradchain import _check
from gradchain._base import Schedule
from gradchain._schedules import (
    Steps,
    as_float,
    check_boundaries,
    check_finite,
    check_steps,
    cosine_shape,
    interpolate,
    transition_progress,
)


def warmup_cosine_decay_schedule(
    init_value: ArrayLike,
    peak_value: ArrayLike,
    warmup_steps: Steps,
    decay_steps: Steps,
    end_value: ArrayLike = 0.0,
    exponent: ArrayLike = 1.0,
) -> Schedule:
    """Linear warmup from ``init_value`` to ``peak_value``, then cosine decay to ``end_value``.

    The warmup takes steps ``[0, warmup_steps)``, the decay the next
    ``decay_steps - warmup_steps`` (``decay_steps`` counts the warmup, as in
    Optax): ``end + (peak - end) * c**exponent``, ``c`` as in
    :func:`cosine_decay_schedule`. Optax scales by ``end / peak``, so with
    ``peak_value == 0`` it stays at 0; this still decays to ``end_value``.

    Args:
      init_value: the value at step 0.
      peak_value: the value at ``warmup_steps``.
      warmup_steps: the length of the warmup, an integer >= 0.
      decay_steps: the total length, an integer > ``warmup_steps`` (Optax also
        refuses ``decay_steps == warmup_steps``).
      end_value: the value from ``decay_steps`` on.
      exponent: the power of ``c``, > 0.

    Returns:
      A schedule.

    Raises:
      TypeError: if a value is not a number or a step count not an integer.
      ValueError: if an argument is NaN, infinite or outside its range above.

    Example:
      >>> import gradchain as gc
      >>> s = gc.warmup_cosine_decay_schedule(0.0, 1.0, warmup_steps=2, decay_steps=6)
      >>> [round(float(s(t)), 4) for t in (0, 1, 2, 4, 6, 9)]
      [0.0, 0.5, 1.0, 0.5, 0.0, 0.0]
    """
    fn = "warmup_cosine_decay_schedule"
    check_finite(fn, init_value=init_value, peak_value=peak_value, end_value=end_value)
    _check.positive(fn, "exponent", exponent)
    warmup = check_steps(fn, "warmup_steps", warmup_steps, positive=False)
    total = check_steps(fn, "decay_steps", decay_steps, positive=True)
    if isinstance(warmup, int) and isinstance(total, int) and total <= warmup:
        raise ValueError(
            f"{fn}: `decay_steps` must be > warmup_steps={warmup} (it counts the warmup); "
            f"got {total}."
        )

    def schedule(step: ArrayLike) -> jax.Array:
        warm = interpolate(init_value, peak_value, *transition_progress(step, warmup))
        c = cosine_shape(transition_progress(step, total - warmup, warmup)[0]) ** as_float(exponent)
        decay = as_float(end_value) + (as_float(peak_value) - as_float(end_value)) * c
        return jnp.where(jnp.asarray(step) < warmup, warm, decay)

    return schedule


def warmup_constant_schedule(
    init_value: ArrayLike, peak_value: ArrayLike, warmup_steps: Steps
) -> Schedule:
    """Linear warmup from ``init_value`` to ``peak_value`` over ``warmup_steps``, then the peak.

    With ``warmup_steps=0`` the value is ``peak_value`` from step 0 on (Optax's
    stays at ``init_value`` then).

    Args:
      init_value: the value at step 0.
      peak_value: the value from ``warmup_steps`` on.
      warmup_steps: the length of the warmup, an integer >= 0.

    Returns:
      A schedule.

    Raises:
      TypeError: if a value is not a number or a step count not an integer.
      ValueError: if an argument is NaN, infinite or outside its range above.

    Example:
      >>> import gradchain as gc
      >>> s = gc.warmup_constant_schedule(0.0, 1.0, warmup_steps=4)
      >>> [round(float(s(t)), 4) for t in (0, 1, 4, 100)]
      [0.0, 0.25, 1.0, 1.0]
    """
    fn = "warmup_constant_schedule"
    check_finite(fn, init_value=init_value, peak_value=peak_value)
    warmup = check_steps(fn, "warmup_steps", warmup_steps, positive=False)

    def schedule(step: ArrayLike) -> jax.Array:
        warm = interpolate(init_value, peak_value, *transition_progress(step, warmup))
        return jnp.where(jnp.asarray(step) < warmup, warm, as_float(peak_value))

    return schedule


def piecewise_constant_schedule(
    init_value: ArrayLike, boundaries_and_scales: Mapping[int, ArrayLike] | None = None
) -> Schedule:
    """``init_value`` times every scale whose boundary step has been reached.

    Args:
      init_value: the value before the first boundary.
      boundaries_and_scales: a dict ``{step: scale}``: from ``step`` on, the
        value is multiplied by ``scale``, a number >= 0. The steps must be
        integers >= 0, in any order (a dict's order carries no meaning).

    Returns:
      A schedule.

    Raises:
      TypeError: if a value is not a number, a step not an integer, or
        ``boundaries_and_scales`` not a dict.
      ValueError: if a value is NaN or infinite, a scale negative, or a step
        negative.

    Example:
      >>> import gradchain as gc
      >>> s = gc.piecewise_constant_schedule(1.0, {100: 0.1, 200: 0.5})
      >>> [round(float(s(t)), 4) for t in (99, 100, 200)]
      [1.0, 0.1, 0.05]
    """
    fn = "piecewise_constant_schedule"
    _check.finite(fn, "init_value", init_value)
    table = {} if boundaries_and_scales is None else boundaries_and_scales
    if not isinstance(table, Mapping):
        raise TypeError(
            f"{fn}: `boundaries_and_scales` must be a dict {{step: scale}} or None; "
            f"got {type(table).__name__} {table!r:.80}."
        )
    check_boundaries(fn, "boundaries_and_scales", list(table), ordered=False)
    pieces = sorted((int(b), scale) for b, scale in table.items())
    for b, scale in pieces:
        _check.non_negative(fn, f"boundaries_and_scales[{b}]", scale)

    def schedule(step: ArrayLike) -> jax.Array:
        t = jnp.asarray(step)
        value = jnp.full(t.shape, as_float(init_value))
        for b, scale in pieces:
            value = jnp.where(t >= b, value * as_float(scale), value)
        return value

    return schedule


def join_schedules(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    """Runs ``schedules[i]`` on steps ``[boundaries[i-1], boundaries[i])``.

    Schedule ``i > 0`` is called with ``step - boundaries[i-1]``, as in Optax;
    the values are cast to the default float dtype.

    Args:
      schedules: one or more schedules.
      boundaries: ``len(schedules) - 1`` integer steps >= 0, in increasing order.

    Returns:
      A schedule.

    Raises:
      TypeError: if a member is not callable or a boundary not an integer.
      ValueError: if the lengths disagree, or a boundary is negative or out of order.

    Example:
      >>> import gradchain as gc
      >>> warmup = gc.linear_schedule(0.0, 1.0, transition_steps=10)
      >>> decay = gc.exponential_decay(1.0, transition_steps=10, decay_rate=0.5)
      >>> s = gc.join_schedules([warmup, decay], boundaries=[10])
      >>> [round(float(s(t)), 4) for t in (5, 10, 20)]
      [0.5, 1.0, 0.5]
    """
    fn = "join_schedules"
    members: tuple[Callable[[Any], Any], ...] = tuple(schedules)
    for i, member in enumerate(members):
        if not _check.is_schedule(member):
            raise TypeError(
                f"{fn}: `schedules[{i}]` must be a schedule (a function of the step); "
                f"got {type(member).__name__} {member!r:.80}."
            )
    starts = check_boundaries(fn, "boundaries", list(boundaries))
    if not members or len(starts) != len(members) - 1:
        raise ValueError(
            f"{fn}: `boundaries` must hold len(schedules) - 1 = {len(members) - 1} steps "
            f"(one or more schedules); got {len(starts)}: {starts!r}."
        )

    def schedule(step: ArrayLike) -> jax.Array:
        t = jnp.asarray(step)
        value = as_float(members[0](t))
        for start, member in zip(starts, members[1:], strict=True):
            value = jnp.where(t < start, value, as_float(member(t - start)))
        return value

    return schedule
