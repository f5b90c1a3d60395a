"""Polyak step sizes, optimistic gradients, DoG and DoWG against Optax 0.2.8 and their papers.

Also two test functions, and the defects of Optax's versions that gradchain does not share.

1. Optax parity. Each transform and alias runs 100 steps of the same random float32
   gradients (and, for Polyak, objective values) on a dict of a matrix, a vector and a
   one-element leaf, under ``jit`` and ``lax.scan``; updates at every step and the final
   parameters agree within ``RTOL``. ``polyak_sgd`` is compared at ``scaling=1`` only:
   with another scaling Optax's step is not the one its documentation states (pinned below).
2. The papers. Each against a float64 NumPy loop of its paper's equations.
3. Two test functions. Every alias minimizes a parabola and the Rosenbrock function in
   float32 (and a complex64 parabola) within a fixed number of steps, inside ``lax.scan``.
4. What Optax 0.2.8 gets wrong, measured by running it: ``polyak_sgd``'s ``scaling``
   divides the step; its Polyak step stalls on an objective of small scale; LDoG turns a
   scalar leaf's update into shape ``(1,)``; DoG's sums are kept in bfloat16 for bfloat16
   parameters; none of the three DoG ``init`` functions takes ``jax.ShapeDtypeStruct``.
5. Errors: a missing or non-scalar ``value``, bad ``variant`` and ``init_step``, DoG
   without ``params``; the hyperparameter tables for tests/test_errors.py.

Optax mixes int32 counts with Python floats, which strict promotion refuses, so every
Optax call runs under ``jax.numpy_dtype_promotion("standard")`` (and its LDoG, which
broadcasts a ``(1,)`` step size into every leaf, under ``jax.numpy_rank_promotion("allow")``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax import contrib

import gradchain as gc
from tests.ranges import FINITE, NON_NEGATIVE, POSITIVE, RATE
from tests.registry import with_objective

STEPS = 100
# Measured: bit-identical for scale_by_polyak, optimistic_adam_v2 and dowg; within 1e-6
# relative elsewhere (another order of the same float32 operations: Optax flips the sign
# before the Polyak scaling, adds alpha + beta in float64, fuses differently).
RTOL = 1e-6
ATOL_FRACTION = 1e-7  # times the leaf's largest value: what stands in for 0


def _problem(seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
    """Float32 params, STEPS stacked gradients and STEPS objective values in [0.2, 2]."""
    rng = np.random.default_rng(seed)
    shapes = {"b": (3,), "s": (1,), "w": (4, 3)}
    params = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    grads = {k: rng.normal(size=(STEPS, *s)).astype(np.float32) for k, s in shapes.items()}
    grads["s"] *= np.float32(10.0)  # a large-scale leaf
    values = rng.uniform(0.2, 2.0, size=STEPS).astype(np.float32)
    return params, grads, values


PARAMS, GRADS, VALUES = _problem(11)


def _trajectory(lib: Any, tx: Any, params: Any, grads: Any, values: Any) -> tuple[Any, Any]:
    tx = lib.with_extra_args_support(tx)

    def step(carry: tuple[Any, Any], xs: tuple[Any, Any]) -> tuple[tuple[Any, Any], Any]:
        (params, state), (g, v) = carry, xs
        updates, state = tx.update(g, state, params, value=v)
        return (lib.apply_updates(params, updates), state), updates

    (params, _), updates = jax.lax.scan(step, (params, tx.init(params)), (grads, values))
    return updates, params


def _run(tx: Any) -> tuple[Any, Any]:
    return jax.jit(lambda p, g, v: _trajectory(gc, tx, p, g, v))(PARAMS, GRADS, VALUES)


def _run_both(tx: Any, optax_tx: Any) -> tuple[Any, Any]:
    """The runs by gradchain and by Optax, jitted together (one compilation)."""

    @jax.jit
    def run(params: Any, grads: Any, values: Any) -> tuple[Any, Any]:
        got = _trajectory(gc, tx, params, grads, values)
        # Optax's LDoG multiplies a (1,) step size into each leaf: a rank promotion.
        with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
            want = _trajectory(optax, optax_tx, params, grads, values)
        return got, want

    return run(PARAMS, GRADS, VALUES)


def _assert_close(got: Any, want: Any, rtol: float) -> None:
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert (g.shape, g.dtype) == (w.shape, w.dtype)
        atol = ATOL_FRACTION * float(np.max(np.abs(w), initial=0.0))
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)


# --- 1. Optax parity ---------------------------------------------------------------------

Make = Callable[[Any], Any]
PARITY: list[tuple[str, Make, Make, float]] = [
    ("scale_by_polyak", lambda m: m.scale_by_polyak(), lambda m: m.scale_by_polyak(), RTOL),
    (
        "scale_by_polyak-sps+_capped",
        lambda m: m.scale_by_polyak(0.5, 0.02, 1e-3, "sps+"),
        lambda m: m.scale_by_polyak(0.5, 0.02, 1e-3, "sps+"),
        RTOL,
    ),
    ("polyak_sgd", lambda m: m.polyak_sgd(), lambda m: m.polyak_sgd(), RTOL),
    (
        "polyak_sgd-sps+",
        lambda m: m.polyak_sgd(0.05, f_min=0.5, eps=1e-2, variant="sps+"),
        lambda m: m.polyak_sgd(0.05, f_min=0.5, eps=1e-2, variant="sps+"),
        RTOL,
    ),
    (
        "scale_by_optimistic_gradient",
        lambda m: m.scale_by_optimistic_gradient(),
        lambda m: m.scale_by_optimistic_gradient(),
        RTOL,
    ),
    (
        "scale_by_optimistic_gradient-alpha_beta",
        lambda m: m.scale_by_optimistic_gradient(0.5, 0.25),
        lambda m: m.scale_by_optimistic_gradient(0.5, 0.25),
        RTOL,
    ),
    (
        "optimistic_gradient_descent",
        lambda m: m.optimistic_gradient_descent(0.05, 0.5, 2.0),
        lambda m: m.optimistic_gradient_descent(0.05, 0.5, 2.0),
        RTOL,
    ),
    (
        "optimistic_adam_v2",
        lambda m: m.optimistic_adam_v2(1e-2, alpha=0.5, beta=0.25, b2=0.99),
        lambda m: m.optimistic_adam_v2(1e-2, alpha=0.5, beta=0.25, b2=0.99),
        RTOL,
    ),
    (
        "optimistic_adam_v2-plain",
        lambda m: m.optimistic_adam_v2(1e-2, nesterov=False),
        lambda m: m.optimistic_adam_v2(1e-2, nesterov=False),
        RTOL,
    ),
    (
        "scale_by_distance_over_gradients",
        lambda m: m.chain(m.scale_by_distance_over_gradients(1e-2), m.scale(-1.0)),
        lambda m: m.chain(m.scale_by_distance_over_gradients(1e-2), m.scale(-1.0)),
        RTOL,
    ),
    (
        "scale_by_distance_over_gradients-global_scale",
        lambda m: m.scale_by_distance_over_gradients(1e-3, 1e-4, global_scale=-0.5),
        lambda m: m.scale_by_distance_over_gradients(1e-3, 1e-4, global_scale=-0.5),
        RTOL,
    ),
    ("dog", lambda m: m.dog(), lambda m: contrib.dog(), RTOL),
    (
        "dog-distance_decay",
        lambda m: m.dog(0.5, ("distance", 1e-2), weight_decay=0.1),
        lambda m: contrib.dog(0.5, ("distance", 1e-2), weight_decay=0.1),
        RTOL,
    ),
    (
        "dog-learning_rate",
        lambda m: m.dog(init_step=("learning_rate", 1e-3)),
        lambda m: contrib.dog(init_step=("learning_rate", 1e-3)),
        RTOL,
    ),
    ("dowg", lambda m: m.dowg(), lambda m: contrib.dowg(), RTOL),
    (
        "dowg-guess_decay",
        lambda m: m.dowg(0.5, 1e-2, 1e-6, weight_decay=0.1),
        lambda m: contrib.dowg(0.5, 1e-2, 1e-6, weight_decay=0.1),
        RTOL,
    ),
]


@pytest.mark.parametrize(
    ("make", "make_optax", "rtol"), [pytest.param(*p[1:], id=p[0]) for p in PARITY]
)
def test_updates_and_params_match_optax_over_100_steps(
    make: Make, make_optax: Make, rtol: float
) -> None:
    got, want = _run_both(make(gc), make_optax(optax))
    _assert_close(got, want, rtol)
    # A case whose updates were all zero would agree with anything.
    assert all(float(jnp.max(jnp.abs(u))) > 0 for u in jax.tree.leaves(got[0]))


OPTAX_PARITY_NAMES = frozenset(name.split("-")[0] for name, *_ in PARITY)
"""The names this file compares with Optax (tests/test_optax_parity.py counts them as covered)."""


# --- 2. The papers' equations, in float64 -------------------------------------------------


def _np(tree: Any) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, np.float64) for k, v in tree.items()}


def _sq(tree: dict[str, np.ndarray]) -> float:
    return float(sum(np.sum(v**2) for v in tree.values()))


Ref = Callable[[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray], list[dict[str, Any]]]


def _polyak_ref(f_min: float, max_lr: float, eps: float, plus: bool, scaling: float) -> Ref:
    """Loizou et al. 2021, SPS_max (eq. 5) with c = 1; Garrigos et al. 2023 for SPS+."""

    def ref(x: Any, grads: Any, values: np.ndarray) -> list[dict[str, Any]]:
        del x
        out = []
        for t, v in enumerate(values):
            g = {k: grads[k][t] for k in grads}
            gap = max(v - f_min, 0.0) if plus else v - f_min
            rate = min(gap / (_sq(g) + eps), max_lr)
            out.append({k: -scaling * rate * g[k] for k in g})
        return out

    return ref


def _ogd_ref(lr: float, alpha: float, beta: float) -> Ref:
    """Mokhtari et al. 2019, eq. (7): x+ = x - lr ((alpha + beta) g_t - beta g_{t-1})."""

    def ref(x: Any, grads: Any, values: np.ndarray) -> list[dict[str, Any]]:
        del x, values
        return [
            {k: -lr * ((alpha + beta) * g[t] - beta * g[max(t - 1, 0)]) for k, g in grads.items()}
            for t in range(STEPS)
        ]

    return ref


def _optimistic_adam_ref(lr: float, alpha: float, beta: float, b1: float, b2: float) -> Ref:
    """Daskalakis et al. 2018 on NAdam's direction (Dozat 2016), as optimistic_adam_v2."""

    def ref(x: Any, grads: Any, values: np.ndarray) -> list[dict[str, Any]]:
        del x, values
        out = []
        m = {k: 0.0 * g[0] for k, g in grads.items()}
        v = {k: 0.0 * g[0] for k, g in grads.items()}
        prev: dict[str, Any] = {}
        for t in range(1, STEPS + 1):
            u = {}
            for k, gs in grads.items():
                g = gs[t - 1]
                m[k] = b1 * m[k] + (1 - b1) * g
                v[k] = b2 * v[k] + (1 - b2) * g**2
                m_hat = b1 * m[k] / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)
                r = m_hat / (np.sqrt(v[k] / (1 - b2**t)) + 1e-8)
                u[k] = -lr * ((alpha + beta) * r - beta * prev.get(k, r))
                prev[k] = r
            out.append(u)
        return out

    return ref


