"""Block, unit-wise (AGC) and per-example clipping against NumPy float64 and Optax 0.2.8.

The NumPy references are written from the papers' definitions: the RMS of a
block; Brock et al.'s unit-wise ratio of gradient norm to parameter norm, a
unit being a slice over all axes but the last (the output axis of ``(..., in,
out)`` kernels); and the DP-SGD per-example clip of Abadi et al. and its
per-layer variant of McMahan et al. Against Optax the comparisons are at
rtol 1e-6 (the arithmetic is the same; jit may fuse it differently by an ulp).
"""

from __future__ import annotations

import math
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradchain as gc

RNG = np.random.default_rng(7)
# One leaf of each rank AGC distinguishes: scalar, bias, dense, conv1d, conv2d (HWIO), conv3d.
SHAPES = {
    "scalar": (),
    "bias": (6,),
    "dense": (5, 4),
    "conv1d": (3, 4, 2),
    "conv2d": (3, 3, 2, 4),
    "conv3d": (2, 2, 2, 3, 2),
    "empty": (0, 3),
}


def _tree(scale: float = 1.0, **scales: float) -> dict[str, jax.Array]:
    """Random float32 leaves of SHAPES, each times ``scale`` (or its own scale)."""
    return {
        k: jnp.asarray(RNG.normal(size=s) * scales.get(k, scale), jnp.float32)
        for k, s in SHAPES.items()
    }


PARAMS = _tree(0.1, bias=0.0)  # a zero-initialized bias exercises eps
# Each unit's norm ranges around the parameter norms' so that some units clip and some do not.
GRADS = [_tree(s, scalar=5 * s) for s in (0.01, 0.05, 0.3)]


def _update(tx: Any, grads: Any, params: Any = None) -> Any:
    return tx.update(grads, tx.init(params), params)[0]


def _optax_update(tx: Any, grads: Any, params: Any = None) -> Any:
    with jax.numpy_dtype_promotion("standard"):
        return tx.update(grads, tx.init(params), params)[0]


def _assert_close(got: Any, want: Any, atol_fraction: float = 0.0) -> None:
    """Within rtol 1e-6, and atol_fraction times the leaf's largest value.

    Sums over examples need the atol: a sum of mixed-sign terms cancels, so its
    float32 rounding is relative to the terms, not to the sum.
    """
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert np.shape(g) == np.shape(w)
        atol = atol_fraction * float(np.max(np.abs(w), initial=0.0))
        np.testing.assert_allclose(np.asarray(g, np.float64), w, rtol=1e-6, atol=atol)


# NumPy float64 references.


def ref_block_rms(u: np.ndarray, threshold: float) -> np.ndarray:
    u = np.asarray(u, np.float64)
    if u.size == 0:
        return u
    rms = np.sqrt(np.mean(u**2))
    return u * threshold / rms if rms > threshold else u


def ref_agc(g: np.ndarray, p: np.ndarray, clipping: float, eps: float, axis: Any = None) -> Any:
    g, p = np.asarray(g, np.float64), np.asarray(p, np.float64)
    if axis is None:  # Brock et al.'s units: rank 3 is a multi-head dense kernel (in, heads, out)
        axis = {0: None, 1: None, 3: 0}.get(g.ndim, tuple(range(g.ndim - 1)))
    g_norm = np.sqrt(np.sum(g**2, axis=axis, keepdims=True))
    p_norm = np.sqrt(np.sum(p**2, axis=axis, keepdims=True))
    bound = clipping * np.maximum(p_norm, eps)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(g_norm > bound, g * bound / g_norm, g)


