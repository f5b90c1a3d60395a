"""The registry of every public transformation, with the settings the suites run it in.

Every cross-cutting test (tests/test_conformance.py and others) runs over
``CASES``; ``test_registry_covers_every_public_transformation`` fails when a
public factory is added to ``gradchain`` without an entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

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


def _by_rank(params: gc.Params) -> gc.Params:
    """A label function for partition: vectors apart from every other leaf."""
    return jax.tree.map(lambda p: "vector" if len(p.shape) == 1 else "other", params)


def _param_groups() -> gc.GradientTransformationExtraArgs:
    """Rules that fit any tree (keys from 'abcd', indices) and use every kind of rule."""
    return gc.param_groups(
        gc.adamw,
        dict(learning_rate=_warmup_cosine, weight_decay=0.1),
        gc.Rule("**/a", "**/0", name="no_decay", overrides=dict(weight_decay=0.0)),
        gc.Rule("b/**", name="b", multipliers=dict(learning_rate=0.1)),
        gc.Rule("c/**", name="frozen", optimizer=gc.set_to_zero()),
        gc.Rule("**", name="rest"),
        first_match=True,
    )


def _stacked_matrices(params: gc.Params) -> gc.Params:
    """Muon's dimension numbers: the last two axes of every leaf of rank >= 2 form a matrix."""
    dims = gc.MuonDimensionNumbers(-2, -1)
    return jax.tree.map(lambda p: dims if len(p.shape) >= 2 else None, params)


def _count_nonfinite(updates: gc.Updates) -> Any:
    """A measure for monitor: how many entries are NaN or infinite."""
    return sum(jax.numpy.sum(~jax.numpy.isfinite(u)) for u in jax.tree.leaves(updates))


class LookaheadCarry(NamedTuple):
    """State of :func:`on_plain_params`: lookahead's state and the (fast, slow) parameters."""

    lookahead_state: Any
    params: gc.LookaheadParams


def on_plain_params(tx: gc.GradientTransformationExtraArgs) -> gc.GradientTransformationExtraArgs:
    """A lookahead as a transform of plain trees, so that the suites can run it.

    Lookahead takes LookaheadParams(fast, slow) and returns updates of both;
    this keeps the pair in its state, applies both halves, and returns the fast
    updates (in the gradients' dtype). A state that is not its own goes straight
    to lookahead, which reports it.
    """

    def init(params: gc.Params) -> LookaheadCarry:
        def concrete(p: Any) -> Any:
            abstract = isinstance(p, jax.ShapeDtypeStruct)
            # a copy: the state never holds the caller's buffers, so both can be donated
            return jax.numpy.zeros(p.shape, p.dtype) if abstract else jax.numpy.copy(p)

        pair = gc.LookaheadParams.init_synced(jax.tree.map(concrete, params))
        return LookaheadCarry(tx.init(pair), pair)

    def update(
        updates: gc.Updates, state: Any, params: gc.Params | None = None, **extra_args: Any
    ) -> tuple[gc.Updates, Any]:
        if not isinstance(state, LookaheadCarry):
            return tx.update(updates, state, gc.LookaheadParams(params, params), **extra_args)
        out, inner = tx.update(updates, state.lookahead_state, state.params, **extra_args)
        return out.fast, LookaheadCarry(inner, gc.apply_updates(state.params, out))

    return gc.GradientTransformationExtraArgs(init, update)


def half_squared_norm(params: gc.Params) -> jax.Array:
    """The objective that :func:`with_objective` supplies: half the squared norm, float32."""
    leaves = [jax.numpy.asarray(p, jax.numpy.float32) for p in jax.tree.leaves(params)]
    return 0.5 * sum((jax.numpy.sum(p * p) for p in leaves), jax.numpy.float32(0.0))


