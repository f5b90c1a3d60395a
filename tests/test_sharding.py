"""Sharded optimizer states: shardings derived from the parameters', ZeRO-1, pmap, shard_map.

Runs on the eight simulated CPU devices of conftest.py.
"""

from __future__ import annotations

import functools
import itertools
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import gradchain as gc
from tests.registry import CASES, Case

MESH = jax.make_mesh((4, 2), ("data", "model"))
SPECS = {"w": P("data", "model"), "b": [P("data"), P()], "k": P(None, "data", "model")}


def _params() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    return {
        "w": jnp.asarray(rng.normal(size=(8, 6)), jnp.float32),
        "b": [jnp.asarray(rng.normal(size=4), jnp.bfloat16), jnp.ones((), jnp.float16)],
        "k": jnp.asarray(rng.normal(size=(2, 4, 6)), jnp.float32),
    }


def _is_spec(x: Any) -> bool:
    return isinstance(x, P)


def _shardings(specs: Any = SPECS, mesh: Any = MESH) -> Any:
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=_is_spec)


def _placed(tree: Any) -> Any:
    return jax.device_put(tree, _shardings())


def _grads(params: Any, seed: int) -> Any:
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)


def _param_paths(params: Any) -> list[tuple[str, tuple[int, ...], P]]:
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    specs = jax.tree.leaves(SPECS, is_leaf=_is_spec)
    return [(jax.tree_util.keystr(k), p.shape, s) for (k, p), s in zip(flat, specs, strict=True)]


def _same(a: jax.sharding.Sharding, b: jax.sharding.Sharding, ndim: int) -> bool:
    return a.is_equivalent_to(b, ndim)


_IDS = [case.key for case in CASES]


@pytest.mark.parametrize("case", CASES, ids=_IDS)
def test_every_state_leaf_gets_a_sharding_and_param_shaped_leaves_follow_their_parameter(
    case: Case,
):
    tx = case.build()
    params = _placed(_params())
    shardings = gc.state_shardings(tx, params)
    abstract = jax.eval_shape(tx.init, _params())
    flat = jax.tree_util.tree_flatten_with_path(abstract)[0]
    leaves = jax.tree.leaves(shardings)
    assert len(leaves) == len(flat)
    assert jax.tree.structure(shardings) == jax.tree.structure(abstract)
    for (path, leaf), sharding in zip(flat, leaves, strict=True):
        assert isinstance(sharding, NamedSharding) and sharding.mesh == MESH
        where = jax.tree_util.keystr(path)
        for name, shape, spec in _param_paths(params):
            if where.endswith(name) and leaf.shape == shape:
                assert _same(sharding, NamedSharding(MESH, spec), len(shape)), (where, sharding)
        if leaf.ndim == 0:
            assert sharding.spec == P(), where


def test_init_builds_the_state_in_place_with_the_derived_shardings():
    tx = gc.chain(gc.scale_by_factored_rms(min_dim_size_to_factor=2), gc.adamw(1e-3))
    params = _placed(_params())
    shardings = gc.state_shardings(tx, params)
    state = jax.jit(tx.init, out_shardings=shardings)(params)
    for leaf, sharding in zip(jax.tree.leaves(state), jax.tree.leaves(shardings), strict=True):
        assert _same(leaf.sharding, sharding, leaf.ndim)
    chex.assert_trees_all_equal(state, tx.init(_params()))


def test_factored_moments_keep_the_spec_of_the_axes_they_keep():
    # (d1, d0) = (1, 2) for (2, 4, 6): v_row drops axis 2, v_col drops axis 1.
    tx = gc.scale_by_factored_rms(min_dim_size_to_factor=2)
    s = gc.state_shardings(tx, _placed(_params()))
    assert s.v_row["k"].spec == P(None, "data")
    assert s.v_col["k"].spec == P(None, "model")
    assert s.v_row["w"].spec == P("model") and s.v_col["w"].spec == P("data")
    assert s.v["w"].spec == P()  # the (1,) placeholder of a factored leaf
    assert s.v["b"][0].spec == P("data")  # a vector keeps its full second moment


def test_sm3_accumulators_take_the_spec_of_their_axis():
    s = gc.state_shardings(gc.scale_by_sm3(), _placed(_params()))
    assert [a.spec for a in s.mu["k"]] == [P(None), P("data"), P("model")]
    assert [a.spec for a in s.mu["b"][0]] == [P("data")]


