"""Muon, its routing, and the matrix utilities (Newton-Schulz, power iteration, inverse root).

1. Optax parity: ``muon`` (every option Optax 0.2.8 has) and ``scale_by_muon`` over 100
   steps of the shared random pytree, under ``jit`` and ``lax.scan``, to ``RTOL_NS``.
   Not bit-compatible: five quintic Newton-Schulz steps (ten matmuls) amplify the rounding
   of a different association order; measured up to 3.1e-6 relative to the leaf's largest
   update (AOL preconditioning), so 1e-5 of that largest value, the issue's tolerance.
2. The paper: Newton-Schulz against a float64 NumPy loop of its polynomial; the
   orthogonalized update's singular values near 1.
3. Routing: a Flax-like nested tree with a stacked layer, read with ``explain`` and
   ``muon_routing``; the three shape-scaling rules, each checked.
4. Convergence: a matrix regression, a parabola and the Rosenbrock function in lax.scan.
5. ``power_iteration`` and ``matrix_inverse_pth_root`` against NumPy and Optax.
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
from optax import contrib as oc

import gradchain as gc
from gradchain import _linalg
from tests.ranges import NON_NEGATIVE, POSITIVE, RATE
from tests.test_adaptive import GRADS, PARAMS, assert_trees_close, trajectories

RTOL_NS = 1e-5


def assert_close_to_leaf_scale(got: Any, want: Any, what: str, rtol: float = RTOL_NS) -> None:
    """|got - want| <= rtol * max|want| per leaf: Newton-Schulz rounds relative to the matrix."""
    assert jax.tree.structure(got) == jax.tree.structure(want), what
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert (g.shape, g.dtype) == (w.shape, w.dtype), what
        atol = rtol * float(np.max(np.abs(w), initial=0.0))
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=what)


# --- 1. Optax parity -----------------------------------------------------------------------

_MUON_OPTIONS: list[dict[str, Any]] = [
    {},
    dict(nesterov=False),
    dict(adaptive=True),
    dict(preconditioning="spectral"),
    dict(preconditioning="aol"),
    dict(preconditioning="schatten"),
    dict(ns_coeffs="dion"),
    dict(ns_coeffs=(3.0, -3.2, 1.2), ns_steps=3, beta=0.9, eps=1e-6),
    dict(consistent_rms=0.2, weight_decay=0.1, adam_learning_rate=0.003, adam_b2=0.99),
]


def _optax_kwargs(kw: dict[str, Any]) -> dict[str, Any]:
    out = dict(kw)
    if out.get("ns_coeffs") == "dion":  # Optax 0.2.8 names its presets "standard" and "dion"
        out["ns_coeffs"] = _linalg.DION_COEFFS
    return out


@pytest.mark.parametrize("kw", _MUON_OPTIONS, ids=lambda kw: ",".join(kw) or "default")
def test_muon_matches_optax_at_every_step_for_every_option(kw: dict[str, Any]) -> None:
    got, want = trajectories(
        lambda: gc.muon(0.01, **kw), lambda: oc.muon(0.01, **_optax_kwargs(kw))
    )
    for i, what in enumerate(("updates", "params")):
        assert_close_to_leaf_scale(got[i], want[i], what)


def test_scale_by_muon_matches_optax_on_matrices_and_keeps_optaxs_momentum() -> None:
    params = {"w": PARAMS["layers"][0]["w"], "e": PARAMS["embed"]}
    grads = {"w": GRADS["layers"][0]["w"], "e": GRADS["embed"]}
    # Optax 0.2.8's scale_by_muon without dimension numbers fails on a dict of matrices
    # ("pytree structure error"), so both get them explicitly.
    dims = {"w": gc.MuonDimensionNumbers(), "e": gc.MuonDimensionNumbers()}
    o_dims = {"w": oc.MuonDimensionNumbers(), "e": oc.MuonDimensionNumbers()}

    def run(lib: Any, tx: Any) -> Any:
        def step(state: Any, g: Any) -> Any:
            u, state = tx.update(g, state, params)
            return state, u

        return jax.lax.scan(step, tx.init(params), grads)

    state, got = jax.jit(
        lambda: run(gc, gc.scale_by_muon(beta=0.9, weight_dimension_numbers=dims))
    )()
    with jax.numpy_dtype_promotion("standard"):
        o_state, want = jax.jit(
            lambda: run(optax, oc.scale_by_muon(beta=0.9, weight_dimension_numbers=o_dims))
        )()
    assert_close_to_leaf_scale(got, want, "updates")
    assert_trees_close(state.mu, o_state.mu, "mu", rtol=1e-6)


def test_the_weight_decay_mask_reaches_the_adam_group_where_optax_ignores_it() -> None:
    params = {"w": jnp.ones((3, 2)), "s": jnp.array(2.0)}
    zero = jax.tree.map(jnp.zeros_like, params)
    mask = {"w": True, "s": False}
    tx = gc.muon(1.0, adam_weight_decay=0.5, weight_decay_mask=mask)
    assert float(tx.update(zero, tx.init(params), params)[0]["s"]) == 0.0
    with jax.numpy_dtype_promotion("standard"):
        o_tx = oc.muon(1.0, adam_weight_decay=0.5, weight_decay_mask=mask)
        assert float(o_tx.update(zero, o_tx.init(params), params)[0]["s"]) == -1.0  # decayed


OPTAX_PARITY_NAMES = frozenset(
    {"muon", "scale_by_muon", "power_iteration", "matrix_inverse_pth_root"}
)

# --- 2. Newton-Schulz against its polynomial in float64 --------------------------------------


def newton_schulz_ref(g: np.ndarray, coeffs: Any, eps: float = 1e-8) -> np.ndarray:
    """Newton-Schulz in float64.

    Jordan et al. (2024), https://kellerjordan.github.io/posts/muon/: X = G/(|G|_F + eps),
    then X <- aX + b(XX^T)X + c(XX^T)^2 X on the wide orientation, in float64.
    """
    x = g.astype(np.float64) / (np.linalg.norm(g) + eps)
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    for a, b, c in coeffs:
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (5, 5)])
@pytest.mark.parametrize("preset", ["muon", "dion"])
def test_newton_schulz_matches_the_float64_polynomial(shape: tuple[int, int], preset: str) -> None:
    g = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    coeffs = _linalg.ns_schedule("test", preset, 5)
    got = _linalg.newton_schulz(jnp.asarray(g), coeffs)
    np.testing.assert_allclose(got, newton_schulz_ref(g, coeffs), rtol=2e-5, atol=2e-6)


def test_the_orthogonalized_update_has_singular_values_near_one() -> None:
    g = np.random.default_rng(1).normal(size=(32, 16)).astype(np.float32)
    tx = gc.scale_by_muon(nesterov=False)
    u, _ = tx.update(jnp.asarray(g), tx.init(jnp.zeros((32, 16))))
    s = np.linalg.svd(np.asarray(u), compute_uv=False)
    assert s.min() > 0.6 and s.max() < 1.25  # Jordan's quintic: a band around 1, not 1
    exact = _linalg.newton_schulz(jnp.asarray(g), [(1.5, -0.5, 0.0)] * 30)
    np.testing.assert_allclose(np.linalg.svd(np.asarray(exact), compute_uv=False), 1.0, atol=1e-4)


def test_a_non_matrix_leaf_is_refused_naming_its_path_unless_marked() -> None:
    tx = gc.scale_by_muon()
    params = {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}
    with pytest.raises(ValueError, match=r"^scale_by_muon: the update at b has shape \(2,\)"):
        tx.update(params, tx.init(params))
    dims = {"w": gc.MuonDimensionNumbers(), "b": None}
    tx = gc.scale_by_muon(weight_dimension_numbers=dims, nesterov=False)
    u, _ = tx.update(params, tx.init(params))
    np.testing.assert_allclose(u["b"], 1.0, rtol=1e-6)  # the (debiased) momentum only


def test_bad_dimension_numbers_and_presets_are_refused() -> None:
    with pytest.raises(ValueError, match=r"^scale_by_muon: `ns_coeffs` preset 'polar' is unknown"):
        gc.scale_by_muon(ns_coeffs="polar")
    with pytest.raises(ValueError, match="`preconditioning` must be one of"):
        gc.scale_by_muon(preconditioning="svd")  # type: ignore[arg-type]
    tx = gc.scale_by_muon(weight_dimension_numbers=gc.MuonDimensionNumbers(0, 3))
    with pytest.raises(ValueError, match=r"name axis 3, but the parameter there has 2 dimensions"):
        tx.init({"w": jnp.ones((3, 2))})


# --- 3. Routing and shape scaling ------------------------------------------------------------


def _flax_like() -> dict[str, Any]:
    return {
        "params": {
            "embed": {"embedding": jnp.ones((50, 16))},
            "layers": {  # nn.scan over 4 layers: a leading layer axis
                "attn": {"kernel": jnp.ones((4, 16, 48)), "bias": jnp.ones((4, 48))},
                "norm": {"scale": jnp.ones((4, 16))},
            },
            "head": {"kernel": jnp.ones((16, 10)), "bias": jnp.ones(10)},
        }
    }


def _stacked(params: Any) -> Any:
    def dims(path: Any, p: Any) -> Any:
        if jax.tree_util.keystr(path).endswith("['embedding']"):
            return None  # embeddings are usually left to Adam
        return gc.MuonDimensionNumbers(-2, -1) if p.ndim >= 2 and "bias" not in str(path) else None

    return jax.tree_util.tree_map_with_path(dims, params)


def test_the_routing_table_shows_which_parameter_went_where_on_a_flax_like_tree() -> None:
    params = _flax_like()
    default = gc.explain(gc.muon(0.02), params).assignment
    assert default == {
        "params/embed/embedding": "muon",
        "params/head/bias": "adam",
        "params/head/kernel": "muon",
        "params/layers/attn/bias": "muon",  # 2-D: Optax's default rule takes it
        "params/layers/attn/kernel": "adam",  # 3-D: Optax's default rule leaves it
        "params/layers/norm/scale": "muon",
    }
    tx = gc.muon(0.02, muon_weight_dimension_numbers=_stacked)
    report = gc.explain(tx, params)
    assert report.assignment == {
        "params/embed/embedding": "adam",
        "params/head/bias": "adam",
        "params/head/kernel": "muon",
        "params/layers/attn/bias": "adam",
        "params/layers/attn/kernel": "muon",
        "params/layers/norm/scale": "muon",
    }
    assert "muon" in str(report) and "params/layers/attn/kernel" in str(report)
    rows = {r.path: r for r in gc.muon_routing(params, _stacked)}
    attn = rows["params/layers/attn/kernel"]
    assert attn.view is not None
    assert (attn.view.batch, attn.view.fan_in, attn.view.fan_out) == (4, 16, 48)
    assert attn.scale == round(math.sqrt(3.0), 3)
    state = tx.init(params)
    assert sorted(state.inner_states) == ["adam", "muon"]
    updates, _ = jax.jit(tx.update)(params, state, params)
    assert jax.tree.map(jnp.shape, updates) == jax.tree.map(jnp.shape, params)


def test_a_stacked_layer_is_orthogonalized_matrix_by_matrix() -> None:
    g = np.random.default_rng(2).normal(size=(3, 6, 4)).astype(np.float32)
    tx = gc.scale_by_muon(weight_dimension_numbers=gc.MuonDimensionNumbers(-2, -1))
    u, _ = tx.update(jnp.asarray(g), tx.init(jnp.zeros((3, 6, 4))))
    one = gc.scale_by_muon()
    for i in range(3):
        want, _ = one.update(jnp.asarray(g[i]), one.init(jnp.zeros((6, 4))))
        np.testing.assert_allclose(u[i], want, rtol=1e-5, atol=1e-6)


def _scale_of(tx: Any, shape: tuple[int, int], dims: Any = None) -> float:
    """The ratio of muon's matrix update to the bare orthogonalized one."""
    g = jnp.asarray(np.random.default_rng(3).normal(size=shape).astype(np.float32))
    bare = gc.scale_by_muon(weight_dimension_numbers=dims)
    want, _ = bare.update(g, bare.init(g))
    got, _ = tx.update(g, tx.init(g), g)
    return float(jnp.sum(got * want) / jnp.sum(want * want))


