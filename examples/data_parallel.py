"""Data-parallel training with the optimizer state split across devices (ZeRO-1).

What it shows: a Flax NNX MLP (``common.MLP``) on the digits data trained
data-parallel over every device of a one-axis mesh ``("data",)``: each device
computes the gradient of its slice of the batch, the parameters stay
replicated, and the Adam moments are split eight ways by
``gc.zero1_shardings``, so each device stores an eighth of them. ``jax.jit``
with those shardings lets XLA reduce-scatter the gradients and all-gather the
updated parameters. The same script runs in one process or in several, one
global mesh over all of their devices.

The model goes through NNX's functional API. ``nnx.eval_shape`` and
``nnx.split`` give the graph definition (static) and the ``nnx.Param`` state
as a pytree of shapes, enough for ``gc.zero1_shardings`` to lay out the
parameters (replicated) and the optimizer state (split over ``"data"``)
before any array exists; jitted initialisations with those
``out_shardings`` then make both in place. The jitted step takes and returns
plain pytrees (parameters, optimizer state, batch) and rebuilds the module
with ``nnx.merge`` to compute the loss. This split form is what shards
cleanly: every array the step reads or writes is an argument or a result of
``jax.jit``, so the ``in_shardings``/``out_shardings`` trees from
``gc.zero1_shardings`` say where each one lives. ``nnx.Optimizer`` is
optional: it keeps the state inside a module that ``nnx.jit`` mutates, so its
shardings would have to be attached to every variable instead of passed to
``jax.jit`` in one tree.

Run it (8 simulated CPU devices in one process)::

    python examples/data_parallel.py --local-devices 8 --steps 200

Two processes on this machine, 4 devices each, one mesh of 8 (CPU collectives
through gloo); start both, the first one also serves as the coordinator::

    python examples/data_parallel.py --local-devices 4 --num-processes 2 --process-id 0 \
        --coordinator localhost:12355 &
    python examples/data_parallel.py --local-devices 4 --num-processes 2 --process-id 1 \
        --coordinator localhost:12355

Across real hosts, run the same command on each host with its own
``--process-id`` (0 to N-1), ``--num-processes N`` and ``--coordinator`` set to
host 0's address and a free port; drop ``--local-devices`` (each host uses its
accelerators; on GPU or TPU the collectives need no flag). Every process must
run the same program on the same data: here each builds the whole batch and
places only its own devices' slices.

Things to try: ``--no-zero`` to keep the state replicated (the bytes per device
rise eightfold, the losses stay the same); a larger ``--hidden``; another
optimizer in ``build_optimizer``; a deeper ``common.MLP`` in ``build_model``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

import gradchain as gc


def build_optimizer(learning_rate: float) -> gc.GradientTransformation:
    """The optimizer: AdamW (swap in any gradchain optimizer; its state is split alike)."""
    return gc.adamw(learning_rate, weight_decay=1e-4)


def build_model(hidden: int, seed: int) -> nnx.Module:
    """The model: an NNX MLP from the 64 pixels through two hidden layers to 10 logits."""
    import common  # after the device count is set: it builds arrays

    return common.MLP(64, (hidden, hidden), 10, rngs=nnx.Rngs(seed))


def _start(local_devices: int | None, coordinator: str | None, num_processes: int, process_id: int):
    """Sets the device count and joins the other processes; before any computation."""
    if local_devices is not None and jax.config.jax_num_cpu_devices != local_devices:
        jax.config.update("jax_num_cpu_devices", local_devices)
    if coordinator is not None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator, num_processes, process_id)


def _global(x: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
    """A global array from the same host data in every process: each places its own shards."""
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def _value(x: jax.Array) -> float:
    """A replicated scalar's value, readable in every process."""
    return float(np.asarray(x.addressable_data(0)))


