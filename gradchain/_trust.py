r"""Per-layer scalings: trust ratios (LARS, LAMB, Fromage), block norms, update normalizers.

Each multiplies every leaf (a "layer" or "block": a weight matrix, a bias
vector) by one scalar computed from that leaf's parameters or updates, or the
whole update by one scalar from its global norm. The scalars are computed in at
least float32; updates keep their dtype. Each hyperparameter lives in the state
(see :func:`get_hyperparams`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradchain import _check, _tree
from gradchain._base import (
    EmptyState,
    GradientTransformation,
    OptState,
    Params,
    ScalarOrSchedule,
    Updates,
)
from gradchain._flat_params import refuse_flat_params
from gradchain._hyperparams import Hyperparams, hyperparam_transform


def _norm(x: jax.Array) -> jax.Array:
    """The l2 (Frobenius) norm of one leaf, real, in the leaf's (upcast) dtype."""
    return jnp.sqrt(jnp.sum(_tree.abs_sq(x).real))


def _scale_leaves_by_params(
    fn: str,
    updates: Updates,
    params: Params | None,
    factor: Callable[[jax.Array, jax.Array], jax.Array],
) -> Updates:
    """``u * factor(u, p)`` leaf by leaf, with ``factor`` computed in the compute dtype."""
    _tree.require_params(fn, params)
    _tree.check_matches(fn, updates, "params", params)

    def leaf(u: jax.Array, p: jax.Array) -> jax.Array:
        dt = _tree.compute_dtype(u.dtype, p.dtype)
        uc, pc = u.astype(dt), p.astype(dt)
        return (uc * factor(uc, pc).astype(dt)).astype(u.dtype)

    return jax.tree.map(leaf, updates, params)


class ScaleByTrustRatioState(NamedTuple):
    """State of :func:`scale_by_trust_ratio` (Optax's name; Optax's holds nothing)."""

    step: jax.Array  # int32[], updates seen so far (drives schedules)
    hparams: Hyperparams


def scale_by_trust_ratio(
    min_norm: ScalarOrSchedule = 0.0,
    trust_coefficient: ScalarOrSchedule = 1.0,
    eps: ScalarOrSchedule = 0.0,
) -> GradientTransformation:
    r"""Scales each leaf's update by its layer-wise trust ratio (LARS, LAMB, Fromage).

    For each leaf, with :math:`n_w = \max(\|w\|, n_{min})` and
    :math:`n_u = \max(\|u\|, n_{min})` (Frobenius norms),

    .. math::
      u \leftarrow u \cdot \begin{cases} c\, n_w / (n_u + \epsilon) & n_w > 0,\ n_u > 0 \\
        1 & \text{else,} \end{cases}

    so every layer moves by :math:`c` times its own size, whatever the scale
    of its gradient. A layer at zero (a fresh bias) keeps its update as is.
    The numbers are Optax 0.2.8's.

    Args:
      min_norm: :math:`n_{min}` >= 0, the floor of both norms.
      trust_coefficient: :math:`c` > 0 (LARS's :math:`\eta`; 1 in LAMB).
      eps: :math:`\epsilon` >= 0, added to the update's norm.

    Returns:
      A GradientTransformation whose state is a ScaleByTrustRatioState.

    Raises:
      ValueError: for a number out of range; at update, if ``params`` are
        missing or do not match the updates.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> params = {"w": jnp.array([3.0, 4.0]), "b": jnp.zeros(2)}
      >>> grads = {"w": jnp.array([0.1, 0.0]), "b": jnp.array([0.5, 0.5])}
      >>> tx = gc.scale_by_trust_ratio()
      >>> u, _ = tx.update(grads, tx.init(params), params)
      >>> [round(float(x), 3) for x in u["w"]], [round(float(x), 3) for x in u["b"]]
      ([5.0, 0.0], [0.5, 0.5])

    References:
      You et al., Large Batch Training of Convolutional Networks, 2017 (LARS).
      You et al., Large Batch Optimization for Deep Learning: Training BERT in
      76 minutes, ICLR 2020 (LAMB).
    """
    fn = "scale_by_trust_ratio"
    _check.non_negative(fn, "min_norm", min_norm, schedule_ok=True)
    _check.positive(fn, "trust_coefficient", trust_coefficient, schedule_ok=True)
    _check.non_negative(fn, "eps", eps, schedule_ok=True)
    hyperparams = dict(min_norm=min_norm, trust_coefficient=trust_coefficient, eps=eps)

    def apply(updates: Updates, params: Params | None, hp: dict[str, jax.Array]) -> Updates:
        refuse_flat_params(
            "scale_by_trust_ratio", "each leaf's norm (a trust ratio per leaf)", updates
        )

        def factor(u: jax.Array, p: jax.Array) -> jax.Array:
            floor, coeff, eps_ = (hp[k].astype(u.real.dtype) for k in hyperparams)
            param_norm = jnp.maximum(_norm(p), floor)
            update_norm = jnp.maximum(_norm(u), floor)
            ratio = coeff * param_norm / (update_norm + eps_)
            return jnp.where((param_norm == 0) | (update_norm == 0), jnp.ones_like(ratio), ratio)

        return _scale_leaves_by_params(fn, updates, params, factor)

    return hyperparam_transform(fn, ScaleByTrustRatioState, hyperparams, apply)


