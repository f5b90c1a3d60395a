"""split_real_and_imaginary: Optax 0.2.8's numbers, the split by hand, complex64 convergence."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradchain as gc

STEPS = 50
_rng = np.random.default_rng(5)


def _complex(shape: tuple[int, ...]) -> np.ndarray:
    return (_rng.normal(size=shape) + 1j * _rng.normal(size=shape)).astype(np.complex64)


PARAMS = {
    "z": _complex((4, 3)),
    "b": _complex((3,)),
    "r": _rng.normal(size=(2,)).astype(np.float32),
}
GRADS = {
    "z": _complex((STEPS, 4, 3)),
    "b": _complex((STEPS, 3)),
    "r": _rng.normal(size=(STEPS, 2)).astype(np.float32),
}


def _trajectory(lib: Any, tx: Any, params: Any, grads: Any) -> tuple[Any, Any]:
    def step(carry: Any, g: Any) -> tuple[Any, Any]:
        p, state = carry
        u, state = tx.update(g, state, p)
        return (lib.apply_updates(p, u), state), u

    (params, _), updates = jax.lax.scan(step, (params, tx.init(params)), grads)
    return updates, params


@pytest.mark.parametrize(
    "make",
    [
        lambda m: m.adam(1e-2),
        lambda m: m.chain(m.clip_by_global_norm(1.0), m.adamw(1e-2, weight_decay=0.1)),
        lambda m: m.sgd(1e-2, momentum=0.9),
    ],
    ids=["adam", "clip_adamw", "sgd_momentum"],
)
def test_updates_and_params_match_optax_contrib(make: Any) -> None:
    got = jax.jit(lambda: _trajectory(gc, gc.split_real_and_imaginary(make(gc)), PARAMS, GRADS))()
    with jax.numpy_dtype_promotion("standard"):
        tx = optax.contrib.split_real_and_imaginary(make(optax))
        want = jax.jit(lambda: _trajectory(optax, tx, PARAMS, GRADS))()
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7 * float(np.max(np.abs(w))))


def test_each_complex_leaf_gets_the_updates_of_its_real_and_imaginary_parts() -> None:
    # The split by hand: Adam on a tree whose complex leaves are (real, imag) pairs.
    tx = gc.split_real_and_imaginary(gc.adam(1e-2))
    got_u, _ = jax.jit(lambda: _trajectory(gc, tx, PARAMS, GRADS))()

    def pairs(tree: Any) -> Any:
        return {k: (np.real(v), np.imag(v)) if k != "r" else v for k, v in tree.items()}

    want_u, _ = jax.jit(lambda: _trajectory(gc, gc.adam(1e-2), pairs(PARAMS), pairs(GRADS)))()
    for k in ("z", "b"):
        np.testing.assert_array_equal(np.real(got_u[k]), want_u[k][0])
        np.testing.assert_array_equal(np.imag(got_u[k]), want_u[k][1])
    np.testing.assert_array_equal(got_u["r"], want_u["r"])


def test_adam_through_the_split_minimizes_a_complex64_parabola_in_scan() -> None:
    target = jnp.array([1.0 - 2.0j, -0.5 + 0.25j], jnp.complex64)

    def loss(z: jax.Array) -> jax.Array:
        return jnp.sum(jnp.abs(z - target) ** 2)

    tx = gc.split_real_and_imaginary(gc.adam(gc.cosine_decay_schedule(0.1, 2000, 1e-3)))

    def step(carry: Any, _: Any) -> tuple[Any, None]:
        z, state = carry
        g = jnp.conj(jax.grad(loss, holomorphic=False)(z))  # the steepest-descent direction
        u, state = tx.update(g, state, z)
        return (gc.apply_updates(z, u), state), None

    z0 = jnp.zeros(2, jnp.complex64)
    final = jax.jit(lambda: jax.lax.scan(step, (z0, tx.init(z0)), None, 2000)[0][0])()
    assert final.dtype == jnp.complex64
    np.testing.assert_allclose(final, target, atol=1e-2)


def test_init_takes_shape_dtype_structs_and_splits_them() -> None:
    tx = gc.split_real_and_imaginary(gc.scale_by_adam())
    abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), PARAMS)
    state = tx.init(abstract)
    mu = state.inner_state.mu
    assert isinstance(mu["z"], gc.RealAndImaginary)
    assert (mu["z"].real.shape, mu["z"].real.dtype) == ((4, 3), jnp.float32)
    assert mu["r"].dtype == jnp.float32


def test_an_uncalled_factory_is_refused_naming_the_wrapper() -> None:
    with pytest.raises(TypeError, match=r"^split_real_and_imaginary: `inner` is the function"):
        gc.split_real_and_imaginary(gc.scale_by_adam)  # type: ignore[arg-type]


def test_value_reaches_an_inner_transform_that_takes_it() -> None:
    inner = gc.reduce_on_plateau(factor=0.5, patience=1)
    tx = gc.split_real_and_imaginary(inner)
    z = jnp.ones(1, jnp.complex64)
    state = tx.init(z)
    for loss in (1.0, 1.0):
        u, state = tx.update(jnp.array([2.0 + 4.0j], jnp.complex64), state, z, value=loss)
    assert complex(u[0]) == 1.0 + 2.0j


OPTAX_PARITY_NAMES = frozenset({"split_real_and_imaginary"})
FACTORIES: dict[str, Any] = {}
HYPERPARAMETERS: list[tuple[str, str, str, str]] = []
