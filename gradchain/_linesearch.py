r"""Line searches on the objective: backtracking (Armijo), and the helpers they share.

A line search scales the incoming direction :math:`u` by a stepsize
:math:`\eta` chosen by evaluating the objective :math:`f` at :math:`w + \eta u`.
So its ``update`` takes, besides ``(updates, state, params)``, the keyword
arguments ``value`` (:math:`f(w)`), ``grad`` (:math:`\nabla f(w)`) and
``value_fn`` (:math:`f`); any other keyword argument that ``value_fn`` accepts
(a batch, say) is passed on to it. Values, slopes and stepsizes are computed in
at least float32; candidate parameters keep the parameters' dtypes.

:func:`value_and_grad_from_state` reuses the value and gradient a line search
computed at its accepted point, saving one evaluation per iteration.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradchain import _check, _tree
from gradchain._base import GradientTransformationExtraArgs, Params, Updates
from gradchain._hyperparams import Hyperparams, HyperparamSpec, values

# ---------------------------------------------------------------- shared helpers

_STORES_OBJECTIVE: list[type] = []


def stores_objective(cls: type) -> type:
    """Registers a state type for :func:`value_and_grad_from_state`.

    Its ``value`` and ``grad`` fields hold the objective at the accepted point.
    """
    _STORES_OBJECTIVE.append(cls)
    return cls


def float_dtype(params: Params) -> Any:
    """The dtype of values, slopes and stepsizes: float32, or wider if a leaf is wider."""
    leaves = jax.tree.leaves(params)
    return jnp.finfo(_tree.compute_dtype(*(jnp.dtype(p.dtype) for p in leaves))).dtype


def inner(a: Updates, b: Updates, dtype: Any, *, conjugate: bool = False) -> jax.Array:
    r"""``Re sum(a * b)`` over all leaves (``conj(a)`` with ``conjugate``), in ``dtype``.

    Without ``conjugate`` it is the slope :math:`\langle u, g\rangle` along ``u`` of a
    real function whose JAX gradient is ``g`` (for complex parameters JAX's
    gradient is the conjugate of the ascent direction); with it, the real
    inner product that L-BFGS needs.
    """
    total = jnp.zeros([], dtype)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = _tree.upcast(jnp.asarray(x), jnp.asarray(y))
        total = total + jnp.sum((jnp.conj(x) if conjugate else x) * y).real.astype(dtype)
    return total


def along(params: Params, stepsize: jax.Array, updates: Updates) -> Params:
    """``params + stepsize * updates``, computed in at least float32, in the params' dtypes."""

    def leaf(p: jax.Array, u: jax.Array) -> jax.Array:
        p_, u_, t = _tree.upcast(jnp.asarray(p), jnp.asarray(u), stepsize)
        return (p_ + t * u_).astype(p.dtype)

    return jax.tree.map(leaf, params, updates)


def scale_tree(stepsize: jax.Array, updates: Updates) -> Updates:
    """``stepsize * updates`` in the updates' dtypes."""

    def leaf(u: jax.Array) -> jax.Array:
        u_, t = _tree.upcast(u, stepsize)
        return (t * u_).astype(u.dtype)

    return jax.tree.map(leaf, updates)


def cast_like(tree: Any, like: Any) -> Any:
    """``tree`` with each leaf cast to the dtype of the matching leaf of ``like``."""
    return jax.tree.map(lambda x, y: jnp.asarray(x).astype(y.dtype), tree, like)


def split_objective_args(
    fn: str, value_fn: Callable[..., Any], extra_args: dict[str, Any]
) -> dict[str, Any]:
    """The extra keyword arguments that ``value_fn`` accepts; raises for the others."""
    try:
        parameters = inspect.signature(value_fn).parameters
    except (TypeError, ValueError):  # a builtin: pass everything, let it complain
        return dict(extra_args)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return dict(extra_args)
    unused = sorted(k for k in extra_args if k not in parameters)
    if unused:
        raise TypeError(
            f"{fn}: update received keyword arguments that `value_fn` does not accept: "
            f"{unused}. The extra keyword arguments of update are passed to `value_fn` "
            f"(a batch, say); give `value_fn` parameters of those names, or do not pass them."
        )
    return dict(extra_args)


