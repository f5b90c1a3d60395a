r"""Stochastic rounding from float32 to bfloat16 or float16, and its uses.

Round-to-nearest loses every change smaller than half a unit in the last place
(ulp): a bfloat16 weight of 1.0 (ulp :math:`2^{-7}`) ignores any update below
:math:`2^{-8} \approx 0.004`, however many steps it is repeated. Stochastic
rounding goes up with probability proportional to the distance from the value
below, so that :math:`E[\mathrm{round}(x)] = x` and small updates accumulate
in expectation (Gupta et al. 2015; Zamirai et al. 2020).

The bit trick: a float32 and its bfloat16 rounding share the sign and exponent
bits, and bfloat16 keeps the top 7 of float32's 23 mantissa bits. Adding a
uniform random integer in :math:`[0, 2^{16})` to the float32 bit pattern and
clearing the low 16 bits rounds the magnitude up exactly when the random number
exceeds the discarded bits, which happens with probability
(discarded bits) / :math:`2^{16}`: the distance to the value below over the ulp.
A carry moves into the exponent exactly as the next representable number
requires; the sign bit is untouched, so negative numbers round away from zero
with the probability of their magnitude's fraction, which is again unbiased.
float16 keeps 10 mantissa bits, so 13 bits are discarded in its normal range;
below it (float16's subnormals, spacing :math:`2^{-24}`) the rounding is done
in fixed point, ``floor(x * 2**24 + u) / 2**24``, which is exact there.

Special values: NaN stays NaN (its payload may not survive the truncation, so
it is passed through explicitly); an infinity stays infinite (its mantissa is
zero); a finite float32 beyond the target's largest finite value rounds to
infinity with the probability of rounding up past that value, and to it
otherwise, so overflow is unbiased in the same sense.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from gradchain import _check, _tree
from gradchain._base import Params, Updates

_ROUNDED = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def _mix(x: jax.Array) -> jax.Array:
    """A 32-bit integer hash with full avalanche (Wellons' "lowbias32")."""
    x = x ^ (x >> jnp.uint32(16))
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> jnp.uint32(15))
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> jnp.uint32(16))


def random_bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """32 random bits per element, cheap enough to fuse into an elementwise kernel.

    The key gives two 32-bit seeds (one threefry draw of two words, a scalar);
    each element hashes its flat index with them, two rounds of a 32-bit integer
    hash: about a dozen integer operations per element, where ``jax.random.bits``
    runs the threefry block cipher per element (measured on CPU: it made
    stochastic rounding of Adam's moments several times slower than the step).
    Good for dithering, as here; not a cryptographic or simulation-grade stream.
    """
    seeds = jax.random.bits(key, (2,), jnp.uint32)
    index = jax.lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
    return _mix(_mix(index ^ seeds[0]) + seeds[1])


def rounds(dtype: Any) -> bool:
    """Whether stochastic rounding to ``dtype`` differs from a cast (bfloat16, float16)."""
    return jnp.dtype(dtype) in _ROUNDED


def stochastic_round(x: jax.Array, dtype: Any, key: jax.Array) -> jax.Array:
    """Rounds ``x`` to ``dtype`` up or down at random, unbiased: ``E[result] == x``.

    Args:
      x: a real array; computed on as float32 (a float64 input is first rounded
        to float32 to nearest).
      dtype: bfloat16 or float16 round stochastically; any other float dtype
        is a plain cast (float32 and wider hold a float32 exactly).
      key: a typed JAX PRNG key; 32 random bits per element from it (by
        :func:`random_bits`, a counter-based hash).

    Returns:
      An array of ``x``'s shape in ``dtype``.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> from gradchain._rounding import stochastic_round
      >>> x = jnp.full(10000, 1.0 + 2**-9, jnp.float32)  # a quarter ulp above 1 in bfloat16
      >>> r = stochastic_round(x, jnp.bfloat16, jax.random.key(0)).astype(jnp.float32)
      >>> sorted(set(r.tolist())), round(float(jnp.mean(r - 1)) / 2**-7, 1)
      ([1.0, 1.0078125], 0.2)
    """
    dtype = jnp.dtype(dtype)
    if not rounds(dtype):
        return jnp.asarray(x).astype(dtype)
    x = jnp.asarray(x).astype(jnp.float32)
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    random = random_bits(key, x.shape)
    if dtype == jnp.bfloat16:
        drop = 16
    else:
        drop = 13
    low = jnp.uint32((1 << drop) - 1)
    noisy = (bits + (random >> jnp.uint32(32 - drop))) & ~low
    out = jax.lax.bitcast_convert_type(noisy, jnp.float32)
    if dtype == jnp.float16:
        # float16's subnormals have a fixed spacing 2**-24: in fixed point, x * 2**24 is exact
        # (a power-of-two scaling), floor and the fraction are exact, and the 24 random bits
        # compare with the fraction (a multiple of 2**-23 for x >= 2**-24) exactly.
        scaled = x * jnp.float32(2.0**24)
        whole = jnp.floor(jnp.abs(scaled))
        fraction = jnp.abs(scaled) - whole
        uniform = (random >> jnp.uint32(8)).astype(jnp.float32) * jnp.float32(2.0**-24)
        magnitude = (whole + (uniform < fraction).astype(jnp.float32)) * jnp.float32(2.0**-24)
        fixed = jnp.copysign(magnitude, x)
        out = jnp.where(jnp.abs(x) < jnp.float32(2.0**-14), fixed, out)
    return jnp.where(jnp.isnan(x), x, out).astype(dtype)