class ScaleByParamBlockNormState(NamedTuple):
    """State of :func:`scale_by_param_block_norm`."""

    step: jax.Array  # int32[], updates seen so far (drives schedules)
    hparams: Hyperparams


class ScaleByParamBlockRmsState(NamedTuple):
    """State of :func:`scale_by_param_block_rms`."""

    step: jax.Array  # int32[], updates seen so far (drives schedules)
    hparams: Hyperparams


def scale_by_param_block_norm(min_scale: ScalarOrSchedule = 1e-3) -> GradientTransformation:
    r"""Multiplies each leaf's update by :math:`\max(\|w\|, s_{min})`, its parameters' norm.

    A block is a leaf of the parameters (a weight matrix, a bias vector).
    With a normalized update this makes steps relative to each block's size,
    as in Adafactor's ``multiply_by_parameter_scale``. Optax 0.2.8's numbers.

    Args:
      min_scale: :math:`s_{min}` >= 0, the smallest factor (so blocks at zero move).

    Returns:
      A GradientTransformation whose state is a ScaleByParamBlockNormState.

    Raises:
      ValueError: if ``min_scale`` is out of range; at update, if ``params``
        are missing or do not match the updates.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> params = {"w": jnp.array([3.0, 4.0]), "b": jnp.zeros(2)}
      >>> tx = gc.scale_by_param_block_norm()
      >>> u, _ = tx.update({"w": jnp.ones(2), "b": jnp.ones(2)}, tx.init(params), params)
      >>> round(float(u["w"][0]), 3), round(float(u["b"][0]), 3)
      (5.0, 0.001)

    References:
      Shazeer and Stern, Adafactor: Adaptive Learning Rates with Sublinear
      Memory Cost, ICML 2018, section 8.
    """
    fn = "scale_by_param_block_norm"
    _check.non_negative(fn, "min_scale", min_scale, schedule_ok=True)

    def apply(updates: Updates, params: Params | None, hp: dict[str, jax.Array]) -> Updates:
        refuse_flat_params("scale_by_param_block_norm", "each leaf's norm", updates)

        def factor(u: jax.Array, p: jax.Array) -> jax.Array:
            return jnp.maximum(_norm(p), hp["min_scale"].astype(u.real.dtype))

        return _scale_leaves_by_params(fn, updates, params, factor)

    return hyperparam_transform(fn, ScaleByParamBlockNormState, dict(min_scale=min_scale), apply)


def scale_by_param_block_rms(min_scale: ScalarOrSchedule = 1e-3) -> GradientTransformation:
    r"""Multiplies each leaf's update by :math:`\max(\mathrm{rms}(w), s_{min})`.

    :math:`\mathrm{rms}(w) = \sqrt{\mathrm{mean}(w^2)}` over the leaf's
    parameters (Optax's docstring says "of the gradient"; its numbers, and
    these, use the parameters). An empty leaf counts as rms 0.

    Args:
      min_scale: :math:`s_{min}` >= 0, the smallest factor.

    Returns:
      A GradientTransformation whose state is a ScaleByParamBlockRmsState.

    Raises:
      ValueError: if ``min_scale`` is out of range; at update, if ``params``
        are missing or do not match the updates.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> params = jnp.array([3.0, 4.0, 0.0, 0.0])
      >>> tx = gc.scale_by_param_block_rms()
      >>> u, _ = tx.update(jnp.ones(4), tx.init(params), params)
      >>> round(float(u[0]), 3)
      2.5

    References:
      Shazeer and Stern, Adafactor: Adaptive Learning Rates with Sublinear
      Memory Cost, ICML 2018, section 8.
    """
    fn = "scale_by_param_block_rms"
    _check.non_negative(fn, "min_scale", min_scale, schedule_ok=True)

    def apply(updates: Updates, params: Params | None, hp: dict[str, jax.Array]) -> Updates:
        refuse_flat_params("scale_by_param_block_rms", "each leaf's RMS", updates)

        def factor(u: jax.Array, p: jax.Array) -> jax.Array:
            rms = jnp.sqrt(jnp.sum(_tree.abs_sq(p).real) / max(p.size, 1))
            return jnp.maximum(rms, hp["min_scale"].astype(u.real.dtype))

        return _scale_leaves_by_params(fn, updates, params, factor)

    return hyperparam_transform(fn, ScaleByParamBlockRmsState, dict(min_scale=min_scale), apply)


