"""FlatParams: parameters kept as one buffer per dtype give the tree's numbers in a few kernels."""

from __future__ import annotations

import re
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradchain as gc
from tests.registry import CASES, Case


def _params(seed: int = 0) -> dict[str, Any]:
    """Leaves of every rank, one bfloat16, in an order that tree order shuffles."""
    rng = np.random.default_rng(seed)
    shapes = {"z": (5, 7), "a": (7,), "m": (), "k": (3, 2, 4), "b": (11,)}
    out: dict[str, Any] = {
        k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in shapes.items()
    }
    out["h"] = [jnp.asarray(rng.normal(size=(4, 3)), jnp.bfloat16)]
    return out


def _grads(params: Any, seed: int) -> Any:
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)


def _chain5(max_norm: float) -> gc.GradientTransformationExtraArgs:
    return gc.chain(
        gc.clip_by_global_norm(max_norm),
        gc.scale_by_adam(),
        gc.add_decayed_weights(1e-2),
        gc.scale_by_schedule(gc.cosine_decay_schedule(1e-1, 10)),
        gc.scale(-1.0),
    )


def _train(tx: Any, params: Any, flat: bool, steps: int = 3) -> Any:
    p = gc.flatten_params(params) if flat else params
    state = tx.init(p)

    @jax.jit
    def step(p: Any, state: Any, g: Any) -> tuple[Any, Any]:
        updates, state = tx.update(g, state, p)
        return gc.apply_updates(p, updates), state

    for i in range(steps):
        g = _grads(params, seed=i + 1)
        p, state = step(p, state, gc.flatten_params(g) if flat else g)
    return p.unflatten() if flat else p


def test_unflatten_gives_back_the_tree_with_its_shapes_and_dtypes():
    params = _params()
    flat = gc.flatten_params(params)
    assert [b.dtype for b in flat.buffers] == [jnp.float32, jnp.bfloat16]  # first appearance
    assert flat.layout.sizes == (7 + 11 + 24 + 1 + 35, 12)
    back = flat.unflatten()
    assert jax.tree.structure(back) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    assert repr(flat) == "FlatParams(6 leaves in float32[78], bfloat16[12])"


@pytest.mark.parametrize(
    "build",
    [
        lambda: gc.adam(1e-1),
        lambda: gc.adamw(1e-1, weight_decay=0.1),
        lambda: gc.nadamw(1e-1, weight_decay=0.1),
        lambda: gc.sgd(1e-1, momentum=0.9, nesterov=True),
        lambda: _chain5(max_norm=1e6),  # the clip never acts
    ],
    ids=["adam", "adamw", "nadamw", "sgd", "chain5_unclipped"],
)
def test_elementwise_optimizers_give_the_trees_parameters_bit_for_bit(build):
    tree = _train(build(), _params(), flat=False)
    flat = _train(build(), _params(), flat=True)
    for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(flat), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def test_global_norm_clipping_differs_from_the_tree_only_by_the_sums_rounding():
    # The norm sums one buffer instead of six leaves: the same terms added in another
    # order, so the clipped updates can differ in their last bit, and no more.
    tree = _train(_chain5(max_norm=1.0), _params(), flat=False)
    flat = _train(_chain5(max_norm=1.0), _params(), flat=True)
    for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(flat), strict=True):
        np.testing.assert_allclose(
            np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=2e-6, atol=1e-7
        )


def test_a_training_step_differentiates_through_unflatten():
    params = _params()

    def loss(p: Any) -> jax.Array:
        terms = [jnp.sum(jnp.sin(x.astype(jnp.float32))) for x in jax.tree.leaves(p)]
        return jnp.sum(jnp.stack(terms))

    flat = gc.flatten_params(params)
    grad_fn = jax.grad(lambda f: loss(f.unflatten()))
    # The gradient is one concatenation per buffer: no pad of each leaf to the whole
    # buffer (the transpose of a slice), which for 1000 leaves of 10k would be 40 GB.
    program = str(jax.make_jaxpr(grad_fn)(flat))
    assert "concatenate" in program and " pad[" not in program
    grads = jax.jit(grad_fn)(flat)
    assert isinstance(grads, gc.FlatParams) and grads.layout == flat.layout
    expected = jax.grad(loss)(params)
    for a, b in zip(jax.tree.leaves(grads.unflatten()), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def test_vmap_over_a_batch_of_flat_params():
    flats = [gc.flatten_params(_params(seed)) for seed in range(3)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *flats)
    tx = gc.adam(1e-1)

    def first_update(p: gc.FlatParams) -> gc.FlatParams:
        return tx.update(p, tx.init(p), p)[0]

    out = jax.vmap(first_update)(stacked)
    for i, f in enumerate(flats):
        mine = jax.tree.map(lambda x, i=i: x[i], out)
        for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(first_update(f)), strict=True):
            np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def test_shape_dtype_structs_give_an_abstract_flat_params_and_state():
    params = _params()
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    flat = gc.flatten_params(abstract)
    assert all(isinstance(b, jax.ShapeDtypeStruct) for b in flat.buffers)
    assert flat.layout == gc.flatten_params(params).layout
    back = flat.unflatten()
    assert jax.tree.map(lambda x: (x.shape, x.dtype), back) == jax.tree.map(
        lambda x: (x.shape, x.dtype), abstract
    )
    state = gc.adamw(1e-3).init(flat)
    assert isinstance(state[0].mu, gc.FlatParams)
    assert [b.shape for b in state[0].mu.buffers] == [(78,), (12,)]


