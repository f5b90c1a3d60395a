"""Schedules in phases and cycles: piecewise interpolation, one-cycle, SGDR, cyclical.

Here: piecewise interpolation (linear or cosine), the linear and cosine
one-cycle policies, SGDR (warm restarts) and cyclical (triangular) learning
rates. Warmup + exponential decay and warmup-stable-decay are in
``gradchain/_warmup_schedules.py``.

Same conventions as the basic schedules (``gradchain/_schedules.py``): arguments
checked at once, naming the function, the argument and the value; pure
``jax.numpy`` functions of the step that run under ``jit``, ``vmap`` and
``lax.scan``; Optax's names, signatures and numbers where Optax has the schedule.
Step counts that place phase boundaries (``transition_steps`` of the one-cycle
schedules, the boundaries of :func:`piecewise_interpolate_schedule`, the cycle
lengths of :func:`sgdr_schedule`) must be concrete integers; values may be traced.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from gradchain import _check
from gradchain._base import Schedule
from gradchain._composite_schedules import join_schedules, warmup_cosine_decay_schedule
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


def check_choice(fn: str, name: str, value: Any, options: Sequence[str]) -> str:
    """Checks that ``value`` is one of the strings ``options``; returns it."""
    if not isinstance(value, str):
        raise TypeError(
            f"{fn}: `{name}` must be one of {list(options)}; got {type(value).__name__} {value!r}."
        )
    if value not in options:
        raise ValueError(f"{fn}: `{name}` must be one of {list(options)}; got {value!r}.")
    return value


def concrete_steps(fn: str, name: str, value: Any, *, positive: bool) -> int:
    """A step count that must be known at construction (it places phase boundaries)."""
    steps = check_steps(fn, name, value, positive=positive)
    if not isinstance(steps, int):
        raise TypeError(
            f"{fn}: `{name}` must be a concrete integer (it places the phase boundaries when "
            f"the schedule is built); got a traced {value!r:.80}. Build the schedule outside jit."
        )
    return steps


def check_fraction(fn: str, name: str, value: Any) -> float:
    """A concrete number in [0, 1] (a fraction of the steps that places a boundary)."""
    _check.in_range(fn, name, value, 0.0, 1.0)
    exact = _check.concrete_value(value)
    if exact is None:
        raise TypeError(
            f"{fn}: `{name}` must be a concrete number (it places a phase boundary when the "
            f"schedule is built); got a traced {value!r:.80}. Build the schedule outside jit."
        )
    return exact


def _through_knots(knots: list[tuple[int, Any]], shape: str) -> Schedule:
    """The curve through ``(step, value)`` knots, linear or half-cosine between neighbours.

    Knot steps start at 0 and never decrease; where two share a step, the value
    jumps there to the later one. The first value holds before, the last after.
    """

    def schedule(step: ArrayLike) -> jax.Array:
        t = jnp.asarray(step)
        value = jnp.full(t.shape, as_float(knots[0][1]))
        for (b0, v0), (b1, v1) in itertools.pairwise(knots):
            if b1 == b0:
                continue
            ahead, done = transition_progress(t, b1 - b0, b0)
            if shape == "cosine":  # weights (1 + cos(pi d)) / 2 and (1 - cos(pi d)) / 2
                ahead, done = cosine_shape(ahead), cosine_shape(done)
            value = jnp.where(t >= b0, interpolate(v0, v1, ahead, done), value)
        return jnp.where(t >= knots[-1][0], as_float(knots[-1][1]), value)

    return schedule


def piecewise_interpolate_schedule(
    interpolate_type: str,
    init_value: ArrayLike,
    boundaries_and_scales: Mapping[int, ArrayLike] | None = None,
) -> Schedule:
    """Linear or cosine interpolation between values that scales set at boundary steps.

    The value at boundary ``b`` is ``init_value`` times every scale up to and
    including ``b``'s; between two boundaries (and between step 0 and the first)
    the value moves from one such value to the next, along a straight line or a
    half cosine. After the last boundary it stays.

    Args:
      interpolate_type: ``"linear"`` or ``"cosine"``.
      init_value: the value at step 0.
      boundaries_and_scales: a dict ``{step: scale}``, steps integers >= 0 in any
        order, scales numbers >= 0.

    Returns:
      A schedule.

    Raises:
      TypeError: if a value is not a number, a step not an integer, or
        ``boundaries_and_scales`` not a dict.
      ValueError: if ``interpolate_type`` is unknown, a value NaN or infinite,
        a scale negative, or a step negative (Optax gives nonsense for those).

    Example:
      >>> import gradchain as gc
      >>> s = gc.piecewise_interpolate_schedule("linear", 1.0, {4: 0.1, 8: 0.01})
      >>> [round(float(s(t)), 6) for t in (0, 2, 4, 6, 8, 10)]
      [1.0, 0.55, 0.1, 0.0505, 0.001, 0.001]
    """
    fn = "piecewise_interpolate_schedule"
    shape = check_choice(fn, "interpolate_type", interpolate_type, ("linear", "cosine"))
    _check.finite(fn, "init_value", init_value)
    table = {} if boundaries_and_scales is None else boundaries_and_scales
    if not isinstance(table, Mapping):
        raise TypeError(
            f"{fn}: `boundaries_and_scales` must be a dict {{step: scale}} or None; "
            f"got {type(table).__name__} {table!r:.80}."
        )
    check_boundaries(fn, "boundaries_and_scales", list(table), ordered=False)
    knots: list[tuple[int, Any]] = [(0, init_value)]
    for b, scale in sorted((int(b), s) for b, s in table.items()):
        _check.non_negative(fn, f"boundaries_and_scales[{b}]", scale)
        knots.append((b, as_float(knots[-1][1]) * as_float(scale)))
    return _through_knots(knots, shape)


def _onecycle_knots(
    fn: str, transition_steps: Any, peak_value: Any, div_factor: Any, final_div_factor: Any
) -> tuple[int, jax.Array, jax.Array]:
    """Checks the shared arguments; returns the length, initial and final values."""
    steps = concrete_steps(fn, "transition_steps", transition_steps, positive=True)
    _check.finite(fn, "peak_value", peak_value)
    _check.positive(fn, "div_factor", div_factor)
    _check.positive(fn, "final_div_factor", final_div_factor)
    init = as_float(peak_value) / as_float(div_factor)
    return steps, init, init / as_float(final_div_factor)


def linear_onecycle_schedule(
    transition_steps: int,
    peak_value: ArrayLike,
    pct_start: ArrayLike = 0.3,
    pct_final: ArrayLike = 0.85,
    div_factor: ArrayLike = 25.0,
    final_div_factor: ArrayLike = 1e4,
) -> Schedule:
    """The one-cycle policy in three linear phases (Smith and Topin, 2017).

    With ``T = transition_steps`` and ``init = peak_value / div_factor``: up from
    ``init`` to ``peak_value`` over steps ``[0, int(pct_start * T)]``, back down
    to ``init`` at ``int(pct_final * T)``, then down to ``init / final_div_factor``
    at ``T``, where it stays. A phase whose two ends fall on one step is skipped
    (Optax keeps one of the two boundaries in a dict and drifts from there).

    Args:
      transition_steps: the length of the cycle, a concrete integer > 0.
      peak_value: the value at ``int(pct_start * T)``.
      pct_start: the fraction of the cycle spent rising, in [0, 1].
      pct_final: the fraction of the cycle where the value is back at ``init``,
        in [``pct_start``, 1].
      div_factor: ``peak_value / init``, > 0.
      final_div_factor: ``init / final value``, > 0.

    Returns:
      A schedule.

    Raises:
      TypeError: if a value is not a number or ``transition_steps`` not a concrete integer.
      ValueError: if an argument is NaN, infinite or outside its range above.

    Example:
      >>> import gradchain as gc
      >>> s = gc.linear_onecycle_schedule(10, 1.0, div_factor=10.0, final_div_factor=10.0)
      >>> [round(float(s(t)), 4) for t in (0, 3, 8, 10)]
      [0.1, 1.0, 0.1, 0.01]

    References:
      Smith and Topin, Super-Convergence: Very Fast Training of Neural Networks
      Using Large Learning Rates, 2017.
    """
    fn = "linear_onecycle_schedule"
    steps, init, final = _onecycle_knots(
        fn, transition_steps, peak_value, div_factor, final_div_factor
    )
    start = check_fraction(fn, "pct_start", pct_start)
    end = check_fraction(fn, "pct_final", pct_final)
    if end < start:
        raise ValueError(
            f"{fn}: `pct_final` must be >= pct_start={pct_start!r}; got {pct_final!r}."
        )
    knots = [(0, init), (int(start * steps), peak_value), (int(end * steps), init), (steps, final)]
    return _through_knots(knots, "linear")


def cosine_onecycle_schedule(
    transition_steps: int,
    peak_value: ArrayLike,
    pct_start: ArrayLike = 0.3,
    div_factor: ArrayLike = 25.0,
    final_div_factor: ArrayLike = 1e4,
) -> Schedule:
    """The one-cycle policy with half-cosine phases, as in fast.ai and PyTorch's OneCycleLR.

    With ``T = transition_steps`` and ``init = peak_value / div_factor``: up from
    ``init`` to ``peak_value`` over steps ``[0, int(pct_start * T)]``, then down
    to ``init / final_div_factor`` at ``T``, where it stays.

    Args:
      transition_steps: the length of the cycle, a concrete integer > 0.
      peak_value: the value at ``int(pct_start * T)``.
      pct_start: the fraction of the cycle spent rising, in [0, 1].
      div_factor: ``peak_value / init``, > 0.
      final_div_factor: ``init / final value``, > 0.

    Returns:
      A schedule.

    Raises:
      TypeError: if a value is not a number or ``transition_steps`` not a concrete integer.
      ValueError: if an argument is NaN, infinite or outside its range above.

    Example:
      >>> import gradchain as gc
      >>> s = gc.cosine_onecycle_schedule(10, 1.0, pct_start=0.2, div_factor=10.0)
      >>> [round(float(s(t)), 4) for t in (0, 1, 2, 6, 10)]
      [0.1, 0.55, 1.0, 0.5, 0.0]

    References:
      Smith and Topin, Super-Convergence: Very Fast Training of Neural Networks
      Using Large Learning Rates, 2017.
    """
    fn = "cosine_onecycle_schedule"
    steps, init, final = _onecycle_knots(
        fn, transition_steps, peak_value, div_factor, final_div_factor
    )
    start = check_fraction(fn, "pct_start", pct_start)
    return _through_knots([(0, init), (int(start * steps), peak_value), (steps, final)], "cosine")


def sgdr_schedule(cosine_kwargs: Iterable[Mapping[str, Any]]) -> Schedule:
    """Stochastic gradient descent with warm restarts: warmup-cosine cycles, one after another.

    Cycle ``i`` is ``warmup_cosine_decay_schedule(**cosine_kwargs[i])``, counted
    from the step where cycle ``i - 1`` ends; each lasts its ``decay_steps``.
    After the last cycle the value stays at its ``end_value``.

    Args:
      cosine_kwargs: one or more dicts of arguments of
        :func:`warmup_cosine_decay_schedule`; each gives a concrete ``decay_steps``.

    Returns:
      A schedule.

    Raises:
      TypeError: if an entry is not a dict, lacks ``decay_steps``, or holds an
        argument :func:`warmup_cosine_decay_schedule` refuses (the message names
        the entry, then gives that function's message).
      ValueError: if ``cosine_kwargs`` is empty, or an entry holds a value
        :func:`warmup_cosine_decay_schedule` refuses.

    Example:
      >>> import gradchain as gc
      >>> cycle = dict(init_value=0.0, peak_value=1.0, warmup_steps=2, decay_steps=6)
      >>> s = gc.sgdr_schedule([cycle, cycle])
      >>> [round(float(s(t)), 4) for t in (0, 2, 4, 6, 8, 12)]
      [0.0, 1.0, 0.5, 0.0, 1.0, 0.0]

    References:
      Loshchilov and Hutter, SGDR: Stochastic Gradient Descent with Warm Restarts, 2017.
    """
    fn = "sgdr_schedule"
    entries = list(cosine_kwargs)
    if not entries:
        raise ValueError(
            f"{fn}: `cosine_kwargs` must hold one or more dicts (one per cycle); got []."
        )
    members, boundaries, end = [], [], 0
    for i, kwargs in enumerate(entries):
        name = f"cosine_kwargs[{i}]"
        if not isinstance(kwargs, Mapping) or "decay_steps" not in kwargs:
            raise TypeError(
                f"{fn}: `{name}` must be a dict of warmup_cosine_decay_schedule arguments "
                f"with `decay_steps` (the cycle's length); got {kwargs!r:.120}."
            )
        try:
            members.append(warmup_cosine_decay_schedule(**kwargs))
        except (TypeError, ValueError) as err:
            raise type(err)(f"{fn}: `{name}` is refused: {err}") from err
        end += concrete_steps(fn, f"{name}['decay_steps']", kwargs["decay_steps"], positive=True)
        boundaries.append(end)
    return join_schedules(members, boundaries[:-1])


def cyclic_schedule(
    base_value: ArrayLike,
    max_value: ArrayLike,
    step_size: Steps,
    mode: str = "triangular",
    gamma: ArrayLike = 1.0,
) -> Schedule:
    """Cyclical learning rates: triangles between ``base_value`` and ``max_value`` (Smith, 2017).

    Each cycle takes ``2 * step_size`` steps: ``step_size`` up, ``step_size``
    down. At step ``t``, with ``k = t // (2 * step_size)`` the cycle index and
    ``h = 1 - |t / step_size - 2k - 1|`` the height in the triangle, the value
    is ``base_value + (max_value - base_value) * h * s``, where ``s`` is

    - ``"triangular"``: 1,
    - ``"triangular2"``: ``2**-k``, halving the amplitude every cycle,
    - ``"exp_range"``: ``gamma**t``.

    Args:
      base_value: the value at the start (and end) of every cycle.
      max_value: the value at the top of the first cycle.
      step_size: half a cycle, an integer > 0 (Smith suggests 2 to 10 epochs).
      mode: ``"triangular"``, ``"triangular2"`` or ``"exp_range"``.
      gamma: the decay per step of ``"exp_range"``, in (0, 1]; only that mode
        takes one.

    Returns:
      A schedule.

    Raises:
      TypeError: if a value is not a number, ``step_size`` not an integer, or
        ``mode`` not a string.
      ValueError: if an argument is NaN, infinite or outside its range above,
        ``mode`` unknown, or ``gamma != 1`` with another mode than ``"exp_range"``.

    Example:
      >>> import gradchain as gc
      >>> s = gc.cyclic_schedule(0.1, 1.0, step_size=2, mode="triangular2")
      >>> [round(float(s(t)), 4) for t in (0, 1, 2, 3, 4, 6, 10)]
      [0.1, 0.55, 1.0, 0.55, 0.1, 0.55, 0.325]

    References:
      Smith, Cyclical Learning Rates for Training Neural Networks, WACV 2017.
    """
    fn = "cyclic_schedule"
    check_finite(fn, base_value=base_value, max_value=max_value)
    half = check_steps(fn, "step_size", step_size, positive=True)
    mode = check_choice(fn, "mode", mode, ("triangular", "triangular2", "exp_range"))
    _check.in_range(fn, "gamma", gamma, 0.0, 1.0, lo_open=True)
    exact_gamma = _check.concrete_value(gamma)
    if mode != "exp_range" and exact_gamma is not None and exact_gamma != 1.0:
        raise ValueError(
            f"{fn}: `gamma` only applies to mode='exp_range'; got {gamma!r} with "
            f"mode={mode!r}. Drop it, or use mode='exp_range'."
        )

    def schedule(step: ArrayLike) -> jax.Array:
        t = jnp.asarray(step)
        cycle = t // (2 * half)
        phase = t - cycle * (2 * half)  # in [0, 2 * step_size)
        height = as_float(half - jnp.abs(phase - half)) / as_float(half)  # a ratio of integers
        if mode == "triangular2":
            height = height * jnp.exp2(-as_float(cycle))
        elif mode == "exp_range":
            # log(gamma) from the Python number in float64: float32(gamma)**t drifts with t.
            log_gamma = (
                as_float(math.log(exact_gamma))
                if exact_gamma is not None
                else jnp.log(as_float(gamma))
            )
            height = height * jnp.exp(as_float(t) * log_gamma)
        base = as_float(base_value)
        return base + (as_float(max_value) - base) * height

    return schedule
