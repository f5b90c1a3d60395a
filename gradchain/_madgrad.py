r"""MADGRAD (Defazio and Jelassi, 2021): dual averaging with a cube-root denominator.

It returns to the initial point :math:`x_0`, which it takes from ``params``
at the first update, so ``init`` needs only shapes and dtypes. Optax 0.2.8 has
it in ``optax.contrib`` with these names, signatures and numbers (see
:func:`scale_by_madgrad` for the one difference, in rounding).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradchain import _check, _tree
from gradchain._base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    Params,
    ScalarOrSchedule,
    Updates,
)
from gradchain._combine import chain
from gradchain._hyperparams import Hyperparams, HyperparamSpec, values
from gradchain._regularizing import add_decayed_weights
from gradchain._wrappers import MaskOrFn


class ScaleByMadgradState(NamedTuple):
    """State of :func:`scale_by_madgrad`."""

    step: jax.Array  # int32[], updates seen so far
    s: Updates  # sum of lambda_k * g_k
    nu: Updates  # sum of lambda_k * g_k^2
    x0: Params  # the parameters at the first update (zeros before it)
    hparams: Hyperparams


def scale_by_madgrad(
    learning_rate: ScalarOrSchedule,
    momentum: ScalarOrSchedule = 0.9,
    eps: ScalarOrSchedule = 1e-6,
) -> GradientTransformation:
    r"""MADGRAD: momentumized, adaptive, dual-averaged steps (the final update, lr included).

    With :math:`k` the number of updates before this one and :math:`c = 1 -`
    ``momentum``,

    .. math::
      \lambda_k = \gamma_k \sqrt{k+1}, \quad s \leftarrow s + \lambda_k g, \quad
      \nu \leftarrow \nu + \lambda_k g^2, \\
      z = x_0 - s / (\nu^{1/3} + \epsilon), \quad u = c\,(z - x_k),

    so that :math:`x_{k+1} = (1-c)\,x_k + c\,z`. The learning rate is part of
    the transform (it weighs the sums), so no ``scale_by_learning_rate`` follows.

    :math:`x_0`, the point dual averaging returns to, is taken from ``params``
    at the first update, not at ``init``: so ``init`` needs only shapes and
    dtypes (``jax.ShapeDtypeStruct`` works, as for every gradchain transform;
    Optax's ``init`` stores the values it is given), and the state is zeros
    until then. ``update`` needs ``params``.

    Args:
      learning_rate: :math:`\gamma`, >= 0; a number or a schedule.
      momentum: :math:`1 - c`, in [0, 1).
      eps: added to the cube root, >= 0.

    Returns:
      A GradientTransformation whose state is a ScaleByMadgradState.

    Raises:
      ValueError: for a number out of range; at update, if ``params`` are
        missing or do not match the updates.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.scale_by_madgrad(0.1, momentum=0.0, eps=0.0)
      >>> params = jnp.array([1.0])
      >>> u, _ = tx.update(jnp.array([8.0]), tx.init(params), params)
      >>> round(float(u[0]), 4)  # -(0.1 * 8) / (0.1 * 64) ** (1 / 3)
      -0.4309

    References:
      Defazio and Jelassi, Adaptivity without Compromise: A Momentumized,
      Adaptive, Dual Averaged Gradient Method for Stochastic Optimization,
      JMLR 2022 (arXiv:2101.11075, 2021).
    """
    fn = "scale_by_madgrad"
    _check.non_negative(fn, "learning_rate", learning_rate, schedule_ok=True)
    _check.decay_rate(fn, "momentum", momentum, schedule_ok=True)
    _check.non_negative(fn, "eps", eps, schedule_ok=True)
    spec = HyperparamSpec(
        fn, dict(learning_rate=learning_rate, momentum=momentum, eps=eps), rates=("momentum",)
    )

    def init_fn(params: Params) -> ScaleByMadgradState:
        zeros = _tree.zeros_like  # a buffer per field: a state can be donated
        return ScaleByMadgradState(
            jnp.zeros([], jnp.int32), zeros(params), zeros(params), zeros(params), spec.init()
        )

    def update_fn(
        updates: Updates, state: ScaleByMadgradState, params: Params | None = None
    ) -> tuple[Updates, ScaleByMadgradState]:
        _tree.check_state(fn, state, ScaleByMadgradState)
        _tree.require_params(fn, params)
        _tree.check_matches(fn, updates, "params", params)
        for name in ("s", "nu", "x0"):
            _tree.check_matches(fn, updates, f"state.{name}", getattr(state, name))
        hp = values(state.hparams)
        first = state.step == 0
        k1 = state.step.astype(hp["learning_rate"].dtype) + 1
        lam = hp["learning_rate"] * jnp.sqrt(k1)
        scalars = (lam, state.hparams.complement["momentum"], hp["eps"])

        def leaf(
            g: jax.Array, s: jax.Array, v: jax.Array, x0: jax.Array, x: jax.Array
        ) -> tuple[jax.Array, ...]:
            gc, sc, vc, x0c, xc, lam_, c, eps_ = _tree.upcast(g, s, v, x0, x, *scalars)
            x0c = jnp.where(first, xc, x0c)
            new_s = sc + lam_ * gc
            new_v = vc + lam_ * _tree.abs_sq(gc)
            # c * (z - x) with z = x0 - s / (cbrt(nu) + eps), grouped so that the update keeps
            # its own precision instead of that of x (Optax forms x_{k+1} - x_k).
            out = c * ((x0c - xc) - new_s / (jnp.cbrt(new_v.real).astype(new_v.dtype) + eps_))
            return (
                out.astype(g.dtype),
                new_s.astype(s.dtype),
                new_v.astype(v.dtype),
                x0c.astype(x0.dtype),
            )

        updates, s, nu, x0 = _tree.map_leaves(leaf, 4, updates, state.s, state.nu, state.x0, params)
        step = _tree.safe_increment(state.step)
        return updates, ScaleByMadgradState(step, s, nu, x0, spec.advance(state.hparams, step))

    return GradientTransformation(init_fn, update_fn)


def madgrad(
    learning_rate: ScalarOrSchedule,
    momentum: ScalarOrSchedule = 0.9,
    weight_decay: ScalarOrSchedule = 0.0,
    eps: ScalarOrSchedule = 1e-6,
    *,
    mask: MaskOrFn | None = None,
) -> GradientTransformationExtraArgs:
    r"""MADGRAD: L2 weight decay added to the gradient, then :func:`scale_by_madgrad`.

    ``chain(add_decayed_weights(weight_decay, mask), scale_by_madgrad(...))``:
    the decay enters the dual-averaged sums with the gradient (coupled L2), as
    in the paper's implementation and Optax's chain, whose arguments and
    defaults these are; ``mask`` (keyword) selects the decayed parameters.

    Args:
      learning_rate: :math:`\gamma`, >= 0; a number or a schedule.
      momentum: in [0, 1).
      weight_decay: the L2 coefficient, >= 0.
      eps: added to the cube root, >= 0.
      mask: which parameters to decay; all by default.

    Returns:
      A GradientTransformationExtraArgs.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.madgrad(0.1)
      >>> params = jnp.array([1.0, -2.0])
      >>> state = tx.init(params)
      >>> for _ in range(3):
      ...     u, state = tx.update(jax.grad(lambda w: jnp.sum(w**2))(params), state, params)
      ...     params = gc.apply_updates(params, u)
      >>> [round(float(x), 3) for x in params]
      [0.865, -1.83]

    References:
      Defazio and Jelassi, Adaptivity without Compromise: A Momentumized,
      Adaptive, Dual Averaged Gradient Method for Stochastic Optimization,
      JMLR 2022 (arXiv:2101.11075, 2021).
    """
    return chain(
        add_decayed_weights(weight_decay, mask),
        scale_by_madgrad(learning_rate, momentum, eps),
    )
