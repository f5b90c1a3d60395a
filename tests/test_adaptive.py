"""The adaptive optimizers: against Optax 0.2.8, against their papers, on two test functions.

1. Optax parity. Each transform and alias runs 100 steps of the same random
   float32 gradients on a nested pytree, under ``jit`` and ``lax.scan``, beside
   Optax's; the updates at every step, the final parameters and the
   per-parameter state must agree to float32 rounding (``RTOL``; bit-identical
   at the time of writing, except NovoGrad, see ``RTOL_NOVOGRAD``). Three
   differences are on purpose and pinned by their own tests: RAdam's
   rectifier (Optax computes it with a float32 cancellation), Rprop (Optax
   0.2.8 returns each update one step late) and ``adadelta()`` without a
   learning rate (Optax's goes uphill).
2. The papers. Each transform and alias against a float64 NumPy loop of its
   paper's equations, 60 steps on a small pytree, to float32 accuracy.
3. Two test functions. Every alias minimizes a parabola and the Rosenbrock
   function in float32 within a fixed number of steps, inside ``lax.scan``.
4. The house rule for weight decay (``gradchain/_optimizers.py``): without it
   an alias's state has Optax's members and fields; with it the decay is
   applied as AdamW's and is a settable hyperparameter.

Optax mixes int32 counts with Python floats, which strict promotion refuses, so
every Optax call runs under ``jax.numpy_dtype_promotion("standard")``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradchain as gc
from gradchain._hyperparams import complement_of
from gradchain._radam import _radam_rectifier

# --- 1. Optax parity -----------------------------------------------------------------------

# Bit-identical where the arithmetic is the same; the bound allows a different fusion (an FMA).
RTOL = 1e-6
ATOL_FRACTION = 1e-7  # times the leaf's largest value: what stands in for 0
# NovoGrad: gradchain sums the squares of a layer's gradient for ||g||^2, Optax squares the
# rounded root of that sum (one more rounding); the momentum then adds terms of both signs.
# Measured: 6.7e-7 relative (transform), up to 2 ulps (4e-9) absolute in the alias's updates.
RTOL_NOVOGRAD = 1e-5
STEPS = 100


def parity_problem(seed: int) -> tuple[Any, Any]:
    """Float32 parameters and STEPS stacked gradients on a nested dict/list pytree.

    The embedding's gradient is sparse (rows not looked up get exact zeros), which
    reaches Adagrad's zero-accumulator branch; the scalar is a large-scale leaf.
    Shared with tests/test_optax_parity.py, which draws it with another seed.
    """
    rng = np.random.default_rng(seed)
    shapes = {"layers": [{"w": (5, 3), "b": (3,)}], "embed": (7, 4), "scale": ()}
    is_shape = lambda x: isinstance(x, tuple)  # noqa: E731
    params = jax.tree.map(lambda s: rng.normal(size=s).astype(np.float32), shapes, is_leaf=is_shape)
    grads = jax.tree.map(
        lambda s: rng.normal(size=(STEPS, *s)).astype(np.float32), shapes, is_leaf=is_shape
    )
    grads["embed"] *= rng.random((STEPS, 7, 1)) < 0.3
    grads["scale"] *= np.float32(20.0)
    return params, grads


PARAMS, GRADS = parity_problem(7)


def decay_mask(params: Any) -> Any:
    """Decay matrices only, not biases or scalars: the usual AdamW mask, as a function."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def schedule(step: Any) -> Any:
    """One schedule function for both libraries (so the comparison measures the transforms)."""
    return gc.exponential_decay(1e-2, 10, 0.8)(step)


def _trajectory(lib: Any, tx: Any, params: Any, grads: Any) -> tuple[Any, Any, Any]:
    def step(carry: tuple[Any, Any], g: Any) -> tuple[tuple[Any, Any], Any]:
        params, state = carry
        updates, state = tx.update(g, state, params)
        return (lib.apply_updates(params, updates), state), updates

    (params, state), updates = jax.lax.scan(step, (params, tx.init(params)), grads)
    return updates, params, state


def trajectories(
    make_gc: Callable[[], Any],
    make_optax: Callable[[], Any],
    problem: tuple[Any, Any] = (PARAMS, GRADS),
) -> tuple[Any, Any]:
    """(updates, final params, final state) of gradchain and of Optax, jitted together.

    ``problem`` is (params, stacked gradients), by default this module's.
    """

    @jax.jit
    def run(params: Any, grads: Any) -> tuple[Any, Any]:
        got = _trajectory(gc, make_gc(), params, grads)
        with jax.numpy_dtype_promotion("standard"):
            want = _trajectory(optax, make_optax(), params, grads)
        return got, want

    return run(*problem)


PER_PARAMETER_FIELDS = frozenset(
    {"mu", "nu", "nu_max", "e_g", "e_x", "m", "v", "n", "g", "step_sizes", "prev_updates"}
)


def per_parameter_state(
    state: Any, fields: frozenset[str] = PER_PARAMETER_FIELDS
) -> list[tuple[str, Any]]:
    """The ``fields`` of a state, in order, by name (both libraries name them alike)."""
    found: list[tuple[str, Any]] = []

    def visit(node: Any) -> None:
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            for name in node._fields:
                if name in fields:
                    found.append((name, getattr(node, name)))
                else:
                    visit(getattr(node, name))
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


def assert_trees_close(got: Any, want: Any, what: str, rtol: float = RTOL) -> None:
    """Same key paths, shapes and dtypes; values within rtol (ATOL_FRACTION of the leaf near 0)."""
    assert _key_paths(got) == _key_paths(want), what
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert (g.shape, g.dtype) == (w.shape, w.dtype), what
        atol = ATOL_FRACTION * float(np.max(np.abs(w), initial=0.0))
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=what)


def assert_runs_agree(make_gc: Any, make_optax: Any, rtol: float = RTOL) -> None:
    (got_u, got_p, got_s), (want_u, want_p, want_s) = trajectories(make_gc, make_optax)
    assert_trees_close(got_u, want_u, "updates", rtol)
    assert_trees_close(got_p, want_p, "final params", rtol)
    got_fields, want_fields = per_parameter_state(got_s), per_parameter_state(want_s)
    assert [n for n, _ in got_fields] == [n for n, _ in want_fields]
    for (name, got), (_, want) in zip(got_fields, want_fields, strict=True):
        assert_trees_close(got, want, f"state.{name}", rtol)


