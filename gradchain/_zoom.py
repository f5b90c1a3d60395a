r"""The zoom line search: a stepsize meeting the strong Wolfe conditions.

Nocedal and Wright's Algorithms 3.5 (grow the stepsize until an interval
holding an acceptable one is bracketed) and 3.6 (zoom into the interval by
cubic, else quadratic, else bisection steps), with Hager and Zhang's
approximate sufficient-decrease condition for flat objectives near a minimum.
Each iteration evaluates the objective and its gradient once; the two phases
share one evaluation site in the loop body, so the objective is traced once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradchain import _check, _tree
from gradchain._base import GradientTransformationExtraArgs, Params, Updates
from gradchain._hyperparams import Hyperparams, HyperparamSpec, values
from gradchain._linesearch import (
    along,
    cast_like,
    check_objective,
    compiled_or_eager,
    float_dtype,
    inner,
    nan_to_inf,
    scalar_value,
    scale_tree,
    stores_objective,
)

_GUESSES = ("one", "keep")


class ZoomLinesearchInfo(NamedTuple):
    """What the last zoom search did, for diagnosis."""

    num_linesearch_steps: jax.Array  # int32[], objective evaluations in the last search
    decrease_error: jax.Array  # float[], violation of sufficient decrease (0: met)
    curvature_error: jax.Array  # float[], violation of the curvature condition (0: met)


@stores_objective
class ScaleByZoomLinesearchState(NamedTuple):
    """State of :func:`scale_by_zoom_linesearch`."""

    learning_rate: jax.Array  # float[], the stepsize applied to the last updates
    value: jax.Array  # float[], the objective at the parameters the last update leads to
    grad: Updates  # its gradient, in the parameters' dtypes
    info: ZoomLinesearchInfo
    hparams: Hyperparams


class _Point(NamedTuple):
    """A stepsize on the line with the value and slope there."""

    t: jax.Array
    value: jax.Array
    slope: jax.Array


class _Search(NamedTuple):
    """The loop carry of one search."""

    tries: jax.Array  # int32[]
    current: _Point  # the point evaluated last
    grad: Updates  # the gradient there
    decrease_error: jax.Array
    curvature_error: jax.Array
    bracketed: jax.Array  # bool: zooming (Alg. 3.6) rather than growing (Alg. 3.5)
    done: jax.Array
    failed: jax.Array
    low: _Point  # the end of the bracket with the lower value
    high: _Point
    ref: _Point  # the third point of the cubic (its slope unused)
    safe: _Point  # the best point meeting sufficient decrease so far (t = 0: none)
    safe_grad: Updates


def _cubic_minimizer(a: _Point, b: _Point, c: _Point) -> jax.Array:
    """The local minimizer of the cubic through a (value and slope), b and c (values).

    NaN or inf when there is none; the caller then rejects it.
    """
    db, dc = b.t - a.t, c.t - a.t
    rb = b.value - a.value - a.slope * db
    rc = c.value - a.value - a.slope * dc
    denom = (db * dc) ** 2 * (db - dc)
    # The 2x2 solve as one matrix product, so that it rounds as a dot product does.
    lhs = jnp.stack([jnp.stack([dc**2, -(db**2)]), jnp.stack([-(dc**3), db**3])])
    cubic, quad = jnp.dot(lhs, jnp.stack([rb, rc]), precision=jax.lax.Precision.HIGHEST) / denom
    radical = quad * quad - 3 * cubic * a.slope
    return a.t + (-quad + jnp.sqrt(radical)) / (3 * cubic)


def _quadratic_minimizer(a: _Point, b: _Point) -> jax.Array:
    """The minimizer of the parabola through a (value and slope) and b (value)."""
    db = b.t - a.t
    curvature = (b.value - a.value - a.slope * db) / db**2
    return a.t - a.slope / (2 * curvature)


def scale_by_zoom_linesearch(
    max_linesearch_steps: int,
    max_learning_rate: float | None = None,
    tol: float = 0.0,
    increase_factor: float = 2.0,
    slope_rtol: float = 1e-4,
    curv_rtol: float = 0.9,
    approx_dec_rtol: float | None = 1e-6,
    stepsize_precision: float = 1e-5,
    initial_guess_strategy: str = "keep",
    verbose: bool = False,
) -> GradientTransformationExtraArgs:
    r"""Scales updates by a stepsize meeting the strong Wolfe conditions (zoom line search).

    Searches :math:`\eta` with sufficient decrease and small curvature,

    .. math::
      f(w + \eta u) \le f(w) + c_1 \eta \langle \nabla f(w), u\rangle + \epsilon,
      \qquad |\langle \nabla f(w + \eta u), u\rangle| \le c_2 |\langle \nabla f(w),
      u\rangle| + \epsilon,

    with :math:`c_1` = ``slope_rtol``, :math:`c_2` = ``curv_rtol``,
    :math:`\epsilon` = ``tol``. Near a minimum, where :math:`f` is flat to
    rounding, the first condition may be replaced by Hager and Zhang's
    approximate one, :math:`\langle \nabla f(w+\eta u), u\rangle \le (2c_1 - 1)
    \langle \nabla f(w), u\rangle`, for points with :math:`f(w + \eta u) \le
    f(w) + c_3 |f(w)|`, :math:`c_3` = ``approx_dec_rtol`` (``None``: never).
    When the search fails, the best point with sufficient decrease is taken;
    if none, the last point tried, unless the objective was NaN or infinite
    there (then no step). The same decisions as Optax 0.2.8's.

    One difference from Optax 0.2.8: with ``initial_guess_strategy="keep"``,
    a search that ended with a stepsize of 0 (the objective NaN or infinite
    along the whole direction) makes Optax start every later search at 0, so
    it never moves again; here a previous stepsize of 0 restarts at 1.

    Args:
      max_linesearch_steps: the most objective evaluations per search, > 0.
      max_learning_rate: the largest stepsize tried, > 0, or None for no bound.
      tol: :math:`\epsilon`, >= 0.
      increase_factor: the factor growing the stepsize while bracketing, >= 1.
      slope_rtol: :math:`c_1` in [0, 1).
      curv_rtol: :math:`c_2` >= 0, usually in (c_1, 1); a large value (1e30)
        drops the curvature condition (Optax's ``inf`` is refused).
      approx_dec_rtol: :math:`c_3` >= 0, or None.
      stepsize_precision: once the bracket is this narrow and a point with
        sufficient decrease is known, that point is taken, >= 0.
      initial_guess_strategy: ``"one"`` (every search starts at 1: right for
        quasi-Newton directions) or ``"keep"`` (at the previous stepsize: right
        for gradient directions).
      verbose: print a diagnosis (with ``jax.debug.print``) when a search fails.

    Returns:
      A GradientTransformationExtraArgs whose state is a
      ScaleByZoomLinesearchState; its update takes ``value``, ``grad`` and
      ``value_fn`` keyword arguments, and passes other keyword arguments to
      ``value_fn``.

    Raises:
      ValueError: for a hyperparameter out of range or an unknown strategy, or
        (while tracing) when ``params``, ``value``, ``grad`` or ``value_fn``
        is missing or does not fit the parameters.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> f = lambda w: jnp.sum((w - 1.0) ** 2)
      >>> tx = gc.chain(gc.sgd(1.0), gc.scale_by_zoom_linesearch(15))
      >>> w = jnp.zeros(2)
      >>> state = tx.init(w)
      >>> value, grad = jax.value_and_grad(f)(w)
      >>> u, state = tx.update(grad, state, w, value=value, grad=grad, value_fn=f)
      >>> round(float(state[1].learning_rate), 4), round(float(f(w + u)), 4)
      (0.5, 0.0)

    References:
      Nocedal and Wright, Numerical Optimization, 2nd ed., 2006, Alg. 3.5, 3.6.
      Hager and Zhang, Algorithm 851: CG_DESCENT, ACM TOMS 32(1), 2006, eq. (23).
    """
    fn = "scale_by_zoom_linesearch"
    _check.positive_int(fn, "max_linesearch_steps", max_linesearch_steps)
    if max_learning_rate is not None:
        _check.positive(fn, "max_learning_rate", max_learning_rate)
    _check.non_negative(fn, "tol", tol)
    _check.in_range(fn, "increase_factor", increase_factor, 1.0, float("inf"), hi_open=True)
    _check.decay_rate(fn, "slope_rtol", slope_rtol)
    _check.non_negative(fn, "curv_rtol", curv_rtol)
    if approx_dec_rtol is not None:
        _check.non_negative(fn, "approx_dec_rtol", approx_dec_rtol)
    _check.non_negative(fn, "stepsize_precision", stepsize_precision)
    if initial_guess_strategy not in _GUESSES:
        raise ValueError(
            f"{fn}: `initial_guess_strategy` must be one of {list(_GUESSES)}; "
            f"got {initial_guess_strategy!r}."
        )
    hyper: dict[str, Any] = dict(
        tol=tol,
        increase_factor=increase_factor,
        slope_rtol=slope_rtol,
        curv_rtol=curv_rtol,
        stepsize_precision=stepsize_precision,
    )
    if max_learning_rate is not None:
        hyper["max_learning_rate"] = max_learning_rate
    if approx_dec_rtol is not None:
        hyper["approx_dec_rtol"] = approx_dec_rtol
    spec = HyperparamSpec(fn, hyper)

    def init_fn(params: Params) -> ScaleByZoomLinesearchState:
        dt = float_dtype(params)

        def inf() -> jax.Array:  # a buffer per field: a state can be donated
            return jnp.full([], jnp.inf, dt)

        return ScaleByZoomLinesearchState(
            learning_rate=jnp.ones([], dt),
            value=inf(),
            grad=_tree.zeros_like(params),
            info=ZoomLinesearchInfo(jnp.zeros([], jnp.int32), inf(), inf()),
            hparams=spec.init(),
        )

    def update_fn(
        updates: Updates,
        state: ScaleByZoomLinesearchState,
        params: Params | None = None,
        **extra_args: Any,
    ) -> tuple[Updates, ScaleByZoomLinesearchState]:
        _tree.check_state(fn, state, ScaleByZoomLinesearchState)
        value, grad, value_fn, kw = check_objective(fn, updates, params, extra_args)
        _tree.check_matches(fn, updates, "state.grad", state.grad)
        run = compiled_or_eager(search, compiled_search, kw, value_fn)
        return run(updates, state, params, value, grad, kw, value_fn)

    def search(
        updates: Updates,
        state: ScaleByZoomLinesearchState,
        params: Params,
        value: jax.Array,
        grad: Updates,
        kw: dict[str, Any],
        value_fn: Callable[..., Any],
    ) -> tuple[Updates, ScaleByZoomLinesearchState]:
        hp = values(state.hparams)
        dt = state.value.dtype
        grad = cast_like(grad, state.grad)
        start = _Point(jnp.zeros([], dt), value.real.astype(dt), inner(updates, grad, dt))

        def objective(p: Params) -> jax.Array:
            return scalar_value(fn, value_fn(p, **kw), dt)

        value_and_grad = jax.value_and_grad(objective)

        def errors(at: _Point) -> tuple[jax.Array, jax.Array]:
            armijo = at.value - start.value - hp["slope_rtol"] * at.t * start.slope
            if approx_dec_rtol is not None:
                approx = at.slope - (2 * hp["slope_rtol"] - 1) * start.slope
                near = at.value - start.value - hp["approx_dec_rtol"] * jnp.abs(start.value)
                armijo = jnp.minimum(armijo, jnp.maximum(approx, near))
            curvature = jnp.abs(at.slope) - hp["curv_rtol"] * jnp.abs(start.slope)
            return nan_to_inf(armijo), nan_to_inf(curvature)

        def next_stepsize(s: _Search) -> tuple[jax.Array, jax.Array]:
            """The stepsize to try, and whether it is the maximal one (while bracketing)."""
            grown = jnp.where(s.tries == 0, guess, hp["increase_factor"] * s.current.t)
            at_max = jnp.zeros([], bool)
            if max_learning_rate is not None:
                at_max = grown >= hp["max_learning_rate"]
                grown = jnp.minimum(grown, hp["max_learning_rate"])
            lo, hi = jnp.minimum(s.low.t, s.high.t), jnp.maximum(s.low.t, s.high.t)
            width = hi - lo
            cubic = _cubic_minimizer(s.low, s.high, s.ref)
            quad = _quadratic_minimizer(s.low, s.high)
            middle = jnp.where(
                (cubic > lo + 0.2 * width) & (cubic < hi - 0.2 * width),
                cubic,
                jnp.where(
                    (quad > lo + 0.1 * width) & (quad < hi - 0.1 * width),
                    quad,
                    (s.low.t + s.high.t) / 2,
                ),
            )
            return jnp.where(s.bracketed, middle, grown), at_max & ~s.bracketed

        def step(s: _Search) -> _Search:
            t, at_max = next_stepsize(s)
            new_value, new_grad = value_and_grad(along(params, t, updates))
            new_grad = cast_like(new_grad, state.grad)
            new = _Point(t, new_value, inner(new_grad, updates, dt))
            dec, curv = errors(new)
            good = jnp.maximum(dec, curv) <= hp["tol"]
            sufficient = dec <= hp["tol"]
            last = s.tries + 1 >= max_linesearch_steps
            # The safe point: while bracketing, the latest with sufficient decrease;
            # while zooming, the lowest.
            take_safe = sufficient & (~s.bracketed | (new.value < s.safe.value))
            safe = _where(take_safe, new, s.safe)
            safe_grad = _where(take_safe, new_grad, s.safe_grad)
            # Alg. 3.5: bracket [previous, new] once new is bad or stops descending.
            prev = s.current
            high_is_new = (dec > 0) | ((new.value >= prev.value) & (s.tries > 0))
            low_is_new = (new.slope >= 0) & ~high_is_new
            grow_low = _where(low_is_new, new, prev)
            grow_high = _where(low_is_new, prev, new)
            bracketed_now = high_is_new | low_is_new | good
            grow_done = good | (at_max & ~bracketed_now)
            # Alg. 3.6: shrink [low, high] around new.
            high_to_new = (dec > 0) | (new.value >= s.low.value)
            high_to_low = (new.slope * (s.high.t - s.low.t) >= 0) & ~high_to_new
            zoom_high = _where(high_to_new, new, _where(high_to_low, s.low, s.high))
            zoom_low = _where(high_to_new, s.low, new)
            zoom_ref = _where(high_to_new | high_to_low, s.high, s.low)
            narrow = jnp.abs(s.high.t - s.low.t) <= hp["stepsize_precision"]
            zoom_failed = (last | (narrow & (safe.t > 0))) & ~good
            b = s.bracketed
            low = _where(b, zoom_low, grow_low)
            done = jnp.where(b, good, grow_done)
            return _Search(
                tries=s.tries + 1,
                current=new,
                grad=new_grad,
                decrease_error=dec,
                curvature_error=curv,
                bracketed=b | bracketed_now,
                done=done,
                failed=jnp.where(b, zoom_failed, last & ~grow_done),
                low=low,
                high=_where(b, zoom_high, grow_high),
                ref=_where(b, zoom_ref, low),
                safe=safe,
                safe_grad=safe_grad,
            )

        if initial_guess_strategy == "one":
            guess = jnp.ones([], dt)
        else:  # keep, restarting at 1 after a search that could not move
            guess = jnp.where(state.learning_rate > 0, state.learning_rate, 1).astype(dt)
        inf = jnp.full([], jnp.inf, dt)
        no = jnp.zeros([], bool)
        first = _Search(
            jnp.zeros([], jnp.int32), start, grad, inf, inf, no, no, no,
            start, start, start, start, grad,
        )  # fmt: skip
        s = jax.lax.while_loop(lambda s: ~(s.done | s.failed), step, first)
        # A failed search takes the safe point if there is one, or if the last point is
        # outside the domain (then t = 0: no step); else the last point tried.
        use_safe = s.failed & ((s.safe.t > 0) | jnp.isinf(s.decrease_error))
        final = _where(use_safe, s.safe, s.current)
        final_grad = _where(use_safe, s.safe_grad, s.grad)
        if verbose:
            jax.lax.cond(
                s.failed,
                lambda: jax.debug.print(
                    fn + ": no stepsize met both conditions in {n} evaluations. value={v}, "
                    "slope={sl} (must be < 0), stepsize taken={t}, decrease error={d}, "
                    "curvature error={c}. Consider more steps or a larger max_learning_rate.",
                    n=s.tries,
                    v=start.value,
                    sl=start.slope,
                    t=final.t,
                    d=s.decrease_error,
                    c=s.curvature_error,
                ),
                lambda: None,
            )
        info = ZoomLinesearchInfo(s.tries, s.decrease_error, s.curvature_error)
        new_state = ScaleByZoomLinesearchState(
            final.t, final.value, final_grad, info, state.hparams
        )
        return scale_tree(final.t, updates), new_state

    compiled_search = jax.jit(search, static_argnums=6)  # value_fn static
    return GradientTransformationExtraArgs(init_fn, update_fn)


def _where(cond: jax.Array, a: Any, b: Any) -> Any:
    return jax.tree.map(functools.partial(jnp.where, cond), a, b)
