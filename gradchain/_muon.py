r"""Muon: momentum orthogonalized by Newton-Schulz, with matrix routing.

Which parameters are matrices is decided per leaf by a routing rule (a
:class:`MuonDimensionNumbers` says which axes form the matrix; the others are
batch axes, so a stack of scanned layers (L, in, out) is L matrices). The
routing is a partition by rule: :func:`muon` registers it, so
``gc.explain(gc.muon(...), params)`` prints which parameter went to Muon and
which to AdamW, and :func:`muon_routing` gives each leaf's matrix view.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp

from gradchain import _check, _linalg, _tree
from gradchain._base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    Params,
    ScalarOrSchedule,
    Updates,
)
from gradchain._combine import chain
from gradchain._hyperparams import Hyperparams, HyperparamSpec, hyperparam_transform, values
from gradchain._keypaths import Leaf
from gradchain._matrices import (
    DimensionNumbersOf,
    MatrixView,
    _as_matrices,
    _from_matrices,
    matrix_view,
    route_resolver,
)
from gradchain._moments import scale_by_adam
from gradchain._regularizing import add_decayed_weights
from gradchain._routing import build_matrix_partition
from gradchain._rules import path_of
from gradchain._scaling import scale_by_learning_rate
from gradchain._wrappers import MaskOrFn

Preconditioning = Literal["frobenius", "spectral", "aol", "schatten"]


class MuonState(NamedTuple):
    """State of :func:`scale_by_muon`."""

    step: jax.Array  # int32[], updates seen so far
    mu: Updates  # EMA of the updates, in mu_dtype
    hparams: Hyperparams  # beta (with 1 - beta), eps


class ScaleByMuonShapeState(NamedTuple):
    """State of Muon's shape scaling inside :func:`muon` (``consistent_rms`` if given)."""

    step: jax.Array
    hparams: Hyperparams


