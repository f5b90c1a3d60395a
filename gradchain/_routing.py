r"""Matrix-aware routing: matrices to a matrix optimizer, everything else to a fallback.

:func:`matrix_partition` is a partition by rule with two visible groups (by
default ``"matrix"`` and ``"fallback"``), so :func:`explain` shows it,
:func:`get_hyperparams` reads ``"matrix/beta"`` and ``"fallback/learning_rate"``,
and a checkpoint holds the two groups by name. :func:`matrix_routing` returns
(and prints as a table) which parameter went where and as which matrices.
:func:`muon` is built on it; SOAP, Shampoo and Scion can be too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradchain._base import AnyTransformation, GradientTransformationExtraArgs, check_transformation
from gradchain._keypaths import Leaf
from gradchain._matrices import (
    DimensionNumbersOf,
    MatrixView,
    MuonDimensionNumbers,
    matrix_view,
    route_resolver,
)
from gradchain._partition import grouped, register_groups
from gradchain._rules import path_of

MatrixFactory = Callable[[DimensionNumbersOf], AnyTransformation]
"""A function from the routing's dimension numbers to the matrix group's transformation."""


def _labels_ok(fn: str, matrix_label: Any, fallback_label: Any) -> None:
    for name, label in (("matrix_label", matrix_label), ("fallback_label", fallback_label)):
        if not isinstance(label, str) or not label or "/" in label:
            raise ValueError(
                f"{fn}: `{name}` must be a non-empty string without '/' (it prefixes the "
                f"group's hyperparameter names); got {label!r}."
            )
    if matrix_label == fallback_label:
        raise ValueError(f"{fn}: the two groups need different labels; both are {matrix_label!r}.")


def _rank_rule(spec: Any) -> Any:
    """One MuonDimensionNumbers: for the leaves of rank >= 2 only (the rest are not matrices)."""
    if not isinstance(spec, MuonDimensionNumbers):
        return spec
    return lambda tree: jax.tree.map(lambda x: spec if len(jnp.shape(x)) >= 2 else None, tree)


def routing_labels(
    fn: str, resolve: Callable[[Any], list[Leaf]], matrix_label: str, fallback_label: str
) -> Callable[[Any], list[Leaf]]:
    """Each leaf labelled by its route; a matrix's view is checked, naming its path."""

    def labels(tree: Any) -> list[Leaf]:
        out = []
        for leaf in resolve(tree):
            dims = leaf.spec.dims
            if dims is not None:
                where = path_of(leaf.keys) or "<root>"
                matrix_view(fn, where, tuple(jnp.shape(leaf.leaf)), dims)
            out.append(leaf._replace(spec=fallback_label if dims is None else matrix_label))
        return out

    return labels


def build_matrix_partition(
    fn: str,
    matrix_tx: AnyTransformation | MatrixFactory,
    fallback_tx: AnyTransformation,
    resolve: Callable[[Any], list[Leaf]],
    labels: tuple[str, str],
    describe: tuple[str, str],
) -> GradientTransformationExtraArgs:
    """The partition behind :func:`matrix_partition` and :func:`muon`."""
    matrix_label, fallback_label = labels
    if hasattr(matrix_tx, "init") and hasattr(matrix_tx, "update"):
        matrix = matrix_tx
    elif callable(matrix_tx):
        matrix = matrix_tx(DimensionNumbersOf(resolve))
        check_transformation(fn, "what `matrix_tx` returned", matrix)
    else:
        check_transformation(fn, "`matrix_tx`", matrix_tx)
        raise AssertionError  # unreachable: check_transformation raised
    check_transformation(fn, "`fallback_tx`", fallback_tx)
    transforms = {matrix_label: matrix, fallback_label: fallback_tx}
    label_fn = routing_labels(fn, resolve, matrix_label, fallback_label)
    tx = grouped(fn, transforms, label_fn)
    register_groups(
        tx, label_fn, transforms, {matrix_label: describe[0], fallback_label: describe[1]}
    )
    return tx


