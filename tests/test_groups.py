"""Rule-based parameter groups (param_groups, Rule) and explain.

Covers the glob and regex syntax against an independent regex translation,
coverage errors (also as a hypothesis property over random trees and rules),
per-group hyperparameters under jit / vmap / scan, and that ``explain`` says
what ``update`` does.
"""

from __future__ import annotations

import re
from typing import Any

import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import gradchain as gc
from gradchain._rules import GroupCoverageError


def _params() -> dict[str, Any]:
    rng = np.random.default_rng(0)

    def arr(*shape: int) -> jax.Array:
        return jnp.asarray(rng.normal(size=shape), jnp.float32)

    layer = lambda: {"attn": {"kernel": arr(4, 4), "bias": arr(4)}, "ln": {"scale": arr(4)}}  # noqa: E731
    return {
        "embed": {"table": arr(10, 4)},
        "encoder": {"layers": [layer(), layer()]},
        "head": {"kernel": arr(4, 2), "bias": arr(2)},
    }


PARAMS = _params()
SCHEDULE = gc.linear_schedule(1e-2, 1e-3, 50)


def _grads(seed: int) -> Any:
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), PARAMS)


def _groups(base_lr: Any = SCHEDULE) -> gc.GradientTransformationExtraArgs:
    """The issue's example."""
    return gc.param_groups(
        gc.adamw,
        dict(learning_rate=base_lr, weight_decay=0.1),
        gc.Rule("**/bias", "**/scale", name="no_decay", overrides=dict(weight_decay=0.0)),
        gc.Rule("encoder/**", name="encoder", multipliers=dict(learning_rate=0.1)),
        gc.Rule("embed/**", name="frozen", optimizer=gc.set_to_zero()),
        gc.Rule("**", name="rest"),
        first_match=True,
    )


# --- paths and patterns -------------------------------------------------------------------


def _reference_regex(glob: str) -> str:
    """An independent translation: each segment is '/seg'; '**' is any run of segments."""
    out = []
    for seg in glob.split("/"):
        if seg == "**":
            out.append("(?:/[^/]+)*")
        else:
            out.append("/" + "".join("[^/]*" if c == "*" else re.escape(c) for c in seg))
    return "".join(out)


def _reference_match(glob: str, path: str) -> bool:
    return re.fullmatch(_reference_regex(glob), "/" + path if path else "") is not None


@pytest.mark.parametrize(
    ("glob", "path", "expected"),
    [
        ("**/bias", "bias", True),
        ("**/bias", "encoder/layers/0/attn/bias", True),
        ("**/bias", "encoder/bias_x", False),
        ("encoder/**", "encoder", True),
        ("encoder/**", "encoder/layers/0/attn/kernel", True),
        ("encoder/**", "decoder/encoder", False),
        ("encoder/*/0/**", "encoder/layers/0/attn/kernel", True),
        ("*", "w", True),
        ("*", "a/w", False),
        ("layers_*/kernel", "layers_12/kernel", True),
        ("**", "", True),
        ("**/**/x", "x", True),
        ("a/**/b/**/c", "a/b/c", True),
        ("a/**/b/**/c", "a/x/b/y/z/c", True),
        ("a/**/b/**/c", "a/c", False),
    ],
)
def test_globs_match_segments_like_a_reference_regex(glob: str, path: str, expected: bool):
    assert gc.Rule(glob, name="r").matches(path) is expected
    assert _reference_match(glob, path) is expected


def test_a_compiled_regex_must_match_the_whole_path():
    rule = gc.Rule(re.compile(r"encoder/layers/\d+/.*"), name="r")
    assert rule.matches("encoder/layers/10/attn/kernel")
    assert not rule.matches("x/encoder/layers/1/k")
    assert gc.Rule(re.compile(r".*bias"), name="r").matches("a/b/bias")


