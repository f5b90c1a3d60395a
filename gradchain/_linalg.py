r"""Matrix functions: Newton-Schulz orthogonalization, power iteration, inverse p-th root.

The inverse p-th root is of a symmetric positive definite matrix.

All three work in at least float32 (bfloat16 and float16 inputs are upcast; the
result comes back in the input's dtype) and refuse a matrix of the wrong shape
with a message naming the function, the argument and the shape, where Optax
0.2.8 fails inside a broadcast ("sub got incompatible shapes").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import jax
import jax.numpy as jnp

from gradchain import _check, _explicit, _tree

Coefficients: TypeAlias = tuple[Any, Any, Any]
"""One Newton-Schulz step's (a, b, c): ``X <- a X + b (X X^T) X + c (X X^T)^2 X``."""

NsCoeffs: TypeAlias = Coefficients | Sequence[Coefficients] | str
"""One (a, b, c) for every step, a sequence of them (one per step), or a preset name."""

MUON_COEFFS: Coefficients = (3.4445, -4.775, 2.0315)
"""Jordan et al. (2024): a quintic tuned to push singular values into [0.7, 1.2] fast."""

DION_COEFFS: tuple[Coefficients, ...] = (
    (4.0848, -6.8946, 2.927),
    (3.9505, -6.3029, 2.6377),
    (3.7418, -5.5913, 2.3037),
    (2.8769, -3.1427, 1.2046),
    (2.8366, -3.0525, 1.2012),
)
"""Ahn et al. (2025), Dion: five per-step quintics that end closer to 1."""

NS_PRESETS: dict[str, Coefficients | tuple[Coefficients, ...]] = {
    "standard": MUON_COEFFS,
    "muon": MUON_COEFFS,
    "dion": DION_COEFFS,
}
PRECONDITIONINGS = ("frobenius", "spectral", "aol", "schatten")
_HIGHEST = jax.lax.Precision.HIGHEST
_Carry: TypeAlias = tuple[
    jax.Array, jax.Array, jax.Array, jax.Array, jax.Array, jax.Array, jax.Array
]


def ns_schedule(fn: str, ns_coeffs: Any, ns_steps: Any) -> tuple[Coefficients, ...]:
    """The (a, b, c) of every step, checked: Python numbers, finite, at least one step."""
    if isinstance(ns_coeffs, str):
        if ns_coeffs not in NS_PRESETS:
            raise ValueError(
                f"{fn}: `ns_coeffs` preset {ns_coeffs!r} is unknown; the presets are "
                f"{sorted(NS_PRESETS)}, or give (a, b, c) or one (a, b, c) per step."
            )
        ns_coeffs = NS_PRESETS[ns_coeffs]
    _check.positive_int(fn, "ns_steps", ns_steps)
    is_triple = isinstance(ns_coeffs, tuple | list) and len(ns_coeffs) == 3
    if is_triple and all(not isinstance(c, tuple | list) for c in ns_coeffs):
        steps: list[Any] = [tuple(ns_coeffs)] * ns_steps
    elif isinstance(ns_coeffs, tuple | list) and ns_coeffs:
        steps = [tuple(c) if isinstance(c, tuple | list) else c for c in ns_coeffs]
    else:
        steps = [ns_coeffs]
    for i, c in enumerate(steps):
        if not (isinstance(c, tuple) and len(c) == 3):
            raise TypeError(
                f"{fn}: `ns_coeffs` must be (a, b, c), a sequence of (a, b, c) (one per step) "
                f"or a preset name; step {i} is {c!r:.60}."
            )
        for name, x in zip("abc", c, strict=True):
            _check.finite(fn, f"ns_coeffs[{i}].{name}", x)
    return tuple(steps)


def check_matrix(fn: str, name: str, x: Any, *, square: bool = False) -> None:
    """Raises ValueError unless ``x`` is a 2-D (square, if asked) floating array."""
    shape = tuple(jnp.shape(x))
    if len(shape) != 2 or (square and shape[0] != shape[1]):
        kind = "a square matrix (n, n)" if square else "a matrix (m, n)"
        raise ValueError(f"{fn}: `{name}` must be {kind}; got shape {shape}.")
    if not jnp.issubdtype(jnp.result_type(x), jnp.inexact):
        raise TypeError(f"{fn}: `{name}` must be a float array; got {jnp.result_type(x)}.")