def _dog_ref(layerwise: bool, reps_rel: float, eps: float, scale: float) -> Ref:
    """Ivgi et al. 2023, Algorithm 1 (DoG) and section 3.3 (LDoG); x_{t+1} = x_t + u_t."""

    def ref(x: Any, grads: Any, values: np.ndarray) -> list[dict[str, Any]]:
        del values
        x0 = {k: v.copy() for k, v in x.items()}
        groups = [[k] for k in x] if layerwise else [list(x)]
        r_bar = {tuple(ks): reps_rel * (1 + np.sqrt(_sq({k: x0[k] for k in ks}))) for ks in groups}
        total = {tuple(ks): 0.0 for ks in groups}
        out = []
        for t in range(STEPS):
            u = {}
            for ks in map(tuple, groups):
                r_bar[ks] = max(r_bar[ks], np.sqrt(_sq({k: x[k] - x0[k] for k in ks})))
                total[ks] += _sq({k: grads[k][t] for k in ks})
                for k in ks:
                    u[k] = scale * r_bar[ks] / np.sqrt(total[ks] + eps) * grads[k][t]
            x = {k: x[k] + u[k] for k in x}
            out.append(u)
        return out

    return ref


def _dowg_ref(guess: float, eps: float, scale: float) -> Ref:
    """Khaled et al. 2023, Algorithm 1 (DoWG); x_{t+1} = x_t + u_t."""

    def ref(x: Any, grads: Any, values: np.ndarray) -> list[dict[str, Any]]:
        del values
        x0 = {k: v.copy() for k, v in x.items()}
        r2, v_sum, out = guess, 0.0, []
        for t in range(STEPS):
            g = {k: grads[k][t] for k in grads}
            r2 = max(r2, _sq({k: x[k] - x0[k] for k in x}))
            v_sum += r2 * _sq(g)
            u = {k: scale * r2 / (np.sqrt(v_sum) + eps) * g[k] for k in g}
            x = {k: x[k] + u[k] for k in x}
            out.append(u)
        return out

    return ref