def ref_per_example(leaves: list[np.ndarray], bounds: list[float], joint: bool) -> Any:
    """Clipped sums and counts; ``joint``: one norm over all leaves, else one per leaf."""
    leaves = [np.asarray(x, np.float64) for x in leaves]
    per_leaf = [np.sqrt(np.sum(x.reshape(len(x), -1) ** 2, axis=1)) for x in leaves]
    norms = [np.sqrt(sum(n**2 for n in per_leaf))] * len(leaves) if joint else per_leaf
    sums, counts = [], []
    for x, n, c in zip(leaves, norms, bounds, strict=True):
        factor = np.where(n > c, c / np.where(n > 0, n, 1), 1.0)
        sums.append(np.tensordot(factor, x, axes=1))
        counts.append(int(np.sum(n > c)))
    return sums, counts


# clip_by_block_rms


@pytest.mark.parametrize("threshold", [1e-3, 0.05, 10.0])
def test_clip_by_block_rms_matches_numpy_and_optax(threshold: float) -> None:
    for grads in GRADS:
        got = _update(gc.clip_by_block_rms(threshold), grads)
        want = jax.tree.map(lambda u: ref_block_rms(u, threshold), grads)
        _assert_close(got, want)
        _assert_close(
            got, jax.tree.map(np.asarray, _optax_update(optax.clip_by_block_rms(threshold), grads))
        )


def test_clip_by_block_rms_passes_zero_and_empty_leaves_without_nan() -> None:
    grads = {"zeros": jnp.zeros((3, 2)), "empty": jnp.zeros((0,)), "big": jnp.full((4,), 10.0)}
    got = _update(gc.clip_by_block_rms(1.0), grads)
    assert float(jnp.sum(got["zeros"])) == 0.0 and got["empty"].shape == (0,)
    np.testing.assert_allclose(np.asarray(got["big"]), 1.0, rtol=1e-6)


def test_clip_by_block_rms_keeps_bfloat16_and_computes_the_rms_in_float32() -> None:
    u = jnp.asarray(RNG.normal(size=(64,)) * 3, jnp.bfloat16)
    got = _update(gc.clip_by_block_rms(0.5), u)
    assert got.dtype == jnp.bfloat16
    want = ref_block_rms(np.asarray(u, np.float64), 0.5)
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=2**-8)


# adaptive_grad_clip


@pytest.mark.parametrize(("clipping", "eps"), [(0.01, 1e-3), (0.16, 1e-3), (1.0, 0.05)])
def test_adaptive_grad_clip_matches_numpy_and_optax_on_every_kernel_rank(
    clipping: float, eps: float
) -> None:
    clipped = 0
    for grads in GRADS:
        got = _update(gc.adaptive_grad_clip(clipping, eps), grads, PARAMS)
        want = jax.tree.map(lambda g, p: ref_agc(g, p, clipping, eps), grads, PARAMS)
        _assert_close(got, want)
        reference = optax.adaptive_grad_clip(clipping, eps)
        _assert_close(got, jax.tree.map(np.asarray, _optax_update(reference, grads, PARAMS)))
        clipped += sum(
            not np.allclose(g, w)
            for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(grads), strict=True)
        )
    assert clipped > 0  # the cases reach the clipping branch


def test_adaptive_grad_clip_with_an_axis_matches_numpy_and_optax() -> None:
    params = {k: PARAMS[k] for k in ("dense", "conv1d", "conv2d")}
    for grads in GRADS:
        g = {k: grads[k] for k in params}
        got = _update(gc.adaptive_grad_clip(0.05, axis=-1), g, params)
        _assert_close(got, jax.tree.map(lambda a, b: ref_agc(a, b, 0.05, 1e-3, axis=-1), g, params))
        want = _optax_update(optax.adaptive_grad_clip(0.05, axis=-1), g, params)
        _assert_close(got, jax.tree.map(np.asarray, want))