def _dot(a: jax.Array, b: jax.Array) -> jax.Array:
    # On an Explicit mesh the product states its sharding: x x^T of an (m@data, n@model)
    # iterate is (m@data, m), and (x x^T) x is sharded like x again.
    return _explicit.matmul(a, b, precision=_HIGHEST)


def _first_scaling(x: jax.Array, preconditioning: str, eps: jax.Array) -> jax.Array:
    """``x`` (wide: rows <= cols) scaled so that its singular values are at most about 1."""
    if preconditioning == "frobenius":
        return x / (jnp.sqrt(jnp.sum(x * x)) + eps)
    if preconditioning == "spectral":
        whole, _ = _explicit.replicate(x)  # an SVD: JAX runs it on unsharded matrices only
        return x / (jnp.linalg.norm(whole, ord=2) + eps)
    if preconditioning == "schatten":  # ||x||_S4 = ||x x^T||_F ** 0.5 >= ||x||_2
        gram = _dot(x, x.T)
        return x / (jnp.sqrt(jnp.sqrt(jnp.sum(gram * gram))) + eps)
    # AOL (Prach and Lampert 2022): rescale rows by 1/sqrt(sum_j |x x^T|_ij), which bounds
    # the spectral norm by 1 and already improves the conditioning (Boissin et al. 2025).
    gram = _dot(x, x.T)
    d = jax.lax.rsqrt(jnp.sum(jnp.abs(gram), axis=1) + eps)
    return x * d[:, None]


def newton_schulz(
    x: jax.Array,
    coeffs: Sequence[Coefficients],
    *,
    preconditioning: str = "frobenius",
    eps: jax.Array | float = 1e-8,
) -> jax.Array:
    r"""Approximates the orthogonal polar factor :math:`U V^T` of ``x = U S V^T``.

    Scales ``x`` (see ``preconditioning``) so its singular values lie in (0, 1],
    then applies the odd polynomial :math:`X \leftarrow aX + b(XX^T)X +
    c(XX^T)^2X` once per entry of ``coeffs``, on the wide orientation (``x`` is
    transposed when it has more rows than columns, so the Gram matrix is the
    small one). Arithmetic in at least float32 at the highest matmul precision;
    the result has ``x``'s dtype.

    Args:
      x: a matrix (m, n).
      coeffs: one (a, b, c) per step.
      preconditioning: ``"frobenius"`` (divide by the Frobenius norm),
        ``"spectral"`` (by the largest singular value), ``"schatten"`` (by the
        Schatten-4 norm) or ``"aol"`` (AOL row rescaling).
      eps: added to the norm (or, for AOL, to the row sums) before dividing.

    Returns:
      An array of ``x``'s shape and dtype.
    """
    check_matrix("newton_schulz", "x", x)
    (xc,) = _tree.upcast(x)
    wide = xc.shape[0] <= xc.shape[1]
    y = xc if wide else xc.T
    y = _first_scaling(y, preconditioning, jnp.asarray(eps, y.dtype))
    for a, b, c in coeffs:
        gram = _dot(y, y.T)
        poly = b * gram + c * _dot(gram, gram)
        y = a * y + _dot(poly, y)
    return (y if wide else y.T).astype(x.dtype)


