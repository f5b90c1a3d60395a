r"""Scion: momentum, then the linear minimization oracle of a per-layer norm.

Pethick et al. (2025), "Training Deep Learning Models with Norm-Constrained
LMOs" (arXiv:2502.07529). Each parameter gets a norm by rule (spectral for
hidden matrices, column or row normalisation or sign for the first and last
layers, sign or RMS for vectors); the update is the LMO of the averaged
gradient over that norm's ball of radius :math:`\rho`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

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
from gradchain._hyperparams import Hyperparams, HyperparamSpec, values
from gradchain._keypaths import Leaf, leaves_with_keys, segments, walk
from gradchain._matrices import (
    MatrixView,
    _as_matrices,
    _from_matrices,
    _matcher,
    matrix_view,
    route_resolver,
)
from gradchain._regularizing import add_decayed_weights
from gradchain._routing import _rank_rule
from gradchain._rules import path_of
from gradchain._scaling import scale_by_learning_rate

NORMS = ("auto", "spectral", "colnorm", "rownorm", "sign", "rms")
_MATRIX_ONLY = ("spectral", "colnorm", "rownorm")


@dataclass(frozen=True)
class ScionNorm:
    r"""A parameter's norm in :func:`scale_by_scion`, with its radius multiplier.

    Attributes:
      kind: ``"spectral"`` (:math:`\|\cdot\|_{RMS \to RMS}`, hidden matrices),
        ``"colnorm"`` (:math:`\|\cdot\|_{1 \to RMS}`, one-hot inputs and
        embeddings), ``"rownorm"`` (:math:`\|\cdot\|_{RMS \to \infty}`, output
        layers), ``"sign"`` (:math:`\|\cdot\|_{1 \to \infty}` for a matrix,
        :math:`\ell_\infty` for anything else), ``"rms"`` (:math:`\|\cdot\|_{RMS}`,
        biases and gains) or ``"auto"`` (spectral for matrices, sign otherwise).
      scale: this layer's radius as a multiple of ``radius`` (> 0; the paper
        tunes the output layer's radius apart from the others).
    """

    kind: str = "auto"
    scale: float = 1.0


class ScaleByScionState(NamedTuple):
    """State of :func:`scale_by_scion`."""

    step: jax.Array  # int32[], updates seen so far
    mu: Updates  # the averaged gradient d, in mu_dtype
    hparams: Hyperparams  # beta (with 1 - beta), radius, eps


def _as_norm(fn: str, where: str, x: Any) -> ScionNorm:
    norm = ScionNorm(x) if isinstance(x, str) else x
    if not isinstance(norm, ScionNorm):
        raise TypeError(
            f"{fn}: the norm at {where} must be one of {list(NORMS)} or a gc.ScionNorm; got "
            f"{type(x).__name__} {x!r:.60}."
        )
    if norm.kind not in NORMS:
        raise ValueError(
            f"{fn}: the norm at {where} is {norm.kind!r}; the norms are {list(NORMS)}."
        )
    _check.positive(fn, f"the scale of the norm at {where}", norm.scale)
    return norm


def _is_norm_rules(spec: Any) -> bool:
    return (
        isinstance(spec, list | tuple)
        and bool(spec)
        and all(
            isinstance(r, tuple) and len(r) == 2 and isinstance(r[0], str | re.Pattern)
            for r in spec
        )
    )


def norm_resolver(fn: str, norms: Any) -> Callable[[Any], list[ScionNorm]]:
    """A function from a tree to each leaf's ScionNorm, in ``jax.tree.leaves`` order."""
    if norms is None or isinstance(norms, str | ScionNorm):
        fixed = _as_norm(fn, "every leaf", "auto" if norms is None else norms)
        return lambda tree: [fixed] * len(jax.tree.leaves(tree))
    if _is_norm_rules(norms):
        rules = [
            (_matcher(fn, "norms", p), _as_norm(fn, f"rule {i} ({p!r})", n))
            for i, (p, n) in enumerate(norms)
        ]
        auto = ScionNorm()

        def by_rules(tree: Any) -> list[ScionNorm]:
            out = []
            for keys, _ in leaves_with_keys(tree):
                parts = segments(keys)
                out.append(next((n for match, n in rules if match(parts)), auto))
            return out

        return by_rules

    def check(keys: tuple[Any, ...], entry: Any) -> ScionNorm:
        return _as_norm(fn, f"`norms` {_tree.keystr(keys)}", entry)

    def by_tree(tree: Any) -> list[ScionNorm]:
        spec = norms(tree) if callable(norms) else norms
        return [leaf.spec for leaf in walk(fn, "norms", spec, tree, check)]

    return by_tree


