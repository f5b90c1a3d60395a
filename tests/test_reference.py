"""Every transform and alias against a float64 NumPy loop of its paper's equations.

Each reference below is the update rule of one paper written out as a plain
loop over steps, in float64, on the parameters flattened into one vector (every
rule here acts coordinate by coordinate, except global-norm clipping, which
needs all coordinates at once). gradchain runs the same gradients in float32,
under ``jit`` and ``lax.scan``, on a small pytree (a matrix, a vector and a
scalar, at three different scales); its update at every step and its final
parameters must match the reference to float32 accuracy (see ``RTOL``).

Where gradchain documents a convention that differs from the paper's text (the
form of Nesterov momentum, momentum after the learning rate in RMSProp, the
learning rate multiplying AdamW's decay), the reference follows gradchain and
says so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradchain as gc

# Tolerances, relative (see ``relative_errors`` for relative to what). float32
# rounds each operation to 6e-8; a step is ~10 operations on moments that are
# EMAs (their errors decay rather than compound); the final parameters sum STEPS
# updates. The largest error is the debiasing 1 - b**t, computed in float32 as in
# Optax: an absolute rounding of ~6e-8 (an ulp of b**t ~ 1) against a value of
# 1 - b at t = 1, so 6e-8 / (1 - b2) relative in v_hat, half that in the update
# after the root: 3e-6 for b2 = 0.99, 3e-5 for Adam's default b2 = 0.999.
# Measured worst cases: 1.7e-6 (NAdamW, b2 = 0.99; other transforms stay below
# 1.3e-6) and 1.8e-5 (AdamW, b2 = 0.999).
RTOL = 3e-6
RTOL_B2_0999 = 3e-5

STEPS = 60
SHAPES = {"w": (4, 3), "b": (3,), "s": ()}
SCALES = {"w": 1.0, "b": 0.1, "s": 10.0}  # coordinates at different scales, as in a network
ZERO_STEPS = 10  # b[0] starts at 0 and gets a zero gradient for its first ZERO_STEPS steps


def _problem() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Float32 parameters and STEPS gradients (stacked on axis 0), with some exact zeros."""
    rng = np.random.default_rng(0)
    params = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    grads = {
        k: (SCALES[k] * rng.normal(size=(STEPS, *s))).astype(np.float32) for k, s in SHAPES.items()
    }
    params["b"][0] = 0.0  # for sign(0) = 0 in L1 and a zero accumulator in Adagrad
    grads["b"][:ZERO_STEPS, 0] = 0.0
    return params, grads


PARAMS, GRADS = _problem()


def _flat(tree: Any, lead: int = 0) -> np.ndarray:
    """The leaves as one float64 vector (or ``lead`` leading axes, then one vector)."""
    leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]
    return np.concatenate([x.reshape(*x.shape[:lead], -1) for x in leaves], axis=-1)


def lr_schedule(step: Any) -> Any:
    """A warmup then a decay: float32 for a JAX step, float64 for a Python int."""
    t = step.astype(jnp.float32) if isinstance(step, jax.Array) else float(step)
    return 0.1 * (1 - 0.8 ** (t + 1)) * 0.98**t


LRS = np.array([lr_schedule(t) for t in range(STEPS)])  # the rate of the step counted from 0


# --- The references: (STEPS, n) float64 gradients in, (STEPS, n) updates out. ---


def gradient_ref(g: np.ndarray) -> np.ndarray:
    """Plain gradient descent's direction, the gradient itself (Robbins & Monro 1951)."""
    return g


def scaled_ref(g: np.ndarray, factors: Any) -> np.ndarray:
    """u_t = c_t g_t (a fixed factor, a learning rate, a schedule)."""
    return g * np.broadcast_to(np.asarray(factors, np.float64), (len(g),))[:, None]


