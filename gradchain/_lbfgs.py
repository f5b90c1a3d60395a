r"""L-BFGS: the two-loop recursion (Nocedal and Wright, Alg. 7.4) and the optimizer alias."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradchain import _check, _explicit, _tree
from gradchain._base import (
    AnyTransformation,
    GradientTransformation,
    GradientTransformationExtraArgs,
    Params,
    ScalarOrSchedule,
    Updates,
    check_transformation,
    identity,
)
from gradchain._combine import chain
from gradchain._linesearch import inner
from gradchain._scaling import scale, scale_by_learning_rate
from gradchain._zoom import scale_by_zoom_linesearch


class ScaleByLBFGSState(NamedTuple):
    """State of :func:`scale_by_lbfgs`.

    The memory holds the last ``memory_size`` pairs :math:`s_i = w_{i+1} - w_i`,
    :math:`y_i = g_{i+1} - g_i`, stacked along a leading axis, in at least
    float32 (differences of bfloat16 gradients would be mostly rounding).
    """

    step: jax.Array  # int32[], updates seen so far
    slot: jax.Array  # int32[], the memory slot the next pair is written to
    params: Params  # the parameters at the previous update
    updates: Updates  # the incoming updates (gradients) at the previous update
    diff_params_memory: Updates  # s_i, leaves of shape (memory_size, *param.shape)
    diff_updates_memory: Updates  # y_i, likewise
    weights_memory: jax.Array  # float[memory_size], rho_i = 1 / <s_i, y_i> (0: no pair)


def _stacked_zeros(params: Params, memory_size: int) -> Updates:
    def zeros(p: Any) -> jax.Array:
        return _explicit.zeros_stacked(p, memory_size, _tree.compute_dtype(p.dtype))

    return jax.tree.map(zeros, params)


def _slot(memory: Updates, i: jax.Array) -> Updates:
    return jax.tree.map(lambda m: m[i], memory)


def two_loop(
    g: Updates, s_mem: Updates, y_mem: Updates, rho: jax.Array, gamma: jax.Array, newest: jax.Array
) -> Updates:
    r"""Nocedal and Wright's Alg. 7.4: :math:`H g` for the L-BFGS inverse-Hessian estimate.

    Slot ``newest`` holds the latest pair, older ones precede it cyclically;
    pairs with :math:`\rho_i = 0` contribute nothing.
    """
    m = rho.shape[0]
    dt = rho.dtype
    newest_first = (newest - jnp.arange(m)) % m

    def backward(q: Updates, i: jax.Array) -> tuple[Updates, jax.Array]:
        alpha = rho[i] * inner(_slot(s_mem, i), q, dt, conjugate=True)
        return jax.tree.map(lambda q_, y: q_ - alpha * y, q, _slot(y_mem, i)), alpha

    q, alphas = jax.lax.scan(backward, g, newest_first)
    r = jax.tree.map(lambda q_: gamma * q_, q)

    def forward(r: Updates, i_alpha: tuple[jax.Array, jax.Array]) -> tuple[Updates, None]:
        i, alpha = i_alpha
        beta = rho[i] * inner(_slot(y_mem, i), r, dt, conjugate=True)
        return jax.tree.map(lambda r_, s: r_ + (alpha - beta) * s, r, _slot(s_mem, i)), None

    r, _ = jax.lax.scan(forward, r, (newest_first[::-1], alphas[::-1]))
    return r


def scale_by_lbfgs(
    memory_size: int = 10, scale_init_precond: bool = True
) -> GradientTransformation:
    r"""Multiplies updates by the L-BFGS estimate of the inverse Hessian.

    With the last pairs :math:`s_i = w_{i+1} - w_i`, :math:`y_i = g_{i+1} -
    g_i`, the update is :math:`H_k g_k` by the two-loop recursion, starting from
    :math:`H^0_k = \gamma_k I` with :math:`\gamma_k = \langle s, y\rangle /
    \langle y, y\rangle` of the newest pair (``scale_init_precond``; else 1),
    and :math:`\min(1, 1/\|g_0\|)` at the first step. The memory is updated
    from the parameters and updates this call receives before they are
    preconditioned, so a line search after it may choose the step.

    Difference from Optax 0.2.8: a pair with :math:`\langle s, y\rangle \le 0`
    (negative curvature, possible when the line search did not meet the
    curvature condition) is skipped, as Nocedal and Wright prescribe, so
    :math:`H_k` stays positive definite and :math:`-H_k g_k` a descent
    direction; Optax skips only :math:`\langle s, y\rangle = 0` and can then
    return an ascent direction. Where every pair has positive curvature the two
    agree.

    Args:
      memory_size: how many pairs to keep, > 0.
      scale_init_precond: scale :math:`H^0_k` by :math:`\gamma_k`.

    Returns:
      A GradientTransformation whose state is a ScaleByLBFGSState.

    Raises:
      ValueError: if ``memory_size`` is not a positive integer, or (while
        tracing) if update is called without ``params``.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.scale_by_lbfgs(memory_size=3)
      >>> w = jnp.array([1.0, 2.0])
      >>> state = tx.init(w)
      >>> u, state = tx.update(jnp.array([2.0, 4.0]), state, w)
      >>> [round(float(x), 3) for x in u]  # the first step: the gradient scaled to norm <= 1
      [0.447, 0.894]

    References:
      Nocedal and Wright, Numerical Optimization, 2nd ed., 2006, Alg. 7.4, 7.5,
      and eq. (7.20) for the initial scaling.
      Liu and Nocedal, On the limited memory BFGS method for large scale
      optimization, Math. Programming 45, 1989.
    """
    fn = "scale_by_lbfgs"
    _check.positive_int(fn, "memory_size", memory_size)

    def init_fn(params: Params) -> ScaleByLBFGSState:
        dt = _tree.compute_dtype(*(p.dtype for p in jax.tree.leaves(params)))

        def wide() -> Params:  # a buffer per field: a state can be donated
            return jax.tree.map(lambda p: _tree.like(p, _tree.compute_dtype(p.dtype)), params)

        return ScaleByLBFGSState(
            step=jnp.zeros([], jnp.int32),
            slot=jnp.zeros([], jnp.int32),
            params=wide(),
            updates=wide(),
            diff_params_memory=_stacked_zeros(params, memory_size),
            diff_updates_memory=_stacked_zeros(params, memory_size),
            weights_memory=jnp.zeros([memory_size], jnp.finfo(dt).dtype),
        )

    def update_fn(
        updates: Updates, state: ScaleByLBFGSState, params: Params | None = None
    ) -> tuple[Updates, ScaleByLBFGSState]:
        _tree.check_state(fn, state, ScaleByLBFGSState)
        _tree.require_params(fn, params)
        _tree.check_matches(fn, updates, "params", params)
        _tree.check_matches(fn, updates, "state.updates", state.updates)
        return precondition(updates, state, params)

    @jax.jit  # compiled once per shapes: eager loops do not retrace the two scans
    def precondition(
        updates: Updates, state: ScaleByLBFGSState, params: Params
    ) -> tuple[Updates, ScaleByLBFGSState]:
        dt = state.weights_memory.dtype
        wide_params = jax.tree.map(
            lambda p, o: jnp.asarray(p).astype(o.dtype), params, state.params
        )
        wide_updates = jax.tree.map(lambda u, o: u.astype(o.dtype), updates, state.updates)
        first = state.step == 0
        s = jax.tree.map(jnp.subtract, wide_params, state.params)
        y = jax.tree.map(jnp.subtract, wide_updates, state.updates)
        sy = inner(s, y, dt, conjugate=True)
        keep = (sy > 0) & ~first  # a pair of negative curvature would break H > 0
        i = state.slot
        s_mem, y_mem, rho_mem = jax.tree.map(
            lambda m, x: m.at[i].set(jnp.where(keep, x, m[i])),
            (state.diff_params_memory, state.diff_updates_memory, state.weights_memory),
            (s, y, (1 / jnp.where(keep, sy, 1)).astype(dt)),
        )
        newest = jnp.where(keep, i, (i - 1) % memory_size)
        if scale_init_precond:
            g_norm = jnp.sqrt(inner(wide_updates, wide_updates, dt, conjugate=True))
            at_start = jnp.minimum(1, 1 / g_norm).astype(dt)
            s_new, y_new = _slot(s_mem, newest), _slot(y_mem, newest)
            yy = inner(y_new, y_new, dt, conjugate=True)
            usable = (rho_mem[newest] > 0) & (yy > 0)
            ratio = inner(y_new, s_new, dt, conjugate=True) / jnp.where(usable, yy, 1)
            gamma = jnp.where(usable, ratio, at_start)
        else:
            gamma = jnp.ones([], dt)
        direction = two_loop(wide_updates, s_mem, y_mem, rho_mem, gamma, newest)
        out = jax.tree.map(lambda d, u: d.astype(u.dtype), direction, updates)
        new_state = ScaleByLBFGSState(
            step=_tree.safe_increment(state.step),
            slot=jnp.where(keep, (i + 1) % memory_size, i).astype(jnp.int32),
            params=wide_params,
            updates=wide_updates,
            diff_params_memory=s_mem,
            diff_updates_memory=y_mem,
            weights_memory=rho_mem,
        )
        return out, new_state

    return GradientTransformation(init_fn, update_fn)


_DEFAULT_LINESEARCH = scale_by_zoom_linesearch(
    max_linesearch_steps=20, initial_guess_strategy="one"
)


def lbfgs(
    learning_rate: ScalarOrSchedule | None = None,
    memory_size: int = 10,
    scale_init_precond: bool = True,
    linesearch: AnyTransformation | None = _DEFAULT_LINESEARCH,
) -> GradientTransformationExtraArgs:
    r"""L-BFGS: ``chain(scale_by_lbfgs, scale(-1) or the learning rate, linesearch)``.

    A quasi-Newton method: the direction :math:`-H_k g_k` from
    :func:`scale_by_lbfgs`, scaled by a stepsize that the line search (by
    default :func:`scale_by_zoom_linesearch` with 20 steps and a first guess
    of 1, meeting the strong Wolfe conditions, which keep :math:`H_k` positive
    definite) or the learning rate chooses. Its update takes ``value``,
    ``grad`` and ``value_fn`` keyword arguments, passed to the line search;
    :func:`value_and_grad_from_state` saves one evaluation per iteration.

    Args:
      learning_rate: None (the direction as it is, for a line search to scale)
        or a step size or schedule, >= 0.
      memory_size: how many pairs to keep, > 0.
      scale_init_precond: see :func:`scale_by_lbfgs`.
      linesearch: a line search (or None: no line search).

    Returns:
      A GradientTransformationExtraArgs whose state is a tuple of the three
      members' states.

    Raises:
      ValueError: for a hyperparameter out of range.
      TypeError: if ``linesearch`` is not a transformation.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> def rosenbrock(w):
      ...     return (1 - w[0]) ** 2 + 100 * (w[1] - w[0] ** 2) ** 2
      >>> tx = gc.lbfgs()
      >>> value_and_grad = gc.value_and_grad_from_state(rosenbrock)
      >>> def step(carry, _):
      ...     w, state = carry
      ...     value, grad = value_and_grad(w, state=state)
      ...     u, state = tx.update(grad, state, w, value=value, grad=grad, value_fn=rosenbrock)
      ...     return (gc.apply_updates(w, u), state), None
      >>> w = jnp.array([-1.2, 1.0])
      >>> (w, _), _ = jax.lax.scan(step, (w, tx.init(w)), length=40)
      >>> [round(float(x), 3) for x in w]
      [1.0, 1.0]

    References:
      Liu and Nocedal, On the limited memory BFGS method for large scale
      optimization, Math. Programming 45, 1989.
      Nocedal and Wright, Numerical Optimization, 2nd ed., 2006, Alg. 7.4, 7.5.
    """
    if learning_rate is None:
        base_scaling = scale(-1.0)
    else:
        base_scaling = scale_by_learning_rate(learning_rate)
    if linesearch is None:
        linesearch = identity()
    check_transformation("lbfgs", "`linesearch`", linesearch)
    return chain(scale_by_lbfgs(memory_size, scale_init_precond), base_scaling, linesearch)
