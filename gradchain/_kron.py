r"""PSGD-Kron: preconditioned SGD with a Kronecker-factored whitening preconditioner.

Xi-Lin Li's PSGD (2015) fits a preconditioner :math:`P = Q^T Q` online, by
gradient steps of :math:`Q` on a Lie group, without ever inverting or
decomposing anything larger than a triangular solve. "Kron" factors :math:`Q`
per tensor axis and fits it to whiten the gradients (:math:`P \approx
E[g g^T]^{-1/2}`). The factors' arithmetic lives in
:mod:`gradchain._kron_factors`; this module holds the transform and the alias.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradchain import _check, _explicit, _tree
from gradchain import _kron_factors as kf
from gradchain._base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    Params,
    ScalarOrSchedule,
    Updates,
)
from gradchain._combine import chain
from gradchain._flat_params import refuse_flat_params
from gradchain._hyperparams import Hyperparams, HyperparamSpec, values
from gradchain._privacy import _key_data
from gradchain._regularizing import add_decayed_weights
from gradchain._scaling import scale_by_learning_rate
from gradchain._schedules import exponential_decay
from gradchain._wrappers import MaskOrFn

_MEMORY_SAVE_MODES = (None, "one_diag", "all_diag")
_CLIP_RMS = 1.1  # the reference's bound on each leaf's RMS after preconditioning


class ScaleByKronState(NamedTuple):
    """State of :func:`scale_by_kron`."""

    step: jax.Array  # int32[], updates seen so far
    mu: Updates  # EMA of the updates (momentum, not debiased), in mu_dtype
    qs: Any  # per parameter leaf a tuple of factors: (d, d) upper-triangular or (d,) diagonal
    rng_key: jax.Array  # uint32 key data (jax.random.key_data) of the next update's key
    hparams: Hyperparams  # b1 (with 1 - b1), precond_lr, preconditioner_update_probability


def _default_update_probability() -> Any:
    """The reference's schedule: 1 for 250 updates, then ``exp(-0.001 (t - 250))``, >= 0.03."""
    return exponential_decay(1.0, 1, math.exp(-0.001), transition_begin=250, end_value=0.03)


def _checked_mode(fn: str, memory_save_mode: Any) -> str | None:
    if memory_save_mode not in _MEMORY_SAVE_MODES:
        raise ValueError(
            f"{fn}: `memory_save_mode` must be None, 'one_diag' or 'all_diag'; got "
            f"{memory_save_mode!r}. None keeps every factor it can triangular, 'one_diag' makes "
            f"each leaf's longest axis diagonal, 'all_diag' every axis."
        )
    return memory_save_mode


