"""Tree helpers: trace-time checks that name key paths, moments, norms, casting.

The checks run while JAX traces a function, on shapes and structures only, so
they cost nothing in the compiled program.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


def keystr(path: tuple[Any, ...]) -> str:
    """Renders a key path the way users index the tree, or ``<root>`` when empty."""
    return jax.tree_util.keystr(path) if path else "<root>"


def _is_none(x: Any) -> bool:
    return x is None


def _describe(node: Any) -> str:
    if node is None:
        return "None"
    if isinstance(node, dict):
        return f"dict with keys {sorted(map(str, node))}"
    fields = getattr(node, "_fields", None)
    if isinstance(node, tuple) and fields is not None:
        return f"{type(node).__name__}{tuple(fields)}"
    if isinstance(node, list | tuple):
        return f"{type(node).__name__} of length {len(node)}"
    if hasattr(node, "shape") and hasattr(node, "dtype"):
        return f"array {node.dtype}{list(node.shape)}"
    return type(node).__name__


def _first_difference(a: Any, b: Any, path: tuple[Any, ...] = ()) -> tuple[str, str, str]:
    """Finds the first key path where two trees differ, with a description of each side."""
    a_kids = _children(a)
    b_kids = _children(b)
    if a_kids is None or b_kids is None:
        return keystr(path), _describe(a), _describe(b)
    a_type, a_items = a_kids
    b_type, b_items = b_kids
    a_keys = [k for k, _ in a_items]
    b_keys = [k for k, _ in b_items]
    if a_type is b_type and a_keys != b_keys:
        # The same container with other keys (or another length): name the first odd key.
        for key, child in a_items + b_items:
            if (key in a_keys) != (key in b_keys):
                a_desc = _describe(child) if key in a_keys else f"no entry (in a {_describe(a)})"
                b_desc = _describe(child) if key in b_keys else f"no entry (in a {_describe(b)})"
                return keystr((*path, key)), a_desc, b_desc
    if a_type is not b_type or a_keys != b_keys:
        return keystr(path), _describe(a), _describe(b)
    for (key, a_child), (_, b_child) in zip(a_items, b_items, strict=True):
        # No is_leaf: None is an empty subtree, so None where an array was is a difference.
        if jax.tree.structure(a_child) != jax.tree.structure(b_child):
            return _first_difference(a_child, b_child, (*path, key))
    return keystr(path), _describe(a), _describe(b)


def _children(node: Any) -> tuple[type, list[tuple[Any, Any]]] | None:
    """The (node type, [(key, child)]) of an inner node, or None for a leaf."""
    if node is None:
        return None
    flat, _ = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)
    if len(flat) == 1 and not flat[0][0] and flat[0][1] is node:
        return None  # a leaf: flattening returned the node itself
    return type(node), [(path[0], child) for path, child in flat]


def check_no_float0(fn: str, name: str, tree: Any) -> None:
    """Raises TypeError naming ``fn``, the tree and the key path of a ``float0`` leaf.

    ``jax.grad(loss, allow_int=True)`` gives float0 gradients for integer
    inputs: arrays with no values, on which every arithmetic operation fails
    deep inside the update with a message that names neither the leaf nor the cause.
    """
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if getattr(x, "dtype", None) == jax.dtypes.float0:
            raise TypeError(
                f"{fn}: `{name}` has a float0 leaf at {keystr(path)}, the gradient that "
                f"jax.grad(..., allow_int=True) gives for an integer input; it has no values "
                f"to update with. Differentiate the floating parameters only (leave integer "
                f"leaves out of the tree passed to jax.grad), or put None at that path in the "
                f"parameters and the gradients alike."
            )


def _is_array_like(x: Any) -> bool:
    """A numeric (or bool) array or ShapeDtypeStruct: a leaf gradchain can compute with."""
    dtype = getattr(x, "dtype", None)
    if dtype is None or not hasattr(x, "shape"):
        return False
    return jnp.issubdtype(dtype, jnp.number) or jnp.issubdtype(dtype, jnp.bool_)


def check_array_leaves(fn: str, name: str, tree: Any) -> None:
    """Raises TypeError naming ``fn``, the tree, the path and the value of a non-array leaf.

    Such leaves are strings, objects, object arrays, Python numbers, or float0
    gradients (see :func:`check_no_float0`).
    """
    check_no_float0(fn, name, tree)
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if not _is_array_like(x):
            raise TypeError(
                f"{fn}: `{name}` has a leaf at {keystr(path)} that is not a numeric array: "
                f"{type(x).__name__} {x!r:.40}. Pass only arrays (or jax.ShapeDtypeStruct) in "
                f"the trees to optimize: split strings and other static fields out (nnx.split, "
                f"eqx.partition), or put None at that path in the parameters and the "
                f"gradients alike."
            )


def check_same_structure(fn: str, a_name: str, a: Any, b_name: str, b: Any) -> None:
    """Raises ValueError naming ``fn`` and the first differing key path if structures differ.

    Raises:
      TypeError: if either tree holds a ``float0`` leaf (see :func:`check_no_float0`).
      ValueError: if the structures differ.
    """
    check_no_float0(fn, a_name, a)
    check_no_float0(fn, b_name, b)
    if jax.tree.structure(a) == jax.tree.structure(b):  # None matches only None
        return
    where, a_desc, b_desc = _first_difference(a, b)
    raise ValueError(
        f"{fn}: the trees `{a_name}` and `{b_name}` differ in structure at {where}: "
        f"`{a_name}` has {a_desc} there, `{b_name}` has {b_desc}. Pass trees built "
        f"from the same parameters (the same keys, the same container types, None "
        f"in the same places); a state must come from this transformation's own init."
    )


def check_same_shapes(fn: str, a_name: str, a: Any, b_name: str, b: Any) -> None:
    """Raises ValueError with the key path and both shapes where leaf shapes differ.

    Trees must already have the same structure. ``None`` leaves are skipped.
    """
    a_flat = jax.tree_util.tree_flatten_with_path(a, is_leaf=_is_none)[0]
    b_flat = jax.tree.leaves(b, is_leaf=_is_none)
    for (path, x), y in zip(a_flat, b_flat, strict=True):
        if x is None or y is None:
            continue
        if jnp.shape(x) != jnp.shape(y):
            raise ValueError(
                f"{fn}: `{a_name}` and `{b_name}` disagree in shape at {keystr(path)}: "
                f"{tuple(jnp.shape(x))} against {tuple(jnp.shape(y))}. gradchain never "
                f"broadcasts one against the other; give both the parameter's shape."
            )


def check_matches(fn: str, updates: Any, state_name: str, state_tree: Any) -> None:
    """Checks that ``updates`` and a per-parameter state tree share structure and shapes."""
    check_same_structure(fn, "updates", updates, state_name, state_tree)
    check_same_shapes(fn, "updates", updates, state_name, state_tree)


def require_params(fn: str, params: Any) -> None:
    """Raises a ValueError saying that ``fn`` needs ``params`` when they are missing."""
    if params is None:
        raise ValueError(
            f"{fn}: update needs the current parameters; call "
            f"`update(updates, state, params)` instead of `update(updates, state)`."
        )


def objective_value(fn: str, value: Any, hint: str = "") -> jax.Array:
    """The ``value=`` extra argument (the loss) as a real scalar of at least float32.

    Args:
      fn: the public transform that needs it, named in errors.
      value: what the caller passed as ``value=`` (None when nothing was).
      hint: a sentence appended to the error for a missing value.

    Raises:
      ValueError: if ``value`` is missing or not a scalar.
      TypeError: if it is not a real number.
    """
    if value is None:
        raise ValueError(
            f"{fn}: update needs `value=`, the objective (the loss) at the current "
            f"parameters, and got none. Call `update(grads, state, params, value=loss)`, e.g. "
            f"with `loss, grads = jax.value_and_grad(loss_fn)(params)`; inside a chain, pass "
            f"`value=` to the chain's update, which hands it to every member that takes it."
            f"{hint}"
        )
    try:
        out = jnp.asarray(value)
    except TypeError as err:
        raise TypeError(
            f"{fn}: `value` must be the objective's value, a real scalar; got "
            f"{type(value).__name__} {value!r:.80}."
        ) from err
    if not any(jnp.issubdtype(out.dtype, k) for k in (jnp.floating, jnp.integer)):
        raise TypeError(
            f"{fn}: `value` must be the objective's value, a real scalar; got an array of "
            f"dtype {out.dtype}."
        )
    if out.shape != ():
        raise ValueError(
            f"{fn}: `value` must be a scalar, the objective at the current parameters; got "
            f"shape {out.shape}. Reduce the loss (e.g. its mean over the batch) before "
            f"passing it."
        )
    return out.astype(compute_dtype(out.dtype))


def safe_increment(step: jax.Array) -> jax.Array:
    """Adds one to a counter, saturating at its dtype's maximum instead of wrapping.

    The counters of gradchain's states are int32, which saturate at 2**31 - 1;
    other integer and float counters saturate at their own dtype's maximum.
    """
    dt = step.dtype
    if jnp.issubdtype(dt, jnp.integer):
        top = np.iinfo(dt).max
    elif jnp.issubdtype(dt, jnp.floating):
        top = np.finfo(dt).max
    else:
        raise TypeError(
            f"safe_increment: the counter must have an integer or floating dtype; got {dt}."
        )
    top = jnp.asarray(top, dt)
    return jnp.where(step < top, step + jnp.ones([], dt), top)


def compute_dtype(*dtypes: Any) -> Any:
    """The dtype to do arithmetic in: at least the default float (float32), wider if asked."""
    out = jnp.dtype(jnp.result_type(float))
    for dt in dtypes:
        dt = jnp.dtype(dt)
        if jnp.issubdtype(dt, jnp.inexact) and dt.itemsize > out.itemsize:
            out = dt
    return out


def state_dtype(param_dtype: Any, dtype: Any | None) -> Any:
    """The dtype of a state leaf kept for a parameter: ``dtype`` if given, else the parameter's.

    A real ``dtype`` chosen for a complex parameter (say ``mu_dtype=jnp.float32``)
    sets the precision, not the kind: the state is complex of at least that
    precision (complex64 for float32, bfloat16 or float16; complex128 for
    float64), since a real state would drop the imaginary parts.
    """
    if dtype is None:
        return param_dtype
    if jnp.issubdtype(param_dtype, jnp.complexfloating) and not jnp.issubdtype(
        dtype, jnp.complexfloating
    ):
        return jnp.complex128 if jnp.dtype(dtype) == jnp.float64 else jnp.complex64
    return dtype


def zeros_like(params: Any, dtype: Any | None = None) -> Any:
    """Zeros shaped like each parameter leaf (arrays or ShapeDtypeStructs), optionally recast.

    Each leaf takes its parameter's sharding (a ``ShapeDtypeStruct`` without
    one gives the default placement), so ``tx.init(sharded_params)`` builds a
    state that a jitted update keeps as it is, under an Explicit mesh too.
    None leaves stay None.
    """
    check_array_leaves("init", "params", params)

    def zeros(p: Any) -> jax.Array:
        return like(p, dtype if dtype is not None else p.dtype)

    return jax.tree.map(zeros, params)


def like(p: Any, dtype: Any, fill: Any = 0) -> jax.Array:
    """An array of ``p``'s shape and sharding filled with ``fill``, of dtype ``dtype``.

    ``p`` is an array or a ``jax.ShapeDtypeStruct``; the dtype is always
    given, so a weakly typed parameter never gives a weakly typed state leaf.
    """
    return jnp.full_like(p, fill, dtype=dtype)


def zeros_for(p: Any, shape: tuple[int, ...], dtype: Any) -> jax.Array:
    """Zeros of ``shape`` kept for parameter ``p``: with ``p``'s sharding when shaped like it.

    The rule of :func:`gradchain.state_shardings`: a state leaf of its
    parameter's shape follows the parameter, any other shape is replicated.
    """
    if tuple(shape) == tuple(jnp.shape(p)):
        return like(p, dtype)
    return jnp.zeros(shape, dtype)


def accumulator_like(params: Any, dtype: Any | None = None) -> Any:
    """Zeros for a running sum of the updates themselves (momentum, first moments).

    Like :func:`zeros_like`, except that complex leaves stay complex: see
    :func:`state_dtype`.
    """
    check_array_leaves("init", "params", params)

    def zeros(p: Any) -> jax.Array:
        return like(p, state_dtype(p.dtype, dtype))

    return jax.tree.map(zeros, params)


def full_like(params: Any, value: float, dtype: Any | None = None) -> Any:
    """Arrays filled with ``value`` shaped like each parameter leaf."""
    check_array_leaves("init", "params", params)

    def full(p: Any) -> jax.Array:
        return like(p, dtype if dtype is not None else p.dtype, value)

    return jax.tree.map(full, params)


def abs_sq(x: jax.Array) -> jax.Array:
    """|x|^2 for real or complex x, in x's dtype."""
    if jnp.iscomplexobj(x):
        return (x.real * x.real + x.imag * x.imag).astype(x.dtype)
    return x * x


