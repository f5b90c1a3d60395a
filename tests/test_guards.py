"""Step guards: apply_if_finite (against Optax 0.2.8) and skip_spikes (against NumPy).

A skipped step must change nothing: the parameters and the inner state after
it are compared bit for bit with those before it. skip_spikes' running
statistics, z-scores and verdicts are checked against a float64 NumPy loop of
the equations in its docstring.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradchain as gc

PARAMS = {"w": jnp.array([[0.5, -1.0], [2.0, 0.25]]), "b": jnp.array([0.1, -0.2])}


def _grads(seed: int, scale: float = 1.0) -> Any:
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: jnp.asarray(scale * rng.normal(size=p.shape), p.dtype), PARAMS)


def _with_nan(grads: Any) -> Any:
    return {**grads, "b": grads["b"].at[1].set(jnp.nan)}


def _assert_bitwise_equal(got: Any, want: Any) -> None:
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _steps(tx: Any, grads: list[Any], **extra: Any) -> list[tuple[Any, Any, Any]]:
    """(updates, params, state) after each step of a jitted training loop."""
    step = jax.jit(lambda g, s, p, **kw: tx.update(g, s, p, **kw))
    params, state, out = PARAMS, tx.init(PARAMS), []
    for g in grads:
        updates, state = step(g, state, params, **extra)
        params = gc.apply_updates(params, updates)
        out.append((updates, params, state))
    return out


# --- apply_if_finite ---------------------------------------------------------------------


def test_a_nan_step_leaves_parameters_and_adams_state_bit_identical():
    tx = gc.apply_if_finite(gc.adam(1e-2), max_consecutive_errors=3)
    (_, params_before, state_before), (updates, params, state) = _steps(
        tx, [_grads(0), _with_nan(_grads(1))]
    )
    assert all(not jnp.any(u) for u in jax.tree.leaves(updates))
    _assert_bitwise_equal(params, params_before)
    _assert_bitwise_equal(state.inner_state, state_before.inner_state)
    assert (int(state.notfinite_count), bool(state.last_finite), int(state.total_notfinite)) == (
        1,
        False,
        1,
    )


def test_apply_if_finite_matches_optax_with_nans_infs_and_a_give_up():
    # Max 2 in a row: steps 1-2 skipped, 3 (the third in a row) applied with its NaN, as Optax.
    grads = [_grads(0), _with_nan(_grads(1)), _grads(2)]
    grads += [jax.tree.map(lambda g: g.at[0].set(jnp.inf), _grads(3))]
    grads += [_with_nan(_grads(4)), _with_nan(_grads(5)), _grads(6)]
    got = _steps(gc.apply_if_finite(gc.sgd(0.1, momentum=0.9), 2), grads)
    with jax.numpy_dtype_promotion("standard"):
        want = _steps(optax.apply_if_finite(optax.sgd(0.1, momentum=0.9), 2), grads)
    for (u, p, s), (u_ref, p_ref, s_ref) in zip(got, want, strict=True):
        chex.assert_trees_all_close(u, u_ref, rtol=1e-6)  # NaNs equal NaNs
        chex.assert_trees_all_close(p, p_ref, rtol=1e-6)
        for field in ("notfinite_count", "last_finite", "total_notfinite"):
            assert getattr(s, field) == getattr(s_ref, field), field
        chex.assert_trees_all_close(s.inner_state[0].trace, s_ref.inner_state[0].trace, rtol=1e-6)
    counts = [int(s.notfinite_count) for _, _, s in got]
    assert counts == [0, 1, 0, 1, 2, 3, 0]
    gave_up = got[5][0]
    assert bool(jnp.isnan(gave_up["b"][1]))  # the third NaN step in a row is applied


def test_max_consecutive_errors_is_a_settable_hyperparameter_in_the_state():
    tx = gc.apply_if_finite(gc.sgd(1.0), max_consecutive_errors=5)
    state = tx.init(PARAMS)
    assert float(gc.get_hyperparams(state)["max_consecutive_errors"]) == 5.0
    state = gc.set_hyperparams(state, max_consecutive_errors=0)
    updates, state = jax.jit(tx.update)(_with_nan(_grads(0)), state)
    assert bool(jnp.isnan(updates["b"][1]))  # zero allowed: the first NaN step is applied


def test_the_count_of_errors_saturates_at_int32_max():
    tx = gc.apply_if_finite(gc.sgd(1.0), 3)
    top = np.iinfo(np.int32).max
    state = tx.init(PARAMS)._replace(notfinite_count=jnp.int32(top), total_notfinite=jnp.int32(top))
    _, state = tx.update(_with_nan(_grads(0)), state)
    assert int(state.notfinite_count) == top and int(state.total_notfinite) == top


def test_extra_arguments_reach_the_inner_transformation():
    seen = {}

    def inner_update(updates: Any, state: Any, params: Any = None, **extra: Any) -> Any:
        seen.update(extra)
        return updates, state

    inner = gc.GradientTransformationExtraArgs(lambda p: gc.EmptyState(), inner_update)
    tx = gc.apply_if_finite(inner, 1)
    tx.update(_grads(0), tx.init(PARAMS), value=jnp.float32(2.0))
    assert set(seen) == {"value"}


def test_under_vmap_each_member_skips_on_its_own():
    tx = gc.apply_if_finite(gc.adam(1e-2), 2)
    grads = jax.tree.map(lambda a, b: jnp.stack([a, b]), _grads(0), _with_nan(_grads(1)))
    states = jax.vmap(tx.init)(jax.tree.map(lambda p: jnp.stack([p, p]), PARAMS))
    updates, states = jax.jit(jax.vmap(tx.update))(grads, states)
    assert bool(jnp.all(jnp.isfinite(updates["b"][0]))) and not jnp.any(updates["b"][1])
    assert states.last_finite.tolist() == [True, False]


class _DriftState(NamedTuple):
    total: jax.Array


def test_an_inner_state_that_changes_dtype_is_refused_naming_the_guard():
    def update(updates: Any, state: _DriftState, params: Any = None) -> Any:
        return updates, _DriftState(state.total.astype(jnp.float16))

    drifting = gc.GradientTransformation(lambda p: _DriftState(jnp.zeros([])), update)
    tx = gc.apply_if_finite(drifting, 1)
    match = r"^apply_if_finite: .* changes its state: at \.total it turns float32\[\] into float16"
    with pytest.raises(TypeError, match=match):
        tx.update(_grads(0), tx.init(PARAMS))


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (-1, ValueError, r"must be >= 0; got -1"),
        (2.5, TypeError, r"must be an integer; got float 2\.5"),
        (True, TypeError, r"must be an integer; got bool True"),
    ],
)
def test_a_bad_max_consecutive_errors_is_refused_at_construction(
    value: Any, error: type[Exception], match: str
):
    with pytest.raises(error, match=rf"^apply_if_finite: `max_consecutive_errors` {match}"):
        gc.apply_if_finite(gc.sgd(0.1), value)


def test_an_uncalled_inner_factory_is_refused():
    with pytest.raises(TypeError, match=r"^apply_if_finite: `inner` is the function `adam`"):
        gc.apply_if_finite(gc.adam, 2)  # type: ignore[arg-type]


# --- skip_spikes ---------------------------------------------------------------------------


def reference(
    values: list[float],
    threshold: float,
    warmup: int,
    decay: float,
    max_consecutive: int,
    tiny: float = float(np.finfo(np.float32).tiny),
) -> list[dict[str, Any]]:
    """The docstring's equations in float64: the state after each value."""
    samples, mean, var, consecutive, total, out = 0, 0.0, 0.0, 0, 0, []
    for s in values:
        finite = bool(np.isfinite(s))
        std = max(np.sqrt(var), 1e-6 * abs(mean), tiny)
        z = (s - mean) / std if finite else np.inf
        z = 0.0 if finite and samples == 0 else z
        outlier = finite and samples >= max(warmup, 2) and z > threshold
        flagged = outlier or not finite
        consecutive = consecutive + 1 if flagged else 0
        spike = flagged and not (outlier and consecutive > max_consecutive)
        total += spike
        if finite and not spike:
            w = max(1 - decay, 1 / (samples + 1))
            d = s - mean
            mean, var, samples = mean + w * d, (1 - w) * (var + w * d * d), samples + 1
        out.append(dict(samples=samples, mean=mean, variance=var, zscore=z, spike=spike))
        out[-1].update(consecutive_spikes=consecutive, total_spikes=total)
    return out


