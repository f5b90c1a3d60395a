"""Gradient accumulation: apply_every and multi_steps / MultiSteps (Optax's API).

Both hold one parameter-sized accumulator and nothing else parameter-sized.
Optax's ``MultiSteps`` runs its inner update on every mini-step, keeps both the
old and the new inner state to select between them, and zeroes its accumulator
into a second buffer; under ``jit`` with donated state XLA then allocates
three parameter-sized temporaries for Adam (optax issues #472, #528). Here:

- the inner update runs only in the branch of a ``lax.cond`` that applies it,
  so the inner state is updated in place or passed through;
- the accumulator is reset lazily: a step that starts a cycle (``mini_step ==
  0``) overwrites it instead of adding to it, so no step both reads the
  accumulator for the inner update and writes zeros over it, and XLA updates
  it in place. After an emitting step, ``acc_grads`` still holds the mean (or
  sum) that was passed on, where Optax's holds zeros.

``tests/test_accumulate.py`` measures it with ``memory_analysis()`` on a
9.4M-parameter MLP (P = 36.0 MiB of float32), params and state donated: an
Adam training step peaks at 5.0 P (params, grads, Adam's two moments, the
accumulator) where Optax's MultiSteps peaks at 6.2 P; given the gradients, the
one temporary is the inner update's output leaving the ``cond`` (1 P; Optax's 3 P).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from gradchain import _check, _tree
from gradchain._base import (
    AnyTransformation,
    GradientTransformation,
    GradientTransformationExtraArgs,
    OptState,
    Params,
    Schedule,
    Updates,
    check_transformation,
)
from gradchain._guards import count_hyperparameter, update_if
from gradchain._hyperparams import Hyperparams, HyperparamSpec, values


def _reached(mini_step: jax.Array, k: jax.Array) -> jax.Array:
    """Whether the mini-step that ``mini_step`` counts from 0 completes a cycle of ``k``."""
    return (mini_step + 1).astype(k.dtype) >= k


class ApplyEvery(NamedTuple):
    """State of :func:`apply_every`.

    Attributes:
      mini_step: int32[], updates accumulated in the current cycle (Optax's
        ``count``, a name that shadows ``tuple.count``).
      grad_acc: the sum of this cycle's updates; after an emitting step, the
        sum it emitted (the next step overwrites it).
      hparams: holds ``k``.
    """

    mini_step: jax.Array
    grad_acc: Updates
    hparams: Hyperparams


def apply_every(k: int = 1, *, accumulator_dtype: Any | None = None) -> GradientTransformation:
    """Sums updates over ``k`` steps and emits the sum every ``k``-th step (Optax's).

    Steps in between return zeros. This transform sits in a chain: the members
    before it still update their states on every step. To accumulate gradients
    before an optimizer (a larger batch), use :func:`multi_steps` (mean or sum).

    Args:
      k: steps per emitted sum, an integer >= 1; kept in the state.
      accumulator_dtype: dtype of the running sum; the parameters' by default
        (as Optax starts). The sum of a step is computed in float32 or wider.

    Returns:
      A GradientTransformation whose state is an ApplyEvery.

    Raises:
      TypeError: if ``k`` is not an integer.
      ValueError: if ``k`` < 1, or the dtype is not a float.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.apply_every(3)
      >>> state = tx.init(jnp.zeros(1))
      >>> out = []
      >>> for g in (1.0, 2.0, 4.0, 8.0):
      ...     updates, state = tx.update(jnp.array([g]), state)
      ...     out.append(float(updates[0]))
      >>> out
      [0.0, 0.0, 7.0, 0.0]
    """
    fn = "apply_every"
    count_hyperparameter(fn, "k", k, 1)
    acc_dt = _check.dtype_or_none(fn, "accumulator_dtype", accumulator_dtype)
    spec = HyperparamSpec(fn, {"k": k})

    def init_fn(params: Params) -> ApplyEvery:
        acc = _tree.zeros_like(params, acc_dt)
        return ApplyEvery(jnp.zeros([], jnp.int32), acc, spec.init())

    def update_fn(
        updates: Updates, state: ApplyEvery, params: Params | None = None
    ) -> tuple[Updates, ApplyEvery]:
        del params
        _tree.check_state(fn, state, ApplyEvery)
        _tree.check_matches(fn, updates, "state.grad_acc", state.grad_acc)
        n = state.mini_step
        first = n == 0
        emit = _reached(n, values(state.hparams)["k"])

        def leaf(g: jax.Array, a: jax.Array) -> tuple[jax.Array, jax.Array]:
            gc, ac = _tree.upcast(g, a)
            total = jnp.where(first, gc, ac + gc)
            out = jnp.where(emit, total, jnp.zeros_like(total))
            return out.astype(g.dtype), total.astype(a.dtype)

        new_updates, acc = _tree.map_leaves(leaf, 2, updates, state.grad_acc)
        mini_step = jnp.where(emit, 0, n + 1).astype(jnp.int32)
        return new_updates, ApplyEvery(mini_step, acc, spec.advance(state.hparams, n))

    return GradientTransformation(init_fn, update_fn)


class ShouldSkipUpdateFunction(Protocol):
    """``should_skip_update_fn(updates, gradient_step, params) -> (bool[], skip_state)``."""

    def __call__(
        self, updates: Updates, gradient_step: jax.Array, params: Params | None
    ) -> tuple[jax.Array, Any]: ...


def skip_not_finite(
    updates: Updates, gradient_step: jax.Array, params: Params | None
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """A ``should_skip_update_fn`` for :func:`multi_steps`: skip updates holding a NaN or an Inf.

    Args:
      updates: the mini-step's updates.
      gradient_step: unused.
      params: unused.

    Returns:
      ``(should_skip, {"should_skip": bool[], "num_not_finite": int32[]})``.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> skip, info = gc.skip_not_finite({"w": jnp.array([1.0, jnp.inf])}, 0, None)
      >>> bool(skip), int(info["num_not_finite"])
      (True, 1)
    """
    del gradient_step, params
    counts = [jnp.sum(~jnp.isfinite(x), dtype=jnp.int32) for x in jax.tree.leaves(updates)]
    num = jnp.sum(jnp.stack(counts)) if counts else jnp.zeros([], jnp.int32)
    should_skip = num > 0
    return should_skip, {"should_skip": should_skip, "num_not_finite": num}


def skip_large_updates(
    updates: Updates,
    gradient_step: jax.Array,
    params: Params | None,
    max_squared_norm: jax.typing.ArrayLike,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """A ``should_skip_update_fn`` for :func:`multi_steps`: skip updates of a large norm.

    Bind the limit first: ``functools.partial(gc.skip_large_updates,
    max_squared_norm=42.0)``. The squared norm is summed in float32 (or
    wider); a NaN norm is skipped too.

    Args:
      updates: the mini-step's updates.
      gradient_step: unused.
      params: unused.
      max_squared_norm: the largest squared global norm accepted, >= 0.

    Returns:
      ``(should_skip, {"should_skip": bool[], "norm_squared": float32[]})``.

    Raises:
      ValueError: if ``max_squared_norm`` is a negative or NaN number.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> skip, info = gc.skip_large_updates(jnp.array([3.0, 4.0]), 0, None, 20.0)
      >>> bool(skip), float(info["norm_squared"])
      (True, 25.0)
    """
    del gradient_step, params
    _check.in_range("skip_large_updates", "max_squared_norm", max_squared_norm, 0.0, None)
    leaves = jax.tree.leaves(updates)
    dt = _tree.compute_dtype(*(x.dtype for x in leaves))
    squares = [jnp.sum(_tree.abs_sq(x.astype(dt))).real for x in leaves]
    norm_sq = jnp.sum(jnp.stack(squares)) if squares else jnp.zeros([], dt)
    should_skip = ~(norm_sq < jnp.asarray(max_squared_norm, dt))
    return should_skip, {"should_skip": should_skip, "norm_squared": norm_sq}


def _never_skip(updates: Updates, gradient_step: jax.Array, params: Params | None) -> Any:
    del updates, gradient_step, params
    return jnp.array(False), ()


class MultiStepsState(NamedTuple):
    """State of :func:`multi_steps` and :class:`MultiSteps` (Optax's fields, and hparams).

    Attributes:
      mini_step: int32[], accepted mini-steps in the current cycle; 0 after
        an emitting step.
      gradient_step: int32[], inner updates so far.
      inner_opt_state: the inner optimizer's state.
      acc_grads: the running mean (or sum) of this cycle's gradients, in the
        accumulator dtype; after an emitting step, the one that was passed to
        the inner optimizer (Optax's holds zeros; the next mini-step overwrites it).
      skip_state: what ``should_skip_update_fn`` returned last.
      hparams: holds ``every_k_schedule`` (its value for the next update).
    """

    mini_step: jax.Array
    gradient_step: jax.Array
    inner_opt_state: OptState
    acc_grads: Updates
    skip_state: Any = ()
    hparams: Hyperparams | None = None


def multi_steps(
    opt: AnyTransformation,
    every_k_schedule: int | Schedule,
    use_grad_mean: bool = True,
    should_skip_update_fn: ShouldSkipUpdateFunction | None = None,
    accumulator_dtype: Any | None = jnp.float32,
) -> GradientTransformationExtraArgs:
    r"""Accumulates gradients over ``k`` mini-steps, then applies ``opt`` once (a larger batch).

    Each call adds the gradients to an accumulator (the running mean
    :math:`a \leftarrow a + (g - a)/(n+1)` when ``use_grad_mean``, else the
    sum) and returns zeros; the ``k``-th call passes the accumulated gradients
    to ``opt`` and returns its updates. ``k = every_k_schedule`` (or
    ``every_k_schedule(gradient_step)``, to grow the batch during training) is
    kept in the state as a float32 scalar, settable with :func:`set_hyperparams`.
    A mini-step that ``should_skip_update_fn`` rejects changes nothing but
    ``skip_state``. The memory it needs: one accumulator (see the module notes).

    Args:
      opt: the optimizer to apply every ``k`` mini-steps.
      every_k_schedule: ``k``, an integer >= 1, or a function of the gradient
        step returning it.
      use_grad_mean: average the gradients (True) or sum them.
      should_skip_update_fn: ``f(updates, gradient_step, params) -> (bool[],
        pytree)``, e.g. :func:`skip_not_finite`.
      accumulator_dtype: dtype of the accumulator (float32, as Optax), or
        None for the parameters' dtype.

    Returns:
      A GradientTransformationExtraArgs whose state is a MultiStepsState.

    Raises:
      TypeError: if ``opt`` is not a transformation, or ``k`` not an integer.
      ValueError: if ``k`` < 1, or the dtype is not a float; at trace time, if
        ``should_skip_update_fn`` returns something other than a bool scalar.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.multi_steps(gc.sgd(1.0), every_k_schedule=2)
      >>> state = tx.init(jnp.zeros(1))
      >>> out = []
      >>> for g in (1.0, 3.0, 5.0, 9.0):
      ...     updates, state = tx.update(jnp.array([g]), state)
      ...     out.append(float(updates[0]))
      >>> out, int(state.gradient_step)
      ([0.0, -2.0, 0.0, -7.0], 2)
    """
    fn = "multi_steps"
    check_transformation(fn, "`opt`", opt)
    if not _check.is_schedule(every_k_schedule):
        count_hyperparameter(fn, "every_k_schedule", every_k_schedule, 1)
    acc_dt = _check.dtype_or_none(fn, "accumulator_dtype", accumulator_dtype)
    spec = HyperparamSpec(fn, {"every_k_schedule": every_k_schedule})
    skip_fn: Callable[..., Any] = should_skip_update_fn or _never_skip

    def should_skip(updates: Updates, gradient_step: jax.Array, params: Params | None) -> Any:
        out = skip_fn(updates, gradient_step, params)
        skip = out[0] if isinstance(out, tuple) and len(out) == 2 else None
        if skip is None or jnp.shape(skip) != () or jnp.result_type(skip) != jnp.bool_:
            got = (
                f"a first element of dtype {jnp.result_type(skip)} and shape {jnp.shape(skip)}"
                if skip is not None
                else f"{type(out).__name__} {out!r:.60}"
            )
            raise ValueError(
                f"{fn}: `should_skip_update_fn` must return (a bool scalar, a pytree); it "
                f"returned {got}. Return a comparison, e.g. `(norm > limit, {{}})`."
            )
        return out

    def init_fn(params: Params) -> MultiStepsState:
        step = jnp.zeros([], jnp.int32)
        _, skip_state = should_skip(_tree.zeros_like(params), step, params)
        acc = _tree.zeros_like(params, acc_dt)
        gradient_step = jnp.zeros([], jnp.int32)  # its own buffer: a state can be donated
        return MultiStepsState(step, gradient_step, opt.init(params), acc, skip_state, spec.init())

    def update_fn(
        updates: Updates, state: MultiStepsState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, MultiStepsState]:
        _tree.check_state(fn, state, MultiStepsState)
        if not isinstance(state.hparams, Hyperparams):
            raise TypeError(
                f"{fn}: `state.hparams` is {type(state.hparams).__name__}, not the hyperparameters "
                f"this transformation's init stores. Pass the state from this transformation's "
                f"own init (a MultiStepsState built by hand lacks them)."
            )
        _tree.check_matches(fn, updates, "state.acc_grads", state.acc_grads)
        skip, skip_state = should_skip(updates, state.gradient_step, params)
        accept = ~skip
        n = state.mini_step
        first = n == 0

        def leaf(g: jax.Array, a: jax.Array) -> tuple[jax.Array]:
            gc, ac = _tree.upcast(g, a)
            added = ac + (gc - ac) / (n + 1).astype(ac.dtype) if use_grad_mean else ac + gc
            new = jnp.where(accept, jnp.where(first, gc, added), ac)
            return (new.astype(a.dtype),)

        (acc,) = _tree.map_leaves(leaf, 1, updates, state.acc_grads)
        emit = accept & _reached(n, values(state.hparams)["every_k_schedule"])
        accumulated = jax.tree.map(lambda a, g: a.astype(g.dtype), acc, updates)
        new_updates, inner_state = update_if(
            fn, emit, opt, accumulated, state.inner_opt_state, params, extra_args
        )
        mini_step = jnp.where(accept, jnp.where(emit, 0, n + 1), n).astype(jnp.int32)
        gradient_step = jnp.where(
            emit, _tree.safe_increment(state.gradient_step), state.gradient_step
        )
        hparams = spec.advance(state.hparams, gradient_step)
        new_state = MultiStepsState(mini_step, gradient_step, inner_state, acc, skip_state, hparams)
        return new_updates, new_state

    return GradientTransformationExtraArgs(init_fn, update_fn)


class MultiSteps:
    """Optax's ``MultiSteps`` class: :func:`multi_steps` with ``init``, ``update`` and more.

    Errors name ``multi_steps``, which does the work.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> ms = gc.MultiSteps(gc.sgd(1.0), every_k_schedule=2, use_grad_mean=False)
      >>> state = ms.init(jnp.zeros(1))
      >>> updates, state = ms.update(jnp.array([1.0]), state)
      >>> bool(ms.has_updated(state))
      False
      >>> updates, state = ms.update(jnp.array([3.0]), state)
      >>> bool(ms.has_updated(state)), float(updates[0])
      (True, -4.0)
    """

    def __init__(
        self,
        opt: AnyTransformation,
        every_k_schedule: int | Schedule,
        use_grad_mean: bool = True,
        should_skip_update_fn: ShouldSkipUpdateFunction | None = None,
        accumulator_dtype: Any | None = jnp.float32,
    ) -> None:
        self._opt = opt
        self._tx = multi_steps(
            opt, every_k_schedule, use_grad_mean, should_skip_update_fn, accumulator_dtype
        )

    @property
    def inner_opt(self) -> AnyTransformation:
        """The wrapped optimizer."""
        return self._opt

    def init(self, params: Params) -> MultiStepsState:
        """The initial state: zero counters and accumulator, ``opt``'s initial state."""
        return self._tx.init(params)

    def update(
        self,
        updates: Updates,
        state: MultiStepsState,
        params: Params | None = None,
        **extra_args: Any,
    ) -> tuple[Updates, MultiStepsState]:
        """Accumulates ``updates``; every ``k``-th accepted call returns ``opt``'s updates."""
        return self._tx.update(updates, state, params, **extra_args)

    def has_updated(self, state: MultiStepsState) -> jax.Array:
        """Whether the update that produced ``state`` applied the inner optimizer."""
        return jnp.logical_and(state.mini_step == 0, state.gradient_step > 0)

    def gradient_transformation(self) -> GradientTransformationExtraArgs:
        """The same transformation as a (init, update) pair, for chains and the like."""
        return self._tx
