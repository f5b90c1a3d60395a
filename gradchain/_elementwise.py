r"""Small elementwise transforms: centring, gradient noise, non-negativity, NaN zeroing.

Also :func:`scale_gradient`, which is not a transformation but a function to
use inside a loss: the identity forward, a scaled gradient backward.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradchain import _check, _tree
from gradchain._base import (
    EmptyState,
    GradientTransformation,
    OptState,
    Params,
    ScalarOrSchedule,
    Updates,
    _init_empty,
)
from gradchain._flat_params import refuse_flat_params
from gradchain._hyperparams import Hyperparams, HyperparamSpec, values


def centralize(*, keep_axis: int = 0) -> GradientTransformation:
    r"""Gradient centralization: subtracts from each weight's gradient its mean per output unit.

    For every leaf of two or more dimensions, the mean over all axes but
    ``keep_axis`` is subtracted, so each slice along ``keep_axis`` sums to
    zero; vectors and scalars (biases, scales) pass unchanged, as in the paper.

    The paper centres each output unit's incoming weights. Optax 0.2.8 keeps
    the leading axis (``keep_axis=0``, the default here, for its numbers):
    right for PyTorch's ``(out, in)`` layout, but Flax's ``Dense`` and ``Conv``
    kernels are ``(..., in, out)``, with the output units last. For them pass
    ``keep_axis=-1`` to get the paper's centring.

    Args:
      keep_axis: the axis whose slices are centred separately (an int; a
        negative one counts from the end).

    Returns:
      A GradientTransformation whose state is an EmptyState.

    Raises:
      TypeError: if ``keep_axis`` is not an int.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> g = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
      >>> tx = gc.centralize()
      >>> u, _ = tx.update(g, tx.init(g))
      >>> u[0].tolist()
      [-1.0, 0.0, 1.0]
      >>> u, _ = gc.centralize(keep_axis=-1).update(g, tx.init(g))  # Flax's (in, out)
      >>> u[:, 0].tolist()
      [-1.5, 1.5]

    References:
      Yong et al., Gradient Centralization: A New Optimization Technique for
      Deep Neural Networks, ECCV 2020, equation 4.
    """
    fn = "centralize"
    if isinstance(keep_axis, bool) or not isinstance(keep_axis, int | np.integer):
        raise TypeError(
            f"{fn}: `keep_axis` must be an int; got {type(keep_axis).__name__} {keep_axis!r:.60}."
        )

    def leaf(u: jax.Array) -> jax.Array:
        if u.ndim < 2:
            return u
        keep = int(keep_axis) % u.ndim
        uc = u.astype(_tree.compute_dtype(u.dtype))
        mean = jnp.mean(uc, axis=tuple(a for a in range(u.ndim) if a != keep), keepdims=True)
        return (uc - mean).astype(u.dtype)

    def update_fn(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]:
        refuse_flat_params("centralize", "each leaf's shape (the mean over its axes)", updates)
        del params
        _tree.check_state(fn, state, EmptyState)
        return jax.tree.map(leaf, updates), state

    return GradientTransformation(_init_empty, update_fn)


class AddNoiseState(NamedTuple):
    """State of :func:`add_noise`."""

    step: jax.Array  # int32[], updates seen so far: the t of the variance
    rng_key: jax.Array  # uint32 raw key data (jax.random.key_data), for the next update
    hparams: Hyperparams


def _key_from(fn: str, key: Any, seed: Any) -> jax.Array:
    """A typed PRNG key from Optax's ``key`` or ``seed`` argument; raises if neither or both."""
    if key is not None and seed is not None:
        raise ValueError(
            f"{fn}: give `key` or `seed`, not both; got key={key!r} and seed={seed!r}."
        )
    given = key if key is not None else seed
    if given is None:
        raise ValueError(
            f"{fn}: `key` is required: an int seed or a jax.random key, e.g. key=0 or "
            f"key=jax.random.key(0). (Optax 0.2.8 falls back to seed 0 with a warning; "
            f"gradchain asks, so that no two runs share their noise by accident.)"
        )
    return _check.prng_key(fn, "key", given)


