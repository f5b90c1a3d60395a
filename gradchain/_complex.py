"""Complex parameters as pairs of real ones, for transforms written for real numbers.

Adam's :math:`g^2` of a complex gradient is complex, and a sign or a clip
of a complex number means nothing; many transforms are defined for real
numbers only. :func:`split_real_and_imaginary` gives its inner transform
each complex leaf as a :class:`RealAndImaginary` pair of real leaves, and
joins the pair it returns back into a complex update.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradchain import _tree
from gradchain._base import (
    AnyTransformation,
    GradientTransformationExtraArgs,
    OptState,
    Params,
    Updates,
    call_update,
    check_transformation,
)


class RealAndImaginary(NamedTuple):
    """A complex leaf as two real leaves of the same shape (a pytree node of two children)."""

    real: Any
    imaginary: Any


class SplitRealAndImaginaryState(NamedTuple):
    """State of :func:`split_real_and_imaginary`: the inner state, built on the split tree."""

    inner_state: OptState


def _is_complex(x: Any) -> bool:
    return x is not None and jnp.issubdtype(getattr(x, "dtype", jnp.float32), jnp.complexfloating)


def _split_leaf(x: Any) -> Any:
    if not _is_complex(x):
        return x
    real_dtype = jnp.finfo(x.dtype).dtype
    if isinstance(x, jax.ShapeDtypeStruct):
        part = jax.ShapeDtypeStruct(x.shape, real_dtype)
        return RealAndImaginary(part, part)
    x = jnp.asarray(x)
    return RealAndImaginary(jnp.real(x), jnp.imag(x))


def _split(tree: Any) -> Any:
    return jax.tree.map(_split_leaf, tree, is_leaf=lambda x: x is None)


def _merge(fn: str, original: Any, split_updates: Any) -> Any:
    """Joins the inner transform's pairs back into leaves of ``original``'s dtypes."""

    def is_pair(x: Any) -> bool:
        return isinstance(x, RealAndImaginary)

    expected = jax.tree.structure(_split(original), is_leaf=is_pair)
    got = jax.tree.structure(split_updates, is_leaf=is_pair)
    if expected != got:
        raise ValueError(
            f"{fn}: the inner transformation returned updates of another structure than "
            f"the split tree it was given ({got} against {expected}). It must return one "
            f"update per leaf it receives, each complex leaf as a RealAndImaginary pair."
        )

    def join(u: Any, parts: Any) -> Any:
        if not _is_complex(u):
            return parts
        real, imag = parts
        return jax.lax.complex(real, imag).astype(u.dtype)

    return jax.tree.map(join, original, split_updates, is_leaf=lambda x: x is None)


def split_real_and_imaginary(inner: AnyTransformation) -> GradientTransformationExtraArgs:
    r"""Runs ``inner`` on complex leaves as pairs of real leaves, then joins the results.

    Each complex leaf :math:`z = x + iy` of the updates (and parameters)
    becomes a :class:`RealAndImaginary` ``(x, y)`` pair in the tree ``inner``
    sees, so that each part gets its own moments, signs or clipping; the
    pair ``inner`` returns becomes the complex update :math:`u_x + i u_y` of
    the leaf's dtype. Real leaves reach ``inner`` unchanged. Extra keyword
    arguments (``value=``...) pass on to ``inner``. Global quantities (a
    global norm) see the two parts as separate leaves: :math:`|x|^2 + |y|^2 =
    |z|^2`, so they do not change.

    The same as Optax 0.2.8's ``optax.contrib.split_real_and_imaginary``;
    ``init`` also takes ``jax.ShapeDtypeStruct`` leaves.

    Args:
      inner: the transformation to run on the split tree.

    Returns:
      A GradientTransformationExtraArgs whose state is a
      SplitRealAndImaginaryState holding ``inner``'s state for the split tree.

    Raises:
      TypeError: if ``inner`` is not a transformation (e.g. a factory not called).

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.split_real_and_imaginary(gc.scale_by_adam())
      >>> params = jnp.zeros(1, jnp.complex64)
      >>> u, _ = tx.update(jnp.array([3.0 - 0.5j]), tx.init(params), params)
      >>> z = complex(u[0])  # the first Adam step is sign(g) on each part
      >>> round(z.real, 4), round(z.imag, 4)
      (1.0, -1.0)

    References:
      Optax's ``optax.contrib.split_real_and_imaginary``.
    """
    fn = "split_real_and_imaginary"
    check_transformation(fn, "`inner`", inner)

    def init_fn(params: Params) -> SplitRealAndImaginaryState:
        return SplitRealAndImaginaryState(inner.init(_split(params)))

    def update_fn(
        updates: Updates,
        state: SplitRealAndImaginaryState,
        params: Params | None = None,
        **extra_args: Any,
    ) -> tuple[Updates, SplitRealAndImaginaryState]:
        _tree.check_state(fn, state, SplitRealAndImaginaryState)
        split_params = None if params is None else _split(params)
        new, inner_state = call_update(
            inner, _split(updates), state.inner_state, split_params, extra_args
        )
        return _merge(fn, updates, new), SplitRealAndImaginaryState(inner_state)

    return GradientTransformationExtraArgs(init_fn, update_fn)
