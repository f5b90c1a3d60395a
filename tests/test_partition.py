"""partition / multi_transform, freeze and selective_transform: groups by label or mask.

Covers Optax 0.2.8's signatures and numbers (100 steps, rtol 1e-6), the errors,
and the three tree kinds users hand them: plain dicts, Flax Linen
``FrozenDict`` and Flax NNX ``nnx.State`` (under ``nnx.Optimizer``, where
Optax's partition fails).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import chex
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.core import FrozenDict
from flax.training import train_state

import gradchain as gc

STEPS = 100
RTOL = 1e-6  # gradchain's Adam, SGD and masking are bit-identical to Optax's


def _params() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    return {
        "w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
        "b": jnp.asarray(rng.normal(size=(3,)), jnp.float32),
        "nested": {"x": jnp.asarray(rng.normal(size=(2, 2)), jnp.float32), "y": jnp.zeros(())},
    }


PARAMS = _params()
LABELS = {"w": "adam", "b": "sgd", "nested": {"x": "adam", "y": "sgd"}}
MASK = {"w": False, "b": True, "nested": {"x": True, "y": False}}


def _grads(seed: int, params: Any = None) -> Any:
    rng = np.random.default_rng(seed)
    tree = PARAMS if params is None else params
    return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), tree)


def _by_rank(params: Any) -> Any:
    return jax.tree.map(lambda p: "adam" if p.ndim > 1 else "sgd", params)


# --- Optax's signatures and numbers -------------------------------------------------------


@pytest.mark.parametrize("name", ["partition", "multi_transform", "freeze", "selective_transform"])
def test_signature_matches_optax(name: str):
    ours = inspect.signature(getattr(gc, name)).parameters
    theirs = inspect.signature(getattr(optax, name)).parameters
    assert [(p.name, p.kind, p.default) for p in ours.values()] == [
        (p.name, p.kind, p.default) for p in theirs.values()
    ]


def test_multi_transform_is_partition_under_its_older_name():
    assert gc.multi_transform is gc.partition
    assert {"multi_transform", "partition"} <= set(gc.__all__)
    assert "multi_transform" in (gc.partition.__doc__ or "")


def _trajectory(lib: Any, make: Callable[[Any], Any]) -> Any:
    tx = make(lib)
    grads = jax.tree.map(lambda *g: jnp.stack(g), *[_grads(s) for s in range(STEPS)])

    def step(carry: Any, g: Any) -> tuple[Any, Any]:
        params, state = carry
        updates, state = tx.update(g, state, params)
        return (lib.apply_updates(params, updates), state), updates

    return jax.lax.scan(step, (PARAMS, tx.init(PARAMS)), grads)[1]


PARITY_CASES: dict[str, Callable[[Any], Any]] = {
    "partition_tree": lambda lib: lib.partition(
        {"adam": lib.adam(1e-2), "sgd": lib.sgd(0.1, momentum=0.9)}, LABELS
    ),
    "partition_fn": lambda lib: lib.partition(
        {"adam": lib.adamw(1e-2, weight_decay=0.1), "sgd": lib.sgd(0.1)}, _by_rank
    ),
    "multi_transform_prefix": lambda lib: lib.multi_transform(
        {"a": lib.adam(1e-2), "b": lib.sgd(0.05)}, {"w": "a", "b": "b", "nested": "a"}
    ),
    "freeze": lambda lib: lib.chain(lib.freeze(MASK), lib.adam(1e-2)),
    "freeze_all": lambda lib: lib.chain(lib.freeze(True), lib.adam(1e-2)),
    "selective_transform": lambda lib: lib.selective_transform(
        lib.adamw(1e-2, weight_decay=0.1), freeze_mask=MASK
    ),
}


@pytest.mark.parametrize("case", sorted(PARITY_CASES))
def test_matches_optax_for_100_steps(case: str):
    make = PARITY_CASES[case]

    @jax.jit
    def run() -> tuple[Any, Any]:
        got = _trajectory(gc, make)
        with jax.numpy_dtype_promotion("standard"):
            want = _trajectory(optax, make)
        return got, want

    got, want = run()
    chex.assert_trees_all_close(got, want, rtol=RTOL, atol=1e-7)
    if case.startswith("freeze") or case == "selective_transform":
        assert float(jnp.abs(got["b"]).max()) == 0.0  # b is frozen in MASK


def test_state_has_optaxs_shape_one_masked_state_per_label():
    tx = gc.partition({"adam": gc.adam(1e-2), "sgd": gc.sgd(0.1)}, LABELS)
    state = tx.init(PARAMS)
    assert isinstance(state, gc.PartitionState)
    assert sorted(state.inner_states) == ["adam", "sgd"]
    adam_state = state.inner_states["adam"].inner_state[0]
    assert isinstance(adam_state.mu["b"], gc.MaskedNode)  # nothing kept for other groups
    assert adam_state.mu["w"].shape == (4, 3)


# --- behaviour ----------------------------------------------------------------------------


def test_each_group_sees_only_its_own_leaves():
    seen: dict[str, Any] = {}

    def spy(name: str) -> gc.GradientTransformation:
        def record(updates: Any, params: Any) -> Any:
            seen[name] = jax.tree.map(lambda u: u.shape, updates)
            return updates

        return gc.stateless(record)

    tx = gc.partition({"adam": spy("adam"), "sgd": spy("sgd")}, LABELS)
    tx.update(_grads(0), tx.init(PARAMS), PARAMS)
    masked = gc.MaskedNode()
    assert seen["adam"] == {"w": (4, 3), "b": masked, "nested": {"x": (2, 2), "y": masked}}
    assert seen["sgd"] == {"w": masked, "b": (3,), "nested": {"x": masked, "y": ()}}


def test_a_label_at_a_subtree_covers_all_its_leaves():
    tx = gc.partition(
        {"zero": gc.set_to_zero(), "keep": gc.identity()},
        {"w": "keep", "b": "keep", "nested": "zero"},
    )
    updates, _ = tx.update(_grads(1), tx.init(PARAMS), PARAMS)
    assert float(jnp.abs(updates["nested"]["x"]).max()) == 0.0
    chex.assert_trees_all_equal(updates["w"], _grads(1)["w"])


def test_a_transform_with_no_parameters_is_fine_and_keeps_its_hyperparameters():
    tx = gc.partition({"all": gc.sgd(0.1), "unused": gc.adam(1e-3)}, "all")
    state = tx.init(PARAMS)
    updates, state = tx.update(_grads(2), state, PARAMS)
    chex.assert_trees_all_close(updates, jax.tree.map(lambda g: -0.1 * g, _grads(2)))
    hp = gc.get_hyperparams(state)
    assert float(hp["unused/learning_rate"]) == np.float32(1e-3)
    assert jax.tree.leaves(state.inner_states["unused"].inner_state[0].mu) == []


def test_hyperparameters_are_named_by_label_and_settable_per_group():
    tx = gc.partition({"adam": gc.sgd(0.1), "sgd": gc.sgd(0.1)}, LABELS)
    state = gc.set_hyperparams(tx.init(PARAMS), {"sgd/learning_rate": 0.5})
    updates, _ = jax.jit(tx.update)(_grads(3), state, PARAMS)
    np.testing.assert_allclose(updates["b"], -0.5 * _grads(3)["b"], rtol=1e-6)
    np.testing.assert_allclose(updates["w"], -0.1 * _grads(3)["w"], rtol=1e-6)


def test_label_function_sees_params_so_groups_follow_params_not_grads_dtype():
    params = {"w": jnp.ones(2, jnp.bfloat16), "v": jnp.ones(2, jnp.float32)}
    labels = lambda p: jax.tree.map(lambda x: "low" if x.dtype == jnp.bfloat16 else "f32", p)  # noqa: E731
    tx = gc.partition({"low": gc.sgd(1.0), "f32": gc.adam(0.1)}, labels)
    grads = jax.tree.map(lambda p: jnp.ones(p.shape, jnp.float32), params)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert float(updates["w"][0]) == -1.0  # still the "low" group although grads are float32


def test_update_without_params_labels_the_updates():
    tx = gc.partition({"adam": gc.sgd(1.0), "sgd": gc.sgd(0.5)}, _by_rank)
    updates, _ = tx.update(_grads(4), tx.init(PARAMS))
    np.testing.assert_allclose(updates["b"], -0.5 * _grads(4)["b"], rtol=1e-6)


def test_mask_compatible_extra_args_masks_tree_shaped_extra_arguments():
    seen: list[Any] = []

    def init(params: Any) -> gc.EmptyState:
        return gc.EmptyState()

    def update(updates: Any, state: Any, params: Any = None, **extra: Any) -> Any:
        seen.append(extra["tree"])
        return updates, state

    spy = gc.GradientTransformationExtraArgs(init, update)
    for flag in (False, True):
        seen.clear()
        tx = gc.partition(
            {"adam": spy, "sgd": gc.identity()}, LABELS, mask_compatible_extra_args=flag
        )
        tx.update(_grads(5), tx.init(PARAMS), PARAMS, tree=_grads(6))
        assert isinstance(seen[0]["b"], gc.MaskedNode) == flag


def test_labels_may_be_integers_and_state_serializes_with_flax():
    tx = gc.partition(
        {0: gc.adam(1e-2), 1: gc.sgd(0.1)}, lambda p: jax.tree.map(lambda x: int(x.ndim < 2), p)
    )
    state = tx.init(PARAMS)
    _, state = tx.update(_grads(7), state, PARAMS)
    restored = flax.serialization.from_bytes(tx.init(PARAMS), flax.serialization.to_bytes(state))
    chex.assert_trees_all_equal(restored, state)


def test_freeze_all_or_nothing_with_a_single_bool():
    for flag in (True, False):
        updates, _ = gc.freeze(flag).update(_grads(8), gc.freeze(flag).init(PARAMS))
        expected = jax.tree.map(jnp.zeros_like, _grads(8)) if flag else _grads(8)
        chex.assert_trees_all_equal(updates, expected)


def test_selective_transform_accepts_a_mask_function_where_optax_freezes_everything():
    def mask(params: Any) -> Any:
        return jax.tree.map(lambda p: p.ndim > 1, params)

    tx = gc.selective_transform(gc.sgd(1.0), freeze_mask=mask)
    updates, _ = tx.update(_grads(9), tx.init(PARAMS), PARAMS)
    np.testing.assert_array_equal(updates["b"], -_grads(9)["b"])  # trained
    assert float(jnp.abs(updates["w"]).max()) == 0.0  # frozen
    with jax.numpy_dtype_promotion("standard"):  # Optax 0.2.8: the function is a truthy leaf
        theirs = optax.selective_transform(optax.sgd(1.0), freeze_mask=mask)
        their_updates, _ = theirs.update(_grads(9), theirs.init(PARAMS), PARAMS)
    assert float(jnp.abs(their_updates["b"]).max()) == 0.0


def test_selective_transform_keeps_no_optimizer_state_for_frozen_leaves():
    tx = gc.selective_transform(gc.adam(1e-2), freeze_mask=lambda p: {k: k == "b" for k in p})
    state = tx.init(PARAMS)
    mu = state.inner_states["train"].inner_state[0].mu
    assert isinstance(mu["b"], gc.MaskedNode) and mu["w"].shape == (4, 3)
    assert sorted(gc.get_hyperparams(state))[-1] == "train/learning_rate"


# --- errors -------------------------------------------------------------------------------


def test_a_label_without_a_transformation_fails_at_construction_naming_it():
    with pytest.raises(ValueError, match=r"label 'sgdd' \(at \['b'\].*has the labels"):
        gc.partition({"adam": gc.adam(1e-3), "sgd": gc.sgd(0.1)}, {**LABELS, "b": "sgdd"})


def test_a_label_function_that_returns_an_unknown_label_fails_at_init():
    tx = gc.partition({"adam": gc.adam(1e-3)}, _by_rank)
    with pytest.raises(ValueError, match=r"label 'sgd'.*no transformation"):
        tx.init(PARAMS)


@pytest.mark.parametrize(
    ("labels", "pattern"),
    [
        ({"w": "adam", "b": "sgd"}, r"at <root>: the parameters have the key 'nested'"),
        ({**LABELS, "extra": "sgd"}, r"at <root>: `param_labels` has the key 'extra'"),
        ({**LABELS, "b": {"deeper": "sgd"}}, r"at \['b'\]: it has a dict there"),
        ({**LABELS, "nested": None}, r"at \['nested'\]: it has None there, over 2"),
        ({**LABELS, "nested": ["adam", "sgd"]}, r"at \['nested'\]: the parameters have the key"),
    ],
)
def test_labels_that_do_not_match_the_params_name_the_key_path(labels: Any, pattern: str):
    tx = gc.partition({"adam": gc.adam(1e-3), "sgd": gc.sgd(0.1)}, labels)
    with pytest.raises(ValueError, match=pattern):
        tx.init(PARAMS)


def test_an_unhashable_label_is_refused_naming_its_path():
    with pytest.raises(TypeError, match=r"label at \['w'\].*ndarray, which is not hashable"):
        gc.partition({"adam": gc.sgd(0.1), "sgd": gc.sgd(0.1)}, {**LABELS, "w": np.zeros(2)})


@pytest.mark.parametrize(
    ("transforms", "error", "pattern"),
    [
        ([gc.sgd(0.1)], TypeError, "must be a mapping from label to transformation"),
        ({}, ValueError, "is empty"),
        ({"a": gc.sgd(0.1), 1: gc.sgd(0.1)}, TypeError, "cannot be sorted"),
        ({"a": gc.scale_by_adam}, TypeError, r"transforms\['a'\].*gc.scale_by_adam\(\)"),
    ],
)
def test_bad_transforms_fail_at_construction(transforms: Any, error: type, pattern: str):
    with pytest.raises(error, match=pattern):
        gc.partition(transforms, "a")


def test_a_foreign_state_is_refused():
    tx = gc.partition({"adam": gc.adam(1e-3), "sgd": gc.sgd(0.1)}, LABELS)
    other = gc.partition({"adam": gc.adam(1e-3)}, "adam").init(PARAMS)
    with pytest.raises(TypeError, match="must have the labels"):
        tx.update(_grads(0), other, PARAMS)
    with pytest.raises(TypeError, match="PartitionState"):
        tx.update(_grads(0), gc.adam(1e-3).init(PARAMS), PARAMS)


@pytest.mark.parametrize("fn", ["freeze", "selective_transform"])
def test_masks_must_hold_bools_and_match_the_params(fn: str):
    def build(mask: Any) -> Any:
        return (
            gc.freeze(mask)
            if fn == "freeze"
            else gc.selective_transform(gc.sgd(0.1), freeze_mask=mask)
        )

    with pytest.raises(TypeError, match=rf"{fn}: .*entry at \['b'\] must be a Python bool"):
        build({**MASK, "b": 1})
    with pytest.raises(
        ValueError, match=rf"{fn}: .*at \['nested'\]: the parameters have the key 'y'"
    ):
        build({**MASK, "nested": {"x": True}}).init(PARAMS)


def test_selective_transform_refuses_an_uncalled_factory():
    with pytest.raises(TypeError, match=r"selective_transform: `optimizer` is the function `adam`"):
        gc.selective_transform(gc.adam, freeze_mask=MASK)  # type: ignore[arg-type]


# --- Flax trees ---------------------------------------------------------------------------


def test_a_plain_dict_of_labels_fits_frozen_dict_params_in_a_linen_train_state():
    module = flax.linen.Dense(2)
    params = FrozenDict(module.init(jax.random.key(0), jnp.ones((1, 3))))
    labels = {"params": {"kernel": "decay", "bias": "no_decay"}}
    tx = gc.partition({"decay": gc.adamw(0.1, weight_decay=0.1), "no_decay": gc.adam(0.1)}, labels)
    state = train_state.TrainState.create(apply_fn=module.apply, params=params, tx=tx)
    x, y = jnp.ones((8, 3)), jnp.zeros((8, 2))

    @jax.jit
    def step(state: train_state.TrainState) -> tuple[train_state.TrainState, jax.Array]:
        loss_fn = lambda p: jnp.mean((state.apply_fn(p, x) - y) ** 2)  # noqa: E731
        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return state.apply_gradients(grads=grads), loss

    state, first = step(state)
    for _ in range(30):
        state, last = step(state)
    assert float(last) < 0.1 * float(first)
    assert sorted(gc.get_hyperparams(state.opt_state))[0] == "decay/b1"


class _Mlp(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.l1 = nnx.Linear(3, 8, rngs=rngs)
        self.l2 = nnx.Linear(8, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.l2(jax.nn.relu(self.l1(x)))


_X = jax.random.normal(jax.random.key(1), (32, 3))
_Y = _X @ jnp.array([[1.0], [-2.0], [0.5]])


def _nnx_train(make_tx: Callable[[nnx.Module], Any], lib: Any = gc, steps: int = 40) -> Any:
    model = _Mlp(nnx.Rngs(0))
    opt = nnx.Optimizer(model, make_tx(model), wrt=nnx.Param)

    @nnx.jit
    def step(model: _Mlp, opt: nnx.Optimizer) -> jax.Array:
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(_X) - _Y) ** 2))(model)
        opt.update(model, grads)
        return loss

    losses = [float(step(model, opt)) for _ in range(steps)]
    return losses, opt, model


def _labels_from_state(model: nnx.Module) -> Any:
    return jax.tree.map(lambda p: "vec" if p.ndim == 1 else "mat", nnx.state(model, nnx.Param))


def _mask_from_state(model: nnx.Module) -> Any:
    return jax.tree.map(lambda p: p.ndim == 1, nnx.state(model, nnx.Param))


NNX_CASES: dict[str, Callable[[Any, nnx.Module], Any]] = {
    # init sees Param nodes, update the pure arrays: a tree built from nnx.state fits both here
    "labels_from_nnx_state": lambda lib, m: lib.partition(
        {"vec": lib.sgd(0.05), "mat": lib.adam(0.05)}, _labels_from_state(m)
    ),
    "plain_dict_prefix": lambda lib, m: lib.multi_transform(
        {"a": lib.adam(0.05), "b": lib.adam(0.02)}, {"l1": "a", "l2": "b"}
    ),
    "freeze_mask_from_nnx_state": lambda lib, m: lib.chain(
        lib.freeze(_mask_from_state(m)), lib.adam(0.05)
    ),
    "selective_mask_from_nnx_state": lambda lib, m: lib.selective_transform(
        lib.adam(0.05), freeze_mask=_mask_from_state(m)
    ),
}


@pytest.mark.parametrize("case", sorted(NNX_CASES))
def test_nnx_optimizer_trains_where_optax_fails(case: str):
    make = NNX_CASES[case]
    losses, _, model = _nnx_train(lambda m: make(gc, m))
    assert losses[-1] < 0.5 * losses[0]
    if "freeze" in case or "selective" in case:
        assert float(jnp.abs(model.l1.bias[...]).max()) == 0.0  # biases start at 0 and stay
    with jax.numpy_dtype_promotion("standard"), pytest.raises(ValueError, match="pytree structure"):
        _nnx_train(lambda m: make(optax, m), lib=optax, steps=1)


def test_nnx_state_holds_no_variable_around_a_masked_node():
    # Flax before the fix of flax #4901 read every Variable of an optimizer state with
    # x[...], which fails on Param(MaskedNode()): Optax's states hold those, ours do not.
    params = nnx.state(_Mlp(nnx.Rngs(0)), nnx.Param)

    def wrapped_masked_nodes(lib: Any, state: Any) -> int:
        variables = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, nnx.Variable))
        return sum(
            isinstance(v, nnx.Variable) and isinstance(v.get_value(), lib.MaskedNode)
            for v in variables
        )

    for lib in (gc, optax):
        tx = lib.partition({"vec": lib.adam(0.1), "mat": lib.adam(0.1)}, _labels_from_state)
        with jax.numpy_dtype_promotion("standard"):
            state = tx.init(params)
        assert wrapped_masked_nodes(lib, state) == (0 if lib is gc else 8)


def test_the_functional_nnx_loop_updates_trees_of_params_and_keeps_them():
    graphdef, params = nnx.split(_Mlp(nnx.Rngs(0)), nnx.Param)
    tx = gc.partition({"vec": gc.sgd(0.05), "mat": gc.adam(0.05)}, _labels_from_state)
    state = tx.init(params)

    @jax.jit
    def step(params: Any, state: Any) -> tuple[Any, Any, jax.Array]:
        def loss_fn(p: Any) -> jax.Array:
            return jnp.mean((nnx.merge(graphdef, p)(_X) - _Y) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = tx.update(grads, state, params)  # trees of nnx.Param nodes
        assert jax.tree.structure(updates) == jax.tree.structure(params)
        return gc.apply_updates(params, updates), state, loss

    first = float(step(params, state)[2])
    for _ in range(40):
        params, state, loss = step(params, state)
    assert float(loss) < 0.5 * first


def test_nnx_optimizer_trains_a_model_with_partition_and_reports_group_hyperparameters():
    def make(model: nnx.Module) -> Any:
        labels = lambda p: jax.tree.map(lambda x: "vec" if x.ndim == 1 else "mat", p)  # noqa: E731
        return gc.partition({"vec": gc.sgd(0.05), "mat": gc.adamw(0.05, weight_decay=1e-3)}, labels)

    losses, opt, _ = _nnx_train(make, steps=60)
    assert losses[-1] < 0.1 * losses[0]
    hp = gc.get_hyperparams(opt.opt_state)
    assert float(hp["vec/learning_rate"][...]) == np.float32(0.05)
    assert float(hp["mat/weight_decay"][...]) == np.float32(1e-3)