Make = Callable[[Any], Any]
M = decay_mask
S = schedule
# (id, make(lib)): the same call builds both libraries' transformation.
SAME_CALL: list[tuple[str, Make]] = [
    ("scale_by_adamax", lambda m: m.scale_by_adamax()),
    ("scale_by_adamax-hyperparams", lambda m: m.scale_by_adamax(0.8, 0.99, 1e-6)),
    ("scale_by_amsgrad", lambda m: m.scale_by_amsgrad()),
    ("scale_by_amsgrad-eps_root", lambda m: m.scale_by_amsgrad(0.8, 0.99, 1e-6, 1e-8)),
    ("scale_by_amsgrad-no_debiasing", lambda m: m.scale_by_amsgrad(0.9, 0.99, 1e-8, 0, None, 0, 0)),
    ("scale_by_yogi", lambda m: m.scale_by_yogi()),
    ("scale_by_yogi-hyperparams", lambda m: m.scale_by_yogi(0.8, 0.99, 1e-4, 1e-8, 0.1)),
    ("scale_by_belief", lambda m: m.scale_by_belief()),
    ("scale_by_belief-nesterov", lambda m: m.scale_by_belief(0.8, 0.99, 1e-8, nesterov=True)),
    ("scale_by_adadelta", lambda m: m.scale_by_adadelta()),
    ("scale_by_adadelta-hyperparams", lambda m: m.scale_by_adadelta(0.95, 1e-4)),
    ("scale_by_adan", lambda m: m.scale_by_adan()),
    ("scale_by_adan-hyperparams", lambda m: m.scale_by_adan(0.9, 0.8, 0.95, 1e-6, 1e-8)),
    ("scale_by_lion", lambda m: m.scale_by_lion()),
    ("scale_by_lion-smooth", lambda m: m.scale_by_lion(mode="smooth", smooth_beta=3.0)),
    ("scale_by_lion-refined", lambda m: m.scale_by_lion(0.5, 0.9, mode="refined")),
    ("scale_by_sign", lambda m: m.scale_by_sign()),
    ("adamax", lambda m: m.adamax(1e-3)),
    ("adamax-schedule", lambda m: m.adamax(S, b1=0.8)),
    ("adamaxw", lambda m: m.adamaxw(1e-3)),
    ("adamaxw-mask", lambda m: m.adamaxw(3e-3, weight_decay=0.1, mask=M)),
    ("amsgrad", lambda m: m.amsgrad(1e-3)),
    ("amsgrad-schedule", lambda m: m.amsgrad(S, b2=0.99, bias_correction_mu=False)),
    ("yogi", lambda m: m.yogi(1e-2)),
    ("adabelief", lambda m: m.adabelief(1e-3)),
    ("adabelief-nesterov_schedule", lambda m: m.adabelief(S, nesterov=True)),
    ("adadelta-learning_rate", lambda m: m.adadelta(1.0)),
    ("adadelta-coupled_weight_decay", lambda m: m.adadelta(0.5, 0.95, 1e-5, 0.1, M)),
    ("adan", lambda m: m.adan(1e-3)),
    ("adan-weight_decay", lambda m: m.adan(S, weight_decay=0.05, mask=M)),
    ("lion", lambda m: m.lion(1e-4)),
    ("lion-mask_schedule", lambda m: m.lion(S, 0.95, 0.98, weight_decay=0.1, mask=M)),
    ("sign_sgd", lambda m: m.sign_sgd(1e-3)),
    ("sign_sgd-schedule", lambda m: m.sign_sgd(S)),
]
NOVOGRAD: list[tuple[str, Make]] = [
    ("scale_by_novograd", lambda m: m.scale_by_novograd(weight_decay=0.1)),
    ("novograd", lambda m: m.novograd(1e-2)),
    ("novograd-weight_decay", lambda m: m.novograd(S, 0.95, 0.5, 1e-8, 0, weight_decay=0.01)),
]


def _sgdw(o: Any) -> Any:
    return o.chain(o.trace(0.9), o.add_decayed_weights(0.01, M), o.scale_by_learning_rate(0.05))


def _rmspropw(o: Any) -> Any:
    return o.chain(
        o.scale_by_rms(),
        o.add_decayed_weights(0.01),
        o.scale_by_learning_rate(1e-3),
        o.trace(0.9),
    )


def _then_decay(scaling: Callable[[Any], Any], wd: float, lr: Any) -> Callable[[Any], Any]:
    """Optax's chain for a house-rule alias with a weight decay: scaling, decay, rate."""
    return lambda o: o.chain(scaling(o), o.add_decayed_weights(wd), o.scale_by_learning_rate(lr))


# (id, gradchain's call, Optax's chain): the house rule, the decay right before the rate.
WEIGHT_DECAY: list[tuple[str, Callable[[], Any], Make]] = [
    ("sgd", lambda: gc.sgd(0.05, momentum=0.9, weight_decay=0.01, mask=M), _sgdw),
    (
        "adam",
        lambda: gc.adam(1e-3, weight_decay=0.1, mask=M),
        lambda o: o.adamw(1e-3, 0.9, 0.999, 1e-8, 0, None, 0.1, M),
    ),
    ("nadam", lambda: gc.nadam(S, weight_decay=0.05), lambda o: o.nadamw(S, weight_decay=0.05)),
    ("rmsprop", lambda: gc.rmsprop(1e-3, momentum=0.9, weight_decay=0.01), _rmspropw),
    (
        "adagrad",
        lambda: gc.adagrad(0.1, weight_decay=0.01),
        _then_decay(lambda o: o.scale_by_rss(), 0.01, 0.1),
    ),
    (
        "adamax",
        lambda: gc.adamax(1e-3, weight_decay=0.01),
        lambda o: o.adamaxw(1e-3, weight_decay=0.01),
    ),
    (
        "amsgrad",
        lambda: gc.amsgrad(1e-3, weight_decay=0.01),
        _then_decay(lambda o: o.scale_by_amsgrad(), 0.01, 1e-3),
    ),
    (
        "yogi",
        lambda: gc.yogi(1e-2, weight_decay=0.01),
        _then_decay(lambda o: o.scale_by_yogi(), 0.01, 1e-2),
    ),
    (
        "adabelief",
        lambda: gc.adabelief(1e-3, weight_decay=0.01),
        _then_decay(lambda o: o.scale_by_belief(), 0.01, 1e-3),
    ),
    (
        "sign_sgd",
        lambda: gc.sign_sgd(1e-3, weight_decay=0.01),
        _then_decay(lambda o: o.scale_by_sign(), 0.01, 1e-3),
    ),
]


def _same(make: Make) -> tuple[Callable[[], Any], Callable[[], Any]]:
    return (lambda: make(gc)), (lambda: make(optax))


@pytest.mark.parametrize("make", [pytest.param(m, id=i) for i, m in SAME_CALL])
def test_updates_params_and_state_match_optax_at_every_step(make: Make) -> None:
    assert_runs_agree(*_same(make))


@pytest.mark.parametrize("make", [pytest.param(m, id=i) for i, m in NOVOGRAD])
def test_novograd_matches_optax_up_to_the_rounding_of_the_layer_norm(make: Make) -> None:
    assert_runs_agree(*_same(make), rtol=RTOL_NOVOGRAD)


@pytest.mark.parametrize(
    ("make_gc", "make_optax"), [pytest.param(g, o, id=i) for i, g, o in WEIGHT_DECAY]
)
def test_an_alias_given_a_weight_decay_matches_optaxs_chain_with_it_before_the_rate(
    make_gc: Callable[[], Any], make_optax: Make
) -> None:
    assert_runs_agree(make_gc, lambda: make_optax(optax))


def _flat_steps(tree: Any) -> np.ndarray:
    """(STEPS, n) float64: every step's updates as one row."""
    return np.concatenate([np.reshape(x, (STEPS, -1)) for x in jax.tree.leaves(tree)], axis=1)


