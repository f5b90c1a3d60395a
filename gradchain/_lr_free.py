r"""Learning-rate-free Adam: D-Adaptation AdamW and Prodigy.

Both run AdamW with the step size :math:`d_k \gamma_k`, where :math:`\gamma_k`
is the user's learning rate (1.0, or a schedule treating 1.0 as its peak) and
:math:`d_k` a running lower bound on the distance from the initial point to a
solution, which only grows. Each keeps a weighted sum :math:`s_k` of the past
steps' gradients and a weighted numerator :math:`r_k`; the estimate is
:math:`\hat d = r_k / \|s_k\|_1`.

Differences from Optax 0.2.8, on purpose:

- ``init`` needs shapes only: Prodigy records the initial parameters at its
  first update (where its numerator's term :math:`\langle g, x_0 - x\rangle`
  is zero anyway), so ``init`` accepts ``jax.ShapeDtypeStruct`` and the
  numbers are the same as recording them at ``init`` when the first update
  gets the initial parameters (as it does in a training loop).
- While every gradient so far is zero, :math:`\|s_k\|_1 = 0` and Optax's
  estimate is 0/0: its :math:`d` turns NaN for good and so do the parameters.
  Here :math:`d` keeps its value until a gradient arrives (the reference
  PyTorch code skips such steps too).
- Every numeric hyperparameter is in the state (``get_hyperparams``),
  the weight decay takes a ``mask``, and dtypes stay put.
"""

from __future__ import annotations

from typing import Any, NamedTuple, TypeAlias

import jax
import jax.numpy as jnp

from gradchain import _check, _explicit, _tree
from gradchain._base import GradientTransformationExtraArgs, Params, ScalarOrSchedule, Updates
from gradchain._hyperparams import Hyperparams, HyperparamSpec, values
from gradchain._wrappers import MaskOrFn, _full_mask

F32 = jnp.float32
Betas: TypeAlias = tuple[float, float]
"""Adam's ``(b1, b2)`` pair, each a number in [0, 1)."""


def check_betas(fn: str, betas: Any) -> tuple[Any, Any]:
    """Checks an Adam ``betas`` pair, naming ``betas[0]`` or ``betas[1]`` in errors."""
    if not isinstance(betas, tuple | list) or len(betas) != 2:
        raise TypeError(
            f"{fn}: `betas` must be a pair (b1, b2) of numbers in [0, 1); got "
            f"{type(betas).__name__} {betas!r:.60}."
        )
    for i, b in enumerate(betas):
        _check.decay_rate(fn, f"betas[{i}]", b)
    return betas[0], betas[1]


def vdot(a: Any, b: Any) -> jax.Array:
    """The real inner product of two trees of one structure, accumulated in float32 or wider."""
    terms = []
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        xc, yc = _tree.upcast(jnp.asarray(x), jnp.asarray(y))
        terms.append(_explicit.inner(xc, yc))  # vdot of the raveled leaves, on a mesh too
    if not terms:
        return jnp.zeros([], F32)
    return sum(terms[1:], terms[0]).astype(F32)


def l1_norm(tree: Any) -> jax.Array:
    """The sum of absolute values of every leaf, in float32 or wider."""
    terms = [jnp.sum(jnp.abs(_tree.upcast(jnp.asarray(x))[0])) for x in jax.tree.leaves(tree)]
    if not terms:
        return jnp.zeros([], F32)
    return sum(terms[1:], terms[0]).astype(F32)


# 1 - sqrt(1 - c) = c/2 + c^2/8 + c^3/16 + 5c^4/128 + 7c^5/256 + 21c^6/1024 + ...
_SQRT_SERIES = (1 / 2, 1 / 8, 1 / 16, 5 / 128, 7 / 256, 21 / 1024, 33 / 2048)


