"""Kronecker factors of a tensor's gradients and their eigenbases (SOAP's linear algebra).

A preconditioned leaf is seen in a canonical layout ``(batch, d_1, ..., d_k)``:
one independent tensor per batch entry (the stacked layers of a
:class:`MuonDimensionNumbers` routing; ``batch = 1`` otherwise), each axis
``d_i`` with its own factor ``GG_i = EMA(G_(i) G_(i)^T)`` (the gradient
contracted with itself over every other axis; for a matrix, Shampoo's ``L =
G G^T`` and ``R = G^T G``) when ``d_i <= max_precond_dim``, and identity
otherwise. Rotating into the eigenbasis is ``G' = G x_1 Q_1 ... x_k Q_k`` (for a
matrix, ``Q_L^T G Q_R``), and back is the transpose.

The refreshes of the bases (a full ``eigh`` at the first step, then one step of
power iteration and QR) run on every factor of the same size and dtype at
once, as one batched decomposition: a model of many same-shaped layers costs
one ``eigh`` per distinct size to compile, not one per leaf.
"""

from __future__ import annotations

import string
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradchain import _explicit
from gradchain._matrices import MatrixView, _as_matrices, _from_matrices

_HIGHEST = jax.lax.Precision.HIGHEST
_LOWER = string.ascii_lowercase[:-1]  # axis letters; "z" is the batch axis
_UPPER = string.ascii_uppercase


class Layout(NamedTuple):
    """How one leaf is preconditioned: its canonical shape and which axes get a factor."""

    shape: tuple[int, ...]  # the parameter's shape
    canon: tuple[int, ...]  # (batch, d_1, ..., d_k)
    preconditioned: tuple[bool, ...]  # per d_i: whether it has a factor (d_i <= max_precond_dim)
    view: MatrixView | None  # the matrix view of a dimension-numbers routing, else None


def merge_small_dims(shape: Sequence[int], max_dim: int) -> tuple[int, ...]:
    """Merges neighbouring axes while their product stays <= ``max_dim``, as SOAP's authors do.

    ``(2, 3, 4, 50)`` with ``max_dim=100`` is ``(24, 50)``; axes of size 1 vanish,
    and an axis larger than ``max_dim`` stays on its own.
    """
    merged: list[int] = []
    current = 1
    for size in shape:
        if current * size > max_dim:
            if current > 1:
                merged.append(current)
                current = size
            else:
                merged.append(size)
                current = 1
        else:
            current *= size
    if current > 1 or not merged:
        merged.append(current)
    return tuple(merged)


def tensor_layout(shape: tuple[int, ...], max_precond_dim: int, merge_dims: bool) -> Layout | None:
    """The layout of a leaf preconditioned along every axis, or None if no axis qualifies."""
    dims = merge_small_dims(shape, max_precond_dim) if merge_dims else shape
    return _layout(shape, (1, *dims), max_precond_dim, None)


def matrix_layout(shape: tuple[int, ...], view: MatrixView, max_precond_dim: int) -> Layout | None:
    """The layout of a stack of matrices (batch, fan_in, fan_out), or None if neither side fits."""
    return _layout(shape, (view.batch, view.fan_in, view.fan_out), max_precond_dim, view)


def _layout(
    shape: tuple[int, ...], canon: tuple[int, ...], max_dim: int, view: MatrixView | None
) -> Layout | None:
    pre = tuple(d <= max_dim for d in canon[1:])
    if not any(pre) or 0 in canon or len(canon) - 1 > len(_LOWER):
        return None  # nothing to rotate (or nothing at all): plain Adam
    return Layout(shape, canon, pre, view)


def to_canon(x: jax.Array, layout: Layout) -> jax.Array:
    """The leaf in its canonical layout (batch, d_1, ..., d_k), whole on every device.

    On an Explicit mesh a sharded leaf is gathered first: its factors and bases
    are replicated in the state (see gradchain/_sharding.py), ``eigh`` and QR
    run on unsharded matrices only, and merging axes of a sharded leaf has no
    sharding JAX can name. :func:`from_canon` shards the result back.
    """
    x, _ = _explicit.replicate(x)
    if layout.view is not None:
        return _as_matrices(x, layout.view)
    return x.reshape(layout.canon)