def momentum_ref(g: np.ndarray, beta: float, nesterov: bool = False) -> np.ndarray:
    """Heavy-ball momentum, and Nesterov's (Sutskever et al. 2013, eq. 3-4).

    gradchain (like TensorFlow and Optax) writes momentum as m_t = g_t + b m_{t-1}
    with the learning rate applied afterwards, and Nesterov's look-ahead in its
    gradient-at-the-current-point form u_t = g_t + b m_t (Bengio et al. 2013),
    rather than Sutskever's v_t = b v_{t-1} - lr grad f(w + b v_{t-1}).
    """
    m, out = np.zeros(g.shape[1]), []
    for g_t in g:
        m = g_t + beta * m
        out.append(g_t + beta * m if nesterov else m)
    return np.array(out)


def ema_ref(g: np.ndarray, beta: float, debias: bool) -> np.ndarray:
    """e_t = (1 - b) g_t + b e_{t-1}, divided by 1 - b^t when debiased (Kingma & Ba 2015, §3)."""
    e, out = np.zeros(g.shape[1]), []
    for t, g_t in enumerate(g, start=1):
        e = (1 - beta) * g_t + beta * e
        out.append(e / (1 - beta**t) if debias else e)
    return np.array(out)


def adam_ref(
    g: np.ndarray,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    nesterov: bool = False,
) -> np.ndarray:
    """Adam's direction (Kingma & Ba 2015, Algorithm 1), NAdam's when ``nesterov``.

    NAdam is Dozat 2016 with a constant momentum schedule mu_t = b1, as gradchain has it:
    m_hat = b1 m_t / (1 - b1^(t+1)) + (1 - b1) g_t / (1 - b1^t). ``eps_root`` goes
    inside the root, as gradchain documents; the paper's case is eps_root = 0.
    """
    m, v, out = np.zeros(g.shape[1]), np.zeros(g.shape[1]), []
    for t, g_t in enumerate(g, start=1):
        m = b1 * m + (1 - b1) * g_t
        v = b2 * v + (1 - b2) * g_t**2
        if nesterov:
            m_hat = b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g_t / (1 - b1**t)
        else:
            m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        out.append(m_hat / (np.sqrt(v_hat + eps_root) + eps))
    return np.array(out)


def rms_ref(
    g: np.ndarray,
    decay: float = 0.9,
    eps: float = 1e-8,
    initial_scale: float = 0.0,
    eps_in_sqrt: bool = True,
    bias_correction: bool = False,
    centered: bool = False,
) -> np.ndarray:
    """RMSProp's division (Tieleman & Hinton 2012), centred by Graves 2013 (eq. 38-45).

    gradchain puts ``eps`` inside the root by default (the papers add it outside
    or leave it out), starts v at ``initial_scale``, and with ``bias_correction``
    divides both moments by 1 - decay^t even when ``initial_scale`` is not zero.
    """
    m, v, out = np.zeros(g.shape[1]), np.full(g.shape[1], initial_scale), []
    for t, g_t in enumerate(g, start=1):
        m = decay * m + (1 - decay) * g_t
        v = decay * v + (1 - decay) * g_t**2
        c = 1 - decay**t if bias_correction else 1.0
        var = v / c - (m / c) ** 2 if centered else v / c
        out.append(g_t / np.sqrt(var + eps) if eps_in_sqrt else g_t / (np.sqrt(var) + eps))
    return np.array(out)


def rss_ref(g: np.ndarray, initial: float = 0.1, eps: float = 1e-7) -> np.ndarray:
    """Adagrad, diagonal form (Duchi et al. 2011): s_t = s_{t-1} + g_t^2, u_t = g_t / sqrt(s_t).

    gradchain adds ``eps`` inside the root and returns 0 where the sum is still 0.
    """
    s, out = np.full(g.shape[1], initial), []
    for g_t in g:
        s = s + g_t**2
        with np.errstate(divide="ignore", invalid="ignore"):
            out.append(np.where(s > 0, g_t / np.sqrt(s + eps), 0.0))
    return np.array(out)


def clip_ref(g: np.ndarray, max_delta: float) -> np.ndarray:
    """Each coordinate clipped to [-max_delta, max_delta]."""
    return np.clip(g, -max_delta, max_delta)


