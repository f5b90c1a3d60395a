"""The catalogue of bad inputs (issue 6): each entry runs once with gradchain, once with Optax.

An entry is a bad input (or an edge case that looks like one) and a function
``run(lib)`` that feeds it to a library module, ``gradchain`` or ``optax``,
whose public names match. Each entry states gradchain's documented behaviour:

- :class:`Raises`: an error of a given type whose message matches every pattern
  (the transform, the argument or tree path, the value, what to do);
- :class:`Documented`: a sane result, described in one line and checked by a
  function of what ``run`` returned.

Entries that apply to every transform (:data:`REGISTRY_ENTRIES`) run over the
registry ``tests/registry.py`` ``CASES``; for Optax each case is rebuilt with
Optax's functions of the same names (a case that uses a name or an argument
Optax lacks counts as "not in Optax").

``tests/test_bad_inputs.py`` asserts gradchain's behaviour for every entry;
``docs/make_bad_inputs_page.py`` runs both libraries and writes
``docs/bad_inputs.md``.
"""

from __future__ import annotations

import contextlib
import math
import re
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import gradchain as gc
from tests.registry import CASES, Case

PARAMS = {"bias": jnp.zeros(2), "layers": [jnp.ones((2, 2)), jnp.ones(4)], "w": jnp.ones(3)}
GRADS = jax.tree.map(lambda p: jnp.full_like(p, 0.5), PARAMS)
INT32_MAX = int(np.iinfo(np.int32).max)

# An error message of gradchain begins with the public function that raised it.
_PUBLIC = sorted((n for n in gc.__all__ if n[0].islower()), key=len, reverse=True)
REPORTER = rf"^(?:{'|'.join(_PUBLIC)})(?: \([^)]*\))?: "


# --- Expectations and outcomes ---------------------------------------------------------------


@dataclass(frozen=True)
class Raises:
    """gradchain raises ``error`` (or a subclass) with a message matching every pattern."""

    error: type[BaseException]
    patterns: tuple[str, ...]

    def describe(self) -> str:
        return f"raises {self.error.__name__}"

    def matches(self, err: BaseException) -> bool:
        return isinstance(err, self.error) and all(
            re.search(p, str(err), re.DOTALL) for p in self.patterns
        )


def raises(error: type[BaseException], *patterns: str) -> Raises:
    """The expected error of gradchain: its type and the regexes its message must match."""
    return Raises(error, patterns)


@dataclass(frozen=True)
class Documented:
    """gradchain returns a sane result: ``text`` says which, ``check`` asserts it."""

    text: str
    check: Callable[[Any], None]

    def describe(self) -> str:
        return self.text


def documented(text: str, check: Callable[[Any], None]) -> Documented:
    """The documented behaviour of gradchain: a sentence and a check of what ``run`` returned."""
    return Documented(text, check)


Expected = Raises | Documented

CLEAR, SANE, ERROR, SILENT, ABSENT = "clear error", "sane", "other error", "silent", "not in Optax"


@dataclass(frozen=True)
class Outcome:
    """What a library did with one bad input."""

    kind: str  # CLEAR, SANE, ERROR (an exception that does not say what gradchain's does), SILENT
    text: str  # the error's type and the head of its message, or what came back


def _head(err: BaseException) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {first[:90]}"


def describe_result(result: Any) -> str:
    """A short description of what came back: shapes, dtypes and non-finite entries."""
    leaves = [x for x in jax.tree.leaves(result) if hasattr(x, "shape")]
    if not leaves:
        return "returned without error"
    bits = []
    for leaf in leaves[:3]:
        bits.append(f"{leaf.dtype}{list(leaf.shape)}")
    more = f" +{len(leaves) - 3}" if len(leaves) > 3 else ""
    nonfinite = 0
    for leaf in leaves:
        if isinstance(leaf, jax.ShapeDtypeStruct) or not jnp.issubdtype(leaf.dtype, jnp.inexact):
            continue
        nonfinite += int(np.sum(~np.isfinite(np.asarray(leaf))))
    bad = f", {nonfinite} NaN/Inf" if nonfinite else ""
    return f"returned {', '.join(bits)}{more}{bad}"


def classify(expected: Expected, run: Callable[[], Any], describe: Callable[[Any], str]) -> Outcome:
    """Runs one bad input and sorts what happened against gradchain's expectation."""
    try:
        result = run()
    except NotInOptaxError as err:
        return Outcome(ABSENT, str(err))
    except Exception as err:
        if isinstance(expected, Raises) and expected.matches(err):
            return Outcome(CLEAR, _head(err))
        return Outcome(ERROR, _head(err))
    if isinstance(expected, Documented):
        try:
            expected.check(result)
        except AssertionError as err:
            return Outcome(SILENT, f"{describe(result)} ({str(err)[:80]})")
        except Exception as err:  # the check itself could not read the result
            return Outcome(SILENT, f"{describe(result)} ({_head(err)})")
        return Outcome(SANE, describe(result))
    return Outcome(SILENT, describe(result))


@contextlib.contextmanager
def library_mode(lib: Any) -> Iterator[None]:
    """The user's defaults for both: rank promotion allowed (so broadcasting is visible).

    gradchain also runs under strict dtype promotion; Optax 0.2.8 does not trace there.
    """
    dtype_mode = "strict" if lib is gc else "standard"
    with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion(dtype_mode):
        yield


# --- Entries -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One bad input, run against a library module."""

    id: str
    category: str
    description: str
    run: Callable[[Any], Any]  # run(lib) with lib = gradchain or optax
    expected: Expected
    describe: Callable[[Any], str] = describe_result

    def outcome(self, lib: Any) -> Outcome:
        names = lib if lib is gc else optax_names()
        with library_mode(lib):
            return classify(self.expected, lambda: self.run(names), self.describe)


