"""Matrix-aware routing: ``matrix_partition`` and ``matrix_routing``.

1. The routing rules: the 2-D default, one MuonDimensionNumbers for stacked layers, trees,
   functions, path rules, ``exclude`` patterns; ``matrix_routing`` shows the same as
   ``explain``, and ``muon_routing`` is unchanged.
2. Composition: each matrix optimizer in ``MATRIX_OPTIMIZERS`` (Muon, Scion, SOAP,
   Shampoo: one entry each) gives, inside the partition, exactly what it gives alone on the
   matrices, and the fallback exactly what it gives alone on the rest.
3. A visible partition: group-prefixed hyperparameters that ``set_hyperparams`` sets, a
   checkpoint with both groups by name, a least-squares matrix problem in ``lax.scan``.
4. Errors at construction and at init, naming the argument or the path.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradchain as gc

STACK = gc.MuonDimensionNumbers(-2, -1)

# name -> a function from the routing's dimension numbers to the matrix group's transformation
MATRIX_OPTIMIZERS: dict[str, Callable[[Any], gc.GradientTransformation]] = {
    "scale_by_muon": lambda dims: gc.scale_by_muon(weight_dimension_numbers=dims),
    "scale_by_scion": lambda dims: gc.scale_by_scion(weight_dimension_numbers=dims),
    "scale_by_soap": lambda dims: gc.scale_by_soap(
        precondition_frequency=2, weight_dimension_numbers=dims
    ),
    # Shampoo takes no dimension numbers: a stacked (L, in, out) leaf is one 3-tensor to it.
    "scale_by_shampoo": lambda dims: gc.scale_by_shampoo(
        start_preconditioning_step=2, preconditioning_compute_steps=1
    ),
}


def _params() -> dict[str, Any]:
    rng = np.random.default_rng(0)

    def normal(*shape: int) -> jax.Array:
        return jnp.asarray(rng.normal(size=shape), jnp.float32)

    return {
        "embed": {"embedding": normal(12, 4)},
        "layers": {"kernel": normal(3, 4, 6), "bias": normal(3, 6), "scale": normal(3, 4)},
        "head": {"kernel": normal(4, 5), "bias": normal(5)},
    }


# --- 1. Rules ---------------------------------------------------------------------------------


def test_by_default_2d_leaves_are_matrices_and_the_rest_goes_to_the_fallback() -> None:
    tx = gc.matrix_partition(gc.scale_by_muon(), gc.adamw(1e-3))
    assert gc.explain(tx, _params()).assignment == {
        "embed/embedding": "matrix",
        "head/bias": "fallback",
        "head/kernel": "matrix",
        "layers/bias": "matrix",
        "layers/kernel": "fallback",  # 3-D: not a matrix unless the rule says which axes
        "layers/scale": "matrix",
    }


def test_one_dimension_numbers_makes_stacks_matrices_and_exclude_sends_embeddings_away() -> None:
    params = _params()
    routing = gc.matrix_routing(params, STACK, exclude=("embed/**", re.compile(r"head/.*")))
    assert routing.assignment == {
        "embed/embedding": "fallback",
        "head/bias": "fallback",
        "head/kernel": "fallback",
        "layers/bias": "matrix",  # rank 2 under (-2, -1): 1 matrix of (3, 6)
        "layers/kernel": "matrix",
        "layers/scale": "matrix",
    }
    kernel = next(r for r in routing if r.path == "layers/kernel")
    assert kernel.view is not None
    assert (kernel.view.batch, kernel.view.fan_in, kernel.view.fan_out) == (3, 4, 6)
    tx = gc.matrix_partition(
        gc.scale_by_muon(weight_dimension_numbers=STACK),
        gc.adamw(1e-3),
        dimension_numbers=STACK,
        exclude=("embed/**", re.compile(r"head/.*")),
    )
    assert gc.explain(tx, params).assignment == routing.assignment


def test_path_rules_a_tree_and_a_function_give_the_same_routing() -> None:
    params = _params()
    rules = [("layers/kernel", STACK), ("**/bias", None), ("layers/scale", None)]
    tree = {
        "embed": gc.MuonDimensionNumbers(),
        "layers": {"kernel": STACK, "bias": None, "scale": None},
        "head": {"kernel": gc.MuonDimensionNumbers(), "bias": None},
    }
    want = {
        "embed/embedding": "matrix",
        "head/bias": "fallback",
        "head/kernel": "matrix",
        "layers/bias": "fallback",
        "layers/kernel": "matrix",
        "layers/scale": "fallback",
    }
    for spec in (rules, tree, lambda p: tree):
        assert gc.matrix_routing(params, spec).assignment == want


def test_the_routing_prints_as_a_table_with_each_matrix_view() -> None:
    text = str(gc.matrix_routing(_params(), STACK, exclude="embed/**"))
    lines = text.splitlines()
    assert lines[0].split() == [
        "parameter",
        "shape",
        "group",
        "matrices",
        "(batch",
        "x",
        "in",
        "x",
        "out)",
    ]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert rows["layers/kernel"] == ["(3,", "4,", "6)", "matrix", "3", "x", "4", "x", "6"]
    assert rows["embed/embedding"] == ["(12,", "4)", "fallback"]


def test_muon_routing_keeps_its_rows_and_agrees_with_matrix_routing() -> None:
    params = _params()
    rows = gc.muon_routing(params)
    assert [(r.path, r.group, r.scale) for r in rows] == [
        ("embed/embedding", "muon", 1.0),
        ("head/bias", "adam", None),
        ("head/kernel", "muon", 1.118),
        ("layers/bias", "muon", 1.414),
        ("layers/kernel", "adam", None),
        ("layers/scale", "muon", 1.155),
    ]
    general = gc.matrix_routing(params, matrix_label="muon", fallback_label="adam")
    assert [(r.path, r.group, r.view) for r in rows] == [(r.path, r.group, r.view) for r in general]
    assert gc.explain(gc.muon(0.1), params).assignment == general.assignment


# --- 2. Composition ---------------------------------------------------------------------------


def _split(tree: dict[str, Any], paths: set[str]) -> dict[str, Any]:
    """The leaves of a two-level dict whose "a/b" path is in ``paths``."""
    return {
        a: {b: x for b, x in sub.items() if f"{a}/{b}" in paths}
        for a, sub in tree.items()
        if any(f"{a}/{b}" in paths for b in sub)
    }


@pytest.mark.parametrize("name", sorted(MATRIX_OPTIMIZERS))
def test_inside_the_partition_each_group_gets_exactly_what_it_gets_alone(name: str) -> None:
    factory = MATRIX_OPTIMIZERS[name]
    params = _params()
    exclude = ("embed/**", "head/kernel")
    rules = [("layers/kernel", STACK), ("layers/*", None)]
    tx = gc.matrix_partition(factory, gc.adamw(1e-2), dimension_numbers=rules, exclude=exclude)
    assignment = gc.matrix_routing(params, rules, exclude=exclude).assignment
    matrices = {p for p, g in assignment.items() if g == "matrix"}
    assert matrices == {"layers/kernel"}
    rest = set(assignment) - matrices
    alone_m, alone_f = factory(STACK), gc.adamw(1e-2)
    grads = [jax.tree.map(lambda x, i=i: jnp.sin(x + i), params) for i in range(3)]

    def run(tx: Any, p: Any, gs: list[Any]) -> list[Any]:
        s, out = tx.init(p), []
        for g in gs:
            u, s = tx.update(g, s, p)
            out.append(u)
        return out

    got = jax.jit(lambda: run(tx, params, grads))()
    want_m = jax.jit(
        lambda: run(alone_m, _split(params, matrices), [_split(g, matrices) for g in grads])
    )()
    want_f = jax.jit(lambda: run(alone_f, _split(params, rest), [_split(g, rest) for g in grads]))()
    for u, um, uf in zip(got, want_m, want_f, strict=True):
        jax.tree.map(np.testing.assert_array_equal, _split(u, matrices), um)
        jax.tree.map(np.testing.assert_array_equal, _split(u, rest), uf)


# --- 3. A visible partition -------------------------------------------------------------------


def _muon_and_adamw(**kw: Any) -> gc.GradientTransformationExtraArgs:
    return gc.matrix_partition(
        lambda dims: gc.chain(
            gc.scale_by_muon(weight_dimension_numbers=dims), gc.scale_by_learning_rate(0.05)
        ),
        gc.adamw(0.01),
        **kw,
    )


def test_hyperparameters_carry_group_prefixes_and_can_be_set() -> None:
    params = _params()
    tx = _muon_and_adamw(dimension_numbers=STACK, matrix_label="muon", fallback_label="adam")
    state = tx.init(params)
    hps = gc.get_hyperparams(state)
    assert {"muon/beta", "muon/learning_rate", "adam/learning_rate", "adam/b2"} <= set(hps)
    state = gc.set_hyperparams(state, {"adam/learning_rate": 0.0})
    u, _ = jax.jit(tx.update)(params, state, params)
    assert all(float(jnp.max(jnp.abs(x))) == 0.0 for x in jax.tree.leaves(u["head"]["bias"]))
    assert float(jnp.max(jnp.abs(u["layers"]["kernel"]))) > 0.0


def test_a_checkpoint_holds_both_groups_by_name_and_restores() -> None:
    params = _params()
    tx = _muon_and_adamw(dimension_numbers=STACK)
    state = jax.jit(tx.update)(params, tx.init(params), params)[1]
    saved = flax.serialization.to_state_dict(state)
    assert sorted(saved["inner_states"]) == ["fallback", "matrix"]
    restored = flax.serialization.from_state_dict(tx.init(params), saved)
    jax.tree.map(np.testing.assert_array_equal, restored, state)


def test_muon_and_adamw_solve_a_least_squares_matrix_problem_in_scan() -> None:
    rng = np.random.default_rng(4)
    a = jnp.asarray(rng.normal(size=(64, 8)).astype(np.float32))
    y = a @ jnp.asarray(rng.normal(size=(8, 5)).astype(np.float32))

    def loss(p: Any) -> jax.Array:
        return jnp.mean((a @ p["w"] + p["b"][None, :] - y) ** 2)

    tx = gc.matrix_partition(
        lambda dims: gc.chain(
            gc.scale_by_muon(weight_dimension_numbers=dims),
            gc.scale_by_learning_rate(gc.cosine_decay_schedule(0.1, 300)),
        ),
        gc.adam(0.01),
    )

    def step(carry: Any, _: Any) -> Any:
        p, s = carry
        u, s = tx.update(jax.grad(loss)(p), s, p)
        return (gc.apply_updates(p, u), s), None

    p0 = {"w": jnp.zeros((8, 5)), "b": jnp.zeros(5)}
    (p, _), _ = jax.jit(lambda: jax.lax.scan(step, (p0, tx.init(p0)), None, length=300))()
    assert float(loss(p)) < 1e-3 * float(loss(p0))


# --- 4. Errors --------------------------------------------------------------------------------


def test_bad_arguments_are_refused_at_construction() -> None:
    with pytest.raises(ValueError, match=r"^matrix_partition: `matrix_label` must be a non-empty"):
        gc.matrix_partition(gc.identity(), gc.identity(), matrix_label="a/b")
    with pytest.raises(ValueError, match=r"need different labels; both are 'x'"):
        gc.matrix_partition(gc.identity(), gc.identity(), matrix_label="x", fallback_label="x")
    with pytest.raises(
        TypeError, match=r"^matrix_partition: `fallback_tx` is the function `adamw`"
    ):
        gc.matrix_partition(gc.identity(), gc.adamw)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"what `matrix_tx` returned is a int"):
        gc.matrix_partition(lambda dims: 3, gc.identity())  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match=r"rule 0 of `dimension_numbers` \('a'\) must give a Muon"):
        gc.matrix_partition(gc.identity(), gc.identity(), dimension_numbers=[("a", (0, 1))])
    with pytest.raises(ValueError, match=r"in `exclude`: the glob 'a//b' has an empty segment"):
        gc.matrix_partition(gc.identity(), gc.identity(), exclude="a//b")


def test_dimension_numbers_that_do_not_fit_fail_at_init_naming_the_path() -> None:
    tx = gc.matrix_partition(
        gc.identity(), gc.identity(), dimension_numbers=[("w", gc.MuonDimensionNumbers(0, 2))]
    )
    with pytest.raises(ValueError, match=r"^matrix_partition: the MuonDimensionNumbers at w name"):
        tx.init({"w": jnp.ones((3, 2)), "b": jnp.ones(2)})
    with pytest.raises(ValueError, match=r"`dimension_numbers` does not match the parameters"):
        gc.matrix_routing({"w": jnp.ones((3, 2))}, {"v": None})
