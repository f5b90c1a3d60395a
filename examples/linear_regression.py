r"""Linear regression on the diabetes data, fitted ten ways with gradchain.

The model is ``y = x @ w + b`` with ten standardised features and a
standardised target (scikit-learn's bundled diabetes data: 442 patients, no
download), and the loss is the mean squared error (MSE). On standardised data,
predicting the mean scores an MSE of 1.0 and the least-squares optimum about
0.482, so every row of the printed table should land between the two.

What the rows teach, in the spirit of the tutorials this project grew from:

* Full-batch gradient descent takes one exact step per pass over the data. The
  learning rate sets how far: too small and it crawls, too large (above 2
  divided by the largest curvature of the loss, here about 0.25) and it
  diverges. Its direction of least curvature is shallow (some features are
  nearly collinear), so it approaches the optimum slowly but surely.
* Mini-batch SGD takes ``n // batch_size`` cheap, noisy steps per pass, the
  data reshuffled every epoch with an explicit JAX key. More steps per epoch
  means faster progress, but at a fixed learning rate the noise keeps the loss
  above the optimum: a smaller batch is noisier, a larger one smoother.
* Decaying the learning rate removes that noise floor: step decay multiplies
  it by 0.9 every 100 epochs (``exponential_decay(..., staircase=True)``, with
  the transition measured in optimizer steps, so 100 epochs is
  ``100 * steps_per_epoch`` steps); ``lr0 / (1 + sqrt(t))``
  (``inverse_sqrt_decay_schedule``) decays smoothly, with ``t`` in epochs.
* L2 regularisation shrinks the weights. Written as decoupled weight decay
  (``add_decayed_weights(lam)`` before the learning rate) or as the loss term
  ``lam / 2 * ||w||^2``, it is the same update for plain SGD: the two rows
  agree to float rounding. (For Adam they differ; that is AdamW's point.)
* L1 regularisation (``add_l1_penalty``) pushes every weight towards zero by
  a constant amount, so the weakest features are switched off: a sparse model,
  the Lasso's. A subgradient step overshoots zero and oscillates around it, so
  this row lets its learning rate decay to zero (cosine) and those weights
  settle within ``ZERO_TOL`` of zero.
* Momentum, RMSprop and Adam reuse past gradients: momentum builds speed
  along the shallow direction, RMSprop and Adam rescale each coordinate by its
  gradient's running RMS, so their step size is set by the learning rate
  almost alone, whatever the scale of the gradient.

The bias is never regularised: the penalties are masked to the weights.

Things to try: ``--learning-rate 0.3`` (past the stability limit: full-batch
GD diverges), ``--batch-size 8`` against ``--batch-size 128`` (a noisier or a
smoother SGD), ``--steps 50`` against ``--steps 2000`` (how many iterations
each method needs before its loss flattens).

Each method compiles one function that runs its whole training loop
(``jax.lax.scan`` over epochs and, inside, over mini-batches) with the
optimizer built once and closed over, so the script runs in a few seconds::

    python examples/linear_regression.py --steps 500 --batch-size 32
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.datasets import load_diabetes

import gradchain as gc

Params = dict[str, jax.Array]
Batch = tuple[jax.Array, jax.Array]  # (features, targets)
Carry = tuple[Params, gc.OptState]  # (parameters, optimizer state)

#: A weight whose magnitude is below this counts as zero.
ZERO_TOL = 1e-3
#: Strength ``lam`` of the L2 rows (loss term ``lam / 2 * ||w||^2``).
L2_STRENGTH = 0.1
#: Strength ``lam`` of the L1 row (loss term ``lam * ||w||_1``).
L1_STRENGTH = 0.2
#: Regularise the weights, never the bias.
WEIGHTS_ONLY = {"w": True, "b": False}


@dataclasses.dataclass(frozen=True)
class Data:
    """A regression data set.

    Attributes:
      x: float32[n, d] features, each with mean 0 and standard deviation 1.
      y: float32[n] targets, with mean 0 and standard deviation 1.
    """

    x: jax.Array
    y: jax.Array


@dataclasses.dataclass(frozen=True)
class Method:
    """One row of the table: an optimizer and how it is fed.

    Attributes:
      name: the row's label.
      optimizer: the transformation, built once.
      batch_size: examples per step, or None for the full batch.
      l2_in_loss: ``lam`` of an L2 term ``lam / 2 * ||w||^2`` added to the loss.
    """

    name: str
    optimizer: gc.GradientTransformation | gc.GradientTransformationExtraArgs
    batch_size: int | None = None
    l2_in_loss: float = 0.0


@dataclasses.dataclass(frozen=True)
class Result:
    """The outcome of :func:`fit`.

    Attributes:
      params: the fitted ``{"w": float32[d], "b": float32[]}``.
      losses: float64[epochs], the full-data MSE after each epoch.
      steps: the number of optimizer updates taken.
    """

    params: Params
    losses: np.ndarray
    steps: int

    @property
    def loss(self) -> float:
        """The final training MSE."""
        return float(self.losses[-1])


def load_data() -> Data:
    """Loads the diabetes data, features and target standardised, as float32.

    Returns:
      The 442-example, 10-feature data set.
    """
    features, targets = load_diabetes(return_X_y=True)
    x, y = np.asarray(features, np.float64), np.asarray(targets, np.float64)
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    y = (y - y.mean()) / y.std()
    return Data(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))


def init_params(num_features: int) -> Params:
    """Zero weights and bias: the model that predicts the mean.

    Args:
      num_features: the length of ``w``.

    Returns:
      ``{"w": zeros[num_features], "b": 0.0}``.
    """
    return {"w": jnp.zeros(num_features, jnp.float32), "b": jnp.zeros([], jnp.float32)}


def mse(params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean squared error of ``x @ w + b`` against ``y``.

    Args:
      params: ``{"w": [d], "b": []}``.
      x: [n, d] features.
      y: [n] targets.

    Returns:
      A scalar.
    """
    residual = x @ params["w"] + params["b"] - y
    return jnp.mean(residual**2)


