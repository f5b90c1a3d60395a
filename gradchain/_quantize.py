r"""8-bit block-quantized optimizer state for any transformation, and state bytes per parameter.

:func:`quantize_state` keeps each large floating leaf of an inner
transformation's state as int8 codes, one per element, and one float32 scale
per block of ``block_size`` consecutive elements (the leaf flattened in
row-major order), as in Dettmers et al. 2022: 1 + 4 / ``block_size`` bytes per
element instead of 4. Before each inner update the state is decoded to its own
dtype, after it encoded again.

The code of a block. Its scale is the block's largest magnitude ``a`` (absmax,
so one outlier costs only its own block precision). A value ``x`` is encoded
from ``y = |x| / a`` in [0, 1] by logarithmic (mu-law) companding,

.. math::
  c = \mathrm{round}\!\left(L\, \frac{\log(1 + \mu y)}{\log(1 + \mu)}\right),
  \qquad y = \frac{(1 + \mu)^{c / L} - 1}{\mu},

so that the relative error is about the same from ``a`` down to ``a / mu``:
Adam's second moment spans orders of magnitude inside a block, and a linear
code would round its small entries to zero, whose reciprocal square root then
blows the update up (measured: ``tests/test_memory.py``). A block with a
negative entry uses the signed code, ``L = 127`` levels per sign; a block of
non-negative entries (every block of a second moment) uses all 255 levels for
the magnitude, and its scale is stored negated to tell the two apart. A
non-zero value never encodes to zero: it takes at least the first level, so a
tiny second moment is overestimated, never zero. NaN or infinity in a block
makes the whole decoded block NaN (``apply_if_finite`` around the optimizer
skips such steps before they reach the state).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradchain import _check, _explicit, _tree
from gradchain._base import (
    AnyTransformation,
    GradientTransformationExtraArgs,
    OptState,
    Params,
    Updates,
    call_update,
    check_transformation,
)
from gradchain._rounding import random_bits

_FN = "quantize_state"
# mu of the signed and unsigned codes: the smallest non-zero level is about a * mu**(-1)
# (times log(1 + mu) / L); chosen by the losses measured in tests/test_memory.py.
_MU_SIGNED = 2.0**12
_MU_UNSIGNED = 2.0**20


class QuantizedArray(NamedTuple):
    """One state leaf of :func:`quantize_state`: int8 codes and a float32 scale per block."""

    codes: jax.Array  # int8, the original leaf's shape
    scale: jax.Array  # float32[n_blocks]: the block's absmax; negated for the unsigned code
    like: jax.Array  # one zero, shape (1,), of the original leaf's dtype: it says the dtype
    # (not a (0,) array: Orbax refuses to save arrays with no elements)


class QuantizeStateState(NamedTuple):
    """State of :func:`quantize_state`: the inner state, large leaves as QuantizedArray."""

    inner_state: OptState
    rng_key: jax.Array | None  # uint32 key data for stochastic rounding; None for nearest


class _Code(NamedTuple):
    """Per block: mu, the step between levels in the log domain, and the level count."""

    mu: jax.Array
    step: jax.Array
    levels: jax.Array


def _code(signed: jax.Array) -> _Code:
    """The code of each block (``signed``: bool, one per block), as float32 columns."""

    def pick(if_signed: float, if_unsigned: float) -> jax.Array:
        return jnp.where(signed, jnp.float32(if_signed), jnp.float32(if_unsigned))

    return _Code(
        mu=pick(_MU_SIGNED, _MU_UNSIGNED),
        step=pick(math.log1p(_MU_SIGNED) / 127, math.log1p(_MU_UNSIGNED) / 255),
        levels=pick(127, 255),
    )


def _blocks(x: jax.Array, block_size: int) -> jax.Array:
    flat = x.reshape(-1)
    pad = -flat.shape[0] % block_size
    if pad:
        flat = jnp.concatenate([flat, jnp.zeros(pad, flat.dtype)])
    return flat.reshape(-1, block_size)


def _per_element(per_block: jax.Array, block_size: int, shape: tuple[int, ...]) -> jax.Array:
    """A value per block spread over the elements of a leaf of ``shape`` (row-major blocks).

    The leaf's own elementwise arithmetic then runs in its shape, so that XLA keeps
    its layout (a sharded moment's codes stay sharded like it).
    """
    n = math.prod(shape)
    spread = jnp.broadcast_to(per_block[:, None], (per_block.shape[0], block_size))
    return spread.reshape(-1)[:n].reshape(shape)


def quantize(x: jax.Array, block_size: int, key: jax.Array | None = None) -> QuantizedArray:
    """Encodes a floating array as a QuantizedArray (see the module docstring).

    Without a ``key``, each value takes the nearest level in the companded (log)
    scale. With one, it takes one of the two levels around it at random, the upper
    with probability ``(y - y_lo) / (y_hi - y_lo)``: unbiased in value.
    """
    x, spec = _explicit.replicate(x)  # blocks cut across shards: gathered whole on a mesh
    xf = x.astype(jnp.float32)
    blocks = _blocks(xf, block_size)
    absmax = jnp.max(jnp.abs(blocks), axis=1)
    signed_blocks = jnp.any(blocks < 0, axis=1)
    signed = _per_element(signed_blocks, block_size, x.shape)
    code = _code(signed)
    top = _per_element(absmax, block_size, x.shape)
    y = jnp.abs(xf) / jnp.where(top > 0, top, jnp.ones_like(top))
    z = jnp.log1p(code.mu * y) / code.step  # the level in the log scale, in [0, levels]
    if key is None:
        q = jnp.round(z)
    else:
        # 1 + mu y = exp(z step), so (y - y_lo) / (y_hi - y_lo) = expm1(f step) / expm1(step)
        # with f = z - lo, the fraction of the way to the next level in the log scale.
        lo = jnp.minimum(jnp.floor(z), code.levels - 1)
        p = jnp.expm1((z - lo) * code.step) / jnp.expm1(code.step)
        uniform = (random_bits(key, y.shape) >> jnp.uint32(8)).astype(jnp.float32) * 2.0**-24
        q = lo + (uniform < p).astype(jnp.float32)
    q = jnp.where(y > 0, jnp.maximum(q, 1), q)  # a non-zero value never encodes to zero
    levels = jnp.where(signed, jnp.copysign(q, xf), q - 128)
    codes = _explicit.reshard(levels.astype(jnp.int8), spec)
    scale = jnp.where(signed_blocks, absmax, -absmax)
    return QuantizedArray(codes, scale, jnp.zeros((1,), x.dtype))


def dequantize(q: QuantizedArray, block_size: int) -> jax.Array:
    """Decodes a QuantizedArray to an array of the original shape and dtype."""
    codes, spec = _explicit.replicate(q.codes)
    levels = codes.astype(jnp.float32)
    scale = _per_element(q.scale, block_size, codes.shape)
    unsigned = scale < 0
    code = _code(~unsigned)
    k = jnp.where(unsigned, levels + 128, jnp.abs(levels))
    sign = jnp.where(unsigned, jnp.ones_like(levels), jnp.sign(levels))
    x = sign * (jnp.expm1(k * code.step) / code.mu) * jnp.abs(scale)
    return _explicit.reshard(x.astype(q.like.dtype), spec)


def _is_quantized(x: Any) -> bool:
    return isinstance(x, QuantizedArray)


def quantize_state(
    inner: AnyTransformation,
    block_size: int = 256,
    min_size: int = 4096,
    *,
    rounding: str = "stochastic",
    key: Any = None,
) -> GradientTransformationExtraArgs:
    """Keeps an optimizer's large state leaves as 8-bit block-quantized codes.

    Wraps any transformation: every floating leaf of ``inner``'s state with at
    least ``min_size`` elements (the moments of a large parameter) is stored as
    int8 codes plus one float32 scale per ``block_size`` elements; small leaves,
    counters, keys and hyperparameters stay as they are, so
    :func:`gradchain.get_hyperparams` and :func:`gradchain.set_hyperparams` see
    through the wrapper. Each update decodes the state, runs ``inner.update``
    on it and encodes the new state. The code is logarithmic, signed for blocks
    with a negative entry and unsigned (twice the resolution) for non-negative
    blocks such as second moments; the module ``gradchain/_quantize.py`` says
    how and why.

    Memory: 1 + 4 / ``block_size`` bytes per element of each quantized leaf
    (Adam: 2.03 bytes per parameter at the default 256, against 8 for float32
    moments), measured by :func:`state_bytes_per_param`.

    Time: decoding and encoding are elementwise passes over each quantized leaf
    (an ``expm1`` to decode; a max per block, a ``log1p``, an ``expm1`` and 32
    random bits per element to encode), several times the few passes of an
    Adam step itself. Measured on a 1M-element leaf on a shared 2-core CPU (jitted
    update + ``apply_updates``, donated buffers, median of 40 rounds): plain
    ``adam`` 2.3 ms, ``quantize_state(adam)`` 19 ms (13 ms with
    ``rounding="nearest"``), about 8 times the step. It pays where state
    memory, not step time, is the limit. On a mesh with Explicit axes each
    quantized leaf is gathered whole to be coded (blocks cut across shards).

    Args:
      inner: the transformation whose state to quantize (any, with or without
        extra arguments, which are passed on).
      block_size: elements per scale, a positive int; smaller blocks follow
        the values more closely and cost 4 / ``block_size`` bytes per element.
      min_size: the least number of elements a state leaf must have to be
        quantized, a non-negative int.
      rounding: ``"stochastic"`` (the default) rounds each value to one of its
        two neighbouring levels at random, unbiased, so that the small steps of
        a moving average (``0.001 g**2`` against ``v``) add up; ``"nearest"``
        rounds to the nearest level, and a second moment then stalls (it moves
        only when a step exceeds half a level, about 3%: measured, it doubles
        the excess loss of a least-squares problem).
      key: an int seed or a jax.random key for stochastic rounding (None:
        seed 0); the state keeps raw ``uint32`` key data (``state.rng_key``;
        None for nearest).

    Returns:
      A GradientTransformationExtraArgs whose state is a QuantizeStateState.

    Raises:
      TypeError: if ``inner`` is not a transformation, or an argument is not an int.
      ValueError: if ``block_size`` is not positive or ``min_size`` is negative.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> params = {"w": jnp.zeros((256, 256)), "b": jnp.zeros(256)}
      >>> tx = gc.quantize_state(gc.adam(1e-3))
      >>> state = tx.init(params)
      >>> round(gc.state_bytes_per_param(state, params), 2)  # w: 2 (1 + 4/256), b: 8, scalars
      2.06
      >>> u, state = tx.update(params, state, params)
      >>> round(float(gc.get_hyperparams(state)["learning_rate"]), 6)
      0.001

    References:
      Dettmers, Lewis, Shleifer and Zettlemoyer, 8-bit Optimizers via Block-wise
      Quantization, ICLR 2022.
    """
    check_transformation(_FN, "inner", inner)
    _check.positive_int(_FN, "block_size", block_size)
    _check.non_negative_int(_FN, "min_size", min_size)
    if rounding not in ("nearest", "stochastic"):
        raise ValueError(f'{_FN}: `rounding` must be "nearest" or "stochastic"; got {rounding!r}.')
    stochastic = rounding == "stochastic"
    typed = _check.prng_key(_FN, "key", 0 if key is None else key) if stochastic else None

    def encode(x: Any) -> Any:
        if (
            isinstance(x, jax.Array)
            and jnp.issubdtype(x.dtype, jnp.floating)
            and x.size >= max(min_size, 1)
        ):
            return quantize(x, block_size)
        return x

    def init_fn(params: Params) -> QuantizeStateState:
        key_data = None if typed is None else jnp.array(jax.random.key_data(typed))
        return QuantizeStateState(jax.tree.map(encode, inner.init(params)), key_data)

    def update_fn(
        updates: Updates,
        state: QuantizeStateState,
        params: Params | None = None,
        **extra_args: Any,
    ) -> tuple[Updates, QuantizeStateState]:
        _tree.check_state(_FN, state, QuantizeStateState)
        leaves, treedef = jax.tree.flatten(state.inner_state, is_leaf=_is_quantized)
        decoded = [dequantize(x, block_size) if _is_quantized(x) else x for x in leaves]
        inner_state = treedef.unflatten(decoded)
        updates, new_inner = call_update(inner, updates, inner_state, params, extra_args)
        new_leaves = treedef.flatten_up_to(new_inner)
        keys: list[Any] = [None] * len(leaves)
        rng_key = state.rng_key
        if typed is not None:
            if rng_key is None:
                raise ValueError(
                    f"{_FN}: this wrapper rounds stochastically, but the state has no "
                    f"`rng_key`: pass the state returned by this same transformation's init."
                )
            impl = jax.random.key_impl(typed)
            next_key, *keys = jax.random.split(
                jax.random.wrap_key_data(rng_key, impl=impl), len(leaves) + 1
            )
            rng_key = jax.random.key_data(next_key)
        out = [
            quantize(new, block_size, k) if _is_quantized(old) else new
            for old, new, k in zip(leaves, new_leaves, keys, strict=True)
        ]
        return updates, QuantizeStateState(treedef.unflatten(out), rng_key)

    return GradientTransformationExtraArgs(init_fn, update_fn)


def state_bytes_per_param(state: OptState, params: Params) -> float:
    """Bytes of optimizer state per parameter element: the state's size over the parameters'.

    Counts every array leaf of ``state`` (moments, codes and scales, counters,
    hyperparameters, keys) at its dtype's size, and every element of
    ``params``. Both may be arrays or ``jax.ShapeDtypeStruct`` s, so
    ``jax.eval_shape(tx.init, params)`` measures a state without building it.
    Adam with float32 moments is 8 plus its few scalars per parameter count;
    bfloat16 moments 4; :func:`quantize_state` about 2; Adafactor's factored
    second moment (without momentum) ``(n + m) / (n m)`` per ``n x m`` matrix.

    Args:
      state: an optimizer state (or its shapes).
      params: the parameters it was built for (or their shapes).

    Returns:
      A Python float.

    Raises:
      ValueError: if ``params`` has no elements.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> params = jnp.zeros((1000, 1000))
      >>> state = jax.eval_shape(gc.adam(1e-3, mu_dtype=jnp.bfloat16).init, params)
      >>> round(gc.state_bytes_per_param(state, params), 3)  # bf16 mu, f32 nu, + scalars
      6.0
    """
    n = sum(int(np.prod(np.shape(p))) for p in jax.tree.leaves(params))
    if n == 0:
        raise ValueError("state_bytes_per_param: `params` has no elements to divide by.")
    total = 0
    for leaf in jax.tree.leaves(state):
        dtype = getattr(leaf, "dtype", None)
        if dtype is None:
            continue
        size = int(np.prod(np.shape(leaf)))
        # A typed key counts as its raw data: two uint32 for the default threefry keys.
        prng = jnp.issubdtype(dtype, jax.dtypes.prng_key)
        total += size * (8 if prng else jnp.dtype(dtype).itemsize)
    return total / n