def _rho_direct_float32(b2: float, t: np.ndarray) -> np.ndarray:
    """RAdam's rho_t as the paper writes it, in float32 from the exact rho_inf (Optax's form)."""
    steps = jnp.asarray(t, jnp.float32)
    b2t = jnp.float32(b2) ** steps
    return np.asarray(jnp.float32(2 / (1 - b2) - 1) - 2 * steps * b2t / (1 - b2t))


def _rho_float64(b2: float, t: np.ndarray) -> np.ndarray:
    b2t = b2 ** t.astype(np.float64)
    return (2 / (1 - b2) - 1) - 2 * t * b2t / (1 - b2t)


# (id, make, how far Optax's rectifier is off at most, measured: 6.0e-3 for b2 = 0.999)
RADAM: list[tuple[str, Make, float]] = [
    ("scale_by_radam", lambda m: m.scale_by_radam(), 3e-3),
    ("scale_by_radam-nesterov", lambda m: m.scale_by_radam(0.8, 0.99, nesterov=True), 3e-5),
    ("radam", lambda m: m.radam(1e-3), 3e-3),
    ("radam-threshold_schedule", lambda m: m.radam(S, b2=0.995, threshold=6.0), 3e-5),
]


@pytest.mark.parametrize(("make", "off"), [pytest.param(m, o, id=i) for i, m, o in RADAM])
def test_radam_differs_from_optax_only_by_optaxs_float32_rectifier(make: Make, off: float) -> None:
    # Optax 0.2.8 computes rho_t = rho_inf - 2 t b2^t / (1 - b2^t) directly in float32, which
    # cancels (test_radams_rho_matches_float64_...); gradchain's r_t is float64's to 1e-6
    # (the float64 reference below). All else is the same arithmetic, so each step's updates
    # differ by one factor, r_t(gradchain) / r_t(Optax): 1 while unrectified, near 1 after.
    (got_u, _, got_s), (want_u, _, want_s) = trajectories(*_same(make))
    for (name, got), (_, want) in zip(
        per_parameter_state(got_s), per_parameter_state(want_s), strict=True
    ):
        assert_trees_close(got, want, f"state.{name}")  # the moments are Optax's, bit for bit
    got, want = _flat_steps(got_u), _flat_steps(want_u)
    largest = np.argmax(np.abs(want), axis=1)
    ratio = got[np.arange(STEPS), largest] / want[np.arange(STEPS), largest]
    np.testing.assert_allclose(got, ratio[:, None] * want, rtol=RTOL, atol=1e-12)
    assert (ratio[:5] == 1).all()  # rho_t < 5 for t <= 5 whatever b2: the same SGD step
    assert off < np.max(np.abs(ratio - 1)) < 1e-2


def test_radams_rho_matches_float64_where_the_direct_float32_form_is_off_by_percents() -> None:
    t = np.unique(np.concatenate([np.arange(1, 300), np.logspace(2.5, 9.3, 40).astype(np.int64)]))
    rates = (0.0, 0.25, 0.6, 0.9, 0.99, 0.999, 0.9999)
    b2s = jnp.asarray(rates, jnp.float32)
    complements = jnp.stack([complement_of(b2, b) for b2, b in zip(rates, b2s, strict=True)])
    rectifier = jax.vmap(jax.vmap(_radam_rectifier, (None, None, 0)), (0, 0, None))
    rho, _ = jax.jit(rectifier)(b2s, complements, jnp.asarray(t, jnp.int32))
    for b2, got in zip(rates, np.asarray(rho), strict=True):
        want = _rho_float64(b2, t) if b2 > 0 else np.ones(len(t))
        np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=f"b2={b2}")
    direct = _rho_direct_float32(0.999, np.arange(1, 7))  # Optax 0.2.8's rho_1 is 0.974, not 1
    assert np.max(np.abs(direct - _rho_float64(0.999, np.arange(1, 7)))) > 0.02


# (id, make, the sign of the updates relative to the direction sign(g) step_size)
RPROP: list[tuple[str, Make, float]] = [
    ("scale_by_rprop", lambda m: m.scale_by_rprop(1e-2, 0.4, 1.3, 1e-4, 0.5), 1.0),
    ("rprop", lambda m: m.rprop(1e-3), -1.0),
]


@pytest.mark.parametrize(("make", "sign"), [pytest.param(m, s, id=i) for i, m, s in RPROP])
def test_rprop_matches_optax_whose_updates_come_one_step_late(make: Make, sign: float) -> None:
    # Optax 0.2.8 returns each step's update at the next step (zeroed if the gradient's sign
    # flips there), and zeros at the first: google-deepmind/optax#1725. The step sizes, and
    # the update it keeps in its state, are gradchain's.
    (got_u, _, got_s), (want_u, _, want_s) = trajectories(*_same(make))
    for (name, got), (_, want) in zip(
        per_parameter_state(got_s), per_parameter_state(want_s), strict=True
    ):
        assert_trees_close(got, want, f"state.{name}")

    def late(direction: np.ndarray, g: np.ndarray) -> np.ndarray:
        shifted = np.concatenate([np.zeros_like(direction[:1]), direction[:-1]])
        return np.where(g * shifted < 0, 0.0, shifted)

    for got, want, g in zip(
        jax.tree.leaves(got_u), jax.tree.leaves(want_u), jax.tree.leaves(GRADS), strict=True
    ):
        np.testing.assert_array_equal(sign * np.asarray(want), late(sign * np.asarray(got), g))
        assert np.abs(got[0]).max() > 0 and np.abs(want[0]).max() == 0


def _loss_after_five_adadelta_steps(lib: Any, tx: Any) -> float:
    def run(params: jax.Array) -> jax.Array:
        def body(carry: tuple[Any, Any], _: Any) -> tuple[tuple[Any, Any], None]:
            params, state = carry
            grads = jax.grad(lambda w: jnp.sum(w**2))(params)
            updates, state = tx.update(grads, state, params)
            return (lib.apply_updates(params, updates), state), None

        (params, _), _ = jax.lax.scan(body, (params, tx.init(params)), None, 5)
        return jnp.sum(params**2)

    return float(jax.jit(run)(jnp.array([1.0, 2.0, 3.0])))


def test_adadelta_without_a_learning_rate_descends_where_optax_climbs() -> None:
    got = _loss_after_five_adadelta_steps(gc, gc.adadelta())
    with jax.numpy_dtype_promotion("standard"):
        want = _loss_after_five_adadelta_steps(optax, optax.adadelta())
    assert got < 14.0 < want  # the loss starts at 14
    assert got == _loss_after_five_adadelta_steps(gc, gc.adadelta(1.0))
    state = gc.adadelta().init(jnp.zeros(3))
    assert float(gc.get_hyperparams(state)["learning_rate"]) == 1.0


def test_the_cases_cover_every_transform_and_alias_of_this_family() -> None:
    covered = {
        name.split("-")[0]
        for name in [i for i, _ in SAME_CALL + NOVOGRAD] + [i for i, _, _ in RADAM]
    }
    covered |= {name for name, _, _ in RPROP} | {"adadelta"}
    assert covered >= OPTAX_PARITY_NAMES