def test_paths_join_dict_keys_indices_attributes_and_nnx_state_keys():
    assert list(gc.explain([gc.Rule("**", name="all")], PARAMS).assignment)[:3] == [
        "embed/table",
        "encoder/layers/0/attn/bias",
        "encoder/layers/0/attn/kernel",
    ]
    model = nnx.Sequential(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.Linear(3, 1, rngs=nnx.Rngs(1)))
    paths = gc.explain([gc.Rule("**", name="all")], nnx.state(model, nnx.Param)).assignment
    assert list(paths) == ["layers/0/bias", "layers/0/kernel", "layers/1/bias", "layers/1/kernel"]
    assert gc.explain([gc.Rule("**", name="all")], jnp.zeros(3)).assignment == {"": "all"}


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        (dict(name=""), ValueError, "non-empty string without '/'"),
        (dict(name="a/b"), ValueError, "without '/'"),
        (dict(name="r", patterns=()), ValueError, "at least one pattern"),
        (dict(name="r", patterns=("a//b",)), ValueError, "empty segment"),
        (dict(name="r", patterns=("/a",)), ValueError, "empty segment"),
        (dict(name="r", patterns=("a/**b",)), ValueError, "'\\*\\*' must be a whole segment"),
        (dict(name="r", patterns=(3,)), TypeError, "glob string or a compiled re.Pattern"),
        (dict(name="r", optimizer=gc.adam), TypeError, "the function `adam`"),
        (
            dict(name="r", optimizer=gc.sgd(0.1), overrides=dict(learning_rate=1.0)),
            ValueError,
            "either `optimizer` or",
        ),
        (
            dict(name="r", overrides=dict(b1=0.5), multipliers=dict(b1=0.5)),
            ValueError,
            "both overridden and multiplied",
        ),
        (dict(name="r", multipliers=dict(learning_rate="x")), TypeError, "must be a number"),
        (
            dict(name="r", multipliers=dict(learning_rate=float("nan"))),
            ValueError,
            r"must be in \(-inf, inf\)",
        ),
    ],
)
def test_bad_rules_fail_at_construction(kwargs: dict[str, Any], error: type, pattern: str):
    patterns = kwargs.pop("patterns", ("**",))
    with pytest.raises(error, match=pattern):
        gc.Rule(*patterns, **kwargs)


# --- groups and their transformations -----------------------------------------------------


def test_each_group_gets_the_base_optimizer_with_its_rules_arguments():
    tx = _groups()
    hp = {k: float(v) for k, v in gc.get_hyperparams(tx.init(PARAMS)).items()}
    assert hp["no_decay/weight_decay"] == 0.0
    assert hp["rest/weight_decay"] == pytest.approx(0.1)
    assert hp["encoder/learning_rate"] == pytest.approx(0.1 * 1e-2)
    assert hp["rest/learning_rate"] == pytest.approx(1e-2)
    assert not any(k.startswith("frozen/") for k in hp)  # set_to_zero has no hyperparameters


def test_explain_agrees_with_what_update_applies():
    tx = _groups(base_lr=1e-2)
    report = gc.explain(tx, PARAMS)
    updates, _ = jax.jit(tx.update)(_grads(0), tx.init(PARAMS), PARAMS)
    by_group = {g.name: g for g in report.groups}
    # Each group's leaves get exactly what a lone optimizer with the group's arguments gives.
    alone = {
        "no_decay": gc.adamw(1e-2, weight_decay=0.0),
        "encoder": gc.adamw(1e-3, weight_decay=0.1),
        "rest": gc.adamw(1e-2, weight_decay=0.1),
    }
    flat_updates = dict(zip(report.assignment, jax.tree.leaves(updates), strict=True))
    flat_params = dict(zip(report.assignment, jax.tree.leaves(PARAMS), strict=True))
    flat_grads = dict(zip(report.assignment, jax.tree.leaves(_grads(0)), strict=True))
    for group, lone in [("frozen", None), *alone.items()]:
        paths = [p for p, g in report.assignment.items() if g == group]
        got = {p: flat_updates[p] for p in paths}
        if lone is None:
            assert all(float(jnp.abs(u).max()) == 0.0 for u in got.values())
            continue
        sub_params = {p: flat_params[p] for p in paths}
        sub_grads = {p: flat_grads[p] for p in paths}
        expected, _ = jax.jit(lone.update)(sub_grads, lone.init(sub_params), sub_params)
        chex.assert_trees_all_close(got, expected, rtol=1e-6)
        decay = 0.0 if group == "no_decay" else 0.1
        assert by_group[group].hyperparams["weight_decay"] == pytest.approx(decay)
    assert by_group["encoder"].hyperparams["learning_rate"] == pytest.approx(1e-3)
    assert by_group["frozen"].hyperparams == {}


