"""Matching label and mask trees to parameters by key path, looking through NNX Variables.

A label (or mask) tree is matched to the parameters by key, not by container
type: a plain dict of labels fits a dict, a Flax Linen ``FrozenDict`` or a Flax
NNX ``nnx.State``, and an entry at a subtree covers all its leaves. Flax NNX
``Variable`` nodes (``nnx.Param``) are looked through on both sides, since
``nnx.Optimizer`` hands ``init`` a state of ``Param`` nodes and ``update`` the
pure arrays. gradchain never imports Flax: a Variable is recognised only when
``flax.nnx`` is already loaded.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.core import Tracer

from gradchain import _tree
from gradchain._flat_params import refuse_flat_params


class Leaf(NamedTuple):
    """One parameter leaf with its key path (Variables looked through) and its group."""

    keys: tuple[Any, ...]  # jax key entries (DictKey, SequenceKey, GetAttrKey, ...)
    leaf: Any
    spec: Any  # the label (or mask value) that covers it


Resolver = Callable[[Any], list[Leaf]]


def _variable_type() -> type | None:
    """Flax NNX's Variable class if Flax NNX is loaded (gradchain never imports Flax)."""
    nnx = sys.modules.get("flax.nnx")
    return getattr(nnx, "Variable", None) if nnx is not None else None


def _unwrap(node: Any) -> Any:
    """The value inside an NNX Variable node; any other node as it is."""
    variable = _variable_type()
    if variable is not None and isinstance(node, variable):
        return node.get_value() if hasattr(node, "get_value") else node.value
    return node


def key_name(key: Any) -> Any:
    """The raw key of a key entry: a dict key, a sequence index or an attribute name."""
    for attr in ("key", "idx", "name"):
        if hasattr(key, attr):
            return getattr(key, attr)
    return key


def segments(keys: tuple[Any, ...]) -> tuple[str, ...]:
    """A key path as strings, the segments of a ``"/"``-joined parameter path."""
    return tuple(str(key_name(k)) for k in keys)


def _children(node: Any) -> list[tuple[Any, Any]] | None:
    """[(key, child)] of an inner node ([] for None), or None for a leaf."""
    if node is None:
        return []
    flat = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)[0]
    if len(flat) == 1 and not flat[0][0] and flat[0][1] is node:
        return None
    return [(path[0], child) for path, child in flat]


def leaves_with_keys(tree: Any, keys: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], Any]]:
    """Every leaf with its key path, in ``jax.tree.leaves`` order, looking through Variables."""
    variable = _variable_type()

    def is_variable(x: Any) -> bool:
        return variable is not None and isinstance(x, variable)

    out = []
    for path, x in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_variable)[0]:
        if is_variable(x):
            for sub, leaf in jax.tree_util.tree_flatten_with_path(_unwrap(x))[0]:
                out.append(((*keys, *path, *sub), leaf))
        else:
            out.append(((*keys, *path), x))
    return out


def _mismatch(fn: str, what: str, keys: tuple[Any, ...], detail: str) -> ValueError:
    return ValueError(
        f"{fn}: `{what}` does not match the parameters at {_tree.keystr(keys)}: {detail}. "
        f"Give `{what}` the parameters' keys, or a prefix of them (an entry at a subtree "
        f"covers all its leaves), or pass a function of the parameters that returns one."
    )