def one_minus_sqrt(c: jax.Array) -> jax.Array:
    """``1 - sqrt(1 - c)`` for a rate's complement ``c``, within a float32 ulp.

    In float32, ``1 - sqrt(b)`` for ``b = 0.999`` cancels 11 bits (a 1e-4 error);
    from the exact complement ``c = 1 - b`` (kept by HyperparamSpec) the series
    has no cancellation for small ``c``, nor the quotient ``c / (1 + sqrt(1 - c))``
    for large. For b2 = 0.999 and 0.99 it is float32(1 - sqrt(b2)), as Optax's.
    """
    series = jnp.zeros_like(c)
    for k in reversed(_SQRT_SERIES):
        series = (series + k) * c
    return jnp.where(c < 0.05, series, c / (1 + jnp.sqrt(1 - c)))


def decay_flags(fn: str, mask: MaskOrFn | None, params: Params) -> Any:
    """One Python bool per parameter leaf: where the weight decay applies."""
    if mask is None:
        return jax.tree.map(lambda _: True, params)
    return _full_mask(fn, mask, params)


def check_inputs(fn: str, state: Any, state_type: type, updates: Updates, params: Any) -> None:
    """The trace-time checks every transform of this family makes.

    Raises:
      TypeError: for a foreign state, or complex parameters or updates (these
        methods bet on or bound real inner products).
      ValueError: if ``params`` are missing or do not match the updates.
    """
    _tree.check_state(fn, state, state_type)
    _tree.require_params(fn, params)
    _tree.check_matches(fn, updates, "params", params)
    for tree in (updates, params):
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            if jnp.iscomplexobj(leaf):
                raise TypeError(
                    f"{fn}: the leaf at {_tree.keystr(path)} is complex ({jnp.result_type(leaf)}); "
                    f"this method's step sizes come from real inner products. Optimize the real "
                    f"and imaginary parts as separate real parameters (split_real_and_imaginary)."
                )


class DAdaptAdamWState(NamedTuple):
    """State of :func:`dadapt_adamw`."""

    step: jax.Array  # int32[], updates seen so far
    mu: Updates  # EMA of the d-scaled gradients (Adam's first moment, times the step size)
    nu: Updates  # EMA of the squared gradients
    grad_sum: Updates  # s_k: EMA (rate sqrt(b2)) of the d-scaled gradients
    estim_lr: jax.Array  # float32[], d_k: the distance estimate, non-decreasing
    numerator_weighted: jax.Array  # float32[], r_k
    hparams: Hyperparams


