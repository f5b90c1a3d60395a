"""Determinism and buffer donation, over every registered transformation.

For each case of ``tests/registry.py``, a training step (``update`` then
``apply_updates``) runs a few steps on a tiny tree four ways: eagerly
(``jax.disable_jit``) on two fresh builds, under ``jit``, and under ``jit`` with
the parameters and the state donated. The claims:

- a fresh build with the same seed gives bit-identical states and updates (the
  stochastic transforms keep their key in the state: ``add_noise``,
  ``noisy_sgd``, ``dpsgd``, ``sophia``, ``kron``, ...);
- ``jit`` gives eager's results: integer leaves (counters, keys) exactly, float
  leaves within ``JIT_RTOL`` of the leaf's largest magnitude (see below);
- donation changes nothing: the donated step gives the undonated step's results
  bit for bit (Shampoo within 1 ulp: see ``DONATION_ULPS``), the donated
  parameters are consumed, and every output, including
  the updates of earlier steps, stays readable. A state from ``init`` that holds
  one buffer twice (or a parameter's buffer) cannot be donated at all: XLA
  refuses "to donate the same buffer twice", so ``init`` must return distinct
  buffers.

Each property collects its failures over all cases, so one run names every
offender. The default run takes a subset (every transform that holds a key, the
states that hold parameters or copies, the everyday optimizers); ``--slow``
runs the rest of the registry.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradchain as gc
from tests.registry import CASES, Case

STEPS = 3

# jit against eager: XLA fuses the elementwise chain of an update into one kernel, where
# eager runs one kernel per operation. Fused, the CPU backend contracts multiply-adds into
# FMAs, evaluates float16/bfloat16 chains in float32 and rounds once at the end, and
# reorders reductions (norms, means); eager rounds after each op. A float leaf is compared
# at the largest magnitude its quantity takes over the run: an update that is exactly 0 at
# a zero warmup learning rate (schedule_free's first step) is 0 under jit but a rounding
# residue of 1.5e-8 eagerly. Measured over all 191 cases, 3 steps, as a fraction of that
# magnitude: float32 at most 1.3e-5 (the zoom line search of lbfgs, whose step size comes
# from differences of nearby objective values, 4.9e-6), float16 3.4e-5, bfloat16 4.7e-3
# (under one rounding: eps is 7.8e-3). The bounds below leave a margin of 3 to 8.
JIT_RTOL = {
    jnp.dtype(jnp.float32): 1e-4,
    jnp.dtype(jnp.float16): 2e-3,
    jnp.dtype(jnp.bfloat16): 1.6e-2,
}
# Donation lets XLA update buffers in place, and for Shampoo it then fuses the statistics
# update differently: one statistic differs by 1 ulp (2.3e-10 of 3.7e-3) from the undonated
# program. Each program is deterministic; the difference is XLA's, not a read of a donated
# buffer (which would give garbage, not 1 ulp).
DONATION_ULPS = frozenset({"scale_by_shampoo"})

# The default run: transforms that draw random numbers (a key in the state; sophia's
# Hutchinson estimator, dpsgd's noise), states that held one buffer twice before init gave
# each field its own, and AdamW. (Every case's init is checked for shared buffers below.)
DEFAULT = frozenset(
    {
        "add_noise",
        "noisy_sgd",
        "dpsgd",
        "sophia",
        "lookahead",
        "lbfgs",
        "multi_steps",
        "inject_hyperparams",
        "adamw",
    }
)
_FAST = [c for c in CASES if c.key in DEFAULT]
_REST = [c for c in CASES if c.key not in DEFAULT]


def _params() -> dict[str, Any]:
    """A tiny tree, fresh buffers on every call: one leaf of each floating dtype."""
    return {
        "w": jnp.asarray([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]], jnp.float32),
        "b": jnp.asarray([0.1, -0.2, 0.3], jnp.bfloat16),
        "s": jnp.asarray(1.0, jnp.float16),
    }


def _grads(step: int) -> dict[str, Any]:
    rng = np.random.default_rng(step)
    return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), _params())


def _step_fn(tx: Any) -> Callable[..., Any]:
    def step(params: Any, state: Any, grads: Any) -> tuple[Any, Any, Any]:
        updates, state = tx.update(grads, state, params)
        return gc.apply_updates(params, updates), state, updates

    return step


def _run(tx: Any, step: Callable[..., Any]) -> list[Any]:
    """(params, state, updates) after each step, and the initial state first."""
    params = _params()
    state = tx.init(params)
    out: list[Any] = [state]
    for i in range(STEPS):
        params, state, updates = step(params, state, _grads(i))
        out.append((params, state, updates))
    return out


def _host(tree: Any) -> list[tuple[str, np.ndarray]]:
    """Every leaf on the host with its path (raw key data for typed keys)."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        out.append((jax.tree_util.keystr(path), np.asarray(leaf)))
    return out