def _scale_by_global_norm(updates: Updates, numerator: jax.Array, eps: jax.Array) -> Updates:
    """``u / (||u|| + eps) * numerator`` over the whole tree; zeros where ``||u|| = 0``.

    Divided, then multiplied, in this order: Optax's rounding, bit for bit.
    """
    norm = _tree.global_norm(updates)
    is_zero = norm == 0
    denominator = jnp.where(is_zero, jnp.ones_like(norm), norm + eps.astype(norm.dtype))

    def leaf(u: jax.Array) -> jax.Array:
        dt = _tree.compute_dtype(u.dtype, norm.dtype)
        out = u.astype(dt) / denominator.astype(dt) * numerator.astype(dt)
        return jnp.where(is_zero, jnp.zeros_like(out), out).astype(u.dtype)

    return jax.tree.map(leaf, updates)


class NormalizeByUpdateNormState(NamedTuple):
    """State of :func:`normalize_by_update_norm`."""

    step: jax.Array  # int32[], updates seen so far (drives schedules)
    hparams: Hyperparams


def normalize_by_update_norm(
    scale_factor: ScalarOrSchedule = 1.0, eps: ScalarOrSchedule = 1e-6
) -> GradientTransformation:
    r"""Divides the whole update by its global norm, times a factor.

    :math:`u \leftarrow s\, u / (\|u\| + \epsilon)`, the norm over all leaves
    together. Unlike Optax 0.2.8, whose result is NaN for an all-zero update
    when ``eps = 0``, a zero update stays zero.

    Args:
      scale_factor: :math:`s`, any finite number (Optax's docs descend with -1).
      eps: :math:`\epsilon` >= 0.

    Returns:
      A GradientTransformation whose state is a NormalizeByUpdateNormState.

    Raises:
      ValueError: for a number out of range.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.normalize_by_update_norm(scale_factor=-1.0, eps=0.0)
      >>> u, _ = tx.update({"a": jnp.array([3.0]), "b": jnp.array([4.0])}, tx.init(None))
      >>> round(float(u["a"][0]), 3), round(float(u["b"][0]), 3)
      (-0.6, -0.8)
    """
    fn = "normalize_by_update_norm"
    _check.finite(fn, "scale_factor", scale_factor, schedule_ok=True)
    _check.non_negative(fn, "eps", eps, schedule_ok=True)

    def apply(updates: Updates, params: Params | None, hp: dict[str, jax.Array]) -> Updates:
        del params
        return _scale_by_global_norm(updates, hp["scale_factor"], hp["eps"])

    hyperparams = dict(scale_factor=scale_factor, eps=eps)
    return hyperparam_transform(fn, NormalizeByUpdateNormState, hyperparams, apply)


def normalize() -> GradientTransformation:
    r"""Divides the whole update by its global norm, :math:`u / \|u\|`.

    Optax 0.2.8 has it as ``optax.contrib.normalize``, for SAM's adversarial
    step; its result is NaN for an all-zero update, where this one returns zeros.
    It is :func:`normalize_by_update_norm` with ``eps=0`` and no state.

    Returns:
      A GradientTransformation whose state is an EmptyState.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.normalize()
      >>> u, _ = tx.update(jnp.array([3.0, 4.0]), tx.init(None))
      >>> [round(float(x), 3) for x in u]
      [0.6, 0.8]
      >>> u, _ = tx.update(jnp.zeros(2), tx.init(None))
      >>> [float(x) for x in u]
      [0.0, 0.0]

    References:
      Foret et al., Sharpness-Aware Minimization for Efficiently Improving
      Generalization, ICLR 2021, equation 2.
    """

    def init_fn(params: Params) -> EmptyState:
        del params
        return EmptyState()

    def update_fn(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]:
        del params
        _tree.check_state("normalize", state, EmptyState)
        _tree.check_no_float0("normalize", "updates", updates)
        one, zero = jnp.ones([], jnp.float32), jnp.zeros([], jnp.float32)
        return _scale_by_global_norm(updates, one, zero), state

    return GradientTransformation(init_fn, update_fn)
