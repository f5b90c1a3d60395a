r"""Running statistics of the updates: momentum, EMAs, RMSProp, Adam, Adagrad.

Every transform here does its arithmetic in at least float32 (wider if a leaf
is wider), stores each moment in the dtype it was created with (the parameter's
dtype unless a ``*_dtype`` argument says otherwise), and returns updates in the
gradients' dtype. Bias corrections ``1 - beta**t`` are computed in float32:
in bfloat16, ``0.999**t`` rounds to 1 for the first hundreds of steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradchain import _check, _tree
from gradchain._base import GradientTransformation, Params, ScalarOrSchedule, Updates
from gradchain._hyperparams import Hyperparams, HyperparamSpec, values


def _abs_sq(x: jax.Array) -> jax.Array:
    """|x|^2 for real or complex x, in x's dtype."""
    if jnp.iscomplexobj(x):
        return (x.real * x.real + x.imag * x.imag).astype(x.dtype)
    return x * x


def _map_leaves(
    f: Callable[..., tuple[jax.Array, ...]], n_out: int, *trees: Any
) -> tuple[Any, ...]:
    """Applies ``f`` leaf-wise to trees of one structure, returning ``n_out`` trees."""
    treedef = jax.tree.structure(trees[0])
    columns = [jax.tree.leaves(t) for t in trees]
    outs = [f(*leaves) for leaves in zip(*columns, strict=True)]
    return tuple(treedef.unflatten([o[i] for o in outs]) for i in range(n_out))


def _upcast(*xs: jax.Array) -> tuple[Any, list[jax.Array]]:
    """The compute dtype of some leaves, and the leaves cast to it."""
    dt = _tree.compute_dtype(*(x.dtype for x in xs))
    return dt, [x.astype(dt) for x in xs]


def _debias(decay: jax.Array, step: jax.Array) -> jax.Array:
    """``1 - decay**step`` in the hyperparameter's float dtype (float32 or wider)."""
    return 1 - decay ** step.astype(decay.dtype)


def _moment_dtype(fn: str, name: str, dtype: Any) -> Any:
    _check.dtype_or_none(fn, name, dtype)
    return None if dtype is None else jnp.dtype(dtype)


class TraceState(NamedTuple):
    """State of :func:`trace`."""

    step: jax.Array  # int32[], updates seen so far
    trace: Updates  # the momentum buffer, shaped like the parameters
    hparams: Hyperparams


