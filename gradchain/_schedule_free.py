r"""Schedule-free learning: interpolate and average instead of scheduling the learning rate.

Defazio et al. (2024) keep three sequences. The base optimizer steps :math:`z`;
:math:`x` is a weighted average of the :math:`z` iterates; gradients are taken at
their interpolation :math:`y`:

.. math::

  y_t = (1-\beta) z_t + \beta x_t, \qquad
  z_{t+1} = z_t + \Delta_t(\nabla f(y_t)), \qquad
  x_{t+1} = (1 - c_{t+1}) x_t + c_{t+1} z_{t+1},

with :math:`\Delta_t` the base optimizer's update (:math:`-\gamma_t g` for SGD) and
:math:`c_{t+1} = w_t / \sum_{i \le t} w_i`, :math:`w_t = (\max_{i \le t} \gamma_i)^r`.
The parameters a user holds are :math:`y`; the state holds :math:`z`, and
:math:`x = (y - (1-\beta) z) / \beta` is recovered for evaluation by
:func:`schedule_free_eval_params` or :func:`eval_params`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradchain import _check, _tree
from gradchain._averaging import eval_params
from gradchain._base import (
    AnyTransformation,
    GradientTransformationExtraArgs,
    OptState,
    Params,
    ScalarOrSchedule,
    Schedule,
    Updates,
    call_update,
    check_transformation,
)
from gradchain._combine import chain
from gradchain._hyperparams import Hyperparams, HyperparamSpec, values
from gradchain._moments import scale_by_rms
from gradchain._optimizers import sgd
from gradchain._regularizing import add_decayed_weights
from gradchain._scaling import scale_by_learning_rate
from gradchain._wrappers import MaskedNode


def _is_masked(x: Any) -> bool:
    return isinstance(x, MaskedNode)


class ScheduleFreeState(NamedTuple):
    r"""State of :func:`schedule_free`.

    Attributes:
      step: int32[], updates seen so far (Optax's ``step_count`` is this plus 1).
      weight_sum: float32[], :math:`\sum_i w_i`, the total averaging weight.
      max_lr: float32[], the largest learning rate seen so far.
      base_optimizer_state: the base optimizer's state.
      z: the base optimizer's iterates, shaped like the parameters, in
        ``state_dtype`` or the parameters' dtypes.
      hparams: ``learning_rate``, ``b1`` and ``weight_lr_power``.
    """

    step: jax.Array
    weight_sum: jax.Array
    max_lr: jax.Array
    base_optimizer_state: OptState
    z: Params
    hparams: Hyperparams

    def eval_params(self, params: Params) -> Params:
        r"""The average :math:`x = (y - (1-\beta) z) / \beta`, given ``params`` :math:`= y`."""
        b1 = values(self.hparams)["b1"]
        fresh = self.step == 0  # before any update x = y (z may be a ShapeDtypeStruct's zeros)

        def leaf(z: Any, y: Any) -> Any:
            if _is_masked(z):
                return z
            y = jnp.asarray(y)
            if jnp.shape(z) != jnp.shape(y):
                raise ValueError(
                    f"eval_params: schedule_free's `state.z` has shape {jnp.shape(z)} where "
                    f"`params` has {jnp.shape(y)}; pass the parameters this state was trained on."
                )
            yc, zc, b = _tree.upcast(y, z, b1)
            x = (yc - (1 - b) * zc) / b
            return jnp.where(fresh, yc, x).astype(y.dtype)

        plain = jax.tree.structure(self.z, is_leaf=_is_masked)
        if plain != jax.tree.structure(params):
            _tree.check_same_structure("eval_params", "state.z", self.z, "params", params)
        return jax.tree.map(leaf, self.z, params, is_leaf=_is_masked)


def schedule_free(
    base_optimizer: AnyTransformation,
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    weight_lr_power: float = 2.0,
    state_dtype: Any | None = None,
) -> GradientTransformationExtraArgs:
    r"""Makes any optimizer schedule-free: interpolation and iterate averaging, no decay.

    The parameters passed to ``update`` (and returned by applying its updates)
    are the gradient points :math:`y`; evaluate with :math:`x`, from
    ``gc.eval_params(state, params)`` or :func:`schedule_free_eval_params`
    (see the module docstring for the recurrence). Turn the base optimizer's
    own momentum off (``adam(..., b1=0)``, or :func:`scale_by_rms` as in
    :func:`schedule_free_adamw`): the interpolation replaces it.

    ``learning_rate`` sets only the averaging weights
    :math:`w_t = (\max_{i \le t}\gamma_i)^r`; give the base optimizer the same
    value or schedule. Both are evaluated at the same 0-based step.

    Differences from Optax 0.2.8 (same numbers for a constant learning rate):
    Optax evaluates ``learning_rate`` one step ahead of the base optimizer
    (at its 1-based ``step_count``, where the base optimizer counts from 0), so
    with a warmup the weight :math:`w_t` of Optax's :math:`z_{t+1}` comes from
    the next step's rate, not from the rate that produced it; here both use
    :math:`\gamma_t`, as the paper. ``b1`` must lie in (0, 1] (Optax requires
    it positive without checking; :math:`\beta = 1` is primal averaging).
    ``init`` accepts ``jax.ShapeDtypeStruct`` parameters: :math:`z` then
    starts at zeros and the first update sets it to the parameters, so the
    state is exact either way.

    Args:
      base_optimizer: the optimizer stepping :math:`z`, without momentum.
      learning_rate: :math:`\gamma_t` >= 0, a number or a schedule.
      b1: :math:`\beta` in (0, 1], the interpolation between :math:`z` and :math:`x`.
      weight_lr_power: :math:`r` >= 0; 2 weights late, larger-rate iterates up.
      state_dtype: dtype of :math:`z`; the parameters' by default.

    Returns:
      A GradientTransformationExtraArgs whose state is a ScheduleFreeState.

    Raises:
      TypeError: if ``base_optimizer`` is not a transformation.
      ValueError: if a number is out of range (naming it).

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> f = lambda p: jnp.sum((p - 3.0) ** 2)
      >>> tx = gc.schedule_free(gc.sgd(0.1), learning_rate=0.1, b1=0.9)
      >>> params = jnp.zeros(2)
      >>> state = tx.init(params)
      >>> for _ in range(100):
      ...     updates, state = tx.update(jax.grad(f)(params), state, params)
      ...     params = gc.apply_updates(params, updates)
      >>> [round(float(x), 2) for x in gc.eval_params(state, params)]  # x averages z
      [2.94, 2.94]

    References:
      Defazio, Yang, Mehta, Mishchenko, Khaled and Cutkosky, `The Road Less
      Scheduled <https://arxiv.org/abs/2405.15682>`_, NeurIPS 2024
      (Theorem 1 and Algorithm 1).
    """
    fn = "schedule_free"
    check_transformation(fn, "`base_optimizer`", base_optimizer)
    _check.non_negative(fn, "learning_rate", learning_rate, schedule_ok=True)
    _check.in_range(fn, "b1", b1, 0.0, 1.0, lo_open=True)
    _check.non_negative(fn, "weight_lr_power", weight_lr_power)
    z_dtype = _check.dtype_or_none(fn, "state_dtype", state_dtype)
    spec = HyperparamSpec(
        fn, dict(learning_rate=learning_rate, b1=b1, weight_lr_power=weight_lr_power)
    )

    def init_fn(params: Params) -> ScheduleFreeState:
        def copy(p: Any) -> jax.Array:
            dtype = z_dtype if z_dtype is not None else p.dtype
            if isinstance(p, jax.ShapeDtypeStruct):
                return jnp.zeros(p.shape, dtype)  # set to the parameters by the first update
            return jnp.array(p, dtype)

        f32 = jnp.result_type(float)
        return ScheduleFreeState(
            step=jnp.zeros([], jnp.int32),
            weight_sum=jnp.zeros([], f32),
            max_lr=jnp.zeros([], f32),
            base_optimizer_state=base_optimizer.init(params),
            z=jax.tree.map(copy, params),
            hparams=spec.init(),
        )

    def update_fn(
        updates: Updates,
        state: ScheduleFreeState,
        params: Params | None = None,
        **extra_args: Any,
    ) -> tuple[Updates, ScheduleFreeState]:
        _tree.check_state(fn, state, ScheduleFreeState)
        _tree.check_matches(fn, updates, "state.z", state.z)
        _tree.require_params(fn, params)
        _tree.check_matches(fn, updates, "params", params)
        v = values(state.hparams)
        fresh = state.step == 0
        base_u, base_state = call_update(
            base_optimizer, updates, state.base_optimizer_state, params, extra_args
        )
        _tree.check_matches(fn, updates, "the base optimizer's updates", base_u)
        max_lr = jnp.maximum(state.max_lr, v["learning_rate"].astype(state.max_lr.dtype))
        weight = max_lr ** v["weight_lr_power"].astype(max_lr.dtype)
        weight_sum = state.weight_sum + weight
        safe_sum = jnp.where(weight_sum == 0, jnp.ones_like(weight_sum), weight_sum)
        ckp1 = jnp.where(weight_sum == 0, jnp.zeros_like(weight), weight / safe_sum)

        def leaf(
            g: jax.Array, y: jax.Array, z: jax.Array, u: jax.Array
        ) -> tuple[jax.Array, jax.Array]:
            yc, zc, uc, b, c = _tree.upcast(y, z, u, v["b1"], ckp1)
            zc = jnp.where(fresh, yc, zc)
            new_z = zc + uc
            x = (yc - (1 - b) * zc) / b
            new_x = (1 - c) * x + c * new_z
            new_y = (1 - b) * new_z + b * new_x
            return (new_y - yc).astype(g.dtype), new_z.astype(z.dtype)

        out, z = _tree.map_leaves(leaf, 2, updates, params, state.z, base_u)
        step = _tree.safe_increment(state.step)
        new_state = ScheduleFreeState(
            step, weight_sum, max_lr, base_state, z, spec.advance(state.hparams, step)
        )
        return out, new_state

    return GradientTransformationExtraArgs(init_fn, update_fn)


def schedule_free_eval_params(state: OptState, params: Params) -> Params:
    """The parameters to evaluate a schedule-free run with: :math:`x`, from :math:`y` and the state.

    Optax's signature; the same as :func:`eval_params` where ``state`` holds a
    :class:`ScheduleFreeState` (at any depth: inside a chain, a named chain,
    ``inject_hyperparams``, a mask or a partition).

    Args:
      state: the optimizer state.
      params: the parameters being trained (:math:`y`).

    Returns:
      :math:`x`, in the dtypes of ``params``.

    Raises:
      ValueError: if ``state`` holds no ScheduleFreeState, or does not fit ``params``.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.schedule_free_sgd(learning_rate=0.5, b1=0.5)
      >>> params = jnp.array([2.0])
      >>> state = tx.init(params)
      >>> for _ in range(2):
      ...     updates, state = tx.update(params, state, params)  # f = p**2 / 2
      ...     params = gc.apply_updates(params, updates)
      >>> float(params[0]), float(gc.schedule_free_eval_params(state, params)[0])
      (0.625, 0.75)
    """
    found = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, ScheduleFreeState))
    if not any(isinstance(x, ScheduleFreeState) for x in found):
        raise ValueError(
            f"schedule_free_eval_params: the state (a {type(state).__name__}) holds no "
            f"ScheduleFreeState; pass the state of an optimizer built with schedule_free, "
            f"schedule_free_sgd or schedule_free_adamw (or use gc.eval_params for any optimizer)."
        )
    return eval_params(state, params)


def _warmup(fn: str, learning_rate: float, warmup_steps: int | None) -> ScalarOrSchedule:
    """``learning_rate * min(1, (step + 1) / warmup_steps)``: never 0, as the authors' code."""
    if warmup_steps is None:
        return learning_rate
    _check.positive_int(fn, "warmup_steps", warmup_steps)

    def schedule(step: jax.Array) -> jax.Array:
        frac = jnp.minimum((jnp.asarray(step, jnp.float32) + 1) / warmup_steps, 1.0)
        return jnp.asarray(learning_rate, jnp.float32) * frac

    out: Schedule = schedule
    return out


def schedule_free_sgd(
    learning_rate: float = 1.0,
    warmup_steps: int | None = None,
    b1: float = 0.9,
    weight_decay: float | None = None,
    weight_lr_power: float = 2.0,
    state_dtype: Any | None = None,
) -> GradientTransformationExtraArgs:
    r"""Schedule-free SGD: :func:`schedule_free` around ``sgd``, with an optional warmup.

    The chain is ``schedule_free(chain(add_decayed_weights(weight_decay), sgd(lr_t)), lr_t)``
    (no decay member when ``weight_decay`` is None), where the decay is taken
    at :math:`y` and scaled by the learning rate, as Optax and the authors'
    PyTorch code do.

    Warmup, unlike Optax 0.2.8: :math:`\gamma_t = \gamma \min(1, (t+1)/T)` for the
    0-based step :math:`t`, for both :math:`z` and the weights, as the authors'
    code. Optax's base SGD starts its warmup at 0 (its first step does not move)
    while its weights use the next step's rate. Without warmup the numbers are
    Optax's.

    Args:
      learning_rate: :math:`\gamma` >= 0.
      warmup_steps: :math:`T`, an int >= 1, or None for no warmup.
      b1: :math:`\beta` in (0, 1].
      weight_decay: >= 0, or None for none.
      weight_lr_power: :math:`r` >= 0.
      state_dtype: dtype of :math:`z`.

    Returns:
      A GradientTransformationExtraArgs whose state is a ScheduleFreeState.

    Raises:
      ValueError: if a number is out of range (naming it).

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> f = lambda p: jnp.sum(p**2)
      >>> tx = gc.schedule_free_sgd(0.1, warmup_steps=5)
      >>> params = jnp.array([1.0, 2.0, 3.0])
      >>> state = tx.init(params)
      >>> for _ in range(50):
      ...     updates, state = tx.update(jax.grad(f)(params), state, params)
      ...     params = gc.apply_updates(params, updates)
      >>> round(float(f(gc.schedule_free_eval_params(state, params))), 1)
      0.0
    """
    fn = "schedule_free_sgd"
    _check.non_negative(fn, "learning_rate", learning_rate)
    _check.in_range(fn, "b1", b1, 0.0, 1.0, lo_open=True)
    if weight_decay is not None:
        _check.non_negative(fn, "weight_decay", weight_decay)
    _check.non_negative(fn, "weight_lr_power", weight_lr_power)
    lr = _warmup(fn, learning_rate, warmup_steps)
    base = sgd(lr) if weight_decay is None else chain(add_decayed_weights(weight_decay), sgd(lr))
    return schedule_free(base, lr, b1=b1, weight_lr_power=weight_lr_power, state_dtype=state_dtype)


def schedule_free_adamw(
    learning_rate: float = 0.0025,
    warmup_steps: int | None = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    weight_lr_power: float = 2.0,
    state_dtype: Any | None = None,
) -> GradientTransformationExtraArgs:
    r"""Schedule-free AdamW: :func:`schedule_free` around Adam without momentum.

    The base optimizer is ``chain(scale_by_rms(b2, eps, eps_in_sqrt=False,
    bias_correction=True), add_decayed_weights(weight_decay), scale_by_learning_rate(lr_t))``:
    Adam with :math:`\beta_1 = 0` without storing its zero first moment, as
    Optax; the decay is taken at :math:`y`. Warmup as :func:`schedule_free_sgd`
    (differs from Optax 0.2.8 only when ``warmup_steps`` is given).

    Args:
      learning_rate: :math:`\gamma` >= 0.
      warmup_steps: an int >= 1, or None for no warmup.
      b1: :math:`\beta` in (0, 1], the interpolation (not a momentum).
      b2: decay of the squared-gradient EMA, in [0, 1).
      eps: >= 0, added to the root of the debiased EMA.
      weight_decay: >= 0.
      weight_lr_power: :math:`r` >= 0.
      state_dtype: dtype of :math:`z`.

    Returns:
      A GradientTransformationExtraArgs whose state is a ScheduleFreeState.

    Raises:
      ValueError: if a number is out of range (naming it).

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> f = lambda p: jnp.sum(p**2)
      >>> tx = gc.schedule_free_adamw(0.1, warmup_steps=10)
      >>> params = jnp.array([1.0, 2.0, 3.0])
      >>> state = tx.init(params)
      >>> for _ in range(300):
      ...     updates, state = tx.update(jax.grad(f)(params), state, params)
      ...     params = gc.apply_updates(params, updates)
      >>> round(float(f(gc.schedule_free_eval_params(state, params))), 1)
      0.0
    """
    fn = "schedule_free_adamw"
    _check.non_negative(fn, "learning_rate", learning_rate)
    _check.in_range(fn, "b1", b1, 0.0, 1.0, lo_open=True)
    _check.decay_rate(fn, "b2", b2)
    _check.non_negative(fn, "eps", eps)
    _check.non_negative(fn, "weight_decay", weight_decay)
    _check.non_negative(fn, "weight_lr_power", weight_lr_power)
    lr = _warmup(fn, learning_rate, warmup_steps)
    base = chain(
        scale_by_rms(decay=b2, eps=eps, eps_in_sqrt=False, bias_correction=True),
        add_decayed_weights(weight_decay),
        scale_by_learning_rate(lr),
    )
    return schedule_free(base, lr, b1=b1, weight_lr_power=weight_lr_power, state_dtype=state_dtype)