REF_RTOL = 1e-5  # float32 roundings of sums over 100 steps, each ~6e-8 relative
REFERENCES: list[tuple[str, Any, Ref]] = [
    ("polyak_sgd", gc.polyak_sgd(0.05, 0.5), _polyak_ref(0.0, 0.05, 0.0, False, 0.5)),
    (
        "polyak_sgd-sps+",
        gc.polyak_sgd(1.0, 2.0, 0.5, 1e-2, "sps+"),
        _polyak_ref(0.5, 1.0, 1e-2, True, 2.0),
    ),
    ("optimistic_gradient_descent", gc.optimistic_gradient_descent(0.05), _ogd_ref(0.05, 1, 1)),
    (
        "optimistic_gradient_descent-alpha_beta",
        gc.optimistic_gradient_descent(0.1, 0.5, 0.25),
        _ogd_ref(0.1, 0.5, 0.25),
    ),
    (
        "optimistic_adam_v2",
        gc.optimistic_adam_v2(1e-2, alpha=0.5, beta=0.25, b2=0.99),
        _optimistic_adam_ref(1e-2, 0.5, 0.25, 0.9, 0.99),
    ),
    (
        "scale_by_distance_over_gradients",
        gc.scale_by_distance_over_gradients(1e-2, 1e-6, None, -1.0),
        _dog_ref(True, 1e-2, 1e-6, -1.0),
    ),
    ("dog", gc.dog(0.5, ("heuristic", 1e-2)), _dog_ref(False, 1e-2, 1e-8, -0.5)),
    ("dowg", gc.dowg(0.5, 1e-2), _dowg_ref(1e-2, 1e-4, -0.5)),
]


