r"""SOAP: Adam in the eigenbasis of Shampoo's preconditioner (Vyas et al., 2024).

The linear algebra (canonical layouts, rotations, batched eigenbases) lives in
:mod:`gradchain._eigenbasis`; this module holds the transform and the alias.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradchain import _check, _eigenbasis, _tree
from gradchain._base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    Params,
    ScalarOrSchedule,
    Updates,
)
from gradchain._combine import chain
from gradchain._eigenbasis import Layout
from gradchain._flat_params import refuse_flat_params
from gradchain._hyperparams import Hyperparams, HyperparamSpec, values
from gradchain._matrices import matrix_view, route_resolver
from gradchain._regularizing import add_decayed_weights
from gradchain._rules import path_of
from gradchain._scaling import scale_by_learning_rate
from gradchain._wrappers import MaskOrFn


class SoapFactors(NamedTuple):
    """One leaf's Kronecker factors and eigenbases; both empty for a leaf Adam handles alone."""

    gg: tuple[jax.Array, ...]  # per preconditioned axis: (batch, d, d) EMA of G_(i) G_(i)^T
    q: tuple[jax.Array, ...]  # per preconditioned axis: (batch, d, d) its eigenbasis


class ScaleBySoapState(NamedTuple):
    """State of :func:`scale_by_soap`."""

    step: jax.Array  # int32[], updates seen so far
    mu: Updates  # EMA of the updates in the original space, in mu_dtype
    nu: Updates  # EMA of the squared rotated updates (the parameters' shapes), in nu_dtype
    factors: Any  # a SoapFactors per parameter leaf, in at least float32
    hparams: Hyperparams  # b1, b2, eps (and shampoo_beta if given), with complements


