r"""Memory-efficient adaptive optimizers: Adafactor and SM3, each one visible ``chain``.

No arithmetic lives here; the numbers are in :func:`scale_by_factored_rms`
(gradchain/_factored.py) and :func:`scale_by_sm3` (gradchain/_sm3.py). The
signatures, defaults and chains are Optax 0.2.8's, so ported calls give
Optax's numbers.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from gradchain import _check
from gradchain._base import GradientTransformationExtraArgs, ScalarOrSchedule
from gradchain._clipping_more import clip_by_block_rms
from gradchain._combine import chain
from gradchain._factored import scale_by_factored_rms
from gradchain._momentum import ema
from gradchain._regularizing import add_decayed_weights
from gradchain._scaling import scale, scale_by_learning_rate
from gradchain._sm3 import scale_by_sm3
from gradchain._trust import scale_by_param_block_rms
from gradchain._wrappers import MaskOrFn


def adafactor(
    learning_rate: ScalarOrSchedule | None = None,
    min_dim_size_to_factor: int = 128,
    decay_rate: ScalarOrSchedule = 0.8,
    decay_offset: int = 0,
    multiply_by_parameter_scale: bool = True,
    clipping_threshold: ScalarOrSchedule | None = 1.0,
    momentum: ScalarOrSchedule | None = None,
    dtype_momentum: Any = jnp.float32,
    weight_decay_rate: ScalarOrSchedule | None = None,
    eps: ScalarOrSchedule = 1e-30,
    factored: bool = True,
    weight_decay_mask: MaskOrFn | None = None,
) -> GradientTransformationExtraArgs:
    r"""Adafactor (Shazeer and Stern, 2018): factored second moments, relative step sizes.

    ``chain(scale_by_factored_rms(factored, decay_rate, decay_offset,
    min_dim_size_to_factor, eps), [clip_by_block_rms(clipping_threshold)],
    [scale_by_learning_rate(learning_rate, flip_sign=False)],
    [scale_by_param_block_rms()], [ema(momentum, debias=False,
    accumulator_dtype=dtype_momentum)], [add_decayed_weights(weight_decay_rate,
    weight_decay_mask)], scale(-1))``, each bracketed member present only when
    its argument asks for it, as in Optax. So :math:`w \leftarrow w - (\eta
    \max(\mathrm{rms}(w), 10^{-3})\, \mathrm{clip}(U) + \lambda w)`: the weight
    decay is not scaled by the learning rate (Optax's order, kept for its
    numbers).

    Differences from Optax 0.2.8: those of :func:`scale_by_factored_rms` (no
    NaN for a ``decay_offset`` beyond the step, no ``params`` needed by the
    scaling); a ``weight_decay_mask`` without a ``weight_decay_rate`` is
    refused (Optax ignores it).

    Args:
      learning_rate: :math:`\eta` >= 0, a schedule, or None for none (the
        relative step of ``multiply_by_parameter_scale`` then sets the size).
      min_dim_size_to_factor: see :func:`scale_by_factored_rms`.
      decay_rate: the exponent :math:`c` in (0, 1] of :math:`1 - t^{-c}`.
      decay_offset: the step from which the decay schedule restarts, >= 0.
      multiply_by_parameter_scale: scale each leaf's update by its parameters'
        RMS (at least 1e-3): the paper's relative step size.
      clipping_threshold: the paper's update clipping :math:`d` > 0 on each
        leaf's RMS, or None for none.
      momentum: an EMA :math:`\beta_1` in [0, 1) of the updates (not debiased),
        or None for none.
      dtype_momentum: the dtype of the momentum (float32 by default).
      weight_decay_rate: :math:`\lambda` >= 0, a schedule, or None for none.
      eps: :math:`\epsilon_1` > 0 added to the squared gradients.
      factored: whether to factor the moments of leaves with two large axes.
      weight_decay_mask: which parameters to decay (a tree of bools or a
        function of the parameters); all by default.

    Returns:
      A GradientTransformationExtraArgs.

    Raises:
      ValueError: for a number out of range, or a mask without a weight decay.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.adafactor(learning_rate=0.1)
      >>> params = jnp.array([1.0, 2.0, 3.0])
      >>> state = tx.init(params)
      >>> for _ in range(5):
      ...     updates, state = tx.update(2 * params, state, params)  # gradient of |w|^2
      ...     params = gc.apply_updates(params, updates)
      >>> [round(float(p), 3) for p in params]
      [0.27, 1.168, 2.139]

    References:
      Shazeer and Stern, Adafactor: Adaptive Learning Rates with Sublinear
      Memory Cost, ICML 2018.
    """
    fn = "adafactor"
    _check.positive(fn, "eps", eps, schedule_ok=True)
    if clipping_threshold is not None:
        _check.positive(fn, "clipping_threshold", clipping_threshold, schedule_ok=True)
    if momentum is not None:
        _check.decay_rate(fn, "momentum", momentum, schedule_ok=True)
    if weight_decay_rate is not None:
        _check.non_negative(fn, "weight_decay_rate", weight_decay_rate, schedule_ok=True)
    elif weight_decay_mask is not None:
        raise ValueError(
            f"{fn}: `weight_decay_mask` selects the parameters to decay, but "
            f"`weight_decay_rate` is None. Give a `weight_decay_rate` too, or drop the mask."
        )
    dtype = _check.dtype_or_none(fn, "dtype_momentum", dtype_momentum)
    members = [
        scale_by_factored_rms(factored, decay_rate, decay_offset, min_dim_size_to_factor, eps),
        *([clip_by_block_rms(clipping_threshold)] if clipping_threshold is not None else []),
        *(
            [scale_by_learning_rate(learning_rate, flip_sign=False)]
            if learning_rate is not None
            else []
        ),
        *([scale_by_param_block_rms()] if multiply_by_parameter_scale else []),
        *([ema(momentum, debias=False, accumulator_dtype=dtype)] if momentum is not None else []),
        *(
            [add_decayed_weights(weight_decay_rate, weight_decay_mask)]
            if weight_decay_rate is not None
            else []
        ),
        scale(-1),
    ]
    return chain(*members)


def sm3(
    learning_rate: ScalarOrSchedule, momentum: ScalarOrSchedule = 0.9
) -> GradientTransformationExtraArgs:
    r"""SM3 (Anil et al., 2019): :func:`scale_by_sm3` then the learning rate.

    ``chain(scale_by_sm3(b1=momentum), scale_by_learning_rate(learning_rate))``,
    Optax's ``chain(scale_by_sm3(momentum), scale(-learning_rate))`` with the
    learning rate in the state (and allowed to be a schedule; Optax's must be
    a number).

    Args:
      learning_rate: :math:`\eta` >= 0, or a schedule.
      momentum: :math:`\beta_1` in [0, 1).

    Returns:
      A GradientTransformationExtraArgs.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.sm3(learning_rate=0.1, momentum=0.0)
      >>> params = jnp.array([[1.0, -2.0], [0.5, 3.0]])
      >>> updates, _ = tx.update(2 * params, tx.init(params))
      >>> [[round(float(u), 3) for u in row] for row in updates]  # the first step: -lr sign(g)
      [[-0.1, 0.1], [-0.1, -0.1]]

    References:
      Anil, Gupta, Koren and Singer, Memory-Efficient Adaptive Optimization,
      NeurIPS 2019.
    """
    _check.decay_rate("sm3", "momentum", momentum, schedule_ok=True)
    return chain(scale_by_sm3(b1=momentum), scale_by_learning_rate(learning_rate))
