"""The registry of every public transformation, with the settings the suites run it in.

Every cross-cutting test (tests/test_conformance.py and others) runs over
``CASES``; ``test_registry_covers_every_public_transformation`` fails when a
public factory is added to ``gradchain`` without an entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax

import gradchain as gc


@dataclass(frozen=True)
class Case:
    """One way of building a public transformation."""

    name: str  # the public factory it exercises
    build: Callable[[], gc.GradientTransformation | gc.GradientTransformationExtraArgs]
    id: str = ""

    @property
    def key(self) -> str:
        return f"{self.name}[{self.id}]" if self.id else self.name


def _double(updates: gc.Updates, params: gc.Params | None) -> gc.Updates:
    del params
    return jax.tree.map(lambda u: 2 * u, updates)


def _not_first_leaf(params: gc.Params) -> gc.Params:
    """A mask function: every leaf but the first."""
    leaves, treedef = jax.tree.flatten(params)
    return treedef.unflatten([i > 0 for i in range(len(leaves))])


_warmup_cosine = gc.warmup_cosine_decay_schedule(0.0, 1e-2, 3, 10)

CASES: tuple[Case, ...] = (
    # _base
    Case("identity", gc.identity),
    Case("set_to_zero", gc.set_to_zero),
    Case("stateless", lambda: gc.stateless(_double)),
    Case("stateless_with_tree_map", lambda: gc.stateless_with_tree_map(lambda u, p: u * 2)),
    Case("with_extra_args_support", lambda: gc.with_extra_args_support(gc.scale(0.5))),
    # _combine and _wrappers
    Case(
        "chain", lambda: gc.chain(gc.clip_by_global_norm(1.0), gc.scale_by_adam(), gc.scale(-0.1))
    ),
    Case("named_chain", lambda: gc.named_chain(("clip", gc.clip(1.0)), ("sgd", gc.sgd(0.1)))),
    Case("masked", lambda: gc.masked(gc.scale_by_adam(), _not_first_leaf)),
    Case(
        "inject_hyperparams", lambda: gc.inject_hyperparams(gc.adam)(learning_rate=_warmup_cosine)
    ),
    # _scaling
    Case("scale", lambda: gc.scale(-0.5)),
    Case("scale_by_learning_rate", lambda: gc.scale_by_learning_rate(0.1)),
    Case("scale_by_learning_rate", lambda: gc.scale_by_learning_rate(_warmup_cosine), "schedule"),
    Case("scale_by_schedule", lambda: gc.scale_by_schedule(_warmup_cosine)),
    # _moments
    Case("trace", lambda: gc.trace(0.9)),
    Case("trace", lambda: gc.trace(0.9, nesterov=True), "nesterov"),
    Case("ema", lambda: gc.ema(0.9)),
    Case("scale_by_adam", gc.scale_by_adam),
    Case("scale_by_adam", lambda: gc.scale_by_adam(nesterov=True, eps_root=1e-8), "nesterov"),
    Case("scale_by_adam", lambda: gc.scale_by_adam(mu_dtype="bfloat16"), "mu_bf16"),
    Case("scale_by_rms", gc.scale_by_rms),
    Case("scale_by_rms", lambda: gc.scale_by_rms(bias_correction=True, eps_in_sqrt=False), "bc"),
    Case("scale_by_stddev", lambda: gc.scale_by_stddev(initial_scale=1.0)),
    Case("scale_by_rss", gc.scale_by_rss),
    # _regularizing
    Case("add_decayed_weights", lambda: gc.add_decayed_weights(1e-2)),
    Case("add_decayed_weights", lambda: gc.add_decayed_weights(1e-2, _not_first_leaf), "mask"),
    Case("add_l1_penalty", lambda: gc.add_l1_penalty(1e-3)),
    # _clipping
    Case("clip", lambda: gc.clip(0.5)),
    Case("clip_by_global_norm", lambda: gc.clip_by_global_norm(1.0)),
    # _optimizers
    Case("sgd", lambda: gc.sgd(0.1)),
    Case("sgd", lambda: gc.sgd(_warmup_cosine, momentum=0.9, nesterov=True), "nesterov"),
    Case("adam", lambda: gc.adam(1e-3)),
    Case("adamw", lambda: gc.adamw(_warmup_cosine, weight_decay=1e-2)),
    Case("nadam", lambda: gc.nadam(1e-3)),
    Case("nadamw", lambda: gc.nadamw(1e-3)),
    Case("rmsprop", lambda: gc.rmsprop(1e-3)),
    Case("rmsprop", lambda: gc.rmsprop(1e-3, centered=True, momentum=0.9), "centered"),
    Case("adagrad", lambda: gc.adagrad(1e-2)),
)

NAMES = frozenset(case.name for case in CASES)

# Public functions that are not transformation factories.
HELPERS = frozenset({"apply_updates", "get_hyperparams", "global_norm", "set_hyperparams"})
SCHEDULES = frozenset(
    {
        "constant_schedule",
        "cosine_decay_schedule",
        "exponential_decay",
        "inverse_sqrt_decay_schedule",
        "inverse_time_decay_schedule",
        "join_schedules",
        "linear_schedule",
        "piecewise_constant_schedule",
        "polynomial_schedule",
        "warmup_constant_schedule",
        "warmup_cosine_decay_schedule",
    }
)