def test_shampoo_block_layout_is_replicated_and_soap_moments_follow_the_parameters():
    # Shampoo keeps every statistic in blocks stacked across the tree: no leaf is a parameter's.
    shampoo = gc.state_shardings(gc.scale_by_shampoo(block_size=4), _placed(_params()))
    assert all(s.spec == P() for s in jax.tree.leaves(shampoo))
    soap = gc.state_shardings(gc.scale_by_soap(), _placed(_params()))
    assert soap.mu["w"].spec == P("data", "model") and soap.nu["k"].spec == P(None, "data", "model")
    assert all(s.spec == P() for s in jax.tree.leaves(soap.factors))


def test_a_declared_rule_lays_out_a_new_state():
    from typing import NamedTuple

    class RowMeans(NamedTuple):
        rows: Any

    def init(params: Any) -> RowMeans:
        return RowMeans(jax.tree.map(lambda p: jnp.zeros(p.shape[:-1], jnp.float32), params))

    def update(u: Any, state: RowMeans, params: Any = None) -> tuple[Any, RowMeans]:
        return u, state

    tx = gc.GradientTransformation(init, update)
    params = {"w": _placed(_params())["w"]}
    assert gc.state_shardings(tx, params).rows["w"].spec == P()  # unmatched: replicated
    gc.register_state_sharding_rule(RowMeans, "rows", lambda p, spec, s: P(*spec[:-1]))
    assert gc.state_shardings(tx, params).rows["w"].spec == P("data")


def test_shardings_can_be_given_apart_from_the_parameters():
    abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), _params())
    s = gc.state_shardings(gc.adam(1e-3), abstract, param_shardings=_shardings())
    assert s[0].nu["k"].spec == P(None, "data", "model")


def test_a_parameter_without_a_sharding_is_named():
    abstract = {"w": jax.ShapeDtypeStruct((4, 2), jnp.float32)}
    with pytest.raises(ValueError, match=r"state_shardings: the parameter at \['w'\] carries"):
        gc.state_shardings(gc.adam(1e-3), abstract)


def test_parameters_on_two_meshes_are_refused():
    other = jax.make_mesh((8,), ("data",))
    params = {
        "a": jax.ShapeDtypeStruct((8,), jnp.float32, sharding=NamedSharding(MESH, P("data"))),
        "b": jax.ShapeDtypeStruct((8,), jnp.float32, sharding=NamedSharding(other, P("data"))),
    }
    with pytest.raises(ValueError, match="2 different meshes"):
        gc.state_shardings(gc.adam(1e-3), params)


def test_single_device_parameters_give_a_single_device_state():
    s = gc.state_shardings(gc.adam(1e-3), {"w": jnp.ones(3)})
    assert all(isinstance(x, jax.sharding.SingleDeviceSharding) for x in jax.tree.leaves(s))


# -- the state's sharding under a jitted update --------------------------------------------

# A few cases of every kind of state (elementwise, factored, per-axis, masked, partitioned,
# history, matrix): the whole registry costs about a second of compilation per case, so it
# runs with --slow.
FAST = (
    "adamw",
    "sgd[nesterov]",
    "adafactor",
    "scale_by_sm3",
    "masked",
    "partition",
    "scale_by_lion",
    "muon",
)
# Leaves replicated by the generic rule that XLA re-shards like the gradients under an Auto
# mesh: Adam-mini's per-block moments, GaLore's projected state, SOAP's factors, Shampoo's
# blocks. Their parameter-shaped leaves keep their sharding; jit the update with
# `out_shardings=state_shardings(...)` to pin the rest. Under an Explicit mesh the sharding is
# part of the type, and every leaf of every state keeps it (no exceptions).
RESHARDED_BY_XLA = {
    "scale_by_adam_mini",
    "adam_mini",
    "scale_by_galore",
    "galore",
    "scale_by_soap",
    "soap",
    # Shampoo's group stacks (moments, statistics, roots), replicated by the generic rule, which
    # XLA shards along the gradients' blocks (gathering leaves whole is for Explicit meshes only).
    "scale_by_shampoo",
    "shampoo",
    "scale_by_kron",  # its per-axis factors: a vector's diagonal factor goes like the vector
    "kron",
    "quantize_state",  # the block scales (one per 256 elements), sharded along the blocks
}
# Transforms whose update does not trace under an Explicit mesh (JAX 0.10.2's default for
# jax.make_mesh), each with its reason.
NOT_EXPLICIT: set[str] = set()


