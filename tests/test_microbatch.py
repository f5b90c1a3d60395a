"""Tests of gradchain._microbatch: microbatch and AccumulationType.

The reference is ``fun`` itself on the full batch (microbatching must not change the
math), a NumPy float64 loop over the strided microbatches where ``num_real_microbatches``
stops early, and ``optax.microbatch`` (0.2.8) on the same inputs.
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax.microbatching import AccumulationType as OptaxAccumulation

import gradchain as gc
from gradchain import AccumulationType as Acc

OPTAX_PARITY_NAMES: frozenset[str] = frozenset({"microbatch"})

BATCH, FEATURES = 12, 3


def _problem() -> tuple[dict[str, jax.Array], jax.Array, jax.Array]:
    kw, kb, kx, ky = jax.random.split(jax.random.key(0), 4)
    params = {
        "w": jax.random.normal(kw, (FEATURES, 2)),
        "b": jax.random.normal(kb, (2,)),
        "s": jnp.ones((1,)),
    }
    x = jax.random.normal(kx, (BATCH, FEATURES))
    y = jax.random.normal(ky, (BATCH, 2))
    return params, x, y


def _per_example_loss(params: dict[str, jax.Array], x: jax.Array, y: jax.Array) -> jax.Array:
    pred = jnp.tanh(x @ params["w"] + params["b"][None, :]) * params["s"][0]
    return jnp.sum((pred - y) ** 2, axis=-1)


def _mean_loss(params: dict[str, jax.Array], x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean(_per_example_loss(params, x, y))


def _sum_loss(params: dict[str, jax.Array], x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.sum(_per_example_loss(params, x, y))


# (accumulator, the function to microbatch): each equals itself on the full batch.
FULL_BATCH_CASES = [
    (Acc.SUM, _sum_loss),
    (Acc.MEAN, _mean_loss),
    (Acc.RUNNING_MEAN, _mean_loss),
    (Acc.CONCAT, _per_example_loss),
]


@pytest.mark.parametrize(("acc", "fun"), FULL_BATCH_CASES, ids=lambda v: getattr(v, "name", ""))
def test_each_accumulator_equals_fun_on_the_full_batch(acc: Acc, fun: Any) -> None:
    params, x, y = _problem()
    got = jax.jit(gc.microbatch(fun, argnums=(1, 2), microbatch_size=4, accumulator=acc))(
        params, x, y
    )
    np.testing.assert_allclose(got, fun(params, x, y), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("acc", "fun"), FULL_BATCH_CASES, ids=lambda v: getattr(v, "name", ""))
def test_the_gradient_of_a_microbatched_loss_equals_the_full_batch_gradient(
    acc: Acc, fun: Any
) -> None:
    params, x, y = _problem()
    # CONCAT of per-example gradients (jacrev): XLA's float32 kernels for a 3-row and a
    # 12-row batch round differently, so entries near zero differ by up to ~5e-7.
    grad = jax.grad(fun) if acc is not Acc.CONCAT else jax.jacrev(fun)
    got = gc.microbatch(grad, argnums=(1, 2), microbatch_size=3, accumulator=acc)(params, x, y)
    atol = 1e-6 if acc is Acc.CONCAT else 1e-7
    chex.assert_trees_all_close(got, grad(params, x, y), rtol=1e-6, atol=atol)


def test_a_loss_microbatched_with_static_bounds_is_reverse_differentiable() -> None:
    params, x, y = _problem()
    mb = gc.microbatch(_mean_loss, argnums=(1, 2), microbatch_size=4, accumulator=Acc.MEAN)
    got = jax.grad(lambda p: mb(p, x, y))(params)
    chex.assert_trees_all_close(got, jax.grad(_mean_loss)(params, x, y), rtol=1e-6, atol=1e-7)


def test_fun_only_ever_sees_one_microbatch_inside_one_loop() -> None:
    params, x, y = _problem()
    seen: list[tuple[int, ...]] = []

    def fun(p: Any, xb: jax.Array, yb: jax.Array) -> jax.Array:
        seen.append(xb.shape)
        return _sum_loss(p, xb, yb)

    jaxpr = jax.make_jaxpr(gc.microbatch(fun, (1, 2), 2))(params, x, y)
    assert set(seen) == {(2, FEATURES)}
    assert "while" in str(jaxpr) or "scan" in str(jaxpr)


def test_peak_temporary_memory_is_one_microbatchs_not_the_batchs() -> None:
    # An MLP gradient on 1024 examples in 8 microbatches: XLA's temporary buffers shrink
    # with the microbatch (measured: full batch 32.0 MiB, gradchain 3.3 MiB, Optax 0.2.8
    # 8.0 MiB, which also copies the batch into microbatch-major order, on a 4096 x 256
    # batch with 1024 hidden units in 16 microbatches).
    kx, kw = jax.random.split(jax.random.key(1))
    x, w = jax.random.normal(kx, (1024, 64)), jax.random.normal(kw, (64, 512))

    def loss(w: jax.Array, x: jax.Array) -> jax.Array:
        return jnp.mean(jnp.tanh(x @ w) ** 2)

    def temp(f: Any) -> int:
        analysis = jax.jit(f).lower(w, x).compile().memory_analysis()
        assert analysis is not None
        return analysis.temp_size_in_bytes

    full = temp(jax.grad(loss))
    micro = temp(gc.microbatch(jax.grad(loss), 1, 128, Acc.MEAN))
    assert micro < full / 4, (micro, full)


def _optax_tree(acc: Any) -> Any:
    return jax.tree.map(lambda a: OptaxAccumulation[a.name], acc)


def _pytree_fun(params: dict[str, jax.Array], x: jax.Array, y: jax.Array) -> Any:
    losses = _per_example_loss(params, x, y)
    return {"losses": losses, "grad": jax.grad(_mean_loss)(params, x, y), "n": jnp.sum(losses)}


PARITY_ACCUMULATORS = [
    {"losses": Acc.CONCAT, "grad": Acc.MEAN, "n": Acc.SUM},
    {"losses": Acc.CONCAT, "grad": Acc.RUNNING_MEAN, "n": Acc.CONCAT},
    {
        "losses": Acc.CONCAT,
        "grad": {"w": Acc.SUM, "b": Acc.MEAN, "s": Acc.RUNNING_MEAN},
        "n": Acc.MEAN,
    },
]


@pytest.mark.parametrize("acc", PARITY_ACCUMULATORS, ids=["mean", "running_mean", "per_leaf"])
@pytest.mark.parametrize("real", [None, 2], ids=["all", "real2"])
def test_matches_optax_microbatch(acc: Any, real: int | None) -> None:
    # SUM, MEAN and CONCAT add in the same order as Optax: bit-compatible (rtol 1e-6).
    # RUNNING_MEAN divides the sum once where Optax rescales the running value each
    # step; both are within an ulp or two of the exact mean, so the same tolerance holds.
    params, x, y = _problem()
    ours = gc.microbatch(_pytree_fun, (1, 2), 3, acc, num_real_microbatches=real)(params, x, y)
    with jax.numpy_dtype_promotion("standard"):
        theirs = optax.microbatch(
            _pytree_fun, (1, 2), 3, _optax_tree(acc), num_real_microbatches=real
        )(params, x, y)
    chex.assert_trees_all_close(ours, theirs, rtol=1e-6, atol=1e-7)


def test_num_real_microbatches_runs_the_first_strided_microbatches_like_numpy() -> None:
    # Microbatch i of n holds examples i, i + n, i + 2n, ... (Optax's layout, which keeps a
    # sharded batch evenly sharded); a NumPy float64 loop over that layout is the reference.
    params, x, y = _problem()
    losses = np.asarray(_per_example_loss(params, x, y), np.float64)
    n, k = BATCH // 3, 2
    parts = [losses[i::n] for i in range(k)]
    expected = {
        Acc.SUM: sum(p.sum() for p in parts),
        Acc.MEAN: sum(p.sum() for p in parts) / n,
        Acc.RUNNING_MEAN: sum(p.sum() for p in parts) / k,
    }
    for acc, want in expected.items():
        got = gc.microbatch(_sum_loss, (1, 2), 3, acc, num_real_microbatches=k)(params, x, y)
        np.testing.assert_allclose(float(got), want, rtol=1e-6)
    concat = gc.microbatch(_per_example_loss, (1, 2), 3, Acc.CONCAT, num_real_microbatches=k)
    want = np.where(np.arange(BATCH) % n < k, losses, 0.0)
    np.testing.assert_allclose(concat(params, x, y), want, rtol=1e-6)


def test_a_traced_num_real_microbatches_does_not_recompile() -> None:
    params, x, y = _problem()
    traces = []

    @jax.jit
    def run(k: jax.Array) -> jax.Array:
        traces.append(None)
        return gc.microbatch(_sum_loss, (1, 2), 3, Acc.RUNNING_MEAN, num_real_microbatches=k)(
            params, x, y
        )

    losses = np.asarray(_per_example_loss(params, x, y), np.float64)
    for k in (1, 3, 4):
        want = sum(losses[i::4].sum() for i in range(k)) / k
        np.testing.assert_allclose(float(run(jnp.int32(k))), want, rtol=1e-6)
    assert len(traces) == 1


def test_argnames_and_in_axes_select_the_batch_axes() -> None:
    params, x, y = _problem()

    def fun(p: Any, xt: jax.Array, *, y: jax.Array) -> jax.Array:
        return _per_example_loss(p, xt.T, y)

    mb = gc.microbatch(fun, 1, 4, Acc.CONCAT, argnames="y", in_axes=(1, 0))
    np.testing.assert_allclose(mb(params, x.T, y=y), _per_example_loss(params, x, y), rtol=1e-6)
    negative = gc.microbatch(fun, -1, 4, Acc.CONCAT, argnames=("y",), in_axes=(-1, 0))
    np.testing.assert_allclose(negative(params, x.T, y=y), mb(params, x.T, y=y), rtol=1e-6)


def test_under_vmap_it_equals_the_vmapped_full_batch_function() -> None:
    params, x, y = _problem()
    xs, ys = jnp.stack([x, 2 * x]), jnp.stack([y, -y])
    mb = gc.microbatch(_mean_loss, (1, 2), 6, Acc.MEAN)
    got = jax.jit(jax.vmap(mb, in_axes=(None, 0, 0)))(params, xs, ys)
    want = jax.vmap(_mean_loss, in_axes=(None, 0, 0))(params, xs, ys)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_none_microbatch_size_runs_the_whole_batch_at_once() -> None:
    params, x, y = _problem()
    got = gc.microbatch(_per_example_loss, (1, 2), None, Acc.CONCAT)(params, x, y)
    # rtol 1e-6, not 0: the loop body is compiled (fused tanh) and the reference is eager.
    np.testing.assert_allclose(got, _per_example_loss(params, x, y), rtol=1e-6)


def test_concat_of_a_scalar_output_stacks_one_value_per_microbatch() -> None:
    got = gc.microbatch(jnp.sum, 0, 2, Acc.CONCAT)(jnp.arange(8.0))
    np.testing.assert_allclose(got, [4.0, 6.0, 8.0, 10.0])  # microbatch i: examples i, i + 4


def test_float16_sums_accumulate_in_float32_and_keep_their_dtype() -> None:
    # Optax 0.2.8 sums in float16 and stalls at 256.0 (checked by running it).
    x = jnp.full((4096,), 0.1, jnp.float16)
    got = gc.microbatch(jnp.sum, 0, 1, Acc.SUM)(x)
    assert got.dtype == jnp.float16
    assert float(got) == 409.5
    half = gc.microbatch(jnp.mean, 0, 2, Acc.MEAN)(jnp.ones(8, jnp.bfloat16))
    assert half.dtype == jnp.bfloat16


def test_integer_sums_and_concats_stay_exact() -> None:
    big = jnp.full((8,), 2**28 + 1, jnp.int32)  # the sum wraps, as on the full batch
    total = gc.microbatch(jnp.sum, 0, 2, Acc.SUM)(big)
    assert total.dtype == jnp.int32
    assert int(total) == int(jnp.sum(big))
    assert int(gc.microbatch(jnp.sum, 0, 2, Acc.SUM)(jnp.arange(8))) == 28
    cat = gc.microbatch(lambda v: v * 3, 0, 2, Acc.CONCAT)(jnp.arange(8, dtype=jnp.int32))
    assert cat.dtype == jnp.int32
    np.testing.assert_array_equal(cat, np.arange(8) * 3)


def test_complex_means_are_supported() -> None:
    z = jnp.arange(8.0).astype(jnp.complex64) * (1 + 2j)
    got = gc.microbatch(jnp.mean, 0, 2, Acc.RUNNING_MEAN)(z)
    assert got.dtype == jnp.complex64
    np.testing.assert_allclose(got, np.mean(np.asarray(z)), rtol=1e-6)


def _call(*args: Any, fun: Any = jnp.sum, call_args: Any = None, **kwargs: Any) -> Any:
    return gc.microbatch(fun, *args, **kwargs)(*(call_args or (jnp.ones(8),)))


# (what is wrong, the failing call, exception type, message pattern)
ERROR_CASES = [
    (
        "indivisible batch",
        lambda: _call(0, 3),
        ValueError,
        r"^microbatch: the batch size 8 is not divisible by `microbatch_size` 3; "
        r".*pad the batch to 9",
    ),
    (
        "empty batch",
        lambda: _call(0, 2, call_args=(jnp.ones(0),)),
        ValueError,
        r"^microbatch: the batch is empty \(batch size 0\)",
    ),
    (
        "argnums out of range",
        lambda: _call(2, 2),
        ValueError,
        r"^microbatch: `argnums` entry 2 is out of range for a call with 1 positional",
    ),
    (
        "argname not passed",
        lambda: _call(0, 2, argnames="mask"),
        ValueError,
        r"^microbatch: `argnames` entry 'mask' was not passed by keyword",
    ),
    (
        "batch sizes disagree",
        lambda: gc.microbatch(lambda a, *, m: jnp.sum(a) + jnp.sum(m), 0, 2, argnames="m")(
            jnp.ones(8), m=jnp.ones(6)
        ),
        ValueError,
        r"^microbatch: batched arguments disagree on the batch size: argument 0 at <root> "
        r"has 8 but argument 'm' at <root> has 6",
    ),
    (
        "in_axes of the wrong length",
        lambda: gc.microbatch(jnp.sum, (0, 1), 2, in_axes=(0,)),
        ValueError,
        r"^microbatch: `in_axes` must be one integer or one per batched argument .*got 1",
    ),
    (
        "accumulator not a prefix",
        lambda: _call(0, 2, fun=lambda a: (a.sum(), a.max()), accumulator=(Acc.SUM,) * 3),
        ValueError,
        r"^microbatch: `accumulator` must be one AccumulationType or a pytree prefix",
    ),
    (
        "accumulator of the wrong type",
        lambda: gc.microbatch(jnp.sum, 0, 2, "sum"),
        TypeError,
        r"^microbatch: `accumulator` entries must be gradchain.AccumulationType .*'sum' at <root>",
    ),
    (
        "non-positive microbatch_size",
        lambda: gc.microbatch(jnp.sum, 0, 0),
        ValueError,
        r"^microbatch: `microbatch_size` must be > 0; got 0",
    ),
    (
        "no batched argument",
        lambda: gc.microbatch(jnp.sum, (), 2),
        ValueError,
        r"^microbatch: no batched argument",
    ),
    (
        "mean of integers",
        lambda: _call(0, 2, accumulator=Acc.MEAN, call_args=(jnp.arange(8),)),
        TypeError,
        r"^microbatch: MEAN of output at <root> needs a floating or complex dtype; got int32",
    ),
    (
        "too many real microbatches",
        lambda: _call(0, 2, num_real_microbatches=5),
        ValueError,
        r"^microbatch: `num_real_microbatches` must be <= the number of microbatches 4 .*got 5",
    ),
    (
        "a leaf without the batch axis",
        lambda: _call(0, 2, call_args=({"a": jnp.ones(8), "b": jnp.ones(())},)),
        ValueError,
        r"^microbatch: argument 0 at \['b'\] has shape \(\), which has no batch axis 0",
    ),
]


@pytest.mark.parametrize(
    ("what", "make", "exc", "pattern"), ERROR_CASES, ids=[c[0] for c in ERROR_CASES]
)
def test_misuse_raises_an_error_naming_microbatch_and_the_argument(
    what: str, make: Any, exc: Any, pattern: Any
) -> None:
    del what
    with pytest.raises(exc, match=pattern):
        make()
