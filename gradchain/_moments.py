r"""Adaptive scaling by second moments: Adam, RMSProp, centred RMSProp, Adagrad.

Every transform here does its arithmetic in at least float32 (wider if a leaf
is wider), stores each moment in the dtype it was created with (the parameter's
dtype unless a ``*_dtype`` argument says otherwise), and returns updates in the
gradients' dtype. Bias corrections ``1 - beta**t`` are computed in float32:
in bfloat16, ``0.999**t`` rounds to 1 for the first hundreds of steps.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradchain import _check, _tree
from gradchain._base import GradientTransformation, Params, ScalarOrSchedule, Updates
from gradchain._hyperparams import Hyperparams, HyperparamSpec, values
from gradchain._rounding import MomentRounding


class ScaleByAdamState(NamedTuple):
    """State of :func:`scale_by_adam`."""

    step: jax.Array  # int32[], updates seen so far
    mu: Updates  # EMA of the updates, in mu_dtype
    nu: Updates  # EMA of their squares, in nu_dtype
    hparams: Hyperparams
    rng_key: jax.Array | None = None  # uint32 key data with moment_rounding="stochastic"


def scale_by_adam(
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-8,
    eps_root: ScalarOrSchedule = 0.0,
    mu_dtype: Any | None = None,
    *,
    nesterov: bool = False,
    nu_dtype: Any | None = None,
    moment_rounding: str = "nearest",
    rounding_key: Any = None,
) -> GradientTransformation:
    r"""Adam's scaling (Kingma and Ba, 2015), optionally with Nesterov momentum (NAdam).

    .. math::
      m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
      v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \\
      \hat m_t = m_t / (1-\beta_1^t), \quad \hat v_t = v_t / (1-\beta_2^t), \quad
      u_t = \hat m_t / (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon).

    With ``nesterov=True`` (Dozat, 2016), :math:`\hat m_t = \beta_1 m_t /
    (1-\beta_1^{t+1}) + (1-\beta_1) g_t / (1-\beta_1^t)`.

    Args:
      b1: decay of the first moment, in [0, 1).
      b2: decay of the second moment, in [0, 1).
      eps: added to the denominator outside the root, >= 0.
      eps_root: added inside the root, >= 0 (makes the update differentiable
        when meta-learning through it).
      mu_dtype: dtype of the first moment; the parameters' by default.
      nesterov: use NAdam's look-ahead first moment.
      nu_dtype: dtype of the second moment; the parameters' by default.
      moment_rounding: how moments kept in bfloat16 or float16 are stored:
        ``"nearest"`` (a cast, the default) or ``"stochastic"`` (rounded up or
        down at random, unbiased, so that the small steps of an average with
        ``b2`` near 1 are not lost: in bfloat16, ``0.999 v + 0.001 g**2`` rounds
        back to ``v`` unless ``g**2`` exceeds 3 to 5 times ``v``, so ``v`` never
        decreases). Stochastic
        rounding keeps raw ``uint32`` key data in ``state.rng_key`` (``None``
        otherwise); float32 moments are stored exactly either way.
      rounding_key: an int seed or a jax.random key for stochastic rounding
        (None: seed 0).

    Returns:
      A GradientTransformation whose state is a ScaleByAdamState.

    Raises:
      ValueError: for a number out of range, a dtype that is not a float, or
        an unknown ``moment_rounding``.
      TypeError: if ``rounding_key`` is neither an int nor a single key.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.scale_by_adam()
      >>> u, _ = tx.update(jnp.array([0.5, -2.0]), tx.init(jnp.zeros(2)))
      >>> [round(float(x), 4) for x in u]  # the first Adam step is sign(g)
      [1.0, -1.0]

    References:
      Kingma and Ba, Adam: A Method for Stochastic Optimization, ICLR 2015.
      Dozat, Incorporating Nesterov Momentum into Adam, ICLR workshop 2016.
    """
    fn = "scale_by_adam"
    _check.decay_rate(fn, "b1", b1, schedule_ok=True)
    _check.decay_rate(fn, "b2", b2, schedule_ok=True)
    _check.non_negative(fn, "eps", eps, schedule_ok=True)
    _check.non_negative(fn, "eps_root", eps_root, schedule_ok=True)
    mu_dt = _check.dtype_or_none(fn, "mu_dtype", mu_dtype)
    nu_dt = _check.dtype_or_none(fn, "nu_dtype", nu_dtype)
    rounding = MomentRounding(fn, moment_rounding, rounding_key)
    spec = HyperparamSpec(fn, dict(b1=b1, b2=b2, eps=eps, eps_root=eps_root), rates=("b1", "b2"))

    def init_fn(params: Params) -> ScaleByAdamState:
        return ScaleByAdamState(
            step=jnp.zeros([], jnp.int32),
            mu=_tree.accumulator_like(params, mu_dt),
            nu=_tree.zeros_like(params, nu_dt),
            hparams=spec.init(),
            rng_key=rounding.init(),
        )

    def update_fn(
        updates: Updates, state: ScaleByAdamState, params: Params | None = None
    ) -> tuple[Updates, ScaleByAdamState]:
        del params
        _tree.check_state(fn, state, ScaleByAdamState)
        _tree.check_matches(fn, updates, "state.mu", state.mu)
        _tree.check_matches(fn, updates, "state.nu", state.nu)
        hp = values(state.hparams)
        step = _tree.safe_increment(state.step)
        c1 = _tree.debias(hp["b1"], step)
        c2 = _tree.debias(hp["b2"], step)
        c1_next = _tree.debias(hp["b1"], _tree.safe_increment(step))
        comp = state.hparams.complement
        scalars = (hp["b1"], hp["b2"], comp["b1"], comp["b2"], hp["eps"], hp["eps_root"])
        corrections = (c1, c2, c1_next)

        def leaf(
            g: jax.Array, m: jax.Array, v: jax.Array
        ) -> tuple[jax.Array, jax.Array, jax.Array]:
            gc, mc, vc, b1_, b2_, omb1, omb2, eps_, eps_root_, c1_, c2_, c1n = _tree.upcast(
                g, m, v, *scalars, *corrections
            )
            new_m = omb1 * gc + b1_ * mc
            new_v = omb2 * _tree.abs_sq(gc) + b2_ * vc
            if nesterov:
                m_hat = b1_ * (new_m / c1n) + omb1 * (gc / c1_)
            else:
                m_hat = new_m / c1_
            out = m_hat / (jnp.sqrt(new_v / c2_ + eps_root_) + eps_)
            return out.astype(g.dtype), rounding.hold(new_m, m.dtype), rounding.hold(new_v, v.dtype)

        updates, mu, nu = _tree.map_leaves(leaf, 3, updates, state.mu, state.nu)
        (mu, nu), key = rounding.store(state.rng_key, (mu, nu), (state.mu, state.nu))
        hparams = spec.advance(state.hparams, step)
        return updates, ScaleByAdamState(step, mu, nu, hparams, key)

    return GradientTransformation(init_fn, update_fn)


class ScaleByRmsState(NamedTuple):
    """State of :func:`scale_by_rms`."""

    step: jax.Array  # int32[], updates seen so far
    nu: Updates  # EMA of squared updates
    hparams: Hyperparams


def _rms_scaling(nu_hat: jax.Array, eps: jax.Array, eps_in_sqrt: bool) -> jax.Array:
    if eps_in_sqrt:
        return jax.lax.rsqrt(nu_hat + eps)
    return 1 / (jnp.sqrt(nu_hat) + eps)


def scale_by_rms(
    decay: ScalarOrSchedule = 0.9,
    eps: ScalarOrSchedule = 1e-8,
    initial_scale: float = 0.0,
    eps_in_sqrt: bool = True,
    bias_correction: bool = False,
) -> GradientTransformation:
    r"""Divides updates by the root of an EMA of their squares (RMSProp).

    :math:`v_t = \rho v_{t-1} + (1-\rho) g_t^2` and :math:`u_t = g_t /
    \sqrt{v_t + \epsilon}` (or :math:`g_t / (\sqrt{v_t} + \epsilon)` when
    ``eps_in_sqrt=False``), with :math:`v_t` debiased by :math:`1-\rho^t` when
    ``bias_correction``.

    Args:
      decay: :math:`\rho` in [0, 1).
      eps: >= 0, added inside or outside the root.
      initial_scale: the initial value of :math:`v`, >= 0 (TensorFlow uses 1).
      eps_in_sqrt: whether ``eps`` goes inside the root.
      bias_correction: whether to debias :math:`v_t`.

    Returns:
      A GradientTransformation whose state is a ScaleByRmsState.

    Raises:
      ValueError: if a number is out of range.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.scale_by_rms(decay=0.75, eps=0.0)
      >>> u, _ = tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))
      >>> round(float(u[0]), 4)  # 2 / sqrt(0.25 * 4)
      2.0

    References:
      Tieleman and Hinton, Lecture 6.5: RMSProp, COURSERA, 2012.
    """
    fn = "scale_by_rms"
    _check.decay_rate(fn, "decay", decay, schedule_ok=True)
    _check.non_negative(fn, "eps", eps, schedule_ok=True)
    _check.non_negative(fn, "initial_scale", initial_scale)
    spec = HyperparamSpec(fn, dict(decay=decay, eps=eps), rates=("decay",))

    def init_fn(params: Params) -> ScaleByRmsState:
        nu = _tree.full_like(params, initial_scale)
        return ScaleByRmsState(jnp.zeros([], jnp.int32), nu, spec.init())

    def update_fn(
        updates: Updates, state: ScaleByRmsState, params: Params | None = None
    ) -> tuple[Updates, ScaleByRmsState]:
        del params
        _tree.check_state(fn, state, ScaleByRmsState)
        _tree.check_matches(fn, updates, "state.nu", state.nu)
        hp = values(state.hparams)
        step = _tree.safe_increment(state.step)
        correction = _tree.debias(hp["decay"], step)

        scalars = (hp["decay"], state.hparams.complement["decay"], hp["eps"], correction)

        def leaf(g: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
            gc, vc, rho, omr, eps_, c = _tree.upcast(g, v, *scalars)
            new_v = omr * _tree.abs_sq(gc) + rho * vc
            v_hat = new_v / c if bias_correction else new_v
            out = _rms_scaling(v_hat, eps_, eps_in_sqrt) * gc
            return out.astype(g.dtype), new_v.astype(v.dtype)

        updates, nu = _tree.map_leaves(leaf, 2, updates, state.nu)
        return updates, ScaleByRmsState(step, nu, spec.advance(state.hparams, step))

    return GradientTransformation(init_fn, update_fn)


class ScaleByRStdDevState(NamedTuple):
    """State of :func:`scale_by_stddev`."""

    step: jax.Array  # int32[], updates seen so far
    mu: Updates  # EMA of the updates
    nu: Updates  # EMA of their squares
    hparams: Hyperparams


def scale_by_stddev(
    decay: ScalarOrSchedule = 0.9,
    eps: ScalarOrSchedule = 1e-8,
    initial_scale: float = 0.0,
    eps_in_sqrt: bool = True,
    bias_correction: bool = False,
) -> GradientTransformation:
    r"""Divides updates by a running estimate of their standard deviation (centred RMSProp).

    :math:`m_t = \rho m_{t-1} + (1-\rho) g_t`, :math:`v_t = \rho v_{t-1} +
    (1-\rho) g_t^2`, :math:`u_t = g_t / \sqrt{v_t - m_t^2 + \epsilon}` (eps
    outside the root when ``eps_in_sqrt=False``; both moments debiased when
    ``bias_correction``).

    Args:
      decay: :math:`\rho` in [0, 1).
      eps: >= 0.
      initial_scale: the initial value of :math:`v`, >= 0.
      eps_in_sqrt: whether ``eps`` goes inside the root.
      bias_correction: whether to debias both moments.

    Returns:
      A GradientTransformation whose state is a ScaleByRStdDevState.

    Raises:
      ValueError: if a number is out of range.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.scale_by_stddev(decay=0.5, eps=0.0)
      >>> u, _ = tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))
      >>> round(float(u[0]), 4)  # 2 / sqrt(0.5 * 4 - 1 ** 2)
      2.0

    References:
      Graves, Generating Sequences With Recurrent Neural Networks, 2013, eq. 38-45.
    """
    fn = "scale_by_stddev"
    _check.decay_rate(fn, "decay", decay, schedule_ok=True)
    _check.non_negative(fn, "eps", eps, schedule_ok=True)
    _check.non_negative(fn, "initial_scale", initial_scale)
    spec = HyperparamSpec(fn, dict(decay=decay, eps=eps), rates=("decay",))

    def init_fn(params: Params) -> ScaleByRStdDevState:
        return ScaleByRStdDevState(
            jnp.zeros([], jnp.int32),
            _tree.zeros_like(params),
            _tree.full_like(params, initial_scale),
            spec.init(),
        )

    def update_fn(
        updates: Updates, state: ScaleByRStdDevState, params: Params | None = None
    ) -> tuple[Updates, ScaleByRStdDevState]:
        del params
        _tree.check_state(fn, state, ScaleByRStdDevState)
        _tree.check_matches(fn, updates, "state.mu", state.mu)
        _tree.check_matches(fn, updates, "state.nu", state.nu)
        hp = values(state.hparams)
        step = _tree.safe_increment(state.step)
        correction = _tree.debias(hp["decay"], step)

        scalars = (hp["decay"], state.hparams.complement["decay"], hp["eps"], correction)

        def leaf(
            g: jax.Array, m: jax.Array, v: jax.Array
        ) -> tuple[jax.Array, jax.Array, jax.Array]:
            gc, mc, vc, rho, omr, eps_, c = _tree.upcast(g, m, v, *scalars)
            new_m = omr * gc + rho * mc
            new_v = omr * _tree.abs_sq(gc) + rho * vc
            m_hat, v_hat = (new_m / c, new_v / c) if bias_correction else (new_m, new_v)
            # One sample has no variance: debiased, v_hat - m_hat^2 is exactly 0 at the first
            # step, and float32 rounding can leave it below 0, whose root is NaN (as in Optax).
            variance = jnp.maximum(v_hat - _tree.abs_sq(m_hat), 0)
            out = _rms_scaling(variance, eps_, eps_in_sqrt) * gc
            return out.astype(g.dtype), new_m.astype(m.dtype), new_v.astype(v.dtype)

        updates, mu, nu = _tree.map_leaves(leaf, 3, updates, state.mu, state.nu)
        return updates, ScaleByRStdDevState(step, mu, nu, spec.advance(state.hparams, step))

    return GradientTransformation(init_fn, update_fn)


class ScaleByRssState(NamedTuple):
    """State of :func:`scale_by_rss`."""

    step: jax.Array  # int32[], updates seen so far
    sum_of_squares: Updates  # running sum of squared updates
    hparams: Hyperparams


def scale_by_rss(
    initial_accumulator_value: float = 0.1, eps: ScalarOrSchedule = 1e-7
) -> GradientTransformation:
    r"""Divides updates by the root of the sum of their squares so far (Adagrad).

    :math:`s_t = s_{t-1} + g_t^2`, :math:`u_t = g_t / \sqrt{s_t + \epsilon}`
    (zero where :math:`s_t = 0`).

    Args:
      initial_accumulator_value: the initial :math:`s`, >= 0.
      eps: >= 0, added inside the root.

    Returns:
      A GradientTransformation whose state is a ScaleByRssState.

    Raises:
      ValueError: if a number is out of range.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.scale_by_rss(initial_accumulator_value=0.0, eps=0.0)
      >>> u, _ = tx.update(jnp.array([3.0, 0.0]), tx.init(jnp.zeros(2)))
      >>> [round(float(x), 4) for x in u]
      [1.0, 0.0]

    References:
      Duchi et al., Adaptive Subgradient Methods for Online Learning and
      Stochastic Optimization, JMLR 2011.
    """
    fn = "scale_by_rss"
    _check.non_negative(fn, "initial_accumulator_value", initial_accumulator_value)
    _check.non_negative(fn, "eps", eps, schedule_ok=True)
    spec = HyperparamSpec(fn, dict(eps=eps))

    def init_fn(params: Params) -> ScaleByRssState:
        acc = _tree.full_like(params, initial_accumulator_value)
        return ScaleByRssState(jnp.zeros([], jnp.int32), acc, spec.init())

    def update_fn(
        updates: Updates, state: ScaleByRssState, params: Params | None = None
    ) -> tuple[Updates, ScaleByRssState]:
        del params
        _tree.check_state(fn, state, ScaleByRssState)
        _tree.check_matches(fn, updates, "state.sum_of_squares", state.sum_of_squares)
        eps_value = values(state.hparams)["eps"]

        def leaf(g: jax.Array, s: jax.Array) -> tuple[jax.Array, jax.Array]:
            gc, sc, eps_ = _tree.upcast(g, s, eps_value)
            new_s = _tree.abs_sq(gc) + sc
            scaling = jnp.where(new_s > 0, jax.lax.rsqrt(new_s + eps_), jnp.zeros_like(new_s))
            return (scaling * gc).astype(g.dtype), new_s.astype(s.dtype)

        updates, sums = _tree.map_leaves(leaf, 2, updates, state.sum_of_squares)
        step = _tree.safe_increment(state.step)
        return updates, ScaleByRssState(step, sums, spec.advance(state.hparams, step))

    return GradientTransformation(init_fn, update_fn)
