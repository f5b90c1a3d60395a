"""Core types: GradientTransformation, its extra-args form, and the trivial transforms."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, TypeAlias

import jax
import jax.numpy as jnp

from gradchain import _tree

Params: TypeAlias = Any
"""A pytree of arrays: the parameters being optimised."""
Updates: TypeAlias = Any
"""A pytree of arrays shaped like the parameters: gradients or updates."""
OptState: TypeAlias = Any
"""A pytree holding a transformation's state."""
Schedule: TypeAlias = Callable[[Any], Any]
"""A function from an integer step to a scalar value."""
ScalarOrSchedule: TypeAlias = float | jax.Array | Schedule
"""A hyperparameter given as a number, a scalar array or a schedule."""


class TransformInitFn(Protocol):
    """Builds a transformation's initial state from the parameters."""

    def __call__(self, params: Params) -> OptState: ...


class TransformUpdateFn(Protocol):
    """Maps (updates, state, params) to (new updates, new state)."""

    def __call__(
        self, updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]: ...


class TransformUpdateExtraArgsFn(Protocol):
    """An update function that also accepts keyword arguments (value, grad, ...)."""

    def __call__(
        self,
        updates: Updates,
        state: OptState,
        params: Params | None = None,
        **extra_args: Any,
    ) -> tuple[Updates, OptState]: ...


class GradientTransformation(NamedTuple):
    """A pure pair of functions that transforms gradients into updates.

    Attributes:
      init: ``init(params) -> state``.
      update: ``update(updates, state, params=None) -> (updates, state)``.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.scale(-0.5)
      >>> state = tx.init(jnp.ones(2))
      >>> updates, state = tx.update(jnp.array([2.0, 4.0]), state)
      >>> [float(u) for u in updates]
      [-1.0, -2.0]
    """

    init: TransformInitFn
    update: TransformUpdateFn


class GradientTransformationExtraArgs(NamedTuple):
    """A GradientTransformation whose ``update`` accepts extra keyword arguments.

    :func:`chain` passes each keyword argument it receives on to every member
    of this kind; members of the plain kind never see them.

    Attributes:
      init: ``init(params) -> state``.
      update: ``update(updates, state, params=None, **extra_args)``.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.with_extra_args_support(gc.scale(2.0))
      >>> state = tx.init(jnp.ones(1))
      >>> updates, _ = tx.update(jnp.ones(1), state, value=jnp.array(3.0))
      >>> float(updates[0])
      2.0
    """

    init: TransformInitFn
    update: TransformUpdateExtraArgsFn


AnyTransformation: TypeAlias = GradientTransformation | GradientTransformationExtraArgs


class EmptyState(NamedTuple):
    """The state of a stateless transformation: an empty NamedTuple."""


def _init_empty(params: Params) -> EmptyState:
    del params
    return EmptyState()


def identity() -> GradientTransformation:
    """Returns updates unchanged.

    Returns:
      A GradientTransformation whose state is an EmptyState.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.identity()
      >>> updates, _ = tx.update(jnp.array([1.5]), tx.init(jnp.zeros(1)))
      >>> float(updates[0])
      1.5
    """

    def update_fn(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]:
        del params
        _tree.check_state("identity", state, EmptyState)
        return updates, state

    return GradientTransformation(_init_empty, update_fn)


def set_to_zero() -> GradientTransformation:
    """Replaces every update by zeros of the same shape and dtype (freezes parameters).

    Returns:
      A GradientTransformation whose state is an EmptyState.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.set_to_zero()
      >>> updates, _ = tx.update(jnp.array([1.5]), tx.init(jnp.zeros(1)))
      >>> float(updates[0])
      0.0
    """

    def update_fn(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]:
        del params
        _tree.check_state("set_to_zero", state, EmptyState)
        return jax.tree.map(jnp.zeros_like, updates), state

    return GradientTransformation(_init_empty, update_fn)


def stateless(
    f: Callable[[Updates, Params | None], Updates],
) -> GradientTransformation:
    """Builds a stateless transformation from ``f(updates, params) -> updates``.

    Args:
      f: a function of the whole updates tree and the parameters (which may be
        ``None``), returning a tree of the same structure.

    Returns:
      A GradientTransformation whose state is an EmptyState.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.stateless(lambda u, p: jax.tree.map(lambda x: 3 * x, u))
      >>> updates, _ = tx.update({"w": jnp.ones(1)}, tx.init(None))
      >>> float(updates["w"][0])
      3.0
    """

    def update_fn(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]:
        _tree.check_state("stateless", state, EmptyState)
        new_updates = f(updates, params)
        _tree.check_same_structure("stateless", "updates", updates, "f(updates)", new_updates)
        return new_updates, state

    return GradientTransformation(_init_empty, update_fn)