@pytest.mark.parametrize("shape", [(8, 32), (32, 8)])
def test_the_three_shape_scaling_rules(shape: tuple[int, int]) -> None:
    rows, cols = shape
    # Optax's width rule: sqrt(max(1, fan_out / fan_in)) for (in, out) kernels.
    width = _scale_of(gc.muon(1.0), shape)
    assert width == pytest.approx(-math.sqrt(max(1.0, cols / rows)), rel=1e-5)
    # Keller Jordan's max(1, rows/cols)**0.5 on PyTorch (out, in) weights: say so with dims.
    torch_dims = gc.MuonDimensionNumbers(reduction_axis=1, output_axis=0)
    keller = _scale_of(gc.muon(1.0, muon_weight_dimension_numbers=torch_dims), shape, torch_dims)
    assert keller == pytest.approx(-math.sqrt(max(1.0, rows / cols)), rel=1e-5)
    # Moonlight: 0.2 * sqrt(max(fan_in, fan_out)), settable as a hyperparameter.
    moon = gc.muon(1.0, consistent_rms=0.2)
    assert _scale_of(moon, shape) == pytest.approx(-0.2 * math.sqrt(max(shape)), rel=1e-5)
    assert "muon/consistent_rms" in gc.get_hyperparams(moon.init(jnp.zeros(shape)))


