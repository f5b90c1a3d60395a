r"""Shampoo: blocked Kronecker-factored preconditioning, grafted onto a diagonal method.

The statistics and inverse roots live in the block layout of
:mod:`gradchain._shampoo_blocks` (blocks of one shape stacked across the whole
tree), so a 1000-leaf model compiles a few batched Newton loops, not a thousand.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax.core import Tracer

from gradchain import _check, _tree
from gradchain import _shampoo_blocks as blocks
from gradchain._base import GradientTransformation, Params, ScalarOrSchedule, Updates
from gradchain._combine import chain
from gradchain._flat_params import refuse_flat_params
from gradchain._hyperparams import Hyperparams, HyperparamSpec, values
from gradchain._regularizing import add_decayed_weights
from gradchain._scaling import scale_by_learning_rate
from gradchain._wrappers import MaskOrFn

GraftType = Literal["adam", "rmsprop", "adagrad", "sgd", "none"]
GRAFT_TYPES: tuple[str, ...] = ("adam", "rmsprop", "adagrad", "sgd", "none")
_ROOT_MAX_ERROR = 0.1  # a Newton iteration that ends with max|M - I| above this has failed


class ScaleByShampooState(NamedTuple):
    """State of :func:`scale_by_shampoo`."""

    step: jax.Array  # int32[], updates seen so far
    mu: blocks.Stacks  # group -> the first moment there (blocks stacked, or flat), in mu_dtype
    nu: blocks.Stacks | None  # group -> the grafting second moment; None for "sgd" and "none"
    stats: blocks.Factors  # block group -> per axis, the stacked (count, n, n) statistics
    roots: blocks.Factors  # block group -> per axis, the stacked inverse p-th roots
    hparams: Hyperparams  # beta1, beta2, graft_beta2 (with complements), graft_eps, matrix_eps
    layout: Any  # like the params, each leaf a ShapeRecord of its shape, for the tree checks


def _is_preconditioned(fn: str, leaf: Any, path: str) -> bool:
    if jnp.issubdtype(leaf.dtype, jnp.complexfloating):
        raise TypeError(
            f"{fn}: the parameter at {path} is {leaf.dtype}; Shampoo works on real "
            f"parameters only. Wrap the optimizer in gc.split_real_and_imaginary, or route "
            f"complex parameters to another optimizer with gc.partition."
        )
    shape = tuple(jnp.shape(leaf))
    return len(blocks.squeeze_shape(shape)) >= 2 and 0 not in shape


def _check_tree(fn: str, updates: Updates, layout: Any) -> None:
    """Structure and shapes of the updates against the parameters the state was built for."""
    shapes = _tree.recorded_shapes(layout)
    _tree.check_same_structure(fn, "updates", updates, "state.layout", shapes)
    flat = jax.tree_util.tree_flatten_with_path(updates)[0]
    for (path, u), want in zip(flat, jax.tree.leaves(shapes), strict=True):
        if tuple(jnp.shape(u)) != tuple(want.shape):
            raise ValueError(
                f"{fn}: `updates` and the parameters of `state` disagree in shape at "
                f"{_tree.keystr(path)}: {tuple(jnp.shape(u))} against {tuple(want.shape)}. "
                f"gradchain never broadcasts one against the other; give both the parameter's "
                f"shape."
            )


def _plan(fn: str, tree: Any, block_size: int, exponent_override: int | None) -> blocks.Plan:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    chosen = [_is_preconditioned(fn, leaf, _tree.keystr(path)) for path, leaf in flat]
    return blocks.make_plan([leaf for _, leaf in flat], block_size, exponent_override, chosen)


def _zero_factors(plan: blocks.Plan) -> blocks.Factors:
    return {
        k: tuple(jnp.zeros((g.count, n, n), g.compute) for n in g.block)
        for k, g in plan.block_groups.items()
    }


def _eye_factors(plan: blocks.Plan) -> blocks.Factors:
    return {
        k: tuple(jnp.broadcast_to(jnp.eye(n, dtype=g.compute), (g.count, n, n)) for n in g.block)
        for k, g in plan.block_groups.items()
    }


def _zero_stacks(plan: blocks.Plan, dtype: Any | None) -> blocks.Stacks:
    return {
        k: jnp.zeros(g.shape, _tree.state_dtype(g.dtype, dtype)) for k, g in plan.groups.items()
    }


def scale_by_shampoo(
    block_size: int = 128,
    beta1: ScalarOrSchedule = 0.9,
    beta2: ScalarOrSchedule = 0.999,
    matrix_eps: ScalarOrSchedule = 1e-6,
    graft_type: GraftType = "adam",
    graft_beta2: ScalarOrSchedule = 0.999,
    graft_eps: ScalarOrSchedule = 1e-8,
    *,
    preconditioning_compute_steps: int = 10,
    start_preconditioning_step: int = 10,
    exponent_override: int | None = None,
    nesterov: bool = False,
    mu_dtype: Any | None = None,
) -> GradientTransformation:
    r"""Shampoo's blocked Kronecker preconditioner, grafted onto a diagonal method's step size.

    For each block :math:`G` of a gradient (an (m, n) matrix for a matrix
    parameter), with the first moment :math:`\hat m_t` as in Adam (debiased
    EMA of the gradients with ``beta1``; NAdam's look-ahead when ``nesterov``):

    .. math::
      L_t = \beta_2 L_{t-1} + w\, G_t G_t^T, \quad R_t = \beta_2 R_{t-1} + w\, G_t^T G_t
      \quad (w = 1 - \beta_2, \text{ or } 1 \text{ when } \beta_2 = 1), \\
      P_t = \tilde L^{-1/4} \hat M_t \tilde R^{-1/4}, \quad
      \tilde L = L + \epsilon\, \lambda_{max}(L) I, \\
      u_t = \frac{\|D_t\|}{\|P_t\|} P_t \ (\text{layer-wise}), \quad
      D_t = \text{the grafting method's direction for } \hat m_t.

    A tensor of rank :math:`k` (axes of size 1 dropped) has one statistic per
    axis and the exponent :math:`1/(2k)` (:math:`1/4` for matrices), or
    ``1/exponent_override``. Each axis is cut into blocks of at most
    ``block_size``, each block with its own statistics (Anil et al. 2020): a
    (5, 7) matrix with ``block_size=3`` has blocks (3, 3) x 2, (3, 1), (2, 3) x
    2 and (2, 1). The inverse roots are computed by the coupled Newton
    iteration of :func:`matrix_inverse_pth_root` (the damping ``matrix_eps`` is
    relative to the largest eigenvalue), at step ``start_preconditioning_step``
    and every ``preconditioning_compute_steps`` steps after it, batched over
    all blocks of the tree; a root whose iteration fails keeps its previous
    value. Before ``start_preconditioning_step``, and always for scalars,
    vectors and empty leaves, the update is the grafting direction :math:`D_t`.

    The state is laid out by group, not like the parameters (blocks of one
    shape stacked, the other leaves in one flat vector), in float32 (float64
    under x64) whatever the parameters' dtypes, with ``mu_dtype`` for the first
    moment if given; ``state.layout`` keeps the tree, each parameter's shape as
    one small vector per axis (no zero-size arrays, which Orbax cannot save), so
    that updates of another structure or shape are refused naming the path.

    Grafting (Agarwal et al. 2020), per parameter: ``"adam"`` (:math:`D_t =
    \hat m_t / (\sqrt{\hat v_t} + \epsilon)`, with :math:`v` an EMA of
    :math:`g^2` with ``graft_beta2``, debiased: so before preconditioning this
    is exactly Adam), ``"rmsprop"`` (the same, not debiased), ``"adagrad"``
    (:math:`v` the sum of :math:`g^2`), ``"sgd"`` (:math:`D_t = \hat m_t`), or
    ``"none"`` (:math:`u_t = P_t` as it is, as in Gupta et al. 2018; vectors
    get :math:`\hat m_t`).

    The order follows Shi et al. (2023): the preconditioner and the grafting
    act on the first moment; Anil et al. (2020) put momentum after grafting
    instead. With ``beta1=0``, ``beta2=1``, ``graft_type="none"``,
    ``start_preconditioning_step=1`` and ``preconditioning_compute_steps=1``,
    this is Algorithm 1 of Gupta et al. (2018), except for the damping
    (relative to :math:`\lambda_{max}` here, :math:`\epsilon I` there).

    Args:
      block_size: the largest block along any axis, >= 1.
      beta1: decay of the first moment, in [0, 1).
      beta2: decay of the Kronecker statistics, in (0, 1]; 1 sums them (AdaGrad-like).
      matrix_eps: the damping of each statistic before its root, relative to
        its largest eigenvalue, >= 0.
      graft_type: ``"adam"``, ``"rmsprop"``, ``"adagrad"``, ``"sgd"`` or ``"none"``.
      graft_beta2: decay of the grafting second moment ("adam", "rmsprop"), in [0, 1).
      graft_eps: added to the grafting denominator, >= 0.
      preconditioning_compute_steps: steps between inverse-root computations, >= 1.
      start_preconditioning_step: the first step (counting from 1) that uses
        the preconditioner, and computes it, >= 1.
      exponent_override: p in :math:`L^{-1/p}` for every statistic, >= 1;
        ``2 * rank`` by default.
      nesterov: use NAdam's look-ahead first moment.
      mu_dtype: dtype of the first moment; the parameters' by default.

    Returns:
      A GradientTransformation whose state is a ScaleByShampooState.

    Raises:
      ValueError: for a number out of range or an unknown ``graft_type``.
      TypeError: for a non-integer step count or block size; at init, a
        complex parameter, naming its path.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> tx = gc.scale_by_shampoo(block_size=3, start_preconditioning_step=1)
      >>> params = {"w": jnp.zeros((5, 7)), "b": jnp.zeros(7)}
      >>> state = tx.init(params)
      >>> {k: len(v[0]) for k, v in state.stats.items()}  # blocks of each shape
      {'2x1': 1, '2x3': 2, '3x1': 1, '3x3': 2}
      >>> grads = {"w": jnp.ones((5, 7)), "b": jnp.ones(7)}
      >>> u, state = jax.jit(tx.update)(grads, state)
      >>> round(float(jnp.linalg.norm(u["w"])), 3)  # Adam's norm (every entry 1), grafted
      5.916

    References:
      Gupta, Koren and Singer, Shampoo: Preconditioned Stochastic Tensor
      Optimization, ICML 2018.
      Anil, Gupta, Koren, Regan and Singer, Scalable Second Order Optimization
      for Deep Learning, 2020 (arXiv:2002.09018).
      Agarwal, Anil, Hazan, Koren and Zhang, Disentangling Adaptive Gradient
      Methods from Learning Rates, 2020 (arXiv:2002.11803).
      Shi et al., A Distributed Data-Parallel PyTorch Implementation of the
      Distributed Shampoo Optimizer, 2023 (arXiv:2309.06497).
    """
    fn = "scale_by_shampoo"
    _check.positive_int(fn, "block_size", block_size)
    _check.decay_rate(fn, "beta1", beta1, schedule_ok=True)
    _check.in_range(fn, "beta2", beta2, 0.0, 1.0, lo_open=True, schedule_ok=True)
    _check.non_negative(fn, "matrix_eps", matrix_eps, schedule_ok=True)
    _check.decay_rate(fn, "graft_beta2", graft_beta2, schedule_ok=True)
    _check.non_negative(fn, "graft_eps", graft_eps, schedule_ok=True)
    _check.positive_int(fn, "preconditioning_compute_steps", preconditioning_compute_steps)
    _check.positive_int(fn, "start_preconditioning_step", start_preconditioning_step)
    if exponent_override is not None:
        _check.positive_int(fn, "exponent_override", exponent_override)
    if graft_type not in GRAFT_TYPES:
        raise ValueError(
            f"{fn}: `graft_type` must be one of {list(GRAFT_TYPES)}; got {graft_type!r}."
        )
    mu_dt = _check.dtype_or_none(fn, "mu_dtype", mu_dtype)
    spec = HyperparamSpec(
        fn,
        dict(
            beta1=beta1,
            beta2=beta2,
            matrix_eps=matrix_eps,
            graft_beta2=graft_beta2,
            graft_eps=graft_eps,
        ),
        rates=("beta1", "beta2", "graft_beta2"),
    )
    diagonal = graft_type in ("adam", "rmsprop", "adagrad")
    start, every = start_preconditioning_step, preconditioning_compute_steps

    def init_fn(params: Params) -> ScaleByShampooState:
        refuse_flat_params(
            "scale_by_shampoo", "each leaf's shape (a preconditioner per matrix axis)", params
        )
        plan = _plan(fn, params, block_size, exponent_override)
        return ScaleByShampooState(
            step=jnp.zeros([], jnp.int32),
            mu=_zero_stacks(plan, mu_dt),
            nu=_zero_stacks(plan, None) if diagonal else None,
            stats=_zero_factors(plan),
            roots=_eye_factors(plan),
            hparams=spec.init(),
            layout=jax.tree.map(_tree.shape_record, params),
        )

    def update_fn(
        updates: Updates, state: ScaleByShampooState, params: Params | None = None
    ) -> tuple[Updates, ScaleByShampooState]:
        del params  # the preconditioner depends on the gradients only
        _tree.check_state(fn, state, ScaleByShampooState)
        _check_tree(fn, updates, state.layout)
        plan = _plan(fn, updates, block_size, exponent_override)
        _check_layout(fn, plan, state, diagonal, mu_dt)
        hp = values(state.hparams)
        comp = state.hparams.complement
        step = _tree.safe_increment(state.step)
        treedef = jax.tree.structure(updates)
        grads = treedef.flatten_up_to(updates)
        g = blocks.gather(plan, grads)  # every leaf, in its group: few ops whatever the tree

        # 1. The Kronecker statistics of every block, batched per block shape and axis.
        w2 = jnp.where(comp["beta2"] == 0, jnp.ones_like(comp["beta2"]), comp["beta2"])
        stats = {
            k: tuple(
                s * hp["beta2"].astype(s.dtype) + w2.astype(s.dtype) * blocks.gram(g[k], d)
                for d, s in enumerate(state.stats[k])
            )
            for k in plan.block_groups
        }

        # 2. The inverse roots, at the start step and every `every` steps after it.
        since = step - start
        compute = (since >= 0) & (since % every == 0)

        def recompute(st: blocks.Factors, rt: blocks.Factors) -> blocks.Factors:
            return blocks.inverse_roots(plan, st, rt, hp["matrix_eps"], _ROOT_MAX_ERROR)

        if isinstance(compute, Tracer):
            roots = jax.lax.cond(compute, recompute, lambda st, rt: rt, stats, state.roots)
        else:  # outside jit: decide here, so the jitted root function's cache is used
            roots = recompute(stats, state.roots) if bool(compute) else state.roots

        # 3. The first moment and the grafting direction, per group.
        mu, nu, m_hat, direction = _moments_and_graft(graft_type, nesterov, g, state, hp, step)

        # 4. The preconditioned first moment, grafted per leaf onto the direction's norm.
        shampoo_dir = {k: blocks.apply_factors(m_hat[k], roots[k]) for k in plan.block_groups}
        if graft_type != "none" and plan.preconditioned:
            d_sq = blocks.leaf_sq_norms(plan, direction)
            p_sq = blocks.leaf_sq_norms(plan, shampoo_dir)
            safe = jnp.where(p_sq > 0, p_sq, jnp.ones_like(p_sq))
            ratio = jnp.where(p_sq > 0, jnp.sqrt(d_sq / safe), jnp.zeros_like(p_sq))
            shampoo_dir = {k: x * blocks.per_block(plan, k, ratio) for k, x in shampoo_dir.items()}
        use = step >= start
        out = {
            k: jnp.where(use, shampoo_dir[k], x) if k in shampoo_dir else x
            for k, x in direction.items()
        }
        outs = [
            u.astype(x.dtype) for u, x in zip(blocks.scatter(plan, out, grads), grads, strict=True)
        ]
        new_state = ScaleByShampooState(
            step=step,
            mu=mu,
            nu=nu,
            stats=stats,
            roots=roots,
            hparams=spec.advance(state.hparams, step),
            layout=state.layout,
        )
        return treedef.unflatten(outs), new_state

    return GradientTransformation(init_fn, update_fn)


def _check_layout(
    fn: str, plan: blocks.Plan, state: ScaleByShampooState, diagonal: bool, mu_dt: Any
) -> None:
    """Raises unless the state holds exactly the groups these updates cut into."""
    want = {
        "mu": {k: (g.shape, _tree.state_dtype(g.dtype, mu_dt)) for k, g in plan.groups.items()},
        "nu": {k: (g.shape, g.dtype) for k, g in plan.groups.items()} if diagonal else None,
        "stats": {
            k: [((g.count, n, n), g.compute) for n in g.block] for k, g in plan.block_groups.items()
        },
    }
    want["roots"] = want["stats"]

    def describe(x: Any) -> tuple[tuple[int, ...], Any]:
        return tuple(jnp.shape(x)), jnp.dtype(x.dtype)

    for name, expected in want.items():
        found = getattr(state, name)
        if isinstance(found, dict):
            got: Any = {
                k: [describe(x) for x in v] if isinstance(v, tuple) else describe(v)
                for k, v in found.items()
            }
        else:
            got = found
        if got != expected:
            raise ValueError(
                f"{fn}: `state.{name}` holds {_show(got)}, but these updates lay out as "
                f"{_show(expected)} (group -> shape and dtype). Pass the state from this "
                f"transformation's init on parameters of the same shapes and dtypes as the "
                f"updates."
            )


def _show(layout: Any) -> str:
    if not isinstance(layout, dict):
        return repr(layout)

    def one(v: Any) -> str:
        if isinstance(v, list):
            return "[" + ", ".join(one(x) for x in v) + "]"
        return f"{jnp.dtype(v[1]).name}{list(v[0])}"

    return "{" + ", ".join(f"{k!r}: {one(v)}" for k, v in layout.items()) + "}"


def _moments_and_graft(
    graft_type: str,
    nesterov: bool,
    g: blocks.Stacks,
    state: ScaleByShampooState,
    hp: dict[str, jax.Array],
    step: jax.Array,
) -> tuple[blocks.Stacks, blocks.Stacks | None, blocks.Stacks, blocks.Stacks]:
    """New first and second moments, the debiased first moment and the graft direction."""
    comp = state.hparams.complement
    c1 = _tree.debias(hp["beta1"], step)
    c1_next = _tree.debias(hp["beta1"], _tree.safe_increment(step))
    c2 = _tree.debias(hp["graft_beta2"], step)
    scalars = (hp["beta1"], comp["beta1"], c1, c1_next)
    graft = (hp["graft_beta2"], comp["graft_beta2"], c2, hp["graft_eps"])
    mus, nus, m_hats, dirs = {}, {}, {}, {}
    for k, gk in g.items():
        m, v = state.mu[k], None if state.nu is None else state.nu[k]
        extra = () if v is None else (v, *graft)
        gc, mc, b1, omb1, c1_, c1n, *rest = _tree.upcast(gk, m, *scalars, *extra)
        new_m = b1 * mc + omb1 * gc
        m_hat = b1 * (new_m / c1n) + omb1 * (gc / c1_) if nesterov else new_m / c1_
        mus[k] = new_m.astype(m.dtype)
        m_hats[k] = m_hat
        if v is None:
            dirs[k] = m_hat
            continue
        vc, b2, omb2, c2_, eps = rest
        if graft_type == "adagrad":
            new_v = vc + _tree.abs_sq(gc)
            denom = jnp.sqrt(new_v)
        else:
            new_v = b2 * vc + omb2 * _tree.abs_sq(gc)
            denom = jnp.sqrt(new_v / c2_) if graft_type == "adam" else jnp.sqrt(new_v)
        nus[k] = new_v.astype(v.dtype)
        dirs[k] = m_hat / (denom + eps)
    return mus, nus if state.nu is not None else None, m_hats, dirs


def shampoo(
    learning_rate: ScalarOrSchedule,
    block_size: int = 128,
    beta1: ScalarOrSchedule = 0.9,
    beta2: ScalarOrSchedule = 0.999,
    matrix_eps: ScalarOrSchedule = 1e-6,
    graft_type: GraftType = "adam",
    graft_beta2: ScalarOrSchedule = 0.999,
    graft_eps: ScalarOrSchedule = 1e-8,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: MaskOrFn | None = None,
    *,
    preconditioning_compute_steps: int = 10,
    start_preconditioning_step: int = 10,
    exponent_override: int | None = None,
    nesterov: bool = False,
    mu_dtype: Any | None = None,
) -> Any:
    r"""Shampoo with decoupled weight decay: blocked Kronecker preconditioning, grafted.

    ``chain(scale_by_shampoo(...), add_decayed_weights(weight_decay,
    weight_decay_mask), scale_by_learning_rate(learning_rate))``. The math and
    every argument but the last three are on :func:`scale_by_shampoo`; matrices
    and tensors get Shampoo, scalars and vectors the grafting method alone, so
    it runs on any tree. To send some matrices elsewhere (embeddings, heads),
    use :func:`partition`.

    Args:
      learning_rate: >= 0, or a schedule.
      block_size: see :func:`scale_by_shampoo`.
      beta1: see :func:`scale_by_shampoo`.
      beta2: see :func:`scale_by_shampoo`.
      matrix_eps: see :func:`scale_by_shampoo`.
      graft_type: see :func:`scale_by_shampoo`.
      graft_beta2: see :func:`scale_by_shampoo`.
      graft_eps: see :func:`scale_by_shampoo`.
      weight_decay: decoupled weight decay, >= 0.
      weight_decay_mask: where to decay: bools like the params, or a function of them.
      preconditioning_compute_steps: see :func:`scale_by_shampoo`.
      start_preconditioning_step: see :func:`scale_by_shampoo`.
      exponent_override: see :func:`scale_by_shampoo`.
      nesterov: see :func:`scale_by_shampoo`.
      mu_dtype: see :func:`scale_by_shampoo`.

    Returns:
      A GradientTransformationExtraArgs: the chain above.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> def loss(p):
      ...     return jnp.sum((p["w"] - 1.0) ** 2) + jnp.sum(p["b"] ** 2)
      >>> params = {"w": jnp.zeros((4, 3)), "b": jnp.ones(3)}
      >>> tx = gc.shampoo(0.1, start_preconditioning_step=2, preconditioning_compute_steps=5)
      >>> @jax.jit
      ... def step(params, state):
      ...     updates, state = tx.update(jax.grad(loss)(params), state, params)
      ...     return gc.apply_updates(params, updates), state
      >>> state = tx.init(params)
      >>> for _ in range(100):
      ...     params, state = step(params, state)
      >>> round(float(loss(params)), 3)
      0.0

    References:
      Anil et al., Scalable Second Order Optimization for Deep Learning, 2020.
    """
    _check.non_negative("shampoo", "learning_rate", learning_rate, schedule_ok=True)
    _check.non_negative("shampoo", "weight_decay", weight_decay, schedule_ok=True)
    return chain(
        scale_by_shampoo(
            block_size,
            beta1,
            beta2,
            matrix_eps,
            graft_type,
            graft_beta2,
            graft_eps,
            preconditioning_compute_steps=preconditioning_compute_steps,
            start_preconditioning_step=start_preconditioning_step,
            exponent_override=exponent_override,
            nesterov=nesterov,
            mu_dtype=mu_dtype,
        ),
        add_decayed_weights(weight_decay, weight_decay_mask),
        scale_by_learning_rate(learning_rate),
    )