def upcast(*xs: jax.Array) -> list[jax.Array]:
    """Arrays (leaves and scalar hyperparameters) cast to their common compute dtype."""
    dt = compute_dtype(*(x.dtype for x in xs))
    return [x.astype(dt) for x in xs]


def map_leaves(f: Callable[..., tuple[jax.Array, ...]], n_out: int, *trees: Any) -> tuple[Any, ...]:
    """Applies ``f`` leaf-wise to trees of one structure, returning ``n_out`` trees."""
    treedef = jax.tree.structure(trees[0])
    columns = [jax.tree.leaves(t) for t in trees]
    outs = [f(*leaves) for leaves in zip(*columns, strict=True)]
    return tuple(treedef.unflatten([o[i] for o in outs]) for i in range(n_out))


def debias(decay: jax.Array, step: jax.Array) -> jax.Array:
    """``1 - decay**step`` in the hyperparameter's float dtype (float32 or wider).

    In bfloat16, ``0.999**t`` rounds to 1 for the first hundreds of steps, so
    this is never computed in the leaves' dtype.
    """
    return 1 - decay ** step.astype(decay.dtype)


def global_norm(updates: Any) -> jax.Array:
    """The l2 norm of all leaves together, accumulated in at least float32.

    Args:
      updates: a tree of arrays.

    Returns:
      A scalar in the compute dtype (float32 unless a leaf is wider).

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> float(gc.global_norm({"a": jnp.array([3.0]), "b": jnp.array([4.0])}))
      5.0
    """
    leaves = jax.tree.leaves(updates)
    if not leaves:
        return jnp.zeros([], jnp.result_type(float))
    dt = compute_dtype(*(x.dtype for x in leaves))
    total = sum(jnp.sum(abs_sq(x.astype(dt)).real) for x in leaves)
    return jnp.sqrt(jnp.asarray(total, jnp.finfo(dt).dtype))


