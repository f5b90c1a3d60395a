r"""AdEMAMix and its simplified form: Adam with a second, much slower momentum mixed in.

AdEMAMix (Pagliardini et al., 2024) adds to Adam's debiased fast EMA
:math:`\hat m_1` a slow, undebiased EMA :math:`m_2` of decay :math:`\beta_3`
(0.9999 by default), weighted by :math:`\alpha`. Both :math:`\alpha` and
:math:`\beta_3` may follow schedules (the paper warms both up over many
steps); like every hyperparameter here they live in the state, so
:func:`get_hyperparams` reads them and :func:`set_hyperparams` changes the
constant ones. :math:`1 - \beta_3` is kept exactly for a constant
:math:`\beta_3` (in float32, ``1 - 0.9999`` is off by 5e-5 relative).

Simplified AdEMAMix (Morwani et al., 2025) keeps one momentum, an
undamped sum :math:`m_t = \beta_1 m_{t-1} + g_t`, and adds :math:`\alpha
g_t` to it.

Optax 0.2.8 (``optax.contrib``) has both, with these names, signatures and
numbers; these keep their moments in the parameters' dtype (``mu_dtype`` for
the fast one) and compute in float32 or wider.
"""

from __future__ import annotations

from typing import Any, NamedTuple

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
from gradchain._scaling import scale_by_learning_rate
from gradchain._wrappers import MaskOrFn


class ScaleByAdemamixState(NamedTuple):
    """State of :func:`scale_by_ademamix`."""

    step: jax.Array  # int32[], updates seen so far
    mu: Updates  # fast EMA of the updates (beta1), in mu_dtype
    mu_slow: Updates  # slow EMA of the updates (beta3), not debiased
    nu: Updates  # EMA of their squares (beta2)
    hparams: Hyperparams