def _magnitudes(host: list[tuple[str, np.ndarray]]) -> dict[str, float]:
    """The largest finite magnitude of each quantity over the run (all steps)."""
    out: dict[str, float] = {}
    for path, y in host:
        if jnp.issubdtype(y.dtype, jnp.inexact) and y.size:
            y64 = np.abs(y.astype(np.float64))
            key = re.sub(r"^\[\d+\]", "", path)  # the quantity, whatever the step
            out[key] = max(out.get(key, 0.0), float(np.max(y64[np.isfinite(y64)], initial=0.0)))
    return out


def _differences(
    a: Any, b: Any, rtol: dict[Any, float] | None = None, worst: dict[Any, float] | None = None
) -> list[str]:
    """Paths where runs ``a`` and ``b`` differ (bitwise unless ``rtol`` is given).

    With ``rtol``, a float leaf may differ by ``rtol[dtype]`` times the largest
    magnitude its quantity takes over the run (an update that is exactly 0 at a
    zero warmup learning rate is compared at the scale of the later ones);
    ``worst`` collects the largest such relative difference per dtype.
    """
    if jax.tree.structure(a) != jax.tree.structure(b):
        return [f"structure {jax.tree.structure(a)} != {jax.tree.structure(b)}"]
    out = []
    host_a, host_b = _host(a), _host(b)
    magnitude = _magnitudes(host_b)
    for (path, x), (_, y) in zip(host_a, host_b, strict=True):
        if x.dtype != y.dtype or x.shape != y.shape:
            out.append(f"{path}: {x.dtype}{x.shape} != {y.dtype}{y.shape}")
        elif rtol is None or not jnp.issubdtype(x.dtype, jnp.inexact):
            if not np.array_equal(x, y, equal_nan=True):
                out.append(f"{path}: not bit-identical")
        elif x.size:
            x64, y64 = x.astype(np.float64), y.astype(np.float64)
            if not np.array_equal(np.isfinite(x64), np.isfinite(y64)):
                out.append(f"{path}: non-finite entries differ")
                continue
            finite = np.isfinite(y64)
            scale = magnitude[re.sub(r"^\[\d+\]", "", path)]
            err = np.max(np.abs(x64[finite] - y64[finite]), initial=0.0)
            if worst is not None and scale > 0:
                worst[x.dtype] = max(worst.get(x.dtype, 0.0), err / scale)
            if err > rtol[x.dtype] * scale:
                out.append(f"{path}: |difference| = {err:.3g} > {rtol[x.dtype]} * {scale:.3g}")
    return out


def _shared_buffers(params: Any, state: Any) -> list[str]:
    """State leaves that hold a parameter's buffer or another state leaf's buffer."""
    owner: dict[int, str] = {}
    for tree, prefix in ((params, "params"), (state, "state")):
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            if not isinstance(leaf, jax.Array) or leaf.size == 0:
                continue
            name, ptr = f"{prefix}{jax.tree_util.keystr(path)}", leaf.unsafe_buffer_pointer()
            if ptr in owner:
                return [f"{name} is the buffer of {owner[ptr]}"]
            owner[ptr] = name
    return []


