"""Cautious masking, MARS and Adam-mini: each against a NumPy loop of its paper's algorithm.

1. NumPy (float64) references, step by step for several steps on small trees,
   written from the algorithm boxes (each test says which equations and options
   it follows); gradchain runs in float32, hence rtol 1e-5.
2. Properties: the mask's orientation, an empty mask, Adam-mini's partition
   and its state size (about half of Adam's), the errors that name the cause.
3. Convergence on a parabola and the Rosenbrock function in ``lax.scan``, and
   the digits MLP (``examples/common.py``) trained full-batch to a stated
   validation accuracy in a stated number of steps.

Optax 0.2.8 has none of the three, so there is no parity test; the
``"coordinate"`` partition of Adam-mini is checked against Optax's Adam.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradchain as gc
from tests.example_loader import load_example
from tests.ranges import NON_NEGATIVE, RATE
from tests.test_adaptive import parabola, rosenbrock

RTOL = 1e-5  # float32 arithmetic against a float64 reference
STEPS = 6


def _run(tx: Any, params: Any, grads: list[Any], **extra: Any) -> list[Any]:
    """The parameters after each step of ``tx`` fed the given gradients."""
    state, update = tx.init(params), jax.jit(tx.update)
    out = []
    for g in grads:
        updates, state = update(g, state, params, **extra)
        params = gc.apply_updates(params, updates)
        out.append(params)
    return out


def _grads(shapes: dict[str, tuple[int, ...]], seed: int, scales: list[float]) -> list[Any]:
    rng = np.random.default_rng(seed)
    return [
        {k: jnp.asarray(s * rng.normal(size=shape), jnp.float32) for k, shape in shapes.items()}
        for s in scales
    ]


def _assert_close(got: list[Any], want: list[dict[str, np.ndarray]]) -> None:
    for t, (g, w) in enumerate(zip(got, want, strict=True)):
        for k in w:
            np.testing.assert_allclose(g[k], w[k], rtol=RTOL, atol=1e-7, err_msg=f"step {t}, {k}")


# --- 1a. Cautious: Algorithm 1 (u * m / (m.mean() + eps), m = (u * g > 0)) per tensor -------

SHAPES = {"w": (3, 4), "b": (4,)}
P0 = {"w": jnp.full((3, 4), 0.5), "b": jnp.full((4,), -0.25)}


def _np(tree: Any) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, np.float64) for k, v in tree.items()}


def _caution(u: np.ndarray, g: np.ndarray, eps: float) -> tuple[np.ndarray, float]:
    phi = (u * g > 0).astype(np.float64)
    return u * phi / (phi.mean() + eps), phi.mean()


def test_cautious_adamw_follows_algorithm_2_with_unmasked_decoupled_decay() -> None:
    # C-AdamW: Adam's m, v and bias corrections; u = m_hat / (sqrt(v_hat) + eps); the mask of
    # Algorithm 1 on u; then w <- w - lr * (u_masked + wd * w) (the decay is not masked).
    lr, b1, b2, eps, wd, mask_eps = 0.05, 0.5, 0.9, 1e-8, 0.1, 1e-8
    grads = _grads(SHAPES, 0, [1.0] * STEPS)
    got = _run(gc.cautious_adamw(lr, b1, b2, eps, weight_decay=wd, mask_eps=mask_eps), P0, grads)
    p, m, v, want, kept = _np(P0), {k: 0.0 for k in SHAPES}, {k: 0.0 for k in SHAPES}, [], []
    for t, g in enumerate(map(_np, grads), start=1):
        p = dict(p)
        for k in SHAPES:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            u = (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps)
            u, frac = _caution(u, g[k], mask_eps)
            kept.append(frac)
            p[k] = p[k] - lr * (u + wd * p[k])
        want.append(p)
    _assert_close(got, want)
    assert any(0 < k < 1 for k in kept)  # some steps mask part of a tensor


def test_cautious_lion_masks_the_sign_update_and_not_the_decay() -> None:
    # Lion (Chen et al., Algorithm 2): c = b1 m + (1-b1) g, u = sign(c), m <- b2 m + (1-b2) g;
    # the mask of Algorithm 1 on u; w <- w - lr * (u_masked + wd * w).
    lr, b1, b2, wd, mask_eps = 0.01, 0.9, 0.99, 0.5, 1e-8
    grads = _grads(SHAPES, 1, [1.0] * STEPS)
    got = _run(gc.cautious_lion(lr, b1, b2, weight_decay=wd), P0, grads)
    p, m, want = _np(P0), {k: 0.0 for k in SHAPES}, []
    for g in map(_np, grads):
        p = dict(p)
        for k in SHAPES:
            u = np.sign(b1 * m[k] + (1 - b1) * g[k])
            m[k] = b2 * m[k] + (1 - b2) * g[k]
            u, _ = _caution(u, g[k], mask_eps)
            p[k] = p[k] - lr * (u + wd * p[k])
        want.append(p)
    _assert_close(got, want)


def test_cautious_sgd_momentum_as_a_whole_optimizer_masks_steps_that_climb() -> None:
    # SGD with heavy-ball momentum, t <- beta t + g, step s = -lr t, masked where s * g < 0
    # fails (orientation="descent": the inner updates are steps, not directions).
    lr, beta, mask_eps = 0.1, 0.9, 0.0
    grads = _grads(SHAPES, 2, [1.0] * STEPS)
    tx = gc.cautious(gc.sgd(lr, momentum=beta), mask_eps, orientation="descent")
    got = _run(tx, P0, grads)
    p, tr, want = _np(P0), {k: 0.0 for k in SHAPES}, []
    for g in map(_np, grads):
        p = dict(p)
        for k in SHAPES:
            tr[k] = beta * tr[k] + g[k]
            s, _ = _caution(-lr * tr[k], -g[k], mask_eps)  # keep where s * g < 0
            p[k] = p[k] + s
        want.append(p)
    _assert_close(got, want)


def test_the_two_orientations_agree_on_where_the_learning_rate_goes() -> None:
    grads = _grads(SHAPES, 3, [1.0] * STEPS)
    outside = gc.chain(gc.cautious(gc.trace(0.9)), gc.scale_by_learning_rate(0.1))
    inside = gc.cautious(gc.sgd(0.1, momentum=0.9), orientation="descent")
    _assert_close(_run(inside, P0, grads), [_np(p) for p in _run(outside, P0, grads)])


def test_a_tensor_whose_whole_update_fights_the_gradient_gets_zero_not_nan() -> None:
    tx = gc.cautious(gc.scale(-1.0), mask_eps=0.0)  # a direction that always climbs
    u, _ = tx.update({"w": jnp.array([1.0, -2.0]), "e": jnp.zeros((0,))}, tx.init(None))
    assert u["w"].tolist() == [0.0, 0.0] and u["e"].shape == (0,)


def test_cautious_keeps_bfloat16_updates_and_passes_extra_args_on() -> None:
    seen = {}

    def inner_update(updates: Any, state: Any, params: Any = None, **extra: Any) -> Any:
        seen.update(extra)
        return updates, state

    inner = gc.GradientTransformationExtraArgs(lambda p: gc.EmptyState(), inner_update)
    tx = gc.cautious(inner)
    g = jnp.array([1.0, -3.0], jnp.bfloat16)
    u, _ = tx.update(g, tx.init(g), None, value=jnp.float32(2.0))
    assert u.dtype == jnp.bfloat16 and u.tolist() == [1.0, -3.0]
    assert float(seen["value"]) == 2.0


def test_cautious_errors_name_the_argument_and_what_to_do() -> None:
    with pytest.raises(ValueError, match=r'^cautious: `orientation` must be one of .*"descent"'):
        gc.cautious(gc.scale_by_adam(), orientation="ascent")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^cautious: `inner` is the function `scale_by_adam`"):
        gc.cautious(gc.scale_by_adam)  # type: ignore[arg-type]
    tx = gc.cautious(gc.stateless(lambda u, p: {"w": u["w"][:1]}))
    with pytest.raises(ValueError, match=r"^cautious: .*disagree in shape at \['w'\]"):
        tx.update({"w": jnp.ones(2)}, tx.init(None))


# --- 1b. MARS: Algorithm 1 (MARS-AdamW), approximate and exact ---------------------------------


def _mars_reference(
    grads: list[dict[str, np.ndarray]],
    previous: list[dict[str, np.ndarray]] | None,
    b1: float,
    b2: float,
    eps: float,
    gamma: float,
) -> list[dict[str, np.ndarray]]:
    """The scaled updates u_t of MARS-AdamW; ``previous=None`` for MARS-approx."""
    keys = list(grads[0])
    m = {k: 0.0 for k in keys}
    v = {k: 0.0 for k in keys}
    last = {k: np.zeros_like(grads[0][k]) for k in keys}  # the authors' zero start
    out = []
    for t, g in enumerate(grads, start=1):
        u = {}
        for k in keys:
            prev = last[k] if previous is None else previous[t - 1][k]
            c = g[k] + gamma * (b1 / (1 - b1)) * (g[k] - prev)
            norm = np.sqrt(np.sum(c * c))
            if norm > 1:
                c = c / norm
            m[k] = b1 * m[k] + (1 - b1) * c
            v[k] = b2 * v[k] + (1 - b2) * c * c
            u[k] = (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps)
            last[k] = g[k]
        out.append(u)
    return out


SCALES = [1.0, 0.05, 2.0, 0.1, 1.0, 0.02]  # norms of c above and below the clip at 1


def test_mars_approx_follows_algorithm_1_with_the_previous_steps_gradient() -> None:
    # c_t = g_t + gamma b1/(1-b1) (g_t - g_{t-1}), g_0 = 0; c clipped to norm 1 per tensor;
    # Adam's moments and bias corrections on the clipped c (MARS-AdamW, the authors' defaults).
    grads = _grads(SHAPES, 4, SCALES)
    tx = gc.scale_by_mars(0.95, 0.99, 1e-8, 0.025)
    state, got, update = tx.init(P0), [], jax.jit(tx.update)
    for g in grads:
        u, state = update(g, state)
        got.append(u)
    want = _mars_reference([_np(g) for g in grads], None, 0.95, 0.99, 1e-8, 0.025)
    _assert_close(got, want)
    assert all(
        jax.tree.leaves(
            jax.tree.map(lambda a, b: bool(jnp.all(a == b)), state.last_grad, grads[-1])
        )
    )


def test_exact_mars_uses_the_gradient_at_the_previous_parameters_it_is_given() -> None:
    grads = _grads(SHAPES, 5, SCALES)
    previous = _grads(SHAPES, 6, SCALES)
    tx = gc.scale_by_mars(0.9, 0.99, 1e-8, 0.5, approx=False)
    state, got = tx.init(P0), []
    for g, prev in zip(grads, previous, strict=True):
        u, state = tx.update(g, state, grad_at_previous_params=prev)
        got.append(u)
    want = _mars_reference(
        [_np(g) for g in grads], [_np(p) for p in previous], 0.9, 0.99, 1e-8, 0.5
    )
    _assert_close(got, want)
    with pytest.raises(ValueError, match=r"^scale_by_mars: exact MARS .*grad_at_previous_params="):
        tx.update(grads[0], tx.init(P0))
    with pytest.raises(ValueError, match=r"^scale_by_mars: .*grad_at_previous_params.* at \['b'\]"):
        tx.update(grads[0], tx.init(P0), grad_at_previous_params={**grads[0], "b": jnp.ones(3)})


def test_mars_sends_matrices_to_mars_and_vectors_to_adamw_as_the_authors_do() -> None:
    # Matrices: MARS-AdamW + lr * wd * w; vectors: AdamW(adam_b1, adam_b2) + lr * adam_wd * w.
    lr, wd, adam_wd = 0.01, 0.05, 0.1
    grads = _grads(SHAPES, 7, SCALES)
    tx = gc.mars(lr, weight_decay=wd, adam_weight_decay=adam_wd)
    assert gc.explain(tx, P0).assignment == {"b": "adam", "w": "mars"}
    got = _run(tx, P0, grads)
    mars_u = _mars_reference([{"w": _np(g)["w"]} for g in grads], None, 0.95, 0.99, 1e-8, 0.025)
    p, m, v, want = _np(P0), 0.0, 0.0, []
    for t, (g, u) in enumerate(zip(map(_np, grads), mars_u, strict=True), start=1):
        m = 0.9 * m + 0.1 * g["b"]
        v = 0.95 * v + 0.05 * g["b"] ** 2
        adam_u = (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.95**t)) + 1e-8)
        p = {
            "w": p["w"] - lr * (u["w"] + wd * p["w"]),
            "b": p["b"] - lr * (adam_u + adam_wd * p["b"]),
        }
        want.append(p)
    _assert_close(got, want)
    one_d = gc.mars(lr, optimize_1d=True)
    assert gc.explain(one_d, P0).assignment == {"b": "mars", "w": "mars"}


def test_exact_mars_in_the_alias_hands_each_group_its_own_leaves() -> None:
    grads = _grads(SHAPES, 8, [1.0, 0.5])
    tx = gc.mars(0.01, approx=False)
    state = tx.init(P0)
    for g in grads:
        _, state = tx.update(g, state, P0, grad_at_previous_params=g)
    assert jax.tree.leaves(gc.get_hyperparams(state))


# --- 1c. Adam-mini: Algorithm 1 with the partition of Algorithm 3 -------------------------------

MINI_PARAMS = {
    "embed": {"embedding": jnp.zeros((5, 3))},  # (vocab, features): one v per token
    "attn": {
        "query": {"kernel": jnp.zeros((4, 2, 3))},  # (in, heads, head_dim): one v per head
        "qkv": {"kernel": jnp.zeros((4, 6))},  # fused (in, 2 heads * 3): one v per head
    },
    "mlp": {"kernel": jnp.zeros((4, 3)), "bias": jnp.zeros(3)},  # per output neuron; one
}
MINI_BLOCKS = [("attn/qkv/kernel", gc.AdamMiniBlocks(num_heads=2))]


def _block_means(k: str, sq: np.ndarray) -> np.ndarray:
    """mean(g_b * g_b) per block, written out per parameter (no shared reshaping code)."""
    if k == "embed/embedding":
        return np.array([sq[i, :].mean() for i in range(5)])[:, None]
    if k == "attn/query/kernel":
        return np.array([sq[:, h, :].mean() for h in range(2)])[None, :, None]
    if k == "attn/qkv/kernel":
        return np.concatenate(
            [np.full((1, 3), sq[:, 3 * h : 3 * h + 3].mean()) for h in range(2)], 1
        )
    if k == "mlp/kernel":
        return np.array([sq[:, j].mean() for j in range(3)])[None, :]
    return np.array(sq.mean())


def test_adam_mini_follows_algorithm_1_on_the_papers_partition() -> None:
    # m = b1 m + (1-b1) g; v_b = b2 v_b + (1-b2) mean(g_b * g_b); u = m_hat / (sqrt(v_hat_b) + eps)
    # (bias corrections as in Adam; the authors' code puts eps outside the root as here).
    b1, b2, eps = 0.9, 0.95, 1e-8
    flat = {
        "/".join(str(k.key) for k in path): x
        for path, x in jax.tree_util.tree_flatten_with_path(MINI_PARAMS)[0]
    }
    rng = np.random.default_rng(9)
    grads = [{k: rng.normal(size=x.shape) for k, x in flat.items()} for _ in range(STEPS)]
    tx = gc.scale_by_adam_mini(b1, b2, eps, blocks=MINI_BLOCKS)
    state, update = tx.init(MINI_PARAMS), jax.jit(tx.update)
    treedef = jax.tree.structure(MINI_PARAMS)
    m = {k: 0.0 for k in flat}
    v = {k: 0.0 for k in flat}
    for t, g in enumerate(grads, start=1):
        tree = treedef.unflatten([jnp.asarray(g[k], jnp.float32) for k in flat])
        u, state = update(tree, state)
        got = dict(zip(flat, jax.tree.leaves(u), strict=True))
        for k in flat:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * _block_means(k, g[k] ** 2)
            want = (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps)
            # atol: m cancels to ~1e-3 in places, where float32 keeps ~1e-8 of it
            np.testing.assert_allclose(got[k], want, rtol=RTOL, atol=1e-6, err_msg=f"{t}, {k}")
    nu_shapes = [x.shape for x in jax.tree.leaves(state.nu)]
    assert nu_shapes == [(2,), (2,), (5,), (), (3,)]  # attn/qkv, attn/query, embed, mlp b, w


def test_adam_mini_blocks_lists_each_parameters_partition() -> None:
    rows = gc.adam_mini_blocks(MINI_PARAMS, MINI_BLOCKS)
    assert [(r.path, r.blocks, r.state_shape) for r in rows] == [
        ("attn/qkv/kernel", "AdamMiniBlocks(keep_axes=(), num_heads=2)", (2,)),
        ("attn/query/kernel", "heads", (2,)),
        ("embed/embedding", "token", (5,)),
        ("mlp/bias", "tensor", ()),
        ("mlp/kernel", "neuron", (3,)),
    ]
    first_match = gc.adam_mini_blocks(MINI_PARAMS, {"**/kernel": "coordinate", "**": "tensor"})
    assert [r.blocks for r in first_match] == ["coordinate"] * 2 + ["tensor"] * 2 + ["coordinate"]


def test_adam_mini_with_one_block_per_coordinate_is_optax_adam() -> None:
    grads = _grads(SHAPES, 10, SCALES)
    tx = gc.scale_by_adam_mini(blocks=[("**", "coordinate")])
    oracle = optax.scale_by_adam()
    state, ostate, update = tx.init(P0), oracle.init(P0), jax.jit(tx.update)
    for g in grads:
        u, state = update(g, state)
        with jax.numpy_dtype_promotion("standard"):
            ou, ostate = oracle.update(g, ostate)
        for k in SHAPES:
            np.testing.assert_allclose(u[k], ou[k], rtol=1e-6)


def test_adam_mini_errors_name_the_path_and_what_to_do() -> None:
    with pytest.raises(TypeError, match=r"^scale_by_adam_mini: blocks\[0\] must be one of"):
        gc.scale_by_adam_mini(blocks=[("**", "rows")])
    with pytest.raises(TypeError, match=r"^scale_by_adam_mini: `blocks` entry 0 must be a"):
        gc.scale_by_adam_mini(blocks=["**"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"^scale_by_adam_mini: `blocks` entry 0: .*empty segment"):
        gc.scale_by_adam_mini(blocks=[("a//b", "tensor")])
    tx = gc.scale_by_adam_mini(blocks={"**/w": "heads"})
    with pytest.raises(
        ValueError, match=r'^scale_by_adam_mini: .* at w has shape \(3, 4\); "heads"'
    ):
        tx.init(P0)
    tx = gc.scale_by_adam_mini(blocks={"w": gc.AdamMiniBlocks(num_heads=3)})
    with pytest.raises(ValueError, match=r"at w has shape \(3, 4\); its last axis cannot be split"):
        tx.init(P0)
    tx = gc.scale_by_adam_mini(blocks={"b": gc.AdamMiniBlocks((1,))})
    with pytest.raises(ValueError, match=r"at b keep axis 1, but it has shape \(4,\)"):
        tx.init(P0)
    good = gc.scale_by_adam_mini()
    with pytest.raises(ValueError, match=r"^scale_by_adam_mini: state.nu at w has shape \(\)"):
        good.update(P0, good.init(P0)._replace(nu={"w": jnp.zeros(()), "b": jnp.zeros(())}))


def test_adam_mini_state_is_about_half_of_adams_on_the_digits_mlp() -> None:
    common = load_example("common")
    params = common.init_mlp(jax.random.key(0))  # 64-64-10: 4,810 parameters

    def state_bytes(tx: Any) -> int:
        return sum(x.nbytes for x in jax.tree.leaves(tx.init(params)))

    mini, adam = state_bytes(gc.adam_mini(1e-3)), state_bytes(gc.adamw(1e-3))
    # float32 moments: mu 4,810 + nu 76 numbers, against Adam's 2 * 4,810; plus counters
    assert (mini, adam) == (19_584, 38_524)
    assert mini / adam < 0.51


# --- 3. Convergence -----------------------------------------------------------------------------

CONVERGE_STEPS = 5000


def _decaying(peak: float) -> Any:
    return gc.cosine_decay_schedule(peak, CONVERGE_STEPS, alpha=1e-3)


CONVERGING: list[tuple[str, Callable[[], Any]]] = [
    ("cautious_adamw", lambda: gc.cautious_adamw(_decaying(0.05), weight_decay=0.0)),
    ("cautious_lion", lambda: gc.cautious_lion(_decaying(1e-2), weight_decay=0.0)),
    ("cautious_sgd", lambda: gc.cautious(gc.sgd(1e-3, momentum=0.9), orientation="descent")),
    ("mars", lambda: gc.mars(_decaying(0.05), optimize_1d=True)),  # the 2-vector goes to MARS
    ("adam_mini", lambda: gc.adam_mini(_decaying(0.05), weight_decay=0.0)),  # one block
]


@pytest.mark.parametrize("problem", [parabola, rosenbrock])
@pytest.mark.parametrize("make", [pytest.param(m, id=i) for i, m in CONVERGING])
def test_each_minimizes_a_parabola_and_the_rosenbrock_function_in_scan(
    make: Callable[[], Any], problem: Callable[[], Any]
) -> None:
    start, minimum, loss = problem()
    tx = make()

    def step(carry: tuple[Any, Any], _: Any) -> tuple[tuple[Any, Any], None]:
        params, state = carry
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        return (gc.apply_updates(params, updates), state), None

    final = jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), None, CONVERGE_STEPS)[0][0])(
        start
    )
    assert final.dtype == jnp.float32
    np.testing.assert_allclose(final, minimum, rtol=0, atol=1e-2)


DIGITS_STEPS = 150
DIGITS: list[tuple[str, Callable[[], Any], float]] = [
    ("cautious_adamw", lambda: gc.cautious_adamw(1e-2), 0.95),
    ("cautious_lion", lambda: gc.cautious_lion(1e-3), 0.95),
    ("mars", lambda: gc.mars(6e-3), 0.95),
    ("adam_mini", lambda: gc.adam_mini(1e-2), 0.95),
]


@pytest.mark.parametrize(("make", "accuracy"), [pytest.param(m, a, id=i) for i, m, a in DIGITS])
def test_each_trains_the_digits_mlp_to_the_stated_validation_accuracy(
    make: Callable[[], Any], accuracy: float
) -> None:
    common = load_example("common")
    data = common.digits()
    tx = make()

    def step(carry: tuple[Any, Any], _: Any) -> tuple[tuple[Any, Any], None]:
        params, state = carry
        loss = lambda p: common.cross_entropy(common.mlp_logits(p, data.x_train), data.y_train)  # noqa: E731
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        return (gc.apply_updates(params, updates), state), None

    params = common.init_mlp(jax.random.key(0))
    final = jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), None, DIGITS_STEPS)[0][0])(params)
    assert float(common.accuracy(common.mlp_logits(final, data.x_val), data.y_val)) >= accuracy


# --- Hyperparameter errors: rows for tests/test_errors.py -------------------------------------

_SCALE = "scale_by_learning_rate"
FACTORIES: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {
    "cautious": (gc.cautious, {"inner": gc.scale_by_adam()}),
    "cautious_adamw": (gc.cautious_adamw, {"learning_rate": 0.1}),
    "cautious_lion": (gc.cautious_lion, {"learning_rate": 0.1}),
    "scale_by_mars": (gc.scale_by_mars, {}),
    "mars": (gc.mars, {"learning_rate": 0.1}),
    "scale_by_adam_mini": (gc.scale_by_adam_mini, {}),
    "adam_mini": (gc.adam_mini, {"learning_rate": 0.1}),
}

HYPERPARAMETERS: list[tuple[str, str, str, str]] = [
    ("cautious", "mask_eps", NON_NEGATIVE, "cautious"),
    ("cautious_adamw", "learning_rate", NON_NEGATIVE, _SCALE),
    ("cautious_adamw", "b1", RATE, "scale_by_adam"),
    ("cautious_adamw", "b2", RATE, "scale_by_adam"),
    ("cautious_adamw", "eps", NON_NEGATIVE, "scale_by_adam"),
    ("cautious_adamw", "eps_root", NON_NEGATIVE, "scale_by_adam"),
    ("cautious_adamw", "weight_decay", NON_NEGATIVE, "add_decayed_weights"),
    ("cautious_adamw", "mask_eps", NON_NEGATIVE, "cautious"),
    ("cautious_lion", "learning_rate", NON_NEGATIVE, _SCALE),
    ("cautious_lion", "b1", RATE, "scale_by_lion"),
    ("cautious_lion", "b2", RATE, "scale_by_lion"),
    ("cautious_lion", "weight_decay", NON_NEGATIVE, "add_decayed_weights"),
    ("cautious_lion", "mask_eps", NON_NEGATIVE, "cautious"),
    ("scale_by_mars", "b1", RATE, "scale_by_mars"),
    ("scale_by_mars", "b2", RATE, "scale_by_mars"),
    ("scale_by_mars", "eps", NON_NEGATIVE, "scale_by_mars"),
    ("scale_by_mars", "gamma", NON_NEGATIVE, "scale_by_mars"),
    *[
        ("mars", arg, kind, "mars")
        for arg, kind in (
            ("learning_rate", NON_NEGATIVE),
            ("b1", RATE),
            ("b2", RATE),
            ("eps", NON_NEGATIVE),
            ("gamma", NON_NEGATIVE),
            ("weight_decay", NON_NEGATIVE),
            ("adam_learning_rate", NON_NEGATIVE),
            ("adam_b1", RATE),
            ("adam_b2", RATE),
            ("adam_weight_decay", NON_NEGATIVE),
        )
    ],
    ("scale_by_adam_mini", "b1", RATE, "scale_by_adam_mini"),
    ("scale_by_adam_mini", "b2", RATE, "scale_by_adam_mini"),
    ("scale_by_adam_mini", "eps", NON_NEGATIVE, "scale_by_adam_mini"),
    ("adam_mini", "learning_rate", NON_NEGATIVE, _SCALE),
    ("adam_mini", "b1", RATE, "scale_by_adam_mini"),
    ("adam_mini", "b2", RATE, "scale_by_adam_mini"),
    ("adam_mini", "eps", NON_NEGATIVE, "scale_by_adam_mini"),
    ("adam_mini", "weight_decay", NON_NEGATIVE, "add_decayed_weights"),
]
