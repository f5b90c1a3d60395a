r"""Mechanic: learns the scale of any base optimizer's updates.

The parameters move along :math:`x_t = x_{ref} + S_t \Delta_t`, where
:math:`\Delta_t` sums the base optimizer's updates and :math:`S_t = \sum_i s_i`
is a scale learned online by ``n`` coin-betting learners, one per decay rate
:math:`\beta_i = 1 - 10^{-i}`, each betting on the one-dimensional
"gradient" :math:`h_t = \langle \Delta_t, g_t\rangle` (Cutkosky, Defazio and
Mehta, 2023, Algorithm 1).

Differences from Optax 0.2.8, on purpose: ``init`` needs shapes only (the
reference point :math:`x_{ref}` is recorded at the first update, where it
equals the parameters), so ``init`` accepts ``jax.ShapeDtypeStruct``; and the
numeric hyperparameters are in the state (``get_hyperparams``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradchain import _check, _tree
from gradchain._base import (
    AnyTransformation,
    GradientTransformationExtraArgs,
    OptState,
    Params,
    Updates,
    call_update,
    check_transformation,
)
from gradchain._hyperparams import Hyperparams, HyperparamSpec, values
from gradchain._lr_free import check_inputs, vdot

F32 = jnp.float32


class MechanicState(NamedTuple):
    """State of :func:`mechanize`."""

    base_optimizer_state: OptState  # the base optimizer's own state
    step: jax.Array  # int32[], updates seen so far
    r: jax.Array  # float32[num_betas]: each learner's wealth
    m: jax.Array  # float32[num_betas]: the decayed maximum of |h|
    v: jax.Array  # float32[num_betas]: the decayed sum of h^2
    s: jax.Array  # float32[num_betas]: each learner's bet; the scale is their sum
    x0: Params  # x_ref: the parameters of the first update (zeros before it)
    hparams: Hyperparams


def _betas(num_betas: int) -> jax.Array:
    return jnp.asarray([1 - 0.1**i for i in range(1, num_betas + 1)], F32)


def mechanize(
    base_optimizer: AnyTransformation,
    weight_decay: float = 0.01,
    eps: float = 1e-8,
    s_init: float = 1e-6,
    num_betas: int = 6,
) -> GradientTransformationExtraArgs:
    r"""Wraps ``base_optimizer`` so that Mechanic learns the scale of its updates.

    With :math:`u_t` the base optimizer's update, :math:`S_t = \sum_i s_{t,i}`
    and :math:`\Delta_t = (x_t - x_{ref}) / (S_t + \epsilon)`:

    .. math::
      h_t &= \langle \Delta_t,\ g_t + \lambda S_t \|g_t\| x_t / \|x_t\| \rangle, \\
      m_{t,i} &= \max(\beta_i m_{t-1,i}, |h_t| + \epsilon), \quad
      v_{t,i} = \beta_i^2 v_{t-1,i} + h_t^2, \\
      r_{t,i} &= \max(\beta_i r_{t-1,i} - s_{t,i}\,
        \mathrm{clip}(h_t, \pm m_{t-1,i}),\ 0), \quad
      s_{t+1,i} = \frac{s_{init} m_{t,i} / n + r_{t,i}}{\sqrt{v_{t,i}} + \epsilon}, \\
      x_{t+1} &= x_{ref} + S_{t+1} (\Delta_t + u_t), \quad
      \text{update} = x_{t+1} - x_t .

    Keep a base optimizer's learning rate (or schedule) at a fixed base such
    as 1.0; Mechanic finds the scale.

    Unlike Optax 0.2.8's, ``init`` takes ``jax.ShapeDtypeStruct``
    (:math:`x_{ref}` is recorded at the first update) and the numbers are in
    the state; the updates are Optax's, bit for bit.

    Args:
      base_optimizer: the transformation whose updates are scaled.
      weight_decay: :math:`\lambda` >= 0, Mechanic's own decay (not the base's).
      eps: :math:`\epsilon` >= 0, in the divisions.
      s_init: :math:`s_{init}` > 0, each learner's first bet.
      num_betas: :math:`n`, the number of learners, an integer > 0.

    Returns:
      A GradientTransformationExtraArgs whose state is a MechanicState;
      ``update`` needs the parameters (and passes extra arguments on to the
      base), ``init`` only their shapes and dtypes.

    Raises:
      TypeError: if ``base_optimizer`` is not a transformation.
      ValueError: if a number is out of range; at update, if ``params`` are
        missing or do not match the updates.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.mechanize(gc.sgd(1.0))
      >>> params = jnp.array([3.0])
      >>> state = tx.init(params)
      >>> for _ in range(300):
      ...     u, state = tx.update(params - 1.0, state, params)  # minimize (x - 1)^2 / 2
      ...     params = gc.apply_updates(params, u)
      >>> round(float(params[0]), 2)
      1.0

    References:
      Cutkosky, Defazio and Mehta, Mechanic: A Learning Rate Tuner, NeurIPS 2023
      (arXiv:2306.00144), Algorithm 1.
    """
    fn = "mechanize"
    check_transformation(fn, "`base_optimizer`", base_optimizer)
    _check.non_negative(fn, "weight_decay", weight_decay)
    _check.non_negative(fn, "eps", eps)
    _check.positive(fn, "s_init", s_init)
    _check.positive_int(fn, "num_betas", num_betas)
    spec = HyperparamSpec(fn, dict(weight_decay=weight_decay, eps=eps, s_init=s_init))

    def init_fn(params: Params) -> MechanicState:
        hp = spec.init()

        def zeros() -> jax.Array:  # a buffer per field: a state can be donated
            return jnp.zeros([num_betas], F32)

        return MechanicState(
            base_optimizer.init(params),
            jnp.zeros([], jnp.int32),
            zeros(),
            zeros(),
            zeros(),
            jnp.full([num_betas], hp.constant["s_init"], F32),
            _tree.zeros_like(params),
            hp,
        )

    def update_fn(
        updates: Updates, state: MechanicState, params: Params | None = None, **extra: Any
    ) -> tuple[Updates, MechanicState]:
        check_inputs(fn, state, MechanicState, updates, params)
        _tree.check_matches(fn, updates, "state.x0", state.x0)
        if state.s.shape != (num_betas,):
            raise ValueError(
                f"{fn}: the state has {state.s.shape} learners' bets but this transformation "
                f"has num_betas={num_betas}. Pass the state from this transformation's own init."
            )
        hp = values(state.hparams)
        first = state.step == 0
        step = _tree.safe_increment(state.step)
        x0 = jax.tree.map(lambda p, p0: jnp.where(first, p, p0), params, state.x0)
        base_updates, base_state = call_update(
            base_optimizer, updates, state.base_optimizer_state, params, extra
        )
        eps = hp["eps"]
        betas = _betas(num_betas)
        sum_s = jnp.sum(state.s)

        def delta_of(p: jax.Array, p0: jax.Array) -> jax.Array:
            pc, p0c, s_, eps_ = _tree.upcast(p, p0, sum_s, eps)
            return (pc - p0c) / (s_ + eps_)

        delta_prev = jax.tree.map(delta_of, params, x0)
        g_norm = _tree.global_norm(updates).astype(F32)
        x_norm = _tree.global_norm(params).astype(F32)
        decay = hp["weight_decay"] * sum_s * g_norm / (x_norm + eps)

        def decayed(g: jax.Array, p: jax.Array) -> jax.Array:
            gc, pc, decay_ = _tree.upcast(g, p, decay)
            return gc + decay_ * pc

        h = vdot(delta_prev, jax.tree.map(decayed, updates, params))
        m = jnp.maximum(betas * state.m, jnp.abs(h) + eps)
        v = betas**2 * state.v + h**2
        bounded = jnp.clip(h, -state.m, state.m)  # bounded by the largest |h| seen before
        r = jnp.maximum(betas * state.r - state.s * bounded, 0)
        s = (hp["s_init"] / num_betas * m + r) / (jnp.sqrt(v) + eps)
        new_sum_s = jnp.sum(s)

        def step_of(p: jax.Array, p0: jax.Array, d: jax.Array, u: jax.Array) -> jax.Array:
            pc, p0c, dc, uc, s_ = _tree.upcast(p, p0, d, u, new_sum_s)
            return (p0c + s_ * (dc + uc) - pc).astype(u.dtype)

        out = jax.tree.map(step_of, params, x0, delta_prev, base_updates)
        out = jax.tree.map(lambda o, g: o.astype(g.dtype), out, updates)
        new_state = MechanicState(
            base_state,
            step,
            r,
            m,
            v,
            s,
            jax.tree.map(lambda a, old: a.astype(old.dtype), x0, state.x0),
            spec.advance(state.hparams, step),
        )
        return out, new_state

    return GradientTransformationExtraArgs(init_fn, update_fn)