def compiled_or_eager(
    search: Callable[..., Any],
    compiled: Callable[..., Any],
    kw: dict[str, Any],
    value_fn: Callable[..., Any],
) -> Callable[..., Any]:
    """``compiled`` (``search`` jitted, ``value_fn`` static) unless the call cannot be so.

    Compiling the search once per objective spares an eager loop of updates from
    retracing the while loop each call (under an outer jit it is inlined). Extra
    arguments that are not arrays (a ``train=True`` flag) or an unhashable
    ``value_fn`` keep the call as it is, as in Optax.
    """
    try:
        hash(value_fn)
    except TypeError:
        return search
    arrays = (jax.Array, np.ndarray, np.generic)
    return compiled if all(isinstance(x, arrays) for x in jax.tree.leaves(kw)) else search


def check_objective(
    fn: str, updates: Updates, params: Params | None, extra_args: dict[str, Any]
) -> tuple[jax.Array, Updates, Callable[..., Any], dict[str, Any]]:
    """Checks the objective a line search's update needs; returns (value, grad, value_fn, kw).

    Raises (while tracing) ValueError when ``params``, ``value``, ``grad`` or
    ``value_fn`` is missing or does not fit the parameters, naming ``fn``.
    """
    _tree.require_params(fn, params)
    _tree.check_matches(fn, updates, "params", params)
    missing = [k for k in ("value", "grad", "value_fn") if extra_args.get(k) is None]
    if missing:
        listed = ", ".join(f"`{k}`" for k in missing)
        raise ValueError(
            f"{fn}: update needs the objective to search along the updates, but {listed} "
            f"{'is' if len(missing) == 1 else 'are'} missing. Call `update(updates, state, "
            f"params, value=f(params), grad=jax.grad(f)(params), value_fn=f)`, e.g. with "
            f"`value, grad = jax.value_and_grad(f)(params)`."
        )
    kw = dict(extra_args)
    value, grad, value_fn = kw.pop("value"), kw.pop("grad"), kw.pop("value_fn")
    if not callable(value_fn):
        raise TypeError(
            f"{fn}: `value_fn` must be the objective, a function of the parameters returning a "
            f"scalar; got {type(value_fn).__name__} {value_fn!r:.60}."
        )
    value = _tree.objective_value(fn, value)
    _tree.check_same_structure(fn, "grad", grad, "params", params)
    _tree.check_same_shapes(fn, "grad", grad, "params", params)
    return value, grad, value_fn, split_objective_args(fn, value_fn, kw)


def scalar_value(fn: str, value: Any, dtype: Any) -> jax.Array:
    """The objective's value as a real scalar of ``dtype``; raises if it is not a scalar."""
    value = jnp.asarray(value)
    if value.shape != ():
        raise ValueError(
            f"{fn}: `value_fn` must return a scalar; it returned shape {value.shape}. "
            f"Reduce the loss to a scalar (a mean or a sum)."
        )
    return value.real.astype(dtype)


def nan_to_inf(error: jax.Array) -> jax.Array:
    """A criterion's violation, 0 when met, +inf when NaN (outside the domain)."""
    error = jnp.maximum(error, 0.0)
    return jnp.where(jnp.isnan(error), jnp.inf, error)


# ------------------------------------------------------------ backtracking (Armijo)


class BacktrackingLinesearchInfo(NamedTuple):
    """What the last backtracking search did, for diagnosis."""

    num_linesearch_steps: jax.Array  # int32[], objective evaluations in the last search
    decrease_error: jax.Array  # float[], violation of the Armijo condition (0: met)


@stores_objective
class ScaleByBacktrackingLinesearchState(NamedTuple):
    """State of :func:`scale_by_backtracking_linesearch`."""

    learning_rate: jax.Array  # float[], the stepsize applied to the last updates
    last_stepsize: jax.Array  # float[], the last stepsize tried: the next guess grows from it
    value: jax.Array  # float[], the objective at the parameters the last update leads to
    grad: Updates | None  # its gradient (params' dtypes) with store_grad, else None
    info: BacktrackingLinesearchInfo
    hparams: Hyperparams


