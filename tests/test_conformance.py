"""The conformance suite: properties every registered transformation must have.

Each property runs over every case of ``tests/registry.py``: under chex
variants (jit, no jit, pmap over simulated devices) and on hypothesis-generated
pytrees (nested dicts, lists and tuples of scalars, zero-size and ordinary
arrays in float32, bfloat16 and float16).
"""

from __future__ import annotations

import zlib
from typing import Any, NamedTuple

import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

import gradchain as gc
from tests.registry import CASES, HELPERS, NAMES, SCHEDULES, Case

SHAPES = ((), (0,), (3,), (2, 3), (1, 4, 2))
DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


class LeafSpec(NamedTuple):
    shape: tuple[int, ...]
    dtype: Any


def _tree_specs() -> st.SearchStrategy[Any]:
    leaf = st.builds(LeafSpec, st.sampled_from(SHAPES), st.sampled_from(DTYPES))

    def extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        items = st.lists(children, min_size=1, max_size=3)
        return st.one_of(
            st.dictionaries(st.sampled_from("abcd"), children, min_size=1, max_size=3),
            items,
            items.map(tuple),
        )

    return st.recursive(leaf, extend, max_leaves=5)


def _materialize(spec: Any, rng: np.random.Generator) -> Any:
    if isinstance(spec, LeafSpec):
        return jnp.asarray(rng.normal(size=spec.shape), spec.dtype)
    if isinstance(spec, dict):
        return {k: _materialize(v, rng) for k, v in spec.items()}
    children = [_materialize(v, rng) for v in spec]
    return tuple(children) if isinstance(spec, tuple) else children


def _mixed_params() -> dict[str, Any]:
    """A fixed tree with every leaf kind, for the properties that need no search."""
    return {
        "w": jnp.ones((3, 2), jnp.float32),
        "b": [jnp.zeros((2,), jnp.bfloat16), jnp.ones((), jnp.float16)],
        "empty": jnp.zeros((0,), jnp.float32),
    }


def _grads_like(params: Any, seed: int, dtype: Any = None) -> Any:
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), dtype or p.dtype), params)


def _signature(tree: Any) -> Any:
    """Structure, shapes and dtypes of a tree: what must stay put."""
    return jax.tree.structure(tree), [(x.shape, x.dtype) for x in jax.tree.leaves(tree)]


_PARAMS = [(case.key.replace("[", "__").rstrip("]"), case) for case in CASES]


class ConformanceTest(chex.TestCase):
    """Properties under chex variants and hypothesis trees."""

    @chex.variants(with_jit=True, without_jit=True, with_pmap=True)
    @parameterized.named_parameters(*_PARAMS)
    def test_update_keeps_structure_shape_and_dtype(self, case: Case):
        tx = case.build()
        update = self.variant(tx.update)

        # The jit variant explores the shapes and dtypes. pmap compiles for every device and
        # no-jit dispatches op by op: their own properties (the update runs replicated, the
        # update runs eagerly) need few trees, a quarter of the profile's.
        examples = hypothesis.settings().max_examples
        if self.variant.type != chex.ChexVariantType.WITH_JIT:
            examples = max(1, examples // 4)

        @hypothesis.settings(max_examples=examples)
        @hypothesis.seed(zlib.crc32(f"{case.key}/{self.variant.type}".encode()))  # varies by case
        @hypothesis.given(spec=_tree_specs(), seed=st.integers(0, 2**16))
        def check(spec: Any, seed: int) -> None:
            rng = np.random.default_rng(seed)
            params = _materialize(spec, rng)
            state = tx.init(params)
            for _ in range(2):
                grads = _materialize(spec, rng)
                updates, new_state = update(grads, state, params)
                assert _signature(updates) == _signature(grads)
                assert _signature(new_state) == _signature(state)
                state = new_state

        check()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.key)
def test_update_traces_once_with_float32_grads_for_low_precision_params(case: Case):
    tx = case.build()
    params = _mixed_params()
    traces = 0

    @jax.jit
    def step(grads: Any, state: Any) -> tuple[Any, Any]:
        nonlocal traces
        traces += 1
        return tx.update(grads, state, params)

    state = tx.init(params)
    for seed in range(3):
        grads = _grads_like(params, seed, jnp.float32)
        updates, state = step(grads, state)
        assert _signature(updates) == _signature(grads)
    assert traces == 1


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.key)
def test_state_is_a_stable_scan_carry(case: Case):
    tx = case.build()
    params = _mixed_params()
    grads = jax.tree.map(lambda g: jnp.stack([g] * 4), _grads_like(params, 0, jnp.float32))

    def body(state: Any, g: Any) -> tuple[Any, Any]:
        updates, state = tx.update(g, state, params)
        return state, updates

    init = tx.init(params)
    final, _ = jax.lax.scan(body, init, grads)
    assert _signature(final) == _signature(init)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.key)