def global_norm_clip_ref(g: np.ndarray, max_norm: float) -> np.ndarray:
    """Pascanu et al. 2013, Algorithm 1: if ||g|| >= c then g <- c g / ||g||."""
    out = []
    for g_t in g:
        norm = np.sqrt(np.sum(g_t**2))
        out.append(g_t if norm < max_norm else max_norm * g_t / norm)
    return np.array(out)


def param_term_ref(
    d: np.ndarray,
    p0: np.ndarray,
    coeff: float,
    term: Callable[[np.ndarray], np.ndarray],
    mask: np.ndarray | bool = True,
    factors: Any = 1.0,
) -> np.ndarray:
    """u_t = c_t (d_t + coeff mask term(w_t)), w_{t+1} = w_t + u_t: weight decay, L1.

    With term(w) = w, ``d`` Adam's direction and c_t = -lr_t this is AdamW
    (Loshchilov & Hutter 2019, Algorithm 2, line 12). gradchain follows Optax
    and PyTorch: the learning rate also multiplies the decay (the paper's
    schedule multiplier eta_t is the learning rate, its alpha is 1). With
    term = sign (sign(0) = 0), it is the L1 subgradient.
    """
    factors = np.broadcast_to(np.asarray(factors, np.float64), (len(d),))
    w, out = p0.copy(), []
    for d_t, c_t in zip(d, factors, strict=True):
        u = c_t * (d_t + coeff * np.where(mask, term(w), 0.0))
        w = w + u
        out.append(u)
    return np.array(out)


# --- The cases: the gradchain transformation, its reference (g, w0) -> u, the tolerance. ---

Ref = Callable[[np.ndarray, np.ndarray], np.ndarray]
DECAY_MASK = {"w": True, "b": False, "s": True}
MASK = _flat(jax.tree.map(lambda m, p: np.full(np.shape(p), m), DECAY_MASK, PARAMS)) > 0


def case(name: str, make: Callable[[], Any], ref: Ref, rtol: float = RTOL, marks: Any = ()) -> Any:
    """One parametrized case: ``make()`` builds the transformation, ``ref`` its reference."""
    return pytest.param(make, ref, rtol, id=name, marks=marks)


def _identity(w: np.ndarray) -> np.ndarray:
    return w


def _lr(lr: Any) -> Any:
    """The per-step rates of a learning rate given as a number or as ``lr_schedule``."""
    return LRS if lr is lr_schedule else lr


def _dir(ref: Callable[..., np.ndarray], **kwargs: Any) -> Ref:
    """A reference of the gradients alone (the parameters do not enter)."""
    return lambda g, w0: ref(g, **kwargs)


def _scaled(ref: Callable[..., np.ndarray], lr: Any, **kwargs: Any) -> Ref:
    """An alias that is ``ref`` followed by the learning rate: sgd, adam, nadam, adagrad."""
    return lambda g, w0: scaled_ref(ref(g, **kwargs), -_lr(lr))


def _adamw(lr: Any, wd: float, mask: np.ndarray | bool = True, **adam: Any) -> Ref:
    """AdamW (Loshchilov & Hutter 2019): Adam's direction, the decay, then the rate."""
    return lambda g, w0: param_term_ref(adam_ref(g, **adam), w0, wd, _identity, mask, -_lr(lr))


def _rmsprop(lr: Any, momentum: float | None = None, nesterov: bool = False, **rms: Any) -> Ref:
    """RMSProp, momentum after the learning rate (as Graves 2013 eq. 38-45, TensorFlow, Optax)."""

    def ref(g: np.ndarray, w0: np.ndarray) -> np.ndarray:
        steps = scaled_ref(rms_ref(g, **rms), -_lr(lr))
        return steps if momentum is None else momentum_ref(steps, momentum, nesterov)

    return ref