def round_tree(tree: Any, dtypes: Any, key: jax.Array) -> Any:
    """:func:`stochastic_round` of each leaf of ``tree`` to the matching leaf's dtype.

    ``dtypes`` is a tree of arrays or ShapeDtypeStructs; one key per leaf, by ``split``.
    """
    leaves, treedef = jax.tree.flatten(tree)
    targets = jax.tree.leaves(dtypes)
    keys = jax.random.split(key, len(leaves)) if leaves else []
    out = [
        stochastic_round(x, t.dtype, k) if rounds(t.dtype) else x.astype(t.dtype)
        for x, t, k in zip(leaves, targets, keys, strict=True)
    ]
    return treedef.unflatten(out)


class MomentRounding:
    """How a transform stores float32 results in lower-precision state leaves.

    ``"nearest"`` casts (the default: no key in the state, the numbers as before);
    ``"stochastic"`` keeps raw ``uint32`` key data in the state (serializable by
    flax and orbax, as :func:`gradchain.add_noise` does) and rounds with it.
    """

    def __init__(self, fn: str, mode: Any, key: Any) -> None:
        if mode not in ("nearest", "stochastic"):
            raise ValueError(
                f'{fn}: `moment_rounding` must be "nearest" or "stochastic"; got {mode!r}.'
            )
        self._fn = fn
        self.stochastic = mode == "stochastic"
        seed = 0 if key is None else key
        self._key = _check.prng_key(fn, "rounding_key", seed) if self.stochastic else None

    def init(self) -> jax.Array | None:
        """The state's ``rng_key``: raw key data when stochastic, else None (no leaf)."""
        if self._key is None:
            return None
        return jnp.array(jax.random.key_data(self._key))

    def hold(self, x: jax.Array, dtype: Any) -> jax.Array:
        """Inside a leaf function: ``x`` cast to ``dtype``, or kept exact for :meth:`store`."""
        return x if self.stochastic else x.astype(dtype)

    def store(
        self, rng_key: jax.Array | None, trees: tuple[Any, ...], like: tuple[Any, ...]
    ) -> tuple[tuple[Any, ...], jax.Array | None]:
        """Rounds each tree to the dtypes of the matching ``like`` tree; the next key data."""
        if not self.stochastic or self._key is None:
            return trees, rng_key
        if rng_key is None:
            raise ValueError(
                f"{self._fn}: this transform rounds its moments stochastically, but the state "
                f'has no `rng_key`: it was built with moment_rounding="nearest". Pass the '
                f"state returned by this same transformation's init."
            )
        impl = jax.random.key_impl(self._key)
        next_key, *keys = jax.random.split(
            jax.random.wrap_key_data(rng_key, impl=impl), len(trees) + 1
        )
        out = tuple(round_tree(t, d, k) for t, d, k in zip(trees, like, keys, strict=True))
        return out, jax.random.key_data(next_key)


def apply_updates_stochastic(params: Params, updates: Updates, key: jax.Array) -> Params:
    """Adds updates to parameters, rounding bfloat16 and float16 results stochastically.

    :func:`gradchain.apply_updates` rounds ``p + u`` to the nearest value of
    the parameter's dtype, so an update below half an ulp of ``p`` is lost, every
    step. This computes ``p + u`` in float32 and rounds it up or down at random with
    probability proportional to the distance (see ``gradchain/_rounding.py``), so
    that the expected parameter is the float32 sum and small updates add up over
    steps. float32 and wider parameters get the ordinary sum, and ``None`` leaves
    pass, as in :func:`gradchain.apply_updates`. Pass a new key every step, e.g.
    ``jax.random.fold_in(key, step)``; the same key gives the same roundings.

    Args:
      params: the parameters.
      updates: a tree of the same structure and shapes.
      key: a typed JAX PRNG key (or a raw ``PRNGKey``); split into one key per leaf.

    Returns:
      The updated parameters, in their own dtypes.

    Raises:
      ValueError: if the trees differ in structure or in a leaf's shape.
      TypeError: if ``key`` is not a single key.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> p = jnp.ones(1000, jnp.bfloat16)
      >>> u = jnp.full(1000, 2**-10)  # an eighth of bfloat16's ulp at 1: nearest loses it
      >>> float(gc.apply_updates(p, u)[0])
      1.0
      >>> for step in range(64):
      ...     p = gc.apply_updates_stochastic(p, u, jax.random.fold_in(jax.random.key(0), step))
      >>> round(float(jnp.mean(p.astype(jnp.float32))), 2)  # 1 + 64 * 2**-10
      1.06
    """
    fn = "apply_updates_stochastic"
    _tree.check_same_structure(fn, "params", params, "updates", updates)
    _tree.check_same_shapes(fn, "params", params, "updates", updates)
    key = _check.prng_key(fn, "key", key)
    leaves, treedef = jax.tree.flatten(params, is_leaf=lambda x: x is None)
    steps = treedef.flatten_up_to(updates)
    keys = jax.random.split(key, len(leaves)) if leaves else []

    def add(p: jax.Array | None, u: jax.Array | None, k: jax.Array) -> jax.Array | None:
        if p is None:
            return None
        p, u = jnp.asarray(p), jnp.asarray(u)
        wide = _tree.compute_dtype(p.dtype, u.dtype)
        total = p.astype(wide) + u.astype(wide)
        if rounds(p.dtype):
            return stochastic_round(total, p.dtype, k)
        return total.astype(p.dtype)

    return treedef.unflatten([add(p, u, k) for p, u, k in zip(leaves, steps, keys, strict=True)])