def test_explain_counts_tensors_and_elements_like_nanogpt():
    report = gc.explain(_groups(), PARAMS)
    summary = {g.name: (g.tensors, g.elements) for g in report.groups}
    assert summary == {"no_decay": (5, 18), "encoder": (2, 32), "frozen": (1, 40), "rest": (1, 8)}
    text = str(report)
    assert "no_decay  **/bias, **/scale        5        18" in text
    assert "total" in text and "98" in text
    assert "learning_rate=0.001*" in text  # the encoder's scheduled rate at step 0, marked
    assert "encoder/layers/1/ln/scale     (4,)     float32  no_decay" in text


def test_explain_works_on_partition_selective_transform_and_rule_lists():
    labels = jax.tree.map(lambda p: "vec" if p.ndim == 1 else "mat", PARAMS)
    report = gc.explain(gc.partition({"vec": gc.sgd(0.1), "mat": gc.adam(1e-3)}, labels), PARAMS)
    assert [(g.name, g.tensors) for g in report.groups] == [("vec", 5), ("mat", 4)]
    assert report.groups[0].hyperparams == {"learning_rate": pytest.approx(0.1)}
    mask = {"embed": True, "encoder": False, "head": False}
    report = gc.explain(gc.selective_transform(gc.sgd(0.1), freeze_mask=mask), PARAMS)
    assert {g.name: g.tensors for g in report.groups} == {"train": 8, "freeze": 1}
    rules = [gc.Rule("embed/**", name="embed"), gc.Rule("**", name="rest")]
    report = gc.explain(rules, PARAMS, first_match=True)
    assert report.assignment["embed/table"] == "embed"
    assert report.groups[0].hyperparams == {}


def test_explain_needs_no_arrays_and_refuses_other_transformations():
    abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), PARAMS)
    assert gc.explain(_groups(), abstract).groups[2].elements == 40
    with pytest.raises(TypeError, match="explain: expected a transformation built by"):
        gc.explain(gc.chain(_groups()), PARAMS)


def test_a_multiplied_schedule_is_the_schedule_times_the_factor_at_every_step():
    tx = _groups()
    state = tx.init(PARAMS)
    step = jax.jit(tx.update)
    for t in range(1, 4):
        _, state = step(_grads(t), state, PARAMS)
        hp = gc.get_hyperparams(state)
        assert float(hp["encoder/learning_rate"]) == pytest.approx(0.1 * float(SCHEDULE(t)))
        assert float(hp["rest/learning_rate"]) == pytest.approx(float(SCHEDULE(t)))
    with pytest.raises(ValueError, match="follows a schedule"):
        gc.set_hyperparams(state, {"encoder/learning_rate": 0.1})


def _sgd_groups() -> gc.GradientTransformationExtraArgs:
    return gc.param_groups(
        gc.sgd,
        dict(learning_rate=0.1),
        gc.Rule("encoder/**", name="encoder", multipliers=dict(learning_rate=0.1)),
        gc.Rule("**", name="rest"),
        first_match=True,
    )


def test_group_hyperparameters_are_set_under_jit_without_recompiling():
    tx = _sgd_groups()
    traces = 0

    @jax.jit
    def step(state: Any, grads: Any) -> tuple[Any, Any]:
        nonlocal traces
        traces += 1
        return tx.update(grads, state, PARAMS)

    state = tx.init(PARAMS)
    for lr in (0.5, 0.25, 2.0):
        state = gc.set_hyperparams(state, {"encoder/learning_rate": lr})
        updates, state = step(state, _grads(1))
        kernel = updates["encoder"]["layers"][0]["attn"]["kernel"]
        np.testing.assert_allclose(
            kernel, -lr * _grads(1)["encoder"]["layers"][0]["attn"]["kernel"]
        )
        np.testing.assert_allclose(updates["head"]["bias"], -0.1 * _grads(1)["head"]["bias"])
    assert traces == 1


