"""Array operations that state their output's sharding under an Explicit mesh.

Under a mesh with ``AxisType.Explicit`` axes (the default of
``jax.make_mesh`` since JAX 0.7) an array's sharding is part of its type, and
JAX refuses to guess it where two layouts are possible: a contraction over a
sharded axis ("Contracting dimensions are sharded ... specify out_sharding"),
a reshape that merges sharded axes, a decomposition (``svd``, ``eigh``) of a
sharded matrix. The helpers here state it, and nothing else: where no operand
is typed on an Explicit mesh (one device, no mesh, an Auto mesh) they make
exactly the call they replace, so the numbers are bit-identical there.

The rule for a product (:func:`einsum`, :func:`matmul`): each output axis takes
the mesh axes of the first operand axis it comes from, unless an earlier
output axis already uses them (a mesh axis shards one array axis at most), so
``x @ x.T`` of an ``(m@data, n@model)`` matrix is ``(m@data, m)`` and a
Newton-Schulz iteration keeps its iterate sharded like the parameter. A caller
may instead state ``out``, e.g. ``P()`` for a statistic kept replicated in the
state.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
from jax.core import Tracer
from jax.sharding import AxisType, NamedSharding, PartitionSpec

__all__ = [
    "einsum",
    "inner",
    "matmul",
    "mesh_spec",
    "replicate",
    "reshape",
    "reshard",
    "zeros_along",
]


def mesh_spec(x: Any) -> PartitionSpec | None:
    """``x``'s ``PartitionSpec``, one entry per axis, if typed on a mesh with an Explicit axis.

    None for a plain array on one device, under no mesh, or on a mesh whose
    axes are all Auto (XLA then picks the layouts and nothing must be stated).
    """
    sharding = getattr(jax.typeof(x), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or mesh.empty or AxisType.Explicit not in tuple(mesh.axis_types):
        return None
    entries = tuple(sharding.spec)  # type: ignore[union-attr]
    return PartitionSpec(*entries, *(None,) * (jnp.ndim(x) - len(entries)))


def _on_mesh_of(xs: Iterable[Any], spec: PartitionSpec) -> NamedSharding:
    """``spec`` on the (abstract) mesh of the first of ``xs`` typed on an Explicit mesh.

    A ``NamedSharding`` rather than a bare ``PartitionSpec``: JAX takes the
    latter only inside ``jax.set_mesh``, and a jitted function of arrays placed
    on an Explicit mesh may run outside one.
    """
    for x in xs:
        if mesh_spec(x) is not None:
            return NamedSharding(jax.typeof(x).sharding.mesh, spec)  # type: ignore[union-attr]
    raise AssertionError("unreachable: callers pass an operand on an Explicit mesh")


def _names(entry: Any) -> set[str]:
    if entry is None:
        return set()
    return set(entry) if isinstance(entry, tuple) else {entry}


def _product_spec(
    out_letters: str, operands: Iterable[tuple[str, PartitionSpec | None]]
) -> PartitionSpec:
    """The rule of the module docstring, for einsum letters."""
    sources: dict[str, list[Any]] = {}
    for letters, spec in operands:
        entries = tuple(spec) if spec is not None else (None,) * len(letters)
        for letter, entry in zip(letters, entries, strict=True):
            sources.setdefault(letter, []).append(entry)
    used: set[str] = set()
    out = []
    for letter in out_letters:
        pick = None
        for entry in sources.get(letter, []):
            names = _names(entry)
            if names and not names & used:
                pick = entry
                break
        used |= _names(pick)
        out.append(pick)
    return PartitionSpec(*out)


def einsum(
    subscripts: str, *operands: jax.Array, precision: Any = None, out: Any = None
) -> jax.Array:
    """``jnp.einsum`` that states ``out_sharding`` when an operand lies on an Explicit mesh.

    Args:
      subscripts: explicit subscripts with ``->`` and no ellipsis, e.g. ``"bmn,bnr->bmr"``.
      *operands: the arrays.
      precision: passed to ``jnp.einsum``.
      out: the output's ``PartitionSpec``; by default the rule of the module docstring.
    """
    specs = [mesh_spec(x) for x in operands]
    if all(s is None for s in specs):
        return jnp.einsum(subscripts, *operands, precision=precision)
    ins, out_letters = subscripts.replace(" ", "").split("->")
    if out is None:
        out = _product_spec(out_letters, zip(ins.split(","), specs, strict=True))
    sharding = _on_mesh_of(operands, out)
    return jnp.einsum(subscripts, *operands, precision=precision, out_sharding=sharding)


def matmul(a: jax.Array, b: jax.Array, *, precision: Any = None, out: Any = None) -> jax.Array:
    """``jnp.matmul`` of two arrays of rank >= 2, stating ``out_sharding`` on an Explicit mesh.

    The leading (batch) axes must be of one rank in both; see :func:`einsum`
    for the rule.
    """
    sa, sb = mesh_spec(a), mesh_spec(b)
    if sa is None and sb is None:
        return jnp.matmul(a, b, precision=precision)
    if out is None:
        batch = "abcdefgh"[: jnp.ndim(a) - 2]
        lhs, rhs = f"{batch}ij", f"{batch}jk"
        out = _product_spec(f"{batch}ik", [(lhs, sa), (rhs, sb)])
    return jnp.matmul(a, b, precision=precision, out_sharding=_on_mesh_of((a, b), out))


def inner(a: jax.Array, b: jax.Array) -> jax.Array:
    """``jnp.vdot(a.ravel(), b.ravel())`` without the ravel: a scalar, replicated on a mesh.

    One ``dot_general`` contracting every axis, which XLA computes as the
    ``vdot`` of the raveled arrays (bit for bit on one device) and which needs
    no reshape of a sharded array. ``a`` is conjugated, as by ``jnp.vdot``.
    """
    plain = mesh_spec(a) is None and mesh_spec(b) is None
    if plain and jnp.ndim(a) <= 1:
        return jnp.vdot(a, b)
    if jnp.iscomplexobj(a):
        a = jnp.conj(a)
    axes = tuple(range(jnp.ndim(a)))
    dims = ((axes, axes), ((), ()))
    if plain:
        return jax.lax.dot_general(a, b, dims)
    return jax.lax.dot_general(a, b, dims, out_sharding=_on_mesh_of((a, b), PartitionSpec()))


def reshape(x: jax.Array, shape: tuple[int, ...], out: Any = None) -> jax.Array:
    """``x.reshape(shape)``, replicated (or with spec ``out``) if ``x`` is on an Explicit mesh."""
    if mesh_spec(x) is None:
        return x.reshape(shape)
    spec = PartitionSpec() if out is None else out
    return jnp.reshape(x, shape, out_sharding=_on_mesh_of((x,), spec))


def reshard(x: jax.Array, spec: PartitionSpec | None) -> jax.Array:
    """``x`` with sharding ``spec`` if it lies on an Explicit mesh (and ``spec`` is not None)."""
    if spec is None or mesh_spec(x) is None or mesh_spec(x) == spec:
        return x
    return jax.sharding.reshard(x, _on_mesh_of((x,), spec))


def replicate(x: jax.Array) -> tuple[jax.Array, PartitionSpec | None]:
    """``x`` whole on every device, and its former spec to :func:`reshard` a result back.

    For the decompositions (``svd``, ``eigh``, ``qr``) that JAX runs only on
    matrices unsharded along their matrix axes. Off an Explicit mesh ``x`` is
    returned as it is, with None.
    """
    spec = mesh_spec(x)
    if spec is None:
        return x, None
    return reshard(x, PartitionSpec(*(None,) * jnp.ndim(x))), spec


def zeros_along(p: Any, axes: tuple[int, ...], dtype: Any) -> jax.Array:
    """Zeros of shape ``[p.shape[a] for a in axes]``, sharded like those axes of ``p``.

    For state kept per axis of a parameter (Adafactor's row and column moments,
    SM3's accumulators): ``p`` placed with a ``NamedSharding`` (an array, or a
    ``ShapeDtypeStruct`` with one) or typed on an Explicit mesh gives the
    layout :func:`gradchain.state_shardings` declares, which is also the one
    an update's reductions produce; anything else gives plain zeros.
    """
    shape = tuple(jnp.shape(p)[a] for a in axes)
    if isinstance(p, Tracer):
        spec = mesh_spec(p)
        if spec is None:
            return jnp.zeros(shape, dtype)
        kept = _on_mesh_of((p,), PartitionSpec(*(spec[a] for a in axes)))
        return jnp.zeros(shape, dtype, out_sharding=kept)
    sharding = getattr(p, "sharding", None)
    if not isinstance(sharding, NamedSharding):
        return jnp.zeros(shape, dtype)
    entries = tuple(sharding.spec) + (None,) * (len(jnp.shape(p)) - len(sharding.spec))
    kept = NamedSharding(sharding.mesh, PartitionSpec(*(entries[a] for a in axes)))
    return jnp.zeros(shape, dtype, device=kept)


def zeros_stacked(p: Any, n: int, dtype: Any) -> jax.Array:
    """Zeros of shape ``(n, *p.shape)``, sharded like ``p`` along its axes, whole along ``n``.

    For a history of a parameter (L-BFGS's memory): the layout
    :func:`gradchain.state_shardings` declares. ``p`` placed with a
    ``NamedSharding`` or typed on an Explicit mesh gives it; anything else
    gives plain zeros.
    """
    shape = (n, *jnp.shape(p))
    if isinstance(p, Tracer):
        spec = mesh_spec(p)
        if spec is None:
            return jnp.zeros(shape, dtype)
        return jnp.zeros(shape, dtype, out_sharding=_on_mesh_of((p,), PartitionSpec(None, *spec)))
    sharding = getattr(p, "sharding", None)
    if not isinstance(sharding, NamedSharding):
        return jnp.zeros(shape, dtype)
    stacked = NamedSharding(sharding.mesh, PartitionSpec(None, *sharding.spec))
    return jnp.zeros(shape, dtype, device=stacked)