def add_noise(
    eta: ScalarOrSchedule,
    gamma: ScalarOrSchedule,
    key: jax.Array | int | None = None,
    *,
    seed: int | None = None,
) -> GradientTransformation:
    r"""Adds annealed Gaussian noise to the updates: :math:`u + \mathcal N(0, \sigma_t^2)`.

    .. math::
      \sigma_t^2 = \frac{\eta}{(1 + t)^\gamma}, \quad t = 0, 1, 2, \ldots

    with :math:`t` the number of earlier updates (``state.step``).

    The key is explicit and reproducible: ``key`` (or Optax's older ``seed``)
    is required; an int seed, a ``jax.random.key`` or a ``jax.random.PRNGKey``
    (which Optax 0.2.8 refuses). The state keeps it as raw key data
    (``state.rng_key``, uint32), so it serializes with flax and orbax, which
    typed keys do not. Each update splits it in two, ``next, noise =
    split(rng_key)``, stores ``next`` and draws leaf ``i`` (in
    ``jax.tree.leaves`` order) from ``split(noise, n_leaves)[i]``: the same
    draws as Optax's. The noise is drawn in at least float32 and added in
    that precision.

    Args:
      eta: :math:`\eta` >= 0, the initial variance.
      gamma: :math:`\gamma` >= 0, the annealing exponent (0.55 in the paper).
      key: an int seed or a single JAX PRNG key; required unless ``seed`` is given.
      seed: an int seed, Optax's deprecated spelling of ``key``.

    Returns:
      A GradientTransformation whose state is an AddNoiseState.

    Raises:
      ValueError: for a number out of range, or without a key (or with both
        ``key`` and ``seed``); at update, if ``params`` are given and do not
        match the updates.
      TypeError: if ``key`` is neither an int nor a single key.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.add_noise(eta=0.01, gamma=0.55, key=0)
      >>> state = tx.init(jnp.zeros(1000))
      >>> u, state = tx.update(jnp.zeros(1000), state)
      >>> round(float(jnp.std(u)), 1)  # sqrt(0.01) at t = 0
      0.1
      >>> int(state.step)
      1

    References:
      Neelakantan et al., Adding Gradient Noise Improves Learning for Very
      Deep Networks, 2015, section 2.
    """
    fn = "add_noise"
    _check.non_negative(fn, "eta", eta, schedule_ok=True)
    _check.non_negative(fn, "gamma", gamma, schedule_ok=True)
    typed_key = _key_from(fn, key, seed)
    impl = jax.random.key_impl(typed_key)
    spec = HyperparamSpec(fn, dict(eta=eta, gamma=gamma))

    def init_fn(params: Params) -> AddNoiseState:
        del params
        # A copy: under a mesh it is laid out on it like `step`, as `update` returns it.
        key_data = jnp.array(jax.random.key_data(typed_key))
        return AddNoiseState(jnp.zeros([], jnp.int32), key_data, spec.init())

    def update_fn(
        updates: Updates, state: AddNoiseState, params: Params | None = None
    ) -> tuple[Updates, AddNoiseState]:
        _tree.check_state(fn, state, AddNoiseState)
        if params is not None:
            _tree.check_matches(fn, updates, "params", params)
        hp = values(state.hparams)
        t = state.step.astype(hp["eta"].dtype)
        std = jnp.sqrt(hp["eta"] / (1 + t) ** hp["gamma"])
        next_key, noise_key = jax.random.split(jax.random.wrap_key_data(state.rng_key, impl=impl))
        leaves, treedef = jax.tree.flatten(updates)
        keys = jax.random.split(noise_key, len(leaves)) if leaves else []

        def leaf(u: jax.Array, k: jax.Array) -> jax.Array:
            uc, s = _tree.upcast(u, std)
            noise = jax.random.normal(k, u.shape, uc.dtype)
            return (uc + s * noise).astype(u.dtype)

        out = treedef.unflatten([leaf(u, k) for u, k in zip(leaves, keys, strict=True)])
        step = _tree.safe_increment(state.step)
        new_key = jax.random.key_data(next_key)
        return out, AddNoiseState(step, new_key, spec.advance(state.hparams, step))

    return GradientTransformation(init_fn, update_fn)


class NonNegativeParamsState(NamedTuple):
    """State of :func:`keep_params_nonnegative` (empty; Optax's name)."""


def _init_nonnegative(params: Params) -> NonNegativeParamsState:
    del params
    return NonNegativeParamsState()


def keep_params_nonnegative() -> GradientTransformation:
    r"""Shortens updates so that no parameter goes below zero.

    Where :math:`w + u < 0`, :math:`u \leftarrow -w`. Put it last in a chain.
    A negative parameter is moved to zero (as in Optax).

    Returns:
      A GradientTransformation whose state is a NonNegativeParamsState.

    Raises:
      ValueError: at update, if ``params`` are missing or do not match the updates.
      TypeError: at update, for complex leaves (they have no order).

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> params = jnp.array([1.0, 0.5, -1.0])
      >>> tx = gc.keep_params_nonnegative()
      >>> u, _ = tx.update(jnp.array([-2.0, 0.25, 0.5]), tx.init(params), params)
      >>> [float(x) for x in u]
      [-1.0, 0.25, 1.0]
    """
    fn = "keep_params_nonnegative"

    def leaf(u: jax.Array, p: jax.Array) -> jax.Array:
        if jnp.iscomplexobj(u) or jnp.iscomplexobj(p):
            raise TypeError(
                f"{fn}: complex parameters have no sign to keep; got {p.dtype} parameters and "
                f"{u.dtype} updates. Mask them out (gc.masked) or split them into real parts."
            )
        uc, pc = _tree.upcast(u, p)
        return jnp.where(pc + uc < 0, -pc, uc).astype(u.dtype)

    def update_fn(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]:
        _tree.check_state(fn, state, NonNegativeParamsState)
        _tree.require_params(fn, params)
        _tree.check_matches(fn, updates, "params", params)
        return jax.tree.map(leaf, updates, params), state

    return GradientTransformation(_init_nonnegative, update_fn)