def _mesh(kind: jax.sharding.AxisType) -> jax.sharding.Mesh:
    return jax.make_mesh((4, 2), ("data", "model"), axis_types=(kind, kind))


def _check_update_keeps_state_sharding(case: Case, kind: jax.sharding.AxisType) -> None:
    mesh = _mesh(kind)
    shardings = _shardings(mesh=mesh)
    params = jax.device_put(_params(), shardings)
    grads = jax.device_put(_grads(_params(), 1), shardings)
    tx = case.build()
    with jax.set_mesh(mesh):
        state = jax.jit(tx.init, out_shardings=gc.state_shardings(tx, params))(params)
        _, new = jax.jit(tx.update)(grads, state, params)
    derived = jax.tree.leaves(gc.state_shardings(tx, params))
    flat = jax.tree_util.tree_flatten_with_path(state)[0]
    names = _param_paths(params)
    for (path, before), after, want in zip(flat, jax.tree.leaves(new), derived, strict=True):
        where = jax.tree_util.keystr(path)
        assert jax.typeof(after).dtype == jax.typeof(before).dtype, where
        assert _same(before.sharding, want, before.ndim), where
        param_shaped = any(where.endswith(n) and before.shape == s for n, s, _ in names)
        explicit = kind == jax.sharding.AxisType.Explicit
        if param_shaped or explicit or case.name not in RESHARDED_BY_XLA:
            assert _same(after.sharding, before.sharding, before.ndim), (where, after.sharding)
            if kind == jax.sharding.AxisType.Explicit:
                assert jax.typeof(after).sharding.spec == jax.typeof(before).sharding.spec, where


_BY_KEY = {case.key: case for case in CASES}


@pytest.mark.parametrize("key", FAST)
def test_a_jitted_update_keeps_the_sharding_and_dtype_of_every_state_leaf(key: str):
    _check_update_keeps_state_sharding(_BY_KEY[key], jax.sharding.AxisType.Auto)


@pytest.mark.parametrize("key", [k for k in FAST if k not in NOT_EXPLICIT])
def test_under_an_explicit_mesh_the_state_types_are_unchanged_by_update(key: str):
    _check_update_keeps_state_sharding(_BY_KEY[key], jax.sharding.AxisType.Explicit)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=_IDS)
def test_every_registered_update_keeps_the_state_sharding(case: Case):
    _check_update_keeps_state_sharding(case, jax.sharding.AxisType.Auto)
    if case.name not in NOT_EXPLICIT:
        _check_update_keeps_state_sharding(case, jax.sharding.AxisType.Explicit)


# -- init and update under an Explicit mesh -------------------------------------------------


def _explicit_mesh() -> jax.sharding.Mesh:
    return _mesh(jax.sharding.AxisType.Explicit)


@pytest.mark.parametrize("case", CASES, ids=_IDS)
def test_init_under_an_explicit_mesh_gives_param_shaped_leaves_their_parameters_sharding(
    case: Case,
):
    mesh = _explicit_mesh()
    params = jax.device_put(_params(), _shardings(mesh=mesh))
    with jax.set_mesh(mesh):
        state = case.build().init(params)
    names = _param_paths(params)
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        where = jax.tree_util.keystr(path)
        for name, shape, spec in names:
            if where.endswith(name) and leaf.shape == shape:
                assert _same(leaf.sharding, NamedSharding(mesh, spec), leaf.ndim), where


def test_zeros_like_follows_arrays_and_sharded_shape_dtype_structs_and_keeps_none():
    from gradchain import _tree

    mesh = _explicit_mesh()
    sharding = NamedSharding(mesh, P("data", "model"))
    params = {
        "placed": jax.device_put(jnp.ones((8, 6)), sharding),
        "abstract": jax.ShapeDtypeStruct((8, 6), jnp.bfloat16, sharding=sharding),
        "plain": jax.ShapeDtypeStruct((3,), jnp.float32),
        "none": None,
    }
    for build in (_tree.zeros_like, _tree.accumulator_like):
        with jax.set_mesh(mesh):
            z = build(params, jnp.float32)
        assert z["none"] is None and z["plain"].shape == (3,)
        assert z["placed"].sharding.spec == z["abstract"].sharding.spec == P("data", "model")
        assert {x.dtype for x in jax.tree.leaves(z)} == {jnp.dtype(jnp.float32)}
    weak = _tree.zeros_like({"w": jnp.asarray(1.0)})["w"]  # a weak parameter, a strong state
    assert not weak.weak_type