def scale_by_soap(
    b1: ScalarOrSchedule = 0.95,
    b2: ScalarOrSchedule = 0.95,
    shampoo_beta: ScalarOrSchedule | None = None,
    eps: ScalarOrSchedule = 1e-8,
    precondition_frequency: int = 10,
    max_precond_dim: int = 10000,
    merge_dims: bool = False,
    *,
    precondition_1d: bool = False,
    mu_dtype: Any | None = None,
    nu_dtype: Any | None = None,
    weight_dimension_numbers: Any | None = None,
) -> GradientTransformation:
    r"""Adam's scaling in the eigenbasis of Shampoo's preconditioner (SOAP).

    For a matrix leaf with gradient :math:`G_t` (Algorithm 3 of the paper):

    .. math::
      G' = Q_L^T G_t Q_R, \quad M \leftarrow \beta_1 M + (1-\beta_1) G_t, \quad
      M' = Q_L^T M Q_R, \quad V \leftarrow \beta_2 V + (1-\beta_2) G'^2, \\
      u_t = Q_L \frac{M' / (1-\beta_1^t)}{\sqrt{V / (1-\beta_2^t)} + \epsilon} Q_R^T, \quad
      L \leftarrow \beta_s L + (1-\beta_s) G_t G_t^T, \quad
      R \leftarrow \beta_s R + (1-\beta_s) G_t^T G_t,

    and every ``precondition_frequency`` steps :math:`Q_L, Q_R` are refreshed
    by one step of power iteration and QR (:math:`Q \leftarrow \mathrm{QR}(P
    Q)`, the columns first sorted by the estimated eigenvalues
    :math:`\mathrm{diag}(Q^T P Q)` and :math:`V` permuted alike, as the
    authors' code does). The first update is zero: it only sets :math:`L, R`
    from :math:`G_1` and :math:`Q_L, Q_R` by ``eigh``, so the basis never holds
    the gradient it rotates (the authors' code skips the first step the same
    way); :math:`t` counts from the second update. A tensor of any rank gets one
    factor per axis (the gradient contracted with itself over the other axes).

    Which leaves are rotated: by default every leaf of rank >= 2 (after
    ``merge_dims``), and 1-D leaves too with ``precondition_1d``; an axis longer
    than ``max_precond_dim`` keeps the identity on its side. Scalars, 1-D
    leaves, empty leaves and leaves with no axis short enough get plain Adam
    from the first step on (exactly :func:`scale_by_adam`), so ``scale_by_soap``
    works on any tree alone. ``weight_dimension_numbers`` (as in
    :func:`scale_by_muon`) instead views chosen leaves as stacks of matrices
    (``MuonDimensionNumbers(-2, -1)``: scanned layers (L, in, out) get L pairs
    of factors), None marking plain-Adam leaves.

    The basis refresh runs under ``lax.switch`` on the step (nothing, ``eigh``
    at the first step, QR every ``precondition_frequency``), so compiled
    updates pay for decompositions only on those steps; under ``vmap`` over
    the state (a sweep), JAX turns the switch into computing every branch.
    Factors of one size are decomposed together, batched. On a mesh with
    Explicit axes a sharded leaf is gathered whole for its rotations (its
    factors and bases are replicated, and ``eigh`` takes unsharded matrices);
    its update and moments come back sharded like it.

    Args:
      b1: decay of the first moment, in [0, 1).
      b2: decay of the second moment, in [0, 1).
      shampoo_beta: decay of the factors' moving averages, in [0, 1); ``b2``
        if None (as the authors' default ``-1``).
      eps: added to the root of the second moment, >= 0.
      precondition_frequency: steps between refreshes of the eigenbases, >= 1.
      max_precond_dim: axes longer than this get no factor, >= 1.
      merge_dims: merge neighbouring axes of a leaf while their product stays
        <= ``max_precond_dim`` (a conv kernel (3, 3, 64, 128) becomes
        (576, 128)); axes of size 1 vanish.
      precondition_1d: give 1-D leaves of length <= ``max_precond_dim`` a
        full factor too.
      mu_dtype: dtype of the first moment; the parameters' by default.
      nu_dtype: dtype of the second moment; the parameters' by default. The
        factors and bases are kept in at least float32 whatever the params.
      weight_dimension_numbers: None (the rank rule above), one
        :class:`MuonDimensionNumbers` for every leaf, a tree (or prefix) of
        them with None for plain-Adam leaves, or a function of the params
        returning one.

    Returns:
      A GradientTransformation whose state is a ScaleBySoapState.

    Raises:
      ValueError: for a number out of range; at trace time, a routing that
        does not fit a leaf, naming its key path.
      TypeError: for a complex leaf that would be rotated.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.scale_by_soap(precondition_frequency=2)
      >>> params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
      >>> grads = {"w": jnp.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]), "b": jnp.ones(2)}
      >>> state = tx.init(params)
      >>> u, state = tx.update(grads, state, params)
      >>> float(jnp.abs(u["w"]).max()), [round(float(x), 3) for x in u["b"]]  # w: basis only
      (0.0, [1.0, 1.0])
      >>> grads["w"] = jnp.array([[0.5, -1.0], [2.0, 0.3], [-0.7, 1.2]])
      >>> u, state = tx.update(grads, state, params)
      >>> [round(float(x), 2) for x in u["w"][0]]
      [-0.31, -1.24]

    References:
      Vyas et al., SOAP: Improving and Stabilizing Shampoo using Adam, 2024
      (arXiv:2409.11321); the authors' code, github.com/nikhilvyas/SOAP.
    """
    fn = "scale_by_soap"
    _check.decay_rate(fn, "b1", b1, schedule_ok=True)
    _check.decay_rate(fn, "b2", b2, schedule_ok=True)
    if shampoo_beta is not None:
        _check.decay_rate(fn, "shampoo_beta", shampoo_beta, schedule_ok=True)
    _check.non_negative(fn, "eps", eps, schedule_ok=True)
    _check.positive_int(fn, "precondition_frequency", precondition_frequency)
    _check.positive_int(fn, "max_precond_dim", max_precond_dim)
    mu_dt = _check.dtype_or_none(fn, "mu_dtype", mu_dtype)
    nu_dt = _check.dtype_or_none(fn, "nu_dtype", nu_dtype)
    hps: dict[str, ScalarOrSchedule] = dict(b1=b1, b2=b2, eps=eps)
    if shampoo_beta is not None:
        hps["shampoo_beta"] = shampoo_beta
    spec = HyperparamSpec(fn, hps, rates=("b1", "b2", "shampoo_beta"))
    resolve = (
        None
        if weight_dimension_numbers is None
        else route_resolver(fn, "weight_dimension_numbers", weight_dimension_numbers)
    )

    def layouts(tree: Any) -> list[Layout | None]:
        """Each leaf's layout (None: plain Adam), from its shape and the routing."""
        out: list[Layout | None] = []
        if resolve is None:
            for x in jax.tree.leaves(tree):
                shape = tuple(jnp.shape(x))
                rotated = len(shape) >= 2 or (precondition_1d and len(shape) == 1)
                out.append(
                    _eigenbasis.tensor_layout(shape, max_precond_dim, merge_dims)
                    if rotated
                    else None
                )
            return out
        for leaf in resolve(tree):
            shape = tuple(jnp.shape(leaf.leaf))
            if leaf.spec.dims is None:
                out.append(None)
                continue
            view = matrix_view(fn, path_of(leaf.keys) or "<root>", shape, leaf.spec.dims)
            out.append(_eigenbasis.matrix_layout(shape, view, max_precond_dim))
        return out

    def init_fn(params: Params) -> ScaleBySoapState:
        refuse_flat_params(
            "scale_by_soap", "each leaf's shape (a preconditioner per matrix axis)", params
        )
        factors = []
        for p, lay in zip(jax.tree.leaves(params), layouts(params), strict=True):
            if lay is None:
                factors.append(SoapFactors((), ()))
                continue
            dt = _tree.compute_dtype(p.dtype)
            b, dims = lay.canon[0], lay.canon[1:]
            sides = [d for d, pre in zip(dims, lay.preconditioned, strict=True) if pre]
            gg = tuple(jnp.zeros((b, d, d), dt) for d in sides)
            eye = tuple(jnp.broadcast_to(jnp.eye(d, dtype=dt), (b, d, d)) for d in sides)
            factors.append(SoapFactors(gg, eye))
        return ScaleBySoapState(
            step=jnp.zeros([], jnp.int32),
            mu=_tree.accumulator_like(params, mu_dt),
            nu=_tree.zeros_like(params, nu_dt),
            factors=jax.tree.structure(params).unflatten(factors),
            hparams=spec.init(),
        )

    def update_fn(
        updates: Updates, state: ScaleBySoapState, params: Params | None = None
    ) -> tuple[Updates, ScaleBySoapState]:
        _tree.check_state(fn, state, ScaleBySoapState)
        _tree.check_matches(fn, updates, "state.mu", state.mu)
        _tree.check_matches(fn, updates, "state.nu", state.nu)
        treedef = jax.tree.structure(updates)
        if params is not None:
            _tree.check_matches(fn, updates, "params", params)
        lays = layouts(params if params is not None else updates)
        facs = treedef.flatten_up_to(state.factors)
        hp = values(state.hparams)
        comp = state.hparams.complement
        sb = hp["shampoo_beta"] if shampoo_beta is not None else hp["b2"]
        omsb = comp["shampoo_beta"] if shampoo_beta is not None else comp["b2"]
        step = _tree.safe_increment(state.step)
        first = step == 1
        t = jnp.maximum(step - 1, 1)  # Adam steps of the rotated leaves (the first is skipped)
        rates = (hp["b1"], hp["b2"], comp["b1"], comp["b2"], hp["eps"])
        adam_c = (_tree.debias(hp["b1"], step), _tree.debias(hp["b2"], step))
        soap_c = (_tree.debias(hp["b1"], t), _tree.debias(hp["b2"], t))

        leaves_g, leaves_m = jax.tree.leaves(updates), jax.tree.leaves(state.mu)
        leaves_v = jax.tree.leaves(state.nu)
        outs: list[Any] = [None] * len(lays)
        mus: list[Any] = [None] * len(lays)
        nus: list[Any] = [None] * len(lays)
        groups: dict[tuple[Any, ...], list[int]] = {}
        layout_of: dict[int, Layout] = {}
        for i, (g, m, v, f, lay) in enumerate(
            zip(leaves_g, leaves_m, leaves_v, facs, lays, strict=True)
        ):
            if lay is None:  # plain Adam, as scale_by_adam computes it
                gc, mc, vc, b1_, b2_, omb1, omb2, eps_, c1, c2 = _tree.upcast(
                    g, m, v, *rates, *adam_c
                )
                new_m = omb1 * gc + b1_ * mc
                new_v = omb2 * _tree.abs_sq(gc) + b2_ * vc
                out = (new_m / c1) / (jnp.sqrt(new_v / c2) + eps_)
                outs[i], mus[i], nus[i] = out.astype(g.dtype), new_m.astype(m.dtype), new_v
                continue
            if jnp.iscomplexobj(g) or jnp.iscomplexobj(m):
                raise TypeError(
                    f"{fn}: the update at leaf {i} is complex ({g.dtype}); SOAP's eigenbases are "
                    f"real. Route complex leaves to plain Adam (None in `weight_dimension_numbers`)"
                    f" or wrap the optimizer in gc.split_real_and_imaginary."
                )
            key = (lay.canon[1:], lay.preconditioned, f.q[0].dtype, g.dtype, m.dtype, v.dtype)
            groups.setdefault(key, []).append(i)
            layout_of[i] = lay

        # Leaves of one layout are stacked on the batch axis and updated together: the
        # compiled update grows with the number of distinct layouts, not of leaves.
        rotated = []
        for members in groups.values():
            lay0, dt = layout_of[members[0]], facs[members[0]].q[0].dtype
            canon = [layout_of[i] for i in members]

            def stack(xs: list[jax.Array], canon: list[Any] = canon, dt: Any = dt) -> jax.Array:
                parts = [
                    _eigenbasis.to_canon(x.astype(dt), lay)
                    for x, lay in zip(xs, canon, strict=True)
                ]
                return parts[0] if len(parts) == 1 else jnp.concatenate(parts)

            gc, mc, vc = (
                stack([src[i] for i in members]) for src in (leaves_g, leaves_m, leaves_v)
            )
            n_sides = len(facs[members[0]].q)
            cat = lambda xs: xs[0] if len(xs) == 1 else jnp.concatenate(xs)  # noqa: E731
            q = tuple(cat([facs[i].q[s] for i in members]) for s in range(n_sides))
            gg_old = tuple(cat([facs[i].gg[s] for i in members]) for s in range(n_sides))
            b1_, b2_, omb1, omb2, eps_, c1, c2 = (x.astype(dt) for x in (*rates, *soap_c))
            qs = _sides(lay0, q)
            g_rot = _eigenbasis.rotate(gc, qs)
            new_m = omb1 * gc + b1_ * mc
            new_v = omb2 * g_rot * g_rot + b2_ * vc
            m_rot = _eigenbasis.rotate(new_m, qs)
            out = _eigenbasis.rotate((m_rot / c1) / (jnp.sqrt(new_v / c2) + eps_), qs, back=True)
            out = jnp.where(first, jnp.zeros_like(out), out)
            new_m = jnp.where(first, mc, new_m)
            new_v = jnp.where(first, vc, new_v)
            axes = [a for a, pre in enumerate(lay0.preconditioned) if pre]
            gg = tuple(
                sb.astype(dt) * old + omsb.astype(dt) * _eigenbasis.factor(gc, a)
                for a, old in zip(axes, gg_old, strict=True)
            )
            sizes = [layout_of[i].canon[0] for i in members]
            for i, o, m_i in zip(
                members, _unstack(out, sizes), _unstack(new_m, sizes), strict=True
            ):
                outs[i] = _eigenbasis.from_canon(o, layout_of[i], leaves_g[i]).astype(
                    leaves_g[i].dtype
                )
                mus[i] = _eigenbasis.from_canon(m_i, layout_of[i], leaves_m[i]).astype(
                    leaves_m[i].dtype
                )
            rotated.append((members, sizes, axes, gg, q, new_v))

        if rotated:
            kind = jnp.where(first, 1, jnp.where((step - 1) % precondition_frequency == 0, 2, 0))
            ggs = [x for r in rotated for x in r[3]]
            qs_in = [x for r in rotated for x in r[4]]
            vs_in = [r[5] for r in rotated]
            new_qs, new_vs = jax.lax.switch(
                kind,
                [
                    lambda ggs, qs, vs: (list(qs), list(vs)),
                    lambda ggs, qs, vs: (_eigenbasis.eigh_bases(ggs), list(vs)),
                    lambda ggs, qs, vs: _refresh([r[2] for r in rotated], ggs, qs, vs),
                ],
                ggs,
                qs_in,
                vs_in,
            )
            k = 0
            for (members, sizes, axes, gg, _, _), v_new in zip(rotated, new_vs, strict=True):
                gg_parts = [_unstack(x, sizes) for x in gg]
                q_parts = [_unstack(x, sizes) for x in new_qs[k : k + len(axes)]]
                k += len(axes)
                for j, (i, v_i) in enumerate(zip(members, _unstack(v_new, sizes), strict=True)):
                    facs[i] = SoapFactors(
                        tuple(p[j] for p in gg_parts), tuple(p[j] for p in q_parts)
                    )
                    nus[i] = _eigenbasis.from_canon(v_i, layout_of[i], leaves_v[i])
        nus = [v.astype(old.dtype) for v, old in zip(nus, leaves_v, strict=True)]
        new_state = ScaleBySoapState(
            step,
            treedef.unflatten(mus),
            treedef.unflatten(nus),
            treedef.unflatten(facs),
            spec.advance(state.hparams, step),
        )
        return treedef.unflatten(outs), new_state

    return GradientTransformation(init_fn, update_fn)