@dataclass(frozen=True)
class RegistryEntry:
    """One bad input run over every case of the registry."""

    id: str
    category: str
    description: str
    run: Callable[[Any, Any, Case], Any]  # run(lib, tx, case)
    expected: Callable[[Case], Expected]
    describe: Callable[[Any], str] = describe_result
    cases: Callable[[], tuple[Case, ...]] = field(default=lambda: CASES)

    # Cases where the error cannot come from gradchain, with the reason: the test expects
    # ERROR there (and fails, asking to move the case out, once the error becomes clear).
    known_unclear: dict[str, str] = field(default_factory=dict)
    executes: bool = False  # runs the update (compiles), rather than only tracing it

    def outcome(self, lib: Any, case: Case) -> Outcome:
        with library_mode(lib):
            try:
                tx = build(case, lib)
            except Exception as err:
                return Outcome(ABSENT, _head(err))
            expected = self.expected(case)
            return classify(expected, lambda: self.run(lib, tx, case), self.describe)


# --- Building the registry's cases with Optax ------------------------------------------------


class NotInOptaxError(AttributeError):
    """A gradchain name that Optax 0.2.8 does not have."""


class _OptaxNames(types.SimpleNamespace):
    """gradchain's public names looked up in Optax (top level, contrib, schedules, transforms)."""

    __name__ = "optax"

    def __getattr__(self, name: str) -> Any:
        import optax

        for where in (optax, optax.contrib, optax.schedules, optax.transforms):
            if hasattr(where, name):
                return getattr(where, name)
        raise NotInOptaxError(f"Optax 0.2.8 has no `{name}`")


def optax_names() -> Any:
    """Optax as a module of gradchain's names (contrib and schedules included)."""
    return _OptaxNames()


def build(case: Case, lib: Any) -> Any:
    """The case's transform built with ``lib``'s functions of the same names."""
    if lib is gc:
        return case.build()
    names = optax_names()
    fn = case.build
    if getattr(fn, "__module__", "").startswith("gradchain"):
        return getattr(names, fn.__name__)()
    swapped = types.FunctionType(
        fn.__code__,
        {**fn.__globals__, "gc": names},
        fn.__name__,
        fn.__defaults__,
        fn.__closure__,
    )
    return swapped()


def _abstract(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), tree)


def step_shapes(lib: Any, tx: Any, grads: Any, state: Any = None, params: Any = PARAMS) -> Any:
    """Traces one training step, ``apply_updates(params, update(grads, state, params))``.

    Nothing is computed: the checks run while tracing. ``state`` defaults to
    ``tx.init(PARAMS)``.
    """
    if state is None:
        state = jax.eval_shape(tx.init, PARAMS)

    def one_step(g: Any, s: Any, p: Any) -> Any:
        updates, _ = tx.update(g, s, p)
        return lib.apply_updates(p, updates)

    return jax.eval_shape(one_step, grads, state, params)


def _same_shapes_as_params(result: Any) -> None:
    got = jax.tree.map(jnp.shape, result)
    assert got == jax.tree.map(jnp.shape, PARAMS), f"new params shaped {got}"


def _describe_step(result: Any) -> str:
    """What a step returned: the parameter shapes that changed, or 'shapes kept'."""
    try:
        flat = jax.tree_util.tree_flatten_with_path(result)[0]
    except Exception:
        return "returned"
    want = {
        jax.tree_util.keystr(p): jnp.shape(x)
        for p, x in jax.tree_util.tree_flatten_with_path(PARAMS)[0]
    }
    changed = [
        f"{jax.tree_util.keystr(p)} {want.get(jax.tree_util.keystr(p))} -> {tuple(x.shape)}"
        for p, x in flat
        if want.get(jax.tree_util.keystr(p)) != tuple(x.shape)
    ]
    if changed:
        return "silent broadcast: " + "; ".join(changed[:2])
    if len(flat) != len(want):
        return f"returned {len(flat)} parameters for {len(want)}"
    return "returned params of the right shapes"


# --- Entries over the registry ---------------------------------------------------------------


def _step_raises(error: type[BaseException], *patterns: str) -> Callable[[Case], Expected]:
    return lambda case: raises(error, REPORTER, *patterns)


_PASS_TREES = r"Pass trees built from the same parameters"


def _structure_entry(id_: str, description: str, make: Callable[[Any], Any], path: str) -> Any:
    where = re.escape(path)
    return RegistryEntry(
        f"updates_{id_}",
        "tree mismatch: updates and state",
        description,
        lambda lib, tx, case: step_shapes(lib, tx, make(GRADS)),
        _step_raises(ValueError, rf"differ in structure at {where}: ", _PASS_TREES),
        _describe_step,
    )


def _frozen(tree: Any) -> Any:
    from flax.core import FrozenDict

    return FrozenDict(tree)


def _shape_entry(id_: str, description: str, shape: tuple[int, ...]) -> RegistryEntry:
    return RegistryEntry(
        f"updates_shape_{id_}",
        "wrong shape",
        description,
        lambda lib, tx, case: step_shapes(lib, tx, {**GRADS, "w": jnp.full(shape, 0.5)}),
        _step_raises(ValueError, r"disagree in shape at \['w'\]: ", "never broadcasts"),
        _describe_step,
    )


def _foreign_state(lib: Any, tx: Any) -> Any:
    """The state of another transformation, of another structure than ``tx``'s own."""
    own = jax.tree.structure(jax.eval_shape(tx.init, PARAMS))
    for other in (lib.scale_by_rss(), lib.trace(0.5), lib.chain(lib.identity(), lib.clip(1.0))):
        state = jax.eval_shape(other.init, PARAMS)
        if jax.tree.structure(state) != own:
            return state
    raise AssertionError("no foreign state")


