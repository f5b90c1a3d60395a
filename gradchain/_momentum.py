r"""First moments of the updates: momentum (trace) and exponential moving averages (ema).

Arithmetic is done in at least float32; each buffer keeps the dtype it was
created with (the parameters' unless ``accumulator_dtype`` says otherwise), and
updates keep the gradients' dtype.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradchain import _check, _tree
from gradchain._base import GradientTransformation, Params, ScalarOrSchedule, Updates
from gradchain._hyperparams import Hyperparams, HyperparamSpec, values


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
    acc_dtype = _check.dtype_or_none(fn, "accumulator_dtype", accumulator_dtype)
    spec = HyperparamSpec(fn, dict(decay=decay))

    def init_fn(params: Params) -> TraceState:
        return TraceState(
            jnp.zeros([], jnp.int32), _tree.accumulator_like(params, acc_dtype), spec.init()
        )

    def update_fn(
        updates: Updates, state: TraceState, params: Params | None = None
    ) -> tuple[Updates, TraceState]:
        del params
        _tree.check_state(fn, state, TraceState)
        _tree.check_matches(fn, updates, "state.trace", state.trace)
        beta = values(state.hparams)["decay"]

        def leaf(g: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
            gc, tc, b = _tree.upcast(g, t, beta)
            new_t = gc + b * tc
            out = gc + b * new_t if nesterov else new_t
            return out.astype(g.dtype), new_t.astype(t.dtype)

        updates, new_trace = _tree.map_leaves(leaf, 2, updates, state.trace)
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
    acc_dtype = _check.dtype_or_none(fn, "accumulator_dtype", accumulator_dtype)
    spec = HyperparamSpec(fn, dict(decay=decay), rates=("decay",))

    def init_fn(params: Params) -> EmaState:
        return EmaState(
            jnp.zeros([], jnp.int32), _tree.accumulator_like(params, acc_dtype), spec.init()
        )

    def update_fn(
        updates: Updates, state: EmaState, params: Params | None = None
    ) -> tuple[Updates, EmaState]:
        del params
        _tree.check_state(fn, state, EmaState)
        _tree.check_matches(fn, updates, "state.ema", state.ema)
        beta = values(state.hparams)["decay"]
        one_minus_beta = state.hparams.complement["decay"]
        step = _tree.safe_increment(state.step)
        correction = _tree.debias(beta, step)

        def leaf(g: jax.Array, e: jax.Array) -> tuple[jax.Array, jax.Array]:
            gc, ec, b, omb, c = _tree.upcast(g, e, beta, one_minus_beta, correction)
            new_e = omb * gc + b * ec
            out = new_e / c if debias else new_e
            return out.astype(g.dtype), new_e.astype(e.dtype)

        updates, new_ema = _tree.map_leaves(leaf, 2, updates, state.ema)
        return updates, EmaState(step, new_ema, spec.advance(state.hparams, step))

    return GradientTransformation(init_fn, update_fn)