def test_updates_keep_the_gradients_dtype_and_state_its_own() -> None:
    p = {"w": jnp.ones((8, 4), jnp.bfloat16), "b": jnp.ones(4, jnp.bfloat16)}
    tx = gc.muon(0.1, mu_dtype=jnp.float32)
    state = tx.init(p)
    u, new_state = jax.jit(tx.update)(p, state, p)
    assert jax.tree.map(lambda x: x.dtype, u) == jax.tree.map(lambda x: x.dtype, p)
    assert jax.tree.map(lambda x: x.dtype, new_state) == jax.tree.map(lambda x: x.dtype, state)


# --- 4. Convergence in lax.scan --------------------------------------------------------------


def _minimize(tx: Any, loss: Callable[[Any], jax.Array], x0: Any, steps: int) -> float:
    def step(carry: Any, _: Any) -> Any:
        x, s = carry
        u, s = tx.update(jax.grad(loss)(x), s, x)
        return (gc.apply_updates(x, u), s), None

    (x, _), _ = jax.jit(lambda: jax.lax.scan(step, (x0, tx.init(x0)), None, length=steps))()
    return float(loss(x))


def test_muon_solves_a_small_matrix_regression() -> None:
    rng = np.random.default_rng(4)
    a = jnp.asarray(rng.normal(size=(64, 8)).astype(np.float32))
    w_true = jnp.asarray(rng.normal(size=(8, 5)).astype(np.float32))
    y = a @ w_true

    def loss(p: Any) -> jax.Array:
        return jnp.mean((a @ p["w"] + p["b"][None, :] - y) ** 2)

    p0 = {"w": jnp.zeros((8, 5)), "b": jnp.zeros(5)}
    tx = gc.muon(gc.cosine_decay_schedule(0.1, 300), adam_learning_rate=0.01)
    assert _minimize(tx, loss, p0, 300) < 1e-3 * float(loss(p0))