def power_iteration(
    matrix: jax.Array | Callable[[Any], Any],
    *,
    v0: Any | None = None,
    num_iters: int = 100,
    error_tolerance: float = 1e-6,
    precision: jax.lax.Precision = _HIGHEST,
    key: jax.Array | None = None,
) -> tuple[jax.Array, Any]:
    r"""The dominant eigenvalue of a matrix (or a linear map) and its eigenvector.

    Iterates :math:`v \leftarrow Av / \|Av\|` and estimates the eigenvalue by the
    Rayleigh quotient :math:`v^T A v`, stopping after ``num_iters`` iterates
    (one more product with ``A``, for the quotient) or once the estimate changes
    by less than ``error_tolerance`` relative. Runs in a ``lax.while_loop``, so it jits.

    Difference from Optax 0.2.8: Optax returns the eigenvalue estimated from
    one iterate and the NEXT iterate as the eigenvector, so that before
    convergence the pair is not consistent (``v^T A v`` differs from the value
    returned). Here the eigenvalue is always the Rayleigh quotient of the
    returned vector; the eigenvalue is the same number as Optax's.

    Args:
      matrix: a square array (n, n), or a function computing ``A @ v`` for a
        tree ``v``.
      v0: the starting vector (a tree, for a function); for an array, uniform
        in [-1, 1] from ``key`` by default.
      num_iters: the most iterates, >= 1.
      error_tolerance: relative change of the estimate at which to stop, >= 0.
      precision: the matmul precision for an array ``matrix``.
      key: PRNG key for the default ``v0`` (``jax.random.PRNGKey(0)`` if None).

    Returns:
      ``(eigenvalue, eigenvector)``: a scalar, and a unit vector (tree) in the
      dtype of ``v0`` (or of the matrix).

    Raises:
      ValueError: if ``matrix`` is an array that is not square, or ``v0`` is
        missing for a function, or the numbers are out of range.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> value, vector = gc.power_iteration(jnp.array([[2.0, 0.0], [0.0, 5.0]]))
      >>> round(float(value), 4), [round(abs(float(x)), 3) for x in vector]
      (5.0, [0.0, 1.0])

    References:
      von Mises and Pollaczek-Geiringer, Praktische Verfahren der
      Gleichungsauflösung, ZAMM 9, 1929.
    """
    fn = "power_iteration"
    _check.positive_int(fn, "num_iters", num_iters)
    _check.non_negative(fn, "error_tolerance", error_tolerance)
    if callable(matrix) and not isinstance(matrix, jax.Array):
        if v0 is None:
            raise ValueError(
                f"{fn}: `matrix` is a function, so `v0` must be given (a tree of the "
                f"function's input structure)."
            )
        matvec: Callable[[Any], Any] = matrix
    else:
        check_matrix(fn, "matrix", matrix, square=True)
        mat = jnp.asarray(matrix)
        (mat,) = _tree.upcast(mat)
        if v0 is None:
            k = jax.random.PRNGKey(0) if key is None else key
            v0 = jax.random.uniform(k, (mat.shape[0],), mat.dtype, -1.0, 1.0)
        elif jnp.shape(v0) != (mat.shape[0],):
            raise ValueError(
                f"{fn}: `v0` must have shape ({mat.shape[0]},) for a matrix of shape "
                f"{mat.shape}; got {jnp.shape(v0)}."
            )

        def matvec(v: Any, /) -> Any:
            return jnp.matmul(mat, v.astype(mat.dtype), precision=precision).astype(v.dtype)

    def vdot(a: Any, b: Any) -> jax.Array:
        return sum(
            (
                jnp.vdot(x, y).real
                for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
            ),
            jnp.float32(0),
        )

    def normalize(v: Any) -> Any:
        norm = _tree.global_norm(v)
        return jax.tree.map(lambda x: (x / norm.astype(x.dtype)).astype(x.dtype), v)

    v = normalize(v0)
    av = matvec(v)
    tol = jnp.float32(error_tolerance)

    def cond(carry: tuple[Any, Any, jax.Array, jax.Array, jax.Array]) -> jax.Array:
        _, _, value, prev, i = carry
        converged = jnp.abs(value - prev) <= tol * jnp.abs(value)
        return (i < num_iters) & ~converged

    def body(
        carry: tuple[Any, Any, jax.Array, jax.Array, jax.Array],
    ) -> tuple[Any, Any, jax.Array, jax.Array, jax.Array]:
        _, av, value, _, i = carry
        new_v = normalize(av)
        new_av = matvec(new_v)
        return new_v, new_av, vdot(new_v, new_av), value, i + 1

    first = vdot(v, av)
    init = (v, av, first, first + jnp.inf, jnp.int32(0))
    v, _, value, _, _ = jax.lax.while_loop(cond, body, init)
    return value, v


