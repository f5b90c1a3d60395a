"""Bad input fails loudly, naming the transform, the argument or tree path, and the value.

The rule: hyperparameters are checked when a transformation is built; trees,
shapes and states while its update is traced; nothing is broadcast or
corrupted silently, and each message says what to do. The tree and state
checks run over every case of ``tests/registry.py``; the hyperparameter checks
over ``HYPERPARAMETERS``, a table of every numeric argument of every public
factory (a test keeps it complete). Schedules are covered in depth by
``tests/test_schedules.py``; here one test per kind of mistake.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradchain as gc
from tests import (
    test_cautious_mars_adam_mini,
    test_contrib_moments,
    test_factored,
    test_galore,
    test_kron,
    test_lbfgs,
    test_linesearch,
    test_lr_free,
    test_muon,
    test_plateau,
    test_privacy,
    test_sam,
    test_schedule_free,
    test_scion,
    test_shampoo,
    test_soap,
    test_sophia,
    test_trust,
    test_value_based,
)
from tests.ranges import (
    AT_LEAST_ONE,
    BAD_NUMBERS,
    BAD_TYPES,
    FINITE,
    NON_NEGATIVE,
    POSITIVE,
    RATE,
    UNIT,
    VALID,
)
from tests.registry import CASES, Case, on_plain_params

PARAMS = {
    "bias": jnp.zeros(2),
    "layers": [jnp.ones((2, 2)), jnp.ones(4)],
    "w": jnp.ones(3),
}
GRADS = jax.tree.map(lambda p: jnp.full_like(p, 0.5), PARAMS)

# An error message begins with the public transform (or function) that raised it.
_PUBLIC = sorted((n for n in gc.__all__ if n[0].islower()), key=len, reverse=True)
REPORTER = rf"^(?:{'|'.join(_PUBLIC)})(?: \([^)]*\))?"
FOREIGN_STATE_HINT = r"Pass the state (?:from|returned by) this .*init"


def _key(case: Case) -> str:
    return case.key


def _state(tx: Any) -> Any:
    """What ``tx.init(PARAMS)`` returns, as ShapeDtypeStructs: nothing is computed."""
    return jax.eval_shape(tx.init, PARAMS)


def _update(tx: Any, updates: Any, state: Any, params: Any = PARAMS) -> Any:
    """Traces ``tx.update`` without running it: the checks run while tracing, nothing compiles."""
    return jax.eval_shape(tx.update, updates, state, params)


STATES = {case.key: _state(case.build()) for case in CASES}


def _holds_per_parameter_state(case: Case) -> bool:
    return any(len(x.shape) > 0 for x in jax.tree.leaves(STATES[case.key]))


# Transforms whose update reads `params` and compares them with the updates.
_READS_PARAMS = frozenset(
    {
        "add_decayed_weights",
        "add_l1_penalty",
        "adamw",
        "adaptive_grad_clip",
        "freeze",
        "nadamw",
        "masked",
        "stateless_with_tree_map",
        # tests/test_trust.py: layer-wise scalings, and zero_nans (a bool per leaf)
        "fromage",
        "keep_params_nonnegative",
        "scale_by_param_block_norm",
        "scale_by_param_block_rms",
        "scale_by_trust_ratio",
        "zero_nans",
        # tests/test_sophia.py: the estimate is taken at the params
        "hutchinson_estimator_diag_hessian",
        "sam",  # tests/test_sam.py: the opaque mode moves the params
    }
)
# Cases with something to compare the updates with: a per-parameter state, or the params.
CHECKED = [c for c in CASES if _holds_per_parameter_state(c) or c.name in _READS_PARAMS]
# The others hold only scalars (a step, hyperparameters): apply_updates catches their mistakes.
UNCHECKED = [c for c in CASES if c not in CHECKED]

STRUCTURE_CASES: dict[str, tuple[Callable[[Any], Any], str]] = {
    "extra_key": (lambda g: {**g, "z": jnp.ones(1)}, "['z']"),
    "missing_key": (lambda g: {k: v for k, v in g.items() if k != "w"}, "['w']"),
    "shorter_list": (lambda g: {**g, "layers": g["layers"][:1]}, "['layers'][1]"),
    "tuple_for_list": (lambda g: {**g, "layers": tuple(g["layers"])}, "['layers']"),
    "none_for_array": (lambda g: {**g, "w": None}, "['w']"),
}
# Shapes of the update at ['w'], whose parameter has shape (3,); the first two broadcast.
SHAPE_CASES = {"column": (3, 1), "scalar": (), "other_length": (4,)}


def _with_w_shape(tree: Any, shape: tuple[int, ...]) -> Any:
    return {**tree, "w": jnp.full(shape, 0.5)}


# 1. Updates whose tree structure differs from the state's.


@pytest.mark.parametrize("bad", STRUCTURE_CASES.values(), ids=STRUCTURE_CASES.keys())
@pytest.mark.parametrize("case", CHECKED, ids=_key)
def test_updates_of_another_structure_raise_naming_the_transform_and_first_differing_path(
    case: Case, bad: tuple[Callable[[Any], Any], str]
) -> None:
    make_updates, path = bad
    match = rf"{REPORTER}: the trees .* differ in structure at {re.escape(path)}: .*Pass trees"
    with pytest.raises(ValueError, match=match):
        _update(case.build(), make_updates(GRADS), STATES[case.key])


@pytest.mark.parametrize("bad", STRUCTURE_CASES.values(), ids=STRUCTURE_CASES.keys())
@pytest.mark.parametrize("case", UNCHECKED, ids=_key)
def test_transforms_without_per_parameter_state_leave_structure_errors_to_apply_updates(
    case: Case, bad: tuple[Callable[[Any], Any], str]
) -> None:
    make_updates, path = bad
    state = STATES[case.key]
    # Nothing to compare the updates with: every leaf of the state is a scalar.
    assert all(x.shape == () for x in jax.tree.leaves(state))
    updates, _ = _update(case.build(), make_updates(GRADS), state)
    with pytest.raises(ValueError, match=rf"^apply_updates: .* at {re.escape(path)}: "):
        jax.eval_shape(gc.apply_updates, PARAMS, updates)


def test_structure_errors_are_raised_while_tracing_under_jit() -> None:
    tx = gc.adam(0.1)
    state = tx.init(PARAMS)
    with pytest.raises(ValueError, match=r"^scale_by_adam: .* differ in structure at \['w'\]"):
        jax.jit(tx.update)({**GRADS, "w": None}, state)


def test_missing_key_message_says_which_side_lacks_it() -> None:
    tx = gc.sgd(0.1, momentum=0.9)
    state = tx.init(PARAMS)
    with pytest.raises(ValueError) as info:
        tx.update(STRUCTURE_CASES["missing_key"][0](GRADS), state)
    assert str(info.value).startswith(
        "trace: the trees `updates` and `state.trace` differ in structure at ['w']: "
        "`updates` has no entry (in a dict with keys ['bias', 'layers']) there, "
        "`state.trace` has array float32[3]."
    )


# 2. Same structure, another leaf shape: never broadcast.


@pytest.mark.parametrize("shape", SHAPE_CASES.values(), ids=SHAPE_CASES.keys())
@pytest.mark.parametrize("case", CHECKED, ids=_key)
def test_updates_of_another_shape_raise_with_path_and_both_shapes_even_where_jax_broadcasts(
    case: Case, shape: tuple[int, ...]
) -> None:
    match = rf"{REPORTER}: .*disagree in shape at \['w'\]: {re.escape(str(shape))} against \(3,\)"
    with jax.numpy_rank_promotion("allow"), pytest.raises(ValueError, match=match):
        _update(case.build(), _with_w_shape(GRADS, shape), STATES[case.key])


@pytest.mark.parametrize("shape", SHAPE_CASES.values(), ids=SHAPE_CASES.keys())
@pytest.mark.parametrize("case", UNCHECKED, ids=_key)
def test_transforms_without_per_parameter_state_leave_shape_errors_to_apply_updates(
    case: Case, shape: tuple[int, ...]
) -> None:
    with jax.numpy_rank_promotion("allow"):
        updates, _ = _update(case.build(), _with_w_shape(GRADS, shape), STATES[case.key])
        match = rf"^apply_updates: .* at \['w'\]: \(3,\) against {re.escape(str(shape))}"
        with pytest.raises(ValueError, match=match):
            jax.eval_shape(gc.apply_updates, PARAMS, updates)


def test_optax_broadcasts_a_3_state_against_3x1_updates_where_gradchain_raises() -> None:
    with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
        ref = optax.adam(0.1)
        updates, _ = jax.eval_shape(ref.update, jnp.ones((3, 1)), ref.init(jnp.ones(3)))
        assert updates.shape == (3, 3)  # silently: nine updates for three parameters
        new_params = jax.eval_shape(optax.apply_updates, jnp.ones(3), jnp.ones((3, 1)))
        assert new_params.shape == (3, 3)

        tx = gc.adam(0.1)
        with pytest.raises(ValueError, match=r"^scale_by_adam: .*<root>: \(3, 1\) against \(3,\)"):
            tx.update(jnp.ones((3, 1)), tx.init(jnp.ones(3)))
        with pytest.raises(ValueError, match=r"^apply_updates: .*<root>: \(3,\) against \(3, 1\)"):
            gc.apply_updates(jnp.ones(3), jnp.ones((3, 1)))


# 3. Transforms that read the parameters, called without them.

_MASK_FN = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)  # noqa: E731
_TREE_MASK = {"bias": False, "layers": True, "w": True}
_NO_PARAMS = r"\)?: update needs the current parameters; call `update\(updates, state, params\)`"
_NO_VALUE = r"\)?: update needs `value=`, the objective"
NEEDS_PARAMS: dict[str, tuple[Callable[[], Any], str]] = {
    "add_decayed_weights": (lambda: gc.add_decayed_weights(1e-2), "add_decayed_weights"),
    "add_decayed_weights_tree_mask": (
        lambda: gc.add_decayed_weights(1e-2, mask=_TREE_MASK),
        "add_decayed_weights",
    ),
    "add_decayed_weights_mask_fn": (
        lambda: gc.add_decayed_weights(1e-2, mask=_MASK_FN),
        r"masked \(with a mask function",
    ),
    "add_l1_penalty": (lambda: gc.add_l1_penalty(1e-3), "add_l1_penalty"),
    "add_l1_penalty_mask_fn": (
        lambda: gc.add_l1_penalty(1e-3, mask=_MASK_FN),
        r"masked \(with a mask function",
    ),
    "adamw": (lambda: gc.adamw(0.1), "add_decayed_weights"),
    "adamw_mask_fn": (lambda: gc.adamw(0.1, mask=_MASK_FN), r"masked \(with a mask function"),
    "nadamw": (lambda: gc.nadamw(0.1), "add_decayed_weights"),
    "masked_mask_fn": (
        lambda: gc.masked(gc.scale(2.0), _MASK_FN),
        r"masked \(with a mask function",
    ),
    "inject_hyperparams_adamw": (
        lambda: gc.inject_hyperparams(gc.adamw)(learning_rate=0.1),
        "add_decayed_weights",
    ),
    "named_chain": (
        lambda: gc.named_chain(("clip", gc.clip(1.0)), ("l1", gc.add_l1_penalty(1e-3))),
        "add_l1_penalty",
    ),
}


@pytest.mark.parametrize("entry", NEEDS_PARAMS.values(), ids=NEEDS_PARAMS.keys())
def test_transforms_that_read_params_say_so_when_called_without_them(
    entry: tuple[Callable[[], Any], str],
) -> None:
    build, reporter = entry
    tx = build()
    with pytest.raises(ValueError, match=rf"^{reporter}{_NO_PARAMS}"):
        _update(tx, GRADS, _state(tx), None)


def test_a_missing_params_error_is_raised_eagerly_and_under_jit() -> None:
    tx = gc.add_decayed_weights(1e-2)
    state = tx.init(PARAMS)
    for update in (tx.update, jax.jit(tx.update)):
        with pytest.raises(ValueError, match=rf"^add_decayed_weights{_NO_PARAMS}"):
            update(GRADS, state)


@pytest.mark.parametrize("case", CASES, ids=_key)
def test_every_transform_without_params_either_works_or_says_what_it_needs(case: Case) -> None:
    try:
        _update(case.build(), GRADS, STATES[case.key], None)
    except ValueError as err:
        assert re.search(rf"{REPORTER}(?:{_NO_PARAMS}|{_NO_VALUE})", str(err)), str(err)


# 4. A state from another transformation.


def _foreign_state(case: Case) -> Any:
    """The state of another transformation, of another structure than the case's own."""
    own = jax.tree.structure(STATES[case.key])
    for other in (gc.scale_by_rss(), gc.trace(0.5), gc.chain(gc.identity(), gc.clip(1.0))):
        state = _state(other)
        if jax.tree.structure(state) != own:
            return state
    raise AssertionError(f"no foreign state for {case.key}")


