r"""Methods that follow the sign of the gradient: Lion, signSGD and Rprop.

Each returns steps whose size does not depend on the gradient's magnitude:
Lion and signSGD a sign per coordinate (times the learning rate, applied
later), Rprop a per-coordinate step size that grows while the sign holds and
shrinks when it flips. Arithmetic is in at least float32, state keeps its
dtype, updates keep the gradients'.
"""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp

from gradchain import _check, _tree
from gradchain._base import (
    EmptyState,
    GradientTransformation,
    OptState,
    Params,
    ScalarOrSchedule,
    Updates,
    _init_empty,
)
from gradchain._hyperparams import Hyperparams, HyperparamSpec, values

LionMode = Literal["hard", "smooth", "refined"]
_LION_MODES = ("hard", "smooth", "refined")


class ScaleByLionState(NamedTuple):
    """State of :func:`scale_by_lion`."""

    step: jax.Array  # int32[], updates seen so far
    mu: Updates  # the momentum (EMA of the updates with decay b2), in mu_dtype
    hparams: Hyperparams


def scale_by_lion(
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.99,
    mu_dtype: Any | None = None,
    *,
    mode: LionMode = "hard",
    smooth_beta: ScalarOrSchedule = 1.0,
) -> GradientTransformation:
    r"""Lion's scaling: the sign of an interpolation of momentum and gradient.

    .. math::
      c_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad \text{update} = \mathrm{sign}(c_t),
      \quad m_t = \beta_2 m_{t-1} + (1-\beta_2) g_t.

    The update interpolates with :math:`\beta_1`, the momentum keeps a longer
    memory with :math:`\beta_2`. ``mode="smooth"`` returns
    :math:`\tanh(\beta_s c_t)` (``smooth_beta``) and ``mode="refined"``
    returns :math:`c_t` where :math:`|c_t| < 1`, else its sign (as in Optax).

    Args:
      b1: interpolation rate of the update, in [0, 1).
      b2: decay of the momentum, in [0, 1).
      mu_dtype: dtype of the momentum; the parameters' by default.
      mode: ``"hard"`` (the paper's sign), ``"smooth"`` or ``"refined"``.
      smooth_beta: the slope of ``tanh`` in ``"smooth"`` mode, > 0; a
        hyperparameter of the state only in that mode.

    Returns:
      A GradientTransformation whose state is a ScaleByLionState.

    Raises:
      ValueError: for a number out of range, an unknown ``mode``, or a dtype
        that is not a float.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.scale_by_lion()
      >>> u, _ = tx.update(jnp.array([0.001, -30.0, 0.0]), tx.init(jnp.zeros(3)))
      >>> [float(x) for x in u]
      [1.0, -1.0, 0.0]

    References:
      Chen et al., Symbolic Discovery of Optimization Algorithms, NeurIPS 2023, Algorithm 2.
    """
    fn = "scale_by_lion"
    _check.decay_rate(fn, "b1", b1, schedule_ok=True)
    _check.decay_rate(fn, "b2", b2, schedule_ok=True)
    _check.positive(fn, "smooth_beta", smooth_beta, schedule_ok=True)
    if mode not in _LION_MODES:
        raise ValueError(f"{fn}: `mode` must be one of {list(_LION_MODES)}; got {mode!r}.")
    mu_dt = _check.dtype_or_none(fn, "mu_dtype", mu_dtype)
    hyperparams: dict[str, ScalarOrSchedule] = dict(b1=b1, b2=b2)
    if mode == "smooth":
        hyperparams["smooth_beta"] = smooth_beta
    spec = HyperparamSpec(fn, hyperparams, rates=("b1", "b2"))

    def init_fn(params: Params) -> ScaleByLionState:
        return ScaleByLionState(
            jnp.zeros([], jnp.int32), _tree.zeros_like(params, mu_dt), spec.init()
        )

    def update_fn(
        updates: Updates, state: ScaleByLionState, params: Params | None = None
    ) -> tuple[Updates, ScaleByLionState]:
        del params
        _tree.check_state(fn, state, ScaleByLionState)
        _tree.check_matches(fn, updates, "state.mu", state.mu)
        hp = values(state.hparams)
        comp = state.hparams.complement
        beta = hp["smooth_beta"] if mode == "smooth" else jnp.ones([], jnp.float32)
        scalars = (hp["b1"], hp["b2"], comp["b1"], comp["b2"], beta)

        def leaf(g: jax.Array, m: jax.Array) -> tuple[jax.Array, jax.Array]:
            gc, mc, b1_, b2_, omb1, omb2, beta_ = _tree.upcast(g, m, *scalars)
            c = omb1 * gc + b1_ * mc
            if mode == "hard":
                out = jnp.sign(c)
            elif mode == "smooth":
                out = jnp.tanh(beta_ * c)
            else:
                out = jnp.where(jnp.abs(c) < 1, c, jnp.sign(c))
            new_m = omb2 * gc + b2_ * mc
            return out.astype(g.dtype), new_m.astype(m.dtype)

        updates, mu = _tree.map_leaves(leaf, 2, updates, state.mu)
        step = _tree.safe_increment(state.step)
        return updates, ScaleByLionState(step, mu, spec.advance(state.hparams, step))

    return GradientTransformation(init_fn, update_fn)