def matrix_partition(
    matrix_tx: AnyTransformation | MatrixFactory,
    fallback_tx: AnyTransformation,
    *,
    dimension_numbers: Any | None = None,
    exclude: Any = (),
    matrix_label: str = "matrix",
    fallback_label: str = "fallback",
) -> GradientTransformationExtraArgs:
    r"""Sends matrix-shaped parameters to ``matrix_tx`` and every other one to ``fallback_tx``.

    Which leaves are matrices, and which of their axes form the matrix, is the
    routing, chosen by ``dimension_numbers`` (a :class:`MuonDimensionNumbers`
    names the reduction and output axes; the other axes are batch axes, so a
    stack of scanned layers (L, in, out) is L matrices under
    ``MuonDimensionNumbers(-2, -1)``):

    - None: a 2-D leaf is one (in, out) matrix, any other leaf is not (Optax's
      rule for Muon);
    - one ``MuonDimensionNumbers``: every leaf of rank >= 2 is seen with those
      axes, the vectors and scalars are not matrices;
    - a tree (or prefix) of them with ``None`` for "not a matrix", or a
      function from the parameters to such a tree;
    - path rules ``[(pattern, MuonDimensionNumbers or None), ...]``: the first
      pattern that matches a parameter's path decides, unmatched leaves follow
      the 2-D rule. Patterns are those of :class:`Rule` (globs over
      ``"/"``-joined paths, ``**`` across segments, or compiled regexes).

    ``exclude`` (a pattern or a sequence of them) then sends matching
    parameters to the fallback whatever their shape: embeddings and output
    heads, usually (``exclude=("**/embed*/**", "**/head/**")``).

    The matrix group's transformation must know the routing for stacked
    layers: give ``matrix_tx`` as a function of it, called once with the
    dimension numbers (a function of the parameters, as
    ``weight_dimension_numbers`` of :func:`scale_by_muon` takes), e.g.
    ``lambda dims: gc.scale_by_muon(weight_dimension_numbers=dims)``. A plain
    transformation sees the matrix leaves as they are.

    It is a visible partition: the state is a PartitionState with the groups
    ``matrix_label`` and ``fallback_label``, :func:`explain` prints which
    parameter went where, :func:`get_hyperparams` reads ``"matrix/beta"``,
    ``"fallback/learning_rate"``. :func:`matrix_routing` gives the same
    routing as a table with each matrix's view.

    Args:
      matrix_tx: the matrices' transformation, or a function from the routing's
        dimension numbers to it.
      fallback_tx: the transformation of every other parameter (AdamW, usually).
      dimension_numbers: the routing, as above.
      exclude: path patterns of parameters to send to the fallback.
      matrix_label: the matrix group's name (a string without ``"/"``).
      fallback_label: the fallback group's name.

    Returns:
      A GradientTransformationExtraArgs whose state is a PartitionState.

    Raises:
      TypeError: for a transformation that is not one, or a routing entry that
        is not a MuonDimensionNumbers or None.
      ValueError: for bad labels or patterns; at init, dimension numbers that do
        not fit a parameter, naming its path.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> params = {"embed": jnp.ones((10, 4)), "layers": jnp.ones((3, 4, 4)),
      ...           "bias": jnp.zeros(4)}
      >>> tx = gc.matrix_partition(
      ...     lambda dims: gc.chain(gc.scale_by_muon(weight_dimension_numbers=dims),
      ...                           gc.scale_by_learning_rate(0.02)),
      ...     gc.adamw(1e-3),
      ...     dimension_numbers=gc.MuonDimensionNumbers(-2, -1),
      ...     exclude="embed")
      >>> gc.explain(tx, params).assignment
      {'bias': 'fallback', 'embed': 'fallback', 'layers': 'matrix'}
      >>> state = tx.init(params)
      >>> sorted(gc.get_hyperparams(state))[:3]
      ['fallback/b1', 'fallback/b2', 'fallback/eps']
    """
    fn = "matrix_partition"
    _labels_ok(fn, matrix_label, fallback_label)
    resolve = route_resolver(fn, "dimension_numbers", _rank_rule(dimension_numbers), exclude)
    how = "2-D leaves" if dimension_numbers is None else "dimension_numbers"
    rest = "everything else" + (" (and `exclude`)" if exclude else "")
    return build_matrix_partition(
        fn,
        matrix_tx,
        fallback_tx,
        resolve,
        (matrix_label, fallback_label),
        (f"matrices ({how})", rest),
    )


class MatrixRoute(NamedTuple):
    """One row of :func:`matrix_routing`."""

    path: str
    shape: tuple[int, ...]
    group: str  # the matrix label or the fallback label
    view: MatrixView | None  # the matrices the matrix group sees (None in the fallback)


@dataclass(frozen=True)
class MatrixRouting:
    """Where :func:`matrix_partition` sends each parameter; ``print`` it for a table.

    Attributes:
      rows: one :class:`MatrixRoute` per parameter leaf, in tree order.
    """

    rows: tuple[MatrixRoute, ...]

    @property
    def assignment(self) -> dict[str, str]:
        """Parameter path -> group."""
        return {r.path: r.group for r in self.rows}

    def __iter__(self) -> Any:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __str__(self) -> str:
        head = ("parameter", "shape", "group", "matrices (batch x in x out)")
        body = [
            (
                r.path or "<root>",
                str(r.shape),
                r.group,
                "" if r.view is None else f"{r.view.batch} x {r.view.fan_in} x {r.view.fan_out}",
            )
            for r in self.rows
        ]
        widths = [max(len(row[i]) for row in (head, *body)) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in body]
        top = "  ".join(c.ljust(w) for c, w in zip(head, widths, strict=True))
        return "\n".join(x.rstrip() for x in (top, *lines))


def matrix_routing(
    params: Any,
    dimension_numbers: Any | None = None,
    *,
    exclude: Any = (),
    matrix_label: str = "matrix",
    fallback_label: str = "fallback",
) -> MatrixRouting:
    """Where :func:`matrix_partition` sends each parameter, and as which matrices.

    Args:
      params: the parameters (arrays or ``jax.ShapeDtypeStruct``).
      dimension_numbers: as given to :func:`matrix_partition`.
      exclude: as given to :func:`matrix_partition`.
      matrix_label: as given to :func:`matrix_partition`.
      fallback_label: as given to :func:`matrix_partition`.

    Returns:
      A :class:`MatrixRouting`: one :class:`MatrixRoute` per leaf, in tree
      order; ``str()`` of it is a table.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> params = {"layers": jnp.ones((3, 4, 8)), "b": jnp.zeros(8)}
      >>> print(gc.matrix_routing(params, gc.MuonDimensionNumbers(-2, -1)))
      parameter  shape      group     matrices (batch x in x out)
      b          (8,)       fallback
      layers     (3, 4, 8)  matrix    3 x 4 x 8
    """
    fn = "matrix_routing"
    _labels_ok(fn, matrix_label, fallback_label)
    rows = []
    spec = _rank_rule(dimension_numbers)
    for leaf in route_resolver(fn, "dimension_numbers", spec, exclude)(params):
        path, shape = path_of(leaf.keys), tuple(jnp.shape(leaf.leaf))
        dims = leaf.spec.dims
        if dims is None:
            rows.append(MatrixRoute(path, shape, fallback_label, None))
        else:
            view = matrix_view(fn, path or "<root>", shape, dims)
            rows.append(MatrixRoute(path, shape, matrix_label, view))
    return MatrixRouting(tuple(rows))
