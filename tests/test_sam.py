"""SAM: against Optax 0.2.8, against the paper's update, on two test functions.

Foret, Kleiner, Mobahi and Neyshabur, "Sharpness-Aware Minimization for
Efficiently Improving Generalization", ICLR 2021 (arXiv:2010.01412), equation 3.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax import contrib

import gradchain as gc
from gradchain._trust import normalize
from tests.test_adaptive import parity_problem

PARAMS, _ = parity_problem(13)
_RNG = np.random.default_rng(2)
CURVATURE = jax.tree.map(lambda p: jnp.asarray(_RNG.uniform(0.5, 2, p.shape), jnp.float32), PARAMS)


def objective(params: Any) -> jax.Array:
    leaves = zip(jax.tree.leaves(CURVATURE), jax.tree.leaves(params), strict=True)
    return sum((jnp.sum(a * p**2 + 0.1 * p**4) for a, p in leaves), jnp.float32(0.0))


def _grad_fn(params: Any, i: int) -> Any:
    del i
    return jax.grad(objective)(params)


def _run(lib: Any, tx: Any, opaque: bool, steps: int = 100) -> tuple[Any, Any]:
    def step(carry: tuple[Any, Any], _: Any) -> tuple[tuple[Any, Any], Any]:
        params, state = carry
        extra = {"grad_fn": _grad_fn} if opaque else {}
        updates, state = tx.update(jax.grad(objective)(params), state, params, **extra)
        return (lib.apply_updates(params, updates), state), updates

    (params, _), updates = jax.lax.scan(step, (PARAMS, tx.init(PARAMS)), None, steps)
    return updates, params


def _pair(outer: str, sync: int, reset: bool, opaque: bool) -> tuple[Any, Any]:
    """The same SAM in both libraries: the paper's normalized adversarial step."""
    kw = dict(sync_period=sync, reset_state=reset, opaque_mode=opaque)
    ours = gc.sam(
        gc.adam(1e-2) if outer == "adam" else gc.sgd(1e-2, momentum=0.9),
        gc.chain(normalize(), gc.sgd(0.05, momentum=0.5)),
        **kw,
    )
    with jax.numpy_dtype_promotion("standard"):
        theirs = contrib.sam(
            optax.adam(1e-2) if outer == "adam" else optax.sgd(1e-2, momentum=0.9),
            optax.chain(contrib.normalize(), optax.sgd(0.05, momentum=0.5)),
            **kw,
        )
    return ours, theirs


CASES = [
    ("adam", 2, True, False),
    ("sgd", 3, False, False),
    ("adam", 3, True, True),
    ("sgd", 2, False, True),
]


@pytest.mark.parametrize(("outer", "sync", "reset", "opaque"), CASES)
def test_sam_matches_optax_over_100_steps(outer: str, sync: int, reset: bool, opaque: bool) -> None:
    ours, theirs = _pair(outer, sync, reset, opaque)

    @jax.jit
    def both() -> tuple[Any, Any]:
        got = _run(gc, ours, opaque)
        with jax.numpy_dtype_promotion("standard"):
            want = _run(optax, theirs, opaque)
        return got, want

    got, want = both()
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7 * float(np.max(np.abs(b))))


def test_two_step_sam_is_the_papers_update_in_float64() -> None:
    """Foret et al. eq. 3: w <- w - lr * grad L(w + rho g / ||g||), here by 50 outer steps."""
    a = np.array([0.5, 1.0, 3.0])
    w0 = np.array([1.0, -2.0, 0.5])
    lr, rho = 0.1, 0.05

    def loss(w: jax.Array) -> jax.Array:
        return jnp.sum(jnp.asarray(a, jnp.float32) * w**2 + 0.1 * w**4)

    tx = gc.sam(gc.sgd(lr), gc.chain(normalize(), gc.sgd(rho)))

    def step(carry: tuple[Any, Any], _: Any) -> tuple[tuple[Any, Any], jax.Array]:
        w, s = carry
        u, s = tx.update(jax.grad(loss)(w), s, w)
        w = gc.apply_updates(w, u)
        return (w, s), w

    w32 = jnp.asarray(w0, jnp.float32)
    _, path = jax.jit(lambda: jax.lax.scan(step, (w32, tx.init(w32)), None, 100))()
    w = w0.copy()
    grad = lambda v: 2 * a * v + 0.4 * v**3  # noqa: E731
    for _ in range(50):
        g = grad(w)
        w = w - lr * grad(w + rho * g / np.linalg.norm(g))
    np.testing.assert_allclose(path[-1], w, rtol=1e-5, atol=1e-6)


