"""Matrices inside parameters: which axes form a matrix, and routing leaves by it.

Matrix optimizers (Muon, Scion, GaLore, SOAP, Shampoo) see each parameter as
a stack of matrices: :class:`MuonDimensionNumbers` names the reduction and
output axes, every other axis is a batch axis, and :class:`MatrixView` is the
reshape to ``(batch, rows, cols)`` and back. ``route_resolver`` turns a user's
routing (a tree of dimension numbers, a function of the parameters, path
rules, or None for "2-D leaves only", minus the ``exclude`` patterns) into one
entry per leaf; :func:`matrix_partition` sends the matrices to one
transformation and the rest to another, and :func:`matrix_routing` shows
where each parameter went.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradchain import _tree
from gradchain._keypaths import Leaf, segments, walk
from gradchain._rules import _check_pattern, _glob_match

Axes = int | tuple[int, ...]
PathPattern = str | re.Pattern[str]


class MuonDimensionNumbers(NamedTuple):
    """Which axes of a parameter form Muon's matrix; every other axis is a batch axis.

    The matrix is (product of the reduction axes, product of the output axes),
    for ``y = x @ W`` (Flax's kernel layout (in, out) is the default). Negative
    axes count from the end: ``MuonDimensionNumbers(-2, -1)`` makes a stack of
    scanned layers (L, in, out) L matrices of (in, out). A PyTorch-layout
    weight (out, in) is ``MuonDimensionNumbers(reduction_axis=1, output_axis=0)``.
    """

    reduction_axis: Axes = 0
    output_axis: Axes = 1


@dataclass(frozen=True)
class _Route:
    """A leaf's routing entry: its dimension numbers, or None for "not a matrix"."""

    dims: MuonDimensionNumbers | None


class MatrixView(NamedTuple):
    """How a parameter is seen as matrices: batch, reduction and output axes, and sizes."""

    batch_axes: tuple[int, ...]
    reduction_axes: tuple[int, ...]
    output_axes: tuple[int, ...]
    batch: int  # how many matrices
    fan_in: int  # rows: the product of the reduction axes' sizes
    fan_out: int  # columns: the product of the output axes' sizes


def _axes(fn: str, where: str, axes: Axes, ndim: int) -> tuple[int, ...]:
    raw = (axes,) if isinstance(axes, int | np.integer) else tuple(axes)
    for a in raw:
        if not isinstance(a, int | np.integer) or not -ndim <= a < ndim:
            raise ValueError(
                f"{fn}: the MuonDimensionNumbers at {where} name axis {a!r}, but the parameter "
                f"there has {ndim} dimensions. Give axes in [-{ndim}, {ndim})."
            )
    return tuple(int(a) % ndim for a in raw)


def matrix_view(
    fn: str, where: str, shape: tuple[int, ...], dims: MuonDimensionNumbers
) -> MatrixView:
    """The matrix view of a parameter of ``shape`` under ``dims``, checked."""
    ndim = len(shape)
    red = _axes(fn, where, dims.reduction_axis, ndim)
    out = _axes(fn, where, dims.output_axis, ndim)
    if not red or not out or set(red) & set(out) or len(set(red + out)) != len(red + out):
        raise ValueError(
            f"{fn}: the MuonDimensionNumbers at {where} must name at least one reduction and "
            f"one output axis, each once, disjoint; got {dims} for shape {shape}."
        )
    batch = tuple(a for a in range(ndim) if a not in red + out)
    size = lambda axes: math.prod(shape[a] for a in axes)  # noqa: E731
    return MatrixView(batch, red, out, size(batch), size(red), size(out))


def _as_matrices(x: jax.Array, v: MatrixView) -> jax.Array:
    perm = v.batch_axes + v.reduction_axes + v.output_axes
    return jnp.transpose(x, perm).reshape(v.batch, v.fan_in, v.fan_out)


def _from_matrices(y: jax.Array, v: MatrixView, shape: tuple[int, ...]) -> jax.Array:
    perm = v.batch_axes + v.reduction_axes + v.output_axes
    y = y.reshape(tuple(shape[a] for a in perm))
    return jnp.transpose(y, tuple(int(i) for i in np.argsort(perm)))


def _wrap(fn: str, spec: Any) -> Any:
    """A user's dimension numbers as a tree of _Route labels (None: not a matrix)."""

    def is_entry(x: Any) -> bool:
        return x is None or isinstance(x, MuonDimensionNumbers)

    def wrap(path: Any, x: Any) -> _Route:
        if not is_entry(x):
            raise TypeError(
                f"{fn}: the weight dimension numbers at {_tree.keystr(path)} must be a "
                f"MuonDimensionNumbers or None (not a matrix); got {type(x).__name__} {x!r:.60}."
            )
        return _Route(x)

    return jax.tree_util.tree_map_with_path(wrap, spec, is_leaf=is_entry)


def _default_routes(tree: Any) -> Any:
    """Optax's rule: a 2-D parameter is one matrix (in, out); anything else is not."""
    return jax.tree.map(
        lambda x: _Route(MuonDimensionNumbers() if len(jnp.shape(x)) == 2 else None), tree
    )


def _matcher(fn: str, what: str, patterns: Any) -> Callable[[tuple[str, ...]], bool]:
    """Whether a path's segments match any of ``patterns`` (globs or compiled regexes)."""
    pats = (patterns,) if isinstance(patterns, str | re.Pattern) else tuple(patterns)
    for p in pats:
        _check_pattern(f"{fn}: in `{what}`", p)

    def matches(parts: tuple[str, ...]) -> bool:
        joined = "/".join(parts)
        return any(
            bool(p.fullmatch(joined))
            if isinstance(p, re.Pattern)
            else _glob_match(tuple(p.split("/")), parts)
            for p in pats
        )

    return matches


def is_path_rules(spec: Any) -> bool:
    """Whether ``spec`` is a list of ``(pattern, MuonDimensionNumbers | None)`` pairs."""
    return (
        isinstance(spec, list | tuple)
        and bool(spec)
        and all(
            isinstance(r, tuple)
            and not isinstance(r, MuonDimensionNumbers)
            and len(r) == 2
            and isinstance(r[0], str | re.Pattern)
            for r in spec
        )
    )


def _path_rules(
    fn: str, what: str, spec: Sequence[tuple[Any, Any]]
) -> list[tuple[Callable[[tuple[str, ...]], bool], _Route]]:
    rules = []
    for i, (pattern, dims) in enumerate(spec):
        if dims is not None and not isinstance(dims, MuonDimensionNumbers):
            raise TypeError(
                f"{fn}: rule {i} of `{what}` ({pattern!r}) must give a MuonDimensionNumbers or "
                f"None (not a matrix); got {type(dims).__name__} {dims!r:.60}."
            )
        rules.append((_matcher(fn, what, pattern), _Route(dims)))
    return rules


def route_resolver(fn: str, what: str, spec: Any, exclude: Any = ()) -> Callable[[Any], list[Leaf]]:
    """A function from a tree to its leaves, each with its _Route.

    ``spec`` is None (2-D leaves are (in, out) matrices), one
    MuonDimensionNumbers for every leaf, a tree (prefix) of them with None for
    "not a matrix", a function of the tree returning such a tree, or path rules
    ``[(pattern, dims or None), ...]`` (the first match wins; unmatched leaves
    follow the 2-D rule). Leaves whose path matches ``exclude`` are not matrices.
    """

    def check(keys: tuple[Any, ...], entry: Any) -> _Route:
        if not isinstance(entry, _Route):
            raise TypeError(
                f"{fn}: `{what}` at {_tree.keystr(keys)} must be a MuonDimensionNumbers or "
                f"None; got {type(entry).__name__} {entry!r:.60}."
            )
        return entry

    excluded = _matcher(fn, "exclude", exclude)
    rules = _path_rules(fn, what, spec) if is_path_rules(spec) else None
    if isinstance(spec, MuonDimensionNumbers):
        fixed: Any = _Route(spec)
    elif spec is None or rules is not None or callable(spec):
        fixed = None
    else:
        fixed = _wrap(fn, spec)

    def route(leaf: Leaf) -> Leaf:
        parts = segments(leaf.keys)
        if excluded(parts):
            return leaf._replace(spec=_Route(None))
        for matches, r in rules or ():
            if matches(parts):
                return leaf._replace(spec=r)
        return leaf

    def resolve(tree: Any) -> list[Leaf]:
        if spec is None or rules is not None:
            routes = _default_routes(tree)
        elif fixed is not None:
            routes = fixed
        else:
            assert callable(spec)
            routes = _wrap(fn, spec(tree))
        return [route(leaf) for leaf in walk(fn, what, routes, tree, check)]

    return resolve


class DimensionNumbersOf:
    """The routing as ``weight_dimension_numbers`` for the matrix group: a function of a tree.

    Called on the matrix group's tree (the other leaves are MaskedNodes), it
    returns each leaf's MuonDimensionNumbers, as the partition resolved them.
    """

    def __init__(self, resolve: Callable[[Any], list[Leaf]]) -> None:
        self.resolve = resolve

    def __call__(self, tree: Any) -> Any:
        found = self.resolve(tree)
        return jax.tree.structure(tree).unflatten([leaf.spec.dims for leaf in found])

    def __repr__(self) -> str:
        return "<the dimension numbers of matrix_partition's routing>"
