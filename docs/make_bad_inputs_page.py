"""Writes docs/bad_inputs.md: every entry of the bad-input catalogue under gradchain and Optax.

Run from the repository root (about ten minutes on two CPU cores: every registered
transform's update is compiled twice, once per library)::

    python docs/make_bad_inputs_page.py

The entries and gradchain's documented behaviour live in ``tests/bad_inputs.py``;
``tests/test_bad_inputs.py`` asserts gradchain's side and checks that this page lists
every entry with the catalogue's counts.
"""

from __future__ import annotations

import collections
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import optax  # noqa: E402

import conftest  # noqa: E402, F401  (strict promotion, 8 CPU devices: the test suite's settings)
import gradchain as gc  # noqa: E402
from tests.bad_inputs import (  # noqa: E402
    ABSENT,
    CLEAR,
    ENTRIES,
    ERROR,
    REGISTRY_ENTRIES,
    SANE,
    SILENT,
    Documented,
    Outcome,
    Raises,
)
from tests.registry import CASES  # noqa: E402

PAGE = ROOT / "docs" / "bad_inputs.md"
KIND_WORDS = {
    CLEAR: "clear error",
    SANE: "sane",
    ERROR: "other error",
    SILENT: "silent",
    ABSENT: "not in Optax",
}


def _cell(text: str, limit: int = 160) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _wanted(expected: Raises | Documented) -> str:
    return CLEAR if isinstance(expected, Raises) else SANE


def _registry_cell(
    outcomes: dict[str, Outcome],
    described: dict[str, str],
    optax_side: bool,
    unclear: dict[str, str],
) -> str:
    """One library's outcomes over the registry: counts by kind, then details."""
    counts = collections.Counter(o.kind for o in outcomes.values())
    total = len(outcomes)
    parts = [f"{KIND_WORDS[k]} {n}/{total}" for k, n in counts.most_common()]
    text = ", ".join(parts)
    if not optax_side:
        behaviours = collections.Counter(
            described[k] for k, o in outcomes.items() if o.kind in (CLEAR, SANE)
        )
        text += ": " + "; ".join(f"{b} ({n})" for b, n in behaviours.most_common())
        odd = [
            f"{k} ({unclear.get(k, o.text)})"
            for k, o in outcomes.items()
            if o.kind not in (CLEAR, SANE)
        ]
        if odd:
            text += ". Other errors: " + "; ".join(odd)
        clear = {k: o.text for k, o in outcomes.items() if o.kind == CLEAR}
        example = clear.get("adam") or clear.get("chain") or next(iter(clear.values()), "")
        if example:
            text += f". E.g. {example}"
        return _cell(text, 700)
    silent = [k for k, o in outcomes.items() if o.kind == SILENT]
    if silent:
        heads = collections.Counter(outcomes[k].text.split(" (")[0] for k in silent)
        text += (
            f". Silent ({', '.join(silent[:5])}{', ...' if len(silent) > 5 else ''}): "
            + "; ".join(h for h, _ in heads.most_common(2))
        )
    errors = collections.Counter(o.text for o in outcomes.values() if o.kind == ERROR)
    if errors:
        text += ". Errors: " + "; ".join(f"{h} ({n})" for h, n in errors.most_common(2))
    return _cell(text, 600)