def scale_by_sign() -> GradientTransformation:
    r"""Replaces each update by its sign, :math:`\mathrm{sign}(g) \in \{-1, 0, 1\}`.

    Returns:
      A GradientTransformation whose state is an EmptyState.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.scale_by_sign()
      >>> u, _ = tx.update(jnp.array([0.25, -3.0, 0.0]), tx.init(jnp.zeros(3)))
      >>> [float(x) for x in u]
      [1.0, -1.0, 0.0]

    References:
      Bernstein et al., signSGD: Compressed Optimisation for Non-Convex
      Problems, ICML 2018, Algorithm 1.
    """

    def update_fn(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]:
        del params
        _tree.check_state("scale_by_sign", state, EmptyState)
        _tree.check_no_float0("scale_by_sign", "updates", updates)
        return jax.tree.map(jnp.sign, updates), state

    return GradientTransformation(_init_empty, update_fn)


class ScaleByRpropState(NamedTuple):
    """State of :func:`scale_by_rprop`."""

    step: jax.Array  # int32[], updates seen so far
    step_sizes: Updates  # the current step size of each coordinate
    prev_updates: Updates  # the last update, 0 where the gradient's sign flipped
    hparams: Hyperparams


def scale_by_rprop(
    learning_rate: float,
    eta_minus: ScalarOrSchedule = 0.5,
    eta_plus: ScalarOrSchedule = 1.2,
    min_step_size: ScalarOrSchedule = 1e-6,
    max_step_size: ScalarOrSchedule = 50.0,
) -> GradientTransformation:
    r"""Rprop's scaling (iRprop-): per-coordinate steps adapted to the gradient's sign.

    With :math:`s_t = g_t\, g_{t-1}` (the previous gradient counted as 0
    after a flip):

    .. math::
      \Delta_t = \begin{cases}
        \min(\eta^+ \Delta_{t-1}, \Delta_{max}) & s_t > 0 \\
        \max(\eta^- \Delta_{t-1}, \Delta_{min}) & s_t < 0 \\
        \Delta_{t-1} & s_t = 0 \end{cases}, \quad
      \text{update} = \begin{cases} 0 & s_t < 0 \\
        \Delta_t\, \mathrm{sign}(g_t) & \text{else} \end{cases}.

    After a sign flip the step is skipped and the gradient forgotten (Igel and
    Hüsken's iRprop-, as Optax and PyTorch); Riedmiller and Braun's original
    also undoes the previous step, which needs the loss, not only gradients.
    The update points uphill: :func:`rprop` negates it.

    Args:
      learning_rate: the initial step size :math:`\Delta_0` of every
        coordinate, > 0. It is the initial value of ``state.step_sizes``, which
        the updates then adapt; so it is not a hyperparameter of the state.
      eta_minus: :math:`\eta^-`, the factor after a sign flip, in [0, 1).
      eta_plus: :math:`\eta^+`, the factor while the sign holds, >= 1.
      min_step_size: :math:`\Delta_{min}` >= 0.
      max_step_size: :math:`\Delta_{max}` > 0, at least ``min_step_size``.

    Returns:
      A GradientTransformation whose state is a ScaleByRpropState.

    Raises:
      ValueError: if a number is out of range, or ``min_step_size`` exceeds
        ``max_step_size``.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.scale_by_rprop(learning_rate=0.1)
      >>> state = tx.init(jnp.zeros(2))
      >>> steps = []
      >>> for g in ([1.0, 1.0], [2.0, -1.0], [3.0, -1.0]):
      ...     u, state = tx.update(jnp.array(g), state)
      ...     steps.append([round(float(x), 3) for x in u])
      >>> steps  # the first coordinate speeds up; the second flips, pauses, restarts at 0.05
      [[0.1, 0.1], [0.12, 0.0], [0.144, -0.05]]

    References:
      Riedmiller and Braun, A Direct Adaptive Method for Faster Backpropagation
      Learning: The RPROP Algorithm, ICNN 1993.
      Igel and Hüsken, Improving the Rprop Learning Algorithm, NC 2000.
    """
    fn = "scale_by_rprop"
    _check.positive(fn, "learning_rate", learning_rate)
    _check.decay_rate(fn, "eta_minus", eta_minus, schedule_ok=True)
    _check.in_range(fn, "eta_plus", eta_plus, 1.0, math.inf, hi_open=True, schedule_ok=True)
    _check.non_negative(fn, "min_step_size", min_step_size, schedule_ok=True)
    _check.positive(fn, "max_step_size", max_step_size, schedule_ok=True)
    lo, hi = _check.concrete_value(min_step_size), _check.concrete_value(max_step_size)
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(
            f"{fn}: `min_step_size` must be at most `max_step_size`; got {min_step_size!r} "
            f"and {max_step_size!r}. Swap them, or widen the range."
        )
    hyperparams = dict(
        eta_minus=eta_minus,
        eta_plus=eta_plus,
        min_step_size=min_step_size,
        max_step_size=max_step_size,
    )
    spec = HyperparamSpec(fn, hyperparams)

    def init_fn(params: Params) -> ScaleByRpropState:
        return ScaleByRpropState(
            jnp.zeros([], jnp.int32),
            _tree.full_like(params, learning_rate),
            _tree.zeros_like(params),
            spec.init(),
        )

    def update_fn(
        updates: Updates, state: ScaleByRpropState, params: Params | None = None
    ) -> tuple[Updates, ScaleByRpropState]:
        del params
        _tree.check_state(fn, state, ScaleByRpropState)
        _tree.check_matches(fn, updates, "state.step_sizes", state.step_sizes)
        _tree.check_matches(fn, updates, "state.prev_updates", state.prev_updates)
        hp = values(state.hparams)
        scalars = (hp["eta_minus"], hp["eta_plus"], hp["min_step_size"], hp["max_step_size"])

        def leaf(
            g: jax.Array, size: jax.Array, prev: jax.Array
        ) -> tuple[jax.Array, jax.Array, jax.Array]:
            gc, sc, pc, down, up, lo_, hi_ = _tree.upcast(g, size, prev, *scalars)
            agree = gc * pc
            scaled = jnp.clip(sc * jnp.where(agree > 0, up, down), lo_, hi_)
            new_size = jnp.where(agree == 0, sc, scaled)
            out = jnp.where(agree < 0, jnp.zeros_like(gc), new_size * jnp.sign(gc))
            return out.astype(g.dtype), new_size.astype(size.dtype), out.astype(prev.dtype)

        updates, sizes, prevs = _tree.map_leaves(
            leaf, 3, updates, state.step_sizes, state.prev_updates
        )
        step = _tree.safe_increment(state.step)
        hparams = spec.advance(state.hparams, step)
        return updates, ScaleByRpropState(step, sizes, prevs, hparams)

    return GradientTransformation(init_fn, update_fn)
