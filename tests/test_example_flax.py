"""The Flax, parameter-group and checkpoint examples run briefly and do what they claim.

``tests/test_flax.py`` checks the plumbing (``nnx.Optimizer`` and Linen's
``TrainState`` accept gradchain transforms, on a linear model); these tests
check the worked examples in ``examples/``: they learn the digits, their
hyperparameters are where they say, non-parameter state is left alone, the
optimizer state survives ``flax.serialization`` and Orbax, and a run resumed
in a new process equals the uninterrupted one bit for bit.

Thresholds were measured over seeds 0-4 (the tests run seed 0): 150 steps
reach a validation accuracy of 0.961 to 0.978 with the Linen example and 0.961
to 0.983 with the NNX one (chance is 0.1), the tests ask for 0.9; 60 steps of
the parameter-group example reach 0.939 to 0.969 (the test asks for 0.8), its
slow groups travelling 0.095 to 0.122 times as far as their full-rate
counterparts (the test asks for < 0.3).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import gradchain as gc
from tests.example_loader import EXAMPLES, load_example

ROOT = EXAMPLES.parent
linen = load_example("flax_linen_train_state")
nnx_example = load_example("flax_nnx_optimizer")
groups = load_example("param_groups")
ckpt = load_example("checkpoint_resume")

STEPS = 150  # enough for > 0.95 validation accuracy (chance 0.1); the tests ask for 0.9
MIN_ACCURACY = 0.9


def _f32(x: float) -> float:
    return float(np.float32(x))


DROPPED = _f32(_f32(1e-2) / 10)  # the examples read float32(1e-2) and store a tenth of it


# --- Flax Linen TrainState ----------------------------------------------------------------


@pytest.fixture(scope="module")
def linen_run() -> dict[str, Any]:
    return linen.main(steps=STEPS, drop_at=100, log_every=50, seed=0)


def test_linen_train_state_learns_digits_well_above_chance(linen_run):
    assert linen_run["val_accuracy"] > MIN_ACCURACY, linen_run["val_accuracy"]
    assert linen_run["train_loss"] < 0.3


def test_linen_learning_rate_set_in_opt_state_is_used_without_recompiling(linen_run):
    assert linen_run["learning_rate"] == DROPPED
    assert linen_run["hyperparams"]["weight_decay"] == _f32(1e-4)
    assert linen_run["traces"] == 1


def test_linen_train_state_round_trips_through_flax_serialization(linen_run):
    state = linen_run["state"]
    blob = flax.serialization.to_bytes(state)
    target = linen.create_state(1e-2, 1e-4, seed=1)  # another init: every value must come back
    restored: Any = flax.serialization.from_bytes(target, blob)
    assert jax.tree.structure(restored.opt_state) == jax.tree.structure(state.opt_state)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    assert int(restored.step) == STEPS
    # The hand-set learning rate lives in the state, so it survives too.
    assert float(gc.get_hyperparams(restored.opt_state)["learning_rate"]) == DROPPED


# --- Flax NNX Optimizer -------------------------------------------------------------------


@pytest.fixture(scope="module")
def nnx_run() -> dict[str, Any]:
    return nnx_example.main(steps=STEPS, drop_at=100, log_every=50, seed=0)


def test_nnx_optimizer_learns_digits_with_batchnorm_and_dropout(nnx_run):
    assert nnx_run["val_accuracy"] > MIN_ACCURACY, nnx_run["val_accuracy"]
    assert nnx_run["learning_rate"] == DROPPED  # set through the OptArray wrappers
    assert nnx_run["traces"] == 1


def test_nnx_optimizer_moments_have_the_params_paths_only(nnx_run):
    model, optimizer = nnx_run["model"], nnx_run["optimizer"]
    assert nnx_run["counts"] == {"param": 6, "batch_stat": 2, "rng_state": 2, "adam_mu": 6}

    def paths(tree: Any) -> list[str]:
        return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]

    params = paths(nnx.state(model, nnx.Param))
    assert paths(optimizer.opt_state[0].mu) == params
    assert not any("mean" in p or "var" in p for p in paths(optimizer.opt_state))


def test_nnx_optimizer_update_leaves_batch_stats_and_rng_state_alone(nnx_run):
    model, optimizer = nnx_run["model"], nnx_run["optimizer"]

    def snapshot(kind: Any) -> list[np.ndarray]:
        raw = [
            jax.random.key_data(a) if jnp.issubdtype(a.dtype, jax.dtypes.prng_key) else a
            for a in jax.tree.leaves(nnx.state(model, kind))
        ]
        return [np.array(a) for a in raw]

    kinds = (nnx.Param, nnx.BatchStat, nnx.RngState)
    before = {kind: snapshot(kind) for kind in kinds}
    ones = jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param))
    nnx.jit(lambda m, o, g: o.update(m, g))(model, optimizer, ones)  # no forward pass
    after = {kind: snapshot(kind) for kind in kinds}
    for kind in (nnx.BatchStat, nnx.RngState):
        assert len(before[kind]) == 2
        for a, b in zip(before[kind], after[kind], strict=True):
            np.testing.assert_array_equal(a, b)
    assert all(
        not np.array_equal(a, b) for a, b in zip(before[nnx.Param], after[nnx.Param], strict=True)
    )


def test_set_hyperparams_reaches_through_nnx_variables_and_keeps_them():
    # nnx.Optimizer wraps every state leaf in an OptArray; set_hyperparams used to
    # match no leaf there and return the state unchanged, silently.
    model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, gc.adam(1e-2), wrt=nnx.Param)
    optimizer.opt_state = gc.set_hyperparams(optimizer.opt_state, learning_rate=1e-3, b2=0.99)
    hp = gc.get_hyperparams(optimizer.opt_state)
    assert isinstance(hp["b2"], nnx.Variable)
    assert float(hp["learning_rate"][...]) == _f32(1e-3)
    assert float(hp["b2"][...]) == _f32(0.99)
    assert float(optimizer.opt_state[0].hparams.complement["b2"][...]) == _f32(0.01)


# --- parameter groups ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def groups_run() -> dict[str, Any]:
    return groups.main(steps=60, seed=0)


GROUPS = {  # name: (tensors, elements, learning rate, weight decay) with the defaults
    "slow_no_decay": (3, 192, 1e-3, 0.0),
    "slow": (1, 4096, 1e-3, 0.1),
    "no_decay": (5, 266, 1e-2, 0.0),
    "decay": (3, 8832, 1e-2, 0.1),
}


def test_param_groups_table_lists_each_group_with_its_counts(groups_run):
    table = groups_run["table"]
    for name, (tensors, elements, _, _) in GROUPS.items():
        assert re.search(rf"^{name} .* {tensors} +{elements:,} ", table, re.MULTILINE), name
    assert re.search(r"^total +12 +13,386$", table, re.MULTILINE)
    assert re.search(r"^blocks/0/linear/bias +\(64,\) +float32 +slow_no_decay$", table, re.M)
    assert re.search(r"^blocks/1/norm/scale +\(64,\) +float32 +no_decay$", table, re.M)
    summary = {g.name: (g.tensors, g.elements) for g in groups_run["explanation"].groups}
    assert summary == {k: v[:2] for k, v in GROUPS.items()}


def test_param_groups_hyperparameters_in_the_state_are_as_configured(groups_run):
    hp = groups_run["hyperparams"]
    for name, (_, _, lr, wd) in GROUPS.items():
        assert hp[f"{name}/learning_rate"] == _f32(lr), name
        assert hp[f"{name}/weight_decay"] == _f32(wd), name


def test_param_groups_decay_and_move_as_stated(groups_run):
    probe = groups_run["probe"]
    assert probe["decay"] == pytest.approx(1.0, rel=1e-5)
    assert probe["slow"] == pytest.approx(0.1, rel=1e-5)
    assert probe["no_decay"] == 0.0 and probe["slow_no_decay"] == 0.0
    moved = groups_run["moved"]
    # Measured after 60 steps: 0.095x to 0.122x; Adam's steps scale with the rate.
    assert moved["slow"] < 0.3 * moved["decay"]
    assert moved["slow_no_decay"] < 0.3 * moved["no_decay"]
    assert groups_run["val_accuracy"] > 0.8


# --- checkpoint and resume with Orbax -----------------------------------------------------

CKPT_STEPS = 40
WARMUP = 30  # the checkpoint at step 20 is in the middle of the warmup


def _run_phase(phase: str, out: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["JAX_NUMPY_DTYPE_PROMOTION"] = "strict"  # the suite's settings, in the new process
    env["JAX_NUMPY_RANK_PROMOTION"] = "raise"
    script = EXAMPLES / "checkpoint_resume.py"
    args = ["--phase", phase, "--steps", f"{CKPT_STEPS}", "--warmup", f"{WARMUP}", "--out", out]
    done = subprocess.run(
        [sys.executable, "-W", "error", script, *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    """train, then resume, each in a new process."""
    out = tmp_path_factory.mktemp("ckpt")
    _run_phase("train", out)
    _run_phase("resume", out)
    return out / "checkpoint_resume"


def _settings(**changes: Any) -> dict[str, Any]:
    settings = dict(
        steps=CKPT_STEPS,
        batch_size=64,
        learning_rate=1e-2,
        warmup=WARMUP,
        weight_decay=1e-4,
        clip=1.0,
        seed=0,
    )
    return {**settings, **changes}


def _abstract(tx: gc.GradientTransformationExtraArgs) -> Any:
    return jax.eval_shape(lambda k: ckpt.init_state(k, tx), jax.random.key(0))


def _tx(steps: int = CKPT_STEPS) -> gc.GradientTransformationExtraArgs:
    return ckpt.make_optimizer(steps, 1e-2, WARMUP, 1e-4, 1.0)


def test_resumed_in_a_new_process_equals_the_uninterrupted_run_bit_for_bit(checkpoints, tmp_path):
    assert sorted(p.name for p in checkpoints.iterdir() if p.name.isdigit()) == ["20", "40"]
    step, resumed = ckpt.restore(checkpoints, _abstract(_tx()), _settings())
    assert step == CKPT_STEPS
    full = ckpt.main(phase="full", steps=CKPT_STEPS, warmup=WARMUP, out=tmp_path)["state"]
    assert jax.tree.structure(resumed) == jax.tree.structure(full)
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(full), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def test_restore_needs_the_same_settings_optimizer_and_dtypes(checkpoints):
    with pytest.raises(ValueError, match=r"other settings, \(saved, now\): \{'steps': \(40, 60\)"):
        ckpt.restore(checkpoints, _abstract(_tx(60)), _settings(steps=60))
    no_clip = gc.adamw(gc.warmup_cosine_decay_schedule(0.0, 1e-2, WARMUP, CKPT_STEPS))
    with pytest.raises(ValueError, match=r"[Ss]tructure mismatch"):
        ckpt.restore(checkpoints, _abstract(no_clip), _settings())
    bf16 = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, jnp.bfloat16) if s.dtype == jnp.float32 else s,
        _abstract(_tx()),
    )
    with pytest.raises(ValueError, match=r"params\.0\.w: stored float32, target bfloat16"):
        ckpt.restore(checkpoints, bf16, _settings())


def test_the_phases_are_checked():
    with pytest.raises(ValueError, match="phase must be"):
        ckpt.main(phase="continue")
    with pytest.raises(ValueError, match="steps must be >= 2"):
        ckpt.main(phase="full", steps=1)