B2 = RTOL_B2_0999
CASES = [
    case("scale", lambda: gc.scale(-0.3), _dir(scaled_ref, factors=-0.3)),
    case("lr", lambda: gc.scale_by_learning_rate(0.05), _dir(scaled_ref, factors=-0.05)),
    case(
        "lr_no_flip",
        lambda: gc.scale_by_learning_rate(0.05, flip_sign=False),
        _dir(scaled_ref, factors=0.05),
    ),
    case(
        "lr_schedule",
        lambda: gc.scale_by_learning_rate(lr_schedule),
        _dir(scaled_ref, factors=-LRS),
    ),
    case(
        "lr_schedule_no_flip",
        lambda: gc.scale_by_learning_rate(lr_schedule, flip_sign=False),
        _dir(scaled_ref, factors=LRS),
    ),
    case("schedule", lambda: gc.scale_by_schedule(lr_schedule), _dir(scaled_ref, factors=LRS)),
    case("trace", lambda: gc.trace(0.9), _dir(momentum_ref, beta=0.9)),
    case(
        "trace_nesterov", lambda: gc.trace(0.8, True), _dir(momentum_ref, beta=0.8, nesterov=True)
    ),
    case("ema", lambda: gc.ema(0.9), _dir(ema_ref, beta=0.9, debias=True)),
    case("ema_biased", lambda: gc.ema(0.7, debias=False), _dir(ema_ref, beta=0.7, debias=False)),
    case("adam_scaling", lambda: gc.scale_by_adam(), _dir(adam_ref), B2),
    case(
        "adam_scaling_nesterov",
        lambda: gc.scale_by_adam(0.8, 0.99, nesterov=True),
        _dir(adam_ref, b1=0.8, b2=0.99, nesterov=True),
    ),
    case(
        "adam_scaling_eps_root",
        lambda: gc.scale_by_adam(eps=1e-3, eps_root=1e-2),
        _dir(adam_ref, eps=1e-3, eps_root=1e-2),
        B2,
    ),
    case("rms", lambda: gc.scale_by_rms(), _dir(rms_ref)),
    case(
        "rms_eps_outside_debiased",
        lambda: gc.scale_by_rms(0.95, 1e-4, eps_in_sqrt=False, bias_correction=True),
        _dir(rms_ref, decay=0.95, eps=1e-4, eps_in_sqrt=False, bias_correction=True),
    ),
    case(
        "rms_initial_scale",
        lambda: gc.scale_by_rms(0.8, 1e-6, initial_scale=1.0),
        _dir(rms_ref, decay=0.8, eps=1e-6, initial_scale=1.0),
    ),
    case(
        "rms_initial_scale_debiased",
        lambda: gc.scale_by_rms(0.8, 1e-6, 0.5, bias_correction=True),
        _dir(rms_ref, decay=0.8, eps=1e-6, initial_scale=0.5, bias_correction=True),
    ),
    case("stddev", lambda: gc.scale_by_stddev(), _dir(rms_ref, centered=True)),
    case(
        "stddev_eps_outside",
        lambda: gc.scale_by_stddev(0.9, 1e-4, eps_in_sqrt=False),
        _dir(rms_ref, eps=1e-4, eps_in_sqrt=False, centered=True),
    ),
    case(
        "stddev_initial_scale",
        lambda: gc.scale_by_stddev(0.8, 1e-6, initial_scale=1.0),
        _dir(rms_ref, decay=0.8, eps=1e-6, initial_scale=1.0, centered=True),
    ),
    # Debiased, the variance of the first step, v_1 - m_1^2, is exactly 0 and float32
    # leaves up to half an ulp of g^2 there (1.9e-6 for this run's largest g, 8): eps = 1
    # inside the root keeps that below RTOL. With eps outside the root, the root of that
    # residue (~1e-3 |g|) is what any float32 implementation returns, so no float64
    # comparison is meaningful at step 1; that setting is checked for finiteness below
    # (gradchain clamps the variance at 0, where Optax 0.2.8 returns NaN).
    case(
        "stddev_debiased",
        lambda: gc.scale_by_stddev(0.75, 1.0, 0.5, bias_correction=True),
        _dir(rms_ref, decay=0.75, eps=1.0, initial_scale=0.5, bias_correction=True, centered=True),
    ),
    case("rss", lambda: gc.scale_by_rss(), _dir(rss_ref)),
    case(
        "rss_zero_accumulator",
        lambda: gc.scale_by_rss(0.0, 0.0),
        _dir(rss_ref, initial=0.0, eps=0.0),
    ),
    case(
        "decayed_weights",
        lambda: gc.add_decayed_weights(0.1),
        lambda g, w0: param_term_ref(g, w0, 0.1, _identity),
    ),
    case(
        "decayed_weights_masked",
        lambda: gc.add_decayed_weights(0.1, DECAY_MASK),
        lambda g, w0: param_term_ref(g, w0, 0.1, _identity, MASK),
    ),
    case("l1", lambda: gc.add_l1_penalty(0.05), lambda g, w0: param_term_ref(g, w0, 0.05, np.sign)),
    case("clip", lambda: gc.clip(0.5), _dir(clip_ref, max_delta=0.5)),
    case(
        "global_norm_below",
        lambda: gc.clip_by_global_norm(1e3),
        _dir(global_norm_clip_ref, max_norm=1e3),
    ),
    case(
        "global_norm_above",
        lambda: gc.clip_by_global_norm(1.0),
        _dir(global_norm_clip_ref, max_norm=1.0),
    ),
    case(  # about the median norm: both branches within one run
        "global_norm_mixed",
        lambda: gc.clip_by_global_norm(7.5),
        _dir(global_norm_clip_ref, max_norm=7.5),
    ),
    case("sgd", lambda: gc.sgd(0.05), _scaled(gradient_ref, 0.05)),
    case("sgd_schedule", lambda: gc.sgd(lr_schedule), _scaled(gradient_ref, lr_schedule)),
    case("sgd_momentum", lambda: gc.sgd(0.05, 0.9), _scaled(momentum_ref, 0.05, beta=0.9)),
    case(
        "sgd_nesterov_schedule",
        lambda: gc.sgd(lr_schedule, 0.9, nesterov=True),
        _scaled(momentum_ref, lr_schedule, beta=0.9, nesterov=True),
    ),
    case("adam", lambda: gc.adam(0.01), _scaled(adam_ref, 0.01), B2),
    case(
        "adam_schedule",
        lambda: gc.adam(lr_schedule, b1=0.85, b2=0.98, eps=1e-6),
        _scaled(adam_ref, lr_schedule, b1=0.85, b2=0.98, eps=1e-6),
    ),
    case("adamw", lambda: gc.adamw(0.01, weight_decay=0.1), _adamw(0.01, 0.1), B2),
    case(
        "adamw_masked_schedule",
        lambda: gc.adamw(lr_schedule, weight_decay=0.3, mask=DECAY_MASK),
        _adamw(lr_schedule, 0.3, MASK),
        B2,
    ),
    case("nadam", lambda: gc.nadam(0.01), _scaled(adam_ref, 0.01, nesterov=True), B2),
    case(
        "nadamw_schedule",
        lambda: gc.nadamw(lr_schedule, b2=0.99, weight_decay=0.2),
        _adamw(lr_schedule, 0.2, b2=0.99, nesterov=True),
    ),
    case("rmsprop", lambda: gc.rmsprop(0.01), _rmsprop(0.01)),
    case(
        "rmsprop_centered",
        lambda: gc.rmsprop(0.01, centered=True, eps=1e-4),
        _rmsprop(0.01, eps=1e-4, centered=True),
    ),
    case("rmsprop_momentum", lambda: gc.rmsprop(0.01, momentum=0.9), _rmsprop(0.01, 0.9)),
    case(
        "rmsprop_centered_nesterov_schedule",
        lambda: gc.rmsprop(lr_schedule, 0.95, 1e-4, centered=True, momentum=0.8, nesterov=True),
        _rmsprop(lr_schedule, 0.8, True, decay=0.95, eps=1e-4, centered=True),
    ),
    case("adagrad", lambda: gc.adagrad(0.1), _scaled(rss_ref, 0.1)),
    case(
        "adagrad_zero_accumulator",
        lambda: gc.adagrad(0.1, 0.0, 0.0),
        _scaled(rss_ref, 0.1, initial=0.0, eps=0.0),
    ),
]


