r"""ADOPT and ACProp: two ways of changing what Adam divides by, and when.

- ADOPT (Taniguchi et al., 2024) divides the gradient by the second moment
  of the *previous* steps before the momentum, and clips the result; its
  first step only records :math:`g^2`.
- ACProp (Zhuang et al., 2021) divides by the previous steps' variance of
  the prediction error :math:`g_t - m_{t-1}` (asynchronous and centred).
(MADGRAD, the third of this family in Optax's contrib, is in ``_madgrad.py``.)

Optax 0.2.8 has both in ``optax.contrib`` with these names, signatures
and numbers. Every numeric hyperparameter lives in the state (see
:func:`get_hyperparams`), moments keep the parameters' dtype (``mu_dtype``
for ADOPT's momentum), and arithmetic is in float32 or wider.
"""

from __future__ import annotations

from collections.abc import Callable
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
)
from gradchain._combine import chain
from gradchain._hyperparams import Hyperparams, HyperparamSpec, values
from gradchain._optimizers import optional_weight_decay
from gradchain._regularizing import add_decayed_weights
from gradchain._scaling import scale_by_learning_rate
from gradchain._wrappers import MaskOrFn


def _quarter_power(step: jax.Array) -> jax.Array:
    return step**0.25


class ScaleByAdoptState(NamedTuple):
    """State of :func:`scale_by_adopt`."""

    step: jax.Array  # int32[], updates seen so far
    mu: Updates  # EMA of the normalized (and clipped) gradients, in mu_dtype
    nu: Updates  # EMA of the squared gradients; g_1^2 after the first update
    hparams: Hyperparams