def trace(
    decay: ScalarOrSchedule,
    nesterov: bool = False,
    accumulator_dtype: Any | None = None,
) -> GradientTransformation:
    r"""Heavy-ball momentum: :math:`m_t = g_t + \beta m_{t-1}`, update :math:`m_t`.

    With ``nesterov=True`` the update is :math:`g_t + \beta m_t` (Sutskever et
    al., 2013).

    Args:
      decay: the momentum coefficient :math:`\beta` in [0, 1), or a schedule.
      nesterov: whether to use Nesterov momentum.
      accumulator_dtype: dtype of the momentum buffer; the parameters' by default.

    Returns:
      A GradientTransformation whose state is a TraceState.

    Raises:
      ValueError: if ``decay`` is a number outside [0, 1).

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.trace(decay=0.5)
      >>> state = tx.init(jnp.zeros(1))
      >>> u, state = tx.update(jnp.ones(1), state)
      >>> u, state = tx.update(jnp.ones(1), state)
      >>> float(u[0])
      1.5
    """
    fn = "trace"
    _check.decay_rate(fn, "decay", decay, schedule_ok=True)
    acc_dtype = _moment_dtype(fn, "accumulator_dtype", accumulator_dtype)
    spec = HyperparamSpec(fn, dict(decay=decay))

    def init_fn(params: Params) -> TraceState:
        return TraceState(
            jnp.zeros([], jnp.int32), _tree.zeros_like(params, acc_dtype), spec.init()
        )

    def update_fn(
        updates: Updates, state: TraceState, params: Params | None = None
    ) -> tuple[Updates, TraceState]:
        del params
        _tree.check_state(fn, state, TraceState)
        _tree.check_matches(fn, updates, "state.trace", state.trace)
        beta = values(state.hparams)["decay"]

        def leaf(g: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
            _, (gc, tc, b) = _upcast(g, t, beta)
            new_t = gc + b * tc
            out = gc + b * new_t if nesterov else new_t
            return out.astype(g.dtype), new_t.astype(t.dtype)

        updates, new_trace = _map_leaves(leaf, 2, updates, state.trace)
        step = _tree.safe_increment(state.step)
        return updates, TraceState(step, new_trace, spec.advance(state.hparams, step))

    return GradientTransformation(init_fn, update_fn)


class EmaState(NamedTuple):
    """State of :func:`ema`."""

    step: jax.Array  # int32[], updates seen so far
    ema: Updates  # the (not debiased) moving average
    hparams: Hyperparams


def ema(
    decay: ScalarOrSchedule, debias: bool = True, accumulator_dtype: Any | None = None
) -> GradientTransformation:
    r"""Exponential moving average: :math:`e_t = (1-\beta) g_t + \beta e_{t-1}`.

    The update is :math:`e_t`, divided by :math:`1-\beta^t` when ``debias``.

    Args:
      decay: :math:`\beta` in [0, 1), or a schedule.
      debias: whether to correct the zero initialisation's bias.
      accumulator_dtype: dtype of the average; the parameters' by default.

    Returns:
      A GradientTransformation whose state is an EmaState.

    Raises:
      ValueError: if ``decay`` is a number outside [0, 1).

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.ema(decay=0.9)
      >>> u, _ = tx.update(jnp.full(1, 4.0), tx.init(jnp.zeros(1)))
      >>> round(float(u[0]), 4)
      4.0
    """
    fn = "ema"
    _check.decay_rate(fn, "decay", decay, schedule_ok=True)
    acc_dtype = _moment_dtype(fn, "accumulator_dtype", accumulator_dtype)
    spec = HyperparamSpec(fn, dict(decay=decay), rates=("decay",))

    def init_fn(params: Params) -> EmaState:
        return EmaState(jnp.zeros([], jnp.int32), _tree.zeros_like(params, acc_dtype), spec.init())

    def update_fn(
        updates: Updates, state: EmaState, params: Params | None = None
    ) -> tuple[Updates, EmaState]:
        del params
        _tree.check_state(fn, state, EmaState)
        _tree.check_matches(fn, updates, "state.ema", state.ema)
        beta = values(state.hparams)["decay"]
        one_minus_beta = state.hparams.complement["decay"]
        step = _tree.safe_increment(state.step)
        correction = _debias(beta, step)

        def leaf(g: jax.Array, e: jax.Array) -> tuple[jax.Array, jax.Array]:
            _, (gc, ec, b, omb, c) = _upcast(g, e, beta, one_minus_beta, correction)
            new_e = omb * gc + b * ec
            out = new_e / c if debias else new_e
            return out.astype(g.dtype), new_e.astype(e.dtype)

        updates, new_ema = _map_leaves(leaf, 2, updates, state.ema)
        return updates, EmaState(step, new_ema, spec.advance(state.hparams, step))

    return GradientTransformation(init_fn, update_fn)


class ScaleByAdamState(NamedTuple):
    """State of :func:`scale_by_adam`."""

    step: jax.Array  # int32[], updates seen so far
    mu: Updates  # EMA of the updates, in mu_dtype
    nu: Updates  # EMA of their squares, in nu_dtype
    hparams: Hyperparams


def scale_by_adam(
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-8,
    eps_root: ScalarOrSchedule = 0.0,
    mu_dtype: Any | None = None,
    *,
    nesterov: bool = False,
    nu_dtype: Any | None = None,
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

    Returns:
      A GradientTransformation whose state is a ScaleByAdamState.

    Raises:
      ValueError: for a number out of range, or a dtype that is not a float.

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
    mu_dt = _moment_dtype(fn, "mu_dtype", mu_dtype)
    nu_dt = _moment_dtype(fn, "nu_dtype", nu_dtype)
    spec = HyperparamSpec(fn, dict(b1=b1, b2=b2, eps=eps, eps_root=eps_root), rates=("b1", "b2"))

    def init_fn(params: Params) -> ScaleByAdamState:
        return ScaleByAdamState(
            step=jnp.zeros([], jnp.int32),
            mu=_tree.zeros_like(params, mu_dt),
            nu=_tree.zeros_like(params, nu_dt),
            hparams=spec.init(),
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
        c1 = _debias(hp["b1"], step)
        c2 = _debias(hp["b2"], step)
        c1_next = _debias(hp["b1"], _tree.safe_increment(step))
        comp = state.hparams.complement
        scalars = (hp["b1"], hp["b2"], comp["b1"], comp["b2"], hp["eps"], hp["eps_root"])
        corrections = (c1, c2, c1_next)

        def leaf(
            g: jax.Array, m: jax.Array, v: jax.Array
        ) -> tuple[jax.Array, jax.Array, jax.Array]:
            _, (gc, mc, vc, b1_, b2_, omb1, omb2, eps_, eps_root_, c1_, c2_, c1n) = _upcast(
                g, m, v, *scalars, *corrections
            )
            new_m = omb1 * gc + b1_ * mc
            new_v = omb2 * _abs_sq(gc) + b2_ * vc
            if nesterov:
                m_hat = b1_ * (new_m / c1n) + omb1 * (gc / c1_)
            else:
                m_hat = new_m / c1_
            out = m_hat / (jnp.sqrt(new_v / c2_ + eps_root_) + eps_)
            return out.astype(g.dtype), new_m.astype(m.dtype), new_v.astype(v.dtype)

        updates, mu, nu = _map_leaves(leaf, 3, updates, state.mu, state.nu)
        return updates, ScaleByAdamState(step, mu, nu, spec.advance(state.hparams, step))

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
        correction = _debias(hp["decay"], step)

        scalars = (hp["decay"], state.hparams.complement["decay"], hp["eps"], correction)

        def leaf(g: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
            _, (gc, vc, rho, omr, eps_, c) = _upcast(g, v, *scalars)
            new_v = omr * _abs_sq(gc) + rho * vc
            v_hat = new_v / c if bias_correction else new_v
            out = _rms_scaling(v_hat, eps_, eps_in_sqrt) * gc
            return out.astype(g.dtype), new_v.astype(v.dtype)

        updates, nu = _map_leaves(leaf, 2, updates, state.nu)
        return updates, ScaleByRmsState(step, nu, spec.advance(state.hparams, step))

    return GradientTransformation(init_fn, update_fn)


class ScaleByStddevState(NamedTuple):
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
      A GradientTransformation whose state is a ScaleByStddevState.

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

    def init_fn(params: Params) -> ScaleByStddevState:
        return ScaleByStddevState(
            jnp.zeros([], jnp.int32),
            _tree.zeros_like(params),
            _tree.full_like(params, initial_scale),
            spec.init(),
        )

    def update_fn(
        updates: Updates, state: ScaleByStddevState, params: Params | None = None
    ) -> tuple[Updates, ScaleByStddevState]:
        del params
        _tree.check_state(fn, state, ScaleByStddevState)
        _tree.check_matches(fn, updates, "state.mu", state.mu)
        _tree.check_matches(fn, updates, "state.nu", state.nu)
        hp = values(state.hparams)
        step = _tree.safe_increment(state.step)
        correction = _debias(hp["decay"], step)

        scalars = (hp["decay"], state.hparams.complement["decay"], hp["eps"], correction)

        def leaf(
            g: jax.Array, m: jax.Array, v: jax.Array
        ) -> tuple[jax.Array, jax.Array, jax.Array]:
            _, (gc, mc, vc, rho, omr, eps_, c) = _upcast(g, m, v, *scalars)
            new_m = omr * gc + rho * mc
            new_v = omr * _abs_sq(gc) + rho * vc
            m_hat, v_hat = (new_m / c, new_v / c) if bias_correction else (new_m, new_v)
            out = _rms_scaling(v_hat - _abs_sq(m_hat), eps_, eps_in_sqrt) * gc
            return out.astype(g.dtype), new_m.astype(m.dtype), new_v.astype(v.dtype)

        updates, mu, nu = _map_leaves(leaf, 3, updates, state.mu, state.nu)
        return updates, ScaleByStddevState(step, mu, nu, spec.advance(state.hparams, step))

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
            _, (gc, sc, eps_) = _upcast(g, s, eps_value)
            new_s = _abs_sq(gc) + sc
            scaling = jnp.where(new_s > 0, jax.lax.rsqrt(new_s + eps_), jnp.zeros_like(new_s))
            return (scaling * gc).astype(g.dtype), new_s.astype(s.dtype)

        updates, sums = _map_leaves(leaf, 2, updates, state.sum_of_squares)
        step = _tree.safe_increment(state.step)
        return updates, ScaleByRssState(step, sums, spec.advance(state.hparams, step))

    return GradientTransformation(init_fn, update_fn)