@pytest.mark.parametrize("case", CASES, ids=_key)
def test_a_state_of_another_transformation_raises_asking_for_the_own_state(case: Case) -> None:
    with pytest.raises(TypeError, match=rf"{REPORTER}: .*{FOREIGN_STATE_HINT}"):
        _update(case.build(), GRADS, _foreign_state(case))


_ALIASES = ("sgd", "adam", "adamw", "nadam", "nadamw", "rmsprop", "adagrad")
_ALIAS_CASES = [c for c in CASES if c.name in _ALIASES]
# Pairs whose states differ; adam and nadam (adamw and nadamw) share one kind of state.
ALIAS_PAIRS = [
    (mine, theirs)
    for mine in _ALIAS_CASES
    for theirs in _ALIAS_CASES
    if jax.tree.structure(STATES[mine.key]) != jax.tree.structure(STATES[theirs.key])
]


@pytest.mark.parametrize(
    ("mine", "theirs"), ALIAS_PAIRS, ids=[f"{t.key}-to-{m.key}" for m, t in ALIAS_PAIRS]
)
def test_an_optimizer_refuses_the_state_of_another_optimizer(mine: Case, theirs: Case) -> None:
    with pytest.raises(TypeError, match=rf"{REPORTER}: .*{FOREIGN_STATE_HINT}"):
        _update(mine.build(), GRADS, STATES[theirs.key])