def test_group_hyperparameters_sweep_under_vmap_and_change_inside_scan():
    tx = _sgd_groups()
    state = tx.init(PARAMS)
    grads = _grads(2)

    def with_lr(lr: jax.Array) -> Any:
        s = gc.set_hyperparams(state, {"encoder/learning_rate": lr})
        return tx.update(grads, s, PARAMS)[0]["encoder"]["layers"][1]["ln"]["scale"]

    lrs = np.array([0.1, 0.2, 0.4], np.float32)
    swept = jax.vmap(with_lr)(jnp.asarray(lrs))
    scale = np.asarray(grads["encoder"]["layers"][1]["ln"]["scale"])
    np.testing.assert_allclose(swept, -lrs[:, None] * scale[None, :], rtol=1e-6)

    def body(s: Any, lr: jax.Array) -> tuple[Any, Any]:
        s = gc.set_hyperparams(s, {"rest/learning_rate": lr})
        updates, s = tx.update(grads, s, PARAMS)
        return s, updates["head"]["bias"]

    _, biases = jax.lax.scan(body, state, jnp.array([1.0, 3.0]))
    bias = np.asarray(grads["head"]["bias"])
    np.testing.assert_allclose(biases, -np.array([[1.0], [3.0]], np.float32) * bias[None, :])


def test_param_groups_train_an_nnx_model():
    model = nnx.Sequential(nnx.Linear(3, 8, rngs=nnx.Rngs(0)), nnx.Linear(8, 1, rngs=nnx.Rngs(1)))
    tx = gc.param_groups(
        gc.adamw,
        dict(learning_rate=0.05, weight_decay=1e-3),
        gc.Rule("**/bias", name="no_decay", overrides=dict(weight_decay=0.0)),
        gc.Rule("layers/0/**", name="first", multipliers=dict(learning_rate=0.5)),
        gc.Rule("**", name="rest"),
        first_match=True,
    )
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    x = jax.random.normal(jax.random.key(0), (32, 3))
    y = x @ jnp.array([[1.0], [-1.0], [2.0]])

    @nnx.jit
    def step(model: nnx.Sequential, opt: nnx.Optimizer) -> jax.Array:
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        opt.update(model, grads)
        return loss

    losses = [float(step(model, opt)) for _ in range(60)]
    assert losses[-1] < 0.1 * losses[0]
    hp = gc.get_hyperparams(opt.opt_state)
    assert float(hp["first/learning_rate"][...]) == pytest.approx(0.025)


# --- errors -------------------------------------------------------------------------------


def test_uncovered_parameters_are_listed_with_the_rules_at_init():
    tx = gc.param_groups(
        gc.adam,
        dict(learning_rate=1e-3),
        gc.Rule("encoder/**", name="enc"),
        gc.Rule("**/bias", name="b"),
    )
    with pytest.raises(GroupCoverageError) as info:
        tx.init(PARAMS)
    err = info.value
    assert err.uncovered == ("embed/table", "head/kernel")
    assert err.overlapping == {
        "encoder/layers/0/attn/bias": ("enc", "b"),
        "encoder/layers/1/attn/bias": ("enc", "b"),
    }
    message = str(err)
    assert "2 parameter(s) match no rule: 'embed/table', 'head/kernel'" in message
    assert "'encoder/layers/0/attn/bias' (enc, b)" in message
    assert "enc: encoder/**; b: **/bias" in message
    assert 'Rule("**", name="rest")' in message and "first_match=True" in message


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "pattern"),
    [
        ((gc.adam(1e-3), gc.Rule("**", name="a")), {}, TypeError, "optimizer factory"),
        (
            (gc.adam, dict(lr=1.0), gc.Rule("**", name="a")),
            {},
            TypeError,
            r"adam does not take \['lr'\]",
        ),
        ((gc.adam, dict(learning_rate=1.0)), {}, ValueError, "at least one Rule"),
        ((gc.adam, dict(learning_rate=1.0), "**"), {}, TypeError, "rule 0 must be a gc.Rule"),
        (
            (gc.adam, dict(learning_rate=1.0), gc.Rule("a", name="x"), gc.Rule("b", name="x")),
            {},
            ValueError,
            r"unique; \['x'\]",
        ),
        ((None, gc.Rule("**", name="a")), {}, ValueError, "no base factory"),
        (
            (gc.adam, dict(learning_rate=1.0), gc.Rule("**", name="a", overrides=dict(b3=0.1))),
            {},
            TypeError,
            "rule 'a' sets `b3`, which adam does not take",
        ),
        (
            (
                gc.sgd,
                dict(learning_rate=1.0),
                gc.Rule("**", name="m", multipliers=dict(momentum=2.0)),
            ),
            {},
            TypeError,
            "multiplies `momentum`, but its base value is None",
        ),
        (
            (gc.adam, dict(learning_rate=1.0), gc.Rule("**", name="a", overrides=dict(b1=1.5))),
            {},
            ValueError,
            r"rule 'a' builds adam\(...\): scale_by_adam: `b1` must be in \[0, 1\)",
        ),
    ],
)
def test_bad_param_groups_fail_at_construction(args: Any, kwargs: Any, error: type, pattern: str):
    with pytest.raises(error, match=pattern):
        gc.param_groups(*args, **kwargs)


