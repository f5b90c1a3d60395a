"""Parameter groups by label: partition (alias multi_transform), freeze, selective_transform.

Each group's transformation runs under :func:`masked`, so it sees only its own
leaves (the others are :class:`MaskedNode`), its state holds nothing for them,
and :func:`get_hyperparams` reports its hyperparameters as
``"<label>/learning_rate"``.

Labels and masks are matched to the parameters by key, not by container type
(see ``_keypaths.py``): a plain dict of labels fits a dict, a Flax Linen
``FrozenDict`` or a Flax NNX ``nnx.State``, and NNX ``Variable`` nodes
(``nnx.Param``) are looked through on both sides. That is what breaks Optax
0.2.8 under ``nnx.Optimizer``: ``init`` receives an ``nnx.State`` whose leaves
sit inside ``Param`` nodes, while ``update`` receives the pure arrays
(``nnx.as_pure``), so a labels tree built with ``jax.tree.map(f,
nnx.state(model, nnx.Param))`` matches the first call but not the second, and a
plain dict prefix matches neither ("pytree structure error: different types at
key path", optax #1148, flax #5372). And where Optax's states hold
``Param(MaskedNode())``, which Flax before the fix of flax #4901 could not read,
ours hold a MaskedNode in place of the Param.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable, Mapping
from typing import Any, NamedTuple

import jax

from gradchain import _tree
from gradchain._base import (
    AnyTransformation,
    GradientTransformationExtraArgs,
    OptState,
    Params,
    Updates,
    check_transformation,
    set_to_zero,
)
from gradchain._keypaths import (
    Leaf,
    Resolver,
    bare_outside,
    check_label,
    check_mask,
    resolver,
)
from gradchain._wrappers import MaskedNode, MaskedState, masked


class PartitionState(NamedTuple):
    """State of :func:`partition`: one inner state per label, each a MaskedState."""

    inner_states: dict[Hashable, OptState]


MultiTransformState = PartitionState  # Optax's older name for the same state


def _select(full: Any, tree: Any) -> Any:
    return jax.tree.map(lambda m, x: x if m else MaskedNode(), full, tree)


def grouped(
    fn: str,
    transforms: Mapping[Any, AnyTransformation],
    resolve: Resolver,
    *,
    mask_compatible_extra_args: bool = False,
) -> GradientTransformationExtraArgs:
    """The transformation behind partition, selective_transform and param_groups."""
    labels = list(transforms)

    def keeps(tree: Any) -> dict[Hashable, list[bool]]:
        found = resolve(tree)
        return {g: [bool(leaf.spec == g) for leaf in found] for g in labels}

    def init_fn(params: Params) -> PartitionState:
        states = {}
        for g, keep in keeps(params).items():
            tree = bare_outside(params, keep)
            full = jax.tree.structure(tree).unflatten(keep)
            states[g] = masked(transforms[g], full).init(tree)
        return PartitionState(states)

    def update_fn(
        updates: Updates, state: PartitionState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, PartitionState]:
        _tree.check_state(fn, state, PartitionState)
        inner = state.inner_states
        if not isinstance(inner, Mapping) or set(inner) != set(labels):
            got = sorted(inner, key=repr) if isinstance(inner, Mapping) else type(inner).__name__
            raise TypeError(
                f"{fn}: `state.inner_states` must have the labels {sorted(labels, key=repr)}; "
                f"got {got}. Pass the state from this transformation's own init."
            )
        if params is not None:
            _tree.check_matches(fn, updates, "params", params)
        treedef = jax.tree.structure(updates)
        new_states = {}
        for g, keep in keeps(params if params is not None else updates).items():
            u = bare_outside(updates, keep)
            p = None if params is None else bare_outside(params, keep)
            full = jax.tree.structure(u).unflatten(keep)
            extra = extra_args
            if mask_compatible_extra_args:
                extra = {
                    k: _select(full, bare_outside(v, keep))
                    if jax.tree.structure(v) == treedef
                    else v
                    for k, v in extra_args.items()
                }
            new, new_states[g] = masked(transforms[g], full).update(u, inner[g], p, **extra)
            updates = treedef.unflatten(jax.tree.leaves(new))  # Variables unwrapped come back
        return updates, PartitionState(new_states)

    return GradientTransformationExtraArgs(init_fn, update_fn)


def check_transforms(fn: str, transforms: Any) -> None:
    """Raises unless ``transforms`` is a non-empty mapping of sortable labels to transforms."""
    if not isinstance(transforms, Mapping):
        raise TypeError(
            f"{fn}: `transforms` must be a mapping from label to transformation, e.g. "
            f"{{'decay': gc.adamw(1e-3), 'no_decay': gc.adam(1e-3)}}; got "
            f"{type(transforms).__name__}."
        )
    if not transforms:
        raise ValueError(f"{fn}: `transforms` is empty; give at least one label.")
    try:
        sorted(transforms)
    except TypeError:
        raise TypeError(
            f"{fn}: the labels {list(transforms)!r:.100} cannot be sorted against each other; "
            f"the state is a dict keyed by label, which JAX sorts. Use labels of one type "
            f"(strings, usually)."
        ) from None
    for label, tx in transforms.items():
        check_transformation(fn, f"`transforms[{label!r}]`", tx)


def partition(
    transforms: Mapping[Hashable, AnyTransformation],
    param_labels: Any | Callable[[Params], Any],
    *,
    mask_compatible_extra_args: bool = False,
) -> GradientTransformationExtraArgs:
    """Applies a different transformation to each group of parameters, chosen by label.

    Each parameter leaf gets a label from ``param_labels``; ``transforms[label]``
    transforms it, seeing only the leaves of its own label (through
    :func:`masked`). ``multi_transform`` is another name for this same function
    (Optax's older name). A label in ``transforms`` that no parameter carries is
    fine: its transformation runs on no leaves and its state holds only its
    hyperparameters and counters.

    Differences from Optax: labels are matched by key, so a plain dict of labels
    fits a ``FrozenDict`` or an ``nnx.State``, and Flax NNX ``Variable`` nodes are
    looked through (Optax fails under ``nnx.Optimizer``, optax #1148); a label
    function is called on ``params`` when ``update`` gets them (on ``updates``
    otherwise), so the groups at ``update`` are those ``init`` saw even when the
    gradients' dtypes differ from the parameters'.

    Args:
      transforms: a mapping from label to transformation.
      param_labels: a tree of labels with the parameters' keys, or a prefix of
        them (a label at a subtree covers all its leaves), or a function from
        the parameters to such a tree. Labels must be hashable and of one type.
      mask_compatible_extra_args: whether extra keyword arguments of ``update``
        that have the updates' tree structure are masked like the updates.

    Returns:
      A GradientTransformationExtraArgs whose state is a PartitionState, with one
      MaskedState per label.

    Raises:
      TypeError: if ``transforms`` is not a mapping of transformations, or a label
        is not hashable.
      ValueError: (at construction for a tree, at init or update for a function)
        if a label has no transformation or the labels do not match the
        parameters' keys, naming the key path.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> params = {"w": jnp.ones(2), "b": jnp.ones(2)}
      >>> tx = gc.partition({"fast": gc.sgd(1.0), "slow": gc.sgd(0.1)},
      ...                   {"w": "fast", "b": "slow"})
      >>> state = tx.init(params)
      >>> u, state = tx.update(params, state, params)
      >>> round(float(u["w"][0]), 3), round(float(u["b"][0]), 3)
      (-1.0, -0.1)
      >>> sorted(gc.get_hyperparams(state))
      ['fast/learning_rate', 'slow/learning_rate']
    """
    fn = "partition"
    check_transforms(fn, transforms)
    resolve = resolver(
        fn, "param_labels", param_labels, check_label(fn, "param_labels", transforms)
    )
    tx = grouped(fn, transforms, resolve, mask_compatible_extra_args=mask_compatible_extra_args)
    register_groups(tx, resolve, transforms)
    return tx


multi_transform = partition
"""Optax's older name for :func:`partition`: the same function."""


def _mask_resolver(fn: str, what: str, mask: Any, labels: tuple[Any, Any]) -> Resolver:
    """A resolver whose entries are ``labels[0]`` where the mask is False, ``labels[1]`` else."""
    bool_resolve = resolver(fn, what, mask, check_mask(fn, what))

    def resolve(tree: Any) -> list[Leaf]:
        return [leaf._replace(spec=labels[int(leaf.spec)]) for leaf in bool_resolve(tree)]

    return resolve


def freeze(mask: Any | Callable[[Params], Any]) -> GradientTransformationExtraArgs:
    """Zeroes the updates of the parameters where ``mask`` is True (freezes them).

    The others pass unchanged; chain it before an optimizer, or use
    :func:`selective_transform` so that the optimizer keeps no state for the
    frozen leaves.

    Args:
      mask: a bool (freeze all or nothing), a tree of bools with the
        parameters' keys or a prefix of them, or a function from the
        parameters to such a tree. Matched by key, like :func:`partition`'s
        labels.

    Returns:
      A GradientTransformationExtraArgs whose state is a MaskedState.

    Raises:
      TypeError: if a mask entry is not a bool.
      ValueError: if the mask does not match the parameters, naming the key path.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> params = {"w": jnp.ones(2), "b": jnp.ones(2)}
      >>> tx = gc.freeze({"w": True, "b": False})
      >>> u, _ = tx.update(params, tx.init(params))
      >>> float(u["w"][0]), float(u["b"][0])
      (0.0, 1.0)
    """
    fn = "freeze"
    resolve = _mask_resolver(fn, "mask", mask, (False, True))

    def inner(tree: Any) -> GradientTransformationExtraArgs:
        full = jax.tree.structure(tree).unflatten([leaf.spec for leaf in resolve(tree)])
        return masked(set_to_zero(), full)

    def init_fn(params: Params) -> MaskedState:
        return inner(params).init(params)

    def update_fn(
        updates: Updates, state: MaskedState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, MaskedState]:
        _tree.check_state(fn, state, MaskedState)
        if params is not None:
            _tree.check_matches(fn, updates, "params", params)
        tx = inner(params if params is not None else updates)
        return tx.update(updates, state, params, **extra_args)

    return GradientTransformationExtraArgs(init_fn, update_fn)


def selective_transform(
    optimizer: AnyTransformation, *, freeze_mask: Any | Callable[[Params], Any]
) -> GradientTransformationExtraArgs:
    """Applies ``optimizer`` to the parameters where ``freeze_mask`` is False, zeroes the rest.

    A :func:`partition` with the labels ``"train"`` and ``"freeze"``: the
    optimizer's state holds nothing for frozen leaves, and its hyperparameters
    read as ``"train/learning_rate"``.

    Args:
      optimizer: the transformation for the trainable leaves.
      freeze_mask: a bool, a tree of bools (True: frozen) with the parameters'
        keys or a prefix of them, or a function from the parameters to one.

    Returns:
      A GradientTransformationExtraArgs whose state is a PartitionState with
      the labels ``"freeze"`` and ``"train"``.

    Raises:
      TypeError: if ``optimizer`` is not a transformation or a mask entry is not
        a bool.
      ValueError: if the mask does not match the parameters, naming the key path.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> params = {"w": jnp.ones(2), "b": jnp.ones(2)}
      >>> tx = gc.selective_transform(gc.sgd(0.5), freeze_mask={"w": True, "b": False})
      >>> u, state = tx.update(params, tx.init(params))
      >>> float(u["w"][0]), float(u["b"][0])
      (0.0, -0.5)
      >>> list(gc.get_hyperparams(state))
      ['train/learning_rate']
    """
    fn = "selective_transform"
    check_transformation(fn, "`optimizer`", optimizer)
    transforms = {"train": optimizer, "freeze": set_to_zero()}
    resolve = _mask_resolver(fn, "freeze_mask", freeze_mask, ("train", "freeze"))
    tx = grouped(fn, transforms, resolve)
    register_groups(tx, resolve, transforms)
    return tx


class GroupsInfo(NamedTuple):
    """What :func:`explain` needs to know of a grouped transformation."""

    resolve: Resolver
    transforms: Mapping[Any, AnyTransformation]
    describe: Mapping[Hashable, str]  # label -> how its members were chosen (rule patterns)


# Keyed by the init function (weakly): a GradientTransformation is a NamedTuple and
# takes no attributes, and this keeps explain() out of every state and signature.
_GROUPS: weakref.WeakKeyDictionary[Callable[..., Any], GroupsInfo] = weakref.WeakKeyDictionary()


def register_groups(
    tx: GradientTransformationExtraArgs,
    resolve: Resolver,
    transforms: Mapping[Any, AnyTransformation],
    describe: Mapping[Hashable, str] | None = None,
) -> None:
    """Remembers how ``tx`` groups parameters, for :func:`explain`."""
    _GROUPS[tx.init] = GroupsInfo(resolve, transforms, describe or {})


def groups_info(tx: Any) -> GroupsInfo | None:
    """The grouping of a transformation built here, or None."""
    init = getattr(tx, "init", None)
    if not callable(init):
        return None
    try:
        return _GROUPS.get(init)
    except TypeError:  # not weak-referenceable: not ours
        return None