def test_adaptive_grad_clip_norms_each_output_unit_of_a_conv_kernel_separately() -> None:
    w = jnp.ones((3, 3, 2, 2))  # HWIO: two output units of 18 weights each, norm sqrt(18)
    g = jnp.stack([jnp.full((3, 3, 2), 0.01), jnp.full((3, 3, 2), 10.0)], axis=-1)
    got = _update(gc.adaptive_grad_clip(0.1), g, w)
    np.testing.assert_allclose(np.asarray(got[..., 0]), 0.01, rtol=1e-6)  # under its bound
    unit_norm = float(jnp.sqrt(jnp.sum(got[..., 1] ** 2)))
    assert unit_norm == pytest.approx(0.1 * math.sqrt(18), rel=1e-6)


def test_agc_brings_a_clipped_unit_exactly_to_its_bound_where_optax_undershoots() -> None:
    # Gradient norm 2e-8 against a bound of 1e-8: Optax divides by max(norm, 1e-6).
    p, g = jnp.zeros(4), jnp.full(4, 1e-8)
    got = _update(gc.adaptive_grad_clip(1e-5, eps=1e-3), g, p)
    assert float(jnp.sqrt(jnp.sum(got**2))) == pytest.approx(1e-8, rel=1e-6)
    want = _optax_update(optax.adaptive_grad_clip(1e-5, eps=1e-3), g, p)
    assert float(jnp.sqrt(jnp.sum(want**2))) == pytest.approx(2e-10, rel=1e-5)


def test_adaptive_grad_clip_reads_rank_3_as_multi_head_dense_and_conv1d_needs_an_axis() -> None:
    p = jnp.ones((3, 2, 4))  # (in, heads, out): 8 units of 3 weights, or 4 units of 6 (Conv1D)
    g = jnp.full((3, 2, 4), 5.0)
    multi_head = _update(gc.adaptive_grad_clip(0.1), g, p)
    np.testing.assert_allclose(np.asarray(multi_head), 0.1, rtol=1e-6)  # 0.1 * sqrt(3) / sqrt(3)
    conv1d = _update(gc.adaptive_grad_clip(0.1, axis=(0, 1)), g, p)
    np.testing.assert_allclose(np.asarray(conv1d), 0.1, rtol=1e-6)
    p = p.at[:, 1].set(2.0)  # the second head's units are twice as large
    multi_head = _update(gc.adaptive_grad_clip(0.1), g, p)
    np.testing.assert_allclose(np.asarray(multi_head[:, 1]), 0.2, rtol=1e-6)
    conv1d = _update(gc.adaptive_grad_clip(0.1, axis=(0, 1)), g, p)
    np.testing.assert_allclose(np.asarray(conv1d), 0.1 * math.sqrt(2.5), rtol=1e-6)


def test_adaptive_grad_clip_asks_for_an_axis_beyond_rank_5() -> None:
    p = {"kernel": jnp.ones((1, 1, 2, 2, 3, 4))}
    with pytest.raises(
        ValueError,
        match=r"^adaptive_grad_clip: the leaf at \['kernel'\] has rank 6, .*Pass `axis`",
    ):
        _update(gc.adaptive_grad_clip(0.1), p, p)
    got = _update(gc.adaptive_grad_clip(0.1, axis=(0, 1, 2, 3, 4)), p, p)
    np.testing.assert_allclose(np.asarray(got["kernel"]), 0.1, rtol=1e-6)


def test_adaptive_grad_clip_keeps_gradient_dtypes_with_bfloat16_params() -> None:
    params = {"w": jnp.ones((4, 3), jnp.bfloat16), "b": jnp.zeros((3,), jnp.bfloat16)}
    grads = {"w": jnp.full((4, 3), 2.0, jnp.float32), "b": jnp.full((3,), 1.0, jnp.bfloat16)}
    got = _update(gc.adaptive_grad_clip(0.1), grads, params)
    assert got["w"].dtype == jnp.float32 and got["b"].dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got["w"]), 0.1, rtol=1e-6)  # bound 0.2 per unit of 4
    np.testing.assert_allclose(np.asarray(got["b"], np.float32), 1e-4 / 3**0.5, rtol=2**-8)