def _direction(
    kind: str, d: jax.Array, view: MatrixView | None, shape: tuple[int, ...], steps: Any, eps: Any
) -> jax.Array:
    """``-lmo(d) / rho``: the unit-ball maximizer of <d, x> for the norm ``kind`` (float32+)."""
    if view is None:  # not a matrix: l_inf (sign) or RMS over the whole leaf
        if kind == "rms":
            return d / (jnp.sqrt(jnp.mean(d * d)) + eps)
        return jnp.sign(d)
    m = _as_matrices(d, view)  # (batch, fan_in, fan_out), y = x @ W
    if kind == "spectral":
        ns = jax.vmap(lambda x: _linalg.newton_schulz(x, steps, eps=eps))(m)
        out = math.sqrt(view.fan_out / view.fan_in) * ns
    elif kind == "colnorm":  # each input's weights to RMS 1: ||.||_{1->RMS}
        rms = jnp.sqrt(jnp.sum(m * m, axis=2, keepdims=True)) / math.sqrt(view.fan_out)
        out = m / (rms + eps)
    elif kind == "rownorm":  # each output's weights to l2 norm 1/sqrt(fan_in): ||.||_{RMS->inf}
        norm = jnp.sqrt(jnp.sum(m * m, axis=1, keepdims=True)) * math.sqrt(view.fan_in)
        out = m / (norm + eps)
    elif kind == "rms":
        rms = jnp.sqrt(jnp.mean(m * m, axis=(1, 2), keepdims=True))
        out = m / (rms + eps)
    else:  # sign: ||.||_{1->inf}
        out = jnp.sign(m) / view.fan_in
    return _from_matrices(out, view, shape)


