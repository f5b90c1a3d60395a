"""PSGD-Kron (Li, 2015-2024): a float64 reference of the fit and the step, the coin, convergence.

What the NumPy reference follows (``_numpy_kron``, float64, written for vectors
and matrices from the equations, not from gradchain's code):

- Li's whitening fit of ``Q`` as the psgd_jax ``kron`` code does it (the
  ``dQ = E Q`` form): with ``A = Q_1 G Q_2^T`` and ``B = Q_1^{-T} V Q_2^{-1}``,
  ``Q_1 <- Q_1 - lr / ||A A^T + B B^T||_lb * triu(A A^T - B B^T) Q_1`` (and with
  ``A^T A``, ``B^T B`` for ``Q_2``), where ``||.||_lb`` is one power-iteration
  step from the row of largest norm; a diagonal factor uses the diagonals and
  the largest magnitude instead. The factors are then rescaled to a common
  largest magnitude (the reference balances them at random, 1 update in 100;
  it changes no product ``Q``).
- The momentum is debiased and fed to both the fit and the preconditioning
  (psgd_jax's ``momentum_into_precond_update``); the update is ``Q^T Q m``,
  scaled down to RMS 1.1 (kron_torch's ``clip_update_rms``).
- The random ``V`` comes from the documented key schedule: the state's key is
  split into (next, coin, v); one normal draw from the v key, cut into the leaves
  group by group (leaves of one layout together, in tree order).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradchain as gc
from gradchain._kron import _default_update_probability
from tests.example_loader import digits_validation_accuracy
from tests.ranges import NON_NEGATIVE, POSITIVE, PROBABILITY, RATE

# --- the float64 reference ------------------------------------------------------------------


def _full(q: np.ndarray) -> np.ndarray:
    return np.diag(q) if q.ndim == 1 else q


def _norm_lower_bound(m: np.ndarray) -> float:
    row = m[np.argmax((m * m).sum(axis=1))]
    x = m @ row
    return float(np.linalg.norm(m @ (x / np.linalg.norm(x))))


def _fit_factor(q: np.ndarray, t1: np.ndarray, t2: np.ndarray, lr: float) -> np.ndarray:
    if q.ndim == 1:
        d1, d2 = np.diag(t1), np.diag(t2)
        return q - lr / np.max(np.abs(d1 + d2)) * (d1 - d2) * q
    return q - lr / _norm_lower_bound(t1 + t2) * np.triu(t1 - t2) @ q


def _balance(qs: list[np.ndarray]) -> list[np.ndarray]:
    if len(qs) < 2:
        return qs
    norms = [np.max(np.abs(q)) for q in qs]
    gmean = np.prod(norms) ** (1 / len(qs))
    return [q * gmean / n for q, n in zip(qs, norms, strict=True)]


def _fit(qs: list[np.ndarray], g: np.ndarray, v: np.ndarray, lr: float) -> list[np.ndarray]:
    if g.ndim == 1:  # one diagonal factor
        (q,) = qs
        a, b = q * g, v / q
        return [_fit_factor(q, np.diag(a * a), np.diag(b * b), lr)]
    q1, q2 = (_full(q) for q in qs)
    a = q1 @ g @ q2.T
    b = np.linalg.inv(q1).T @ v @ np.linalg.inv(q2)
    new1 = _fit_factor(qs[0], a @ a.T, b @ b.T, lr)
    new2 = _fit_factor(qs[1], a.T @ a, b.T @ b, lr)
    return _balance([new1, new2])


def _precondition(qs: list[np.ndarray], g: np.ndarray) -> np.ndarray:
    if g.ndim == 1:
        return qs[0] * qs[0] * g
    q1, q2 = (_full(q) for q in qs)
    return q1.T @ q1 @ g @ q2.T @ q2


def _vs(key_data: jax.Array, shapes: list[tuple[int, ...]]) -> tuple[jax.Array, list[np.ndarray]]:
    """The documented key schedule: (next, coin, v); one normal draw for all leaves.

    It is laid out by layout group (here: by shape), groups in the order of their first leaf.
    """
    nxt, _, v_key = jax.random.split(jax.random.wrap_key_data(key_data), 3)
    order = sorted(range(len(shapes)), key=lambda i: (shapes.index(shapes[i]), i))
    sizes = [int(np.prod(shapes[i])) for i in order]
    flat = np.asarray(jax.random.normal(v_key, (sum(sizes),), jnp.float32), np.float64)
    vs: list[np.ndarray] = [np.empty(0)] * len(shapes)
    for i, cut in zip(order, np.split(flat, np.cumsum(sizes)[:-1]), strict=True):
        vs[i] = cut.reshape(shapes[i])
    return jax.random.key_data(nxt), vs


def _numpy_kron(
    grads: list[dict[str, np.ndarray]], qs: dict[str, list[np.ndarray]], b1: float, lr: float
) -> list[tuple[dict[str, np.ndarray], dict[str, list[np.ndarray]]]]:
    names = sorted(qs)  # dict leaves in tree order
    key = jax.random.key_data(jax.random.key(0))
    mu = {n: np.zeros_like(grads[0][n]) for n in names}
    out = []
    for t, g in enumerate(grads, start=1):
        key, vs = _vs(key, [g[n].shape for n in names])
        ups = {}
        for n, v in zip(names, vs, strict=True):
            mu[n] = b1 * mu[n] + (1 - b1) * g[n]
            m_hat = mu[n] / (1 - b1**t)
            qs[n] = _fit(qs[n], m_hat, v, lr)
            u = _precondition(qs[n], m_hat)
            ups[n] = u * min(1.0, 1.1 / np.sqrt(np.mean(u * u)))
        out.append((ups, {n: [q.copy() for q in qs[n]] for n in names}))
    return out


@pytest.mark.parametrize(
    ("mode", "w_kinds"),
    [(None, "tt"), ("one_diag", "dt"), ("all_diag", "dd")],
    ids=["triangular", "one_diag", "all_diag"],
)
def test_fits_and_steps_match_a_float64_numpy_reference_at_every_step(
    mode: str | None, w_kinds: str
) -> None:
    rng = np.random.default_rng(0)
    # two matrices of one layout, fitted stacked, with a vector between them in tree order
    params = {"a": jnp.zeros((4, 3)), "b": jnp.zeros(3), "w": jnp.zeros((4, 3))}
    grads = [{n: rng.normal(size=p.shape) for n, p in params.items()} for _ in range(6)]
    tx = gc.scale_by_kron(0.9, 1.0, memory_save_mode=mode, precond_init_scale=0.7)
    state = tx.init(params)
    assert [q.ndim for q in state.qs["w"]] == [2 if k == "t" else 1 for k in w_kinds]
    start = {n: [np.asarray(q, np.float64) for q in state.qs[n]] for n in params}
    want = _numpy_kron(grads, start, 0.9, 0.1)
    update = jax.jit(tx.update)
    for g, (want_u, want_q) in zip(grads, want, strict=True):
        u, state = update(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), g), state)
        for n in params:
            np.testing.assert_allclose(u[n], want_u[n], rtol=2e-4, atol=1e-5)
            for q, wq in zip(state.qs[n], want_q[n], strict=True):
                np.testing.assert_allclose(q, wq, rtol=2e-4, atol=1e-5)
    # the triangular factors stay upper triangular
    for q in state.qs["w"]:
        if q.ndim == 2:
            assert float(jnp.abs(jnp.tril(q, -1)).max()) == 0.0


def test_vectors_and_scalars_get_diagonal_factors_and_large_axes_too() -> None:
    tx = gc.scale_by_kron(max_size_triangular=4, min_ndim_triangular=2)
    params = {"s": jnp.zeros(()), "v": jnp.zeros(7), "m": jnp.zeros((3, 5)), "e": jnp.zeros((0, 2))}
    qs = tx.init(params).qs
    assert [q.shape for q in qs["s"]] == [(1,)]
    assert [q.shape for q in qs["v"]] == [(7,)]
    assert [q.shape for q in qs["m"]] == [(3, 3), (5,)]  # 5 > max_size_triangular
    assert qs["e"] == ()  # a zero-size leaf has nothing to precondition
    qs = gc.scale_by_kron(min_ndim_triangular=1).init({"v": jnp.zeros(7)}).qs
    assert [q.shape for q in qs["v"]] == [(7, 7)]


# --- the coin -------------------------------------------------------------------------------


def _run(tx: Any, params: Any, steps: int, seed: int = 0) -> tuple[Any, list[Any]]:
    rng = np.random.default_rng(seed)
    state, update, states = tx.init(params), jax.jit(tx.update), []
    for _ in range(steps):
        grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
        _, state = update(grads, state, params)
        states.append(state)
    return state, states


def test_probability_zero_never_fits_q_and_the_update_is_the_clipped_momentum() -> None:
    params = {"w": jnp.zeros((3, 2))}
    tx = gc.scale_by_kron(0.0, 0.0, precond_init_scale=2.0, clip_update_rms=False)
    state = start = tx.init(params)
    np.testing.assert_allclose(start.qs["w"][0], np.sqrt(2.0) * np.eye(3), rtol=1e-7)
    g = {"w": jnp.arange(6.0).reshape(3, 2) / 10}
    update = jax.jit(tx.update)
    for _ in range(5):
        u, state = update(g, state)
        np.testing.assert_allclose(u["w"], 4.0 * g["w"], rtol=1e-6)  # Q = 2 I (sqrt 2 a side)
    assert jax.tree.all(jax.tree.map(np.array_equal, state.qs, start.qs))


def test_a_scheduled_probability_fits_q_only_while_it_is_one() -> None:
    prob = gc.piecewise_constant_schedule(1.0, {3: 0.0})
    params = {"w": jnp.zeros((3, 2))}
    _, states = _run(gc.scale_by_kron(preconditioner_update_probability=prob), params, 8)
    changed = [
        not np.array_equal(a.qs["w"][0], b.qs["w"][0]) for a, b in itertools.pairwise(states)
    ]
    assert changed == [True, True, False, False, False, False, False]


def test_a_probability_of_0_3_fits_q_about_30_percent_of_the_time() -> None:
    tx = gc.scale_by_kron(preconditioner_update_probability=0.3)
    params = {"w": jnp.zeros((2, 2))}
    grads = jnp.asarray(np.random.default_rng(1).normal(size=(300, 2, 2)), jnp.float32)

    def body(state: Any, g: jax.Array) -> tuple[Any, jax.Array]:
        _, new = tx.update({"w": g}, state)
        return new, jnp.any(new.qs["w"][0] != state.qs["w"][0])

    _, fitted = jax.lax.scan(body, tx.init(params), grads)
    assert 60 <= int(fitted.sum()) <= 120  # binomial(300, 0.3): mean 90, sd 8


def test_the_default_probability_is_the_references_flat_then_decaying_schedule() -> None:
    sched = _default_update_probability()
    got = [round(float(sched(jnp.asarray(t))), 4) for t in (0, 250, 1250, 2250, 5000)]
    assert got == [1.0, 1.0, round(float(np.exp(-1.0)), 4), round(float(np.exp(-2.0)), 4), 0.03]
    state = gc.kron().init({"w": jnp.zeros((2, 2))})
    assert float(gc.get_hyperparams(state)["preconditioner_update_probability"]) == 1.0


def test_the_fit_runs_under_a_cond_so_an_undrawn_update_skips_it() -> None:
    tx = gc.scale_by_kron(preconditioner_update_probability=0.5)
    params = {"w": jnp.zeros((3, 2))}
    jaxpr = jax.make_jaxpr(tx.update)(params, tx.init(params))
    conds = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "cond"]
    assert len(conds) == 1
    # the solve and the Gram matrices are inside the cond, not outside it
    outside = {e.primitive.name for e in jaxpr.jaxpr.eqns}
    assert "triangular_solve" not in outside


def test_the_key_is_uint32_data_that_flax_serializes_and_runs_repeat_from_it() -> None:
    params = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}
    tx = gc.kron(0.01, preconditioner_update_probability=0.5, key=jax.random.key(3))
    state, _ = _run(tx, params, 4)
    key = state[0].rng_key
    assert key.dtype == jnp.uint32
    restored = flax.serialization.from_bytes(tx.init(params), flax.serialization.to_bytes(state))
    assert jax.tree.all(jax.tree.map(np.array_equal, restored, state))
    again, _ = _run(tx, params, 4)
    assert jax.tree.all(jax.tree.map(np.array_equal, again, state))
    other, _ = _run(gc.kron(0.01, preconditioner_update_probability=0.5, key=4), params, 4)
    assert not np.array_equal(other[0].qs["w"][0], state[0].qs["w"][0])


# --- dtypes, init, hyperparameters ----------------------------------------------------------


def test_bfloat16_params_keep_float32_factors_and_bfloat16_updates() -> None:
    params = {"w": jnp.zeros((4, 3), jnp.bfloat16)}
    tx = gc.scale_by_kron(preconditioner_update_probability=1.0)
    state, _ = _run(tx, params, 3)
    assert [q.dtype for q in state.qs["w"]] == [jnp.float32, jnp.float32]
    assert state.mu["w"].dtype == jnp.bfloat16
    u, _ = tx.update({"w": jnp.ones((4, 3), jnp.bfloat16)}, state)
    assert u["w"].dtype == jnp.bfloat16
    assert bool(jnp.all(jnp.isfinite(u["w"].astype(jnp.float32))))


def test_precond_init_scale_none_sets_each_leafs_scale_from_its_first_gradient() -> None:
    params = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(4)}
    tx = gc.scale_by_kron(0.0, 0.0, precond_init_scale=None, clip_update_rms=False)
    g = {"w": jnp.full((3, 2), 16.0), "b": jnp.array([1.0, -1.0, 1.0, -1.0]) / 256}
    u, state = tx.update(g, tx.init(params))
    # (mean g^4)^(-1/8) = |g|^(-1/2): 1/4 for w (a square root per factor), 16 for b
    np.testing.assert_allclose(state.qs["w"][0], 0.5 * np.eye(3), rtol=1e-6)
    np.testing.assert_allclose(state.qs["w"][1], 0.5 * np.eye(2), rtol=1e-6)
    np.testing.assert_allclose(state.qs["b"][0], np.full(4, 16.0), rtol=1e-6)
    np.testing.assert_allclose(u["w"], np.full((3, 2), 1.0), rtol=1e-6)  # P g = g / |g|
    u, state2 = tx.update(g, state)  # only the first update sets the scale
    np.testing.assert_array_equal(state2.qs["w"][0], state.qs["w"][0])


def test_hyperparameters_live_in_the_state() -> None:
    tx = gc.scale_by_kron(0.9, 1.0, precond_lr=0.1)
    params = {"w": jnp.zeros((3, 2))}
    state = tx.init(params)
    assert sorted(gc.get_hyperparams(state)) == [
        "b1",
        "precond_lr",
        "preconditioner_update_probability",
    ]
    state = gc.set_hyperparams(state, precond_lr=0.0)  # a fit of step 0 leaves Q alone
    _, state = tx.update({"w": jnp.ones((3, 2))}, state)
    np.testing.assert_allclose(state.qs["w"][0], np.eye(3), atol=1e-7)


def test_a_complex_leaf_a_foreign_state_or_an_unknown_mode_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"^scale_by_kron: `memory_save_mode` must be None"):
        gc.scale_by_kron(memory_save_mode="smart_one_diag")
    tx = gc.scale_by_kron()
    z = {"w": jnp.zeros((2, 2), jnp.complex64)}
    with pytest.raises(TypeError, match=r"^scale_by_kron: the update at leaf 0 is complex"):
        tx.update(z, tx.init(z))
    state = gc.scale_by_kron(memory_save_mode="all_diag").init({"w": jnp.zeros((2, 2))})
    with pytest.raises(ValueError, match=r"^scale_by_kron: the state's factors at leaf 0"):
        tx.update({"w": jnp.zeros((2, 2))}, state)


# --- convergence ----------------------------------------------------------------------------


def _minimize(tx: Any, f: Callable[[jax.Array], jax.Array], x0: jax.Array, steps: int) -> float:
    def body(carry: Any, _: Any) -> tuple[Any, None]:
        x, state = carry
        u, state = tx.update(jax.grad(f)(x), state, x)
        return (gc.apply_updates(x, u), state), None

    run = jax.jit(lambda x: jax.lax.scan(body, (x, tx.init(x)), None, length=steps)[0][0])
    return float(f(run(x0)))


def test_kron_minimizes_a_parabola_and_the_rosenbrock_function() -> None:
    def parabola(x: jax.Array) -> jax.Array:
        return jnp.sum((x - jnp.array([[1.0, -2.0], [3.0, 0.5]])) ** 2)

    def rosenbrock(x: jax.Array) -> jax.Array:  # a (1, 2) matrix
        a, b = x[0, 0], x[0, 1]
        return (1 - a) ** 2 + 100 * (b - a**2) ** 2

    tx = gc.kron(gc.cosine_decay_schedule(0.1, 300))
    assert _minimize(tx, parabola, jnp.zeros((2, 2)), 300) < 1e-3
    tx = gc.kron(gc.cosine_decay_schedule(0.02, 2000), min_ndim_triangular=1)
    assert _minimize(tx, rosenbrock, jnp.array([[-1.0, 1.0]]), 2000) < 1e-2


def test_kron_beats_sgd_on_an_ill_conditioned_least_squares_problem() -> None:
    rng = np.random.default_rng(6)
    rotation = np.linalg.qr(rng.normal(size=(16, 16)))[0]  # ill-conditioned, not axis-aligned
    spectrum = rotation @ np.diag(np.logspace(0, 2, 16)) @ rotation.T
    a = jnp.asarray(rng.normal(size=(64, 16)) @ spectrum / 8, jnp.float32)
    target = jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)
    b = a @ target

    def loss(w: jax.Array) -> jax.Array:
        return 0.5 * jnp.mean((a @ w - b) ** 2) / jnp.mean(b**2)

    def run(tx: Any) -> float:
        return _minimize(tx, loss, jnp.zeros((16, 8)), 200)

    # Kron at its best rate of 0.01 ... 3 (measured), SGD with momentum at its best of a grid
    # that reaches divergence; both cosine-decayed over 200 steps.
    kron = run(gc.kron(gc.cosine_decay_schedule(0.3, 200), preconditioner_update_probability=1.0))
    sgd = np.nanmin(
        [run(gc.sgd(gc.cosine_decay_schedule(lr, 200), momentum=0.9)) for lr in (3, 10, 30, 100)]
    )
    assert kron < 0.1 * sgd, (kron, sgd)  # measured: 8e-7 against 6e-5 (SGD at 30; 100 diverges)


def test_kron_trains_the_digits_mlp_to_95_percent_in_150_steps() -> None:
    acc = digits_validation_accuracy(gc.kron(3e-3, weight_decay=1e-4), steps=150)
    assert acc >= 0.95, acc  # measured: 0.969 (Adam at the same rate: 0.972)


# --- tables for tests/test_errors.py ----------------------------------------------------------

FACTORIES: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {
    "scale_by_kron": (gc.scale_by_kron, {}),
    "kron": (gc.kron, {}),
}

HYPERPARAMETERS: list[tuple[str, str, str, str]] = [
    ("scale_by_kron", "b1", RATE, "scale_by_kron"),
    ("scale_by_kron", "preconditioner_update_probability", PROBABILITY, "scale_by_kron"),
    ("scale_by_kron", "precond_lr", PROBABILITY, "scale_by_kron"),
    ("scale_by_kron", "precond_init_scale", POSITIVE, "scale_by_kron"),
    ("kron", "learning_rate", NON_NEGATIVE, "kron"),
    ("kron", "b1", RATE, "scale_by_kron"),
    ("kron", "weight_decay", NON_NEGATIVE, "kron"),
    ("kron", "preconditioner_update_probability", PROBABILITY, "scale_by_kron"),
    ("kron", "precond_lr", PROBABILITY, "scale_by_kron"),
    ("kron", "precond_init_scale", POSITIVE, "scale_by_kron"),
]