def test_muon_minimizes_a_parabola_and_the_rosenbrock_function() -> None:
    def parabola(x: jax.Array) -> jax.Array:
        return jnp.sum((x - 1.0) ** 2)

    def rosenbrock(x: jax.Array) -> jax.Array:  # a (1, 2) matrix: Muon's direction is g/|g|
        return (1.0 - x[0, 0]) ** 2 + 100.0 * (x[0, 1] - x[0, 0] ** 2) ** 2

    tx = gc.muon(gc.cosine_decay_schedule(0.1, 400))
    assert _minimize(tx, parabola, jnp.zeros((3, 3)), 400) < 1e-3
    tx = gc.muon(gc.cosine_decay_schedule(0.02, 3000), beta=0.9)
    assert _minimize(tx, rosenbrock, jnp.array([[-1.0, 1.0]]), 3000) < 1e-2


# --- 5. Power iteration and the inverse p-th root --------------------------------------------


def _spd(n: int, seed: int) -> np.ndarray:
    b = np.random.default_rng(seed).normal(size=(n, n))
    return (b @ b.T / n + 0.1 * np.eye(n)).astype(np.float32)


def test_power_iteration_finds_the_dominant_eigenpair_and_matches_optax() -> None:
    a = _spd(6, 0)
    value, vector = gc.power_iteration(jnp.asarray(a), num_iters=500, error_tolerance=1e-9)
    w, v = np.linalg.eigh(a.astype(np.float64))
    assert float(value) == pytest.approx(w[-1], rel=1e-5)
    assert abs(float(np.dot(np.asarray(vector), v[:, -1]))) == pytest.approx(1.0, abs=1e-4)
    with jax.numpy_dtype_promotion("standard"):
        o_value, _ = optax.power_iteration(jnp.asarray(a), num_iters=500, error_tolerance=1e-9)
    assert float(value) == pytest.approx(float(o_value), rel=1e-6)


def test_power_iterations_pair_is_consistent_where_optaxs_lags_by_one_iterate() -> None:
    a = jnp.asarray(_spd(4, 1))
    value, vector = gc.power_iteration(a, num_iters=2, error_tolerance=0.0)
    assert float(value) == pytest.approx(float(vector @ a @ vector), rel=1e-6)
    with jax.numpy_dtype_promotion("standard"):
        o_value, o_vector = optax.power_iteration(a, num_iters=2, error_tolerance=0.0)
    assert float(value) == pytest.approx(float(o_value), rel=1e-6)  # the same eigenvalue
    assert float(o_vector @ a @ o_vector) != pytest.approx(float(o_value), rel=1e-3)