def test_a_state_with_other_hyperparameters_raises_naming_the_missing_one() -> None:
    other = _state(gc.chain(gc.identity(), gc.scale(-0.1)))  # sgd's state types, other names
    with pytest.raises(
        KeyError,
        match=r"this state has no hyperparameter 'learning_rate', only \['step_size'\]: it comes "
        r"from another transformation\. Pass the state from this transformation's own init",
    ):
        _update(gc.sgd(0.1), GRADS, other)


def test_adams_state_passed_to_sgd_names_the_member_and_the_state_type() -> None:
    with pytest.raises(
        TypeError,
        match=r"^identity: update received a state of type ScaleByAdamState, .*EmptyState\. "
        r"Pass the state returned by this same transformation's init",
    ):
        gc.sgd(0.1).update(GRADS, gc.adam(0.1).init(PARAMS))  # eagerly, as a user would


def test_a_chain_state_of_the_wrong_length_names_the_chain_and_both_lengths() -> None:
    with pytest.raises(
        TypeError,
        match=r"^chain: this chain of 2 transformations needs a tuple of 2 states; got a tuple "
        r"of 3\. Pass the state from this chain's own init",
    ):
        _update(gc.adam(0.1), GRADS, _state(gc.adamw(0.1)))


def test_a_scheduled_state_passed_to_a_constant_optimizer_is_refused() -> None:
    scheduled = _state(gc.adamw(gc.linear_schedule(0.1, 0.0, 10)))
    with pytest.raises(
        TypeError,
        match=r"^scale_by_learning_rate: .*\[\] constant and \['learning_rate'\] scheduled, but "
        r"this transformation's are \['learning_rate'\] constant and \[\] scheduled",
    ):
        _update(gc.nadamw(0.1), GRADS, scheduled)


def test_a_named_chain_refuses_a_state_with_other_names() -> None:
    tx = gc.named_chain(("clip", gc.clip(1.0)), ("lr", gc.scale(-0.1)))
    other = _state(gc.named_chain(("clip", gc.clip(1.0)), ("sgd", gc.scale(-0.1))))
    with pytest.raises(TypeError, match=r"^named_chain: .*keys \['clip', 'lr'\]; got \['clip'"):
        _update(tx, GRADS, other)


def test_inject_hyperparams_refuses_another_optimizers_inner_state() -> None:
    tx = gc.inject_hyperparams(gc.adam)(learning_rate=0.1)
    state = _state(tx)._replace(inner_state=_state(gc.adamw(0.1)))
    match = rf"^inject_hyperparams: .* of 3 transforms, this .* has 2\. {FOREIGN_STATE_HINT}"
    with pytest.raises(TypeError, match=match):
        _update(tx, GRADS, state)


# 5. Hyperparameters at construction.

