"""The learning-rate-free optimizers: against Optax 0.2.8, their papers, two test functions.

prodigy, dadapt_adamw, scale_by_cocob and cocob, mechanize, momo and momo_adam.

1. Optax parity. Each runs 100 steps beside ``optax.contrib``'s, under ``jit``
   and ``lax.scan``, on a nested float32 pytree whose gradients depend on the
   parameters (a noisy quadratic, so that the distance estimates grow and the
   Polyak steps engage); updates at every step and the final parameters agree
   to the bit (checked at ``RTOL``). The differences on purpose are pinned by
   their own tests: Optax's NaN while the gradients are zero (Prodigy,
   D-Adaptation), its learning rate that does nothing (COCOB), its MoMo weight
   decay, and its ``init`` that needs values (all but COCOB).
2. The papers. Each against a float64 NumPy loop of its paper's equations.
3. Two test functions. Every optimizer minimizes a parabola and the Rosenbrock
   function in float32 within a fixed number of steps, inside ``lax.scan``.
4. Init from shapes, the loss argument, and hyperparameters as state.

Optax mixes int32 counts with Python floats, which strict promotion refuses, so
every Optax call runs under ``jax.numpy_dtype_promotion("standard")``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest

import gradchain as gc
from tests.ranges import FINITE, NON_NEGATIVE, POSITIVE, RATE
from tests.registry import with_objective
from tests.test_adaptive import assert_trees_close, decay_mask

STEPS = 100
RTOL = 1e-6  # bit-identical at the time of writing; the bound allows a different fusion
NOISE = 0.3

# --- The problem: a noisy quadratic on a nested float32 pytree --------------------------------


def _problem(seed: int) -> tuple[Any, Any, Any, Any]:
    """(params, targets, curvatures, STEPS stacked noises) on a dict of a matrix, vector, scalar."""
    rng = np.random.default_rng(seed)
    shapes = {"layers": [{"w": (5, 3), "b": (3,)}], "scale": ()}
    is_shape = lambda x: isinstance(x, tuple)  # noqa: E731

    def draw(size: tuple[int, ...], lo: float = -1.0, hi: float = 1.0) -> np.ndarray:
        return rng.uniform(lo, hi, size=size).astype(np.float32)

    params = jax.tree.map(lambda s: draw(s), shapes, is_leaf=is_shape)
    targets = jax.tree.map(lambda s: draw(s, 1.0, 3.0), shapes, is_leaf=is_shape)
    curvatures = jax.tree.map(lambda s: draw(s, 0.5, 2.0), shapes, is_leaf=is_shape)
    noises = jax.tree.map(
        lambda s: rng.normal(size=(STEPS, *s)).astype(np.float32), shapes, is_leaf=is_shape
    )
    return params, targets, curvatures, noises


PARAMS, TARGETS, CURVATURES, NOISES = _problem(5)


def loss(params: Any) -> jax.Array:
    """1 + sum(c (x - t)^2) / 2, in float32."""
    terms = jax.tree.map(lambda x, t, c: jnp.sum(c * (x - t) ** 2), params, TARGETS, CURVATURES)
    return 1 + 0.5 * sum(jax.tree.leaves(terms), jnp.float32(0))


def noisy_grad(params: Any, noise: Any) -> Any:
    return jax.tree.map(
        lambda x, t, c, n: c * (x - t) + NOISE * n, params, TARGETS, CURVATURES, noise
    )


def _trajectory(lib: Any, tx: Any) -> tuple[Any, Any, Any]:
    tx = lib.with_extra_args_support(tx)  # every update gets value=, which MoMo needs

    def step(carry: tuple[Any, Any], noise: Any) -> tuple[tuple[Any, Any], Any]:
        params, state = carry
        grads = noisy_grad(params, noise)
        updates, state = tx.update(grads, state, params, value=loss(params))
        return (lib.apply_updates(params, updates), state), updates

    (params, state), updates = jax.lax.scan(step, (PARAMS, tx.init(PARAMS)), NOISES)
    return updates, params, state


def trajectories(make_gc: Callable[[], Any], make_optax: Callable[[], Any]) -> tuple[Any, Any]:
    """(updates, final params, final state) of gradchain and of Optax, jitted together."""

    @jax.jit
    def run() -> tuple[Any, Any]:
        got = _trajectory(gc, make_gc())
        with jax.numpy_dtype_promotion("standard"):
            want = _trajectory(optax, make_optax())
        return got, want

    return run()


# --- 1. Optax parity -------------------------------------------------------------------------

Make = Callable[[Any], Any]
M = decay_mask


def _schedule(step: Any) -> Any:
    """One schedule for both libraries: a linear decay from 1.0 (the base these methods expect)."""
    return gc.linear_schedule(1.0, 0.2, STEPS)(step)


def _contrib(lib: Any) -> Any:
    return lib.contrib if lib is optax else lib


# (id, make(lib)): the same call builds both libraries' transformation.
SAME_CALL: list[tuple[str, Make]] = [
    ("prodigy", lambda m: _contrib(m).prodigy()),
    (
        "prodigy-every_argument",
        lambda m: _contrib(m).prodigy(_schedule, (0.8, 0.99), 0.9, 1e-6, 1e-5, 2.0, 0.1, True),
    ),
    ("dadapt_adamw", lambda m: _contrib(m).dadapt_adamw()),
    (
        "dadapt_adamw-every_argument",
        lambda m: _contrib(m).dadapt_adamw(_schedule, (0.8, 0.99), 1e-6, 1e-5, 0.1),
    ),
    ("scale_by_cocob", lambda m: _contrib(m).scale_by_cocob()),
    ("scale_by_cocob-every_argument", lambda m: _contrib(m).scale_by_cocob(10.0, 1e-6)),
    ("cocob-l2_mask", lambda m: _contrib(m).cocob(1.0, 10.0, 1e-6, 0.1, M)),
    ("mechanize", lambda m: _contrib(m).mechanize(m.sgd(1.0))),
    ("mechanize-adam", lambda m: _contrib(m).mechanize(m.adam(1.0), 0.1, 1e-6, 1e-5, 3)),
    # beta = 0.75: its complement is exact in float32 (see the test of the default below)
    ("momo", lambda m: _contrib(m).momo(1.0, 0.75)),
    ("momo-adapt_lower_bound", lambda m: _contrib(m).momo(0.5, 0.75, 0.5, 0.0, True)),
    ("momo_adam", lambda m: _contrib(m).momo_adam()),
    (
        "momo_adam-adapt_lower_bound",
        lambda m: _contrib(m).momo_adam(_schedule, 0.8, 0.99, 1e-6, 0.5, 0.0, True),
    ),
]


def _same(make: Make) -> tuple[Callable[[], Any], Callable[[], Any]]:
    return (lambda: make(gc)), (lambda: make(optax))


@pytest.mark.parametrize("make", [pytest.param(m, id=i) for i, m in SAME_CALL])
def test_updates_and_params_match_optax_contrib_at_every_step(make: Make) -> None:
    (got_u, got_p, got_s), (want_u, want_p, want_s) = trajectories(*_same(make))
    assert_trees_close(got_u, want_u, "updates")
    assert_trees_close(got_p, want_p, "final params")
    if hasattr(got_s, "estim_lr"):  # the distance estimate grew, and is Optax's
        assert float(got_s.estim_lr) == float(want_s.estim_lr) > 100 * 1e-6


def test_momos_default_beta_differs_from_optax_only_by_optaxs_float32_complement() -> None:
    # Optax 0.2.8 computes 1 - beta in float32 (1 - 0.9f = 0.100000024); gradchain keeps the
    # exact complement (0.1f). Over the 100 steps above the Polyak steps amplify that 1.2e-7
    # to 1.7e-5 of a step's largest update (measured); with beta = 0.75 (exact in float32)
    # the two are bit-identical (test_updates_and_params_match_optax_contrib_at_every_step).
    params = jnp.array([1.0, -2.0])
    grads = [jnp.array([0.5, -1.0]), jnp.array([-0.25, 2.0])]

    def mu_after_two(lib: Any, tx: Any) -> np.ndarray:
        state = tx.init(params)
        for g in grads:
            _, state = tx.update(g, state, params, value=jnp.float32(3.0))
        return np.asarray(getattr(state, "mu", getattr(state, "exp_avg", None)))

    b = np.float32(0.9)
    ours = mu_after_two(gc, gc.momo())
    np.testing.assert_array_equal(ours, b * np.asarray(grads[0]) + np.float32(0.1) * grads[1])
    with jax.numpy_dtype_promotion("standard"):
        theirs = mu_after_two(optax, optax.contrib.momo())
    np.testing.assert_array_equal(theirs, b * np.asarray(grads[0]) + (1 - b) * grads[1])


@pytest.mark.parametrize("name", ["prodigy", "dadapt_adamw"])
def test_zero_gradients_keep_the_estimate_where_optax_turns_nan(name: str) -> None:
    params = {"w": jnp.ones(3)}
    zeros, ones = {"w": jnp.zeros(3)}, {"w": jnp.ones(3)}

    def two_steps(tx: Any) -> tuple[Any, Any]:
        def run() -> tuple[Any, Any]:
            state = tx.init(params)
            _, state = tx.update(zeros, state, params)
            return tx.update(ones, state, params)

        return jax.jit(run)()

    updates, state = two_steps(getattr(gc, name)())
    assert float(state.estim_lr) == pytest.approx(1e-6)
    assert bool(jnp.all(jnp.isfinite(updates["w"]))) and float(updates["w"][0]) < 0
    with jax.numpy_dtype_promotion("standard"):
        updates, state = two_steps(getattr(optax.contrib, name)())
    assert bool(jnp.isnan(state.estim_lr)) and bool(jnp.all(jnp.isnan(updates["w"])))


def test_cocobs_learning_rate_scales_the_step_where_optaxs_does_nothing() -> None:
    params, grads = {"w": jnp.array([1.0, -2.0])}, {"w": jnp.array([0.5, 1.0])}

    def first_update(tx: Any) -> np.ndarray:
        return np.asarray(tx.update(grads, tx.init(params), params)[0]["w"])

    full = first_update(gc.cocob(1.0))
    np.testing.assert_array_equal(first_update(gc.cocob(0.25)), 0.25 * full)
    with jax.numpy_dtype_promotion("standard"):  # Optax scales the gradients COCOB normalizes
        np.testing.assert_array_equal(first_update(optax.contrib.cocob(0.25)), full)
        np.testing.assert_array_equal(first_update(optax.contrib.cocob(1.0)), full)


@pytest.mark.parametrize("name", ["momo", "momo_adam"])
def test_momos_weight_decay_is_the_papers_proximal_step_not_optaxs(name: str) -> None:
    # One step with the step size capped at the learning rate (the loss is far above 0):
    # the paper (and its authors' code) x' = (x - tau d / D) / (1 + lr wd); Optax 0.2.8
    # x' = x / (1 + lr wd) - tau d / D, a gradient step (1 + lr wd) times larger.
    lr, wd = 0.1, 0.5
    params, grads, value = jnp.array([1.0, -2.0]), jnp.array([0.5, -1.0]), jnp.float32(100.0)

    def first(tx: Any) -> np.ndarray:
        return np.asarray(tx.update(grads, tx.init(params), params, value=value)[0])

    make = lambda m: getattr(_contrib(m), name)(lr, weight_decay=wd)  # noqa: E731
    plain = lambda m: getattr(_contrib(m), name)(lr)  # noqa: E731
    step = first(plain(gc))  # -tau d / D, with tau = lr (or lr / (1 - b1) for MoMo-Adam)
    x, q = np.asarray(params), 1 + lr * wd
    np.testing.assert_allclose(first(make(gc)), (x + step) / q - x, rtol=1e-6)
    with jax.numpy_dtype_promotion("standard"):
        np.testing.assert_allclose(first(make(optax)), x / q + step - x, rtol=1e-6)


def test_optaxs_init_needs_values_where_gradchains_needs_shapes() -> None:
    abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), PARAMS)
    with jax.numpy_dtype_promotion("standard"):
        for tx in (
            optax.contrib.prodigy(),
            optax.contrib.dadapt_adamw(),
            optax.contrib.mechanize(optax.sgd(1.0)),
            optax.contrib.momo(),
            optax.contrib.momo_adam(),
        ):
            with pytest.raises(TypeError):
                tx.init(abstract)


def test_the_cases_cover_every_public_name_of_this_family() -> None:
    covered = {name.split("-")[0] for name, _ in SAME_CALL}
    assert covered == OPTAX_PARITY_NAMES


OPTAX_PARITY_NAMES = frozenset(
    {"prodigy", "dadapt_adamw", "scale_by_cocob", "cocob", "mechanize", "momo", "momo_adam"}
)
"""The names this file compares with Optax (tests/test_optax_parity.py counts them as covered)."""


# --- 2. The papers' equations, in float64 ----------------------------------------------------

REF_STEPS = 40


def _flat(tree: Any) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


X0, T, C = _flat(PARAMS), _flat(TARGETS), _flat(CURVATURES)
N = np.stack([_flat(jax.tree.map(lambda n, k=k: n[k], NOISES)) for k in range(REF_STEPS)])


def _grad(x: np.ndarray, k: int) -> np.ndarray:
    return C * (x - T) + NOISE * N[k]


def _value(x: np.ndarray) -> float:
    return 1 + 0.5 * float(np.sum(C * (x - T) ** 2))


def _run_ref(step: Callable[[np.ndarray, np.ndarray, float, int], np.ndarray]) -> np.ndarray:
    """(REF_STEPS, n) updates of ``step(x, g, value, k) -> update``, k counting from 1.

    The parameters are stored in float32 after each step, as the optimizer under test
    gets them: Prodigy's first steps are ~1e-6, and float32 parameters near 1 hold
    x - x0 to ~10% only, which moves its estimate of d by 1% (measured). All the
    optimizer's own arithmetic is float64.
    """
    x, out = X0.copy(), []
    for k in range(1, REF_STEPS + 1):
        u = step(x, _grad(x, k - 1), _value(x), k)
        out.append(u)
        x = (x + u).astype(np.float32).astype(np.float64)
    return np.array(out)


def prodigy_ref(
    lr: float = 1.0,
    b1: float = 0.9,
    b2: float = 0.999,
    b3: float | None = None,
    eps: float = 1e-8,
    d0: float = 1e-6,
    coef: float = 1.0,
    wd: float = 0.0,
    safeguard: bool = False,
) -> np.ndarray:
    """Prodigy, Mishchenko and Defazio 2023 (arXiv:2306.06101), Algorithm 4 (Adam).

    gamma_k = lr sqrt(1 - b2^k) / (1 - b1^k) (Adam's bias correction in the step size);
    r and s with the paper's factor (1 - b3) and without gradchain's 1/d0 (both cancel in
    d = r / ||s||_1). ``safeguard`` leaves gamma_k out of s.
    """
    b3 = float(np.sqrt(b2)) if b3 is None else b3
    z = np.zeros_like(X0)
    st = {"m": z, "v": z, "s": z, "r": 0.0, "d": d0}

    def step(x: np.ndarray, g: np.ndarray, value: float, k: int) -> np.ndarray:
        del value
        d, gamma = st["d"], lr * np.sqrt(1 - b2**k) / (1 - b1**k)
        st["m"] = b1 * st["m"] + (1 - b1) * d * g
        st["v"] = b2 * st["v"] + (1 - b2) * d**2 * g**2
        st["r"] = b3 * st["r"] + (1 - b3) * gamma * d**2 * np.dot(g, X0 - x)
        st["s"] = b3 * st["s"] + (1 - b3) * (1.0 if safeguard else gamma) * d**2 * g
        st["d"] = max(d, coef * st["r"] / np.sum(np.abs(st["s"])))
        return -gamma * d * st["m"] / (np.sqrt(st["v"]) + st["d"] * eps) - wd * gamma * d * x

    return _run_ref(step)


def dadapt_ref(
    lr: float = 1.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    d0: float = 1e-6,
    wd: float = 0.0,
) -> np.ndarray:
    """D-Adapted Adam, Defazio and Mishchenko 2023 (ICML), Algorithm 4, with AdamW's decay.

    lambda_k = lr d_k sqrt(1 - b2^k) / (1 - b1^k); s and r decay at sqrt(b2); the numerator
    uses s_k and v_k before this step's gradient.
    """
    sb2, z = float(np.sqrt(b2)), np.zeros_like(X0)
    st = {"m": z, "v": z, "s": z, "r": 0.0, "d": d0}

    def step(x: np.ndarray, g: np.ndarray, value: float, k: int) -> np.ndarray:
        del value
        lam = lr * st["d"] * np.sqrt(1 - b2**k) / (1 - b1**k)
        st["r"] = sb2 * st["r"] + (1 - sb2) * lam * np.dot(g, st["s"] / (np.sqrt(st["v"]) + eps))
        st["m"] = b1 * st["m"] + (1 - b1) * lam * g
        st["v"] = b2 * st["v"] + (1 - b2) * g**2
        st["s"] = sb2 * st["s"] + (1 - sb2) * lam * g
        st["d"] = max(st["d"], st["r"] / ((1 - sb2) * np.sum(np.abs(st["s"]))))
        return -st["m"] / (np.sqrt(st["v"]) + eps) - wd * lam * x

    return _run_ref(step)


def cocob_ref(alpha: float = 100.0, eps: float = 1e-8, lr: float = 1.0) -> np.ndarray:
    """COCOB-Backprop, Orabona and Tommasi 2017 (NeurIPS), Algorithm 2, from L_0 = eps.

    The paper's g is the negative gradient; w_1 the initial weights.
    """
    z = np.zeros_like(X0)
    st = {"L": np.full_like(X0, eps), "G": z, "R": z, "theta": z}

    def step(x: np.ndarray, g: np.ndarray, value: float, k: int) -> np.ndarray:
        del value, k
        neg = -g
        st["L"] = np.maximum(st["L"], np.abs(neg))
        st["G"] = st["G"] + np.abs(neg)
        st["R"] = np.maximum(st["R"] + (x - X0) * neg, 0)
        st["theta"] = st["theta"] + neg
        bet = st["theta"] / (st["L"] * np.maximum(st["G"] + st["L"], alpha * st["L"]))
        return lr * (X0 + bet * (st["L"] + st["R"]) - x)

    return _run_ref(step)


def mechanic_ref(
    lr: float = 1.0, wd: float = 0.01, eps: float = 1e-8, s_init: float = 1e-6, n: int = 6
) -> np.ndarray:
    """Mechanic, Cutkosky, Defazio and Mehta 2023 (NeurIPS), Algorithm 1, over SGD(lr).

    Delta_t is recovered from x_t = x_ref + S_t Delta_t as (x_t - x_ref) / (S_t + eps), as
    gradchain and Optax keep no Delta; the bet's h is clipped by the previous maximum.
    """
    betas = np.array([1 - 0.1**i for i in range(1, n + 1)])
    st = {"m": np.zeros(n), "v": np.zeros(n), "r": np.zeros(n), "s": np.full(n, s_init)}

    def step(x: np.ndarray, g: np.ndarray, value: float, k: int) -> np.ndarray:
        del value, k
        total = np.sum(st["s"])
        delta = (x - X0) / (total + eps)
        decay = wd * total * np.linalg.norm(g) / (np.linalg.norm(x) + eps)
        h = np.dot(delta, g + decay * x)
        bounded = np.clip(h, -st["m"], st["m"])
        st["m"] = np.maximum(betas * st["m"], abs(h) + eps)
        st["v"] = betas**2 * st["v"] + h**2
        st["r"] = np.maximum(betas * st["r"] - st["s"] * bounded, 0)
        st["s"] = (s_init / n * st["m"] + st["r"]) / (np.sqrt(st["v"]) + eps)
        return X0 + np.sum(st["s"]) * (delta - lr * g) - x

    return _run_ref(step)


def momo_ref(
    lr: float = 1.0, beta: float = 0.9, lb: float = 0.0, wd: float = 0.0, adapt: bool = False
) -> np.ndarray:
    """MoMo, Schaipp et al. 2023 (arXiv:2305.07583), Algorithm 1.

    Weight decay as its proximal step x' = (x - tau d) / (1 + lr wd); MoMo* (``adapt``)
    resets and updates the bound as the authors' code does. The averages start at the
    first values (no bias correction).
    """
    st = {"d": np.zeros_like(X0), "f": 0.0, "gamma": 0.0, "lb": lb}

    def step(x: np.ndarray, g: np.ndarray, value: float, k: int) -> np.ndarray:
        b = 0.0 if k == 1 else beta
        st["d"] = b * st["d"] + (1 - b) * g
        st["f"] = b * st["f"] + (1 - b) * value
        st["gamma"] = b * st["gamma"] + (1 - b) * np.dot(g, x)
        return _momo_step(st, x, st["d"], np.ones_like(x), 1.0, lr, lb, wd, adapt)

    return _run_ref(step)


def momo_adam_ref(
    lr: float = 1e-2,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    lb: float = 0.0,
    wd: float = 0.0,
    adapt: bool = False,
) -> np.ndarray:
    """MoMo-Adam, Schaipp et al. 2023 (arXiv:2305.07583), Algorithm 3, as :func:`momo_ref`."""
    z = np.zeros_like(X0)
    st = {"d": z, "v": z, "f": 0.0, "gamma": 0.0, "lb": lb}

    def step(x: np.ndarray, g: np.ndarray, value: float, k: int) -> np.ndarray:
        st["d"] = b1 * st["d"] + (1 - b1) * g
        st["v"] = b2 * st["v"] + (1 - b2) * g**2
        st["f"] = b1 * st["f"] + (1 - b1) * value
        st["gamma"] = b1 * st["gamma"] + (1 - b1) * np.dot(g, x)
        scale = np.sqrt(st["v"] / (1 - b2**k)) + eps
        return _momo_step(st, x, st["d"], scale, 1 - b1**k, lr, lb, wd, adapt)

    return _run_ref(step)


def _momo_step(
    st: dict[str, Any],
    x: np.ndarray,
    d: np.ndarray,
    scale: np.ndarray,
    rho: float,
    lr: float,
    floor: float,
    wd: float,
    adapt: bool,
) -> np.ndarray:
    q, dot, norm = 1 + lr * wd, float(np.dot(d, x)), float(np.dot(d, d / scale))
    if adapt:
        cap = q * st["f"] + dot - q * st["gamma"]
        if cap < q * rho * st["lb"]:
            st["lb"] = max(cap / (2 * q * rho), floor)
    nom = q * (st["f"] - rho * st["lb"]) + dot - q * st["gamma"]
    tau = min(lr / rho, max(nom, 0.0) / norm)
    if adapt:
        h = st["f"] + dot - st["gamma"]
        st["lb"] = max((h - 0.5 * tau * norm) / rho, floor)
    return (x - tau * d / scale) / q - x


# Tolerances, relative to each step's largest update. Float32 rounds each operation to
# 6e-8, but 1 - b^k is computed from float32(b) (as Optax does): 1 - float32(0.999) is
# 4.7e-5 off, so Adam's bias correction moves the first steps of Prodigy and D-Adaptation
# by 2.3e-5 (measured up to 6.7e-5 over the run). Mechanic's update is
# x_ref + S (Delta + u) - x, whose first steps (~1e-5) are differences of float32
# parameters near 1, resolved to 1% (measured 5.4e-3, at step 1).
RTOL_REF = 1e-4
RTOL_MECHANIC = 1e-2
# (id, gradchain's transformation, the reference's updates, relative tolerance)
REFERENCES: list[tuple[str, Callable[[], Any], Callable[[], np.ndarray], float]] = [
    ("prodigy", gc.prodigy, prodigy_ref, RTOL_REF),
    (
        "prodigy-every_argument",
        lambda: gc.prodigy(0.5, (0.8, 0.99), 0.9, 1e-6, 1e-5, 2.0, 0.1, True),
        lambda: prodigy_ref(0.5, 0.8, 0.99, 0.9, 1e-6, 1e-5, 2.0, 0.1, True),
        RTOL_REF,
    ),
    ("dadapt_adamw", gc.dadapt_adamw, dadapt_ref, RTOL_REF),
    (
        "dadapt_adamw-weight_decay",
        lambda: gc.dadapt_adamw(0.5, (0.8, 0.99), 1e-6, 1e-5, 0.1),
        lambda: dadapt_ref(0.5, 0.8, 0.99, 1e-6, 1e-5, 0.1),
        RTOL_REF,
    ),
    ("scale_by_cocob", gc.scale_by_cocob, cocob_ref, RTOL_REF),
    ("cocob", lambda: gc.cocob(0.5, 10.0), lambda: cocob_ref(10.0, lr=0.5), RTOL_REF),
    ("mechanize", lambda: gc.mechanize(gc.sgd(1.0)), mechanic_ref, RTOL_MECHANIC),
    ("momo", gc.momo, momo_ref, RTOL_REF),
    (
        "momo-weight_decay_adapt",
        lambda: gc.momo(0.5, 0.8, 0.5, 0.1, True),
        lambda: momo_ref(0.5, 0.8, 0.5, 0.1, True),
        RTOL_REF,
    ),
    ("momo_adam", lambda: gc.momo_adam(1.0), lambda: momo_adam_ref(1.0), RTOL_REF),
    (
        "momo_adam-weight_decay_adapt",
        lambda: gc.momo_adam(0.5, 0.8, 0.99, 1e-6, 0.5, 0.1, True),
        lambda: momo_adam_ref(0.5, 0.8, 0.99, 1e-6, 0.5, 0.1, True),
        RTOL_REF,
    ),
]


@pytest.mark.parametrize(
    ("make", "ref", "rtol"), [pytest.param(m, r, t, id=i) for i, m, r, t in REFERENCES]
)
def test_updates_match_the_papers_equations_in_float64(
    make: Callable[[], Any], ref: Callable[[], np.ndarray], rtol: float
) -> None:
    tx = gc.with_extra_args_support(make())

    @jax.jit
    def run() -> Any:
        def body(carry: tuple[Any, Any], noise: Any) -> tuple[tuple[Any, Any], Any]:
            params, state = carry
            grads = noisy_grad(params, noise)
            updates, state = tx.update(grads, state, params, value=loss(params))
            return (gc.apply_updates(params, updates), state), updates

        noises = jax.tree.map(lambda n: n[:REF_STEPS], NOISES)
        return jax.lax.scan(body, (PARAMS, tx.init(PARAMS)), noises)[1]

    updates = run()
    got = np.concatenate(
        [np.reshape(np.asarray(u, np.float64), (REF_STEPS, -1)) for u in jax.tree.leaves(updates)],
        axis=1,
    )
    want = ref()
    scale = np.max(np.abs(want), axis=1, keepdims=True)  # each step's largest update
    np.testing.assert_allclose(got / scale, want / scale, rtol=0, atol=rtol)


# --- 3. Two test functions, in float32, inside lax.scan --------------------------------------

CONVERGE_STEPS = 10_000
CONVERGE_ATOL = 1e-2  # on every coordinate of the minimizer (as tests/test_adaptive.py)


def parabola() -> tuple[jax.Array, jax.Array, Callable[[jax.Array], jax.Array]]:
    start, minimum = jnp.array([-1.0, 10.0, 1.0]), jnp.array([1.0, -1.0, 1.0])
    return start, minimum, lambda w: jnp.sum((w - minimum) ** 2)


def rosenbrock() -> tuple[jax.Array, jax.Array, Callable[[jax.Array], jax.Array]]:
    return jnp.zeros(2), jnp.ones(2), lambda w: (1 - w[0]) ** 2 + 100 * (w[1] - w[0] ** 2) ** 2


def _decaying() -> Any:
    """The schedule these methods are meant for: 1.0 at first, decaying (to 1e-3)."""
    return gc.cosine_decay_schedule(1.0, CONVERGE_STEPS, alpha=1e-3)


# Prodigy, D-Adaptation, COCOB and Mechanic settle in Rosenbrock's valley with the decaying
# base schedule their papers recommend; MoMo's Polyak step needs none (both minima are 0).
CONVERGING: list[tuple[str, Callable[[], Any]]] = [
    ("prodigy", lambda: gc.prodigy(_decaying())),
    ("dadapt_adamw", lambda: gc.dadapt_adamw(_decaying())),
    ("cocob", lambda: gc.cocob(_decaying())),
    ("mechanize", lambda: gc.mechanize(gc.adam(_decaying()))),
    ("momo", gc.momo),
    ("momo_adam", lambda: gc.momo_adam(1.0)),
]


@pytest.mark.parametrize("make", [pytest.param(m, id=i) for i, m in CONVERGING])
def test_every_optimizer_minimizes_a_parabola_and_the_rosenbrock_function(
    make: Callable[[], Any],
) -> None:
    tx = gc.with_extra_args_support(make())

    def minimize(problem: Callable[[], Any]) -> tuple[jax.Array, jax.Array]:
        start, minimum, f = problem()

        def step(carry: tuple[Any, Any], _: Any) -> tuple[tuple[Any, Any], None]:
            params, state = carry
            value, grads = jax.value_and_grad(f)(params)
            updates, state = tx.update(grads, state, params, value=value)
            return (gc.apply_updates(params, updates), state), None

        final = jax.lax.scan(step, (start, tx.init(start)), None, CONVERGE_STEPS)[0][0]
        return final, minimum

    for final, minimum in jax.jit(lambda: (minimize(parabola), minimize(rosenbrock)))():
        assert final.dtype == jnp.float32
        np.testing.assert_allclose(final, minimum, rtol=0, atol=CONVERGE_ATOL)


# --- 4. Init from shapes, the loss argument, hyperparameters as state ------------------------

BUILDERS: dict[str, Callable[[], Any]] = {
    "prodigy": lambda: gc.prodigy(weight_decay=0.1, mask=M),
    "dadapt_adamw": lambda: gc.dadapt_adamw(weight_decay=0.1),
    "scale_by_cocob": gc.scale_by_cocob,
    "cocob": lambda: gc.cocob(weight_decay=0.1),
    "mechanize": lambda: gc.mechanize(gc.adam(1.0)),
    "momo": lambda: gc.momo(adapt_lower_bound=True),
    "momo_adam": lambda: gc.momo_adam(weight_decay=0.1, mask=M),
}


@pytest.mark.parametrize("name", BUILDERS)
def test_init_from_shapes_gives_the_same_run_as_init_from_values(name: str) -> None:
    # The initial parameters that Prodigy, COCOB and Mechanic need are recorded at the first
    # update, so init needs shapes and dtypes only.
    tx = gc.with_extra_args_support(BUILDERS[name]())
    abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), PARAMS)

    @jax.jit
    def run() -> tuple[Any, Any]:
        def three_steps(state: Any) -> Any:
            params, out = PARAMS, []
            for k in range(3):
                grads = noisy_grad(params, jax.tree.map(lambda n, k=k: n[k], NOISES))
                updates, state = tx.update(grads, state, params, value=loss(params))
                params = gc.apply_updates(params, updates)
                out.append(updates)
            return out, state

        return three_steps(tx.init(abstract)), three_steps(tx.init(PARAMS))

    from_shapes, from_values = run()
    jax.tree.map(np.testing.assert_array_equal, from_shapes, from_values)


@pytest.mark.parametrize("name", ["momo", "momo_adam"])
def test_momo_without_the_loss_says_to_pass_value_while_tracing(name: str) -> None:
    tx = getattr(gc, name)()
    state = tx.init(PARAMS)
    grads = noisy_grad(PARAMS, jax.tree.map(lambda n: n[0], NOISES))
    match = rf"^{name}: update needs `value=`.* `update\(grads, state, params, value=loss\)`"
    for update in (tx.update, jax.jit(tx.update)):
        with pytest.raises(ValueError, match=match):
            update(grads, state, PARAMS)
    with pytest.raises(ValueError, match=rf"^{name}: `value` must be a scalar"):
        tx.update(grads, state, PARAMS, value=jnp.ones(4))
    with pytest.raises(ValueError, match=rf"^{name}: update needs the current parameters"):
        tx.update(grads, state, value=jnp.float32(1.0))
    # The registry's with_objective supplies value=, as a training loop does.
    updates, _ = jax.jit(with_objective(tx).update)(grads, state, PARAMS)
    assert jax.tree.structure(updates) == jax.tree.structure(grads)


@pytest.mark.parametrize(
    ("betas", "error", "match"),
    [
        ((0.9, 1.0), ValueError, r"`betas\[1\]` must be in \[0, 1\); got 1\.0"),
        ((-0.1, 0.999), ValueError, r"`betas\[0\]` must be in \[0, 1\); got -0\.1"),
        (0.9, TypeError, r"`betas` must be a pair \(b1, b2\) of numbers in \[0, 1\); got float"),
        ((0.9, 0.99, 0.9), TypeError, r"`betas` must be a pair"),
        (("0.9", 0.99), TypeError, r"`betas\[0\]` must be a number; got str"),
    ],
)
@pytest.mark.parametrize("name", ["prodigy", "dadapt_adamw"])
def test_bad_betas_raise_at_construction_naming_the_entry(
    name: str, betas: Any, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=rf"^{name}: {match}"):
        getattr(gc, name)(betas=betas)


def test_a_mask_of_another_structure_is_refused_at_init() -> None:
    bad = {"layers": [{"w": True}], "scale": False}
    for tx in (gc.prodigy(weight_decay=0.1, mask=bad), gc.momo(weight_decay=0.1, mask=bad)):
        with pytest.raises(ValueError, match=r"the trees `mask` and `params` differ"):
            tx.init(PARAMS)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "prodigy",
            ["b1", "b2", "eps", "estim_lr0", "estim_lr_coef", "learning_rate", "weight_decay"],
        ),
        ("dadapt_adamw", ["b1", "b2", "eps", "learning_rate", "weight_decay"]),
        ("scale_by_cocob", ["alpha", "eps"]),
        ("mechanize", ["eps", "s_init", "weight_decay"]),
        ("momo", ["beta", "learning_rate", "lower_bound", "weight_decay"]),
        ("momo_adam", ["b1", "b2", "eps", "learning_rate", "lower_bound", "weight_decay"]),
    ],
)
def test_numeric_hyperparameters_are_state_readable_by_name(name: str, expected: list[str]) -> None:
    tx = gc.mechanize(gc.identity()) if name == "mechanize" else getattr(gc, name)()
    assert sorted(gc.get_hyperparams(tx.init(PARAMS))) == expected


def test_a_learning_rate_set_in_the_state_scales_momos_cap() -> None:
    tx = gc.momo(1.0)
    grads = jax.tree.map(lambda p: jnp.ones_like(p), PARAMS)
    state = gc.set_hyperparams(tx.init(PARAMS), learning_rate=1e-3)
    updates, _ = tx.update(grads, state, PARAMS, value=jnp.float32(1e6))  # the cap binds
    np.testing.assert_allclose(jax.tree.leaves(updates)[0], -1e-3, rtol=1e-6)


# --- Tables for tests/test_errors.py ---------------------------------------------------------

_LR_KIND = ("learning_rate", NON_NEGATIVE)
_ARGS: dict[str, tuple[tuple[str, str], ...]] = {
    "prodigy": (
        _LR_KIND,
        ("beta3", RATE),
        ("eps", NON_NEGATIVE),
        ("estim_lr0", POSITIVE),
        ("estim_lr_coef", POSITIVE),
        ("weight_decay", NON_NEGATIVE),
    ),
    "dadapt_adamw": (
        _LR_KIND,
        ("eps", NON_NEGATIVE),
        ("estim_lr0", POSITIVE),
        ("weight_decay", NON_NEGATIVE),
    ),
    "scale_by_cocob": (("alpha", POSITIVE), ("eps", POSITIVE)),
    "cocob": (_LR_KIND, ("alpha", POSITIVE), ("eps", POSITIVE), ("weight_decay", NON_NEGATIVE)),
    "mechanize": (("weight_decay", NON_NEGATIVE), ("eps", NON_NEGATIVE), ("s_init", POSITIVE)),
    "momo": (_LR_KIND, ("beta", RATE), ("lower_bound", FINITE), ("weight_decay", NON_NEGATIVE)),
    "momo_adam": (
        _LR_KIND,
        ("b1", RATE),
        ("b2", RATE),
        ("eps", NON_NEGATIVE),
        ("lower_bound", FINITE),
        ("weight_decay", NON_NEGATIVE),
    ),
}
# cocob's alpha and eps are checked by scale_by_cocob, which it builds.
_REPORTER = {("cocob", "alpha"): "scale_by_cocob", ("cocob", "eps"): "scale_by_cocob"}
HYPERPARAMETERS: list[tuple[str, str, str, str]] = [
    (factory, arg, kind, _REPORTER.get((factory, arg), factory))
    for factory, args in _ARGS.items()
    for arg, kind in args
]
FACTORIES: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {
    "prodigy": (gc.prodigy, {}),
    "dadapt_adamw": (gc.dadapt_adamw, {}),
    "scale_by_cocob": (gc.scale_by_cocob, {}),
    "cocob": (gc.cocob, {}),
    "mechanize": (gc.mechanize, {"base_optimizer": gc.sgd(1.0)}),
    # MoMo's update needs value=: with_objective supplies it to the shared error tests.
    "momo": (lambda **kw: with_objective(gc.momo(**kw)), {}),
    "momo_adam": (lambda **kw: with_objective(gc.momo_adam(**kw)), {}),
}


@pytest.mark.parametrize("name", BUILDERS)
def test_complex_parameters_are_refused_naming_the_leaf(name: str) -> None:
    tx = gc.with_extra_args_support(BUILDERS[name]())
    params = {"z": jnp.ones(2, jnp.complex64)}
    with pytest.raises(TypeError, match=r": the leaf at \['z'\] is complex \(complex64\)"):
        jax.eval_shape(lambda: tx.update(params, tx.init(params), params, value=jnp.float32(1.0)))