def scale_by_kron(
    b1: ScalarOrSchedule = 0.9,
    preconditioner_update_probability: ScalarOrSchedule | None = None,
    max_size_triangular: int = 8192,
    min_ndim_triangular: int = 2,
    memory_save_mode: str | None = None,
    precond_lr: ScalarOrSchedule = 0.1,
    precond_init_scale: float | None = 1.0,
    *,
    clip_update_rms: bool = True,
    momentum_into_precond_update: bool = True,
    mu_dtype: Any | None = None,
    precond_dtype: Any | None = None,
    key: jax.Array | int = 0,
) -> GradientTransformation:
    r"""Scales updates by PSGD-Kron's whitening preconditioner.

    For each leaf with gradient :math:`g_t` (all in at least float32):

    .. math::
      m_t = \beta_1 m_{t-1} + (1 - \beta_1) g_t, \quad \hat m_t = m_t / (1 - \beta_1^t), \\
      \text{with probability } p_t:\ Q \leftarrow \text{fit}(Q, \hat m_t, v), \quad
      v \sim \mathcal N(0, I), \\
      u_t = Q^T Q\, \hat m_t, \quad
      u_t \leftarrow u_t \min\big(1, 1.1 / \mathrm{RMS}(u_t)\big),

    where :math:`Q = Q_1 \otimes \dots \otimes Q_k` has one factor per axis
    and the fit is one step of PSGD's whitening criterion
    :math:`E[\hat m^T P \hat m + v^T P^{-1} v]`, minimal at :math:`P = E[\hat
    m \hat m^T]^{-1/2}` (see :func:`gradchain._kron_factors.update_factors`:
    step ``precond_lr`` on the Lie group, normalised for triangular factors by
    a lower bound of the spectral norm, for diagonal ones by the largest
    magnitude, as the reference code does; factors are upper triangular, and
    are balanced to a common scale after each fit).

    Which factor an axis gets: triangular up to ``max_size_triangular`` entries
    when the leaf has at least ``min_ndim_triangular`` axes (so by default
    matrices and higher tensors get triangular factors, vectors diagonal ones),
    diagonal otherwise, or as ``memory_save_mode`` says (``"one_diag"``: the
    longest axis diagonal; ``"all_diag"``: every axis). A scalar is a vector of
    one entry; a zero-size leaf passes its momentum through.

    The coin and :math:`v` come from a key held in the state (raw ``uint32``
    key data, so Flax and Orbax save it), split into (next key, coin, :math:`v`)
    at every update; :math:`v` for all leaves is one standard normal draw of
    their total size (in the widest factor dtype), laid out by layout group:
    the leaves of one layout (canonical shape, factor shapes and dtype) are
    fitted stacked under one ``vmap``, and take consecutive pieces of the draw
    in tree order, the groups in the order of their first leaf. The fit runs
    under ``lax.cond`` on the coin, so an update that does not draw it costs a
    preconditioning only (under ``vmap`` over the state both branches run). A
    schedule of the probability is read, like every gradchain schedule, at the
    number of updates done before this one.

    Args:
      b1: momentum decay, in [0, 1); 0 preconditions the raw gradient.
      preconditioner_update_probability: the chance to fit :math:`Q` at an
        update, in [0, 1], or a schedule of it; None for the reference's
        schedule (1 for 250 updates, then
        decaying as :math:`e^{-0.001 (t - 250)}` down to 0.03).
      max_size_triangular: axes longer than this get a diagonal factor, >= 0.
      min_ndim_triangular: leaves with fewer axes get diagonal factors only, >= 0.
      memory_save_mode: None, ``"one_diag"`` or ``"all_diag"`` (see above).
      precond_lr: the fit's step size on the Lie group, in [0, 1].
      precond_init_scale: :math:`Q` starts as this times the identity, > 0. None
        sets each leaf's scale from its first gradient instead, as Xi-Lin Li's
        reference does: :math:`(\mathrm{mean}\, g_1^4)^{-1/8}` (1 for a zero
        gradient), so that :math:`P` starts near :math:`1/|g|`; a leaf with
        :math:`k` factors gets its :math:`k`-th root in each. Used once, to
        build the factors, so it is not one of the state's hyperparameters.
      clip_update_rms: scale each leaf's preconditioned update down to RMS 1.1
        where it is larger (the reference's trust region).
      momentum_into_precond_update: fit :math:`Q` to the debiased momentum (the
        reference's default); False fits it to the raw gradient.
      mu_dtype: dtype of the momentum; the parameters' by default.
      precond_dtype: dtype of the factors; at least float32 by default (float32
        for bfloat16 parameters).
      key: a ``jax.random.key``, a legacy ``jax.random.PRNGKey`` or an integer
        seed for the coin and :math:`v`.

    Returns:
      A GradientTransformation whose state is a ScaleByKronState.

    Raises:
      ValueError: for a number out of range or an unknown ``memory_save_mode``.
      TypeError: for a hyperparameter of the wrong type, or (at update) a
        complex leaf.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.scale_by_kron(preconditioner_update_probability=0.0)  # Q stays I
      >>> params = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}
      >>> state = tx.init(params)
      >>> [q.shape for q in state.qs["w"]], [q.shape for q in state.qs["b"]]
      ([(3, 3), (2, 2)], [(2,)])
      >>> grads = {"w": jnp.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]), "b": jnp.array([3.0, 4.0])}
      >>> u, _ = tx.update(grads, state, params)
      >>> [round(float(x), 3) for x in u["b"]]  # (3, 4) scaled down to RMS 1.1
      [0.933, 1.245]
      >>> tx = gc.scale_by_kron(preconditioner_update_probability=1.0)
      >>> _, state = tx.update(grads, tx.init(params), params)
      >>> q = state.qs["w"][0]  # fitted, and still upper triangular
      >>> bool(jnp.any(q != jnp.eye(3))), float(jnp.abs(jnp.tril(q, -1)).max())
      (True, 0.0)

    References:
      Li, Preconditioned Stochastic Gradient Descent, IEEE TNNLS 2018
      (arXiv:1512.04202); Li, Stochastic Hessian Fittings with Lie Groups, 2024
      (arXiv:2402.11858); github.com/lixilinx/psgd_torch and its JAX port
      github.com/evanatyourservice/psgd_jax (``kron``).
    """
    fn = "scale_by_kron"
    _check.decay_rate(fn, "b1", b1, schedule_ok=True)
    prob: ScalarOrSchedule = (
        _default_update_probability()
        if preconditioner_update_probability is None
        else preconditioner_update_probability
    )
    _check.in_range(fn, "preconditioner_update_probability", prob, 0.0, 1.0, schedule_ok=True)
    _check.non_negative_int(fn, "max_size_triangular", max_size_triangular)
    _check.non_negative_int(fn, "min_ndim_triangular", min_ndim_triangular)
    mode = _checked_mode(fn, memory_save_mode)
    _check.in_range(fn, "precond_lr", precond_lr, 0.0, 1.0, schedule_ok=True)
    if precond_init_scale is not None:
        _check.positive(fn, "precond_init_scale", precond_init_scale)
    mu_dt = _check.dtype_or_none(fn, "mu_dtype", mu_dtype)
    q_dt = _check.dtype_or_none(fn, "precond_dtype", precond_dtype)
    key_data = _key_data(fn, key, None)
    hps: dict[str, ScalarOrSchedule] = dict(
        b1=b1,
        precond_lr=precond_lr,
        preconditioner_update_probability=prob,
    )
    spec = HyperparamSpec(fn, hps, rates=("b1",))

    def kinds(x: Any) -> tuple[bool, ...]:
        shape = tuple(jnp.shape(x))
        return kf.triangular_axes(shape, max_size_triangular, min_ndim_triangular, mode)

    def init_fn(params: Params) -> ScaleByKronState:
        refuse_flat_params(
            "scale_by_kron", "each leaf's shape (a Kronecker factor per axis)", params
        )

        def factors(p: Any) -> kf.Factors:
            dt = q_dt if q_dt is not None else _tree.compute_dtype(p.dtype)
            return kf.identity_factors(tuple(jnp.shape(p)), kinds(p), dt)

        leaves, treedef = jax.tree.flatten(params)
        hparams = spec.init()
        qs = [factors(p) for p in leaves]
        if precond_init_scale is not None:
            qs = [_scaled(q, jnp.asarray(precond_init_scale)) for q in qs]
        return ScaleByKronState(
            step=jnp.zeros([], jnp.int32),
            mu=_tree.accumulator_like(params, mu_dt),
            qs=treedef.unflatten(qs),
            rng_key=jnp.array(key_data),  # a copy: under a mesh, laid out on it like `step`
            hparams=hparams,
        )

    def update_fn(
        updates: Updates, state: ScaleByKronState, params: Params | None = None
    ) -> tuple[Updates, ScaleByKronState]:
        del params  # the preconditioner depends on the updates only
        _tree.check_state(fn, state, ScaleByKronState)
        _tree.check_matches(fn, updates, "state.mu", state.mu)
        leaves, treedef = jax.tree.flatten(updates)
        qs = treedef.flatten_up_to(state.qs)
        for i, (g, q) in enumerate(zip(leaves, qs, strict=True)):
            _check_leaf(fn, i, g, q, kinds(g))
        hp = values(state.hparams)
        step = _tree.safe_increment(state.step)
        next_key, coin_key, v_key = jax.random.split(jax.random.wrap_key_data(state.rng_key), 3)

        mus, moms = [], []
        for g, m in zip(leaves, jax.tree.leaves(state.mu), strict=True):
            gc, mc, b1_, omb1, c1 = _tree.upcast(
                g, m, hp["b1"], state.hparams.complement["b1"], _tree.debias(hp["b1"], step)
            )
            new_m = b1_ * mc + omb1 * gc
            mus.append(new_m.astype(m.dtype))
            moms.append(new_m / c1)

        # Under an Explicit mesh every leaf is gathered whole (the factors are replicated, and
        # leaves of one layout are stacked whatever their shardings); the updates are sharded
        # back like the gradients at the end.
        canon = [_canonical(_whole(x), q) for x, q in zip(moms, qs, strict=True)]
        if precond_init_scale is None:  # each leaf's scale from its first gradient
            first = state.step == 0
            qs = [_first_scaled(q, g, first) for g, q in zip(leaves, qs, strict=True)]
        if momentum_into_precond_update:
            fit_in = canon
        else:
            fit_in = [
                _canonical(_whole(_tree.upcast(g)[0]), q) for g, q in zip(leaves, qs, strict=True)
            ]

        # Leaves of one layout are fitted and preconditioned stacked, under one vmap: the
        # compiled update grows with the number of distinct layouts, not of leaves.
        groups = _groups(qs, canon)
        dts = [qs[m[0]][0].dtype for m in groups]
        gq = [_stack([qs[i] for i in m]) for m in groups]
        gc = [
            jnp.stack([canon[i].astype(dt) for i in m]) for m, dt in zip(groups, dts, strict=True)
        ]
        gx = gc
        if not momentum_into_precond_update:
            gx = [
                jnp.stack([fit_in[i].astype(dt) for i in m])
                for m, dt in zip(groups, dts, strict=True)
            ]
        starts = np.cumsum([0, *(x.size for x in gx)]).tolist()

        def fit(gq: list[kf.Factors], gx: list[jax.Array]) -> list[kf.Factors]:
            flat = jax.random.normal(v_key, (starts[-1],), _tree.compute_dtype(*dts))
            out = []
            for k, (q, x) in enumerate(zip(gq, gx, strict=True)):
                v = flat[starts[k] : starts[k + 1]].reshape(x.shape).astype(x.dtype)
                lr = hp["precond_lr"].astype(x.dtype)
                out.append(jax.vmap(lambda q, g, v, lr=lr: kf.update_factors(q, g, v, lr))(q, x, v))
            return out

        draw = jax.random.uniform(coin_key) < hp["preconditioner_update_probability"]
        gq = jax.lax.cond(draw, fit, lambda gq, gx: list(gq), gq, gx)

        qs, pre = list(qs), list(canon)
        for m, q, c in zip(groups, gq, gc, strict=True):
            u = jax.vmap(kf.precondition)(q, c)
            for j, i in enumerate(m):
                qs[i] = tuple(f[j] for f in q)
                pre[i] = u[j]
        outs = []
        for g, x, u in zip(leaves, moms, pre, strict=True):
            u = x if u is None else u.reshape(x.shape)
            if clip_update_rms and u.size:
                rms = jnp.sqrt(jnp.mean(u * u))
                u = u * jnp.minimum(1, _CLIP_RMS / jnp.maximum(rms, 1e-12))
            outs.append(_explicit.reshard(u.astype(g.dtype), _explicit.mesh_spec(g)))
        new_state = ScaleByKronState(
            step=step,
            mu=treedef.unflatten(mus),
            qs=treedef.unflatten([tuple(q) for q in qs]),
            rng_key=jax.random.key_data(next_key),
            hparams=spec.advance(state.hparams, step),
        )
        return treedef.unflatten(outs), new_state

    return GradientTransformation(init_fn, update_fn)