def _run(tx: Any) -> tuple[np.ndarray, np.ndarray]:
    """The float32 updates at every step (flattened) and final parameters, from gradchain."""

    def step(carry: tuple[Any, Any], g: Any) -> tuple[tuple[Any, Any], Any]:
        params, state = carry
        updates, state = tx.update(g, state, params)
        return (gc.apply_updates(params, updates), state), updates

    def run(params: Any, grads: Any) -> tuple[Any, Any]:
        (params, _), updates = jax.lax.scan(step, (params, tx.init(params)), grads)
        return updates, params

    updates, params = jax.jit(run)(jax.tree.map(jnp.asarray, PARAMS), GRADS)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves((updates, params)))
    return _flat(updates, lead=1), _flat(params)


def _reference(ref: Ref) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reference's updates, final parameters, and the scale each final parameter sums."""
    w0 = _flat(PARAMS)
    updates = ref(_flat(GRADS, lead=1), w0)
    return updates, w0 + updates.sum(0), np.abs(w0) + np.abs(updates).sum(0)


def relative_errors(case_ref: Ref, tx: Any) -> tuple[float, float]:
    """Max relative error of the updates and of the final parameters against the reference.

    Both are sums that may cancel: an update sums momentum or moment terms of
    both signs, a final parameter sums STEPS updates. Float32 summation keeps
    its relative error bounded against the magnitudes it adds (Higham,
    Accuracy and Stability of Numerical Algorithms, 2002, section 4.2), not
    against a result that cancels to near 0. So an update's error is measured
    against its own size, but at least the root mean square of that
    coordinate's updates over the run; a final parameter's against the sum of
    the magnitudes it adds.
    """
    got_u, got_w = _run(tx)
    want_u, want_w, w_scale = _reference(case_ref)
    u_scale = np.maximum(np.abs(want_u), np.sqrt(np.mean(want_u**2, axis=0)))
    u_err = np.abs(got_u - want_u) / np.where(u_scale > 0, u_scale, 1.0)
    return float(np.max(u_err)), float(np.max(np.abs(got_w - want_w) / w_scale))