def _norm_sequence(seed: int = 0) -> list[float]:
    """Noisy gradient norms around 1 with two spikes, a NaN, and a level shift to 3."""
    rng = np.random.default_rng(seed)
    values = list(1.0 + 0.1 * rng.standard_normal(30))
    values[12], values[20], values[16] = 4.0, 9.0, float("nan")
    return values + list(3.0 + 0.1 * rng.standard_normal(8)) + [1.0]


def _grads_of_norm(norm: float) -> Any:
    leaves = {"w": jnp.full((2, 2), 0.5), "b": jnp.zeros(2)}  # norm 1
    return jax.tree.map(lambda x: x * jnp.float32(norm), leaves)


@pytest.mark.parametrize("mode", ["skip", "clip"])
def test_statistics_zscores_and_verdicts_match_a_numpy_reference(mode: str):
    values = _norm_sequence()
    kw = dict(threshold=5.0, warmup=5, decay=0.9)
    tx = gc.skip_spikes(gc.sgd(1.0), **kw, mode=mode, max_consecutive_spikes=4)  # type: ignore[arg-type]
    got = _steps(tx, [_grads_of_norm(v) for v in values])
    want = reference(values, kw["threshold"], kw["warmup"], kw["decay"], 4)
    for t, ((_, _, state), ref) in enumerate(zip(got, want, strict=True)):
        assert bool(state.spike) == ref["spike"], t
        for name in ("samples", "consecutive_spikes", "total_spikes"):
            assert int(getattr(state, name)) == ref[name], (t, name)
        for name in ("mean", "variance", "zscore"):
            np.testing.assert_allclose(getattr(state, name), ref[name], rtol=2e-4, err_msg=f"{t}")
    verdicts = [r["spike"] for r in want]
    # The two spikes and the NaN are caught; the level shift is adopted after 4 in a row.
    assert [t for t, v in enumerate(verdicts) if v] == [12, 16, 20, 30, 31, 32, 33]