_LR = {"learning_rate": 0.1}
# factory name -> (builder, the arguments it needs)
FACTORIES: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {
    "scale": (gc.scale, {"step_size": 1.0}),
    "scale_by_learning_rate": (gc.scale_by_learning_rate, _LR),
    "clip": (gc.clip, {"max_delta": 1.0}),
    "clip_by_global_norm": (gc.clip_by_global_norm, {"max_norm": 1.0}),
    "clip_by_block_rms": (gc.clip_by_block_rms, {"threshold": 1.0}),
    "adaptive_grad_clip": (gc.adaptive_grad_clip, {"clipping": 0.1}),
    "trace": (gc.trace, {"decay": 0.9}),
    "ema": (gc.ema, {"decay": 0.9}),
    "scale_by_adam": (gc.scale_by_adam, {}),
    "scale_by_rms": (gc.scale_by_rms, {}),
    "scale_by_stddev": (gc.scale_by_stddev, {}),
    "scale_by_rss": (gc.scale_by_rss, {}),
    "add_decayed_weights": (gc.add_decayed_weights, {}),
    "add_l1_penalty": (gc.add_l1_penalty, {}),
    "sgd": (gc.sgd, _LR),
    "adam": (gc.adam, _LR),
    "adamw": (gc.adamw, _LR),
    "nadam": (gc.nadam, _LR),
    "nadamw": (gc.nadamw, _LR),
    "rmsprop": (gc.rmsprop, _LR),
    "adagrad": (gc.adagrad, _LR),
    **{
        name: (getattr(gc, name), {})
        for name in (
            "scale_by_adamax",
            "scale_by_amsgrad",
            "scale_by_yogi",
            "scale_by_belief",
            "scale_by_radam",
            "scale_by_novograd",
            "scale_by_adadelta",
            "scale_by_adan",
            "scale_by_lion",
            "adadelta",
        )
    },
    "scale_by_rprop": (gc.scale_by_rprop, _LR),
    **{
        name: (getattr(gc, name), _LR)
        for name in (
            "adamax",
            "adamaxw",
            "amsgrad",
            "yogi",
            "adabelief",
            "radam",
            "novograd",
            "adan",
            "lion",
            "sign_sgd",
            "rprop",
        )
    },
    "inject_hyperparams(adam)": (gc.inject_hyperparams(gc.adam), _LR),
    "scale_by_schedule": (gc.scale_by_schedule, {}),
    "lookahead": (
        lambda **kw: on_plain_params(gc.lookahead(**kw)),
        {"fast_optimizer": gc.sgd(0.1), "sync_period": 2, "slow_step_size": 0.5},
    ),
    "ema_params": (gc.ema_params, {"decay": 0.9}),
    "measure_with_ema": (
        lambda **kw: gc.monitor({"m": gc.measure_with_ema(gc.global_norm, **kw)}),
        {"decay": 0.9},
    ),
    "skip_spikes": (gc.skip_spikes, {"inner": gc.sgd(0.1)}),
}
_ADAM = [("learning_rate", NON_NEGATIVE, "scale_by_learning_rate")] + [
    (arg, kind, "scale_by_adam")
    for arg, kind in (("b1", RATE), ("b2", RATE), ("eps", NON_NEGATIVE), ("eps_root", NON_NEGATIVE))
]
_DECAY = [("weight_decay", NON_NEGATIVE, "add_decayed_weights")]
_RMS = [
    (arg, kind, fn)
    for fn in ("scale_by_rms", "scale_by_stddev")
    for arg, kind in (("decay", RATE), ("eps", NON_NEGATIVE), ("initial_scale", NON_NEGATIVE))
]
_BETAS = (("b1", RATE), ("b2", RATE), ("eps", NON_NEGATIVE))
_ROOT = (("eps_root", NON_NEGATIVE),)
# transform -> its numeric arguments (each alias passes them on, the transform checks them)
_ADAPTIVE: dict[str, tuple[tuple[str, str], ...]] = {
    "scale_by_adamax": _BETAS,
    "scale_by_amsgrad": (*_BETAS, *_ROOT),
    "scale_by_yogi": (
        *_BETAS,
        *_ROOT,
        ("initial_accumulator_value", NON_NEGATIVE),
        ("initial_mu", FINITE),
    ),
    "scale_by_belief": (*_BETAS, *_ROOT),
    "scale_by_radam": (*_BETAS, *_ROOT, ("threshold", FINITE)),
    "scale_by_novograd": (*_BETAS, *_ROOT, ("weight_decay", NON_NEGATIVE)),
    "scale_by_adadelta": (("rho", RATE), ("eps", NON_NEGATIVE)),
    "scale_by_adan": (*_BETAS, ("b3", RATE), *_ROOT),
    "scale_by_lion": (("b1", RATE), ("b2", RATE), ("smooth_beta", POSITIVE)),
    "scale_by_rprop": (
        ("learning_rate", POSITIVE),
        ("eta_minus", RATE),
        ("eta_plus", AT_LEAST_ONE),
        ("min_step_size", NON_NEGATIVE),
        ("max_step_size", POSITIVE),
    ),
}
# transform -> its aliases, which pass on its numeric arguments (but those in _ALIAS_SKIPS)
_ADAPTIVE_ALIASES: dict[str, tuple[str, ...]] = {
    "scale_by_adamax": ("adamax", "adamaxw"),
    "scale_by_amsgrad": ("amsgrad",),
    "scale_by_yogi": ("yogi",),
    "scale_by_belief": ("adabelief",),
    "scale_by_radam": ("radam",),
    "scale_by_novograd": ("novograd",),
    "scale_by_adadelta": ("adadelta",),
    "scale_by_adan": ("adan",),
    "scale_by_lion": ("lion",),
    "scale_by_rprop": ("rprop",),
}
_ALIAS_SKIPS = {"yogi": ("eps_root",), "lion": ("smooth_beta",)}  # as in Optax's aliases
# (factory, argument, valid range, the function the message names)
HYPERPARAMETERS: list[tuple[str, str, str, str]] = [
    ("scale", "step_size", FINITE, "scale"),
    ("scale_by_learning_rate", "learning_rate", NON_NEGATIVE, "scale_by_learning_rate"),
    ("clip", "max_delta", NON_NEGATIVE, "clip"),
    ("clip_by_global_norm", "max_norm", POSITIVE, "clip_by_global_norm"),
    ("clip_by_block_rms", "threshold", POSITIVE, "clip_by_block_rms"),
    ("adaptive_grad_clip", "clipping", POSITIVE, "adaptive_grad_clip"),
    ("adaptive_grad_clip", "eps", NON_NEGATIVE, "adaptive_grad_clip"),
    ("trace", "decay", RATE, "trace"),
    ("ema", "decay", RATE, "ema"),
    ("lookahead", "slow_step_size", UNIT, "lookahead"),
    ("ema_params", "decay", RATE, "ema_params"),
    ("measure_with_ema", "decay", RATE, "measure_with_ema"),
    *[("scale_by_adam", arg, kind, fn) for arg, kind, fn in _ADAM[1:]],
    *[(fn, arg, kind, fn) for arg, kind, fn in _RMS],
    ("scale_by_rss", "initial_accumulator_value", NON_NEGATIVE, "scale_by_rss"),
    ("scale_by_rss", "eps", NON_NEGATIVE, "scale_by_rss"),
    ("add_decayed_weights", "weight_decay", NON_NEGATIVE, "add_decayed_weights"),
    ("add_l1_penalty", "l1", NON_NEGATIVE, "add_l1_penalty"),
    ("sgd", "learning_rate", NON_NEGATIVE, "scale_by_learning_rate"),
    ("sgd", "momentum", RATE, "sgd"),
    *[(alias, arg, kind, fn) for alias in ("adam", "nadam") for arg, kind, fn in _ADAM],
    *[(alias, arg, kind, fn) for alias in ("adamw", "nadamw") for arg, kind, fn in _ADAM + _DECAY],
    ("rmsprop", "learning_rate", NON_NEGATIVE, "scale_by_learning_rate"),
    *[("rmsprop", arg, kind, fn) for arg, kind, fn in _RMS if fn == "scale_by_rms"],
    ("rmsprop", "momentum", RATE, "rmsprop"),
    ("adagrad", "learning_rate", NON_NEGATIVE, "scale_by_learning_rate"),
    ("adagrad", "initial_accumulator_value", NON_NEGATIVE, "scale_by_rss"),
    ("adagrad", "eps", NON_NEGATIVE, "scale_by_rss"),
    # the house rule's weight decay on the everyday optimizers, and the adaptive family
    *[(alias, *_DECAY[0]) for alias in ("sgd", "adam", "nadam", "rmsprop", "adagrad")],
    *[
        (factory, arg, kind, fn)
        for fn, args in _ADAPTIVE.items()
        for factory in (fn, *_ADAPTIVE_ALIASES[fn])
        for arg, kind in args
        if arg not in _ALIAS_SKIPS.get(factory, ())
    ],
    *[
        (alias, "learning_rate", NON_NEGATIVE, "scale_by_learning_rate")
        for aliases in _ADAPTIVE_ALIASES.values()
        for alias in aliases
        if alias != "rprop"
    ],
    *[
        (alias, *_DECAY[0])
        for aliases in _ADAPTIVE_ALIASES.values()
        for alias in aliases
        if alias != "novograd"
    ],
    ("sign_sgd", "learning_rate", NON_NEGATIVE, "scale_by_learning_rate"),
    ("sign_sgd", *_DECAY[0]),
    *[("inject_hyperparams(adam)", arg, kind, fn) for arg, kind, fn in _ADAM[:2]],
    ("skip_spikes", "threshold", POSITIVE, "skip_spikes"),
    ("skip_spikes", "decay", RATE, "skip_spikes"),
]