@pytest.mark.parametrize(("tx", "ref"), [pytest.param(t, r, id=i) for i, t, r in REFERENCES])
def test_updates_match_the_papers_equations_in_float64(tx: Any, ref: Ref) -> None:
    got, _ = _run(tx)
    want = ref(_np(PARAMS), _np(GRADS), VALUES.astype(np.float64))
    for k in PARAMS:
        want_k = np.stack([u[k] for u in want])
        scale = np.maximum(np.abs(want_k), np.sqrt(np.mean(want_k**2, axis=0)))
        err = np.max(np.abs(np.asarray(got[k], np.float64) - want_k) / scale)
        assert err <= REF_RTOL, f"{k}: off by {err:.2e} relative"


# --- 3. Two test functions, in float32 and complex64, inside lax.scan ---------------------

CONVERGE_STEPS = 20_000
CONVERGE_ATOL = 1e-2  # on every coordinate of the minimizer


def parabola() -> tuple[jax.Array, jax.Array, Callable[[jax.Array], jax.Array]]:
    start, minimum = jnp.array([-1.0, 10.0, 1.0]), jnp.array([1.0, -1.0, 1.0])
    return start, minimum, lambda w: jnp.sum((w - minimum) ** 2)


def rosenbrock() -> tuple[jax.Array, jax.Array, Callable[[jax.Array], jax.Array]]:
    return jnp.zeros(2), jnp.ones(2), lambda w: (1 - w[0]) ** 2 + 100 * (w[1] - w[0] ** 2) ** 2


