"""The line searches: backtracking (Armijo) and zoom (strong Wolfe), and value_and_grad_from_state.

References: Armijo, Pacific J. Math. 16(1), 1966 (the sufficient-decrease condition);
Nocedal and Wright, Numerical Optimization, 2nd ed., 2006, Alg. 3.1 (backtracking)
and Alg. 3.5/3.6 (bracketing and zoom); Hager and Zhang, ACM TOMS 32(1), 2006, eq. (23)
(the approximate decrease condition).

Parity with Optax 0.2.8 is bit-for-bit at the time of writing (the zoom's cubic step
solves its 2x2 system as a matrix product, as Optax does, so it rounds alike); the bound
RTOL = 1e-6 leaves room for an FMA.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradchain as gc
from tests.ranges import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, RATE
from tests.registry import with_objective

RTOL = 1e-6
STEPS = 60

_BT, _ZOOM = "scale_by_backtracking_linesearch", "scale_by_zoom_linesearch"
HYPERPARAMETERS: list[tuple[str, str, str, str]] = [
    (_BT, "slope_rtol", RATE, _BT),
    (_BT, "decrease_factor", RATE, _BT),
    (_BT, "increase_factor", AT_LEAST_ONE, _BT),
    (_BT, "max_learning_rate", POSITIVE, _BT),
    (_BT, "atol", NON_NEGATIVE, _BT),
    (_BT, "rtol", NON_NEGATIVE, _BT),
    (_ZOOM, "max_learning_rate", POSITIVE, _ZOOM),
    (_ZOOM, "tol", NON_NEGATIVE, _ZOOM),
    (_ZOOM, "increase_factor", AT_LEAST_ONE, _ZOOM),
    (_ZOOM, "slope_rtol", RATE, _ZOOM),
    (_ZOOM, "curv_rtol", NON_NEGATIVE, _ZOOM),
    (_ZOOM, "approx_dec_rtol", NON_NEGATIVE, _ZOOM),
    (_ZOOM, "stepsize_precision", NON_NEGATIVE, _ZOOM),
]
FACTORIES: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {
    _BT: (
        lambda **kw: with_objective(gc.scale_by_backtracking_linesearch(**kw)),
        {"max_backtracking_steps": 3},
    ),
    _ZOOM: (
        lambda **kw: with_objective(gc.scale_by_zoom_linesearch(**kw)),
        {"max_linesearch_steps": 3},
    ),
}
OPTAX_PARITY_NAMES = frozenset({_BT, _ZOOM, "value_and_grad_from_state"})


def _problem(seed: int = 0) -> tuple[Any, Callable[[Any], jax.Array]]:
    """Float32 params (a matrix, a vector, a scalar) and an ill-conditioned quartic objective."""
    rng = np.random.default_rng(seed)
    params = {
        "w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
        "b": jnp.asarray(rng.normal(size=(3,)), jnp.float32),
        "s": jnp.asarray(rng.normal(), jnp.float32),
    }
    scales = {
        k: jnp.asarray(rng.uniform(0.5, 20.0, size=v.shape), jnp.float32) for k, v in params.items()
    }

    def f(p: Any) -> jax.Array:
        terms = [jnp.sum(scales[k] * (p[k] - 0.5) ** 2 + 0.1 * p[k] ** 4) for k in sorted(p)]
        return sum(terms, jnp.float32(0.0))

    return params, f


def _run(lib: Any, make: Callable[[Any], Any], f: Callable[[Any], jax.Array], params: Any) -> Any:
    """STEPS iterations under lax.scan, objective reused from the state: (values, updates, lrs)."""
    tx = make(lib)
    value_and_grad = lib.value_and_grad_from_state(f)

    def step(carry: Any, _: Any) -> Any:
        p, state = carry
        value, grad = value_and_grad(p, state=state)
        u, state = tx.update(grad, state, p, value=value, grad=grad, value_fn=f)
        return (lib.apply_updates(p, u), state), (value, u, state[-1].learning_rate)

    return jax.lax.scan(step, (params, tx.init(params)), length=STEPS)[1]


def _both(make: Callable[[Any], Any], seed: int = 0) -> tuple[Any, Any]:
    params, f = _problem(seed)
    got = jax.jit(lambda: _run(gc, make, f, params))()
    with jax.numpy_dtype_promotion("standard"):
        want = jax.jit(lambda: _run(optax, make, f, params))()
    return got, want


PARITY: dict[str, Callable[[Any], Any]] = {
    "backtracking": lambda lib: lib.chain(
        lib.sgd(1.0), lib.scale_by_backtracking_linesearch(20, store_grad=True)
    ),
    "backtracking_tolerances": lambda lib: lib.chain(
        lib.sgd(0.5),
        lib.scale_by_backtracking_linesearch(
            8,
            slope_rtol=0.3,
            decrease_factor=0.5,
            increase_factor=3.0,
            max_learning_rate=0.2,
            atol=1e-4,
            rtol=1e-5,
            store_grad=True,
        ),
    ),
    "zoom_keep": lambda lib: lib.chain(lib.sgd(1.0), lib.scale_by_zoom_linesearch(20)),
    "zoom_one_bounded": lambda lib: lib.chain(
        lib.sgd(1.0),
        lib.scale_by_zoom_linesearch(
            12,
            max_learning_rate=0.05,
            curv_rtol=0.5,
            approx_dec_rtol=None,
            initial_guess_strategy="one",
        ),
    ),
}


@pytest.mark.parametrize("make", PARITY.values(), ids=PARITY.keys())
def test_line_searches_match_optax_step_for_step_under_scan(make: Callable[[Any], Any]) -> None:
    (values, updates, lrs), (want_values, want_updates, want_lrs) = _both(make)
    np.testing.assert_allclose(lrs, want_lrs, rtol=RTOL)
    np.testing.assert_allclose(values, want_values, rtol=RTOL)
    for got, want in zip(jax.tree.leaves(updates), jax.tree.leaves(want_updates), strict=True):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-7 * float(np.max(np.abs(want))))
    assert float(values[-1]) < 0.5 * float(values[0])  # the runs do descend


# NumPy float64 references of the paper's equations.


def _jitted(tx: Any, f: Callable[..., jax.Array]) -> Callable[..., Any]:
    """``tx.update`` with the objective ``f``, jitted: (updates, state, params, value, grad)."""

    def update(u: Any, state: Any, p: Any, value: jax.Array, grad: Any) -> Any:
        return tx.update(u, state, p, value=value, grad=grad, value_fn=f)

    return jax.jit(update)


def _armijo_reference(
    f: Callable[[np.ndarray], float], w: np.ndarray, u: np.ndarray, g: np.ndarray, guess: float,
    c: float, shrink: float, max_steps: int,
) -> float:  # fmt: skip
    """Alg. 3.1 of Nocedal and Wright: shrink until f(w + t u) <= f(w) + c t <u, g>."""
    t, slope = guess, float(u @ g)
    for _ in range(max_steps):
        if f(w + t * u) <= f(w) + c * t * slope:
            return t
        t *= shrink
    return t


def test_backtracking_accepts_the_stepsize_of_a_float64_armijo_loop() -> None:
    a = np.array([1.0, 30.0, 200.0])

    def f64(w: np.ndarray) -> float:
        return float(0.5 * np.sum(a * w**2) + 0.25 * np.sum(w**4))

    def f32(w: jax.Array) -> jax.Array:
        return 0.5 * jnp.sum(jnp.asarray(a, jnp.float32) * w**2) + 0.25 * jnp.sum(w**4)

    tx = gc.scale_by_backtracking_linesearch(30, slope_rtol=0.2, decrease_factor=0.5)
    update = _jitted(tx, f32)
    w = np.array([1.0, -0.5, 0.25])
    state = tx.init(jnp.asarray(w, jnp.float32))
    previous = 1.0
    for _ in range(6):
        g = a * w + w**3
        w32 = jnp.asarray(w, jnp.float32)
        value, grad = jax.value_and_grad(f32)(w32)
        _, state = update(-grad, state, w32, value, grad)
        want = _armijo_reference(f64, w, -g, g, min(1.5 * previous, 1.0), 0.2, 0.5, 31)
        assert float(state.learning_rate) == pytest.approx(want, rel=1e-6)
        assert f64(w - want * g) <= f64(w) - 0.2 * want * float(g @ g)  # the condition holds
        previous = want
        w = w - want * g


def test_zoom_returns_a_stepsize_meeting_both_strong_wolfe_conditions_in_float64() -> None:
    a = np.array([1.0, 30.0, 200.0])

    def f32(w: jax.Array) -> jax.Array:
        return 0.5 * jnp.sum(jnp.asarray(a, jnp.float32) * w**2) + 0.25 * jnp.sum(w**4)

    c1, c2 = 1e-4, 0.4
    tx = gc.scale_by_zoom_linesearch(30, slope_rtol=c1, curv_rtol=c2, approx_dec_rtol=None)
    update = _jitted(tx, f32)
    w = np.array([1.0, -0.5, 0.25])
    state = tx.init(jnp.asarray(w, jnp.float32))
    for _ in range(5):
        g = a * w + w**3
        w32 = jnp.asarray(w, jnp.float32)
        value, grad = jax.value_and_grad(f32)(w32)
        _, state = update(-grad, state, w32, value, grad)
        t = float(state.learning_rate)
        new = w - t * g
        f0, f1 = (
            0.5 * np.sum(a * w**2) + 0.25 * np.sum(w**4),
            0.5 * np.sum(a * new**2) + 0.25 * np.sum(new**4),
        )
        assert f1 <= f0 - c1 * t * (g @ g) + 1e-6 * f0  # sufficient decrease (float32 slack)
        assert abs((a * new + new**3) @ -g) <= c2 * (g @ g) * (1 + 1e-4)  # strong curvature
        assert int(state.info.num_linesearch_steps) <= 30
        w = new


# Where Optax 0.2.8 gets stuck.


def _domain(w: jax.Array) -> jax.Array:
    """sum(w**2), NaN outside |w| <= 2."""
    return jnp.where(jnp.max(jnp.abs(w)) <= 2.0, jnp.sum(w**2), jnp.nan)


def _two_searches(lib: Any, tx: Any) -> list[float]:
    """The stepsizes of two searches; the first direction leaves the domain at every try."""
    w = jnp.array([1.0, 1.0])
    state, update = tx.init(w), _jitted(tx, _domain)
    out = []
    for direction in (jnp.array([-100.0, -100.0]), jnp.array([-0.5, -0.5])):
        value, grad = jax.value_and_grad(_domain)(w)
        u, state = update(direction, state, w, value, grad)
        w = lib.apply_updates(w, u)
        out.append(float(u[0] / direction[0]))
    return out


def test_backtracking_recovers_after_a_direction_outside_the_domain_where_optax_stays_at_zero():
    def make(lib: Any) -> Any:
        return lib.scale_by_backtracking_linesearch(3, store_grad=True)

    with jax.numpy_dtype_promotion("standard"):
        assert _two_searches(optax, make(optax)) == [0.0, 0.0]  # stuck: 1.5 * 0 = 0 forever
    first, second = _two_searches(gc, make(gc))
    assert first == 0.0 and second > 0.5  # grows again from the last stepsize tried
    # and the state holds the objective at the unchanged point, not NaN
    tx = make(gc)
    w = jnp.array([1.0, 1.0])
    value, grad = jax.value_and_grad(_domain)(w)
    _, state = _jitted(tx, _domain)(jnp.array([-100.0, -100.0]), tx.init(w), w, value, grad)
    assert float(state.value) == 2.0
    np.testing.assert_array_equal(state.grad, grad)


def test_zoom_keep_restarts_at_one_after_a_zero_step_where_optax_stays_at_zero() -> None:
    def make(lib: Any) -> Any:
        return lib.scale_by_zoom_linesearch(3, initial_guess_strategy="keep")

    with jax.numpy_dtype_promotion("standard"):
        assert _two_searches(optax, make(optax))[1] == 0.0
    first, second = _two_searches(gc, make(gc))
    assert first == 0.0 and second > 0.5


# The objective: extra arguments, hyperparameters as state, dtypes.


def test_extra_keyword_arguments_reach_value_fn() -> None:
    def f(w: jax.Array, target: jax.Array) -> jax.Array:
        return jnp.sum((w - target) ** 2)

    for tx in (gc.scale_by_zoom_linesearch(10), gc.scale_by_backtracking_linesearch(10)):
        w, target = jnp.zeros(2), jnp.array([1.0, -1.0])
        value, grad = jax.value_and_grad(f)(w, target)
        u, _ = tx.update(-grad, tx.init(w), w, value=value, grad=grad, value_fn=f, target=target)
        assert float(f(w + u, target)) < 0.5 * float(value)


def test_a_python_flag_for_value_fn_stays_a_python_value() -> None:
    def f(w: jax.Array, train: bool) -> jax.Array:
        return jnp.sum(w**2) * (1.0 if train else 2.0)  # a Python branch on the flag

    tx = gc.scale_by_zoom_linesearch(10)
    w = jnp.ones(2)
    value, grad = jax.value_and_grad(f)(w, True)
    u, _ = tx.update(-grad, tx.init(w), w, value=value, grad=grad, value_fn=f, train=True)
    assert float(f(w + u, True)) < 0.5 * float(value)


def test_hyperparameters_are_state_and_set_hyperparams_changes_the_search() -> None:
    tx = gc.scale_by_backtracking_linesearch(10, max_learning_rate=1.0)
    f = lambda w: jnp.sum(w**2)  # noqa: E731
    w = jnp.array([1.0])
    state = tx.init(w)
    assert sorted(gc.get_hyperparams(state)) == [
        "atol", "decrease_factor", "increase_factor", "max_learning_rate", "rtol", "slope_rtol",
    ]  # fmt: skip
    state = gc.set_hyperparams(state, max_learning_rate=0.125)
    value, grad = jax.value_and_grad(f)(w)
    _, state = jax.jit(lambda s: tx.update(-grad, s, w, value=value, grad=grad, value_fn=f))(state)
    assert float(state.learning_rate) == 0.125
    zoom = gc.scale_by_zoom_linesearch(5, max_learning_rate=2.0, approx_dec_rtol=None)
    assert "approx_dec_rtol" not in gc.get_hyperparams(zoom.init(w))
    assert float(gc.get_hyperparams(zoom.init(w))["max_learning_rate"]) == 2.0


@pytest.mark.parametrize("make", [
    lambda: gc.scale_by_zoom_linesearch(10),
    lambda: gc.scale_by_backtracking_linesearch(10, store_grad=True),
], ids=["zoom", "backtracking"])  # fmt: skip
def test_low_precision_params_keep_their_dtype_and_values_are_float32(make: Any) -> None:
    tx = make()
    w = jnp.array([1.0, -2.0], jnp.bfloat16)
    f = lambda p: jnp.sum(p.astype(jnp.float32) ** 2)  # noqa: E731
    value, grad = jax.value_and_grad(f)(w)
    state = tx.init(w)
    u, new_state = tx.update(-grad.astype(jnp.float32), state, w, value=value, grad=grad,
                             value_fn=f)  # fmt: skip
    assert u.dtype == jnp.float32 and new_state.grad.dtype == jnp.bfloat16
    assert new_state.value.dtype == jnp.float32
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    assert float(f(gc.apply_updates(w, u))) < float(value)


# Errors.

_W = {"a": jnp.ones(2), "b": jnp.ones(3)}
_F = lambda p: sum(jnp.sum(x**2) for x in jax.tree.leaves(p))  # noqa: E731


@pytest.mark.parametrize("make", [
    lambda: gc.scale_by_zoom_linesearch(5),
    lambda: gc.scale_by_backtracking_linesearch(5),
    lambda: gc.lbfgs(),
], ids=["zoom", "backtracking", "lbfgs"])  # fmt: skip
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {},
            r"but `value`, `grad`, `value_fn` are missing\. Call `update\(updates, state, params, ",
        ),
        ({"value": 1.0, "grad": _W}, r"but `value_fn` is missing"),
        ({"value": 1.0, "value_fn": _F}, r"but `grad` is missing"),
    ],
    ids=["nothing", "no_value_fn", "no_grad"],
)
def test_a_missing_objective_raises_while_tracing_naming_the_transform_and_the_call(
    make: Any, kwargs: dict[str, Any], match: str
) -> None:
    tx = make()
    reporter = "scale_by_zoom_linesearch" if "lbfgs" in repr(make) else r"scale_by_\w+_linesearch"
    with pytest.raises(ValueError, match=rf"^{reporter}: update needs the objective .*{match}"):
        jax.jit(lambda: tx.update(_W, tx.init(_W), _W, **kwargs))()


@pytest.mark.parametrize(
    "tx", [gc.scale_by_zoom_linesearch(5), gc.scale_by_backtracking_linesearch(5)]
)
def test_a_grad_of_another_tree_or_a_vector_value_raises_naming_the_path(tx: Any) -> None:
    state = tx.init(_W)
    with pytest.raises(
        ValueError, match=r"the trees `grad` and `params` differ in structure at \['b'\]"
    ):
        tx.update(_W, state, _W, value=1.0, grad={"a": _W["a"]}, value_fn=_F)
    with pytest.raises(
        ValueError, match=r"`grad` and `params` disagree in shape at \['b'\]: \(1,\)"
    ):
        tx.update(_W, state, _W, value=1.0, grad={**_W, "b": jnp.ones(1)}, value_fn=_F)
    with pytest.raises(ValueError, match=r"`value` must be a scalar.*\(2,\)"):
        tx.update(_W, state, _W, value=jnp.ones(2), grad=_W, value_fn=_F)
    with pytest.raises(
        ValueError, match=r"`value_fn` must return a scalar; it returned shape \(2,\)"
    ):
        tx.update(_W, state, _W, value=1.0, grad=_W, value_fn=lambda p: p["a"])
    with pytest.raises(
        TypeError, match=r"keyword arguments that `value_fn` does not accept: \['batch'\]"
    ):
        tx.update(_W, state, _W, value=1.0, grad=_W, value_fn=_F, batch=1)


def test_value_and_grad_from_state_says_what_state_it_needs() -> None:
    vg = gc.value_and_grad_from_state(_F)
    with pytest.raises(
        ValueError, match=r"^value_and_grad_from_state: .*exactly one line search.* holds 0"
    ):
        vg(_W, state=gc.adam(0.1).init(_W))
    with pytest.raises(
        ValueError, match=r"does not store the gradient\. Build it with .*store_grad=True"
    ):
        vg(_W, state=gc.scale_by_backtracking_linesearch(5).init(_W))
    two = gc.chain(gc.scale_by_zoom_linesearch(5), gc.scale_by_zoom_linesearch(5))
    with pytest.raises(ValueError, match=r"holds 2"):
        vg(_W, state=two.init(_W))
    with pytest.raises(ValueError, match=r"differ in structure at \['b'\]"):
        vg({"a": _W["a"]}, state=gc.scale_by_zoom_linesearch(5).init(_W))


def test_an_unknown_initial_guess_strategy_and_a_bad_step_count_raise_at_construction() -> None:
    with pytest.raises(
        ValueError,
        match=r"^scale_by_zoom_linesearch: `initial_guess_strategy` must be one of "
        r"\['one', 'keep'\]; got 'two'",
    ):
        gc.scale_by_zoom_linesearch(5, initial_guess_strategy="two")
    with pytest.raises(
        ValueError,
        match=r"^scale_by_backtracking_linesearch: `max_backtracking_steps` must be > 0; got 0",
    ):
        gc.scale_by_backtracking_linesearch(0)
    with pytest.raises(
        ValueError,
        match=r"`increase_factor` must be in \[1, inf\); got inf\. To start every search",
    ):
        gc.scale_by_backtracking_linesearch(5, increase_factor=math.inf)
