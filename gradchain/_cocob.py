r"""COCOB-Backprop: gradient descent as a coin-betting game, with no learning rate.

Each coordinate bets a fraction of its wealth (its initial stake plus the
reward so far) on the sign of the negative gradients seen so far (Orabona and
Tommasi, 2017, Algorithm 2). The weights are a function of the initial weights
and the running sums, so the update is the difference between the new
weights and the current ones.

Differences from Optax 0.2.8, on purpose:

- ``init`` needs shapes only: the initial weights :math:`w_1` are recorded at
  the first update (they equal the parameters there), so ``init`` accepts
  ``jax.ShapeDtypeStruct``.
- :func:`cocob`'s learning rate scales COCOB's step, so a schedule anneals
  it; Optax 0.2.8 scales the gradients before COCOB, which is invariant to
  that, so its learning rate has no effect (measured in tests/test_lr_free.py).
- The hyperparameters are in the state (``get_hyperparams``).
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
    with_extra_args_support,
)
from gradchain._combine import chain
from gradchain._hyperparams import Hyperparams, HyperparamSpec, values
from gradchain._lr_free import check_inputs
from gradchain._regularizing import add_decayed_weights
from gradchain._scaling import scale_by_learning_rate
from gradchain._wrappers import MaskOrFn


class ScaleByCocobState(NamedTuple):
    """State of :func:`scale_by_cocob`."""

    step: jax.Array  # int32[], updates seen so far
    init_particles: Params  # w_1: the parameters of the first update (zeros before it)
    cumulative_gradients: Updates  # theta: the sum of the negative gradients (the paper's)
    scale: Updates  # L: the largest |gradient| seen (eps at first)
    subgradients: Updates  # G: the sum of |gradient|
    reward: Updates  # the wealth won so far, >= 0
    hparams: Hyperparams


def scale_by_cocob(alpha: float = 100.0, eps: float = 1e-8) -> GradientTransformation:
    r"""COCOB-Backprop's step: the change of the weights the coin-betting strategy picks.

    Per coordinate, with :math:`g_t` the gradient and :math:`w_1` the first
    update's parameters:

    .. math::
      L_t &= \max(L_{t-1}, |g_t|), \quad G_t = G_{t-1} + |g_t|, \quad
      \theta_t = \theta_{t-1} - g_t, \\
      R_t &= \max(R_{t-1} - (w_t - w_1)\, g_t,\ 0), \\
      w_{t+1} &= w_1 + \frac{\theta_t\, (L_t + R_t)}{L_t \max(G_t + L_t,\ \alpha L_t)},
      \quad \text{update} = w_{t+1} - w_t,

    starting from :math:`L_0 = \epsilon` (so that the first division is safe).

    Args:
      alpha: :math:`\alpha` > 0: the larger, the smaller the first bets.
      eps: :math:`L_0` > 0, the scale before any gradient.

    Returns:
      A GradientTransformation whose state is a ScaleByCocobState; ``update``
      needs the parameters, ``init`` only their shapes and dtypes.

    Raises:
      ValueError: if a number is out of range; at update, if ``params`` are
        missing or do not match the updates.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.scale_by_cocob()
      >>> params = jnp.array([1.0, -2.0])
      >>> u, _ = tx.update(jnp.array([0.5, -1.0]), tx.init(params), params)
      >>> [round(float(x), 4) for x in u]  # the first bet: -sign(g) / alpha
      [-0.01, 0.01]

    References:
      Orabona and Tommasi, Training Deep Networks without Learning Rates
      Through Coin Betting, NeurIPS 2017, Algorithm 2 (COCOB-Backprop).
    """
    fn = "scale_by_cocob"
    _check.positive(fn, "alpha", alpha)
    _check.positive(fn, "eps", eps)
    spec = HyperparamSpec(fn, dict(alpha=alpha, eps=eps))

    def init_fn(params: Params) -> ScaleByCocobState:
        zeros = _tree.zeros_like
        eps0 = spec.init().constant["eps"]
        return ScaleByCocobState(
            jnp.zeros([], jnp.int32),
            zeros(params),
            zeros(params),
            jax.tree.map(lambda p: _tree.like(p, p.dtype, eps0.astype(p.dtype)), params),
            zeros(params),
            zeros(params),
            spec.init(),
        )

    def update_fn(
        updates: Updates, state: ScaleByCocobState, params: Params | None = None
    ) -> tuple[Updates, ScaleByCocobState]:
        check_inputs(fn, state, ScaleByCocobState, updates, params)
        for name in ("init_particles", "cumulative_gradients", "scale", "subgradients", "reward"):
            _tree.check_matches(fn, updates, f"state.{name}", getattr(state, name))
        hp = values(state.hparams)
        first = state.step == 0
        step = _tree.safe_increment(state.step)

        def leaf(
            g: jax.Array,
            p: jax.Array,
            w1: jax.Array,
            theta: jax.Array,
            big_l: jax.Array,
            big_g: jax.Array,
            reward: jax.Array,
        ) -> tuple[jax.Array, ...]:
            w1 = jnp.where(first, p, w1)
            gc, pc, w1c, thc, lc, gsc, rc, alpha_ = _tree.upcast(
                g, p, w1, theta, big_l, big_g, reward, hp["alpha"]
            )
            new_l = jnp.maximum(lc, jnp.abs(gc))
            new_gs = gsc + jnp.abs(gc)
            new_r = jnp.maximum(rc - (pc - w1c) * gc, 0)
            new_th = thc - gc
            bet = new_th / (new_l * jnp.maximum(new_gs + new_l, alpha_ * new_l))
            new_w = w1c + bet * (new_l + new_r)
            return (
                (new_w - pc).astype(g.dtype),
                w1.astype(p.dtype),
                new_th.astype(theta.dtype),
                new_l.astype(big_l.dtype),
                new_gs.astype(big_g.dtype),
                new_r.astype(reward.dtype),
            )

        out, w1, theta, big_l, big_g, reward = _tree.map_leaves(
            leaf,
            6,
            updates,
            params,
            state.init_particles,
            state.cumulative_gradients,
            state.scale,
            state.subgradients,
            state.reward,
        )
        new_state = ScaleByCocobState(
            step, w1, theta, big_l, big_g, reward, spec.advance(state.hparams, step)
        )
        return out, new_state

    return GradientTransformation(init_fn, update_fn)


def cocob(
    learning_rate: ScalarOrSchedule = 1.0,
    alpha: float = 100.0,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    mask: MaskOrFn | None = None,
) -> GradientTransformationExtraArgs:
    r"""COCOB-Backprop, optionally scaled and with an L2 penalty.

    ``chain(add_decayed_weights(weight_decay, mask), scale_by_cocob(alpha,
    eps), scale_by_learning_rate(learning_rate, flip_sign=False))``: the L2
    penalty's gradient ``weight_decay * params`` joins the gradient before the
    betting (coupled L2, as in Optax), and the learning rate, 1.0 unless a
    schedule is wanted, multiplies COCOB's step.

    Optax 0.2.8 multiplies the *gradients* by the learning rate, before
    COCOB, whose step does not change when every gradient is scaled by the
    same factor: its ``learning_rate`` does nothing but freeze the weights at
    0 (measured in tests/test_lr_free.py). With ``learning_rate=1.0`` the two
    agree to the bit.

    Args:
      learning_rate: a factor >= 0 on the step, or a schedule.
      alpha: :math:`\alpha` > 0, see :func:`scale_by_cocob`.
      eps: :math:`L_0` > 0, see :func:`scale_by_cocob`.
      weight_decay: the L2 penalty's factor >= 0.
      mask: where to apply it: a tree of bools like the parameters (or a prefix),
        or a function of the parameters returning one; ``None`` decays all.

    Returns:
      A GradientTransformationExtraArgs whose state is the chain's tuple of
      states (a ScaleByCocobState second).

    Raises:
      ValueError: if a number is out of range.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.cocob()
      >>> params = jnp.array([3.0])
      >>> state = tx.init(params)
      >>> for _ in range(200):
      ...     u, state = tx.update(params - 1.0, state, params)  # minimize (x - 1)^2 / 2
      ...     params = gc.apply_updates(params, u)
      >>> round(float(params[0]), 2)
      1.0

    References:
      Orabona and Tommasi, Training Deep Networks without Learning Rates
      Through Coin Betting, NeurIPS 2017.
    """
    fn = "cocob"
    _check.non_negative(fn, "learning_rate", learning_rate, schedule_ok=True)
    _check.non_negative(fn, "weight_decay", weight_decay)
    return with_extra_args_support(
        chain(
            add_decayed_weights(weight_decay, mask),
            scale_by_cocob(alpha, eps),
            scale_by_learning_rate(learning_rate, flip_sign=False),
        )
    )