def from_canon(y: jax.Array, layout: Layout, like: jax.Array | None = None) -> jax.Array:
    """The inverse of :func:`to_canon`, sharded like ``like`` on an Explicit mesh."""
    if layout.view is not None:
        out = _from_matrices(y, layout.view, layout.shape)
    else:
        out = y.reshape(layout.shape)
    return out if like is None else _explicit.reshard(out, _explicit.mesh_spec(like))


def rotate(x: jax.Array, qs: Sequence[jax.Array | None], *, back: bool = False) -> jax.Array:
    """``x`` (canonical) into the eigenbases (``Q_L^T x Q_R``), or back (``Q_L x Q_R^T``)."""
    axes = _LOWER[: x.ndim - 1]
    for i, q in enumerate(qs):
        if q is None:
            continue
        out = axes[:i] + _UPPER[i] + axes[i + 1 :]
        q_sub = f"z{_UPPER[i]}{axes[i]}" if back else f"z{axes[i]}{_UPPER[i]}"
        x = jnp.einsum(f"z{axes},{q_sub}->z{out}", x, q, precision=_HIGHEST)
    return x


def factor(x: jax.Array, axis: int) -> jax.Array:
    """``G_(i) G_(i)^T`` of axis ``i`` of a canonical ``x``: (batch, d_i, d_i)."""
    axes = _LOWER[: x.ndim - 1]
    other = axes[:axis] + _UPPER[axis] + axes[axis + 1 :]
    return jnp.einsum(f"z{axes},z{other}->z{axes[axis]}{_UPPER[axis]}", x, x, precision=_HIGHEST)


def _batched(
    mats: Sequence[tuple[jax.Array, ...]], compute: Callable[..., tuple[jax.Array, ...]]
) -> list[tuple[jax.Array, ...]]:
    """Applies ``compute`` to all same-sized, same-dtype inputs at once, concatenated on axis 0.

    Each entry of ``mats`` is a tuple of (batch, d, d) arrays (sharing batch and d);
    the result has, per entry, the outputs of ``compute`` split back to that batch.
    """
    groups: dict[tuple[int, Any], list[int]] = defaultdict(list)
    for i, args in enumerate(mats):
        groups[(args[0].shape[-1], args[0].dtype)].append(i)
    out: list[tuple[jax.Array, ...]] = [()] * len(mats)
    for members in groups.values():
        sizes = [mats[i][0].shape[0] for i in members]
        if len(members) == 1:
            out[members[0]] = compute(*mats[members[0]])
            continue
        stacked = [jnp.concatenate(col) for col in zip(*(mats[i] for i in members), strict=True)]
        results = compute(*stacked)
        cuts = np.cumsum(sizes)[:-1].tolist()
        parts = [jnp.split(r, cuts) for r in results]
        for j, i in enumerate(members):
            out[i] = tuple(p[j] for p in parts)
    return out


def _eigh(gg: jax.Array) -> tuple[jax.Array]:
    _, q = jnp.linalg.eigh(gg)
    return (q[..., ::-1],)  # eigenvalues in decreasing order, as the authors sort them


def _power_qr(gg: jax.Array, q: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One power-iteration step from ``q``, columns sorted by estimated eigenvalue, then QR."""
    gq = jnp.matmul(gg, q, precision=_HIGHEST)
    estimate = jnp.sum(q * gq, axis=-2)  # diag(Q^T GG Q)
    order = jnp.argsort(estimate, axis=-1, descending=True)
    new_q, _ = jnp.linalg.qr(jnp.take_along_axis(gq, order[:, None, :], axis=-1))
    return new_q, order


def eigh_bases(ggs: Sequence[jax.Array]) -> list[jax.Array]:
    """The eigenvectors of each factor, decreasing eigenvalues first, batched by size."""
    return [out[0] for out in _batched([(gg,) for gg in ggs], _eigh)]


def refresh_bases(
    ggs: Sequence[jax.Array], qs: Sequence[jax.Array]
) -> tuple[list[jax.Array], list[jax.Array]]:
    """New bases by one power-iteration + QR step, and each one's column order (for nu)."""
    outs = _batched(list(zip(ggs, qs, strict=True)), _power_qr)
    return [o[0] for o in outs], [o[1] for o in outs]


def permute_axis(x: jax.Array, axis: int, order: jax.Array) -> jax.Array:
    """Reorders axis ``axis`` (of d_1..d_k) of canonical ``x`` by ``order`` (batch, d_i)."""
    shape = [1] * x.ndim
    shape[0], shape[axis + 1] = order.shape
    return jnp.take_along_axis(x, order.reshape(shape), axis=axis + 1)
