r"""Optimizers whose step size comes from the objective, the gradients' history or the distance.

As in ``gradchain/_optimizers.py``: no arithmetic here, each alias is one
visible ``chain`` of public transforms, whose docstrings hold the equations.
Weight decay follows the house rule in that module's docstring: a keyword
``weight_decay=None, mask=None`` where Optax has no decay (``None``: Optax's
chain; a number or a schedule: :func:`add_decayed_weights` right before the
learning rate); ``dog`` and ``dowg`` keep Optax's own ``weight_decay`` and
``mask``, which decay before the scaling, so the decay enters the measured
gradient norms (as in Optax).

:func:`polyak_sgd` needs ``value=`` in its update, :func:`dog` and
:func:`dowg` need ``params``.
"""

from __future__ import annotations

from typing import Any

import jax

from gradchain import _check
from gradchain._base import GradientTransformationExtraArgs, ScalarOrSchedule, identity
from gradchain._combine import chain
from gradchain._dog import DogInitStep, scale_by_dog, scale_by_dowg
from gradchain._moments import scale_by_adam
from gradchain._optimistic import scale_by_optimistic_gradient
from gradchain._optimizers import optional_weight_decay
from gradchain._polyak import PolyakVariant, scale_by_polyak
from gradchain._scaling import scale_by_learning_rate
from gradchain._wrappers import MaskOrFn


def polyak_sgd(
    max_learning_rate: float | jax.Array = 1.0,
    scaling: ScalarOrSchedule = 1.0,
    f_min: float | jax.Array = 0.0,
    eps: float | jax.Array = 0.0,
    variant: PolyakVariant = "sps",
    *,
    weight_decay: ScalarOrSchedule | None = None,
    mask: MaskOrFn | None = None,
) -> GradientTransformationExtraArgs:
    r"""SGD with Polyak's step size (:func:`scale_by_polyak`).

    :math:`w \leftarrow w - s\,\min\{\frac{f(w) - f^\star}{\|g\|^2 + \epsilon},
    \gamma_{\max}\}\, g`: ``chain(scale_by_polyak(f_min, max_learning_rate, eps, variant),
    [add_decayed_weights], scale_by_learning_rate(scaling))``. Its update takes
    ``value=``, the objective at the current parameters. The learning rate in
    :func:`get_hyperparams` is ``scaling``.

    Optax 0.2.8 chains ``sgd(scaling)`` before the Polyak step, which then
    measures the scaled gradient: its step is :math:`\min\{\frac{f - f^\star}
    {s^2 \|g\|^2}, \gamma_{\max}\}\, s\, g`, so ``scaling=0.5`` doubles the
    uncapped step instead of halving it (measured: from ``[1, 2, 3]`` on
    :math:`\|x\|^2`, Optax lands on 0 where the formula gives
    ``[0.75, 1.5, 2.25]``). Here ``scaling`` multiplies the step, as the formula
    in both libraries' documentation says; with ``scaling=1`` the two agree.
    The state is therefore ``(ScaleByPolyakState, ScaleState)``, not Optax's.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> f = lambda x: jnp.sum(x**2)
      >>> tx = gc.polyak_sgd()
      >>> x = jnp.array([1.0, 2.0, 3.0])
      >>> state = tx.init(x)
      >>> for _ in range(3):
      ...     loss, grad = jax.value_and_grad(f)(x)
      ...     u, state = tx.update(grad, state, x, value=loss)
      ...     x = gc.apply_updates(x, u)
      >>> round(float(f(x)), 4)  # each step halves x
      0.2188

    References:
      Loizou, Vaswani, Laradji and Lacoste-Julien, Stochastic Polyak Step-size for SGD:
      An Adaptive Learning Rate for Fast Convergence, AISTATS 2021.
    """
    _check.non_negative("polyak_sgd", "scaling", scaling, schedule_ok=True)
    return chain(
        scale_by_polyak(f_min, max_learning_rate, eps, variant),
        *optional_weight_decay("polyak_sgd", weight_decay, mask),
        scale_by_learning_rate(scaling),
    )