def _one_device_and_explicit_updates(case: Case) -> tuple[Any, Any, Any, Any]:
    tx = case.build()
    params, grads = _params(), _grads(_params(), 1)
    want, want_state = jax.jit(tx.update)(grads, tx.init(params), params)
    mesh = _explicit_mesh()
    shardings = _shardings(mesh=mesh)
    placed, placed_grads = jax.device_put((params, grads), (shardings, shardings))
    with jax.set_mesh(mesh):
        got, got_state = jax.jit(tx.update)(placed_grads, tx.init(placed), placed)
    return want, got, want_state, got_state


# The transforms that needed their sharding stated (gradchain/_explicit.py): Newton-Schulz's
# products, flatten's reshapes, the learning-rate-free methods' dot products, GaLore's SVD,
# SOAP's factors, multi_steps' lax.cond; Adafactor and SM3 build per-axis state; Shampoo's
# blocks and PSGD-Kron's factors, from each leaf gathered whole.
EXPLICIT_FIXED = (
    "muon",
    "flatten",
    "prodigy",
    "scale_by_scion",
    "matrix_partition",
    "soap",
    "galore",
    "multi_steps",
    "dadapt_adamw",
    "mechanize",
    "momo",
    "momo_adam",
    "adafactor",
    "scale_by_sm3",
    "adam_mini",
    "scale_by_shampoo",
    "shampoo",
    "scale_by_kron",
    "kron",
)
EXPLICIT_FIXED_FAST = ("muon", "flatten", "prodigy")


def _check_explicit_equals_one_device(key: str) -> None:
    want, got, want_state, got_state = _one_device_and_explicit_updates(_BY_KEY[key])
    # Products and sums over a sharded axis add their partial sums in another order.
    chex.assert_trees_all_close(got, want, rtol=2e-5, atol=2e-6)
    chex.assert_trees_all_close(got_state, want_state, rtol=2e-5, atol=2e-6)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(_grads(_params(), 1)), strict=True):
        assert g.dtype == w.dtype


def _check_eager_init_keeps_every_state_type(key: str) -> None:
    mesh = _explicit_mesh()
    shardings = _shardings(mesh=mesh)
    params = jax.device_put(_params(), shardings)
    grads = jax.device_put(_grads(_params(), 1), shardings)
    tx = _BY_KEY[key].build()
    with jax.set_mesh(mesh):
        state = tx.init(params)  # no out_shardings: init lays the state out itself
        _, new = jax.jit(tx.update)(grads, state, params)
    flat = jax.tree_util.tree_flatten_with_path(state)[0]
    for (path, before), after in zip(flat, jax.tree.leaves(new), strict=True):
        assert jax.typeof(after) == jax.typeof(before), (jax.tree_util.keystr(path), after)


@pytest.mark.parametrize("key", EXPLICIT_FIXED_FAST)
def test_under_an_explicit_mesh_the_update_equals_the_one_device_update(key: str):
    _check_explicit_equals_one_device(key)


@pytest.mark.parametrize("key", ("adafactor", "scale_by_sm3", "adam_mini"))
def test_a_state_built_by_init_under_an_explicit_mesh_keeps_its_types_through_update(key: str):
    _check_eager_init_keeps_every_state_type(key)


@pytest.mark.slow
@pytest.mark.parametrize("key", EXPLICIT_FIXED)
def test_every_fixed_transform_under_an_explicit_mesh_equals_one_device_and_keeps_types(key: str):
    _check_explicit_equals_one_device(key)
    _check_eager_init_keeps_every_state_type(key)


@pytest.mark.parametrize("key", ("add_noise", "dpsgd", "sophia"))
def test_a_key_in_the_state_is_laid_out_on_the_mesh_by_init_as_update_returns_it(key: str):
    _check_eager_init_keeps_every_state_type(key)


