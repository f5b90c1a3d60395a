"""flatten: run a transformation on one vector holding every leaf.

Many small leaves cost one kernel each; concatenated they cost one. The inner
transformation sees a single 1-D array; its state (returned as it is, as in
Optax) holds vectors of the total size.

Leaves of different dtypes are concatenated in their common compute dtype
(float32 for bfloat16 with float32, say), and each update leaf comes back in
its gradient's dtype.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from gradchain import _explicit, _tree
from gradchain._base import (
    AnyTransformation,
    GradientTransformationExtraArgs,
    OptState,
    Params,
    Updates,
    call_update,
    check_transformation,
)


def _common_dtype(leaves: list[Any]) -> Any:
    dtypes = {jnp.dtype(x.dtype) for x in leaves}
    if len(dtypes) == 1:
        return dtypes.pop()
    return _tree.compute_dtype(*dtypes)


def _ravel(tree: Any) -> Any:
    """One 1-D array (or ShapeDtypeStruct, for abstract leaves) of every leaf in order."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.zeros((0,), jnp.result_type(float))
    dtype = _common_dtype(leaves)
    if any(isinstance(x, jax.ShapeDtypeStruct) for x in leaves):
        return jax.ShapeDtypeStruct((sum(math.prod(x.shape) for x in leaves),), dtype)
    # On an Explicit mesh the vector is replicated: leaves sharded in different ways have no
    # common layout once concatenated. _unravel shards each update back like its gradient.
    flat = [_explicit.reshape(jnp.asarray(x), (math.prod(jnp.shape(x)),)) for x in leaves]
    return jnp.concatenate([x.astype(dtype) for x in flat])


def _unravel(flat: jax.Array, like: Any) -> Any:
    """Splits ``flat`` into leaves shaped and typed like those of ``like``."""
    leaves, treedef = jax.tree.flatten(like)
    out, start = [], 0
    for x in leaves:
        size = math.prod(jnp.shape(x))
        piece = flat[start : start + size]
        out.append(_explicit.reshape(piece, jnp.shape(x), _explicit.mesh_spec(x)).astype(x.dtype))
        start += size
    return treedef.unflatten(out)


def flatten(inner: AnyTransformation) -> GradientTransformationExtraArgs:
    """Runs ``inner`` on the concatenation of all leaves, as one vector.

    Args:
      inner: the transformation to run on the flat vector.

    Returns:
      A GradientTransformationExtraArgs whose state is ``inner``'s state, built
      from the flattened parameters.

    Raises:
      TypeError: if ``inner`` is not a transformation.
      ValueError: (while tracing) if ``params`` are given and the updates do
        not match them; without ``params`` only the total size is checked.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> params = {"a": jnp.zeros(2), "b": jnp.zeros(())}
      >>> tx = gc.flatten(gc.adam(0.1))
      >>> state = tx.init(params)
      >>> state[0].mu.shape
      (3,)
      >>> updates, _ = tx.update({"a": jnp.ones(2), "b": jnp.ones(())}, state)
      >>> round(float(updates["b"]), 3)
      -0.1
    """
    fn = "flatten"
    check_transformation(fn, "`inner`", inner)

    def init_fn(params: Params) -> OptState:
        return inner.init(_ravel(params))

    def update_fn(
        updates: Updates, state: OptState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, OptState]:
        if params is not None:
            _tree.check_matches(fn, updates, "params", params)
        flat_params = None if params is None else _ravel(params)
        flat, state = call_update(inner, _ravel(updates), state, flat_params, extra_args)
        return _unravel(flat, updates), state

    return GradientTransformationExtraArgs(init_fn, update_fn)