def scale_by_scion(
    beta: ScalarOrSchedule = 0.9,
    radius: ScalarOrSchedule = 1.0,
    eps: ScalarOrSchedule = 1e-8,
    mu_dtype: Any | None = None,
    *,
    norms: Any | None = None,
    weight_dimension_numbers: Any | None = None,
    ns_coeffs: _linalg.NsCoeffs = _linalg.MUON_COEFFS,
    ns_steps: int = 5,
) -> GradientTransformation:
    r"""Averages the gradients, then returns the negated LMO of each parameter's norm ball.

    .. math::
      d_t = \beta d_{t-1} + (1 - \beta) g_t, \qquad
      u_t = -\mathrm{lmo}_{\|\cdot\| \le \rho_\ell}(d_t)
          = \rho_\ell \arg\max_{\|x\| \le 1} \langle d_t, x \rangle,

    (the paper's :math:`\alpha` is :math:`1 - \beta`; its reference code's
    ``momentum=0.1`` is ``beta=0.9``; ``beta=0`` is no averaging). With
    :math:`W` a (fan_in, fan_out) matrix (``y = x @ W``, Flax's layout; see
    ``weight_dimension_numbers``), the norms and their :math:`u/\rho_\ell`, from
    the paper's table of operator norms (Pethick et al. 2025, Table 2):

    - ``"spectral"`` (:math:`\|\cdot\|_{RMS\to RMS}`, hidden layers):
      :math:`\sqrt{\text{fan\_out}/\text{fan\_in}}\, UV^T`, with :math:`UV^T`
      by Newton-Schulz (:func:`scale_by_muon`'s iteration);
    - ``"colnorm"`` (:math:`\|\cdot\|_{1\to RMS}`, one-hot inputs, embeddings
      stored (vocab, dim)): each input's row scaled to RMS 1;
    - ``"rownorm"`` (:math:`\|\cdot\|_{RMS\to\infty}`, output layers): each
      output's column scaled to :math:`\ell_2` norm :math:`1/\sqrt{\text{fan\_in}}`;
    - ``"sign"``: :math:`\mathrm{sign}(d)/\text{fan\_in}` on a matrix
      (:math:`\|\cdot\|_{1\to\infty}`, output layers), :math:`\mathrm{sign}(d)`
      on anything else (:math:`\ell_\infty`, biases);
    - ``"rms"`` (:math:`\|\cdot\|_{RMS}`): :math:`d / \mathrm{RMS}(d)`, per matrix;
    - ``"auto"`` (the default): spectral for matrices, sign otherwise (the
      reference code's rule).

    :math:`\rho_\ell` is ``radius`` times the leaf's ``ScionNorm.scale``.
    Divisions add ``eps`` to the norm. Stacked layers are batches of matrices:
    each matrix is normalised alone.

    Args:
      beta: gradient averaging, in [0, 1) (the paper's :math:`1 - \alpha`).
      radius: the norm balls' radius :math:`\rho`, > 0.
      eps: added to every norm before dividing, >= 0.
      mu_dtype: dtype of the average; the parameters' by default.
      norms: each parameter's norm: None (``"auto"``), one name or
        :class:`ScionNorm` for every leaf, a tree (prefix) of them, a function
        of the parameters returning one, or path rules ``[(pattern, norm),
        ...]`` (first match wins; unmatched leaves are ``"auto"``), e.g.
        ``[("embed/**", "colnorm"), ("head/kernel", gc.ScionNorm("sign",
        scale=10.0))]``.
      weight_dimension_numbers: which axes form each leaf's matrix, as for
        :func:`matrix_partition` (None: 2-D leaves are (in, out) matrices;
        one :class:`MuonDimensionNumbers` for every leaf of rank >= 2; a tree,
        function or path rules; None entries are not matrices).
      ns_coeffs: the Newton-Schulz coefficients (see :func:`scale_by_muon`).
      ns_steps: Newton-Schulz steps, >= 1.

    Returns:
      A GradientTransformation whose state is a ScaleByScionState.

    Raises:
      ValueError: for a number out of range or an unknown norm; at trace time,
        a matrix norm on a leaf that is not a matrix, naming its path.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> g = {"w": jnp.array([[3.0, 0.0], [0.0, 0.5]]), "b": jnp.array([-2.0, 0.1])}
      >>> tx = gc.scale_by_scion(beta=0.0, ns_coeffs=(1.5, -0.5, 0.0), ns_steps=30)
      >>> u, _ = tx.update(g, tx.init(g))
      >>> [round(float(x), 3) for x in u["w"].ravel()], u["b"].tolist()
      ([1.0, 0.0, 0.0, 1.0], [-1.0, 1.0])

    References:
      Pethick, Xie, Erdogan, Antonakopoulos, Silveti-Falls and Cevher, Training
      Deep Learning Models with Norm-Constrained LMOs, ICML 2025 (arXiv:2502.07529).
    """
    fn = "scale_by_scion"
    _check.decay_rate(fn, "beta", beta, schedule_ok=True)
    _check.positive(fn, "radius", radius, schedule_ok=True)
    _check.non_negative(fn, "eps", eps, schedule_ok=True)
    mu_dt = _check.dtype_or_none(fn, "mu_dtype", mu_dtype)
    steps = _linalg.ns_schedule(fn, ns_coeffs, ns_steps)
    routes = route_resolver(fn, "weight_dimension_numbers", _rank_rule(weight_dimension_numbers))
    norms_of = norm_resolver(fn, norms)
    spec = HyperparamSpec(fn, dict(beta=beta, radius=radius, eps=eps), rates=("beta",))

    def plan(tree: Any) -> list[tuple[str, MatrixView | None, float]]:
        """Each leaf's (norm kind, matrix view or None, radius multiplier), checked."""
        out = []
        for leaf, norm in zip(routes(tree), norms_of(tree), strict=True):
            out.append(_plan_one(fn, leaf, norm))
        return out

    def init_fn(params: Params) -> ScaleByScionState:
        plan(params)  # a bad routing or norm fails at init, naming the path
        return ScaleByScionState(
            jnp.zeros([], jnp.int32), _tree.zeros_like(params, mu_dt), spec.init()
        )

    def update_fn(
        updates: Updates, state: ScaleByScionState, params: Params | None = None
    ) -> tuple[Updates, ScaleByScionState]:
        _tree.check_state(fn, state, ScaleByScionState)
        _tree.check_matches(fn, updates, "state.mu", state.mu)
        if params is not None:
            _tree.check_matches(fn, updates, "params", params)
        leaves = plan(params if params is not None else updates)
        hp = values(state.hparams)
        scalars = (hp["beta"], state.hparams.complement["beta"], hp["radius"], hp["eps"])
        treedef = jax.tree.structure(updates)
        outs, mus = [], []
        for g, m, (kind, view, scale) in zip(
            jax.tree.leaves(updates), jax.tree.leaves(state.mu), leaves, strict=True
        ):
            gc, mc, b, omb, rho, eps_ = _tree.upcast(g, m, *scalars)
            d = b * mc + omb * gc
            u = _direction(kind, d, view, g.shape, steps, eps_)
            outs.append((rho * scale * u).astype(g.dtype))
            mus.append(d.astype(m.dtype))
        step = _tree.safe_increment(state.step)
        new_state = ScaleByScionState(
            step, treedef.unflatten(mus), spec.advance(state.hparams, step)
        )
        return treedef.unflatten(outs), new_state

    return GradientTransformation(init_fn, update_fn)