# Tables contributed by the test modules of families of transforms: each module
# defines HYPERPARAMETERS (rows as above) and FACTORIES (name -> builder, required
# arguments). Add a module here when it adds public factories with numeric arguments.
CONTRIBUTING_MODULES: tuple[Any, ...] = (
    test_contrib_moments,
    test_plateau,
    test_privacy,
    test_value_based,
    test_lbfgs,
    test_linesearch,
    test_trust,
    test_factored,
    test_galore,
    test_muon,
    test_sophia,
    test_sam,
    test_schedule_free,
    test_lr_free,
    test_scion,
    test_cautious_mars_adam_mini,
    test_soap,
    test_shampoo,
    test_kron,
)
for _module in CONTRIBUTING_MODULES:
    HYPERPARAMETERS += _module.HYPERPARAMETERS
    FACTORIES.update(_module.FACTORIES)


def _build(factory: str, **kwargs: Any) -> Any:
    make, required = FACTORIES[factory]
    return make(**{**required, **kwargs})


def _annotation(factory: str, arg: str) -> str:
    fn = gc.adam if factory.startswith("inject_hyperparams") else getattr(gc, factory)
    return str(inspect.signature(fn).parameters[arg].annotation)


def _bad_cases() -> list[Any]:
    out = []
    for factory, arg, kind, reporter in HYPERPARAMETERS:
        optional = "None" in _annotation(factory, arg)
        for value in BAD_NUMBERS[kind]:
            out.append(
                pytest.param(
                    factory, arg, value, ValueError, reporter, id=f"{factory}-{arg}-{value!r}"
                )
            )
        for value in BAD_TYPES:
            if value is None and optional:
                continue  # None means "none" (sgd without momentum)
            out.append(
                pytest.param(
                    factory, arg, value, TypeError, reporter, id=f"{factory}-{arg}-{value!r}"
                )
            )
    return out


