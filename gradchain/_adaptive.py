r"""Adam's relatives: AdaMax, AMSGrad, Yogi and AdaBelief scalings (RAdam: ``_radam.py``).

Each keeps Adam's debiased first moment and changes the denominator: an
infinity norm (AdaMax), a running maximum (AMSGrad), an additive update
(Yogi), or the variance around the first moment (AdaBelief).

As in :func:`scale_by_adam`: arithmetic in at least float32, every moment
stored in the dtype it was created with, updates in the gradients' dtype, and
the bias corrections ``1 - beta**t`` computed in float32 from the
hyperparameters in the state (rates keep their exact complement ``1 - beta``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradchain import _check, _tree
from gradchain._base import GradientTransformation, Params, ScalarOrSchedule, Updates
from gradchain._hyperparams import Hyperparams, HyperparamSpec, values


def _step0() -> jax.Array:
    return jnp.zeros([], jnp.int32)


class ScaleByAdamaxState(NamedTuple):
    """State of :func:`scale_by_adamax`."""

    step: jax.Array  # int32[], updates seen so far
    mu: Updates  # EMA of the updates
    nu: Updates  # exponentially weighted infinity norm of the updates
    hparams: Hyperparams


def scale_by_adamax(
    b1: ScalarOrSchedule = 0.9, b2: ScalarOrSchedule = 0.999, eps: ScalarOrSchedule = 1e-8
) -> GradientTransformation:
    r"""AdaMax's scaling: Adam with the infinity norm in place of the second moment.

    .. math::
      m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
      u_t = \max(\beta_2 u_{t-1}, |g_t| + \epsilon), \quad
      \text{update} = m_t / ((1-\beta_1^t)\, u_t).

    ``eps`` sits inside the maximum (as in Optax), so a coordinate whose
    gradients are all zero gets a zero update, not 0/0.

    Args:
      b1: decay of the first moment, in [0, 1).
      b2: decay of the infinity norm, in [0, 1).
      eps: added to ``|g|`` inside the maximum, >= 0.

    Returns:
      A GradientTransformation whose state is a ScaleByAdamaxState.

    Raises:
      ValueError: if a number is out of range.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.scale_by_adamax()
      >>> u, _ = tx.update(jnp.array([0.5, -2.0]), tx.init(jnp.zeros(2)))
      >>> [round(float(x), 4) for x in u]  # the first step is sign(g), as Adam's
      [1.0, -1.0]

    References:
      Kingma and Ba, Adam: A Method for Stochastic Optimization, ICLR 2015, section 7.1.
    """
    fn = "scale_by_adamax"
    _check.decay_rate(fn, "b1", b1, schedule_ok=True)
    _check.decay_rate(fn, "b2", b2, schedule_ok=True)
    _check.non_negative(fn, "eps", eps, schedule_ok=True)
    spec = HyperparamSpec(fn, dict(b1=b1, b2=b2, eps=eps), rates=("b1",))

    def init_fn(params: Params) -> ScaleByAdamaxState:
        zeros = _tree.zeros_like
        return ScaleByAdamaxState(_step0(), zeros(params), zeros(params), spec.init())

    def update_fn(
        updates: Updates, state: ScaleByAdamaxState, params: Params | None = None
    ) -> tuple[Updates, ScaleByAdamaxState]:
        del params
        _tree.check_state(fn, state, ScaleByAdamaxState)
        _tree.check_matches(fn, updates, "state.mu", state.mu)
        _tree.check_matches(fn, updates, "state.nu", state.nu)
        hp = values(state.hparams)
        step = _tree.safe_increment(state.step)
        scalars = (hp["b1"], state.hparams.complement["b1"], hp["b2"], hp["eps"])
        c1 = _tree.debias(hp["b1"], step)

        def leaf(
            g: jax.Array, m: jax.Array, u: jax.Array
        ) -> tuple[jax.Array, jax.Array, jax.Array]:
            gc, mc, uc, b1_, omb1, b2_, eps_, c1_ = _tree.upcast(g, m, u, *scalars, c1)
            new_m = omb1 * gc + b1_ * mc
            new_u = jnp.maximum(jnp.abs(gc) + eps_, b2_ * uc)
            out = (new_m / c1_) / new_u
            return out.astype(g.dtype), new_m.astype(m.dtype), new_u.astype(u.dtype)

        updates, mu, nu = _tree.map_leaves(leaf, 3, updates, state.mu, state.nu)
        return updates, ScaleByAdamaxState(step, mu, nu, spec.advance(state.hparams, step))

    return GradientTransformation(init_fn, update_fn)


class ScaleByAmsgradState(NamedTuple):
    """State of :func:`scale_by_amsgrad`."""

    step: jax.Array  # int32[], updates seen so far
    mu: Updates  # EMA of the updates, in mu_dtype
    nu: Updates  # EMA of their squares
    nu_max: Updates  # the running maximum of nu (debiased or not, see max_before_debias)
    hparams: Hyperparams


def scale_by_amsgrad(
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-8,
    eps_root: ScalarOrSchedule = 0.0,
    mu_dtype: Any | None = None,
    bias_correction_mu: bool = True,
    bias_correction_nu: bool = True,
    *,
    max_before_debias: bool = False,
) -> GradientTransformation:
    r"""AMSGrad's scaling: Adam divided by the running maximum of the second moment.

    .. math::
      \hat v^{max}_t = \max(\hat v^{max}_{t-1}, v_t / (1-\beta_2^t)), \quad
      \text{update} = \hat m_t / (\sqrt{\hat v^{max}_t + \epsilon_{root}} + \epsilon).

    Where the maximum is taken is a choice the implementations differ on:

    - ``max_before_debias=False`` (default, Optax's): the maximum of the
      debiased :math:`v_t / (1-\beta_2^t)`.
    - ``max_before_debias=True`` (PyTorch's ``amsgrad=True``): the maximum of
      the raw :math:`v_t`, debiased afterwards, :math:`\max_{s \le t} v_s / (1-\beta_2^t)`.
      Early on, debiased values shrink as :math:`t` grows, so the two differ.
    - ``bias_correction_nu=False`` (Reddi et al.'s Algorithm 2): no debiasing of
      :math:`v` at all; ``max_before_debias`` then changes nothing.

    Args:
      b1: decay of the first moment, in [0, 1).
      b2: decay of the second moment, in [0, 1).
      eps: added to the denominator outside the root, >= 0.
      eps_root: added inside the root, >= 0.
      mu_dtype: dtype of the first moment; the parameters' by default.
      bias_correction_mu: whether to debias the first moment (the paper does not).
      bias_correction_nu: whether to debias the second moment (the paper does not).
      max_before_debias: take the maximum of the raw second moment, then debias
        (PyTorch), instead of the maximum of the debiased one (Optax).

    Returns:
      A GradientTransformation whose state is a ScaleByAmsgradState.

    Raises:
      ValueError: for a number out of range, or a dtype that is not a float.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.scale_by_amsgrad(b1=0.0, b2=0.5, eps=0.0)
      >>> state = tx.init(jnp.zeros(1))
      >>> _, state = tx.update(jnp.array([4.0]), state)  # debiased v: 16
      >>> u, state = tx.update(jnp.array([1.0]), state)  # debiased v: 6, the max stays 16
      >>> round(float(u[0]), 4)  # 1 / sqrt(16)
      0.25

    References:
      Reddi, Kale and Kumar, On the Convergence of Adam and Beyond, ICLR 2018.
    """
    fn = "scale_by_amsgrad"
    _check.decay_rate(fn, "b1", b1, schedule_ok=True)
    _check.decay_rate(fn, "b2", b2, schedule_ok=True)
    _check.non_negative(fn, "eps", eps, schedule_ok=True)
    _check.non_negative(fn, "eps_root", eps_root, schedule_ok=True)
    mu_dt = _check.dtype_or_none(fn, "mu_dtype", mu_dtype)
    spec = HyperparamSpec(fn, dict(b1=b1, b2=b2, eps=eps, eps_root=eps_root), rates=("b1", "b2"))

    def init_fn(params: Params) -> ScaleByAmsgradState:
        return ScaleByAmsgradState(
            _step0(),
            _tree.zeros_like(params, mu_dt),
            _tree.zeros_like(params),
            _tree.zeros_like(params),
            spec.init(),
        )

    def update_fn(
        updates: Updates, state: ScaleByAmsgradState, params: Params | None = None
    ) -> tuple[Updates, ScaleByAmsgradState]:
        del params
        _tree.check_state(fn, state, ScaleByAmsgradState)
        for name in ("mu", "nu", "nu_max"):
            _tree.check_matches(fn, updates, f"state.{name}", getattr(state, name))
        hp = values(state.hparams)
        comp = state.hparams.complement
        step = _tree.safe_increment(state.step)
        c1 = _tree.debias(hp["b1"], step)
        c2 = _tree.debias(hp["b2"], step)
        scalars = (hp["b1"], hp["b2"], comp["b1"], comp["b2"], hp["eps"], hp["eps_root"], c1, c2)

        def leaf(
            g: jax.Array, m: jax.Array, v: jax.Array, vmax: jax.Array
        ) -> tuple[jax.Array, ...]:
            gc, mc, vc, vmaxc, b1_, b2_, omb1, omb2, eps_, eps_root_, c1_, c2_ = _tree.upcast(
                g, m, v, vmax, *scalars
            )
            new_m = omb1 * gc + b1_ * mc
            new_v = omb2 * _tree.abs_sq(gc) + b2_ * vc
            m_hat = new_m / c1_ if bias_correction_mu else new_m
            if bias_correction_nu and not max_before_debias:
                new_max = jnp.maximum(vmaxc, new_v / c2_)
                v_hat = new_max
            else:
                new_max = jnp.maximum(vmaxc, new_v)
                v_hat = new_max / c2_ if bias_correction_nu else new_max
            out = m_hat / (jnp.sqrt(v_hat + eps_root_) + eps_)
            casts = (out, g), (new_m, m), (new_v, v), (new_max, vmax)
            return tuple(x.astype(like.dtype) for x, like in casts)

        updates, mu, nu, nu_max = _tree.map_leaves(
            leaf, 4, updates, state.mu, state.nu, state.nu_max
        )
        hparams = spec.advance(state.hparams, step)
        return updates, ScaleByAmsgradState(step, mu, nu, nu_max, hparams)

    return GradientTransformation(init_fn, update_fn)


class ScaleByYogiState(NamedTuple):
    """State of :func:`scale_by_yogi`."""

    step: jax.Array  # int32[], updates seen so far
    mu: Updates  # EMA of the updates
    nu: Updates  # Yogi's additive second moment
    hparams: Hyperparams


def scale_by_yogi(
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-3,
    eps_root: ScalarOrSchedule = 0.0,
    initial_accumulator_value: float = 1e-6,
    *,
    initial_mu: float | None = None,
) -> GradientTransformation:
    r"""Yogi's scaling: Adam whose second moment moves additively, by at most :math:`g^2`.

    .. math::
      v_t = v_{t-1} - (1-\beta_2)\, \mathrm{sign}(v_{t-1} - g_t^2)\, g_t^2, \quad
      \text{update} = \hat m_t / (\sqrt{v_t / (1-\beta_2^t) + \epsilon_{root}} + \epsilon),

    with Adam's debiased first moment :math:`\hat m_t`. Unlike Adam's
    :math:`v_t`, this one cannot jump up after a large gradient.

    Initial moments are a choice the implementations differ on: Optax (and so
    the default here) starts both :math:`m` and :math:`v` at
    ``initial_accumulator_value``; Algorithm 2 of the paper starts both at 0.
    ``initial_mu=0.0`` starts :math:`m` at 0 (with
    ``initial_accumulator_value=0.0``, both, as the paper).

    Args:
      b1: decay of the first moment, in [0, 1).
      b2: decay of the second moment, in [0, 1).
      eps: added to the denominator outside the root, >= 0.
      eps_root: added inside the root, >= 0.
      initial_accumulator_value: initial :math:`v` (and :math:`m`, unless
        ``initial_mu`` is given), >= 0.
      initial_mu: initial :math:`m`; ``None`` takes ``initial_accumulator_value``.

    Returns:
      A GradientTransformation whose state is a ScaleByYogiState.

    Raises:
      ValueError: if a number is out of range.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.scale_by_yogi(eps=0.0, initial_accumulator_value=0.0)
      >>> u, _ = tx.update(jnp.array([0.5, -2.0]), tx.init(jnp.zeros(2)))
      >>> [round(float(x), 4) for x in u]  # from zero moments, the first step is sign(g)
      [1.0, -1.0]

    References:
      Zaheer, Reddi, Sachan, Kale and Kumar, Adaptive Methods for Nonconvex
      Optimization, NeurIPS 2018, Algorithm 2.
    """
    fn = "scale_by_yogi"
    _check.decay_rate(fn, "b1", b1, schedule_ok=True)
    _check.decay_rate(fn, "b2", b2, schedule_ok=True)
    _check.non_negative(fn, "eps", eps, schedule_ok=True)
    _check.non_negative(fn, "eps_root", eps_root, schedule_ok=True)
    _check.non_negative(fn, "initial_accumulator_value", initial_accumulator_value)
    if initial_mu is not None:
        _check.finite(fn, "initial_mu", initial_mu)
    mu0 = initial_accumulator_value if initial_mu is None else initial_mu
    spec = HyperparamSpec(fn, dict(b1=b1, b2=b2, eps=eps, eps_root=eps_root), rates=("b1", "b2"))

    def init_fn(params: Params) -> ScaleByYogiState:
        mu = _tree.full_like(params, mu0)
        nu = _tree.full_like(params, initial_accumulator_value)
        return ScaleByYogiState(_step0(), mu, nu, spec.init())

    def update_fn(
        updates: Updates, state: ScaleByYogiState, params: Params | None = None
    ) -> tuple[Updates, ScaleByYogiState]:
        del params
        _tree.check_state(fn, state, ScaleByYogiState)
        _tree.check_matches(fn, updates, "state.mu", state.mu)
        _tree.check_matches(fn, updates, "state.nu", state.nu)
        hp = values(state.hparams)
        comp = state.hparams.complement
        step = _tree.safe_increment(state.step)
        c1 = _tree.debias(hp["b1"], step)
        c2 = _tree.debias(hp["b2"], step)
        scalars = (hp["b1"], comp["b1"], comp["b2"], hp["eps"], hp["eps_root"], c1, c2)

        def leaf(
            g: jax.Array, m: jax.Array, v: jax.Array
        ) -> tuple[jax.Array, jax.Array, jax.Array]:
            gc, mc, vc, b1_, omb1, omb2, eps_, eps_root_, c1_, c2_ = _tree.upcast(g, m, v, *scalars)
            new_m = omb1 * gc + b1_ * mc
            g2 = _tree.abs_sq(gc)
            new_v = vc - omb2 * jnp.sign(vc - g2) * g2
            out = (new_m / c1_) / (jnp.sqrt(new_v / c2_ + eps_root_) + eps_)
            return out.astype(g.dtype), new_m.astype(m.dtype), new_v.astype(v.dtype)

        updates, mu, nu = _tree.map_leaves(leaf, 3, updates, state.mu, state.nu)
        return updates, ScaleByYogiState(step, mu, nu, spec.advance(state.hparams, step))

    return GradientTransformation(init_fn, update_fn)


class ScaleByBeliefState(NamedTuple):
    """State of :func:`scale_by_belief`."""

    step: jax.Array  # int32[], updates seen so far
    mu: Updates  # EMA of the updates
    nu: Updates  # EMA of the squared prediction error (g - mu)^2, plus eps_root
    hparams: Hyperparams


def scale_by_belief(
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-16,
    eps_root: ScalarOrSchedule = 1e-16,
    *,
    nesterov: bool = False,
) -> GradientTransformation:
    r"""AdaBelief's scaling: Adam divided by the spread of the gradient around its EMA.

    .. math::
      m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
      s_t = \beta_2 s_{t-1} + (1-\beta_2) (g_t - m_t)^2 + \epsilon_{root}, \\
      \text{update} = \hat m_t / (\sqrt{s_t / (1-\beta_2^t)} + \epsilon).

    A gradient close to its prediction :math:`m_t` (high "belief") gets a large
    step. With ``nesterov=True``, :math:`\hat m_t` looks one step ahead as in
    :func:`scale_by_adam`.

    Args:
      b1: decay of the first moment, in [0, 1).
      b2: decay of the second moment, in [0, 1).
      eps: added to the denominator outside the root, >= 0.
      eps_root: added to :math:`s_t` at every step (the paper's :math:`\epsilon`
        in Algorithm 2), >= 0.
      nesterov: use the look-ahead first moment.

    Returns:
      A GradientTransformation whose state is a ScaleByBeliefState.

    Raises:
      ValueError: if a number is out of range.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.scale_by_belief(b1=0.5, b2=0.5, eps=0.0, eps_root=0.0)
      >>> u, _ = tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))
      >>> round(float(u[0]), 4)  # m = 1, s = 0.5 * (2 - 1)^2: 2 / sqrt(1)
      2.0

    References:
      Zhuang et al., AdaBelief Optimizer: Adapting Stepsizes by the Belief in
      Observed Gradients, NeurIPS 2020, Algorithm 2.
    """
    fn = "scale_by_belief"
    _check.decay_rate(fn, "b1", b1, schedule_ok=True)
    _check.decay_rate(fn, "b2", b2, schedule_ok=True)
    _check.non_negative(fn, "eps", eps, schedule_ok=True)
    _check.non_negative(fn, "eps_root", eps_root, schedule_ok=True)
    spec = HyperparamSpec(fn, dict(b1=b1, b2=b2, eps=eps, eps_root=eps_root), rates=("b1", "b2"))

    def init_fn(params: Params) -> ScaleByBeliefState:
        zeros = _tree.zeros_like
        return ScaleByBeliefState(_step0(), zeros(params), zeros(params), spec.init())

    def update_fn(
        updates: Updates, state: ScaleByBeliefState, params: Params | None = None
    ) -> tuple[Updates, ScaleByBeliefState]:
        del params
        _tree.check_state(fn, state, ScaleByBeliefState)
        _tree.check_matches(fn, updates, "state.mu", state.mu)
        _tree.check_matches(fn, updates, "state.nu", state.nu)
        hp = values(state.hparams)
        comp = state.hparams.complement
        step = _tree.safe_increment(state.step)
        corrections = (
            _tree.debias(hp["b1"], step),
            _tree.debias(hp["b2"], step),
            _tree.debias(hp["b1"], _tree.safe_increment(step)),
        )
        scalars = (hp["b1"], hp["b2"], comp["b1"], comp["b2"], hp["eps"], hp["eps_root"])

        def leaf(
            g: jax.Array, m: jax.Array, s: jax.Array
        ) -> tuple[jax.Array, jax.Array, jax.Array]:
            gc, mc, sc, b1_, b2_, omb1, omb2, eps_, eps_root_, c1, c2, c1n = _tree.upcast(
                g, m, s, *scalars, *corrections
            )
            new_m = omb1 * gc + b1_ * mc
            new_s = omb2 * _tree.abs_sq(gc - new_m) + b2_ * sc + eps_root_
            if nesterov:
                m_hat = b1_ * (new_m / c1n) + omb1 * (gc / c1)
            else:
                m_hat = new_m / c1
            out = m_hat / (jnp.sqrt(new_s / c2) + eps_)
            return out.astype(g.dtype), new_m.astype(m.dtype), new_s.astype(s.dtype)

        updates, mu, nu = _tree.map_leaves(leaf, 3, updates, state.mu, state.nu)
        return updates, ScaleByBeliefState(step, mu, nu, spec.advance(state.hparams, step))

    return GradientTransformation(init_fn, update_fn)
