r"""Step guards: skip a step whose gradients are not finite, or that spike.

Both guards wrap an inner transformation and call its update inside the branch
of a ``lax.cond`` that applies it, so a skipped step costs no inner update, and
returns zero updates and the inner state exactly as it was (bit for bit: the
state passes through the other branch untouched). Under ``vmap`` JAX turns the
``cond`` into a select of both branches; the results are the same.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer

from gradchain import _check, _tree
from gradchain._base import (
    AnyTransformation,
    GradientTransformationExtraArgs,
    OptState,
    Params,
    ScalarOrSchedule,
    Updates,
    call_update,
    check_transformation,
)
from gradchain._hyperparams import Hyperparams, HyperparamSpec, values

# A z-score divides by max(std, _STD_FLOOR * |mean|): float32 rounding alone leaves a
# relative spread of ~1e-7 in a constant statistic, which must not read as a deviation.
_STD_FLOOR = 1e-6


def count_hyperparameter(fn: str, name: str, value: Any, minimum: int) -> None:
    """Raises unless ``value`` is an integer >= ``minimum``; traced scalars pass unchecked."""
    if isinstance(value, Tracer) and jnp.shape(value) == ():
        return
    if minimum > 0:
        _check.positive_int(fn, name, value)
    else:
        _check.non_negative_int(fn, name, value)


def all_finite(tree: Any) -> jax.Array:
    """A bool scalar: whether every element of every leaf is finite (True for no leaves)."""
    flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.array(True)


def _state_change(old: Any, new: Any) -> str | None:
    """How ``new`` differs from ``old`` in structure, shape or dtype, or None if it does not."""
    if jax.tree.structure(old) != jax.tree.structure(new):
        return f"its structure changes from {jax.tree.structure(old)} to {jax.tree.structure(new)}"
    old_leaves = jax.tree_util.tree_flatten_with_path(old)[0]
    for (path, x), y in zip(old_leaves, jax.tree.leaves(new), strict=True):
        before = (jnp.shape(x), jnp.result_type(x))
        after = (jnp.shape(y), jnp.result_type(y))
        if before != after:
            return (
                f"at {_tree.keystr(path)} it turns {before[1]}{list(before[0])} "
                f"into {after[1]}{list(after[0])}"
            )
    return None


def update_if(
    fn: str,
    apply: jax.Array,
    inner: AnyTransformation,
    updates: Updates,
    inner_state: OptState,
    params: Params | None,
    extra_args: dict[str, Any],
) -> tuple[Updates, OptState]:
    """``inner``'s update where ``apply`` is True; else zero updates and ``inner_state`` unchanged.

    The inner update is traced once abstractly first, so its own trace-time errors
    (a tree of another structure, a foreign state) surface with its own message,
    and so the skipping branch can return zeros of exactly its output types.

    Raises:
      TypeError: if the inner update returns a state of another structure, shape
        or dtype than it was given: the skipping branch keeps the old one.
    """

    def run() -> tuple[Updates, OptState]:
        return call_update(inner, updates, inner_state, params, extra_args)

    out_updates, out_state = jax.eval_shape(run)
    change = _state_change(inner_state, out_state)
    if change is not None:
        raise TypeError(
            f"{fn}: the inner transformation's update changes its state: {change}. A skipped "
            f"step keeps the old state, so the two must match; use an inner transformation "
            f"whose state keeps its structure, shapes and dtypes, as every gradchain "
            f"transformation's does."
        )

    def skip() -> tuple[Updates, OptState]:
        # Zeros of the running branch's types, sharding included: on an Explicit mesh the two
        # branches of a lax.cond must agree on it too.
        zeros = jax.tree.map(lambda s: _tree.like(s, s.dtype), out_updates)
        return zeros, inner_state

    return jax.lax.cond(apply, run, skip)


class ApplyIfFiniteState(NamedTuple):
    """State of :func:`apply_if_finite` (Optax's fields, and the hyperparameter).

    Attributes:
      notfinite_count: int32[], consecutive updates with a NaN or an Inf, up to this one.
      last_finite: bool[], whether the last update's input was all finite.
      total_notfinite: int32[], updates with a NaN or an Inf so far.
      inner_state: the inner transformation's state.
      hparams: holds ``max_consecutive_errors``.
    """

    notfinite_count: jax.Array
    last_finite: jax.Array
    total_notfinite: jax.Array
    inner_state: OptState
    hparams: Hyperparams


def apply_if_finite(
    inner: AnyTransformation, max_consecutive_errors: int
) -> GradientTransformationExtraArgs:
    """Skips updates whose input holds a NaN or an Inf, up to a number in a row (Optax's).

    A step whose updates are not all finite returns zero updates and leaves the
    inner state untouched; the counters record it. After
    ``max_consecutive_errors`` such steps in a row, the next one in a row is
    applied anyway, NaNs included, as in Optax: the inner state (Adam's
    moments, say) then holds NaNs, and so will the parameters. Every one
    after it is applied too, until a finite step resets the count. Use
    ``max_consecutive_errors`` to bound how long training stalls; wrap the
    training loop, not this guard, to stop it.

    Args:
      inner: the transformation to guard.
      max_consecutive_errors: the number of non-finite steps in a row that are
        skipped, an integer >= 0; kept in the state, settable with
        :func:`set_hyperparams`.

    Returns:
      A GradientTransformationExtraArgs whose state is an ApplyIfFiniteState.

    Raises:
      TypeError: if ``inner`` is not a transformation, or the count not an integer.
      ValueError: if the count is negative.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.apply_if_finite(gc.sgd(1.0), max_consecutive_errors=2)
      >>> state = tx.init(jnp.zeros(2))
      >>> updates, state = tx.update(jnp.array([1.0, jnp.nan]), state)
      >>> [float(u) for u in updates], int(state.notfinite_count), bool(state.last_finite)
      ([0.0, 0.0], 1, False)
      >>> updates, state = tx.update(jnp.array([1.0, 2.0]), state)
      >>> [float(u) for u in updates], int(state.total_notfinite)
      ([-1.0, -2.0], 1)
    """
    fn = "apply_if_finite"
    check_transformation(fn, "`inner`", inner)
    count_hyperparameter(fn, "max_consecutive_errors", max_consecutive_errors, 0)
    spec = HyperparamSpec(fn, {"max_consecutive_errors": max_consecutive_errors})

    def init_fn(params: Params) -> ApplyIfFiniteState:
        zero = jnp.zeros([], jnp.int32)
        total = jnp.zeros([], jnp.int32)  # its own buffer: a state can be donated
        return ApplyIfFiniteState(zero, jnp.array(True), total, inner.init(params), spec.init())

    def update_fn(
        updates: Updates, state: ApplyIfFiniteState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, ApplyIfFiniteState]:
        _tree.check_state(fn, state, ApplyIfFiniteState)
        limit = values(state.hparams)["max_consecutive_errors"]
        finite = all_finite(updates)
        errors = jnp.where(finite, 0, _tree.safe_increment(state.notfinite_count))
        apply = finite | (errors.astype(limit.dtype) > limit)
        new_updates, inner_state = update_if(
            fn, apply, inner, updates, state.inner_state, params, extra_args
        )
        total = jnp.where(
            finite, state.total_notfinite, _tree.safe_increment(state.total_notfinite)
        )
        hparams = spec.advance(state.hparams, errors)  # no schedules: checks the names only
        return new_updates, ApplyIfFiniteState(errors, finite, total, inner_state, hparams)

    return GradientTransformationExtraArgs(init_fn, update_fn)


class SkipSpikesState(NamedTuple):
    """State of :func:`skip_spikes`: the running statistics and the last step's verdict.

    Attributes:
      step: int32[], updates seen so far.
      samples: int32[], updates whose statistic entered ``mean`` and ``variance``.
      mean: float32[], exponentially weighted mean of the statistic.
      variance: float32[], exponentially weighted variance of the statistic.
      value: float32[], the statistic of the last update (gradient norm or loss).
      zscore: float32[], ``(value - mean) / std`` of the last update against the
        statistics before it (0 before the first sample, +inf for a NaN or Inf).
      spike: bool[], whether the last update was skipped (or, in clip mode, clipped).
      consecutive_spikes: int32[], spikes in a row, up to the last update.
      total_spikes: int32[], spikes so far.
      inner_state: the inner transformation's state.
      hparams: ``threshold``, ``decay``, ``warmup`` and ``max_consecutive_spikes``.
    """

    step: jax.Array
    samples: jax.Array
    mean: jax.Array
    variance: jax.Array
    value: jax.Array
    zscore: jax.Array
    spike: jax.Array
    consecutive_spikes: jax.Array
    total_spikes: jax.Array
    inner_state: OptState
    hparams: Hyperparams


def _statistic(fn: str, monitor: str, updates: Updates, extra_args: dict[str, Any]) -> jax.Array:
    if monitor == "grad_norm":  # |x|^2 also for complex leaves (_tree.global_norm squares them)
        leaves = jax.tree.leaves(updates)
        dt = _tree.compute_dtype(*(x.dtype for x in leaves))
        squares = [jnp.sum(_tree.abs_sq(x.astype(dt)).real) for x in leaves]
        total = jnp.sum(jnp.stack(squares)) if squares else jnp.zeros([], jnp.float32)
        return jnp.sqrt(total).astype(jnp.float32)
    hint = " Or build it with monitor='grad_norm' to watch the gradient norm instead."
    loss = _tree.objective_value(f"{fn} (monitor='loss')", extra_args.get("value"), hint)
    return loss.astype(jnp.float32)


def skip_spikes(
    inner: AnyTransformation,
    *,
    threshold: ScalarOrSchedule = 6.0,
    warmup: int = 100,
    decay: float = 0.99,
    mode: Literal["skip", "clip"] = "skip",
    monitor: Literal["grad_norm", "loss"] = "grad_norm",
    max_consecutive_spikes: int = 20,
) -> GradientTransformationExtraArgs:
    r"""Skips (or clips) a step whose gradient norm or loss spikes above its running statistics.

    The guard watches a scalar statistic :math:`s_t`: the global norm of the
    incoming updates, or with ``monitor="loss"`` the loss passed as
    ``update(..., value=loss)``. It keeps a running mean and variance of it,
    exponentially weighted (Welford's update with weights, Finch 2009): the
    :math:`n`-th sample enters with weight
    :math:`\alpha_n = \max(1 - \text{decay}, 1/n)`,

    .. math::
      \delta = s_t - m, \quad m \leftarrow m + \alpha_n \delta, \quad
      v \leftarrow (1 - \alpha_n)(v + \alpha_n \delta^2),

    which is the plain mean and variance of the samples until there are
    :math:`1/(1-\text{decay})` of them (so the first ones are not
    underweighted), and an exponentially weighted one after that. It scores
    each step against the statistics *before* it,
    :math:`z_t = (s_t - m) / \max(\sqrt v, 10^{-6} |m|)`. Once ``warmup``
    samples (and at least two) have entered the statistics, a step with
    :math:`z_t >` ``threshold`` is a spike. A NaN or Inf statistic is always a
    spike, also during warmup, and always skipped.

    - ``mode="skip"``: a spike returns zero updates and leaves the inner state
      untouched.
    - ``mode="clip"``: a (finite) spike's updates are rescaled so that their
      norm is :math:`m + \text{threshold} \cdot \sqrt v` and passed on (as in
      ZClip, Kumar et al. 2025). Needs ``monitor="grad_norm"``.

    A spike never enters the statistics, so it cannot raise the bar for the
    next one. If more than ``max_consecutive_spikes`` finite spikes come in a
    row, the level has moved rather than spiked: from then on each one is
    applied as is and enters the statistics, until a step that is not a spike
    resets the count. Everything the guard decides is in the state (``value``,
    ``zscore``, ``spike``, ``mean``, ``variance``, counters), readable after a
    jitted step.

    Args:
      inner: the transformation to guard.
      threshold: the z-score above which a step is a spike, > 0; a number or a
        schedule of the step.
      warmup: samples to collect before spikes are detected, an integer >= 0.
      decay: the weight of the past in the running statistics, in [0, 1);
        0.99 averages over about 100 steps.
      mode: ``"skip"`` or ``"clip"``.
      monitor: ``"grad_norm"`` or ``"loss"``.
      max_consecutive_spikes: finite spikes in a row that are skipped (or
        clipped) before the guard adopts the new level, an integer >= 0.

    Returns:
      A GradientTransformationExtraArgs whose state is a SkipSpikesState.

    Raises:
      TypeError: if ``inner`` is not a transformation or a number is not a number.
      ValueError: if a number is out of range, ``mode`` or ``monitor`` is
        unknown, or clip mode is asked to watch the loss.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.skip_spikes(gc.sgd(1.0), warmup=4, threshold=5.0)
      >>> state, step = tx.init(jnp.zeros(2)), jax.jit(tx.update)
      >>> for g in ([1.0, 1.0], [1.1, 0.9], [0.9, 1.0], [1.0, 1.1], [40.0, 30.0]):
      ...     updates, state = step(jnp.array(g), state)
      >>> bool(state.spike), [float(u) for u in updates], int(state.samples)
      (True, [0.0, 0.0], 4)
      >>> round(float(state.value), 1), float(state.zscore) > 5.0
      (50.0, True)

    References:
      Finch, Incremental calculation of weighted mean and variance, 2009.
      Kumar et al., ZClip: Adaptive Spike Mitigation for LLM Pre-Training, 2025.
    """
    fn = "skip_spikes"
    check_transformation(fn, "`inner`", inner)
    _check.positive(fn, "threshold", threshold, schedule_ok=True)
    _check.decay_rate(fn, "decay", decay)
    count_hyperparameter(fn, "warmup", warmup, 0)
    count_hyperparameter(fn, "max_consecutive_spikes", max_consecutive_spikes, 0)
    if mode not in ("skip", "clip"):
        raise ValueError(f"{fn}: `mode` must be 'skip' or 'clip'; got {mode!r}.")
    if monitor not in ("grad_norm", "loss"):
        raise ValueError(f"{fn}: `monitor` must be 'grad_norm' or 'loss'; got {monitor!r}.")
    if mode == "clip" and monitor == "loss":
        raise ValueError(
            f"{fn}: mode='clip' rescales the gradient to a norm, so it needs "
            f"monitor='grad_norm'; with monitor='loss' use mode='skip'."
        )
    hyperparams: dict[str, ScalarOrSchedule] = dict(
        threshold=threshold,
        decay=decay,
        warmup=warmup,
        max_consecutive_spikes=max_consecutive_spikes,
    )
    spec = HyperparamSpec(fn, hyperparams, rates=("decay",))

    def init_fn(params: Params) -> SkipSpikesState:
        def i0() -> jax.Array:  # a buffer per field: a state can be donated
            return jnp.zeros([], jnp.int32)

        def f0() -> jax.Array:
            return jnp.zeros([], jnp.float32)

        return SkipSpikesState(
            i0(),
            i0(),
            f0(),
            f0(),
            f0(),
            f0(),
            jnp.array(False),
            i0(),
            i0(),
            inner.init(params),
            spec.init(),
        )

    def update_fn(
        updates: Updates, state: SkipSpikesState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, SkipSpikesState]:
        _tree.check_state(fn, state, SkipSpikesState)
        _tree.check_no_float0(fn, "updates", updates)
        hp = values(state.hparams)
        alpha = state.hparams.complement["decay"]
        value = _statistic(fn, monitor, updates, extra_args)
        finite = jnp.isfinite(value)

        # Score against the statistics before this step.
        std = jnp.maximum(jnp.sqrt(state.variance), _STD_FLOOR * jnp.abs(state.mean))
        std = jnp.maximum(std, np.finfo(np.float32).tiny)
        has_samples = state.samples > 0
        zscore = jnp.where(finite, (value - state.mean) / std, jnp.inf)
        zscore = jnp.where(has_samples | ~finite, zscore, 0.0).astype(jnp.float32)
        seen = state.samples.astype(jnp.float32)
        detecting = (seen >= hp["warmup"]) & (state.samples >= 2)
        outlier = detecting & finite & (zscore > hp["threshold"])
        flagged = outlier | ~finite
        consecutive = jnp.where(flagged, _tree.safe_increment(state.consecutive_spikes), 0)
        adopt = outlier & (consecutive.astype(jnp.float32) > hp["max_consecutive_spikes"])
        spike = flagged & ~adopt

        # Only steps that are not spikes enter the statistics. The n-th sample weighs
        # max(1 - decay, 1 / n): a plain running mean and variance at first.
        learn = finite & ~spike
        delta = value - state.mean
        weight = 1 / _tree.safe_increment(state.samples).astype(jnp.float32)
        running = weight > alpha
        weight = jnp.where(running, weight, alpha)
        keep = jnp.where(running, 1 - weight, hp["decay"])
        mean = state.mean + weight * delta
        variance = keep * (state.variance + weight * delta * delta)
        mean = jnp.where(learn, mean, state.mean).astype(jnp.float32)
        variance = jnp.where(learn, variance, state.variance).astype(jnp.float32)
        samples = jnp.where(learn, _tree.safe_increment(state.samples), state.samples)

        if mode == "skip":
            apply = ~spike
        else:
            apply = finite
            limit = state.mean + hp["threshold"] * std
            scale = jnp.where(spike & finite, limit / value, 1.0).astype(jnp.float32)

            def clip(u: jax.Array) -> jax.Array:
                uc, sc = _tree.upcast(u, scale)
                return (uc * sc).astype(u.dtype)

            updates = jax.tree.map(clip, updates)
        new_updates, inner_state = update_if(
            fn, apply, inner, updates, state.inner_state, params, extra_args
        )
        total = jnp.where(spike, _tree.safe_increment(state.total_spikes), state.total_spikes)
        step = _tree.safe_increment(state.step)
        new_state = SkipSpikesState(
            step,
            samples,
            mean,
            variance,
            value,
            zscore,
            spike,
            consecutive,
            total,
            inner_state,
            spec.advance(state.hparams, step),
        )
        return new_updates, new_state

    return GradientTransformationExtraArgs(init_fn, update_fn)