@pytest.mark.parametrize(("make", "ref", "rtol"), CASES)
def test_updates_and_final_params_match_the_papers_equations_in_float64(
    make: Callable[[], Any], ref: Ref, rtol: float
) -> None:
    u_err, w_err = relative_errors(ref, make())
    assert u_err <= rtol, f"updates off by {u_err:.2e} relative"
    assert w_err <= rtol, f"final params off by {w_err:.2e} relative to their summed magnitude"


@pytest.mark.parametrize("eps_in_sqrt", [True, False])
def test_centred_debiased_scaling_never_takes_the_root_of_a_negative_variance(
    eps_in_sqrt: bool,
) -> None:
    tx = gc.rmsprop(0.01, decay=0.99, centered=True, eps_in_sqrt=eps_in_sqrt, bias_correction=True)
    updates, _ = _run(tx)
    nan_steps = sorted(set(np.nonzero(~np.isfinite(updates))[0].tolist()))
    assert not nan_steps, f"NaN at steps {nan_steps}"


def test_the_shared_gradients_reach_every_branch_the_references_distinguish() -> None:
    g = _flat(GRADS, lead=1)
    norms = np.linalg.norm(g, axis=1)
    assert 1.0 < norms.min() < 7.5 < norms.max() < 1e3  # each clip_by_global_norm case
    assert (np.abs(g) > 0.5).any() and (np.abs(g) < 0.5).any()  # clip(0.5) both ways
    assert PARAMS["b"][0] == 0 and (GRADS["b"][:ZERO_STEPS, 0] == 0).all()  # sign(0), s = 0
