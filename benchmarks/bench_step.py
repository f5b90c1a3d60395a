"""One optimizer step, every contender side by side: time, compile time, kernels, memory.

The contenders (``step_contenders.py``): the roofline kernel; Optax's
``adamw`` and 5-link chain; gradchain's ``adamw`` and 5-link chain, on the
tree and, when this gradchain has ``flatten_params``, on its flat buffers;
torch's ``AdamW`` (fused and foreach, on CPU) when ``import torch`` works.
They run in one process on the same parameter trees, interleaved, and each is
reported as a ratio to the roofline T and to Optax's same optimizer.

Scenarios (``leaves x elements per leaf``, float32): one leaf of 1M, 10M and
50M; 10M split into 10, 100 and 1000 equal leaves; 1000 tiny leaves of 1000.

Per scenario and contender:

* first call: a fresh ``jax.jit`` of a fresh closure, timed from the call to
  ``block_until_ready``: trace, lowering, compilation and the first step
  (torch: building the optimizer and its first step). Median of
  ``--compile-rounds``.
* step: after ``--warmups`` calls, the median, min and max of ``--rounds``
  further calls, each timed to ``block_until_ready``, parameters and state
  donated. Every round runs every contender once, starting one later in the
  table each round, so a burst of load lands on all of them.
* kernels: the fusions in the compiled HLO text (JAX contenders).
* state: optimizer state bytes per parameter.
* memory (a fresh process per contender and scenario, ``--probe``): XLA's
  ``compiled.memory_analysis()`` (peak and temp bytes), and the peak RSS
  (``VmHWM``): over the whole run (making the arrays, compiling, one step)
  minus the peak after imports, and of the step alone over the RSS just
  before it (the peak reset through ``/proc/self/clear_refs``).

Before anything is timed, every contender's parameters after the first step
are checked against Optax's same optimizer (relative difference at most
``AGREEMENT``). A table of optimizer-state options (bytes per parameter on a
GPT-2-small-shaped tree, by ``jax.eval_shape``) and the goals of issue 8 with
their measured distance end the report.

Run ``python benchmarks/bench_step.py`` (about 12 minutes on 2 quiet CPU cores;
writes ``benchmarks/results/step_cpu.md``) or ``--quick`` (tiny sizes, a
seconds-long smoke run that the test suite runs).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime
import importlib.metadata
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import step_contenders as sc

import gradchain as gc

AGREEMENT = 1e-6  # max |a - b| / max |b| over the parameters after the first step
RESULTS = Path(__file__).resolve().parent / "results" / "step_cpu.md"


@dataclasses.dataclass(frozen=True)
class Scenario:
    """A parameter tree: ``leaves`` float32 vectors of ``size`` elements."""

    leaves: int
    size: int

    @property
    def name(self) -> str:
        """``"<leaves>x<size>"`` with k/M suffixes, e.g. ``"1000x10k"``."""
        return f"{self.leaves}x{_count(self.size)}"

    @property
    def params(self) -> int:
        """The number of parameters."""
        return self.leaves * self.size


def _count(n: int) -> str:
    for unit, scale in (("M", 1_000_000), ("k", 1_000)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


FULL = [
    Scenario(1, 1_000_000),
    Scenario(1, 10_000_000),
    Scenario(1, 50_000_000),
    Scenario(10, 1_000_000),
    Scenario(100, 100_000),
    Scenario(1000, 10_000),
    Scenario(1000, 1_000),
]
QUICK = [Scenario(1, 10_000), Scenario(10, 1_000)]
SCENARIOS = {s.name: s for s in FULL + QUICK}


def make_tree(scenario: Scenario, seed: int) -> dict[str, jax.Array]:
    """Standard normal float32 leaves ``{"leaf_0000": ..., ...}``.

    Args:
      scenario: the shape of the tree.
      seed: the NumPy seed.

    Returns:
      The tree.
    """
    rng = np.random.default_rng(seed)
    return {
        f"leaf_{i:04d}": jnp.asarray(rng.standard_normal(scenario.size, dtype=np.float32))
        for i in range(scenario.leaves)
    }


def count_fusions(hlo_text: str) -> int:
    """The fusion instructions of a compiled HLO module (each one kernel on CPU).

    Args:
      hlo_text: ``compiled.as_text()``.

    Returns:
      The number of instructions whose opcode is ``fusion``.
    """
    return sum(1 for line in hlo_text.splitlines() if " fusion(" in line and " = " in line)


# -- timing ----------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    """One contender on one scenario.

    Attributes:
      scenario: the scenario's name.
      contender: the contender's name.
      optimizer: ``"adamw"`` or ``"chain5"``.
      first_call: seconds of each first call.
      step: seconds of each timed step.
      kernels: fusions in the compiled step, None for torch.
      state_bytes: optimizer state bytes per parameter.
      agreement: relative difference from Optax after the first step.
    """

    scenario: str
    contender: str
    optimizer: str
    first_call: list[float]
    step: list[float]
    kernels: int | None
    state_bytes: float
    agreement: float


def rotated(table: Sequence[sc.Contender], r: int) -> list[sc.Contender]:
    """The table starting at entry ``r`` (modulo its length): round ``r``'s order."""
    k = r % len(table)
    return [*table[k:], *table[:k]]


