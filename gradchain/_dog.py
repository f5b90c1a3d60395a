r"""Distance over gradients: learning-rate-free step sizes from how far the parameters moved.

DoG (Ivgi et al.) divides the largest distance travelled from the initial
parameters by the root of the summed squared gradient norms; DoWG (Khaled et
al.) weights that sum by the squared distances. :func:`scale_by_dog` and
:func:`scale_by_dowg` measure over the whole tree, as Optax's contrib versions
do; :func:`scale_by_distance_over_gradients` per leaf (the paper's layer-wise
LDoG, Optax's top-level function).

All three need the initial parameters. Optax reads them in ``init``, so its
``init`` cannot take ``jax.ShapeDtypeStruct`` (a state laid out before any
array exists, for sharding or checkpoint restoring). Here ``init`` keeps a
zero placeholder, and the first ``update`` records its ``params`` as the
initial parameters and makes every measurement that needs them (the initial
distance :math:`r_\epsilon`). When ``init`` and the first ``update`` see the
same parameters, as in every ordinary training loop, the numbers are Optax's.
Distances and sums are accumulated in float32 (or wider) scalars whatever the
parameters' dtype.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple, TypeAlias

import jax
import jax.numpy as jnp

from gradchain import _check, _tree
from gradchain._base import GradientTransformation, Params, Updates
from gradchain._flat_params import refuse_flat_params
from gradchain._hyperparams import Hyperparams, HyperparamSpec, values
from gradchain._polyak import squared_norm

DogInitStep: TypeAlias = tuple[Literal["distance", "learning_rate", "heuristic"], Any]
_INIT_STEP_TAGS = ("distance", "learning_rate", "heuristic")


def _capture(first: jax.Array, params: Params, init_params: Params) -> Params:
    """The initial parameters: ``params`` at the first update, the stored ones afterwards."""
    return jax.tree.map(lambda p, x0: jnp.where(first, p.astype(x0.dtype), x0), params, init_params)


def _check_trees(fn: str, updates: Updates, params: Params | None, init_params: Params) -> None:
    _tree.require_params(fn, params)
    _tree.check_matches(fn, updates, "params", params)
    _tree.check_matches(fn, updates, "state.init_params", init_params)


def _scalar_dtype(params: Params) -> Any:
    leaves = jax.tree.leaves(params)
    return jnp.finfo(_tree.compute_dtype(*(x.dtype for x in leaves))).dtype


def _scale(updates: Updates, rate: jax.Array) -> Updates:
    def leaf(g: jax.Array) -> jax.Array:
        gc, r = _tree.upcast(g, rate)
        return (r * gc).astype(g.dtype)

    return jax.tree.map(leaf, updates)


def _sub(a: Params, b: Params) -> Params:
    return jax.tree.map(lambda x, y: jnp.subtract(*_tree.upcast(x, y)), a, b)


class ScaleByDistanceOverGradientsState(NamedTuple):
    """State of :func:`scale_by_distance_over_gradients`."""

    step: jax.Array  # int32[], updates seen so far
    max_dist: Updates  # per leaf, float32[]: the largest distance from init_params (r bar)
    grad_sum_of_squares: Updates  # per leaf, float32[]: the summed squared gradient norms
    init_params: Params  # x_0 in param_dtype, recorded by the first update
    hparams: Hyperparams  # reps_rel, eps, global_scale


def scale_by_distance_over_gradients(
    reps_rel: float | jax.Array = 1e-6,
    eps: float | jax.Array = 1e-8,
    param_dtype: Any | None = jnp.float32,
    global_scale: float | jax.Array = 1.0,
) -> GradientTransformation:
    r"""Layer-wise DoG (LDoG): each leaf's step size is its distance over its gradients.

    For each leaf :math:`x` of the parameters, with :math:`x_0` its initial value,

    .. math::
      \bar r_t = \max\big(r_\epsilon,\ \max_{k \le t} \|x_k - x_0\|\big), \quad
      G_t = \sum_{k \le t} \|g_k\|^2, \quad
      u_t = s\, \frac{\bar r_t}{\sqrt{G_t + \epsilon}}\, g_t,

    with :math:`r_\epsilon` = ``reps_rel`` :math:`(1 + \|x_0\|)` and :math:`s` =
    ``global_scale``. The sign is kept (:math:`s = 1`): chain
    :func:`scale_by_learning_rate` after it, or give ``global_scale=-1``. The
    authors recommend averaging the iterates (:func:`ema_params`).

    Unlike Optax 0.2.8, ``init`` accepts ``jax.ShapeDtypeStruct`` (the initial
    parameters are recorded by the first update; see the module docstring),
    a scalar leaf's update keeps its shape (Optax's becomes shape ``(1,)``),
    and updates keep the gradients' dtype (Optax's come back in float32 for
    bfloat16 gradients).

    Args:
      reps_rel: the relative initial distance, > 0 (the paper suggests 1e-6,
        or 1e-4 for models with batch normalization).
      eps: added to :math:`G_t` under the root, >= 0.
      param_dtype: the dtype of the stored initial parameters (float32 as in
        Optax), or None for the parameters' own.
      global_scale: :math:`s`, finite; typically 1 or -1.

    Returns:
      A GradientTransformation whose state is a
      ScaleByDistanceOverGradientsState; its update needs ``params``.

    Raises:
      ValueError: for a number out of range, or a ``param_dtype`` that is not
        a float; while tracing ``update``, if ``params`` is missing or does not
        match the updates.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.scale_by_distance_over_gradients(reps_rel=0.1, eps=0.0)
      >>> x = jnp.array([3.0, 4.0])  # |x_0| = 5, so r_eps = 0.1 * 6 = 0.6
      >>> u, _ = tx.update(jnp.array([1.0, 0.0]), tx.init(x), x)
      >>> [round(float(v), 4) for v in u]
      [0.6, 0.0]

    References:
      Ivgi, Hinder and Carmon, DoG is SGD's Best Friend: A Parameter-Free Dynamic Step
      Size Schedule, ICML 2023, Algorithm 1 and section 3.3 (LDoG).
    """
    fn = "scale_by_distance_over_gradients"
    _check.positive(fn, "reps_rel", reps_rel)
    _check.non_negative(fn, "eps", eps)
    _check.finite(fn, "global_scale", global_scale)
    x0_dtype = _check.dtype_or_none(fn, "param_dtype", param_dtype)
    spec = HyperparamSpec(fn, dict(reps_rel=reps_rel, eps=eps, global_scale=global_scale))

    def init_fn(params: Params) -> ScaleByDistanceOverGradientsState:
        refuse_flat_params(
            "scale_by_distance_over_gradients", "each leaf's norms (a step size per leaf)", params
        )

        def scalar(p: Any) -> jax.Array:
            return jnp.zeros([], _scalar_dtype(p))

        return ScaleByDistanceOverGradientsState(
            step=jnp.zeros([], jnp.int32),
            max_dist=jax.tree.map(scalar, params),
            grad_sum_of_squares=jax.tree.map(scalar, params),
            init_params=_tree.zeros_like(params, x0_dtype),
            hparams=spec.init(),
        )

    def update_fn(
        updates: Updates, state: ScaleByDistanceOverGradientsState, params: Params | None = None
    ) -> tuple[Updates, ScaleByDistanceOverGradientsState]:
        _tree.check_state(fn, state, ScaleByDistanceOverGradientsState)
        _check_trees(fn, updates, params, state.init_params)
        hp = values(state.hparams)
        first = state.step == 0
        init_params = _capture(first, params, state.init_params)

        def leaf(
            g: jax.Array, p: jax.Array, x0: jax.Array, d: jax.Array, s: jax.Array
        ) -> tuple[jax.Array, jax.Array, jax.Array]:
            gc, pc, x0c, d, s, rel, eps_, scale = _tree.upcast(
                g, p, x0, d, s, hp["reps_rel"], hp["eps"], hp["global_scale"]
            )
            r_eps = rel * (1 + jnp.sqrt(squared_norm(x0c)))
            d = jnp.maximum(jnp.where(first, r_eps, d), jnp.sqrt(squared_norm(pc - x0c)))
            s = s + squared_norm(gc)
            denom = jnp.sqrt(s + eps_)
            rate = jnp.where(denom > 0, scale * d / jnp.where(denom > 0, denom, 1), 0)
            return (rate * gc).astype(g.dtype), d, s

        new_updates, max_dist, sums = _tree.map_leaves(
            leaf, 3, updates, params, init_params, state.max_dist, state.grad_sum_of_squares
        )
        step = _tree.safe_increment(state.step)
        new_state = ScaleByDistanceOverGradientsState(
            step, max_dist, sums, init_params, spec.advance(state.hparams, step)
        )
        return new_updates, new_state

    return GradientTransformation(init_fn, update_fn)


class ScaleByDogState(NamedTuple):
    """State of :func:`scale_by_dog`."""

    step: jax.Array  # int32[], updates seen so far
    init_params: Params  # x_0, in the parameters' dtypes, recorded by the first update
    max_dist: jax.Array  # float32[]: r bar, the largest distance from x_0 (0 before any update)
    sum_sq_norm_grads: jax.Array  # float32[]: G, the summed squared gradient norms
    hparams: Hyperparams  # init_step (its number), eps


def _check_init_step(fn: str, init_step: Any) -> tuple[str, Any]:
    if not (isinstance(init_step, tuple) and len(init_step) == 2):
        raise TypeError(
            f"{fn}: `init_step` must be a pair (kind, value) with kind one of "
            f"{list(_INIT_STEP_TAGS)}, e.g. ('heuristic', 1e-6); got {init_step!r:.80}."
        )
    tag, value = init_step
    if tag not in _INIT_STEP_TAGS:
        raise ValueError(
            f"{fn}: the kind in `init_step` must be one of {list(_INIT_STEP_TAGS)}; got {tag!r}."
        )
    _check.positive(fn, "init_step[1]", value)
    return tag, value


def scale_by_dog(
    init_step: DogInitStep = ("heuristic", 1e-6), eps: float | jax.Array = 1e-8
) -> GradientTransformation:
    r"""DoG's scaling over the whole tree: the distance travelled over the gradients' root sum.

    .. math::
      \bar r_t = \max\big(r_\epsilon,\ \max_{k \le t} \|x_k - x_0\|\big), \quad
      G_t = \sum_{k \le t} \|g_k\|^2, \quad
      u_t = \frac{\bar r_t}{\sqrt{G_t + \epsilon}}\, g_t,

    norms over all leaves together. See :func:`dog` for ``init_step``. The
    sign is kept: chain :func:`scale_by_learning_rate` after it. Optax 0.2.8
    has this transform in ``optax.contrib`` without exporting it; its state
    keeps :math:`\bar r` and :math:`G` in the parameters' lowest dtype
    (bfloat16 sums stop growing after a few hundred steps), here float32.

    Args:
      init_step: ``("heuristic", a)`` for :math:`r_\epsilon = a (1 +
        \|x_0\|)`, ``("distance", r)`` for :math:`r_\epsilon = r`, or
        ``("learning_rate", eta)`` for a first step size of ``eta``; the
        number > 0.
      eps: :math:`\epsilon`, added to :math:`G_t` under the root, >= 0.

    Returns:
      A GradientTransformation whose state is a ScaleByDogState; its update
      needs ``params``.

    Raises:
      TypeError: if ``init_step`` is not a pair.
      ValueError: for an unknown kind or a number out of range; while tracing
        ``update``, if ``params`` is missing or does not match the updates.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.scale_by_dog(("distance", 0.5), eps=0.0)
      >>> x = jnp.zeros(2)
      >>> u, _ = tx.update(jnp.array([3.0, 4.0]), tx.init(x), x)  # 0.5 / 5 * g
      >>> [round(float(v), 4) for v in u]
      [0.3, 0.4]

    References:
      Ivgi, Hinder and Carmon, DoG is SGD's Best Friend: A Parameter-Free Dynamic Step
      Size Schedule, ICML 2023, Algorithm 1.
    """
    fn = "scale_by_dog"
    tag, value = _check_init_step(fn, init_step)
    _check.non_negative(fn, "eps", eps)
    spec = HyperparamSpec(fn, dict(init_step=value, eps=eps))

    def init_fn(params: Params) -> ScaleByDogState:
        dt = _scalar_dtype(params)
        return ScaleByDogState(
            jnp.zeros([], jnp.int32),
            _tree.zeros_like(params),
            jnp.zeros([], dt),
            jnp.zeros([], dt),
            spec.init(),
        )

    def update_fn(
        updates: Updates, state: ScaleByDogState, params: Params | None = None
    ) -> tuple[Updates, ScaleByDogState]:
        _tree.check_state(fn, state, ScaleByDogState)
        _check_trees(fn, updates, params, state.init_params)
        hp = values(state.hparams)
        first = state.step == 0
        init_params = _capture(first, params, state.init_params)
        init_value, eps_, prev_dist, prev_sum = _tree.upcast(
            hp["init_step"], hp["eps"], state.max_dist, state.sum_sq_norm_grads
        )
        if tag == "heuristic":
            r_eps = init_value * (1 + jnp.sqrt(squared_norm(init_params)))
        elif tag == "distance":
            r_eps = init_value
        else:
            r_eps = jnp.zeros_like(init_value)
        dist = jnp.sqrt(squared_norm(_sub(params, init_params)))
        max_dist = jnp.maximum(jnp.where(first, r_eps, prev_dist), dist)
        sum_sq = prev_sum + squared_norm(updates)
        denom = jnp.sqrt(sum_sq + eps_)
        rate = jnp.where(denom > 0, max_dist / jnp.where(denom > 0, denom, 1), 0)
        if tag == "learning_rate":
            rate = jnp.where(first, init_value, rate)
        step = _tree.safe_increment(state.step)
        new_state = ScaleByDogState(
            step,
            init_params,
            max_dist.astype(state.max_dist.dtype),
            sum_sq.astype(state.sum_sq_norm_grads.dtype),
            spec.advance(state.hparams, step),
        )
        return _scale(updates, rate), new_state

    return GradientTransformation(init_fn, update_fn)


class ScaleByDowgState(NamedTuple):
    """State of :func:`scale_by_dowg`."""

    step: jax.Array  # int32[], updates seen so far
    init_params: Params  # x_0, in the parameters' dtypes, recorded by the first update
    weighted_sq_norm_grads: jax.Array  # float32[]: v, the distance-weighted gradient sum
    estim_sq_dist: jax.Array  # float32[]: r bar squared, the largest squared distance
    hparams: Hyperparams  # init_estim_sq_dist (when given), eps


def scale_by_dowg(
    init_estim_sq_dist: float | jax.Array | None = None, eps: float | jax.Array = 1e-4
) -> GradientTransformation:
    r"""DoWG's scaling: the squared distance over the distance-weighted gradient sum.

    .. math::
      \bar r_t^2 = \max\big(\bar r_{t-1}^2,\ \|x_t - x_0\|^2\big), \quad
      v_t = v_{t-1} + \bar r_t^2 \|g_t\|^2, \quad
      u_t = \frac{\bar r_t^2}{\sqrt{v_t} + \epsilon}\, g_t,

    norms over all leaves together, with :math:`\bar r_{-1}^2` =
    ``init_estim_sq_dist`` (``eps`` when None). The sign is kept: chain
    :func:`scale_by_learning_rate` after it. Optax 0.2.8 has this transform in
    ``optax.contrib`` without exporting it.

    Args:
      init_estim_sq_dist: the initial guess of the squared distance to a
        solution, > 0; None for ``eps``.
      eps: :math:`\epsilon` in the denominator (and the default initial
        guess), > 0.

    Returns:
      A GradientTransformation whose state is a ScaleByDowgState; its update
      needs ``params``.

    Raises:
      ValueError: for a number out of range; while tracing ``update``, if
        ``params`` is missing or does not match the updates.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.scale_by_dowg(init_estim_sq_dist=4.0)
      >>> x = jnp.zeros(2)
      >>> u, _ = tx.update(jnp.array([3.0, 4.0]), tx.init(x), x)  # 4 / (2 * 5 + 1e-4) * g
      >>> [round(float(v), 4) for v in u]
      [1.2, 1.6]

    References:
      Khaled, Mishchenko and Jin, DoWG Unleashed: An Efficient Universal Parameter-Free
      Gradient Descent Method, NeurIPS 2023, Algorithm 1.
    """
    fn = "scale_by_dowg"
    if init_estim_sq_dist is not None:
        _check.positive(fn, "init_estim_sq_dist", init_estim_sq_dist)
    _check.positive(fn, "eps", eps)
    initial = "eps" if init_estim_sq_dist is None else "init_estim_sq_dist"
    hyperparams: dict[str, Any] = dict(eps=eps)
    if init_estim_sq_dist is not None:
        hyperparams["init_estim_sq_dist"] = init_estim_sq_dist
    spec = HyperparamSpec(fn, hyperparams)

    def init_fn(params: Params) -> ScaleByDowgState:
        hp = spec.init()
        dt = _scalar_dtype(params)
        return ScaleByDowgState(
            jnp.zeros([], jnp.int32),
            _tree.zeros_like(params),
            jnp.zeros([], dt),
            jnp.array(values(hp)[initial], dt),  # a copy: a state can be donated
            hp,
        )

    def update_fn(
        updates: Updates, state: ScaleByDowgState, params: Params | None = None
    ) -> tuple[Updates, ScaleByDowgState]:
        _tree.check_state(fn, state, ScaleByDowgState)
        _check_trees(fn, updates, params, state.init_params)
        hp = values(state.hparams)
        first = state.step == 0
        init_params = _capture(first, params, state.init_params)
        guess, eps_, prev_r2, prev_v = _tree.upcast(
            hp[initial], hp["eps"], state.estim_sq_dist, state.weighted_sq_norm_grads
        )
        prev_r2 = jnp.where(first, guess, prev_r2)  # a guess set by hand before the first step
        r2 = jnp.maximum(prev_r2, squared_norm(_sub(params, init_params)))
        v = prev_v + r2 * squared_norm(updates)
        rate = r2 / (jnp.sqrt(v) + eps_)
        step = _tree.safe_increment(state.step)
        new_state = ScaleByDowgState(
            step,
            init_params,
            v.astype(state.weighted_sq_norm_grads.dtype),
            r2.astype(state.estim_sq_dist.dtype),
            spec.advance(state.hparams, step),
        )
        return _scale(updates, rate), new_state

    return GradientTransformation(init_fn, update_fn)
