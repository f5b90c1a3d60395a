r"""SM3 (Anil, Gupta, Koren and Singer, 2019): Adagrad's memory cut to one vector per axis.

SM3-II with the cover of a tensor by its slices along each axis: for a leaf of
shape :math:`(n_1, \dots, n_k)` the state keeps :math:`k` accumulators
:math:`\mu^{(i)} \in \mathbb{R}^{n_i}`, and at every step

.. math::
  \nu_t(j) = \min_i \mu^{(i)}_{t-1}(j_i) + g_t(j)^2, \qquad
  \mu^{(i)}_t(r) = \max_{j : j_i = r} \nu_t(j), \qquad
  u_t(j) = g_t(j) / \sqrt{\nu_t(j) + \epsilon}

(:math:`u_t(j) = 0` where :math:`\nu_t(j) = 0`). For a vector or a scalar the
one accumulator has the leaf's shape and SM3 is diagonal Adagrad. Optax 0.2.8
adds a moving-average form (``b2 < 1``: :math:`\nu_t = (1-\beta_2) g_t^2 +
\beta_2 \min_i \mu^{(i)}_{t-1}`) and momentum on :math:`u_t`; both are kept.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradchain import _check, _explicit, _tree
from gradchain._base import GradientTransformation, Params, ScalarOrSchedule, Updates
from gradchain._flat_params import refuse_flat_params
from gradchain._hyperparams import Hyperparams, HyperparamSpec, values


class ScaleBySM3State(NamedTuple):
    """State of :func:`scale_by_sm3` (Optax's name and field names, for ported code)."""

    step: jax.Array  # int32[], updates seen so far
    mu: Updates  # per leaf, a list of one accumulator per axis (one of its shape for ndim <= 1)
    nu: Updates  # momentum of the scaled updates, in the parameters' dtypes
    hparams: Hyperparams


def _accumulator_dtype(dtype: Any) -> Any:
    """float32 or wider, and real: the accumulators are a few vectors, so precision is cheap."""
    return jnp.finfo(_tree.compute_dtype(dtype)).dtype


def _expanded(acc: jax.Array, axis: int, ndim: int) -> jax.Array:
    """An axis's accumulator reshaped to broadcast along that axis: [1, .., n_i, .., 1]."""
    return acc.reshape([1] * axis + [acc.shape[0]] + [1] * (ndim - axis - 1))


def scale_by_sm3(
    b1: ScalarOrSchedule = 0.9, b2: ScalarOrSchedule = 1.0, eps: ScalarOrSchedule = 1e-8
) -> GradientTransformation:
    r"""Divides updates by SM3-II's cover-based second moments, with momentum.

    The module docstring gives the equations. The update is the momentum
    :math:`m_t = \beta_1 m_{t-1} + (1-\beta_1) u_t`.

    The accumulators are kept in float32 (or wider) whatever the parameters'
    dtype: they are sums of squares that only grow, which bfloat16 stops adding
    to once they are 256 times a step's square, and they cost a few vectors.
    Complex gradients use :math:`|g|^2`. Differences from Optax 0.2.8: scalar
    leaves work (Optax raises IndexError), complex parameters are accepted
    (Optax refuses them), and the state has a step counter and the
    hyperparameters.

    Args:
      b1: the momentum :math:`\beta_1` in [0, 1).
      b2: 1 for SM3's sums (the paper); in (0, 1) for Optax's moving average.
      eps: >= 0, added to :math:`\nu_t` under the root.

    Returns:
      A GradientTransformation whose state is a ScaleBySM3State.

    Raises:
      ValueError: if a number is out of range.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.scale_by_sm3(b1=0.0, eps=0.0)
      >>> g = jnp.array([[3.0, 0.0], [1.0, 2.0]])
      >>> state = tx.init(g)
      >>> [a.shape for a in state.mu]  # one accumulator per axis
      [(2,), (2,)]
      >>> u, state = tx.update(g, state)
      >>> [[round(float(x), 3) for x in row] for row in u]  # the first step is sign(g)
      [[1.0, 0.0], [1.0, 1.0]]
      >>> [[round(float(x), 3) for x in a] for a in state.mu]  # maxima over rows, columns
      [[9.0, 4.0], [9.0, 4.0]]

    References:
      Anil, Gupta, Koren and Singer, Memory-Efficient Adaptive Optimization,
      NeurIPS 2019, Algorithm SM3-II.
    """
    fn = "scale_by_sm3"
    _check.decay_rate(fn, "b1", b1, schedule_ok=True)
    _check.in_range(fn, "b2", b2, 0.0, 1.0, lo_open=True, schedule_ok=True)
    _check.non_negative(fn, "eps", eps, schedule_ok=True)
    spec = HyperparamSpec(fn, dict(b1=b1, b2=b2, eps=eps), rates=("b1", "b2"))

    def init_fn(params: Params) -> ScaleBySM3State:
        refuse_flat_params("scale_by_sm3", "each leaf's shape (one accumulator per axis)", params)

        def accumulators(p: Any) -> list[jax.Array]:
            dt = _accumulator_dtype(p.dtype)
            if len(p.shape) <= 1:
                return [_tree.zeros_for(p, tuple(p.shape), dt)]
            # One vector per axis, sharded like that axis of the parameter (see _sharding.py).
            return [_explicit.zeros_along(p, (a,), dt) for a in range(len(p.shape))]

        return ScaleBySM3State(
            step=jnp.zeros([], jnp.int32),
            mu=jax.tree.map(accumulators, params),
            nu=_tree.zeros_like(params),
            hparams=spec.init(),
        )

    def update_fn(
        updates: Updates, state: ScaleBySM3State, params: Params | None = None
    ) -> tuple[Updates, ScaleBySM3State]:
        del params
        _tree.check_state(fn, state, ScaleBySM3State)
        _tree.check_matches(fn, updates, "state.nu", state.nu)
        hp = values(state.hparams)
        comp = state.hparams.complement
        # b2 = 1 is SM3's plain sum: the new square enters with weight 1, not 1 - b2 = 0.
        new_weight = jnp.where(hp["b2"] == 1, jnp.ones_like(comp["b2"]), comp["b2"])
        scalars = (hp["b1"], comp["b1"], hp["b2"], new_weight, hp["eps"])
        treedef = jax.tree.structure(updates)
        mus = treedef.flatten_up_to(state.mu)

        def leaf(g: jax.Array, accs: list[jax.Array], m: jax.Array) -> tuple[Any, ...]:
            gc = g.astype(_tree.compute_dtype(g.dtype, *(x.dtype for x in scalars)))
            real = jnp.finfo(gc.dtype).dtype
            b1_, omb1, b2_, w, eps_ = (x.astype(real) for x in scalars)
            dtypes = [a.dtype for a in accs]
            accs = [a.astype(b2_.dtype) for a in accs]
            if g.ndim <= 1:
                previous = accs[0]
            else:
                previous = functools.reduce(
                    jnp.minimum, [_expanded(a, i, g.ndim) for i, a in enumerate(accs)]
                )
            nu = w * _tree.abs_sq(gc).real + b2_ * previous
            scaling = jnp.where(nu > 0, jax.lax.rsqrt(nu + eps_), jnp.zeros_like(nu))
            scaled = gc * scaling.astype(gc.dtype)
            new_m = omb1.astype(gc.dtype) * scaled + b1_.astype(gc.dtype) * m.astype(gc.dtype)
            if g.ndim <= 1:
                new_accs = [nu]
            else:
                new_accs = [
                    jnp.max(nu, axis=[k for k in range(g.ndim) if k != i], initial=0.0)
                    for i in range(g.ndim)
                ]
            stored = [a.astype(dt) for a, dt in zip(new_accs, dtypes, strict=True)]
            return new_m.astype(g.dtype), stored, new_m.astype(m.dtype)

        outs = [
            leaf(g, list(a), m)
            for g, a, m in zip(
                jax.tree.leaves(updates), mus, jax.tree.leaves(state.nu), strict=True
            )
        ]
        new_updates = treedef.unflatten([o[0] for o in outs])
        mu = treedef.unflatten([o[1] for o in outs])
        nu = treedef.unflatten([o[2] for o in outs])
        step = _tree.safe_increment(state.step)
        return new_updates, ScaleBySM3State(step, mu, nu, spec.advance(state.hparams, step))

    return GradientTransformation(init_fn, update_fn)
