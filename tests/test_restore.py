"""restore_state: a checkpoint restored into a changed optimizer by name, never by position."""

from __future__ import annotations

import pathlib
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization

import gradchain as gc

PARAMS = {"w": jnp.arange(3.0), "b": jnp.ones(())}


def _trained(tx: Any, params: Any = PARAMS, steps: int = 3) -> Any:
    state = tx.init(params)
    for i in range(steps):
        grads = jax.tree.map(lambda p, v=0.5 + i: jnp.full_like(p, v), params)
        _, state = tx.update(grads, state, params)
    return state


def _raw(state: Any) -> Any:
    """What a user gets back from flax bytes without a target: nested dicts."""
    return serialization.msgpack_restore(serialization.to_bytes(state))


@pytest.mark.parametrize("form", ["state", "flax_raw"])
def test_a_transform_inserted_in_a_chain_keeps_the_others_state(form: str):
    old = gc.chain(gc.scale_by_adam(), gc.scale(-0.1))
    new = gc.chain(gc.clip_by_global_norm(1.0), gc.scale_by_adam(), gc.scale(-0.1))
    saved = _trained(old)
    saved_in = saved if form == "state" else _raw(saved)
    template = new.init(PARAMS)
    with pytest.raises(ValueError, match=r"(?s)added.*allow_added=True.*hparams/constant/max_norm"):
        gc.restore_state(template, saved_in)
    restored, report = gc.restore_state(template, saved_in, allow_added=True)
    chex.assert_trees_all_equal(restored[1], saved[0])
    chex.assert_trees_all_equal(restored[2], saved[1])
    chex.assert_trees_all_equal(restored[0], template[0])
    assert jax.tree.structure(restored) == jax.tree.structure(template)
    assert len(report.added) == 2 and all("#0/" in p for p in report.added)
    assert report.dropped == () and report.hyperparams == ()
    assert len(report.matched) == len(jax.tree.leaves(saved))


def test_an_alias_wrapped_in_a_chain_matches_through_the_nested_chain():
    saved = _trained(gc.adam(1e-2))
    new = gc.chain(gc.clip_by_global_norm(1.0), gc.adam(1e-2))
    restored, report = gc.restore_state(new.init(PARAMS), saved, allow_added=True)
    chex.assert_trees_all_equal(restored[1], saved)
    assert [p.split("/")[0] for p in report.added] == ["ClipByGlobalNormState#0"] * 2


def test_a_parameter_added_to_the_model_gets_fresh_moments():
    saved = _trained(gc.adam(1e-2))
    grown = {**PARAMS, "v": jnp.ones((2, 2))}
    template = gc.adam(1e-2).init(grown)
    restored, report = gc.restore_state(template, saved, allow_added=True)
    assert report.added == ("ScaleByAdamState#0/mu/v", "ScaleByAdamState#0/nu/v")
    chex.assert_trees_all_equal(restored[0].mu["v"], jnp.zeros((2, 2)))
    chex.assert_trees_all_equal(restored[0].mu["w"], saved[0].mu["w"])
    chex.assert_trees_all_equal(restored[0].step, saved[0].step)


def test_a_parameter_removed_is_dropped_only_when_allowed():
    grown = {**PARAMS, "v": jnp.ones(2)}
    saved = _trained(gc.adam(1e-2), grown)
    template = gc.adam(1e-2).init(PARAMS)
    with pytest.raises(ValueError, match=r"(?s)dropped.*ScaleByAdamState#0/mu/v"):
        gc.restore_state(template, saved)
    restored, report = gc.restore_state(template, saved, allow_dropped=True)
    assert report.dropped == ("ScaleByAdamState#0/mu/v", "ScaleByAdamState#0/nu/v")
    chex.assert_trees_all_equal(restored[0].nu["w"], saved[0].nu["w"])