def scale_by_muon(
    ns_coeffs: _linalg.NsCoeffs = _linalg.MUON_COEFFS,
    ns_steps: int = 5,
    beta: ScalarOrSchedule = 0.95,
    eps: ScalarOrSchedule = 1e-8,
    mu_dtype: Any | None = None,
    *,
    nesterov: bool = True,
    adaptive: bool = False,
    preconditioning: Preconditioning = "frobenius",
    weight_dimension_numbers: Any | None = None,
) -> GradientTransformation:
    r"""Orthogonalizes the (Nesterov) momentum of each matrix by Newton-Schulz.

    .. math::
      m_t = \beta m_{t-1} + (1-\beta) g_t, \quad
      \hat m_t = \frac{\beta m_t}{1-\beta^{t+1}} + \frac{(1-\beta) g_t}{1-\beta^t}
      \ (\text{nesterov; else } m_t / (1-\beta^t)), \quad
      u_t = \mathrm{NS}(\hat m_t) \approx U V^T \text{ for } \hat m_t = U S V^T,

    with ``adaptive`` multiplying :math:`u_t` by :math:`\langle \hat m_t, u_t
    \rangle` (the nuclear norm, dual to the spectral norm; Bernstein and
    Newhouse 2024). :math:`\mathrm{NS}` is :func:`newton_schulz` applied to each
    matrix of a leaf as given by ``weight_dimension_numbers`` (batch axes
    independently). The shape scaling of non-square matrices is done by
    :func:`muon`, not here (as in Optax).

    Leaves marked ``None`` in ``weight_dimension_numbers`` get :math:`\hat m_t`
    without orthogonalization (Optax 0.2.8 crashes on them); :func:`muon` sends
    them to AdamW instead. Without ``weight_dimension_numbers`` every leaf must
    be 2-D; another shape raises a ValueError naming its path.

    ``ns_coeffs`` and ``ns_steps`` fix the polynomial the update computes; they
    are kept as Python constants, not in the state (Optax keeps the
    coefficients in its state as an array nobody reads back).

    Args:
      ns_coeffs: (a, b, c) used at every step, a sequence of them (one per
        step; ``ns_steps`` is then ignored), or a preset: ``"muon"`` (or
        ``"standard"``), ``"dion"``.
      ns_steps: Newton-Schulz steps, >= 1.
      beta: momentum decay, in [0, 1).
      eps: added to the norm before dividing, >= 0.
      mu_dtype: dtype of the momentum; the parameters' by default.
      nesterov: use the Nesterov (NAdam-style) momentum.
      adaptive: multiply by the nuclear norm :math:`\langle \hat m, u \rangle`.
      preconditioning: how the matrix is scaled before the iteration:
        ``"frobenius"`` (Optax's default), ``"spectral"``, ``"aol"`` or
        ``"schatten"``; see :func:`newton_schulz`.
      weight_dimension_numbers: None (every leaf is an (in, out) matrix), one
        :class:`MuonDimensionNumbers` for every leaf, a tree (or prefix) of them
        with None for leaves that are not matrices, or a function from the
        parameters to such a tree.

    Returns:
      A GradientTransformation whose state is a MuonState.

    Raises:
      ValueError: for a number out of range, an unknown preset, or (at trace
        time) a leaf that is not a matrix, naming the key path.

    Example:
      >>> import jax.numpy as jnp
      >>> import numpy as np
      >>> import gradchain as gc
      >>> g = jnp.array([[3.0, 0.0], [0.0, 0.1]])
      >>> tx = gc.scale_by_muon(ns_steps=10, ns_coeffs=(1.5, -0.5, 0.0))
      >>> u, _ = tx.update(g, tx.init(g))
      >>> [round(float(s), 1) for s in np.linalg.svd(np.asarray(u), compute_uv=False)]
      [1.0, 1.0]

    References:
      Jordan et al., Muon: An optimizer for hidden layers in neural networks, 2024,
      https://kellerjordan.github.io/posts/muon/.
      Bernstein and Newhouse, Old Optimizer, New Norm: An Anthology, 2024.
    """
    fn = "scale_by_muon"
    coeffs = _linalg.ns_schedule(fn, ns_coeffs, ns_steps)
    _check.decay_rate(fn, "beta", beta, schedule_ok=True)
    _check.non_negative(fn, "eps", eps, schedule_ok=True)
    mu_dt = _check.dtype_or_none(fn, "mu_dtype", mu_dtype)
    if preconditioning not in _linalg.PRECONDITIONINGS:
        raise ValueError(
            f"{fn}: `preconditioning` must be one of {list(_linalg.PRECONDITIONINGS)}; "
            f"got {preconditioning!r}."
        )
    resolve = route_resolver(fn, "weight_dimension_numbers", weight_dimension_numbers)
    spec = HyperparamSpec(fn, dict(beta=beta, eps=eps), rates=("beta",))

    def init_fn(params: Params) -> MuonState:
        for leaf in resolve(params):  # a bad routing fails at init, naming the path
            if leaf.spec.dims is not None:
                matrix_view(
                    fn, path_of(leaf.keys) or "<root>", jnp.shape(leaf.leaf), leaf.spec.dims
                )
        return MuonState(jnp.zeros([], jnp.int32), _tree.zeros_like(params, mu_dt), spec.init())

    def orthogonalize(m: jax.Array, eps_: jax.Array, leaf: Leaf) -> jax.Array:
        dims = leaf.spec.dims
        where = path_of(leaf.keys) or "<root>"
        if dims is None and weight_dimension_numbers is not None:
            return m  # marked "not a matrix": the momentum only
        if dims is None:
            raise ValueError(
                f"{fn}: the update at {where} has shape {m.shape}, not a matrix. Use gc.muon "
                f"(it sends non-matrices to AdamW), or give `weight_dimension_numbers` with None "
                f"there (momentum only) or MuonDimensionNumbers for a stack of matrices."
            )
        if jnp.iscomplexobj(m):
            raise TypeError(
                f"{fn}: the update at {where} is {m.dtype}; Newton-Schulz orthogonalizes real "
                f"matrices only. Route complex parameters elsewhere (None in "
                f"`weight_dimension_numbers`, or gc.split_real_and_imaginary around the optimizer)."
            )
        view = matrix_view(fn, where, m.shape, dims)
        mats = _as_matrices(m, view)

        def one(x: jax.Array) -> jax.Array:
            o = _linalg.newton_schulz(x, coeffs, preconditioning=preconditioning, eps=eps_)
            if adaptive:
                o = o * jnp.sum(x * o)
            return o

        return _from_matrices(jax.vmap(one)(mats), view, m.shape)

    def update_fn(
        updates: Updates, state: MuonState, params: Params | None = None
    ) -> tuple[Updates, MuonState]:
        _tree.check_state(fn, state, MuonState)
        _tree.check_matches(fn, updates, "state.mu", state.mu)
        if params is not None:
            _tree.check_matches(fn, updates, "params", params)
        leaves = resolve(params if params is not None else updates)
        hp = values(state.hparams)
        step = _tree.safe_increment(state.step)
        c1 = _tree.debias(hp["beta"], step)
        c1_next = _tree.debias(hp["beta"], _tree.safe_increment(step))
        scalars = (hp["beta"], state.hparams.complement["beta"], hp["eps"], c1, c1_next)
        treedef = jax.tree.structure(updates)
        outs, mus = [], []
        for g, m, leaf in zip(
            jax.tree.leaves(updates), jax.tree.leaves(state.mu), leaves, strict=True
        ):
            gc, mc, b, omb, eps_, c1_, c1n = _tree.upcast(g, m, *scalars)
            new_m = omb * gc + b * mc
            m_hat = b * (new_m / c1n) + omb * (gc / c1_) if nesterov else new_m / c1_
            outs.append(orthogonalize(m_hat, eps_, leaf).astype(g.dtype))
            mus.append(new_m.astype(m.dtype))
        new_state = MuonState(step, treedef.unflatten(mus), spec.advance(state.hparams, step))
        return treedef.unflatten(outs), new_state

    return GradientTransformation(init_fn, update_fn)


