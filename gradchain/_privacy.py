r"""DP-SGD: per-example clipping, Gaussian noise, averaging (Abadi et al., 2016).

:func:`differentially_private_aggregate` turns a batch of per-example
gradients (each leaf shaped ``(batch, *param_shape)``, e.g. from
``jax.vmap(jax.grad(loss), in_axes=(None, 0))``) into one noisy mean
gradient; :func:`dpsgd` follows it with momentum and the learning rate.

The random key is part of the state, as raw ``uint32`` key data (so the
state serializes with Flax and Orbax like any other array), and advances at
every update: a run is reproducible from the key it was built with. Each
update splits the key into one key to carry and one per leaf, the way Optax
0.2.8 does, so the same key draws the same noise as Optax's (the results
agree to an ulp: the clipped sums are computed in another order).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradchain import _check, _tree
from gradchain._base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    Params,
    ScalarOrSchedule,
    Updates,
    identity,
)
from gradchain._clipping_more import per_example_global_norm_clip
from gradchain._combine import chain
from gradchain._flat_params import refuse_flat_params
from gradchain._hyperparams import Hyperparams, HyperparamSpec, values
from gradchain._momentum import trace
from gradchain._optimizers import optional_weight_decay
from gradchain._scaling import scale_by_learning_rate
from gradchain._wrappers import MaskOrFn


class DifferentiallyPrivateAggregateState(NamedTuple):
    """State of :func:`differentially_private_aggregate`."""

    step: jax.Array  # int32[], updates seen so far
    rng_key: jax.Array  # uint32 key data (jax.random.key_data) of the next update's key
    hparams: Hyperparams  # l2_norm_clip, noise_multiplier


def _key_data(fn: str, key: Any, seed: Any) -> jax.Array:
    if key is not None and seed is not None:
        raise ValueError(f"{fn}: give `key` or `seed`, not both.")
    given = key if key is not None else seed
    if given is None:
        raise ValueError(
            f"{fn}: the noise needs a random key you choose; pass `key=jax.random.key(0)` "
            f"(or an integer seed). Without one every run would add the same noise."
        )
    if isinstance(given, int | jnp.integer) and not isinstance(given, bool):
        return jax.random.key_data(jax.random.key(int(given)))
    arr = given if isinstance(given, jax.Array) else None
    if arr is not None and jnp.issubdtype(arr.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(arr)
    if arr is not None and arr.dtype == jnp.uint32 and arr.shape == (2,):
        return arr  # a legacy jax.random.PRNGKey
    raise TypeError(
        f"{fn}: `key` must be a jax.random.key, a jax.random.PRNGKey or an integer seed; got "
        f"{type(given).__name__} {given!r:.60}."
    )


def differentially_private_aggregate(
    l2_norm_clip: float,
    noise_multiplier: float,
    key: jax.Array | int | None = None,
    *,
    seed: int | None = None,
) -> GradientTransformation:
    r"""Clips each example's gradient, sums, adds Gaussian noise and divides by the batch size.

    .. math::
      \tilde g = \frac{1}{B}\Big(\sum_{i=1}^{B} g_i \min\big(1, C / \|g_i\|\big)
                 + \mathcal N(0, \sigma^2 C^2 I)\Big)

    with :math:`C` = ``l2_norm_clip`` and :math:`\sigma` = ``noise_multiplier``;
    :math:`\|g_i\|` is example :math:`i`'s norm over all leaves
    (:func:`per_example_global_norm_clip`). It must come first in a chain:
    the updates it takes have a batch axis in front, those it returns do not.

    Args:
      l2_norm_clip: :math:`C` > 0.
      noise_multiplier: :math:`\sigma` >= 0, the noise's standard deviation
        relative to :math:`C`.
      key: a ``jax.random.key``, a legacy ``jax.random.PRNGKey`` or an integer
        seed; required (or ``seed``), so that runs are reproducible by choice.
      seed: an integer seed, Optax's older spelling of ``key``.

    Returns:
      A GradientTransformation whose state is a DifferentiallyPrivateAggregateState.

    Raises:
      ValueError: for a number out of range, or no key; at update, if a leaf
        has no batch axis or the batch sizes differ, or (when ``params`` are
        given) one example's gradient differs from the parameters in structure
        or shape (naming the key paths).
      TypeError: if ``key`` is not a key or an integer.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.differentially_private_aggregate(1.0, 0.0, key=jax.random.key(0))
      >>> per_example = {"w": jnp.array([[3.0, 4.0], [0.3, 0.4]])}  # norms 5 and 0.5
      >>> u, _ = tx.update(per_example, tx.init({"w": jnp.zeros(2)}))
      >>> [round(float(x), 4) for x in u["w"]]  # (0.6 + 0.3, 0.8 + 0.4) / 2
      [0.45, 0.6]

    References:
      Abadi, Chu, Goodfellow, McMahan, Mironov, Talwar and Zhang, Deep Learning
      with Differential Privacy, CCS 2016.
    """
    fn = "differentially_private_aggregate"
    _check.positive(fn, "l2_norm_clip", l2_norm_clip)
    _check.non_negative(fn, "noise_multiplier", noise_multiplier)
    key_data = _key_data(fn, key, seed)
    spec = HyperparamSpec(fn, dict(l2_norm_clip=l2_norm_clip, noise_multiplier=noise_multiplier))

    def init_fn(params: Params) -> DifferentiallyPrivateAggregateState:
        refuse_flat_params(
            "differentially_private_aggregate", "each leaf's per-example axis", params
        )
        del params
        # A copy: under a mesh it is laid out on it like `step`, as `update` returns it.
        step = jnp.zeros([], jnp.int32)
        return DifferentiallyPrivateAggregateState(step, jnp.array(key_data), spec.init())

    def update_fn(
        updates: Updates, state: DifferentiallyPrivateAggregateState, params: Params | None = None
    ) -> tuple[Updates, DifferentiallyPrivateAggregateState]:
        _tree.check_state(fn, state, DifferentiallyPrivateAggregateState)
        if params is not None:  # one example's gradient must be shaped like the params
            one = jax.tree.map(lambda u: jax.ShapeDtypeStruct(jnp.shape(u)[1:], u.dtype), updates)
            _tree.check_same_structure(fn, "updates (one example)", one, "params", params)
            _tree.check_same_shapes(fn, "updates (one example)", one, "params", params)
        hp = values(state.hparams)
        sums, _ = per_example_global_norm_clip(updates, hp["l2_norm_clip"])
        leaves, treedef = jax.tree.flatten(sums)
        batch = jnp.shape(jax.tree.leaves(updates)[0])[0] if leaves else 1
        new_key, *keys = jax.random.split(jax.random.wrap_key_data(state.rng_key), len(leaves) + 1)
        std = hp["l2_norm_clip"] * hp["noise_multiplier"]

        def noisy_mean(total: jax.Array, k: jax.Array) -> jax.Array:
            (tc, s) = _tree.upcast(total, std)
            noise = jax.random.normal(k, total.shape, s.dtype)
            return ((tc + s * noise) / batch).astype(total.dtype)

        out = treedef.unflatten([noisy_mean(x, k) for x, k in zip(leaves, keys, strict=True)])
        step = _tree.safe_increment(state.step)
        new_state = DifferentiallyPrivateAggregateState(
            step, jax.random.key_data(new_key), spec.advance(state.hparams, step)
        )
        return out, new_state

    return GradientTransformation(init_fn, update_fn)


def dpsgd(
    learning_rate: ScalarOrSchedule,
    l2_norm_clip: float,
    noise_multiplier: float,
    seed: int | jax.Array,
    momentum: float | None = None,
    nesterov: bool = False,
    *,
    weight_decay: ScalarOrSchedule | None = None,
    mask: MaskOrFn | None = None,
) -> GradientTransformationExtraArgs:
    r"""DP-SGD: :func:`differentially_private_aggregate`, optional momentum, the learning rate.

    ``chain(differentially_private_aggregate(l2_norm_clip, noise_multiplier,
    seed), trace(momentum, nesterov) or identity(), scale_by_learning_rate(lr))``,
    Optax's chain and arguments. Its updates take per-example gradients (a
    batch axis in front of every leaf). The house rule's ``weight_decay``
    (keyword, ``None`` by default) adds :func:`add_decayed_weights` before the
    learning rate; the decay is not private data, so it is not clipped.

    Args:
      learning_rate: :math:`\eta`, a number or a schedule.
      l2_norm_clip: the per-example norm bound :math:`C` > 0.
      noise_multiplier: :math:`\sigma` >= 0.
      seed: an integer seed or a ``jax.random.key`` for the noise.
      momentum: in [0, 1), or None for none.
      nesterov: use Nesterov momentum.
      weight_decay: decoupled weight decay >= 0, a schedule, or None for none.
      mask: which parameters to decay; all by default.

    Returns:
      A GradientTransformationExtraArgs.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> loss = lambda w, x: jnp.sum((w - x) ** 2)
      >>> xs = jnp.array([[1.0, 1.0], [1.0, 0.0], [3.0, 0.0]])
      >>> tx = gc.dpsgd(0.1, l2_norm_clip=1.0, noise_multiplier=0.0, seed=0)
      >>> w = jnp.zeros(2)
      >>> grads = jax.vmap(jax.grad(loss), in_axes=(None, 0))(w, xs)  # per example
      >>> u, _ = tx.update(grads, tx.init(w))
      >>> [round(float(x), 4) for x in u]
      [0.0902, 0.0236]

    References:
      Abadi, Chu, Goodfellow, McMahan, Mironov, Talwar and Zhang, Deep Learning
      with Differential Privacy, CCS 2016.
    """
    if momentum is not None:
        _check.decay_rate("dpsgd", "momentum", momentum)
    return chain(
        differentially_private_aggregate(l2_norm_clip, noise_multiplier, key=seed),
        trace(momentum, nesterov) if momentum is not None else identity(),
        *optional_weight_decay("dpsgd", weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