def matrix_inverse_pth_root(
    matrix: jax.Array,
    p: int,
    num_iters: int = 100,
    ridge_epsilon: float = 1e-6,
    error_tolerance: float = 1e-6,
    precision: jax.lax.Precision = _HIGHEST,
) -> tuple[jax.Array, jax.Array]:
    r""":math:`(A + \epsilon \lambda_{max} I)^{-1/p}` of a symmetric positive semidefinite ``A``.

    Coupled Newton iteration (Higham, Functions of Matrices, eq. 7.18; Guo and
    Higham 2006): with :math:`z = (1+p) / (2 \lambda_{max})`, start from
    :math:`M_0 = zA`, :math:`H_0 = z^{1/p} I`, and repeat :math:`T = ((p+1)I -
    M)/p`, :math:`M \leftarrow T^p M`, :math:`H \leftarrow HT` until
    :math:`\max|M - I|` drops below ``error_tolerance`` or stops falling (then
    the best iterate is kept). :math:`\lambda_{max}` comes from
    :func:`power_iteration`; the ridge is relative to it, as in Shampoo.

    Returns ``(root, error)`` like Optax 0.2.8, whose docstring says it returns
    the root alone.

    Args:
      matrix: a symmetric PSD matrix (n, n).
      p: a positive integer.
      num_iters: the most Newton steps, >= 1.
      ridge_epsilon: the ridge, relative to the largest eigenvalue, >= 0.
      error_tolerance: the target for :math:`\max|M - I|`, >= 0.
      precision: the matmul precision.

    Returns:
      ``(root, error)``: the root in at least float32 (the matrix's dtype if
      wider) and the final :math:`\max|M - I|`.

    Raises:
      ValueError: if ``matrix`` is not square, or ``p`` not a positive integer.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> root, error = gc.matrix_inverse_pth_root(jnp.diag(jnp.array([4.0, 16.0])), 2,
      ...                                          ridge_epsilon=0.0)
      >>> [round(float(x), 4) for x in jnp.diag(root)], float(error) < 1e-5
      ([0.5, 0.25], True)

    References:
      Higham, Functions of Matrices: Theory and Computation, SIAM 2008, eq. 7.18.
      Anil et al., Scalable Second Order Optimization for Deep Learning, 2020.
    """
    fn = "matrix_inverse_pth_root"
    check_matrix(fn, "matrix", matrix, square=True)
    _check.positive_int(fn, "p", p)
    _check.positive_int(fn, "num_iters", num_iters)
    _check.non_negative(fn, "ridge_epsilon", ridge_epsilon)
    _check.non_negative(fn, "error_tolerance", error_tolerance)
    (a,) = _tree.upcast(jnp.asarray(matrix))
    n = a.shape[0]
    eye = jnp.eye(n, dtype=a.dtype)
    max_ev, _ = power_iteration(a, num_iters=100, error_tolerance=1e-6, precision=precision)
    max_ev = jnp.maximum(max_ev, jnp.finfo(a.dtype).tiny)
    a = a + ridge_epsilon * max_ev * eye
    z = (1 + p) / (2 * jnp.max(jnp.array([max_ev * (1 + ridge_epsilon), 1e-16], a.dtype)))

    def dot(x: jax.Array, y: jax.Array) -> jax.Array:
        return jnp.matmul(x, y, precision=precision)

    def mat_power(x: jax.Array) -> jax.Array:
        out, base, k = eye, x, p
        while k:
            if k & 1:
                out = dot(out, base)
            base, k = dot(base, base), k >> 1
        return out

    m0 = z * a
    h0 = z ** (1.0 / p) * eye
    err0 = jnp.max(jnp.abs(m0 - eye))
    tol = jnp.asarray(error_tolerance, a.dtype)

    def cond(c: _Carry) -> jax.Array:
        i, _, _, err, _, _, diverged = c
        return (i < num_iters) & (err > tol) & ~diverged

    def body(c: _Carry) -> _Carry:
        i, m, h, err, best_h, best_err, _ = c
        t = ((p + 1) * eye - m) / p
        new_m = dot(mat_power(t), m)
        new_h = dot(h, t)
        new_err = jnp.max(jnp.abs(new_m - eye))
        diverged = new_err > err * 1.2  # rounding has taken over: stop, keep the best
        better = new_err < best_err
        best_h = jnp.where(better, new_h, best_h)
        best_err = jnp.where(better, new_err, best_err)
        return i + 1, new_m, new_h, new_err, best_h, best_err, diverged

    init = (jnp.int32(0), m0, h0, err0, h0, err0, jnp.bool_(False))
    _, _, _, _, root, error, _ = jax.lax.while_loop(cond, body, init)
    return root, error