OPTAX_PARITY_NAMES = frozenset(
    {
        "scale_by_adamax",
        "scale_by_amsgrad",
        "scale_by_yogi",
        "scale_by_belief",
        "scale_by_radam",
        "scale_by_novograd",
        "scale_by_adadelta",
        "scale_by_adan",
        "scale_by_lion",
        "scale_by_sign",
        "scale_by_rprop",
        "adamax",
        "adamaxw",
        "amsgrad",
        "yogi",
        "adabelief",
        "radam",
        "novograd",
        "adadelta",
        "adan",
        "lion",
        "sign_sgd",
        "rprop",
    }
)
"""The names this file compares with Optax (tests/test_optax_parity.py counts them as covered)."""


# --- 2. The papers' equations, in float64 ----------------------------------------------------

# Relative tolerances, as tests/test_reference.py explains them: float32 rounds each operation
# to 6e-8, moments are EMAs whose errors decay; the largest error is the float32 debiasing
# 1 - b^t, ~6e-8 / (1 - b) relative at t = 1 (halved by the root): 3e-5 for b = 0.999.
REF_RTOL = 3e-6
REF_RTOL_B0999 = 3e-5
REF_STEPS = 60
REF_SHAPES = {"b": (3,), "s": (), "w": (4, 3)}  # in jax.tree order, so the slices below hold
REF_SCALES = {"b": 0.1, "s": 10.0, "w": 1.0}
ZERO_STEPS = 10  # b[0] starts at 0 and gets exact zero gradients for its first ZERO_STEPS steps


def _ref_problem() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(3)
    params = {k: rng.normal(size=s).astype(np.float32) for k, s in REF_SHAPES.items()}
    grads = {
        k: (REF_SCALES[k] * rng.normal(size=(REF_STEPS, *s))).astype(np.float32)
        for k, s in REF_SHAPES.items()
    }
    params["b"][0] = 0.0
    grads["b"][:ZERO_STEPS, 0] = 0.0
    return params, grads


REF_PARAMS, REF_GRADS = _ref_problem()
_SIZES = [math.prod(s) for s in REF_SHAPES.values()]
LAYERS = [slice(a, a + n) for a, n in zip(np.cumsum([0, *_SIZES[:-1]]), _SIZES, strict=True)]
DECAY_MASK = {"b": False, "s": True, "w": True}
MASK = np.concatenate([np.full(n, DECAY_MASK[k]) for k, n in zip(REF_SHAPES, _SIZES, strict=True)])


def _flat(tree: Any, lead: int = 0) -> np.ndarray:
    leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]
    return np.concatenate([x.reshape(*x.shape[:lead], -1) for x in leaves], axis=-1)


# Each reference maps (STEPS, n) float64 gradients and the initial parameters w0 to the
# (STEPS, n) updates w_{t+1} - w_t (or, for a transform, its output), one loop per paper.


