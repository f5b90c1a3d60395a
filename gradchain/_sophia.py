r"""Sophia-H: Adam's first moment, divided by a clipped diagonal-Hessian estimate.

:func:`hutchinson_estimator_diag_hessian` estimates the diagonal of the Hessian
of an objective with Hutchinson's trick, :math:`\hat h = z \odot (H z)` for a
Rademacher vector :math:`z` (so :math:`\mathbb{E}\,\hat h = \operatorname{diag} H`),
from one Hessian-vector product. Its key lives in its state, so a run is
reproducible from the state alone and a restored checkpoint continues the
same random sequence.

:func:`sophia` keeps an EMA of the gradients and, every ``update_interval``
steps, an EMA of the Hessian estimates, and steps by their elementwise ratio
clipped to ``clip_threshold`` (Liu et al., 2023).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

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
from gradchain._hyperparams import Hyperparams, HyperparamSpec, values
from gradchain._regularizing import add_decayed_weights
from gradchain._scaling import scale_by_learning_rate
from gradchain._wrappers import MaskOrFn

# ---------------------------------------------------------------------------------------------
# Hutchinson's estimator


class HutchinsonState(NamedTuple):
    """State of :func:`hutchinson_estimator_diag_hessian`.

    Attributes:
      key: the key of the next estimate, as raw ``uint32`` key data (so the
        state serializes with flax and orbax); split once per estimate.
    """

    key: jax.Array


def _key_data(fn: str, random_seed: Any) -> tuple[jax.Array, Any]:
    """(raw key data, the typed key's implementation or None) of a seed, key or None."""
    if random_seed is None:
        return jax.random.PRNGKey(0), None
    if isinstance(random_seed, int) and not isinstance(random_seed, bool):
        return jax.random.PRNGKey(random_seed), None
    if isinstance(random_seed, jax.Array) and jnp.issubdtype(
        random_seed.dtype, jax.dtypes.prng_key
    ):
        if random_seed.shape != ():
            raise ValueError(
                f"{fn}: `random_seed` must be one key; got a key array of shape "
                f"{random_seed.shape}. Pass e.g. `jax.random.key(0)`."
            )
        return jax.random.key_data(random_seed), jax.random.key_impl(random_seed)
    if isinstance(random_seed, jax.Array) and random_seed.dtype == jnp.uint32:
        if random_seed.shape != (2,):
            raise ValueError(
                f"{fn}: `random_seed` as raw key data must have shape (2,); got "
                f"{random_seed.shape}. Pass `jax.random.key(seed)` or an int seed."
            )
        return random_seed, None
    raise TypeError(
        f"{fn}: `random_seed` must be None, an int seed or a JAX key (`jax.random.key(0)` "
        f"or `jax.random.PRNGKey(0)`); got {type(random_seed).__name__} {random_seed!r:.60}."
    )


def hutchinson_estimator_diag_hessian(
    random_seed: jax.Array | int | None = None,
) -> GradientTransformationExtraArgs:
    r"""Estimates the Hessian's diagonal by Hutchinson's trick, one product per call.

    ``update(updates, state, params, obj_fn=f)`` returns
    :math:`z \odot \nabla^2 f(\theta)\, z` for a fresh Rademacher vector
    :math:`z` (one entry of ±1 per parameter; each leaf draws from its own
    key), computed with one forward-over-reverse Hessian-vector product. It is
    an unbiased estimate of :math:`\operatorname{diag} \nabla^2 f(\theta)`,
    exact for a separable objective. ``updates`` only set the output's tree and
    dtypes; their values are not used.

    Keys: the state holds the key; each call splits it into the next key and
    one key per leaf (in ``jax.tree.leaves`` order), as Optax 0.2.8 does, so
    the same seed gives Optax's estimates.

    Args:
      random_seed: an int seed, a key (``jax.random.key(s)`` or
        ``jax.random.PRNGKey(s)``), or None for seed 0 (as Optax).

    Returns:
      A GradientTransformationExtraArgs whose state is a HutchinsonState; its
      ``update`` needs ``params`` and ``obj_fn``, a function of the parameters
      alone returning a real scalar.

    Raises:
      TypeError: if ``random_seed`` is not an int, a key or None.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.hutchinson_estimator_diag_hessian(random_seed=0)
      >>> params = jnp.array([1.0, 2.0])
      >>> obj_fn = lambda p: jnp.sum(jnp.array([3.0, 0.5]) * p**2)  # Hessian diag 6, 1
      >>> h, state = tx.update(params, tx.init(params), params, obj_fn=obj_fn)
      >>> [round(float(x), 3) for x in h]
      [6.0, 1.0]

    References:
      Hutchinson, A stochastic estimator of the trace of the influence matrix
      for Laplacian smoothing splines, 1989; Bekas, Kokiopoulou and Saad, An
      estimator for the diagonal of a matrix, 2007.
    """
    fn = "hutchinson_estimator_diag_hessian"
    key0, impl = _key_data(fn, random_seed)

    def init_fn(params: Params) -> HutchinsonState:
        del params
        # A copy (not asarray): under a mesh it is laid out on it, as `update` returns it.
        return HutchinsonState(key=jnp.array(key0))

    def update_fn(
        updates: Updates,
        state: HutchinsonState,
        params: Params | None = None,
        *,
        obj_fn: Callable[[Params], jax.Array] | None = None,
        **extra_args: Any,
    ) -> tuple[Updates, HutchinsonState]:
        del extra_args
        _tree.check_state(fn, state, HutchinsonState)
        _tree.require_params(fn, params)
        _tree.check_matches(fn, updates, "params", params)
        if not callable(obj_fn):
            raise TypeError(
                f"{fn}: update needs the objective: call `update(updates, state, params, "
                f"obj_fn=f)` with `f(params) -> scalar loss` (close over the batch, e.g. "
                f"`obj_fn=lambda p: loss(p, batch)`); got obj_fn={obj_fn!r:.60}."
            )
        key = state.key if impl is None else jax.random.wrap_key_data(state.key, impl=impl)
        next_key, sub = jax.random.split(key)
        leaves, treedef = jax.tree.flatten(params)
        keys = jax.random.split(sub, len(leaves))
        z = treedef.unflatten(
            [
                jax.random.rademacher(k, jnp.shape(p), p.dtype)
                for k, p in zip(keys, leaves, strict=True)
            ]
        )
        _, hz = jax.jvp(jax.grad(obj_fn), (params,), (z,))
        estimate = jax.tree.map(lambda u, zi, hzi: (zi * hzi).astype(u.dtype), updates, z, hz)
        if impl is not None:
            next_key = jax.random.key_data(next_key)
        return estimate, HutchinsonState(key=next_key)

    return GradientTransformationExtraArgs(init_fn, update_fn)


# ---------------------------------------------------------------------------------------------
# Sophia


class SophiaState(NamedTuple):
    """State of the scaling in :func:`sophia` (the first member of its chain).

    Attributes:
      step: int32[], updates seen so far (Optax calls it ``count``).
      mu: EMA of the gradients, in ``mu_dtype`` or the parameters' dtypes.
      nu: EMA of the Hessian-diagonal estimates, in the parameters' dtypes.
      hessian_fn_state: the state of ``hessian_diagonal_fn``.
      hparams: ``b1``, ``b2``, ``eps``, ``gamma`` and ``clip_threshold``.
    """

    step: jax.Array
    mu: Updates
    nu: Updates
    hessian_fn_state: OptState
    hparams: Hyperparams


def _scale_by_sophia(
    b1: float,
    b2: float,
    eps: float,
    gamma: float,
    clip_threshold: float | None,
    update_interval: int,
    hessian_diagonal_fn: AnyTransformation,
    mu_dtype: Any,
    verbose: bool,
    print_win_rate_every_n_steps: int,
) -> GradientTransformationExtraArgs:
    """Sophia's preconditioned, clipped direction (before weight decay and learning rate)."""
    fn = "sophia"
    hp: dict[str, ScalarOrSchedule] = dict(b1=b1, b2=b2, eps=eps, gamma=gamma)
    if clip_threshold is not None:
        hp["clip_threshold"] = clip_threshold
    spec = HyperparamSpec(fn, hp, rates=("b1", "b2"))

    def init_fn(params: Params) -> SophiaState:
        return SophiaState(
            step=jnp.zeros([], jnp.int32),
            mu=_tree.accumulator_like(params, mu_dtype),
            nu=_tree.zeros_like(params),
            hessian_fn_state=hessian_diagonal_fn.init(params),
            hparams=spec.init(),
        )

    def update_fn(
        updates: Updates, state: SophiaState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, SophiaState]:
        _tree.check_state(fn, state, SophiaState)
        _tree.check_matches(fn, updates, "state.mu", state.mu)
        _tree.check_matches(fn, updates, "state.nu", state.nu)
        _tree.require_params(fn, params)
        _tree.check_matches(fn, updates, "params", params)
        v = values(state.hparams)
        c1, c2 = state.hparams.complement["b1"], state.hparams.complement["b2"]
        step = _tree.safe_increment(state.step)
        debias = _tree.debias(v["b1"], step)

        def leaf(g: jax.Array, m: jax.Array, h: jax.Array) -> tuple[jax.Array, jax.Array]:
            gc_, mc, hc, b1_, c1_, d, gamma_, eps_ = _tree.upcast(
                g, m, h, v["b1"], c1, debias, v["gamma"], v["eps"]
            )
            new_m = c1_ * gc_ + b1_ * mc
            ratio = (new_m / d) / jnp.maximum(gamma_ * hc, eps_)
            if clip_threshold is not None:
                t = v["clip_threshold"].astype(ratio.dtype)
                ratio = jnp.clip(ratio, -t, t)
            return ratio.astype(g.dtype), new_m.astype(m.dtype)

        direction, mu = _tree.map_leaves(leaf, 2, updates, state.mu, state.nu)
        if verbose and print_win_rate_every_n_steps > 0 and clip_threshold is not None:
            _print_win_rate(
                direction, v["clip_threshold"], state.step, print_win_rate_every_n_steps
            )

        def estimate(operand: tuple[Updates, OptState]) -> tuple[Updates, OptState]:
            nu, hstate = operand
            h, hstate = call_update(hessian_diagonal_fn, updates, hstate, params, extra_args)
            _tree.check_matches(fn, updates, "hessian_diagonal_fn's estimate", h)

            def ema(e: jax.Array, n: jax.Array) -> jax.Array:
                ec, nc, b2_, c2_ = _tree.upcast(e, n, v["b2"], c2)
                return (c2_ * ec + b2_ * nc).astype(n.dtype)

            return jax.tree.map(ema, h, nu), hstate

        due = state.step % update_interval == 0
        nu, hstate = jax.lax.cond(
            due, estimate, lambda operand: operand, (state.nu, state.hessian_fn_state)
        )
        new_state = SophiaState(step, mu, nu, hstate, spec.advance(state.hparams, step))
        return direction, new_state

    return GradientTransformationExtraArgs(init_fn, update_fn)


def _print_win_rate(direction: Updates, threshold: jax.Array, step: jax.Array, every: int) -> None:
    """Prints the fraction of coordinates whose ratio was not clipped (the authors' diagnostic)."""
    leaves = jax.tree.leaves(direction)
    total = sum(x.size for x in leaves)
    if total == 0:
        return
    inside = sum(jnp.sum(jnp.abs(x.astype(jnp.float32)) < threshold) for x in leaves)
    rate = jnp.asarray(inside, jnp.float32) / total
    jax.lax.cond(
        step % every == 0,
        lambda: jax.debug.print("sophia win rate at step {s}: {r}", s=step, r=rate),
        lambda: None,
    )


def sophia(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.965,
    b2: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 1e-4,
    weight_decay_mask: MaskOrFn | None = None,
    gamma: float = 0.01,
    clip_threshold: float | None = 1.0,
    update_interval: int = 10,
    hessian_diagonal_fn: AnyTransformation | None = None,
    mu_dtype: Any | None = None,
    verbose: bool = False,
    print_win_rate_every_n_steps: int = 0,
) -> GradientTransformationExtraArgs:
    r"""Sophia (Sophia-H): a clipped step by gradient EMA over Hessian-diagonal EMA.

    With :math:`t` the 1-based step and :math:`\hat h_t` the estimate of
    ``hessian_diagonal_fn`` (Hutchinson's by default),

    .. math::

      m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
      u_t = \operatorname{clip}\Big(\frac{m_t / (1-\beta_1^t)}
            {\max(\gamma\, h_{t-1}, \epsilon)}, \pm\rho\Big), \qquad
      \theta_{t+1} = \theta_t - \eta_t (u_t + \lambda \theta_t),

    and, on steps with :math:`(t-1) \bmod k = 0`,
    :math:`h_t = \beta_2 h_{t-1} + (1-\beta_2)\hat h_t` (else
    :math:`h_t = h_{t-1}`). Coordinates of negative or tiny curvature take the
    clipped step :math:`\pm\rho\,\eta`. The chain is
    ``chain(<Sophia scaling>, add_decayed_weights(weight_decay, weight_decay_mask),
    scale_by_learning_rate(learning_rate))``, Optax's.

    Call ``update(grads, state, params, obj_fn=f)``, ``f(params) -> loss`` for
    the current batch; other keyword arguments go on to ``hessian_diagonal_fn``.
    The estimate runs under ``lax.cond``, so the Hessian-vector product costs
    only on the steps that use it.

    Differences from Optax 0.2.8 (same numbers otherwise, same keys): the
    Hessian EMA's key lives in the state as raw ``uint32`` data, also when a
    typed key is given; hyperparameters are checked at construction and kept
    in the state; ``update_interval`` and ``print_win_rate_every_n_steps`` are
    Python ints. As Optax (and the authors' code and Levanter), the step uses
    the Hessian EMA from *before* this step's estimate, and debiases
    :math:`m_t`; the paper's Algorithm 3 uses :math:`h_t` and no debiasing.

    Args:
      learning_rate: :math:`\eta` >= 0, or a schedule.
      b1: :math:`\beta_1` in [0, 1), the gradient EMA's decay.
      b2: :math:`\beta_2` in [0, 1), the Hessian EMA's decay (per estimate: the
        effective per-step decay is about ``1 - (1 - b2) / update_interval``).
      eps: :math:`\epsilon` >= 0, the floor of the denominator.
      weight_decay: :math:`\lambda` >= 0, decoupled weight decay.
      weight_decay_mask: where to decay (a tree of bools or a function of the
        parameters), or None for everywhere.
      gamma: :math:`\gamma` >= 0, the scale of the Hessian estimate.
      clip_threshold: :math:`\rho` > 0, or None for no clipping.
      update_interval: :math:`k`, steps between Hessian estimates, an int >= 1.
      hessian_diagonal_fn: the estimator; by default
        :func:`hutchinson_estimator_diag_hessian` with seed 0. Under ``pmap``,
        give one that averages its estimate across devices.
      mu_dtype: dtype of :math:`m`; the parameters' by default.
      verbose: whether to print the win rate (the fraction of unclipped
        coordinates, which the authors keep between 0.1 and 0.5).
      print_win_rate_every_n_steps: how often to print it (0: never).

    Returns:
      A GradientTransformationExtraArgs whose state is a tuple of a
      SophiaState and the states of the decay and learning-rate members.

    Raises:
      ValueError: if a number is out of range (naming it).
      TypeError: if ``update_interval`` is not an int, or
        ``hessian_diagonal_fn`` not a transformation.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> obj_fn = lambda p: jnp.sum(jnp.array([1.0, 10.0]) * p**2)
      >>> tx = gc.sophia(0.1, weight_decay=0.0, gamma=0.5, update_interval=1)
      >>> params = jnp.array([1.0, 1.0])
      >>> state = tx.init(params)
      >>> step = jax.jit(lambda p, s: tx.update(jax.grad(obj_fn)(p), s, p, obj_fn=obj_fn))
      >>> for _ in range(200):
      ...     updates, state = step(params, state)
      ...     params = gc.apply_updates(params, updates)
      >>> [round(abs(float(p)), 1) for p in params]
      [0.0, 0.0]

    References:
      Liu, Li, Hall, Liang and Ma, `Sophia: A Scalable Stochastic Second-order
      Optimizer for Language Model Pre-training <https://arxiv.org/abs/2305.14342>`_,
      2023 (Algorithm 3).
    """
    fn = "sophia"
    _check.non_negative(fn, "learning_rate", learning_rate, schedule_ok=True)
    _check.decay_rate(fn, "b1", b1)
    _check.decay_rate(fn, "b2", b2)
    _check.non_negative(fn, "eps", eps)
    _check.non_negative(fn, "weight_decay", weight_decay)
    _check.non_negative(fn, "gamma", gamma)
    if clip_threshold is not None:
        _check.positive(fn, "clip_threshold", clip_threshold)
    _check.positive_int(fn, "update_interval", update_interval)
    _check.non_negative_int(fn, "print_win_rate_every_n_steps", print_win_rate_every_n_steps)
    mu_dt = _check.dtype_or_none(fn, "mu_dtype", mu_dtype)
    if hessian_diagonal_fn is None:
        hessian_diagonal_fn = hutchinson_estimator_diag_hessian()
    check_transformation(fn, "`hessian_diagonal_fn`", hessian_diagonal_fn)
    return chain(
        _scale_by_sophia(
            b1,
            b2,
            eps,
            gamma,
            clip_threshold,
            update_interval,
            hessian_diagonal_fn,
            mu_dt,
            verbose,
            print_win_rate_every_n_steps,
        ),
        add_decayed_weights(weight_decay, weight_decay_mask),
        scale_by_learning_rate(learning_rate),
    )