def dadapt_adamw(
    learning_rate: ScalarOrSchedule = 1.0,
    betas: Betas = (0.9, 0.999),
    eps: float = 1e-8,
    estim_lr0: float = 1e-6,
    weight_decay: float = 0.0,
    *,
    mask: MaskOrFn | None = None,
) -> GradientTransformationExtraArgs:
    r"""AdamW whose step size is learned by D-Adaptation (learning-rate free).

    With :math:`\lambda_k = \gamma_k d_k \sqrt{1-\beta_2^{k}}/(1-\beta_1^{k})`
    and :math:`\hat\beta = \sqrt{\beta_2}`:

    .. math::
      r_{k+1} &= \hat\beta r_k + (1-\hat\beta)\lambda_k
        \langle g_k, s_k / (\sqrt{v_k}+\epsilon)\rangle, \\
      m_{k+1} &= \beta_1 m_k + (1-\beta_1)\lambda_k g_k, \quad
      v_{k+1} = \beta_2 v_k + (1-\beta_2) g_k^2, \\
      s_{k+1} &= \hat\beta s_k + (1-\hat\beta)\lambda_k g_k, \quad
      d_{k+1} = \max(d_k, r_{k+1} / ((1-\hat\beta)\|s_{k+1}\|_1)), \\
      \text{update} &= -m_{k+1} / (\sqrt{v_{k+1}} + \epsilon) - \lambda_k\, w\, x_k .

    Unlike Optax 0.2.8's: ``init`` takes ``jax.ShapeDtypeStruct``; while all
    gradients so far are zero, :math:`d` stays (Optax's turns NaN); the
    weight decay takes a ``mask``; every number is in the state.

    Args:
      learning_rate: :math:`\gamma_k` >= 0, or a schedule; 1.0 is the base (the
        paper recommends a linear decay to 0 after a 0-20% warmup).
      betas: Adam's ``(b1, b2)``, each in [0, 1).
      eps: added to the root of the second moment, >= 0.
      estim_lr0: :math:`d_0` > 0, an underestimate of the distance to a solution.
      weight_decay: decoupled weight decay :math:`w` >= 0, scaled by :math:`\lambda_k`.
      mask: where to decay: a tree of bools like the parameters (or a prefix),
        or a function of the parameters returning one; ``None`` decays all.

    Returns:
      A GradientTransformationExtraArgs whose state is a DAdaptAdamWState;
      ``update`` needs the parameters.

    Raises:
      ValueError: if a number is out of range; at update, if ``params`` are
        missing or do not match the updates.
      TypeError: if ``betas`` is not a pair of numbers.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.dadapt_adamw()
      >>> params = jnp.array([1.0, -2.0])
      >>> u, state = tx.update(jnp.array([0.5, -1.0]), tx.init(params), params)
      >>> [round(float(x), 9) for x in u]  # the first step is -d0 * sign(g)
      [-1e-06, 1e-06]
      >>> round(float(state.estim_lr), 9)
      1e-06

    References:
      Defazio and Mishchenko, Learning-Rate-Free Learning by D-Adaptation,
      ICML 2023, Algorithm 4 (D-Adapted Adam).
    """
    fn = "dadapt_adamw"
    _check.non_negative(fn, "learning_rate", learning_rate, schedule_ok=True)
    b1, b2 = check_betas(fn, betas)
    _check.non_negative(fn, "eps", eps)
    _check.positive(fn, "estim_lr0", estim_lr0)
    _check.non_negative(fn, "weight_decay", weight_decay)
    hyperparams = dict(
        learning_rate=learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay
    )
    spec = HyperparamSpec(fn, hyperparams, rates=("b1", "b2"))

    def init_fn(params: Params) -> DAdaptAdamWState:
        if mask is not None:
            _full_mask(fn, mask, params)  # a mask of another structure fails here
        zeros = _tree.zeros_like
        d0 = jnp.asarray(estim_lr0, F32)
        return DAdaptAdamWState(
            jnp.zeros([], jnp.int32),
            zeros(params),
            zeros(params),
            zeros(params),
            d0,
            jnp.zeros([], F32),
            spec.init(),
        )

    def update_fn(
        updates: Updates, state: DAdaptAdamWState, params: Params | None = None, **extra: Any
    ) -> tuple[Updates, DAdaptAdamWState]:
        del extra
        check_inputs(fn, state, DAdaptAdamWState, updates, params)
        for name in ("mu", "nu", "grad_sum"):
            _tree.check_matches(fn, updates, f"state.{name}", getattr(state, name))
        decays = decay_flags(fn, mask, params)
        hp = values(state.hparams)
        comp = state.hparams.complement
        step = _tree.safe_increment(state.step)
        d = state.estim_lr
        sb2 = jnp.sqrt(hp["b2"])
        omsb2 = one_minus_sqrt(comp["b2"])
        bias = jnp.sqrt(_tree.debias(hp["b2"], step)) / _tree.debias(hp["b1"], step)
        dlr = d * hp["learning_rate"] * bias
        eps = hp["eps"]

        def weighted(s: jax.Array, v: jax.Array) -> jax.Array:
            sc, vc, eps_ = _tree.upcast(s, v, eps)
            return sc / (jnp.sqrt(vc) + eps_)

        numerator = vdot(updates, jax.tree.map(weighted, state.grad_sum, state.nu))

        def moments(
            g: jax.Array, m: jax.Array, v: jax.Array, s: jax.Array
        ) -> tuple[jax.Array, jax.Array, jax.Array]:
            gc, mc, vc, sc, b1_, omb1, b2_, omb2, sb2_, omsb2_, dlr_ = _tree.upcast(
                g, m, v, s, hp["b1"], comp["b1"], hp["b2"], comp["b2"], sb2, omsb2, dlr
            )
            new_m = b1_ * mc + omb1 * dlr_ * gc
            new_v = b2_ * vc + omb2 * gc * gc
            new_s = sb2_ * sc + omsb2_ * dlr_ * gc
            return new_m.astype(m.dtype), new_v.astype(v.dtype), new_s.astype(s.dtype)

        mu, nu, grad_sum = _tree.map_leaves(moments, 3, updates, state.mu, state.nu, state.grad_sum)
        r = sb2 * state.numerator_weighted + omsb2 * dlr * numerator
        denominator = omsb2 * l1_norm(grad_sum)
        d_hat = r / jnp.where(denominator > 0, denominator, 1)
        new_d = jnp.where(denominator > 0, jnp.maximum(d, d_hat), d)

        def direction(
            g: jax.Array, m: jax.Array, v: jax.Array, p: jax.Array, decay: bool
        ) -> jax.Array:
            mc, vc, pc, eps_, wd, dlr_ = _tree.upcast(m, v, p, eps, hp["weight_decay"], dlr)
            out = -mc / (jnp.sqrt(vc) + eps_)
            if decay:
                out = out - wd * dlr_ * pc
            return out.astype(g.dtype)

        out = jax.tree.map(direction, updates, mu, nu, params, decays)
        new_state = DAdaptAdamWState(
            step,
            mu,
            nu,
            grad_sum,
            new_d.astype(F32),
            r.astype(F32),
            spec.advance(state.hparams, step),
        )
        return out, new_state

    return GradientTransformationExtraArgs(init_fn, update_fn)