def _scale_by_muon_shape(
    resolve: Callable[[Any], list[Leaf]], consistent_rms: float | None
) -> GradientTransformation:
    """Muon's per-matrix scale: width ``sqrt(max(1, fan_out/fan_in))`` or consistent RMS."""
    fn = "muon"
    hps: dict[str, ScalarOrSchedule] = {}
    if consistent_rms is not None:
        hps["consistent_rms"] = consistent_rms

    def apply(updates: Updates, params: Params | None, hp: dict[str, jax.Array]) -> Updates:
        if params is not None:
            _tree.check_matches(fn, updates, "params", params)
        leaves = resolve(params if params is not None else updates)
        treedef = jax.tree.structure(updates)
        out = []
        for u, leaf in zip(jax.tree.leaves(updates), leaves, strict=True):
            if leaf.spec.dims is None:
                out.append(u)
                continue
            view = matrix_view(fn, path_of(leaf.keys), u.shape, leaf.spec.dims)
            if consistent_rms is None:
                factor = jnp.float32(math.sqrt(max(1.0, view.fan_out / view.fan_in)))
            else:
                factor = hp["consistent_rms"] * math.sqrt(max(view.fan_in, view.fan_out))
            uc, f = _tree.upcast(u, factor)
            out.append((uc * f).astype(u.dtype))
        return treedef.unflatten(out)

    return hyperparam_transform(fn, ScaleByMuonShapeState, hps, apply)


