r"""The everyday optimizers, each one visible ``chain`` of public transforms.

No arithmetic lives here: each alias names the transforms of its paper in the
order they apply, and the numbers live in those transforms. Every alias takes
the learning rate as a number or a schedule, and its state is the tuple of its
members' states, as in Optax.

Weight decay, the house rule. Every optimizer takes decoupled weight decay
(Loshchilov and Hutter, 2019) with a mask:

- Aliases that Optax gives no weight decay (``sgd``, ``adam``, ``nadam``,
  ``rmsprop``, ``adagrad``, ``adamax``, ``amsgrad``, ``yogi``, ``adabelief``,
  ``radam``, ``sign_sgd``, ``rprop``) take the keyword arguments
  ``weight_decay: ScalarOrSchedule | None = None`` and ``mask=None``. With
  ``None`` the chain is exactly Optax's, with the same state structure, so
  ported code that indexes the state keeps working. With a number or a
  schedule, :func:`add_decayed_weights` ``(weight_decay, mask)`` joins the
  chain right before :func:`scale_by_learning_rate` (before the final
  ``scale(-1)`` in ``rprop``, which has no learning rate): the decay is added
  to the adapted direction, not to the gradient, and is scaled by the
  learning rate, as in AdamW and SGDW. Its ``weight_decay`` is then a
  hyperparameter of the state, readable and settable by name.
- Aliases whose Optax version already decays keep Optax's arguments,
  defaults and chain, so they give Optax's numbers: ``adamw``, ``nadamw``,
  ``adamaxw`` (1e-4), ``lion`` (1e-3) and ``adan`` (0.0) decay as above;
  ``novograd`` (0.0) decays inside its momentum, as its paper does, and takes
  a keyword ``mask`` for it; ``adadelta`` (0.0, with Optax's
  ``weight_decay_mask``) adds the decay to the gradient before the adaptive
  scaling (coupled L2, as Optax and PyTorch have it).
- ``mask`` is a tree of bools like the parameters (or a prefix of it), or a
  function of the parameters returning one; ``True`` where to decay. A mask
  without a weight decay is refused.
"""

from __future__ import annotations

from typing import Any

from gradchain import _check
from gradchain._base import (
    AnyTransformation,
    GradientTransformationExtraArgs,
    ScalarOrSchedule,
    identity,
)
from gradchain._combine import chain
from gradchain._moments import scale_by_adam, scale_by_rms, scale_by_rss, scale_by_stddev
from gradchain._momentum import trace
from gradchain._regularizing import add_decayed_weights
from gradchain._scaling import scale_by_learning_rate
from gradchain._wrappers import MaskOrFn


def optional_weight_decay(
    fn: str, weight_decay: ScalarOrSchedule | None, mask: MaskOrFn | None
) -> tuple[AnyTransformation, ...]:
    """The chain members for an optional decoupled weight decay: none, or one.

    An alias splices them into its chain (``chain(a, *optional_weight_decay(...), lr)``),
    so that without weight decay its chain, and its state, are exactly Optax's.

    Raises:
      ValueError: if ``mask`` is given without a ``weight_decay``.
    """
    if weight_decay is None:
        if mask is not None:
            raise ValueError(
                f"{fn}: `mask` selects the parameters to decay, but `weight_decay` is None. "
                f"Give a `weight_decay` too (e.g. weight_decay=1e-4), or drop the mask."
            )
        return ()
    return (add_decayed_weights(weight_decay, mask),)