@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(_BY_KEY))
def test_every_state_built_by_init_under_an_explicit_mesh_keeps_its_types_through_update(key: str):
    _check_eager_init_keeps_every_state_type(key)


@pytest.mark.parametrize(
    ("preconditioning", "shape"),
    [("frobenius", (16, 8)), ("spectral", (8, 16)), ("aol", (16, 8)), ("schatten", (8, 16))],
)
def test_newton_schulz_of_a_sharded_matrix_is_sharded_like_it_and_equals_one_device(
    preconditioning: str, shape: tuple[int, int]
):
    from gradchain import _linalg

    x = jnp.asarray(np.random.default_rng(4).normal(size=shape), jnp.float32)

    def ns(m: jax.Array) -> jax.Array:
        return _linalg.newton_schulz(m, [_linalg.MUON_COEFFS] * 5, preconditioning=preconditioning)

    want = jax.jit(ns)(x)
    mesh = _explicit_mesh()
    with jax.set_mesh(mesh):
        got = jax.jit(ns)(jax.device_put(x, NamedSharding(mesh, P("data", "model"))))
    assert jax.typeof(got).sharding.spec == P("data", "model")
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


def test_inner_product_is_the_vdot_of_the_raveled_leaves_bit_for_bit():
    from gradchain import _explicit

    rng = np.random.default_rng(5)
    for shape in [(), (3,), (8, 6), (2, 4, 6), (300, 300)]:
        a, b = (jnp.asarray(rng.normal(size=shape), jnp.float32) for _ in range(2))
        want = jax.jit(lambda a, b: jnp.vdot(a.ravel(), b.ravel()))(a, b)
        assert np.array_equal(jax.jit(_explicit.inner)(a, b), want), shape


# -- ZeRO-1 ---------------------------------------------------------------------------------


def _mlp_params(sizes: tuple[int, ...] = (64, 32, 16), seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    out = {}
    for i, (n, m) in enumerate(itertools.pairwise(sizes)):
        out[f"w{i}"] = jnp.asarray(rng.normal(size=(n, m)) / np.sqrt(n), jnp.float32)
        out[f"b{i}"] = jnp.zeros((m,), jnp.float32)
    return out


def _mlp_loss(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    h = jnp.tanh(x @ params["w0"] + params["b0"][None])
    out = h @ params["w1"] + params["b1"][None]
    return jnp.mean((out - y) ** 2)


def _data(n: int = 64) -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(n, 64)), jnp.float32)
    return x, jnp.asarray(rng.normal(size=(n, 16)), jnp.float32)


def _train(tx: Any, steps: int, shardings: Any = None, data_sharding: Any = None) -> Any:
    def step(params: Any, state: Any, x: jax.Array, y: jax.Array) -> tuple[Any, Any]:
        grads = jax.grad(_mlp_loss)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return gc.apply_updates(params, updates), state

    params, (x, y) = _mlp_params(), _data()
    if shardings is None:
        state, run = tx.init(params), jax.jit(step)
    else:
        params = jax.device_put(params, shardings.params)
        x, y = jax.device_put((x, y), data_sharding)
        state = jax.jit(tx.init, out_shardings=shardings.state)(params)
        run = jax.jit(
            step,
            in_shardings=(shardings.params, shardings.state, data_sharding, data_sharding),
            out_shardings=(shardings.params, shardings.state),
        )
    for _ in range(steps):
        params, state = run(params, state, x, y)
    return params, state


def per_device_bytes(tree: Any) -> int:
    """The bytes one device holds of a tree of arrays."""
    return sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(tree))


def test_zero1_splits_the_state_eight_ways_and_trains_like_one_device():
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    tx = gc.adamw(1e-2, weight_decay=1e-3)
    zero = gc.zero1_shardings(tx, _mlp_params(), mesh, "data")
    replicated = gc.Zero1Shardings(
        zero.params, jax.tree.map(lambda _: NamedSharding(mesh, P()), zero.state)
    )
    batch = NamedSharding(mesh, P("data"))
    reference, _ = _train(tx, 5)
    params_z, state_z = _train(tx, 5, zero, batch)
    _, state_r = _train(tx, 1, replicated, batch)
    # The moments split exactly 8 ways; the scalars (step, hyperparameters) stay whole.
    moments = [x for x in jax.tree.leaves(state_z) if x.ndim]
    assert per_device_bytes(moments) * 8 == sum(x.nbytes for x in moments)
    assert per_device_bytes(state_r) / per_device_bytes(state_z) > 7.5
    assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(params_z))
    # A sum over the batch split 8 ways adds in another order: float32 rounding, no more.
    chex.assert_trees_all_close(params_z, reference, rtol=1e-5, atol=1e-6)