def _groups(qs: list[kf.Factors], xs: list[jax.Array]) -> list[list[int]]:
    """The leaves with factors, grouped by layout (the leaf's and the factors' shapes, dtype)."""
    out: dict[Any, list[int]] = {}
    for i, (q, x) in enumerate(zip(qs, xs, strict=True)):
        if q:
            layout = (x.shape, tuple(f.shape for f in q), q[0].dtype)
            out.setdefault(layout, []).append(i)
    return list(out.values())


def _stack(qs: list[kf.Factors]) -> kf.Factors:
    """Factors of leaves of one layout, stacked on a new first axis."""
    return tuple(jnp.stack(fs) for fs in zip(*qs, strict=True))


def _whole(x: jax.Array) -> jax.Array:
    """``x`` replicated if it lies on an Explicit mesh, else ``x`` itself."""
    return _explicit.replicate(x)[0]


def _canonical(x: jax.Array, q: kf.Factors) -> jax.Array:
    """A leaf as its factors see it: a scalar becomes a vector of one entry."""
    return x.reshape(1) if x.ndim == 0 and q else x


def _scaled(q: kf.Factors, scale: jax.Array) -> kf.Factors:
    """Factors whose Kronecker product is ``scale`` times theirs (a k-th root in each)."""
    if not q:
        return q
    root = (scale.astype(q[0].dtype)) ** (1 / len(q))
    return tuple(f * root for f in q)