def scale_by_ademamix(
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    b3: ScalarOrSchedule = 0.9999,
    alpha: ScalarOrSchedule = 6.0,
    eps: ScalarOrSchedule = 1e-8,
    eps_root: ScalarOrSchedule = 0.0,
    mu_dtype: Any | None = None,
) -> GradientTransformation:
    r"""AdEMAMix's scaling: Adam's direction plus ``alpha`` times a slow EMA of the gradients.

    .. math::
      m_1 \leftarrow \beta_1 m_1 + (1-\beta_1) g, \quad
      m_2 \leftarrow \beta_3 m_2 + (1-\beta_3) g, \quad
      \nu \leftarrow \beta_2 \nu + (1-\beta_2) g^2, \\
      u_t = \frac{m_1 / (1-\beta_1^t) + \alpha\, m_2}
                 {\sqrt{\nu / (1-\beta_2^t) + \epsilon_{root}} + \epsilon}.

    A schedule for ``alpha`` or ``b3`` (or any other argument) is evaluated at
    the number of updates before this one (0 at the first), as in Optax.

    Args:
      b1: decay of the fast EMA, in [0, 1).
      b2: decay of the second moment, in [0, 1).
      b3: decay of the slow EMA, in [0, 1); a number or a schedule.
      alpha: weight of the slow EMA, >= 0; a number or a schedule.
      eps: added to the denominator outside the root, >= 0.
      eps_root: added inside the root, >= 0.
      mu_dtype: dtype of the fast EMA; the parameters' by default.

    Returns:
      A GradientTransformation whose state is a ScaleByAdemamixState.

    Raises:
      ValueError: for a number out of range, or a dtype that is not a float.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.scale_by_ademamix(b3=0.5, alpha=2.0, eps=0.0)
      >>> u, _ = tx.update(jnp.array([0.5, -2.0]), tx.init(jnp.zeros(2)))
      >>> [round(float(x), 4) for x in u]  # sign(g) + 2 * (1 - b3) * sign(g)
      [2.0, -2.0]

    References:
      Pagliardini, Ablin and Grangier, The AdEMAMix Optimizer: Better, Faster,
      Older, arXiv:2409.03137, 2024.
    """
    fn = "scale_by_ademamix"
    for name, rate in (("b1", b1), ("b2", b2), ("b3", b3)):
        _check.decay_rate(fn, name, rate, schedule_ok=True)
    _check.non_negative(fn, "alpha", alpha, schedule_ok=True)
    _check.non_negative(fn, "eps", eps, schedule_ok=True)
    _check.non_negative(fn, "eps_root", eps_root, schedule_ok=True)
    mu_dt = _check.dtype_or_none(fn, "mu_dtype", mu_dtype)
    spec = HyperparamSpec(
        fn,
        dict(b1=b1, b2=b2, b3=b3, alpha=alpha, eps=eps, eps_root=eps_root),
        rates=("b1", "b2", "b3"),
    )

    def init_fn(params: Params) -> ScaleByAdemamixState:
        return ScaleByAdemamixState(
            step=jnp.zeros([], jnp.int32),
            mu=_tree.zeros_like(params, mu_dt),
            mu_slow=_tree.zeros_like(params),
            nu=_tree.zeros_like(params),
            hparams=spec.init(),
        )

    def update_fn(
        updates: Updates, state: ScaleByAdemamixState, params: Params | None = None
    ) -> tuple[Updates, ScaleByAdemamixState]:
        del params
        _tree.check_state(fn, state, ScaleByAdemamixState)
        for name in ("mu", "mu_slow", "nu"):
            _tree.check_matches(fn, updates, f"state.{name}", getattr(state, name))
        hp = values(state.hparams)
        comp = state.hparams.complement
        step = _tree.safe_increment(state.step)
        scalars = (
            *(hp[k] for k in ("b1", "b2", "b3", "alpha", "eps", "eps_root")),
            *(comp[k] for k in ("b1", "b2", "b3")),
            _tree.debias(hp["b1"], step),
            _tree.debias(hp["b2"], step),
        )

        def leaf(g: jax.Array, m1: jax.Array, m2: jax.Array, v: jax.Array) -> tuple[jax.Array, ...]:
            gc, m1c, m2c, vc, b1_, b2_, b3_, alpha_, eps_, eps_root_, o1, o2, o3, c1, c2 = (
                _tree.upcast(g, m1, m2, v, *scalars)
            )
            new_m1 = o1 * gc + b1_ * m1c
            new_m2 = o3 * gc + b3_ * m2c
            new_v = o2 * _tree.abs_sq(gc) + b2_ * vc
            denom = jnp.sqrt(new_v / c2 + eps_root_) + eps_
            out = (new_m1 / c1 + alpha_ * new_m2) / denom
            return (
                out.astype(g.dtype),
                new_m1.astype(m1.dtype),
                new_m2.astype(m2.dtype),
                new_v.astype(v.dtype),
            )

        updates, mu, mu_slow, nu = _tree.map_leaves(
            leaf, 4, updates, state.mu, state.mu_slow, state.nu
        )
        hparams = spec.advance(state.hparams, step)
        return updates, ScaleByAdemamixState(step, mu, mu_slow, nu, hparams)

    return GradientTransformation(init_fn, update_fn)


