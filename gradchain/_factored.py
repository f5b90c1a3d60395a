r"""Adafactor's factored second moments (Shazeer and Stern, 2018).

For a matrix gradient :math:`G \in \mathbb{R}^{n \times m}`, Adam keeps an
:math:`n \times m` moving average of :math:`G^2`; Adafactor keeps its row means
:math:`R \in \mathbb{R}^n` and column means :math:`C \in \mathbb{R}^m` and
rebuilds the full estimate as the rank-one :math:`\hat V = R C^\top / \bar R`
(:math:`\bar R` the mean of :math:`R`), so the state grows as :math:`n + m`.

Which axes the state keeps, for every leaf (a later sharding of the state
derives its specs from this):

- A leaf is *factored* when ``factored=True``, it has at least two axes, and its
  second-largest axis has at least ``min_dim_size_to_factor`` entries. Its two
  largest axes are ``d0`` (the largest) and ``d1`` (the second-largest); between
  axes of equal size, the later one counts as the larger (a stable sort of the
  shape), so a square matrix has ``d0 = 1`` and ``d1 = 0``.
- ``v_row`` of a factored leaf is the mean over ``d0``: the parameter's shape
  with axis ``d0`` deleted. ``v_col`` is the mean over ``d1``: the shape with
  axis ``d1`` deleted. Every other axis (a leading layer or head axis, say) is
  kept in both. ``v`` is a placeholder: one zero, shape ``(1,)``.
- An unfactored leaf (a scalar, a vector, a small matrix) keeps ``v`` of the
  parameter's shape, and ``v_row`` and ``v_col`` are ``(1,)`` placeholders.

The placeholders have Optax's shape, so ``v_row``, ``v_col`` and ``v`` have
the shapes of Optax's, and they are not zero-size: Orbax refuses to save arrays
with no elements (only a parameter with no elements has a zero-size ``v``).

So a state's sharding follows from the parameter's ``PartitionSpec``: ``v_row``
takes it with the entry of ``d0`` removed, ``v_col`` with the entry of ``d1``
removed, ``v`` takes it unchanged, and the placeholders are replicated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradchain import _check, _explicit, _tree
from gradchain._base import GradientTransformation, Params, ScalarOrSchedule, Updates
from gradchain._flat_params import refuse_flat_params
from gradchain._hyperparams import Hyperparams, HyperparamSpec, values

_FN = "scale_by_factored_rms"


class FactoredState(NamedTuple):
    """State of :func:`scale_by_factored_rms` (Optax's name, for ported code).

    The module docstring says which axes ``v_row`` and ``v_col`` keep.
    """

    step: jax.Array  # int32[], updates seen so far
    v_row: Updates  # per leaf: mean of g^2 over axis d0 (factored), else a (1,) placeholder
    v_col: Updates  # per leaf: mean of g^2 over axis d1 (factored), else a (1,) placeholder
    v: Updates  # per leaf: EMA of g^2 (unfactored), else a (1,) placeholder
    hparams: Hyperparams


def factored_axes(
    shape: tuple[int, ...], factored: bool, min_dim_size_to_factor: int
) -> tuple[int, int] | None:
    """``(d1, d0)``: the second-largest and the largest axis of a factored leaf, else None.

    Ties go to the later axis (a stable sort), so a square matrix gives ``(0, 1)``.

    Example:
      >>> from gradchain._factored import factored_axes
      >>> factored_axes((4, 256, 128), True, 128), factored_axes((4, 256, 64), True, 128)
      ((2, 1), None)
    """
    if not factored or len(shape) < 2:
        return None
    order = np.argsort(np.asarray(shape), kind="stable")
    d1, d0 = int(order[-2]), int(order[-1])
    if shape[d1] < min_dim_size_to_factor:
        return None
    return d1, d0


_PLACEHOLDER = (1,)  # the shape of an unused moment (Optax's); never zero-size


def _without(shape: tuple[int, ...], axis: int) -> tuple[int, ...]:
    return shape[:axis] + shape[axis + 1 :]


def _state_shapes(
    shape: tuple[int, ...], factored: bool, min_dim: int
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """The shapes of (v_row, v_col, v) for a parameter of ``shape``."""
    axes = factored_axes(shape, factored, min_dim)
    if axes is None:
        return _PLACEHOLDER, _PLACEHOLDER, shape
    d1, d0 = axes
    return _without(shape, d0), _without(shape, d1), _PLACEHOLDER


def _stat_dtype(dtype: Any) -> Any:
    """The real dtype of a parameter's second moments (float32 for complex64 and integers)."""
    if not jnp.issubdtype(dtype, jnp.inexact):
        return jnp.dtype(jnp.float32)
    return jnp.finfo(dtype).dtype


def _param_shape(
    v_row: tuple[int, ...], v_col: tuple[int, ...], v: tuple[int, ...], factored: bool, min_dim: int
) -> tuple[int, ...] | str:
    """The parameter shape a leaf's state was built for (for error messages).

    A state whose ``v_row`` and ``v_col`` are both placeholders is an unfactored
    leaf's (``v`` is then the parameter's shape), but for a (1, 1) matrix
    factored with ``min_dim_size_to_factor=1``, which the shapes cannot tell from
    a (1,) vector: the message names the vector.
    """
    if v_row == v_col == _PLACEHOLDER:
        return v
    n = len(v_row) + 1
    for d0 in range(n):
        for d1 in range(n):
            if d1 == d0:
                continue
            size = v_col[d0 if d0 < d1 else d0 - 1] if len(v_col) == n - 1 else -1
            shape = (*v_row[:d0], size, *v_row[d0:])
            if size >= 0 and _state_shapes(shape, factored, min_dim)[:2] == (v_row, v_col):
                return shape
    return f"with factored moments of shapes {v_row} and {v_col}"


def _check_leaf_shapes(
    updates: Updates, state: FactoredState, factored: bool, min_dim: int
) -> None:
    flat = jax.tree_util.tree_flatten_with_path(updates)[0]
    for (path, g), vr, vc, v in zip(
        flat,
        jax.tree.leaves(state.v_row),
        jax.tree.leaves(state.v_col),
        jax.tree.leaves(state.v),
        strict=True,
    ):
        have = (tuple(vr.shape), tuple(vc.shape), tuple(v.shape))
        if _state_shapes(tuple(jnp.shape(g)), factored, min_dim) != have:
            raise ValueError(
                f"{_FN}: `updates` and `state` disagree in shape at {_tree.keystr(path)}: "
                f"{tuple(jnp.shape(g))} against {_param_shape(*have, factored, min_dim)}. "
                f"gradchain never broadcasts one against the other; give the updates the "
                f"parameter's shape, and use the state from this transformation's init."
            )


def _power_decay(step: jax.Array, decay_rate: jax.Array) -> tuple[jax.Array, jax.Array]:
    r"""Adafactor's :math:`(\hat\beta_t, 1 - \hat\beta_t) = (1 - t^{-c}, t^{-c})`, t = step + 1.

    The weight of the new gradient is :math:`t^{-c}` itself, not ``1 - (1 - t**-c)``
    as Optax computes it: in float32 that difference rounds ``t**-c`` to a multiple
    of 2**-24 or so, up to 0.2% of it at t = 1e6 (3.7e-4 at exactly t = 1e6).
    """
    new_weight = (step.astype(decay_rate.dtype) + 1) ** -decay_rate
    return 1 - new_weight, new_weight


def scale_by_factored_rms(
    factored: bool = True,
    decay_rate: ScalarOrSchedule = 0.8,
    step_offset: int = 0,
    min_dim_size_to_factor: int = 128,
    epsilon: ScalarOrSchedule = 1e-30,
    decay_rate_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
) -> GradientTransformation:
    r"""Divides updates by a factored estimate of their root mean square (Adafactor).

    With :math:`t` the update's number (1 for the first), :math:`\hat\beta_t =
    1 - t^{-c}` (``c = decay_rate``) and :math:`S = G^2 + \epsilon_1`:

    - factored leaves: :math:`R_t = \hat\beta_t R_{t-1} + (1-\hat\beta_t)\,
      \mathrm{mean}_{d_0} S`, :math:`C_t = \hat\beta_t C_{t-1} + (1-\hat\beta_t)\,
      \mathrm{mean}_{d_1} S`, :math:`U = G / \sqrt{(R_t / \bar R_t) \otimes C_t}`
      (the module docstring says which axes :math:`d_0, d_1` are);
    - other leaves: :math:`V_t = \hat\beta_t V_{t-1} + (1-\hat\beta_t) S`,
      :math:`U = G / \sqrt{V_t}`.

    Since :math:`\hat\beta_1 = 0`, no bias correction is needed. Complex
    gradients use :math:`|G|^2`, and the moments are kept in the real dtype.

    Differences from Optax 0.2.8: ``update`` needs no ``params`` (the shapes come
    from the updates); a ``step_offset`` larger than the step is treated as a
    fresh start (:math:`t = 1`, :math:`\hat\beta = 0`) where Optax raises
    ``t <= 0`` to the power ``-c`` and returns NaN updates; the weight of the
    new statistics is :math:`t^{-c}` computed directly (see ``_power_decay``);
    unused moments are ``(1,)`` zeros, as in Optax, but of the moments' real
    dtype (float32 for complex64 parameters, where Optax keeps complex64).

    Args:
      factored: whether to factor the moments of leaves with two large axes.
      decay_rate: the exponent :math:`c` of :math:`\hat\beta_t = 1 - t^{-c}`, in
        (0, 1] (the paper uses 0.8), or a schedule. With ``decay_rate_fn`` it
        is that function's second argument.
      step_offset: a step number, >= 0, from which :math:`t` counts again
        (fine-tuning from a pre-trained state): :math:`t = \max(s - o, 0) + 1`
        at step :math:`s`.
      min_dim_size_to_factor: the size, > 0, that a leaf's second-largest axis
        must reach for the leaf to be factored.
      epsilon: :math:`\epsilon_1` > 0 added to :math:`G^2` (the paper's 1e-30).
      decay_rate_fn: ``f(i, decay_rate) -> beta``, called with the int32 step
        index :math:`i = t - 1` and the float32 ``decay_rate``; the power
        schedule above by default (Zhai et al., 2021 cap it, e.g.
        ``lambda i, c: jnp.minimum(1 - (i + 1.0) ** -0.8, c)`` with ``c = 0.999``).

    Returns:
      A GradientTransformation whose state is a FactoredState.

    Raises:
      ValueError: for a number out of range.
      TypeError: for an integer argument given as another type.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.scale_by_factored_rms(min_dim_size_to_factor=2)
      >>> g = jnp.array([[1.0, 2.0], [3.0, 4.0]])
      >>> state = tx.init(g)
      >>> [s.shape for s in (state.v_row, state.v_col, state.v)]
      [(2,), (2,), (1,)]
      >>> u, state = tx.update(g, state)
      >>> [[round(float(x), 3) for x in row] for row in u]
      [[0.775, 1.095], [1.039, 0.98]]

    References:
      Shazeer and Stern, Adafactor: Adaptive Learning Rates with Sublinear
      Memory Cost, ICML 2018, Algorithms 4 and 5.
      Zhai et al., Scaling Vision Transformers, CVPR 2022.
    """
    fn = _FN
    _check.in_range(fn, "decay_rate", decay_rate, 0.0, 1.0, lo_open=True, schedule_ok=True)
    _check.positive(fn, "epsilon", epsilon, schedule_ok=True)
    _check.non_negative_int(fn, "step_offset", step_offset)
    _check.positive_int(fn, "min_dim_size_to_factor", min_dim_size_to_factor)
    if decay_rate_fn is not None and not callable(decay_rate_fn):
        raise TypeError(
            f"{fn}: `decay_rate_fn` must be a function of (step, decay_rate) or None; "
            f"got {type(decay_rate_fn).__name__} {decay_rate_fn!r:.60}."
        )
    spec = HyperparamSpec(fn, dict(decay_rate=decay_rate, epsilon=epsilon))

    def init_fn(params: Params) -> FactoredState:
        refuse_flat_params(
            "scale_by_factored_rms", "each leaf's shape (its rows and columns are factored)", params
        )

        def zeros(p: Any, which: int) -> jax.Array:
            # Each moment sharded like the parameter's axes it keeps (see _sharding.py).
            shape = _state_shapes(tuple(p.shape), factored, min_dim_size_to_factor)[which]
            axes = factored_axes(tuple(p.shape), factored, min_dim_size_to_factor)
            if axes is None or which == 2:
                return _tree.zeros_for(p, shape, _stat_dtype(p.dtype))
            drop = axes[1 - which]  # v_row drops d0, v_col drops d1
            kept = tuple(a for a in range(len(p.shape)) if a != drop)
            return _explicit.zeros_along(p, kept, _stat_dtype(p.dtype))

        return FactoredState(
            step=jnp.zeros([], jnp.int32),
            v_row=jax.tree.map(lambda p: zeros(p, 0), params),
            v_col=jax.tree.map(lambda p: zeros(p, 1), params),
            v=jax.tree.map(lambda p: zeros(p, 2), params),
            hparams=spec.init(),
        )

    def update_fn(
        updates: Updates, state: FactoredState, params: Params | None = None
    ) -> tuple[Updates, FactoredState]:
        del params  # the shapes come from the updates
        _tree.check_state(fn, state, FactoredState)
        for name in ("v_row", "v_col", "v"):
            _tree.check_same_structure(
                fn, "updates", updates, f"state.{name}", getattr(state, name)
            )
        _check_leaf_shapes(updates, state, factored, min_dim_size_to_factor)
        hp = values(state.hparams)
        index = jnp.maximum(state.step - step_offset, 0).astype(jnp.int32)
        if decay_rate_fn is None:
            beta, new_weight = _power_decay(index, hp["decay_rate"])
        else:
            beta = jnp.asarray(decay_rate_fn(index, hp["decay_rate"]), hp["decay_rate"].dtype)
            new_weight = 1 - beta
        scalars = (beta, new_weight, hp["epsilon"])

        def leaf(
            g: jax.Array, vr: jax.Array, vc: jax.Array, v: jax.Array
        ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
            gc = g.astype(_tree.compute_dtype(g.dtype, *(x.dtype for x in scalars)))
            b, w, eps = (x.astype(_stat_dtype(gc.dtype)) for x in scalars)
            sq = _tree.abs_sq(gc).real + eps
            axes = factored_axes(g.shape, factored, min_dim_size_to_factor)
            if axes is None:
                new_v = b * v.astype(sq.dtype) + w * sq
                out = gc * jax.lax.rsqrt(new_v).astype(gc.dtype)
                return out.astype(g.dtype), vr, vc, new_v.astype(v.dtype)
            d1, d0 = axes
            new_r = b * vr.astype(sq.dtype) + w * jnp.mean(sq, axis=d0)
            new_c = b * vc.astype(sq.dtype) + w * jnp.mean(sq, axis=d1)
            # R keeps axis d1 at position d1 - (d0 < d1) once d0 is gone.
            r_mean = jnp.mean(new_r, axis=d1 - 1 if d1 > d0 else d1, keepdims=True)
            row_factor = jax.lax.rsqrt(new_r / r_mean)
            col_factor = jax.lax.rsqrt(new_c)
            scaling = jnp.expand_dims(row_factor, d0) * jnp.expand_dims(col_factor, d1)
            out = gc * scaling.astype(gc.dtype)
            return out.astype(g.dtype), new_r.astype(vr.dtype), new_c.astype(vc.dtype), v

        updates, v_row, v_col, v = _tree.map_leaves(
            leaf, 4, updates, state.v_row, state.v_col, state.v
        )
        step = _tree.safe_increment(state.step)
        return updates, FactoredState(step, v_row, v_col, v, spec.advance(state.hparams, step))

    return GradientTransformation(init_fn, update_fn)