def _first_scaled(q: kf.Factors, g: jax.Array, first: jax.Array) -> kf.Factors:
    r"""At the first update, ``q`` scaled by :math:`(\mathrm{mean}\, g^4)^{-1/8}` (1 if g = 0)."""
    if not q:
        return q
    m4 = jnp.mean(g.astype(q[0].dtype) ** 4)
    scaled = _scaled(q, jnp.where(m4 > 0, m4, 1) ** (-1 / 8))
    return tuple(jnp.where(first, s, f) for s, f in zip(scaled, q, strict=True))


def _check_leaf(fn: str, i: int, g: jax.Array, q: kf.Factors, kinds: tuple[bool, ...]) -> None:
    if jnp.iscomplexobj(g):
        raise TypeError(
            f"{fn}: the update at leaf {i} is complex ({g.dtype}); this PSGD-Kron fits real "
            f"factors. Wrap the optimizer in gc.split_real_and_imaginary."
        )
    sizes = (tuple(jnp.shape(g)) or (1,)) if kinds else ()
    want = [(d, d) if tri else (d,) for d, tri in zip(sizes, kinds, strict=True)]
    got = [tuple(f.shape) for f in q]
    if got != want:
        raise ValueError(
            f"{fn}: the state's factors at leaf {i} have shapes {got}, but an update of shape "
            f"{tuple(jnp.shape(g))} needs {want}. Pass the state from this transformation's own "
            f"init, built for these parameters."
        )


