"""Checkpoint round trips for every registered transformation, bit for bit.

For each case of ``tests/registry.py``: run ``K`` steps, save the parameters
and the state, rebuild the optimizer from its factory (fresh objects), restore
into its fresh ``init`` as the template, run ``N`` more steps and compare with
the uninterrupted run: every bit of the parameters and of the state, dtypes
and tree structure (NamedTuple types) included. The counters are int32, the
PRNG keys of ``add_noise``, ``noisy_sgd``, the DP-SGD pair, Sophia's
Hutchinson estimator and Kron are uint32 key data: all of it must survive.

One jitted step function per case serves the uninterrupted and the resumed
runs (restored arrays have the template's shapes and dtypes, so it is not
traced again: checked), and one module fixture serves the three methods:
``flax.serialization`` and Orbax (all Orbax trees in one checkpoint, since each
save costs about 0.7 s of CPU whatever its size), and a fresh process that
restores files written here with both (20 cases, as it compiles again). The
default run takes every other registered case (the fresh-process ones
included) to hold CI's time; ``--slow`` takes every case for all three.

The parameters have no zero-size leaf, and no state may hold one: Orbax
refuses zero-size arrays ("Cannot save arrays with zero size"), so every
placeholder (Adafactor's unused moments, GaLore's and Shampoo's records of a
parameter's shape, ``quantize_state``'s dtype carrier) must have elements.
Every case run goes through Orbax; a zero-size state leaf fails the test, named.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization

import gradchain as gc
from tests.registry import CASES, Case
from tests.test_conformance import _grads_like, _mixed_params

ROOT = pathlib.Path(__file__).resolve().parent.parent
K, N = 2, 2  # steps before the checkpoint, steps after
# The fresh-process set: PRNG keys, counters, groups, wrappers, the matrix methods.
FRESH = (
    "chain",
    "named_chain",
    "partition",
    "param_groups",
    "inject_hyperparams",
    "adam",
    "adamw",
    "add_noise",
    "noisy_sgd",
    "dpsgd",
    "sophia",
    "kron",
    "multi_steps",
    "skip_spikes",
    "lookahead",
    "lbfgs",
    "schedule_free_adamw",
    "muon",
    "soap",
    "reduce_on_plateau",
)


def _params() -> dict[str, Any]:
    """The conformance suite's mixed-dtype tree without its zero-size leaf (Orbax refuses those)."""
    return {k: v for k, v in _mixed_params().items() if k != "empty"}


def _grads(step: int) -> Any:
    return _grads_like(_params(), step, jnp.float32)


def _make_step(tx: Any) -> tuple[Any, list[int]]:
    traces = [0]

    @jax.jit
    def step(params: Any, state: Any, grads: Any) -> tuple[Any, Any]:
        traces[0] += 1
        updates, state = tx.update(grads, state, params)
        return gc.apply_updates(params, updates), state

    return step, traces


def _continue(step: Any, params: Any, state: Any) -> tuple[Any, Any]:
    for i in range(K, K + N):
        params, state = step(params, state, _grads(i))
    return params, state


def _bits(tree: Any) -> list[tuple[str, str, bytes]]:
    return [
        (jax.tree_util.keystr(path), str(np.asarray(x).dtype), np.asarray(x).tobytes())
        for path, x in jax.tree_util.tree_leaves_with_path(tree)
    ]


def _difference(got: Any, want: Any) -> str | None:
    """None when two trees are the same to the bit (structure, types, dtypes); else what differs."""
    if jax.tree.structure(got) != jax.tree.structure(want):
        return f"tree structure {jax.tree.structure(got)} != {jax.tree.structure(want)}"
    for (path, dtype, data), (_, want_dtype, want_data) in zip(
        _bits(got), _bits(want), strict=True
    ):
        if dtype != want_dtype or data != want_data:
            return f"leaf {path}: {dtype} differs from {want_dtype} or in its bits"
    return None