def test_a_group_whose_optimizer_changed_is_reset_and_the_others_restored():
    labels = {"w": "matrix", "b": "bias"}
    old = gc.partition({"matrix": gc.adam(1e-2), "bias": gc.sgd(0.1, momentum=0.9)}, labels)
    new = gc.partition({"matrix": gc.adam(1e-2), "bias": gc.rmsprop(0.1)}, labels)
    saved = _trained(old)
    template = new.init(PARAMS)
    restored, report = gc.restore_state(template, saved, allow_added=True, allow_dropped=True)
    chex.assert_trees_all_equal(restored.inner_states["matrix"], saved.inner_states["matrix"])
    chex.assert_trees_all_equal(
        restored.inner_states["bias"][0][0], template.inner_states["bias"][0][0]
    )
    assert all(p.startswith("inner_states/bias/") for p in report.added + report.dropped)
    assert any("ScaleByRmsState#0/nu/b" in p for p in report.added)
    assert any("TraceState#0/trace/b" in p for p in report.dropped)
    # the learning rate of "bias" is the same name in both: matched, equal, not reported
    assert (
        "inner_states/bias/inner_state/ScaleState#0/hparams/constant/learning_rate"
        in report.matched
    )


def test_param_groups_restore_by_group_name():
    def groups(lr: float) -> Any:
        return gc.param_groups(
            gc.adamw,
            dict(learning_rate=lr),
            gc.Rule("w", name="w"),
            gc.Rule("**", name="rest"),
            first_match=True,
        )

    saved = _trained(groups(1e-2))
    restored, report = gc.restore_state(groups(1e-3).init(PARAMS), saved)
    assert report.added == report.dropped == ()
    assert [h.path for h in report.hyperparams] == [
        f"inner_states/{g}/inner_state/ScaleState#0/hparams/constant/learning_rate"
        for g in ("rest", "w")
    ]
    assert all(
        h.kept == "template" and h.template == pytest.approx(1e-3) for h in report.hyperparams
    )
    leaves = jax.tree.leaves(restored)
    assert len(leaves) == len(jax.tree.leaves(saved))


def test_conflicting_shapes_and_dtypes_are_refused_naming_both_leaves():
    saved = _trained(gc.adam(1e-2))
    with pytest.raises(
        ValueError,
        match=r"(?s)nothing is reshaped or cast:.*template ScaleByAdamState#0/mu/w: shape \(4,\) "
        r"dtype float32; checkpoint ScaleByAdamState#0/mu/w: shape \(3,\) dtype float32.*"
        r"Restore into a template built for the checkpoint's shapes",
    ):
        gc.restore_state(gc.adam(1e-2).init({**PARAMS, "w": jnp.zeros(4)}), saved)
    with pytest.raises(
        ValueError, match=r"mu/w: shape \(3,\) dtype bfloat16; checkpoint .* float32"
    ):
        gc.restore_state(gc.adam(1e-2, mu_dtype=jnp.bfloat16).init(PARAMS), saved)


def test_a_positional_match_torch_would_load_is_refused():
    # Same tree shape position by position: a (step, param-shaped moment, hparams) state then
    # a ScaleState. Loading by position would put RMSProp's nu into SGD's momentum trace.
    saved = _trained(gc.rmsprop(0.1))
    template = gc.sgd(0.1, momentum=0.9).init(PARAMS)
    assert jax.tree.map(jnp.shape, saved[0].nu) == jax.tree.map(jnp.shape, template[0].trace)
    with pytest.raises(
        ValueError, match=r"(?s)added.*dropped.*TraceState#0/trace/w.*ScaleByRmsState#0/nu/w"
    ):
        gc.restore_state(template, saved)


def test_swapped_members_are_matched_by_name_not_position():
    saved = _trained(gc.chain(gc.trace(0.9), gc.scale_by_rms()))
    restored, report = gc.restore_state(
        gc.chain(gc.scale_by_rms(), gc.trace(0.9)).init(PARAMS), saved
    )
    chex.assert_trees_all_equal(restored[0], saved[1])
    chex.assert_trees_all_equal(restored[1], saved[0])
    assert report.added == report.dropped == ()