def stateless_with_tree_map(
    f: Callable[[jax.Array, jax.Array | None], jax.Array],
) -> GradientTransformation:
    """Builds a stateless transformation applying ``f(update, param)`` leaf by leaf.

    Args:
      f: a function of one update leaf and the matching parameter leaf (``None``
        when ``update`` is called without parameters).

    Returns:
      A GradientTransformation whose state is an EmptyState.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.stateless_with_tree_map(lambda u, p: u + p)
      >>> params = {"w": jnp.array([1.0])}
      >>> updates, _ = tx.update({"w": jnp.array([2.0])}, tx.init(params), params)
      >>> float(updates["w"][0])
      3.0
    """

    def update_fn(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]:
        _tree.check_state("stateless_with_tree_map", state, EmptyState)
        if params is None:
            return jax.tree.map(lambda u: f(u, None), updates), state
        _tree.check_matches("stateless_with_tree_map", updates, "params", params)
        return jax.tree.map(f, updates, params), state

    return GradientTransformation(_init_empty, update_fn)


def with_extra_args_support(tx: AnyTransformation) -> GradientTransformationExtraArgs:
    """Wraps a transformation so that its ``update`` accepts and ignores extra kwargs.

    Args:
      tx: a GradientTransformation; one that already supports extra arguments
        is returned as it is.

    Returns:
      A GradientTransformationExtraArgs with the same state as ``tx``.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.with_extra_args_support(gc.identity())
      >>> updates, _ = tx.update(jnp.ones(1), tx.init(None), loss=jnp.array(1.0))
      >>> float(updates[0])
      1.0
    """
    if isinstance(tx, GradientTransformationExtraArgs):
        return tx

    def update_fn(
        updates: Updates,
        state: OptState,
        params: Params | None = None,
        **extra_args: Any,
    ) -> tuple[Updates, OptState]:
        del extra_args
        return tx.update(updates, state, params)

    return GradientTransformationExtraArgs(tx.init, update_fn)


def accepts_extra_args(tx: AnyTransformation) -> bool:
    """Whether ``tx.update`` takes keyword arguments beyond (updates, state, params)."""
    if isinstance(tx, GradientTransformationExtraArgs):
        return True
    try:
        parameters = inspect.signature(tx.update).parameters.values()
    except (TypeError, ValueError):  # builtins and C callables have no signature
        return False
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def apply_updates(params: Params, updates: Updates) -> Params:
    """Adds updates to parameters, returning parameters in their own dtypes.

    The sum is computed in float32 (or the wider of the two dtypes) and cast
    back to the parameter's dtype, so bfloat16 parameters stay bfloat16 even when the
    updates are float32. ``None`` leaves in ``params`` pass through.

    Args:
      params: the parameters.
      updates: a tree of the same structure and shapes.

    Returns:
      The updated parameters.

    Raises:
      ValueError: if the trees differ in structure or in a leaf's shape.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> params = {"w": jnp.ones(2, jnp.bfloat16)}
      >>> new = gc.apply_updates(params, {"w": jnp.full(2, -0.5)})
      >>> str(new["w"].dtype), float(new["w"][0])
      ('bfloat16', 0.5)
    """
    _tree.check_same_structure("apply_updates", "params", params, "updates", updates)
    _tree.check_same_shapes("apply_updates", "params", params, "updates", updates)

    def add(p: jax.Array | None, u: jax.Array | None) -> jax.Array | None:
        if p is None:
            return None
        p, u = jnp.asarray(p), jnp.asarray(u)
        wide = _tree.compute_dtype(p.dtype, u.dtype)
        return (p.astype(wide) + u.astype(wide)).astype(p.dtype)

    return jax.tree.map(add, params, updates, is_leaf=lambda x: x is None)


def call_update(
    tx: AnyTransformation,
    updates: Updates,
    state: OptState,
    params: Params | None,
    extra_args: dict[str, Any],
) -> tuple[Updates, OptState]:
    """Calls ``tx.update``, passing ``extra_args`` only if it accepts them."""
    if accepts_extra_args(tx):
        return tx.update(updates, state, params, **extra_args)
    return tx.update(updates, state, params)


def check_transformation(fn: str, where: str, tx: Any) -> None:
    """Raises a TypeError naming ``fn`` unless ``tx`` has ``init`` and ``update``.

    The usual mistake is a factory passed uncalled (``gc.scale_by_adam``), so
    the message names it and shows the call.
    """
    if hasattr(tx, "init") and hasattr(tx, "update"):
        return
    name = getattr(tx, "__name__", None) if callable(tx) else None
    what = f"the function `{name}`" if name else f"a {type(tx).__name__} {tx!r:.60}"
    example = name or "scale_by_adam"
    raise TypeError(
        f"{fn}: {where} is {what}, not a gradient transformation (an object with `init` "
        f"and `update`). Did you pass a factory without calling it, e.g. `gc.{example}` "
        f"instead of `gc.{example}()`?"
    )