def with_objective(tx: Any) -> gc.GradientTransformationExtraArgs:
    """Makes a transform that needs the objective runnable by the suites.

    Such a transform takes ``value=``, ``grad=`` or ``value_fn=`` in its update;
    the suites call ``update(updates, state, params)`` only. This supplies, for the
    given parameters, ``value_fn`` = :func:`half_squared_norm`, its ``value`` and the
    incoming ``updates`` as ``grad``, and passes any other extra arguments on. With
    ``params=None`` it calls ``tx.update(updates, state)`` with nothing added, so
    that the transform itself says what it needs.
    """

    def update(
        updates: gc.Updates, state: Any, params: gc.Params | None = None, **extra_args: Any
    ) -> tuple[gc.Updates, Any]:
        if params is None:
            return tx.update(updates, state, None, **extra_args)
        objective = dict(value=half_squared_norm(params), grad=updates, value_fn=half_squared_norm)
        return tx.update(updates, state, params, **{**objective, **extra_args})

    return gc.GradientTransformationExtraArgs(tx.init, update)


def _half_squared_norm_grad(params: gc.Params, i: int) -> gc.Updates:
    """SAM's opaque-mode ``grad_fn(params, i)``: the gradient of :func:`half_squared_norm`."""
    del i
    return jax.grad(half_squared_norm)(params)


def with_fn(name: str, tx: Any) -> gc.GradientTransformationExtraArgs:
    """Supplies Optax's function-valued extra argument ``name`` (tests/test_sophia.py, test_sam.py).

    ``obj_fn`` (Sophia, Hutchinson's estimator) is :func:`half_squared_norm`;
    ``grad_fn`` (SAM's opaque mode) its gradient. With ``params=None`` nothing is
    added, so that the transform itself says what it needs.
    """
    fns = {"obj_fn": half_squared_norm, "grad_fn": _half_squared_norm_grad}

    def update(
        updates: gc.Updates, state: Any, params: gc.Params | None = None, **extra_args: Any
    ) -> tuple[gc.Updates, Any]:
        if params is None:
            return tx.update(updates, state, None, **extra_args)
        return tx.update(updates, state, params, **{name: fns[name], **extra_args})

    return gc.GradientTransformationExtraArgs(tx.init, update)


def with_previous_grads(tx: Any) -> gc.GradientTransformationExtraArgs:
    """Supplies exact MARS's ``grad_at_previous_params``: half the incoming updates."""

    def update(
        updates: gc.Updates, state: Any, params: gc.Params | None = None, **extra_args: Any
    ) -> tuple[gc.Updates, Any]:
        previous = jax.tree.map(lambda g: g / 2, updates)
        return tx.update(updates, state, params, grad_at_previous_params=previous, **extra_args)

    return gc.GradientTransformationExtraArgs(tx.init, update)


