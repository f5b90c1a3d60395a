r"""ZeRO-1: the optimizer state sharded along the data-parallel axis, as one policy.

In data-parallel training every device holds the whole model and computes the
gradient of its slice of the batch. ZeRO stage 1 (Rajbhandari et al., 2020)
keeps the parameters replicated but splits the optimizer state: each device
stores and updates only its share of every moment. With the state's shardings
given to ``jax.jit``, XLA does the rest: the gradients are reduce-scattered to
the shard each device updates, and the updated parameters all-gathered.

:func:`zero1_shardings` gives the shardings; the rule, per state leaf:

- start from the sharding the leaf would have with the parameters as they are
  (:func:`state_shardings`: replicated parameters give a replicated state;
  parameters sharded over another axis, e.g. tensor-parallel ``"model"``, keep
  that sharding in their state);
- then shard the leaf's largest axis not yet sharded whose size is a multiple
  of the data axis's size (the first one among equals) over the data axis;
- a leaf with no such axis (scalars, counters, hyperparameters, small or
  indivisible leaves) stays as it was: replicated over the data axis.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gradchain._base import AnyTransformation, Params
from gradchain._sharding import full_spec, state_partition_specs

_FN = "zero1_shardings"


class Zero1Shardings(NamedTuple):
    """What :func:`zero1_shardings` returns: the ``in``/``out`` shardings of a training step."""

    params: Any  # NamedSharding per parameter leaf
    state: Any  # NamedSharding per leaf of the optimizer state


def _axis_sizes(mesh: Mesh, axis: str | tuple[str, ...]) -> tuple[tuple[str, ...], int]:
    names = (axis,) if isinstance(axis, str) else tuple(axis)
    missing = [a for a in names if a not in mesh.axis_names]
    if not names or missing:
        raise ValueError(
            f"{_FN}: `axis` must name axes of the mesh, whose axes are {mesh.axis_names}; got "
            f"{axis!r}. Name the data-parallel axis, e.g. `axis='data'`."
        )
    size = 1
    for a in names:
        size *= mesh.shape[a]
    return names, size


def _used(entries: tuple[Any, ...]) -> set[str]:
    out: set[str] = set()
    for e in entries:
        if isinstance(e, str):
            out.add(e)
        elif isinstance(e, tuple):
            out.update(e)
    return out


def _shard_over(
    spec: PartitionSpec, shape: tuple[int, ...], names: tuple[str, ...], size: int
) -> PartitionSpec:
    entries = full_spec(spec, len(shape))
    if _used(entries) & set(names):
        return PartitionSpec(*entries)
    free = [
        i for i, e in enumerate(entries) if e is None and shape[i] >= size and shape[i] % size == 0
    ]
    if not free:
        return PartitionSpec(*entries)
    best = max(free, key=lambda i: (shape[i], -i))
    entry = names[0] if len(names) == 1 else names
    return PartitionSpec(*entries[:best], entry, *entries[best + 1 :])


def zero1_shardings(
    tx: AnyTransformation,
    params: Params,
    mesh: Mesh,
    axis: str | tuple[str, ...] = "data",
    *,
    param_specs: Any = None,
) -> Zero1Shardings:
    """Shardings for ZeRO-1: the state split over the data axis, the parameters as they are.

    Jit the training step with ``in_shardings=(shardings.params,
    shardings.state, batch_sharding)`` and ``out_shardings=(shardings.params,
    shardings.state)``; XLA then reduce-scatters the gradients and all-gathers
    the updated parameters. The module docstring gives the rule per state leaf.

    Args:
      tx: the transformation.
      params: the parameters (arrays or ``jax.ShapeDtypeStruct``); only shapes
        and dtypes are read.
      mesh: the device mesh.
      axis: the data-parallel mesh axis (or a tuple of axes) to split the state over.
      param_specs: a tree of ``PartitionSpec`` of the parameters' structure for
        parameters sharded another way (say over ``"model"``); replicated by
        default. It must not use ``axis``.

    Returns:
      A :class:`Zero1Shardings` of ``NamedSharding`` trees.

    Raises:
      ValueError: if ``axis`` is not an axis of ``mesh``, or ``param_specs`` uses it.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import gradchain as gc
      >>> mesh = jax.make_mesh((8,), ("data",))
      >>> params = {"w": jnp.zeros((16, 3)), "b": jnp.zeros(3)}
      >>> shardings = gc.zero1_shardings(gc.adam(1e-3), params, mesh)
      >>> shardings.params["w"].spec, shardings.state[0].mu["w"].spec
      (P(), P('data', None))
      >>> shardings.state[0].mu["b"].spec  # 3 entries cannot be split 8 ways
      P(None,)
    """
    names, size = _axis_sizes(mesh, axis)
    if param_specs is None:
        param_specs = jax.tree.map(lambda _: PartitionSpec(), params)
    is_spec = lambda x: isinstance(x, PartitionSpec)  # noqa: E731
    for spec in jax.tree.leaves(param_specs, is_leaf=is_spec):
        if _used(tuple(spec)) & set(names):
            raise ValueError(
                f"{_FN}: `param_specs` shards a parameter over {axis!r} ({spec}), the axis the "
                f"state is split over; ZeRO-1 keeps parameters whole along the data axis."
            )
    state, specs = state_partition_specs(tx, params, param_specs)
    zero = jax.tree.map(
        lambda s, leaf: _shard_over(s, tuple(leaf.shape), names, size),
        specs,
        state,
        is_leaf=is_spec,
    )

    def named(s: PartitionSpec) -> NamedSharding:
        return NamedSharding(mesh, s)

    return Zero1Shardings(
        params=jax.tree.map(named, param_specs, is_leaf=is_spec),
        state=jax.tree.map(named, zero, is_leaf=is_spec),
    )