def relative_difference(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    """``max |a - b| / max |b|`` over lists of leaves.

    Args:
      a: leaves.
      b: the reference leaves, same shapes.

    Returns:
      The relative difference.
    """
    num = max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True))
    den = max(float(np.max(np.abs(y))) for y in b)
    return num / den


def _timed(built: sc.Built, params: Any, state: Any, grads: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = built.block(built.step(params, state, grads))
    return time.perf_counter() - start, out


def run_scenario(
    scenario: Scenario,
    table: Sequence[sc.Contender],
    rounds: int,
    compile_rounds: int,
    warmups: int,
    log: Callable[[str], None] = print,
) -> list[Result]:
    """Times every contender on one scenario, interleaved.

    Args:
      scenario: the tree.
      table: the contenders; must include ``"optax adamw"`` and ``"optax chain5"``.
      rounds: timed step rounds.
      compile_rounds: first-call rounds.
      warmups: untimed steps before the timed ones.
      log: where progress lines go.

    Returns:
      One result per contender, in table order.

    Raises:
      AssertionError: if a contender's first step disagrees with Optax's.
    """
    params, grads = make_tree(scenario, 0), make_tree(scenario, 1)
    names = [c.name for c in table]
    first: dict[str, list[float]] = {n: [] for n in names}
    built: dict[str, sc.Built] = {}
    grads_native: dict[str, Any] = {}
    carry: dict[str, tuple[Any, Any]] = {}
    agreement: dict[str, float] = {}
    state_bytes: dict[str, float] = {}
    for r in range(compile_rounds):
        for c in rotated(table, r):
            b = built[c.name] = c.build(params)
            if c.name not in grads_native:
                grads_native[c.name] = b.grads_native(grads)
            carry.pop(c.name, None)  # free the last round's arrays first
            p = b.to_native(params)
            s = b.block(b.init(p))
            seconds, carry[c.name] = _timed(b, p, s, grads_native[c.name])
            first[c.name].append(seconds)
        if r == 0:  # every contender is one step in from the same start
            leaves = {n: built[n].to_leaves(carry[n][0]) for n in names}
            for c in table:
                ref = leaves[f"optax {c.optimizer}"]
                agreement[c.name] = relative_difference(leaves[c.name], ref)
                state_bytes[c.name] = built[c.name].state_bytes(carry[c.name][1]) / scenario.params
            del leaves
            bad = {n: d for n, d in agreement.items() if not d <= AGREEMENT}
            assert not bad, f"{scenario.name}: first steps disagree with Optax's: {bad}"
        log(f"  {scenario.name}: first-call round {r + 1}/{compile_rounds} done")

    kernels: dict[str, int | None] = {}
    for c in table:
        b = built[c.name]
        if b.jitted:
            p, s = carry[c.name]
            lowered = b.step.lower(p, s, grads_native[c.name])  # type: ignore[attr-defined]
            kernels[c.name] = count_fusions(lowered.compile().as_text())
        else:
            kernels[c.name] = None

    steps: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmups + rounds):
        for c in rotated(table, r):
            p, s = carry.pop(c.name)
            seconds, carry[c.name] = _timed(built[c.name], p, s, grads_native[c.name])
            if r >= warmups:
                steps[c.name].append(seconds)
    log(f"  {scenario.name}: {rounds} step rounds done")
    return [
        Result(
            scenario.name,
            c.name,
            c.optimizer,
            first[c.name],
            steps[c.name],
            kernels[c.name],
            state_bytes[c.name],
            agreement[c.name],
        )
        for c in table
    ]