def test_zero1_keeps_a_tensor_parallel_axis_and_adds_the_data_axis():
    mesh = _mesh(jax.sharding.AxisType.Auto)
    specs = {"w0": P(None, "model"), "b0": P("model"), "w1": P("model", None), "b1": P()}
    zero = gc.zero1_shardings(gc.adam(1e-3), _mlp_params(), mesh, "data", param_specs=specs)
    mu = zero.state[0].mu
    assert mu["w0"].spec == P("data", "model") and mu["w1"].spec == P("model", "data")
    assert mu["b0"].spec == P("model") and mu["b1"].spec == P("data")
    assert zero.params["w0"].spec == P(None, "model")


def test_zero1_replicates_what_cannot_be_split():
    mesh = jax.make_mesh((8,), ("data",))
    zero = gc.zero1_shardings(gc.adam(1e-3), {"odd": jnp.ones((7, 3)), "s": jnp.ones(())}, mesh)
    assert zero.state[0].mu["odd"].spec == P(None, None) and zero.state[0].mu["s"].spec == P()
    with pytest.raises(ValueError, match=r"zero1_shardings: `axis` must name axes of the mesh"):
        gc.zero1_shardings(gc.adam(1e-3), {"w": jnp.ones(8)}, mesh, "batch")
    with pytest.raises(ValueError, match="ZeRO-1 keeps parameters whole"):
        gc.zero1_shardings(gc.adam(1e-3), {"w": jnp.ones(8)}, mesh, param_specs={"w": P("data")})


# -- pmap, shard_map and one device ---------------------------------------------------------


def _float32_params() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    return {
        "w": jnp.asarray(rng.normal(size=(8, 6)), jnp.float32),
        "b": jnp.asarray(rng.normal(size=4), jnp.float32),
        "k": jnp.asarray(rng.normal(size=(2, 4, 6)), jnp.float32),
    }


def _per_device_grads(params: Any, seed: int) -> Any:
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=(8, *p.shape)), p.dtype), params)


def _check_mean_of_device_grads(case: Case) -> None:
    tx = case.build()
    params = _float32_params()
    stacked = [_per_device_grads(params, seed) for seed in (1, 2)]

    def local(g: Any, state: Any, axis: str) -> tuple[Any, Any]:
        g = jax.lax.pmean(g, axis)
        return tx.update(g, state, params)

    one = jax.jit(lambda g, s: tx.update(g, s, params))
    pmapped = jax.pmap(lambda g, s: local(g, s, "i"), axis_name="i")
    mesh = jax.make_mesh((8,), ("d",), axis_types=(jax.sharding.AxisType.Auto,))
    sharded = jax.jit(
        jax.shard_map(
            lambda g, s: local(jax.tree.map(lambda x: x[0], g), s, "d"),
            mesh=mesh,
            in_specs=(P("d"), P()),
            out_specs=(P(), P()),
        )
    )
    state = tx.init(params)
    state_p = jax.tree.map(lambda x: jnp.stack([x] * 8), state)
    state_s = state
    for grads in stacked:
        want, state = one(jax.tree.map(lambda g: jnp.mean(g, axis=0), grads), state)
        got_p, state_p = pmapped(grads, state_p)
        got_s, state_s = sharded(grads, state_s)
        # The mean over devices is an all-reduce, not jnp.mean: float32 rounding differs.
        for device in range(8):
            mine = jax.tree.map(lambda x, i=device: x[i], got_p)
            chex.assert_trees_all_close(mine, want, rtol=2e-5, atol=1e-6)
        chex.assert_trees_all_close(got_s, want, rtol=2e-5, atol=1e-6)


PMAP_FAST = ("adamw", "scale_by_sm3", "partition", "clip_by_global_norm")