def test_flax_serialization_round_trips_params_and_state():
    flat = gc.flatten_params(_params())
    tx = gc.adamw(1e-1)
    state = tx.init(flat)
    state = tx.update(jax.tree.map(jnp.ones_like, flat), state, flat)[1]
    assert sorted(flax.serialization.to_state_dict(flat)) == ["bfloat16", "float32"]
    blank = jax.tree.map(jnp.zeros_like, (flat, state))
    restored = flax.serialization.from_bytes(blank, flax.serialization.to_bytes((flat, state)))
    assert jax.tree.structure(restored) == jax.tree.structure((flat, state))
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves((flat, state)), strict=True):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def _array_fusions(compiled: Any, size: int) -> int:
    """Kernels of the entry computation that write an array of ``size`` elements."""
    entry = str(compiled.as_text()).split("ENTRY", 1)[1]
    return len(re.findall(rf"= f32\[{size}\]\{{0\}} fusion\(", entry))


def test_adamw_step_compiles_to_three_array_loops_whatever_the_number_of_leaves():
    # XLA:CPU has no multi-output loop fusion: one loop per moment, one for the
    # update applied to the parameters (apply_updates fused into it). A change that
    # materialises an intermediate tree (the update, a debiased moment) adds loops.
    tx = gc.adamw(1e-3, weight_decay=1e-4)

    def step(p: Any, state: Any, g: Any) -> tuple[Any, Any]:
        updates, state = tx.update(g, state, p)
        return gc.apply_updates(p, updates), state

    def count(params: Any) -> tuple[int, int]:
        lowered = jax.jit(step, donate_argnums=(0, 1)).lower(params, tx.init(params), params)
        compiled = lowered.compile()
        entry = str(compiled.as_text()).split("ENTRY", 1)[1]
        return _array_fusions(compiled, 1000), len(re.findall(r" fusion\(", entry))

    one_leaf, _ = count({"w": jnp.ones(1000)})
    assert one_leaf == 3
    tree = {f"w{i}": jnp.ones(100) for i in range(10)}
    flat_arrays, flat_all = count(gc.flatten_params(tree))
    assert flat_arrays == 3
    _, tree_all = count(tree)
    assert tree_all >= flat_all + 27  # three loops per leaf on the tree


@pytest.mark.parametrize(
    ("build", "name"),
    [
        (lambda: gc.adamw(1e-3, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)), "masked"),
        (
            lambda: gc.partition({"a": gc.sgd(0.1)}, lambda p: jax.tree.map(lambda _: "a", p)),
            "partition",
        ),
        (lambda: gc.muon(1e-3), "muon"),
        (lambda: gc.adafactor(1e-3), "scale_by_factored_rms"),
        (lambda: gc.lamb(1e-3), "scale_by_trust_ratio"),
        (lambda: gc.clip_by_block_rms(1.0), "clip_by_block_rms"),
        (
            lambda: gc.param_groups(gc.adamw, dict(learning_rate=1e-3), gc.Rule("**", name="all")),
            "param_groups",
        ),
        (lambda: gc.scale_by_shampoo(), "scale_by_shampoo"),
    ],
    ids=lambda x: x if isinstance(x, str) else "",
)
def test_transforms_that_depend_on_leaf_shapes_or_paths_refuse_flat_params(build, name):
    flat = gc.flatten_params(_params())
    tx = build()
    with pytest.raises(ValueError, match=rf"^{name}: got a gc\.FlatParams.*flat\.unflatten\(\)"):
        state = tx.init(flat)
        tx.update(flat, state, flat)


def test_flatten_params_refuses_a_flat_params_and_non_array_leaves():
    flat = gc.flatten_params(_params())
    with pytest.raises(TypeError, match="already a FlatParams"):
        gc.flatten_params(flat)
    with pytest.raises(TypeError, match=r"flatten_params: the leaf at \['w'\] is a str"):
        gc.flatten_params({"w": "weights"})
    with pytest.raises(TypeError, match="not an array"):
        jax.tree.map(lambda _: True, flat).unflatten()


# Registered transforms whose numbers on FlatParams differ from the tree's without
# depending on shapes: their random draws (noise, stochastic rounding) are split per leaf
# on the tree and per buffer on FlatParams (the same distribution, other samples), and
# L-BFGS's line search amplifies the rounding of its global inner products.
_RANDOM_OR_GLOBAL = {"add_noise", "noisy_sgd", "lbfgs", "quantize_state"}


def _run(tx: Any, params: Any, grads: list[Any]) -> list[Any]:
    state, out = tx.init(params), []
    for g in grads:
        u, state = tx.update(g, state, params)
        out.append(u.unflatten() if isinstance(u, gc.FlatParams) else u)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.key)
def test_every_transform_matches_the_tree_on_flat_params_or_refuses_them(case: Case):
    params = {"w": _params()["z"], "b": _params()["a"], "s": _params()["m"], "h": _params()["h"][0]}
    grads = [_grads(params, seed) for seed in (1, 2)]
    tree = _run(case.build(), params, grads)
    try:
        flat = _run(case.build(), gc.flatten_params(params), [gc.flatten_params(g) for g in grads])
    except ValueError as err:
        assert "got a gc.FlatParams" in str(err)
        return
    if case.name in _RANDOM_OR_GLOBAL or "stochastic" in case.id:
        return
    for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(flat), strict=True):
        np.testing.assert_allclose(
            np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-5, atol=1e-6
        )