def test_base_kwargs_may_be_omitted_and_rules_may_carry_their_own_optimizers():
    tx = gc.param_groups(
        None,
        gc.Rule("embed/**", name="e", optimizer=gc.sgd(1.0)),
        gc.Rule("**", name="r", optimizer=gc.sgd(0.5)),
        first_match=True,
    )
    updates, _ = tx.update(_grads(3), tx.init(PARAMS), PARAMS)
    np.testing.assert_allclose(updates["embed"]["table"], -_grads(3)["embed"]["table"])
    np.testing.assert_allclose(updates["head"]["bias"], -0.5 * _grads(3)["head"]["bias"])


# --- the coverage property ----------------------------------------------------------------

_SEGMENTS = ["a", "b", "c", "0", "1", "*", "**"]


def _trees() -> st.SearchStrategy[Any]:
    leaf = st.just(jax.ShapeDtypeStruct((2,), jnp.float32))

    def extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.one_of(
            st.dictionaries(st.sampled_from("abc"), children, min_size=1, max_size=3),
            st.lists(children, min_size=1, max_size=2),
        )

    return st.recursive(leaf, extend, max_leaves=8)


_GLOBS = st.lists(st.sampled_from(_SEGMENTS), min_size=1, max_size=3).map("/".join)
_RULES = st.lists(st.lists(_GLOBS, min_size=1, max_size=2), min_size=1, max_size=4)


@hypothesis.settings(max_examples=60)
@hypothesis.given(tree=_trees(), globs=_RULES, first_match=st.booleans())
def test_every_parameter_is_covered_once_or_the_error_names_exactly_the_offenders(
    tree: Any, globs: list[list[str]], first_match: bool
):
    rules = [gc.Rule(*g, name=f"r{i}") for i, g in enumerate(globs)]
    paths = [
        "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]
    ]
    hits = {
        p: [f"r{i}" for i, g in enumerate(globs) if any(_reference_match(x, p) for x in g)]
        for p in paths
    }
    uncovered = tuple(p for p in paths if not hits[p])
    overlapping = {} if first_match else {p: tuple(h) for p, h in hits.items() if len(h) > 1}
    if uncovered or overlapping:
        with pytest.raises(GroupCoverageError) as info:
            gc.explain(rules, tree, first_match=first_match)
        assert info.value.uncovered == uncovered
        assert info.value.overlapping == overlapping
        assert all(repr(p) in str(info.value) for p in (*uncovered, *overlapping))
    else:
        report = gc.explain(rules, tree, first_match=first_match)
        assert report.assignment == {p: hits[p][0] for p in paths}
        assert sum(g.tensors for g in report.groups) == len(paths)


def test_coverage_is_checked_at_update_too():
    tx = gc.param_groups(gc.sgd, dict(learning_rate=0.1), gc.Rule("w", name="w"))
    state = tx.init({"w": jnp.ones(2)})
    with pytest.raises(GroupCoverageError, match="match no rule: 'v'"):
        tx.update({"w": jnp.ones(2), "v": jnp.ones(2)}, state, {"w": jnp.ones(2), "v": jnp.ones(2)})
    chex.assert_trees_all_equal(tx.update({"w": jnp.ones(2)}, state)[0], {"w": jnp.full(2, -0.1)})


def test_state_round_trips_through_an_orbax_checkpoint(tmp_path: Any):
    ocp = pytest.importorskip("orbax.checkpoint")
    tx = _groups()
    state = tx.init(PARAMS)
    _, state = jax.jit(tx.update)(_grads(4), state, PARAMS)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "state", state)
        checkpointer.wait_until_finished()
        restored = checkpointer.restore(tmp_path / "state", tx.init(PARAMS))
    chex.assert_trees_all_equal(restored, state)
    assert isinstance(restored, gc.PartitionState)
