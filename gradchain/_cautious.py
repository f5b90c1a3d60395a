r"""Cautious masking (Liang et al., 2024): drop the update components that fight the gradient.

A momentum method's update :math:`u_t` need not agree with the current
gradient :math:`g_t` coordinate by coordinate; where it does not, the step
raises the loss to first order. The cautious wrapper keeps only the
coordinates where they agree and rescales the survivors so that the update's
size is kept on average:

.. math::
  \phi_t = \mathbb{1}(u_t \odot g_t > 0), \qquad
  u'_t = u_t \odot \phi_t \,/\, (\mathrm{mean}(\phi_t) + \epsilon),

the paper's Algorithm 1 (``m = (u * g > 0); u * m / (m.mean() + eps)``), with
the mean taken over each parameter tensor, as the authors' per-parameter
PyTorch loop does.

The sign convention. In gradchain a chain's updates point along the gradient
until :func:`scale_by_learning_rate` negates them: ``scale_by_adam`` returns
:math:`+\hat m / \sqrt{\hat v}`, ``adamw`` returns :math:`-\eta(\dots)`. The
wrapper compares the inner updates with the updates it receives itself (the
gradient, when it comes first in the chain), and ``orientation`` says which
way the inner updates point:

- ``"gradient"`` (the default): the inner transform is a direction, as
  ``scale_by_adam`` or ``scale_by_lion`` are; a coordinate is kept where
  :math:`u \cdot g > 0`. Wrap the direction and leave weight decay and the
  learning rate outside, as the paper does (its decay is not masked):
  ``chain(cautious(scale_by_adam()), add_decayed_weights(wd),
  scale_by_learning_rate(lr))`` is :func:`cautious_adamw`.
- ``"descent"``: the inner transform is a whole optimizer whose updates are
  added to the parameters (``cautious(sgd(0.1, momentum=0.9),
  orientation="descent")``); a coordinate is kept where :math:`u \cdot g < 0`.
  Its weight decay, if any, is then masked with the rest.

Complex leaves use :math:`\mathrm{Re}(u \bar g) > 0`, the condition for a
first-order decrease of a real loss.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp

from gradchain import _check, _tree
from gradchain._base import (
    AnyTransformation,
    GradientTransformationExtraArgs,
    OptState,
    Params,
    ScalarOrSchedule,
    Updates,
    call_update,
    check_transformation,
)
from gradchain._combine import chain
from gradchain._flat_params import refuse_flat_params
from gradchain._hyperparams import Hyperparams, HyperparamSpec, values
from gradchain._moments import scale_by_adam
from gradchain._regularizing import add_decayed_weights
from gradchain._scaling import scale_by_learning_rate
from gradchain._sign_methods import scale_by_lion
from gradchain._wrappers import MaskOrFn

Orientation = Literal["gradient", "descent"]
_ORIENTATIONS = ("gradient", "descent")


class CautiousState(NamedTuple):
    """State of :func:`cautious`."""

    step: jax.Array  # int32[], updates seen so far
    inner_state: OptState  # the wrapped transformation's state
    hparams: Hyperparams  # mask_eps


def _cautious_leaf(u: jax.Array, g: jax.Array, eps: jax.Array, sign: int) -> jax.Array:
    """One tensor's masked and rescaled update, in the update's dtype."""
    if u.size == 0:
        return u
    uc, gc = _tree.upcast(u, g)
    agree = (uc * jnp.conj(gc)).real if jnp.iscomplexobj(uc) else uc * gc
    real = jnp.finfo(uc.dtype).dtype  # float32 for float32 and complex64
    phi = (sign * agree > 0).astype(real)
    mean = jnp.mean(phi)
    # An empty mask leaves nothing to rescale: 0, not 0/0 when mask_eps is 0.
    scale = jnp.where(mean > 0, 1 / (mean + eps.astype(real)), jnp.zeros([], real))
    return (uc * (phi * scale).astype(uc.dtype)).astype(u.dtype)


def cautious(
    inner: AnyTransformation,
    mask_eps: ScalarOrSchedule = 1e-8,
    *,
    orientation: Orientation = "gradient",
) -> GradientTransformationExtraArgs:
    r"""Masks the inner updates where their sign disagrees with the gradient (C-optimizers).

    ``u' = u * phi / (mean(phi) + mask_eps)`` with ``phi = (u * g > 0)`` per
    parameter tensor (``u * g < 0`` with ``orientation="descent"``), where ``g``
    is what this wrapper receives and ``u`` what ``inner`` returns for it. See
    the module docstring for which orientation to use. Extra keyword arguments
    of ``update`` are passed on to ``inner``.

    Normalisation: the paper's Algorithm 1, ``mean + eps``; the authors' first
    code divided by ``(nnz + 1) / d`` instead, i.e. ``eps = 1/d`` per tensor,
    and later code by ``max(mean, 1e-3)``. All three agree unless nearly the
    whole tensor is masked out. A tensor whose mask is empty gets a zero update.

    Args:
      inner: the transformation whose updates are masked; any momentum method
        (the mask is all ones for plain gradient descent).
      mask_eps: added to the mask's mean before dividing, >= 0.
      orientation: ``"gradient"`` if ``inner``'s updates point along the
        gradient (a ``scale_by_*`` direction), ``"descent"`` if they are steps
        to add to the parameters (a whole optimizer, learning rate included).

    Returns:
      A GradientTransformationExtraArgs whose state is a CautiousState.

    Raises:
      TypeError: if ``inner`` is not a transformation.
      ValueError: for a negative ``mask_eps`` or an unknown ``orientation``;
        at trace time, if ``inner`` changes the updates' structure or shapes.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.cautious(gc.trace(decay=0.9))
      >>> params = jnp.zeros(4)
      >>> state = tx.init(params)
      >>> _, state = tx.update(jnp.array([1.0, 1.0, 1.0, 1.0]), state)
      >>> u, _ = tx.update(jnp.array([1.0, -0.5, 1.0, -0.5]), state)
      >>> [round(float(x), 3) for x in u]  # momentum 0.4 fights g = -0.5: dropped, rest * 2
      [3.8, 0.0, 3.8, 0.0]

    References:
      Liang, Chen, Liu and Liu, Cautious Optimizers: Improving Training with
      One Line of Code, 2024 (arXiv:2411.16085), Algorithm 1.
    """
    fn = "cautious"
    check_transformation(fn, "`inner`", inner)
    _check.non_negative(fn, "mask_eps", mask_eps, schedule_ok=True)
    if orientation not in _ORIENTATIONS:
        raise ValueError(
            f"{fn}: `orientation` must be one of {list(_ORIENTATIONS)}; got {orientation!r}. "
            f'Use "gradient" around a direction such as scale_by_adam(), "descent" around a '
            f"whole optimizer such as sgd(0.1, momentum=0.9)."
        )
    sign = 1 if orientation == "gradient" else -1
    spec = HyperparamSpec(fn, dict(mask_eps=mask_eps))

    def init_fn(params: Params) -> CautiousState:
        refuse_flat_params("cautious", "each leaf's size (the mask is rescaled per leaf)", params)
        return CautiousState(jnp.zeros([], jnp.int32), inner.init(params), spec.init())

    def update_fn(
        updates: Updates, state: CautiousState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, CautiousState]:
        _tree.check_state(fn, state, CautiousState)
        new, inner_state = call_update(inner, updates, state.inner_state, params, extra_args)
        _tree.check_same_structure(fn, "updates", updates, "inner(updates)", new)
        _tree.check_same_shapes(fn, "updates", updates, "inner(updates)", new)
        eps = values(state.hparams)["mask_eps"]
        out = jax.tree.map(
            lambda u, g: None if u is None else _cautious_leaf(u, g, eps, sign),
            new,
            updates,
            is_leaf=lambda x: x is None,
        )
        step = _tree.safe_increment(state.step)
        return out, CautiousState(step, inner_state, spec.advance(state.hparams, step))

    return GradientTransformationExtraArgs(init_fn, update_fn)


def cautious_adamw(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-8,
    eps_root: ScalarOrSchedule = 0.0,
    mu_dtype: Any | None = None,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: MaskOrFn | None = None,
    *,
    mask_eps: ScalarOrSchedule = 1e-8,
) -> GradientTransformationExtraArgs:
    r"""C-AdamW: AdamW whose Adam direction is masked where it disagrees with the gradient.

    ``chain(cautious(scale_by_adam(b1, b2, eps, eps_root, mu_dtype), mask_eps),
    add_decayed_weights(weight_decay, mask), scale_by_learning_rate(learning_rate))``:
    the paper's C-AdamW, whose decoupled weight decay is not masked. The
    arguments are :func:`adamw`'s, with its defaults.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.cautious_adamw(0.1, weight_decay=0.0)
      >>> params = jnp.zeros(2)
      >>> u, _ = tx.update(jnp.array([3.0, -1.0]), tx.init(params), params)
      >>> [round(float(x), 4) for x in u]  # the first step agrees everywhere: AdamW's
      [-0.1, 0.1]

    References:
      Liang, Chen, Liu and Liu, Cautious Optimizers: Improving Training with
      One Line of Code, 2024 (arXiv:2411.16085), Algorithm 2.
    """
    return chain(
        cautious(scale_by_adam(b1, b2, eps, eps_root, mu_dtype), mask_eps),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


def cautious_lion(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.99,
    mu_dtype: Any | None = None,
    weight_decay: ScalarOrSchedule = 1e-3,
    mask: MaskOrFn | None = None,
    *,
    mask_eps: ScalarOrSchedule = 1e-8,
) -> GradientTransformationExtraArgs:
    r"""C-Lion: Lion whose sign update is masked where it disagrees with the gradient.

    ``chain(cautious(scale_by_lion(b1, b2, mu_dtype), mask_eps),
    add_decayed_weights(weight_decay, mask), scale_by_learning_rate(learning_rate))``,
    with :func:`lion`'s arguments and defaults; the weight decay is not masked.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.cautious_lion(0.1, weight_decay=0.0)
      >>> params = jnp.zeros(4)
      >>> state = tx.init(params)
      >>> _, state = tx.update(jnp.array([1.0, 1.0, 1.0, 1.0]), state, params)
      >>> u, _ = tx.update(jnp.array([1.0, -0.01, 1.0, -0.01]), state, params)
      >>> [round(float(x), 4) + 0.0 for x in u]  # sign(c) = +1 fights g < 0: dropped, rest * 2
      [-0.2, 0.0, -0.2, 0.0]

    References:
      Liang, Chen, Liu and Liu, Cautious Optimizers: Improving Training with
      One Line of Code, 2024 (arXiv:2411.16085).
    """
    return chain(
        cautious(scale_by_lion(b1, b2, mu_dtype), mask_eps),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
