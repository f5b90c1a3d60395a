"""Optax 0.2.8's public helper functions: the same numbers as Optax's, and what differs.

Each is compared with Optax's function of the same name on random float32
inputs (rtol 1e-6: the same float32 arithmetic), and with a NumPy float64
formula where it is math. Differences on purpose: results are at least
float32 for low-precision inputs, and ``update_moment_per_elem_norm`` of odd
order averages ``|g|**k`` where Optax averages signed ``g**k``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradchain as gc

RTOL = 1e-6
rng = np.random.default_rng(5)
TREE = {"a": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32), "b": jnp.float32(0.7)}
OTHER = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=np.shape(x)), jnp.float32), TREE)


def _optax(fn: Any, *args: Any, **kwargs: Any) -> Any:
    with jax.numpy_dtype_promotion("standard"):
        return fn(*args, **kwargs)


def _close(got: Any, want: Any) -> None:
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=RTOL, atol=1e-7)


@pytest.mark.parametrize(
    "kwargs", [{}, {"ord": 1}, {"axis": 1}, {"axis": 0, "keepdims": True}, {"ord": np.inf}]
)
def test_safe_norm_matches_optax_and_numpy(kwargs: dict[str, Any]) -> None:
    x = TREE["a"]
    _close(gc.safe_norm(x, 0.1, **kwargs), _optax(optax.safe_norm, x, 0.1, **kwargs))
    want = np.maximum(np.linalg.norm(np.asarray(x, np.float64), **kwargs), 0.1)
    np.testing.assert_allclose(gc.safe_norm(x, 0.1, **kwargs), want, rtol=RTOL)


def test_safe_norm_and_rms_have_zero_gradients_at_zero_where_the_plain_norm_has_nan() -> None:
    zero = jnp.zeros(3)
    assert bool(jnp.all(jnp.isnan(jax.grad(jnp.linalg.norm)(zero))))
    for f in (lambda x: gc.safe_norm(x, 0.0), lambda x: gc.safe_root_mean_squares(x, 0.0)):
        np.testing.assert_array_equal(jax.grad(f)(zero), np.zeros(3))


def test_safe_root_mean_squares_matches_optax_and_is_float32_for_bfloat16() -> None:
    x = TREE["a"]
    _close(gc.safe_root_mean_squares(x, 1e-3), _optax(optax.safe_root_mean_squares, x, 1e-3))
    assert gc.safe_root_mean_squares(x.astype(jnp.bfloat16), 1e-3).dtype == jnp.float32
    assert float(gc.safe_root_mean_squares(jnp.zeros(4), 0.5)) == 0.5


@pytest.mark.parametrize(
    "value",
    [jnp.int32(5), jnp.int32(2**31 - 1), jnp.int8(127), jnp.uint8(255), jnp.float32(2.5)],
    ids=str,
)
def test_safe_increment_matches_optax_for_every_counter_dtype(value: Any) -> None:
    for fn in (gc.safe_increment, gc.safe_int32_increment):
        got = fn(value)
        want = _optax(optax.safe_increment, value)
        assert got.dtype == want.dtype and got == want


def test_safe_increment_refuses_a_bool_counter() -> None:
    with pytest.raises(TypeError, match=r"^safe_increment: .*integer or floating dtype; got bool"):
        gc.safe_increment(jnp.bool_(True))


def test_init_empty_state_is_an_empty_state() -> None:
    assert gc.init_empty_state(TREE) == gc.EmptyState()


@pytest.mark.parametrize("step_size", [0.0, 0.3, 1.0])
def test_incremental_update_matches_optax(step_size: float) -> None:
    got = gc.incremental_update(TREE, OTHER, step_size)
    _close(got, _optax(optax.incremental_update, TREE, OTHER, step_size))


@pytest.mark.parametrize("steps", [0, 1, 6, 7])
def test_periodic_update_matches_optax(steps: int) -> None:
    got = jax.jit(gc.periodic_update, static_argnums=3)(TREE, OTHER, jnp.int32(steps), 3)
    _close(got, _optax(optax.periodic_update, TREE, OTHER, jnp.int32(steps), 3))


def test_tree_updates_of_another_structure_raise_naming_the_function_and_path() -> None:
    with pytest.raises(ValueError, match=r"^incremental_update: .* at \['b'\]"):
        gc.incremental_update(TREE, {"a": TREE["a"]}, 0.5)
    with pytest.raises(ValueError, match=r"^update_moment: .*disagree in shape at \['a'\]"):
        gc.update_moment({**TREE, "a": jnp.ones(4)}, TREE, 0.9, 2)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_moment_updates_match_optax_except_odd_orders_of_the_elementwise_norm(order: int) -> None:
    _close(
        gc.update_moment(TREE, OTHER, 0.9, order),
        _optax(optax.tree.update_moment, TREE, OTHER, 0.9, order),
    )
    got = gc.update_moment_per_elem_norm(TREE, OTHER, 0.9, order)
    want = jax.tree.map(lambda g, m: 0.1 * np.abs(np.float64(g)) ** order + 0.9 * m, TREE, OTHER)
    _close(got, want)
    if order % 2 == 0:
        _close(got, _optax(optax.tree.update_moment_per_elem_norm, TREE, OTHER, 0.9, order))


def test_infinity_moment_and_bias_correction_match_optax() -> None:
    _close(
        gc.update_infinity_moment(TREE, OTHER, 0.9, 1e-3),
        _optax(optax.tree.update_infinity_moment, TREE, OTHER, 0.9, 1e-3),
    )
    for count in (1, 10, 1000):
        _close(
            gc.bias_correction(OTHER, 0.999, jnp.int32(count)),
            _optax(optax.tree.bias_correction, OTHER, 0.999, jnp.int32(count)),
        )


def test_bias_correction_of_bfloat16_moments_is_computed_in_float32() -> None:
    m = jnp.asarray([0.001], jnp.bfloat16)
    got = gc.bias_correction(m, 0.999, jnp.int32(1))
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.float32(got[0]), 1.0, rtol=1e-2)


def test_moment_helpers_pass_none_leaves_and_keep_the_moments_dtype() -> None:
    updates = {"a": None, "b": jnp.ones(2, jnp.float32)}
    moments = {"a": None, "b": jnp.zeros(2, jnp.bfloat16)}
    out = gc.update_moment(updates, moments, 0.5, 1)
    assert out["a"] is None and out["b"].dtype == jnp.bfloat16


def test_tree_map_params_matches_optax_on_an_sgd_state() -> None:
    tx_ours, tx_theirs = gc.sgd(0.1, momentum=0.9), optax.sgd(0.1, momentum=0.9)
    ours = gc.tree_map_params(
        tx_ours, lambda p, o: p + o, tx_ours.init(TREE), OTHER, transform_non_params=lambda _: None
    )
    theirs = optax.tree_map_params(
        tx_theirs,
        lambda p, o: p + o,
        tx_theirs.init(TREE),
        OTHER,
        transform_non_params=lambda _: None,
    )
    _close(ours[0].trace, theirs[0].trace)
    assert ours[0].step is None
    assert all(v is None for v in gc.get_hyperparams(ours).values())


def test_tree_map_params_explains_an_init_that_reads_the_parameters() -> None:
    def init(params: Any) -> Any:
        return {"norm": jnp.sum(params)}

    with pytest.raises(TypeError, match=r"^tree_map_params: `initable.init` could not run"):
        gc.tree_map_params(init, lambda p: p, {"norm": jnp.ones(())})


OPTAX_PARITY_NAMES = frozenset(
    {
        "safe_norm",
        "safe_root_mean_squares",
        "safe_increment",
        "safe_int32_increment",
        "tree_map_params",
        "incremental_update",
        "periodic_update",
        "init_empty_state",
        "bias_correction",
        "update_moment",
        "update_moment_per_elem_norm",
        "update_infinity_moment",
    }
)
"""The names this file compares with Optax (tests/test_optax_parity.py counts them)."""
HYPERPARAMETERS: list[tuple[str, str, str, str]] = []  # functions, not factories
FACTORIES: dict[str, tuple[Any, dict[str, Any]]] = {}