class ZeroNansState(NamedTuple):
    """State of :func:`zero_nans` (Optax's name and field)."""

    found_nan: Any  # a bool[] per parameter leaf: whether the last update had a NaN there


def zero_nans() -> GradientTransformation:
    """Replaces NaNs in the updates by zeros, and records per leaf whether it found any.

    ``state.found_nan`` has the parameters' tree with one bool per leaf, True
    where the last update had a NaN; the transform itself does not read it.
    Infinities pass unchanged (clip them, or skip the step with
    :func:`apply_if_finite`).

    Returns:
      A GradientTransformation whose state is a ZeroNansState.

    Raises:
      ValueError: at update, if the updates' tree differs from the state's (or
        from the params', when given).

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.zero_nans()
      >>> grads = {"a": jnp.array([1.0, jnp.nan]), "b": jnp.array([2.0])}
      >>> u, state = tx.update(grads, tx.init(grads))
      >>> [float(x) for x in u["a"]], bool(state.found_nan["a"]), bool(state.found_nan["b"])
      ([1.0, 0.0], True, False)
    """
    fn = "zero_nans"

    def init_fn(params: Params) -> ZeroNansState:
        return ZeroNansState(jax.tree.map(lambda _: jnp.zeros([], jnp.bool_), params))

    def update_fn(
        updates: Updates, state: ZeroNansState, params: Params | None = None
    ) -> tuple[Updates, ZeroNansState]:
        _tree.check_state(fn, state, ZeroNansState)
        _tree.check_same_structure(fn, "updates", updates, "state.found_nan", state.found_nan)
        if params is not None:
            _tree.check_matches(fn, updates, "params", params)
        found = jax.tree.map(lambda u: jnp.any(jnp.isnan(u)), updates)
        out = jax.tree.map(lambda u: jnp.where(jnp.isnan(u), jnp.zeros_like(u), u), updates)
        return out, ZeroNansState(found)

    return GradientTransformation(init_fn, update_fn)


@jax.custom_vjp
def _scaled_identity(x: jax.Array, scale: jax.Array) -> jax.Array:
    del scale
    return x


def _scaled_identity_fwd(x: jax.Array, scale: jax.Array) -> tuple[jax.Array, jax.Array]:
    return x, scale


def _scaled_identity_bwd(scale: jax.Array, g: jax.Array) -> tuple[jax.Array, jax.Array]:
    gc, s = _tree.upcast(g, scale)
    return (gc * s).astype(g.dtype), jnp.zeros_like(scale)


_scaled_identity.defvjp(_scaled_identity_fwd, _scaled_identity_bwd)


def scale_gradient(inputs: Any, scale: float) -> Any:
    r"""The identity in the forward pass; multiplies the gradient by ``scale`` in the backward pass.

    Use it inside a loss to slow down (0 < scale < 1), stop (0) or reverse
    (-1, a gradient-reversal layer) the gradient reaching what computed
    ``inputs``, without changing the loss. Leaves that are not floating
    (integers, bools) pass through untouched. The scaling is done in at least
    float32; gradients keep their dtype.

    Args:
      inputs: a tree of arrays.
      scale: the factor of the backward pass, a finite number (or a traced scalar).

    Returns:
      ``inputs``, unchanged in value.

    Raises:
      ValueError: if ``scale`` is a NaN or infinite number.
      TypeError: if it is not a number.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> f = lambda x: jnp.sum(gc.scale_gradient(x, 0.5) ** 2)
      >>> float(f(jnp.array(3.0))), float(jax.grad(f)(jnp.array(3.0)))
      (9.0, 3.0)

    References:
      Ganin and Lempitsky, Unsupervised Domain Adaptation by Backpropagation,
      ICML 2015 (the gradient reversal layer, ``scale=-1``).
    """
    _check.finite("scale_gradient", "scale", scale)
    factor = jnp.asarray(scale, jnp.result_type(float))

    def leaf(x: Any) -> Any:
        if isinstance(x, jax.Array | np.ndarray | float) and jnp.issubdtype(
            jnp.result_type(x), jnp.inexact
        ):
            return _scaled_identity(jnp.asarray(x), factor)
        return x

    return jax.tree.map(leaf, inputs)