def adamax_ref(g: np.ndarray, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> Any:
    """AdaMax, Kingma & Ba 2015, section 7.1 (Algorithm 2): u_t = max(b2 u_{t-1}, |g_t|).

    The direction is m_t / ((1 - b1^t) u_t). gradchain (as Optax) adds ``eps`` to |g_t|
    inside the maximum; eps = 0 is the paper's rule.
    """
    m, u, out = np.zeros(g.shape[1]), np.zeros(g.shape[1]), []
    for t, g_t in enumerate(g, start=1):
        m = b1 * m + (1 - b1) * g_t
        u = np.maximum(b2 * u, np.abs(g_t) + eps)
        out.append(m / ((1 - b1**t) * u))
    return np.array(out)


def amsgrad_ref(
    g: np.ndarray,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    debias: bool = True,
    max_before_debias: bool = False,
) -> Any:
    """AMSGrad, Reddi et al. 2018, Algorithm 2: v_hat_t = max(v_hat_{t-1}, v_t), m_t / sqrt(v_hat).

    With a constant b1 (the paper's b1t = b1). The paper debiases neither moment
    (``debias=False``); debiased, the maximum is of v_t / (1 - b2^t) (Optax) or taken
    before dividing by 1 - b2^t (PyTorch, ``max_before_debias``). eps outside the root.
    """
    m, v, vmax, out = np.zeros(g.shape[1]), np.zeros(g.shape[1]), np.zeros(g.shape[1]), []
    for t, g_t in enumerate(g, start=1):
        m = b1 * m + (1 - b1) * g_t
        v = b2 * v + (1 - b2) * g_t**2
        c1, c2 = (1 - b1**t, 1 - b2**t) if debias else (1.0, 1.0)
        if max_before_debias:
            vmax = np.maximum(vmax, v)
            v_hat = vmax / c2
        else:
            vmax = np.maximum(vmax, v / c2)
            v_hat = vmax
        out.append((m / c1) / (np.sqrt(v_hat) + eps))
    return np.array(out)


def yogi_ref(
    g: np.ndarray,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-3,
    m0: float = 1e-6,
    v0: float = 1e-6,
) -> Any:
    """Yogi, Zaheer et al. 2018, Algorithm 2: v_t = v_{t-1} - (1 - b2) sign(v_{t-1} - g_t^2) g_t^2.

    m_t as Adam's; both moments divided by 1 - b^t as in Adam (Optax's form), starting from
    m0 and v0 (1e-6 in Optax, 0 in the paper).
    """
    m, v, out = np.full(g.shape[1], m0), np.full(g.shape[1], v0), []
    for t, g_t in enumerate(g, start=1):
        m = b1 * m + (1 - b1) * g_t
        v = v - (1 - b2) * np.sign(v - g_t**2) * g_t**2
        out.append((m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps))
    return np.array(out)


def belief_ref(
    g: np.ndarray,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-16,
    eps_root: float = 1e-16,
    nesterov: bool = False,
) -> Any:
    """AdaBelief, Zhuang et al. 2020, Algorithm 2: s_t = b2 s + (1 - b2)(g_t - m_t)^2 + eps.

    The paper's two epsilons are gradchain's ``eps_root`` (inside s_t) and ``eps``
    (outside the root). Nesterov's look-ahead as in gradchain's NAdam.
    """
    m, s, out = np.zeros(g.shape[1]), np.zeros(g.shape[1]), []
    for t, g_t in enumerate(g, start=1):
        m = b1 * m + (1 - b1) * g_t
        s = b2 * s + (1 - b2) * (g_t - m) ** 2 + eps_root
        if nesterov:
            m_hat = b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g_t / (1 - b1**t)
        else:
            m_hat = m / (1 - b1**t)
        out.append(m_hat / (np.sqrt(s / (1 - b2**t)) + eps))
    return np.array(out)


def radam_ref(
    g: np.ndarray, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, threshold: float = 5.0
) -> Any:
    """RAdam, Liu et al. 2020, Algorithm 2 (rectified where rho_t > 4 there, >= threshold here)."""
    m, v, out = np.zeros(g.shape[1]), np.zeros(g.shape[1]), []
    rho_inf = 2 / (1 - b2) - 1
    for t, g_t in enumerate(g, start=1):
        m = b1 * m + (1 - b1) * g_t
        v = b2 * v + (1 - b2) * g_t**2
        m_hat = m / (1 - b1**t)
        rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
        if rho >= threshold:
            r = np.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
            out.append(r * m_hat / (np.sqrt(v / (1 - b2**t)) + eps))
        else:
            out.append(m_hat)
    return np.array(out)


def adan_ref(
    g: np.ndarray, b1: float = 0.98, b2: float = 0.92, b3: float = 0.99, eps: float = 1e-8
) -> Any:
    """Adan, Xie et al. 2022, Algorithm 1, with b = 1 - the paper's beta, debiased as in its code.

    m_t = b1 m + (1-b1) g_t, v_t = b2 v + (1-b2)(g_t - g_{t-1}), n_t = b3 n + (1-b3)
    (g_t + (1-b2)(g_t - g_{t-1}))^2 (the difference is 0 at t = 1), direction
    (m_hat + (1-b2) v_hat) / (sqrt(n_hat) + eps).
    """
    m, v, n, prev = (np.zeros(g.shape[1]) for _ in range(4))
    out = []
    for t, g_t in enumerate(g, start=1):
        diff = g_t - prev if t > 1 else np.zeros_like(g_t)
        m = b1 * m + (1 - b1) * g_t
        v = b2 * v + (1 - b2) * diff
        n = b3 * n + (1 - b3) * (g_t + (1 - b2) * diff) ** 2
        c1, c2, c3 = 1 - b1**t, 1 - b2**t, 1 - b3**t
        out.append((m / c1 + (1 - b2) * v / c2) / (np.sqrt(n / c3) + eps))
        prev = g_t
    return np.array(out)


def adadelta_ref(g: np.ndarray, rho: float = 0.9, eps: float = 1e-6) -> Any:
    """ADADELTA, Zeiler 2012, Algorithm 1: dx_t = -RMS[dx]_{t-1} / RMS[g]_t g_t; returns -dx_t.

    (The transform's output points uphill, like the gradient; the alias negates it.)
    """
    eg, ex, out = np.zeros(g.shape[1]), np.zeros(g.shape[1]), []
    for g_t in g:
        eg = rho * eg + (1 - rho) * g_t**2
        dx = -np.sqrt(ex + eps) / np.sqrt(eg + eps) * g_t
        ex = rho * ex + (1 - rho) * dx**2
        out.append(-dx)
    return np.array(out)


def lion_ref(g: np.ndarray, b1: float = 0.9, b2: float = 0.99, mode: str = "hard") -> Any:
    """Lion, Chen et al. 2023, Algorithm 2: sign(c_t), c_t = b1 m + (1 - b1) g_t; then m moves."""
    m, out = np.zeros(g.shape[1]), []
    for g_t in g:
        c = b1 * m + (1 - b1) * g_t
        if mode == "hard":
            out.append(np.sign(c))
        elif mode == "smooth":
            out.append(np.tanh(2.0 * c))
        else:
            out.append(np.where(np.abs(c) < 1, c, np.sign(c)))
        m = b2 * m + (1 - b2) * g_t
    return np.array(out)


def sign_ref(g: np.ndarray) -> Any:
    """signSGD, Bernstein et al. 2018, Algorithm 1: the direction is sign(g_t)."""
    return np.sign(g)


def rprop_ref(
    g: np.ndarray,
    delta0: float,
    down: float = 0.5,
    up: float = 1.2,
    lo: float = 1e-6,
    hi: float = 50.0,
) -> Any:
    """Rprop, Riedmiller & Braun 1993, in Igel & Hüsken's iRprop- form (no weight-backtracking).

    Delta grows by ``up`` (at most ``hi``) while sign(g) holds, shrinks by ``down`` (at least
    ``lo``) when it flips; after a flip the step is skipped and g_{t-1} is taken as 0. The
    direction is sign(g_t) Delta_t (the alias negates it).
    """
    delta, prev, out = np.full(g.shape[1], delta0), np.zeros(g.shape[1]), []
    for g_t in g:
        agree = g_t * prev
        delta = np.where(agree > 0, np.minimum(delta * up, hi), delta)
        delta = np.where(agree < 0, np.maximum(delta * down, lo), delta)
        step = np.where(agree < 0, 0.0, np.sign(g_t) * delta)
        prev = np.where(agree < 0, 0.0, g_t)
        out.append(step)
    return np.array(out)


def decoupled(
    direction: np.ndarray, w0: np.ndarray, lr: float, wd: float = 0.0, mask: Any = True
) -> Any:
    """w_{t+1} = w_t - lr (d_t + wd mask w_t): an alias, its decay right before the rate (AdamW)."""
    w, out = w0.copy(), []
    for d_t in direction:
        u = -lr * (d_t + wd * np.where(mask, w, 0.0))
        w = w + u
        out.append(u)
    return np.array(out)


def novograd_ref(
    g: np.ndarray,
    w0: np.ndarray,
    lr: float,
    b1: float = 0.9,
    b2: float = 0.25,
    eps: float = 1e-6,
    wd: float = 0.0,
    mask: Any = True,
) -> Any:
    """NovoGrad, Ginsburg et al. 2019, Algorithm 1, per layer (one parameter array each).

    v_1 = ||g_1||^2, v_t = b2 v + (1 - b2) ||g_t||^2; d_t = g_t / (sqrt(v_t) + eps) + wd w_t;
    m_1 = d_1, m_t = b1 m + d_t; w_{t+1} = w_t - lr m_t.
    """
    w, m, v, out = w0.copy(), np.zeros(g.shape[1]), np.zeros(len(LAYERS)), []
    for t, g_t in enumerate(g, start=1):
        d = np.zeros_like(g_t)
        for i, layer in enumerate(LAYERS):
            norm_sq = np.sum(g_t[layer] ** 2)
            v[i] = norm_sq if t == 1 else b2 * v[i] + (1 - b2) * norm_sq
            d[layer] = g_t[layer] / (np.sqrt(v[i]) + eps)
        d = d + wd * np.where(mask, w, 0.0)
        m = d if t == 1 else b1 * m + d
        u = -lr * m
        w = w + u
        out.append(u)
    return np.array(out)


def adadelta_coupled_ref(
    g: np.ndarray, w0: np.ndarray, lr: float, wd: float, rho: float = 0.9, eps: float = 1e-6
) -> Any:
    """AdaDelta with Optax's (and PyTorch's) coupled decay: g_t + wd w_t enters the scaling."""
    w, eg, ex, out = w0.copy(), np.zeros(g.shape[1]), np.zeros(g.shape[1]), []
    for g_t in g:
        gd = g_t + wd * w
        eg = rho * eg + (1 - rho) * gd**2
        step = np.sqrt(ex + eps) / np.sqrt(eg + eps) * gd
        ex = rho * ex + (1 - rho) * step**2
        u = -lr * step
        w = w + u
        out.append(u)
    return np.array(out)


Ref = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _dir(ref: Callable[..., Any], **kw: Any) -> Ref:
    return lambda g, w0: ref(g, **kw)


def _alias(ref: Callable[..., Any], lr: float, wd: float = 0.0, mask: Any = True, **kw: Any) -> Ref:
    return lambda g, w0: decoupled(ref(g, **kw), w0, lr, wd, mask)


B = REF_RTOL_B0999
REFERENCES: list[tuple[str, Callable[[], Any], Ref, float]] = [
    ("scale_by_adamax", gc.scale_by_adamax, _dir(adamax_ref), REF_RTOL),
    (
        "scale_by_adamax-eps_inside_the_max",  # eps = 0 (the paper's) is 0/0 where g = 0
        lambda: gc.scale_by_adamax(0.8, 0.99, eps=1e-2),
        _dir(adamax_ref, b1=0.8, b2=0.99, eps=1e-2),
        REF_RTOL,
    ),
    ("scale_by_amsgrad", gc.scale_by_amsgrad, _dir(amsgrad_ref), B),
    (
        "scale_by_amsgrad-paper",
        lambda: gc.scale_by_amsgrad(0.9, 0.99, 1e-8, 0.0, None, False, False),
        _dir(amsgrad_ref, b2=0.99, debias=False),
        REF_RTOL,
    ),
    (
        "scale_by_amsgrad-pytorch",
        lambda: gc.scale_by_amsgrad(b2=0.99, max_before_debias=True),
        _dir(amsgrad_ref, b2=0.99, max_before_debias=True),
        REF_RTOL,
    ),
    ("scale_by_yogi", gc.scale_by_yogi, _dir(yogi_ref), B),
    (
        "scale_by_yogi-paper_init",
        lambda: gc.scale_by_yogi(b2=0.99, initial_accumulator_value=0.0, initial_mu=0.0),
        _dir(yogi_ref, b2=0.99, m0=0.0, v0=0.0),
        REF_RTOL,
    ),
    (
        "scale_by_belief",
        lambda: gc.scale_by_belief(b2=0.99, eps=1e-8, eps_root=1e-10),
        _dir(belief_ref, b2=0.99, eps=1e-8, eps_root=1e-10),
        REF_RTOL,
    ),
    (
        "scale_by_belief-nesterov",
        lambda: gc.scale_by_belief(0.8, 0.99, 1e-8, 1e-12, nesterov=True),
        _dir(belief_ref, b1=0.8, b2=0.99, eps=1e-8, eps_root=1e-12, nesterov=True),
        REF_RTOL,
    ),
    ("scale_by_radam", gc.scale_by_radam, _dir(radam_ref), B),
    (
        "scale_by_radam-b2_099",
        lambda: gc.scale_by_radam(0.8, 0.99, threshold=4.5),
        _dir(radam_ref, b1=0.8, b2=0.99, threshold=4.5),
        REF_RTOL,
    ),
    ("scale_by_adan", gc.scale_by_adan, _dir(adan_ref), REF_RTOL),
    ("scale_by_adadelta", gc.scale_by_adadelta, _dir(adadelta_ref), REF_RTOL),
    ("scale_by_lion", gc.scale_by_lion, _dir(lion_ref), REF_RTOL),
    (
        "scale_by_lion-smooth",
        lambda: gc.scale_by_lion(mode="smooth", smooth_beta=2.0),
        _dir(lion_ref, mode="smooth"),
        REF_RTOL,
    ),
    (
        "scale_by_lion-refined",
        lambda: gc.scale_by_lion(0.5, 0.9, mode="refined"),
        _dir(lion_ref, b1=0.5, b2=0.9, mode="refined"),
        REF_RTOL,
    ),
    ("scale_by_sign", gc.scale_by_sign, _dir(sign_ref), REF_RTOL),
    ("scale_by_rprop", lambda: gc.scale_by_rprop(0.01), _dir(rprop_ref, delta0=0.01), REF_RTOL),
    (
        "scale_by_rprop-clipped",
        lambda: gc.scale_by_rprop(0.01, 0.3, 1.5, 5e-3, 0.02),
        _dir(rprop_ref, delta0=0.01, down=0.3, up=1.5, lo=5e-3, hi=0.02),
        REF_RTOL,
    ),
    (
        "adamax",
        lambda: gc.adamax(0.01, weight_decay=0.1, mask=DECAY_MASK),
        _alias(adamax_ref, 0.01, 0.1, MASK),
        REF_RTOL,
    ),
    (
        "adamaxw",
        lambda: gc.adamaxw(0.01, weight_decay=0.2),
        _alias(adamax_ref, 0.01, 0.2),
        REF_RTOL,
    ),
    (
        "amsgrad",
        lambda: gc.amsgrad(0.01, b2=0.99, weight_decay=0.1),
        _alias(amsgrad_ref, 0.01, 0.1, b2=0.99),
        REF_RTOL,
    ),
    ("yogi", lambda: gc.yogi(0.01, b2=0.99), _alias(yogi_ref, 0.01, b2=0.99), REF_RTOL),
    (
        "adabelief",
        lambda: gc.adabelief(0.01, b2=0.99, eps=1e-8, weight_decay=0.1),
        _alias(belief_ref, 0.01, 0.1, b2=0.99, eps=1e-8),
        REF_RTOL,
    ),
    (
        "radam",
        lambda: gc.radam(0.01, b2=0.99, weight_decay=0.1, mask=DECAY_MASK),
        _alias(radam_ref, 0.01, 0.1, MASK, b2=0.99),
        REF_RTOL,
    ),
    (
        "adan",
        lambda: gc.adan(0.01, weight_decay=0.1, eps_root=0.0),
        _alias(adan_ref, 0.01, 0.1),
        REF_RTOL,
    ),
    (
        "lion",
        lambda: gc.lion(0.01, weight_decay=0.3, mask=DECAY_MASK),
        _alias(lion_ref, 0.01, 0.3, MASK),
        REF_RTOL,
    ),
    (
        "sign_sgd",
        lambda: gc.sign_sgd(0.01, weight_decay=0.1),
        _alias(sign_ref, 0.01, 0.1),
        REF_RTOL,
    ),
    (
        "rprop",
        lambda: gc.rprop(0.01, weight_decay=0.01),
        _alias(rprop_ref, 1.0, 0.01, delta0=0.01),
        REF_RTOL,
    ),
    ("adadelta", lambda: gc.adadelta(), _alias(adadelta_ref, 1.0), REF_RTOL),
    (
        "adadelta-coupled_decay",
        lambda: gc.adadelta(0.5, weight_decay=0.1),
        lambda g, w0: adadelta_coupled_ref(g, w0, 0.5, 0.1),
        REF_RTOL,
    ),
    (
        "novograd",
        lambda: gc.novograd(0.01, weight_decay=0.1, mask=DECAY_MASK),
        lambda g, w0: novograd_ref(g, w0, 0.01, wd=0.1, mask=MASK),
        REF_RTOL,
    ),
    (
        "scale_by_novograd",
        lambda: gc.scale_by_novograd(0.8, 0.5, 1e-8),
        lambda g, w0: novograd_ref(g, w0, -1.0, 0.8, 0.5, 1e-8),
        REF_RTOL,
    ),
]


def _run_ref_case(tx: Any) -> tuple[np.ndarray, np.ndarray]:
    """The float32 updates of gradchain at every step (flattened), and the final parameters."""

    def step(carry: tuple[Any, Any], g: Any) -> tuple[tuple[Any, Any], Any]:
        params, state = carry
        updates, state = tx.update(g, state, params)
        return (gc.apply_updates(params, updates), state), updates

    def run(params: Any, grads: Any) -> tuple[Any, Any]:
        (params, _), updates = jax.lax.scan(step, (params, tx.init(params)), grads)
        return updates, params

    updates, params = jax.jit(run)(jax.tree.map(jnp.asarray, REF_PARAMS), REF_GRADS)
    return _flat(updates, lead=1), _flat(params)


@pytest.mark.parametrize(
    ("make", "ref", "rtol"), [pytest.param(m, r, t, id=i) for i, m, r, t in REFERENCES]
)
def test_updates_and_final_params_match_the_papers_equations_in_float64(
    make: Callable[[], Any], ref: Ref, rtol: float
) -> None:
    got_u, got_w = _run_ref_case(make())
    w0 = _flat(REF_PARAMS)
    want_u = ref(_flat(REF_GRADS, lead=1), w0)
    want_w = w0 + want_u.sum(0)
    # An update is measured against its own size, but at least its coordinate's RMS over the
    # run (sums of moments cancel); a final parameter against the magnitudes it sums.
    u_scale = np.maximum(np.abs(want_u), np.sqrt(np.mean(want_u**2, axis=0)))
    u_err = np.max(np.abs(got_u - want_u) / np.where(u_scale > 0, u_scale, 1.0))
    w_err = np.max(np.abs(got_w - want_w) / (np.abs(w0) + np.abs(want_u).sum(0)))
    assert u_err <= rtol, f"updates off by {u_err:.2e} relative"
    assert w_err <= rtol, f"final params off by {w_err:.2e} relative to their summed magnitude"


def test_the_reference_gradients_reach_every_branch_the_references_distinguish() -> None:
    g = _flat(REF_GRADS, lead=1)
    assert (g[:ZERO_STEPS, 0] == 0).all()  # sign(0), zero moments: b[0] (first in tree order)
    flips = np.sign(g[1:]) * np.sign(g[:-1]) < 0
    assert flips.any() and (~flips).any()  # Rprop grows and shrinks
    assert _rho_float64(0.999, np.array([REF_STEPS]))[0] > 5.0  # RAdam rectifies in the run


# --- 3. Two test functions, in float32, inside lax.scan --------------------------------------

CONVERGE_STEPS = 10_000
CONVERGE_ATOL = 1e-2  # on every coordinate of the minimizer (Optax's own alias test allows 3e-2)


def parabola() -> tuple[jax.Array, jax.Array, Callable[[jax.Array], jax.Array]]:
    start, minimum = jnp.array([-1.0, 10.0, 1.0]), jnp.array([1.0, -1.0, 1.0])
    return start, minimum, lambda w: jnp.sum((w - minimum) ** 2)


def rosenbrock() -> tuple[jax.Array, jax.Array, Callable[[jax.Array], jax.Array]]:
    return jnp.zeros(2), jnp.ones(2), lambda w: (1 - w[0]) ** 2 + 100 * (w[1] - w[0] ** 2) ** 2


def _decaying(peak: float) -> Any:
    return gc.cosine_decay_schedule(peak, CONVERGE_STEPS, alpha=1e-3)


# Each alias at settings of the kind Optax's alias test uses. Steps of fixed size (Lion,
# signSGD) and AdaDelta need a decaying learning rate to settle in Rosenbrock's valley.
CONVERGING: list[tuple[str, Callable[[], Any]]] = [
    ("adamax", lambda: gc.adamax(0.1)),
    ("adamaxw", lambda: gc.adamaxw(0.1)),
    ("amsgrad", lambda: gc.amsgrad(0.1)),
    ("yogi", lambda: gc.yogi(0.1)),
    ("adabelief", lambda: gc.adabelief(1e-2)),
    ("radam", lambda: gc.radam(1e-2)),
    ("novograd", lambda: gc.novograd(_decaying(1e-2))),
    ("adadelta", lambda: gc.adadelta(_decaying(1.0))),
    ("adan", lambda: gc.adan(0.1)),
    ("lion", lambda: gc.lion(_decaying(1e-2), weight_decay=1e-4)),
    ("sign_sgd", lambda: gc.sign_sgd(gc.exponential_decay(2e-2, 1000, 0.4))),
    ("rprop", lambda: gc.rprop(0.1)),
]


@pytest.mark.parametrize("problem", [parabola, rosenbrock])
@pytest.mark.parametrize("make", [pytest.param(m, id=i) for i, m in CONVERGING])
def test_every_alias_minimizes_a_parabola_and_the_rosenbrock_function(
    make: Callable[[], Any], problem: Callable[[], Any]
) -> None:
    start, minimum, loss = problem()
    tx = make()

    def step(carry: tuple[Any, Any], _: Any) -> tuple[tuple[Any, Any], None]:
        params, state = carry
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        return (gc.apply_updates(params, updates), state), None

    run = jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), None, CONVERGE_STEPS)[0][0])
    final = run(start)
    assert final.dtype == jnp.float32
    np.testing.assert_allclose(final, minimum, rtol=0, atol=CONVERGE_ATOL)