@pytest.mark.parametrize(("factory", "arg", "value", "error", "reporter"), _bad_cases())
def test_bad_hyperparameters_raise_at_construction_naming_function_argument_and_value(
    factory: str, arg: str, value: Any, error: type[Exception], reporter: str
) -> None:
    match = rf"^{reporter}: `{arg}` must be .*got .*{re.escape(repr(value))}"
    with pytest.raises(error, match=match):
        _build(factory, **{arg: value})


@pytest.mark.parametrize(
    ("factory", "arg", "kind", "reporter"),
    HYPERPARAMETERS,
    ids=[f"{f}-{a}" for f, a, _, _ in HYPERPARAMETERS],
)
def test_range_errors_state_the_valid_range(
    factory: str, arg: str, kind: str, reporter: str
) -> None:
    with pytest.raises(
        ValueError, match=rf"^{reporter}: `{arg}` must be {re.escape(kind)}; got nan"
    ):
        _build(factory, **{arg: math.nan})


#: Public functions with numeric arguments that do not build a transformation, and where
#: their argument errors are tested instead.
NOT_FACTORIES = {
    "gradchain._schedules": "tests/test_schedules.py",
    "gradchain._lr_finder": "tests/test_sweeps.py",
}


def test_the_hyperparameter_table_covers_every_numeric_argument_of_every_public_factory() -> None:
    numeric = set()
    for name in gc.__all__:
        fn = getattr(gc, name)
        if not inspect.isfunction(fn) or fn.__module__ in NOT_FACTORIES:
            continue  # classes, schedules and training tools: tested where NOT_FACTORIES says
        for param in inspect.signature(fn).parameters.values():
            if re.search(r"\b(ScalarOrSchedule|float)\b", str(param.annotation)):
                numeric.add((name, param.name))
    assert numeric == {(f, a) for f, a, _, _ in HYPERPARAMETERS if f in gc.__all__}


@pytest.mark.parametrize(
    ("factory", "arg", "kind", "reporter"),
    HYPERPARAMETERS,
    ids=[f"{f}-{a}" for f, a, _, _ in HYPERPARAMETERS],
)
def test_a_schedule_is_accepted_exactly_where_the_signature_allows_one(
    factory: str, arg: str, kind: str, reporter: str
) -> None:
    schedule = gc.constant_schedule(VALID[kind])
    if "ScalarOrSchedule" in _annotation(factory, arg):
        tx = _build(factory, **{arg: schedule})
        updates, _ = _update(tx, GRADS, _state(tx))
        assert jax.tree.structure(updates) == jax.tree.structure(GRADS)
    else:
        with pytest.raises(
            TypeError, match=rf"^{reporter}: `{arg}` must be a number; got function"
        ):
            _build(factory, **{arg: schedule})


_BY_FACTORY = {f: [(a, k) for g, a, k, _ in HYPERPARAMETERS if g == f] for f, *_ in HYPERPARAMETERS}


@pytest.mark.parametrize("factory", _BY_FACTORY, ids=str)
def test_traced_hyperparameters_pass_unchecked_even_out_of_range(factory: str) -> None:
    args = _BY_FACTORY[factory]
    # Out of range, but traced: the checks cannot see the values, and let them through.
    out_of_range = [BAD_NUMBERS[kind][0] for _, kind in args]

    def first_update(*values: jax.Array) -> Any:
        tx = _build(factory, **{a: v for (a, _), v in zip(args, values, strict=True)})
        return tx.update(GRADS, tx.init(PARAMS), PARAMS)[0]

    jax.make_jaxpr(first_update)(*(jnp.float32(v) for v in out_of_range))


def test_an_optimizer_built_inside_jit_with_a_traced_learning_rate_works() -> None:
    @jax.jit
    def first_update(learning_rate: jax.Array, b1: jax.Array) -> Any:
        tx = gc.adam(learning_rate, b1=b1)
        return tx.update(GRADS, tx.init(PARAMS))[0]

    updates = first_update(jnp.float32(0.25), jnp.float32(0.5))
    for leaf in jax.tree.leaves(updates):  # Adam's first step is -lr * sign(g)
        np.testing.assert_allclose(leaf, -0.25, rtol=1e-5)


def test_a_traced_hyperparameter_that_is_not_a_scalar_is_refused() -> None:
    with pytest.raises(
        ValueError,
        match=r"^scale_by_adam: `b1` must be a scalar; got a traced array of shape \(2,\)",
    ):
        jax.jit(lambda b1: gc.adam(0.1, b1=b1).init(PARAMS))(jnp.full(2, 0.9))


@pytest.mark.parametrize(
    ("factory", "arg", "value", "error", "match"),
    [
        ("scale_by_adam", "mu_dtype", jnp.int32, ValueError, "must be a floating dtype; got int32"),
        (
            "scale_by_adam",
            "nu_dtype",
            "float99",
            TypeError,
            "must be a dtype or None; got 'float99'",
        ),
        ("trace", "accumulator_dtype", jnp.bool_, ValueError, "must be a floating dtype; got bool"),
        ("ema", "accumulator_dtype", [1], TypeError, r"must be a dtype or None; got \[1\]"),
        (
            "scale_by_schedule",
            "step_size_fn",
            0.1,
            TypeError,
            r"must be a function of the step; got float 0\.1\. For a fixed factor use scale\(\)",
        ),
    ],
)
def test_bad_dtypes_and_schedules_raise_naming_function_argument_and_value(
    factory: str, arg: str, value: Any, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=rf"^{factory}: `{arg}` {match}"):
        _build(factory, **{arg: value})


