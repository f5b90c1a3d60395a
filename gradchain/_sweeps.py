"""Hyperparameter sweeps: many training runs in one compiled program, under ``vmap``.

Every numeric hyperparameter of a gradchain optimizer is data in its state
(see :func:`get_hyperparams`), so one optimizer, initialised once per run,
serves every configuration: :func:`set_hyperparams` writes each run's values
into its state, and ``vmap`` trains all the runs side by side in one ``jit``,
traced and compiled once. Hyperparameters the state cannot hold as constants
(a schedule's own peak value, say) are swept through a factory instead: the
factory is called with traced values inside the vmapped function, which is
still one trace and one compilation.

The training loop is ``lax.scan`` over steps: over a pre-batched array (one
batch per step; the fast path) or over the same full batch every step.
``chunk_size`` bounds memory: runs go through ``lax.map`` in vmapped chunks
of that many, still one program.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradchain._base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    Params,
    apply_updates,
    call_update,
)
from gradchain._hyperparams import _named, set_hyperparams

LossFn = Callable[[Params, Any], jax.Array]
Factory = Callable[..., GradientTransformation | GradientTransformationExtraArgs]


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """What :func:`sweep` measured, as NumPy arrays.

    Runs are configurations times seeds. Configuration ``c`` has the values
    ``{name: configs[name][c]}``; seed ``s`` is ``seeds[s]``.

    Attributes:
      configs: hyperparameter name -> float64[C], the values of each configuration.
      seeds: int64[S], the seeds each configuration was trained with.
      losses: float32[C, S, T], the training loss at each step, taken on that
        step's batch before its update (NaN or inf where a run diverged).
      metrics: name -> float32[C, S] at the final parameters: ``"loss"`` is
        ``loss_fn`` on the last batch (the full batch, for ``data=``), then
        what ``eval_fn`` returned.
      params: the final parameters, each leaf with leading axes ``[C, S]``,
        if ``return_params=True``; else None.
      compile_seconds: time to trace, lower and compile the one program.
      run_seconds: time to run it, to ``block_until_ready``.
    """

    configs: dict[str, np.ndarray]
    seeds: np.ndarray
    losses: np.ndarray
    metrics: dict[str, np.ndarray]
    params: Any
    compile_seconds: float
    run_seconds: float

    @property
    def mean_losses(self) -> np.ndarray:
        """float32[C, T]: the loss curves averaged over seeds."""
        return self.losses.mean(axis=1)

    def scores(self, metric: str = "loss") -> np.ndarray:
        """float64[C]: ``metric`` averaged over seeds; inf where any seed is not finite.

        Args:
          metric: a key of :attr:`metrics`.

        Raises:
          KeyError: if ``metric`` is not one of :attr:`metrics`.
        """
        if metric not in self.metrics:
            raise KeyError(f"SweepResult: no metric {metric!r}; it has {sorted(self.metrics)}.")
        values = self.metrics[metric].astype(np.float64)
        finite = np.isfinite(values).all(axis=1)
        return np.where(finite, values.mean(axis=1), np.inf)

    def best_index(self, metric: str = "loss", *, mode: str = "min") -> int:
        """The configuration whose seed-mean ``metric`` is lowest (``mode="max"``: highest).

        Runs that diverged (a non-finite metric on any seed) never win.

        Raises:
          KeyError: if ``metric`` is not one of :attr:`metrics`.
          ValueError: if ``mode`` is neither ``"min"`` nor ``"max"``, or every
            configuration diverged.
        """
        if mode not in ("min", "max"):
            raise ValueError(f"SweepResult.best: mode must be 'min' or 'max'; got {mode!r}.")
        scores = self.scores(metric)
        if not np.isfinite(scores).any():
            raise ValueError(
                f"SweepResult.best: every configuration has a non-finite {metric!r} (all "
                f"diverged). Try smaller learning rates or fewer steps."
            )
        if mode == "max":
            scores = np.where(np.isfinite(scores), -scores, np.inf)
        return int(np.argmin(scores))

    def best(self, metric: str = "loss", *, mode: str = "min") -> dict[str, float]:
        """The hyperparameters of :meth:`best_index`, as Python floats.

        Args:
          metric: a key of :attr:`metrics`, averaged over seeds.
          mode: ``"min"`` for a loss, ``"max"`` for an accuracy.

        Returns:
          ``{name: value}`` of the best configuration.
        """
        index = self.best_index(metric, mode=mode)
        return {name: float(values[index]) for name, values in self.configs.items()}


def _values(name: str, values: Any) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype == np.bool_ or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        raise TypeError(
            f"sweep: the values of {name!r} must be real numbers; got {array.dtype} "
            f"{values!r:.80}. Only numeric hyperparameters can be swept in one program."
        )
    if array.ndim > 1:
        raise ValueError(f"sweep: the values of {name!r} must be 1-D; got shape {array.shape}.")
    array = array.reshape(-1).astype(np.float64)
    if array.size == 0 or not np.isfinite(array).all():
        raise ValueError(f"sweep: {name!r} needs at least one value, all finite; got {values!r}.")
    return array


def _configs(hyperparams: Mapping[str, Any], grid: bool) -> dict[str, np.ndarray]:
    if not hyperparams:
        raise ValueError("sweep: `hyperparams` is empty; give at least one name and its values.")
    columns = {name: _values(name, v) for name, v in hyperparams.items()}
    if grid:
        rows = list(itertools.product(*columns.values()))
        return {name: np.array([r[i] for r in rows]) for i, name in enumerate(columns)}
    lengths = {name: len(v) for name, v in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(
            f"sweep: with grid=False the value arrays are zipped, so they must have one length; "
            f"got {lengths}. Pass grid=True for every combination."
        )
    return columns


def _check_factory_names(factory: Factory, names: Sequence[str]) -> None:
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    keyword = {
        n: p
        for n, p in parameters.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    for name in names:
        if name not in keyword:
            raise KeyError(
                f"sweep: the factory {getattr(factory, '__name__', factory)!r} takes no argument "
                f"{name!r}; its arguments are {sorted(keyword)}."
            )
        default = keyword[name].default
        if isinstance(default, bool | str):
            raise TypeError(
                f"sweep: {name!r} is not a numeric hyperparameter of the factory (its default is "
                f"{default!r}); only numbers can be swept in one program. Sweep it with one "
                f"sweep call per value."
            )


def _check_state_names(tx: Any, params: Any, names: Sequence[str]) -> None:
    state = jax.eval_shape(tx.init, params)
    named = _named(state)
    constant = sorted(n for n, (_, e) in named.items() if e.attr != "scheduled")
    for name in names:
        if name not in named:
            raise KeyError(
                f"sweep: the optimizer's state has no numeric hyperparameter {name!r}; it has "
                f"{constant}. Flags and integer sizes are not swept; to sweep an argument the "
                f"state does not hold, pass a factory such as `lambda {name}: gc.adamw(...)`."
            )
        if named[name][1].attr == "scheduled":
            raise ValueError(
                f"sweep: {name!r} follows a schedule in this optimizer, so its value is recomputed "
                f"every step and cannot be set per run. Sweep the schedule's own parameters "
                f"through a factory, e.g. `lambda peak: gc.adamw(gc.cosine_decay_schedule(peak, "
                f"1000))` with hyperparams={{'peak': [...]}}."
            )


def _leading(where: str, tree: Any) -> int:
    lengths = {int(np.shape(leaf)[0]) if np.ndim(leaf) else -1 for leaf in jax.tree.leaves(tree)}
    if len(lengths) != 1 or -1 in lengths:
        raise ValueError(
            f"sweep: every leaf of {where} needs the same leading (step) axis; got leading "
            f"lengths {sorted(lengths)} (-1: a scalar leaf)."
        )
    return next(iter(lengths))


def sweep(
    optimizer: GradientTransformation | GradientTransformationExtraArgs | Factory,
    loss_fn: LossFn,
    init_params: Params | Callable[[jax.Array], Params],
    hyperparams: Mapping[str, Any],
    *,
    data: Any = None,
    batches: Any = None,
    steps: int | None = None,
    seeds: Sequence[int] = (0,),
    grid: bool = True,
    chunk_size: int | None = None,
    eval_fn: Callable[[Params], jax.Array | Mapping[str, jax.Array]] | None = None,
    return_params: bool = False,
) -> SweepResult:
    """Trains every configuration of hyperparameters at once, in one compiled program.

    Each run starts from ``init_params`` (or ``init_params(key)`` for its
    seed) and takes ``steps`` updates ``params += update(grad loss_fn(params,
    batch))``; the runs of all configurations and seeds are vmapped side by
    side. Two ways to name what is swept:

    * ``optimizer`` a transformation: names are those of
      :func:`get_hyperparams` (``"learning_rate"``, ``"opt/weight_decay"``);
      the optimizer is initialised per run and each run's values written with
      :func:`set_hyperparams`. Scheduled hyperparameters cannot be set.
    * ``optimizer`` a factory (``gc.adamw``, ``lambda peak: gc.sgd(...)``):
      names are its keyword arguments, passed as traced float32 scalars, so a
      schedule's peak value or any number the factory does arithmetic with can
      be swept. Integer sizes (``warmup_steps``) and flags cannot.

    The update receives ``value=`` (the loss) when the optimizer takes extra
    arguments, so value-based optimizers (``polyak_sgd``) sweep too.

    Args:
      optimizer: a gradient transformation, or a factory returning one.
      loss_fn: ``loss_fn(params, batch) -> scalar``.
      init_params: the initial parameters, or a function of a PRNG key
        returning them (needed for several seeds to start differently).
      hyperparams: name -> 1-D array of values.
      data: a full batch, used at every step (then ``steps`` is required).
      batches: a pytree whose leaves have a leading axis of one batch per
        step, scanned over; or a function of a PRNG key returning one (a
        shuffle per seed). Give exactly one of ``data`` and ``batches``.
      steps: updates per run; for ``batches`` it defaults to their length.
      seeds: the seeds each configuration is trained with; each gives the
        key ``jax.random.key(seed)``, split for the init and the batches.
      grid: every combination of the values (True), or the arrays zipped
        (False; they must then have one length).
      chunk_size: at most this many runs vmapped at once (``lax.map`` over
        chunks, one program); None vmaps all the runs together.
      eval_fn: ``eval_fn(params)`` at the end of each run: a scalar (metric
        ``"eval"``) or a dict of scalars (metrics by key).
      return_params: keep every run's final parameters in the result.

    Returns:
      A :class:`SweepResult`.

    Raises:
      KeyError: a name the optimizer has no numeric hyperparameter (or
        factory argument) for; the message lists those it has.
      ValueError: mismatched lengths with ``grid=False``, a scheduled name,
        empty or non-finite values, neither or both of ``data``/``batches``.
      TypeError: non-numeric values, or a factory argument that is a flag.

    Example:
      >>> import jax.numpy as jnp
      >>> import gradchain as gc
      >>> def loss(params, batch):
      ...     return jnp.mean((batch["x"] * params["w"] - batch["y"]) ** 2)
      >>> data = {"x": jnp.arange(1.0, 5.0), "y": 2 * jnp.arange(1.0, 5.0)}
      >>> result = gc.sweep(gc.sgd(0.1), loss, {"w": jnp.zeros([])},
      ...                   {"learning_rate": [0.001, 0.01, 0.1, 0.2]}, data=data, steps=20)
      >>> result.losses.shape  # [configuration, seed, step]
      (4, 1, 20)
      >>> result.best()
      {'learning_rate': 0.1}
      >>> bool(result.metrics["loss"][3, 0] > 1e6)  # 0.2 is past 2 / curvature: diverged
      True
    """
    fn = "sweep"
    is_tx = isinstance(optimizer, GradientTransformation | GradientTransformationExtraArgs)
    if not is_tx and not callable(optimizer):
        raise TypeError(
            f"{fn}: `optimizer` must be a gradient transformation or a factory returning one; "
            f"got {type(optimizer).__name__}."
        )
    configs = _configs(hyperparams, grid)
    names = list(configs)
    seed_array = np.asarray(list(seeds), np.int64).reshape(-1)
    if seed_array.size == 0:
        raise ValueError(f"{fn}: `seeds` is empty; give at least one seed, e.g. seeds=(0,).")
    if seed_array.size > 1 and not callable(init_params) and not callable(batches):
        raise ValueError(
            f"{fn}: {seed_array.size} seeds but `init_params` is a fixed tree and `batches` is "
            f"not a function of a key, so every seed would train the same run. Pass "
            f"`init_params=lambda key: ...` (or a key-dependent `batches`)."
        )
    if (data is None) == (batches is None):
        raise ValueError(
            f"{fn}: give exactly one of `data=` (a full batch every step) and `batches=` (one "
            f"batch per step along the leading axis)."
        )
    if data is not None and steps is None:
        raise ValueError(f"{fn}: with `data=`, pass `steps=` (the number of updates per run).")
    if batches is not None and not callable(batches):
        length = _leading("`batches`", batches)
        if steps is not None and steps != length:
            raise ValueError(
                f"{fn}: `steps={steps}` but `batches` holds {length} batches; they must agree "
                f"(or leave `steps` out)."
            )
        steps = length
    if steps is not None and steps < 1:
        raise ValueError(f"{fn}: `steps` must be a positive integer; got {steps}.")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(
            f"{fn}: `chunk_size` must be a positive integer or None; got {chunk_size}."
        )

    def make_params(key: jax.Array) -> Params:
        return init_params(key) if callable(init_params) else init_params

    params_shape = jax.eval_shape(make_params, jax.random.key(0))
    if is_tx:
        _check_state_names(optimizer, params_shape, names)
    else:
        _check_factory_names(optimizer, names)

    def build(hp: dict[str, jax.Array]) -> Any:
        if isinstance(optimizer, GradientTransformation | GradientTransformationExtraArgs):
            return optimizer
        try:
            return optimizer(**hp)
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"{fn}: the factory failed when called with traced values for {names}: {err} "
                f"A swept argument must be a number the factory computes with, not a flag or an "
                f"integer size (such as `warmup_steps`), which need one sweep per value."
            ) from err

    def run(hp: dict[str, jax.Array], key: jax.Array, data_in: Any) -> Any:
        init_key, data_key = jax.random.split(key)
        params = make_params(init_key)
        tx = build(hp)
        opt_state = tx.init(params)
        if is_tx:
            opt_state = set_hyperparams(opt_state, hp)
        xs = data_in
        if callable(batches):
            xs = batches(data_key)

        def step(carry: Any, batch: Any) -> Any:
            params, opt_state = carry
            batch = data_in if data is not None else batch
            loss, grads = jax.value_and_grad(loss_fn)(params, batch)
            updates, opt_state = call_update(tx, grads, opt_state, params, {"value": loss})
            return (apply_updates(params, updates), opt_state), loss

        (params, _), losses = jax.lax.scan(
            step, (params, opt_state), None if data is not None else xs, length=steps
        )
        last = data_in if data is not None else jax.tree.map(lambda x: x[-1], xs)
        metrics = {"loss": loss_fn(params, last)}
        if eval_fn is not None:
            extra = eval_fn(params)
            metrics.update(extra if isinstance(extra, Mapping) else {"eval": extra})
        metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
        return losses.astype(jnp.float32), metrics, params if return_params else None

    num_configs, num_seeds = len(configs[names[0]]), seed_array.size
    hp_runs = {n: jnp.asarray(np.repeat(v, num_seeds), jnp.float32) for n, v in configs.items()}
    keys = jax.vmap(jax.random.key)(jnp.asarray(np.tile(seed_array, num_configs), jnp.uint32))
    data_in = data if data is not None else (None if callable(batches) else batches)

    def all_runs(hp_runs: dict[str, jax.Array], keys: jax.Array, data_in: Any) -> Any:
        def one(args: tuple[dict[str, jax.Array], jax.Array]) -> Any:
            return run(args[0], args[1], data_in)

        if chunk_size is None:
            return jax.vmap(one)((hp_runs, keys))
        return jax.lax.map(one, (hp_runs, keys), batch_size=chunk_size)

    start = time.perf_counter()
    compiled = jax.jit(all_runs).lower(hp_runs, keys, data_in).compile()
    compile_seconds = time.perf_counter() - start
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(hp_runs, keys, data_in))
    run_seconds = time.perf_counter() - start
    losses, metrics, params = out

    def per_config(x: Any) -> np.ndarray:
        x = np.asarray(x)
        return x.reshape(num_configs, num_seeds, *x.shape[1:])

    return SweepResult(
        configs=configs,
        seeds=seed_array,
        losses=per_config(losses),
        metrics={k: per_config(v) for k, v in metrics.items()},
        params=None if params is None else jax.tree.map(per_config, params),
        compile_seconds=compile_seconds,
        run_seconds=run_seconds,
    )