def _copy(x: Any) -> Any:
    return np.array(jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x)


def _donated_run(tx: Any) -> tuple[list[Any], list[str]]:
    """The jitted step with parameters and state donated, and what went wrong."""
    step = jax.jit(_step_fn(tx), donate_argnums=(0, 1))
    params = _params()
    state = tx.init(params)
    problems = _shared_buffers(params, state)
    if problems:
        return [], problems
    # Host copies: a NumPy view of a CPU buffer (np.asarray) is an external reference,
    # and XLA silently declines to donate a buffer that has one.
    out: list[Any] = [jax.tree.map(_copy, state)]
    earlier: list[Any] = []
    for i in range(STEPS):
        donated = jax.tree.leaves(params)
        with warnings.catch_warnings():
            # A donated buffer that no output can reuse (a shape that no output has) is
            # reported and kept: not an error of the transformation.
            warnings.filterwarnings("ignore", "Some donated buffers were not usable")
            params, state, updates = step(params, state, _grads(i))
        if not all(x.is_deleted() for x in donated if x.size):
            problems.append(f"step {i}: a donated parameter buffer was not consumed")
        earlier.append(updates)
        for tree in (params, state, *earlier):
            if any(x.is_deleted() for x in jax.tree.leaves(tree) if isinstance(x, jax.Array)):
                problems.append(f"step {i}: an output or earlier update was deleted by donation")
        out.append(jax.tree.map(_copy, (params, state, updates)))
    return out, problems


def _check(cases: list[Case]) -> None:
    failures: dict[str, list[str]] = {"seed": [], "jit": [], "donation": []}
    worst: dict[Any, float] = {}
    for case in cases:
        with jax.disable_jit():
            eager, again = (_run(tx, _step_fn(tx)) for tx in (case.build(), case.build()))
        tx = case.build()
        jitted = _run(tx, jax.jit(_step_fn(tx)))
        try:
            donated, problems = _donated_run(case.build())
        except Exception as err:  # a refused donation is reported with the other cases
            donated, problems = [], [f"{type(err).__name__}: {str(err)[:200]}"]
        if diff := _differences(again, eager):
            failures["seed"].append(f"{case.key}: {diff[:3]}")
        if diff := _differences(jitted, eager, JIT_RTOL, worst):
            failures["jit"].append(f"{case.key}: {diff[:3]}")
        exact = None if case.key not in DONATION_ULPS else JIT_RTOL
        if not problems and (diff := _differences(donated, jitted, exact)):
            problems = diff[:3]
        if problems:
            failures["donation"].append(f"{case.key}: {problems[:3]}")
    print(f"largest |jit - eager| / magnitude by dtype over {len(cases)} cases: {worst}")
    failed = {k: v for k, v in failures.items() if v}
    assert not failed, "\n".join(f"{k}:\n  " + "\n  ".join(v) for k, v in failed.items())


@pytest.mark.parametrize(
    "cases",
    [pytest.param(_FAST, id="subset"), pytest.param(_REST, id="rest", marks=pytest.mark.slow)],
)
def test_eager_jit_fresh_builds_and_donated_steps_agree(cases: list[Case]) -> None:
    _check(cases)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.key)
def test_init_gives_every_state_leaf_its_own_buffer(case: Case) -> None:
    """A state that holds a buffer twice, or a parameter's, cannot be donated with them."""
    params = _params()
    assert not _shared_buffers(params, case.build().init(params))


def test_the_default_subset_names_registered_cases() -> None:
    assert {c.key for c in CASES} >= DEFAULT, sorted(DEFAULT - {c.key for c in CASES})
