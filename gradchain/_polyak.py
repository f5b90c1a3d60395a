r"""Polyak's step size: the step that would reach ``f_min`` if the objective were linear.

:func:`scale_by_polyak` needs the objective's value at the current parameters,
passed as ``update(grads, state, params, value=loss)``; the step size is read
from that value and from the gradient's norm, so it costs one global reduction
and no per-parameter state.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp

from gradchain import _check, _tree
from gradchain._base import GradientTransformationExtraArgs, Params, Updates
from gradchain._hyperparams import Hyperparams, HyperparamSpec, values

PolyakVariant = Literal["sps", "sps+"]
_VARIANTS = ("sps", "sps+")


class ScaleByPolyakState(NamedTuple):
    """State of :func:`scale_by_polyak`."""

    step: jax.Array  # int32[], updates seen so far
    hparams: Hyperparams  # f_min, max_learning_rate, eps


def squared_norm(updates: Updates) -> jax.Array:
    """The squared l2 norm of all leaves together, summed in at least float32."""
    leaves = jax.tree.leaves(updates)
    dt = _tree.compute_dtype(*(x.dtype for x in leaves))
    real = jnp.finfo(dt).dtype
    total = jnp.zeros([], real)
    for x in leaves:
        total = total + jnp.sum(_tree.abs_sq(x.astype(dt)).real.astype(real))
    return total


def scale_by_polyak(
    f_min: float | jax.Array = 0.0,
    max_learning_rate: float | jax.Array = 1.0,
    eps: float | jax.Array = 0.0,
    variant: PolyakVariant = "sps",
) -> GradientTransformationExtraArgs:
    r"""Scales the updates by Polyak's step size (SPS_max, Loizou et al.).

    .. math::
      \gamma = \min\left\{\frac{f(x) - f^\star}{\|g\|^2 + \epsilon},\ \gamma_{\max}\right\},
      \qquad u = \gamma\, g,

    with :math:`\|g\|` the norm of all updates together. ``variant="sps+"``
    (Garrigos et al.) uses :math:`(f(x) - f^\star)_+`, so that an ``f_min``
    above the objective never turns the step uphill. The sign is kept: chain a
    :func:`scale_by_learning_rate` after it (as :func:`polyak_sgd` does).

    A zero gradient with ``eps=0`` gives a zero update. Optax 0.2.8 also
    returns zero whenever :math:`\|g\|^2 + \epsilon \le 2.2\cdot 10^{-16}`,
    which stalls an objective that is merely small in scale; the step size is
    invariant to the objective's scale, and here it stays so.

    Args:
      f_min: :math:`f^\star`, a lower bound on the objective (0 for models that
        interpolate their data); finite.
      max_learning_rate: :math:`\gamma_{\max}`, the largest step size, > 0.
      eps: :math:`\epsilon`, added to the squared norm, >= 0.
      variant: ``"sps"`` or ``"sps+"``.

    Returns:
      A GradientTransformationExtraArgs whose state is a ScaleByPolyakState;
      its update takes the keyword argument ``value``, the objective at the
      current parameters.

    Raises:
      ValueError: for a number out of range or an unknown ``variant``; while
        tracing ``update``, if ``value`` is missing or not a scalar.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> f = lambda x: jnp.sum(x**2)
      >>> tx = gc.scale_by_polyak()
      >>> x = jnp.array([1.0, 2.0, 3.0])
      >>> loss, grad = jax.value_and_grad(f)(x)
      >>> u, _ = tx.update(grad, tx.init(x), x, value=loss)  # 14 / 56 * grad
      >>> [round(float(v), 4) for v in u]
      [0.5, 1.0, 1.5]

    References:
      Loizou, Vaswani, Laradji and Lacoste-Julien, Stochastic Polyak Step-size for SGD:
      An Adaptive Learning Rate for Fast Convergence, AISTATS 2021 (SPS_max, eq. 5).
      Garrigos, Gower and Schaipp, Function Value Learning: Adaptive Learning Rates Based
      on the Polyak Stepsize and Function Splitting in ERM, 2023 (SPS+).
    """
    fn = "scale_by_polyak"
    _check.finite(fn, "f_min", f_min)
    _check.positive(fn, "max_learning_rate", max_learning_rate)
    _check.non_negative(fn, "eps", eps)
    if variant not in _VARIANTS:
        raise ValueError(f"{fn}: `variant` must be one of {list(_VARIANTS)}; got {variant!r}.")
    spec = HyperparamSpec(fn, dict(f_min=f_min, max_learning_rate=max_learning_rate, eps=eps))

    def init_fn(params: Params) -> ScaleByPolyakState:
        del params  # the step size needs no per-parameter state
        return ScaleByPolyakState(jnp.zeros([], jnp.int32), spec.init())

    def update_fn(
        updates: Updates,
        state: ScaleByPolyakState,
        params: Params | None = None,
        *,
        value: Any = None,
        **extra_args: Any,
    ) -> tuple[Updates, ScaleByPolyakState]:
        del params, extra_args  # the step size reads the value and the updates only
        _tree.check_state(fn, state, ScaleByPolyakState)
        _tree.check_no_float0(fn, "updates", updates)
        loss = _tree.objective_value(fn, value)
        hp = values(state.hparams)
        sq_norm = squared_norm(updates)
        loss, f_min_, max_lr, eps_, sq_norm = _tree.upcast(
            loss, hp["f_min"], hp["max_learning_rate"], hp["eps"], sq_norm
        )
        gap = loss - f_min_
        if variant == "sps+":
            gap = jnp.maximum(gap, 0)
        denom = sq_norm + eps_
        safe = jnp.where(denom > 0, denom, 1)  # a zero denominator means a zero gradient
        rate = jnp.where(denom > 0, jnp.minimum(gap / safe, max_lr), 0)

        def scale(g: jax.Array) -> jax.Array:
            gc, r = _tree.upcast(g, rate)
            return (r * gc).astype(g.dtype)

        step = _tree.safe_increment(state.step)
        new_state = ScaleByPolyakState(step, spec.advance(state.hparams, step))
        return jax.tree.map(scale, updates), new_state

    return GradientTransformationExtraArgs(init_fn, update_fn)
