r"""Sharpness-aware minimization: descend with the gradient taken at a nearby uphill point.

SAM (Foret et al., 2021) minimizes :math:`\max_{\|\epsilon\| \le \rho} L(w + \epsilon)`.
One step first climbs to :math:`w + \hat\epsilon(w)`, with
:math:`\hat\epsilon = \rho\, g / \|g\|`, then updates :math:`w` with the gradient
taken there. :func:`sam` runs the climb with any "adversarial" optimizer
(``chain(normalize(), sgd(rho))`` for the paper's step) and the descent with any
outer optimizer, as ``optax.contrib.sam`` does.
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
    Updates,
    call_update,
    check_transformation,
)
from gradchain._wrappers import _sync_hparams


class SAMState(NamedTuple):
    """State of :func:`sam`.

    Attributes:
      steps_since_sync: int32[], adversarial steps since the last outer step
        (always 0 in opaque mode).
      opt_state: the outer optimizer's state.
      adv_state: the adversarial optimizer's state.
      cache: the true parameters (the point the adversarial steps started
        from), shaped like them; None in opaque mode, which needs no copy.
    """

    steps_since_sync: jax.Array
    opt_state: OptState
    adv_state: OptState
    cache: Params | None


def _add(p: jax.Array, u: jax.Array) -> jax.Array:
    """``p + u`` in at least float32, in ``p``'s dtype (as apply_updates)."""
    wide = _tree.compute_dtype(p.dtype, u.dtype)
    return (p.astype(wide) + u.astype(wide)).astype(p.dtype)


def _apply(params: Params, updates: Updates) -> Params:
    return jax.tree.map(_add, params, updates)


def _return_and_step(
    cache: jax.Array, param: jax.Array, step: jax.Array, like: jax.Array
) -> jax.Array:
    """``(cache - param) + step`` in at least float32, in the dtype of ``like`` (the gradient).

    Back from the adversarial point to the true parameter, then the outer step
    (Optax's order of operations, so float32 results are bit-identical).
    """
    c, p, u = _tree.upcast(cache, param, step)
    return ((c - p) + u).astype(like.dtype)


def _copy(p: Any) -> jax.Array:
    """A copy of a parameter; zeros for a ShapeDtypeStruct (the first step overwrites them)."""
    if isinstance(p, jax.ShapeDtypeStruct):
        return jnp.zeros(p.shape, p.dtype)
    return jnp.array(p, copy=True)


def _cast_like(tree: Any, like: Any) -> Any:
    return jax.tree.map(lambda x, y: x.astype(y.dtype), tree, like)


