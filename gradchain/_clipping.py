"""Clipping: elementwise (clip) and by the global norm (clip_by_global_norm)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradchain import _check, _tree
from gradchain._base import GradientTransformation, Params, ScalarOrSchedule, Updates
from gradchain._hyperparams import Hyperparams, hyperparam_transform


class ClipState(NamedTuple):
    """State of :func:`clip`."""

    step: jax.Array  # int32[], updates seen so far (drives schedules)
    hparams: Hyperparams


class ClipByGlobalNormState(NamedTuple):
    """State of :func:`clip_by_global_norm`."""

    step: jax.Array  # int32[], updates seen so far (drives schedules)
    hparams: Hyperparams


def clip(max_delta: ScalarOrSchedule) -> GradientTransformation:
    """Clips every update element to ``[-max_delta, max_delta]``.

    Args:
      max_delta: the bound, >= 0.

    Returns:
      A GradientTransformation whose state is a ClipState.

    Raises:
      ValueError: if ``max_delta`` is a negative, NaN or infinite number.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.clip(1.0)
      >>> u, _ = tx.update(jnp.array([-3.0, 0.5]), tx.init(jnp.zeros(2)))
      >>> [float(x) for x in u]
      [-1.0, 0.5]
    """
    fn = "clip"
    _check.non_negative(fn, "max_delta", max_delta, schedule_ok=True)

    def apply(updates: Updates, params: Params | None, hp: dict[str, jax.Array]) -> Updates:
        del params
        bound = hp["max_delta"]

        def leaf(u: jax.Array) -> jax.Array:
            b = bound.astype(_tree.compute_dtype(u.dtype, bound.dtype))
            return jnp.clip(u.astype(b.dtype), -b, b).astype(u.dtype)

        return jax.tree.map(leaf, updates)

    return hyperparam_transform(fn, ClipState, {"max_delta": max_delta}, apply)


def clip_by_global_norm(max_norm: ScalarOrSchedule) -> GradientTransformation:
    r"""Rescales all updates together so that their global l2 norm is at most ``max_norm``.

    When :math:`\|g\| = \sqrt{\sum_i \|g_i\|^2} > c`, every leaf is multiplied
    by :math:`c / \|g\|`; otherwise updates pass unchanged. The norm is
    accumulated in float32 (or wider) whatever the leaves' dtype.

    Args:
      max_norm: the bound :math:`c`, > 0.

    Returns:
      A GradientTransformation whose state is a ClipByGlobalNormState.

    Raises:
      ValueError: if ``max_norm`` is a non-positive, NaN or infinite number.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.clip_by_global_norm(1.0)
      >>> u, _ = tx.update({"a": jnp.array([3.0]), "b": jnp.array([4.0])}, tx.init(None))
      >>> round(float(u["a"][0]), 4), round(float(u["b"][0]), 4)
      (0.6, 0.8)

    References:
      Pascanu et al., On the difficulty of training recurrent neural networks, ICML 2013.
    """
    fn = "clip_by_global_norm"
    _check.positive(fn, "max_norm", max_norm, schedule_ok=True)

    def apply(updates: Updates, params: Params | None, hp: dict[str, jax.Array]) -> Updates:
        del params
        bound = hp["max_norm"]
        norm = _tree.global_norm(updates)
        dt = _tree.compute_dtype(norm.dtype, bound.dtype)
        norm, bound = norm.astype(dt), bound.astype(dt)
        keep = norm < bound

        def leaf(u: jax.Array) -> jax.Array:
            wide = _tree.compute_dtype(u.dtype, dt)
            clipped = (u.astype(wide) / norm.astype(wide)) * bound.astype(wide)
            return jnp.where(keep, u, clipped.astype(u.dtype))

        return jax.tree.map(leaf, updates)

    return hyperparam_transform(fn, ClipByGlobalNormState, {"max_norm": max_norm}, apply)
