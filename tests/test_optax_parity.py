"""gradchain against Optax 0.2.8: every alias and every transform Optax has, step by step.

Each case is written once as ``make(lib)``: the same call builds the gradchain
transformation and the Optax one, which also shows that Optax calls port
unchanged. Both run 100 steps of the same random float32 gradients on a nested
pytree under ``jit`` and ``lax.scan``; the updates at every step, the final
parameters and the moments in the final state must agree to float32 rounding
(they are bit-identical). Cases with a learning-rate schedule give both libraries
the same schedule function; each library's own warmup-cosine schedule differs by
an ulp or two on purpose, a difference tested on its own below.
The file also runs an everyday Optax training loop with ``import gradchain as
optax``, and checks ``inject_hyperparams`` against Optax's, including a
hyperparameter written into the state mid-run.

Optax mixes int32 step counts with Python floats, which strict promotion
refuses, so every Optax call runs under ``jax.numpy_dtype_promotion("standard")``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradchain as gc
from tests import (
    test_adaptive,
    test_complex,
    test_contrib_moments,
    test_factored,
    test_galore,
    test_lbfgs,
    test_linesearch,
    test_lr_free,
    test_microbatch,
    test_muon,
    test_plateau,
    test_privacy,
    test_sam,
    test_schedule_free,
    test_sophia,
    test_trust,
    test_utilities,
    test_value_based,
)
from tests.test_adaptive import decay_mask, parity_problem

# The two libraries are bit-identical on every case here at the time of writing;
# the bound allows for a different fusion of the same float32 arithmetic (an FMA),
# one or two roundings. ATOL_FRACTION * the leaf's largest value stands in for 0.
RTOL = 1e-6
ATOL_FRACTION = 1e-7
STEPS = 100


PARAMS, GRADS = parity_problem(1)


def _schedule(lib: Any) -> Any:
    """The learning-rate schedule of the cases: gradchain's, for both libraries.

    Each library's own warmup_cosine_decay_schedule would do, but the two differ
    on purpose by an ulp or two at most steps (gradchain's interpolations avoid
    Optax's cancellation near 0; see gradchain/_schedules.py and
    tests/test_schedules.py), and momentum sums, AdamW's decay term and the final
    parameters amplify that by cancellation (measured: 2e-6 relative in the
    rates, up to 1.6e-4 in NAdamW's updates). With one schedule, the comparison
    measures the transforms, which are then bit-identical.
    ``test_with_each_librarys_own_schedule_adam_differs_only_by_the_schedule``
    pins the difference itself.
    """
    del lib
    return gc.warmup_cosine_decay_schedule(0.0, 1e-2, 10, STEPS, 1e-4)


def _run_optax(fn: Callable[..., Any], *args: Any) -> Any:
    with jax.numpy_dtype_promotion("standard"):
        return fn(*args)


def _trajectory(lib: Any, make: Callable[[Any], Any], params: Any, grads: Any) -> Any:
    """Every step's updates (stacked), the final parameters and the final state."""
    tx = make(lib)

    def step(carry: tuple[Any, Any], g: Any) -> tuple[tuple[Any, Any], Any]:
        params, state = carry
        updates, state = tx.update(g, state, params)
        return (lib.apply_updates(params, updates), state), updates

    (params, state), updates = jax.lax.scan(step, (params, tx.init(params)), grads)
    return updates, params, state


def trajectories(make: Callable[[Any], Any]) -> tuple[Any, Any]:
    """The runs of one case by gradchain and by Optax, jitted together (one compilation)."""

    @jax.jit
    def run(params: Any, grads: Any) -> tuple[Any, Any]:
        got = _trajectory(gc, make, params, grads)  # under the strict promotion of conftest.py
        with jax.numpy_dtype_promotion("standard"):
            want = _trajectory(optax, make, params, grads)
        return got, want

    return run(PARAMS, GRADS)


MOMENT_FIELDS = ("mu", "nu", "trace", "ema", "sum_of_squares")


def moments(state: Any) -> list[tuple[str, Any]]:
    """The per-parameter statistics in a state, in order, by field name.

    Both libraries name them alike (``mu``, ``nu``, ``trace``, ``ema``,
    ``sum_of_squares``); counters and hyperparameters are left out, since the
    two libraries keep different ones.
    """
    found: list[tuple[str, Any]] = []

    def visit(node: Any) -> None:
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            for name in node._fields:
                value = getattr(node, name)
                if name in MOMENT_FIELDS:
                    found.append((name, value))
                else:
                    visit(value)
        elif isinstance(node, list | tuple):
            for child in node:
                visit(child)
        elif isinstance(node, dict):
            for key in sorted(node):
                visit(node[key])

    visit(state)
    return found


def _key_paths(tree: Any) -> list[str]:
    return [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def assert_trees_all_close_to_optax(got: Any, want: Any, what: str) -> None:
    """Same leaves, shapes and dtypes, and values within RTOL (ATOL near 0).

    Leaves are matched by key path: each library has its own MaskedNode class,
    so the tree structures of masked states never compare equal.
    """
    assert _key_paths(got) == _key_paths(want), what
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert (g.shape, g.dtype) == (w.shape, w.dtype), what
        atol = ATOL_FRACTION * float(np.max(np.abs(w), initial=0.0))
        np.testing.assert_allclose(g, w, rtol=RTOL, atol=atol, err_msg=what, equal_nan=False)


Make = Callable[[Any], Any]
S = _schedule
ALIASES: list[tuple[str, Make]] = [
    ("sgd", lambda m: m.sgd(0.05)),
    ("sgd-momentum", lambda m: m.sgd(0.05, momentum=0.9)),
    ("sgd-nesterov", lambda m: m.sgd(0.02, momentum=0.8, nesterov=True)),
    ("sgd-schedule_momentum", lambda m: m.sgd(S(m), momentum=0.5)),
    ("adam", lambda m: m.adam(1e-3)),
    ("adam-hyperparams", lambda m: m.adam(3e-3, b1=0.8, b2=0.99, eps=1e-6, eps_root=1e-9)),
    ("adam-nesterov", lambda m: m.adam(1e-3, nesterov=True)),
    ("adam-schedule", lambda m: m.adam(S(m))),
    ("adamw", lambda m: m.adamw(1e-3)),
    ("adamw-mask", lambda m: m.adamw(3e-3, weight_decay=0.1, mask=decay_mask)),
    ("adamw-schedule", lambda m: m.adamw(S(m), b1=0.95, b2=0.99, weight_decay=0.05)),
    ("nadam", lambda m: m.nadam(1e-3)),
    ("nadam-schedule", lambda m: m.nadam(S(m), b2=0.99, eps=1e-7)),
    ("nadamw", lambda m: m.nadamw(1e-3, weight_decay=0.01)),
    ("nadamw-mask_schedule", lambda m: m.nadamw(S(m), weight_decay=0.1, mask=decay_mask)),
    ("rmsprop", lambda m: m.rmsprop(1e-3)),
    ("rmsprop-centered", lambda m: m.rmsprop(1e-3, decay=0.95, eps=1e-6, centered=True)),
    ("rmsprop-momentum", lambda m: m.rmsprop(1e-3, momentum=0.9)),
    ("rmsprop-nesterov", lambda m: m.rmsprop(1e-3, centered=True, momentum=0.9, nesterov=True)),
    ("rmsprop-bias_correction", lambda m: m.rmsprop(1e-3, decay=0.99, bias_correction=True)),
    ("rmsprop-eps_outside", lambda m: m.rmsprop(1e-3, eps=1e-4, eps_in_sqrt=False)),
    ("rmsprop-initial_scale", lambda m: m.rmsprop(1e-2, 0.8, 1e-6, initial_scale=1.0)),
    ("rmsprop-schedule", lambda m: m.rmsprop(S(m), centered=True, momentum=0.5)),
    ("adagrad", lambda m: m.adagrad(0.1)),
    ("adagrad-zero_accumulator", lambda m: m.adagrad(0.05, 0.0, 1e-10)),
    ("adagrad-schedule", lambda m: m.adagrad(S(m), 0.5, 1e-6)),
]
TRANSFORMS: list[tuple[str, Make]] = [
    ("identity", lambda m: m.identity()),
    ("set_to_zero", lambda m: m.set_to_zero()),
    ("stateless", lambda m: m.stateless(lambda u, p: jax.tree.map(lambda x: -2.0 * x, u))),
    ("stateless_with_tree_map", lambda m: m.stateless_with_tree_map(lambda u, p: u + 0.1 * p)),
    ("with_extra_args_support", lambda m: m.with_extra_args_support(m.scale(0.5))),
    ("scale", lambda m: m.scale(-0.3)),
    ("scale_by_learning_rate", lambda m: m.scale_by_learning_rate(0.1)),
    ("scale_by_learning_rate-no_flip", lambda m: m.scale_by_learning_rate(0.1, flip_sign=False)),
    ("scale_by_learning_rate-schedule", lambda m: m.scale_by_learning_rate(S(m))),
    ("scale_by_schedule", lambda m: m.scale_by_schedule(S(m))),
    ("trace", lambda m: m.trace(0.9)),
    ("trace-nesterov", lambda m: m.trace(0.5, nesterov=True)),
    ("ema", lambda m: m.ema(0.9)),
    ("ema-biased", lambda m: m.ema(0.99, debias=False)),
    ("scale_by_adam", lambda m: m.scale_by_adam()),
    (
        "scale_by_adam-nesterov_eps_root",
        lambda m: m.scale_by_adam(0.8, 0.99, 1e-6, 1e-8, nesterov=True),
    ),
    ("scale_by_rms", lambda m: m.scale_by_rms()),
    ("scale_by_rms-variants", lambda m: m.scale_by_rms(0.99, 1e-6, 0.1, False, True)),
    ("scale_by_stddev", lambda m: m.scale_by_stddev()),
    # Debiased with eps well above the first step's rounding of a zero variance
    # (see test_reference.py: below it, both libraries return noise or NaN there).
    ("scale_by_stddev-variants", lambda m: m.scale_by_stddev(0.9, 1.0, 0.5, True, True)),
    ("scale_by_stddev-eps_outside", lambda m: m.scale_by_stddev(0.95, 1e-4, 0.0, False)),
    ("scale_by_rss", lambda m: m.scale_by_rss()),
    ("scale_by_rss-zero_accumulator", lambda m: m.scale_by_rss(0.0, 0.0)),
    ("add_decayed_weights", lambda m: m.add_decayed_weights(1e-2)),
    ("add_decayed_weights-mask", lambda m: m.add_decayed_weights(0.1, decay_mask)),
    ("clip", lambda m: m.clip(0.5)),
    ("clip_by_global_norm-above", lambda m: m.clip_by_global_norm(1.0)),
    ("clip_by_global_norm-mixed", lambda m: m.clip_by_global_norm(25.0)),
    ("clip_by_global_norm-below", lambda m: m.clip_by_global_norm(1e4)),
    ("clip_by_block_rms", lambda m: m.clip_by_block_rms(0.9)),
    ("adaptive_grad_clip", lambda m: m.adaptive_grad_clip(0.5)),
    # AGC's bound follows the params: alone, its unscaled updates walk them far, and the
    # ulp-level differences of XLA's fusions grow past RTOL by step 90; scaled, they do not.
    (
        "adaptive_grad_clip-eps_then_scale",
        lambda m: m.chain(m.adaptive_grad_clip(0.3, 0.1), m.scale(-0.01)),
    ),
    ("masked", lambda m: m.masked(m.scale_by_adam(b2=0.99), decay_mask)),
    (
        "chain",
        lambda m: m.chain(
            m.clip_by_global_norm(10.0),
            m.scale_by_adam(),
            m.add_decayed_weights(1e-4, decay_mask),
            m.scale_by_learning_rate(S(m)),
        ),
    ),
    (
        "named_chain",
        lambda m: m.named_chain(("clip", m.clip(1.0)), ("rms", m.rmsprop(1e-3, momentum=0.9))),
    ),
    # Finite gradients here; tests/test_guards.py and test_accumulate.py test the rest.
    ("apply_if_finite", lambda m: m.apply_if_finite(m.adam(1e-3), 2)),
    ("apply_every", lambda m: m.chain(m.apply_every(3), m.scale(-0.1))),
    (
        "conditionally_transform",
        lambda m: m.conditionally_transform(m.adam(1e-3), lambda step: step % 3 != 1),
    ),
    (
        "conditionally_mask",
        lambda m: m.conditionally_mask(m.sgd(1e-2, momentum=0.9), lambda step: step % 4 == 0),
    ),
    ("flatten", lambda m: m.flatten(m.adamw(_schedule(m), weight_decay=1e-2))),
    # Parameter groups; tests/test_partition.py has more, and Flax trees.
    (
        "partition",
        lambda m: m.partition(
            {"decay": m.adamw(1e-3, weight_decay=0.1), "no_decay": m.sgd(0.05, momentum=0.9)},
            lambda p: jax.tree.map(lambda x: "decay" if x.ndim > 1 else "no_decay", p),
        ),
    ),
    (
        "multi_transform",
        lambda m: m.multi_transform(
            {"a": m.adam(1e-3), "b": m.rmsprop(1e-3)}, {"layers": "a", "embed": "b", "scale": "a"}
        ),
    ),
    ("freeze", lambda m: m.chain(m.freeze(decay_mask), m.adam(1e-3))),
    # A mask tree: Optax 0.2.8 takes a mask function for a truthy leaf and freezes everything.
    (
        "selective_transform",
        lambda m: m.selective_transform(
            m.adam(1e-3),
            freeze_mask={"layers": [{"w": False, "b": True}], "embed": True, "scale": False},
        ),
    ),
]
CASES = [pytest.param(make, id=name) for name, make in ALIASES + TRANSFORMS]


@pytest.mark.parametrize("make", CASES)
def test_updates_params_and_moments_match_optax_at_every_step(make: Make) -> None:
    (got_updates, got_params, got_state), (want_updates, want_params, want_state) = trajectories(
        make
    )
    assert_trees_all_close_to_optax(got_updates, want_updates, "updates")
    assert_trees_all_close_to_optax(got_params, want_params, "final params")
    got_moments, want_moments = moments(got_state), moments(want_state)
    assert [n for n, _ in got_moments] == [n for n, _ in want_moments]
    for (name, got), (_, want) in zip(got_moments, want_moments, strict=True):
        assert_trees_all_close_to_optax(got, want, f"state.{name}")


def test_with_each_librarys_own_schedule_adam_differs_only_by_the_schedule() -> None:
    def schedule(lib: Any) -> Any:
        return lib.warmup_cosine_decay_schedule(0.0, 1e-2, 10, STEPS, 1e-4)

    (got, _, _), (want, _, _) = trajectories(lambda m: m.adam(schedule(m)))
    got = np.concatenate([np.reshape(x, (STEPS, -1)) for x in jax.tree.leaves(got)], 1)
    want = np.concatenate([np.reshape(x, (STEPS, -1)) for x in jax.tree.leaves(want)], 1)
    # Each step's updates are proportional: u_gc = r_t u_optax, r_t = lr_gc(t) / lr_optax(t)...
    largest = np.argmax(np.abs(want), axis=1)
    rows = np.arange(STEPS)
    with np.errstate(invalid="ignore"):
        ratio = np.where(want[rows, largest] != 0, got[rows, largest] / want[rows, largest], 1.0)
    np.testing.assert_allclose(got, ratio[:, None] * want, rtol=RTOL, atol=0)
    assert (ratio != 1).any(), "the schedules now agree: give the cases each library's own"
    # ...and r_t is the ratio of the schedules, within the bound tests/test_schedules.py checks.
    lr_optax = np.asarray(_run_optax(jax.vmap(schedule(optax)), jnp.arange(STEPS)), np.float64)
    np.testing.assert_allclose(ratio * lr_optax, lr_optax, rtol=1e-6, atol=1e-7 * 1e-2)


# Functions both libraries have that are not transformations (the per-example clips
# are compared with Optax in tests/test_clipping_more.py).
NOT_TRANSFORMATIONS = {
    "apply_updates",
    "global_norm",
    "exponential_decay",
    "join_schedules",
    "per_example_global_norm_clip",
    "per_example_layer_norm_clip",
    "skip_large_updates",  # should_skip functions: compared in tests/test_accumulate.py
    "skip_not_finite",
}


# Test modules that compare families of transforms with Optax themselves.
PARITY_MODULES: tuple[Any, ...] = (
    test_adaptive,
    test_lr_free,
    test_complex,
    test_contrib_moments,
    test_plateau,
    test_privacy,
    test_value_based,
    test_lbfgs,
    test_linesearch,
    test_trust,
    test_factored,
    test_utilities,
    test_galore,
    test_muon,
    test_sophia,
    test_sam,
    test_schedule_free,
    test_microbatch,
)


def test_the_cases_cover_every_alias_and_every_transform_both_libraries_have() -> None:
    aliases = {name.split("-")[0] for name, _ in ALIASES}
    assert aliases == {"sgd", "adam", "adamw", "nadam", "nadamw", "rmsprop", "adagrad"}
    optax_names = set(dir(optax)) | set(dir(optax.contrib))
    shared = {name for name in set(gc.__all__) & optax_names if name[0].islower()}
    builders = {n for n in shared - NOT_TRANSFORMATIONS if not n.endswith("_schedule")}
    covered = {name.split("-")[0] for name, _ in ALIASES + TRANSFORMS} | {"inject_hyperparams"}
    for module in PARITY_MODULES:  # each compares its OPTAX_PARITY_NAMES with Optax
        covered |= module.OPTAX_PARITY_NAMES
    # Compared with Optax in tests/test_averaging.py, tests/test_monitoring.py and
    # tests/test_inject_stateful.py: their updates are LookaheadParams or measurements.
    covered |= {
        "lookahead",
        "snapshot",
        "monitor",
        "measure_with_ema",
        "inject_stateful_hyperparams",
    }
    assert builders <= covered, f"not compared with Optax: {sorted(builders - covered)}"


# --- An everyday Optax training loop, run unchanged with `import gradchain as optax`. ---


def train(optax: Any, optimizer: str, steps: int = 60) -> np.ndarray:
    """Fits a small MLP to a generated regression; returns the loss at every step."""
    k_x, k_w, k_1, k_2 = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(k_x, (256, 8))
    y = jnp.sin(x @ jax.random.normal(k_w, (8, 1)))
    params = {
        "hidden": {"w": jax.random.normal(k_1, (8, 32)) / 8**0.5, "b": jnp.zeros((1, 32))},
        "out": {"w": jax.random.normal(k_2, (32, 1)) / 32**0.5, "b": jnp.zeros((1, 1))},
    }

    def loss_fn(params: Any) -> jax.Array:
        h = jnp.tanh(x @ params["hidden"]["w"] + params["hidden"]["b"])
        return jnp.mean((h @ params["out"]["w"] + params["out"]["b"] - y) ** 2)

    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=3e-2, warmup_steps=10, decay_steps=steps, end_value=1e-3
    )
    optimizers = {
        "adamw": lambda: optax.adamw(schedule, weight_decay=1e-3),
        "adam": lambda: optax.adam(schedule),
        "sgd": lambda: optax.sgd(schedule, momentum=0.9, nesterov=True),
    }
    tx = optax.chain(optax.clip_by_global_norm(1.0), optimizers[optimizer]())
    opt_state = tx.init(params)

    @jax.jit
    def step(params: Any, opt_state: Any) -> tuple[Any, Any, jax.Array]:
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for _ in range(steps):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    return np.array(losses)


@pytest.mark.parametrize("optimizer", ["adamw", "adam", "sgd"])
def test_an_optax_training_loop_runs_unchanged_with_gradchain_as_optax(optimizer: str) -> None:
    got = train(gc, optimizer)
    want = _run_optax(train, optax, optimizer)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert got[-1] < 0.5 * got[0], got


# --- inject_hyperparams, against Optax's, including a value written into the state. ---

INJECT_STEPS = 50
SET_AT = 25  # the step before which both programs write state.hyperparams["learning_rate"]
LEARNING_RATES: dict[str, Make] = {"constant": lambda lib: 1e-2, "schedule": _schedule}


def inject_run(lib: Any, learning_rate: Any, **hyperparams: Any) -> tuple[list[Any], Any, Any]:
    """50 steps of inject_hyperparams(adam), writing the learning rate before step SET_AT.

    Returns each step's (updates, state.hyperparams), the final params and state.
    """
    tx = lib.inject_hyperparams(lib.adam)(learning_rate=learning_rate, **hyperparams)

    @jax.jit
    def step(params: Any, state: Any, g: Any) -> tuple[Any, Any, Any]:
        updates, state = tx.update(g, state, params)
        return lib.apply_updates(params, updates), state, updates

    def run() -> tuple[list[Any], Any, Any]:
        params, state, history = PARAMS, tx.init(PARAMS), []
        for t in range(INJECT_STEPS):
            if t == SET_AT:
                state.hyperparams["learning_rate"] = jnp.asarray(3e-3)
            grads = jax.tree.map(lambda g, t=t: g[t], GRADS)
            params, state, updates = step(params, state, grads)
            history.append((updates, dict(state.hyperparams)))
        return history, params, state

    return _run_optax(run) if lib is optax else run()


def _assert_inject_runs_agree(lr: Make, **hyperparams: Any) -> None:
    got_history, got_params, got_state = inject_run(gc, lr(gc), **hyperparams)
    # The write is used from step SET_AT on, unless a schedule recomputes the rate (as in Optax).
    used = float(got_history[SET_AT][1]["learning_rate"])
    assert (used == pytest.approx(3e-3, rel=1e-6)) is (lr is LEARNING_RATES["constant"]), used
    want_history, want_params, want_state = inject_run(optax, lr(optax), **hyperparams)
    for t, ((got_u, got_hp), (want_u, want_hp)) in enumerate(
        zip(got_history, want_history, strict=True)
    ):
        assert sorted(got_hp) == sorted(want_hp), f"hyperparameter names at step {t}"
        assert_trees_all_close_to_optax(got_hp, want_hp, f"hyperparams at step {t}")
        assert_trees_all_close_to_optax(got_u, want_u, f"updates at step {t}")
    assert_trees_all_close_to_optax(got_params, want_params, "final params")
    # Documented difference (README): gradchain states count in `step`, Optax's in `count`.
    assert int(got_state.step) == int(want_state.count) == INJECT_STEPS
    got_moments, want_moments = moments(got_state), moments(want_state)
    assert [n for n, _ in got_moments] == [n for n, _ in want_moments] == ["mu", "nu"]
    for (name, got), (_, want) in zip(got_moments, want_moments, strict=True):
        assert_trees_all_close_to_optax(got, want, f"state.{name}")


@pytest.mark.parametrize("lr", LEARNING_RATES.values(), ids=LEARNING_RATES.keys())
def test_inject_hyperparams_adam_with_every_hyperparameter_given_matches_optax(lr: Make) -> None:
    _assert_inject_runs_agree(lr, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0)


@pytest.mark.parametrize("lr", LEARNING_RATES.values(), ids=LEARNING_RATES.keys())
def test_inject_hyperparams_adam_given_only_the_learning_rate_matches_optax(lr: Make) -> None:
    _assert_inject_runs_agree(lr)


def test_inject_hyperparams_state_holds_the_factorys_defaults_as_optax_does() -> None:
    got = gc.inject_hyperparams(gc.adam)(learning_rate=1e-3).init(PARAMS)
    want = _run_optax(optax.inject_hyperparams(optax.adam)(learning_rate=1e-3).init, PARAMS)
    assert sorted(got.hyperparams) == sorted(want.hyperparams)