def test_power_iteration_takes_a_linear_map_on_a_tree() -> None:
    a = jnp.asarray(_spd(3, 2))
    value, vec = gc.power_iteration(lambda t: {"x": a @ t["x"]}, v0={"x": jnp.ones(3)})
    assert float(value) == pytest.approx(float(np.linalg.eigvalsh(np.asarray(a))[-1]), rel=1e-4)
    assert jnp.shape(vec["x"]) == (3,)


@pytest.mark.parametrize("p", [1, 2, 4])
def test_matrix_inverse_pth_root_matches_the_eigendecomposition_and_optax(p: int) -> None:
    a = _spd(5, 3)
    root, error = gc.matrix_inverse_pth_root(jnp.asarray(a), p, ridge_epsilon=1e-3)
    w, v = np.linalg.eigh(a.astype(np.float64))
    ridged = w + 1e-3 * w.max()
    np.testing.assert_allclose(root, (v * ridged ** (-1.0 / p)) @ v.T, rtol=2e-4, atol=2e-5)
    assert float(error) < 1e-4
    with jax.numpy_dtype_promotion("standard"):
        o_root, _ = optax.matrix_inverse_pth_root(jnp.asarray(a), p, ridge_epsilon=1e-3)
    np.testing.assert_allclose(root, o_root, rtol=2e-4, atol=2e-5)  # both iterative, in float32


def test_non_square_matrices_are_refused_with_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"^matrix_inverse_pth_root: `matrix` must be a square"):
        gc.matrix_inverse_pth_root(jnp.ones((3, 4)), 2)
    with pytest.raises(ValueError, match=r"^power_iteration: `matrix` must be a square .*\(2, 3\)"):
        gc.power_iteration(jnp.ones((2, 3)))


def test_the_utilities_return_float32_for_bfloat16_input() -> None:
    a = jnp.asarray(_spd(4, 5), jnp.bfloat16)
    root, _ = gc.matrix_inverse_pth_root(a, 2)
    value, _ = gc.power_iteration(a)
    assert root.dtype == jnp.float32 and value.dtype == jnp.float32


# --- Tables for tests/test_errors.py ---------------------------------------------------------

_SPD = jnp.asarray(_spd(3, 0))


def _power_iteration(**kw: Any) -> gc.GradientTransformation:
    gc.power_iteration(_SPD, **kw)
    return gc.identity()


def _inverse_root(**kw: Any) -> gc.GradientTransformation:
    gc.matrix_inverse_pth_root(_SPD, 2, **kw)
    return gc.identity()


FACTORIES: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {
    "scale_by_muon": (gc.scale_by_muon, {"weight_dimension_numbers": lambda p: None}),
    "muon": (gc.muon, {"learning_rate": 0.1}),
    "muon_routing": (lambda **kw: (gc.muon_routing({}, **kw), gc.identity())[1], {}),
    "power_iteration": (_power_iteration, {}),
    "matrix_inverse_pth_root": (_inverse_root, {}),
}

HYPERPARAMETERS: list[tuple[str, str, str, str]] = [
    ("scale_by_muon", "beta", RATE, "scale_by_muon"),
    ("scale_by_muon", "eps", NON_NEGATIVE, "scale_by_muon"),
    ("muon", "learning_rate", NON_NEGATIVE, "muon"),
    ("muon", "beta", RATE, "muon"),
    ("muon", "eps", NON_NEGATIVE, "muon"),
    ("muon", "weight_decay", NON_NEGATIVE, "muon"),
    ("muon", "adam_b1", RATE, "muon"),
    ("muon", "adam_b2", RATE, "muon"),
    ("muon", "adam_eps_root", NON_NEGATIVE, "muon"),
    ("muon", "adam_weight_decay", NON_NEGATIVE, "muon"),
    ("muon", "adam_learning_rate", NON_NEGATIVE, "muon"),
    ("muon", "consistent_rms", POSITIVE, "muon"),
    ("muon_routing", "consistent_rms", POSITIVE, "muon_routing"),
    ("power_iteration", "error_tolerance", NON_NEGATIVE, "power_iteration"),
    ("matrix_inverse_pth_root", "ridge_epsilon", NON_NEGATIVE, "matrix_inverse_pth_root"),
    ("matrix_inverse_pth_root", "error_tolerance", NON_NEGATIVE, "matrix_inverse_pth_root"),
]


def test_complex_matrices_are_refused_naming_the_path_and_what_to_do() -> None:
    params = {"w": jnp.ones((3, 2), jnp.complex64)}
    tx = gc.scale_by_muon()
    with pytest.raises(
        TypeError, match=r"^scale_by_muon: the update at w is complex64; .*split_real"
    ):
        tx.update(params, tx.init(params), params)