def complex_parabola() -> tuple[jax.Array, jax.Array, Callable[[jax.Array], jax.Array]]:
    minimum = jnp.array([1 + 2j, -1j, 0.5], jnp.complex64)
    return jnp.zeros(3, jnp.complex64), minimum, lambda w: jnp.sum(jnp.abs(w - minimum) ** 2)


# Optimistic gradient descent is stable on Rosenbrock's valley (curvature ~1000) for
# lr < 2 / (3 * 1000); constant-rate optimistic Adam circles within 1e-2 of the minimum.
CONVERGING: list[tuple[str, Callable[[], Any]]] = [
    ("polyak_sgd", lambda: gc.polyak_sgd()),
    ("optimistic_gradient_descent", lambda: gc.optimistic_gradient_descent(6e-4)),
    ("optimistic_adam_v2", lambda: gc.optimistic_adam_v2(1e-2)),
    ("dog", lambda: gc.dog()),
    ("dowg", lambda: gc.dowg()),
]


@pytest.mark.parametrize("problem", [parabola, rosenbrock, complex_parabola])
@pytest.mark.parametrize("make", [pytest.param(m, id=i) for i, m in CONVERGING])
def test_every_alias_minimizes_a_parabola_and_the_rosenbrock_function(
    make: Callable[[], Any], problem: Callable[[], Any]
) -> None:
    start, minimum, loss = problem()
    tx = make()

    def step(carry: tuple[Any, Any], _: Any) -> tuple[tuple[Any, Any], None]:
        params, state = carry
        value, grad = jax.value_and_grad(loss)(params)
        # JAX's gradient of a real function of complex inputs is the conjugate of the
        # steepest-ascent direction; for real inputs conj is the identity.
        updates, state = tx.update(jnp.conj(grad), state, params, value=value)
        return (gc.apply_updates(params, updates), state), None

    run = jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), None, CONVERGE_STEPS)[0][0])
    final = run(start)
    assert final.dtype == start.dtype
    np.testing.assert_allclose(final, minimum, rtol=0, atol=CONVERGE_ATOL)


# --- 4. What Optax 0.2.8 gets wrong -------------------------------------------------------

X = jnp.array([1.0, 2.0, 3.0])


def _one_step(tx: Any, f: Callable[[jax.Array], jax.Array], lib: Any = gc) -> jax.Array:
    value, grad = jax.value_and_grad(f)(X)
    updates, _ = tx.update(grad, tx.init(X), X, value=value)
    return lib.apply_updates(X, updates)


@pytest.mark.parametrize("scaling", [0.5, 0.25])
def test_polyak_sgd_scaling_multiplies_the_step_where_optax_divides_it(scaling: float) -> None:
    def f(x: jax.Array) -> jax.Array:
        return jnp.sum(x**2)

    # Polyak's step on |x|^2 at [1, 2, 3] is 14 / 56 = 0.25; times `scaling`, times 2x.
    want = np.asarray(X) * (1 - 2 * 0.25 * scaling)
    np.testing.assert_allclose(_one_step(gc.polyak_sgd(scaling=scaling), f), want, rtol=1e-6)
    with jax.numpy_dtype_promotion("standard"):
        theirs = _one_step(optax.polyak_sgd(scaling=scaling), f, optax)
    # Optax measures the already-scaled gradient: min(0.25 / s^2, 1) * s instead of 0.25 s.
    optax_rate = min(0.25 / scaling**2, 1.0) * scaling
    np.testing.assert_allclose(theirs, np.asarray(X) * (1 - 2 * optax_rate), rtol=1e-6)
    assert not np.allclose(theirs, want)