def _sides(lay: Layout, qs: tuple[jax.Array, ...]) -> list[jax.Array | None]:
    """The bases per canonical axis, None (identity) where an axis has no factor."""
    it = iter(qs)
    return [next(it) if pre else None for pre in lay.preconditioned]


def _refresh(
    axes_per_group: list[list[int]],
    ggs: list[jax.Array],
    qs: list[jax.Array],
    vs: list[jax.Array],
) -> tuple[list[jax.Array], list[jax.Array]]:
    """Power-iteration + QR bases for every factor, and each nu permuted to the new order."""
    new_qs, orders = _eigenbasis.refresh_bases(ggs, qs)
    out_vs, k = [], 0
    for axes, v in zip(axes_per_group, vs, strict=True):
        for a in axes:
            v = _eigenbasis.permute_axis(v, a, orders[k])
            k += 1
        out_vs.append(v)
    return new_qs, out_vs


def _unstack(x: jax.Array, sizes: list[int]) -> list[jax.Array]:
    """Splits a stacked group back into its leaves (batch sizes ``sizes``)."""
    if len(sizes) == 1:
        return [x]
    return jnp.split(x, np.cumsum(sizes)[:-1].tolist())


def soap(
    learning_rate: ScalarOrSchedule = 3e-3,
    b1: ScalarOrSchedule = 0.95,
    b2: ScalarOrSchedule = 0.95,
    shampoo_beta: ScalarOrSchedule | None = None,
    eps: ScalarOrSchedule = 1e-8,
    weight_decay: ScalarOrSchedule = 0.01,
    weight_decay_mask: MaskOrFn | None = None,
    precondition_frequency: int = 10,
    max_precond_dim: int = 10000,
    merge_dims: bool = False,
    *,
    precondition_1d: bool = False,
    mu_dtype: Any | None = None,
    nu_dtype: Any | None = None,
    weight_dimension_numbers: Any | None = None,
) -> GradientTransformationExtraArgs:
    r"""SOAP with decoupled weight decay, for any tree of parameters.

    ``chain(scale_by_soap(b1, b2, shampoo_beta, eps, precondition_frequency,
    max_precond_dim, merge_dims, ...), add_decayed_weights(weight_decay,
    weight_decay_mask), scale_by_learning_rate(learning_rate))``: matrices (and
    higher-rank leaves) are rotated, vectors and scalars get plain Adam; see
    :func:`scale_by_soap` for the algorithm and the options. The defaults are
    the authors' (learning rate 3e-3, betas (0.95, 0.95), weight decay 0.01,
    a refresh every 10 steps). Unlike the authors' code, weight decay also
    applies on the first step, whose SOAP update is zero.

    Args:
      learning_rate: >= 0, or a schedule.
      b1: see :func:`scale_by_soap`.
      b2: see :func:`scale_by_soap`.
      shampoo_beta: see :func:`scale_by_soap`.
      eps: see :func:`scale_by_soap`.
      weight_decay: decoupled weight decay, >= 0.
      weight_decay_mask: where to decay: bools like the params, or a function of them.
      precondition_frequency: see :func:`scale_by_soap`.
      max_precond_dim: see :func:`scale_by_soap`.
      merge_dims: see :func:`scale_by_soap`.
      precondition_1d: see :func:`scale_by_soap`.
      mu_dtype: see :func:`scale_by_soap`.
      nu_dtype: see :func:`scale_by_soap`.
      weight_dimension_numbers: see :func:`scale_by_soap`.

    Returns:
      A GradientTransformationExtraArgs whose state is a tuple of the three states.

    Raises:
      ValueError: for a number out of range.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.soap(learning_rate=0.1, weight_decay=0.0)
      >>> params = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.array([1.0, -1.0])}
      >>> loss = lambda p: jnp.sum(p["w"] ** 2) + jnp.sum(p["b"] ** 2)
      >>> float(loss(params))
      16.25
      >>> state, update = tx.init(params), jax.jit(tx.update)
      >>> for _ in range(30):
      ...     updates, state = update(jax.grad(loss)(params), state, params)
      ...     params = gc.apply_updates(params, updates)
      >>> float(loss(params)) < 1.0
      True

    References:
      Vyas et al., SOAP: Improving and Stabilizing Shampoo using Adam, 2024
      (arXiv:2409.11321).
    """
    fn = "soap"
    _check.non_negative(fn, "learning_rate", learning_rate, schedule_ok=True)
    _check.non_negative(fn, "weight_decay", weight_decay, schedule_ok=True)
    return chain(
        scale_by_soap(
            b1,
            b2,
            shampoo_beta,
            eps,
            precondition_frequency,
            max_precond_dim,
            merge_dims,
            precondition_1d=precondition_1d,
            mu_dtype=mu_dtype,
            nu_dtype=nu_dtype,
            weight_dimension_numbers=weight_dimension_numbers,
        ),
        add_decayed_weights(weight_decay, weight_decay_mask),
        scale_by_learning_rate(learning_rate),
    )