def test_thresholds_are_hyperparameters_in_state_settable_without_recompiling() -> None:
    tx = gc.chain(gc.clip_by_block_rms(1.0), gc.adaptive_grad_clip(0.1))
    state = tx.init(PARAMS)
    assert {k: round(float(v), 6) for k, v in gc.get_hyperparams(state).items()} == {
        "threshold": 1.0,
        "clipping": 0.1,
        "eps": 0.001,
    }
    traces = 0

    @jax.jit
    def step(grads: Any, state: Any) -> Any:
        nonlocal traces
        traces += 1
        return tx.update(grads, state, PARAMS)[0]

    before = step(GRADS[2], state)
    after = step(GRADS[2], gc.set_hyperparams(state, threshold=0.01, clipping=1e-3))
    assert traces == 1
    rebuilt = gc.chain(gc.clip_by_block_rms(0.01), gc.adaptive_grad_clip(1e-3))
    _assert_close(after, jax.tree.map(np.asarray, _update(rebuilt, GRADS[2], PARAMS)))
    assert not np.allclose(np.asarray(before["dense"]), np.asarray(after["dense"]))


def test_a_scheduled_clipping_ratio_follows_its_schedule() -> None:
    tx = gc.adaptive_grad_clip(gc.linear_schedule(0.01, 0.02, 1))
    p, g = jnp.ones((4, 1)), jnp.full((4, 1), 10.0)
    state = tx.init(p)
    first, state = tx.update(g, state, p)
    second, state = tx.update(g, state, p)
    np.testing.assert_allclose(np.asarray(first), 0.01, rtol=1e-6)  # bound 0.01 * 2, over 4
    np.testing.assert_allclose(np.asarray(second), 0.02, rtol=1e-6)


@pytest.mark.parametrize(
    ("axis", "error", "match"),
    [
        ("0", TypeError, r"`axis` must be None, an integer or a tuple of integers; got str '0'"),
        ((0, 1.5), TypeError, r"`axis` must be None, an integer or a tuple of integers"),
        (True, TypeError, r"`axis` must be None, an integer or a tuple of integers; got bool"),
        ((), TypeError, r"`axis` must be None, an integer or a tuple of integers; got tuple \(\)"),
        ((0, 0), ValueError, r"`axis` must not repeat an axis; got \(0, 0\)"),
    ],
)
def test_adaptive_grad_clip_refuses_a_bad_axis_at_construction(
    axis: Any, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=rf"^adaptive_grad_clip: {match}"):
        gc.adaptive_grad_clip(0.1, axis=axis)


def test_an_axis_that_does_not_fit_a_leaf_raises_naming_its_path() -> None:
    tx = gc.adaptive_grad_clip(0.1, axis=(0, 1))
    params = {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}
    with pytest.raises(
        ValueError,
        match=r"^adaptive_grad_clip: `axis`=\(0, 1\) does not fit the leaf at \['b'\], of rank 1\.",
    ):
        jax.jit(tx.update)(params, tx.init(params), params)


def test_adaptive_grad_clip_with_params_of_another_shape_raises_naming_the_path() -> None:
    tx = gc.adaptive_grad_clip(0.1)
    with pytest.raises(
        ValueError,
        match=r"^adaptive_grad_clip: `updates` and `params` disagree in shape at \['w'\]: "
        r"\(3, 1\) against \(3,\)",
    ):
        tx.update({"w": jnp.ones((3, 1))}, tx.init(None), {"w": jnp.ones(3)})


# per_example_global_norm_clip and per_example_layer_norm_clip

SUM_ATOL = 1e-7  # times the largest sum: sums over examples cancel
BATCH = [
    jnp.asarray(RNG.normal(size=(6, 4, 3)), jnp.float32),
    jnp.asarray(RNG.normal(size=(6, 5)) * 3, jnp.float32),
    jnp.asarray(RNG.normal(size=(6,)) * 0.1, jnp.float32),
]
BATCH[0] = BATCH[0].at[2].set(0.0)  # an example with no gradient in the first layer
ZERO_EXAMPLE = [x.at[4].set(0.0) for x in BATCH]  # an example with no gradient at all


