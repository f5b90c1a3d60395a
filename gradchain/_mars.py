r"""MARS (Yuan et al., 2024): Adam on variance-reduced, clipped gradients.

MARS-AdamW, the paper's Algorithm 1 with the AdamW preconditioner:

.. math::
  c_t = g_t + \gamma \frac{\beta_1}{1-\beta_1} (g_t - g'_{t-1}), \quad
  \tilde c_t = c_t / \max(1, \lVert c_t \rVert_2), \\
  m_t = \beta_1 m_{t-1} + (1-\beta_1) \tilde c_t, \quad
  v_t = \beta_2 v_{t-1} + (1-\beta_2) \tilde c_t^2, \quad
  u_t = \frac{m_t / (1-\beta_1^t)}{\sqrt{v_t / (1-\beta_2^t)} + \epsilon}.

Exact MARS takes :math:`g'_{t-1} = \nabla f(x_{t-1}, \xi_t)`, the current
batch's gradient at the previous parameters: a second gradient evaluation per
step, which the caller supplies as the ``grad_at_previous_params=`` extra
argument. MARS-approx (the default, and the authors' practical choice) takes
the previous step's gradient :math:`\nabla f(x_{t-1}, \xi_{t-1})`, kept in the
state. As in the authors' code, the previous gradient starts at zero (so
:math:`c_1 = (1 + \gamma\beta_1/(1-\beta_1)) g_1`), and the norm of
:math:`c_t` is clipped per parameter tensor.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradchain import _check, _tree
from gradchain._base import (
    GradientTransformationExtraArgs,
    Params,
    ScalarOrSchedule,
    Updates,
)
from gradchain._combine import chain
from gradchain._flat_params import refuse_flat_params
from gradchain._hyperparams import Hyperparams, HyperparamSpec, values
from gradchain._keypaths import Leaf, leaves_with_keys
from gradchain._moments import scale_by_adam
from gradchain._partition import grouped, register_groups
from gradchain._regularizing import add_decayed_weights
from gradchain._scaling import scale_by_learning_rate
from gradchain._wrappers import MaskOrFn


class ScaleByMarsState(NamedTuple):
    """State of :func:`scale_by_mars`."""

    step: jax.Array  # int32[], updates seen so far
    mu: Updates  # EMA of the clipped corrected gradients, in mu_dtype
    nu: Updates  # EMA of their squares
    last_grad: Updates  # the gradient of the previous step (zeros before the first)
    hparams: Hyperparams  # b1, b2 (with complements), eps, gamma


def scale_by_mars(
    b1: ScalarOrSchedule = 0.95,
    b2: ScalarOrSchedule = 0.99,
    eps: ScalarOrSchedule = 1e-8,
    gamma: ScalarOrSchedule = 0.025,
    mu_dtype: Any | None = None,
    *,
    approx: bool = True,
) -> GradientTransformationExtraArgs:
    r"""MARS-AdamW's scaling: Adam on the clipped variance-reduced gradient (see the module).

    Args:
      b1: decay of the first moment, in [0, 1); also sets the correction's
        weight :math:`\gamma \beta_1 / (1-\beta_1)`.
      b2: decay of the second moment, in [0, 1).
      eps: added to the root of the second moment, >= 0.
      gamma: the variance-reduction scale :math:`\gamma`, >= 0 (0 gives Adam
        on per-tensor clipped gradients).
      mu_dtype: dtype of the first moment; the parameters' by default.
      approx: MARS-approx (the previous step's gradient, from the state). With
        False, exact MARS: ``update`` needs ``grad_at_previous_params=``, the
        current batch's gradient at the previous step's parameters (a tree like
        the gradients; at the first step, the gradient itself).

    Returns:
      A GradientTransformationExtraArgs whose state is a ScaleByMarsState.

    Raises:
      ValueError: for a number out of range or a dtype that is not a float; at
        trace time, for exact MARS without ``grad_at_previous_params``, or one
        that does not match the gradients (naming the key path).

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.scale_by_mars()
      >>> u, _ = tx.update(jnp.array([0.3, -0.4]), tx.init(jnp.zeros(2)))
      >>> [round(float(x), 4) for x in u]  # the first step of an Adam: sign(c)
      [1.0, -1.0]

    References:
      Yuan, Liu, Gu, Zhang and Gu, MARS: Unleashing the Power of Variance
      Reduction for Training Large Models, 2024 (arXiv:2411.10438), Algorithm 1.
    """
    fn = "scale_by_mars"
    _check.decay_rate(fn, "b1", b1, schedule_ok=True)
    _check.decay_rate(fn, "b2", b2, schedule_ok=True)
    _check.non_negative(fn, "eps", eps, schedule_ok=True)
    _check.non_negative(fn, "gamma", gamma, schedule_ok=True)
    mu_dt = _check.dtype_or_none(fn, "mu_dtype", mu_dtype)
    spec = HyperparamSpec(fn, dict(b1=b1, b2=b2, eps=eps, gamma=gamma), rates=("b1", "b2"))

    def init_fn(params: Params) -> ScaleByMarsState:
        refuse_flat_params(
            "scale_by_mars",
            "each leaf's norm and rank (the correction is clipped per leaf)",
            params,
        )
        return ScaleByMarsState(
            step=jnp.zeros([], jnp.int32),
            mu=_tree.accumulator_like(params, mu_dt),
            nu=_tree.zeros_like(params),
            last_grad=_tree.accumulator_like(params),
            hparams=spec.init(),
        )

    def previous(updates: Updates, state: ScaleByMarsState, extra_args: dict[str, Any]) -> Any:
        if approx:
            return state.last_grad
        prev = extra_args.get("grad_at_previous_params")
        if prev is None:
            raise ValueError(
                f"{fn}: exact MARS (approx=False) needs `grad_at_previous_params=`, the current "
                f"batch's gradient at the previous step's parameters; call "
                f"`update(grads, state, params, grad_at_previous_params=prev_grads)`, or use "
                f"approx=True (the previous step's gradient, kept in the state)."
            )
        _tree.check_matches(fn, updates, "grad_at_previous_params", prev)
        return prev

    def update_fn(
        updates: Updates, state: ScaleByMarsState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, ScaleByMarsState]:
        del params
        _tree.check_state(fn, state, ScaleByMarsState)
        for name in ("mu", "nu", "last_grad"):
            _tree.check_matches(fn, updates, f"state.{name}", getattr(state, name))
        prev_tree = previous(updates, state, extra_args)
        hp = values(state.hparams)
        comp = state.hparams.complement
        step = _tree.safe_increment(state.step)
        c1 = _tree.debias(hp["b1"], step)
        c2 = _tree.debias(hp["b2"], step)
        scalars = (hp["b1"], hp["b2"], comp["b1"], comp["b2"], hp["eps"], hp["gamma"], c1, c2)

        def leaf(
            g: jax.Array, prev: jax.Array, m: jax.Array, v: jax.Array, last: jax.Array
        ) -> tuple[jax.Array, ...]:
            gc, pc, mc, vc, b1_, b2_, omb1, omb2, eps_, gamma_, c1_, c2_ = _tree.upcast(
                g, prev, m, v, *scalars
            )
            c = gc + gamma_ * (b1_ / omb1) * (gc - pc)
            norm = jnp.sqrt(jnp.sum(_tree.abs_sq(c)).real)
            c = c / jnp.maximum(norm, 1).astype(c.dtype)  # clipped to norm 1, per tensor
            new_m = omb1 * c + b1_ * mc
            new_v = omb2 * _tree.abs_sq(c) + b2_ * vc
            out = (new_m / c1_) / (jnp.sqrt(new_v / c2_) + eps_)
            new_last = g.astype(last.dtype)
            return out.astype(g.dtype), new_m.astype(m.dtype), new_v.astype(v.dtype), new_last

        updates, mu, nu, last = _tree.map_leaves(
            leaf, 4, updates, prev_tree, state.mu, state.nu, state.last_grad
        )
        new_state = ScaleByMarsState(step, mu, nu, last, spec.advance(state.hparams, step))
        return updates, new_state

    return GradientTransformationExtraArgs(init_fn, update_fn)


def mars(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.95,
    b2: ScalarOrSchedule = 0.99,
    eps: ScalarOrSchedule = 1e-8,
    gamma: ScalarOrSchedule = 0.025,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: MaskOrFn | None = None,
    mu_dtype: Any | None = None,
    *,
    approx: bool = True,
    optimize_1d: bool = False,
    adam_learning_rate: ScalarOrSchedule | None = None,
    adam_b1: ScalarOrSchedule = 0.9,
    adam_b2: ScalarOrSchedule = 0.95,
    adam_weight_decay: ScalarOrSchedule = 0.1,
) -> GradientTransformationExtraArgs:
    r"""MARS-AdamW for the matrices, AdamW for vectors and scalars (the authors' split).

    The two groups, as visible chains:

    - ``"mars"`` (parameters of 2 or more dimensions, or every parameter with
      ``optimize_1d=True``): ``chain(scale_by_mars(b1, b2, eps, gamma, mu_dtype,
      approx=approx), add_decayed_weights(weight_decay, mask),
      scale_by_learning_rate(learning_rate))``;
    - ``"adam"`` (the others: biases, norm scales, scalars):
      ``chain(scale_by_adam(adam_b1, adam_b2, eps), add_decayed_weights(adam_weight_decay,
      mask), scale_by_learning_rate(adam_learning_rate or learning_rate))``.

    Defaults are the authors' (their ``betas``, ``gamma``, ``betas_1d`` and
    ``weight_decay_1d``); their ``lr_1d`` is ``adam_learning_rate``. See the
    routing with ``gc.explain(tx, params)``; read the hyperparameters as
    ``"mars/gamma"``, ``"adam/b2"``... For exact MARS (``approx=False``) pass
    ``grad_at_previous_params=`` to ``update``; the AdamW group ignores it.

    Args:
      learning_rate: >= 0, or a schedule.
      b1: MARS's first-moment decay, in [0, 1).
      b2: MARS's second-moment decay, in [0, 1).
      eps: both groups' eps, >= 0.
      gamma: the variance-reduction scale, >= 0.
      weight_decay: decoupled weight decay of the MARS group, >= 0.
      mask: where to decay (both groups): bools like the params, or a function of them.
      mu_dtype: dtype of MARS's first moment.
      approx: MARS-approx (True) or exact MARS; see :func:`scale_by_mars`.
      optimize_1d: send every parameter to MARS, vectors and scalars included.
      adam_learning_rate: the AdamW group's rate; ``learning_rate`` if None.
      adam_b1: the AdamW group's first-moment decay, in [0, 1).
      adam_b2: the AdamW group's second-moment decay, in [0, 1).
      adam_weight_decay: the AdamW group's decoupled weight decay, >= 0.

    Returns:
      A GradientTransformationExtraArgs whose state is a PartitionState with
      the groups ``"adam"`` and ``"mars"``.

    Raises:
      ValueError: for a number out of range.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
      >>> tx = gc.mars(3e-3)
      >>> gc.explain(tx, params).assignment
      {'b': 'adam', 'w': 'mars'}
      >>> round(float(gc.get_hyperparams(tx.init(params))["mars/gamma"]), 3)
      0.025

    References:
      Yuan, Liu, Gu, Zhang and Gu, MARS: Unleashing the Power of Variance
      Reduction for Training Large Models, 2024 (arXiv:2411.10438).
    """
    fn = "mars"
    for name, value in dict(b1=b1, b2=b2, adam_b1=adam_b1, adam_b2=adam_b2).items():
        _check.decay_rate(fn, name, value, schedule_ok=True)
    for name, value in dict(
        learning_rate=learning_rate,
        eps=eps,
        gamma=gamma,
        weight_decay=weight_decay,
        adam_weight_decay=adam_weight_decay,
    ).items():
        _check.non_negative(fn, name, value, schedule_ok=True)
    if adam_learning_rate is not None:
        _check.non_negative(fn, "adam_learning_rate", adam_learning_rate, schedule_ok=True)
    transforms = {
        "adam": chain(
            scale_by_adam(adam_b1, adam_b2, eps),
            add_decayed_weights(adam_weight_decay, mask),
            scale_by_learning_rate(
                learning_rate if adam_learning_rate is None else adam_learning_rate
            ),
        ),
        "mars": chain(
            scale_by_mars(b1, b2, eps, gamma, mu_dtype, approx=approx),
            add_decayed_weights(weight_decay, mask),
            scale_by_learning_rate(learning_rate),
        ),
    }

    def labels(tree: Any) -> list[Leaf]:
        return [
            Leaf(keys, x, "mars" if optimize_1d or len(jnp.shape(x)) >= 2 else "adam")
            for keys, x in leaves_with_keys(tree)
        ]

    tx = grouped(fn, transforms, labels, mask_compatible_extra_args=True)
    matrices = "every parameter" if optimize_1d else "parameters of 2 or more dimensions"
    register_groups(tx, labels, transforms, {"mars": matrices, "adam": "everything else"})
    return tx