def _minimize(tx: Any, start: jax.Array, loss: Callable[[jax.Array], jax.Array], steps: int) -> Any:
    def step(carry: tuple[Any, Any], _: Any) -> tuple[tuple[Any, Any], None]:
        w, s = carry
        u, s = tx.update(jax.grad(loss)(w), s, w)
        return (gc.apply_updates(w, u), s), None

    return jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), None, steps)[0][0])(start)


def test_sam_minimizes_a_parabola_and_the_rosenbrock_function_in_float32() -> None:
    # rho decays so that SAM's flat-minimum bias vanishes; reset_state=False, or the adversarial
    # optimizer's schedule would restart at every outer step (its step count is reset).
    def sam() -> Any:
        adv = gc.chain(normalize(), gc.sgd(gc.exponential_decay(1e-2, 200, 0.1)))
        return gc.sam(gc.adam(1e-2), adv, reset_state=False)

    minimum = jnp.array([1.0, -1.0, 1.0])
    final = _minimize(
        sam(), jnp.array([-1.0, 10.0, 1.0]), lambda w: jnp.sum((w - minimum) ** 2), 10000
    )
    np.testing.assert_allclose(final, minimum, atol=1e-2)
    rosen = lambda w: (1 - w[0]) ** 2 + 100 * (w[1] - w[0] ** 2) ** 2  # noqa: E731
    final = _minimize(sam(), jnp.zeros(2), rosen, 20000)
    assert final.dtype == jnp.float32
    np.testing.assert_allclose(final, jnp.ones(2), atol=1e-2)


def test_opaque_mode_without_grad_fn_says_what_to_pass() -> None:
    tx = gc.sam(gc.sgd(0.1), gc.sgd(0.1), opaque_mode=True)
    with pytest.raises(TypeError, match=r"^sam: with opaque_mode=True, update needs `grad_fn=`"):
        tx.update(PARAMS, tx.init(PARAMS), PARAMS)


def test_a_grad_fn_of_another_structure_is_refused_naming_sam() -> None:
    tx = gc.sam(gc.sgd(0.1), gc.sgd(0.1), opaque_mode=True)
    with pytest.raises(ValueError, match=r"^sam: the trees `updates` and `grad_fn\(params, i\)`"):
        tx.update(PARAMS, tx.init(PARAMS), PARAMS, grad_fn=lambda p, i: p["embed"])


def test_opaque_mode_averages_grad_fn_gradients_over_the_batch_axis_under_pmap() -> None:
    n = jax.local_device_count()
    tx = gc.sam(gc.sgd(1.0), gc.sgd(0.5), opaque_mode=True, batch_axis_name="batch")
    w = jnp.ones(2)
    shards = jnp.arange(n, dtype=jnp.float32)[:, None] * jnp.ones((n, 2))

    def step(shard: jax.Array) -> jax.Array:
        grad_fn = lambda p, i: p * shard  # noqa: E731  (a different gradient on each device)
        u, _ = tx.update(jnp.zeros(2), tx.init(w), w, grad_fn=grad_fn)
        return u

    out = jax.pmap(step, axis_name="batch")(shards)
    np.testing.assert_allclose(out, -jnp.full((n, 2), shards.mean()))


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: gc.sam(gc.sgd(0.1), gc.sgd(0.1), sync_period=0), ValueError, "`sync_period`"),
        (lambda: gc.sam(gc.sgd, gc.sgd(0.1)), TypeError, "`optimizer` is the function `sgd`"),
        (
            lambda: gc.sam(gc.sgd(0.1), gc.sgd(0.1), batch_axis_name="b"),
            ValueError,
            "only with `opaque_mode=True`",
        ),
    ],
)
def test_bad_settings_raise_at_construction(
    make: Callable[[], Any], error: type, match: str
) -> None:
    with pytest.raises(error, match=rf"^sam: .*{match}"):
        make()


FACTORIES: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {}
HYPERPARAMETERS: list[tuple[str, str, str, str]] = []  # sam has no numeric argument
OPTAX_PARITY_NAMES = frozenset({"sam"})