def on_example_batches(tx: Any) -> gc.GradientTransformationExtraArgs:
    """Makes a transform of per-example gradients (DP-SGD) runnable by the suites.

    Such a transform takes every leaf with a batch axis in front and returns it
    without; this hands it a batch of three examples made from each update
    (``g``, ``-g / 2``, ``2 g``), so that its updates have the update's shape.
    """
    inner = gc.with_extra_args_support(tx)

    def update(
        updates: gc.Updates, state: Any, params: gc.Params | None = None, **extra_args: Any
    ) -> tuple[gc.Updates, Any]:
        batch = jax.tree.map(lambda g: jax.numpy.stack([g, -0.5 * g, 2 * g]), updates)
        return inner.update(batch, state, params, **extra_args)

    return gc.GradientTransformationExtraArgs(tx.init, update)


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
    # _partition and _rules
    Case(
        "partition",
        lambda: gc.partition(
            {"vector": gc.adam(1e-3), "other": gc.sgd(0.1, momentum=0.9)}, _by_rank
        ),
    ),
    Case(
        "multi_transform",
        lambda: gc.multi_transform({"all": gc.adamw(1e-3), "none": gc.sgd(1.0)}, "all"),
    ),
    Case("freeze", lambda: gc.freeze(_not_first_leaf)),
    Case(
        "selective_transform",
        lambda: gc.selective_transform(gc.adam(1e-3), freeze_mask=_not_first_leaf),
    ),
    Case("param_groups", _param_groups),
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
    Case(
        "scale_by_adam",
        lambda: gc.scale_by_adam(
            mu_dtype="bfloat16", nu_dtype="bfloat16", moment_rounding="stochastic"
        ),
        "bf16_stochastic",
    ),
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
    # _clipping_more
    Case("clip_by_block_rms", lambda: gc.clip_by_block_rms(0.5)),
    Case("clip_by_block_rms", lambda: gc.clip_by_block_rms(_warmup_cosine), "schedule"),
    Case("adaptive_grad_clip", lambda: gc.adaptive_grad_clip(0.05)),
    Case("adaptive_grad_clip", lambda: gc.adaptive_grad_clip(_warmup_cosine, eps=0.0), "schedule"),
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
    # weight decay on the everyday optimizers (the house rule in gradchain/_optimizers.py)
    Case("sgd", lambda: gc.sgd(0.1, momentum=0.9, weight_decay=1e-2), "weight_decay"),
    Case("adam", lambda: gc.adam(1e-3, weight_decay=_warmup_cosine), "weight_decay"),
    Case("nadam", lambda: gc.nadam(1e-3, weight_decay=1e-2, mask=_not_first_leaf), "wd_mask"),
    Case("rmsprop", lambda: gc.rmsprop(1e-3, momentum=0.9, weight_decay=1e-2), "weight_decay"),
    Case("adagrad", lambda: gc.adagrad(1e-2, weight_decay=1e-2), "weight_decay"),
    # _adaptive, _adaptive_other, _sign_methods
    Case("scale_by_adamax", gc.scale_by_adamax),
    Case("scale_by_amsgrad", gc.scale_by_amsgrad),
    Case(
        "scale_by_amsgrad",
        lambda: gc.scale_by_amsgrad(mu_dtype="bfloat16", max_before_debias=True),
        "torch_mu_bf16",
    ),
    Case("scale_by_yogi", gc.scale_by_yogi),
    Case("scale_by_yogi", lambda: gc.scale_by_yogi(b2=_warmup_cosine, initial_mu=0.0), "paper"),
    Case("scale_by_belief", gc.scale_by_belief),
    Case("scale_by_belief", lambda: gc.scale_by_belief(nesterov=True), "nesterov"),
    Case("scale_by_radam", gc.scale_by_radam),
    Case("scale_by_radam", lambda: gc.scale_by_radam(b2=0.9, nesterov=True), "nesterov"),
    Case("scale_by_novograd", lambda: gc.scale_by_novograd(weight_decay=1e-2)),
    Case(
        "scale_by_novograd",
        lambda: gc.scale_by_novograd(weight_decay=1e-2, mu_dtype="bfloat16", mask=_not_first_leaf),
        "mask_mu_bf16",
    ),
    Case("scale_by_adadelta", gc.scale_by_adadelta),
    Case("scale_by_adan", gc.scale_by_adan),
    Case("scale_by_lion", gc.scale_by_lion),
    Case(
        "scale_by_lion",
        lambda: gc.scale_by_lion(mu_dtype="bfloat16", mode="smooth", smooth_beta=2.0),
        "smooth_mu_bf16",
    ),
    Case("scale_by_lion", lambda: gc.scale_by_lion(mode="refined"), "refined"),
    Case("scale_by_sign", gc.scale_by_sign),
    Case("scale_by_rprop", lambda: gc.scale_by_rprop(1e-2)),
    # _optimizers_adaptive
    Case("adamax", lambda: gc.adamax(1e-3)),
    Case("adamaxw", lambda: gc.adamaxw(_warmup_cosine, mask=_not_first_leaf)),
    Case("amsgrad", lambda: gc.amsgrad(1e-3)),
    Case("yogi", lambda: gc.yogi(1e-2, weight_decay=1e-3)),
    Case("adabelief", lambda: gc.adabelief(1e-3)),
    Case("radam", lambda: gc.radam(_warmup_cosine)),
    Case("novograd", lambda: gc.novograd(1e-2, weight_decay=1e-3)),
    Case("adadelta", gc.adadelta),
    Case("adan", lambda: gc.adan(1e-3, weight_decay=1e-2)),
    Case("lion", lambda: gc.lion(1e-4)),
    Case("sign_sgd", lambda: gc.sign_sgd(1e-3)),
    Case("rprop", lambda: gc.rprop(1e-3)),
    # _factored, _sm3, _optimizers_factored (min_dim_size_to_factor=2 factors the suites' matrices)
    Case("scale_by_factored_rms", lambda: gc.scale_by_factored_rms(min_dim_size_to_factor=2)),
    Case(
        "adafactor",
        lambda: gc.adafactor(1e-2, 2, momentum=0.9, weight_decay_rate=1e-3),
    ),
    Case("scale_by_sm3", gc.scale_by_sm3),
    Case("sm3", lambda: gc.sm3(1e-2)),
    # _trust, _elementwise, _optimizers_trust
    Case("scale_by_trust_ratio", lambda: gc.scale_by_trust_ratio(1e-6, 0.5, 1e-8)),
    Case("scale_by_param_block_norm", gc.scale_by_param_block_norm),
    Case("scale_by_param_block_rms", lambda: gc.scale_by_param_block_rms(_warmup_cosine)),
    Case("normalize_by_update_norm", lambda: gc.normalize_by_update_norm(-1.0)),
    Case("normalize", gc.normalize),
    Case("centralize", gc.centralize),
    Case("add_noise", lambda: gc.add_noise(0.01, 0.55, key=0)),
    Case("keep_params_nonnegative", gc.keep_params_nonnegative),
    Case("zero_nans", gc.zero_nans),
    Case("lamb", lambda: gc.lamb(1e-3, weight_decay=1e-2, mask=_not_first_leaf)),
    Case(
        "lars",
        lambda: gc.lars(
            0.1, 1e-4, _not_first_leaf, trust_ratio_mask=_not_first_leaf, nesterov=True
        ),
    ),
    Case("fromage", lambda: gc.fromage(_warmup_cosine)),
    Case("noisy_sgd", lambda: gc.noisy_sgd(1e-2, key=0)),
    Case("signum", lambda: gc.signum(1e-3, weight_decay=1e-3, mask=_not_first_leaf)),
    # _polyak, _optimistic, _dog, _optimizers_value (Polyak's takes value=: with_objective)
    Case("scale_by_polyak", lambda: with_objective(gc.scale_by_polyak())),
    Case(
        "polyak_sgd", lambda: with_objective(gc.polyak_sgd(scaling=_warmup_cosine, variant="sps+"))
    ),
    Case("scale_by_optimistic_gradient", gc.scale_by_optimistic_gradient),
    Case("optimistic_gradient_descent", lambda: gc.optimistic_gradient_descent(1e-2)),
    Case("optimistic_adam_v2", lambda: gc.optimistic_adam_v2(_warmup_cosine, weight_decay=1e-2)),
    Case("scale_by_distance_over_gradients", gc.scale_by_distance_over_gradients),
    Case("scale_by_dog", gc.scale_by_dog),
    Case("scale_by_dowg", gc.scale_by_dowg),
    Case("dog", gc.dog),
    Case("dowg", lambda: gc.dowg(weight_decay=1e-2, mask=_not_first_leaf)),
    # _muon, _galore (stacked leaves (L, m, n) are L matrices; vectors and scalars: momentum only)
    Case("scale_by_muon", lambda: gc.scale_by_muon(weight_dimension_numbers=_stacked_matrices)),
    Case("muon", lambda: gc.muon(_warmup_cosine, weight_decay=1e-2, consistent_rms=0.2)),
    # _soap (every rank >= 2 leaf rotated, a refresh every 2 steps so the QR branch runs)
    Case("scale_by_soap", lambda: gc.scale_by_soap(precondition_frequency=2)),
    Case(
        "scale_by_soap",
        lambda: gc.scale_by_soap(
            shampoo_beta=0.9, precondition_1d=True, weight_dimension_numbers=_stacked_matrices
        ),
        id="stacked",
    ),
    Case(
        "soap",
        lambda: gc.soap(
            _warmup_cosine, weight_decay_mask=_not_first_leaf, merge_dims=True, max_precond_dim=4
        ),
    ),
    # _kron (probability 0.5 so both branches of the coin run; a size-2 triangular limit mixes
    # triangular and diagonal factors; the scale from the first gradient)
    Case("scale_by_kron", lambda: gc.scale_by_kron(preconditioner_update_probability=0.5)),
    Case(
        "scale_by_kron",
        lambda: gc.scale_by_kron(
            max_size_triangular=2, memory_save_mode="one_diag", precond_init_scale=None
        ),
        id="one_diag",
    ),
    Case(
        "kron",
        lambda: gc.kron(_warmup_cosine, weight_decay=1e-2, weight_decay_mask=_not_first_leaf),
    ),
    Case("scale_by_galore", lambda: gc.scale_by_galore(rank=2, update_proj_gap=2)),
    Case("galore", lambda: gc.galore(1e-2, rank=2, update_proj_gap=2, weight_decay=1e-3)),
    # _shampoo (blocks of 2 so every leaf of rank >= 2 is cut; roots at steps 1 and 3, ...)
    Case(
        "scale_by_shampoo",
        lambda: gc.scale_by_shampoo(
            2, preconditioning_compute_steps=2, start_preconditioning_step=1, graft_type="rmsprop"
        ),
    ),
    Case(
        "shampoo",
        lambda: gc.shampoo(
            _warmup_cosine,
            weight_decay=1e-2,
            weight_decay_mask=_not_first_leaf,
            start_preconditioning_step=2,
            preconditioning_compute_steps=1,
            nesterov=True,
        ),
    ),
    # _routing, _scion: matrices (stacks by their last two axes) to Muon or Scion's spectral LMO
    Case(
        "matrix_partition",
        lambda: gc.matrix_partition(
            lambda dims: gc.chain(
                gc.scale_by_muon(weight_dimension_numbers=dims), gc.scale_by_learning_rate(0.02)
            ),
            gc.adamw(_warmup_cosine, weight_decay=1e-2),
            dimension_numbers=gc.MuonDimensionNumbers(-2, -1),
            exclude="a/**",
        ),
    ),
    Case("scale_by_scion", lambda: gc.scale_by_scion(weight_dimension_numbers=_stacked_matrices)),
    Case("scale_by_scion", lambda: gc.scale_by_scion(norms=[("**/b", "rms")]), "rules"),
    Case("scion", lambda: gc.scion(_warmup_cosine, radius=5.0, mu_dtype="bfloat16")),
    Case("scion", lambda: gc.scion(1e-2, beta=0.0, unconstrained=True), "unconstrained"),
    # _cautious, _mars, _adam_mini (tests/test_cautious_mars_adam_mini.py)
    Case("cautious", lambda: gc.cautious(gc.scale_by_adam())),
    Case(
        "cautious",
        lambda: gc.cautious(gc.sgd(0.1, momentum=0.9), 0.0, orientation="descent"),
        "descent",
    ),
    Case("cautious_adamw", lambda: gc.cautious_adamw(_warmup_cosine, mask=_not_first_leaf)),
    Case("cautious_lion", lambda: gc.cautious_lion(1e-4, mu_dtype="bfloat16")),
    Case("scale_by_mars", lambda: gc.scale_by_mars(gamma=_warmup_cosine)),
    Case("scale_by_mars", lambda: with_previous_grads(gc.scale_by_mars(approx=False)), "exact"),
    Case("mars", lambda: gc.mars(_warmup_cosine, weight_decay=1e-2, mask=_not_first_leaf)),
    Case("mars", lambda: gc.mars(1e-3, optimize_1d=True), "optimize_1d"),
    Case("scale_by_adam_mini", gc.scale_by_adam_mini),
    Case(
        "scale_by_adam_mini",
        lambda: gc.scale_by_adam_mini(blocks=[("a/**", "coordinate"), ("b/**", "tensor")]),
        "rules",
    ),
    Case(
        "adam_mini", lambda: gc.adam_mini(_warmup_cosine, weight_decay=1e-2, mask=_not_first_leaf)
    ),
    # _guards and _accumulate
    Case("apply_if_finite", lambda: gc.apply_if_finite(gc.adam(1e-3), 2)),
    Case("skip_spikes", lambda: gc.skip_spikes(gc.adam(1e-3), warmup=2, threshold=1.0)),
    Case(
        "skip_spikes",
        lambda: gc.skip_spikes(
            gc.sgd(0.1, momentum=0.9), warmup=0, threshold=0.5, mode="clip", decay=0.5
        ),
        "clip",
    ),
    Case("apply_every", lambda: gc.apply_every(2)),
    Case("multi_steps", lambda: gc.multi_steps(gc.adam(1e-3), 2)),
    Case(
        "MultiSteps",
        lambda: gc.MultiSteps(
            gc.sgd(_warmup_cosine, momentum=0.9),
            lambda step: 2 + step % 2,
            use_grad_mean=False,
            should_skip_update_fn=gc.skip_not_finite,
            accumulator_dtype=None,
        ).gradient_transformation(),
    ),
    # _averaging, _conditional, _flatten, _monitoring, _inject_stateful
    Case("lookahead", lambda: on_plain_params(gc.lookahead(gc.adam(1e-2), 2, 0.5))),
    Case(
        "lookahead",
        lambda: on_plain_params(gc.lookahead(gc.sgd(0.1, momentum=0.9), 3, 0.8, reset_state=True)),
        "reset",
    ),
    Case("ema_params", lambda: gc.ema_params(0.9)),
    Case(
        "ema_params",
        lambda: gc.ema_params(
            gc.linear_schedule(0.5, 0.99, 10), debias=False, accumulator_dtype="float32"
        ),
        "schedule_f32",
    ),
    Case(
        "conditionally_transform",
        lambda: gc.conditionally_transform(gc.scale_by_adam(), lambda step: step % 2 == 0),
    ),
    Case(
        "conditionally_mask",
        lambda: gc.conditionally_mask(gc.sgd(0.1, momentum=0.9), lambda step: step % 2 == 1),
    ),
    Case("maximize", gc.maximize),
    Case("flatten", lambda: gc.flatten(gc.adam(1e-3))),
    Case("snapshot", lambda: gc.snapshot("norm", gc.global_norm)),
    Case(
        "monitor",
        lambda: gc.monitor({"norm": gc.global_norm, "nonfinite": _count_nonfinite}),
    ),
    Case("measure_with_ema", lambda: gc.monitor({"m": gc.measure_with_ema(gc.global_norm, 0.9)})),
    Case("telemetry", lambda: gc.telemetry(gc.chain(gc.clip_by_global_norm(1.0), gc.adam(1e-3)))),
    Case(
        "inject_stateful_hyperparams",
        lambda: gc.inject_stateful_hyperparams(gc.adam)(
            learning_rate=gc.WrappedSchedule(_warmup_cosine), b1=0.8
        ),
    ),
    # _linesearch, _zoom, _lbfgs: the suites call update without the objective; with_objective
    # supplies it (half the squared norm of the params)
    Case(
        "scale_by_backtracking_linesearch",
        lambda: with_objective(gc.scale_by_backtracking_linesearch(4, store_grad=True)),
    ),
    Case("scale_by_zoom_linesearch", lambda: with_objective(gc.scale_by_zoom_linesearch(4))),
    Case("scale_by_lbfgs", lambda: gc.scale_by_lbfgs(memory_size=3)),
    Case("lbfgs", lambda: with_objective(gc.lbfgs(memory_size=3))),
    # _ademamix, _contrib_moments
    Case("scale_by_ademamix", lambda: gc.scale_by_ademamix(alpha=_warmup_cosine)),
    Case("ademamix", lambda: gc.ademamix(1e-3, mu_dtype="bfloat16", mask=_not_first_leaf)),
    Case("scale_by_simplified_ademamix", gc.scale_by_simplified_ademamix),
    Case("simplified_ademamix", lambda: gc.simplified_ademamix(_warmup_cosine, alpha=1.0)),
    Case("scale_by_adopt", lambda: gc.scale_by_adopt(nesterov=True)),
    Case("adopt", lambda: gc.adopt(1e-3, weight_decay=1e-2)),
    Case("scale_by_acprop", gc.scale_by_acprop),
    Case("acprop", lambda: gc.acprop(1e-3, weight_decay=1e-2)),
    Case("scale_by_madgrad", lambda: gc.scale_by_madgrad(_warmup_cosine)),
    Case("madgrad", lambda: gc.madgrad(1e-2, weight_decay=1e-3)),
    Case("reduce_on_plateau", lambda: with_objective(gc.reduce_on_plateau(0.5, patience=1))),
    Case("split_real_and_imaginary", lambda: gc.split_real_and_imaginary(gc.adam(1e-3))),
    Case(
        "differentially_private_aggregate",
        lambda: on_example_batches(
            gc.differentially_private_aggregate(1.0, 0.5, key=jax.random.key(0))
        ),
    ),
    Case("dpsgd", lambda: on_example_batches(gc.dpsgd(0.1, 1.0, 0.5, seed=1, momentum=0.9))),
    # _lr_free, _cocob, _mechanic, _momo
    Case("prodigy", lambda: gc.prodigy(_warmup_cosine, weight_decay=1e-2, mask=_not_first_leaf)),
    Case("dadapt_adamw", lambda: gc.dadapt_adamw(weight_decay=1e-2)),
    Case("scale_by_cocob", gc.scale_by_cocob),
    Case("cocob", lambda: gc.cocob(_warmup_cosine, weight_decay=1e-2, mask=_not_first_leaf)),
    Case("mechanize", lambda: gc.mechanize(gc.adam(1.0), num_betas=3)),
    Case("momo", lambda: with_objective(gc.momo(_warmup_cosine, 0.9, 0.0, 1e-2, True))),
    Case(
        "momo_adam", lambda: with_objective(gc.momo_adam(weight_decay=1e-2, mask=_not_first_leaf))
    ),
    # _sophia, _sam, _schedule_free
    Case(
        "hutchinson_estimator_diag_hessian",
        lambda: with_fn("obj_fn", gc.hutchinson_estimator_diag_hessian(jax.random.key(1))),
    ),
    Case("sophia", lambda: with_fn("obj_fn", gc.sophia(_warmup_cosine, update_interval=2))),
    Case("sam", lambda: gc.sam(gc.adam(1e-3), gc.sgd(0.05, momentum=0.9), sync_period=3)),
    Case(
        "sam",
        lambda: with_fn(
            "grad_fn", gc.sam(gc.sgd(0.1), gc.sgd(0.05), reset_state=False, opaque_mode=True)
        ),
        "opaque",
    ),
    Case(
        "schedule_free", lambda: gc.schedule_free(gc.adam(_warmup_cosine, b1=0.0), _warmup_cosine)
    ),
    Case("schedule_free_sgd", lambda: gc.schedule_free_sgd(0.1, warmup_steps=2, weight_decay=1e-2)),
    Case("schedule_free_adamw", lambda: gc.schedule_free_adamw(1e-2, state_dtype="float32")),
    # _quantize (tests/test_memory.py): tiny blocks and sizes so the suites' small trees quantize
    Case("quantize_state", lambda: gc.quantize_state(gc.adam(1e-3), block_size=4, min_size=1)),
    Case(
        "quantize_state",
        lambda: gc.quantize_state(
            gc.chain(gc.clip_by_global_norm(1.0), gc.sgd(_warmup_cosine, momentum=0.9)),
            block_size=3,
            min_size=2,
            rounding="nearest",
        ),
        "nearest",
    ),
)