def test_the_polyak_step_is_invariant_to_the_objectives_scale_where_optax_stalls() -> None:
    def tiny(x: jax.Array) -> jax.Array:
        return 1e-12 * jnp.sum(x**2)  # |g|^2 = 5.6e-23, below Optax's cut-off 2.2e-16

    tx_args = dict(max_learning_rate=1e12)
    np.testing.assert_allclose(_one_step(gc.polyak_sgd(**tx_args), tiny), X / 2, rtol=1e-5)
    with jax.numpy_dtype_promotion("standard"):
        theirs = _one_step(optax.polyak_sgd(**tx_args), tiny, optax)
    np.testing.assert_array_equal(theirs, X)  # Optax's step is zero: it never moves


def test_ldog_keeps_a_scalar_leafs_shape_where_optax_returns_shape_1() -> None:
    params = {"s": jnp.float32(2.0), "w": jnp.ones(3)}
    tx = gc.scale_by_distance_over_gradients()
    updates, _ = tx.update(params, tx.init(params), params)
    assert updates["s"].shape == ()
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        ref = optax.scale_by_distance_over_gradients()
        theirs, _ = ref.update(params, ref.init(params), params)
    assert theirs["s"].shape == (1,)
    np.testing.assert_allclose(updates["s"], theirs["s"][0], rtol=1e-6)


def test_dog_sums_bfloat16_gradients_in_float32_where_optax_sums_in_bfloat16() -> None:
    params = jnp.zeros(4, jnp.bfloat16)
    grads = jnp.ones(4, jnp.bfloat16)  # |g|^2 = 4 per step: the sum after 300 steps is 1200

    def sums(lib: Any, tx: Any) -> Any:
        def step(state: Any, _: Any) -> tuple[Any, None]:
            return tx.update(grads, state, params)[1], None

        return jax.lax.scan(step, tx.init(params), None, 300)[0][1].sum_sq_norm_grads

    assert float(sums(gc, gc.dog())) == 1200.0
    with jax.numpy_dtype_promotion("standard"):
        theirs = sums(optax, contrib.dog())
    assert theirs.dtype == jnp.bfloat16 and float(theirs) < 1100.0  # bfloat16 stops growing


def test_optimistic_alpha_and_beta_may_follow_schedules_where_optax_raises() -> None:
    # Optax 0.2.8's optimistic_gradient_descent types alpha and beta as ScalarOrSchedule,
    # but its transform adds the schedule function to a float.
    schedule = gc.linear_schedule(1.0, 0.0, 2)
    tx = gc.optimistic_gradient_descent(0.1, beta=schedule)
    state = tx.init(X)
    for g, want in ((X, -0.1 * X), (2 * X, -0.1 * (1.5 * 2 * X - 0.5 * X))):
        updates, state = tx.update(g, state)  # beta is 1.0, then 0.5
        np.testing.assert_allclose(updates, want, rtol=1e-6)
    with jax.numpy_dtype_promotion("standard"), pytest.raises(TypeError):
        ref = optax.optimistic_gradient_descent(0.1, beta=optax.linear_schedule(1.0, 0.0, 2))
        ref.update(X, ref.init(X))


ABSTRACT_INIT: list[tuple[str, Callable[[], Any], Callable[[], Any]]] = [
    (
        "scale_by_distance_over_gradients",
        lambda: gc.scale_by_distance_over_gradients(1e-2),
        lambda: optax.scale_by_distance_over_gradients(1e-2),
    ),
    ("dog", lambda: gc.dog(), lambda: contrib.dog()),
    ("dowg", lambda: gc.dowg(), lambda: contrib.dowg()),
]


@pytest.mark.parametrize(
    ("make", "make_optax"), [pytest.param(m, o, id=i) for i, m, o in ABSTRACT_INIT]
)
def test_init_from_shape_dtype_structs_gives_the_run_of_a_concrete_init(
    make: Callable[[], Any], make_optax: Callable[[], Any]
) -> None:
    abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), PARAMS)
    tx = make()

    def run(state: Any) -> Any:
        params, out = PARAMS, []
        for t in range(3):
            grads = {k: g[t] for k, g in GRADS.items()}
            updates, state = tx.update(grads, state, params)
            params = gc.apply_updates(params, updates)
            out.append(updates)
        return out, params

    # The first update records the initial parameters: the same numbers, bit for bit.
    jax.tree.map(np.testing.assert_array_equal, run(tx.init(abstract)), run(tx.init(PARAMS)))
    with jax.numpy_dtype_promotion("standard"), pytest.raises(TypeError):
        make_optax().init(abstract)