def scale_by_adopt(
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.9999,
    eps: ScalarOrSchedule = 1e-6,
    mu_dtype: Any | None = None,
    *,
    nesterov: bool = False,
    use_clipping: bool = True,
    clip_value_fn: Callable[[jax.Array], Any] = _quarter_power,
) -> GradientTransformation:
    r"""ADOPT's scaling: normalize by the past second moment first, then average.

    The first update returns zeros and sets :math:`\nu = g_1^2`. Then, with
    :math:`t` the number of updates before this one,

    .. math::
      x = \mathrm{clip}\big(g / \max(\sqrt{\nu}, \epsilon),\ c(t)\big), \quad
      m \leftarrow \beta_1 m + (1-\beta_1) x, \quad u = m, \quad
      \nu \leftarrow \beta_2 \nu + (1-\beta_2) g^2,

    with :math:`u = \beta_1 m + (1-\beta_1) x` when ``nesterov``. Because
    :math:`\nu` excludes the current gradient, ADOPT converges for any
    :math:`\beta_2` (the paper's point); the clip keeps early steps bounded.

    Args:
      b1: decay of the momentum, in [0, 1).
      b2: decay of the second moment, in [0, 1).
      eps: lower bound of :math:`\sqrt{\nu}`, >= 0.
      mu_dtype: dtype of the momentum; the parameters' by default.
      nesterov: use a Nesterov look-ahead momentum.
      use_clipping: clip the normalized gradient to :math:`[-c(t), c(t)]`.
      clip_value_fn: :math:`c`, a function of :math:`t` (given as a float32
        scalar); :math:`t^{1/4}` by default, as in the paper and Optax.

    Returns:
      A GradientTransformation whose state is a ScaleByAdoptState.

    Raises:
      ValueError: for a number out of range, or a dtype that is not a float.
      TypeError: if ``clip_value_fn`` is not callable.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.scale_by_adopt(b1=0.5, use_clipping=False)
      >>> state = tx.init(jnp.zeros(2))
      >>> u, state = tx.update(jnp.array([0.5, -2.0]), state)  # records g^2 only
      >>> u, _ = tx.update(jnp.array([1.0, 3.0]), state)
      >>> [round(float(x), 4) for x in u]  # 0.5 * g / |g_1|
      [1.0, 0.75]

    References:
      Taniguchi et al., ADOPT: Modified Adam Can Converge with Any beta2 with the
      Optimal Rate, NeurIPS 2024.
    """
    fn = "scale_by_adopt"
    _check.decay_rate(fn, "b1", b1, schedule_ok=True)
    _check.decay_rate(fn, "b2", b2, schedule_ok=True)
    _check.non_negative(fn, "eps", eps, schedule_ok=True)
    mu_dt = _check.dtype_or_none(fn, "mu_dtype", mu_dtype)
    if not callable(clip_value_fn):
        raise TypeError(
            f"{fn}: `clip_value_fn` must be a function of the step; got "
            f"{type(clip_value_fn).__name__} {clip_value_fn!r:.60}. For a fixed bound c, "
            f"pass `lambda step: c`."
        )
    spec = HyperparamSpec(fn, dict(b1=b1, b2=b2, eps=eps), rates=("b1", "b2"))

    def init_fn(params: Params) -> ScaleByAdoptState:
        return ScaleByAdoptState(
            jnp.zeros([], jnp.int32),
            _tree.zeros_like(params, mu_dt),
            _tree.zeros_like(params),
            spec.init(),
        )

    def update_fn(
        updates: Updates, state: ScaleByAdoptState, params: Params | None = None
    ) -> tuple[Updates, ScaleByAdoptState]:
        del params
        _tree.check_state(fn, state, ScaleByAdoptState)
        _tree.check_matches(fn, updates, "state.mu", state.mu)
        _tree.check_matches(fn, updates, "state.nu", state.nu)
        hp = values(state.hparams)
        comp = state.hparams.complement
        first = state.step == 0
        bound = jnp.asarray(clip_value_fn(state.step.astype(jnp.float32)))
        scalars = (hp["b1"], hp["b2"], comp["b1"], comp["b2"], hp["eps"], bound)

        def leaf(g: jax.Array, m: jax.Array, v: jax.Array) -> tuple[jax.Array, ...]:
            gc, mc, vc, b1_, b2_, o1, o2, eps_, c = _tree.upcast(g, m, v, *scalars)
            x = gc / jnp.maximum(jnp.sqrt(vc), eps_)
            if use_clipping:
                x = jnp.clip(x, -c, c)
            new_m = o1 * x + b1_ * mc
            out = b1_ * new_m + o1 * x if nesterov else new_m
            g2 = _tree.abs_sq(gc)
            new_v = jnp.where(first, g2, o2 * g2 + b2_ * vc)
            out = jnp.where(first, jnp.zeros_like(out), out)
            new_m = jnp.where(first, mc, new_m)
            return out.astype(g.dtype), new_m.astype(m.dtype), new_v.astype(v.dtype)

        updates, mu, nu = _tree.map_leaves(leaf, 3, updates, state.mu, state.nu)
        step = _tree.safe_increment(state.step)
        return updates, ScaleByAdoptState(step, mu, nu, spec.advance(state.hparams, step))

    return GradientTransformation(init_fn, update_fn)