def scale_by_backtracking_linesearch(
    max_backtracking_steps: int,
    slope_rtol: float = 1e-4,
    decrease_factor: float = 0.8,
    increase_factor: float = 1.5,
    max_learning_rate: float = 1.0,
    atol: float = 0.0,
    rtol: float = 0.0,
    store_grad: bool = False,
    verbose: bool = False,
) -> GradientTransformationExtraArgs:
    r"""Scales updates by a stepsize meeting the Armijo sufficient-decrease condition.

    The stepsize :math:`\eta` starts at ``min(increase_factor * previous,
    max_learning_rate)`` and is multiplied by ``decrease_factor`` until

    .. math::
      f(w + \eta u) \le (1 + \delta) f(w) + c\, \eta \langle u, \nabla f(w)\rangle
      + \epsilon,

    with :math:`c` = ``slope_rtol``, :math:`\delta` = ``rtol`` and
    :math:`\epsilon` = ``atol``, or ``max_backtracking_steps`` reductions have
    been tried (so at most ``max_backtracking_steps + 1`` evaluations, as in
    Optax). :math:`u` must be a descent direction (:math:`\langle u, \nabla
    f(w)\rangle < 0`), e.g. the output of ``sgd``.

    Differences from Optax 0.2.8, which in these cases gets stuck: where every
    stepsize tried gives a NaN or infinite objective, both libraries make no
    step, but Optax then starts every later search at ``increase_factor * 0 =
    0`` and never moves again, and stores the NaN value; here the next search
    grows from the last stepsize tried, and the state keeps the value (and
    gradient) at the unchanged parameters. With ``store_grad`` the gradient is
    computed once, at the accepted point, after the search.

    Args:
      max_backtracking_steps: how many times the stepsize may be reduced, > 0.
      slope_rtol: :math:`c` in [0, 1).
      decrease_factor: the factor reducing the stepsize, in [0, 1).
      increase_factor: the factor growing the previous stepsize into the next
        first guess, in [1, inf) (Optax's ``math.inf`` is refused: pass a large
        finite factor to start every search at ``max_learning_rate``).
      max_learning_rate: the largest stepsize tried, > 0.
      atol: :math:`\epsilon`, >= 0.
      rtol: :math:`\delta`, >= 0.
      store_grad: also compute and store the gradient at the accepted point,
        for :func:`value_and_grad_from_state`.
      verbose: print a diagnosis (with ``jax.debug.print``) when a search fails.

    Returns:
      A GradientTransformationExtraArgs whose state is a
      ScaleByBacktrackingLinesearchState; its update takes ``value``, ``grad``
      and ``value_fn`` keyword arguments, and passes other keyword arguments to
      ``value_fn``.

    Raises:
      ValueError: for a hyperparameter out of range, or (while tracing) when
        ``params``, ``value``, ``grad`` or ``value_fn`` is missing or does not
        fit the parameters.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> f = lambda w: jnp.sum((w - 1.0) ** 2)
      >>> tx = gc.chain(gc.sgd(1.0), gc.scale_by_backtracking_linesearch(15))
      >>> w = jnp.zeros(2)
      >>> state = tx.init(w)
      >>> for _ in range(3):
      ...     value, grad = jax.value_and_grad(f)(w)
      ...     u, state = tx.update(grad, state, w, value=value, grad=grad, value_fn=f)
      ...     w = gc.apply_updates(w, u)
      >>> round(float(f(w)), 4)  # 2.0 at the start; Optax gives the same
      0.0933

    References:
      Armijo, Minimization of functions having Lipschitz continuous first
      partial derivatives, Pacific J. Math. 16(1), 1966.
      Nocedal and Wright, Numerical Optimization, 2nd ed., 2006, Alg. 3.1.
    """
    fn = "scale_by_backtracking_linesearch"
    _check.positive_int(fn, "max_backtracking_steps", max_backtracking_steps)
    _check.decay_rate(fn, "slope_rtol", slope_rtol)
    _check.decay_rate(fn, "decrease_factor", decrease_factor)
    _check.in_range(
        fn,
        "increase_factor",
        increase_factor,
        1.0,
        float("inf"),
        hi_open=True,
        hint="To start every search at max_learning_rate, pass a large finite factor (1e30).",
    )
    _check.positive(fn, "max_learning_rate", max_learning_rate)
    _check.non_negative(fn, "atol", atol)
    _check.non_negative(fn, "rtol", rtol)
    spec = HyperparamSpec(
        fn,
        dict(
            slope_rtol=slope_rtol,
            decrease_factor=decrease_factor,
            increase_factor=increase_factor,
            max_learning_rate=max_learning_rate,
            atol=atol,
            rtol=rtol,
        ),
    )

    def init_fn(params: Params) -> ScaleByBacktrackingLinesearchState:
        dt = float_dtype(params)
        return ScaleByBacktrackingLinesearchState(
            learning_rate=jnp.ones([], dt),
            last_stepsize=jnp.ones([], dt),
            value=jnp.full([], jnp.inf, dt),
            grad=_tree.zeros_like(params) if store_grad else None,
            info=BacktrackingLinesearchInfo(jnp.zeros([], jnp.int32), jnp.full([], jnp.inf, dt)),
            hparams=spec.init(),
        )

    def update_fn(
        updates: Updates,
        state: ScaleByBacktrackingLinesearchState,
        params: Params | None = None,
        **extra_args: Any,
    ) -> tuple[Updates, ScaleByBacktrackingLinesearchState]:
        _tree.check_state(fn, state, ScaleByBacktrackingLinesearchState)
        value, grad, value_fn, kw = check_objective(fn, updates, params, extra_args)
        if store_grad:
            _tree.check_matches(fn, updates, "state.grad", state.grad)
        run = compiled_or_eager(search, compiled_search, kw, value_fn)
        return run(updates, state, params, value, grad, kw, value_fn)

    def search(
        updates: Updates,
        state: ScaleByBacktrackingLinesearchState,
        params: Params,
        value: jax.Array,
        grad: Updates,
        kw: dict[str, Any],
        value_fn: Callable[..., Any],
    ) -> tuple[Updates, ScaleByBacktrackingLinesearchState]:
        hp = values(state.hparams)
        dt = state.value.dtype
        value = value.real.astype(dt)
        slope = inner(updates, grad, dt)

        def objective(stepsize: jax.Array) -> jax.Array:
            return scalar_value(fn, value_fn(along(params, stepsize, updates), **kw), dt)

        def decrease_error(stepsize: jax.Array, new_value: jax.Array) -> jax.Array:
            bound = (1 + hp["rtol"]) * value + stepsize * hp["slope_rtol"] * slope
            return nan_to_inf(new_value - bound)

        def searching(carry: tuple[jax.Array, ...]) -> jax.Array:
            _, _, error, tries = carry
            return ~(error <= hp["atol"]) & (tries <= max_backtracking_steps)

        def backtrack(carry: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
            stepsize, _, _, tries = carry
            stepsize = jnp.where(tries > 0, hp["decrease_factor"] * stepsize, stepsize)
            new_value = objective(stepsize)
            return stepsize, new_value, decrease_error(stepsize, new_value), tries + 1

        guess = jnp.minimum(hp["increase_factor"] * state.last_stepsize, hp["max_learning_rate"])
        start = (guess.astype(dt), value, jnp.full([], jnp.inf, dt), jnp.zeros([], jnp.int32))
        stepsize, new_value, error, tries = jax.lax.while_loop(searching, backtrack, start)
        outside = jnp.isinf(error)  # every stepsize tried gave NaN or inf: do not move
        applied = jnp.where(outside, jnp.zeros([], dt), stepsize)
        new_value = jnp.where(outside, value, new_value)
        new_grad = None
        if store_grad:
            at = along(params, applied, updates)
            computed = jax.grad(lambda p: scalar_value(fn, value_fn(p, **kw), dt))(at)
            new_grad = cast_like(computed, state.grad)
        if verbose:
            jax.lax.cond(
                error > hp["atol"],
                lambda: jax.debug.print(
                    fn + ": no stepsize met the sufficient-decrease condition. value={v}, "
                    "slope={s} (must be < 0), last stepsize={t}, decrease error={e}; "
                    "a stepsize of 0 is used when the error is inf.",
                    v=value,
                    s=slope,
                    t=stepsize,
                    e=error,
                ),
                lambda: None,
            )
        info = BacktrackingLinesearchInfo(tries, error)
        new_state = ScaleByBacktrackingLinesearchState(
            applied, stepsize, new_value, new_grad, info, state.hparams
        )
        return scale_tree(applied, updates), new_state

    compiled_search = jax.jit(search, static_argnums=6)  # value_fn static
    return GradientTransformationExtraArgs(init_fn, update_fn)


# ------------------------------------------------------------------ reuse the objective


def _find_objective_state(state: Any) -> Any:
    found = [
        node
        for node in jax.tree.leaves(
            state, is_leaf=lambda x: isinstance(x, tuple(_STORES_OBJECTIVE))
        )
        if isinstance(node, tuple(_STORES_OBJECTIVE))
    ]
    if len(found) != 1:
        raise ValueError(
            f"value_and_grad_from_state: the state must hold exactly one line search's state "
            f"(scale_by_zoom_linesearch, or scale_by_backtracking_linesearch with "
            f"store_grad=True); it holds {len(found)}. Pass the whole optimizer state as "
            f"`state=`, from an optimizer chained with one line search."
        )
    if found[0].grad is None:
        raise ValueError(
            "value_and_grad_from_state: the line search in this state does not store the "
            "gradient. Build it with `scale_by_backtracking_linesearch(..., store_grad=True)`."
        )
    return found[0]


def value_and_grad_from_state(
    value_fn: Callable[..., Any],
) -> Callable[..., tuple[jax.Array, Updates]]:
    """Like ``jax.value_and_grad(value_fn)``, but reuses what a line search stored.

    A line search evaluates the objective and its gradient at the point it
    accepts; these are the value and gradient at the next parameters. The
    returned function reads them from the optimizer state (``state=``), and
    computes them with ``jax.value_and_grad`` only when the stored value is
    NaN or infinite (as in the first iteration).

    Args:
      value_fn: the objective, a function of the parameters (and of any other
        arguments) returning a scalar.

    Returns:
      A function ``(params, *args, state, **kwargs) -> (value, grad)``.

    Raises:
      ValueError: (when called) if the state holds no line search that stores
        the gradient, or more than one, or if the stored gradient does not fit
        the parameters.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> f = lambda w: jnp.sum(w ** 2)
      >>> tx = gc.chain(gc.sgd(1.0), gc.scale_by_backtracking_linesearch(15, store_grad=True))
      >>> value_and_grad = gc.value_and_grad_from_state(f)
      >>> w = jnp.array([1.0, 2.0])
      >>> state = tx.init(w)
      >>> for _ in range(3):
      ...     value, grad = value_and_grad(w, state=state)
      ...     u, state = tx.update(grad, state, w, value=value, grad=grad, value_fn=f)
      ...     w = gc.apply_updates(w, u)
      >>> round(float(f(w)), 3)  # 5.0 at the start
      0.233
    """
    fn = "value_and_grad_from_state"

    def value_and_grad(
        params: Params, *args: Any, state: Any, **kwargs: Any
    ) -> tuple[jax.Array, Updates]:
        stored = _find_objective_state(state)
        _tree.check_same_structure(fn, "params", params, "the stored grad", stored.grad)
        _tree.check_same_shapes(fn, "params", params, "the stored grad", stored.grad)

        def compute() -> tuple[jax.Array, Updates]:
            value, grad = jax.value_and_grad(value_fn)(params, *args, **kwargs)
            return scalar_value(fn, value, stored.value.dtype), cast_like(grad, stored.grad)

        def reuse() -> tuple[jax.Array, Updates]:
            return stored.value, stored.grad

        return jax.lax.cond(jnp.isfinite(stored.value), reuse, compute)

    return value_and_grad
