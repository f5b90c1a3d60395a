"""L-BFGS: the two-loop recursion against NumPy, Optax 0.2.8 and convergence.

References: Nocedal and Wright, Numerical Optimization, 2nd ed., 2006, Alg. 7.4 (two-loop
recursion), eq. (7.19) (the BFGS inverse update it computes implicitly) and eq. (7.20)
(the initial scaling); Liu and Nocedal, Math. Programming 45, 1989.

Against Optax the runs are bit-identical at the time of writing, line search included;
RTOL = 1e-6 leaves room for an FMA. A line search branches, so iterates could part ways
past some step in principle; the test compares every iterate, and would show where.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradchain as gc
from gradchain._lbfgs import two_loop
from tests.ranges import NON_NEGATIVE
from tests.registry import with_objective

RTOL = 1e-6

HYPERPARAMETERS: list[tuple[str, str, str, str]] = [
    ("lbfgs", "learning_rate", NON_NEGATIVE, "scale_by_learning_rate"),
]
FACTORIES: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {
    "lbfgs": (lambda **kw: with_objective(gc.lbfgs(**kw)), {}),
}
OPTAX_PARITY_NAMES = frozenset({"lbfgs", "scale_by_lbfgs"})


def rosenbrock(p: Any) -> jax.Array:
    x = p["x"]
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2) + 0.5 * jnp.sum(
        (p["m"] - 1.0) ** 2
    )


_A = np.random.default_rng(0).normal(size=(6, 6))
_HESSIAN = jnp.asarray(_A @ _A.T / 6 + 0.1 * np.eye(6), jnp.float32)  # condition number ~ 100


def quadratic(p: Any) -> jax.Array:
    z = jnp.concatenate([p["x"], p["m"].ravel()])
    return 0.5 * z @ (_HESSIAN @ z) - jnp.sum(z) + 0.5 * p["s"] ** 2


PROBLEMS = {
    "rosenbrock": (rosenbrock, {"x": jnp.array([-1.2, 1.0, -0.5, 0.8]), "m": jnp.zeros((2, 2))}),
    "quadratic": (
        quadratic,
        {"x": jnp.array([1.0, -2.0, 0.5, 3.0]), "m": jnp.ones((2, 1)), "s": jnp.float32(2.0)},
    ),
}


def solve(
    lib: Any,
    tx: Any,
    f: Callable[[Any], jax.Array],
    params: Any,
    steps: int,
    *,
    search: bool = True,
) -> Any:
    """``steps`` iterations inside lax.scan: (values, params) at every iteration.

    With ``search`` the objective goes to the update and is reused from the line search's
    state; without, ``tx`` gets the gradient only.
    """
    value_and_grad = lib.value_and_grad_from_state(f) if search else None

    def step(carry: Any, _: Any) -> Any:
        p, state = carry
        if value_and_grad is not None:
            value, grad = value_and_grad(p, state=state)
            u, state = tx.update(grad, state, p, value=value, grad=grad, value_fn=f)
        else:
            value, grad = jax.value_and_grad(f)(p)
            u, state = tx.update(grad, state, p)
        p = lib.apply_updates(p, u)
        return (p, state), (value, p)

    return jax.lax.scan(step, (params, tx.init(params)), length=steps)[1]


STEPS = 50


@functools.cache
def lbfgs_runs(problem: str) -> tuple[Any, Any]:
    """STEPS iterations of gradchain's and Optax's L-BFGS, jitted together (one compilation)."""
    f, params = PROBLEMS[problem]

    @jax.jit
    def both() -> tuple[Any, Any]:
        got = solve(gc, gc.lbfgs(), f, params, STEPS)
        with jax.numpy_dtype_promotion("standard"):
            return got, solve(optax, optax.lbfgs(), f, params, STEPS)

    return both()


@pytest.mark.parametrize("problem", PROBLEMS, ids=str)
def test_lbfgs_matches_optax_at_every_iterate(problem: str) -> None:
    got, want = lbfgs_runs(problem)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=RTOL, atol=1e-7)


def test_scale_by_lbfgs_with_a_fixed_step_matches_optax_on_a_convex_quadratic() -> None:
    # Convex: every pair has positive curvature, so the skip rule (our difference) never fires.
    def make(lib: Any) -> Any:
        return lib.chain(
            lib.scale_by_lbfgs(memory_size=4, scale_init_precond=False), lib.scale(-0.05)
        )

    f, params = PROBLEMS["quadratic"]
    got = jax.jit(lambda: solve(gc, make(gc), f, params, 30, search=False))()
    with jax.numpy_dtype_promotion("standard"):
        want = jax.jit(lambda: solve(optax, make(optax), f, params, 30, search=False))()
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=RTOL, atol=1e-7)


# NumPy float64 references.


def _bfgs_inverse(s_list: list[np.ndarray], y_list: list[np.ndarray], gamma: float) -> np.ndarray:
    """Eq. (7.19): H <- (I - rho s y^T) H (I - rho y s^T) + rho s s^T, from H0 = gamma I."""
    n = s_list[0].size
    h = gamma * np.eye(n)
    for s, y in zip(s_list, y_list, strict=True):
        rho = 1.0 / (s @ y)
        v = np.eye(n) - rho * np.outer(y, s)
        h = v.T @ h @ v + rho * np.outer(s, s)
    return h


def _two_loop_reference(
    g: np.ndarray, s_list: list[np.ndarray], y_list: list[np.ndarray], gamma: float
) -> np.ndarray:
    """Alg. 7.4 of Nocedal and Wright, oldest pair first in the lists."""
    q, alphas = g.copy(), []
    for s, y in reversed(list(zip(s_list, y_list, strict=True))):
        alpha = (s @ q) / (s @ y)
        q = q - alpha * y
        alphas.append(alpha)
    r = gamma * q
    for (s, y), alpha in zip(zip(s_list, y_list, strict=True), reversed(alphas), strict=True):
        beta = (y @ r) / (s @ y)
        r = r + (alpha - beta) * s
    return r


@pytest.mark.parametrize("newest", [0, 2, 4])
def test_two_loop_recursion_equals_the_bfgs_inverse_update_in_float64(newest: int) -> None:
    rng = np.random.default_rng(newest)
    n, m = 7, 5
    s_list = [rng.normal(size=n) for _ in range(m)]
    y_list = [s + 0.3 * rng.normal(size=n) for s in s_list]  # s.y > 0
    assert all(s @ y > 0 for s, y in zip(s_list, y_list, strict=True))
    g, gamma = rng.normal(size=n), 0.7
    want = _bfgs_inverse(s_list, y_list, gamma) @ g
    np.testing.assert_allclose(_two_loop_reference(g, s_list, y_list, gamma), want, rtol=1e-10)
    # gradchain's slots are cyclic: the newest pair sits in slot `newest`
    order = [(newest + 1 + k) % m for k in range(m)]  # slots from oldest to newest
    s_mem, y_mem = np.zeros((m, n)), np.zeros((m, n))
    for pair, slot in enumerate(order):
        s_mem[slot], y_mem[slot] = s_list[pair], y_list[pair]
    rho = 1.0 / np.einsum("ij,ij->i", s_mem, y_mem)
    got = two_loop(
        {"g": jnp.asarray(g, jnp.float32)},
        {"g": jnp.asarray(s_mem, jnp.float32)},
        {"g": jnp.asarray(y_mem, jnp.float32)},
        jnp.asarray(rho, jnp.float32),
        jnp.float32(gamma),
        jnp.int32(newest),
    )["g"]
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * np.max(np.abs(want)))


def test_scale_by_lbfgs_sees_the_secant_pairs_of_a_quadratic_and_inverts_its_hessian() -> None:
    # On a quadratic, after n independent steps, H equals the inverse Hessian (N&W Thm 6.4
    # for BFGS with exact pairs): H g = x - x* for any x.
    hessian = np.diag([1.0, 4.0, 9.0])
    tx = gc.scale_by_lbfgs(memory_size=3)
    state, update = tx.init(jnp.zeros(3)), jax.jit(tx.update)
    for x in [*np.eye(3).tolist(), [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]:
        x = np.asarray(x)
        u, state = update(jnp.asarray(hessian @ x, jnp.float32), state, jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(u, np.ones(3), rtol=1e-5)


def test_a_pair_of_negative_curvature_is_skipped_so_the_direction_still_descends() -> None:
    # Optax 0.2.8 keeps such a pair (it skips only s.y == 0) and returns an ascent direction.
    points = [np.array([0.0, 0.0]), np.array([1.0, 0.0])]
    grads = [np.array([1.0, 1.0]), np.array([-1.0, 1.0])]  # s.y = -2

    def last_direction(lib: Any) -> np.ndarray:
        tx = lib.scale_by_lbfgs(memory_size=5)
        state, update = tx.init(jnp.zeros(2)), jax.jit(tx.update)
        for x, g in zip(points, grads, strict=True):
            u, state = update(jnp.asarray(g, jnp.float32), state, jnp.asarray(x, jnp.float32))
        return np.asarray(u)

    with jax.numpy_dtype_promotion("standard"):
        assert last_direction(optax) @ grads[-1] < 0  # -u is an ascent direction
    assert last_direction(gc) @ grads[-1] > 0  # -u descends


# Convergence in float32 inside lax.scan, a fixed number of iterations.


@pytest.mark.parametrize("problem", PROBLEMS, ids=str)
def test_lbfgs_converges_in_float32_in_a_fixed_number_of_iterations(problem: str) -> None:
    values, iterates = lbfgs_runs(problem)[0]  # STEPS iterations under lax.scan
    final = jax.tree.map(lambda x: x[-1], iterates)
    if problem == "rosenbrock":
        np.testing.assert_allclose(final["x"], np.ones(4), atol=1e-3)
    else:
        z = np.linalg.solve(np.asarray(_HESSIAN, np.float64), np.ones(6))
        np.testing.assert_allclose(np.concatenate([final["x"], final["m"].ravel()]), z, atol=1e-3)
    assert np.all(np.diff(np.asarray(values)) <= 1e-6 * np.abs(np.asarray(values[:-1])) + 1e-12)


def test_lbfgs_with_a_learning_rate_and_no_line_search_is_a_fixed_step_method() -> None:
    tx = gc.lbfgs(learning_rate=0.5, linesearch=None)
    w = jnp.array([2.0, -1.0])
    u, _ = jax.jit(tx.update)(jnp.array([3.0, 4.0]), tx.init(w), w)
    np.testing.assert_allclose(u, [-0.3, -0.4], rtol=1e-6)  # -lr * g / max(1, |g|)


def test_lbfgs_state_shows_its_line_search_hyperparameters_and_refuses_a_factory() -> None:
    hp = gc.get_hyperparams(gc.lbfgs().init({"w": jnp.ones(2)}))
    assert {"slope_rtol", "curv_rtol", "tol", "step_size"} <= set(hp)
    with pytest.raises(
        TypeError, match=r"^lbfgs: `linesearch` is the function `scale_by_zoom_linesearch`"
    ):
        gc.lbfgs(linesearch=gc.scale_by_zoom_linesearch)  # type: ignore[arg-type]


def test_memory_size_must_be_a_positive_integer() -> None:
    with pytest.raises(ValueError, match=r"^scale_by_lbfgs: `memory_size` must be > 0; got 0"):
        gc.lbfgs(memory_size=0)
    with pytest.raises(
        TypeError, match=r"^scale_by_lbfgs: `memory_size` must be an integer; got float"
    ):
        gc.scale_by_lbfgs(memory_size=2.0)  # type: ignore[arg-type]