def test_a_spike_is_skipped_leaving_parameters_inner_state_and_statistics_untouched():
    tx = gc.skip_spikes(gc.adam(1e-2), warmup=3, threshold=4.0)
    grads = [_grads(s) for s in range(5)] + [_grads(5, scale=100.0)]
    *_, (_, params_before, before), (updates, params, after) = _steps(tx, grads)
    assert bool(after.spike) and float(after.zscore) > 4.0
    assert all(not jnp.any(u) for u in jax.tree.leaves(updates))
    _assert_bitwise_equal(params, params_before)
    _assert_bitwise_equal(after.inner_state, before.inner_state)
    _assert_bitwise_equal(
        (after.mean, after.variance, after.samples), (before.mean, before.variance, before.samples)
    )
    assert int(after.step) == int(before.step) + 1


def test_clip_mode_rescales_a_spike_to_the_threshold_norm_and_applies_it():
    tx = gc.skip_spikes(gc.sgd(1.0), warmup=3, threshold=2.0, mode="clip")
    *_, (_, _, before), (updates, _, after) = _steps(
        tx, [_grads_of_norm(v) for v in (1.0, 1.2, 0.8, 1.1, 50.0)]
    )
    limit = float(before.mean) + 2.0 * float(np.sqrt(before.variance))
    np.testing.assert_allclose(gc.global_norm(updates), limit, rtol=1e-6)
    assert bool(after.spike) and int(after.samples) == int(before.samples)


def test_the_loss_can_be_watched_instead_of_the_gradient_norm():
    tx = gc.skip_spikes(gc.sgd(1.0), warmup=3, threshold=3.0, monitor="loss")
    state, step = tx.init(PARAMS), jax.jit(tx.update)
    for loss in (2.0, 1.9, 2.1, 2.0, 30.0):
        updates, state = step(_grads(0), state, value=jnp.float32(loss))
    assert bool(state.spike) and float(state.value) == 30.0
    assert all(not jnp.any(u) for u in jax.tree.leaves(updates))


