r"""Adaptive optimizers beyond Adam, each one visible ``chain`` of public transforms.

As in ``gradchain/_optimizers.py``: no arithmetic here, the numbers live in
the transforms, whose docstrings hold the equations and the meaning of each
argument; names, signatures and chains are Optax 0.2.8's. Weight decay follows
the house rule written in that module's docstring: a keyword
``weight_decay=None, mask=None`` where Optax has no decay (``None``: Optax's
chain exactly; a number or a schedule: :func:`add_decayed_weights` right
before the learning rate), Optax's own arguments where it has one.
"""

from __future__ import annotations

from typing import Any

from gradchain._adaptive import scale_by_adamax, scale_by_amsgrad, scale_by_belief, scale_by_yogi
from gradchain._adaptive_other import scale_by_adadelta, scale_by_adan, scale_by_novograd
from gradchain._base import GradientTransformationExtraArgs, ScalarOrSchedule
from gradchain._combine import chain
from gradchain._optimizers import optional_weight_decay
from gradchain._radam import scale_by_radam
from gradchain._regularizing import add_decayed_weights
from gradchain._scaling import scale, scale_by_learning_rate
from gradchain._sign_methods import scale_by_lion, scale_by_rprop, scale_by_sign
from gradchain._wrappers import MaskOrFn