@dataclass
class Run:
    case: Case
    step: Any  # the jitted step, compiled once
    traces: list[int]
    saved: dict[str, Any]  # {"params": ..., "opt_state": ...} after K steps
    final: dict[str, Any]  # after K + N steps, uninterrupted


@pytest.fixture(scope="module")
def runs(request: pytest.FixtureRequest) -> dict[str, Run]:
    # A compile per case is most of this file's time: the default run takes every other
    # registered case (and the fresh-process ones), --slow all of them.
    cases = CASES
    if not request.config.getoption("--slow"):
        cases = [c for i, c in enumerate(CASES) if i % 2 == 0 or c.key in FRESH]
        print(f"checkpoints: {len(cases)} of {len(CASES)} registered cases; all with --slow")
    out = {}
    for case in cases:
        tx = case.build()
        step, traces = _make_step(tx)
        params, state = _params(), tx.init(_params())
        for i in range(K):
            params, state = step(params, state, _grads(i))
        saved = {"params": params, "opt_state": state}
        final_params, final_state = _continue(step, params, state)
        out[case.key] = Run(
            case, step, traces, saved, {"params": final_params, "opt_state": final_state}
        )
    return out


def _template(case: Case) -> dict[str, Any]:
    return {"params": _params(), "opt_state": case.build().init(_params())}


def _resume(run: Run, restored: dict[str, Any]) -> str | None:
    """Checks the restored tree, continues it with the same compiled step, compares."""
    problem = _difference(restored, run.saved)
    if problem:
        return f"restored state: {problem}"
    params, state = _continue(run.step, restored["params"], restored["opt_state"])
    problem = _difference({"params": params, "opt_state": state}, run.final)
    if problem:
        return f"after resuming: {problem}"
    if run.traces[0] != 1:
        return f"the step was traced {run.traces[0]} times: restored leaves differ in type"
    return None


def test_every_case_round_trips_through_flax_serialization(runs: dict[str, Run]) -> None:
    failures = {}
    for key, run in runs.items():
        try:
            blob = serialization.to_bytes(run.saved)
            restored = serialization.from_bytes(_template(run.case), blob)
            problem = _resume(run, restored)
        except Exception as e:  # collected, reported below with the case
            problem = f"{type(e).__name__}: {e}"
        if problem:
            failures[key] = problem
    assert not failures, f"{len(failures)} of {len(runs)} cases: {failures}"


def _zero_size_paths(tree: Any) -> list[str]:
    return [
        jax.tree_util.keystr(path)
        for path, x in jax.tree_util.tree_leaves_with_path(tree)
        if np.size(x) == 0
    ]


def _orbax_save(directory: pathlib.Path, trees: dict[str, Any]) -> None:
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory, trees)
        checkpointer.wait_until_finished()


def _orbax_restore(directory: pathlib.Path, targets: dict[str, Any]) -> Any:
    """Orbax's restore into targets, as host arrays.

    Orbax gives arrays committed to a device, and jit compiles a step again for
    committed arguments (not traced again: the count stays 1), 0.2 to 1.6 s of
    CPU per case; the bits are what is checked here, so they go to the host.
    """
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as checkpointer:
        return jax.tree.map(np.asarray, checkpointer.restore(directory, targets))


def _orbax_round_trip(
    directory: pathlib.Path, trees: dict[str, Any], targets: dict[str, Any]
) -> Any:
    """One Orbax checkpoint of many trees (a save costs 0.7 s of CPU, whatever its size)."""
    _orbax_save(directory, trees)
    return _orbax_restore(directory, targets)