def test_adadelta_without_a_learning_rate_minimizes_the_parabola() -> None:
    start, minimum, loss = parabola()
    tx = gc.adadelta()
    params, state = start, tx.init(start)
    step = jax.jit(lambda p, s: tx.update(jax.grad(loss)(p), s, p))
    for _ in range(2000):
        updates, state = step(params, state)
        params = gc.apply_updates(params, updates)
    np.testing.assert_allclose(params, minimum, atol=CONVERGE_ATOL)


# --- 4. The house rule for weight decay ------------------------------------------------------

# The aliases that take weight_decay=None, mask=None; each with Optax's own call.
HOUSE_RULE: list[tuple[str, Make]] = [
    ("sgd", lambda m: m.sgd(0.1)),
    ("sgd-momentum", lambda m: m.sgd(0.1, momentum=0.9)),
    ("adam", lambda m: m.adam(1e-3)),
    ("nadam", lambda m: m.nadam(1e-3)),
    ("rmsprop", lambda m: m.rmsprop(1e-3, momentum=0.9, centered=True)),
    ("adagrad", lambda m: m.adagrad(0.1)),
    ("adamax", lambda m: m.adamax(1e-3)),
    ("amsgrad", lambda m: m.amsgrad(1e-3)),
    ("yogi", lambda m: m.yogi(1e-2)),
    ("adabelief", lambda m: m.adabelief(1e-3)),
    ("radam", lambda m: m.radam(1e-3)),
    ("sign_sgd", lambda m: m.sign_sgd(1e-3)),
    ("rprop", lambda m: m.rprop(1e-3)),
]