def sam(
    optimizer: AnyTransformation,
    adv_optimizer: AnyTransformation,
    sync_period: int = 2,
    reset_state: bool = True,
    opaque_mode: bool = False,
    batch_axis_name: str | None = None,
) -> GradientTransformationExtraArgs:
    r"""Sharpness-aware minimization (SAM) around any outer and adversarial optimizers.

    Each cycle of ``sync_period`` steps takes ``sync_period - 1`` adversarial
    steps uphill from the true parameters :math:`w` (the *negated* updates of
    ``adv_optimizer``), then one outer step: ``optimizer`` is given the last
    gradient, taken at the adversarial point, and the true parameters, and
    the parameters move to :math:`w` plus its update. With
    ``adv_optimizer = chain(normalize(), sgd(rho))`` and ``sync_period=2``
    this is the paper's SAM:
    :math:`w \leftarrow w - \eta \nabla L(w + \rho \nabla L(w) / \|\nabla L(w)\|)`.

    Two modes, as in Optax:

    * ``opaque_mode=False``: each ``update`` call is one step, adversarial or
      outer; the parameters visibly pass through the adversarial points, and
      the state caches the true parameters meanwhile. The outer step's
      updates bring the parameters back to the cache and add the outer update.
    * ``opaque_mode=True``: each call runs a whole cycle, calling
      ``grad_fn(params, i)`` (an extra keyword argument of ``update``) for
      ``i = 0, ..., sync_period - 2`` at the adversarial points, and returns
      the outer update only. Use it when something else changes on every
      call (BatchNorm statistics). Under ``pmap``, ``batch_axis_name`` names
      the axis over which the gradients ``grad_fn`` returns are averaged.

    Other keyword arguments of ``update`` reach both optimizers (those that
    accept them). Gradients that ``grad_fn`` returns are cast to the dtypes of
    the incoming gradients and must have their structure and shapes.

    Differences from Optax 0.2.8 (same numbers otherwise): with
    ``reset_state`` the adversarial optimizer restarts from its ``init`` at
    the new parameters, keeping the hyperparameters set in its state; the
    mode's arguments are checked at construction, and a missing or
    mis-shaped ``grad_fn`` raises naming ``sam``.

    Args:
      optimizer: the outer optimizer, e.g. ``gc.sgd(0.1)``.
      adv_optimizer: the adversarial optimizer, e.g.
        ``gc.chain(gc.normalize(), gc.sgd(0.05))``; its updates are negated.
      sync_period: steps per cycle, an int >= 1 (1: no adversarial step).
      reset_state: whether to restart the adversarial optimizer after every
        outer step.
      opaque_mode: whether one ``update`` runs a whole cycle (see above).
      batch_axis_name: in opaque mode under ``pmap``, the axis to
        ``lax.pmean`` the gradients of ``grad_fn`` over.

    Returns:
      A GradientTransformationExtraArgs whose state is a SAMState.

    Raises:
      TypeError: if an optimizer is not a transformation, or ``sync_period``
        is not an int, or ``batch_axis_name`` not a string or None.
      ValueError: if ``sync_period < 1``, or ``batch_axis_name`` is given
        without ``opaque_mode``.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> loss = lambda w: jnp.sum(w**2)
      >>> tx = gc.sam(gc.sgd(0.1), gc.chain(gc.normalize(), gc.sgd(0.05)))
      >>> w = jnp.array([1.0, -2.0])
      >>> state = tx.init(w)
      >>> update = jax.jit(tx.update)
      >>> for _ in range(100):  # 50 adversarial and 50 outer steps
      ...     updates, state = update(jax.grad(loss)(w), state, w)
      ...     w = gc.apply_updates(w, updates)
      >>> round(float(loss(w)), 4)
      0.0

    References:
      Foret, Kleiner, Mobahi and Neyshabur, `Sharpness-Aware Minimization for
      Efficiently Improving Generalization <https://arxiv.org/abs/2010.01412>`_,
      ICLR 2021 (equation 3 and Algorithm 1).
    """
    fn = "sam"
    check_transformation(fn, "`optimizer`", optimizer)
    check_transformation(fn, "`adv_optimizer`", adv_optimizer)
    _check.positive_int(fn, "sync_period", sync_period)
    if batch_axis_name is not None and not isinstance(batch_axis_name, str):
        raise TypeError(
            f"{fn}: `batch_axis_name` must be a string or None; got "
            f"{type(batch_axis_name).__name__} {batch_axis_name!r:.60}."
        )
    if batch_axis_name is not None and not opaque_mode:
        raise ValueError(
            f"{fn}: `batch_axis_name` is used only with `opaque_mode=True` (where sam computes "
            f"gradients itself); got batch_axis_name={batch_axis_name!r} with opaque_mode=False. "
            f"Average the gradients in your own step function instead."
        )

    def init_fn(params: Params) -> SAMState:
        cache = None if opaque_mode else jax.tree.map(_copy, params)
        return SAMState(
            steps_since_sync=jnp.zeros([], jnp.int32),
            opt_state=optimizer.init(params),
            adv_state=adv_optimizer.init(params),
            cache=cache,
        )

    def restart_adv(adv_state: OptState, new_params: Params) -> OptState:
        if not reset_state:
            return adv_state
        return _sync_hparams(adv_optimizer.init(new_params), adv_state)

    def update_visible(
        updates: Updates, state: SAMState, params: Params, extra_args: dict[str, Any]
    ) -> tuple[Updates, SAMState]:
        _tree.check_matches(fn, updates, "state.cache", state.cache)
        first = state.steps_since_sync == 0

        def adversarial(s: SAMState) -> tuple[Updates, SAMState]:
            cache = jax.tree.map(
                lambda p, c: jnp.where(first, p.astype(c.dtype), c), params, s.cache
            )
            adv_u, adv_state = call_update(adv_optimizer, updates, s.adv_state, params, extra_args)
            out = jax.tree.map(lambda u, g: (-u).astype(g.dtype), adv_u, updates)
            steps = (s.steps_since_sync + 1).astype(jnp.int32)
            return out, SAMState(steps, s.opt_state, adv_state, cache)

        def outer(s: SAMState) -> tuple[Updates, SAMState]:
            opt_u, opt_state = call_update(optimizer, updates, s.opt_state, s.cache, extra_args)
            new_params = _apply(s.cache, opt_u)
            out = jax.tree.map(_return_and_step, s.cache, params, opt_u, updates)
            adv_state = restart_adv(s.adv_state, new_params)
            return out, SAMState(jnp.zeros([], jnp.int32), opt_state, adv_state, s.cache)

        if sync_period == 1:
            return outer(state._replace(cache=_cast_like(params, state.cache)))
        return jax.lax.cond(state.steps_since_sync < sync_period - 1, adversarial, outer, state)

    def update_opaque(
        updates: Updates,
        state: SAMState,
        params: Params,
        grad_fn: Callable[[Params, int], Updates] | None,
        extra_args: dict[str, Any],
    ) -> tuple[Updates, SAMState]:
        if sync_period > 1 and not callable(grad_fn):
            raise TypeError(
                f"{fn}: with opaque_mode=True, update needs `grad_fn=`, a function "
                f"`grad_fn(params, i) -> gradients` that sam calls at each adversarial point "
                f"(e.g. `grad_fn=jax.grad(lambda p, i: loss(p, batch))`); got {grad_fn!r:.60}."
            )
        grads, adv_params, adv_state = updates, params, state.adv_state
        for i in range(sync_period - 1):
            adv_u, adv_state = call_update(adv_optimizer, grads, adv_state, adv_params, extra_args)
            adv_params = jax.tree.map(lambda p, u: _add(p, -u), adv_params, adv_u)
            new_grads = grad_fn(adv_params, i)  # pyright: ignore[reportOptionalCall]
            _tree.check_same_structure(fn, "updates", updates, "grad_fn(params, i)", new_grads)
            _tree.check_same_shapes(fn, "updates", updates, "grad_fn(params, i)", new_grads)
            if batch_axis_name is not None:
                new_grads = jax.lax.pmean(new_grads, axis_name=batch_axis_name)
            grads = _cast_like(new_grads, updates)
        opt_u, opt_state = call_update(optimizer, grads, state.opt_state, params, extra_args)
        out = _cast_like(opt_u, updates)
        adv_state = restart_adv(adv_state, _apply(params, out))
        return out, SAMState(state.steps_since_sync, opt_state, adv_state, None)

    def update_fn(
        updates: Updates,
        state: SAMState,
        params: Params | None = None,
        *,
        grad_fn: Callable[[Params, int], Updates] | None = None,
        **extra_args: Any,
    ) -> tuple[Updates, SAMState]:
        _tree.check_state(fn, state, SAMState)
        _tree.require_params(fn, params)
        _tree.check_matches(fn, updates, "params", params)
        if opaque_mode:
            return update_opaque(updates, state, params, grad_fn, extra_args)
        if grad_fn is not None:
            extra_args = {**extra_args, "grad_fn": grad_fn}
        return update_visible(updates, state, params, extra_args)

    return GradientTransformationExtraArgs(init_fn, update_fn)