def _plan_one(fn: str, leaf: Leaf, norm: ScionNorm) -> tuple[str, MatrixView | None, float]:
    where = path_of(leaf.keys) or "<root>"
    shape = tuple(jnp.shape(leaf.leaf))
    dims = leaf.spec.dims
    view = None if dims is None else matrix_view(fn, where, shape, dims)
    kind = norm.kind if norm.kind != "auto" else ("spectral" if view is not None else "sign")
    if kind in _MATRIX_ONLY and view is None:
        raise ValueError(
            f"{fn}: the norm at {where} is {kind!r}, a matrix norm, but the parameter there "
            f"(shape {shape}) is not a matrix. Give it 'sign' or 'rms' in `norms`, or say "
            f"which axes form its matrix in `weight_dimension_numbers`."
        )
    if jnp.issubdtype(jnp.result_type(leaf.leaf), jnp.complexfloating):
        raise TypeError(
            f"{fn}: the parameter at {where} is complex; Scion's norms are of real "
            f"parameters. Wrap the optimizer in gc.split_real_and_imaginary."
        )
    return kind, view, float(norm.scale)


def scion(
    learning_rate: ScalarOrSchedule,
    beta: ScalarOrSchedule = 0.9,
    radius: ScalarOrSchedule = 1.0,
    eps: ScalarOrSchedule = 1e-8,
    mu_dtype: Any | None = None,
    *,
    unconstrained: bool = False,
    norms: Any | None = None,
    weight_dimension_numbers: Any | None = None,
    ns_coeffs: _linalg.NsCoeffs = _linalg.MUON_COEFFS,
    ns_steps: int = 5,
) -> GradientTransformationExtraArgs:
    r"""Scion (constrained, the paper's SCG) or uScion (``unconstrained=True``, uSCG).

    With :math:`\gamma` the learning rate and :math:`\mathrm{lmo}` as in
    :func:`scale_by_scion`:

    .. math::
      \text{Scion: } x \leftarrow (1 - \gamma) x + \gamma\, \mathrm{lmo}(d)
      \qquad \text{uScion: } x \leftarrow x + \gamma\, \mathrm{lmo}(d).

    Scion's shrinkage is decoupled weight decay of rate 1, so both are the
    one visible chain ``chain(scale_by_scion(beta, radius, eps, mu_dtype,
    ...), add_decayed_weights(0.0 if unconstrained else 1.0),
    scale_by_learning_rate(learning_rate))``: the state has the same structure
    either way, and ``"weight_decay"`` can be set between 0 and 1 like any
    hyperparameter. With the constrained form the parameters stay in (and
    converge into) the ball of radius ``radius``.

    Args:
      learning_rate: :math:`\gamma`, >= 0 (in [0, 1] for Scion), or a schedule.
      beta: gradient averaging, in [0, 1).
      radius: the norm balls' radius :math:`\rho`, > 0.
      eps: added to every norm before dividing, >= 0.
      mu_dtype: dtype of the average.
      unconstrained: uScion: no shrinkage towards 0.
      norms: see :func:`scale_by_scion`.
      weight_dimension_numbers: see :func:`scale_by_scion`.
      ns_coeffs: see :func:`scale_by_muon`.
      ns_steps: Newton-Schulz steps, >= 1.

    Returns:
      A GradientTransformationExtraArgs whose state is the chain's tuple of states.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
      >>> tx = gc.scion(0.1, beta=0.0, radius=2.0)
      >>> grads = {"w": jnp.ones((2, 2)), "b": jnp.array([1.0, -1.0])}
      >>> u, state = tx.update(grads, tx.init(params), params)
      >>> [round(x, 3) for x in u["b"].tolist()]  # -0.1 * (2 * sign(g) + b)
      [-0.3, 0.1]
      >>> round(float(gc.get_hyperparams(state)["radius"]), 3)
      2.0
    """
    fn = "scion"
    _check.non_negative(fn, "learning_rate", learning_rate, schedule_ok=True)
    _check.decay_rate(fn, "beta", beta, schedule_ok=True)
    _check.positive(fn, "radius", radius, schedule_ok=True)
    _check.non_negative(fn, "eps", eps, schedule_ok=True)
    return chain(
        scale_by_scion(
            beta,
            radius,
            eps,
            mu_dtype,
            norms=norms,
            weight_dimension_numbers=weight_dimension_numbers,
            ns_coeffs=ns_coeffs,
            ns_steps=ns_steps,
        ),
        add_decayed_weights(0.0 if unconstrained else 1.0),
        scale_by_learning_rate(learning_rate),
    )
