"""Optimizer state memory as a choice, and stochastic rounding.

State bytes per parameter: 8 (float32 Adam moments), 4 (bfloat16 moments with
stochastic rounding), about 2 (``quantize_state``: 8-bit codes and a float32 scale
per block), about 0 (Adafactor's factored second moment). Each is measured on a
realistic tree, and trained on two problems against float32 moments:

- the digits MLP (``examples/common.py``), 150 full-batch Adam steps at 3e-3,
  compared by final training loss (float32 moments: 0.0835);
- a 1000-step least-squares problem in ``lax.scan`` whose features span two decades
  of scale, laid out so that each 256-element block of the (64, 128) weight holds
  all of them: a second moment that spans four decades inside a block. Compared by
  the excess loss over the exact optimum (``lstsq``), which is what an optimizer
  controls (the loss itself is dominated by the noise floor).

Tolerances (measured ratios in brackets, over seeds 0-3, then what a broken variant
gives): digits loss within 2% of float32 (bf16 stochastic 1.0000-1.0006, 8-bit
0.997-1.0004; 8-bit with round-to-nearest codes 0.97); least-squares excess within
10% (bf16 stochastic 0.995-1.003, 8-bit 0.995-1.012; bf16 round-to-nearest 1.58,
8-bit round-to-nearest 1.96, 8-bit with a linear code 46). Factored moments are a
rank-one model of the second moment, not an approximation of it, so they are held
to Adafactor with full float32 second moments, at most 15% worse in loss (measured
1.08 on digits, 0.98 on least squares).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradchain as gc
from gradchain import _quantize
from gradchain._rounding import stochastic_round
from tests.example_loader import load_example

BF16 = jnp.bfloat16
_quantize_jit = jax.jit(_quantize.quantize, static_argnums=1)
_dequantize_jit = jax.jit(_quantize.dequantize, static_argnums=1)
_round = jax.jit(stochastic_round, static_argnums=1)


# 1. Stochastic rounding.


def _neighbours(x: np.ndarray, dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    """The representable values of ``dtype`` just below and above float32 ``x`` (float64)."""
    low = np.asarray(jnp.asarray(x).astype(dtype).astype(jnp.float32), np.float64)
    x64 = np.asarray(x, np.float64)
    below = np.where(low <= x64, low, np.asarray(jnp.nextafter(jnp.asarray(low, dtype), -np.inf)))
    above = np.asarray(jnp.nextafter(jnp.asarray(below, dtype), np.inf).astype(jnp.float32))
    return below, np.asarray(above, np.float64)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bfloat16", "float16"])
def test_stochastic_rounding_is_unbiased_and_picks_one_of_the_two_neighbours(dtype: Any) -> None:
    # Values between neighbours, negative ones, float16 subnormals (spacing 2**-24) and a
    # bfloat16 value near its largest finite number.
    xs = np.array(
        [1 + 2**-9, -1 - 3 * 2**-10, 3.0e-6, -1.7e-7, 0.3, 1234.567, 3e-8, -2.5e-5], np.float32
    )
    n = 20000
    rounded = _round(jnp.broadcast_to(xs, (n, xs.size)), dtype, jax.random.key(3))
    assert rounded.dtype == dtype
    values = np.asarray(rounded.astype(jnp.float32), np.float64)
    below, above = _neighbours(xs, dtype)
    for i, x in enumerate(xs.astype(np.float64)):
        assert set(np.unique(values[:, i])) <= {below[i], above[i]}, (x, below[i], above[i])
        p = (x - below[i]) / (above[i] - below[i])
        standard_error = (above[i] - below[i]) * math.sqrt(p * (1 - p) / n)
        assert abs(values[:, i].mean() - x) <= 4 * standard_error + 1e-12 * abs(x), x


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bfloat16", "float16"])
def test_representable_values_and_special_values_round_to_themselves(dtype: Any) -> None:
    exact = jax.random.normal(jax.random.key(0), (4096,)).astype(dtype).astype(jnp.float32)
    special = jnp.array([0.0, -0.0, jnp.inf, -jnp.inf, jnp.nan], jnp.float32)
    for k in range(4):
        key = jax.random.key(k)
        np.testing.assert_array_equal(_round(exact, dtype, key), exact.astype(dtype))
        out = np.asarray(_round(special, dtype, key).astype(jnp.float32))
        np.testing.assert_array_equal(out[:4], [0.0, -0.0, np.inf, -np.inf])
        assert np.signbit(out[1]) and np.isnan(out[4])
    # A NaN whose payload sits in the bits that are cut stays NaN (it would become Inf).
    low_nan = jax.lax.bitcast_convert_type(jnp.uint32(0x7F800001), jnp.float32)
    assert jnp.isnan(_round(low_nan, dtype, jax.random.key(0)))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bfloat16", "float16"])
def test_overflow_rounds_to_the_largest_finite_value_or_to_infinity(dtype: Any) -> None:
    top = float(jnp.finfo(dtype).max)
    x = jnp.full(4000, np.nextafter(np.float32(top), np.float32(np.inf)), jnp.float32)
    out = np.asarray(_round(-x, dtype, jax.random.key(1)).astype(jnp.float32))
    assert set(np.unique(out)) <= {-top, -np.inf}
    assert np.mean(out == -top) > 0.9  # just above the top: mostly rounds down to it
    beyond = jnp.float32(3.0e38) if dtype == jnp.float16 else jnp.float32(np.finfo(np.float32).max)
    assert np.isinf(np.asarray(_round(beyond, dtype, jax.random.key(2)), np.float32))


def test_rounding_to_float32_or_wider_is_a_cast() -> None:
    x = jax.random.normal(jax.random.key(0), (100,))
    np.testing.assert_array_equal(_round(x, jnp.float32, jax.random.key(1)), x)


# 2. bfloat16 parameters: apply_updates_stochastic.


def test_tiny_updates_accumulate_in_bfloat16_parameters_only_with_stochastic_rounding() -> None:
    steps, u = 1000, 2.0**-10  # an eighth of bfloat16's ulp (2**-7) on [1, 2)
    params = {"w": jnp.ones(1024, BF16), "none": None, "f32": jnp.ones(4)}
    updates = {"w": jnp.full(1024, u), "none": None, "f32": jnp.full(4, u)}

    def run(apply: Any) -> Any:
        def body(p: Any, t: jax.Array) -> tuple[Any, None]:
            return apply(p, t), None

        return jax.jit(lambda p: jax.lax.scan(body, p, jnp.arange(steps))[0])(params)

    nearest = run(lambda p, t: gc.apply_updates(p, updates))
    key = jax.random.key(7)
    stochastic = run(
        lambda p, t: gc.apply_updates_stochastic(p, updates, jax.random.fold_in(key, t))
    )
    np.testing.assert_array_equal(nearest["w"], jnp.ones(1024, BF16))  # every update lost
    assert stochastic["w"].dtype == BF16 and stochastic["none"] is None
    target = 1 + steps * u
    # Each step's rounding error is at most one ulp (2**-7), independent, mean zero: the
    # mean of 1024 parameters after 1000 steps has standard deviation <= sqrt(1000) 2**-7
    # / 2 / 32; 4 of them is 0.0154, against a change of 0.977 that nearest loses.
    tolerance = 4 * math.sqrt(steps) * 2.0**-7 / 2 / math.sqrt(1024)
    assert abs(float(jnp.mean(stochastic["w"].astype(jnp.float32))) - target) < tolerance
    # float32 parameters get the plain sum, as apply_updates gives them.
    np.testing.assert_array_equal(stochastic["f32"], nearest["f32"])


def test_apply_updates_stochastic_checks_trees_and_key() -> None:
    with pytest.raises(ValueError, match=r"^apply_updates_stochastic: .*differ in structure"):
        gc.apply_updates_stochastic({"a": jnp.ones(1)}, {"b": jnp.ones(1)}, jax.random.key(0))
    with pytest.raises(TypeError, match=r"^apply_updates_stochastic: `key` must be .*got str"):
        gc.apply_updates_stochastic(jnp.ones(1), jnp.ones(1), "0")  # pyright: ignore[reportArgumentType]
    # A raw PRNGKey and an int seed are accepted.
    out = gc.apply_updates_stochastic(jnp.ones(2, BF16), jnp.ones(2), jax.random.PRNGKey(0))
    np.testing.assert_array_equal(out, jnp.full(2, 2.0, BF16))


# 3. bfloat16 moments with stochastic rounding.


def test_the_default_adam_state_has_no_key_and_float32_moments_ignore_the_rounding() -> None:
    params = {"w": jax.random.normal(jax.random.key(0), (5, 3))}
    grads = jax.tree.map(lambda p: jnp.sin(3 * p), params)
    plain, stochastic = gc.adam(0.1), gc.adam(0.1, moment_rounding="stochastic", rounding_key=3)
    state = plain.init(params)
    assert state[0].rng_key is None
    assert len(jax.tree.leaves(state)) == len(jax.tree.leaves(gc.adam(0.1).init(params)))
    s1, s2 = state, stochastic.init(params)
    assert s2[0].rng_key.dtype == jnp.uint32 and s2[0].rng_key.shape == (2,)
    for _ in range(3):  # float32 moments: the same numbers, bit for bit
        u1, s1 = plain.update(grads, s1, params)
        u2, s2 = stochastic.update(grads, s2, params)
        jax.tree.map(
            np.testing.assert_array_equal, (u1, s1[0].mu, s1[0].nu), (u2, s2[0].mu, s2[0].nu)
        )
    assert not np.array_equal(s2[0].rng_key, stochastic.init(params)[0].rng_key)


def test_bfloat16_moments_round_stochastically_and_keep_their_dtype() -> None:
    tx = gc.scale_by_adam(
        b2=0.999, mu_dtype=BF16, nu_dtype=BF16, moment_rounding="stochastic", rounding_key=0
    )
    params = jnp.zeros(4096)
    state = tx.init(params)

    def body(s: Any, _: Any) -> tuple[Any, None]:
        return tx.update(jnp.ones(4096), s)[1], None

    state = jax.jit(lambda s: jax.lax.scan(body, s, None, length=300)[0])(state)
    assert state.mu.dtype == BF16 and state.nu.dtype == BF16
    # nu = 1 - 0.999**300 = 0.2593 (float64); stochastic rounding keeps the mean on it.
    assert abs(float(jnp.mean(state.nu.astype(jnp.float32))) - (1 - 0.999**300)) < 2e-4


def test_moment_rounding_arguments_are_checked_at_construction() -> None:
    with pytest.raises(ValueError, match=r'^scale_by_adam: `moment_rounding` must be "nearest"'):
        gc.adam(0.1, moment_rounding="up")
    with pytest.raises(TypeError, match=r"^scale_by_adam: `rounding_key` must be an int seed"):
        gc.adamw(0.1, moment_rounding="stochastic", rounding_key=1.5)
    stochastic = gc.scale_by_adam(moment_rounding="stochastic")
    with pytest.raises(ValueError, match=r"^scale_by_adam: .* has no `rng_key`"):
        stochastic.update(jnp.ones(2), gc.scale_by_adam().init(jnp.ones(2)))


# 4. quantize_state.


def test_quantized_leaves_decode_within_their_level_spacing() -> None:
    key1, key2 = jax.random.split(jax.random.key(0))
    signed = jnp.concatenate([jax.random.normal(key1, (1000,)), jnp.zeros(24)])
    positive = jnp.exp(4 * jax.random.normal(key2, (1000,)))  # spans about 1e-7..1e7
    for x, levels, mu in (
        (signed, 127, _quantize._MU_SIGNED),
        (positive, 255, _quantize._MU_UNSIGNED),
    ):
        q = _quantize_jit(x, 256)
        assert q.codes.dtype == jnp.int8 and q.codes.shape == x.shape and q.scale.shape == (4,)
        back = np.asarray(_dequantize_jit(q, 256), np.float64)
        x64 = np.asarray(x, np.float64)
        assert np.all(back[x64 == 0] == 0) and np.all(np.sign(back) == np.sign(x64))
        # Relative error within half the ratio of two levels, above 100 a / mu (the code's
        # log-like range).
        ratio = math.expm1(math.log1p(mu) / levels)
        padded = np.concatenate([np.abs(x64), np.zeros(-x64.size % 256)])
        absmax = np.repeat(padded.reshape(-1, 256).max(1), 256)[: x64.size]
        big = np.abs(x64) > absmax * 100 / mu
        rel = np.abs(back - x64)[big] / np.abs(x64[big])
        assert rel.max() <= ratio / 2 * 1.02, (rel.max(), ratio)


def test_stochastic_codes_are_unbiased() -> None:
    x = jnp.full(256 * 64, 0.3).at[::256].set(1.0)  # 0.3 of each block's absmax: between levels
    draws = [_dequantize_jit(_quantize_jit(x, 256, jax.random.key(k)), 256) for k in range(8)]
    mean = float(jnp.mean(jnp.stack(draws)[:, 1::2]))
    nearest = float(_dequantize_jit(_quantize_jit(x, 256), 256)[1])
    assert nearest != pytest.approx(0.3, abs=1e-4)  # 0.3 is not a level
    assert mean == pytest.approx(0.3, abs=3e-4)


def test_quantize_state_sees_through_to_hyperparameters_and_inits_from_shapes() -> None:
    params = {"w": jnp.ones((64, 128)), "b": jnp.ones(128)}
    tx = gc.quantize_state(gc.adamw(gc.linear_schedule(0.1, 0.0, 10), weight_decay=0.5))
    state = jax.jit(tx.init)(params)
    inner = state.inner_state[0]
    assert isinstance(inner.mu["w"], gc.QuantizedArray) and inner.mu["b"].dtype == jnp.float32
    assert sorted(gc.get_hyperparams(state)) == sorted(
        gc.get_hyperparams(gc.adamw(0.1, weight_decay=0.5).init(params))
    )
    state = gc.set_hyperparams(state, weight_decay=0.25)
    assert float(gc.get_hyperparams(state)["weight_decay"]) == 0.25
    shapes = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
    abstract = tx.init(shapes)
    assert jax.tree.structure(abstract) == jax.tree.structure(state)
    # jit and vmap over a batch of states (a sweep): one update per member.
    batch = jax.tree.map(lambda x: jnp.stack([x, x]), state)
    grads = jax.tree.map(jnp.ones_like, params)
    step = jax.jit(jax.vmap(lambda s: tx.update(grads, s, params)))
    updates, new = step(batch)
    assert new.inner_state[0].mu["w"].codes.dtype == jnp.int8
    assert updates["w"].shape == (2, 64, 128)
    np.testing.assert_allclose(updates["w"][0], updates["w"][1])  # the same key in both


def test_quantize_state_arguments_are_checked_at_construction() -> None:
    with pytest.raises(TypeError, match=r"^quantize_state: inner is the function `adam`"):
        gc.quantize_state(gc.adam)  # pyright: ignore[reportArgumentType]
    with pytest.raises(ValueError, match=r"^quantize_state: `block_size` must be > 0; got 0"):
        gc.quantize_state(gc.sgd(0.1), block_size=0)
    with pytest.raises(TypeError, match=r"^quantize_state: `min_size` must be an integer"):
        gc.quantize_state(gc.sgd(0.1), min_size=1.5)  # pyright: ignore[reportArgumentType]
    with pytest.raises(ValueError, match=r'^quantize_state: `rounding` must be "nearest"'):
        gc.quantize_state(gc.sgd(0.1), rounding="floor")
    with pytest.raises(TypeError, match=r"^quantize_state: update received a state of type"):
        gc.quantize_state(gc.sgd(0.1)).update(jnp.ones(1), gc.sgd(0.1).init(jnp.ones(1)))


# 5. Bytes per parameter on a realistic tree.

# A small transformer-like tree: embedding, two MLP blocks, norms and biases (1.1M parameters).
TREE = {
    "embed": jax.ShapeDtypeStruct((1024, 256), jnp.float32),
    "blocks": [
        {
            "w_in": jax.ShapeDtypeStruct((256, 1024), jnp.float32),
            "b_in": jax.ShapeDtypeStruct((1024,), jnp.float32),
            "w_out": jax.ShapeDtypeStruct((1024, 256), jnp.float32),
            "scale": jax.ShapeDtypeStruct((256,), jnp.float32),
        }
        for _ in range(2)
    ],
}


def _bytes(tx: Any) -> float:
    return gc.state_bytes_per_param(jax.eval_shape(tx.init, TREE), TREE)


def test_state_bytes_per_parameter_are_8_4_2_and_about_0() -> None:
    assert _bytes(gc.adam(1e-3)) == pytest.approx(8.0, abs=1e-3)
    assert _bytes(gc.adam(1e-3, mu_dtype=BF16, nu_dtype=BF16, moment_rounding="stochastic")) == (
        pytest.approx(4.0, abs=1e-3)
    )
    # Leaves of >= 4096 elements: 2 moments x (1 byte + 4 / 256); the smaller stay float32.
    sizes = [math.prod(leaf.shape) for leaf in jax.tree.leaves(TREE)]
    expected = sum(n * (2 + 8 / 256 if n >= 4096 else 8) for n in sizes) / sum(sizes)
    assert _bytes(gc.quantize_state(gc.adam(1e-3))) == pytest.approx(expected, abs=1e-4)
    assert 2.04 < expected < 2.05
    # Adafactor without momentum: an n x m matrix keeps n + m float32 means, a vector itself.
    factored = sum(
        4 * (sum(s) if len(s) == 2 else s[0]) for s in map(np.shape, jax.tree.leaves(TREE))
    )
    assert _bytes(gc.adafactor(1e-3)) == pytest.approx(factored / sum(sizes), abs=1e-4)
    assert factored / sum(sizes) < 0.03
    assert _bytes(gc.adafactor(1e-3, factored=False)) == pytest.approx(4.0, abs=0.01)
    # Arrays count as their shapes do; a tree without elements cannot be divided by.
    params = {"w": jnp.zeros((64, 64))}
    assert gc.state_bytes_per_param(gc.sgd(0.1, momentum=0.9).init(params), params) == (
        pytest.approx(4.0, abs=0.01)
    )
    with pytest.raises(ValueError, match=r"^state_bytes_per_param: `params` has no elements"):
        gc.state_bytes_per_param(gc.EmptyState(), {})


# 6. Losses against float32 moments.


def _train(loss: Any, params: Any, tx: Any, steps: int) -> float:
    def body(carry: Any, _: Any) -> tuple[Any, None]:
        p, state = carry
        updates, state = tx.update(jax.grad(loss)(p), state, p)
        return (gc.apply_updates(p, updates), state), None

    def run(p: Any) -> jax.Array:
        return loss(jax.lax.scan(body, (p, tx.init(p)), None, length=steps)[0][0])

    return float(jax.jit(run)(params))


def _digits_loss(tx: Any) -> float:
    common = load_example("common")
    data = common.digits()

    def loss(p: Any) -> jax.Array:
        return common.cross_entropy(common.mlp_logits(p, data.x_train), data.y_train)

    return _train(loss, common.init_mlp(jax.random.key(0)), tx, 150)


def _least_squares(tx: Any) -> tuple[float, float]:
    """The final loss of 1000 steps of ``tx`` and the optimum (float64 ``lstsq``)."""
    k1, k2, k3 = jax.random.split(jax.random.key(42), 3)
    x = jax.random.normal(k1, (512, 128)) * jnp.logspace(0, -2, 128)[None, :]
    y = x @ jax.random.normal(k2, (128, 64)) + 0.1 * jax.random.normal(k3, (512, 64))

    def loss(p: Any) -> jax.Array:  # w is (64, 128): a block of 256 spans every feature scale
        return 0.5 * jnp.mean(jnp.sum((x @ p["w"].T - y) ** 2, axis=-1))

    x64, y64 = np.asarray(x, np.float64), np.asarray(y, np.float64)
    w_star = np.linalg.lstsq(x64, y64, rcond=None)[0]
    optimum = 0.5 * np.mean(np.sum((x64 @ w_star - y64) ** 2, axis=-1))
    return _train(loss, {"w": jnp.zeros((64, 128))}, tx, 1000), float(optimum)


def _least_squares_excess(tx: Any) -> float:
    final, optimum = _least_squares(tx)
    return final - optimum


def _adam_options() -> dict[str, Any]:
    return {
        "bf16_stochastic": lambda lr: gc.adam(
            lr, mu_dtype=BF16, nu_dtype=BF16, moment_rounding="stochastic"
        ),
        "8bit": lambda lr: gc.quantize_state(gc.adam(lr)),
    }


@pytest.fixture(scope="module")
def float32_reference() -> dict[str, float]:
    return {"digits": _digits_loss(gc.adam(3e-3)), "lsq": _least_squares_excess(gc.adam(1e-2))}


@pytest.mark.parametrize("option", ["bf16_stochastic", "8bit"])
def test_low_precision_adam_state_trains_within_tolerance_of_float32(
    option: str, float32_reference: dict[str, float]
) -> None:
    make = _adam_options()[option]
    digits = _digits_loss(make(3e-3)) / float32_reference["digits"]
    excess = _least_squares_excess(make(1e-2)) / float32_reference["lsq"]
    assert abs(digits - 1) < 0.02, digits
    assert abs(excess - 1) < 0.10, excess


@pytest.mark.parametrize(
    "broken",
    ["bf16_nearest", "8bit_nearest", "8bit_linear"],
)
def test_broken_low_precision_states_miss_that_tolerance(
    broken: str, float32_reference: dict[str, float], monkeypatch: pytest.MonkeyPatch
) -> None:
    if broken == "bf16_nearest":  # nu rounds back to itself: it can never decrease
        tx = gc.adam(1e-2, mu_dtype=BF16, nu_dtype=BF16)
    elif broken == "8bit_nearest":  # the same stall, with 8-bit spacing
        tx = gc.quantize_state(gc.adam(1e-2), rounding="nearest")
    else:  # a linear code: second moments below 1/255 of the block's largest overestimated
        monkeypatch.setattr(_quantize, "_MU_SIGNED", 1e-6)
        monkeypatch.setattr(_quantize, "_MU_UNSIGNED", 1e-6)
        tx = gc.quantize_state(gc.adam(1e-2))
    excess = _least_squares_excess(tx) / float32_reference["lsq"]
    assert excess > 1.3, excess


def test_factored_second_moments_train_close_to_full_float32_ones() -> None:
    def adafactor(factored: bool) -> Any:
        return gc.adafactor(
            1e-2, factored=factored, min_dim_size_to_factor=8, multiply_by_parameter_scale=False
        )

    digits = _digits_loss(adafactor(True)) / _digits_loss(adafactor(False))
    least_squares = _least_squares(adafactor(True))[0] / _least_squares(adafactor(False))[0]
    assert digits < 1.15, digits
    assert least_squares < 1.15, least_squares