@pytest.mark.parametrize("clip", [0.0, 1.0, 4.0, 8.0, math.inf])
@pytest.mark.parametrize("grads", [BATCH, ZERO_EXAMPLE], ids=["batch", "zero_example"])
def test_per_example_global_norm_clip_matches_numpy_and_optax(
    grads: list[Any], clip: float
) -> None:
    sums, count = gc.per_example_global_norm_clip(grads, clip)
    want_sums, want_counts = ref_per_example(grads, [clip] * len(grads), joint=True)
    _assert_close(sums, want_sums, SUM_ATOL)
    assert count.dtype == jnp.int32 and int(count) == want_counts[0]
    with jax.numpy_dtype_promotion("standard"):
        o_sums, o_count = optax.per_example_global_norm_clip(grads, clip)
    _assert_close(sums, [np.asarray(x) for x in o_sums], SUM_ATOL)
    assert int(count) == int(o_count)


@pytest.mark.parametrize("uniform", [True, False])
@pytest.mark.parametrize("clip", [0.0, 0.5, 3.0, math.inf])
def test_per_example_layer_norm_clip_matches_numpy_and_optax(clip: float, uniform: bool) -> None:
    sums, counts = gc.per_example_layer_norm_clip(BATCH, clip, uniform)
    sizes = [math.prod(x.shape[1:]) for x in BATCH]
    bounds = [
        clip / math.sqrt(len(BATCH)) if uniform else clip * math.sqrt(d / sum(sizes)) for d in sizes
    ]
    want_sums, want_counts = ref_per_example(BATCH, bounds, joint=False)
    _assert_close(sums, want_sums, SUM_ATOL)
    assert [int(c) for c in counts] == want_counts
    with jax.numpy_dtype_promotion("standard"):
        o_sums, o_counts = optax.per_example_layer_norm_clip(BATCH, clip, uniform)
    _assert_close(sums, [np.asarray(x) for x in o_sums], SUM_ATOL)
    assert [int(c) for c in counts] == [int(c) for c in o_counts]


def test_per_layer_bounds_keep_every_example_within_the_global_bound() -> None:
    for uniform in (True, False):
        clipped = [
            gc.per_example_layer_norm_clip([x[i : i + 1] for x in BATCH], 1.0, uniform)[0]
            for i in range(6)
        ]
        for sums in clipped:
            assert float(gc.global_norm(sums)) <= 1.0 + 1e-6


def test_per_example_clips_take_any_pytree_and_return_its_structure() -> None:
    grads = {"w": BATCH[0], "b": [BATCH[1], BATCH[2]]}
    sums, count = gc.per_example_global_norm_clip(grads, 1.0)
    assert jax.tree.structure(sums) == jax.tree.structure(grads) and count.shape == ()
    sums, counts = gc.per_example_layer_norm_clip(grads, 1.0)
    assert jax.tree.structure(counts) == jax.tree.structure(grads)
    assert all(c.dtype == jnp.int32 and c.shape == () for c in jax.tree.leaves(counts))


def test_per_example_clips_keep_low_precision_dtypes_and_sum_integers_in_float32() -> None:
    bf16 = [x.astype(jnp.bfloat16) for x in BATCH]
    sums, _ = gc.per_example_global_norm_clip(bf16, 1.0)
    assert [s.dtype for s in sums] == [jnp.bfloat16] * 3
    want, _ = ref_per_example([np.asarray(x, np.float64) for x in bf16], [1.0] * 3, joint=True)
    for s, w in zip(sums, want, strict=True):
        np.testing.assert_allclose(
            np.asarray(s, np.float64), w, rtol=2**-7, atol=2**-7 * np.abs(w).max()
        )
    ints = [jnp.array([[0, 0, 0], [0, 3, 4], [4, 0, 3]], jnp.int32)]
    sums, count = gc.per_example_global_norm_clip(ints, 2.5)
    assert sums[0].dtype == jnp.float32 and int(count) == 2
    np.testing.assert_allclose(np.asarray(sums[0]), [2.0, 1.5, 3.5], rtol=1e-6)