@pytest.mark.parametrize("policy", ["template", "checkpoint"])
def test_hyperparameters_follow_the_chosen_side_and_changes_are_reported(policy: Any):
    saved = _trained(gc.adam(1e-3, b2=0.999))
    template = gc.adam(1e-4, b2=0.99).init(PARAMS)
    restored, report = gc.restore_state(template, saved, hyperparams=policy)
    side = template if policy == "template" else saved
    chex.assert_trees_all_equal(gc.get_hyperparams(restored), gc.get_hyperparams(side))
    chex.assert_trees_all_equal(restored[0].hparams.complement, side[0].hparams.complement)
    chex.assert_trees_all_equal(restored[0].mu, saved[0].mu)
    changed = {h.path.rsplit("/", 1)[1]: h for h in report.hyperparams}
    assert sorted(changed) == ["b2", "learning_rate"]
    assert changed["learning_rate"].checkpoint == pytest.approx(1e-3)
    assert changed["learning_rate"].template == pytest.approx(1e-4)
    assert changed["b2"].kept == policy


def test_scheduled_values_come_from_the_checkpoint():
    schedule = gc.linear_schedule(1.0, 0.0, 10)
    saved = _trained(gc.adam(schedule))
    restored, _ = gc.restore_state(gc.adam(schedule).init(PARAMS), saved)
    chex.assert_trees_all_equal(restored, saved)


def test_an_unknown_policy_is_refused():
    state = gc.sgd(0.1).init(PARAMS)
    with pytest.raises(
        ValueError, match="`hyperparams` must be 'template' or 'checkpoint'; got 'new'"
    ):
        gc.restore_state(state, state, hyperparams="new")  # type: ignore[arg-type]


def test_a_grown_chain_restores_from_orbax_without_a_target(tmp_path: pathlib.Path):
    ocp = pytest.importorskip("orbax.checkpoint")
    old = gc.named_chain(
        ("clip", gc.clip(1.0)), ("opt", gc.chain(gc.scale_by_adam(), gc.scale(-0.1)))
    )
    new = gc.named_chain(
        ("clip", gc.clip(1.0)),
        ("opt", gc.chain(gc.add_decayed_weights(1e-2), gc.scale_by_adam(), gc.scale(-0.1))),
    )
    saved = _trained(old)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "state", saved)
        checkpointer.wait_until_finished()
        raw = checkpointer.restore(tmp_path / "state")  # dicts and lists: no class names
    restored, report = gc.restore_state(new.init(PARAMS), raw, allow_added=True)
    chex.assert_trees_all_equal(restored["opt"][1], saved["opt"][0])
    chex.assert_trees_all_equal(restored["opt"][2], saved["opt"][1])
    chex.assert_trees_all_equal(restored["clip"], saved["clip"])
    assert len(report.added) == 2 and all(
        p.startswith("opt/AddDecayedWeightsState#0/") for p in report.added
    )
    # and the restored state runs on, like the uninterrupted one from the same point
    grads = jax.tree.map(jnp.ones_like, PARAMS)
    updates, _ = new.update(grads, restored, PARAMS)
    assert all(np.isfinite(np.asarray(u)).all() for u in jax.tree.leaves(updates))


def test_the_same_optimizer_restores_everything_from_a_raw_flax_dict():
    tx = gc.chain(
        gc.clip_by_global_norm(1.0), gc.adamw(gc.linear_schedule(1e-2, 0.0, 10), weight_decay=0.1)
    )
    saved = _trained(tx)
    restored, report = gc.restore_state(tx.init(PARAMS), _raw(saved))
    chex.assert_trees_all_equal(restored, saved)
    assert report.added == report.dropped == report.hyperparams == ()
    assert len(report.matched) == len(jax.tree.leaves(saved))
    assert str(report).startswith(f"{len(report.matched)} leaves matched, 0 added")
