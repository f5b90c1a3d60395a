r"""The linear algebra of PSGD-Kron's Kronecker-factored preconditioner.

A leaf of shape :math:`(d_1, \dots, d_k)` has one factor :math:`Q_i` per axis:
an upper-triangular :math:`(d_i, d_i)` matrix or a diagonal kept as a
:math:`(d_i,)` vector. The preconditioner is :math:`P = Q^T Q` with
:math:`Q = Q_1 \otimes \dots \otimes Q_k`; applying :math:`Q` to a tensor
multiplies each axis by its factor (a mode product), so :math:`P` is never
formed. :func:`gradchain.scale_by_kron` holds the transform; this module only
the arithmetic, on arrays of one floating dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

Factors = tuple[jax.Array, ...]  # per axis: (d, d) upper-triangular, or (d,) a diagonal


def triangular_axes(
    shape: tuple[int, ...],
    max_size_triangular: int,
    min_ndim_triangular: int,
    memory_save_mode: str | None,
) -> tuple[bool, ...]:
    """Which axes of a leaf get a triangular factor (True) and which a diagonal one (False).

    An axis is diagonal when it has size 1 or more than ``max_size_triangular``,
    when the leaf has fewer than ``min_ndim_triangular`` axes, or when
    ``memory_save_mode`` says so: ``"one_diag"`` makes the longest axis (the
    last of equally long ones) diagonal, ``"all_diag"`` every axis. A scalar is
    treated as a vector of one entry; a leaf with an axis of size 0 gets no
    factor at all (the empty tuple).
    """
    if 0 in shape:
        return ()
    if not shape:
        return (False,)
    diagonal = [False] * len(shape)
    if memory_save_mode == "one_diag":
        longest = max(range(len(shape)), key=lambda a: (shape[a], a))
        diagonal[longest] = True
    elif memory_save_mode == "all_diag":
        diagonal = [True] * len(shape)
    return tuple(
        not (diag or size == 1 or size > max_size_triangular or len(shape) < min_ndim_triangular)
        for size, diag in zip(shape, diagonal, strict=True)
    )


def identity_factors(shape: tuple[int, ...], triangular: Sequence[bool], dtype: Any) -> Factors:
    """The factors of :math:`Q = I`: identity matrices and vectors of ones."""
    sizes = (shape or (1,)) if triangular else ()
    return tuple(
        jnp.eye(d, dtype=dtype) if tri else jnp.ones((d,), dtype)
        for d, tri in zip(sizes, triangular, strict=True)
    )


def _along(x: jax.Array, axis: int, q: jax.Array) -> jax.Array:
    """Multiplies axis ``axis`` of ``x`` by the matrix ``q`` (or the diagonal vector ``q``)."""
    if q.ndim == 1:
        shape = [1] * x.ndim
        shape[axis] = q.shape[0]
        return x * q.reshape(shape)
    return jnp.moveaxis(jnp.tensordot(q, x, axes=(1, axis)), 0, axis)


def apply_q(qs: Factors, x: jax.Array, *, transpose: bool = False) -> jax.Array:
    """:math:`Q x` (or :math:`Q^T x`): each axis of ``x`` times its factor."""
    for axis, q in enumerate(qs):
        x = _along(x, axis, q.T if transpose and q.ndim == 2 else q)
    return x


def precondition(qs: Factors, g: jax.Array) -> jax.Array:
    """:math:`P g = Q^T Q g`, along every axis."""
    return apply_q(qs, apply_q(qs, g), transpose=True)


def solve_q_transposed(qs: Factors, v: jax.Array) -> jax.Array:
    """:math:`Q^{-T} v`: each axis of ``v`` times the inverse transpose of its factor.

    Triangular factors are solved against (a triangular solve costs what a
    matrix product does), never inverted.
    """
    for axis, q in enumerate(qs):
        if q.ndim == 1:
            v = _along(v, axis, 1 / q)
            continue
        moved = jnp.moveaxis(v, axis, 0)
        flat = moved.reshape(moved.shape[0], -1)
        solved = jax.scipy.linalg.solve_triangular(q, flat, trans="T", lower=False)
        v = jnp.moveaxis(solved.reshape(moved.shape), 0, axis)
    return v


def _gram(x: jax.Array, axis: int, diagonal: bool) -> jax.Array:
    """:math:`X_{(i)} X_{(i)}^T` for the unfolding along ``axis`` (its diagonal if asked)."""
    others = tuple(a for a in range(x.ndim) if a != axis)
    if diagonal:
        return jnp.sum(x * x, axis=others)
    return jnp.tensordot(x, x, axes=(others, others))


def spectral_norm_lower_bound(m: jax.Array) -> jax.Array:
    r"""A cheap lower bound of the spectral norm of a symmetric matrix.

    One step of power iteration started from the row of largest norm: with
    :math:`r` that row and :math:`u = M r / \|M r\|`, returns :math:`\|M u\|
    \le \|M\|_2`. Computed on :math:`M / \max|M|` so that nothing over- or
    underflows; zero for the zero matrix.
    """
    top = jnp.max(jnp.abs(m))
    safe_top = jnp.where(top > 0, top, jnp.ones_like(top))
    mn = m / safe_top
    row = mn[jnp.argmax(jnp.sum(mn * mn, axis=1))]
    x = mn @ row
    norm_x = jnp.linalg.norm(x)
    u = x / jnp.where(norm_x > 0, norm_x, jnp.ones_like(norm_x))
    return top * jnp.linalg.norm(mn @ u)


def _tiny(dtype: Any) -> jax.Array:
    return jnp.asarray(jnp.finfo(dtype).tiny, dtype)


def balance(qs: Factors) -> Factors:
    """Rescales the factors to a common largest magnitude; their product is unchanged.

    The factors' scales are free (only :math:`Q` matters), and left alone they
    drift apart until one underflows; the geometric mean of their largest
    magnitudes is kept and shared.
    """
    if len(qs) < 2:
        return qs
    dt = qs[0].dtype
    norms = jnp.stack([jnp.maximum(jnp.max(jnp.abs(q)), _tiny(dt)) for q in qs])
    gmean = jnp.exp(jnp.mean(jnp.log(norms)))
    return tuple(q * (gmean / n) for q, n in zip(qs, norms, strict=True))


def update_factors(qs: Factors, g: jax.Array, v: jax.Array, lr: jax.Array) -> Factors:
    r"""One step of PSGD's whitening fit of :math:`Q` from a gradient ``g`` and a random ``v``.

    With :math:`A = Q g` and :math:`B = Q^{-T} v`, the gradient of the fitting
    criterion :math:`E[g^T P g + v^T P^{-1} v]` on the Lie group of factor
    :math:`i` is :math:`A_{(i)} A_{(i)}^T - B_{(i)} B_{(i)}^T` (unfoldings
    along axis :math:`i`). Each factor moves along it, the step normalised by
    the largest magnitude of :math:`T_i = A_{(i)} A_{(i)}^T + B_{(i)} B_{(i)}^T`:

    - triangular: :math:`Q_i \leftarrow Q_i - \frac{\eta}{\|T_i\|_2}
      \mathrm{triu}(A_{(i)} A_{(i)}^T - B_{(i)} B_{(i)}^T)\, Q_i`, with
      :func:`spectral_norm_lower_bound` for :math:`\|T_i\|_2` (so the step can
      only be larger than with the exact norm, by at most about
      :math:`\sqrt 2`, as the reference notes);
    - diagonal: :math:`q_i \leftarrow q_i - \frac{\eta}{\max|T_i|}
      (\mathrm{diag}(A A^T) - \mathrm{diag}(B B^T)) \odot q_i`.

    The triangular projection keeps :math:`Q_i` upper triangular, so that
    :math:`B` stays a triangular solve. The factors are then balanced
    (:func:`balance`).
    """
    a = apply_q(qs, g)
    b = solve_q_transposed(qs, v)
    tiny = _tiny(g.dtype)
    new = []
    for axis, q in enumerate(qs):
        diagonal = q.ndim == 1
        t1, t2 = _gram(a, axis, diagonal), _gram(b, axis, diagonal)
        if diagonal:
            scale = lr / jnp.maximum(jnp.max(jnp.abs(t1 + t2)), tiny)
            new.append(q - scale * (t1 - t2) * q)
        else:
            scale = lr / jnp.maximum(spectral_norm_lower_bound(t1 + t2), tiny)
            new.append(q - scale * (jnp.triu(t1 - t2) @ q))
    return balance(tuple(new))
