"""Optax's public helper functions: safe norms and counters, moment updates, state mapping.

These are plain functions, not transformations. Each computes in at least
float32 (``_tree.compute_dtype``) and returns trees in the dtypes of the trees
it updates. Trees given together must share their structure and shapes; the
message names the function and the first differing key path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from gradchain import _base, _tree
from gradchain._hyperparams import complement_of

NormOrder: TypeAlias = int | float | str | None
"""The order of a norm, as ``jnp.linalg.norm`` takes it (``2``, ``np.inf``, ``"fro"``...)."""


def _real_dtype(dtype: Any) -> Any:
    return jnp.finfo(_tree.compute_dtype(dtype)).dtype


def _squeeze(x: jax.Array, axis: int | tuple[int, ...] | None) -> jax.Array:
    return jnp.squeeze(x) if axis is None else jnp.squeeze(x, axis)


def safe_norm(
    x: ArrayLike,
    min_norm: ArrayLike,
    ord: NormOrder = None,  # Optax's and NumPy's name
    axis: int | tuple[int, ...] | None = None,
    keepdims: bool = False,
) -> jax.Array:
    """``max(norm(x), min_norm)`` with a gradient that is finite where the norm is 0.

    Where the norm is at most ``min_norm``, the result is ``min_norm`` and its
    gradient is 0; elsewhere it is ``jnp.linalg.norm(x, ord, axis)``. The plain
    norm's gradient at 0 is NaN; this one's never is.

    Args:
      x: an array (real or complex).
      min_norm: the smallest value returned.
      ord: the norm's order, as in ``jnp.linalg.norm``.
      axis: the axes to take the norm over; all by default.
      keepdims: whether to keep the reduced axes with size 1.

    Returns:
      The norm, in x's real dtype but at least float32 (Optax returns x's dtype).

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> float(gc.safe_norm(jnp.array([3.0, 4.0]), 1.0)), float(gc.safe_norm(jnp.zeros(2), 1.0))
      (5.0, 1.0)
      >>> [float(d) for d in jax.grad(lambda x: gc.safe_norm(x, 0.0))(jnp.zeros(2))]
      [0.0, 0.0]
    """
    x = jnp.asarray(x)
    xc = x.astype(_tree.compute_dtype(x.dtype))
    floor = jnp.asarray(min_norm, _real_dtype(x.dtype))
    small = jnp.linalg.norm(xc, ord, axis, keepdims=True) <= floor
    safe_x = jnp.where(small, jnp.ones_like(xc), xc)  # no 0 reaches the norm's gradient
    norm = jnp.linalg.norm(safe_x, ord, axis, keepdims=keepdims)
    if not keepdims:
        small = _squeeze(small, axis)
    return jnp.where(small, floor, norm)


def safe_root_mean_squares(x: ArrayLike, min_rms: ArrayLike) -> jax.Array:
    """``max(sqrt(mean(|x|**2)), min_rms)`` with a gradient that is finite at 0.

    Args:
      x: an array (real or complex).
      min_rms: the smallest value returned.

    Returns:
      A scalar in x's real dtype but at least float32.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> round(float(gc.safe_root_mean_squares(jnp.array([3.0, 4.0]), 1e-3)), 4)
      3.5355
      >>> import jax
      >>> [float(d) for d in jax.grad(lambda x: gc.safe_root_mean_squares(x, 1e-3))(jnp.zeros(2))]
      [0.0, 0.0]
    """
    x = jnp.asarray(x)
    xc = x.astype(_tree.compute_dtype(x.dtype))
    floor = jnp.asarray(min_rms, _real_dtype(x.dtype))

    def rms(y: jax.Array) -> jax.Array:
        return jnp.sqrt(jnp.mean(_tree.abs_sq(y).real))

    small = rms(xc) <= floor
    return jnp.where(small, floor, rms(jnp.where(small, jnp.ones_like(xc), xc)))


def safe_increment(count: ArrayLike) -> jax.Array:
    """Adds one to a counter, saturating at its dtype's maximum instead of wrapping.

    The same function every gradchain state's ``step`` goes through.

    Args:
      count: an integer or floating scalar (or array).

    Returns:
      ``count + 1``, or the dtype's maximum where ``count`` has reached it.

    Raises:
      TypeError: for a counter of another dtype (bool, complex).

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> int(gc.safe_increment(jnp.int32(1))), int(gc.safe_increment(jnp.int32(2**31 - 1)))
      (2, 2147483647)
    """
    return _tree.safe_increment(jnp.asarray(count))


def safe_int32_increment(count: ArrayLike) -> jax.Array:
    """Optax's older name of :func:`safe_increment`, kept for ported code.

    Args:
      count: an integer or floating counter.

    Returns:
      ``count + 1``, saturating at the dtype's maximum.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> int(gc.safe_int32_increment(jnp.int32(2**31 - 1)))
      2147483647
    """
    return safe_increment(count)


def init_empty_state(params: Any) -> _base.EmptyState:
    """The ``init`` of a stateless transformation: returns an EmptyState.

    Args:
      params: ignored.

    Returns:
      ``EmptyState()``.

    Example:
      >>> import gradchain as gc
      >>> gc.init_empty_state({"w": 1.0})
      EmptyState()
    """
    return _base._init_empty(params)  # pyright: ignore[reportPrivateUsage]


def _check_pair(fn: str, a_name: str, a: Any, b_name: str, b: Any) -> None:
    _tree.check_same_structure(fn, a_name, a, b_name, b)
    _tree.check_same_shapes(fn, a_name, a, b_name, b)


def _scalar(value: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """A hyperparameter as a float32 (or wider) scalar and its exact complement ``1 - value``."""
    arr = jnp.asarray(value)
    arr = arr.astype(_real_dtype(arr.dtype))
    return arr, complement_of(value, arr)


def incremental_update(new_tensors: Any, old_tensors: Any, step_size: ArrayLike) -> Any:
    r"""Polyak averaging: ``step_size * new + (1 - step_size) * old``, leaf by leaf.

    Used to move target-network parameters towards the online ones.

    Args:
      new_tensors: the tree to move towards.
      old_tensors: the current tree, of the same structure and shapes.
      step_size: :math:`\tau`, usually in [0, 1].

    Returns:
      The new tree, in ``old_tensors``' dtypes.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> out = gc.incremental_update({"w": jnp.ones(2)}, {"w": jnp.zeros(2)}, 0.25)
      >>> [float(x) for x in out["w"]]
      [0.25, 0.25]
    """
    _check_pair("incremental_update", "new_tensors", new_tensors, "old_tensors", old_tensors)
    tau, one_minus_tau = _scalar(step_size)

    def leaf(new: jax.Array, old: jax.Array) -> jax.Array:
        n, o, t, omt = _tree.upcast(jnp.asarray(new), jnp.asarray(old), tau, one_minus_tau)
        return (t * n + omt * o).astype(jnp.asarray(old).dtype)

    return jax.tree.map(leaf, new_tensors, old_tensors)


def periodic_update(
    new_tensors: Any, old_tensors: Any, steps: ArrayLike, update_period: ArrayLike
) -> Any:
    """``new_tensors`` when ``steps % update_period == 0``, else ``old_tensors``.

    Args:
      new_tensors: the tree to copy.
      old_tensors: the current tree, of the same structure and shapes.
      steps: the current step (an integer scalar, may be traced).
      update_period: the period, an integer > 0.

    Returns:
      One of the two trees, in ``old_tensors``' dtypes (a single ``lax.cond``).

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> [float(gc.periodic_update(jnp.ones(()), jnp.zeros(()), s, 3)) for s in range(4)]
      [1.0, 0.0, 0.0, 1.0]
    """
    _check_pair("periodic_update", "new_tensors", new_tensors, "old_tensors", old_tensors)
    new = jax.tree.map(
        lambda n, o: jnp.asarray(n).astype(jnp.asarray(o).dtype), new_tensors, old_tensors
    )
    old = jax.tree.map(jnp.asarray, old_tensors)
    due = jnp.asarray(steps) % jnp.asarray(update_period) == 0
    return jax.lax.cond(due, lambda: new, lambda: old)


def _moment_map(
    fn: str, updates: Any, moments: Any, f: Callable[[jax.Array, jax.Array], jax.Array]
) -> Any:
    """Maps ``f(g, m)`` over updates and moments in the compute dtype; None leaves pass."""
    _tree.check_same_structure(fn, "updates", updates, "moments", moments)
    _tree.check_same_shapes(fn, "updates", updates, "moments", moments)

    def leaf(g: Any, m: Any) -> Any:
        if g is None:
            return None
        g, m = jnp.asarray(g), jnp.asarray(m)
        return f(g, m).astype(m.dtype)

    return jax.tree.map(leaf, updates, moments, is_leaf=lambda x: x is None)


def update_moment(updates: Any, moments: Any, decay: ArrayLike, order: int) -> Any:
    r"""An exponential moving average of the updates' ``order``-th powers.

    :math:`m \leftarrow (1 - \beta) g^{k} + \beta m`, leaf by leaf, with
    :math:`1 - \beta` exact for a Python ``decay``.

    Args:
      updates: the new values :math:`g`.
      moments: the averages :math:`m`, of the same structure and shapes.
      decay: :math:`\beta`.
      order: :math:`k`.

    Returns:
      The new moments, in ``moments``' dtypes.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> float(gc.update_moment(jnp.array(2.0), jnp.array(1.0), 0.5, 2))
      2.5
    """
    beta, one_minus_beta = _scalar(decay)

    def f(g: jax.Array, m: jax.Array) -> jax.Array:
        gc, mc, b, omb = _tree.upcast(g, m, beta, one_minus_beta)
        return omb * gc**order + b * mc

    return _moment_map("update_moment", updates, moments, f)


def update_moment_per_elem_norm(updates: Any, moments: Any, decay: ArrayLike, order: int) -> Any:
    r"""An exponential moving average of :math:`|g|^k`, element by element.

    :math:`m \leftarrow (1 - \beta) |g|^{k} + \beta m`; complex :math:`g` use
    their modulus. Difference from Optax 0.2.8: Optax raises real :math:`g` to
    the power :math:`k` without the absolute value, which for odd :math:`k`
    averages signed values, not a norm; the two agree for even :math:`k`.

    Args:
      updates: the new values :math:`g`.
      moments: the averages :math:`m`, of the same structure and shapes.
      decay: :math:`\beta`.
      order: :math:`k`.

    Returns:
      The new moments, in ``moments``' dtypes.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> float(gc.update_moment_per_elem_norm(jnp.array(-2.0), jnp.array(1.0), 0.5, 1))
      1.5
    """
    beta, one_minus_beta = _scalar(decay)

    def f(g: jax.Array, m: jax.Array) -> jax.Array:
        gc, mc, b, omb = _tree.upcast(g, m, beta, one_minus_beta)
        if order == 2:
            norm = _tree.abs_sq(gc).real
        else:
            norm = jnp.abs(gc) ** order
        return omb * norm.astype(mc.dtype) + b * mc

    return _moment_map("update_moment_per_elem_norm", updates, moments, f)


def update_infinity_moment(updates: Any, moments: Any, decay: ArrayLike, eps: ArrayLike) -> Any:
    r"""Adamax's infinity-norm moment: :math:`m \leftarrow \max(\beta m, |g| + \epsilon)`.

    Args:
      updates: the new values :math:`g`.
      moments: the moments :math:`m`, of the same structure and shapes.
      decay: :math:`\beta`.
      eps: :math:`\epsilon`.

    Returns:
      The new moments, in ``moments``' dtypes.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> float(gc.update_infinity_moment(jnp.array(-2.0), jnp.array(3.0), 0.5, 0.0))
      2.0
    """
    beta = _scalar(decay)[0]
    epsilon = _scalar(eps)[0]

    def f(g: jax.Array, m: jax.Array) -> jax.Array:
        gc, mc, b, e = _tree.upcast(g, m, beta, epsilon)
        return jnp.maximum(b * mc, jnp.abs(gc).astype(mc.dtype) + e)

    return _moment_map("update_infinity_moment", updates, moments, f)


def bias_correction(moment: Any, decay: ArrayLike, count: ArrayLike) -> Any:
    r"""Divides a moving average by :math:`1 - \beta^t`, its zero initialisation's bias.

    :math:`1 - \beta^t` is computed in float32 (or wider) whatever the moment's
    dtype: in bfloat16, ``0.999**t`` rounds to 1 for the first hundreds of steps.

    Args:
      moment: a tree of moving averages.
      decay: :math:`\beta`.
      count: :math:`t`, the number of updates averaged (an integer scalar).

    Returns:
      The debiased tree, in ``moment``'s dtypes.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> round(float(gc.bias_correction(jnp.array(0.1), 0.9, jnp.int32(1))), 4)
      1.0
    """
    beta = _scalar(decay)[0]
    correction = _tree.debias(beta, jnp.asarray(count))

    def leaf(m: Any) -> jax.Array:
        m = jnp.asarray(m)
        mc, c = _tree.upcast(m, correction)
        return (mc / c).astype(m.dtype)

    return jax.tree.map(leaf, moment)


class _ParamsPlaceholder:
    """Stands for the parameters in ``init``: a pytree node without children."""


jax.tree_util.register_pytree_node(
    _ParamsPlaceholder, lambda _: ((), None), lambda _aux, _children: _ParamsPlaceholder()
)


def tree_map_params(
    initable: Any,
    f: Callable[..., Any],
    state: Any,
    /,
    *rest: Any,
    transform_non_params: Callable[..., Any] | None = None,
    is_leaf: Callable[[Any], bool] | None = None,
) -> Any:
    """Applies ``f`` to every copy of the parameter tree inside an optimizer state.

    Finds which parts of ``state`` are shaped like the parameters by running
    ``initable.init`` (or ``initable``) on a placeholder, as Optax does; those
    parts are mapped leaf by leaf with ``f(leaf, *rest_leaves)``, and every other
    leaf (steps, hyperparameters, factored moments) goes through
    ``transform_non_params`` if given. Typical use: a state's sharding from the
    parameters' (``f = lambda _, spec: spec``).

    Args:
      initable: a transformation, or a function from parameters to a state.
      f: the function for the leaves of parameter-shaped subtrees.
      state: the optimizer state.
      *rest: trees of the parameters' structure, whose leaves ``f`` also gets.
      transform_non_params: a function for the other leaves; they are kept by default.
      is_leaf: passed to ``jax.tree.map`` over the parameter-shaped subtrees.

    Returns:
      A tree of the state's structure (above the parameter-shaped subtrees).

    Raises:
      TypeError: if ``initable.init`` cannot run on a placeholder (an init that
        reads the parameters' values).

    Note:
      A subtree counts as parameter-shaped when init builds it with
      ``jax.tree.map`` over the parameters, whatever its leaves' shapes. So
      :func:`scale_by_factored_rms`'s ``v_row`` and ``v_col`` (factored, of other
      shapes; see gradchain/_factored.py) and :func:`scale_by_sm3`'s ``mu`` (a
      list per leaf) are passed to ``f`` too, as in Optax: an ``f`` building
      shardings must look at each leaf's shape.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.sgd(0.1, momentum=0.9)
      >>> state = tx.init({"w": jnp.ones(2)})
      >>> out = gc.tree_map_params(tx, lambda p: p + 1, state, transform_non_params=lambda _: None)
      >>> [float(x) for x in out[0].trace["w"]]
      [1.0, 1.0]
    """
    init = initable.init if hasattr(initable, "init") else initable
    try:
        with_placeholders = init(_ParamsPlaceholder())
    except Exception as err:
        raise TypeError(
            f"tree_map_params: `initable.init` could not run on a stand-in for the parameters "
            f"({type(err).__name__}: {err}). Its state is not a set of copies of the parameter "
            f"tree (it reads their shapes or values); map the state with jax.tree.map instead."
        ) from err

    def visit(marker: Any, value: Any) -> Any:
        if isinstance(marker, _ParamsPlaceholder):
            return jax.tree.map(f, value, *rest, is_leaf=is_leaf)
        if transform_non_params is not None:
            return transform_non_params(value)
        return value

    return jax.tree.map(
        visit, with_placeholders, state, is_leaf=lambda x: isinstance(x, _ParamsPlaceholder)
    )