def test_inject_hyperparams_checks_values_when_called_not_at_init() -> None:
    with pytest.raises(ValueError, match=r"^scale_by_adam: `b2` must be in \[0, 1\); got 1\.0"):
        gc.inject_hyperparams(gc.adam)(learning_rate=0.1, b2=1.0)
    with pytest.raises(TypeError, match=r"^inject_hyperparams: `hyperparam_dtype` .*'float99'"):
        gc.inject_hyperparams(gc.adam, hyperparam_dtype="float99")


# 6. Schedules: one representative per kind of mistake (tests/test_schedules.py has the rest).


def test_unsorted_schedule_boundaries_raise_at_construction() -> None:
    # join_schedules: the order of the boundaries is the order of the schedules, so it must
    # increase. (piecewise_constant_schedule takes a dict, whose order means nothing.)
    constant = gc.constant_schedule(1.0)
    with pytest.raises(ValueError, match=r"^join_schedules: `boundaries` .*increasing.*\[10, 5\]"):
        gc.join_schedules([constant, constant, constant], boundaries=[10, 5])


def test_boundaries_that_do_not_match_the_schedules_raise_at_construction() -> None:
    constant = gc.constant_schedule(1.0)
    with pytest.raises(
        ValueError, match=r"^join_schedules: `boundaries` must hold .*= 1 .*\[5, 10\]"
    ):
        gc.join_schedules([constant, constant], boundaries=[5, 10])


def test_non_positive_transition_steps_raise_at_construction() -> None:
    with pytest.raises(
        ValueError, match=r"^linear_schedule: `transition_steps` must be > 0; got 0"
    ):
        gc.linear_schedule(1.0, 0.0, transition_steps=0)


# 7. chain, named_chain and masked given something that is not a transformation.

NOT_TRANSFORMATIONS: dict[str, tuple[Callable[[], Any], type[Exception], str]] = {
    "chain_uncalled_factory": (
        lambda: gc.chain(gc.scale_by_adam),
        TypeError,
        r"^chain: argument 0 is the function `scale_by_adam`, not a gradient transformation.*"
        r"without calling it, e\.g\. `gc\.scale_by_adam` instead of `gc\.scale_by_adam\(\)`",
    ),
    "chain_uncalled_alias": (
        lambda: gc.chain(gc.clip(1.0), gc.sgd),
        TypeError,
        r"^chain: argument 1 is the function `sgd`.*`gc\.sgd\(\)`",
    ),
    "chain_list": (
        lambda: gc.chain([gc.clip(1.0)]),
        TypeError,
        r"^chain: argument 0 is a list \[GradientTransformation",
    ),
    "named_chain_uncalled_factory": (
        lambda: gc.named_chain(("clip", gc.clip(1.0)), ("adam", gc.scale_by_adam)),
        TypeError,
        r"^named_chain: argument 1 is the function `scale_by_adam`.*`gc\.scale_by_adam\(\)`",
    ),
    "named_chain_not_a_pair": (
        lambda: gc.named_chain(gc.clip(1.0)),
        TypeError,
        r"^named_chain: argument 0 must be a \(name, transformation\) pair; got GradientTrans",
    ),
    "named_chain_duplicate_names": (
        lambda: gc.named_chain(("a", gc.clip(1.0)), ("b", gc.identity()), ("a", gc.scale(2.0))),
        ValueError,
        r"^named_chain: names must be unique; \['a'\] appear more than once",
    ),
    "masked_uncalled_factory": (
        lambda: gc.masked(gc.scale_by_adam, _TREE_MASK),
        TypeError,
        r"^masked: `inner` is the function `scale_by_adam`.*`gc\.scale_by_adam\(\)`",
    ),
}


@pytest.mark.parametrize("entry", NOT_TRANSFORMATIONS.values(), ids=NOT_TRANSFORMATIONS.keys())
def test_combinators_refuse_what_is_not_a_transformation_at_construction(
    entry: tuple[Callable[[], Any], type[Exception], str],
) -> None:
    build, error, match = entry
    with pytest.raises(error, match=match):
        build()


# 8. set_hyperparams.


def test_set_hyperparams_with_an_unknown_name_lists_the_known_ones() -> None:
    state = gc.adam(0.1).init(PARAMS)
    with pytest.raises(
        KeyError,
        match=r"set_hyperparams: this state has no hyperparameter 'lr'; "
        r"it has \['b1', 'b2', 'eps', 'eps_root', 'learning_rate'\]",
    ):
        gc.set_hyperparams(state, lr=0.01)


def test_set_hyperparams_refuses_a_scheduled_hyperparameter() -> None:
    state = gc.adam(gc.linear_schedule(0.1, 0.0, 10)).init(PARAMS)
    with pytest.raises(ValueError, match=r"^set_hyperparams: 'learning_rate' follows a schedule"):
        gc.set_hyperparams(state, learning_rate=0.01)


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (jnp.full(2, 0.1), ValueError, r"must be a scalar; got shape \(2,\)"),
        ([0.1, 0.2], ValueError, r"must be a scalar; got shape \(2,\)"),
        (np.ones((1,)), ValueError, r"must be a scalar; got shape \(1,\)"),
        ("0.1", TypeError, r"must be a real number; got str '0\.1'"),
        (True, TypeError, r"must be a real number; got bool True"),
        (None, TypeError, r"must be a real number; got NoneType None"),
        (1j, TypeError, r"must be a real number; got complex 1j"),
        (math.nan, ValueError, r"must be finite; got nan"),
        (jnp.asarray(math.inf), ValueError, r"must be finite; got Array\(inf"),
    ],
    ids=repr,
)
def test_set_hyperparams_refuses_a_value_that_is_not_a_finite_real_scalar(
    value: Any, error: type[Exception], match: str
) -> None:
    state = gc.adam(0.1).init(PARAMS)
    with pytest.raises(error, match=rf"^set_hyperparams: 'learning_rate' {match}"):
        gc.set_hyperparams(state, learning_rate=value)