def check_state(fn: str, state: Any, expected: type | tuple[type, ...]) -> None:
    """Raises a TypeError naming ``fn`` when ``state`` is not of the state type it built."""
    if isinstance(state, expected):
        return
    names = (
        " or ".join(t.__name__ for t in expected)
        if isinstance(expected, tuple)
        else expected.__name__
    )
    raise TypeError(
        f"{fn}: update received a state of type {type(state).__name__}, but this "
        f"transformation's state is a {names}. Pass the state returned by this same "
        f"transformation's init (or by its previous update), not another optimizer's."
    )


class ShapeRecord(NamedTuple):
    """A parameter's shape kept in a state without its data, for the trace-time checks.

    Axis ``i`` of the parameter is ``axes[i]``: ``shape[i]`` False values, so the
    record costs ``sum(shape)`` bytes where the parameter has ``prod(shape)``
    elements, and it has no zero-size array unless the parameter has none:
    Orbax refuses to save arrays with no elements, which the (0, *shape) arrays
    once used for this were. A scalar's record holds no array at all.
    """

    axes: tuple[jax.Array, ...]  # bool[shape[i]] per axis i, all False


def recorded_shape(record: ShapeRecord) -> tuple[int, ...]:
    """The shape a :class:`ShapeRecord` records (static: read from its arrays' shapes)."""
    return tuple(int(jnp.shape(a)[-1]) for a in record.axes)


def shape_record(p: Any) -> ShapeRecord:
    """The :class:`ShapeRecord` of ``p`` (an array or a ``jax.ShapeDtypeStruct``)."""
    return ShapeRecord(tuple(jnp.zeros((int(n),), jnp.bool_) for n in jnp.shape(p)))


def is_shape_record(x: Any) -> bool:
    """``is_leaf`` for trees holding ShapeRecords (each one stands for one parameter)."""
    return isinstance(x, ShapeRecord)


def recorded_shapes(records: Any) -> Any:
    """A tree of ShapeRecords as the tree of ``jax.ShapeDtypeStruct`` it records (for checks)."""
    return jax.tree.map(
        lambda r: jax.ShapeDtypeStruct(recorded_shape(r), jnp.bool_) if is_shape_record(r) else r,
        records,
        is_leaf=is_shape_record,
    )
