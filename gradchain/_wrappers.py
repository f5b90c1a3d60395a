"""Wrappers: masked (apply a transform to some leaves) and inject_hyperparams (Optax's API)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer

from gradchain import _check, _keypaths, _tree
from gradchain._base import (
    AnyTransformation,
    GradientTransformationExtraArgs,
    OptState,
    Params,
    Updates,
    call_update,
    check_transformation,
)
from gradchain._flat_params import refuse_flat_params
from gradchain._hyperparams import Hyperparams, injected_state


class MaskedNode(NamedTuple):
    """Stands in for a masked-out leaf: an empty node, so the inner state has no entry for it."""


class MaskedState(NamedTuple):
    """State of :func:`masked`."""

    inner_state: OptState


MaskOrFn = Any | Callable[[Params], Any]


def _is_masked_node(x: Any) -> bool:
    return isinstance(x, MaskedNode)


def _full_mask(fn: str, mask: MaskOrFn, params: Params, name: str = "params") -> Any:
    """The mask broadcast to one Python bool per parameter leaf, checked against ``params``."""
    # A mask names the model's leaves; a FlatParams has none of them.
    refuse_flat_params(fn, "each parameter's path and shape (through its `mask`)", params)
    tree = mask(params) if callable(mask) else mask

    def as_bool(path: tuple[Any, ...], m: Any) -> bool:
        # A bool, or a concrete boolean scalar array; never truthiness ('no' or 0.5 is no mask).
        concrete = not isinstance(m, Tracer)
        if isinstance(m, bool | np.bool_) or (
            concrete and isinstance(m, jax.Array | np.ndarray) and m.shape == () and m.dtype == bool
        ):
            return bool(m)
        raise TypeError(
            f"{fn}: mask entry at {_tree.keystr(path)} must be a Python bool; got "
            f"{type(m).__name__} {m!r:.60}. A mask is fixed when the transform is traced: build "
            f"it from parameter names or shapes, not from array values."
        )

    tree = jax.tree_util.tree_map_with_path(as_bool, tree)
    try:
        full = jax.tree.map(
            lambda m, sub: jax.tree.map(lambda _: m, sub), tree, params, is_leaf=lambda x: x is None
        )
    except (ValueError, TypeError):
        # Other containers with the same keys (a plain-dict mask for a Linen FrozenDict or
        # an NNX State, whose Variables wrap the arrays) match by key; anything else fails.
        try:
            leaves = _keypaths.walk(fn, "mask", tree, params, _keypaths.check_mask(fn, "mask"))
        except ValueError:
            _tree.check_same_structure(fn, "mask", tree, name, params)
            raise
        return jax.tree.structure(params).unflatten([leaf.spec for leaf in leaves])
    _tree.check_same_structure(fn, "mask", full, name, params)  # a None entry in the mask
    return full


def masked(inner: AnyTransformation, mask: MaskOrFn) -> GradientTransformationExtraArgs:
    """Applies ``inner`` to the leaves where ``mask`` is True; others pass unchanged.

    The inner state holds nothing for masked-out leaves.

    Args:
      inner: the transformation to apply.
      mask: a tree of Python bools with the parameters' structure (or a prefix
        of it: a bool at a subtree covers all its leaves), or a function from
        the parameters to such a tree.

    Returns:
      A GradientTransformationExtraArgs whose state is a MaskedState.

    Raises:
      ValueError: (at init or update) if the mask's structure does not match
        the parameters, naming the first differing key path.
      TypeError: if a mask entry is not a bool.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> params = {"w": jnp.ones(2), "b": jnp.ones(2)}
      >>> tx = gc.masked(gc.scale(0.0), {"w": True, "b": False})
      >>> u, _ = tx.update(params, tx.init(params))
      >>> float(u["w"][0]), float(u["b"][0])
      (0.0, 1.0)
    """
    fn = "masked"
    check_transformation(fn, "`inner`", inner)

    def select(full: Any, tree: Any) -> Any:
        return jax.tree.map(lambda m, x: x if m else MaskedNode(), full, tree)

    def init_fn(params: Params) -> MaskedState:
        full = _full_mask(fn, mask, params)
        return MaskedState(inner.init(select(full, params)))

    def update_fn(
        updates: Updates, state: MaskedState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, MaskedState]:
        _tree.check_state(fn, state, MaskedState)
        if callable(mask):
            _tree.require_params(f"{fn} (with a mask function)", params)
        if params is None:
            full = _full_mask(fn, mask, updates, "updates")
        else:
            full = _full_mask(fn, mask, params)
        _tree.check_same_structure(fn, "updates", updates, "mask", full)
        inner_params = None if params is None else select(full, params)
        new, inner_state = call_update(
            inner, select(full, updates), state.inner_state, inner_params, extra_args
        )
        merged = jax.tree.map(
            lambda m, n, u: n if m else u, full, new, updates, is_leaf=_is_masked_node
        )
        return merged, MaskedState(inner_state)

    return GradientTransformationExtraArgs(init_fn, update_fn)


@injected_state
class InjectHyperparamsState(NamedTuple):
    """State of a transformation built by :func:`inject_hyperparams`.

    Attributes:
      step: int32[], updates seen so far (drives the schedules; Optax calls it
        ``count``, a name that shadows ``tuple.count``).
      hyperparams: name -> value used by the last update (at init: step 0).
        Constants may be overwritten here, as in Optax; scheduled ones are
        recomputed on every update.
      inner_state: the wrapped transformation's state.
    """

    step: jax.Array
    hyperparams: dict[str, jax.Array]
    inner_state: OptState


def _sync_hparams(old: OptState, fresh: OptState) -> OptState:
    """``old`` with every constant hyperparameter taken from ``fresh`` (same structure)."""

    def is_hp(x: Any) -> bool:
        return isinstance(x, Hyperparams)

    old_flat, treedef = jax.tree.flatten(old, is_leaf=is_hp)
    # Paired by position among Hyperparams nodes only: `fresh` is built from the updates, and
    # when they do not match the state, the inner update names the key path.
    fresh_hps = [f for f in jax.tree.leaves(fresh, is_leaf=is_hp) if is_hp(f)]
    if sum(map(is_hp, old_flat)) != len(fresh_hps):
        raise TypeError(
            f"inject_hyperparams: `state.inner_state` holds the hyperparameters of "
            f"{sum(map(is_hp, old_flat))} transforms, this transformation has {len(fresh_hps)}. "
            f"Pass the state from this transformation's own init, not another optimizer's."
        )

    def merge(o: Hyperparams, f: Hyperparams) -> Hyperparams:
        complement = {k: f.complement[k] if k in f.constant else v for k, v in o.complement.items()}
        return Hyperparams(f.constant, o.scheduled, complement)

    hps = iter(fresh_hps)
    merged = [merge(o, next(hps)) if is_hp(o) else o for o in old_flat]
    return treedef.unflatten(merged)


def _stored(numeric: dict[str, Any], dtype: Any) -> dict[str, jax.Array]:
    """Numeric hyperparameters as ``inject_hyperparams`` keeps them: arrays of ``dtype``."""
    return {k: jnp.asarray(v).astype(dtype) for k, v in numeric.items()}


def _name(factory: Callable[..., Any]) -> str:
    return getattr(factory, "__name__", type(factory).__name__)


def inject_hyperparams(
    inner_factory: Callable[..., AnyTransformation],
    static_args: str | tuple[str, ...] = (),
    hyperparam_dtype: Any | None = None,
) -> Callable[..., GradientTransformationExtraArgs]:
    """Optax's ``inject_hyperparams``: numeric arguments of a factory become state.

    gradchain transforms already keep their hyperparameters in state (see
    :func:`get_hyperparams`); this wrapper exists so that Optax programs that
    read or write ``state.hyperparams["learning_rate"]`` run unchanged.
    Numeric (non-bool) arguments and schedules become entries of
    ``state.hyperparams``, stored in float32 (or ``hyperparam_dtype``), never
    cast to the parameters' dtype. Schedules are evaluated at ``state.step``.

    Each update rebuilds the inner transformation from the stored values; to
    hand them to its state it evaluates the inner ``init``, which ``jit``
    removes as dead code (without ``jit`` it costs one allocation per update).

    Args:
      inner_factory: a function returning a transformation, e.g. ``gc.adam``.
      static_args: names of arguments to keep as Python values.
      hyperparam_dtype: dtype of the stored hyperparameters.

    Returns:
      A function with ``inner_factory``'s arguments that returns a
      GradientTransformationExtraArgs whose state is an InjectHyperparamsState.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.inject_hyperparams(gc.sgd)(learning_rate=0.1)
      >>> state = tx.init({"w": jnp.ones(1)})
      >>> state.hyperparams["learning_rate"] = jnp.array(0.5)
      >>> u, state = tx.update({"w": jnp.ones(1)}, state)
      >>> float(u["w"][0])
      -0.5
    """
    static = {static_args} if isinstance(static_args, str) else set(static_args)
    _check.dtype_or_none("inject_hyperparams", "hyperparam_dtype", hyperparam_dtype)
    hp_dtype = jnp.dtype(hyperparam_dtype or jnp.result_type(float))

    @functools.wraps(inner_factory)
    def factory(*args: Any, **kwargs: Any) -> GradientTransformationExtraArgs:
        bound = inspect.signature(inner_factory).bind(*args, **kwargs)
        bound.apply_defaults()  # defaults become hyperparameters too, as in Optax
        arguments = dict(bound.arguments)

        def is_numeric(name: str, v: Any) -> bool:
            if name in static or isinstance(v, bool):
                return False
            return _check.concrete_value(v) is not None or (
                isinstance(v, jax.Array) and jnp.shape(v) == ()
            )

        schedules = {
            k: v for k, v in arguments.items() if k not in static and _check.is_schedule(v)
        }
        numeric = {k: v for k, v in arguments.items() if is_numeric(k, v)}
        other = {k: v for k, v in arguments.items() if k not in schedules and k not in numeric}
        # Build once now, schedules at step 0, so that bad values fail here, not at init.
        step0 = jnp.zeros([], jnp.int32)
        at_step0 = {k: s(step0) for k, s in schedules.items()}
        inner_factory(**other, **numeric, **at_step0)
        # Then as the update will see them, stored as arrays: a factory that needs a Python
        # integer (a period, a size) fails here, with the way out named.
        try:
            inner_factory(**other, **_stored(numeric, hp_dtype), **at_step0)
        except (TypeError, ValueError) as error:
            ints = sorted(k for k, v in numeric.items() if isinstance(v, int))
            if not ints:
                raise
            raise type(error)(
                f"{error}\ninject_hyperparams({_name(inner_factory)}) stores numeric arguments "
                f"as {hp_dtype} arrays; if an integer argument must stay a Python number, "
                f"name it in static_args, e.g. static_args={tuple(ints)!r}."
            ) from error

        def current(step: jax.Array, stored: dict[str, jax.Array]) -> dict[str, jax.Array]:
            out = {k: stored[k] for k in numeric}
            out.update({k: jnp.asarray(s(step)).astype(hp_dtype) for k, s in schedules.items()})
            return out

        def build(hps: dict[str, jax.Array]) -> AnyTransformation:
            return inner_factory(**other, **hps)

        def init_fn(params: Params) -> InjectHyperparamsState:
            step = jnp.zeros([], jnp.int32)
            hps = current(step, _stored(numeric, hp_dtype))
            return InjectHyperparamsState(step, hps, build(hps).init(params))

        def update_fn(
            updates: Updates,
            state: InjectHyperparamsState,
            params: Params | None = None,
            **extra_args: Any,
        ) -> tuple[Updates, InjectHyperparamsState]:
            _tree.check_state("inject_hyperparams", state, InjectHyperparamsState)
            hps = current(state.step, state.hyperparams)
            inner = build(hps)
            template = updates if params is None else params
            inner_state = _sync_hparams(state.inner_state, inner.init(template))
            updates, inner_state = call_update(inner, updates, inner_state, params, extra_args)
            step = _tree.safe_increment(state.step)
            return updates, InjectHyperparamsState(step, hps, inner_state)

        return GradientTransformationExtraArgs(init_fn, update_fn)

    return factory