def adopt(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.9999,
    eps: ScalarOrSchedule = 1e-6,
    mu_dtype: Any | None = None,
    *,
    nesterov: bool = False,
    use_clipping: bool = True,
    clip_value_fn: Callable[[jax.Array], Any] = _quarter_power,
    weight_decay: ScalarOrSchedule | None = None,
    mask: MaskOrFn | None = None,
) -> GradientTransformationExtraArgs:
    r"""ADOPT: :func:`scale_by_adopt` then the learning rate.

    :math:`w \leftarrow w - \eta\, u_t` with :math:`u_t` of :func:`scale_by_adopt`
    (zero at the first step). Optax has no weight decay here: the house rule's
    ``weight_decay=None, mask=None`` keep Optax's chain, and a number adds
    :func:`add_decayed_weights` before the learning rate (see
    ``gradchain/_optimizers.py``).

    Args:
      learning_rate: :math:`\eta`, a number or a schedule.
      b1: decay of the momentum, in [0, 1).
      b2: decay of the second moment, in [0, 1).
      eps: lower bound of the root of the second moment, >= 0.
      mu_dtype: dtype of the momentum.
      nesterov: use a Nesterov look-ahead momentum.
      use_clipping: clip the normalized gradient.
      clip_value_fn: the clipping bound as a function of the step.
      weight_decay: decoupled weight decay >= 0, a schedule, or None for none.
      mask: which parameters to decay; all by default.

    Returns:
      A GradientTransformationExtraArgs.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.adopt(0.1)
      >>> params = jnp.array([1.0, -2.0])
      >>> state = tx.init(params)
      >>> for _ in range(3):
      ...     u, state = tx.update(jax.grad(lambda w: jnp.sum(w**2))(params), state, params)
      ...     params = gc.apply_updates(params, u)
      >>> [round(float(x), 3) for x in params]
      [0.971, -1.971]

    References:
      Taniguchi et al., ADOPT: Modified Adam Can Converge with Any beta2 with the
      Optimal Rate, NeurIPS 2024.
    """
    return chain(
        scale_by_adopt(
            b1,
            b2,
            eps,
            mu_dtype,
            nesterov=nesterov,
            use_clipping=use_clipping,
            clip_value_fn=clip_value_fn,
        ),
        *optional_weight_decay("adopt", weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


class ScaleByAcpropState(NamedTuple):
    """State of :func:`scale_by_acprop`."""

    step: jax.Array  # int32[], updates seen so far
    mu: Updates  # EMA of the gradients: the prediction of the next one
    nu: Updates  # EMA of the squared prediction errors (plus eps_root per step)
    hparams: Hyperparams


def scale_by_acprop(
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-16,
    eps_root: ScalarOrSchedule = 1e-16,
) -> GradientTransformation:
    r"""ACProp's scaling: divide by the previous steps' variance of the prediction error.

    .. math::
      u_t = g_t / \big(\sqrt{s_{t-1} / (1-\beta_2^{t-1})} + \epsilon\big), \\
      s_t = \beta_2 s_{t-1} + (1-\beta_2)(g_t - m_{t-1})^2 + \epsilon_{root}, \quad
      m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t.

    At the first step there is no past to divide by and the root is taken as
    1 (:math:`u_1 = g_1 / (1 + \epsilon)`), as in Optax; so it is wherever
    :math:`s_{t-1} = 0` (only possible with ``eps_root=0`` and gradients that
    were exactly 0 so far), where Optax 0.2.8 divides by :math:`\epsilon`
    alone and steps by :math:`g / 10^{-16}`. The denominator never sees the
    current gradient (the "asynchronous" update) and is centred on the
    prediction :math:`m_{t-1}` of :math:`g_t`. These are Optax 0.2.8's numbers;
    its docstring writes :math:`(g_t - m_t)^2`, but its code, and this
    transform, use :math:`m_{t-1}`, the prediction made before :math:`g_t`.

    Args:
      b1: decay of the gradient EMA, in [0, 1).
      b2: decay of the error variance, in [0, 1).
      eps: added outside the root, >= 0.
      eps_root: added to the variance at every step, >= 0.

    Returns:
      A GradientTransformation whose state is a ScaleByAcpropState.

    Raises:
      ValueError: for a number out of range.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.scale_by_acprop(b1=0.5, b2=0.75, eps=0.0, eps_root=0.0)
      >>> state = tx.init(jnp.zeros(2))
      >>> u, state = tx.update(jnp.array([0.5, -2.0]), state)
      >>> u, _ = tx.update(jnp.array([1.0, 3.0]), state)
      >>> [round(float(x), 4) for x in u]  # g_2 / |g_1 - 0|
      [2.0, 1.5]

    References:
      Zhuang, Ding, Tang, Dvornek, Tatikonda and Duncan, Momentum Centering and
      Asynchronous Update for Adaptive Gradient Methods, NeurIPS 2021.
    """
    fn = "scale_by_acprop"
    _check.decay_rate(fn, "b1", b1, schedule_ok=True)
    _check.decay_rate(fn, "b2", b2, schedule_ok=True)
    _check.non_negative(fn, "eps", eps, schedule_ok=True)
    _check.non_negative(fn, "eps_root", eps_root, schedule_ok=True)
    spec = HyperparamSpec(fn, dict(b1=b1, b2=b2, eps=eps, eps_root=eps_root), rates=("b1", "b2"))

    def init_fn(params: Params) -> ScaleByAcpropState:
        zeros = _tree.zeros_like  # a buffer per field: a state can be donated
        return ScaleByAcpropState(
            jnp.zeros([], jnp.int32), zeros(params), zeros(params), spec.init()
        )

    def update_fn(
        updates: Updates, state: ScaleByAcpropState, params: Params | None = None
    ) -> tuple[Updates, ScaleByAcpropState]:
        del params
        _tree.check_state(fn, state, ScaleByAcpropState)
        _tree.check_matches(fn, updates, "state.mu", state.mu)
        _tree.check_matches(fn, updates, "state.nu", state.nu)
        hp = values(state.hparams)
        comp = state.hparams.complement
        # 1 - b2^0 = 0 at the first step (where s = 0): divide by 1 there, so nothing is 0/0.
        c2 = jnp.where(state.step == 0, 1, _tree.debias(hp["b2"], state.step))
        scalars = (hp["b1"], hp["b2"], comp["b1"], comp["b2"], hp["eps"], hp["eps_root"], c2)

        def leaf(g: jax.Array, m: jax.Array, s: jax.Array) -> tuple[jax.Array, ...]:
            gc, mc, sc, b1_, b2_, o1, o2, eps_, eps_root_, c = _tree.upcast(g, m, s, *scalars)
            # No past variance (the first step, or only exact zeros so far with eps_root = 0):
            # divide by 1, not by eps (a step of g / 1e-16 with the default eps).
            root = jnp.where(sc > 0, jnp.sqrt(sc / c), jnp.ones_like(sc))
            out = gc / (root + eps_)
            new_s = o2 * _tree.abs_sq(gc - mc) + b2_ * sc + eps_root_
            new_m = o1 * gc + b1_ * mc
            return out.astype(g.dtype), new_m.astype(m.dtype), new_s.astype(s.dtype)

        updates, mu, nu = _tree.map_leaves(leaf, 3, updates, state.mu, state.nu)
        step = _tree.safe_increment(state.step)
        return updates, ScaleByAcpropState(step, mu, nu, spec.advance(state.hparams, step))

    return GradientTransformation(init_fn, update_fn)


def acprop(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-16,
    eps_root: ScalarOrSchedule = 1e-16,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: MaskOrFn | None = None,
) -> GradientTransformationExtraArgs:
    r"""ACProp: :func:`scale_by_acprop`, decoupled weight decay, then the learning rate.

    :math:`w \leftarrow w - \eta\,(u_t + \lambda w)`; Optax's arguments,
    defaults and chain (the weight decay is always a member).

    Args:
      learning_rate: :math:`\eta`, a number or a schedule.
      b1: decay of the gradient EMA, in [0, 1).
      b2: decay of the error variance, in [0, 1).
      eps: added outside the root, >= 0.
      eps_root: added to the variance at every step, >= 0.
      weight_decay: :math:`\lambda` >= 0 (decoupled, scaled by the learning rate).
      mask: which parameters to decay; all by default.

    Returns:
      A GradientTransformationExtraArgs.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.acprop(0.1)
      >>> params = jnp.array([1.0, -2.0])
      >>> state = tx.init(params)
      >>> for _ in range(3):
      ...     u, state = tx.update(jax.grad(lambda w: jnp.sum(w**2))(params), state, params)
      ...     params = gc.apply_updates(params, u)
      >>> [round(float(x), 3) for x in params]
      [0.637, -1.432]

    References:
      Zhuang, Ding, Tang, Dvornek, Tatikonda and Duncan, Momentum Centering and
      Asynchronous Update for Adaptive Gradient Methods, NeurIPS 2021.
    """
    return chain(
        scale_by_acprop(b1, b2, eps, eps_root),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
