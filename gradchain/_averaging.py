r"""Evaluation parameters: lookahead, parameter EMA, and the one protocol that reads them.

Some optimizers train one set of parameters and evaluate another: a moving
average of the iterates (:func:`ema_params`), Lookahead's slow weights
(:func:`lookahead`), later schedule-free's averaged point. :func:`eval_params`
is the single way to get the parameters to evaluate with, whatever the
optimizer and however deep it sits in a chain, a named chain, a mask or a
parameter partition.

The protocol, for any transform that wants to take part:

* Its state is a NamedTuple whose class defines a method
  ``eval_params(self, params) -> params``. ``params`` is the tree the user
  passes to :func:`eval_params` (the same tree the transform's ``update`` gets
  as ``params``); the method returns the tree to evaluate with. Where the
  state covers only some leaves (under :func:`masked` the state holds a
  :class:`MaskedNode` for the others), the method returns a ``MaskedNode``
  there and :func:`eval_params` fills the hole with the user's parameter.
* Nothing is registered anywhere: :func:`eval_params` walks the state tree and
  calls the method of every node that has one, including nodes nested inside
  another such node (an EMA inside Lookahead's fast optimizer is found).
* No such node: ``params`` comes back unchanged. One node: its answer. Several
  nodes: their answers are merged when they cover disjoint leaves (an EMA per
  parameter group); if two cover the same leaf, or one of them answers with
  another tree structure than ``params`` (Lookahead's slow half), the result
  would be ambiguous and :func:`eval_params` raises, naming both state paths.

A schedule-free transform plugs in by giving its state class the method
(``x = (1 - 1/beta) * z + y / beta`` computed from ``params = y`` and the
state's ``z``), with no change here.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, runtime_checkable

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
from gradchain._hyperparams import Hyperparams, HyperparamSpec, values
from gradchain._wrappers import MaskedNode, _sync_hparams


@runtime_checkable
class AveragingState(Protocol):
    """A state that knows the parameters to evaluate with (see the module docstring)."""

    def eval_params(self, params: Params) -> Params:
        """The parameters to evaluate with, given the ones being trained."""
        ...


def _copy_array(x: Any) -> Any:
    """A copy of a JAX array (its own buffer); anything else as it is."""
    return jnp.copy(x) if isinstance(x, jax.Array) else x


def _is_masked(x: Any) -> bool:
    return isinstance(x, MaskedNode)


def _is_averaging(x: Any) -> bool:
    return isinstance(x, tuple) and callable(getattr(type(x), "eval_params", None))


# ---------------------------------------------------------------------------------------------
# Lookahead


class LookaheadParams(NamedTuple):
    """The fast and slow halves of Lookahead's parameters (Optax's container).

    Compute gradients with ``fast``; evaluate with ``slow`` (or with
    :func:`eval_params`).

    Attributes:
      fast: the parameters the fast optimizer trains.
      slow: the slow weights, moved towards ``fast`` every ``sync_period`` steps.
    """

    fast: Params
    slow: Params

    @classmethod
    def init_synced(cls, params: Params) -> LookaheadParams:
        """Both halves set to ``params`` (the slow half a copy, so either can be donated)."""
        return cls(fast=params, slow=jax.tree.map(_copy_array, params))


class LookaheadState(NamedTuple):
    """State of :func:`lookahead`.

    Attributes:
      fast_state: the fast optimizer's state.
      steps_since_sync: int32[], fast steps since the halves were last synchronised.
      hparams: ``slow_step_size``, settable with :func:`set_hyperparams`.
    """

    fast_state: OptState
    steps_since_sync: jax.Array
    hparams: Hyperparams

    def eval_params(self, params: Params) -> Params:
        """The slow half of ``params``, which must be the :class:`LookaheadParams` trained."""
        if not isinstance(params, LookaheadParams):
            raise TypeError(
                f"lookahead keeps its slow weights in the parameters, so eval_params needs the "
                f"LookaheadParams(fast, slow) you pass to update; got {type(params).__name__}."
            )
        return params.slow


def lookahead(
    fast_optimizer: AnyTransformation,
    sync_period: int,
    slow_step_size: float,
    reset_state: bool = False,
) -> GradientTransformationExtraArgs:
    r"""Lookahead: k steps forward with a fast optimizer, then one step back.

    Parameters are a :class:`LookaheadParams` ``(fast, slow)``, as in Optax.
    The fast optimizer updates ``fast`` from gradients taken at ``fast``; every
    ``sync_period`` steps the slow weights move towards the fast ones,
    :math:`\phi \leftarrow \phi + \alpha (\theta - \phi)`, and the fast
    weights restart from the new slow ones. The returned updates are a
    ``LookaheadParams`` of updates: apply them to the parameters unchanged.

    ``sync_period`` is a Python int (it decides when to synchronise, not how
    much); ``slow_step_size`` lives in the state like every hyperparameter.

    Args:
      fast_optimizer: the inner optimizer, e.g. ``gc.adam(1e-3)``.
      sync_period: fast steps between synchronisations, >= 1.
      slow_step_size: :math:`\alpha` in (0, 1].
      reset_state: whether the fast optimizer's state restarts from its init
        after each synchronisation (its hyperparameters, including ones set
        with :func:`set_hyperparams`, are kept).

    Returns:
      A GradientTransformationExtraArgs whose state is a LookaheadState;
      ``init`` takes a LookaheadParams and ``update`` needs one as ``params``.

    Raises:
      TypeError: if ``fast_optimizer`` is not a transformation, or
        ``sync_period`` is not an int.
      ValueError: if ``sync_period < 1`` or ``slow_step_size`` is outside (0, 1].

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.lookahead(gc.sgd(0.5), sync_period=2, slow_step_size=0.5)
      >>> params = gc.LookaheadParams.init_synced(jnp.array([1.0]))
      >>> state = tx.init(params)
      >>> for _ in range(2):
      ...     updates, state = tx.update(jnp.array([1.0]), state, params)
      ...     params = gc.apply_updates(params, updates)
      >>> float(params.fast[0]), float(params.slow[0]), float(gc.eval_params(state, params)[0])
      (0.5, 0.5, 0.5)

    References:
      Zhang, Lucas, Hinton and Ba, `Lookahead Optimizer: k steps forward, 1 step
      back <https://arxiv.org/abs/1907.08610>`_, 2019.
    """
    fn = "lookahead"
    check_transformation(fn, "`fast_optimizer`", fast_optimizer)
    _check.positive_int(fn, "sync_period", sync_period)
    _check.in_range(fn, "slow_step_size", slow_step_size, 0.0, 1.0, lo_open=True)
    spec = HyperparamSpec(fn, dict(slow_step_size=slow_step_size))

    def check_params(params: Any, where: str) -> LookaheadParams:
        if not isinstance(params, LookaheadParams):
            raise TypeError(
                f"{fn}: {where} needs a LookaheadParams(fast, slow); got "
                f"{type(params).__name__}. Wrap the parameters with "
                f"`gc.LookaheadParams.init_synced(params)` and apply the updates to that."
            )
        _tree.check_same_structure(fn, "params.fast", params.fast, "params.slow", params.slow)
        _tree.check_same_shapes(fn, "params.fast", params.fast, "params.slow", params.slow)
        return params

    def init_fn(params: Params) -> LookaheadState:
        params = check_params(params, "init")
        return LookaheadState(
            fast_optimizer.init(params.fast), jnp.zeros([], jnp.int32), spec.init()
        )

    def update_fn(
        updates: Updates,
        state: LookaheadState,
        params: Params | None = None,
        **extra_args: Any,
    ) -> tuple[Updates, LookaheadState]:
        _tree.check_state(fn, state, LookaheadState)
        _tree.require_params(fn, params)
        params = check_params(params, "update")
        _tree.check_matches(fn, updates, "params.fast", params.fast)
        fast_updates, fast_state = call_update(
            fast_optimizer, updates, state.fast_state, params.fast, extra_args
        )
        steps = state.steps_since_sync + 1
        sync = steps >= sync_period
        alpha = values(state.hparams)["slow_step_size"]

        def leaf(
            g: jax.Array, u: jax.Array, fast: jax.Array, slow: jax.Array
        ) -> tuple[jax.Array, jax.Array, jax.Array]:
            uc, fc, sc, a = _tree.upcast(u, fast, slow, alpha)
            slow_step = a * (fc + uc - sc)
            slow_update = jnp.where(sync, slow_step, jnp.zeros_like(slow_step))
            fast_update = jnp.where(sync, sc + slow_step - fc, uc)
            new_fast = (fc + fast_update).astype(fast.dtype)
            return fast_update.astype(g.dtype), slow_update.astype(g.dtype), new_fast

        fast_u, slow_u, new_fast = _tree.map_leaves(
            leaf, 3, updates, fast_updates, params.fast, params.slow
        )
        if reset_state:
            # Restart the fast state from its init at the new fast weights, keeping the
            # hyperparameters a user may have set; `jnp.where` keeps one compiled program.
            fresh = _sync_hparams(fast_optimizer.init(new_fast), fast_state)
            fast_state = jax.tree.map(lambda f, s: jnp.where(sync, f, s), fresh, fast_state)
        new_steps = jnp.where(sync, jnp.zeros_like(steps), steps).astype(jnp.int32)
        out = LookaheadParams(fast=fast_u, slow=slow_u)
        return out, LookaheadState(fast_state, new_steps, spec.advance(state.hparams, new_steps))

    return GradientTransformationExtraArgs(init_fn, update_fn)


# ---------------------------------------------------------------------------------------------
# Parameter EMA


class EmaParamsState(NamedTuple):
    """State of :func:`ema_params`.

    Attributes:
      step: int32[], updates seen so far.
      ema: the moving average of the parameters after each update, shaped like
        them (``MaskedNode`` where masked out), in the parameters' dtype or
        ``accumulator_dtype``.
      hparams: ``decay``.
    """

    step: jax.Array
    ema: Params
    hparams: Hyperparams

    def eval_params(self, params: Params) -> Params:
        """The average, cast to the dtypes of ``params``."""
        _check_like_params(self.ema, params, "state.ema")

        def cast(e: Any, p: Any) -> Any:
            return e if _is_masked(e) else e.astype(jnp.asarray(p).dtype)

        return jax.tree.map(cast, self.ema, params, is_leaf=_is_masked)


def _check_like_params(tree: Any, params: Params, name: str) -> None:
    """Raises unless ``tree`` has the structure and shapes of ``params`` (MaskedNode anywhere)."""
    holes_as_none = jax.tree.map(lambda x: None if _is_masked(x) else x, tree, is_leaf=_is_masked)
    plain = jax.tree.structure(tree, is_leaf=_is_masked)
    if plain != jax.tree.structure(params):
        _tree.check_same_structure("eval_params", name, holes_as_none, "params", params)
        raise ValueError(f"eval_params: `{name}` and `params` differ in structure.")
    _tree.check_same_shapes("eval_params", "params", params, name, holes_as_none)


def _debiased_weight(complement: jax.Array, step: jax.Array) -> jax.Array:
    """``(1 - b) / (1 - b**t)``: the weight of the newest term in a debiased average.

    ``1 - b**t = -expm1(t * log1p(-(1 - b)))`` keeps its digits for ``b`` near 1,
    where ``1 - b**t`` in float32 would lose most of them at small ``t``.
    """
    total = -jnp.expm1(step.astype(complement.dtype) * jnp.log1p(-complement))
    return jnp.minimum(complement / total, 1).astype(complement.dtype)


def ema_params(
    decay: ScalarOrSchedule, debias: bool = True, accumulator_dtype: Any | None = None
) -> GradientTransformationExtraArgs:
    r"""Keeps an exponential moving average of the parameters (Polyak averaging).

    Updates pass through unchanged. After each update the state holds the
    average of the parameters *after* it, ``params + updates`` (rounded to the
    parameters' dtype, as :func:`apply_updates` does), so place it last in a
    chain. Read it with :func:`eval_params`, or as ``state.ema``.

    With ``debias=True`` the average is the usual zero-started EMA divided by
    :math:`1 - \beta^t`, stored already divided:
    :math:`\bar\theta_t = \bar\theta_{t-1} + w_t (\theta_t - \bar\theta_{t-1})`,
    :math:`w_t = (1-\beta) / (1-\beta^t)`, so the first average is the first
    iterate. With ``debias=False``, :math:`w_t = 1-\beta` and the average
    starts at the initial parameters (as most EMA-of-weights code does), not
    at zero. Before any update, the average is the initial parameters.

    Args:
      decay: :math:`\beta` in [0, 1), e.g. 0.999, or a schedule.
      debias: whether to weight the first iterates up (see above).
      accumulator_dtype: dtype of the average; the parameters' by default
        (float32 keeps an average of bfloat16 parameters exactly).

    Returns:
      A GradientTransformationExtraArgs whose state is an EmaParamsState.

    Raises:
      ValueError: if ``decay`` is a number outside [0, 1).

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.chain(gc.sgd(1.0), gc.ema_params(decay=0.5))
      >>> params = jnp.array([4.0])
      >>> state = tx.init(params)
      >>> for _ in range(2):
      ...     updates, state = tx.update(jnp.array([1.0]), state, params)
      ...     params = gc.apply_updates(params, updates)
      >>> float(params[0]), round(float(gc.eval_params(state, params)[0]), 4)
      (2.0, 2.3333)
    """
    fn = "ema_params"
    _check.decay_rate(fn, "decay", decay, schedule_ok=True)
    acc_dtype = _check.dtype_or_none(fn, "accumulator_dtype", accumulator_dtype)
    spec = HyperparamSpec(fn, dict(decay=decay), rates=("decay",))

    def copy(p: Any) -> jax.Array:
        dtype = acc_dtype if acc_dtype is not None else p.dtype
        if isinstance(p, jax.ShapeDtypeStruct):
            return jnp.zeros(p.shape, dtype)  # shapes only: nothing to copy
        return jnp.array(p, dtype)

    def init_fn(params: Params) -> EmaParamsState:
        return EmaParamsState(jnp.zeros([], jnp.int32), jax.tree.map(copy, params), spec.init())

    def update_fn(
        updates: Updates, state: EmaParamsState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, EmaParamsState]:
        del extra_args
        _tree.check_state(fn, state, EmaParamsState)
        _tree.check_matches(fn, updates, "state.ema", state.ema)
        _tree.require_params(fn, params)
        _tree.check_matches(fn, updates, "params", params)
        step = _tree.safe_increment(state.step)
        complement = state.hparams.complement["decay"]
        weight = _debiased_weight(complement, step) if debias else complement

        def leaf(p: jax.Array, u: jax.Array, e: jax.Array) -> tuple[jax.Array]:
            wide = _tree.compute_dtype(p.dtype, u.dtype)
            new_p = (p.astype(wide) + u.astype(wide)).astype(p.dtype)
            pc, ec, w = _tree.upcast(new_p, e, weight)
            return ((ec + w * (pc - ec)).astype(e.dtype),)

        (new_ema,) = _tree.map_leaves(leaf, 1, params, updates, state.ema)
        return updates, EmaParamsState(step, new_ema, spec.advance(state.hparams, step))

    return GradientTransformationExtraArgs(init_fn, update_fn)


# ---------------------------------------------------------------------------------------------
# The protocol


def _find(tree: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], Any]]:
    """Every averaging state inside ``tree`` (not ``tree`` itself), nested ones included."""
    out = []
    flat = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: x is not tree and _is_averaging(x)
    )[0]
    for sub, node in flat:
        if node is not tree and _is_averaging(node):
            out.append(((*path, *sub), node))
            out.extend(_find(node, (*path, *sub)))
    return out


def _fill(answer: Any, params: Params) -> Any:
    return jax.tree.map(lambda a, p: p if _is_masked(a) else a, answer, params, is_leaf=_is_masked)


def eval_params(state: OptState, params: Params) -> Params:
    """The parameters to evaluate with: averaged ones where the optimizer keeps them.

    Finds every state in ``state`` that implements the protocol of this
    module (:func:`ema_params`, :func:`lookahead`; any depth, inside chains,
    named chains, masks, parameter groups and :func:`inject_hyperparams`) and
    returns its parameters: the moving average, Lookahead's slow weights.
    Leaves no such state covers, or all of them when there is none, are
    ``params`` unchanged. Works under ``jit``.

    Args:
      state: an optimizer state.
      params: the parameters being trained (a :class:`LookaheadParams` for
        Lookahead), as passed to ``update``.

    Returns:
      A tree to evaluate the model with, in the dtypes of ``params``.

    Raises:
      ValueError: if two averaging states would both decide a parameter
        (naming both state paths), or a state does not match ``params``.
      TypeError: if a Lookahead state is given other parameters than a
        LookaheadParams.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.named_chain(("sgd", gc.sgd(0.5)), ("avg", gc.ema_params(0.9)))
      >>> params = {"w": jnp.array([1.0])}
      >>> state = tx.init(params)
      >>> float(gc.eval_params(state, params)["w"][0])  # before training: the params
      1.0
      >>> float(gc.eval_params(gc.sgd(0.5).init(params), params)["w"][0])  # nothing averaged
      1.0
    """
    found = ([((), state)] if _is_averaging(state) else []) + _find(state)
    if not found:
        return params
    answers: list[tuple[str, Any]] = []
    failures: list[tuple[str, Exception]] = []
    for path, node in found:
        who = f"the {type(node).__name__} at state{_tree.keystr(path) if path else ''}"
        try:
            answers.append((who, node.eval_params(params)))
        except (TypeError, ValueError) as err:
            failures.append((who, err))
    if len(found) == 1:
        if failures:
            who, err = failures[0]
            reason = str(err).removeprefix("eval_params: ")
            raise type(err)(f"eval_params: {who}: {reason}") from err
        answer = answers[0][1]
        has_holes = any(map(_is_masked, jax.tree.leaves(answer, is_leaf=_is_masked)))
        return _fill(answer, params) if has_holes else answer
    everyone = ", ".join(who for who, _ in answers + failures)
    if failures:
        who, err = failures[0]
        raise ValueError(
            f"eval_params: found {len(found)} states that define evaluation parameters "
            f"({everyone}), and they cannot be combined: {who} does not fit `params` "
            f"({str(err).removeprefix('eval_params: ')}). Keep one averaging transform per "
            f"parameter, or call eval_params on the part of the state you mean."
        ) from err
    return _merge(answers, params, everyone)


def _merge(answers: list[tuple[str, Any]], params: Params, everyone: str) -> Params:
    """Answers of several states merged leaf by leaf; an error where two decide one leaf."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    merged = [leaf for _, leaf in flat]
    owner: list[str | None] = [None] * len(flat)
    for who, answer in answers:
        leaves, answer_def = jax.tree.flatten(answer, is_leaf=_is_masked)
        if answer_def != treedef:
            raise ValueError(
                f"eval_params: found {len(answers)} states that define evaluation parameters "
                f"({everyone}), and they cannot be combined: {who} answers with a tree of "
                f"another structure than `params`. Keep one averaging transform per "
                f"parameter, or call eval_params on the part of the state you mean."
            )
        for i, leaf in enumerate(leaves):
            if _is_masked(leaf):
                continue
            if owner[i] is not None:
                raise ValueError(
                    f"eval_params: two states define the evaluation value of "
                    f"params{_tree.keystr(flat[i][0])}: {owner[i]} and {who}. Keep one "
                    f"averaging transform per parameter (or mask them to disjoint parameters)."
                )
            owner[i], merged[i] = who, leaf
    return treedef.unflatten(merged)