INT_PARAMS = {**PARAMS, "n": jnp.array(3, jnp.int32)}


def _float0_grads() -> Any:
    """What ``jax.grad(loss, allow_int=True)`` gives for INT_PARAMS: float0 at ['n']."""

    def loss(p: Any) -> jax.Array:
        return sum(jnp.sum(x) for x in jax.tree.leaves({k: v for k, v in p.items() if k != "n"}))

    return jax.grad(loss, allow_int=True)(INT_PARAMS)


def _float0_step(lib: Any, tx: Any, case: Case) -> Any:
    del case
    grads = _float0_grads()
    state = jax.eval_shape(tx.init, INT_PARAMS)

    def one_step(s: Any, p: Any) -> Any:  # float0 arrays cannot be traced arguments: closed over
        updates, _ = tx.update(grads, s, p)
        return lib.apply_updates(p, updates)

    return jax.eval_shape(one_step, state, INT_PARAMS)


def _init_from_shapes(lib: Any, tx: Any, case: Case) -> Any:
    del lib, case
    return tx.init(_abstract(PARAMS))


def _state_shaped(result: Any) -> None:
    assert all(hasattr(x, "shape") for x in jax.tree.leaves(result)), "state leaves"


# Registry-wide entries that only trace (cheap: every case, every run).
TRACED_ENTRIES: tuple[RegistryEntry, ...] = (
    _structure_entry(
        "extra_key",
        "updates with a key the state lacks",
        lambda g: {**g, "z": jnp.ones(1)},
        "['z']",
    ),
    _structure_entry(
        "missing_key",
        "updates without a key the state has",
        lambda g: {k: v for k, v in g.items() if k != "w"},
        "['w']",
    ),
    _structure_entry(
        "tuple_for_list",
        "a tuple where the state has a list",
        lambda g: {**g, "layers": tuple(g["layers"])},
        "['layers']",
    ),
    _structure_entry(
        "none_for_array", "None where the state has an array", lambda g: {**g, "w": None}, "['w']"
    ),
    _structure_entry(
        "frozendict",
        "a Flax FrozenDict of updates for a state built from a dict",
        _frozen,
        "<root>",
    ),
    _shape_entry("column", "a (3, 1) update for a (3,) parameter (broadcastable)", (3, 1)),
    _shape_entry("scalar", "a () update for a (3,) parameter (broadcastable)", ()),
    _shape_entry("other_length", "a (4,) update for a (3,) parameter", (4,)),
    RegistryEntry(
        "params_missing_key",
        "tree mismatch: updates and params",
        "params without a key the updates have",
        lambda lib, tx, case: step_shapes(
            lib, tx, GRADS, params={k: v for k, v in PARAMS.items() if k != "w"}
        ),
        _step_raises(ValueError, r"differ in structure at \['w'\]: ", _PASS_TREES),
        _describe_step,
    ),
    RegistryEntry(
        "foreign_state",
        "foreign state",
        "the state of another transformation passed to update",
        lambda lib, tx, case: step_shapes(lib, tx, GRADS, _foreign_state(lib, tx)),
        _step_raises(TypeError, r"Pass the state (?:from|returned by) this .*init"),
        _describe_step,
    ),
    RegistryEntry(
        "float0_leaf",
        "dtypes",
        "an int32 parameter whose gradient is float0 (jax.grad(..., allow_int=True))",
        _float0_step,
        _step_raises(TypeError, r"float0", r"\['n'\]", "allow_int"),
        _describe_step,
        known_unclear={
            "stateless": "the user's function computes on the float0 gradient",
            "scale_by_mars[exact]": "the registry's wrapper halves the gradients first",
            "differentially_private_aggregate": "the registry's wrapper stacks examples first",
            "dpsgd": "the registry's wrapper stacks examples first",
        },
    ),
    RegistryEntry(
        "init_shape_dtype_struct",
        "edge cases",
        "init from jax.ShapeDtypeStruct parameters (jax.eval_shape's output)",
        _init_from_shapes,
        lambda case: documented("init builds the state from shapes and dtypes", _state_shaped),
    ),
)


# Registry-wide entries that run the update (each case compiles once, then runs twice).

_JITTED: dict[tuple[str, str], Any] = {}


def _jitted_update(lib: Any, tx: Any, case: Case) -> Any:
    key = (lib.__name__, case.key)
    if key not in _JITTED:
        _JITTED[key] = jax.jit(tx.update)
    return _JITTED[key]


NAN_GRADS = {**GRADS, "w": jnp.array([math.nan, 0.5, 0.5])}
# The transforms that keep a NaN gradient out of the update (the guards, and zero_nans).
NAN_GUARDS = frozenset({"apply_if_finite", "zero_nans", "MultiSteps", "skip_spikes"})
# The transforms whose update at ['w'] does not read the gradient there: finite by design.
NAN_UNREAD = {
    "set_to_zero": "zero updates",
    "freeze": "['w'] is frozen (set_to_zero)",
    "selective_transform": "['w'] is frozen",
    "conditionally_mask": "the first step is masked",
    "hutchinson_estimator_diag_hessian": "the estimate differentiates obj_fn, not the gradients",
}


def _nan_step(lib: Any, tx: Any, case: Case) -> Any:
    state = tx.init(PARAMS)
    updates, new_state = _jitted_update(lib, tx, case)(NAN_GRADS, state, PARAMS)
    return state, updates, new_state


def _n_nonfinite(tree: Any) -> int:
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    return sum(int(np.sum(~np.isfinite(np.asarray(x)))) for x in leaves)