def ademamix(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    b3: ScalarOrSchedule = 0.9999,
    alpha: ScalarOrSchedule = 5.0,
    eps: ScalarOrSchedule = 1e-8,
    eps_root: ScalarOrSchedule = 0.0,
    mu_dtype: Any | None = None,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: MaskOrFn | None = None,
) -> GradientTransformationExtraArgs:
    r"""AdEMAMix: :func:`scale_by_ademamix`, decoupled weight decay, then the learning rate.

    :math:`w \leftarrow w - \eta\,(u_t + \lambda w)` with :math:`u_t` of
    :func:`scale_by_ademamix`. Optax's arguments, defaults (``alpha=5.0`` here,
    6.0 in the transform, as in Optax) and chain; the weight decay is always a
    member, as in Optax, so ``weight_decay`` is settable by name even at 0.

    Args:
      learning_rate: :math:`\eta`, a number or a schedule.
      b1: decay of the fast EMA, in [0, 1).
      b2: decay of the second moment, in [0, 1).
      b3: decay of the slow EMA, in [0, 1); a number or a schedule.
      alpha: weight of the slow EMA, >= 0; a number or a schedule.
      eps: added outside the root, >= 0.
      eps_root: added inside the root, >= 0.
      mu_dtype: dtype of the fast EMA.
      weight_decay: :math:`\lambda` >= 0 (decoupled, scaled by the learning rate).
      mask: which parameters to decay; all by default.

    Returns:
      A GradientTransformationExtraArgs.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.ademamix(0.1, b3=0.999)
      >>> params = jnp.array([1.0, -2.0])
      >>> state = tx.init(params)
      >>> for _ in range(3):
      ...     u, state = tx.update(jax.grad(lambda w: jnp.sum(w**2))(params), state, params)
      ...     params = gc.apply_updates(params, u)
      >>> [round(float(x), 3) for x in params]
      [0.699, -1.698]

    References:
      Pagliardini, Ablin and Grangier, The AdEMAMix Optimizer: Better, Faster,
      Older, arXiv:2409.03137, 2024.
    """
    return chain(
        scale_by_ademamix(b1, b2, b3, alpha, eps, eps_root, mu_dtype),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


class ScaleBySimplifiedAdemamixState(NamedTuple):
    """State of :func:`scale_by_simplified_ademamix`."""

    step: jax.Array  # int32[], updates seen so far
    mu: Updates  # undamped momentum: beta1 * mu + g
    nu: Updates  # EMA of the squared updates (beta2)
    hparams: Hyperparams


def scale_by_simplified_ademamix(
    b1: ScalarOrSchedule = 0.99,
    b2: ScalarOrSchedule = 0.95,
    alpha: ScalarOrSchedule = 0.0,
    eps: ScalarOrSchedule = 1e-8,
    eps_root: ScalarOrSchedule = 0.0,
) -> GradientTransformation:
    r"""Simplified AdEMAMix's scaling: one undamped momentum plus ``alpha`` times the gradient.

    .. math::
      m \leftarrow \beta_1 m + g, \quad \nu \leftarrow \beta_2 \nu + (1-\beta_2) g^2, \quad
      u_t = \frac{m + \alpha g}{\sqrt{\nu / (1-\beta_2^t) + \epsilon_{root}} + \epsilon}.

    The momentum is a sum, not an average (about :math:`1/(1-\beta_1)` times
    the gradient), so learning rates are correspondingly smaller than Adam's.

    Args:
      b1: decay of the momentum, in [0, 1).
      b2: decay of the second moment, in [0, 1).
      alpha: weight of the current gradient, >= 0; a number or a schedule.
      eps: added outside the root, >= 0.
      eps_root: added inside the root, >= 0.

    Returns:
      A GradientTransformation whose state is a ScaleBySimplifiedAdemamixState.

    Raises:
      ValueError: for a number out of range.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.scale_by_simplified_ademamix(alpha=2.0, eps=0.0)
      >>> u, _ = tx.update(jnp.array([0.5, -2.0]), tx.init(jnp.zeros(2)))
      >>> [round(float(x), 4) for x in u]  # (1 + alpha) * sign(g) at the first step
      [3.0, -3.0]

    References:
      Morwani, Vyas, Hwang, Wu, Zhao and Kakade, Connections between Schedule-Free
      Optimizers, AdEMAMix, and Accelerated SGD Variants, arXiv:2502.02431, 2025.
    """
    fn = "scale_by_simplified_ademamix"
    _check.decay_rate(fn, "b1", b1, schedule_ok=True)
    _check.decay_rate(fn, "b2", b2, schedule_ok=True)
    _check.non_negative(fn, "alpha", alpha, schedule_ok=True)
    _check.non_negative(fn, "eps", eps, schedule_ok=True)
    _check.non_negative(fn, "eps_root", eps_root, schedule_ok=True)
    spec = HyperparamSpec(
        fn, dict(b1=b1, b2=b2, alpha=alpha, eps=eps, eps_root=eps_root), rates=("b2",)
    )

    def init_fn(params: Params) -> ScaleBySimplifiedAdemamixState:
        zeros = _tree.zeros_like  # a buffer per field: a state can be donated
        return ScaleBySimplifiedAdemamixState(
            jnp.zeros([], jnp.int32), zeros(params), zeros(params), spec.init()
        )

    def update_fn(
        updates: Updates, state: ScaleBySimplifiedAdemamixState, params: Params | None = None
    ) -> tuple[Updates, ScaleBySimplifiedAdemamixState]:
        del params
        _tree.check_state(fn, state, ScaleBySimplifiedAdemamixState)
        _tree.check_matches(fn, updates, "state.mu", state.mu)
        _tree.check_matches(fn, updates, "state.nu", state.nu)
        hp = values(state.hparams)
        step = _tree.safe_increment(state.step)
        scalars = (
            *(hp[k] for k in ("b1", "b2", "alpha", "eps", "eps_root")),
            state.hparams.complement["b2"],
            _tree.debias(hp["b2"], step),
        )

        def leaf(g: jax.Array, m: jax.Array, v: jax.Array) -> tuple[jax.Array, ...]:
            gc, mc, vc, b1_, b2_, alpha_, eps_, eps_root_, o2, c2 = _tree.upcast(g, m, v, *scalars)
            new_m = b1_ * mc + gc
            new_v = o2 * _tree.abs_sq(gc) + b2_ * vc
            out = (new_m + alpha_ * gc) / (jnp.sqrt(new_v / c2 + eps_root_) + eps_)
            return out.astype(g.dtype), new_m.astype(m.dtype), new_v.astype(v.dtype)

        updates, mu, nu = _tree.map_leaves(leaf, 3, updates, state.mu, state.nu)
        hparams = spec.advance(state.hparams, step)
        return updates, ScaleBySimplifiedAdemamixState(step, mu, nu, hparams)

    return GradientTransformation(init_fn, update_fn)


def simplified_ademamix(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.99,
    b2: ScalarOrSchedule = 0.95,
    alpha: ScalarOrSchedule = 0.0,
    eps: ScalarOrSchedule = 1e-8,
    eps_root: ScalarOrSchedule = 0.0,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: MaskOrFn | None = None,
) -> GradientTransformationExtraArgs:
    r"""Simplified AdEMAMix: its scaling, decoupled weight decay, then the learning rate.

    :math:`w \leftarrow w - \eta\,(u_t + \lambda w)` with :math:`u_t` of
    :func:`scale_by_simplified_ademamix`; Optax's arguments, defaults and chain.

    Args:
      learning_rate: :math:`\eta`, a number or a schedule.
      b1: decay of the momentum, in [0, 1).
      b2: decay of the second moment, in [0, 1).
      alpha: weight of the current gradient, >= 0; a number or a schedule.
      eps: added outside the root, >= 0.
      eps_root: added inside the root, >= 0.
      weight_decay: :math:`\lambda` >= 0 (decoupled, scaled by the learning rate).
      mask: which parameters to decay; all by default.

    Returns:
      A GradientTransformationExtraArgs.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.simplified_ademamix(0.01, b1=0.9)
      >>> params = jnp.array([1.0, -2.0])
      >>> state = tx.init(params)
      >>> for _ in range(3):
      ...     u, state = tx.update(jax.grad(lambda w: jnp.sum(w**2))(params), state, params)
      ...     params = gc.apply_updates(params, u)
      >>> [round(float(x), 3) for x in params]
      [0.944, -1.944]

    References:
      Morwani, Vyas, Hwang, Wu, Zhao and Kakade, Connections between Schedule-Free
      Optimizers, AdEMAMix, and Accelerated SGD Variants, arXiv:2502.02431, 2025.
    """
    return chain(
        scale_by_simplified_ademamix(b1, b2, alpha, eps, eps_root),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
