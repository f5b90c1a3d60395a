r"""Layer-wise and noisy optimizers: LAMB, LARS, Fromage, noisy SGD, Signum.

As in ``gradchain/_optimizers.py``: each alias is one visible ``chain`` of
public transforms, with Optax 0.2.8's names, signatures, defaults and numbers;
the equations live on the transforms. Weight decay follows the house rule in
that module's docstring: ``lamb`` and ``lars`` keep Optax's own arguments
(``weight_decay=0.0`` with ``mask``, resp. ``weight_decay_mask``); ``fromage``,
``noisy_sgd`` and ``signum`` take a keyword ``weight_decay=None, mask=None``
whose decay joins the chain right before the learning rate.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from gradchain import _check
from gradchain._base import GradientTransformationExtraArgs, ScalarOrSchedule
from gradchain._combine import chain
from gradchain._elementwise import add_noise
from gradchain._moments import scale_by_adam
from gradchain._momentum import ema, trace
from gradchain._optimizers import optional_weight_decay
from gradchain._regularizing import add_decayed_weights
from gradchain._scaling import scale, scale_by_learning_rate
from gradchain._sign_methods import scale_by_sign
from gradchain._trust import scale_by_trust_ratio
from gradchain._wrappers import MaskOrFn, masked


def lamb(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-6,
    eps_root: ScalarOrSchedule = 0.0,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: MaskOrFn | None = None,
) -> GradientTransformationExtraArgs:
    r"""LAMB: Adam's direction plus decoupled weight decay, rescaled by each layer's trust ratio.

    :math:`r = \hat m / (\sqrt{\hat v} + \epsilon) + \lambda w`, then
    :math:`w \leftarrow w - \eta\, \frac{\|w\|}{\|r\|}\, r` per layer.

    ``chain(scale_by_adam(b1, b2, eps, eps_root), add_decayed_weights(weight_decay, mask),
    scale_by_trust_ratio(), scale_by_learning_rate(learning_rate))``.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.lamb(0.1)
      >>> params = jnp.array([3.0, 4.0])
      >>> u, _ = tx.update(jnp.array([1.0, -1.0]), tx.init(params), params)
      >>> [round(float(x), 3) for x in u]  # -0.1 * 5 * sign(g) / sqrt(2)
      [-0.354, 0.354]

    References:
      You et al., Large Batch Optimization for Deep Learning: Training BERT in
      76 minutes, ICLR 2020, Algorithm 2.
    """
    return chain(
        scale_by_adam(b1, b2, eps, eps_root),
        add_decayed_weights(weight_decay, mask),
        scale_by_trust_ratio(),
        scale_by_learning_rate(learning_rate),
    )


def lars(
    learning_rate: ScalarOrSchedule,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: MaskOrFn = True,
    trust_coefficient: ScalarOrSchedule = 0.001,
    eps: ScalarOrSchedule = 0.0,
    trust_ratio_mask: MaskOrFn = True,
    momentum: ScalarOrSchedule = 0.9,
    nesterov: bool = False,
) -> GradientTransformationExtraArgs:
    r"""LARS: SGD with momentum on the layer-wise trust-ratio-scaled, weight-decayed gradient.

    :math:`r = g + \lambda w`, :math:`d = \eta\, c \frac{\|w\|}{\|r\| + \epsilon} r`,
    :math:`m \leftarrow d + \mu m`, :math:`w \leftarrow w - m` per layer (the
    paper's Algorithm 1, momentum applied after the rate, as in Optax).

    ``chain(masked(add_decayed_weights(weight_decay), weight_decay_mask),
    masked(scale_by_trust_ratio(trust_coefficient=..., eps=...), trust_ratio_mask),
    scale_by_learning_rate(learning_rate), trace(momentum, nesterov))``.
    Masks are usually set to leave biases and norm scales out.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.lars(1.0, trust_coefficient=0.1)
      >>> params = jnp.array([3.0, 4.0])
      >>> u, _ = tx.update(jnp.array([0.0, 2.0]), tx.init(params), params)
      >>> [round(float(x), 3) for x in u]  # -0.1 * 5 * g / ||g||
      [0.0, -0.5]

    References:
      You et al., Large Batch Training of Convolutional Networks, 2017, Algorithm 1.
    """
    _check.decay_rate("lars", "momentum", momentum, schedule_ok=True)
    return chain(
        add_decayed_weights(weight_decay, weight_decay_mask),
        masked(
            scale_by_trust_ratio(trust_coefficient=trust_coefficient, eps=eps), trust_ratio_mask
        ),
        scale_by_learning_rate(learning_rate),
        trace(momentum, nesterov),
    )


def _fromage_rates(learning_rate: ScalarOrSchedule) -> tuple[ScalarOrSchedule, ScalarOrSchedule]:
    r""":math:`\eta / \sqrt{1+\eta^2}` and :math:`1 - 1/\sqrt{1+\eta^2}`, numbers or schedules.

    The second is computed as :math:`\eta^2 / (s (1 + s))`, :math:`s = \sqrt{1+\eta^2}`,
    which keeps its digits for small rates (``1 - 1/s`` cancels: in float32 it is 0
    for every :math:`\eta < 3.4 \cdot 10^{-4}`).
    """
    if _check.is_schedule(learning_rate):
        schedule: Any = learning_rate

        def step_size(step: Any) -> Any:
            lr = jnp.asarray(schedule(step), jnp.float32)
            return lr / jnp.sqrt(1 + lr * lr)

        def shrink(step: Any) -> Any:
            lr = jnp.asarray(schedule(step), jnp.float32)
            s = jnp.sqrt(1 + lr * lr)
            return lr * lr / (s * (1 + s))

        return step_size, shrink
    exact = _check.concrete_value(learning_rate)
    if exact is None:  # traced: the same formulas on the tracer
        lr = jnp.asarray(learning_rate, jnp.float32)
        s = jnp.sqrt(1 + lr * lr)
        return lr / s, lr * lr / (s * (1 + s))
    s = math.sqrt(1 + exact * exact)
    return exact / s, exact * exact / (s * (1 + s))


def fromage(
    learning_rate: ScalarOrSchedule,
    min_norm: ScalarOrSchedule = 1e-6,
    *,
    weight_decay: ScalarOrSchedule | None = None,
    mask: MaskOrFn | None = None,
) -> GradientTransformationExtraArgs:
    r"""Fromage: a trust-ratio step, then every weight shrunk by :math:`1/\sqrt{1+\eta^2}`.

    .. math::
      w \leftarrow \frac{w - \eta\, \frac{\|w\|}{\|g\|}\, g}{\sqrt{1 + \eta^2}}

    per layer (norms floored at ``min_norm``), written as the chain
    ``chain(scale_by_trust_ratio(min_norm), scale_by_learning_rate(eta / sqrt(1 + eta^2),
    flip_sign=False), add_decayed_weights(1 - 1 / sqrt(1 + eta^2)), scale(-1))``.
    The two coefficients are computed in float64 for a number, and for a
    schedule in float32 without cancellation; so the state's
    ``learning_rate`` and ``weight_decay`` are these coefficients (set both,
    or build a new optimizer, to change :math:`\eta`). Optax 0.2.8 computes
    the same numbers, with a chain of three members and no hyperparameters in
    its state; its ``mult - 1`` loses all digits in float32 for a schedule's
    small rates.

    ``weight_decay`` and ``mask``: the house rule (``gradchain/_optimizers.py``).

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.fromage(0.75)
      >>> params = jnp.array([3.0, 4.0])
      >>> u, _ = tx.update(jnp.array([1.0, 0.0]), tx.init(params), params)
      >>> [round(float(x), 3) for x in gc.apply_updates(params, u)]  # ([3, 4] - [3.75, 0]) / 1.25
      [-0.6, 3.2]

    References:
      Bernstein et al., On the distance between two neural networks and the
      stability of learning, NeurIPS 2020, Algorithm 1.
    """
    _check.non_negative("fromage", "learning_rate", learning_rate, schedule_ok=True)
    step_size, shrink = _fromage_rates(learning_rate)
    return chain(
        scale_by_trust_ratio(min_norm),
        *optional_weight_decay("fromage", weight_decay, mask),
        scale_by_learning_rate(step_size, flip_sign=False),
        add_decayed_weights(shrink),
        scale(-1.0),
    )


def noisy_sgd(
    learning_rate: ScalarOrSchedule,
    eta: ScalarOrSchedule = 0.01,
    gamma: ScalarOrSchedule = 0.55,
    key: jax.Array | int | None = None,
    *,
    seed: int | None = None,
    weight_decay: ScalarOrSchedule | None = None,
    mask: MaskOrFn | None = None,
) -> GradientTransformationExtraArgs:
    r"""SGD on gradients with annealed Gaussian noise: :math:`w \leftarrow w - \alpha (g + n_t)`.

    :math:`n_t \sim \mathcal N(0, \eta / (1+t)^\gamma)` (:func:`add_noise`,
    which documents how the key advances in the state; ``key`` or ``seed``
    is required). ``chain(add_noise(eta, gamma, key), [add_decayed_weights],
    scale_by_learning_rate(learning_rate))``; ``weight_decay`` and ``mask``:
    the house rule (``gradchain/_optimizers.py``).

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.noisy_sgd(0.1, eta=0.0, key=0)  # no noise: plain SGD
      >>> u, _ = tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))
      >>> round(float(u[0]), 3)
      -0.2

    References:
      Neelakantan et al., Adding Gradient Noise Improves Learning for Very
      Deep Networks, 2015.
    """
    return chain(
        add_noise(eta, gamma, key, seed=seed),
        *optional_weight_decay("noisy_sgd", weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


def signum(
    learning_rate: ScalarOrSchedule,
    beta: ScalarOrSchedule = 0.9,
    accumulator_dtype: Any | None = None,
    *,
    weight_decay: ScalarOrSchedule | None = None,
    mask: MaskOrFn | None = None,
) -> GradientTransformationExtraArgs:
    r"""Signum: steps of the sign of a momentum.

    :math:`m \leftarrow \beta m + (1-\beta) g,\ w \leftarrow w - \alpha\, \mathrm{sign}(m)`.
    ``chain(ema(beta, debias=False, accumulator_dtype), scale_by_sign(),
    [add_decayed_weights], scale_by_learning_rate(learning_rate))``, as Optax
    0.2.8's ``optax.signum``; ``weight_decay`` and ``mask``: the house rule
    (``gradchain/_optimizers.py``). The paper applies its weight decay to the
    gradient before the momentum; here it is decoupled.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.signum(0.1)
      >>> u, _ = tx.update(jnp.array([0.01, -3.0]), tx.init(jnp.zeros(2)))
      >>> [round(float(x), 3) for x in u]
      [-0.1, 0.1]

    References:
      Bernstein et al., signSGD: Compressed Optimisation for Non-Convex
      Problems, ICML 2018, Algorithm 3.
    """
    _check.decay_rate("signum", "beta", beta, schedule_ok=True)
    return chain(
        ema(beta, debias=False, accumulator_dtype=accumulator_dtype),
        scale_by_sign(),
        *optional_weight_decay("signum", weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
