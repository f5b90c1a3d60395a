r"""Checkpoint and resume with Orbax: the resumed run equals the uninterrupted one, bit for bit.

A plain-JAX MLP learns the bundled 8x8 digits with an optimizer whose state is
far from trivial::

    schedule = gc.warmup_cosine_decay_schedule(0.0, lr, warmup, decay_steps=steps)
    tx = gc.chain(gc.clip_by_global_norm(1.0), gc.adamw(schedule, weight_decay=wd))

Its state holds, per transform, an int32 ``step`` counter; Adam's moments
``mu`` and ``nu`` (one array per parameter); and every hyperparameter as a
float32 scalar (``max_norm``, ``b1``, ``b2``, their complements ``1 - b``,
``eps``, ``weight_decay``, and the scheduled ``learning_rate``'s value for the
next step). All of it has to be saved: restart with fresh moments or with the
step counters at zero, and the schedule starts its warmup again and Adam its
bias correction: the run goes on, but not as it would have.

**Phases.** ``--phase train`` trains to step ``steps // 2`` and saves a
checkpoint there; ``--phase resume``, in a new process, restores it and
trains on to ``steps``, saving again at the end; ``--phase full`` trains from
0 to ``steps`` without stopping; ``--phase both`` runs the three in one
process and compares. The test suite runs ``train`` and ``resume`` as two
processes and checks the final parameters against ``full`` with
``assert_array_equal``: resuming changes no bit. That holds because
everything the next step depends on is either in the checkpoint or a pure
function of it: the mini-batch of step ``t`` is drawn with
``jax.random.fold_in(key(seed), t)``, so the data order needs no saving (a
data pipeline with its own state, a shuffling buffer say, would be saved too).

**What is saved**, with ``ocp.CheckpointManager`` under ``--out`` (default
``out/``, in ``checkpoint_resume/<step>/``): ``state``, the pytree
``{"params": ..., "opt_state": ...}`` (``ocp.args.StandardSave``), and
``meta``, a JSON of the run's settings (``ocp.args.JsonSave``). On resume the
settings must match: the schedule's length is one of them, and resuming a
400-step cosine with a 600-step one would not continue the same run, so a
mismatch is refused, naming the settings that differ.

**Why restore into an abstract target.** Without a target Orbax returns what
the files describe: dicts and lists. The optimizer state is NamedTuples
(``ScaleByAdamState``, ``Hyperparams``...) inside tuples, so a state restored
that way has another tree structure and ``tx.update`` cannot take it. The
target is ``jax.eval_shape(lambda k: init_state(k, tx), key)``: the structure, shapes and
dtypes a fresh run would have, built without computing (or allocating)
anything. Orbax then rebuilds those exact types, refuses a checkpoint whose
tree or shapes differ (an optimizer built differently, a wider layer), and
would place each array with the target's sharding on a device mesh. Orbax
*casts* to the target's dtypes rather than checking them, so
:func:`check_dtypes` compares the stored dtypes (``item_metadata``) with the
target's first: a float32 checkpoint is not silently restored into bfloat16.

Run it::

    python examples/checkpoint_resume.py --phase both --steps 400
    python examples/checkpoint_resume.py --phase train --steps 400
    python examples/checkpoint_resume.py --phase resume --steps 400

Things to try: ``--phase resume --steps 600`` after a 400-step ``train``
(refused: the schedule differs); ``ls out/checkpoint_resume/200/state`` to see
what Orbax wrote; ``--clip 0.1`` (clipping is active on most steps, and the
runs still agree). To resume into a *changed* optimizer (a transform added to
the chain, a layer added), restore without a target and call ``gc.restore_state``.
"""

from __future__ import annotations

import argparse
import functools
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import common
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

import gradchain as gc

TrainState = dict[str, Any]  # {"params": common.MlpParams, "opt_state": gc.OptState}
ROOT = Path(__file__).resolve().parent.parent


def make_optimizer(
    steps: int, learning_rate: float, warmup: int, weight_decay: float, clip: float
) -> gc.GradientTransformationExtraArgs:
    """Clipping, then AdamW on a warmup-cosine schedule that ends at ``steps``.

    Args:
      steps: the schedule's length, the whole run's.
      learning_rate: the peak learning rate.
      warmup: linear warmup steps from 0 to the peak.
      weight_decay: AdamW's decoupled weight decay.
      clip: the maximum global gradient norm.

    Returns:
      The transformation.
    """
    schedule = gc.warmup_cosine_decay_schedule(0.0, learning_rate, warmup, decay_steps=steps)
    return gc.chain(gc.clip_by_global_norm(clip), gc.adamw(schedule, weight_decay=weight_decay))


