"""Conditional wrappers (conditionally_transform, conditionally_mask) and maximize.

The wrappers call their inner transformation through ``lax.cond``: on the
steps where the condition is false the inner update does not run at all
(under ``vmap`` JAX turns the ``cond`` into a select of both branches).

``maximize()`` is a transform, not a ``maximize=`` argument of every
optimizer: put it first in a chain, ``gc.chain(gc.maximize(), gc.adamw(...))``,
and any optimizer, alias or hand-made chain ascends. First is the right place
because the sign must flip before anything that is not odd in the gradient
(weight decay added afterwards still pulls towards zero; a flip at the end
would push away from it). An argument would have to be added to every alias
and would be easy to forget on a hand-made chain.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradchain import _tree
from gradchain._base import (
    AnyTransformation,
    EmptyState,
    GradientTransformation,
    GradientTransformationExtraArgs,
    OptState,
    Params,
    Updates,
    call_update,
    check_transformation,
)

ConditionFn = Callable[..., Any]
"""``should_transform_fn(step, **extra_args) -> bool[]``."""


class ConditionallyTransformState(NamedTuple):
    """State of :func:`conditionally_transform` (fields in Optax's order).

    Attributes:
      inner_state: the inner transformation's state, unchanged on skipped steps.
      step: int32[], updates seen so far (all of them, applied or not).
    """

    inner_state: OptState
    step: jax.Array


class ConditionallyMaskState(NamedTuple):
    """State of :func:`conditionally_mask` (fields in Optax's order).

    Attributes:
      step: int32[], updates seen so far (all of them, applied or not).
      inner_state: the inner transformation's state, unchanged on masked steps.
    """

    step: jax.Array
    inner_state: OptState


def _signature(tree: Any) -> Any:
    return jax.tree.structure(tree), [
        (jnp.shape(x), jnp.result_type(x)) for x in jax.tree.leaves(tree)
    ]


def _condition(
    fn: str, should_transform_fn: ConditionFn, step: jax.Array, extra_args: dict[str, Any]
) -> jax.Array:
    out = should_transform_fn(step, **extra_args)
    try:
        pred = jnp.asarray(out)
    except TypeError:
        pred = None
    if pred is None or pred.shape != () or pred.dtype != jnp.bool_:
        got = f"{pred.dtype}{list(pred.shape)}" if pred is not None else type(out).__name__
        raise TypeError(
            f"{fn}: `should_transform_fn` must return a boolean scalar; got {got}. "
            f"Compare the step, e.g. `lambda step: step % 4 == 0`."
        )
    return pred


def _conditional(
    fn: str,
    state_type: type[Any],
    inner: AnyTransformation,
    should_transform_fn: ConditionFn,
    forward_extra_args: bool,
    zero_when_skipped: bool,
) -> GradientTransformationExtraArgs:
    check_transformation(fn, "`inner`", inner)
    if not callable(should_transform_fn):
        raise TypeError(
            f"{fn}: `should_transform_fn` must be a function of the step; got "
            f"{type(should_transform_fn).__name__} {should_transform_fn!r:.60}."
        )

    def make(step: jax.Array, inner_state: OptState) -> Any:
        if state_type is ConditionallyTransformState:
            return ConditionallyTransformState(inner_state, step)
        return ConditionallyMaskState(step, inner_state)

    def init_fn(params: Params) -> Any:
        return make(jnp.zeros([], jnp.int32), inner.init(params))

    def update_fn(
        updates: Updates, state: Any, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, Any]:
        _tree.check_state(fn, state, state_type)
        pred = _condition(
            fn, should_transform_fn, state.step, extra_args if forward_extra_args else {}
        )

        def apply(updates: Updates, inner_state: OptState) -> tuple[Updates, OptState]:
            new_updates, new_state = call_update(inner, updates, inner_state, params, extra_args)
            for name, before, after in (
                ("updates", updates, new_updates),
                ("state", inner_state, new_state),
            ):
                if _signature(before) != _signature(after):
                    raise TypeError(
                        f"{fn}: the inner transformation changes the structure, shapes or "
                        f"dtypes of its {name}, so a skipped step could not return the same "
                        f"kind of value: {_signature(before)} became {_signature(after)}. "
                        f"Wrap a transformation that keeps them (every gradchain one does)."
                    )
            return new_updates, new_state

        def skip(updates: Updates, inner_state: OptState) -> tuple[Updates, OptState]:
            if zero_when_skipped:
                updates = jax.tree.map(jnp.zeros_like, updates)
            return updates, inner_state

        new_updates, inner_state = jax.lax.cond(pred, apply, skip, updates, state.inner_state)
        return new_updates, make(_tree.safe_increment(state.step), inner_state)

    return GradientTransformationExtraArgs(init_fn, update_fn)


def conditionally_transform(
    inner: AnyTransformation,
    should_transform_fn: ConditionFn,
    forward_extra_args: bool = False,
) -> GradientTransformationExtraArgs:
    """Applies ``inner`` on the steps ``should_transform_fn`` picks; elsewhere passes updates.

    On the other steps the updates come out unchanged and the inner state is
    kept as it is. The step counter counts every call.

    Args:
      inner: the transformation to apply.
      should_transform_fn: ``f(step) -> bool[]``, called with the number of
        previous updates (int32); with ``forward_extra_args``, also with the
        extra keyword arguments given to ``update``.
      forward_extra_args: whether ``should_transform_fn`` receives them
        (``inner`` always does, if it accepts them).

    Returns:
      A GradientTransformationExtraArgs whose state is a ConditionallyTransformState.

    Raises:
      TypeError: if ``inner`` is not a transformation, or (while tracing) the
        function returns anything but a boolean scalar.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.conditionally_transform(gc.scale(10.0), lambda step: step % 2 == 1)
      >>> state = tx.init(jnp.zeros(1))
      >>> out = []
      >>> for _ in range(3):
      ...     updates, state = tx.update(jnp.ones(1), state)
      ...     out.append(float(updates[0]))
      >>> out
      [1.0, 10.0, 1.0]
    """
    return _conditional(
        "conditionally_transform",
        ConditionallyTransformState,
        inner,
        should_transform_fn,
        forward_extra_args,
        zero_when_skipped=False,
    )


def conditionally_mask(
    inner: AnyTransformation,
    should_transform_fn: ConditionFn,
    forward_extra_args: bool = False,
) -> GradientTransformationExtraArgs:
    """Applies ``inner`` on the steps ``should_transform_fn`` picks; elsewhere zero updates.

    On the other steps the updates are zeros (the parameters stay put) and the
    inner state is kept as it is. The step counter counts every call.

    Args:
      inner: the transformation to apply.
      should_transform_fn: ``f(step) -> bool[]``, called with the number of
        previous updates (int32); with ``forward_extra_args``, also with the
        extra keyword arguments given to ``update``.
      forward_extra_args: whether ``should_transform_fn`` receives them
        (``inner`` always does, if it accepts them).

    Returns:
      A GradientTransformationExtraArgs whose state is a ConditionallyMaskState.

    Raises:
      TypeError: if ``inner`` is not a transformation, or (while tracing) the
        function returns anything but a boolean scalar.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.conditionally_mask(gc.sgd(1.0), lambda step, loss: loss < 2.0, True)
      >>> state = tx.init(jnp.zeros(1))
      >>> u, state = tx.update(jnp.ones(1), state, loss=jnp.array(5.0))
      >>> v, state = tx.update(jnp.ones(1), state, loss=jnp.array(1.0))
      >>> float(u[0]), float(v[0])
      (0.0, -1.0)
    """
    return _conditional(
        "conditionally_mask",
        ConditionallyMaskState,
        inner,
        should_transform_fn,
        forward_extra_args,
        zero_when_skipped=True,
    )


def maximize() -> GradientTransformation:
    """Negates the updates, so that the chain it starts ascends the objective.

    Put it first: ``gc.chain(gc.maximize(), gc.adam(1e-3))`` maximises with Adam
    (see the module docstring for why first, and why a transform).

    Returns:
      A GradientTransformation whose state is an EmptyState.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.chain(gc.maximize(), gc.sgd(0.1))
      >>> updates, _ = tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))
      >>> round(float(updates[0]), 3)  # along the gradient: uphill
      0.2
    """

    def init_fn(params: Params) -> EmptyState:
        del params
        return EmptyState()

    def update_fn(
        updates: Updates, state: EmptyState, params: Params | None = None
    ) -> tuple[Updates, EmptyState]:
        del params
        _tree.check_state("maximize", state, EmptyState)
        _tree.check_no_float0("maximize", "updates", updates)
        return jax.tree.map(jnp.negative, updates), state

    return GradientTransformation(init_fn, update_fn)
