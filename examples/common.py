"""Data and models the examples share: bundled scikit-learn data, Flax NNX and plain-JAX models.

Everything here loads from files that ship inside scikit-learn, so no example
downloads anything:

* :func:`diabetes`: 442 patients, 10 features, a continuous target (regression).
  Features and target are standardised with the training split's mean and
  standard deviation, so predicting the mean scores a mean squared error of
  about 1.0.
* :func:`digits`: 1797 greyscale 8x8 images of the digits 0-9 (classification).
  Pixels are scaled from 0..16 to [0, 1]; labels are int32.

Both split the data into a training and a validation part with a seeded
permutation, so a seed picks the same split every time.

Models come in two flavours, because users write both:

* Flax NNX modules (:class:`LinearRegressor`, :class:`MLP`) for
  ``nnx.Optimizer(model, tx, wrt=nnx.Param)``.
* A plain-JAX MLP as a pytree of arrays (:func:`init_mlp`, :func:`mlp_logits`),
  for code that vmaps or scans over whole training runs.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from sklearn.datasets import load_diabetes, load_digits


class Split(NamedTuple):
    """A training and a validation split of one dataset, as float32/int32 arrays."""

    x_train: jax.Array
    y_train: jax.Array
    x_val: jax.Array
    y_val: jax.Array


def _split(x: np.ndarray, y: np.ndarray, validation: float, seed: int) -> tuple[np.ndarray, ...]:
    if not 0.0 < validation < 1.0:
        raise ValueError(f"validation must be a fraction in (0, 1), got {validation!r}")
    order = np.random.default_rng(seed).permutation(len(x))
    cut = len(x) - round(validation * len(x))
    train, val = order[:cut], order[cut:]
    return x[train], y[train], x[val], y[val]


def diabetes(seed: int = 0, validation: float = 0.2) -> Split:
    """Standardised diabetes regression data (10 features), split by `seed`.

    Args:
      seed: picks the train/validation permutation.
      validation: fraction of the 442 rows held out for validation.

    Returns:
      A Split of float32 arrays: x of shape (n, 10), y of shape (n,).
    """
    x, y = load_diabetes(return_X_y=True)
    x_train, y_train, x_val, y_val = _split(x, y, validation, seed)
    mean, std = x_train.mean(0), x_train.std(0)
    y_mean, y_std = y_train.mean(), y_train.std()

    def as_x(a: np.ndarray) -> jax.Array:
        return jnp.asarray((a - mean) / std, jnp.float32)

    def as_y(a: np.ndarray) -> jax.Array:
        return jnp.asarray((a - y_mean) / y_std, jnp.float32)

    return Split(as_x(x_train), as_y(y_train), as_x(x_val), as_y(y_val))


def digits(seed: int = 0, validation: float = 0.2) -> Split:
    """Digits images as 64 pixels in [0, 1] with int32 labels 0-9, split by `seed`.

    Args:
      seed: picks the train/validation permutation.
      validation: fraction of the 1797 images held out for validation.

    Returns:
      A Split: x float32 of shape (n, 64), y int32 of shape (n,).
    """
    x, y = load_digits(return_X_y=True)
    x_train, y_train, x_val, y_val = _split(x / 16.0, y, validation, seed)
    return Split(
        jnp.asarray(x_train, jnp.float32),
        jnp.asarray(y_train, jnp.int32),
        jnp.asarray(x_val, jnp.float32),
        jnp.asarray(y_val, jnp.int32),
    )


class LinearRegressor(nnx.Module):
    """``y = x @ w + b`` with one output, as a Flax NNX module."""

    def __init__(self, features: int, *, rngs: nnx.Rngs):
        self.linear = nnx.Linear(features, 1, kernel_init=nnx.initializers.zeros, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Predictions of shape ``x.shape[:-1]``."""
        return self.linear(x)[..., 0]


class MLP(nnx.Module):
    """A multi-layer perceptron with ReLU hidden layers, as a Flax NNX module."""

    def __init__(
        self,
        features: int = 64,
        hidden: tuple[int, ...] = (64,),
        classes: int = 10,
        *,
        rngs: nnx.Rngs,
    ):
        sizes = (features, *hidden)
        self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in itertools.pairwise(sizes)])
        self.head = nnx.Linear(sizes[-1], classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits of shape ``(*x.shape[:-1], classes)``."""
        for layer in self.hidden:
            x = jax.nn.relu(layer(x))
        return self.head(x)


MlpParams = list[dict[str, jax.Array]]


def init_mlp(key: jax.Array, sizes: tuple[int, ...] = (64, 64, 10)) -> MlpParams:
    """Plain-JAX MLP parameters: one ``{"w", "b"}`` dict per layer, LeCun-normal weights."""
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        {
            "w": jax.random.normal(k, (a, b), jnp.float32) / np.sqrt(a).astype(np.float32),
            "b": jnp.zeros((b,), jnp.float32),
        }
        for k, a, b in zip(keys, sizes[:-1], sizes[1:], strict=True)
    ]


def mlp_logits(params: MlpParams, x: jax.Array) -> jax.Array:
    """Logits of the plain-JAX MLP: ReLU between layers, none after the last."""
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"][None, :])
    return x @ params[-1]["w"] + params[-1]["b"][None, :]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of integer `labels` under `logits`."""
    log_probs = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=-1))


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of rows whose largest logit is the label."""
    return jnp.mean(jnp.argmax(logits, axis=-1) == labels)


def shuffled_batches(
    key: jax.Array, x: jax.Array, y: jax.Array, batch_size: int, steps: int
) -> tuple[jax.Array, jax.Array]:
    """``steps`` mini-batches of ``(x, y)``, stacked on a leading step axis.

    Each epoch is a fresh permutation of the rows drawn from ``key`` (the last
    partial batch of an epoch is dropped), so ``jax.lax.scan`` can run a whole
    training loop over the result. Works under ``jit`` and ``vmap`` (one
    shuffle per key).

    Args:
      key: the PRNG key of the shuffles.
      x: [n, ...] inputs.
      y: [n, ...] targets.
      batch_size: rows per batch, in [1, n].
      steps: the number of batches, >= 1.

    Returns:
      ``(x_batches [steps, batch_size, ...], y_batches [steps, batch_size, ...])``.
    """
    n = x.shape[0]
    if not 1 <= batch_size <= n or steps < 1:
        raise ValueError(f"need 1 <= batch_size <= {n} and steps >= 1; got {batch_size}, {steps}")
    per_epoch = n // batch_size
    epochs = -(-steps // per_epoch)
    keys = jax.random.split(key, epochs)
    order = jax.vmap(lambda k: jax.random.permutation(k, n)[: per_epoch * batch_size])(keys)
    order = order.reshape(-1, batch_size)[:steps]
    return x[order], y[order]
