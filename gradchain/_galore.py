r"""GaLore: a base optimizer run on low-rank projections of the matrix gradients."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradchain import _check, _explicit, _tree
from gradchain._base import (
    AnyTransformation,
    GradientTransformation,
    GradientTransformationExtraArgs,
    OptState,
    Params,
    ScalarOrSchedule,
    Updates,
    call_update,
    check_transformation,
)
from gradchain._combine import chain
from gradchain._hyperparams import Hyperparams, HyperparamSpec, values
from gradchain._keypaths import Leaf, walk
from gradchain._matrices import MatrixView, _as_matrices, _from_matrices, _Route, matrix_view
from gradchain._moments import scale_by_adam
from gradchain._regularizing import add_decayed_weights
from gradchain._rules import path_of
from gradchain._scaling import scale_by_learning_rate
from gradchain._wrappers import MaskOrFn


class GaLoreDimensionNumbers(NamedTuple):
    """Which axes of a parameter form GaLore's matrix (the rest are batch axes).

    The matrix is (product of the reduction axes, product of the output axes);
    e.g. attention weights (embed, heads, head_dim) with ``reduction_axis=0,
    output_axis=(1, 2)`` are one (embed, heads * head_dim) matrix.
    """

    reduction_axis: int | tuple[int, ...] = 0
    output_axis: int | tuple[int, ...] = 1


class GaLoreState(NamedTuple):
    """State of :func:`scale_by_galore`."""

    step: jax.Array  # int32[], updates seen so far
    base_optimizer_state: OptState  # on the projected matrices, and full non-matrices
    projector: Any  # per leaf: (side, rank), (batch, side, rank); a ShapeRecord if unprojected
    hparams: Hyperparams  # scale


def _resolver(fn: str, spec: Any) -> Callable[[Any], list[Leaf]]:
    def is_entry(x: Any) -> bool:
        return x is None or isinstance(x, GaLoreDimensionNumbers)

    def wrap(path: Any, x: Any) -> _Route:
        if not is_entry(x):
            raise TypeError(
                f"{fn}: `weight_dimension_numbers` at {_tree.keystr(path)} must be a "
                f"GaLoreDimensionNumbers or None; got {type(x).__name__} {x!r:.60}."
            )
        return _Route(None if x is None else x)  # type: ignore[arg-type]

    def routes(tree: Any) -> Any:
        if spec is None:
            dims = lambda x: GaLoreDimensionNumbers() if len(jnp.shape(x)) == 2 else None  # noqa: E731
            return jax.tree.map(lambda x: _Route(dims(x)), tree)  # type: ignore[arg-type]
        if isinstance(spec, GaLoreDimensionNumbers):
            return _Route(spec)  # type: ignore[arg-type]
        given = spec(tree) if callable(spec) else spec
        return jax.tree_util.tree_map_with_path(wrap, given, is_leaf=is_entry)

    def resolve(tree: Any) -> list[Leaf]:
        return walk(fn, "weight_dimension_numbers", routes(tree), tree, lambda k, e: e)

    return resolve


def _plan(fn: str, leaf: Leaf, rank: int) -> tuple[MatrixView, int, bool] | None:
    """(view, rank, left) for a projected leaf: left projects the rows (fan_in >= fan_out)."""
    if leaf.spec.dims is None:
        return None
    view = matrix_view(
        fn, path_of(leaf.keys) or "<root>", tuple(jnp.shape(leaf.leaf)), leaf.spec.dims
    )
    return view, min(rank, view.fan_in, view.fan_out), view.fan_in >= view.fan_out


def scale_by_galore(
    rank: int = 128,
    update_proj_gap: int = 200,
    scale: float = 1.0,
    base_optimizer: AnyTransformation | None = None,
    weight_dimension_numbers: Any | None = None,
) -> GradientTransformation:
    r"""Runs ``base_optimizer`` on low-rank projections of the matrix gradients (GaLore).

    For a matrix gradient :math:`G` (m, n), every ``update_proj_gap`` steps
    (from step 0) the projector :math:`P` is refreshed from the top ``rank``
    singular vectors of :math:`G` on its longer side (left, (m, r), when m >= n;
    right, (n, r), otherwise, as Optax does; so the base optimizer's moments are
    (r, min(m, n))). The base optimizer sees :math:`R = P^T G` (or :math:`GP`),
    and its output :math:`N` comes back as ``scale * P N`` (or ``scale * N
    P^T``). Leaves that are not matrices get the base optimizer's update,
    unprojected and unscaled. The rank is capped at min(m, n).

    Differences from Optax 0.2.8: stacks of matrices (batch axes not named in
    the dimension numbers) are projected matrix by matrix instead of refused;
    ``scale`` is a settable hyperparameter (``get_hyperparams(state)["scale"]``);
    the SVD is done in float32 for bfloat16 gradients.

    On a mesh with Explicit axes (``jax.make_mesh``'s default) a sharded matrix
    gradient is gathered whole on every device before the SVD (JAX's SVD takes
    unsharded matrices only): the projector and the projected moments are
    replicated, as :func:`gradchain.state_shardings` lays them out, and the
    full-rank update is sharded back like the gradient.

    Args:
      rank: the projection rank, >= 1.
      update_proj_gap: steps between projector refreshes, >= 1.
      scale: factor on the projected-back updates.
      base_optimizer: a transformation that does not need the parameters
        (``scale_by_adam()`` by default); weight decay belongs outside, in
        :func:`galore`.
      weight_dimension_numbers: None (2-D leaves are matrices), one
        :class:`GaLoreDimensionNumbers` for every leaf, a tree of them (None:
        not a matrix), or a function of the parameters returning one.

    Returns:
      A GradientTransformation whose state is a GaLoreState.

    Raises:
      ValueError: for a rank or gap that is not a positive integer, a scale
        that is not finite, or dimension numbers that do not fit a leaf.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.scale_by_galore(rank=1, base_optimizer=gc.identity())
      >>> g = jnp.array([[2.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
      >>> u, state = tx.update(g, tx.init(g))
      >>> [[round(float(x), 3) for x in row] for row in u]  # the rank-1 part of g
      [[2.0, 0.0], [0.0, 0.0], [0.0, 0.0]]

    References:
      Zhao et al., GaLore: Memory-Efficient LLM Training by Gradient Low-Rank
      Projection, ICML 2024 (arXiv:2403.03507).
    """
    fn = "scale_by_galore"
    _check.positive_int(fn, "rank", rank)
    _check.positive_int(fn, "update_proj_gap", update_proj_gap)
    _check.finite(fn, "scale", scale)
    base = scale_by_adam() if base_optimizer is None else base_optimizer
    check_transformation(fn, "`base_optimizer`", base)
    resolve = _resolver(fn, weight_dimension_numbers)
    spec = HyperparamSpec(fn, dict(scale=scale))

    def shapes(tree: Any) -> tuple[Any, Any]:
        """Per leaf: the projector's shape and the projected update's shape (or None).

        An unprojected leaf's "projector" is a ShapeRecord of the leaf's shape
        (given here as None): the update's checks name the leaf's path if its
        shape changes, with no zero-size array, which Orbax cannot save.
        """
        proj, low = [], []
        for leaf in resolve(tree):
            plan = _plan(fn, leaf, rank)
            if plan is None:
                proj.append(None)
                low.append(None)
                continue
            view, r, left = plan
            side = view.fan_in if left else view.fan_out
            lead = (view.batch,) if view.batch_axes else ()
            proj.append((*lead, side, r))
            low.append((*lead, r, view.fan_out) if left else (*lead, view.fan_in, r))
        return proj, low

    def init_fn(params: Params) -> GaLoreState:
        treedef = jax.tree.structure(params)
        proj, low = shapes(params)
        leaves = jax.tree.leaves(params)
        low_params = [
            _tree.zeros_for(p, jnp.shape(p) if s is None else s, p.dtype)
            for p, s in zip(leaves, low, strict=True)
        ]
        projector = [
            _tree.shape_record(p) if s is None else jnp.zeros(s, _tree.compute_dtype(p.dtype))
            for p, s in zip(leaves, proj, strict=True)
        ]
        return GaLoreState(
            jnp.zeros([], jnp.int32),
            base.init(treedef.unflatten(low_params)),
            treedef.unflatten(projector),
            spec.init(),
        )

    def update_fn(
        updates: Updates, state: GaLoreState, params: Params | None = None
    ) -> tuple[Updates, GaLoreState]:
        del params  # the base optimizer works on projections; it cannot use them
        _tree.check_state(fn, state, GaLoreState)
        treedef = jax.tree.structure(updates)
        held_shapes = _tree.recorded_shapes(state.projector)
        _tree.check_same_structure(fn, "updates", updates, "state.projector", held_shapes)
        refresh = state.step % update_proj_gap == 0
        found = resolve(updates)
        expected, _ = shapes(updates)
        held_projectors = jax.tree.leaves(state.projector, is_leaf=_tree.is_shape_record)
        for leaf, p, want in zip(found, held_projectors, expected, strict=True):
            recorded = _tree.is_shape_record(p)
            if recorded and want is None:  # unprojected then and now: the same shape?
                same = _tree.recorded_shape(p) == tuple(jnp.shape(leaf.leaf))
            else:  # projected then and now: the same projector?
                same = not recorded and want is not None and tuple(p.shape) == tuple(want)
            if not same:
                held = (
                    f"{_tree.recorded_shape(p)}"
                    if recorded
                    else f"a matrix whose projector is {tuple(p.shape)}"
                )
                raise ValueError(
                    f"{fn}: `updates` and `state` disagree in shape at "
                    f"{_tree.keystr(leaf.keys)}: {tuple(jnp.shape(leaf.leaf))} against {held}. "
                    f"gradchain never broadcasts one against the other; give the updates the "
                    f"parameters' shapes, and use the state from this transformation's init."
                )
        low, projectors = [], []
        for g, p, leaf in zip(jax.tree.leaves(updates), held_projectors, found, strict=True):
            plan = _plan(fn, leaf, rank)
            if plan is None:
                low.append(g)
                projectors.append(p)
                continue
            view, r, left = plan
            # On an Explicit mesh the matrix is gathered whole: JAX's SVD takes unsharded
            # matrices only, and the projector and projected state are replicated (see
            # gradchain/_sharding.py). The full-rank update is sharded back like `g` below.
            whole, _ = _explicit.replicate(g)
            (mats,) = _tree.upcast(_as_matrices(whole, view))

            def fresh(m: jax.Array, r: int = r, left: bool = left) -> jax.Array:
                u, _, vt = jnp.linalg.svd(m, full_matrices=False)
                return u[:, :r] if left else vt[:r].T

            new_p = jnp.where(refresh, jax.vmap(fresh)(mats), p.reshape(view.batch, *p.shape[-2:]))
            new_p = new_p.astype(p.dtype)
            if left:
                r_mats = jnp.einsum("bmr,bmn->brn", new_p, mats)
            else:
                r_mats = jnp.einsum("bmn,bnr->bmr", mats, new_p)
            low.append((r_mats if view.batch_axes else r_mats[0]).astype(g.dtype))
            projectors.append(new_p if view.batch_axes else new_p[0])
        low_updates, base_state = call_update(
            base, treedef.unflatten(low), state.base_optimizer_state, None, {}
        )
        scale_ = values(state.hparams)["scale"]
        out = []
        for g, n, p, leaf in zip(
            jax.tree.leaves(updates), jax.tree.leaves(low_updates), projectors, found, strict=True
        ):
            plan = _plan(fn, leaf, rank)
            if plan is None:
                out.append(n.astype(g.dtype))
                continue
            view, _, left = plan
            nb, pb, s = _tree.upcast(n, p, scale_)
            nb = nb if view.batch_axes else nb[None]
            pb = pb if view.batch_axes else pb[None]
            if left:
                full = jnp.einsum("bmr,brn->bmn", pb, nb)
            else:
                full = jnp.einsum("bmr,bnr->bmn", nb, pb)
            full = _from_matrices(s * full, view, g.shape).astype(g.dtype)
            out.append(_explicit.reshard(full, _explicit.mesh_spec(g)))
        step = _tree.safe_increment(state.step)
        new_state = GaLoreState(
            step, base_state, treedef.unflatten(projectors), spec.advance(state.hparams, step)
        )
        return treedef.unflatten(out), new_state

    return GradientTransformation(init_fn, update_fn)


def galore(
    learning_rate: ScalarOrSchedule,
    rank: int = 128,
    update_proj_gap: int = 200,
    scale: float = 1.0,
    base_optimizer: AnyTransformation | None = None,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: MaskOrFn | None = None,
    weight_dimension_numbers: Any | None = None,
) -> GradientTransformationExtraArgs:
    r"""GaLore (Zhao et al. 2024): Adam on low-rank projections of the matrix gradients.

    ``chain(scale_by_galore(...), add_decayed_weights(weight_decay, mask),
    scale_by_learning_rate(learning_rate))``.

    Adam (or ``base_optimizer``) on rank-``rank`` projections of the matrix
    gradients, projected back, then decoupled weight decay in the full space.
    See :func:`scale_by_galore` for the projection.

    Args:
      learning_rate: >= 0, or a schedule.
      rank: the projection rank, >= 1.
      update_proj_gap: steps between projector refreshes, >= 1.
      scale: factor on the projected-back updates.
      base_optimizer: a transformation that does not need the parameters.
      weight_decay: decoupled weight decay, >= 0, or a schedule.
      mask: where to decay: bools like the parameters, or a function of them.
      weight_dimension_numbers: see :func:`scale_by_galore`.

    Returns:
      A GradientTransformationExtraArgs whose state is a tuple (GaLoreState,
      AddDecayedWeightsState, ScaleState).

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> params = {"w": jnp.ones((8, 8)), "b": jnp.ones(8)}
      >>> loss = lambda p: jnp.sum(p["w"] ** 2) + jnp.sum(p["b"] ** 2)
      >>> tx = gc.galore(learning_rate=0.1, rank=2)
      >>> state = tx.init(params)
      >>> for _ in range(5):
      ...     updates, state = tx.update(jax.grad(loss)(params), state, params)
      ...     params = gc.apply_updates(params, updates)
      >>> round(float(loss(params)), 2)
      45.54

    References:
      Zhao et al., GaLore: Memory-Efficient LLM Training by Gradient Low-Rank
      Projection, ICML 2024 (arXiv:2403.03507).
    """
    _check.non_negative("galore", "learning_rate", learning_rate, schedule_ok=True)
    _check.non_negative("galore", "weight_decay", weight_decay, schedule_ok=True)
    _check.finite("galore", "scale", scale)
    return chain(
        scale_by_galore(rank, update_proj_gap, scale, base_optimizer, weight_dimension_numbers),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