def test_every_case_round_trips_through_orbax(runs: dict[str, Run], tmp_path: pathlib.Path) -> None:
    pytest.importorskip("orbax.checkpoint")
    zero_size = {k: z for k, run in runs.items() if (z := _zero_size_paths(run.saved))}
    assert not zero_size, f"Orbax refuses zero-size arrays; these states hold some: {zero_size}"
    keys = list(runs)
    # Orbax names come from the keys: positions, not the cases' bracketed keys.
    trees = {f"case{i}": runs[k].saved for i, k in enumerate(keys)}
    targets = {f"case{i}": _template(runs[k].case) for i, k in enumerate(keys)}
    failures = {}
    try:
        restored = _orbax_round_trip(tmp_path / "all", trees, targets)
    except Exception:  # one case spoils the batch: find which, one checkpoint each
        restored = {}
        for name, key in zip(trees, keys, strict=True):
            try:
                restored[name] = _orbax_round_trip(tmp_path / name, trees[name], targets[name])
            except Exception as e:  # collected, reported below with the case
                failures[key] = f"{type(e).__name__}: {e}"
    for name, key in zip(trees, keys, strict=True):
        if name in restored:
            problem = _resume(runs[key], restored[name])
            if problem:
                failures[key] = problem
    assert not failures, f"{len(failures)} of {len(keys)} cases: {failures}"


def test_a_fresh_process_resumes_bit_for_bit(
    runs: dict[str, Run], tmp_path: pathlib.Path, request: pytest.FixtureRequest
) -> None:
    slow = request.config.getoption("--slow")
    keys = list(runs) if slow else [c.key for c in CASES if c.key in FRESH]
    assert slow or len(keys) == len(FRESH), f"stale FRESH keys: {set(FRESH) - set(keys)}"
    if not slow:
        print(f"fresh process: {len(keys)} of {len(runs)} cases (compiles again); all with --slow")
    for key in keys:
        (tmp_path / f"{key}.msgpack").write_bytes(serialization.to_bytes(runs[key].saved))
    orbax_keys = keys  # no state holds a zero-size leaf (the Orbax test checks it)
    trees = {f"case{i}": runs[k].saved for i, k in enumerate(orbax_keys)}
    _orbax_save(tmp_path / "orbax", trees)  # written here, restored there
    result = subprocess.run(
        [sys.executable, "-c", _WORKER, str(tmp_path), ",".join(orbax_keys), *keys],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    failures = {}
    for key, method in [(k, "flax") for k in keys] + [(k, "orbax") for k in orbax_keys]:
        out = serialization.msgpack_restore((tmp_path / f"{key}.{method}.out").read_bytes())
        problem = _difference(out, serialization.to_state_dict(runs[key].final["params"]))
        if problem:
            failures[f"{key} ({method})"] = problem
    assert not failures, f"{len(failures)} of {len(keys) + len(orbax_keys)} resumes: {failures}"


def _worker(directory: pathlib.Path, orbax_keys: list[str], keys: list[str]) -> None:
    """The fresh process: build each optimizer by registry key, restore, continue, write params."""
    by_key = {case.key: case for case in CASES}
    targets = {f"case{i}": _template(by_key[k]) for i, k in enumerate(orbax_keys)}
    from_orbax = _orbax_restore(directory / "orbax", targets)
    for key in keys:
        case = by_key[key]
        step, _ = _make_step(case.build())
        blob = (directory / f"{key}.msgpack").read_bytes()
        restored = {"flax": serialization.from_bytes(_template(case), blob)}
        if key in orbax_keys:
            restored["orbax"] = from_orbax[f"case{orbax_keys.index(key)}"]
        for method, tree in restored.items():
            params, _ = _continue(step, tree["params"], tree["opt_state"])
            (directory / f"{key}.{method}.out").write_bytes(serialization.to_bytes(params))


# conftest first: the test settings (strict promotion, eight CPU devices) before any array.
_WORKER = (
    "import conftest, pathlib, sys; from tests.test_checkpoint import _worker; "
    "_worker(pathlib.Path(sys.argv[1]), [k for k in sys.argv[2].split(',') if k], sys.argv[3:])"
)