class ProdigyState(NamedTuple):
    """State of :func:`prodigy`."""

    step: jax.Array  # int32[], updates seen so far
    mu: Updates  # EMA of d_k g (Adam's first moment of the d-scaled gradients)
    nu: Updates  # EMA of (d_k g)^2
    grad_sum: Updates  # s_k: the weighted sum of the gradients, over d_0
    params0: Params  # x_0: the parameters of the first update (zeros before it)
    estim_lr: jax.Array  # float32[], d_k: the distance estimate, non-decreasing
    numerator_weighted: jax.Array  # float32[], r_k, over d_0
    hparams: Hyperparams


def prodigy(
    learning_rate: ScalarOrSchedule = 1.0,
    betas: Betas = (0.9, 0.999),
    beta3: float | None = None,
    eps: float = 1e-8,
    estim_lr0: float = 1e-6,
    estim_lr_coef: float = 1.0,
    weight_decay: float = 0.0,
    safeguard_warmup: bool = False,
    *,
    mask: MaskOrFn | None = None,
) -> GradientTransformationExtraArgs:
    r"""Prodigy: D-Adaptation AdamW whose estimate of the step size grows faster.

    With :math:`\lambda_k = \gamma_k d_k \sqrt{1-\beta_2^{k}}/(1-\beta_1^{k})`
    and :math:`x_0` the parameters of the first update:

    .. math::
      m_{k+1} &= \beta_1 m_k + (1-\beta_1) d_k g_k, \quad
      v_{k+1} = \beta_2 v_k + (1-\beta_2) d_k^2 g_k^2, \\
      r_{k+1} &= \beta_3 r_k + \tfrac{d_k}{d_0}\lambda_k \langle g_k, x_0 - x_k\rangle,
      \quad s_{k+1} = \beta_3 s_k + \tfrac{d_k}{d_0}\lambda_k g_k, \\
      d_{k+1} &= \max(d_k,\ c\, r_{k+1} / \|s_{k+1}\|_1), \\
      \text{update} &= -\lambda_k m_{k+1} / (\sqrt{v_{k+1}} + d_{k+1}\epsilon)
        - \lambda_k\, w\, x_k .

    (The paper's :math:`r` and :math:`s` without the factor :math:`1/d_0`,
    which only keeps the numbers away from float32's underflow; the ratio is
    the same.) With ``safeguard_warmup``, :math:`s` grows by
    :math:`\frac{d_k}{d_0} d_k g_k` (no learning rate), which keeps a warmup's
    small :math:`\gamma_k` from inflating the estimate.

    Unlike Optax 0.2.8's: ``init`` takes ``jax.ShapeDtypeStruct`` (:math:`x_0`
    is recorded at the first update); while all gradients so far are zero,
    :math:`d` stays (Optax's turns NaN); the weight decay takes a ``mask``;
    every number is in the state.

    Args:
      learning_rate: :math:`\gamma_k` >= 0, or a schedule; 1.0 is the base.
      betas: Adam's ``(b1, b2)``, each in [0, 1).
      beta3: :math:`\beta_3` in [0, 1), the rate of :math:`r` and :math:`s`;
        ``None`` for :math:`\sqrt{\beta_2}` (which then follows ``b2``).
      eps: :math:`\epsilon` >= 0, scaled by :math:`d`.
      estim_lr0: :math:`d_0` > 0, an underestimate of the distance to a solution.
      estim_lr_coef: :math:`c` > 0, multiplies every estimate.
      weight_decay: decoupled weight decay :math:`w` >= 0, scaled by :math:`\lambda_k`.
      safeguard_warmup: leave the learning rate out of :math:`s`'s growth.
      mask: where to decay: a tree of bools like the parameters (or a prefix),
        or a function of the parameters returning one; ``None`` decays all.

    Returns:
      A GradientTransformationExtraArgs whose state is a ProdigyState;
      ``update`` needs the parameters, and ``init`` only their shapes and dtypes.

    Raises:
      ValueError: if a number is out of range; at update, if ``params`` are
        missing or do not match the updates.
      TypeError: if ``betas`` is not a pair of numbers.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.prodigy()
      >>> state = tx.init(jax.ShapeDtypeStruct((2,), jnp.float32))  # shapes are enough
      >>> params = jnp.array([1.0, -2.0])
      >>> for _ in range(10):
      ...     u, state = tx.update(params, state, params)  # the gradient of |x|^2 / 2
      ...     params = gc.apply_updates(params, u)
      >>> round(float(state.estim_lr) / 1e-6, 1)  # d grew from d0 = 1e-6, and keeps growing
      16.6

    References:
      Mishchenko and Defazio, Prodigy: An Expeditiously Adaptive Parameter-Free
      Learner, ICML 2024 (arXiv:2306.06101), Algorithm 4 (Prodigy Adam).
    """
    fn = "prodigy"
    _check.non_negative(fn, "learning_rate", learning_rate, schedule_ok=True)
    b1, b2 = check_betas(fn, betas)
    if beta3 is not None:
        _check.decay_rate(fn, "beta3", beta3)
    _check.non_negative(fn, "eps", eps)
    _check.positive(fn, "estim_lr0", estim_lr0)
    _check.positive(fn, "estim_lr_coef", estim_lr_coef)
    _check.non_negative(fn, "weight_decay", weight_decay)
    hyperparams: dict[str, ScalarOrSchedule] = dict(
        learning_rate=learning_rate,
        b1=b1,
        b2=b2,
        eps=eps,
        estim_lr0=estim_lr0,
        estim_lr_coef=estim_lr_coef,
        weight_decay=weight_decay,
    )
    if beta3 is not None:
        hyperparams["beta3"] = beta3
    spec = HyperparamSpec(fn, hyperparams, rates=("b1", "b2"))

    def init_fn(params: Params) -> ProdigyState:
        if mask is not None:
            _full_mask(fn, mask, params)  # a mask of another structure fails here
        zeros = _tree.zeros_like
        hp = spec.init()
        return ProdigyState(
            jnp.zeros([], jnp.int32),
            zeros(params),
            zeros(params),
            zeros(params),
            zeros(params),
            jnp.array(hp.constant["estim_lr0"], F32),  # a copy: a state can be donated
            jnp.zeros([], F32),
            hp,
        )

    def update_fn(
        updates: Updates, state: ProdigyState, params: Params | None = None, **extra: Any
    ) -> tuple[Updates, ProdigyState]:
        del extra
        check_inputs(fn, state, ProdigyState, updates, params)
        for name in ("mu", "nu", "grad_sum", "params0"):
            _tree.check_matches(fn, updates, f"state.{name}", getattr(state, name))
        decays = decay_flags(fn, mask, params)
        hp = values(state.hparams)
        comp = state.hparams.complement
        first = state.step == 0
        step = _tree.safe_increment(state.step)
        params0 = jax.tree.map(lambda p, p0: jnp.where(first, p, p0), params, state.params0)
        d, d0 = state.estim_lr, hp["estim_lr0"]
        b3 = hp["beta3"] if beta3 is not None else jnp.sqrt(hp["b2"])
        bias = jnp.sqrt(_tree.debias(hp["b2"], step)) / _tree.debias(hp["b1"], step)
        dlr = d * hp["learning_rate"] * bias
        numerator = vdot(updates, jax.tree.map(_diff, params0, params))
        s_rate = d if safeguard_warmup else dlr

        def moments(
            g: jax.Array, m: jax.Array, v: jax.Array, s: jax.Array
        ) -> tuple[jax.Array, jax.Array, jax.Array]:
            gc, mc, vc, sc, b1_, omb1, b2_, omb2, b3_, d_, rate, d0_ = _tree.upcast(
                g, m, v, s, hp["b1"], comp["b1"], hp["b2"], comp["b2"], b3, d, s_rate, d0
            )
            dg = d_ * gc
            new_m = b1_ * mc + omb1 * dg
            new_v = b2_ * vc + omb2 * dg * dg
            new_s = b3_ * sc + rate * dg / d0_
            return new_m.astype(m.dtype), new_v.astype(v.dtype), new_s.astype(s.dtype)

        mu, nu, grad_sum = _tree.map_leaves(moments, 3, updates, state.mu, state.nu, state.grad_sum)
        r = b3 * state.numerator_weighted + (d / d0) * dlr * numerator
        denominator = l1_norm(grad_sum)
        d_hat = hp["estim_lr_coef"] * r / jnp.where(denominator > 0, denominator, 1)
        new_d = jnp.where(denominator > 0, jnp.maximum(d, d_hat), d)

        def direction(
            g: jax.Array, m: jax.Array, v: jax.Array, p: jax.Array, decay: bool
        ) -> jax.Array:
            mc, vc, pc, eps_, wd, dlr_, d_ = _tree.upcast(
                m, v, p, hp["eps"], hp["weight_decay"], dlr, new_d
            )
            out = -dlr_ * mc / (jnp.sqrt(vc) + d_ * eps_)
            if decay:
                out = out - wd * dlr_ * pc
            return out.astype(g.dtype)

        out = jax.tree.map(direction, updates, mu, nu, params, decays)
        new_state = ProdigyState(
            step,
            mu,
            nu,
            grad_sum,
            jax.tree.map(lambda p0, old: p0.astype(old.dtype), params0, state.params0),
            new_d.astype(F32),
            r.astype(F32),
            spec.advance(state.hparams, step),
        )
        return out, new_state

    return GradientTransformationExtraArgs(init_fn, update_fn)


def _diff(a: jax.Array, b: jax.Array) -> jax.Array:
    ac, bc = _tree.upcast(jnp.asarray(a), jnp.asarray(b))
    return ac - bc
