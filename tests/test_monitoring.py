"""snapshot, monitor, measure_with_ema (against Optax 0.2.8), telemetry (against NumPy).

Measurements are plain float32 arithmetic in both libraries, so they agree
with Optax to rtol 1e-6. Telemetry has no Optax counterpart; its values are
checked against a float64 NumPy computation of the same norms.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradchain as gc

PARAMS = {"w": jnp.array([1.0, -2.0, 3.0]), "b": [jnp.array(0.5), jnp.ones((2, 2))]}


def _grads(seed: int, scale: float = 1.0, like: Any = PARAMS) -> Any:
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: jnp.asarray(scale * rng.normal(size=p.shape), p.dtype), like)


def _norm64(tree: Any) -> float:
    return float(np.sqrt(sum(np.sum(np.float64(x) ** 2) for x in jax.tree.leaves(tree))))


def _measurements(lib: Any, tx: Any, names: list[str], steps: int = 6) -> list[dict[str, Any]]:
    state = tx.init(PARAMS)
    update = jax.jit(tx.update)
    out = []
    for i in range(steps):
        _, state = update(_grads(i, scale=0.5 + i), state, PARAMS)
        if lib is gc:
            out.append({k: gc.get_telemetry(state)[k] for k in names})
        else:
            out.append({k: optax.tree.get(state, k) for k in names})
    return out


def _assert_close(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> None:
    for a, b in zip(ours, theirs, strict=True):
        for k in a:
            np.testing.assert_allclose(np.float32(a[k]), np.float32(b[k]), rtol=1e-6, err_msg=k)


def test_snapshot_matches_optax():
    def make(lib: Any) -> Any:
        norm = gc.global_norm if lib is gc else optax.tree.norm
        return lib.chain(
            lib.sgd(0.1, momentum=0.9),
            lib.snapshot("before_clip", norm),
            lib.clip_by_global_norm(0.5),
        )

    ours = _measurements(gc, make(gc), ["before_clip"])
    with jax.numpy_dtype_promotion("standard"):
        theirs = _measurements(optax, make(optax), ["before_clip"])
    _assert_close(ours, theirs)


@pytest.mark.parametrize("debias", [True, False])
def test_monitor_with_measure_with_ema_matches_optax(debias: bool):
    def make(lib: Any) -> Any:
        norm = gc.global_norm if lib is gc else optax.tree.norm
        measures = {
            "norm": norm,
            "clipped_ema": lib.measure_with_ema(lambda u: norm(u) > 1.0, 0.9, debias=debias),
            "norm_ema": lib.measure_with_ema(norm, 0.8, debias=debias),
        }
        return lib.chain(
            lib.sgd(0.1, momentum=0.9), lib.monitor(measures), lib.clip_by_global_norm(1.0)
        )

    names = ["norm", "clipped_ema", "norm_ema"]
    ours = _measurements(gc, make(gc), names)
    with jax.numpy_dtype_promotion("standard"):
        theirs = _measurements(optax, make(optax), names)
    _assert_close(ours, theirs)


def test_monitor_state_has_its_final_structure_from_init_where_optax_grows_it():
    tx = gc.monitor({"norm": gc.global_norm, "ema": gc.measure_with_ema(gc.global_norm, 0.9)})
    state = tx.init(PARAMS)
    _, after = tx.update(_grads(0), state)
    assert jax.tree.structure(after) == jax.tree.structure(state)
    assert int(state.step) == 0 and int(after.step) == 1  # step 0: nothing measured yet
    with jax.numpy_dtype_promotion("standard"):
        ref = optax.monitor({"norm": optax.tree.norm})
        ref_state = ref.init(PARAMS)
        _, ref_after = ref.update(_grads(0), ref_state)
    assert ref_state.measurements == {} and list(ref_after.measurements) == ["norm"]


def test_measurements_keep_their_dtypes_a_scan_carry_and_accept_abstract_params():
    params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), PARAMS)
    tx = gc.monitor(
        {
            "abs": lambda u: jax.tree.map(jnp.abs, u),
            "often_big": gc.measure_with_ema(lambda u: gc.global_norm(u) > 1.0, 0.9),
        }
    )
    state = tx.init(jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params))
    # Floats are kept in at least float32, an average of booleans in float32.
    assert {x.dtype for x in jax.tree.leaves(state.measurements)} == {jnp.dtype(jnp.float32)}
    grads = jax.tree.map(lambda *g: jnp.stack(g), *[_grads(i, like=params) for i in range(3)])

    def body(state: Any, g: Any) -> tuple[Any, Any]:
        _, state = tx.update(g, state)
        return state, gc.get_telemetry(state)["often_big"]

    final, history = jax.lax.scan(body, state, grads)
    assert jax.tree.structure(final) == jax.tree.structure(state)
    assert history.shape == (3,) and history.dtype == jnp.float32


def test_a_measure_that_changes_shape_is_refused_naming_it():
    tx = gc.snapshot("first", lambda u: u["w"])
    state = tx.init(PARAMS)
    with pytest.raises(ValueError, match=r"^snapshot \('first'\): `measurement` and `state` disag"):
        tx.update({"w": jnp.ones(()), "b": PARAMS["b"]}, state)


# telemetry


def test_telemetry_records_norms_before_and_after_the_inner_transform():
    tx = gc.telemetry(gc.chain(gc.clip_by_global_norm(1.0), gc.sgd(0.1)))
    state = tx.init(PARAMS)
    for seed, scale in enumerate((0.1, 3.0)):
        grads = _grads(seed, scale)
        updates, state = jax.jit(tx.update)(grads, state, PARAMS)
        g = _norm64(grads)
        expected_update = 0.1 * g * min(1.0, 1.0 / g)
        t = gc.get_telemetry(state)
        np.testing.assert_allclose(t["grad_norm"], g, rtol=1e-6)
        np.testing.assert_allclose(t["update_norm"], expected_update, rtol=1e-6)
        np.testing.assert_allclose(t["update_norm"], _norm64(updates), rtol=1e-6)
        np.testing.assert_allclose(
            t["update_param_ratio"], expected_update / _norm64(PARAMS), rtol=1e-6
        )
        assert not bool(t["skipped"])
        assert all(t[k].dtype == jnp.float32 for k in ("grad_norm", "update_norm"))


def test_telemetry_marks_masked_steps_as_skipped():
    inner = gc.conditionally_mask(gc.adam(0.1), lambda step: step % 2 == 0)
    tx = gc.telemetry(inner)
    state = tx.init(PARAMS)
    skipped = []
    for i in range(4):
        _, state = jax.jit(tx.update)(_grads(i), state, PARAMS)
        skipped.append(bool(gc.get_telemetry(state)["skipped"]))
    assert skipped == [False, True, False, True]


def test_telemetry_ratio_is_nan_without_params_and_inf_for_zero_params():
    tx = gc.telemetry(gc.sgd(0.1))
    _, state = tx.update(_grads(0), tx.init(PARAMS))
    assert np.isnan(gc.get_telemetry(state)["update_param_ratio"])
    zeros = jax.tree.map(jnp.zeros_like, PARAMS)
    _, state = tx.update(_grads(0), tx.init(zeros), zeros)
    assert np.isinf(gc.get_telemetry(state)["update_param_ratio"])


def test_get_telemetry_names_like_get_hyperparams_and_works_inside_jit():
    tx = gc.named_chain(
        ("clip", gc.chain(gc.snapshot("raw", gc.global_norm), gc.clip_by_global_norm(1.0))),
        ("opt", gc.telemetry(gc.chain(gc.telemetry(gc.sgd(0.1)), gc.scale(0.5)))),
    )
    state = tx.init(PARAMS)

    @jax.jit
    def step(state: Any) -> tuple[Any, dict[str, jax.Array]]:
        _, state = tx.update(_grads(0), state, PARAMS)
        return state, gc.get_telemetry(state)

    _, logs = step(state)
    fields = ["grad_norm", "skipped", "update_norm", "update_param_ratio"]
    assert sorted(logs) == sorted(
        ["clip/raw"] + [f"opt/{k}" for k in fields] + [f"opt/0/{k}" for k in fields]
    )
    np.testing.assert_allclose(logs["clip/raw"], _norm64(_grads(0)), rtol=1e-6)
    np.testing.assert_allclose(logs["opt/update_norm"], logs["opt/0/update_norm"] / 2, rtol=1e-6)


def test_states_of_the_wrappers_round_trip_through_flax_serialization():
    from flax import serialization

    tx = gc.chain(
        gc.telemetry(gc.conditionally_mask(gc.adam(0.1), lambda step: step % 2 == 0)),
        gc.monitor({"norm": gc.global_norm, "ema": gc.measure_with_ema(gc.global_norm, 0.9)}),
        gc.snapshot("raw", gc.global_norm),
        gc.ema_params(0.99),
        gc.inject_stateful_hyperparams(gc.scale)(step_size=gc.WrappedSchedule(lambda s: -s)),
    )
    state = tx.init(PARAMS)
    _, state = tx.update(_grads(0), state, PARAMS)
    restored = serialization.from_bytes(tx.init(PARAMS), serialization.to_bytes(state))
    jax.tree.map(np.testing.assert_array_equal, restored, state)
    assert jax.tree.structure(restored) == jax.tree.structure(state)