def test_watching_the_loss_without_passing_it_says_how():
    tx = gc.skip_spikes(gc.sgd(1.0), monitor="loss")
    with pytest.raises(
        ValueError,
        match=r"^skip_spikes \(monitor='loss'\): update needs `value=`.*monitor='grad_norm'",
    ):
        tx.update(_grads(0), tx.init(PARAMS))
    with pytest.raises(ValueError, match=r"`value` must be a scalar.*\(2,\)"):
        tx.update(_grads(0), tx.init(PARAMS), value=jnp.ones(2))


def test_a_nan_is_skipped_even_during_warmup_and_kept_out_of_the_statistics():
    tx = gc.skip_spikes(gc.adam(1e-2))  # warmup=100
    (_, _, before), (updates, _, after) = _steps(tx, [_grads(0), _with_nan(_grads(1))])
    assert bool(after.spike) and float(after.zscore) == np.inf
    assert all(not jnp.any(u) for u in jax.tree.leaves(updates))
    _assert_bitwise_equal(after.inner_state, before.inner_state)
    assert float(after.mean) == float(before.mean) and int(after.samples) == 1


def test_threshold_is_settable_state_and_changing_it_does_not_retrace():
    tx = gc.skip_spikes(gc.sgd(1.0), warmup=2, threshold=100.0)
    traces = 0

    @jax.jit
    def step(g: Any, s: Any) -> Any:
        nonlocal traces
        traces += 1
        return tx.update(g, s)

    state = tx.init(PARAMS)
    for v in (1.0, 1.1, 0.9):
        _, state = step(_grads_of_norm(v), state)
    assert sorted(gc.get_hyperparams(state)) == [
        "decay",
        "learning_rate",
        "max_consecutive_spikes",
        "threshold",
        "warmup",
    ]
    _, high = step(_grads_of_norm(3.0), state)
    _, low = step(_grads_of_norm(3.0), gc.set_hyperparams(state, threshold=2.0))
    assert not bool(high.spike) and bool(low.spike) and traces == 1


def test_telemetry_is_readable_from_a_scan():
    tx = gc.skip_spikes(gc.sgd(1.0), warmup=3, threshold=4.0)
    norms = jnp.array([1.0, 1.1, 0.9, 1.0, 20.0, 1.05])
    grads = jax.vmap(_grads_of_norm)(norms)

    def body(state: Any, g: Any) -> tuple[Any, Any]:
        _, state = tx.update(g, state)
        return state, (state.spike, state.zscore)

    _, (spikes, zscores) = jax.lax.scan(body, tx.init(PARAMS), grads)
    assert spikes.tolist() == [False, False, False, False, True, False]
    assert float(zscores[4]) > 4.0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(mode="drop"), ValueError, r"`mode` must be 'skip' or 'clip'; got 'drop'"),
        (dict(monitor="grads"), ValueError, r"`monitor` must be 'grad_norm' or 'loss'"),
        (dict(mode="clip", monitor="loss"), ValueError, r"mode='clip' .* needs monitor='grad_n"),
        (dict(warmup=-1), ValueError, r"`warmup` must be >= 0; got -1"),
        (dict(max_consecutive_spikes=1.5), TypeError, r"`max_consecutive_spikes` must be an int"),
        (dict(threshold=0.0), ValueError, r"`threshold` must be in \(0, inf\); got 0\.0"),
        (dict(decay=1.0), ValueError, r"`decay` must be in \[0, 1\); got 1\.0"),
    ],
)
def test_bad_arguments_are_refused_at_construction(
    kwargs: dict[str, Any], error: type[Exception], match: str
):
    with pytest.raises(error, match=rf"^skip_spikes: {match}"):
        gc.skip_spikes(gc.sgd(0.1), **kwargs)


def test_the_gradient_norm_of_complex_leaves_is_their_modulus():
    tx = gc.skip_spikes(gc.sgd(1.0))
    grads = {"z": jnp.array([3j, 4.0 + 0j], jnp.complex64)}
    _, state = tx.update(grads, tx.init(grads))
    assert float(state.value) == 5.0  # not |sum of z**2| = |16 - 9| ** 0.5