def kron(
    learning_rate: ScalarOrSchedule = 1e-3,
    b1: ScalarOrSchedule = 0.9,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: MaskOrFn | None = None,
    preconditioner_update_probability: ScalarOrSchedule | None = None,
    max_size_triangular: int = 8192,
    min_ndim_triangular: int = 2,
    memory_save_mode: str | None = None,
    precond_lr: ScalarOrSchedule = 0.1,
    precond_init_scale: float | None = 1.0,
    *,
    clip_update_rms: bool = True,
    momentum_into_precond_update: bool = True,
    mu_dtype: Any | None = None,
    precond_dtype: Any | None = None,
    key: jax.Array | int = 0,
) -> GradientTransformationExtraArgs:
    r"""PSGD-Kron with decoupled weight decay.

    ``chain(scale_by_kron(b1, preconditioner_update_probability, ...),
    add_decayed_weights(weight_decay, weight_decay_mask),
    scale_by_learning_rate(learning_rate))``; see :func:`scale_by_kron` for
    the algorithm and the options. The defaults are psgd_jax's ``kron``
    (learning rate 1e-3, ``b1`` 0.9, no weight decay, the annealed update
    probability). Updates are whitened to RMS about 1, so learning rates are
    Adam-like.

    Args:
      learning_rate: >= 0, or a schedule.
      b1: see :func:`scale_by_kron`.
      weight_decay: decoupled weight decay, >= 0.
      weight_decay_mask: where to decay: bools like the params, or a function of them.
      preconditioner_update_probability: see :func:`scale_by_kron`.
      max_size_triangular: see :func:`scale_by_kron`.
      min_ndim_triangular: see :func:`scale_by_kron`.
      memory_save_mode: see :func:`scale_by_kron`.
      precond_lr: see :func:`scale_by_kron`.
      precond_init_scale: see :func:`scale_by_kron`.
      clip_update_rms: see :func:`scale_by_kron`.
      momentum_into_precond_update: see :func:`scale_by_kron`.
      mu_dtype: see :func:`scale_by_kron`.
      precond_dtype: see :func:`scale_by_kron`.
      key: see :func:`scale_by_kron`.

    Returns:
      A GradientTransformationExtraArgs whose state is a tuple of the three states.

    Raises:
      ValueError: for a number out of range.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.kron(learning_rate=gc.cosine_decay_schedule(0.2, 60))
      >>> params = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.array([1.0, -1.0])}
      >>> loss = lambda p: jnp.sum(p["w"] ** 2) + jnp.sum(p["b"] ** 2)
      >>> float(loss(params))
      16.25
      >>> state, update = tx.init(params), jax.jit(tx.update)
      >>> for _ in range(60):
      ...     updates, state = update(jax.grad(loss)(params), state, params)
      ...     params = gc.apply_updates(params, updates)
      >>> float(loss(params)) < 0.01
      True

    References:
      Li, Preconditioned Stochastic Gradient Descent, 2015 (arXiv:1512.04202);
      github.com/evanatyourservice/psgd_jax.
    """
    fn = "kron"
    _check.non_negative(fn, "learning_rate", learning_rate, schedule_ok=True)
    _check.non_negative(fn, "weight_decay", weight_decay, schedule_ok=True)
    return chain(
        scale_by_kron(
            b1,
            preconditioner_update_probability,
            max_size_triangular,
            min_ndim_triangular,
            memory_save_mode,
            precond_lr,
            precond_init_scale,
            clip_update_rms=clip_update_rms,
            momentum_into_precond_update=momentum_into_precond_update,
            mu_dtype=mu_dtype,
            precond_dtype=precond_dtype,
            key=key,
        ),
        add_decayed_weights(weight_decay, weight_decay_mask),
        scale_by_learning_rate(learning_rate),
    )
