r"""Adaptive scalings outside Adam's mould: AdaDelta, NovoGrad and Adan.

AdaDelta needs no learning rate (it matches the units of the step to the
parameter's); NovoGrad keeps one second moment per parameter array (a layer)
instead of one per coordinate; Adan adds a moment of gradient differences
(Nesterov momentum without an extra gradient evaluation).

Arithmetic is in at least float32, every moment keeps the dtype it was created
with, and updates keep the gradients' dtype.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradchain import _check, _tree
from gradchain._base import GradientTransformation, Params, ScalarOrSchedule, Updates
from gradchain._flat_params import refuse_flat_params
from gradchain._hyperparams import Hyperparams, HyperparamSpec, values
from gradchain._wrappers import MaskOrFn, _full_mask


class ScaleByAdaDeltaState(NamedTuple):
    """State of :func:`scale_by_adadelta` (moment names as in Optax)."""

    step: jax.Array  # int32[], updates seen so far
    e_g: Updates  # EMA of the squared gradients, E[g^2]
    e_x: Updates  # EMA of the squared updates, E[dx^2]
    hparams: Hyperparams


def scale_by_adadelta(
    rho: ScalarOrSchedule = 0.9, eps: ScalarOrSchedule = 1e-6
) -> GradientTransformation:
    r"""AdaDelta's scaling: the gradient times the ratio of two running RMS values.

    .. math::
      E[g^2]_t = \rho E[g^2]_{t-1} + (1-\rho) g_t^2, \quad
      u_t = \frac{\sqrt{E[\Delta x^2]_{t-1} + \epsilon}}{\sqrt{E[g^2]_t + \epsilon}}\, g_t,
      \quad E[\Delta x^2]_t = \rho E[\Delta x^2]_{t-1} + (1-\rho) u_t^2.

    The update :math:`u_t` points uphill, like the gradient; Zeiler's step is
    :math:`\Delta x_t = -u_t`, which :func:`adadelta` applies.

    Args:
      rho: decay of both running averages, in [0, 1).
      eps: added inside both roots, >= 0 (it also sets the size of the first
        steps, :math:`\sqrt{\epsilon}` relative).

    Returns:
      A GradientTransformation whose state is a ScaleByAdaDeltaState.

    Raises:
      ValueError: if a number is out of range.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.scale_by_adadelta(rho=0.75, eps=1e-4)
      >>> u, _ = tx.update(jnp.array([3.0]), tx.init(jnp.zeros(1)))
      >>> round(float(u[0]), 4)  # sqrt(1e-4) / sqrt(0.25 * 9 + 1e-4) * 3
      0.02

    References:
      Zeiler, ADADELTA: An Adaptive Learning Rate Method, arXiv:1212.5701, 2012, Algorithm 1.
    """
    fn = "scale_by_adadelta"
    _check.decay_rate(fn, "rho", rho, schedule_ok=True)
    _check.non_negative(fn, "eps", eps, schedule_ok=True)
    spec = HyperparamSpec(fn, dict(rho=rho, eps=eps), rates=("rho",))

    def init_fn(params: Params) -> ScaleByAdaDeltaState:
        zeros = _tree.zeros_like
        return ScaleByAdaDeltaState(
            jnp.zeros([], jnp.int32), zeros(params), zeros(params), spec.init()
        )

    def update_fn(
        updates: Updates, state: ScaleByAdaDeltaState, params: Params | None = None
    ) -> tuple[Updates, ScaleByAdaDeltaState]:
        del params
        _tree.check_state(fn, state, ScaleByAdaDeltaState)
        _tree.check_matches(fn, updates, "state.e_g", state.e_g)
        _tree.check_matches(fn, updates, "state.e_x", state.e_x)
        hp = values(state.hparams)
        scalars = (hp["rho"], state.hparams.complement["rho"], hp["eps"])

        def leaf(
            g: jax.Array, eg: jax.Array, ex: jax.Array
        ) -> tuple[jax.Array, jax.Array, jax.Array]:
            gc, egc, exc, rho_, omr, eps_ = _tree.upcast(g, eg, ex, *scalars)
            new_eg = omr * _tree.abs_sq(gc) + rho_ * egc
            out = (jnp.sqrt(exc + eps_) / jnp.sqrt(new_eg + eps_)) * gc
            new_ex = omr * _tree.abs_sq(out) + rho_ * exc
            return out.astype(g.dtype), new_eg.astype(eg.dtype), new_ex.astype(ex.dtype)

        updates, e_g, e_x = _tree.map_leaves(leaf, 3, updates, state.e_g, state.e_x)
        step = _tree.safe_increment(state.step)
        return updates, ScaleByAdaDeltaState(step, e_g, e_x, spec.advance(state.hparams, step))

    return GradientTransformation(init_fn, update_fn)


class ScaleByNovogradState(NamedTuple):
    """State of :func:`scale_by_novograd`."""

    step: jax.Array  # int32[], updates seen so far
    mu: Updates  # the momentum, in mu_dtype
    nu: Updates  # one scalar per parameter array: EMA of its squared l2 norm
    hparams: Hyperparams


def scale_by_novograd(
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.25,
    eps: ScalarOrSchedule = 1e-8,
    eps_root: ScalarOrSchedule = 0.0,
    weight_decay: ScalarOrSchedule = 0.0,
    mu_dtype: Any | None = None,
    *,
    mask: MaskOrFn | None = None,
) -> GradientTransformation:
    r"""NovoGrad's scaling: layer-wise second moments, weight decay inside the momentum.

    For each parameter array (layer) :math:`l`, with :math:`v^l_1 = \|g^l_1\|^2`
    and :math:`m^l_1 = d^l_1`:

    .. math::
      v^l_t = \beta_2 v^l_{t-1} + (1-\beta_2) \|g^l_t\|^2, \quad
      d^l_t = \frac{g^l_t}{\sqrt{v^l_t + \epsilon_{root}} + \epsilon} + \lambda w^l_t, \quad
      m^l_t = \beta_1 m^l_{t-1} + d^l_t,

    and the update is :math:`m_t`. The decay :math:`\lambda w` enters the
    momentum (the paper's algorithm), so it is part of this transform.

    Args:
      b1: momentum coefficient, in [0, 1).
      b2: decay of the layer-wise second moment, in [0, 1).
      eps: added to the denominator outside the root, >= 0.
      eps_root: added inside the root, >= 0.
      weight_decay: :math:`\lambda` >= 0, or a schedule.
      mu_dtype: dtype of the momentum; the parameters' by default.
      mask: which parameters to decay (a tree of bools like the parameters, or
        a prefix of it, or a function of the parameters returning one); all
        by default. The scaling applies to every parameter.

    Returns:
      A GradientTransformation whose state is a ScaleByNovogradState. Its
      update needs the parameters.

    Raises:
      ValueError: for a number out of range or a dtype that is not a float; at
        update, if ``params`` are missing or do not match the updates.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.scale_by_novograd(eps=0.0)
      >>> params = jnp.zeros(2)
      >>> u, _ = tx.update(jnp.array([3.0, 4.0]), tx.init(params), params)
      >>> [round(float(x), 4) for x in u]  # g / ||g||
      [0.6, 0.8]

    References:
      Ginsburg et al., Stochastic Gradient Methods with Layer-wise Adaptive
      Moments for Training of Deep Networks, arXiv:1905.11286, 2019, Algorithm 1.
    """
    fn = "scale_by_novograd"
    _check.decay_rate(fn, "b1", b1, schedule_ok=True)
    _check.decay_rate(fn, "b2", b2, schedule_ok=True)
    _check.non_negative(fn, "eps", eps, schedule_ok=True)
    _check.non_negative(fn, "eps_root", eps_root, schedule_ok=True)
    _check.non_negative(fn, "weight_decay", weight_decay, schedule_ok=True)
    mu_dt = _check.dtype_or_none(fn, "mu_dtype", mu_dtype)
    hyperparams = dict(b1=b1, b2=b2, eps=eps, eps_root=eps_root, weight_decay=weight_decay)
    spec = HyperparamSpec(fn, hyperparams, rates=("b2",))

    def init_fn(params: Params) -> ScaleByNovogradState:
        refuse_flat_params(
            "scale_by_novograd",
            "each leaf's norm (NovoGrad's second moment is one number per leaf)",
            params,
        )
        if mask is not None:
            _full_mask(fn, mask, params)  # a mask of another structure fails here, not later
        nu = jax.tree.map(lambda p: jnp.zeros([], p.dtype), params)
        mu = _tree.zeros_like(params, mu_dt)
        return ScaleByNovogradState(jnp.zeros([], jnp.int32), mu, nu, spec.init())

    def update_fn(
        updates: Updates, state: ScaleByNovogradState, params: Params | None = None
    ) -> tuple[Updates, ScaleByNovogradState]:
        _tree.check_state(fn, state, ScaleByNovogradState)
        _tree.require_params(fn, params)
        _tree.check_matches(fn, updates, "params", params)
        _tree.check_matches(fn, updates, "state.mu", state.mu)
        _tree.check_same_structure(fn, "updates", updates, "state.nu", state.nu)
        if mask is None:
            decays = jax.tree.map(lambda _: True, params)
        else:
            decays = _full_mask(fn, mask, params)
        hp = values(state.hparams)
        step = _tree.safe_increment(state.step)
        first = step == 1
        omb2 = state.hparams.complement["b2"]
        scalars = (hp["b1"], hp["b2"], omb2, hp["eps"], hp["eps_root"], hp["weight_decay"])

        def leaf(
            g: jax.Array, m: jax.Array, v: jax.Array, p: jax.Array, decay: bool
        ) -> tuple[jax.Array, jax.Array, jax.Array]:
            gc, mc, vc, pc, b1_, b2_, omb2, eps_, eps_root_, wd = _tree.upcast(g, m, v, p, *scalars)
            norm_sq = jnp.sum(_tree.abs_sq(gc))
            new_v = jnp.where(first, norm_sq, omb2 * norm_sq + b2_ * vc)
            d = gc / (jnp.sqrt(new_v + eps_root_) + eps_)
            if decay:
                d = d + wd * pc
            new_m = jnp.where(first, d, b1_ * mc + d)
            return new_m.astype(g.dtype), new_m.astype(m.dtype), new_v.astype(v.dtype)

        updates, mu, nu = _tree.map_leaves(leaf, 3, updates, state.mu, state.nu, params, decays)
        return updates, ScaleByNovogradState(step, mu, nu, spec.advance(state.hparams, step))

    return GradientTransformation(init_fn, update_fn)


class ScaleByAdanState(NamedTuple):
    """State of :func:`scale_by_adan` (moment names as in Optax and the paper)."""

    step: jax.Array  # int32[], updates seen so far
    m: Updates  # EMA of the gradients
    v: Updates  # EMA of the gradient differences g_t - g_{t-1}
    n: Updates  # EMA of the squared (g_t + (1 - b2)(g_t - g_{t-1}))
    g: Updates  # the previous gradient
    hparams: Hyperparams


def scale_by_adan(
    b1: ScalarOrSchedule = 0.98,
    b2: ScalarOrSchedule = 0.92,
    b3: ScalarOrSchedule = 0.99,
    eps: ScalarOrSchedule = 1e-8,
    eps_root: ScalarOrSchedule = 0.0,
) -> GradientTransformation:
    r"""Adan's scaling: Adam plus a moment of gradient differences (Nesterov momentum).

    With :math:`\Delta_t = g_t - g_{t-1}` (0 at the first step):

    .. math::
      m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
      v_t = \beta_2 v_{t-1} + (1-\beta_2) \Delta_t, \\
      n_t = \beta_3 n_{t-1} + (1-\beta_3) (g_t + (1-\beta_2) \Delta_t)^2, \quad
      \text{update} = \frac{\hat m_t + (1-\beta_2) \hat v_t}{\sqrt{\hat n_t + \epsilon_{root}}
      + \epsilon},

    each moment debiased by its :math:`1-\beta^t`. The paper writes the rates
    as :math:`1-\beta` (its :math:`\beta_1 = 0.02` is this ``b1 = 0.98``), as
    Optax does; the debiasing is that of the authors' code.

    Args:
      b1: decay of the gradient moment, in [0, 1).
      b2: decay of the difference moment, in [0, 1).
      b3: decay of the second moment, in [0, 1).
      eps: added to the denominator outside the root, >= 0.
      eps_root: added inside the root, >= 0.

    Returns:
      A GradientTransformation whose state is a ScaleByAdanState.

    Raises:
      ValueError: if a number is out of range.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.scale_by_adan()
      >>> u, _ = tx.update(jnp.array([0.5, -2.0]), tx.init(jnp.zeros(2)))
      >>> [round(float(x), 4) for x in u]  # the first step is sign(g), as Adam's
      [1.0, -1.0]

    References:
      Xie et al., Adan: Adaptive Nesterov Momentum Algorithm for Faster
      Optimizing Deep Models, arXiv:2208.06677, 2022, Algorithm 1.
    """
    fn = "scale_by_adan"
    for name, rate in (("b1", b1), ("b2", b2), ("b3", b3)):
        _check.decay_rate(fn, name, rate, schedule_ok=True)
    _check.non_negative(fn, "eps", eps, schedule_ok=True)
    _check.non_negative(fn, "eps_root", eps_root, schedule_ok=True)
    hyperparams = dict(b1=b1, b2=b2, b3=b3, eps=eps, eps_root=eps_root)
    spec = HyperparamSpec(fn, hyperparams, rates=("b1", "b2", "b3"))

    def init_fn(params: Params) -> ScaleByAdanState:
        zeros = _tree.zeros_like
        return ScaleByAdanState(
            jnp.zeros([], jnp.int32),
            zeros(params),
            zeros(params),
            zeros(params),
            zeros(params),
            spec.init(),
        )

    def update_fn(
        updates: Updates, state: ScaleByAdanState, params: Params | None = None
    ) -> tuple[Updates, ScaleByAdanState]:
        del params
        _tree.check_state(fn, state, ScaleByAdanState)
        for name in ("m", "v", "n", "g"):
            _tree.check_matches(fn, updates, f"state.{name}", getattr(state, name))
        hp = values(state.hparams)
        comp = state.hparams.complement
        first = state.step == 0
        step = _tree.safe_increment(state.step)
        rates = (hp["b1"], hp["b2"], hp["b3"], comp["b1"], comp["b2"], comp["b3"])
        others = (hp["eps"], hp["eps_root"])
        corrections = tuple(_tree.debias(hp[b], step) for b in ("b1", "b2", "b3"))

        def leaf(
            g: jax.Array, m: jax.Array, v: jax.Array, n: jax.Array, prev: jax.Array
        ) -> tuple[jax.Array, ...]:
            gc, mc, vc, nc, pc, b1_, b2_, b3_, omb1, omb2, omb3, eps_, eps_root_, c1, c2, c3 = (
                _tree.upcast(g, m, v, n, prev, *rates, *others, *corrections)
            )
            diff = jnp.where(first, jnp.zeros_like(gc), gc - pc)
            new_m = omb1 * gc + b1_ * mc
            new_v = omb2 * diff + b2_ * vc
            new_n = omb3 * _tree.abs_sq(gc + omb2 * diff) + b3_ * nc
            out = (new_m / c1 + omb2 * (new_v / c2)) / (jnp.sqrt(new_n / c3 + eps_root_) + eps_)
            casts = (out, g), (new_m, m), (new_v, v), (new_n, n), (gc, prev)
            return tuple(x.astype(like.dtype) for x, like in casts)

        updates, m, v, n, g = _tree.map_leaves(leaf, 5, updates, state.m, state.v, state.n, state.g)
        return updates, ScaleByAdanState(step, m, v, n, g, spec.advance(state.hparams, step))

    return GradientTransformation(init_fn, update_fn)