def main() -> None:
    """Runs every entry under both libraries and writes the page."""
    rows: list[str] = []
    tally = collections.Counter()
    for entry in REGISTRY_ENTRIES:
        cases = entry.cases()
        mine = {c.key: entry.outcome(gc, c) for c in cases}
        theirs = {c.key: entry.outcome(optax, c) for c in cases}
        described = {c.key: entry.expected(c).describe() for c in cases}
        unclear = entry.known_unclear
        for case in cases:
            want = ERROR if case.key in entry.known_unclear else _wanted(entry.expected(case))
            _count(tally, mine[case.key], theirs[case.key], want)
        rows.append(
            f"| `{entry.id}`: {_cell(entry.description)} (every registered transform; "
            f"{entry.category}) | {_registry_cell(mine, described, False, unclear)} | "
            f"{_registry_cell(theirs, described, True, unclear)} |"
        )
        print(entry.id, collections.Counter(o.kind for o in mine.values()), flush=True)
    for entry in ENTRIES:
        mine, theirs = entry.outcome(gc), entry.outcome(optax)
        _count(tally, mine, theirs, _wanted(entry.expected))
        rows.append(
            f"| `{entry.id}`: {_cell(entry.description)} ({entry.category}) | "
            f"{_single_cell(mine, entry.expected)} | {_single_cell(theirs, entry.expected)} |"
        )
    counts = {
        "tried": tally["tried"],
        "gradchain_clear": tally["gc_" + CLEAR],
        "gradchain_documented": tally["gc_" + SANE],
        "gradchain_other_error": tally["gc_" + ERROR],
        "gradchain_unexpected": tally["unexpected"],
        "optax_tried": tally["tried"] - tally["ox_" + ABSENT],
        "optax_error": tally["ox_" + ERROR] + tally["ox_" + CLEAR],
        "optax_silent": tally["ox_" + SILENT],
        "optax_sane": tally["ox_" + SANE],
        "optax_absent": tally["ox_" + ABSENT],
        "optax_silent_we_not": tally["optax_silent_we_not"],
    }
    PAGE.write_text(_page(counts, rows))
    print(json.dumps(counts))


def _single_cell(outcome: Outcome, expected: Raises | Documented) -> str:
    """One library's outcome on one entry; a sane result quotes the documented behaviour."""
    if outcome.kind == SANE:
        return f"sane: {_cell(expected.describe())} ({_cell(outcome.text, 80)})"
    return f"{KIND_WORDS[outcome.kind]}: {_cell(outcome.text)}"


def _count(tally: collections.Counter, mine: Outcome, theirs: Outcome, want: str) -> None:
    """Adds one case's outcomes to the tally."""
    tally["tried"] += 1
    tally["gc_" + mine.kind] += 1
    tally["ox_" + theirs.kind] += 1
    tally["unexpected"] += mine.kind != want
    tally["optax_silent_we_not"] += theirs.kind == SILENT and mine.kind in (CLEAR, SANE)


def _page(counts: dict[str, int], rows: list[str]) -> str:
    c = counts
    return (
        f"""# Bad inputs: gradchain beside Optax 0.2.8

<!-- Generated by docs/make_bad_inputs_page.py; do not edit by hand. -->
<!-- counts: {json.dumps(c)} -->

Every entry of the catalogue in [`tests/bad_inputs.py`](../tests/bad_inputs.py), run
with gradchain and with Optax 0.2.8 in the same process (JAX on CPU; rank promotion
allowed for both, as by default, so that broadcasting shows; gradchain under strict
dtype promotion, Optax under standard, where it traces). Rows marked "every
registered transform" run over the {len(CASES)} cases
of [`tests/registry.py`](../tests/registry.py); for Optax each case is rebuilt with
Optax's functions of the same names, and a case using a name or an argument Optax
lacks counts as "not in Optax"; the registry's small test wrappers (`on_plain_params` for
lookahead, `with_objective`, `with_fn`, ...) are gradchain code, and a few Optax errors come
from them meeting Optax's states. `tests/test_bad_inputs.py` asserts gradchain's column.

Outcomes: **clear error**: the error gradchain documents, naming the transform (or
function), the argument or tree path, the value and what to do; **sane**: the
documented result, checked; **other error**: an exception that says less;
**silent**: a result that fails the documented check (a broadcast shape, NaN, a
changed dtype, a hyperparameter accepted).

## Counts

- Cases tried: {c["tried"]} ({c["optax_tried"]} of them also in Optax).
- gradchain: {c["gradchain_clear"]} clear errors, {c["gradchain_documented"]} documented
  behaviours, {c["gradchain_other_error"]} other errors (user functions or test wrappers
  that compute on the bad input before gradchain sees it); {c["gradchain_unexpected"]}
  differ from what the catalogue documents.
- Optax 0.2.8: {c["optax_error"]} errors, {c["optax_silent"]} silent, {c["optax_sane"]} sane
  (the same documented result), {c["optax_absent"]} not in Optax.
- Cases where Optax is silent and gradchain is not: {c["optax_silent_we_not"]}.

## The catalogue

| case | gradchain | Optax 0.2.8 |
| --- | --- | --- |
"""
        + "\n".join(rows)
        + "\n"
    )


if __name__ == "__main__":
    main()