def _nan_reaches_the_update_or_state(result: Any) -> None:
    _, updates, new_state = result
    seen = _n_nonfinite(updates) + _n_nonfinite(new_state)
    assert seen > 0, "the NaN vanished: finite updates and state"


def _nan_kept_out(result: Any) -> None:
    _, updates, _ = result
    assert _n_nonfinite(updates) == 0, f"{_n_nonfinite(updates)} NaN/Inf in the updates"


def _describe_nan(result: Any) -> str:
    _, updates, new_state = result
    n_u, n_s = _n_nonfinite(updates), _n_nonfinite(new_state)
    if n_u == n_s == 0:
        return "finite update and state"
    return f"{n_u} NaN/Inf in the updates, {n_s} in the state"


def _nan_expected(case: Case) -> Expected:
    if case.key in NAN_UNREAD:
        return documented(f"finite: {NAN_UNREAD[case.key]}", _nan_kept_out)
    if case.name in NAN_GUARDS:
        return documented("finite update: the NaN step is skipped or zeroed", _nan_kept_out)
    return documented(
        "the NaN reaches the update or the state, never hidden", _nan_reaches_the_update_or_state
    )


def _is_counter(path: tuple[Any, ...], x: Any) -> bool:
    last = path[-1] if path else None
    name = getattr(last, "name", None)
    return name in ("step", "count") and jnp.shape(x) == () and jnp.result_type(x) == jnp.int32


def _at_int32_max(state: Any) -> Any:
    return jax.tree_util.tree_map_with_path(
        lambda p, x: jnp.full_like(x, INT32_MAX) if _is_counter(p, x) else x, state
    )


def _int32_max_step(lib: Any, tx: Any, case: Case) -> Any:
    state = _at_int32_max(tx.init(PARAMS))
    updates, new_state = _jitted_update(lib, tx, case)(GRADS, state, PARAMS)
    return state, updates, new_state


def _counters(state: Any) -> list[int]:
    flat = jax.tree_util.tree_flatten_with_path(state)[0]
    return [int(x) for p, x in flat if _is_counter(p, x)]


def _saturates_and_stays_finite(result: Any) -> None:
    _, updates, new_state = result
    counters = _counters(new_state)
    assert all(c == INT32_MAX for c in counters), f"counters {sorted(set(counters))[:3]}"
    assert _n_nonfinite(updates) == 0, f"{_n_nonfinite(updates)} NaN/Inf in the updates"


def _describe_counters(result: Any) -> str:
    _, updates, new_state = result
    counters = sorted(set(_counters(new_state)))
    bad = _n_nonfinite(updates)
    return f"counters {counters[:2]}{', ' + str(bad) + ' NaN/Inf in the updates' if bad else ''}"


EXECUTED_ENTRIES: tuple[RegistryEntry, ...] = (
    RegistryEntry(
        "nan_gradient",
        "NaN and Inf gradients",
        "a NaN in the gradient, without a guard (and with the guards)",
        _nan_step,
        _nan_expected,
        _describe_nan,
        executes=True,
    ),
    RegistryEntry(
        "step_at_int32_max",
        "step counter",
        "a state whose step counters are at 2**31 - 1",
        _int32_max_step,
        lambda case: documented(
            "the counters saturate at 2**31 - 1; the update stays finite",
            _saturates_and_stays_finite,
        ),
        _describe_counters,
        executes=True,
    ),
)
REGISTRY_ENTRIES = TRACED_ENTRIES + EXECUTED_ENTRIES


# --- Single entries ----------------------------------------------------------------------------


def _first_update(lib: Any, tx: Any, params: Any, grads: Any) -> Any:
    """One eager step: (new params, updates, new state)."""
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)
    return lib.apply_updates(params, updates), updates, state


def _abstract_step(lib: Any, tx: Any, params: Any, grads: Any) -> Any:
    state = jax.eval_shape(tx.init, params)
    return step_shapes(lib, tx, grads, state, params)


def _finite(result: Any) -> None:
    assert _n_nonfinite(result) == 0, f"{_n_nonfinite(result)} NaN/Inf"


def _keeps(*dtypes_by_path: tuple[str, str]) -> Callable[[Any], None]:
    """A check that the leaves at the given key paths of the result have the given dtypes."""

    def check(result: Any) -> None:
        flat = {
            jax.tree_util.keystr(p): str(jnp.result_type(x))
            for p, x in jax.tree_util.tree_flatten_with_path(result)[0]
        }
        for path, dtype in dtypes_by_path:
            assert flat.get(path) == dtype, f"{path} is {flat.get(path)}, not {dtype}"

    return check


def _shapes_kept(params: Any) -> Callable[[Any], None]:
    def check(result: Any) -> None:
        new_params = result[0]
        assert jax.tree.map(jnp.shape, new_params) == jax.tree.map(jnp.shape, params), "shapes"
        _finite(new_params)

    return check


def _masked_init(lib: Any, mask: Any, params: Any = PARAMS) -> Any:
    tx = lib.masked(lib.scale_by_adam(), mask)
    return _abstract_step(lib, tx, params, jax.tree.map(jnp.ones_like, params))


def _partition_step(lib: Any, labels: Any, params: Any = PARAMS) -> Any:
    tx = lib.partition({"a": lib.sgd(0.1), "b": lib.adam(0.1)}, labels)
    return _abstract_step(lib, tx, params, jax.tree.map(jnp.ones_like, params))


_LABELS = {"bias": "a", "layers": ["b", "b"], "w": "a"}
_MASK = {"bias": False, "layers": [True, True], "w": True}


def _chain_state_of(lib: Any, make_tx: Callable[[], Any], make_state_tx: Callable[[], Any]) -> Any:
    state = jax.eval_shape(make_state_tx().init, PARAMS)
    return step_shapes(lib, make_tx(), GRADS, state)


