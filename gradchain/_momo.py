r"""MoMo and MoMo-Adam: momentum methods with a Polyak-type step size from the loss.

Both keep exponential averages of the gradients :math:`d_k`, the losses
:math:`\bar f_k` and the products :math:`\gamma_k = \mathrm{EMA}\langle g_i,
x_i\rangle`, whose model of the loss, :math:`h_k = \bar f_k + \langle d_k, x_k
\rangle - \gamma_k`, is truncated at a lower bound :math:`f_*` (Schaipp,
Ohana, Eickenberg, Defazio and Gower, 2023). The step size is the smaller of
the learning rate and the step at which the truncated model reaches
:math:`f_*`. ``update`` needs the loss: ``update(grads, state, params,
value=loss)``.

Weight decay is the paper's proximal step, :math:`x_{k+1} = (x_k - \tau_k
d_k) / (1 + \alpha_k\lambda)`, with the step size solved for it. Optax 0.2.8
computes that step size but applies :math:`x_k / (1 + \alpha_k\lambda) -
\tau_k d_k`, a gradient step :math:`1 + \alpha_k\lambda` times the paper's
(measured in tests/test_lr_free.py); without weight decay the two agree.
A ``mask`` restricts the decay; the step size is then solved for the masked
proximal step (it reduces to the paper's when every leaf decays).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradchain import _check, _tree
from gradchain._base import GradientTransformationExtraArgs, Params, ScalarOrSchedule, Updates
from gradchain._hyperparams import Hyperparams, HyperparamSpec, values
from gradchain._lr_free import check_inputs, decay_flags, vdot
from gradchain._wrappers import MaskOrFn, _full_mask

F32 = jnp.float32


def _step_size(
    hp: dict[str, Any],
    rho: jax.Array,
    barf: jax.Array,
    gamma: jax.Array,
    lb: jax.Array,
    dots: tuple[jax.Array, jax.Array],
    norms: tuple[jax.Array, jax.Array],
    adapt: bool,
) -> tuple[jax.Array, jax.Array]:
    """The step size tau and the next lower bound, from the scalars both methods share.

    ``dots`` and ``norms`` are (decayed leaves, other leaves) parts of <d, x> and
    ||d||^2 (in MoMo-Adam's metric).
    """
    lr, wd, floor = hp["learning_rate"], hp["weight_decay"], hp["lower_bound"]
    q = 1 + lr * wd
    dot_w = dots[0] + q * dots[1]
    norm_w = norms[0] + q * norms[1]
    if adapt:
        cap = q * (barf - gamma) + dot_w
        reset = jnp.maximum(cap / (2 * q * rho), floor)
        lb = jnp.where(cap < q * rho * lb, reset, lb)
    nom = q * (barf - rho * lb - gamma) + dot_w
    t1 = jnp.maximum(nom, 0) / jnp.where(norm_w > 0, norm_w, 1)
    tau = jnp.minimum(lr / rho, t1)
    if adapt:
        h = barf + dots[0] + dots[1] - gamma
        lb = jnp.maximum((h - 0.5 * tau * (norms[0] + norms[1])) / rho, floor)
    return tau, lb


def _split(terms: Any, decays: Any) -> tuple[jax.Array, jax.Array]:
    """Sums per-leaf scalars over decayed and over other leaves."""
    on = [t for t, d in zip(jax.tree.leaves(terms), jax.tree.leaves(decays), strict=True) if d]
    off = [t for t, d in zip(jax.tree.leaves(terms), jax.tree.leaves(decays), strict=True) if not d]
    zero = jnp.zeros([], F32)
    return sum(on, zero), sum(off, zero)


def _apply(
    mu: Any, scale: Any, params: Any, updates: Any, decays: Any, tau: jax.Array, q: jax.Array
) -> Any:
    """x_{k+1} - x_k for x_{k+1} = (x_k - tau * mu / scale) / q (q = 1 where not decayed)."""

    def leaf(m: jax.Array, s: jax.Array, p: jax.Array, g: jax.Array, decay: bool) -> jax.Array:
        mc, sc, pc, tau_, q_ = _tree.upcast(m, s, p, tau, q)
        step = -tau_ * mc / sc
        if decay:  # (x - step) / q - x, without the cancellation of subtracting x
            step = (step - (q_ - 1) * pc) / q_
        return step.astype(g.dtype)

    return jax.tree.map(leaf, mu, scale, params, updates, decays)


def _sum_sq(x: jax.Array) -> jax.Array:
    xc = _tree.upcast(x)[0]
    return jnp.sum(xc * xc).astype(F32)


class MomoState(NamedTuple):
    """State of :func:`momo`."""

    step: jax.Array  # int32[], updates seen so far
    mu: Updates  # d_k: EMA of the gradients
    barf: jax.Array  # float32[]: EMA of the losses
    gamma: jax.Array  # float32[]: EMA of <g_k, x_k>
    lb: jax.Array  # float32[]: the lower bound in use (learned with adapt_lower_bound)
    hparams: Hyperparams


def momo(
    learning_rate: ScalarOrSchedule = 1.0,
    beta: float = 0.9,
    lower_bound: float = 0.0,
    weight_decay: float = 0.0,
    adapt_lower_bound: bool = False,
    *,
    mask: MaskOrFn | None = None,
) -> GradientTransformationExtraArgs:
    r"""MoMo: SGD with momentum and the step size of a truncated model of the loss.

    The averages start at the first step's values, then
    :math:`d_k = \beta d_{k-1} + (1-\beta) g_k` (and likewise :math:`\bar f_k`,
    :math:`\gamma_k`); with :math:`q = 1 + \alpha_k\lambda`:

    .. math::
      \tau_k = \min\Big(\alpha_k, \frac{[q(\bar f_k - f_* - \gamma_k)
        + \langle d_k, x_k\rangle]_+}{\|d_k\|^2}\Big), \quad
      x_{k+1} = (x_k - \tau_k d_k) / q .

    Unlike Optax 0.2.8's: weight decay is the paper's proximal step (see the
    module's docstring), ``1 - beta`` is exact (Optax rounds it in float32),
    ``init`` takes ``jax.ShapeDtypeStruct``, and a missing ``value`` is named.

    With ``adapt_lower_bound`` (MoMo*), :math:`f_*` starts at ``lower_bound``,
    is halved towards the model when the model falls below it, and becomes
    :math:`h_k - \tau_k\|d_k\|^2/2` after each step (never below ``lower_bound``).

    Args:
      learning_rate: :math:`\alpha_k` >= 0, or a schedule; take it large (1.0).
      beta: the averages' rate, in [0, 1).
      lower_bound: :math:`f_*`, a lower bound of the loss (0 for most losses).
      weight_decay: :math:`\lambda` >= 0, applied as the paper's proximal step.
      adapt_lower_bound: learn :math:`f_*` online (MoMo*).
      mask: where to decay: a tree of bools like the parameters (or a prefix),
        or a function of the parameters returning one; ``None`` decays all.

    Returns:
      A GradientTransformationExtraArgs whose state is a MomoState;
      ``update`` needs the parameters and ``value=`` the loss.

    Raises:
      ValueError: if a number is out of range; at update, if ``params`` or
        ``value`` are missing, or ``params`` do not match the updates.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> f = lambda x: jnp.sum(x**2)
      >>> tx = gc.momo()
      >>> params = jnp.array([1.0, 2.0, 3.0])
      >>> state = tx.init(params)
      >>> for _ in range(3):
      ...     loss, grads = jax.value_and_grad(f)(params)
      ...     updates, state = tx.update(grads, state, params, value=loss)
      ...     params = gc.apply_updates(params, updates)
      ...     print(round(float(f(params)), 4))
      3.5
      3.3182
      3.1419

    (Optax 0.2.8's docstring shows 3.5, 0.0, 0.0: its example assigns the
    updates to the parameters and prints the loss at the updates.)

    References:
      Schaipp, Ohana, Eickenberg, Defazio and Gower, MoMo: Momentum Models for
      Adaptive Learning Rates, ICML 2024 (arXiv:2305.07583), Algorithm 1.
    """
    fn = "momo"
    _check.non_negative(fn, "learning_rate", learning_rate, schedule_ok=True)
    _check.decay_rate(fn, "beta", beta)
    _check.finite(fn, "lower_bound", lower_bound)
    _check.non_negative(fn, "weight_decay", weight_decay)
    hyperparams = dict(
        learning_rate=learning_rate, beta=beta, lower_bound=lower_bound, weight_decay=weight_decay
    )
    spec = HyperparamSpec(fn, hyperparams, rates=("beta",))

    def init_fn(params: Params) -> MomoState:
        if mask is not None:
            _full_mask(fn, mask, params)  # a mask of another structure fails here
        hp = spec.init()
        zero = jnp.zeros([], F32)
        lb = jnp.array(hp.constant["lower_bound"], F32)  # a buffer per field: donatable
        return MomoState(
            jnp.zeros([], jnp.int32), _tree.zeros_like(params), zero, jnp.zeros([], F32), lb, hp
        )

    def update_fn(
        updates: Updates, state: MomoState, params: Params | None = None, **extra: Any
    ) -> tuple[Updates, MomoState]:
        check_inputs(fn, state, MomoState, updates, params)
        _tree.check_matches(fn, updates, "state.mu", state.mu)
        value = _tree.objective_value(fn, extra.get("value")).astype(F32)
        decays = decay_flags(fn, mask, params)
        hp = values(state.hparams)
        first = state.step == 0
        step = _tree.safe_increment(state.step)
        beta_ = jnp.where(first, 0, hp["beta"]).astype(F32)
        omb = jnp.where(first, 1, state.hparams.complement["beta"]).astype(F32)

        def average(new: jax.Array, old: jax.Array) -> jax.Array:
            nc, oc, b, c = _tree.upcast(new, old, beta_, omb)
            return (b * oc + c * nc).astype(old.dtype)

        mu = jax.tree.map(average, updates, state.mu)
        barf = average(value, state.barf)
        gamma = average(vdot(updates, params), state.gamma)
        dots = _split(jax.tree.map(lambda m, p: vdot(m, p), mu, params), decays)
        norms = _split(jax.tree.map(_sum_sq, mu), decays)
        one = jnp.ones([], F32)
        tau, lb = _step_size(hp, one, barf, gamma, state.lb, dots, norms, adapt_lower_bound)
        q = 1 + hp["learning_rate"] * hp["weight_decay"]
        ones = jax.tree.map(lambda _: one, mu)
        out = _apply(mu, ones, params, updates, decays, tau, q)
        new_state = MomoState(step, mu, barf, gamma, lb, spec.advance(state.hparams, step))
        return out, new_state

    return GradientTransformationExtraArgs(init_fn, update_fn)


class MomoAdamState(NamedTuple):
    """State of :func:`momo_adam`."""

    step: jax.Array  # int32[], updates seen so far
    mu: Updates  # d_k: EMA of the gradients (from zero, debiased by 1 - b1^k)
    nu: Updates  # v_k: EMA of their squares
    barf: jax.Array  # float32[]: EMA of the losses
    gamma: jax.Array  # float32[]: EMA of <g_k, x_k>
    lb: jax.Array  # float32[]: the lower bound in use (learned with adapt_lower_bound)
    hparams: Hyperparams


def momo_adam(
    learning_rate: ScalarOrSchedule = 1e-2,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    lower_bound: float = 0.0,
    weight_decay: float = 0.0,
    adapt_lower_bound: bool = False,
    *,
    mask: MaskOrFn | None = None,
) -> GradientTransformationExtraArgs:
    r"""MoMo-Adam: Adam's direction with MoMo's step size.

    Averages from zero with Adam's rates; with :math:`\rho_k = 1-\beta_1^k`,
    :math:`D_k = \sqrt{v_k / (1-\beta_2^k)} + \epsilon` and
    :math:`q = 1 + \alpha_k\lambda`:

    .. math::
      \tau_k = \min\Big(\frac{\alpha_k}{\rho_k}, \frac{[q(\bar f_k - \rho_k f_*
        - \gamma_k) + \langle d_k, x_k\rangle]_+}{\|d_k\|^2_{D_k^{-1}}}\Big), \quad
      x_{k+1} = (x_k - \tau_k d_k / D_k) / q .

    ``adapt_lower_bound`` learns :math:`f_*` as in :func:`momo`. The default
    learning rate is Optax's, 1e-2 (its docstring says 1.0). Unlike Optax
    0.2.8's, weight decay is the paper's proximal step, and ``init`` takes
    ``jax.ShapeDtypeStruct``.

    Args:
      learning_rate: :math:`\alpha_k` >= 0, or a schedule.
      b1: the rate of the averages of gradients, losses and products, in [0, 1).
      b2: the rate of the squared gradients' average, in [0, 1).
      eps: added to the root, >= 0.
      lower_bound: :math:`f_*`, a lower bound of the loss (0 for most losses).
      weight_decay: :math:`\lambda` >= 0, applied as the paper's proximal step.
      adapt_lower_bound: learn :math:`f_*` online (MoMo*).
      mask: where to decay: a tree of bools like the parameters (or a prefix),
        or a function of the parameters returning one; ``None`` decays all.

    Returns:
      A GradientTransformationExtraArgs whose state is a MomoAdamState;
      ``update`` needs the parameters and ``value=`` the loss.

    Raises:
      ValueError: if a number is out of range; at update, if ``params`` or
        ``value`` are missing, or ``params`` do not match the updates.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> f = lambda x: jnp.sum(x**2)
      >>> tx = gc.momo_adam(learning_rate=1.0)
      >>> params = jnp.array([1.0, 2.0, 3.0])
      >>> state = tx.init(params)
      >>> loss, grads = jax.value_and_grad(f)(params)
      >>> updates, state = tx.update(grads, state, params, value=loss)
      >>> round(float(f(gc.apply_updates(params, updates))), 4)
      5.0

    References:
      Schaipp, Ohana, Eickenberg, Defazio and Gower, MoMo: Momentum Models for
      Adaptive Learning Rates, ICML 2024 (arXiv:2305.07583), Algorithm 3 (MoMo-Adam).
    """
    fn = "momo_adam"
    _check.non_negative(fn, "learning_rate", learning_rate, schedule_ok=True)
    _check.decay_rate(fn, "b1", b1)
    _check.decay_rate(fn, "b2", b2)
    _check.non_negative(fn, "eps", eps)
    _check.finite(fn, "lower_bound", lower_bound)
    _check.non_negative(fn, "weight_decay", weight_decay)
    hyperparams = dict(
        learning_rate=learning_rate,
        b1=b1,
        b2=b2,
        eps=eps,
        lower_bound=lower_bound,
        weight_decay=weight_decay,
    )
    spec = HyperparamSpec(fn, hyperparams, rates=("b1", "b2"))

    def init_fn(params: Params) -> MomoAdamState:
        if mask is not None:
            _full_mask(fn, mask, params)  # a mask of another structure fails here
        hp = spec.init()
        zero = jnp.zeros([], F32)
        zeros = _tree.zeros_like
        lb = jnp.array(hp.constant["lower_bound"], F32)  # a buffer per field: donatable
        return MomoAdamState(
            jnp.zeros([], jnp.int32), zeros(params), zeros(params), zero, jnp.zeros([], F32), lb, hp
        )

    def update_fn(
        updates: Updates, state: MomoAdamState, params: Params | None = None, **extra: Any
    ) -> tuple[Updates, MomoAdamState]:
        check_inputs(fn, state, MomoAdamState, updates, params)
        _tree.check_matches(fn, updates, "state.mu", state.mu)
        _tree.check_matches(fn, updates, "state.nu", state.nu)
        value = _tree.objective_value(fn, extra.get("value")).astype(F32)
        decays = decay_flags(fn, mask, params)
        hp = values(state.hparams)
        comp = state.hparams.complement
        step = _tree.safe_increment(state.step)
        b1_, omb1 = hp["b1"], comp["b1"]
        rho = _tree.debias(hp["b1"], step)
        c2 = _tree.debias(hp["b2"], step)

        def moments(g: jax.Array, m: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
            gc, mc, vc, b1c, omb1c, b2c, omb2c = _tree.upcast(
                g, m, v, b1_, omb1, hp["b2"], comp["b2"]
            )
            new_m = b1c * mc + omb1c * gc
            new_v = b2c * vc + omb2c * gc * gc
            return new_m.astype(m.dtype), new_v.astype(v.dtype)

        mu, nu = _tree.map_leaves(moments, 2, updates, state.mu, state.nu)

        def denominator(v: jax.Array) -> jax.Array:
            vc, c2_, eps_ = _tree.upcast(v, c2, hp["eps"])
            return jnp.sqrt(vc / c2_) + eps_

        scale = jax.tree.map(denominator, nu)
        barf = b1_ * state.barf + omb1 * value
        gamma = b1_ * state.gamma + omb1 * vdot(updates, params)
        dots = _split(jax.tree.map(lambda m, p: vdot(m, p), mu, params), decays)
        norms = _split(
            jax.tree.map(lambda m, s: vdot(m, _tree.upcast(m)[0] / s), mu, scale), decays
        )
        tau, lb = _step_size(hp, rho, barf, gamma, state.lb, dots, norms, adapt_lower_bound)
        q = 1 + hp["learning_rate"] * hp["weight_decay"]
        out = _apply(mu, scale, params, updates, decays, tau, q)
        new_state = MomoAdamState(step, mu, nu, barf, gamma, lb, spec.advance(state.hparams, step))
        return out, new_state

    return GradientTransformationExtraArgs(init_fn, update_fn)
