"""The catalogue of bad inputs (tests/bad_inputs.py): gradchain does what each entry documents.

Each test runs many entries and reports every failure at once (one pytest item per
kind of entry, not per case, to keep CI time down). The default run traces every
registry-wide entry on a quarter of the registry (a different quarter per entry, so
that together they cover it) and runs the update of a dozen cases; ``--slow`` runs
every entry on every case. ``docs/make_bad_inputs_page.py`` runs the same entries
with Optax too and writes ``docs/bad_inputs.md``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import gradchain as gc
from tests.bad_inputs import (
    CLEAR,
    ENTRIES,
    ERROR,
    EXECUTED_ENTRIES,
    REGISTRY_ENTRIES,
    SANE,
    TRACED_ENTRIES,
    Documented,
    Raises,
    RegistryEntry,
)
from tests.registry import CASES, Case

PAGE = Path(__file__).resolve().parent.parent / "docs" / "bad_inputs.md"
# The cases whose update the default run executes (each compiles once): the everyday
# optimizers, the guards, and one of each kind of state.
EXECUTED_IN_DEFAULT_RUN = frozenset(
    {
        "sgd[nesterov]",
        "adam",
        "adamw",
        "rmsprop[centered]",
        "lion",
        "adafactor",
        "lamb",
        "apply_if_finite",
        "zero_nans",
        "MultiSteps",
        "set_to_zero",
        "clip_by_global_norm",
    }
)


def _wanted(expected: Raises | Documented) -> str:
    return CLEAR if isinstance(expected, Raises) else SANE


def _check_registry_entry(entry: RegistryEntry, cases: list[Case]) -> tuple[int, list[str]]:
    failures = []
    for case in cases:
        got = entry.outcome(gc, case)
        want = ERROR if case.key in entry.known_unclear else _wanted(entry.expected(case))
        if got.kind != want:
            failures.append(f"{entry.id} on {case.key}: wanted {want}, got {got.kind}: {got.text}")
    return len(cases), failures


def _report(tried: int, failures: list[str]) -> None:
    assert not failures, f"{len(failures)} of {tried} cases failed:\n" + "\n".join(failures)


def test_every_single_entry_behaves_as_documented() -> None:
    failures = []
    for entry in ENTRIES:
        got = entry.outcome(gc)
        if got.kind != _wanted(entry.expected):
            failures.append(
                f"{entry.id}: wanted {entry.expected.describe()}, got {got.kind}: {got.text}"
            )
    _report(len(ENTRIES), failures)


def test_traced_registry_entries_on_a_quarter_of_the_registry_each(request) -> None:
    everything = request.config.getoption("--slow")
    tried, failures = 0, []
    for i, entry in enumerate(TRACED_ENTRIES):
        cases = [c for j, c in enumerate(CASES) if everything or j % 4 == i % 4]
        n, bad = _check_registry_entry(entry, cases)
        tried, failures = tried + n, failures + bad
    assert tried >= len(TRACED_ENTRIES) * len(CASES) // 4
    _report(tried, failures)


def test_executed_registry_entries_on_a_dozen_cases() -> None:
    cases = [c for c in CASES if c.key in EXECUTED_IN_DEFAULT_RUN]
    assert {c.key for c in cases} == EXECUTED_IN_DEFAULT_RUN  # the names still exist
    tried, failures = 0, []
    for entry in EXECUTED_ENTRIES:
        n, bad = _check_registry_entry(entry, cases)
        tried, failures = tried + n, failures + bad
    _report(tried, failures)


@pytest.mark.slow
def test_executed_registry_entries_on_every_case() -> None:
    tried, failures = 0, []
    for entry in EXECUTED_ENTRIES:
        n, bad = _check_registry_entry(entry, list(CASES))
        tried, failures = tried + n, failures + bad
    _report(tried, failures)


def test_known_unclear_cases_exist_in_the_registry() -> None:
    keys = {c.key for c in CASES}
    for entry in REGISTRY_ENTRIES:
        assert set(entry.known_unclear) <= keys, entry.id


def test_the_page_lists_every_entry_and_counts_what_the_catalogue_holds() -> None:
    text = PAGE.read_text()
    counts = json.loads(re.search(r"<!-- counts: (\{.*?\}) -->", text).group(1))
    tried = len(ENTRIES) + sum(len(e.cases()) for e in REGISTRY_ENTRIES)
    assert counts["tried"] == tried, "regenerate: python docs/make_bad_inputs_page.py"
    ids = re.findall(r"^\| `([a-z0-9_]+)`:", text, re.M)
    assert ids == [e.id for e in REGISTRY_ENTRIES + ENTRIES], "regenerate the page"
    # gradchain's column must say what the catalogue documents.
    assert counts["gradchain_unexpected"] == 0
