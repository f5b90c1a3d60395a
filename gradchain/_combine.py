"""Composition: chain and named_chain."""

from __future__ import annotations

from typing import Any

from gradchain._base import (
    AnyTransformation,
    GradientTransformationExtraArgs,
    OptState,
    Params,
    Updates,
    call_update,
    check_transformation,
)


def _check_transforms(fn: str, transforms: tuple[Any, ...]) -> None:
    for i, tx in enumerate(transforms):
        check_transformation(fn, f"argument {i}", tx)


def chain(*transforms: AnyTransformation) -> GradientTransformationExtraArgs:
    """Applies transformations in sequence: the updates of one feed the next.

    The state is a tuple holding each member's state, in order. Extra keyword
    arguments given to ``update`` reach every member that accepts them.

    Args:
      *transforms: the transformations, applied first to last.

    Returns:
      A GradientTransformationExtraArgs whose state is a tuple of states.

    Raises:
      TypeError: if an argument is not a transformation.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.chain(gc.clip(1.0), gc.scale(-0.1))
      >>> state = tx.init(jnp.zeros(2))
      >>> updates, state = tx.update(jnp.array([5.0, -0.5]), state)
      >>> [round(float(u), 3) for u in updates]
      [-0.1, 0.05]
    """
    _check_transforms("chain", transforms)
    n = len(transforms)

    def init_fn(params: Params) -> tuple[OptState, ...]:
        return tuple(tx.init(params) for tx in transforms)

    def update_fn(
        updates: Updates,
        state: OptState,
        params: Params | None = None,
        **extra_args: Any,
    ) -> tuple[Updates, OptState]:
        if not isinstance(state, tuple) or len(state) != n:
            got = f"a tuple of {len(state)}" if isinstance(state, tuple) else type(state).__name__
            raise TypeError(
                f"chain: this chain of {n} transformations needs a tuple of {n} states; got "
                f"{got}. Pass the state from this chain's own init, not another optimizer's."
            )
        new_states = []
        for tx, s in zip(transforms, state, strict=True):
            updates, s = call_update(tx, updates, s, params, extra_args)
            new_states.append(s)
        return updates, tuple(new_states)

    return GradientTransformationExtraArgs(init_fn, update_fn)


def named_chain(*transforms: tuple[str, AnyTransformation]) -> GradientTransformationExtraArgs:
    """Applies named transformations in sequence; the state is a dict keyed by name.

    Names appear in :func:`get_hyperparams` keys (``"adam/b1"``) and make
    states readable: ``state["adam"].mu``.

    Args:
      *transforms: ``(name, transformation)`` pairs, applied first to last.

    Returns:
      A GradientTransformationExtraArgs whose state is a dict of states.

    Raises:
      ValueError: if two members share a name.
      TypeError: if a member is not a ``(str, transformation)`` pair.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.named_chain(("clip", gc.clip(1.0)), ("lr", gc.scale(-0.5)))
      >>> state = tx.init(jnp.zeros(1))
      >>> sorted(state)
      ['clip', 'lr']
      >>> float(tx.update(jnp.array([3.0]), state)[0][0])
      -0.5
    """
    for i, item in enumerate(transforms):
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
            raise TypeError(
                f"named_chain: argument {i} must be a (name, transformation) pair; "
                f"got {item!r:.80}."
            )
    names = [name for name, _ in transforms]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"named_chain: names must be unique; {dupes} appear more than once.")
    _check_transforms("named_chain", tuple(tx for _, tx in transforms))

    def init_fn(params: Params) -> dict[str, OptState]:
        return {name: tx.init(params) for name, tx in transforms}

    def update_fn(
        updates: Updates,
        state: OptState,
        params: Params | None = None,
        **extra_args: Any,
    ) -> tuple[Updates, OptState]:
        if not isinstance(state, dict) or sorted(state) != sorted(names):
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise TypeError(
                f"named_chain: the state must be a dict with keys {sorted(names)}; got {got}. "
                f"Pass the state from this named_chain's own init."
            )
        new_state = {}
        for name, tx in transforms:
            updates, new_state[name] = call_update(tx, updates, state[name], params, extra_args)
        return updates, new_state

    return GradientTransformationExtraArgs(init_fn, update_fn)