def init_state(key: jax.Array, tx: gc.GradientTransformationExtraArgs) -> TrainState:
    """Fresh parameters and optimizer state (also traced by ``jax.eval_shape``)."""
    params = common.init_mlp(key)
    return {"params": params, "opt_state": tx.init(params)}


def _dotted(path: tuple[Any, ...]) -> str:
    """A key path as Orbax names its arrays: ``opt_state.1.0.mu.0.w``."""
    parts = []
    for key in path:
        for attr in ("key", "idx", "name"):  # DictKey, SequenceKey, GetAttrKey
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
    return ".".join(parts)


def check_dtypes(stored: Any, target: Any) -> None:
    """Raises if a stored array's dtype differs from the target's (Orbax would cast it).

    Args:
      stored: the checkpoint's tree metadata (``ArrayMetadata`` leaves).
      target: the abstract target (``jax.ShapeDtypeStruct`` leaves).

    Raises:
      ValueError: naming every array whose dtypes differ.
    """
    saved = {_dotted(p): m.dtype for p, m in jax.tree_util.tree_flatten_with_path(stored)[0]}
    wrong = [
        f"{name}: stored {saved[name]}, target {t.dtype}"
        for p, t in jax.tree_util.tree_flatten_with_path(target)[0]
        if (name := _dotted(p)) in saved and np.dtype(saved[name]) != np.dtype(t.dtype)
    ]
    if wrong:
        raise ValueError(
            "checkpoint_resume: the checkpoint's dtypes differ from the target's; Orbax would "
            "cast them silently: " + "; ".join(wrong)
        )


def make_train_step(
    tx: gc.GradientTransformationExtraArgs, data: common.Split, batch_size: int, seed: int
) -> Any:
    """One jitted step; the mini-batch of step ``t`` depends on ``(seed, t)`` only."""
    batch_key = jax.random.key(seed + 1)

    def loss_fn(params: common.MlpParams, x: jax.Array, y: jax.Array) -> jax.Array:
        return common.cross_entropy(common.mlp_logits(params, x), y)

    @functools.partial(jax.jit, donate_argnums=0)  # parameters and state updated in place
    def train_step(state: TrainState, step: jax.Array) -> tuple[TrainState, jax.Array]:
        key = jax.random.fold_in(batch_key, step)
        idx = jax.random.choice(key, data.x_train.shape[0], (batch_size,))
        loss, grads = jax.value_and_grad(loss_fn)(
            state["params"], data.x_train[idx], data.y_train[idx]
        )
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        return {"params": gc.apply_updates(state["params"], updates), "opt_state": opt_state}, loss

    return train_step


def run(state: TrainState, train_step: Any, start: int, stop: int) -> tuple[TrainState, float]:
    """Steps ``start .. stop - 1``; returns the state and the last loss."""
    loss = jnp.zeros([], jnp.float32)
    for step in range(start, stop):
        state, loss = train_step(state, jnp.asarray(step, jnp.int32))
    return state, float(loss)


def save(directory: Path, step: int, state: TrainState, settings: dict[str, Any]) -> None:
    """Writes ``state`` and ``settings`` as checkpoint ``step`` under ``directory``."""
    with ocp.CheckpointManager(directory) as manager:
        manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(settings)
            ),
        )
        manager.wait_until_finished()
    print(f"saved step {step} to {directory / str(step)}")


def restore(directory: Path, abstract: TrainState, settings: dict[str, Any]) -> tuple[int, Any]:
    """The latest checkpoint under ``directory``, restored into ``abstract``.

    Args:
      directory: the CheckpointManager's folder.
      abstract: the target, from ``jax.eval_shape``.
      settings: this run's settings; the checkpoint's must be equal.

    Returns:
      The checkpoint's step and the restored state.

    Raises:
      FileNotFoundError: if there is no checkpoint.
      ValueError: if the settings or the dtypes differ.
    """
    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    with ocp.CheckpointManager(directory, item_handlers=handlers) as manager:
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(
                f"checkpoint_resume: no checkpoint in {directory}; run --phase train first."
            )
        saved = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        differ = {k: (saved.meta.get(k), v) for k, v in settings.items() if saved.meta.get(k) != v}
        if differ:
            raise ValueError(
                f"checkpoint_resume: the checkpoint at step {step} was written with other "
                f"settings, (saved, now): {differ}. Resume with the same flags, or train anew."
            )
        check_dtypes(manager.item_metadata(step)["state"], abstract)
        restored = manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
        )
    return step, restored.state