def adamax(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-8,
    *,
    weight_decay: ScalarOrSchedule | None = None,
    mask: MaskOrFn | None = None,
) -> GradientTransformationExtraArgs:
    r"""AdaMax: :math:`w \leftarrow w - \eta\, m_t / ((1-\beta_1^t) u_t)` (:func:`scale_by_adamax`).

    ``chain(scale_by_adamax(b1, b2, eps), [add_decayed_weights], scale_by_learning_rate)``;
    ``weight_decay`` and ``mask`` as in the house rule (``gradchain/_optimizers.py``).

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.adamax(0.1)
      >>> u, _ = tx.update(jnp.array([3.0, -0.5]), tx.init(jnp.zeros(2)))
      >>> [round(float(x), 4) for x in u]
      [-0.1, 0.1]

    References:
      Kingma and Ba, Adam: A Method for Stochastic Optimization, ICLR 2015, section 7.1.
    """
    return chain(
        scale_by_adamax(b1, b2, eps),
        *optional_weight_decay("adamax", weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


def adamaxw(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-8,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: MaskOrFn | None = None,
) -> GradientTransformationExtraArgs:
    r"""AdaMaxW: AdaMax with decoupled weight decay, :math:`w \leftarrow w - \eta (u + \lambda w)`.

    ``chain(scale_by_adamax(b1, b2, eps), add_decayed_weights(weight_decay, mask),
    scale_by_learning_rate(learning_rate))``, Optax's signature and defaults.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.adamaxw(0.1, weight_decay=0.5)
      >>> params = jnp.array([2.0])
      >>> u, _ = tx.update(jnp.array([3.0]), tx.init(params), params)
      >>> round(float(u[0]), 4)  # -0.1 * (1 + 0.5 * 2)
      -0.2

    References:
      Loshchilov and Hutter, Decoupled Weight Decay Regularization, ICLR 2019.
    """
    return chain(
        scale_by_adamax(b1, b2, eps),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


def amsgrad(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-8,
    eps_root: ScalarOrSchedule = 0.0,
    mu_dtype: Any | None = None,
    bias_correction_mu: bool = True,
    bias_correction_nu: bool = True,
    *,
    max_before_debias: bool = False,
    weight_decay: ScalarOrSchedule | None = None,
    mask: MaskOrFn | None = None,
) -> GradientTransformationExtraArgs:
    r"""AMSGrad: Adam with the running maximum of the second moment (:func:`scale_by_amsgrad`).

    ``chain(scale_by_amsgrad(...), [add_decayed_weights], scale_by_learning_rate)``.
    By default the maximum is taken after debiasing (Optax); PyTorch's
    ``Adam(amsgrad=True)`` takes it before: ``max_before_debias=True``. Reddi
    et al.'s Algorithm 2 debiases neither moment:
    ``bias_correction_mu=False, bias_correction_nu=False``.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.amsgrad(0.1)
      >>> u, _ = tx.update(jnp.array([3.0]), tx.init(jnp.zeros(1)))
      >>> round(float(u[0]), 4)
      -0.1

    References:
      Reddi, Kale and Kumar, On the Convergence of Adam and Beyond, ICLR 2018.
    """
    return chain(
        scale_by_amsgrad(
            b1,
            b2,
            eps,
            eps_root,
            mu_dtype,
            bias_correction_mu,
            bias_correction_nu,
            max_before_debias=max_before_debias,
        ),
        *optional_weight_decay("amsgrad", weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


def yogi(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-3,
    *,
    initial_accumulator_value: float = 1e-6,
    initial_mu: float | None = None,
    weight_decay: ScalarOrSchedule | None = None,
    mask: MaskOrFn | None = None,
) -> GradientTransformationExtraArgs:
    r"""Yogi: Adam with an additive second moment (:func:`scale_by_yogi`).

    ``chain(scale_by_yogi(b1, b2, eps, ...), [add_decayed_weights], scale_by_learning_rate)``.
    Both moments start at ``initial_accumulator_value`` (1e-6), as in Optax;
    the paper starts them at 0: ``initial_accumulator_value=0.0, initial_mu=0.0``.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.yogi(0.1, eps=0.0, initial_accumulator_value=0.0)
      >>> u, _ = tx.update(jnp.array([3.0]), tx.init(jnp.zeros(1)))
      >>> round(float(u[0]), 4)
      -0.1

    References:
      Zaheer et al., Adaptive Methods for Nonconvex Optimization, NeurIPS 2018.
    """
    return chain(
        scale_by_yogi(b1, b2, eps, 0.0, initial_accumulator_value, initial_mu=initial_mu),
        *optional_weight_decay("yogi", weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


def adabelief(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-16,
    eps_root: ScalarOrSchedule = 1e-16,
    *,
    nesterov: bool = False,
    weight_decay: ScalarOrSchedule | None = None,
    mask: MaskOrFn | None = None,
) -> GradientTransformationExtraArgs:
    r"""AdaBelief: Adam divided by the spread around the prediction (:func:`scale_by_belief`).

    ``chain(scale_by_belief(...), [add_decayed_weights], scale_by_learning_rate)``.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.adabelief(0.1)
      >>> u, _ = tx.update(jnp.array([3.0]), tx.init(jnp.zeros(1)))
      >>> round(float(u[0]), 4)  # the first step is -lr sign(g) / (1 - b1)
      -0.1111

    References:
      Zhuang et al., AdaBelief Optimizer: Adapting Stepsizes by the Belief in
      Observed Gradients, NeurIPS 2020.
    """
    return chain(
        scale_by_belief(b1, b2, eps, eps_root, nesterov=nesterov),
        *optional_weight_decay("adabelief", weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


def radam(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-8,
    eps_root: ScalarOrSchedule = 0.0,
    threshold: ScalarOrSchedule = 5.0,
    *,
    nesterov: bool = False,
    weight_decay: ScalarOrSchedule | None = None,
    mask: MaskOrFn | None = None,
) -> GradientTransformationExtraArgs:
    r"""RAdam: momentum SGD until Adam's variance is tractable, then rectified Adam.

    ``chain(scale_by_radam(...), [add_decayed_weights], scale_by_learning_rate)``.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.radam(0.1)
      >>> u, _ = tx.update(jnp.array([3.0]), tx.init(jnp.zeros(1)))
      >>> round(float(u[0]), 4)  # the first steps are momentum SGD: -lr g
      -0.3

    References:
      Liu et al., On the Variance of the Adaptive Learning Rate and Beyond, ICLR 2020.
    """
    return chain(
        scale_by_radam(b1, b2, eps, eps_root, threshold, nesterov=nesterov),
        *optional_weight_decay("radam", weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


def novograd(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.25,
    eps: ScalarOrSchedule = 1e-6,
    eps_root: ScalarOrSchedule = 0.0,
    weight_decay: ScalarOrSchedule = 0.0,
    *,
    mask: MaskOrFn | None = None,
) -> GradientTransformationExtraArgs:
    r"""NovoGrad: layer-wise normalized gradients with momentum (:func:`scale_by_novograd`).

    ``chain(scale_by_novograd(b1, b2, eps, eps_root, weight_decay, mask=mask),
    scale_by_learning_rate(learning_rate))``: the decay is part of NovoGrad's
    momentum, as in the paper and Optax; ``mask`` selects where it applies.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.novograd(0.1)
      >>> params = jnp.zeros(2)
      >>> u, _ = tx.update(jnp.array([3.0, 4.0]), tx.init(params), params)
      >>> [round(float(x), 4) for x in u]  # -lr g / ||g||
      [-0.06, -0.08]

    References:
      Ginsburg et al., Stochastic Gradient Methods with Layer-wise Adaptive
      Moments for Training of Deep Networks, 2019.
    """
    return chain(
        scale_by_novograd(b1, b2, eps, eps_root, weight_decay, mask=mask),
        scale_by_learning_rate(learning_rate),
    )


def adadelta(
    learning_rate: ScalarOrSchedule | None = None,
    rho: ScalarOrSchedule = 0.9,
    eps: ScalarOrSchedule = 1e-6,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: MaskOrFn | None = None,
) -> GradientTransformationExtraArgs:
    r"""AdaDelta: :math:`w \leftarrow w - \eta u_t` with :func:`scale_by_adadelta`'s :math:`u_t`.

    ``chain(add_decayed_weights(weight_decay, weight_decay_mask),
    scale_by_adadelta(rho, eps), scale_by_learning_rate(learning_rate or 1.0))``:
    Optax's chain, whose decay is added to the gradient before the scaling.

    Unlike Optax 0.2.8, ``adadelta()`` without a learning rate descends.
    Zeiler's ADADELTA has no learning rate: its step is :math:`-u_t`. Optax
    turns ``learning_rate=None`` into ``identity()`` in place of
    ``scale_by_learning_rate``, dropping the minus sign too, so its
    ``adadelta()`` steps by :math:`+u_t`, uphill (measured: on
    :math:`\|w\|^2` from ``[1, 2, 3]`` the loss grows from 14.0 to 14.2 in
    five steps). Here ``None`` means a learning rate of 1, the paper's step.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.adadelta()
      >>> params = jnp.array([1.0, 2.0, 3.0])
      >>> state = tx.init(params)
      >>> for _ in range(5):
      ...     grads = jax.grad(lambda w: jnp.sum(w**2))(params)
      ...     updates, state = tx.update(grads, state, params)
      ...     params = gc.apply_updates(params, updates)
      >>> round(float(jnp.sum(params**2)), 2)  # 14.0 at the start: downhill
      13.8

    References:
      Zeiler, ADADELTA: An Adaptive Learning Rate Method, 2012.
    """
    return chain(
        add_decayed_weights(weight_decay, weight_decay_mask),
        scale_by_adadelta(rho, eps),
        scale_by_learning_rate(1.0 if learning_rate is None else learning_rate),
    )


def adan(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.98,
    b2: ScalarOrSchedule = 0.92,
    b3: ScalarOrSchedule = 0.99,
    eps: ScalarOrSchedule = 1e-8,
    eps_root: ScalarOrSchedule = 1e-8,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: MaskOrFn | None = None,
) -> GradientTransformationExtraArgs:
    r"""Adan: Nesterov-momentum Adam with decoupled weight decay (:func:`scale_by_adan`).

    ``chain(scale_by_adan(b1, b2, b3, eps, eps_root), add_decayed_weights(weight_decay,
    mask), scale_by_learning_rate(learning_rate))``, Optax's. The paper's
    decay is proximal, :math:`w \leftarrow (w - \eta u) / (1 + \lambda\eta)`;
    this one (Optax's) is :math:`w \leftarrow w - \eta (u + \lambda w)`, the
    same to first order in :math:`\lambda\eta`.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.adan(0.1)
      >>> params = jnp.zeros(1)
      >>> u, _ = tx.update(jnp.array([3.0]), tx.init(params), params)
      >>> round(float(u[0]), 4)
      -0.1

    References:
      Xie et al., Adan: Adaptive Nesterov Momentum Algorithm for Faster
      Optimizing Deep Models, 2022.
    """
    return chain(
        scale_by_adan(b1, b2, b3, eps, eps_root),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


def lion(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.99,
    mu_dtype: Any | None = None,
    weight_decay: ScalarOrSchedule = 1e-3,
    mask: MaskOrFn | None = None,
) -> GradientTransformationExtraArgs:
    r"""Lion: :math:`w \leftarrow w - \eta (\mathrm{sign}(c_t) + \lambda w)` (see scale_by_lion).

    ``chain(scale_by_lion(b1, b2, mu_dtype), add_decayed_weights(weight_decay, mask),
    scale_by_learning_rate(learning_rate))``, the paper's Algorithm 2 and Optax's.
    Every step has size :math:`\eta` per coordinate, so Lion wants a learning
    rate 3 to 10 times smaller than AdamW's, and a decay as many times larger.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.lion(0.1, weight_decay=0.0)
      >>> params = jnp.zeros(2)
      >>> u, _ = tx.update(jnp.array([3.0, -1e-4]), tx.init(params), params)
      >>> [round(float(x), 4) for x in u]
      [-0.1, 0.1]

    References:
      Chen et al., Symbolic Discovery of Optimization Algorithms, NeurIPS 2023.
    """
    return chain(
        scale_by_lion(b1, b2, mu_dtype),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


def sign_sgd(
    learning_rate: ScalarOrSchedule,
    *,
    weight_decay: ScalarOrSchedule | None = None,
    mask: MaskOrFn | None = None,
) -> GradientTransformationExtraArgs:
    r"""signSGD: :math:`w \leftarrow w - \eta\, \mathrm{sign}(g)`.

    ``chain(scale_by_sign(), [add_decayed_weights], scale_by_learning_rate(learning_rate))``.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.sign_sgd(0.1)
      >>> u, _ = tx.update(jnp.array([3.0, -1e-4]), tx.init(jnp.zeros(2)))
      >>> [round(float(x), 4) for x in u]
      [-0.1, 0.1]

    References:
      Bernstein et al., signSGD: Compressed Optimisation for Non-Convex Problems, ICML 2018.
    """
    return chain(
        scale_by_sign(),
        *optional_weight_decay("sign_sgd", weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


def rprop(
    learning_rate: float,
    eta_minus: ScalarOrSchedule = 0.5,
    eta_plus: ScalarOrSchedule = 1.2,
    min_step_size: ScalarOrSchedule = 1e-6,
    max_step_size: ScalarOrSchedule = 50.0,
    *,
    weight_decay: ScalarOrSchedule | None = None,
    mask: MaskOrFn | None = None,
) -> GradientTransformationExtraArgs:
    r"""Rprop (iRprop-): per-coordinate step sizes adapted to the gradient's sign.

    ``chain(scale_by_rprop(learning_rate, ...), [add_decayed_weights], scale(-1.0))``,
    Optax's. ``learning_rate`` is only the initial step size (see
    :func:`scale_by_rprop`); a decay, when given, is not multiplied by it.
    Rprop is meant for full-batch gradients: noisy ones flip signs at random.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.rprop(0.1)
      >>> u, _ = tx.update(jnp.array([3.0, -1e-4]), tx.init(jnp.zeros(2)))
      >>> [round(float(x), 4) for x in u]
      [-0.1, 0.1]

    References:
      Riedmiller and Braun, A Direct Adaptive Method for Faster Backpropagation
      Learning: The RPROP Algorithm, ICNN 1993.
    """
    return chain(
        scale_by_rprop(learning_rate, eta_minus, eta_plus, min_step_size, max_step_size),
        *optional_weight_decay("rprop", weight_decay, mask),
        scale(-1.0),
    )