def _fields(state: Any) -> list[tuple[str, Any]]:
    """(field, value) of a member state; Optax's counters (`count`) are gradchain's `step`."""
    return [("step" if f == "count" else f, getattr(state, f)) for f in state._fields]


def _shapes(tree: Any) -> list[tuple[str, tuple[int, ...]]]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [(jax.tree_util.keystr(path), jnp.shape(leaf)) for path, leaf in flat]


@pytest.mark.parametrize("make", [pytest.param(m, id=i) for i, m in HOUSE_RULE])
def test_without_weight_decay_the_state_has_optaxs_members_and_fields(make: Make) -> None:
    # Ported code that reads state[i].field keeps working: the same members in the same
    # places, and every field Optax has (its per-parameter ones with the same trees).
    ours = make(gc).init(PARAMS)
    with jax.numpy_dtype_promotion("standard"):
        theirs = make(optax).init(PARAMS)
    assert isinstance(ours, tuple) and len(ours) == len(theirs)
    for mine, other in zip(ours, theirs, strict=True):
        mine_fields = dict(_fields(mine))
        for name, value in _fields(other):
            assert name in mine_fields, f"{type(mine).__name__} lacks Optax's field {name!r}"
            if name != "step":
                assert _shapes(mine_fields[name]) == _shapes(value), name