def main(
    steps: int = 200,
    batch_size: int = 256,
    learning_rate: float = 3e-3,
    hidden: int = 256,
    zero: bool = True,
    seed: int = 0,
    local_devices: int | None = None,
    coordinator: str | None = None,
    num_processes: int = 1,
    process_id: int = 0,
) -> dict[str, Any]:
    """Trains the NNX MLP; returns the losses, the validation accuracy and the state's bytes.

    Returns:
      ``losses`` (the training loss before each step), ``val_accuracy``,
      ``state_bytes_per_device`` (what one device holds of the optimizer
      state) and ``state_bytes`` (the whole state).
    """
    _start(local_devices, coordinator, num_processes, process_id)
    import common  # after the device count is set: it builds arrays

    data = common.digits(seed)
    x_train, y_train = np.asarray(data.x_train), np.asarray(data.y_train)
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    if batch_size % mesh.size:
        raise ValueError(f"--batch-size {batch_size} must split evenly over {mesh.size} devices.")
    batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    # The model's structure and shapes first (no arrays): the graph definition, and the
    # nnx.Param state as a pytree of ShapeDtypeStructs, enough to lay out the shardings.
    graphdef, abstract_params = nnx.split(nnx.eval_shape(lambda: build_model(hidden, seed)))
    tx = build_optimizer(learning_rate)
    shardings = gc.zero1_shardings(tx, abstract_params, mesh, axis="data")
    if not zero:
        shardings = gc.Zero1Shardings(
            shardings.params, jax.tree.map(lambda _: replicated, shardings.state)
        )
    # Then the arrays, made in place by jitted functions: every process runs the same
    # initialisation from the same seed and keeps its own devices' shards.
    params = jax.jit(
        lambda: nnx.state(build_model(hidden, seed), nnx.Param), out_shardings=shardings.params
    )()
    state = jax.jit(tx.init, out_shardings=shardings.state)(params)

    def loss_fn(params: nnx.State, x: jax.Array, y: jax.Array) -> jax.Array:
        model = nnx.merge(graphdef, params)
        return common.cross_entropy(model(x), y)

    def train_step(
        params: nnx.State, state: Any, x: jax.Array, y: jax.Array
    ) -> tuple[nnx.State, Any, jax.Array]:
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return gc.apply_updates(params, updates), state, loss

    step = jax.jit(
        train_step,
        in_shardings=(shardings.params, shardings.state, batch, batch),
        out_shardings=(shardings.params, shardings.state, replicated),
        donate_argnums=(0, 1),
    )
    rng = np.random.default_rng(seed)  # the same batches in every process
    losses = []
    for _ in range(steps):
        idx = rng.choice(len(x_train), batch_size, replace=False)
        xb, yb = _global(x_train[idx], batch), _global(y_train[idx], batch)
        params, state, loss = step(params, state, xb, yb)
        losses.append(_value(loss))

    def evaluate(params: nnx.State, x: jax.Array, y: jax.Array) -> jax.Array:
        return common.accuracy(nnx.merge(graphdef, params)(x), y)

    x_val = _global(np.asarray(data.x_val), replicated)
    y_val = _global(np.asarray(data.y_val), replicated)
    val_accuracy = _value(jax.jit(evaluate, out_shardings=replicated)(params, x_val, y_val))
    leaves = jax.tree.leaves(state)
    out = dict(
        losses=losses,
        val_accuracy=val_accuracy,
        state_bytes_per_device=sum(x.addressable_shards[0].data.nbytes for x in leaves),
        state_bytes=sum(x.nbytes for x in leaves),
        devices=mesh.size,
        processes=jax.process_count(),
    )
    if process_id == 0:
        print(
            f"{mesh.size} devices in {jax.process_count()} process(es), "
            f"ZeRO-1 {'on' if zero else 'off'}: loss {losses[0]:.3f} -> {losses[-1]:.3f}, "
            f"validation accuracy {val_accuracy:.3f}, optimizer state "
            f"{out['state_bytes_per_device']:,} of {out['state_bytes']:,} bytes per device"
        )
    return out


def _parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--no-zero", dest="zero", action="store_false", help="replicate the state")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--local-devices", type=int, default=None, help="simulated CPU devices")
    parser.add_argument("--coordinator", default=None, help="host:port of process 0")
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = vars(_parse_args())
    as_json = args.pop("json")
    result = main(**args)
    if as_json:
        print(json.dumps(result))