def test_set_hyperparams_refuses_a_traced_non_scalar_under_jit() -> None:
    state = gc.adam(0.1).init(PARAMS)
    with pytest.raises(ValueError, match=r"^set_hyperparams: 'b1' must be a scalar; got shape"):
        jax.jit(lambda b1: gc.set_hyperparams(state, b1=b1))(jnp.full(3, 0.5))


# 9. masked with a mask that does not match the parameters.

BAD_MASKS: dict[str, tuple[Any, str]] = {
    "missing_key": ({"bias": False, "layers": True}, "['w']"),
    "extra_key": ({**_TREE_MASK, "z": True}, "['z']"),
    "shorter_list": ({**_TREE_MASK, "layers": [True]}, "['layers'][1]"),
    "none_entry": ({**_TREE_MASK, "bias": None}, "['bias']"),
    "dict_for_array": ({**_TREE_MASK, "bias": {"x": True}}, "['bias']"),
    "list_for_dict": ([False, True, True], "<root>"),
    "mask_fn": (lambda params: {"w": True}, "['bias']"),
}


@pytest.mark.parametrize("via", ["masked", "add_decayed_weights"])
@pytest.mark.parametrize("bad", BAD_MASKS.values(), ids=BAD_MASKS.keys())
def test_a_mask_of_another_structure_raises_at_init_naming_the_path(
    bad: tuple[Any, str], via: str
) -> None:
    mask, path = bad
    tx = (
        gc.masked(gc.scale_by_adam(), mask)
        if via == "masked"
        else gc.add_decayed_weights(0.1, mask)
    )
    match = rf"^masked: the trees `mask` and `params` differ in structure at {re.escape(path)}: "
    with pytest.raises(ValueError, match=match):
        tx.init(PARAMS)


def test_a_mask_in_other_containers_with_the_same_keys_is_matched_by_key() -> None:
    # Masks match parameters by key, not container type, so that a plain-dict mask fits a
    # Linen FrozenDict or an NNX State: a tuple for a list of the same length is accepted.
    from flax.core import FrozenDict

    mask = {**_TREE_MASK, "layers": (True, False)}
    frozen = FrozenDict(PARAMS)
    for params in (PARAMS, frozen):
        tx = gc.masked(gc.set_to_zero(), mask)
        updates, _ = tx.update(params, tx.init(params), params)
        assert not jnp.any(updates["layers"][0])
        np.testing.assert_array_equal(updates["layers"][1], params["layers"][1])


@pytest.mark.parametrize("with_params", [True, False], ids=["params", "no_params"])
@pytest.mark.parametrize("bad", STRUCTURE_CASES.values(), ids=STRUCTURE_CASES.keys())
def test_masked_updates_of_another_structure_raise_naming_the_path(
    bad: tuple[Callable[[Any], Any], str], with_params: bool
) -> None:
    make_updates, path = bad
    tx = gc.masked(gc.scale_by_adam(), _TREE_MASK)
    state = _state(tx)
    # Without params the prefix mask is spread over the updates, and the inner transform reports.
    reporter = "^masked" if with_params else REPORTER
    with pytest.raises(ValueError, match=rf"{reporter}: .* at {re.escape(path)}: "):
        _update(tx, make_updates(GRADS), state, PARAMS if with_params else None)


@pytest.mark.parametrize(
    "entry", [jnp.ones(2), "yes", 1.0, 0], ids=["array", "str", "float", "int"]
)
def test_a_mask_entry_that_is_not_a_bool_raises_naming_path_and_value(entry: Any) -> None:
    tx = gc.masked(gc.scale(2.0), {**_TREE_MASK, "bias": entry})
    with pytest.raises(
        TypeError,
        match=rf"^masked: mask entry at \['bias'\] must be a Python bool; "
        rf"got {type(entry).__name__} {re.escape(repr(entry)[:20])}",
    ):
        tx.init(PARAMS)


def test_a_mask_computed_from_traced_values_is_refused_under_jit() -> None:
    tx = gc.masked(gc.scale(2.0), lambda params: jax.tree.map(lambda p: p.sum() > 0, params))
    with pytest.raises(TypeError, match=r"^masked: mask entry at \['bias'\] .*got \w*Tracer"):
        jax.jit(tx.init)(PARAMS)


# 10. apply_updates.


@pytest.mark.parametrize("bad", STRUCTURE_CASES.values(), ids=STRUCTURE_CASES.keys())
def test_apply_updates_of_another_structure_raises_naming_the_path(
    bad: tuple[Callable[[Any], Any], str],
) -> None:
    make_updates, path = bad
    where = re.escape(path)
    match = rf"^apply_updates: the trees `params` and `updates` differ in structure at {where}: "
    with pytest.raises(ValueError, match=match):
        gc.apply_updates(PARAMS, make_updates(GRADS))


@pytest.mark.parametrize("shape", SHAPE_CASES.values(), ids=SHAPE_CASES.keys())
def test_apply_updates_of_another_shape_raises_with_path_and_both_shapes(
    shape: tuple[int, ...],
) -> None:
    match = (
        rf"^apply_updates: `params` and `updates` disagree in shape at \['w'\]: \(3,\) against "
        rf"{re.escape(str(shape))}\. gradchain never broadcasts"
    )
    with jax.numpy_rank_promotion("allow"), pytest.raises(ValueError, match=match):
        gc.apply_updates(PARAMS, _with_w_shape(GRADS, shape))