def test_the_first_update_records_the_initial_parameters_and_later_ones_keep_them() -> None:
    tx = gc.scale_by_dog()
    state = tx.init(jax.tree.map(jnp.zeros_like, PARAMS))  # placeholders, not x_0
    grads = jax.tree.map(lambda g: g[0], GRADS)
    _, state = tx.update(grads, state, PARAMS)
    jax.tree.map(np.testing.assert_array_equal, state.init_params, PARAMS)
    moved = jax.tree.map(lambda p: p + 1, PARAMS)
    _, state = tx.update(grads, state, moved)
    jax.tree.map(np.testing.assert_array_equal, state.init_params, PARAMS)
    assert float(state.max_dist) == pytest.approx(np.sqrt(16.0), rel=1e-6)  # 16 entries moved 1


# --- 5. Errors, hyperparameters as state --------------------------------------------------


@pytest.mark.parametrize("make", [gc.scale_by_polyak, gc.polyak_sgd])
def test_a_missing_value_raises_saying_how_to_pass_it_eagerly_and_under_jit(make: Any) -> None:
    tx = make()
    state = tx.init(X)
    match = r"^scale_by_polyak: update needs `value=`.*value=loss"
    for update in (tx.update, jax.jit(tx.update)):
        with pytest.raises(ValueError, match=match):
            update(X, state, X)


def test_a_value_that_is_not_a_scalar_raises_naming_its_shape() -> None:
    tx = gc.polyak_sgd()
    with pytest.raises(ValueError, match=r"^scale_by_polyak: `value` must be a scalar.*\(3,\)"):
        tx.update(X, tx.init(X), X, value=X)
    with pytest.raises(TypeError, match=r"^scale_by_polyak: `value` must be .*real scalar"):
        tx.update(X, tx.init(X), X, value=jnp.ones((), jnp.complex64))


def test_a_value_in_bfloat16_or_float64_is_used_in_float32() -> None:
    tx = gc.scale_by_polyak()
    for value in (jnp.bfloat16(14.0), np.float64(14.0), 14):
        updates, _ = tx.update(2 * X, tx.init(X), X, value=value)
        np.testing.assert_allclose(updates, X / 2, rtol=1e-6)