@dataclasses.dataclass(frozen=True)
class Ratios:
    """One result's ratios.

    Attributes:
      step_over_t: median step / the roofline's median step.
      step_over_optax: median step / Optax's (same optimizer) median step.
      first_over_optax: median first call / Optax's median first call.
    """

    step_over_t: float
    step_over_optax: float
    first_over_optax: float


def ratios(results: Sequence[Result]) -> dict[tuple[str, str], Ratios]:
    """Every result's ratios, keyed by ``(scenario, contender)``.

    Args:
      results: the results of one or more scenarios, each with its roofline
        and Optax contenders.

    Returns:
      The ratios.
    """
    by = {(r.scenario, r.contender): r for r in results}
    out = {}
    for r in results:
        roof = by[(r.scenario, "roofline")]
        ref = by[(r.scenario, f"optax {r.optimizer}")]
        out[(r.scenario, r.contender)] = Ratios(
            statistics.median(r.step) / statistics.median(roof.step),
            statistics.median(r.step) / statistics.median(ref.step),
            statistics.median(r.first_call) / statistics.median(ref.first_call),
        )
    return out


# -- memory, in a fresh process --------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Memory:
    """One step's memory in a fresh process, in bytes.

    Attributes:
      scenario: the scenario's name.
      contender: the contender's name.
      xla_peak: ``memory_analysis().peak_memory_in_bytes`` (None for torch).
      xla_temp: ``memory_analysis().temp_size_in_bytes`` (None for torch).
      rss_run: peak RSS of the whole run (arrays, compilation, one step)
        minus the peak RSS after imports.
      rss_step: peak RSS during the step minus the RSS just before it (None
        where the peak cannot be reset).
    """

    scenario: str
    contender: str
    xla_peak: int | None
    xla_temp: int | None
    rss_run: int
    rss_step: int | None


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak RSS (Linux >= 4.0)
    except OSError:
        return False
    return True


def probe(contender: str, scenario: Scenario) -> Memory:
    """Measures one step of one contender in this (fresh) process.

    Args:
      contender: the contender's name.
      scenario: the tree.

    Returns:
      The measurements.
    """
    table, _ = sc.contenders(torch=contender.startswith("torch"))
    (c,) = [c for c in table if c.name == contender]
    # VmHWM, not getrusage: a child process's ru_maxrss starts at its parent's peak RSS
    # (inherited through fork and kept across exec), so under a big parent it reads nothing.
    baseline = _status("VmHWM")
    params = make_tree(scenario, 0)
    b = c.build(params)
    p = b.to_native(params)
    del params
    grads = make_tree(scenario, 1)
    g = b.grads_native(grads)
    del grads
    s = b.block(b.init(p))
    xla_peak = xla_temp = None
    step: Callable[[Any, Any, Any], Any] = b.step
    if b.jitted:
        compiled = b.step.lower(p, s, g).compile()  # type: ignore[attr-defined]
        analysis = compiled.memory_analysis()
        xla_peak, xla_temp = analysis.peak_memory_in_bytes, analysis.temp_size_in_bytes
        step = compiled
    run_peak = _status("VmHWM")
    before = _status("VmRSS")
    reset = _reset_peak_rss()
    b.block(step(p, s, g))
    step_peak = _status("VmHWM")
    return Memory(
        scenario.name,
        contender,
        xla_peak,
        xla_temp,
        max(run_peak, step_peak) - baseline,
        max(step_peak - before, 0) if reset else None,
    )


def run_probes(
    pairs: Sequence[tuple[str, str]], jobs: int, log: Callable[[str], None] = print
) -> list[Memory]:
    """Runs :func:`probe` for each ``(contender, scenario)`` in a fresh process.

    Args:
      pairs: ``(contender, scenario name)`` pairs.
      jobs: processes at once.
      log: where progress lines go.

    Returns:
      The measurements, in the order of ``pairs``.

    Raises:
      RuntimeError: if a probe fails.
    """

    def one(pair: tuple[str, str]) -> Memory:
        cmd = [sys.executable, __file__, "--probe", *pair]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"probe {pair} failed:\n{done.stderr[-3000:]}")
        return Memory(**json.loads(done.stdout.strip().splitlines()[-1]))

    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        out = list(pool.map(one, pairs))
    log(f"  memory: {len(out)} probes done")
    return out


# -- optimizer-state options -------------------------------------------------------------