@pytest.mark.parametrize("make", [pytest.param(m, id=i) for i, m in HOUSE_RULE])
def test_a_weight_decay_is_applied_and_settable_by_name(make: Make) -> None:
    plain = make(gc)
    decayed = _with_weight_decay(make, 0.5)
    state = decayed.init(PARAMS)
    assert float(gc.get_hyperparams(state)["weight_decay"]) == 0.5
    grads = jax.tree.map(lambda g: g[0], GRADS)
    u_plain, _ = plain.update(grads, plain.init(PARAMS), PARAMS)
    u_decayed, _ = decayed.update(grads, state, PARAMS)
    assert not np.allclose(_flat(u_decayed), _flat(u_plain))  # the decay moves the update
    u_zero, _ = decayed.update(grads, gc.set_hyperparams(state, weight_decay=0.0), PARAMS)
    np.testing.assert_array_equal(_flat(u_zero), _flat(u_plain))  # set to 0: exactly no decay


def _with_weight_decay(make: Make, weight_decay: Any, mask: Any = None) -> Any:
    """``make``'s alias with the house-rule keywords added."""

    class WithDecay:
        def __getattr__(self, name: str) -> Any:
            alias = getattr(gc, name)
            return lambda *a, **k: alias(*a, **k, weight_decay=weight_decay, mask=mask)

    return make(WithDecay())


def test_a_weight_decay_may_follow_a_schedule_and_a_mask() -> None:
    schedule = gc.linear_schedule(0.5, 0.0, 10)
    tx = gc.radam(1e-3, weight_decay=schedule, mask=decay_mask)
    state = tx.init(PARAMS)
    grads = jax.tree.map(lambda g: g[0], GRADS)
    for _ in range(3):
        updates, state = tx.update(grads, state, PARAMS)
    assert float(gc.get_hyperparams(state)["weight_decay"]) == pytest.approx(0.35)
    with pytest.raises(ValueError, match="'weight_decay' follows a schedule"):
        gc.set_hyperparams(state, weight_decay=0.1)
    plain = gc.radam(1e-3)
    plain_state = plain.init(PARAMS)
    for _ in range(3):
        plain_updates, plain_state = plain.update(grads, plain_state, PARAMS)
    assert_trees_close(updates["layers"][0]["b"], plain_updates["layers"][0]["b"], "masked out")
    assert not np.allclose(updates["layers"][0]["w"], plain_updates["layers"][0]["w"])


@pytest.mark.parametrize("name", [i for i, _ in HOUSE_RULE if "-" not in i])
def test_a_mask_without_a_weight_decay_is_refused_naming_the_alias(name: str) -> None:
    args = (0.1,)
    with pytest.raises(ValueError, match=rf"^{name}: `mask` selects .* `weight_decay` is None"):
        getattr(gc, name)(*args, mask=decay_mask)


# --- 5. Choices, and mistakes refused ---------------------------------------------------------


def test_amsgrads_maximum_before_and_after_debiasing_differ_while_the_moment_shrinks() -> None:
    grads = jnp.array([[4.0], [0.5], [0.5], [0.5]])  # v_t grows raw, shrinks debiased
    outs = {}
    for before in (False, True):
        tx = gc.scale_by_amsgrad(0.0, 0.5, 0.0, max_before_debias=before)
        state, outs[before] = tx.init(jnp.zeros(1)), []
        for g in grads:
            u, state = tx.update(g, state)
            outs[before].append(float(u[0]))
    # Optax's: max of the debiased v (16 at t = 1) stays; PyTorch's: max of the raw v, debiased.
    assert outs[False] == pytest.approx([1.0, 0.125, 0.125, 0.125])
    v = [8.0, 4.125, 2.1875, 1.21875]  # raw v_t with b2 = 0.5: its maximum stays 8
    expected = [
        g / math.sqrt(max(v[: t + 1]) / (1 - 0.5 ** (t + 1)))
        for t, g in enumerate((4, 0.5, 0.5, 0.5))
    ]
    assert outs[True] == pytest.approx(expected, rel=1e-6)  # 1.0, 0.153, 0.165, 0.171


def test_yogis_moments_start_where_asked() -> None:
    default = gc.scale_by_yogi().init(jnp.zeros(2))
    paper = gc.scale_by_yogi(initial_accumulator_value=0.0, initial_mu=0.0).init(jnp.zeros(2))
    assert float(default.mu[0]) == float(default.nu[0]) == pytest.approx(1e-6)  # Optax's
    assert float(paper.mu[0]) == float(paper.nu[0]) == 0.0


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (
            lambda: gc.scale_by_lion(mode="soft"),  # type: ignore[arg-type]
            ValueError,
            r"^scale_by_lion: `mode` must be one of \['hard', 'smooth', 'refined'\]; got 'soft'",
        ),
        (
            lambda: gc.rprop(0.1, min_step_size=1.0, max_step_size=0.5),
            ValueError,
            r"^scale_by_rprop: `min_step_size` must be at most `max_step_size`; got 1\.0 and 0\.5",
        ),
        (
            lambda: gc.scale_by_rprop(0.1, eta_plus=0.9),
            ValueError,
            r"^scale_by_rprop: `eta_plus` must be in \[1, inf\); got 0\.9",
        ),
        (
            lambda: gc.scale_by_yogi(initial_mu=math.nan),
            ValueError,
            r"^scale_by_yogi: `initial_mu` must be in \(-inf, inf\); got nan",
        ),
        (
            lambda: gc.rprop(gc.constant_schedule(0.1)),  # type: ignore[arg-type]
            TypeError,
            r"^scale_by_rprop: `learning_rate` must be a number; got function",
        ),
    ],
    ids=["lion_mode", "rprop_step_range", "rprop_eta_plus", "yogi_initial_mu", "rprop_schedule"],
)
def test_bad_settings_raise_at_construction_naming_transform_argument_and_value(
    build: Callable[[], Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        build()


def test_novograd_needs_the_params_and_a_mask_of_their_structure() -> None:
    tx = gc.novograd(0.1)
    state = tx.init(PARAMS)
    grads = jax.tree.map(lambda g: g[0], GRADS)
    with pytest.raises(ValueError, match=r"^scale_by_novograd: update needs the current param"):
        tx.update(grads, state)
    bad_mask = {"layers": [{"w": True}], "embed": True, "scale": False}
    with pytest.raises(ValueError, match=r"^scale_by_novograd: the trees `mask` and `params` "):
        gc.novograd(0.1, mask=bad_mask).init(PARAMS)