def optimistic_gradient_descent(
    learning_rate: ScalarOrSchedule,
    alpha: ScalarOrSchedule = 1.0,
    beta: ScalarOrSchedule = 1.0,
    *,
    weight_decay: ScalarOrSchedule | None = None,
    mask: MaskOrFn | None = None,
) -> GradientTransformationExtraArgs:
    r"""Optimistic gradient descent (:func:`scale_by_optimistic_gradient`).

    :math:`w \leftarrow w - \eta\,((\alpha + \beta) g_t - \beta g_{t-1})`:
    ``chain(scale_by_optimistic_gradient(alpha, beta), [add_decayed_weights],
    scale_by_learning_rate(learning_rate))``, Optax's chain. ``alpha`` and
    ``beta`` may be schedules, as Optax 0.2.8's signature says (its transform then
    raises a TypeError). For min-max games
    give each player its own optimizer with the ascent player's gradient
    negated.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.optimistic_gradient_descent(0.1)
      >>> state = tx.init(jnp.zeros(1))
      >>> u, state = tx.update(jnp.array([1.0]), state)
      >>> u, state = tx.update(jnp.array([3.0]), state)  # -0.1 * (2 * 3 - 1)
      >>> round(float(u[0]), 4)
      -0.5

    References:
      Mokhtari, Ozdaglar and Pattathil, A Unified Analysis of Extra-gradient and
      Optimistic Gradient Methods for Saddle Point Problems: Proximal Point Approach,
      AISTATS 2020.
    """
    return chain(
        scale_by_optimistic_gradient(alpha, beta),
        *optional_weight_decay("optimistic_gradient_descent", weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


def optimistic_adam_v2(
    learning_rate: ScalarOrSchedule,
    *,
    alpha: ScalarOrSchedule = 1.0,
    beta: ScalarOrSchedule = 1.0,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-8,
    eps_root: ScalarOrSchedule = 0.0,
    mu_dtype: Any | None = None,
    nesterov: bool = True,
    weight_decay: ScalarOrSchedule | None = None,
    mask: MaskOrFn | None = None,
) -> GradientTransformationExtraArgs:
    r"""Optimistic Adam: optimistic gradients of Adam's direction (Daskalakis et al.).

    With :math:`r_t` the output of :func:`scale_by_adam` (NAdam's by default,
    ``nesterov=True`` as in Optax),
    :math:`w \leftarrow w - \eta\,((\alpha + \beta) r_t - \beta r_{t-1})`:
    ``chain(scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov),
    scale_by_optimistic_gradient(alpha, beta), [add_decayed_weights],
    scale_by_learning_rate(learning_rate))``, Optax 0.2.8's chain and
    keyword-only signature. Optax's older ``optimistic_adam`` is deprecated
    there (it warns, and refuses schedules), so gradchain has only this one.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.optimistic_adam_v2(0.1)
      >>> u, _ = tx.update(jnp.array([3.0, -0.5]), tx.init(jnp.zeros(2)))
      >>> [round(float(x), 4) for x in u]  # NAdam's first step: -lr (1 + 0.09 / 0.19) sign(g)
      [-0.1474, 0.1474]

    References:
      Daskalakis, Ilyas, Syrgkanis and Zeng, Training GANs with Optimism, ICLR 2018.
    """
    return chain(
        scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov),
        scale_by_optimistic_gradient(alpha, beta),
        *optional_weight_decay("optimistic_adam_v2", weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


def dog(
    learning_rate: ScalarOrSchedule = 1.0,
    init_step: DogInitStep = ("heuristic", 1e-6),
    eps: float | jax.Array = 1e-8,
    weight_decay: ScalarOrSchedule | None = None,
    mask: MaskOrFn | None = None,
) -> GradientTransformationExtraArgs:
    r"""DoG, distance over gradients (:func:`scale_by_dog`).

    :math:`w \leftarrow w - \eta\, \frac{\bar r_t}{\sqrt{G_t + \epsilon}}\, g_t`:
    ``chain(add_decayed_weights(weight_decay, mask) or identity(),
    scale_by_dog(init_step, eps), scale_by_learning_rate(learning_rate))``:
    Optax's ``optax.contrib.dog``, its signature and chain. The update needs
    ``params``; ``init`` takes ``jax.ShapeDtypeStruct`` (Optax's does not), the
    first update recording the initial parameters. A ``mask`` without a
    ``weight_decay`` is refused (Optax ignores it). The authors recommend
    averaging the iterates (:func:`ema_params`).

    ``init_step`` sets the first step: ``("heuristic", a)`` starts from the
    distance :math:`r_\epsilon = a (1 + \|x_0\|)` (the paper suggests
    :math:`a = 10^{-6}`, or :math:`10^{-4}` with batch normalization),
    ``("distance", r)`` from :math:`r_\epsilon = r`, ``("learning_rate", eta)``
    takes a first step of size ``eta``. It must be small enough for the first
    step not to diverge; DoG then grows the step size by itself.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> f = lambda x: jnp.sum(x**2)
      >>> tx = gc.dog(init_step=("distance", 0.1))
      >>> x = jnp.array([1.0, 2.0, 3.0])
      >>> state = tx.init(jax.ShapeDtypeStruct(x.shape, x.dtype))  # no array needed
      >>> for _ in range(50):
      ...     u, state = tx.update(jax.grad(f)(x), state, x)
      ...     x = gc.apply_updates(x, u)
      >>> round(float(f(x)), 4)
      0.0

    References:
      Ivgi, Hinder and Carmon, DoG is SGD's Best Friend: A Parameter-Free Dynamic Step
      Size Schedule, ICML 2023.
    """
    decay = optional_weight_decay("dog", weight_decay, mask) or (identity(),)
    return chain(*decay, scale_by_dog(init_step, eps), scale_by_learning_rate(learning_rate))


def dowg(
    learning_rate: ScalarOrSchedule = 1.0,
    init_estim_sq_dist: float | jax.Array | None = None,
    eps: float | jax.Array = 1e-4,
    weight_decay: ScalarOrSchedule | None = None,
    mask: MaskOrFn | None = None,
) -> GradientTransformationExtraArgs:
    r"""DoWG, distance over weighted gradients (:func:`scale_by_dowg`).

    :math:`w \leftarrow w - \eta\, \frac{\bar r_t^2}{\sqrt{v_t} + \epsilon}\, g_t`:
    ``chain(add_decayed_weights(weight_decay, mask) or identity(),
    scale_by_dowg(init_estim_sq_dist, eps), scale_by_learning_rate(learning_rate))``:
    Optax's ``optax.contrib.dowg``, its signature and chain. The update needs
    ``params``; ``init`` takes ``jax.ShapeDtypeStruct`` (Optax's does not). A
    ``mask`` without a ``weight_decay`` is refused (Optax ignores it).

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> f = lambda x: jnp.sum(x**2)
      >>> tx = gc.dowg()
      >>> x = jnp.array([1.0, 2.0, 3.0])
      >>> state = tx.init(x)
      >>> for _ in range(50):
      ...     u, state = tx.update(jax.grad(f)(x), state, x)
      ...     x = gc.apply_updates(x, u)
      >>> round(float(f(x)), 4)
      0.0

    References:
      Khaled, Mishchenko and Jin, DoWG Unleashed: An Efficient Universal Parameter-Free
      Gradient Descent Method, NeurIPS 2023.
    """
    decay = optional_weight_decay("dowg", weight_decay, mask) or (identity(),)
    return chain(
        *decay, scale_by_dowg(init_estim_sq_dist, eps), scale_by_learning_rate(learning_rate)
    )