def gpt2_small_shapes() -> dict[str, Any]:
    """GPT-2 small's parameter shapes (124M), as ShapeDtypeStructs: nothing is allocated.

    Returns:
      The tree.
    """

    def f32(*shape: int) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(shape, jnp.float32)

    d, layers = 768, 12
    block = {
        "ln1": f32(d),
        "qkv": f32(d, 3 * d),
        "qkv_bias": f32(3 * d),
        "proj": f32(d, d),
        "ln2": f32(d),
        "fc": f32(d, 4 * d),
        "fc_bias": f32(4 * d),
        "out": f32(4 * d, d),
    }
    return {"wte": f32(50257, d), "wpe": f32(1024, d), "blocks": [block] * layers, "ln_f": f32(d)}


def state_options() -> list[tuple[str, float, Any]]:
    """Optimizer-state options: ``(label, target bytes per parameter, transform)``.

    Options whose API this gradchain lacks are left out.

    Returns:
      The options.
    """
    bf16 = jnp.bfloat16
    options: list[tuple[str, float, Any]] = [
        ("optax adamw", 8, optax.adamw(sc.LR)),
        ("gradchain adamw (float32 moments)", 8, gc.adamw(sc.LR)),
        (
            "gradchain adamw(mu_dtype=bfloat16, nu_dtype=bfloat16)",
            4,
            gc.adamw(sc.LR, mu_dtype=bf16, nu_dtype=bf16),
        ),
    ]
    if "moment_rounding" in inspect.signature(gc.adamw).parameters:
        label = "gradchain adamw(..., bfloat16 moments, moment_rounding='stochastic')"
        tx = gc.adamw(sc.LR, mu_dtype=bf16, nu_dtype=bf16, moment_rounding="stochastic")
        options.append((label, 4, tx))
    quantize = getattr(gc, "quantize_state", None)
    if quantize is not None:
        options.append(("gradchain quantize_state(adamw) (8-bit)", 2, quantize(gc.adamw(sc.LR))))
    options.append(("gradchain adafactor", 0, gc.adafactor(sc.LR)))
    options.append(("optax adafactor", 0, optax.adafactor(sc.LR)))
    return options


def state_bytes_table() -> list[tuple[str, float, float]]:
    """Bytes per parameter of each state option on :func:`gpt2_small_shapes`.

    Returns:
      ``(label, target, measured)`` rows.
    """
    shapes = gpt2_small_shapes()
    n = sum(x.size for x in jax.tree.leaves(shapes))
    rows = []
    for label, target, tx in state_options():
        state = jax.eval_shape(tx.init, shapes)
        rows.append((label, target, sc._tree_bytes(state) / n))
    return rows


# -- the report --------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _versions() -> str:
    parts = [
        f"Python {platform.python_version()}",
        f"JAX {jax.__version__}",
        f"jaxlib {importlib.metadata.version('jaxlib')}",
        f"Optax {optax.__version__}",
        f"gradchain {gc.__version__}",
    ]
    try:
        import torch
    except ImportError:
        parts.append("torch absent")
    else:
        wait = os.environ.get("OMP_WAIT_POLICY", "default")
        parts.append(
            f"torch {torch.__version__} ({torch.get_num_threads()} threads, OMP_WAIT_POLICY={wait})"
        )
    return ", ".join(parts)


def _load() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def _t(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.0f} us"


def _bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    if n >= 2**20:
        return f"{n / 2**20:.0f} MiB"
    return f"{n / 2**10:.0f} KiB"


@dataclasses.dataclass(frozen=True)
class Goal:
    """One goal of issue 8 and its measurement.

    Attributes:
      goal: what is asked.
      where: the scenario and contender measured.
      measured: the measured value.
      target: the bound: met when ``measured <= target``.
    """

    goal: str
    where: str
    measured: float
    target: float

    @property
    def met(self) -> bool:
        """Whether the measured value is within the target."""
        return self.measured <= self.target