def steps_per_epoch(num_examples: int, batch_size: int | None) -> int:
    """Optimizer steps per pass over the data (the last partial batch is dropped).

    Args:
      num_examples: the size of the data set.
      batch_size: examples per step, or None for the full batch.

    Returns:
      ``num_examples // batch_size``, or 1 for the full batch.

    Raises:
      ValueError: if ``batch_size`` is not in ``[1, num_examples]``.
    """
    if batch_size is None:
        return 1
    if not 1 <= batch_size <= num_examples:
        raise ValueError(f"batch_size must be in [1, {num_examples}]; got {batch_size}.")
    return num_examples // batch_size


def fit(method: Method, data: Data, epochs: int, key: jax.Array) -> Result:
    """Trains a linear model from zero with one compiled call.

    Each epoch draws a fresh permutation of the data from ``key`` and takes
    one step per mini-batch (or one full-batch step); the full-data MSE is
    recorded after every epoch.

    Args:
      method: the optimizer and how to feed it.
      data: the training set.
      epochs: passes over the data, >= 1.
      key: the PRNG key that drives the shuffling.

    Returns:
      The fitted parameters, the loss after each epoch and the number of steps.
    """
    n, d = data.x.shape
    per_epoch = steps_per_epoch(n, method.batch_size)
    batch = n if method.batch_size is None else method.batch_size
    tx = method.optimizer

    def loss_fn(params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
        penalty = 0.5 * method.l2_in_loss * jnp.sum(params["w"] ** 2)
        return mse(params, x, y) + penalty

    grad_fn = jax.grad(loss_fn)

    def step(carry: Carry, xy: Batch) -> tuple[Carry, None]:
        params, opt_state = carry
        grads = grad_fn(params, *xy)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (gc.apply_updates(params, updates), opt_state), None

    @functools.partial(jax.jit, donate_argnums=0)  # fresh parameters, updated in place
    def run(params: Params, x: jax.Array, y: jax.Array, key: jax.Array) -> tuple[Params, jax.Array]:
        def epoch(carry: Carry, epoch_key: jax.Array) -> tuple[Carry, jax.Array]:
            if method.batch_size is None:
                batches = (x[None], y[None])
            else:
                order = jax.random.permutation(epoch_key, n)[: per_epoch * batch]
                order = order.reshape(per_epoch, batch)
                batches = (x[order], y[order])
            carry, _ = jax.lax.scan(step, carry, batches)
            return carry, mse(carry[0], x, y)

        carry = (params, tx.init(params))
        (params, _), losses = jax.lax.scan(epoch, carry, jax.random.split(key, epochs))
        return params, losses

    params, losses = run(init_params(d), data.x, data.y, key)
    return Result(params, np.asarray(losses, np.float64), epochs * per_epoch)


def make_methods(
    epochs: int, num_examples: int, batch_size: int, learning_rate: float
) -> list[Method]:
    """Builds the optimizers of the table, each once.

    Args:
      epochs: the length of training, for the schedules.
      num_examples: the size of the data set, for steps per epoch.
      batch_size: the mini-batch size of the SGD rows.
      learning_rate: the base learning rate of the SGD rows; the adaptive
        methods (RMSprop, Adam) take a tenth of it, since their step is about
        the learning rate per coordinate whatever the gradient's scale.

    Returns:
      The methods, in table order.
    """
    lr = learning_rate
    per_epoch = steps_per_epoch(num_examples, batch_size)
    # x0.9 every 100 epochs: the schedule counts optimizer steps, not epochs.
    step_decay = gc.exponential_decay(
        lr, transition_steps=100 * per_epoch, decay_rate=0.9, staircase=True
    )
    # lr0 / (1 + sqrt(t)) with t in epochs.
    sqrt_decay = gc.inverse_sqrt_decay_schedule(lr, transition_steps=per_epoch)
    to_zero = gc.cosine_decay_schedule(lr, decay_steps=epochs)
    return [
        Method("GD (full batch)", gc.sgd(lr)),
        Method(f"SGD (batch {batch_size})", gc.sgd(lr), batch_size),
        Method("SGD + step decay", gc.sgd(step_decay), batch_size),
        Method("SGD + 1/(1+sqrt t)", gc.sgd(sqrt_decay), batch_size),
        Method(
            "GD + L2 weight decay",
            gc.chain(gc.add_decayed_weights(L2_STRENGTH, WEIGHTS_ONLY), gc.sgd(lr)),
        ),
        Method("GD + L2 loss term", gc.sgd(lr), l2_in_loss=L2_STRENGTH),
        Method(
            "GD + L1 (cosine lr)",
            gc.chain(gc.add_l1_penalty(L1_STRENGTH, WEIGHTS_ONLY), gc.sgd(to_zero)),
        ),
        Method("GD + momentum 0.9", gc.sgd(lr, momentum=0.9)),
        Method("RMSprop", gc.rmsprop(lr / 10)),
        Method("Adam", gc.adam(lr / 10)),
    ]


def zero_weights(params: Params) -> int:
    """The number of weights with ``|w| < ZERO_TOL``.

    Args:
      params: ``{"w": [d], "b": []}``.

    Returns:
      A count in ``[0, d]``.
    """
    return int(np.sum(np.abs(np.asarray(params["w"])) < ZERO_TOL))


def format_table(methods: Sequence[Method], results: Sequence[Result]) -> str:
    """Renders one row per method.

    Args:
      methods: the methods, in order.
      results: their results, in the same order.

    Returns:
      The table as text.
    """
    header = (
        f"{'method':<22} {'batch':>5} {'steps':>6} {'train MSE':>10} "
        f"{'bias':>9} {'||w||':>7} {'zeros':>5}"
    )
    lines = [header, "-" * len(header)]
    for method, result in zip(methods, results, strict=True):
        w = np.asarray(result.params["w"])
        batch = "all" if method.batch_size is None else str(method.batch_size)
        lines.append(
            f"{method.name:<22} {batch:>5} {result.steps:>6} {result.loss:>10.5g} "
            f"{float(result.params['b']):>9.2e} {np.linalg.norm(w.astype(np.float64)):>7.4g} "
            f"{zero_weights(result.params):>5}"
        )
    return "\n".join(lines)


def main(
    steps: int = 500, batch_size: int = 32, learning_rate: float = 0.1, seed: int = 0
) -> dict[str, float]:
    """Fits every method, prints the table and returns the final losses.

    Args:
      steps: training length in epochs (passes over the data). A full-batch
        method takes one update per epoch, a mini-batch one
        ``442 // batch_size``.
      batch_size: the mini-batch size of the SGD rows.
      learning_rate: the base learning rate (see :func:`make_methods`).
      seed: seeds the shuffling.

    Returns:
      The final training MSE of each method, by row name.
    """
    data = load_data()
    methods = make_methods(steps, data.x.shape[0], batch_size, learning_rate)
    key = jax.random.key(seed)
    results = [fit(m, data, steps, key) for m in methods]
    print(format_table(methods, results))
    return {m.name: r.loss for m, r in zip(methods, results, strict=True)}


def _parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Linear regression on the diabetes data, fitted ten ways."
    )
    parser.add_argument("--steps", type=int, default=500, help="epochs (default 500)")
    parser.add_argument("--batch-size", type=int, default=32, help="SGD batch (default 32)")
    parser.add_argument(
        "--learning-rate", type=float, default=0.1, help="base learning rate (default 0.1)"
    )
    parser.add_argument("--seed", type=int, default=0, help="shuffling seed (default 0)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = _parse_args()
    main(args.steps, args.batch_size, args.learning_rate, args.seed)