def test_init_accepts_shape_dtype_structs(case: Case):
    tx = case.build()
    params = _mixed_params()
    abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
    from_abstract = tx.init(abstract)
    from_concrete = tx.init(params)
    assert _signature(from_abstract) == _signature(from_concrete)
    assert _signature(jax.eval_shape(tx.init, params)) == _signature(from_concrete)


def _program(tx: Any) -> tuple[str, list[np.ndarray]]:
    """One update of ``tx`` as traced by JAX: the jaxpr's text and its constants' values."""
    params = _mixed_params()

    def step(state: Any, grads: Any) -> Any:
        return tx.update(grads, state, params)

    closed = jax.make_jaxpr(step)(tx.init(params), _grads_like(params, 0))
    return str(closed.jaxpr), [np.asarray(c) for c in closed.consts]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.key)
def test_chain_laws_hold(case: Case):
    # Identity and associativity, proved on the traced program rather than sampled on numbers:
    # equal jaxprs over the same flattened state and equal constants compute the same updates
    # and states at every step, on any input (and tracing costs a fraction of eager steps).
    def assert_same_program(tx: Any, reference: tuple[str, list[np.ndarray]]) -> None:
        text, consts = _program(tx)
        assert text == reference[0]
        chex.assert_trees_all_equal(consts, reference[1])

    reference = _program(case.build())
    assert_same_program(gc.chain(case.build()), reference)
    assert_same_program(gc.chain(gc.identity(), case.build(), gc.identity()), reference)
    left = gc.chain(gc.chain(gc.clip(1.0), case.build()), gc.scale(0.5))
    right = gc.chain(gc.clip(1.0), gc.chain(case.build(), gc.scale(0.5)))
    assert_same_program(left, _program(right))


def test_registry_covers_every_public_transformation():
    public = {
        name
        for name in gc.__all__
        if callable(getattr(gc, name)) and not isinstance(getattr(gc, name), type)
    }
    public -= {"ScalarOrSchedule", "Schedule", "Params", "Updates", "OptState"}
    unregistered = sorted(public - NAMES - HELPERS - SCHEDULES)
    assert not unregistered, f"add these public factories to tests/registry.py: {unregistered}"
    stale = sorted((NAMES | HELPERS | SCHEDULES) - set(gc.__all__))
    assert not stale, f"tests/registry.py names what gradchain does not export: {stale}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.key)
def test_step_counters_saturate_at_int32_max(case: Case):
    tx = case.build()
    params = _mixed_params()
    top = np.iinfo(np.int32).max

    def to_max(path: tuple[Any, ...], leaf: Any) -> Any:
        is_step = path and getattr(path[-1], "name", None) == "step"
        return jnp.full_like(leaf, top) if is_step else leaf

    state = jax.tree_util.tree_map_with_path(to_max, tx.init(params))
    for seed in range(2):
        updates, state = jax.jit(tx.update)(_grads_like(params, seed), state, params)
        assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))
    steps = [
        leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]
        if getattr(path[-1], "name", None) == "step"
    ]
    assert all(int(s) == top for s in steps)


@pytest.mark.parametrize(
    "make",
    [
        lambda dt: gc.trace(0.9, accumulator_dtype=dt),
        lambda dt: gc.ema(0.9, accumulator_dtype=dt),
        lambda dt: gc.scale_by_adam(mu_dtype=dt),
    ],
    ids=["trace", "ema", "scale_by_adam"],
)
def test_a_real_accumulator_dtype_keeps_complex_momentum_complex(make: Any):
    """A float32 momentum dtype for complex64 parameters means complex64, not a real cast."""
    params = jnp.array([1 + 2j, -3j], jnp.complex64)
    grads = jnp.array([0.5 - 1j, 2 + 0.25j], jnp.complex64)
    chosen, default = make(jnp.float32), make(None)
    out, state = chosen.update(grads, chosen.init(params), params)
    expected, _ = default.update(grads, default.init(params), params)
    chex.assert_trees_all_equal(out, expected)
    assert all(x.dtype != jnp.float32 for x in jax.tree.leaves(state) if x.ndim)