def test_an_unknown_variant_or_init_step_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match=r"^scale_by_polyak: `variant` must be one of .*'sps++'"):
        gc.polyak_sgd(variant="sps++")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^scale_by_dog: `init_step` must be a pair"):
        gc.dog(init_step=1e-6)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^scale_by_dog: the kind in `init_step` .*'radius'"):
        gc.dog(init_step=("radius", 1e-6))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^scale_by_dog: `init_step\[1\]` must be in \(0, inf"):
        gc.dog(init_step=("distance", -1.0))
    with pytest.raises(ValueError, match=r"^dowg: `mask` selects .*`weight_decay` is None"):
        gc.dowg(mask={"w": True})


@pytest.mark.parametrize("make", [gc.scale_by_distance_over_gradients, gc.dog, gc.dowg])
def test_dog_methods_called_without_params_say_they_need_them(make: Any) -> None:
    tx = make()
    with pytest.raises(ValueError, match=r": update needs the current parameters"):
        tx.update(X, tx.init(X))


def test_hyperparameters_are_state_readable_and_settable_by_name() -> None:
    tx = gc.polyak_sgd(f_min=0.5)
    state = tx.init(X)
    hp = gc.get_hyperparams(state)
    assert sorted(hp) == ["eps", "f_min", "learning_rate", "max_learning_rate"]
    state = gc.set_hyperparams(state, f_min=0.0)  # then the step is Polyak's 0.25
    updates, _ = tx.update(2 * X, state, X, value=14.0)
    np.testing.assert_allclose(updates, -X / 2, rtol=1e-6)
    names = sorted(gc.get_hyperparams(gc.dog(weight_decay=0.1).init(X)))
    assert names == ["eps", "init_step", "learning_rate", "weight_decay"]
    assert sorted(gc.get_hyperparams(gc.dowg().init(X))) == ["eps", "learning_rate"]


def test_optimistic_aliases_without_weight_decay_have_optaxs_members() -> None:
    for make in (
        lambda m: m.optimistic_gradient_descent(0.1),
        lambda m: m.optimistic_adam_v2(0.1),
    ):
        ours = make(gc).init(PARAMS)
        with jax.numpy_dtype_promotion("standard"):
            theirs = make(optax).init(PARAMS)
        assert len(ours) == len(theirs)
        shapes = jax.tree.map(jnp.shape, (ours[-2].previous_gradient, theirs[-2].previous_gradient))
        assert shapes[0] == shapes[1]
        decayed = make(_WithDecay(0.5)).init(PARAMS)
        assert len(decayed) == len(ours) + 1
        assert float(gc.get_hyperparams(decayed)["weight_decay"]) == 0.5


class _WithDecay:
    """gradchain, with every alias given ``weight_decay``."""

    def __init__(self, weight_decay: float) -> None:
        self.weight_decay = weight_decay

    def __getattr__(self, name: str) -> Any:
        alias = getattr(gc, name)
        return lambda *a, **k: alias(*a, **k, weight_decay=self.weight_decay)


# The tables tests/test_errors.py runs: every numeric argument of every public factory here.
_DECAY = ("weight_decay", NON_NEGATIVE, "add_decayed_weights")
_LR = ("learning_rate", NON_NEGATIVE, "scale_by_learning_rate")
_POLYAK = [
    ("f_min", FINITE, "scale_by_polyak"),
    ("max_learning_rate", POSITIVE, "scale_by_polyak"),
    ("eps", NON_NEGATIVE, "scale_by_polyak"),
]
_OPTIMISTIC = [
    ("alpha", POSITIVE, "scale_by_optimistic_gradient"),
    ("beta", NON_NEGATIVE, "scale_by_optimistic_gradient"),
]
_ADAM = [
    ("b1", RATE, "scale_by_adam"),
    ("b2", RATE, "scale_by_adam"),
    ("eps", NON_NEGATIVE, "scale_by_adam"),
    ("eps_root", NON_NEGATIVE, "scale_by_adam"),
]
_LDOG = [
    ("reps_rel", POSITIVE, "scale_by_distance_over_gradients"),
    ("eps", NON_NEGATIVE, "scale_by_distance_over_gradients"),
    ("global_scale", FINITE, "scale_by_distance_over_gradients"),
]
_ROWS: dict[str, list[tuple[str, str, str]]] = {
    "scale_by_polyak": _POLYAK,
    "polyak_sgd": [*_POLYAK, ("scaling", NON_NEGATIVE, "polyak_sgd"), _DECAY],
    "scale_by_optimistic_gradient": _OPTIMISTIC,
    "optimistic_gradient_descent": [*_OPTIMISTIC, _LR, _DECAY],
    "optimistic_adam_v2": [*_OPTIMISTIC, *_ADAM, _LR, _DECAY],
    "scale_by_distance_over_gradients": _LDOG,
    "scale_by_dog": [("eps", NON_NEGATIVE, "scale_by_dog")],
    "dog": [("eps", NON_NEGATIVE, "scale_by_dog"), _LR, _DECAY],
    "scale_by_dowg": [
        ("eps", POSITIVE, "scale_by_dowg"),
        ("init_estim_sq_dist", POSITIVE, "scale_by_dowg"),
    ],
    "dowg": [
        ("eps", POSITIVE, "scale_by_dowg"),
        ("init_estim_sq_dist", POSITIVE, "scale_by_dowg"),
        _LR,
        _DECAY,
    ],
}
HYPERPARAMETERS: list[tuple[str, str, str, str]] = [
    (factory, arg, kind, fn) for factory, rows in _ROWS.items() for arg, kind, fn in rows
]


def _builder(name: str) -> Callable[..., Any]:
    """The factory; Polyak's wrapped so that the suites' plain updates get a ``value``."""
    factory = getattr(gc, name)
    if "polyak" in name:
        return lambda **kwargs: with_objective(factory(**kwargs))
    return factory


FACTORIES: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {
    name: (_builder(name), {"learning_rate": 0.1} if name.startswith("optimistic") else {})
    for name in _ROWS
}