@pytest.mark.parametrize("key", PMAP_FAST)
def test_pmean_of_device_grads_under_pmap_and_shard_map_equals_one_device_on_the_mean(key: str):
    _check_mean_of_device_grads(_BY_KEY[key])


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=_IDS)
def test_every_registered_transform_under_pmap_and_shard_map_equals_one_device(case: Case):
    _check_mean_of_device_grads(case)


# -- Muon on a sharded matrix ---------------------------------------------------------------


def test_muon_on_a_sharded_matrix_equals_muon_on_one_device():
    mesh = _mesh(jax.sharding.AxisType.Auto)
    rng = np.random.default_rng(3)
    params = {"w": jnp.asarray(rng.normal(size=(64, 32)), jnp.float32)}
    grads = {"w": jnp.asarray(rng.normal(size=(64, 32)), jnp.float32)}
    tx = gc.muon(1e-2)
    want, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    sharding = {"w": NamedSharding(mesh, P("data", "model"))}
    params_s, grads_s = jax.device_put((params, grads), (sharding, sharding))
    state = jax.jit(tx.init, out_shardings=gc.state_shardings(tx, params_s))(params_s)
    got, _ = jax.jit(tx.update)(grads_s, state, params_s)
    assert got["w"].sharding.is_equivalent_to(sharding["w"], 2)
    # Newton-Schulz's matrix products add partial sums across devices in another order.
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-7)


# -- the data-parallel example, in one process and in two -----------------------------------

_EXAMPLE_ARGS = dict(steps=6, batch_size=64, hidden=32, learning_rate=1e-2)


@functools.cache
def _single_process_run() -> dict[str, Any]:
    from tests.example_loader import load_example

    return load_example("data_parallel").main(**_EXAMPLE_ARGS)


def test_data_parallel_example_trains_with_an_eighth_of_the_state_per_device():
    run = _single_process_run()
    assert run["devices"] == 8 and run["processes"] == 1
    assert run["losses"][-1] < run["losses"][0]
    assert run["state_bytes"] / run["state_bytes_per_device"] > 7.5


def test_two_processes_of_four_devices_train_like_one_process_of_eight(tmp_path):
    # In the default run (CI runs it): both processes start at once and compile the few-step
    # example in parallel, about 11 s of wall time on 2 busy cores (5 s of CPU each).
    import json
    import os
    import socket
    import subprocess
    import sys
    import time

    from tests.example_loader import EXAMPLES

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in _EXAMPLE_ARGS.items()]
    command = [sys.executable, str(EXAMPLES / "data_parallel.py"), *flags, "--json"]
    command += ["--local-devices=4", "--num-processes=2", f"--coordinator=localhost:{port}"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    # Output goes to files, not pipes: a process blocked on a full pipe would stall the other
    # one inside a collective.
    logs = [(tmp_path / f"process{i}.out", tmp_path / f"process{i}.err") for i in range(2)]
    children = []
    for i, (out, err) in enumerate(logs):
        with out.open("wb") as stdout, err.open("wb") as stderr:
            children.append(
                subprocess.Popen(
                    [*command, f"--process-id={i}"], stdout=stdout, stderr=stderr, env=env
                )
            )
    timeout = 300  # generous: a loaded 2-core machine compiles slowly; a hang ends here
    deadline = time.monotonic() + timeout
    try:
        for child in children:
            child.wait(timeout=max(deadline - time.monotonic(), 1.0))
        timed_out = False
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()

    def failure(what: str) -> str:
        tails = "".join(
            f"\n--- process {i} (exit code {child.returncode}), end of its stderr:\n"
            + err.read_text(errors="replace")[-3000:]
            for i, (child, (_, err)) in enumerate(zip(children, logs, strict=True))
        )
        return f"{what}. Command: {' '.join(command)} --process-id=<0|1>{tails}"

    assert not timed_out, failure(f"The two processes did not finish within {timeout} s")
    assert all(child.returncode == 0 for child in children), failure("A process failed")
    results = [json.loads(out.read_text().strip().splitlines()[-1]) for out, _ in logs]
    single = _single_process_run()
    for result in results:
        assert result["processes"] == 2 and result["devices"] == 8
        # The same program on the same mesh of 8: only the collectives' transport differs.
        np.testing.assert_allclose(result["losses"], single["losses"], rtol=1e-6)
        assert result["val_accuracy"] == single["val_accuracy"]
        assert result["state_bytes_per_device"] == single["state_bytes_per_device"]