def test_per_example_clips_run_under_jit_and_with_a_traced_bound() -> None:
    eager = gc.per_example_global_norm_clip(BATCH, 2.0)
    jitted = jax.jit(gc.per_example_global_norm_clip)(BATCH, jnp.float32(2.0))
    _assert_close(jitted[0], [np.asarray(x) for x in eager[0]], SUM_ATOL)
    layer = jax.jit(gc.per_example_layer_norm_clip, static_argnums=2)(BATCH, 2.0, False)
    eager = gc.per_example_layer_norm_clip(BATCH, 2.0, False)
    _assert_close(layer[0], [np.asarray(x) for x in eager[0]], SUM_ATOL)


def test_per_example_clips_of_an_empty_tree_return_it_with_no_clips() -> None:
    sums, count = gc.per_example_global_norm_clip([], 1.0)
    assert sums == [] and int(count) == 0
    assert gc.per_example_layer_norm_clip({}, 1.0) == ({}, {})


@pytest.mark.parametrize(
    "fn",
    [gc.per_example_global_norm_clip, gc.per_example_layer_norm_clip],
    ids=lambda f: f.__name__,
)
def test_per_example_clips_name_the_leaf_without_a_batch_axis(fn: Any) -> None:
    with pytest.raises(
        ValueError,
        match=rf"^{fn.__name__}: the leaf at \['b'\] is a scalar; every leaf of `grads` needs a "
        r"leading batch axis",
    ):
        fn({"w": jnp.ones((4, 2)), "b": jnp.ones(())}, 1.0)


@pytest.mark.parametrize(
    "fn",
    [gc.per_example_global_norm_clip, gc.per_example_layer_norm_clip],
    ids=lambda f: f.__name__,
)
def test_per_example_clips_name_both_leaves_whose_batch_sizes_differ(fn: Any) -> None:
    with pytest.raises(
        ValueError,
        match=rf"^{fn.__name__}: the leaves of `grads` disagree in batch size \(their first "
        r"axis\): 4 at \[0\], 3 at \[1\]\.",
    ):
        jax.jit(fn)([jnp.ones((4, 2)), jnp.ones((3,))], 1.0)


@pytest.mark.parametrize(
    ("fn", "arg", "value", "error", "shown"),
    [
        ("per_example_global_norm_clip", "l2_norm_clip", -1.0, ValueError, ">= 0; got -1.0"),
        ("per_example_global_norm_clip", "l2_norm_clip", math.nan, ValueError, "got nan"),
        ("per_example_global_norm_clip", "l2_norm_clip", "1", TypeError, "got str '1'"),
        ("per_example_global_norm_clip", "l2_norm_clip", jnp.ones(2), TypeError, "of shape (2,)"),
        ("per_example_layer_norm_clip", "global_l2_norm_clip", -0.5, ValueError, "got -0.5"),
        ("per_example_layer_norm_clip", "global_l2_norm_clip", None, TypeError, "got NoneType"),
        ("per_example_layer_norm_clip", "uniform", 1, TypeError, "must be a bool; got int 1"),
    ],
)
def test_per_example_clips_refuse_bad_arguments_naming_function_argument_and_value(
    fn: str, arg: str, value: Any, error: type[Exception], shown: str
) -> None:
    with pytest.raises(error, match=rf"^{fn}: `{arg}` .*{re.escape(shown)}"):
        getattr(gc, fn)(BATCH, *([1.0] if arg == "uniform" else []), **{arg: value})