def walk(
    fn: str, what: str, spec: Any, tree: Any, check: Callable[[tuple[Any, ...], Any], Any]
) -> list[Leaf]:
    """Matches a prefix tree ``spec`` to ``tree`` by key; returns each leaf with its entry.

    ``check(keys, entry)`` validates a spec leaf and returns the value to record.
    """
    # Masks, labels and routes name the model's leaves; a FlatParams has none of them.
    refuse_flat_params(fn, f"each parameter's path and shape (through its `{what}`)", tree)
    out: list[Leaf] = []

    def go(spec: Any, node: Any, keys: tuple[Any, ...]) -> None:
        spec, node = _unwrap(spec), _unwrap(node)
        spec_kids = _children(spec)
        if spec is not None and spec_kids is None:  # a label: it covers the whole subtree
            value = check(keys, spec)
            out.extend(Leaf(k, leaf, value) for k, leaf in leaves_with_keys(node, keys))
            return
        node_kids = _children(node)
        if spec is None:
            n = len(jax.tree.leaves(node))
            if n:
                raise _mismatch(fn, what, keys, f"it has None there, over {n} parameter leaves")
            return
        if node_kids is None:
            raise _mismatch(
                fn, what, keys, f"it has a {type(spec).__name__} there, the parameters a leaf"
            )
        assert spec_kids is not None
        spec_map = {key_name(k): child for k, child in spec_kids}
        node_names = [key_name(k) for k, _ in node_kids]
        for name in node_names:
            if name not in spec_map:
                raise _mismatch(
                    fn,
                    what,
                    keys,
                    f"the parameters have the key {name!r}, `{what}` has only "
                    f"{sorted(map(str, spec_map))}",
                )
        for name in spec_map:
            if name not in node_names:
                raise _mismatch(
                    fn,
                    what,
                    keys,
                    f"`{what}` has the key {name!r}, the parameters have only "
                    f"{sorted(map(str, node_names))}",
                )
        for key, child in node_kids:
            go(spec_map[key_name(key)], child, (*keys, key))

    go(spec, tree, ())
    if len(out) != len(jax.tree.leaves(tree)):  # a container type that flattens unusually
        raise ValueError(f"{fn}: could not match `{what}` to every parameter leaf.")
    return out


def check_label(fn: str, what: str, labels: Mapping[Any, Any]) -> Callable[..., Any]:
    def check(keys: tuple[Any, ...], label: Any) -> Any:
        try:
            hash(label)
        except TypeError:
            raise TypeError(
                f"{fn}: the label at {_tree.keystr(keys)} in `{what}` is a "
                f"{type(label).__name__}, which is not hashable. Labels are fixed Python "
                f"values, the keys of `transforms` (strings, usually)."
            ) from None
        if label not in labels:
            raise ValueError(
                f"{fn}: the label {label!r} (at {_tree.keystr(keys)} in `{what}`) has no "
                f"transformation; `transforms` has the labels {sorted(labels, key=repr)}. "
                f"Add a transformation for it or fix the label."
            )
        return label

    return check


def check_mask(fn: str, what: str) -> Callable[..., bool]:
    def check(keys: tuple[Any, ...], m: Any) -> bool:
        concrete = not isinstance(m, Tracer)
        if isinstance(m, bool | np.bool_) or (
            concrete and isinstance(m, jax.Array | np.ndarray) and m.shape == () and m.dtype == bool
        ):
            return bool(m)
        raise TypeError(
            f"{fn}: `{what}` entry at {_tree.keystr(keys)} must be a Python bool; got "
            f"{type(m).__name__} {m!r:.60}. A mask is fixed when the transform is traced: build "
            f"it from parameter names or shapes, not from array values."
        )

    return check


def resolver(fn: str, what: str, spec: Any, check: Callable[..., Any]) -> Resolver:
    """A function from a tree to its leaves and their entries in ``spec`` (a tree or function)."""
    if not callable(spec):
        # A fixed tree: check its entries now, so that a bad label fails at construction.
        for path, entry in jax.tree_util.tree_flatten_with_path(spec)[0]:
            check(path, entry)

    def resolve(tree: Any) -> list[Leaf]:
        return walk(fn, what, spec(tree) if callable(spec) else spec, tree, check)

    return resolve


def bare_outside(tree: Any, keep: list[bool]) -> Any:
    """``tree`` with the NNX Variables of the leaves outside a group replaced by their values.

    :func:`masked` then puts its MaskedNode in place of such a Variable, not inside
    it: ``nnx.Optimizer`` wraps each Variable of a state into an ``OptVariable``,
    and until Flax fixed flax #4901 it read the value with ``x[...]``, which fails
    on a MaskedNode (Optax's partition fails so). The leaves keep their order.
    """
    variable = _variable_type()
    if variable is None:
        return tree
    flags = iter(keep)

    def bare(x: Any) -> Any:
        mine = [next(flags) for _ in jax.tree.leaves(x)]
        return x if not isinstance(x, variable) or any(mine) else _unwrap(x)

    return jax.tree.map(bare, tree, is_leaf=lambda x: isinstance(x, variable))
