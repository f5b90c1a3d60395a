"""Scion and uScion: Pethick et al. 2025, Training Deep Learning Models with Norm-Constrained LMOs.

What the tests follow: the paper's Algorithm 1 (uSCG: ``x <- x + gamma lmo(d)``) and
Algorithm 2 (SCG: ``x <- (1 - gamma) x + gamma lmo(d)``), with ``d <- (1 - alpha) d + alpha g``
from ``d = 0``, and the LMOs of the paper's Table 2 as the authors' reference code
(LIONS-EPFL/scion, ``Spectral``/``ColNorm``/``RowNorm``/``Sign``/``BiasRMS``) computes them:
eps added to the norm, Newton-Schulz for the spectral LMO, transposed to Flax's (in, out)
layout. Scion has no Optax counterpart, so there is no parity test.

1. A float64 NumPy loop of both algorithms, with every norm, for a few steps.
2. Each LMO lands on its norm's unit sphere and attains the dual norm.
3. Routing of norms: names, ScionNorm scales, trees, functions, path rules; stacked layers.
4. Parabola, Rosenbrock and a least-squares matrix problem in ``lax.scan``; the digits MLP.
5. Errors and the tables for tests/test_errors.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradchain as gc
from gradchain import _linalg
from tests.example_loader import load_example
from tests.ranges import NON_NEGATIVE, POSITIVE, RATE

EXACT = (1.5, -0.5, 0.0)  # the cubic Newton-Schulz step: converges to U V^T exactly

# --- 1. The algorithms in float64 ------------------------------------------------------------


def _ns64(g: np.ndarray, coeffs: Any, eps: float) -> np.ndarray:
    x = g / (np.linalg.norm(g) + eps)
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    for a, b, c in coeffs:
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def lmo_direction(kind: str, d: np.ndarray, coeffs: Any, eps: float = 1e-8) -> np.ndarray:
    """-lmo(d)/rho for a (fan_in, fan_out) matrix or a vector, from Table 2 / the reference code."""
    if d.ndim != 2:
        return np.sign(d) if kind == "sign" else d / (np.sqrt(np.mean(d**2)) + eps)
    fan_in, fan_out = d.shape
    if kind == "spectral":
        return np.sqrt(fan_out / fan_in) * _ns64(d, coeffs, eps)
    if kind == "colnorm":  # torch ColNorm on W^T: each input's weights over the outputs
        return d / (np.linalg.norm(d, axis=1, keepdims=True) / np.sqrt(fan_out) + eps)
    if kind == "rownorm":  # torch RowNorm(normalized=True) on W^T
        return d / (np.linalg.norm(d, axis=0, keepdims=True) * np.sqrt(fan_in) + eps)
    if kind == "sign":  # torch Sign(normalized=True)
        return np.sign(d) / fan_in
    return d / (np.sqrt(np.mean(d**2)) + eps)


NORMS = {"w": "spectral", "e": "colnorm", "h": "rownorm", "s": "sign", "b": "sign", "g": "rms"}
SHAPES = {"w": (6, 4), "e": (5, 3), "h": (4, 7), "s": (3, 5), "b": (4,), "g": (3,)}


def _problem(seed: int = 0) -> tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]]]:
    rng = np.random.default_rng(seed)
    params = {k: rng.normal(size=s) for k, s in SHAPES.items()}
    grads = [{k: rng.normal(size=s) for k, s in SHAPES.items()} for _ in range(4)]
    return params, grads


def scion_reference(
    params: dict[str, np.ndarray],
    grads: list[dict[str, np.ndarray]],
    lr: float,
    alpha: float,
    rho: float,
    scales: dict[str, float],
    constrained: bool,
    coeffs: Any,
) -> dict[str, np.ndarray]:
    """Algorithms 1 (uSCG) and 2 (SCG) of the paper, in float64."""
    x = {k: v.copy() for k, v in params.items()}
    d = {k: np.zeros_like(v) for k, v in params.items()}
    for g in grads:
        for k in x:
            d[k] = (1 - alpha) * d[k] + alpha * g[k]
            lmo = -rho * scales.get(k, 1.0) * lmo_direction(NORMS[k], d[k], coeffs)
            x[k] = (1 - lr) * x[k] + lr * lmo if constrained else x[k] + lr * lmo
    return x


@pytest.mark.parametrize("unconstrained", [False, True], ids=["scion", "uscion"])
def test_scion_follows_the_papers_algorithms_in_float64(unconstrained: bool) -> None:
    params, grads = _problem()
    coeffs = _linalg.ns_schedule("test", "muon", 5)
    scales = {"h": 3.0}
    norms = {k: gc.ScionNorm(n, scales.get(k, 1.0)) for k, n in NORMS.items()}
    dims = {k: gc.MuonDimensionNumbers() if len(s) == 2 else None for k, s in SHAPES.items()}
    tx = gc.scion(
        0.1, beta=0.8, radius=2.0, unconstrained=unconstrained, norms=norms,
        weight_dimension_numbers=dims,
    )  # fmt: skip

    def run(p: Any, gs: Any) -> Any:
        def step(carry: Any, g: Any) -> Any:
            p, s = carry
            u, s = tx.update(g, s, p)
            return (gc.apply_updates(p, u), s), None

        return jax.lax.scan(step, (p, tx.init(p)), gs)[0][0]

    as32 = lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), t)  # noqa: E731
    stacked = jax.tree.map(lambda *g: np.stack(g), *grads)
    got = jax.jit(run)(as32(params), as32(stacked))
    want = scion_reference(params, grads, 0.1, 0.2, 2.0, scales, not unconstrained, coeffs)
    for k in SHAPES:
        np.testing.assert_allclose(got[k], want[k], rtol=2e-5, atol=2e-5, err_msg=k)


# --- 2. The LMOs are maximizers on their unit spheres ----------------------------------------


def _one_step(norm: Any, d: np.ndarray, **kw: Any) -> np.ndarray:
    tx = gc.scale_by_scion(beta=0.0, norms=norm, **kw)
    x = jnp.asarray(d, jnp.float32)
    u, _ = tx.update(x, tx.init(x))
    return np.asarray(u, np.float64)


def test_each_lmo_lands_on_its_norms_unit_sphere() -> None:
    d = np.random.default_rng(1).normal(size=(8, 5))
    fan_in, fan_out = d.shape
    u = _one_step("spectral", d, ns_coeffs=EXACT, ns_steps=25)
    # ||u||_{RMS->RMS} = sqrt(fan_in / fan_out) * sigma_max(u) = 1
    sv = np.linalg.svd(u, compute_uv=False)
    np.testing.assert_allclose(sv * np.sqrt(fan_in / fan_out), 1.0, atol=1e-4)
    u = _one_step("colnorm", d)  # ||u||_{1->RMS}: the largest RMS of an input's row
    np.testing.assert_allclose(np.sqrt(np.mean(u**2, axis=1)), 1.0, rtol=1e-5)
    u = _one_step("rownorm", d)  # ||u||_{RMS->inf}: sqrt(fan_in) times an output's l2 norm
    np.testing.assert_allclose(np.linalg.norm(u, axis=0) * np.sqrt(fan_in), 1.0, rtol=1e-5)
    u = _one_step("sign", d)  # ||u||_{1->inf} = fan_in * max |u_ij|
    np.testing.assert_allclose(np.abs(u) * fan_in, 1.0)
    assert np.sum(d * u) == pytest.approx(np.abs(d).sum() / fan_in, rel=1e-5)  # the dual norm
    v = np.array([0.5, -2.0, 0.0])
    np.testing.assert_allclose(_one_step("sign", v), [1.0, -1.0, 0.0])  # l_inf; sign(0) = 0
    np.testing.assert_allclose(np.sqrt(np.mean(_one_step("rms", v) ** 2)), 1.0, rtol=1e-5)


def test_the_spectral_lmo_is_the_scaled_polar_factor() -> None:
    d = np.random.default_rng(2).normal(size=(4, 9))
    u = _one_step("spectral", d, ns_coeffs=EXACT, ns_steps=25)
    left, _, right = np.linalg.svd(d, full_matrices=False)
    np.testing.assert_allclose(u, np.sqrt(9 / 4) * left @ right, atol=1e-4)


# --- 3. Choosing the norms -------------------------------------------------------------------


def _params() -> dict[str, Any]:
    return {
        "embed": jnp.ones((10, 4)),
        "layers": {"kernel": jnp.ones((3, 4, 4)), "bias": jnp.ones((3, 4))},
        "head": {"kernel": jnp.ones((4, 2)), "bias": jnp.ones(2)},
    }


def test_path_rules_choose_norms_and_scales_and_stacked_layers_are_matrices() -> None:
    params = _params()
    g = jax.tree.map(
        lambda p: jnp.asarray(np.random.default_rng(p.size).normal(size=p.shape), jnp.float32),
        params,
    )
    rules = [
        ("embed", "colnorm"),
        ("head/kernel", gc.ScionNorm("sign", scale=5.0)),
        ("**/bias", "rms"),
    ]
    stacked = [("layers/kernel", gc.MuonDimensionNumbers(-2, -1)), ("layers/bias", None)]
    tx = gc.scale_by_scion(beta=0.0, norms=rules, weight_dimension_numbers=stacked)
    u, _ = jax.jit(tx.update)(g, tx.init(params), params)
    np.testing.assert_allclose(
        u["embed"], lmo_direction("colnorm", np.asarray(g["embed"]), ()), rtol=1e-5
    )
    np.testing.assert_allclose(u["head"]["kernel"], 5.0 * np.sign(g["head"]["kernel"]) / 4)
    bias = np.asarray(g["layers"]["bias"])
    np.testing.assert_allclose(u["layers"]["bias"], bias / np.sqrt(np.mean(bias**2)), rtol=1e-5)
    one = gc.scale_by_scion(beta=0.0)
    one_update = jax.jit(one.update)
    for i in range(3):  # each layer of the stack is its own matrix
        want, _ = one_update(g["layers"]["kernel"][i], one.init(params["layers"]["kernel"][i]))
        np.testing.assert_allclose(u["layers"]["kernel"][i], want, rtol=1e-5, atol=1e-6)


def test_norms_as_a_tree_or_a_function_match_the_same_rules() -> None:
    params = {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}
    g = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0], [-1.0, 1.0]]), "b": jnp.array([2.0, -0.5])}
    tree = {"w": "rownorm", "b": gc.ScionNorm("rms", 2.0)}
    outs = [
        gc.scale_by_scion(beta=0.0, norms=n).update(g, gc.scale_by_scion().init(params))[0]
        for n in (tree, lambda p: tree, [("w", "rownorm"), ("b", gc.ScionNorm("rms", 2.0))])
    ]
    for u in outs[1:]:
        jax.tree.map(np.testing.assert_array_equal, u, outs[0])
    b = np.array([2.0, -0.5])
    np.testing.assert_allclose(outs[0]["b"], 2.0 * b / np.sqrt(np.mean(b**2)), rtol=1e-6)


def test_scion_composes_with_matrix_partition_and_its_state_is_visible() -> None:
    params = _params()
    tx = gc.matrix_partition(
        lambda dims: gc.chain(gc.scale_by_scion(weight_dimension_numbers=dims), gc.scale(-0.1)),
        gc.adamw(1e-3),
        dimension_numbers=gc.MuonDimensionNumbers(-2, -1),
        exclude=("embed", "head/**"),
    )
    assert gc.explain(tx, params).assignment["layers/kernel"] == "matrix"
    state = tx.init(params)
    assert {"matrix/radius", "matrix/beta", "fallback/learning_rate"} <= set(
        gc.get_hyperparams(state)
    )
    u, _ = jax.jit(tx.update)(params, state, params)
    assert jax.tree.map(jnp.shape, u) == jax.tree.map(jnp.shape, params)


def test_constrained_scion_is_weight_decay_one_and_uscion_zero() -> None:
    params = {"w": jnp.ones((2, 2))}
    assert float(gc.get_hyperparams(gc.scion(0.1).init(params))["weight_decay"]) == 1.0
    u_state = gc.scion(0.1, unconstrained=True).init(params)
    assert float(gc.get_hyperparams(u_state)["weight_decay"]) == 0.0
    assert jax.tree.structure(u_state) == jax.tree.structure(gc.scion(0.1).init(params))


def test_updates_keep_the_gradients_dtype_and_the_state_its_own() -> None:
    p = {"w": jnp.ones((8, 4), jnp.bfloat16), "b": jnp.ones(4, jnp.bfloat16)}
    tx = gc.scion(0.1, mu_dtype=jnp.float32)
    state = tx.init(p)
    u, new_state = jax.jit(tx.update)(p, state, p)
    assert jax.tree.map(lambda x: x.dtype, u) == jax.tree.map(lambda x: x.dtype, p)
    assert jax.tree.map(lambda x: x.dtype, new_state) == jax.tree.map(lambda x: x.dtype, state)


# --- 4. Convergence ----------------------------------------------------------------------------


def _minimize(tx: Any, loss: Callable[[Any], jax.Array], x0: Any, steps: int) -> Any:
    def step(carry: Any, _: Any) -> Any:
        x, s = carry
        u, s = tx.update(jax.grad(loss)(x), s, x)
        return (gc.apply_updates(x, u), s), None

    (x, _), _ = jax.jit(lambda: jax.lax.scan(step, (x0, tx.init(x0)), None, length=steps))()
    return x


def test_uscion_minimizes_a_parabola_and_the_rosenbrock_function() -> None:
    def parabola(x: jax.Array) -> jax.Array:
        return jnp.sum((x - 1.0) ** 2)

    def rosenbrock(x: jax.Array) -> jax.Array:  # a (1, 2) matrix: the spectral LMO is g/|g|
        return (1.0 - x[0, 0]) ** 2 + 100.0 * (x[0, 1] - x[0, 0] ** 2) ** 2

    tx = gc.scion(gc.cosine_decay_schedule(0.1, 400), unconstrained=True)
    assert float(parabola(_minimize(tx, parabola, jnp.zeros((3, 3)), 400))) < 1e-3
    tx = gc.scion(gc.cosine_decay_schedule(0.02, 3000), unconstrained=True)
    assert float(rosenbrock(_minimize(tx, rosenbrock, jnp.array([[-1.0, 1.0]]), 3000))) < 1e-2


def test_scion_solves_a_least_squares_matrix_problem_inside_its_ball() -> None:
    rng = np.random.default_rng(4)
    a = jnp.asarray(rng.normal(size=(64, 8)).astype(np.float32))
    w_true = rng.normal(size=(8, 5)).astype(np.float32)
    y = a @ jnp.asarray(w_true)

    def loss(p: Any) -> jax.Array:
        return jnp.mean((a @ p["w"] - y) ** 2)

    p0 = {"w": jnp.zeros((8, 5))}
    # SCG converges to the constrained minimum; the radius holds w_true in the ball
    radius = 1.1 * np.sqrt(8 / 5) * np.linalg.norm(w_true, 2)  # ||w||_{RMS->RMS}
    tx = gc.scion(gc.cosine_decay_schedule(0.2, 400), beta=0.5, radius=float(radius))
    w = _minimize(tx, loss, p0, 400)["w"]
    assert float(loss({"w": w})) < 1e-2 * float(loss(p0))
    assert np.sqrt(8 / 5) * np.linalg.norm(np.asarray(w), 2) <= radius * 1.001


def test_scion_trains_the_digits_mlp_to_95_percent_in_50_steps() -> None:
    common = load_example("common")
    data = common.digits()
    p0 = common.init_mlp(jax.random.key(0), (64, 64, 10))
    # Spectral first layer (the paper's rule for image inputs), RowNorm head, sign biases;
    # full batch, constrained Scion with radius 10 and a cosine-decayed rate.
    tx = gc.scion(gc.cosine_decay_schedule(0.1, 50), radius=10.0, norms=[("1/w", "rownorm")])

    def loss(p: Any) -> jax.Array:
        return common.cross_entropy(common.mlp_logits(p, data.x_train), data.y_train)

    p = _minimize(tx, loss, p0, 50)
    acc = float(common.accuracy(common.mlp_logits(p, data.x_val), data.y_val))
    assert acc >= 0.95  # measured 0.967


# --- 5. Errors ---------------------------------------------------------------------------------


def test_a_matrix_norm_on_a_vector_is_refused_naming_its_path() -> None:
    params = {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}
    tx = gc.scale_by_scion(norms={"w": "spectral", "b": "rownorm"})
    with pytest.raises(ValueError, match=r"^scale_by_scion: the norm at b is 'rownorm', a matrix"):
        tx.init(params)
    with pytest.raises(ValueError, match=r"the norm at every leaf is 'frobenius'; the norms are"):
        gc.scale_by_scion(norms="frobenius")
    with pytest.raises(TypeError, match=r"the norm at rule 0 \('w'\) must be one of"):
        gc.scale_by_scion(norms=[("w", 3)])
    with pytest.raises(ValueError, match=r"the scale of the norm at every leaf"):
        gc.scale_by_scion(norms=gc.ScionNorm("sign", scale=0.0))
    tx = gc.scale_by_scion()
    with pytest.raises(TypeError, match=r"^scale_by_scion: the parameter at w is complex"):
        tx.init({"w": jnp.ones((2, 2), jnp.complex64)})


FACTORIES: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {
    "scale_by_scion": (gc.scale_by_scion, {}),
    "scion": (gc.scion, {"learning_rate": 0.1}),
}

HYPERPARAMETERS: list[tuple[str, str, str, str]] = [
    ("scale_by_scion", "beta", RATE, "scale_by_scion"),
    ("scale_by_scion", "radius", POSITIVE, "scale_by_scion"),
    ("scale_by_scion", "eps", NON_NEGATIVE, "scale_by_scion"),
    ("scion", "learning_rate", NON_NEGATIVE, "scion"),
    ("scion", "beta", RATE, "scion"),
    ("scion", "radius", POSITIVE, "scion"),
    ("scion", "eps", NON_NEGATIVE, "scion"),
]