NAMES = frozenset(case.name for case in CASES)

# Public functions that are not transformation factories.
HELPERS = frozenset(
    {
        "apply_updates",
        "apply_updates_stochastic",  # gradchain/_rounding.py (tests/test_memory.py)
        "eval_params",
        "explain",
        "find_learning_rate",  # gradchain/_lr_finder.py (a training tool; tests/test_sweeps.py)
        "flatten_params",  # gradchain/_flat_params.py (tests/test_flat_params.py)
        "get_hyperparams",
        "get_telemetry",
        "global_norm",
        "matrix_inverse_pth_root",  # gradchain/_linalg.py (tests/test_muon.py)
        "matrix_routing",  # gradchain/_routing.py (tests/test_routing.py)
        "microbatch",  # gradchain/_microbatch.py (a function transformation, not a transform)
        "adam_mini_blocks",  # gradchain/_adam_mini.py (tests/test_cautious_mars_adam_mini.py)
        "muon_routing",  # gradchain/_muon.py
        "power_iteration",  # gradchain/_linalg.py (tests/test_muon.py)
        "schedule_free_eval_params",  # gradchain/_schedule_free.py
        "bias_correction",  # gradchain/_utilities.py
        "incremental_update",  # gradchain/_utilities.py
        "init_empty_state",  # gradchain/_utilities.py
        "periodic_update",  # gradchain/_utilities.py
        "safe_increment",  # gradchain/_utilities.py
        "safe_int32_increment",  # gradchain/_utilities.py
        "safe_norm",  # gradchain/_utilities.py
        "register_state_sharding_rule",  # gradchain/_sharding.py (tests/test_sharding.py)
        "restore_state",  # gradchain/_restore.py (tests/test_restore.py)
        "state_shardings",  # gradchain/_sharding.py (tests/test_sharding.py)
        "sweep",  # gradchain/_sweeps.py (a training tool; tests/test_sweeps.py)
        "zero1_shardings",  # gradchain/_zero.py (tests/test_sharding.py)
        "safe_root_mean_squares",  # gradchain/_utilities.py
        "tree_map_params",  # gradchain/_utilities.py
        "update_infinity_moment",  # gradchain/_utilities.py
        "update_moment",  # gradchain/_utilities.py
        "update_moment_per_elem_norm",  # gradchain/_utilities.py
        "per_example_global_norm_clip",
        "per_example_layer_norm_clip",
        "scale_gradient",
        "set_hyperparams",
        "state_bytes_per_param",  # gradchain/_quantize.py (tests/test_memory.py)
        "skip_large_updates",
        "skip_not_finite",
        "value_and_grad_from_state",
    }
)
SCHEDULES = frozenset(
    {
        "constant_schedule",
        "cosine_decay_schedule",
        "cosine_onecycle_schedule",
        "cyclic_schedule",
        "exponential_decay",
        "inverse_sqrt_decay_schedule",
        "inverse_time_decay_schedule",
        "join_schedules",
        "linear_onecycle_schedule",
        "linear_schedule",
        "piecewise_constant_schedule",
        "piecewise_interpolate_schedule",
        "polynomial_schedule",
        "sgdr_schedule",
        "warmup_constant_schedule",
        "warmup_cosine_decay_schedule",
        "warmup_exponential_decay_schedule",
        "warmup_stable_decay_schedule",
    }
)