def muon(
    learning_rate: ScalarOrSchedule,
    ns_coeffs: _linalg.NsCoeffs = _linalg.MUON_COEFFS,
    ns_steps: int = 5,
    beta: ScalarOrSchedule = 0.95,
    eps: ScalarOrSchedule = 1e-8,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: MaskOrFn | None = None,
    mu_dtype: Any | None = None,
    *,
    nesterov: bool = True,
    adaptive: bool = False,
    preconditioning: Preconditioning = "frobenius",
    adam_b1: ScalarOrSchedule = 0.9,
    adam_b2: ScalarOrSchedule = 0.999,
    adam_eps_root: ScalarOrSchedule = 0.0,
    adam_weight_decay: ScalarOrSchedule = 0.0,
    adam_learning_rate: ScalarOrSchedule | None = None,
    muon_weight_dimension_numbers: Any | None = None,
    consistent_rms: float | None = None,
) -> GradientTransformationExtraArgs:
    r"""Muon for the matrices, AdamW for everything else, routed per parameter.

    The two groups, as visible chains:

    - ``"muon"``: ``chain(scale_by_muon(...), <shape scale>,
      add_decayed_weights(weight_decay, weight_decay_mask),
      scale_by_learning_rate(learning_rate))``;
    - ``"adam"``: ``chain(scale_by_adam(adam_b1, adam_b2, eps, adam_eps_root,
      nesterov=nesterov),
      add_decayed_weights(adam_weight_decay, weight_decay_mask),
      scale_by_learning_rate(adam_learning_rate or learning_rate))``.

    Routing: by default a 2-D parameter goes to Muon as an (in, out) matrix and
    every other leaf (vectors, scalars, embeddings stacked in 3-D...) to AdamW,
    as in Optax. ``muon_weight_dimension_numbers`` overrides it: None at a leaf
    sends it to AdamW, a :class:`MuonDimensionNumbers` to Muon with those axes
    (``MuonDimensionNumbers(-2, -1)`` for scanned layers (L, in, out)). See the
    routing with ``gc.explain(tx, params)`` (groups ``"muon"`` and ``"adam"``)
    or :func:`muon_routing` (each leaf's matrix view and scale), and read the
    hyperparameters as ``"muon/learning_rate"``, ``"adam/b2"``...

    Scaling of non-square matrices. Newton-Schulz returns singular values near
    1 whatever the shape, so the update's RMS is ``1/sqrt(max(fan_in,
    fan_out))``-ish. Three rules are in use:

    - Optax's default (``consistent_rms=None``): ``sqrt(max(1, fan_out /
      fan_in))``, fan_in/fan_out being the sizes of the reduction/output axes.
    - Keller Jordan's ``max(1, rows/cols) ** 0.5`` on PyTorch's (out, in)
      weights: the same rule in PyTorch's layout. For a weight stored (out,
      in), give ``MuonDimensionNumbers(reduction_axis=1, output_axis=0)`` and
      get his numbers; applying his formula to a Flax (in, out) kernel as
      stored would scale the transposed way.
    - Moonlight's (Liu et al. 2025) ``0.2 * sqrt(max(fan_in, fan_out))``, which
      matches AdamW's update RMS: ``consistent_rms=0.2`` (a settable
      hyperparameter, ``"muon/consistent_rms"``).

    Args:
      learning_rate: >= 0, or a schedule.
      ns_coeffs: see :func:`scale_by_muon`.
      ns_steps: see :func:`scale_by_muon`.
      beta: Muon's momentum decay, in [0, 1).
      eps: Muon's norm epsilon and Adam's eps, >= 0.
      weight_decay: decoupled weight decay of the Muon group, >= 0.
      weight_decay_mask: where to decay (both groups): bools like the params,
        or a function of them.
      mu_dtype: dtype of Muon's momentum.
      nesterov: Nesterov momentum, for both groups (NAdam in the Adam group, as Optax).
      adaptive: see :func:`scale_by_muon`.
      preconditioning: see :func:`scale_by_muon`.
      adam_b1: Adam's first-moment decay, in [0, 1).
      adam_b2: Adam's second-moment decay, in [0, 1).
      adam_eps_root: Adam's eps inside the root, >= 0.
      adam_weight_decay: decoupled weight decay of the Adam group, >= 0.
      adam_learning_rate: the Adam group's rate; ``learning_rate`` if None.
      muon_weight_dimension_numbers: the routing, as ``weight_dimension_numbers``
        of :func:`scale_by_muon` (None entries go to Adam).
      consistent_rms: if given (> 0), scale each matrix update by
        ``consistent_rms * sqrt(max(fan_in, fan_out))`` instead of the width rule.

    Returns:
      A GradientTransformationExtraArgs whose state is a PartitionState with
      the groups ``"adam"`` and ``"muon"``.

    Raises:
      ValueError: for a number out of range; at init, a routing that does not
        fit the parameters, naming the key path.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> params = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}
      >>> tx = gc.muon(learning_rate=0.02)
      >>> gc.explain(tx, params).assignment
      {'b': 'adam', 'w': 'muon'}
      >>> state = tx.init(params)
      >>> round(float(gc.get_hyperparams(state)["muon/beta"]), 3)
      0.95

    References:
      Jordan et al., Muon: An optimizer for hidden layers in neural networks, 2024.
      Liu et al., Muon is Scalable for LLM Training, 2025 (arXiv:2502.16982).
    """
    fn = "muon"
    _check.non_negative(fn, "learning_rate", learning_rate, schedule_ok=True)
    _check.decay_rate(fn, "beta", beta, schedule_ok=True)
    _check.decay_rate(fn, "adam_b1", adam_b1, schedule_ok=True)
    _check.decay_rate(fn, "adam_b2", adam_b2, schedule_ok=True)
    for name, value in dict(
        eps=eps,
        weight_decay=weight_decay,
        adam_eps_root=adam_eps_root,
        adam_weight_decay=adam_weight_decay,
    ).items():
        _check.non_negative(fn, name, value, schedule_ok=True)
    if adam_learning_rate is not None:
        _check.non_negative(fn, "adam_learning_rate", adam_learning_rate, schedule_ok=True)
    if consistent_rms is not None:
        _check.positive(fn, "consistent_rms", consistent_rms)
    routes = route_resolver(fn, "muon_weight_dimension_numbers", muon_weight_dimension_numbers)

    def muon_group(dims: DimensionNumbersOf) -> GradientTransformationExtraArgs:
        return chain(
            scale_by_muon(
                ns_coeffs,
                ns_steps,
                beta,
                eps,
                mu_dtype,
                nesterov=nesterov,
                adaptive=adaptive,
                preconditioning=preconditioning,
                weight_dimension_numbers=dims,
            ),
            _scale_by_muon_shape(dims.resolve, consistent_rms),
            add_decayed_weights(weight_decay, weight_decay_mask),
            scale_by_learning_rate(learning_rate),
        )

    adam = chain(
        scale_by_adam(adam_b1, adam_b2, eps, adam_eps_root, nesterov=nesterov),
        add_decayed_weights(adam_weight_decay, weight_decay_mask),
        scale_by_learning_rate(learning_rate if adam_learning_rate is None else adam_learning_rate),
    )
    return build_matrix_partition(
        fn,
        muon_group,
        adam,
        routes,
        ("muon", "adam"),
        ("matrices (muon_weight_dimension_numbers)", "everything else"),
    )