def sgd(
    learning_rate: ScalarOrSchedule,
    momentum: ScalarOrSchedule | None = None,
    nesterov: bool = False,
    accumulator_dtype: Any | None = None,
    *,
    weight_decay: ScalarOrSchedule | None = None,
    mask: MaskOrFn | None = None,
) -> GradientTransformationExtraArgs:
    r"""Stochastic gradient descent, with optional (Nesterov) momentum and weight decay.

    :math:`w \leftarrow w - \eta g` or, with momentum :math:`\beta`,
    :math:`m \leftarrow g + \beta m,\ w \leftarrow w - \eta m` (Nesterov:
    :math:`w \leftarrow w - \eta (g + \beta m)`).

    ``chain(trace(momentum, nesterov) or identity(), scale_by_learning_rate(lr))``.

    Args:
      learning_rate: :math:`\eta`, a number or a schedule.
      momentum: :math:`\beta` in [0, 1), or None for none.
      nesterov: use Nesterov momentum.
      accumulator_dtype: dtype of the momentum buffer.
      weight_decay: decoupled weight decay (SGDW) >= 0, a schedule, or None for
        none (see the module docstring).
      mask: which parameters to decay; all by default.

    Returns:
      A GradientTransformationExtraArgs.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.sgd(0.1, momentum=0.9)
      >>> params = jnp.array([1.0])
      >>> state = tx.init(params)
      >>> for _ in range(2):
      ...     u, state = tx.update(2 * params, state)  # gradient of w ** 2
      ...     params = gc.apply_updates(params, u)
      >>> round(float(params[0]), 4)
      0.46

    References:
      Robbins and Monro, A Stochastic Approximation Method, 1951.
      Sutskever et al., On the importance of initialization and momentum in deep learning, 2013.
    """
    if momentum is not None:  # checked here, so the error names `momentum`, not trace's `decay`
        _check.decay_rate("sgd", "momentum", momentum, schedule_ok=True)
    return chain(
        trace(momentum, nesterov, accumulator_dtype) if momentum is not None else identity(),
        *optional_weight_decay("sgd", weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


def adam(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-8,
    eps_root: ScalarOrSchedule = 0.0,
    mu_dtype: Any | None = None,
    *,
    nesterov: bool = False,
    nu_dtype: Any | None = None,
    moment_rounding: str = "nearest",
    rounding_key: Any = None,
    weight_decay: ScalarOrSchedule | None = None,
    mask: MaskOrFn | None = None,
) -> GradientTransformationExtraArgs:
    r"""Adam: :func:`scale_by_adam` then the learning rate.

    :math:`w \leftarrow w - \eta\, \hat m_t / (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon)`
    with the debiased moments of :func:`scale_by_adam`.

    Args:
      learning_rate: :math:`\eta`, a number or a schedule.
      b1: first-moment decay, in [0, 1).
      b2: second-moment decay, in [0, 1).
      eps: added outside the root.
      eps_root: added inside the root.
      mu_dtype: dtype of the first moment.
      nesterov: use NAdam's first moment.
      nu_dtype: dtype of the second moment.
      moment_rounding: ``"nearest"`` or ``"stochastic"`` rounding of moments
        kept in bfloat16 or float16 (see :func:`scale_by_adam`).
      rounding_key: an int seed or a jax.random key for stochastic rounding
        (None: seed 0).
      weight_decay: decoupled weight decay >= 0, a schedule, or None for none
        (see the module docstring; with a number this is :func:`adamw`).
      mask: which parameters to decay; all by default.

    Returns:
      A GradientTransformationExtraArgs.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.adam(0.1)
      >>> u, _ = tx.update(jnp.array([3.0]), tx.init(jnp.zeros(1)))
      >>> round(float(u[0]), 4)
      -0.1

    References:
      Kingma and Ba, Adam: A Method for Stochastic Optimization, ICLR 2015.
    """
    return chain(
        scale_by_adam(
            b1,
            b2,
            eps,
            eps_root,
            mu_dtype,
            nesterov=nesterov,
            nu_dtype=nu_dtype,
            moment_rounding=moment_rounding,
            rounding_key=rounding_key,
        ),
        *optional_weight_decay("adam", weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


def adamw(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-8,
    eps_root: ScalarOrSchedule = 0.0,
    mu_dtype: Any | None = None,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: MaskOrFn | None = None,
    *,
    nesterov: bool = False,
    nu_dtype: Any | None = None,
    moment_rounding: str = "nearest",
    rounding_key: Any = None,
) -> GradientTransformationExtraArgs:
    r"""AdamW: Adam with weight decay decoupled from the adaptive scaling.

    :math:`w \leftarrow w - \eta\, (\hat m_t / (\sqrt{\hat v_t} + \epsilon) + \lambda w)`.

    Args:
      learning_rate: :math:`\eta`, a number or a schedule.
      b1: first-moment decay, in [0, 1).
      b2: second-moment decay, in [0, 1).
      eps: added outside the root.
      eps_root: added inside the root.
      mu_dtype: dtype of the first moment.
      weight_decay: :math:`\lambda` >= 0, or a schedule.
      mask: which parameters to decay (a tree of bools or a function of the
        parameters); all by default.
      nesterov: use NAdam's first moment (NAdamW).
      nu_dtype: dtype of the second moment.
      moment_rounding: ``"nearest"`` or ``"stochastic"`` rounding of moments
        kept in bfloat16 or float16 (see :func:`scale_by_adam`).
      rounding_key: an int seed or a jax.random key for stochastic rounding
        (None: seed 0).

    Returns:
      A GradientTransformationExtraArgs.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.adamw(0.1, weight_decay=0.5)
      >>> params = jnp.array([2.0])
      >>> u, _ = tx.update(jnp.array([3.0]), tx.init(params), params)
      >>> round(float(u[0]), 4)  # -0.1 * (1 + 0.5 * 2)
      -0.2

    References:
      Loshchilov and Hutter, Decoupled Weight Decay Regularization, ICLR 2019.
    """
    return chain(
        scale_by_adam(
            b1,
            b2,
            eps,
            eps_root,
            mu_dtype,
            nesterov=nesterov,
            nu_dtype=nu_dtype,
            moment_rounding=moment_rounding,
            rounding_key=rounding_key,
        ),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


def nadam(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-8,
    eps_root: ScalarOrSchedule = 0.0,
    mu_dtype: Any | None = None,
    *,
    nesterov: bool = True,
    nu_dtype: Any | None = None,
    moment_rounding: str = "nearest",
    rounding_key: Any = None,
    weight_decay: ScalarOrSchedule | None = None,
    mask: MaskOrFn | None = None,
) -> GradientTransformationExtraArgs:
    r"""NAdam (Dozat, 2016): :func:`adam` with ``nesterov=True`` by default.

    The arguments are :func:`adam`'s (``weight_decay`` and ``mask`` included);
    the first moment looks one step ahead,
    :math:`\hat m_t = \beta_1 m_t / (1-\beta_1^{t+1}) + (1-\beta_1) g_t / (1-\beta_1^t)`.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.nadam(0.1)
      >>> u, _ = tx.update(jnp.array([3.0]), tx.init(jnp.zeros(1)))
      >>> round(float(u[0]), 4)  # first step: -0.1 * (0.9 * 0.1 / 0.19 + 0.1 / 0.1)
      -0.1474

    References:
      Dozat, Incorporating Nesterov Momentum into Adam, ICLR workshop 2016.
    """
    return chain(
        scale_by_adam(
            b1,
            b2,
            eps,
            eps_root,
            mu_dtype,
            nesterov=nesterov,
            nu_dtype=nu_dtype,
            moment_rounding=moment_rounding,
            rounding_key=rounding_key,
        ),
        *optional_weight_decay("nadam", weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


def nadamw(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-8,
    eps_root: ScalarOrSchedule = 0.0,
    mu_dtype: Any | None = None,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: MaskOrFn | None = None,
    *,
    nesterov: bool = True,
    nu_dtype: Any | None = None,
    moment_rounding: str = "nearest",
    rounding_key: Any = None,
) -> GradientTransformationExtraArgs:
    r"""NAdamW: :func:`adamw` with ``nesterov=True`` by default; the arguments are adamw's.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.nadamw(0.1, weight_decay=0.0)
      >>> u, _ = tx.update(jnp.array([3.0]), tx.init(jnp.zeros(1)), jnp.zeros(1))
      >>> round(float(u[0]), 4)
      -0.1474
    """
    return chain(
        scale_by_adam(
            b1,
            b2,
            eps,
            eps_root,
            mu_dtype,
            nesterov=nesterov,
            nu_dtype=nu_dtype,
            moment_rounding=moment_rounding,
            rounding_key=rounding_key,
        ),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


def rmsprop(
    learning_rate: ScalarOrSchedule,
    decay: ScalarOrSchedule = 0.9,
    eps: ScalarOrSchedule = 1e-8,
    initial_scale: float = 0.0,
    eps_in_sqrt: bool = True,
    centered: bool = False,
    momentum: ScalarOrSchedule | None = None,
    nesterov: bool = False,
    bias_correction: bool = False,
    *,
    weight_decay: ScalarOrSchedule | None = None,
    mask: MaskOrFn | None = None,
) -> GradientTransformationExtraArgs:
    r"""RMSProp: :func:`scale_by_rms` (or :func:`scale_by_stddev` when centred), the rate, momentum.

    :math:`w \leftarrow w - \eta\, g / \sqrt{v + \epsilon}`, then optional
    momentum on the scaled step (as in TensorFlow and Optax).

    Args:
      learning_rate: a number or a schedule.
      decay: EMA decay of the squared gradients, in [0, 1).
      eps: >= 0.
      initial_scale: initial second moment.
      eps_in_sqrt: whether ``eps`` goes inside the root.
      centered: divide by the standard deviation instead of the RMS.
      momentum: momentum in [0, 1), or None.
      nesterov: Nesterov momentum.
      bias_correction: debias the moments.
      weight_decay: decoupled weight decay >= 0, a schedule, or None for none
        (see the module docstring).
      mask: which parameters to decay; all by default.

    Returns:
      A GradientTransformationExtraArgs.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.rmsprop(0.01, decay=0.75, eps=0.0)
      >>> u, _ = tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))
      >>> round(float(u[0]), 4)
      -0.02

    References:
      Tieleman and Hinton, Lecture 6.5: RMSProp, COURSERA, 2012.
    """
    if momentum is not None:  # checked here, so the error names `momentum`, not trace's `decay`
        _check.decay_rate("rmsprop", "momentum", momentum, schedule_ok=True)
    scaler = (scale_by_stddev if centered else scale_by_rms)(
        decay, eps, initial_scale, eps_in_sqrt, bias_correction
    )
    return chain(
        scaler,
        *optional_weight_decay("rmsprop", weight_decay, mask),
        scale_by_learning_rate(learning_rate),
        trace(momentum, nesterov) if momentum is not None else identity(),
    )


def adagrad(
    learning_rate: ScalarOrSchedule,
    initial_accumulator_value: float = 0.1,
    eps: ScalarOrSchedule = 1e-7,
    *,
    weight_decay: ScalarOrSchedule | None = None,
    mask: MaskOrFn | None = None,
) -> GradientTransformationExtraArgs:
    r"""Adagrad: each coordinate's step divided by the root of its summed squared gradients.

    :math:`s \leftarrow s + g^2,\ w \leftarrow w - \eta\, g / \sqrt{s + \epsilon}`.

    Args:
      learning_rate: a number or a schedule.
      initial_accumulator_value: initial :math:`s`, >= 0.
      eps: >= 0.
      weight_decay: decoupled weight decay >= 0, a schedule, or None for none
        (see the module docstring).
      mask: which parameters to decay; all by default.

    Returns:
      A GradientTransformationExtraArgs.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.adagrad(0.5, initial_accumulator_value=0.0, eps=0.0)
      >>> u, _ = tx.update(jnp.array([4.0]), tx.init(jnp.zeros(1)))
      >>> round(float(u[0]), 4)
      -0.5

    References:
      Duchi et al., Adaptive Subgradient Methods, JMLR 2011.
    """
    return chain(
        scale_by_rss(initial_accumulator_value, eps),
        *optional_weight_decay("adagrad", weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