def main(
    phase: str = "both",
    steps: int = 400,
    batch_size: int = 64,
    learning_rate: float = 1e-2,
    warmup: int = 40,
    weight_decay: float = 1e-4,
    clip: float = 1.0,
    seed: int = 0,
    out: str | Path = ROOT / "out",
) -> dict[str, Any]:
    """Trains, checkpoints and resumes (see the module docstring for the phases).

    Args:
      phase: ``"train"``, ``"resume"``, ``"full"`` or ``"both"``.
      steps: the whole run's length (the checkpoint is at ``steps // 2``).
      batch_size: images per step.
      learning_rate: the schedule's peak.
      warmup: the schedule's warmup steps.
      weight_decay: AdamW's decoupled weight decay.
      clip: the maximum global gradient norm.
      seed: seeds the parameters, the data split and the batches.
      out: the output folder; checkpoints go to ``<out>/checkpoint_resume``.

    Returns:
      ``state`` (the final TrainState), ``step`` (its step), ``loss`` (the
      last step's), ``val_accuracy``, ``learning_rate`` (the state's next
      scheduled value), ``directory`` (the checkpoints' folder); for
      ``"both"`` also ``equal`` (whether the resumed parameters equal the
      uninterrupted run's bit for bit).

    Raises:
      ValueError: for an unknown phase, or a checkpoint of other settings.
    """
    if phase not in ("train", "resume", "full", "both"):
        raise ValueError(f"phase must be train, resume, full or both; got {phase!r}.")
    if steps < 2:
        raise ValueError(f"steps must be >= 2 (the checkpoint is at steps // 2); got {steps}.")
    if phase == "both":
        main("train", steps, batch_size, learning_rate, warmup, weight_decay, clip, seed, out)
        resumed = main(
            "resume", steps, batch_size, learning_rate, warmup, weight_decay, clip, seed, out
        )
        full = main("full", steps, batch_size, learning_rate, warmup, weight_decay, clip, seed, out)
        equal = all(
            np.array_equal(a, b)
            for a, b in zip(
                jax.tree.leaves(resumed["state"]), jax.tree.leaves(full["state"]), strict=True
            )
        )
        print(f"resumed == uninterrupted, bit for bit: {equal}")
        return {**resumed, "equal": equal}

    settings = dict(
        steps=steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        warmup=warmup,
        weight_decay=weight_decay,
        clip=clip,
        seed=seed,
    )
    directory = (Path(out) / "checkpoint_resume").resolve()
    data = common.digits(seed)
    tx = make_optimizer(steps, learning_rate, warmup, weight_decay, clip)
    train_step = make_train_step(tx, data, batch_size, seed)
    key = jax.random.key(seed)
    middle = steps // 2

    if phase == "resume":
        abstract = jax.eval_shape(lambda k: init_state(k, tx), key)
        start, state = restore(directory, abstract, settings)
        hp = gc.get_hyperparams(state["opt_state"])
        print(
            f"restored step {start}: next learning rate {float(hp['learning_rate']):.4g}, "
            f"Adam's step counter {int(state['opt_state'][1][0].step)}"
        )
    else:
        start, state = 0, init_state(key, tx)
    stop = middle if phase == "train" else steps
    state, loss = run(state, train_step, start, stop)
    if phase == "train":
        shutil.rmtree(directory, ignore_errors=True)  # a fresh run: no stale later steps
    if phase in ("train", "resume"):
        save(directory, stop, state, settings)
    logits = common.mlp_logits(state["params"], data.x_val)
    val_accuracy = float(common.accuracy(logits, data.y_val))
    next_lr = float(gc.get_hyperparams(state["opt_state"])["learning_rate"])
    print(
        f"[{phase}] steps {start}..{stop}: last loss {loss:.4f}, "
        f"validation accuracy {val_accuracy:.3f}, next learning rate {next_lr:.4g}"
    )
    return dict(
        state=state,
        step=stop,
        loss=loss,
        val_accuracy=val_accuracy,
        learning_rate=next_lr,
        directory=directory,
    )


def _parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Checkpoint and resume with Orbax.")
    parser.add_argument(
        "--phase", choices=("train", "resume", "full", "both"), default="both", help="default both"
    )
    parser.add_argument("--steps", type=int, default=400, help="whole run (default 400)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    parser.add_argument("--learning-rate", type=float, default=1e-2, help="peak (default 1e-2)")
    parser.add_argument("--warmup", type=int, default=40, help="warmup steps (default 40)")
    parser.add_argument("--weight-decay", type=float, default=1e-4, help="default 1e-4")
    parser.add_argument("--clip", type=float, default=1.0, help="max gradient norm (1.0)")
    parser.add_argument("--seed", type=int, default=0, help="default 0")
    parser.add_argument("--out", type=Path, default=ROOT / "out", help="output folder (out/)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = _parse_args()
    main(
        phase=args.phase,
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        warmup=args.warmup,
        weight_decay=args.weight_decay,
        clip=args.clip,
        seed=args.seed,
        out=args.out,
    )