class MuonRoute(NamedTuple):
    """One row of :func:`muon_routing`."""

    path: str
    shape: tuple[int, ...]
    group: str  # "muon" or "adam"
    view: MatrixView | None  # the matrices Muon sees, for the Muon group
    scale: float | None  # the shape scale the update gets (width rule or consistent_rms)


def muon_routing(
    params: Any,
    muon_weight_dimension_numbers: Any | None = None,
    *,
    consistent_rms: float | None = None,
) -> tuple[MuonRoute, ...]:
    """Where :func:`muon` sends each parameter, and as which matrices, with what scale.

    The same routing as :func:`matrix_routing` with the labels ``"muon"`` and
    ``"adam"`` (except that one MuonDimensionNumbers applies to every leaf, as
    in :func:`scale_by_muon`), plus Muon's shape scale of each matrix.

    Args:
      params: the parameters (arrays or ``jax.ShapeDtypeStruct``).
      muon_weight_dimension_numbers: as given to :func:`muon`.
      consistent_rms: as given to :func:`muon`.

    Returns:
      One :class:`MuonRoute` per leaf, in tree order.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> params = {"w": jnp.ones((4, 8)), "b": jnp.zeros(8)}
      >>> [(r.path, r.group, r.scale) for r in gc.muon_routing(params)]
      [('b', 'adam', None), ('w', 'muon', 1.414)]
    """
    fn = "muon_routing"
    if consistent_rms is not None:
        _check.positive(fn, "consistent_rms", consistent_rms)
    rows = []
    for leaf in route_resolver(fn, "muon_weight_dimension_numbers", muon_weight_dimension_numbers)(
        params
    ):
        path, shape = path_of(leaf.keys), tuple(jnp.shape(leaf.leaf))
        dims = leaf.spec.dims
        if dims is None:
            rows.append(MuonRoute(path, shape, "adam", None, None))
            continue
        view = matrix_view(fn, path or "<root>", shape, dims)
        if consistent_rms is None:
            scale = math.sqrt(max(1.0, view.fan_out / view.fan_in))
        else:
            scale = consistent_rms * math.sqrt(max(view.fan_in, view.fan_out))
        rows.append(MuonRoute(path, shape, "muon", view, round(scale, 3)))
    return tuple(rows)