def goals(results: Sequence[Result], state_rows: Sequence[tuple[str, float, float]]) -> list[Goal]:
    """Each goal of issue 8 that this run measured.

    Args:
      results: the timing results.
      state_rows: the state-option rows.

    Returns:
      The goals.
    """
    rat = ratios(results)
    out = []
    gradchain = [r for r in results if r.contender.startswith("gradchain")]
    for r in gradchain:
        leaves = SCENARIOS[r.scenario].leaves
        x = rat[(r.scenario, r.contender)]
        where = f"{r.scenario}, {r.contender}"
        if leaves == 1 and r.optimizer == "adamw":
            out.append(Goal("one leaf: Adam/AdamW step <= 1.1 T", where, x.step_over_t, 1.1))
        if leaves >= 1000:
            out.append(Goal("1000 leaves: first call <= Optax / 5", where, x.first_over_optax, 0.2))
            out.append(Goal("1000 leaves: step <= Optax / 2", where, x.step_over_optax, 0.5))
    for label, target, measured in state_rows:
        if label.startswith("gradchain"):
            # 1% slack for step counts, hyperparameters and block scales; ~0 means <= 0.1.
            bound = target * 1.01 if target else 0.1
            goal = f"state <= {target:g} bytes/param" if target else "state ~0 bytes/param"
            out.append(Goal(goal, label, measured, bound))
    return out