def _scan_steps(lib: Any, tx: Any, params: Any, grads: Any, n: int = 3) -> Any:
    def body(carry: Any, _: Any) -> Any:
        p, s = carry
        u, s = tx.update(grads, s, p)
        return (lib.apply_updates(p, u), s), None

    (params, state), _ = jax.lax.scan(body, (params, tx.init(params)), None, length=n)
    return params, state


def _cond_step(lib: Any, tx: Any, params: Any, grads: Any) -> Any:
    state = tx.init(params)

    def take(s: Any) -> Any:
        return tx.update(grads, s, params)

    def skip(s: Any) -> Any:
        return jax.tree.map(jnp.zeros_like, grads), s

    return jax.jit(lambda s: jax.lax.cond(True, take, skip, s))(state)


def _hyper(build: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Builds with a bad hyperparameter and runs one step: Optax may accept it and compute."""

    def run(lib: Any) -> Any:
        tx = build(lib)
        return _first_update(lib, tx, PARAMS, GRADS)

    return run


def _hyper_error(error: type[BaseException], fn: str, arg: str, value: str) -> Raises:
    return raises(error, rf"^{fn}: `{arg}` must be", re.escape(value))


def _schedule(
    build: Callable[[Any], Any], steps: tuple[int, ...] = (0, 5, 50)
) -> Callable[[Any], Any]:
    def run(lib: Any) -> Any:
        schedule = build(lib)
        return [float(schedule(s)) for s in steps]

    return run


def _describe_values(result: Any) -> str:
    return (
        f"returned {[round(v, 4) for v in result]}"
        if isinstance(result, list)
        else describe_result(result)
    )


def _apply_if_finite_run(lib: Any) -> Any:
    tx = lib.apply_if_finite(lib.adam(0.1), 3)
    params = PARAMS
    state = tx.init(params)
    updates, state = tx.update(GRADS, state, params)
    params = lib.apply_updates(params, updates)
    updates, new_state = tx.update(NAN_GRADS, state, params)
    return params, lib.apply_updates(params, updates), state.inner_state, new_state.inner_state


def _untouched(result: Any) -> None:
    params, new_params, inner, new_inner = result
    same = jax.tree.map(
        lambda a, b: bool(np.array_equal(a, b)), (params, inner), (new_params, new_inner)
    )
    assert all(jax.tree.leaves(same)), "params or inner state changed"


def _moment_dtype_after(lib: Any, tx: Any, params: Any, grads: Any) -> Any:
    return _first_update(lib, tx, params, grads)[2]


_C64 = jnp.full((2, 2), 1 + 1j, jnp.complex64)
_BF16 = {"w": jnp.ones(3, jnp.bfloat16)}
_F32_GRADS = {"w": jnp.full(3, 1e-3, jnp.float32)}


def _mu_dtype(result: Any) -> None:
    flat = jax.tree_util.tree_flatten_with_path(result)[0]
    dtypes = {
        str(jnp.result_type(x))
        for p, x in flat
        if "mu" in jax.tree_util.keystr(p) or "nu" in jax.tree_util.keystr(p)
    }
    assert dtypes == {"bfloat16"}, f"moments {sorted(dtypes)}"


ENTRIES: tuple[Entry, ...] = (
    # tree mismatch: masks and labels against the parameters
    Entry(
        "mask_missing_key",
        "tree mismatch: mask or labels and params",
        "masked() with a mask lacking a key of the params",
        lambda lib: _masked_init(lib, {"bias": False, "layers": [True, True]}),
        raises(
            ValueError, r"^masked: the trees `mask` and `params` differ in structure at \['w'\]"
        ),
    ),
    Entry(
        "mask_extra_key",
        "tree mismatch: mask or labels and params",
        "masked() with a mask holding a key the params lack",
        lambda lib: _masked_init(lib, {**_MASK, "z": True}),
        raises(
            ValueError, r"^masked: the trees `mask` and `params` differ in structure at \['z'\]"
        ),
    ),
    Entry(
        "mask_none_entry",
        "tree mismatch: mask or labels and params",
        "masked() with None where the mask needs a bool",
        lambda lib: _masked_init(lib, {**_MASK, "bias": None}),
        raises(ValueError, r"^masked: .* differ in structure at \['bias'\]"),
    ),
    Entry(
        "mask_tuple_for_list",
        "tree mismatch: mask or labels and params",
        "a mask with a tuple where the params have a list",
        lambda lib: _masked_init(lib, {**_MASK, "layers": (True, True)}),
        documented(
            "matched by key: a tuple of the same length fits a list", _same_shapes_as_params
        ),
    ),
    Entry(
        "mask_dict_for_frozendict",
        "tree mismatch: mask or labels and params",
        "a plain-dict mask for Flax FrozenDict params",
        lambda lib: _masked_init(lib, _MASK, _frozen(PARAMS)),
        documented("matched by key: a dict mask fits FrozenDict params", _same_shapes_as_params),
    ),
    Entry(
        "labels_missing_key",
        "tree mismatch: mask or labels and params",
        "partition() labels lacking a key of the params",
        lambda lib: _partition_step(lib, {"bias": "a", "layers": ["b", "b"]}),
        raises(ValueError, r"^partition: `param_labels` does not match", "the key 'w'"),
    ),
    Entry(
        "labels_unknown_label",
        "tree mismatch: mask or labels and params",
        "partition() labels naming a group without a transform",
        lambda lib: _partition_step(lib, {**_LABELS, "w": "c"}),
        raises(ValueError, r"^partition", "'c'"),
    ),
    Entry(
        "labels_dict_for_frozendict",
        "tree mismatch: mask or labels and params",
        "plain-dict labels for Flax FrozenDict params",
        lambda lib: _partition_step(lib, _LABELS, _frozen(PARAMS)),
        documented("matched by key: dict labels fit FrozenDict params", _same_shapes_as_params),
    ),
    Entry(
        "updates_params_frozendict",
        "tree mismatch: updates and params",
        "FrozenDict params with dict gradients in adamw",
        lambda lib: step_shapes(
            lib, lib.adamw(0.1), GRADS, jax.eval_shape(lib.adamw(0.1).init, PARAMS), _frozen(PARAMS)
        ),
        raises(ValueError, r"^add_decayed_weights: .* differ in structure at <root>", _PASS_TREES),
    ),
    # foreign states
    Entry(
        "state_of_shorter_chain",
        "foreign state",
        "chain(clip, adam, scale) given the state of chain(clip, adam)",
        lambda lib: _chain_state_of(
            lib,
            lambda: lib.chain(lib.clip(1.0), lib.scale_by_adam(), lib.scale(-0.1)),
            lambda: lib.chain(lib.clip(1.0), lib.scale_by_adam()),
        ),
        raises(
            TypeError,
            r"^chain: this chain of 3 transformations needs a tuple of 3 states; got a tuple of 2",
        ),
    ),
    Entry(
        "adamw_state_to_adam",
        "foreign state",
        "adam given adamw's state (a chain one longer)",
        lambda lib: _chain_state_of(lib, lambda: lib.adam(0.1), lambda: lib.adamw(0.1)),
        raises(TypeError, r"^chain: this chain of 2 .* got a tuple of 3"),
    ),
    Entry(
        "adam_state_to_sgd",
        "foreign state",
        "sgd given adam's state",
        lambda lib: _chain_state_of(lib, lambda: lib.sgd(0.1), lambda: lib.adam(0.1)),
        raises(
            TypeError,
            r"^identity: update received a state of type ScaleByAdamState",
            r"Pass the state",
        ),
    ),
    # dtypes
    Entry(
        "int_gradients",
        "dtypes",
        "int32 parameters with int32 gradients (sgd)",
        lambda lib: _first_update(lib, lib.sgd(0.1), {"n": jnp.arange(3)}, {"n": jnp.arange(3)}),
        documented(
            "updates keep the gradients' dtype: int32, rounded toward zero",
            _keeps(("[1]['n']", "int32"), ("[0]['n']", "int32")),
        ),
    ),
    Entry(
        "bool_leaf",
        "dtypes",
        "a bool parameter and gradient beside a float one (adam)",
        lambda lib: _first_update(
            lib,
            lib.adam(0.1),
            {"w": jnp.ones(3), "m": jnp.array([True, False])},
            {"w": jnp.ones(3), "m": jnp.array([True, False])},
        ),
        documented(
            "the bool leaf stays bool, the float leaf is updated",
            _keeps(("[0]['m']", "bool"), ("[0]['w']", "float32")),
        ),
    ),
    Entry(
        "complex_adam",
        "dtypes",
        "complex64 parameters (adam supports them)",
        lambda lib: _first_update(lib, lib.adam(0.1), _C64, _C64),
        documented(
            "complex moments, |g|^2 in the second; finite complex64 update",
            lambda r: (_finite(r), _keeps(("[0]", "complex64"))(r)),
        ),
    ),
    Entry(
        "complex_keep_nonnegative",
        "dtypes",
        "complex64 parameters in keep_params_nonnegative (no order)",
        lambda lib: _first_update(lib, lib.keep_params_nonnegative(), _C64, _C64),
        raises(TypeError, r"^keep_params_nonnegative", "complex"),
    ),
    Entry(
        "complex_soap",
        "dtypes",
        "complex64 matrices in scale_by_soap (rotations are real)",
        lambda lib: _first_update(lib, lib.scale_by_soap(), _C64, _C64),
        raises(TypeError, r"^scale_by_soap", "complex"),
    ),
    Entry(
        "complex_prodigy",
        "dtypes",
        "complex64 parameters in prodigy",
        lambda lib: _first_update(lib, lib.prodigy(), _C64, _C64),
        raises(TypeError, r"^(?:prodigy|scale_by_prodigy)", "complex"),
    ),
    Entry(
        "str_param",
        "dtypes",
        "a string leaf among the parameters (adam init)",
        lambda lib: lib.adam(0.1).init({"w": jnp.ones(3), "name": "layer"}),
        raises(
            TypeError,
            r"`params` has a leaf at \['name'\] that is not a numeric array: str 'layer'",
            "split strings",
        ),
    ),
    Entry(
        "object_param",
        "dtypes",
        "an object leaf among the parameters (sgd with momentum init)",
        lambda lib: lib.sgd(0.1, momentum=0.9).init({"w": jnp.ones(3), "o": object()}),
        raises(TypeError, r"`params` has a leaf at \['o'\] that is not a numeric array: object"),
    ),
    Entry(
        "str_gradient",
        "dtypes",
        "a string where a gradient should be (sgd)",
        lambda lib: _first_update(lib, lib.sgd(0.1), {"w": jnp.ones(3)}, {"w": "g"}),
        raises(TypeError, r"^scale_by_learning_rate: `updates` has a leaf at \['w'\] .*str 'g'"),
    ),
    Entry(
        "float16_adam_eps",
        "dtypes",
        "float16 params and a 1e-5 gradient in adam (eps = 1e-8 underflows in float16)",
        lambda lib: _first_update(
            lib, lib.adam(1e-3), jnp.ones(3, jnp.float16), jnp.full(3, 1e-5, jnp.float16)
        ),
        documented(
            "eps applied in float32: finite float16 update",
            lambda r: (_finite(r), _keeps(("[0]", "float16"))(r)),
        ),
    ),
    Entry(
        "bfloat16_params_float32_grads",
        "dtypes",
        "bfloat16 params with float32 gradients (adam): the moments' dtype",
        lambda lib: _moment_dtype_after(lib, lib.adam(1e-3), _BF16, _F32_GRADS),
        documented("moments stay bfloat16 (math in float32)", _mu_dtype),
    ),
    Entry(
        "bfloat16_in_scan",
        "dtypes",
        "three adam steps in lax.scan, bfloat16 params, float32 gradients",
        lambda lib: _scan_steps(lib, lib.adam(1e-3), _BF16, _F32_GRADS),
        documented(
            "the carry keeps its dtypes: the scan traces",
            lambda r: (_keeps(("[0]['w']", "bfloat16"))(r), _mu_dtype(r[1])),
        ),
    ),
    Entry(
        "bfloat16_in_cond",
        "dtypes",
        "an adam step inside lax.cond, bfloat16 params, float32 gradients",
        lambda lib: _cond_step(lib, lib.adam(1e-3), _BF16, _F32_GRADS),
        documented("both branches agree on dtypes", lambda r: _mu_dtype(r[1])),
    ),
    # edge cases
    Entry(
        "zero_size_adam",
        "edge cases",
        "a (0, 3) parameter in adam",
        lambda lib: _first_update(
            lib,
            lib.adam(0.1),
            {"w": jnp.ones((0, 3)), "b": jnp.ones(2)},
            {"w": jnp.ones((0, 3)), "b": jnp.ones(2)},
        ),
        documented(
            "an empty update of shape (0, 3)",
            _shapes_kept({"w": jnp.ones((0, 3)), "b": jnp.ones(2)}),
        ),
    ),
    Entry(
        "zero_size_lamb",
        "edge cases",
        "a (0, 3) parameter in lamb (trust ratio of zero norms)",
        lambda lib: _first_update(
            lib,
            lib.lamb(0.1),
            {"w": jnp.ones((0, 3)), "b": jnp.ones(2)},
            {"w": jnp.ones((0, 3)), "b": jnp.ones(2)},
        ),
        documented(
            "an empty update; the other leaf finite",
            _shapes_kept({"w": jnp.ones((0, 3)), "b": jnp.ones(2)}),
        ),
    ),
    Entry(
        "zero_size_adafactor",
        "edge cases",
        "a (0, 3) parameter in adafactor",
        lambda lib: _first_update(
            lib,
            lib.adafactor(0.1),
            {"w": jnp.ones((0, 3)), "b": jnp.ones(2)},
            {"w": jnp.ones((0, 3)), "b": jnp.ones(2)},
        ),
        documented(
            "an empty update; the other leaf finite",
            _shapes_kept({"w": jnp.ones((0, 3)), "b": jnp.ones(2)}),
        ),
    ),
    Entry(
        "scalar_adam",
        "edge cases",
        "a scalar () parameter in adam",
        lambda lib: _first_update(lib, lib.adam(0.1), jnp.float32(1.0), jnp.float32(0.5)),
        documented("a scalar update", _shapes_kept(jnp.float32(1.0))),
    ),
    Entry(
        "scalar_sm3",
        "edge cases",
        "a scalar () parameter in sm3",
        lambda lib: _first_update(lib, lib.sm3(0.1), jnp.float32(1.0), jnp.float32(0.5)),
        documented("a scalar update", _shapes_kept(jnp.float32(1.0))),
    ),
    Entry(
        "scalar_adafactor",
        "edge cases",
        "a scalar () parameter in adafactor",
        lambda lib: _first_update(lib, lib.adafactor(0.1), jnp.float32(1.0), jnp.float32(0.5)),
        documented("a scalar update", _shapes_kept(jnp.float32(1.0))),
    ),
    Entry(
        "empty_tree_adam",
        "edge cases",
        "an empty dict of parameters (adam)",
        lambda lib: _first_update(lib, lib.adam(0.1), {}, {}),
        documented(
            "empty updates, the step counted",
            lambda r: None if r[0] == {} else (_ for _ in ()).throw(AssertionError("not empty")),
        ),
    ),
    Entry(
        "empty_tree_clip_by_global_norm",
        "edge cases",
        "an empty dict of parameters (clip_by_global_norm, a norm of nothing)",
        lambda lib: _first_update(
            lib, lib.chain(lib.clip_by_global_norm(1.0), lib.sgd(0.1)), {}, {}
        ),
        documented(
            "empty updates",
            lambda r: None if r[0] == {} else (_ for _ in ()).throw(AssertionError("not empty")),
        ),
    ),
    Entry(
        "none_leaf_adamw",
        "edge cases",
        "a None leaf in params and gradients (adamw)",
        lambda lib: _first_update(
            lib, lib.adamw(0.1), {"w": jnp.ones(3), "n": None}, {"w": jnp.ones(3), "n": None}
        ),
        documented("None passes through", _shapes_kept({"w": jnp.ones(3), "n": None})),
    ),
    Entry(
        "none_leaf_clip_lamb",
        "edge cases",
        "a None leaf in params and gradients (clip_by_global_norm + lamb)",
        lambda lib: _first_update(
            lib,
            lib.chain(lib.clip_by_global_norm(1.0), lib.lamb(0.1)),
            {"w": jnp.ones(3), "n": None},
            {"w": jnp.ones(3), "n": None},
        ),
        documented("None passes through", _shapes_kept({"w": jnp.ones(3), "n": None})),
    ),
    # hyperparameters
    Entry(
        "adam_b1_nan",
        "hyperparameters",
        "adam(b1=nan)",
        _hyper(lambda lib: lib.adam(0.1, b1=math.nan)),
        _hyper_error(ValueError, "scale_by_adam", "b1", "nan"),
    ),
    Entry(
        "adam_b2_one",
        "hyperparameters",
        "adam(b2=1.0): the second moment never moves",
        _hyper(lambda lib: lib.adam(0.1, b2=1.0)),
        _hyper_error(ValueError, "scale_by_adam", "b2", "1.0"),
    ),
    Entry(
        "adam_lr_inf",
        "hyperparameters",
        "adam(learning_rate=inf)",
        _hyper(lambda lib: lib.adam(math.inf)),
        _hyper_error(ValueError, "scale_by_learning_rate", "learning_rate", "inf"),
    ),
    Entry(
        "adam_lr_str",
        "hyperparameters",
        "adam(learning_rate='0.1')",
        _hyper(lambda lib: lib.adam("0.1")),
        _hyper_error(TypeError, "scale_by_learning_rate", "learning_rate", "'0.1'"),
    ),
    Entry(
        "adam_eps_negative",
        "hyperparameters",
        "adam(eps=-1.0)",
        _hyper(lambda lib: lib.adam(0.1, eps=-1.0)),
        _hyper_error(ValueError, "scale_by_adam", "eps", "-1.0"),
    ),
    Entry(
        "sgd_momentum_above_one",
        "hyperparameters",
        "sgd(momentum=1.5)",
        _hyper(lambda lib: lib.sgd(0.1, momentum=1.5)),
        _hyper_error(ValueError, "sgd", "momentum", "1.5"),
    ),
    Entry(
        "clip_max_norm_zero",
        "hyperparameters",
        "clip_by_global_norm(0.0)",
        _hyper(lambda lib: lib.clip_by_global_norm(0.0)),
        _hyper_error(ValueError, "clip_by_global_norm", "max_norm", "0.0"),
    ),
    Entry(
        "adam_b1_list",
        "hyperparameters",
        "adam(b1=[0.9])",
        _hyper(lambda lib: lib.adam(0.1, b1=[0.9])),
        _hyper_error(TypeError, "scale_by_adam", "b1", "[0.9]"),
    ),
    Entry(
        "adamw_weight_decay_nan",
        "hyperparameters",
        "adamw(weight_decay=nan)",
        _hyper(lambda lib: lib.adamw(0.1, weight_decay=math.nan)),
        _hyper_error(ValueError, "add_decayed_weights", "weight_decay", "nan"),
    ),
    # schedules
    Entry(
        "piecewise_negative_boundary",
        "schedules",
        "piecewise_constant_schedule with a boundary at step -5",
        _schedule(lambda lib: lib.piecewise_constant_schedule(0.1, {-5: 0.5})),
        raises(
            ValueError,
            r"^piecewise_constant_schedule: `boundaries_and_scales` must hold steps >= 0; got -5",
        ),
        _describe_values,
    ),
    Entry(
        "join_unsorted_boundaries",
        "schedules",
        "join_schedules with boundaries [10, 5]",
        _schedule(
            lambda lib: lib.join_schedules(
                [
                    lib.constant_schedule(1.0),
                    lib.constant_schedule(2.0),
                    lib.constant_schedule(3.0),
                ],
                [10, 5],
            )
        ),
        raises(
            ValueError, r"^join_schedules: `boundaries` must be in increasing order; got \[10, 5\]"
        ),
        _describe_values,
    ),
    Entry(
        "join_wrong_count",
        "schedules",
        "join_schedules with two schedules and two boundaries",
        _schedule(
            lambda lib: lib.join_schedules(
                [lib.constant_schedule(1.0), lib.constant_schedule(2.0)], [5, 10]
            )
        ),
        raises(ValueError, r"^join_schedules: `boundaries` must hold"),
        _describe_values,
    ),
    Entry(
        "linear_zero_transition",
        "schedules",
        "linear_schedule(1.0, 0.0, transition_steps=0)",
        _schedule(lambda lib: lib.linear_schedule(1.0, 0.0, 0)),
        raises(ValueError, r"^linear_schedule: `transition_steps` must be > 0; got 0"),
        _describe_values,
    ),
    Entry(
        "cosine_decay_before_warmup_end",
        "schedules",
        "warmup_cosine_decay_schedule with decay_steps < warmup_steps",
        _schedule(lambda lib: lib.warmup_cosine_decay_schedule(0.0, 1.0, 100, 50)),
        raises(
            ValueError,
            r"^warmup_cosine_decay_schedule: `decay_steps` must be > warmup_steps=100 .*got 50",
        ),
        _describe_values,
    ),
    Entry(
        "exponential_decay_zero_transition",
        "schedules",
        "exponential_decay(1.0, transition_steps=0, decay_rate=0.5)",
        _schedule(lambda lib: lib.exponential_decay(1.0, 0, 0.5)),
        raises(ValueError, r"^exponential_decay: `transition_steps` must be > 0; got 0"),
        _describe_values,
    ),
    # NaN and Inf
    Entry(
        "apply_if_finite_keeps_state",
        "NaN and Inf gradients",
        "apply_if_finite(adam): a NaN step after a finite one",
        _apply_if_finite_run,
        documented("params and inner state bit-identical after the NaN step", _untouched),
    ),
    Entry(
        "inf_gradient_adam",
        "NaN and Inf gradients",
        "an Inf gradient in adam, without a guard",
        lambda lib: _first_update(
            lib, lib.adam(0.1), PARAMS, {**GRADS, "w": jnp.array([math.inf, 0.5, 0.5])}
        ),
        documented(
            "the Inf shows in the update (NaN: inf / inf)",
            lambda r: _nan_reaches_the_update_or_state((None, r[1], r[2])),
        ),
    ),
)