def format_memory(memory: Sequence[Memory]) -> list[str]:
    """The memory section of the report, as Markdown lines (none without measurements).

    Args:
      memory: the fresh-process memory measurements.

    Returns:
      The lines.
    """
    if not memory:
        return []
    lines = [
        "",
        "Memory of one step, each in a fresh process. XLA: "
        "`compiled.memory_analysis()`, peak and temporaries, as XLA plans them. RSS run: "
        "peak resident memory of the whole process (making the arrays, compiling, one step) "
        "minus its peak after imports (`VmHWM`). RSS step: peak during the step minus the "
        "RSS just before it (parameters, gradients and state already live; torch allocates "
        "its moments in its first step; memory the allocator reuses does not show).",
        "",
        "| scenario | contender | XLA peak | XLA temp | RSS run | RSS step |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for m in memory:
        lines.append(
            f"| {m.scenario} | {m.contender} | {_bytes(m.xla_peak)} | {_bytes(m.xla_temp)} "
            f"| {_bytes(m.rss_run)} | {_bytes(m.rss_step)} |"
        )
    return lines


def format_report(
    results: Sequence[Result],
    memory: Sequence[Memory],
    state_rows: Sequence[tuple[str, float, float]],
    skipped: Sequence[str],
    settings: str,
    load_start: str,
) -> str:
    """The Markdown report.

    Args:
      results: the timing results.
      memory: the fresh-process memory measurements.
      state_rows: the state-option rows.
      skipped: why each absent contender is absent.
      settings: the rounds and modes, one line.
      load_start: the load average when the run started.

    Returns:
      The report.
    """
    rat = ratios(results)
    lines = [
        f"# One optimizer step: gradchain, Optax, torch and the roofline ({jax.default_backend()})",
        "",
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {_cpu_model()}, {os.cpu_count()} cores; load average {load_start} "
        f"at the start, {_load()} at the end",
        f"- versions: {_versions()}",
        f"- {settings}",
    ]
    lines += [f"- left out: {s}" for s in skipped]
    lines += [
        "",
        "T is the roofline's median step on the same scenario; `/ Optax` compares with Optax's "
        "same optimizer (adamw or chain5). Scenarios are `leaves x elements per leaf`, float32.",
        "",
        "| scenario | contender | first call | / Optax | step median | min | max | / T "
        "| / Optax | kernels | state B/param | agreement |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        x = rat[(r.scenario, r.contender)]
        kernels = "n/a" if r.kernels is None else str(r.kernels)
        lines.append(
            f"| {r.scenario} | {r.contender} | {_t(statistics.median(r.first_call))} "
            f"| {x.first_over_optax:.2f} | {_t(statistics.median(r.step))} | {_t(min(r.step))} "
            f"| {_t(max(r.step))} | {x.step_over_t:.2f} | {x.step_over_optax:.2f} | {kernels} "
            f"| {r.state_bytes:.2f} | {r.agreement:.0e} |"
        )
    lines += format_memory(memory)
    lines += [
        "",
        "Optimizer state per parameter on GPT-2 small's shapes (124M parameters, "
        "`jax.eval_shape` of `init`: nothing allocated):",
        "",
        "| option | target | bytes / param |",
        "| --- | ---: | ---: |",
    ]
    for label, target, measured in state_rows:
        lines.append(f"| {label} | {target:g} | {measured:.3f} |")
    lines += [
        "",
        "Goals of issue 8 (met when measured <= bound; distance = measured / bound):",
        "",
        "| goal | where | measured | bound | met | distance |",
        "| --- | --- | ---: | ---: | :---: | ---: |",
    ]
    for g in goals(results, state_rows):
        lines.append(
            f"| {g.goal} | {g.where} | {g.measured:.3f} | {g.target:.3f} "
            f"| {'met' if g.met else 'not met'} | {g.measured / g.target:.2f}x |"
        )
    return "\n".join(lines) + "\n"


@dataclasses.dataclass
class Report:
    """Everything one run measured.

    Attributes:
      results: the timing results.
      memory: the fresh-process memory measurements.
      state_rows: the state-option rows.
      skipped: why each absent contender is absent.
      text: the Markdown report.
    """

    results: list[Result]
    memory: list[Memory]
    state_rows: list[tuple[str, float, float]]
    skipped: list[str]
    text: str


def main(
    scenarios: Sequence[str] | None = None,
    rounds: int = 20,
    compile_rounds: int = 2,
    warmups: int = 3,
    contenders: Sequence[str] | None = None,
    memory: str | None = None,
    jobs: int = 2,
    out: str | Path | None = RESULTS,
    quick: bool = False,
) -> Report:
    """Runs the benchmark, prints the report and writes it to ``out``.

    Args:
      scenarios: scenario names (``FULL``'s by default, ``QUICK``'s with ``quick``).
      rounds: timed step rounds per scenario.
      compile_rounds: first-call rounds per scenario.
      warmups: untimed steps before the timed ones.
      contenders: substrings selecting contenders (the roofline and Optax's always run).
      memory: probe ``"all"`` scenarios, the ``"first"`` one, or ``"none"``;
        by default all, with ``quick`` the first.
      jobs: memory probes run at once.
      out: the Markdown file, or None.
      quick: tiny scenarios, 5 rounds, 1 first call, 1 warm-up (overrides
        those arguments).

    Returns:
      The report.
    """
    load_start = _load()
    if quick:
        scenarios = scenarios or [s.name for s in QUICK]
        rounds, compile_rounds, warmups = 5, 1, 1
    memory = memory or ("first" if quick else "all")
    chosen = [SCENARIOS[n] for n in (scenarios or [s.name for s in FULL])]
    table, skipped = sc.contenders()
    table = sc.select(table, contenders)
    for line in skipped:
        print(f"left out: {line}")
    results: list[Result] = []
    for scenario in chosen:
        print(f"{scenario.name}: {len(table)} contenders", flush=True)
        results += run_scenario(scenario, table, rounds, compile_rounds, warmups)
    probe_scenarios = {"all": chosen, "first": chosen[:1], "none": []}[memory]
    pairs = [(c.name, s.name) for s in probe_scenarios for c in table]
    mem = run_probes(pairs, jobs) if pairs else []
    state_rows = state_bytes_table()
    settings = (
        f"first call: median of {compile_rounds}; step: median, min and max of {rounds} rounds "
        f"after {warmups} warm-ups; contenders interleaved, order rotated each round; "
        f"JAX dtype promotion {'strict' if sc.strict_promotion() else 'standard'} "
        f"(Optax traced under standard where strict)"
    )
    text = format_report(results, mem, state_rows, skipped, settings, load_start)
    print(text)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
    return Report(results, mem, state_rows, skipped, text)


def _parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="One optimizer step: gradchain, Optax, torch and the roofline, as ratios."
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few rounds")
    parser.add_argument(
        "--scenarios", nargs="+", choices=sorted(SCENARIOS), help="scenario names (default: all)"
    )
    parser.add_argument("--rounds", type=int, default=20, help="timed step rounds (20)")
    parser.add_argument("--compile-rounds", type=int, default=2, help="first-call rounds (2)")
    parser.add_argument("--warmups", type=int, default=3, help="untimed steps first (3)")
    parser.add_argument(
        "--contenders", nargs="+", help="substrings of contender names (default: all)"
    )
    parser.add_argument(
        "--memory",
        choices=["all", "first", "none"],
        help="scenarios to probe for memory (default: all; with --quick: first)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="memory probes at once (2)")
    parser.add_argument("--out", default=None, help=f"Markdown file (default {RESULTS})")
    parser.add_argument(
        "--probe", nargs=2, metavar=("CONTENDER", "SCENARIO"), help=argparse.SUPPRESS
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = _parse_args()
    if args.probe:
        name, scenario = args.probe
        print(json.dumps(dataclasses.asdict(probe(name, SCENARIOS[scenario]))))
    else:
        main(
            args.scenarios,
            args.rounds,
            args.compile_rounds,
            args.warmups,
            args.contenders,
            args.memory,
            args.jobs,
            args.out or (None if args.quick else RESULTS),
            args.quick,
        )
